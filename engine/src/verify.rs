//! The offline verifier (B-2): walks a data directory without changing it and checks everything that can be
//! checked — every frame CRC (WAL), every record's encoding, CommitId, epoch and `prev_hash` link, every stored
//! Merkle node (strict mode), every checkpoint signature, every checkpoint's root at its size, the consistency
//! of each checkpoint with the one before it, every index run's checksums and structure, and (strict mode) that
//! the index runs hold exactly the entries the log implies. It reports every problem it finds with its location instead of
//! stopping at the first.

use std::{
    fmt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use aerodb_wal::{
    fs::{Fs, OpenMode, RealFs},
    CommitId, Wal,
};
use bytes::Bytes;

use crate::{
    checkpoint::{parse_entries, SignedCheckpoint, SigningKey, VerifierKey},
    db::KEY_FILE,
    error::{Error, Result},
    index::IndexCheck,
    merkle::{self, leaf_hash, node_hash, Hash, NodeSource},
    record::{self, genesis_hash, record_hash},
};

/// What to verify with.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The log's verifier key. `None`: derive it from `<dir>/checkpoint.key` (for an operator on the node itself;
    /// an auditor passes the published key).
    pub verifier: Option<VerifierKey>,
    /// Compare every stored Merkle node with the recomputed tree, not only the roots checkpoints sign, and every
    /// index entry with the log.
    pub strict: bool,
}

/// One thing that is wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The WAL itself is corrupt (a frame CRC, a segment, …); nothing past it could be read.
    Wal(String),
    /// A torn tail that recovery would discard (not acknowledged data; reported for completeness).
    TornTail(String),
    /// A derived file is behind the log (a crash before it was written or synced): the next open rebuilds it
    /// from the log. Not damage.
    Behind(String),
    /// Worth knowing, not damage: e.g. no checkpoint at all on a log with records.
    Notice(String),
    /// A record does not decode or does not continue the chain.
    Record {
        /// Its CommitId.
        commit_id: u64,
        /// What is wrong.
        what: String,
    },
    /// A stored Merkle node differs from the recomputed one.
    Node {
        /// Its level (0 = leaves).
        level: u32,
        /// Its index in the level.
        index: u64,
    },
    /// A level of the Merkle store has the wrong number of nodes.
    LevelLength {
        /// The level.
        level: u32,
        /// Nodes stored.
        stored: u64,
        /// Nodes the log implies.
        expected: u64,
    },
    /// The key/tenant index on disk is damaged or disagrees with the log (derived data: the next open drops the
    /// bad runs and rebuilds them from the log).
    Index(String),
    /// A checkpoint is bad.
    Checkpoint {
        /// Its position in `checkpoints.log` (1-based).
        number: usize,
        /// What is wrong.
        what: String,
    },
}

impl Problem {
    /// Whether opening the directory repairs this without losing anything acknowledged (a torn final write, a
    /// derived file behind the log), or it is only a note — as opposed to damage.
    #[must_use]
    pub fn is_repairable(&self) -> bool {
        matches!(
            self,
            Problem::TornTail(_) | Problem::Behind(_) | Problem::Notice(_)
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Wal(w) => write!(f, "WAL: {w}"),
            Problem::TornTail(w) => write!(f, "torn tail (unacknowledged; recovery cuts it): {w}"),
            Problem::Behind(w) => write!(f, "behind the log (the next open rebuilds it): {w}"),
            Problem::Notice(w) => write!(f, "note: {w}"),
            Problem::Record { commit_id, what } => write!(f, "record {commit_id}: {what}"),
            Problem::Node { level, index } => write!(
                f,
                "Merkle node level {level} index {index} does not match the log"
            ),
            Problem::LevelLength {
                level,
                stored,
                expected,
            } => {
                write!(
                    f,
                    "Merkle level {level} stores {stored} nodes, the log implies {expected}"
                )
            }
            Problem::Checkpoint { number, what } => write!(f, "checkpoint #{number}: {what}"),
            Problem::Index(what) => write!(f, "{what}"),
        }
    }
}

