//! Replicas as witnesses (issue 22): every node has a witness key (`witness.key`, Ed25519 `cosignature/v1`, mode
//! 0600) and a witness state (`witness.state`, see [`aerodb_engine::witness`]).
//!
//! - A replica cosigns each checkpoint its primary streams once its own log reproduces the checkpoint's root and
//!   the checkpoint extends the last one it cosigned; it sends the cosignature back on the replication stream. A
//!   checkpoint of another history than the one it cosigned (a fork under the same key) halts it, with the evidence; an older one (a replica catching up) is not cosigned.
//! - The primary verifies each cosignature against the witness keys it counts (`--witnesses`, plus the key each
//!   authenticated replica announces in its hello), attaches it to the checkpoint's note, and publishes the newest
//!   checkpoint with at least `--witness-quorum` distinct cosignatures (kept in `cosigned.checkpoint`).
//! - Every node also answers C2SP `tlog-witness` `add-checkpoint` (`POST /witness/add-checkpoint`) for its own
//!   log and the logs given by `--witness-logs`.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aerodb_engine::{
    checkpoint::{parse_note, unix_now, KeyType},
    witness::{valid_cosignatures, Witness, KEY_FILE},
    SignedCheckpoint, SigningKey, VerifierKey,
};
use aerodb_wal::fs::{read_small_file, replace_file, Fs, RealFs};
use parking_lot::Mutex;

use crate::{Error, Result};

/// The file holding the newest checkpoint published as cosigned (on a primary).
pub const COSIGNED_FILE: &str = "cosigned.checkpoint";
/// Checkpoints a primary keeps gathering cosignatures for.
const PENDING: usize = 16;
/// Most witness keys a primary counts.
pub const MAX_WITNESSES: usize = 64;

/// A checkpoint note with the cosignatures gathered so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gathered {
    /// The checkpoint (its signature by the log's key verified once, when it arrived).
    pub checkpoint: aerodb_engine::Checkpoint,
    /// The note with every verified cosignature line attached.
    pub note: String,
    /// The witnesses that cosigned it (verifier key strings).
    pub witnesses: Vec<String>,
}

/// A node's witness role and, on a primary, the cosignatures it gathers.
#[derive(Debug)]
pub struct Cosigning {
    /// This node's witness (key and state).
    pub witness: Witness,
    /// The witness keys configured on the command line.
    configured: Vec<VerifierKey>,
    /// Keys announced by connected replicas (by node id).
    announced: Mutex<BTreeMap<String, VerifierKey>>,
    /// Distinct cosignatures a checkpoint needs to be published as cosigned (0: none needed; cosignatures are
    /// still gathered).
    pub quorum: usize,
    /// Checkpoints gathering cosignatures, by size.
    pending: Mutex<BTreeMap<u64, Gathered>>,
    /// The newest checkpoint with at least `quorum` cosignatures (the newest with any, when `quorum` is 0).
    published: Mutex<Option<Gathered>>,
    dir: std::path::PathBuf,
    /// Cosignatures this node made (as a witness).
    pub cosigned: AtomicU64,
    /// Cosignatures this node received and attached (as a primary).
    pub received: AtomicU64,
    /// Cosignature lines refused (by an unknown key, or not verifying).
    pub rejected: AtomicU64,
}

/// Loads `dir/witness.key`, or creates it (mode 0600) named `name`.
pub fn load_or_create_key(dir: &Path, name: &str) -> Result<SigningKey> {
    let path = dir.join(KEY_FILE);
    let key = if path.exists() {
        SigningKey::load(&path).map_err(|e| Error::config(format!("witness key: {e}")))?
    } else {
        let k = SigningKey::generate_typed(name, KeyType::CosignatureV1)
            .map_err(|e| Error::config(format!("witness key {name:?}: {e}")))?;
        k.save(&path)
            .map_err(|e| Error::config(format!("saving the witness key: {e}")))?;
        k
    };
    if key.kind() != KeyType::CosignatureV1 {
        return Err(Error::config(format!(
            "{} is not a cosignature/v1 (type 0x04) key",
            path.display()
        )));
    }
    Ok(key)
}

