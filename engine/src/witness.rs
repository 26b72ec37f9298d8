//! Witnessing: a node cosigns checkpoints it has checked (C2SP `tlog-cosignature`, `cosignature/v1`) and answers
//! C2SP `tlog-witness` `add-checkpoint` requests, for its own cluster's log and for other logs it is told to
//! trust.
//!
//! A witness keeps, per log origin, the latest checkpoint it cosigned (size and root) in `witness.state`, and
//! never cosigns one that does not extend it: a smaller size is a rollback, a different root at the same size (or
//! a consistency proof that fails) is a fork. The size check and the state update happen under one lock, and the
//! new state is durable (written to a temporary file, fsynced, renamed) before a cosignature leaves the witness.
//!
//! `witness.state` layout (little-endian): `magic "AEROWITN" | version u32 = 1 | count u32 | count × (origin_len
//! u16 | origin UTF-8 | size u64 | root[32]) | crc32 u32` (CRC-32 over everything before it); at most
//! [`MAX_LOGS`] entries, origins at most [`MAX_ORIGIN`] bytes, in origin order.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use aerodb_wal::fs::{read_small_file, replace_file, Fs};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use parking_lot::Mutex;

use crate::{
    checkpoint::{parse_decimal, parse_note, KeyType, SigningKey, TreeHead, VerifierKey},
    merkle::{self, Hash},
};

/// The witness state file in a data directory.
pub const STATE_FILE: &str = "witness.state";
/// A node's witness key file in its data directory (mode 0600).
pub const KEY_FILE: &str = "witness.key";
/// First bytes of the state file.
pub const MAGIC: [u8; 8] = *b"AEROWITN";
/// State file version.
pub const VERSION: u32 = 1;
/// Most logs one witness tracks.
pub const MAX_LOGS: usize = 4096;
/// Longest origin line a witness accepts (bytes).
pub const MAX_ORIGIN: usize = 1024;
/// Most consistency proof lines in a request (C2SP: a client MUST NOT send more than 63).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest `add-checkpoint` request body: the old size line, 63 proof lines and a note of at most 64 KiB.
pub const MAX_REQUEST_BYTES: usize = 32 + MAX_PROOF_LINES * 45 + 1 + crate::checkpoint::MAX_NOTE_BYTES;
const ENTRY_FIXED: usize = 2 + 8 + 32;

/// Why a witness refuses a checkpoint. [`WitnessError::status`] is the HTTP status `tlog-witness` specifies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// The request is malformed, or its old size is above the checkpoint's size (400).
    #[error("bad add-checkpoint request: {0}")]
    BadRequest(String),
    /// No log with this origin is known to the witness (404).
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// No signature from a key the witness trusts for this origin verifies (403).
    #[error("no signature by a trusted key of log {0:?} verifies")]
    Forbidden(String),
    /// The old size is not the size of the latest checkpoint cosigned for this origin (409, body: that size).
    #[error(
        "old size {old} is not {latest}, the size of the latest checkpoint this witness cosigned for the log"
    )]
    SizeConflict {
        /// The latest cosigned size.
        latest: u64,
        /// The old size the request gave.
        old: u64,
    },
    /// The checkpoint has the size of the latest cosigned one but another root: a fork (409).
    #[error("fork: a checkpoint of size {size} with a root other than the one this witness cosigned")]
    Fork {
        /// The tree size.
        size: u64,
    },
    /// The consistency proof does not verify (422).
    #[error("the consistency proof from size {old} to {new} does not verify")]
    BadProof {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The witness state could not be read or made durable; nothing was cosigned (500).
    #[error("witness state: {0}")]
    State(String),
}