/// What the verifier checked and found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Records read and checked.
    pub records: u64,
    /// Bytes of records read.
    pub bytes: u64,
    /// Stored Merkle nodes compared (strict mode).
    pub nodes_checked: u64,
    /// Checkpoints in the log.
    pub checkpoints: usize,
    /// Checkpoints whose signature and root verified.
    pub checkpoints_ok: usize,
    /// Consistency proofs between consecutive checkpoints verified.
    pub consistency_ok: usize,
    /// Everything wrong (the first 1,000).
    pub problems: Vec<Problem>,
    /// Wall time.
    pub elapsed: Duration,
}

impl VerifyReport {
    /// True when nothing is wrong (a torn, unacknowledged tail does not count).
    #[must_use]
    pub fn ok(&self) -> bool {
        self.problems.iter().all(Problem::is_repairable)
    }

    fn problem(&mut self, p: Problem) {
        // (Repairable and notice lines are reported like the others; `ok` tells them apart.)
        if self.problems.len() < 1000 {
            self.problems.push(p);
        }
    }
}

/// Stored Merkle levels, read-only.
struct LevelMaps {
    levels: Vec<Bytes>,
}

impl LevelMaps {
    fn open(fs: &dyn Fs, dir: &Path) -> Self {
        let mut levels = Vec::new();
        loop {
            let path = dir.join(format!("level-{:02}.hashes", levels.len()));
            match fs.open(&path, OpenMode::Read).and_then(|f| f.map()) {
                Ok(b) => levels.push(b),
                Err(_) => break,
            }
        }
        Self { levels }
    }

    fn len(&self, level: usize) -> u64 {
        self.levels.get(level).map_or(0, |l| l.len() as u64 / 32)
    }

    fn get(&self, level: usize, index: u64) -> Option<Hash> {
        let at = usize::try_from(index).ok()?.checked_mul(32)?;
        let b = self.levels.get(level)?.get(at..at + 32)?;
        let mut h = [0u8; 32];
        h.copy_from_slice(b);
        Some(h)
    }
}

impl NodeSource for LevelMaps {
    type Error = merkle::MissingNode;

    fn node(&self, level: u32, index: u64) -> Result<Hash, merkle::MissingNode> {
        self.get(level as usize, index)
            .ok_or(merkle::MissingNode { level, index })
    }
}

/// The right edge of the tree while streaming leaves: perfect subtrees, largest first.
#[derive(Default)]
struct Frontier {
    stack: Vec<(u32, Hash)>,
    /// Nodes completed so far per level (the next index at that level).
    counts: Vec<u64>,
}

impl Frontier {
    /// Adds a leaf; calls `done(level, index, hash)` for every node it completes.
    fn push(&mut self, leaf: Hash, mut done: impl FnMut(u32, u64, &Hash)) {
        let mut cur = (0u32, leaf);
        loop {
            let level = cur.0 as usize;
            if self.counts.len() <= level {
                self.counts.push(0);
            }
            done(cur.0, self.counts[level], &cur.1);
            self.counts[level] += 1;
            match self.stack.last() {
                Some(&(l, left)) if l == cur.0 => {
                    self.stack.pop();
                    cur = (l + 1, node_hash(&left, &cur.1));
                }
                _ => {
                    self.stack.push(cur);
                    return;
                }
            }
        }
    }

    fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return merkle::empty_root();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }
}

/// Verifies the data directory `dir` on the real file system. `progress(done, total)` is called as records are
/// checked. Returns `Err` only when the directory cannot be read at all (or is locked by a running server).
pub fn verify_dir(
    dir: &Path,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    verify_dir_with_fs(Arc::new(RealFs), dir, opts, progress)
}