impl Cosigning {
    /// Opens the node's witness in `dir`, trusting the cluster's log key `log` and `other_logs`, counting
    /// `witnesses` toward `quorum`. The last published cosigned checkpoint is read back; one that no longer
    /// verifies under `log` is an error.
    pub fn open(
        dir: &Path,
        key: SigningKey,
        log: &VerifierKey,
        other_logs: &[VerifierKey],
        witnesses: Vec<VerifierKey>,
        quorum: usize,
    ) -> Result<Self> {
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let mut trusted = vec![log.clone()];
        trusted.extend(other_logs.iter().cloned());
        let witness = Witness::open(fs.clone(), dir, key, &trusted)
            .map_err(|e| Error::config(format!("witness: {e}")))?;
        let published = match read_small_file(&*fs, &dir.join(COSIGNED_FILE), 1 << 20)
            .map_err(|e| Error::io("reading the cosigned checkpoint", e))?
        {
            None => None,
            Some(b) => {
                let note = String::from_utf8(b)
                    .map_err(|_| Error::config(format!("{COSIGNED_FILE} is not UTF-8")))?;
                let cp = SignedCheckpoint::verify(&note, log)
                    .map_err(|e| Error::config(format!("{COSIGNED_FILE} does not verify: {e}")))?;
                let witnesses = valid_cosignatures(&note, &witnesses)
                    .into_iter()
                    .map(|(k, _)| k.to_string())
                    .collect();
                Some(Gathered {
                    checkpoint: cp.checkpoint,
                    note,
                    witnesses,
                })
            }
        };
        Ok(Self {
            witness,
            configured: witnesses,
            announced: Mutex::new(BTreeMap::new()),
            quorum,
            pending: Mutex::new(BTreeMap::new()),
            published: Mutex::new(published),
            dir: dir.to_owned(),
            cosigned: AtomicU64::new(0),
            received: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// The witness keys counted toward the quorum: the configured ones and those announced by replicas.
    #[must_use]
    pub fn witnesses(&self) -> Vec<VerifierKey> {
        let mut all = self.configured.clone();
        for k in self.announced.lock().values() {
            if !all.contains(k) {
                all.push(k.clone());
            }
        }
        all
    }

    /// A replica announced its witness key (the stream is authenticated as a replicator). A malformed key or one
    /// of the wrong type is refused; at most [`MAX_WITNESSES`] are kept.
    pub fn announce(&self, node_id: &str, key: &str) -> std::result::Result<(), String> {
        let k = VerifierKey::parse(key).map_err(|e| format!("witness key {key:?}: {e}"))?;
        if k.kind() != KeyType::CosignatureV1 {
            return Err(format!("witness key {key:?} is not a cosignature/v1 key"));
        }
        let mut a = self.announced.lock();
        if a.len() >= MAX_WITNESSES && !a.contains_key(node_id) {
            return Err(format!("more than {MAX_WITNESSES} witnesses announced"));
        }
        a.insert(node_id.to_owned(), k);
        Ok(())
    }

    /// This node, as a witness, cosigns a checkpoint its primary sent (already checked against its own log by
    /// the caller): the cosignature line, `None` for a stale one, or the refusal.
    pub fn cosign_replicated(
        &self,
        note: &str,
        db: &aerodb_engine::Db,
    ) -> std::result::Result<Option<String>, aerodb_engine::witness::WitnessError> {
        let root_at = |n: u64| db.root_at(n).ok();
        let out = self.witness.cosign_replicated(note, &root_at, unix_now())?;
        if out.is_some() {
            self.cosigned.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// On a primary: cosignature `lines` from a replica for `note` (which must be a checkpoint this log's key
    /// signed: checked once per checkpoint). Each line by a counted witness key not yet on the checkpoint is
    /// verified and attached; other lines are dropped. Returns how many distinct witnesses have now cosigned the
    /// checkpoint, and publishes it when that reaches the quorum.
    pub fn receive(&self, log: &VerifierKey, note: &str, lines: &str) -> std::result::Result<usize, String> {
        let (text, sigs) = parse_note(note).map_err(|e| e.to_string())?;
        let log_line = sigs
            .iter()
            .find(|s| s.name == log.name() && s.id == log.id())
            .map(|s| s.line)
            .ok_or("no signature line by the log's key")?;
        let signed = format!("{text}\n{log_line}\n");
        let witnesses = self.witnesses();
        let mut pending = self.pending.lock();
        let known = pending.values().find(|g| g.note.starts_with(&signed)).cloned();
        let mut g = match known {
            Some(g) => g,
            None => {
                let cp = SignedCheckpoint::verify(&signed, log)
                    .map_err(|e| format!("not a checkpoint of this log: {e}"))?;
                Gathered {
                    checkpoint: cp.checkpoint,
                    note: signed,
                    witnesses: Vec::new(),
                }
            }
        };
        let (mut accepted, mut offered) = (0u64, 0u64);
        for line in lines.lines() {
            offered += 1;
            let sig = aerodb_engine::checkpoint::parse_signature_line(line)
                .map_err(|e| format!("malformed cosignature line: {e}"))?;
            let Some(key) = witnesses
                .iter()
                .find(|k| k.name() == sig.name && k.id() == sig.id)
            else {
                continue;
            };
            let id = key.to_string();
            if g.witnesses.contains(&id) {
                continue;
            }
            // One signature checked: this line over the checkpoint's text.
            if key
                .open_note(&format!("{text}\n{line}\n"))
                .is_ok_and(|(_, ts)| ts.is_some())
            {
                g.note.push_str(line);
                g.note.push('\n');
                g.witnesses.push(id);
                accepted += 1;
            }
        }
        self.received.fetch_add(accepted, Ordering::Relaxed);
        self.rejected.fetch_add(offered - accepted, Ordering::Relaxed);
        let count = g.witnesses.len();
        pending.insert(g.checkpoint.size, g.clone());
        while pending.len() > PENDING {
            pending.pop_first();
        }
        drop(pending);
        if count >= self.quorum.max(1) {
            self.publish(g)
                .map_err(|e| format!("publishing the cosigned checkpoint: {e}"))?;
        }
        Ok(count)
    }

    /// Makes `g` the published cosigned checkpoint if it is newer (or the same size with more cosignatures),
    /// durably first.
    fn publish(&self, g: Gathered) -> std::io::Result<()> {
        let mut p = self.published.lock();
        if p.as_ref().is_some_and(|old| {
            old.checkpoint.size > g.checkpoint.size
                || (old.checkpoint.size == g.checkpoint.size && old.witnesses.len() >= g.witnesses.len())
        }) {
            return Ok(());
        }
        replace_file(&RealFs, &self.dir, COSIGNED_FILE, g.note.as_bytes())?;
        *p = Some(g);
        Ok(())
    }

    /// The newest checkpoint with at least `k` distinct cosignatures by counted witnesses (`k` ≥ 1), from those
    /// gathered since start and the one last published.
    #[must_use]
    pub fn newest_cosigned(&self, k: usize) -> Option<Gathered> {
        let pending = self.pending.lock();
        let from_pending = pending.values().rev().find(|g| g.witnesses.len() >= k).cloned();
        drop(pending);
        let published = self.published.lock().clone().filter(|g| g.witnesses.len() >= k);
        match (from_pending, published) {
            (Some(a), Some(b)) => Some(if a.checkpoint.size >= b.checkpoint.size {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        }
    }

    /// The published cosigned checkpoint (at least `quorum` cosignatures).
    #[must_use]
    pub fn published(&self) -> Option<Gathered> {
        self.published.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a panic is the failure report")]

    use super::*;
    use aerodb_engine::{Checkpoint, KeyType};
    use aerodb_wal::Epoch;

    #[test]
    fn the_primary_attaches_only_verified_cosignatures_and_publishes_at_quorum() {
        let dir = tempfile::tempdir().unwrap();
        let log = SigningKey::from_seed("aerodb-ledger", [1; 32]).unwrap();
        let w: Vec<SigningKey> = (0..3u8)
            .map(|i| {
                SigningKey::from_seed_typed(
                    &format!("aerodb-ledger/r{i}"),
                    KeyType::CosignatureV1,
                    [10 + i; 32],
                )
                .unwrap()
            })
            .collect();
        let own = SigningKey::from_seed_typed("aerodb-ledger/p", KeyType::CosignatureV1, [9; 32]).unwrap();
        // Counted: w0 (configured) and w1 (announced); w2 is not counted.
        let c = Cosigning::open(dir.path(), own, &log.verifier(), &[], vec![w[0].verifier()], 2).unwrap();
        c.announce("r1", &w[1].verifier().to_string()).unwrap();
        assert!(
            c.announce("r9", &log.verifier().to_string()).is_err(),
            "a log key is not a witness key"
        );
        let note = Checkpoint {
            origin: "aerodb-ledger".into(),
            size: 7,
            root: [3; 32],
            epoch: Epoch(1),
        }
        .sign(&log)
        .note;
        let text = &note[..=note.rfind("\n\n").unwrap()];
        let line = |k: &SigningKey| k.signature_line(text, 1_700_000_000);
        // A forged line under w1's name and id, an uncounted witness, then w0: one counted cosignature.
        let forged = line(&w[2]).replacen("aerodb-ledger/r2", "aerodb-ledger/r1", 1);
        let forged = {
            let (_, sig) = forged.trim_end().rsplit_once(' ').unwrap();
            let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig).unwrap();
            raw[..4].copy_from_slice(&w[1].verifier().id().to_be_bytes());
            format!(
                "\u{2014} aerodb-ledger/r1 {}\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
            )
        };
        assert_eq!(
            c.receive(
                &log.verifier(),
                &note,
                &format!("{forged}{}{}", line(&w[2]), line(&w[0]))
            )
            .unwrap(),
            1
        );
        assert!(c.published().is_none() && c.newest_cosigned(1).is_some() && c.newest_cosigned(2).is_none());
        // w1's real line reaches the quorum: published, durably.
        assert_eq!(c.receive(&log.verifier(), &note, &line(&w[1])).unwrap(), 2);
        let p = c.published().unwrap();
        assert_eq!((p.checkpoint.size, p.witnesses.len()), (7, 2));
        assert_eq!(
            valid_cosignatures(&p.note, &[w[0].verifier(), w[1].verifier()]).len(),
            2
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(COSIGNED_FILE)).unwrap(),
            p.note
        );
        // A note the log did not sign is refused.
        let rogue = SigningKey::from_seed("aerodb-ledger", [2; 32]).unwrap();
        let other = Checkpoint {
            origin: "aerodb-ledger".into(),
            size: 8,
            root: [4; 32],
            epoch: Epoch(1),
        }
        .sign(&rogue)
        .note;
        assert!(c.receive(&log.verifier(), &other, "").is_err());
        // Reopened, the published checkpoint is read back.
        let own = SigningKey::from_seed_typed("aerodb-ledger/p", KeyType::CosignatureV1, [9; 32]).unwrap();
        let again = Cosigning::open(
            dir.path(),
            own,
            &log.verifier(),
            &[],
            vec![w[0].verifier(), w[1].verifier()],
            2,
        )
        .unwrap();
        assert_eq!(again.published().unwrap().checkpoint.size, 7);
    }
}

/// An external C2SP `tlog-witness` service this primary asks to cosign its checkpoints (`--witness-urls`):
/// `http://<host:port>[/<submission prefix>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalWitness {
    /// `host:port`.
    pub authority: String,
    /// The submission prefix (`""` or `/path`), to which `/add-checkpoint` is appended.
    pub prefix: String,
}

impl ExternalWitness {
    /// Parses `http://host:port[/prefix]` (plain HTTP only: put a TLS-terminating proxy in front of an `https`
    /// witness).
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("witness URL {url:?}: only http:// is supported"))?;
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!("witness URL {url:?}: needs host:port"));
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(Self {
            authority: authority.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }

    /// `POST <prefix>/add-checkpoint` with `body`: status and body (at most 30 s, one connection).
    fn post(&self, body: &str) -> std::io::Result<crate::httpc::Response> {
        use std::net::ToSocketAddrs;
        let addr = self
            .authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        let req = format!(
            "POST {}/add-checkpoint HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.prefix,
            self.authority,
            body.len()
        );
        crate::httpc::send(addr, req.as_bytes())
    }
}

/// On a writable primary with `--witness-urls`: sends each new checkpoint to every external witness (C2SP
/// `tlog-witness`), starting from `old 0` and learning the witness's size from a 409, with the consistency proof
/// from there; the cosignatures that come back are counted like a replica's (their keys must be in
/// `--witnesses`). Runs until `stop`.
pub async fn push_to_external(
    node: Arc<crate::node::Node>,
    witnesses: Vec<ExternalWitness>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut woken = node.replicas.subscribe();
    let mut known: Vec<u64> = vec![0; witnesses.len()];
    let mut sent: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = woken.changed() => if r.is_err() { return },
        }
        if crate::replication::primary::primary_epoch(&node).is_none() {
            continue;
        }
        let Some(cp) = node.db.latest_checkpoint() else {
            continue;
        };
        if sent.as_deref() == Some(cp.note.as_str()) {
            continue;
        }
        sent = Some(cp.note.clone());
        for (w, old) in witnesses.iter().zip(known.iter_mut()) {
            let (n, w2, start) = (node.clone(), w.clone(), *old);
            let note = cp.note.clone();
            let size = cp.checkpoint.size;
            let done = tokio::task::spawn_blocking(move || ask(&n, &w2, start, size, &note)).await;
            match done {
                Ok(Ok(new_old)) => *old = new_old,
                Ok(Err((new_old, e))) => {
                    *old = new_old;
                    tracing::warn!(witness = %w.authority, "external witness: {e}");
                }
                Err(e) => tracing::error!("external witness task failed: {e}"),
            }
        }
    }
}

/// Asks one external witness to cosign `note` (tree size `size`), believing its latest size is `old`. Returns the
/// witness's latest size afterwards, or that and why it did not cosign.
fn ask(
    node: &crate::node::Node,
    w: &ExternalWitness,
    mut old: u64,
    size: u64,
    note: &str,
) -> std::result::Result<u64, (u64, String)> {
    use aerodb_engine::witness::AddCheckpoint;
    // At most twice: a 409 tells the witness's size, and the request is made again from there.
    for _ in 0..2 {
        if old > size {
            return Err((
                old,
                format!("the witness has size {old}, above this checkpoint's {size}"),
            ));
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            node.db
                .consistency_proof(old, size)
                .map_err(|e| (old, format!("consistency proof {old} -> {size}: {e}")))?
        };
        let body = AddCheckpoint {
            old_size: old,
            proof,
            note: note.to_owned(),
        }
        .encode();
        let r = w.post(&body).map_err(|e| (old, e.to_string()))?;
        let text = String::from_utf8_lossy(&r.body);
        match r.status {
            200 => {
                let count = node
                    .cosigning
                    .receive(&node.db.verifier_key(), note, &text)
                    .map_err(|e| (size, e))?;
                tracing::debug!(witness = %w.authority, size, count, "external witness cosigned");
                return Ok(size);
            }
            409 => match aerodb_engine::checkpoint::parse_decimal(text.trim_end_matches('\n')) {
                Some(latest) if latest != old => old = latest,
                _ => {
                    return Err((
                        old,
                        format!("409: {}", text.chars().take(200).collect::<String>()),
                    ))
                }
            },
            s => {
                return Err((
                    old,
                    format!("{s}: {}", text.chars().take(200).collect::<String>()),
                ))
            }
        }
    }
    Err((old, "the witness's size kept changing".into()))
}