impl WitnessError {
    /// The HTTP status C2SP `tlog-witness` gives this refusal.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Forbidden(_) => 403,
            Self::UnknownLog(_) => 404,
            Self::SizeConflict { .. } | Self::Fork { .. } => 409,
            Self::BadProof { .. } => 422,
            Self::State(_) => 500,
        }
    }

    /// Whether this is evidence that a log misbehaved (a fork or a consistency proof that fails), as opposed to
    /// a client that is merely behind or a malformed request.
    #[must_use]
    pub fn is_evidence(&self) -> bool {
        matches!(self, Self::Fork { .. } | Self::BadProof { .. })
    }
}

fn bad(what: impl Into<String>) -> WitnessError {
    WitnessError::BadRequest(what.into())
}

/// An `add-checkpoint` request: `old <size>\n`, up to 63 base64 proof hash lines, an empty line, a signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the latest checkpoint the client believes the witness cosigned.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The checkpoint as a signed note.
    pub note: String,
}

impl AddCheckpoint {
    /// Parses a request body, bounding it (at most [`MAX_REQUEST_BYTES`], [`MAX_PROOF_LINES`] proof lines)
    /// before allocating.
    pub fn parse(body: &[u8]) -> Result<Self, WitnessError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(bad(format!("body larger than {MAX_REQUEST_BYTES} bytes")));
        }
        let text = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?;
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .ok_or_else(|| bad("the first line must be `old <size>` in decimal"))?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                )));
            }
            let h: Hash = B64
                .decode(line)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| bad("a consistency proof line is not 32 bytes of base64"))?;
            proof.push(h);
        }
        Ok(Self {
            old_size,
            proof,
            note: note.to_owned(),
        })
    }

    /// The request body.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old_size);
        for h in &self.proof {
            out.push_str(&B64.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }
}

/// The latest checkpoint a witness cosigned for one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cosigned {
    /// Its tree size.
    pub size: u64,
    /// Its root hash.
    pub root: Hash,
}

/// Everything a witness remembers: per origin, the latest cosigned checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessState {
    /// Latest cosigned checkpoint per origin.
    pub logs: BTreeMap<String, Cosigned>,
}

impl WitnessState {
    /// The state file's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.logs.len() as u32).to_le_bytes());
        for (origin, c) in &self.logs {
            out.extend_from_slice(&(origin.len() as u16).to_le_bytes());
            out.extend_from_slice(origin.as_bytes());
            out.extend_from_slice(&c.size.to_le_bytes());
            out.extend_from_slice(&c.root);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a state file, bounding every length before it allocates.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let (body, crc) = b
            .split_last_chunk::<4>()
            .filter(|(body, _)| body.len() >= 16)
            .ok_or("too short for a witness state file")?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err("checksum mismatch".into());
        }
        if body[..8] != MAGIC {
            return Err("not a witness state file (bad magic)".into());
        }
        let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
        if version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let count = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
        if count > MAX_LOGS {
            return Err(format!("{count} logs is more than {MAX_LOGS}"));
        }
        let mut rest = &body[16..];
        let mut logs = BTreeMap::new();
        for _ in 0..count {
            let len = rest
                .first_chunk::<2>()
                .map(|l| u16::from_le_bytes(*l) as usize)
                .filter(|&l| l <= MAX_ORIGIN && rest.len() >= ENTRY_FIXED + l)
                .ok_or("truncated or oversized entry")?;
            let origin = std::str::from_utf8(&rest[2..2 + len]).map_err(|_| "origin is not UTF-8")?;
            let at = 2 + len;
            let mut size = [0u8; 8];
            size.copy_from_slice(&rest[at..at + 8]);
            let mut root = [0u8; 32];
            root.copy_from_slice(&rest[at + 8..at + 40]);
            if origin.is_empty()
                || logs
                    .keys()
                    .next_back()
                    .is_some_and(|last: &String| last.as_str() >= origin)
            {
                return Err("origins must be non-empty, distinct and in order".into());
            }
            logs.insert(
                origin.to_owned(),
                Cosigned {
                    size: u64::from_le_bytes(size),
                    root,
                },
            );
            rest = &rest[at + 40..];
        }
        if !rest.is_empty() {
            return Err("bytes after the last entry".into());
        }
        Ok(Self { logs })
    }
}