/// [`verify_dir`] on any file system.
pub fn verify_dir_with_fs(
    fs: Arc<dyn Fs>,
    dir: &Path,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let verifier = match &opts.verifier {
        Some(v) => v.clone(),
        None => SigningKey::load(&dir.join(KEY_FILE))?.verifier(),
    };

    // Checkpoints, read without modifying the log file.
    let cp_path = dir.join("checkpoints.log");
    let cp_bytes = match fs.open(&cp_path, OpenMode::Read) {
        Ok(f) => {
            let mut b = vec![0u8; usize::try_from(f.len().unwrap_or(0)).unwrap_or(0)];
            aerodb_wal::fs::read_exact_at(&*f, &mut b, 0).map_err(|e| Error::Io {
                op: "read checkpoint log",
                path: cp_path.clone(),
                source: e,
            })?;
            b
        }
        Err(_) => Vec::new(),
    };
    let notes = match parse_entries(&cp_bytes) {
        Ok((notes, end)) => {
            if end < cp_bytes.len() {
                report.problem(Problem::TornTail(format!(
                    "checkpoints.log: {} bytes after the last entry",
                    cp_bytes.len() - end
                )));
            }
            notes
        }
        Err(e) => {
            report.problem(Problem::Checkpoint {
                number: 0,
                what: e.to_string(),
            });
            Vec::new()
        }
    };
    report.checkpoints = notes.len();
    let no_checkpoints = notes.is_empty();
    // (number, checkpoint) of those whose signature verifies, in log order.
    let mut signed = Vec::new();
    for (i, note) in notes.iter().enumerate() {
        match SignedCheckpoint::verify(note, &verifier) {
            Ok(s) => signed.push((i + 1, s.checkpoint)),
            Err(e) => report.problem(Problem::Checkpoint {
                number: i + 1,
                what: format!("signature: {e}"),
            }),
        }
    }
    let mut by_size: Vec<(usize, u64, Hash)> = signed.iter().map(|(n, c)| (*n, c.size, c.root)).collect();
    by_size.sort_by_key(|&(n, size, _)| (size, n));

    // Read with the widest limits: segment capacities come from their headers, and a record as large as the
    // format allows must be readable for the verifier to judge it.
    let wal_opts = aerodb_wal::Options {
        read_only: true,
        segment_bytes: aerodb_wal::format::MAX_SEGMENT_BYTES,
        max_record_bytes: aerodb_wal::format::MAX_FRAME_BODY_BYTES,
        ..aerodb_wal::Options::default()
    };
    let wal = match Wal::open(fs.clone(), dir.join("wal"), wal_opts) {
        Ok(w) => w,
        Err(aerodb_wal::Error::Corruption(c)) => {
            report.problem(Problem::Wal(c.to_string()));
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some((seg, off, n)) = wal.recovery_report().torn_tail {
        report.problem(Problem::TornTail(format!(
            "{n} bytes at segment {seg} offset {off}"
        )));
    }
    let total = wal.durable_commit_id().0;
    let stored = LevelMaps::open(&*fs, &dir.join("merkle"));
    let mut index = IndexCheck::open(&*fs, &dir.join("index"));
    let mut frontier = Frontier::default();
    let mut prev = genesis_hash();
    let mut last_epoch = 0;
    let mut cps = by_size.iter().peekable();
    let mut node_problems = 0u64;
    for frame in wal.read_from(CommitId(1))? {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                report.problem(Problem::Wal(e.to_string()));
                break;
            }
        };
        let commit = frame.commit_id.0;
        let body = frame.body();
        report.records += 1;
        report.bytes += body.len() as u64;
        match record::decode_header(&body).and_then(|h| record::decode(&body).map(|_| h)) {
            Err(e) => report.problem(Problem::Record {
                commit_id: commit,
                what: e.to_string(),
            }),
            Ok(h) => {
                if h.commit_id != aerodb_wal::CommitId(commit) {
                    report.problem(Problem::Record {
                        commit_id: commit,
                        what: format!("record says CommitId {}", h.commit_id),
                    });
                }
                if h.prev_hash != prev {
                    report.problem(Problem::Record {
                        commit_id: commit,
                        what: "prev_hash does not match the previous record".into(),
                    });
                }
                if h.epoch < aerodb_wal::Epoch(last_epoch) || h.epoch != frame.epoch {
                    report.problem(Problem::Record {
                        commit_id: commit,
                        what: format!("epoch {} after {last_epoch}", h.epoch),
                    });
                }
                last_epoch = last_epoch.max(h.epoch.0);
            }
        }
        if opts.strict {
            if let Ok(v) = record::view(&body) {
                index.record(commit, &v);
            }
        }
        prev = record_hash(&body);
        let mut checked = 0u64;
        frontier.push(leaf_hash(&prev), |level, index, hash| {
            if opts.strict {
                checked += 1;
                // A node the store does not have yet is the store being behind (counted below per level); one it
                // has with other bytes is damage.
                if stored.get(level as usize, index).is_some_and(|h| h != *hash) {
                    node_problems += 1;
                    if node_problems <= 100 {
                        report.problems.push(Problem::Node { level, index });
                    }
                }
            }
        });
        report.nodes_checked += checked;
        while let Some(&&(number, size, root)) = cps.peek() {
            if size > commit {
                break;
            }
            // A checkpoint of the empty tree (a term that started before any record) signs the empty root.
            if size == 0 {
                if root == merkle::empty_root() {
                    report.checkpoints_ok += 1;
                } else {
                    report.problem(Problem::Checkpoint {
                        number,
                        what: "a checkpoint of size 0 signs a root other than the empty tree's".into(),
                    });
                }
            } else if size == commit {
                if frontier.root() == root {
                    report.checkpoints_ok += 1;
                } else {
                    report.problem(Problem::Checkpoint {
                        number,
                        what: format!("root does not match the log at size {size}"),
                    });
                }
            }
            cps.next();
        }
        if commit % 65_536 == 0 {
            progress(commit, total);
        }
    }
    progress(report.records, total);
    if no_checkpoints && report.records > 0 {
        report.problem(Problem::Notice(format!(
            "checkpoints.log is missing or empty, yet the log holds {} records: either the node never signed one \
             (a crash before its first checkpoint) or the file was emptied or deleted — nothing here is anchored \
             by a signature",
            report.records
        )));
    }
    for &(number, size, _) in cps {
        if size == 0 {
            report.checkpoints_ok += 1;
        } else {
            report.problem(Problem::Checkpoint {
                number,
                what: format!("covers {size} records, the log holds {}", report.records),
            });
        }
    }
    let index_problems = if opts.strict {
        index.finish(report.records)
    } else {
        index.problems
    };
    for p in index_problems {
        report.problem(Problem::Index(p));
    }
    if opts.strict {
        let n = report.records;
        for level in 0..stored.levels.len().max(64 - n.leading_zeros() as usize) {
            let (have, want) = (stored.len(level), n >> level);
            if have < want {
                report.problem(Problem::Behind(format!(
                    "Merkle store level {level} holds {have} nodes, the log implies {want}"
                )));
            } else if have > want {
                report.problem(Problem::LevelLength {
                    level: level as u32,
                    stored: have,
                    expected: want,
                });
            }
        }
    }
    // Consecutive checkpoints (in log order) must be consistent: sizes never decrease, and a proof from the
    // stored tree links their roots.
    for w in signed.windows(2) {
        let ((_, a), (nb, b)) = (&w[0], &w[1]);
        if b.size < a.size {
            report.problem(Problem::Checkpoint {
                number: *nb,
                what: format!("size {} after size {}", b.size, a.size),
            });
            continue;
        }
        if a.size == 0 || b.size > report.records {
            continue;
        }
        match merkle::consistency_proof(&stored, a.size, b.size) {
            Ok(p) if merkle::verify_consistency(a.size, b.size, &a.root, &b.root, &p) => {
                report.consistency_ok += 1
            }
            Ok(_) => report.problem(Problem::Checkpoint {
                number: *nb,
                what: format!(
                    "not consistent with the checkpoint before it ({} -> {})",
                    a.size, b.size
                ),
            }),
            Err(e) => report.problem(Problem::Checkpoint {
                number: *nb,
                what: format!("consistency proof: {e}"),
            }),
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
