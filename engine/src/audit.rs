//! The auditor bundle (S-5): a range of records with the signed checkpoint that covers them, an inclusion proof
//! for each, and optionally an earlier checkpoint with the consistency proof to the later one — one file an
//! auditor checks offline with nothing but the log's verifier key. Format: `docs/formats.md`, "Auditor bundle".

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{
    merkle::{self, Hash},
    record, Checkpoint, SignedCheckpoint, VerifierKey,
};

/// The bundle's first line.
pub const MAGIC: &str = "aerodb-audit v1";
/// The largest bundle read.
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;
/// The most records in one bundle.
pub const MAX_RECORDS: usize = 1_000_000;
/// The most hashes in one proof (a tree of 2^64 leaves needs 64; consistency up to 128).
pub const MAX_PROOF: usize = 128;
/// The longest checkpoint note.
pub const MAX_NOTE_BYTES: usize = 64 << 10;
/// The longest record (canonical bytes).
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// One record with its inclusion proof against the bundle's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundledRecord {
    /// Its CommitId.
    pub commit_id: u64,
    /// Its canonical bytes.
    pub canonical: Vec<u8>,
    /// The audit path from its leaf to the checkpoint's root.
    pub proof: Vec<Hash>,
}

/// An auditor bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The tenant the records were selected by (`None`: every tenant in the range).
    pub tenant: Option<String>,
    /// The signed checkpoint every record is proven against.
    pub checkpoint: String,
    /// An earlier signed checkpoint and the consistency proof from it to `checkpoint`.
    pub prior: Option<(String, Vec<Hash>)>,
    /// The records, in CommitId order.
    pub records: Vec<BundledRecord>,
}

fn hashes_line(hs: &[Hash]) -> String {
    let mut s = hs.len().to_string();
    for h in hs {
        s.push(' ');
        s.push_str(&hex::encode(h));
    }
    s
}