/// A witness: its cosigning key, the logs it trusts and its durable state.
pub struct Witness {
    key: SigningKey,
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    logs: HashMap<String, Vec<VerifierKey>>,
    state: Mutex<WitnessState>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("key", &self.key.verifier().to_string())
            .field("dir", &self.dir)
            .field("logs", &self.logs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Witness {
    /// Opens the witness state in `dir` (empty if there is none; a damaged file is an error, never a reset) with
    /// cosigning key `key` (type `0x04`) and the log keys it trusts (each log's origin is its key's name).
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        key: SigningKey,
        trusted: &[VerifierKey],
    ) -> Result<Self, WitnessError> {
        if key.kind() != KeyType::CosignatureV1 {
            return Err(WitnessError::State(format!(
                "the witness key {} is not a cosignature/v1 (type 0x04) key",
                key.name()
            )));
        }
        let path = dir.join(STATE_FILE);
        let max = (16 + 4 + MAX_LOGS * (ENTRY_FIXED + MAX_ORIGIN)) as u64;
        let state = match read_small_file(&*fs, &path, max) {
            Ok(None) => WitnessState::default(),
            Ok(Some(b)) => WitnessState::decode(&b)
                .map_err(|e| WitnessError::State(format!("{}: {e}", path.display())))?,
            Err(e) => return Err(WitnessError::State(format!("{}: {e}", path.display()))),
        };
        let mut logs: HashMap<String, Vec<VerifierKey>> = HashMap::new();
        for k in trusted {
            let keys = logs.entry(k.name().to_owned()).or_default();
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        if logs.len() > MAX_LOGS {
            return Err(WitnessError::State(format!("more than {MAX_LOGS} trusted logs")));
        }
        Ok(Self {
            key,
            fs,
            dir: dir.to_owned(),
            logs,
            state: Mutex::new(state),
        })
    }

    /// The witness's verifier key (`<name>+<id>+<base64(0x04 ‖ key)>`).
    #[must_use]
    pub fn verifier(&self) -> VerifierKey {
        self.key.verifier()
    }

    /// The latest checkpoint cosigned for `origin`.
    #[must_use]
    pub fn latest(&self, origin: &str) -> Option<Cosigned> {
        self.state.lock().logs.get(origin).copied()
    }

    /// Checks the note's signature by a trusted key of its origin; its tree head and its text (what a
    /// cosignature signs).
    fn check_note<'a>(&self, note: &'a str) -> Result<(TreeHead, &'a str), WitnessError> {
        let (text, _) = parse_note(note).map_err(|e| bad(e.to_string()))?;
        let head = TreeHead::parse(text).map_err(|e| bad(e.to_string()))?;
        if head.origin.len() > MAX_ORIGIN {
            return Err(bad(format!("origin longer than {MAX_ORIGIN} bytes")));
        }
        let keys = self
            .logs
            .get(&head.origin)
            .ok_or_else(|| WitnessError::UnknownLog(head.origin.clone()))?;
        if !keys.iter().any(|k| k.verify_note(note).is_ok()) {
            return Err(WitnessError::Forbidden(head.origin.clone()));
        }
        Ok((head, text))
    }

    /// Makes `state` with the log of `head` at `head`'s size and root durable, then installs it.
    fn commit(&self, state: &mut WitnessState, head: &TreeHead) -> Result<(), WitnessError> {
        let mut next = state.clone();
        next.logs.insert(
            head.origin.clone(),
            Cosigned {
                size: head.size,
                root: head.root,
            },
        );
        replace_file(&*self.fs, &self.dir, STATE_FILE, &next.encode())
            .map_err(|e| WitnessError::State(format!("cannot persist the witness state: {e}")))?;
        *state = next;
        Ok(())
    }

    /// C2SP `tlog-witness` `add-checkpoint`: checks `req` against the latest cosigned checkpoint of its origin,
    /// persists the new one and returns the cosignature line(s) (each `— <name> <base64>\n`) timestamped `now`
    /// (seconds since the Unix epoch).
    pub fn add_checkpoint(&self, req: &AddCheckpoint, now: u64) -> Result<String, WitnessError> {
        let (head, text) = self.check_note(&req.note)?;
        if req.old_size > head.size {
            return Err(bad(format!(
                "old size {} is above the checkpoint's size {}",
                req.old_size, head.size
            )));
        }
        let mut state = self.state.lock();
        let latest = state.logs.get(&head.origin).copied();
        let latest_size = latest.map_or(0, |c| c.size);
        if req.old_size != latest_size {
            return Err(WitnessError::SizeConflict {
                latest: latest_size,
                old: req.old_size,
            });
        }
        match latest {
            Some(l) if l.size == head.size => {
                if l.root != head.root {
                    return Err(WitnessError::Fork { size: head.size });
                }
                if !req.proof.is_empty() {
                    return Err(WitnessError::BadProof {
                        old: l.size,
                        new: head.size,
                    });
                }
            }
            // From a cosigned tree of at least one leaf: the proof must verify.
            Some(l)
                if l.size > 0
                    && !merkle::verify_consistency(l.size, head.size, &l.root, &head.root, &req.proof) =>
            {
                return Err(WitnessError::BadProof {
                    old: l.size,
                    new: head.size,
                });
            }
            Some(l) if l.size > 0 => {}
            // Nothing cosigned yet, or only the empty tree: every tree extends it, and the proof must be empty.
            _ if !req.proof.is_empty() => {
                return Err(WitnessError::BadProof {
                    old: 0,
                    new: head.size,
                })
            }
            _ => {}
        }
        if latest.map(|l| l.size) != Some(head.size) {
            self.commit(&mut state, &head)?;
        }
        drop(state);
        Ok(self.key.signature_line(text, now))
    }

    /// Cosigns a checkpoint of the log this node replicates, which the caller has already checked against its
    /// own copy of the log. `root_at(n)` is that copy's root at size `n` (`None` beyond its end). A checkpoint
    /// below the latest cosigned size is stale (a replica catching up is sent older checkpoints first) and is not
    /// cosigned (`Ok(None)`). Otherwise the latest cosigned checkpoint must be a prefix of the same log — its root
    /// must be `root_at` its size — or the log this node holds is another history under the same key: a
    /// [`WitnessError::Fork`], evidence.
    pub fn cosign_replicated(
        &self,
        note: &str,
        root_at: &dyn Fn(u64) -> Option<Hash>,
        now: u64,
    ) -> Result<Option<String>, WitnessError> {
        let (head, text) = self.check_note(note)?;
        if root_at(head.size) != Some(head.root) {
            return Err(WitnessError::Fork { size: head.size });
        }
        let mut state = self.state.lock();
        if let Some(l) = state.logs.get(&head.origin).copied() {
            if head.size < l.size {
                return Ok(None);
            }
            if root_at(l.size) != Some(l.root) {
                return Err(WitnessError::Fork { size: l.size });
            }
            if l.size == head.size {
                drop(state);
                return Ok(Some(self.key.signature_line(text, now)));
            }
        }
        self.commit(&mut state, &head)?;
        drop(state);
        Ok(Some(self.key.signature_line(text, now)))
    }
}

/// The witnesses whose cosignature on `note` verifies, among `witnesses` (type `0x04` keys), each counted once
/// (by key, so one key listed twice is one witness), with the timestamps they signed.
#[must_use]
pub fn valid_cosignatures(note: &str, witnesses: &[VerifierKey]) -> Vec<(VerifierKey, u64)> {
    let mut out: Vec<(VerifierKey, u64)> = Vec::new();
    for w in witnesses.iter().filter(|w| w.kind() == KeyType::CosignatureV1) {
        if out.iter().any(|(k, _)| k == w) {
            continue;
        }
        if let Ok((_, Some(ts))) = w.open_note(note) {
            out.push((w.clone(), ts));
        }
    }
    out
}

/// Adds signature lines (each `— …\n`, e.g. a witness's answer) to a signed note, skipping lines already on it
/// and lines by a key name and id already present. Refuses lines that do not parse.
pub fn attach_lines(note: &str, lines: &str) -> Result<String, crate::checkpoint::CheckpointError> {
    let (_, existing) = parse_note(note)?;
    let mut seen: Vec<(String, u32)> = existing.iter().map(|s| (s.name.to_owned(), s.id)).collect();
    let mut out = note.to_owned();
    for line in lines.lines() {
        let sig = crate::checkpoint::parse_signature_line(line)?;
        if seen.iter().any(|(n, id)| n == sig.name && *id == sig.id) {
            continue;
        }
        seen.push((sig.name.to_owned(), sig.id));
        out.push_str(line);
        out.push('\n');
    }
    parse_note(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, KeyType};
    use aerodb_wal::{fs::MemFs, Epoch};

    const NOW: u64 = 1_700_000_000;

    /// A log of `n` leaves and its key: the tree and signed notes at any size (with or without an epoch line).
    struct Log {
        key: SigningKey,
        tree: merkle::MemTree,
    }

    impl Log {
        fn new(name: &str, seed: u8, n: u64) -> Self {
            let mut tree = merkle::MemTree::new();
            for i in 0..n {
                tree.push(merkle::leaf_hash(&i.to_le_bytes()));
            }
            Self {
                key: SigningKey::from_seed(name, [seed; 32]).unwrap(),
                tree,
            }
        }
        fn root(&self, n: u64) -> Hash {
            merkle::root(&self.tree, n).unwrap()
        }
        /// A three-line checkpoint (a foreign log's: no extension line).
        fn note(&self, n: u64) -> String {
            let body = format!("{}\n{n}\n{}\n", self.key.name(), B64.encode(self.root(n)));
            self.key.sign_note(&body)
        }
        fn request(&self, old: u64, n: u64) -> AddCheckpoint {
            AddCheckpoint {
                old_size: old,
                proof: if old == 0 || old >= n {
                    Vec::new()
                } else {
                    merkle::consistency_proof(&self.tree, old, n).unwrap()
                },
                note: self.note(n),
            }
        }
    }

    fn witness(fs: &Arc<MemFs>, trusted: &[VerifierKey]) -> Witness {
        let key = SigningKey::from_seed_typed("witness.example/w1", KeyType::CosignatureV1, [1; 32]).unwrap();
        Witness::open(fs.clone(), Path::new("/w"), key, trusted).unwrap()
    }

    fn mem() -> Arc<MemFs> {
        let fs = Arc::new(MemFs::new());
        fs.create_dir_all(Path::new("/w")).unwrap();
        fs
    }

    #[test]
    fn cosigns_a_foreign_log_as_tlog_witness_specifies() {
        let log = Log::new("example.com/foreign", 2, 40);
        let fs = mem();
        let w = witness(&fs, &[log.key.verifier()]);
        // First contact: old 0, empty proof, a checkpoint without extension lines (first the empty tree, which
        // every tree extends).
        w.add_checkpoint(&log.request(0, 0), NOW).unwrap();
        let lines = w.add_checkpoint(&log.request(0, 10), NOW).unwrap();
        let cosigned = attach_lines(&log.note(10), &lines).unwrap();
        let valid = valid_cosignatures(&cosigned, &[w.verifier()]);
        assert_eq!(valid, vec![(w.verifier(), NOW)]);
        // The log's own signature still verifies on the cosigned note.
        assert!(log.key.verifier().verify_note(&cosigned).is_ok());
        // Extending with a consistency proof; a client that is behind gets 409 and the size.
        assert!(w.add_checkpoint(&log.request(10, 25), NOW).is_ok());
        let e = w.add_checkpoint(&log.request(10, 30), NOW).unwrap_err();
        assert_eq!(
            (e.status(), e.clone()),
            (409, WitnessError::SizeConflict { latest: 25, old: 10 })
        );
        // The same checkpoint again is cosigned again; the same size with another root is a fork.
        assert!(w.add_checkpoint(&log.request(25, 25), NOW).is_ok());
        let other = Log::new("example.com/foreign", 2, 26);
        let mut forked = other.request(25, 25);
        forked.note = {
            let body = format!("example.com/foreign\n25\n{}\n", B64.encode([7u8; 32]));
            log.key.sign_note(&body)
        };
        assert_eq!(w.add_checkpoint(&forked, NOW).unwrap_err().status(), 409);
        // A proof that does not verify: 422, and the state is unchanged.
        let mut broken = log.request(25, 40);
        broken.proof[0][0] ^= 1;
        assert_eq!(w.add_checkpoint(&broken, NOW).unwrap_err().status(), 422);
        assert_eq!(w.latest("example.com/foreign").unwrap().size, 25);
        // Old size above the checkpoint's: 400. Unknown origin: 404. No trusted signature: 403.
        let mut above = log.request(25, 25);
        above.old_size = 26;
        assert_eq!(w.add_checkpoint(&above, NOW).unwrap_err().status(), 400);
        let stranger = Log::new("example.com/stranger", 3, 5);
        assert_eq!(
            w.add_checkpoint(&stranger.request(0, 5), NOW)
                .unwrap_err()
                .status(),
            404
        );
        let rogue = Log::new("example.com/foreign", 9, 40);
        let e = w.add_checkpoint(&rogue.request(25, 40), NOW).unwrap_err();
        assert_eq!(e.status(), 403, "{e}");
        // A rollback (a smaller checkpoint, claiming the current old size) is refused.
        assert_eq!(
            w.add_checkpoint(&log.request(25, 20), NOW).unwrap_err().status(),
            400
        );
        // Restart keeps the state.
        drop(w);
        let w = witness(&fs, &[log.key.verifier()]);
        assert_eq!(w.latest("example.com/foreign").unwrap().size, 25);
        assert!(w.add_checkpoint(&log.request(25, 40), NOW).is_ok());
    }

    #[test]
    fn the_size_check_and_the_state_update_are_one_step() {
        let log = Log::new("example.com/race", 4, 64);
        let fs = mem();
        let w = Arc::new(witness(&fs, &[log.key.verifier()]));
        w.add_checkpoint(&log.request(0, 8), NOW).unwrap();
        // Many requests from the same old size race; exactly one wins, the rest get 409, and the state never
        // goes back to a smaller size.
        let handles: Vec<_> = (9..=24u64)
            .map(|n| {
                let (w, req) = (w.clone(), log.request(8, n));
                std::thread::spawn(move || w.add_checkpoint(&req, NOW).map(|_| n))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<u64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, WitnessError::SizeConflict { latest, old: 8 } if *latest == won[0])));
        assert_eq!(w.latest("example.com/race").unwrap().size, won[0]);
    }

    #[test]
    fn a_replicated_checkpoint_is_cosigned_only_if_it_extends_the_last_one_of_the_same_history() {
        let log = Log::new("aerodb-ledger", 5, 50);
        let note = |n: u64| {
            Checkpoint {
                origin: "aerodb-ledger".into(),
                size: n,
                root: log.root(n),
                epoch: Epoch(1),
            }
            .sign(&log.key)
            .note
        };
        let fs = mem();
        let w = witness(&fs, &[log.key.verifier()]);
        let ours = |n: u64| (n <= 50).then(|| log.root(n));
        assert!(w.cosign_replicated(&note(10), &ours, NOW).unwrap().is_some());
        assert!(w.cosign_replicated(&note(30), &ours, NOW).unwrap().is_some());
        // Stale: not cosigned, no error.
        assert_eq!(w.cosign_replicated(&note(20), &ours, NOW).unwrap(), None);
        // A node catching up (its log shorter than what it cosigned) is sent older checkpoints: stale, no error.
        let shorter = |n: u64| (n <= 25).then(|| log.root(n));
        assert_eq!(w.cosign_replicated(&note(20), &shorter, NOW).unwrap(), None);
        let other = Log::new("aerodb-ledger", 5, 60);
        let mut tree = merkle::MemTree::new();
        for i in 0..60u64 {
            tree.push(merkle::leaf_hash(&(i + u64::from(i == 12)).to_le_bytes()));
        }
        let forked = |n: u64| merkle::root(&tree, n).ok();
        let forked_note = Checkpoint {
            origin: "aerodb-ledger".into(),
            size: 40,
            root: forked(40).unwrap(),
            epoch: Epoch(2),
        }
        .sign(&other.key)
        .note;
        let e = w.cosign_replicated(&forked_note, &forked, NOW).unwrap_err();
        assert!(matches!(e, WitnessError::Fork { size: 30 }), "{e}");
        assert_eq!(w.latest("aerodb-ledger").unwrap().size, 30);
    }