fn parse_hashes<'a>(mut it: impl Iterator<Item = &'a str>) -> Result<Vec<Hash>, String> {
    let n: usize = it
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or("a proof without its length")?;
    if n > MAX_PROOF {
        return Err(format!("a proof of {n} hashes; the limit is {MAX_PROOF}"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let h = it.next().ok_or("a proof is shorter than it says")?;
        let v = hex::decode(h).map_err(|_| format!("a proof hash is not hex: {h:?}"))?;
        out.push(
            v.try_into()
                .map_err(|_| "a proof hash is not 32 bytes".to_string())?,
        );
    }
    if it.next().is_some() {
        return Err("a proof is longer than it says".into());
    }
    Ok(out)
}

impl Bundle {
    /// The bundle's bytes (last line: the SHA-256 of everything before it).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut s = format!(
            "{MAGIC}\ntenant {}\ncheckpoint {}\n{}",
            self.tenant
                .as_deref()
                .map_or_else(|| "*".to_owned(), |t| b64.encode(t)),
            self.checkpoint.len(),
            self.checkpoint
        );
        match &self.prior {
            Some((note, proof)) => {
                s.push_str(&format!(
                    "prior {}\n{note}consistency {}\n",
                    note.len(),
                    hashes_line(proof)
                ));
            }
            None => s.push_str("prior 0\n"),
        }
        for r in &self.records {
            s.push_str(&format!(
                "record {} {} {}\n",
                r.commit_id,
                b64.encode(&r.canonical),
                hashes_line(&r.proof)
            ));
        }
        s.push_str(&format!("end {}\n", self.records.len()));
        let sum = hex::encode(Sha256::digest(s.as_bytes()));
        s.push_str(&format!("sha256 {sum}\n"));
        s.into_bytes()
    }

    /// Parses a bundle from untrusted bytes, bounding every length before allocating for it. Says nothing about
    /// signatures or proofs: that is [`Bundle::verify`].
    pub fn decode(b: &[u8]) -> Result<Bundle, String> {
        if b.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(format!(
                "the bundle is {} bytes; the limit is {MAX_BUNDLE_BYTES}",
                b.len()
            ));
        }
        const SUM_LINE: usize = "sha256 \n".len() + 64;
        if b.len() < SUM_LINE {
            return Err("the bundle is truncated".into());
        }
        let (body, sum) = b.split_at(b.len() - SUM_LINE);
        let want = std::str::from_utf8(sum)
            .ok()
            .and_then(|s| s.strip_prefix("sha256 "))
            .and_then(|s| s.strip_suffix('\n'))
            .ok_or("the bundle does not end with its sha256 line")?;
        if hex::encode(Sha256::digest(body)) != want {
            return Err("the bundle's checksum does not match its contents".into());
        }
        let text = std::str::from_utf8(body).map_err(|_| "the bundle is not UTF-8")?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut rest = text;
        let mut line = |what: &str| -> Result<&str, String> {
            let (l, r) = rest
                .split_once('\n')
                .ok_or_else(|| format!("the bundle ends before {what}"))?;
            rest = r;
            Ok(l)
        };
        if line("its header")? != MAGIC {
            return Err(format!(
                "not an AeroDB auditor bundle (first line is not {MAGIC:?})"
            ));
        }
        let tenant = match line("the tenant")?.strip_prefix("tenant ") {
            Some("*") => None,
            Some(t) => Some(
                String::from_utf8(b64.decode(t).map_err(|_| "the tenant is not base64")?)
                    .map_err(|_| "the tenant is not UTF-8")?,
            ),
            None => return Err("expected the tenant line".into()),
        };
        // A note block: `<name> <len>\n` then exactly len bytes.
        let mut block = |name: &str| -> Result<Option<String>, String> {
            let (l, r) = rest
                .split_once('\n')
                .ok_or_else(|| format!("the bundle ends before {name}"))?;
            let n: usize = l
                .strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("expected `{name} <bytes>`, found {l:?}"))?;
            if n > MAX_NOTE_BYTES || n > r.len() || !r.is_char_boundary(n) {
                return Err(format!("the {name} block says {n} bytes"));
            }
            rest = &r[n..];
            Ok((n > 0).then(|| r[..n].to_owned()))
        };
        let checkpoint = block("checkpoint")?.ok_or("the bundle has no checkpoint")?;
        let prior_note = block("prior")?;
        let mut lines = rest.lines();
        let prior = match prior_note {
            Some(note) => {
                let l = lines
                    .next()
                    .ok_or("the prior checkpoint has no consistency proof")?;
                let proof = parse_hashes(
                    l.strip_prefix("consistency ")
                        .ok_or("expected the consistency proof")?
                        .split(' '),
                )?;
                Some((note, proof))
            }
            None => None,
        };
        let mut records = Vec::new();
        loop {
            let l = lines.next().ok_or("the bundle has no end line")?;
            if let Some(n) = l.strip_prefix("end ") {
                if n.parse::<usize>().ok() != Some(records.len()) {
                    return Err(format!(
                        "the end line says {n} records; the bundle holds {}",
                        records.len()
                    ));
                }
                break;
            }
            if records.len() >= MAX_RECORDS {
                return Err(format!("more than {MAX_RECORDS} records"));
            }
            let mut it = l
                .strip_prefix("record ")
                .ok_or_else(|| format!("unexpected line {l:?}"))?
                .split(' ');
            let commit_id: u64 = it
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or("a record without its CommitId")?;
            let enc = it.next().ok_or("a record without its bytes")?;
            if enc.len() / 4 * 3 > MAX_RECORD_BYTES {
                return Err(format!(
                    "record {commit_id} is larger than {MAX_RECORD_BYTES} bytes"
                ));
            }
            let canonical = b64
                .decode(enc)
                .map_err(|_| format!("record {commit_id} is not base64"))?;
            let proof = parse_hashes(it)?;
            records.push(BundledRecord {
                commit_id,
                canonical,
                proof,
            });
        }
        if lines.next().is_some() {
            return Err("bytes after the end line".into());
        }
        Ok(Bundle {
            tenant,
            checkpoint,
            prior,
            records,
        })
    }

    /// Every check an auditor needs, with `key` only: the checkpoint's signature (and the prior's, with the
    /// consistency proof between them), each record's bytes (decode, CommitId, tenant) and hash, its inclusion in
    /// the checkpoint, and the chain link between consecutive CommitIds. `strict` also requires at least one
    /// record, CommitIds strictly increasing and, without a tenant filter, contiguous, and every record's epoch
    /// at most the checkpoint's. Returns the checkpoint, or every problem found.
    pub fn verify(&self, key: &VerifierKey, strict: bool) -> Result<Checkpoint, Vec<String>> {
        let mut problems = Vec::new();
        let cp = match SignedCheckpoint::verify(&self.checkpoint, key) {
            Ok(c) => c.checkpoint,
            Err(e) => return Err(vec![format!("the checkpoint does not verify under {key}: {e}")]),
        };
        if let Some((note, proof)) = &self.prior {
            match SignedCheckpoint::verify(note, key) {
                Err(e) => problems.push(format!("the prior checkpoint does not verify: {e}")),
                Ok(p) => {
                    let p = p.checkpoint;
                    let ok = p.size <= cp.size
                        && (p.size == 0
                            || (p.size == cp.size && p.root == cp.root && proof.is_empty())
                            || merkle::verify_consistency(p.size, cp.size, &p.root, &cp.root, proof));
                    if !ok {
                        problems.push(format!(
                            "the prior checkpoint (size {}) is not consistent with the checkpoint (size {}): the \
                             proof does not verify",
                            p.size, cp.size
                        ));
                    }
                }
            }
        }
        if strict && self.records.is_empty() {
            problems.push("strict: the bundle holds no record".into());
        }
        let mut prev: Option<(u64, Hash)> = None;
        for r in &self.records {
            let id = r.commit_id;
            let hash = record::record_hash(&r.canonical);
            match record::decode(&Bytes::from(r.canonical.clone())) {
                Err(e) => problems.push(format!("record {id}: does not decode: {e}")),
                Ok(d) => {
                    if d.commit_id.0 != id {
                        problems.push(format!("record {id}: its bytes say CommitId {}", d.commit_id.0));
                    }
                    if let Some(t) = &self.tenant {
                        if &d.tenant != t {
                            problems.push(format!("record {id}: tenant {:?}, not {t:?}", d.tenant));
                        }
                    }
                    if strict && d.epoch.0 > cp.epoch.0 {
                        problems.push(format!(
                            "record {id}: epoch {} after the checkpoint's {}",
                            d.epoch, cp.epoch
                        ));
                    }
                    if let Some((p, ph)) = prev {
                        if id == p + 1 && d.prev_hash != ph {
                            problems.push(format!("record {id}: its prev_hash does not link to record {p}"));
                        }
                    }
                }
            }
            if id == 0 || id > cp.size {
                problems.push(format!(
                    "record {id}: outside the checkpoint's {} records",
                    cp.size
                ));
            } else if !merkle::verify_inclusion(
                &merkle::leaf_hash(&hash),
                id - 1,
                cp.size,
                &r.proof,
                &cp.root,
            ) {
                problems.push(format!(
                    "record {id}: not included in the checkpoint (the proof does not verify)"
                ));
            }
            if let Some((p, _)) = prev {
                if id <= p {
                    problems.push(format!("record {id} after record {p}: not in CommitId order"));
                } else if strict && self.tenant.is_none() && id != p + 1 {
                    problems.push(format!("strict: records {} to {} are missing", p + 1, id - 1));
                }
            }
            prev = Some((id, hash));
        }
        if problems.is_empty() {
            Ok(cp)
        } else {
            Err(problems)
        }
    }
}