    #[test]
    fn state_file_round_trips_and_damage_is_an_error() {
        let mut s = WitnessState::default();
        s.logs.insert(
            "a".into(),
            Cosigned {
                size: 3,
                root: [1; 32],
            },
        );
        s.logs.insert(
            "b.example/log".into(),
            Cosigned {
                size: 99,
                root: [2; 32],
            },
        );
        let b = s.encode();
        assert_eq!(WitnessState::decode(&b).unwrap(), s);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x10;
            assert!(WitnessState::decode(&d).is_err(), "flip at {i}");
        }
        assert!(WitnessState::decode(&b[..b.len() - 1]).is_err());
        // A damaged file stops the witness from opening (never a silent reset to "nothing cosigned").
        let fs = mem();
        replace_file(&*fs, Path::new("/w"), STATE_FILE, &b[..b.len() - 2]).unwrap();
        let key = SigningKey::from_seed_typed("w", KeyType::CosignatureV1, [1; 32]).unwrap();
        assert!(Witness::open(fs.clone(), Path::new("/w"), key, &[]).is_err());
        // A log key is not a witness key.
        let log_key = SigningKey::from_seed("w", [1; 32]).unwrap();
        assert!(Witness::open(fs, Path::new("/w"), log_key, &[]).is_err());
    }

    #[test]
    fn requests_parse_strictly_and_round_trip() {
        let log = Log::new("example.com/foreign", 2, 40);
        let req = log.request(10, 40);
        let body = req.encode();
        assert_eq!(AddCheckpoint::parse(body.as_bytes()).unwrap(), req);
        for bad in [
            body.replacen("old 10", "old 010", 1),
            body.replacen("old 10", "old -1", 1),
            body.replacen("old 10", "old  10", 1),
            body.replacen("old 10\n", "", 1),
            body.replacen("\n\n", "\n", 1),
            format!("old 0\n{}\n\n{}", "AAAA", log.note(40)),
            format!(
                "old 1\n{}\n{}",
                format!("{}\n", B64.encode([0u8; 32])).repeat(64),
                log.note(40)
            ),
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let max = format!(
            "old 1\n{}\n{}",
            format!("{}\n", B64.encode([0u8; 32])).repeat(63),
            log.note(40)
        );
        assert_eq!(AddCheckpoint::parse(max.as_bytes()).unwrap().proof.len(), 63);
        assert!(AddCheckpoint::parse(&vec![b'a'; MAX_REQUEST_BYTES + 1]).is_err());
    }
}
