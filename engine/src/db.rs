//! The `Db` API: what a Rust application links.
//!
//! Writes: every append takes the chain lock (the engine's ordering lock), assigns the next CommitId(s), encodes
//! the canonical record with the previous record's hash, and queues it in the WAL's group commit under the WAL's
//! own ordering lock ([`aerodb_wal::Wal::enqueue_with`]), so the hash chain follows CommitId order. The key and
//! tenant index entries are added next, still under the chain lock but no longer under the WAL's (the group-commit
//! leader takes that one after every fsync); every index lookup is bounded by the applied mark. After the WAL
//! acknowledges (per its durability mode) the record is *applied* — Merkle leaf, tip, applied mark — strictly in
//! CommitId order and only up to both the durable and the indexed mark, so a reader never sees a record that could
//! still be lost, nor one whose index entries are missing.
//!
//! Reads see the applied prefix. Values are not copied into the index: the index maps a key to the CommitIds that
//! wrote it and the value is read from the record in the WAL. The index itself is persisted as sorted runs
//! (see [`crate::index`]), so neither its memory use nor reopening grows with the log.

use std::{
    collections::VecDeque,
    ops::{Bound, RangeBounds},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aerodb_wal::{
    fs::{Fs, MemFs, RealFs},
    CommitId, Epoch, Wal,
};
use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::{
    checkpoint::{Checkpoint, CheckpointLog, SignedCheckpoint, SigningKey, VerifierKey},
    error::{Error, NotWritable, Result},
    index::{ver_commit, ver_deleted, Index, IndexFiles, KEYS, TENANTS},
    merkle::{self, leaf_hash, Hash},
    record::{self, genesis_hash, record_hash, Op, Payload, Record, RecordError},
    store::MerkleStore,
};

/// Options for [`Db::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The log's origin: the checkpoint origin line and the signing key's name. No spaces or `+`.
    pub origin: String,
    /// The checkpoint signing key. `None`: load `<dir>/checkpoint.key`, creating it (mode 0600) on first open.
    pub signing_key: Option<SigningKey>,
    /// The epoch stamped on every record this node writes.
    pub epoch: Epoch,
    /// Emit a checkpoint after this many new records (0: never by count).
    pub checkpoint_every_records: u64,
    /// Emit a checkpoint when this much time passed and there are new records (`None`: never by time).
    pub checkpoint_interval: Option<Duration>,
    /// Refuse to open when the startup integrity check fails (E-6). `false` only downgrades failures to a loud
    /// warning.
    pub fail_on_startup_check: bool,
    /// Open without write authority and without changing any file: every append is refused with
    /// [`NotWritable::NotWriteAuthority`]; what a writable open would repair (a torn log tail, derived files behind
    /// the log) is reported and caught up in memory only.
    pub read_only: bool,
    /// A replica: no write authority (as `read_only`), but records replicated from the primary are appended with
    /// [`Db::append_replicated`], and the index is maintained on disk as on a primary.
    pub replica: bool,
    /// Flush the in-memory part of the key and tenant index to a run on disk once it holds this many
    /// versions (one per key written plus one per record). Bounds the index's heap use; reopening replays at
    /// most about this many records' keys.
    pub index_flush_versions: u64,
    /// WAL options (segment size, record size limit, durability mode). The engine always writes its segments
    /// without a segment digest (`segment_digest` is ignored): the record hash chain covers every frame.
    pub wal: aerodb_wal::Options,
    /// Run after every checkpoint this database signs; set it with [`Db::on_checkpoint`].
    pub checkpoint_hook: CheckpointHook,
}

/// A function run after each checkpoint a database signs, with the checkpoint's tree size (a primary uses it to
/// send the checkpoint to its replicas at once). Shared by every clone of the [`Options`] it is in.
#[derive(Clone, Default)]
pub struct CheckpointHook(Arc<RwLock<Option<HookFn>>>);

type HookFn = Arc<dyn Fn(u64) + Send + Sync>;

impl std::fmt::Debug for CheckpointHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().is_some();
        write!(f, "CheckpointHook({})", if set { "set" } else { "unset" })
    }
}

impl CheckpointHook {
    fn fire(&self, size: u64) {
        let hook = self.0.read().clone();
        if let Some(h) = hook {
            h(size);
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            origin: "aerodb-ledger".into(),
            signing_key: None,
            epoch: Epoch(1),
            checkpoint_every_records: 10_000,
            checkpoint_interval: Some(Duration::from_secs(1)),
            fail_on_startup_check: true,
            read_only: false,
            replica: false,
            index_flush_versions: 65_536,
            wal: aerodb_wal::Options::default(),
            checkpoint_hook: CheckpointHook::default(),
        }
    }
}

/// The role a [`Db::reopen_as`] opens the database in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenRole {
    /// The writable primary of term `epoch` (stamped on every record it writes).
    Primary {
        /// The new term's epoch.
        epoch: Epoch,
    },
    /// A replica: records come from the primary ([`Db::append_replicated`]).
    Replica,
}

/// What an append returns: enough for the writer to verify its own write later (E-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The record's CommitId.
    pub commit_id: CommitId,
    /// `SHA-256` of the record's canonical bytes.
    pub record_hash: Hash,
    /// The record's Merkle leaf index (`commit_id - 1`).
    pub leaf_index: u64,
}

/// A record read back, with its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The decoded record.
    pub record: Record,
    /// `SHA-256` of its canonical bytes.
    pub hash: Hash,
    /// The canonical bytes (what `hash` covers; the Merkle leaf is `SHA-256(0x00 ‖ hash)`).
    pub canonical: Bytes,
}

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The record that wrote it.
    pub commit_id: CommitId,
    /// The value, or `None` for a delete.
    pub value: Option<Bytes>,
}

/// An inclusion proof of one record in a tree of a given size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// Leaf index (`commit_id - 1`).
    pub leaf_index: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// The audit path, leaf-side first.
    pub hashes: Vec<Hash>,
}

/// The head of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// The last applied CommitId (0 when empty); also the tree size.
    pub commit_id: CommitId,
    /// Its record hash (the genesis hash when empty).
    pub record_hash: Hash,
    /// The Merkle root over all applied records.
    pub root: Hash,
}

/// A record to append.
#[derive(Clone, Debug)]
pub struct NewRecord {
    /// Its tenant.
    pub tenant: String,
    /// Its content.
    pub payload: Payload,
}

/// What opening found and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The WAL's recovery report.
    pub wal: aerodb_wal::RecoveryReport,
    /// Records verified (every hash-chain link checked).
    pub records_verified: u64,
    /// Merkle leaves rebuilt from the log (store missing or behind).
    pub leaves_rebuilt: u64,
    /// Checkpoints verified (signature, root, monotonic size).
    pub checkpoints_verified: usize,
    /// Integrity problems found (empty when the check passed).
    pub problems: Vec<String>,
    /// Index runs loaded from disk.
    pub index_runs: usize,
    /// Records whose keys were replayed from the log into the index (those after the persisted runs).
    pub index_replayed: u64,
    /// Derived data that was refused and rebuilt from the log (a damaged index run or manifest).
    pub repairs: Vec<String>,
    /// Time the WAL's recovery took: the segment scan on both cores, every frame CRC, and in the same pass
    /// every record's hash and its link to the record before it within its segment.
    pub wal_recovery: Duration,
    /// Time linking the segments' hash chains took, with the Merkle leaves rebuilt or compared.
    pub chain_verify: Duration,
    /// Time the whole open took.
    pub elapsed: Duration,
}

#[derive(Debug)]
struct Chain {
    last_hash: Hash,
    last_ts: u64,
}

#[derive(Debug)]
struct State {
    merkle: MerkleStore,
    visible: u64,
    tip_hash: Hash,
    latest: Option<SignedCheckpoint>,
    /// Applying a durable record failed (the Merkle store could not be written): why. Nothing more is applied
    /// or accepted until the database is reopened.
    apply_failed: Option<String>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    opts: Options,
    /// The record version this log follows (and appends): 2 (keys per tenant) or 1 (global keys). Set by the
    /// first record; a new log takes the current version.
    version: std::sync::atomic::AtomicU8,
    wal: Wal,
    signer: SigningKey,
    verifier: VerifierKey,
    chain: std::sync::Mutex<Chain>,
    pending: Mutex<VecDeque<Pending>>,
    /// The highest applied CommitId, readable without the state lock.
    applied: AtomicU64,
    /// The highest CommitId added to the index; records are applied only up to it.
    indexed: AtomicU64,
    state: RwLock<State>,
    checkpoints: Mutex<CheckpointLog>,
    not_writable: RwLock<Option<NotWritable>>,
    /// Whether `not_writable` is set, readable without its lock (every append checks it).
    refusing: AtomicBool,
    stop: AtomicBool,
    tick: (Mutex<()>, Condvar),
    /// The index directory (manifest lock and files).
    index_files: Arc<IndexFiles>,
    /// The key and tenant index. Records are added under the chain lock right after they are queued, before
    /// their commit completes (off the acknowledgement path); readers bound every lookup by the applied mark, so
    /// they never see them early.
    index: RwLock<Index>,
    /// One index flush at a time (background thread or `flush_index`).
    index_flush: Mutex<()>,
    /// One index merge at a time.
    index_merge: Mutex<()>,
    /// Set (and signalled) when a flush added a run, so the merge thread looks for work.
    merge_wake: (Mutex<bool>, Condvar),
}

/// An open AeroDB database. `Db` is `Send + Sync`; share it behind an `Arc` across threads.
#[derive(Debug)]
pub struct Db {
    /// The open database, or why it is gone (an in-place recovery could not open it again).
    live: RwLock<Live>,
    /// The background threads of the open database (periodic checkpoints and index flushes; index merges).
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// What `open` was given, so [`Db::recover_in_place`] can open the same database again.
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// The options of the current open (a [`Db::reopen_as`] changes the role and epoch).
    opts: Mutex<Options>,
    verifier: VerifierKey,
    report: OpenReport,
    /// The report of the last in-place recovery, and how many succeeded.
    recovered: Mutex<(Option<OpenReport>, u64)>,
    /// One in-place recovery at a time.
    recovering: Mutex<()>,
}

/// The state behind a [`Db`]: open, or gone for a stated reason.
#[derive(Debug)]
enum Live {
    Open(Arc<Inner>),
    Gone(String),
}

/// File name of the generated signing key.
pub const KEY_FILE: &str = "checkpoint.key";
const CHECKPOINT_LOG: &str = "checkpoints.log";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Db {
    /// Opens (creating if needed) the database in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        Self::open_with_fs(Arc::new(RealFs), dir.as_ref(), opts)
    }

    /// An explicit in-memory database (E-7): the same code over a memory file system; nothing survives the
    /// process. There is no silent fallback from disk to memory anywhere: this is the only way to get one.
    pub fn open_in_memory(opts: Options) -> Result<Db> {
        let mut opts = opts;
        if opts.signing_key.is_none() {
            opts.signing_key = Some(SigningKey::generate(&opts.origin)?);
        }
        Self::open_with_fs(Arc::new(MemFs::new()), Path::new("/aerodb"), opts)
    }

    /// Opens the database in `dir` on the file system `fs` (tests use the memory and fault file systems).
    pub fn open_with_fs(fs: Arc<dyn Fs>, dir: &Path, opts: Options) -> Result<Db> {
        let (inner, report) = open_inner(fs.clone(), dir, opts.clone())?;
        let threads = start_background(&inner)?;
        Ok(Db {
            verifier: inner.verifier.clone(),
            live: RwLock::new(Live::Open(inner)),
            threads: Mutex::new(threads),
            fs,
            dir: dir.to_owned(),
            opts: Mutex::new(opts),
            report,
            recovered: Mutex::new((None, 0)),
            recovering: Mutex::new(()),
        })
    }

    /// What opening found and verified.
    #[must_use]
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The log's counters since open (frames, bytes, group commits, fsyncs and their latency).
    #[must_use]
    pub fn wal_stats(&self) -> aerodb_wal::WalStats {
        self.live().map(|i| i.wal.stats()).unwrap_or_default()
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key that verifies this log's checkpoints (`<name>+<id>+<key>`).
    #[must_use]
    pub fn verifier_key(&self) -> VerifierKey {
        self.verifier.clone()
    }

    /// Why writes are refused, if they are.
    #[must_use]
    pub fn not_writable(&self) -> Option<NotWritable> {
        match &*self.live.read() {
            Live::Open(i) => i.writability(),
            Live::Gone(why) => Some(NotWritable::LogFailed(why.clone())),
        }
    }

    /// Appends one record.
    pub fn append(&self, tenant: &str, payload: Payload) -> Result<Receipt> {
        let inner = self.inner()?;
        // One item on the stack: a single append allocates no vectors of its own.
        let mut items = [Item::new(tenant, &payload)];
        inner.append_items(&mut items)?;
        Ok(items[0].receipt())
    }

    /// Sets `key` to `value` (a batch of one put).
    pub fn put(&self, tenant: &str, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<Receipt> {
        self.append(
            tenant,
            Payload::Batch(vec![Op::Put {
                key: key.into(),
                value: value.into(),
            }]),
        )
    }

    /// Removes `key` (a batch of one delete).
    pub fn delete(&self, tenant: &str, key: impl Into<Bytes>) -> Result<Receipt> {
        self.append(tenant, Payload::Batch(vec![Op::Delete { key: key.into() }]))
    }

    /// Applies puts and deletes atomically as one record.
    pub fn append_batch(&self, tenant: &str, ops: Vec<Op>) -> Result<Receipt> {
        self.append(tenant, Payload::Batch(ops))
    }

    /// Appends an opaque event record.
    pub fn append_event(&self, tenant: &str, payload: impl Into<Bytes>) -> Result<Receipt> {
        self.append(tenant, Payload::Event(payload.into()))
    }

    /// Checks a record the way an append would (tenant, batch, size) without writing it, so a caller that
    /// gathers records from many clients into one [`Db::append_many`] can refuse a bad one alone.
    pub fn check(&self, tenant: &str, payload: &Payload) -> Result<()> {
        check_record(tenant, payload, self.opts.lock().wal.max_record_bytes)
    }

    /// Appends several records as consecutive CommitIds in one durable write.
    pub fn append_many(&self, records: &[NewRecord]) -> Result<Vec<Receipt>> {
        let inner = self.inner()?;
        let mut items: Vec<Item<'_>> = records
            .iter()
            .map(|r| Item::new(r.tenant.as_str(), &r.payload))
            .collect();
        inner.append_items(&mut items)?;
        Ok(items.iter().map(Item::receipt).collect())
    }

    /// Appends one record and returns it with a checkpoint that covers it and the inclusion proof against that
    /// checkpoint (E-8), so the writer can verify its own write. Makes a checkpoint if none covers it yet.
    pub fn append_and_prove(
        &self,
        tenant: &str,
        payload: Payload,
    ) -> Result<(Receipt, SignedCheckpoint, InclusionProof)> {
        let receipt = self.append(tenant, payload)?;
        let cp = match self.latest_checkpoint() {
            Some(c) if c.checkpoint.size >= receipt.commit_id.0 => c,
            _ => self.checkpoint_now()?,
        };
        // The record's hash is the receipt's: no need to read it back from the log.
        let proof = self.proof_for(receipt.commit_id.0, &receipt.record_hash, cp.checkpoint.size)?;
        Ok((receipt, cp, proof))
    }

    /// The record `commit_id`, or `None` if the log does not (yet) hold it.
    pub fn record(&self, commit_id: CommitId) -> Result<Option<StoredRecord>> {
        let inner = self.inner()?;
        let commit_id = commit_id.0;
        if commit_id == 0 || commit_id > inner.state.read().visible {
            return Ok(None);
        }
        inner.read_record(commit_id).map(Some)
    }

    /// Records from `from` (inclusive), at most `limit`.
    pub fn records(&self, from: CommitId, limit: usize) -> Result<Vec<StoredRecord>> {
        let inner = self.inner()?;
        let from = from.0;
        let visible = inner.state.read().visible;
        let mut out = Vec::new();
        for f in inner.wal.read_from(CommitId(from.max(1)))? {
            let f = f?;
            if f.commit_id.0 > visible || out.len() >= limit {
                break;
            }
            out.push(stored(f.commit_id.0, f.body())?);
        }
        Ok(out)
    }

    /// The current value of `key` in `tenant`'s key space (on a log of version-1 records, whose keys are global
    /// across tenants, the tenant does not scope the key; see [`Db::tenant_keys`]).
    pub fn get(&self, tenant: &str, key: &[u8]) -> Result<Option<Bytes>> {
        self.get_at(tenant, key, CommitId(u64::MAX))
    }

    /// The value `key` (in `tenant`'s key space) had right after CommitId `at` was applied.
    pub fn get_at(&self, tenant: &str, key: &[u8], at: CommitId) -> Result<Option<Bytes>> {
        let inner = self.inner()?;
        let at = at.0.min(inner.visible());
        let version = inner.with_scoped(tenant, key, |k| inner.index.read().version_at(KEYS, k, at));
        match version {
            Some(v) if !ver_deleted(v) => inner.value_in(ver_commit(v), key),
            _ => Ok(None),
        }
    }

    /// Every version of `key` in `tenant`'s key space, oldest first.
    pub fn history(&self, tenant: &str, key: &[u8]) -> Result<Vec<Version>> {
        let inner = self.inner()?;
        let visible = inner.visible();
        let versions = inner
            .index
            .read()
            .versions(KEYS, &inner.scoped(tenant, key), visible);
        // (A history allocates its answer anyway; only the point reads reuse a buffer.)
        versions
            .into_iter()
            .map(|v| (ver_commit(v), ver_deleted(v)))
            .map(|(commit, deleted)| {
                let value = if deleted {
                    None
                } else {
                    inner.value_in(commit, key)?
                };
                Ok(Version {
                    commit_id: CommitId(commit),
                    value,
                })
            })
            .collect()
    }

    /// Current `(key, value)` pairs of `tenant` with keys in `range`, in key order, at most `limit`.
    pub fn scan<R: RangeBounds<[u8]>>(
        &self,
        tenant: &str,
        range: R,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let inner = self.inner()?;
        let visible = inner.visible();
        // The tenant's key space is the scoped keys `tenant ‖ 0x00 ‖ key`: bound the range inside it.
        let scope = inner.scoped(tenant, b"");
        let bound = |b: Bound<&[u8]>| match b {
            Bound::Included(k) => Bound::Included([scope.as_slice(), k].concat()),
            Bound::Excluded(k) => Bound::Excluded([scope.as_slice(), k].concat()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let lo = match bound(range.start_bound()) {
            Bound::Unbounded => Bound::Included(scope.clone()),
            b => b,
        };
        let hi = match bound(range.end_bound()) {
            // Past the scope: its successor (none when the scope is empty, on a version-1 log).
            Bound::Unbounded => prefix_successor(&scope).map_or(Bound::Unbounded, Bound::Excluded),
            b => b,
        };
        let hits = inner
            .index
            .read()
            .scan(bound_ref(&lo), bound_ref(&hi), visible, limit);
        hits.into_iter()
            .filter_map(|(k, c)| {
                let key = k.slice(scope.len()..);
                match inner.value_in(c, &key) {
                    Ok(Some(v)) => Some(Ok((key, v))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .collect()
    }

    /// Current `(key, value)` pairs of `tenant` whose key starts with `prefix`, at most `limit`.
    pub fn scan_prefix(&self, tenant: &str, prefix: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        // The range [prefix, successor of prefix): only matching keys are visited, so no value is read from the
        // log for a key that would be discarded.
        let end = prefix_successor(prefix);
        let hi = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.scan::<(Bound<&[u8]>, Bound<&[u8]>)>(tenant, (Bound::Included(prefix), hi), limit)
    }

    /// Whether this log gives each tenant its own key space (its records are version 2, the default for a new
    /// log) or keeps one global key space (version-1 records, written before tenants had their own keys; such a
    /// log keeps its rule, and the tenant arguments of the key reads do not scope keys on it).
    #[must_use]
    pub fn tenant_keys(&self) -> bool {
        self.live()
            .is_none_or(|i| record::tenant_keys(i.version.load(Ordering::Acquire)))
    }

    /// Records of `tenant` with CommitId ≥ `from`, oldest first, at most `limit`.
    pub fn scan_tenant(&self, tenant: &str, from: CommitId, limit: usize) -> Result<Vec<StoredRecord>> {
        let inner = self.inner()?;
        let from = from.0;
        let visible = inner.visible();
        let ids: Vec<u64> = inner
            .index
            .read()
            .versions_from(TENANTS, tenant.as_bytes(), from, visible, limit)
            .into_iter()
            .map(ver_commit)
            .collect();
        ids.into_iter().map(|c| inner.read_record(c)).collect()
    }

    /// The head of the log.
    pub fn tip(&self) -> Result<Tip> {
        let inner = self.inner()?;
        let st = inner.state.read();
        Ok(Tip {
            commit_id: CommitId(st.visible),
            record_hash: st.tip_hash,
            root: merkle::root(&st.merkle, st.visible)?,
        })
    }

    /// The Merkle root of the first `size` records.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        let inner = self.inner()?;
        let st = inner.state.read();
        if size > st.visible {
            return Err(Error::OutOfRange {
                what: "tree size",
                value: size,
                size: st.visible,
            });
        }
        Ok(merkle::root(&st.merkle, size)?)
    }

    /// The inclusion proof of record `commit_id` in the tree of `tree_size` records.
    pub fn inclusion_proof(&self, commit_id: CommitId, tree_size: u64) -> Result<InclusionProof> {
        let inner = self.inner()?;
        let commit_id = commit_id.0;
        {
            let st = inner.state.read();
            check_range("tree size", tree_size, st.visible)?;
            check_range("CommitId", commit_id, tree_size)?;
        }
        // The leaf comes from the log (its CRC-checked frame), never from the store the proof is built from; the
        // record is hashed but not decoded.
        let body = inner.body_of(commit_id)?;
        self.proof_for(commit_id, &record_hash(&body), tree_size)
    }

    /// The inclusion proof of record `commit_id` (whose hash, from the log, is `record_hash`), checked before it
    /// is returned: never serve a proof that does not verify. The root is the signed checkpoint's of that size
    /// when it is the newest one (else the store's).
    fn proof_for(&self, commit_id: u64, record_hash: &Hash, tree_size: u64) -> Result<InclusionProof> {
        let inner = self.inner()?;
        let st = inner.state.read();
        check_range("tree size", tree_size, st.visible)?;
        check_range("CommitId", commit_id, tree_size)?;
        let hashes = merkle::inclusion_proof(&st.merkle, commit_id - 1, tree_size)?;
        let leaf = leaf_hash(record_hash);
        let root = self.expected_root(&st, tree_size)?;
        if !merkle::verify_inclusion(&leaf, commit_id - 1, tree_size, &hashes, &root) {
            return Err(inner.merkle_damaged(
                commit_id,
                format!("the inclusion proof of record {commit_id} in a tree of {tree_size} does not verify"),
            ));
        }
        Ok(InclusionProof {
            leaf_index: commit_id - 1,
            tree_size,
            hashes,
        })
    }

    /// The root a proof for a tree of `size` must reach: the newest signed checkpoint's when it has that size,
    /// else the one the store computes.
    fn expected_root(&self, st: &State, size: u64) -> Result<Hash> {
        match &st.latest {
            Some(c) if c.checkpoint.size == size => Ok(c.checkpoint.root),
            _ => Ok(merkle::root(&st.merkle, size)?),
        }
    }

    /// The consistency proof between the trees of `old_size` and `new_size` records.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        let inner = self.inner()?;
        let st = inner.state.read();
        check_range("tree size", new_size, st.visible)?;
        check_range("old tree size", old_size, new_size)?;
        let proof = merkle::consistency_proof(&st.merkle, old_size, new_size)?;
        let (old_root, new_root) = (
            self.expected_root(&st, old_size)?,
            self.expected_root(&st, new_size)?,
        );
        // From size 0 there is nothing to prove (the proof is empty).
        if old_size > 0 && !merkle::verify_consistency(old_size, new_size, &old_root, &new_root, &proof) {
            return Err(inner.merkle_damaged(
                new_size,
                format!("the consistency proof from {old_size} to {new_size} does not verify"),
            ));
        }
        Ok(proof)
    }

    /// The newest signed checkpoint.
    #[must_use]
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.live()?.state.read().latest.clone()
    }

    /// The `index`-th signed checkpoint of the checkpoint log (0 = the oldest), if there is one: what a primary
    /// streams to its replicas, in order, so a replica's checkpoint log is a copy of the primary's.
    ///
    /// Every note in the log was verified when it was stored (signed here, or checked by [`Db::add_checkpoint`])
    /// and again at open, so only its body is parsed here: the send loop asks for one on every turn, and an
    /// Ed25519 verification per turn would be work done twice.
    pub fn checkpoint_at(&self, index: usize) -> Option<SignedCheckpoint> {
        let note = self.live()?.checkpoints.lock().notes().get(index)?.clone();
        let body = &note[..=note.find("\n\n")?];
        let checkpoint = Checkpoint::parse_body(body).ok()?;
        Some(SignedCheckpoint { checkpoint, note })
    }

    /// Every signed checkpoint, oldest first.
    pub fn checkpoints(&self) -> Vec<String> {
        self.live()
            .map(|i| i.checkpoints.lock().notes().to_vec())
            .unwrap_or_default()
    }

    /// Runs `hook` (with the tree size) after every checkpoint this database signs from now on, this open and
    /// any reopen; replaces an earlier hook.
    pub fn on_checkpoint(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        *self.opts.lock().checkpoint_hook.0.write() = Some(Arc::new(hook));
    }

    /// Signs and persists a checkpoint of everything applied now (returns the newest one if nothing is new and
    /// this term has signed before). Only a writable database signs: a replica, read-only, halted or failed one
    /// gets [`Error::NotWritable`] (a replica's checkpoints are the primary's, via [`Db::add_checkpoint`]).
    pub fn checkpoint_now(&self) -> Result<SignedCheckpoint> {
        let inner = self.inner()?;
        inner.checkpoint_now()
    }

    /// The frames `from..` (inclusive) exactly as stored (header and body), up to about `max_bytes` (at least one
    /// frame when there is one) and never past the applied mark: what a primary streams to its replicas.
    pub fn raw_frames(&self, from: CommitId, max_bytes: usize) -> Result<Vec<Bytes>> {
        let inner = self.inner()?;
        let from = from.0;
        let visible = inner.visible();
        let mut out = Vec::new();
        if from == 0 || from > visible {
            return Ok(out);
        }
        let mut bytes = 0;
        for f in inner.wal.read_from(CommitId(from))? {
            let f = f?;
            if f.commit_id.0 > visible || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes += f.raw.len();
            out.push(f.raw);
        }
        Ok(out)
    }

    /// Leaves in the Merkle store (equal to the applied records once open has rebuilt any it lacked).
    #[must_use]
    pub fn merkle_leaves(&self) -> u64 {
        self.live().map_or(0, |i| i.state.read().merkle.size())
    }

    /// Whether the database is open as a replica ([`Options::replica`], or [`OpenRole::Replica`] after a
    /// [`Db::reopen_as`]).
    #[must_use]
    pub fn is_replica(&self) -> bool {
        self.opts.lock().replica
    }

    /// The capacity of new WAL segments (a replica must use the primary's, so sealed segments are byte-identical).
    #[must_use]
    pub fn segment_bytes(&self) -> u64 {
        self.opts.lock().wal.segment_bytes
    }

    /// Replica side: appends records received from the primary, each given as `(epoch, body, record hash)`
    /// of its frame in CommitId order starting right after the tip, so the replica's log holds the very bytes of the primary's
    /// (frame headers are a function of CommitId, epoch and body). Only a database opened as a replica
    /// ([`Options::replica`]) takes replicated records, and it takes nothing else. Every record's CommitId, epoch and `prev_hash` link
    /// are checked under the log's ordering lock before it is written; a record that does not follow the tip is
    /// refused as [`Error::Corruption`] and nothing of the call is written. Returns the new tip once everything is
    /// durable and applied.
    ///
    /// The record hash is the caller's: the replica's frame check has just computed it to link the next frame,
    /// and hashing every record twice on the catch-up path would cost a SHA-256 pass per record for nothing
    /// (debug builds check it). The links themselves are checked here against those hashes, starting from this
    /// log's own last hash.
    pub fn append_replicated(&self, frames: &[(Epoch, &[u8], Hash)]) -> Result<CommitId> {
        let inner = self.inner()?;

        if !inner.opts.replica {
            return Err(Error::InvalidOptions(
                "only a replica (opened with `Options::replica`) appends replicated records".into(),
            ));
        }
        if let Some(f) = inner.wal.failure() {
            return Err(NotWritable::LogFailed(f.to_string()).into());
        }
        if let Some(r @ NotWritable::Halted(_)) = inner.not_writable.read().clone() {
            return Err(r.into());
        }
        let mut last = inner.visible();
        // One log append per run of equal epochs (a frame's epoch is its header's, so a run shares it).
        for run in frames.chunk_by(|a, b| a.0 == b.0) {
            let epoch = run[0].0 .0;
            // Lock order as in `append_items`: the chain lock, then (inside `enqueue_with`) the log's.
            let mut chain = inner.lock_chain();
            // The closure checks every record before pushing any, so a refused run leaves the log untouched.
            let queued = inner.wal.enqueue_with(Epoch(epoch), |sink| {
                let mut prev = chain.last_hash;
                let mut ts = chain.last_ts;
                let mut checked = Vec::with_capacity(run.len());
                for (commit, &(_, body, hash)) in (sink.next_commit_id().0..).zip(run) {
                    debug_assert_eq!(hash, record_hash(body), "the caller's record hash of {commit}");
                    let v = match record::view(body) {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(corruption(commit, e.to_string()))),
                    };
                    let h = v.header;
                    // One log, one key rule: the first record sets it, every later one must follow it.
                    if commit == 1 {
                        inner.version.store(h.version, Ordering::Release);
                    } else if h.version != inner.version.load(Ordering::Acquire) {
                        return Ok(Err(corruption(
                            commit,
                            format!(
                                "replicated record of version {} in a log of version-{} records",
                                h.version,
                                inner.version.load(Ordering::Acquire)
                            ),
                        )));
                    }
                    if h.commit_id != CommitId(commit) || h.epoch != Epoch(epoch) || h.prev_hash != prev {
                        return Ok(Err(corruption(
                            commit,
                            format!(
                                "replicated record (CommitId {}, epoch {}) does not follow this log (next CommitId \
                                 {commit}, frame epoch {epoch}, prev_hash {})",
                                h.commit_id,
                                h.epoch,
                                if h.prev_hash == prev { "links" } else { "differs" }
                            ),
                        )));
                    }
                    checked.push((body, v, hash));
                    prev = hash;
                    ts = ts.max(h.timestamp_ms);
                }
                let mut pending = Vec::with_capacity(run.len());
                for (body, _, hash) in &checked {
                    let commit = sink.push(body)?.0;
                    pending.push(Pending::new(commit, *hash));
                }
                chain.last_hash = prev;
                chain.last_ts = ts;
                last = pending.last().map_or(last, |p| p.commit);
                let first = pending.first().map_or(0, |p| p.commit);
                inner.pending.lock().extend(pending);
                Ok(Ok((first, checked)))
            });
            let ((first, checked), queued) = match queued? {
                (Ok(run), queued) => (run, queued),
                (Err(e), _) => return Err(e),
            };
            inner.index_queued(queued.last().0, |ix| {
                for (i, (_, v, _)) in checked.iter().enumerate() {
                    ix.add_view(first + i as u64, v);
                }
            });
            drop(chain);
            queued.wait()?;
        }
        inner.apply_durable(last)?;
        Ok(CommitId(last))
    }

    /// Replica side: stores a checkpoint the primary signed, after checking its signature (this log's verifier
    /// key: a replica holds the log's key), that its size does not go back and that its root is this log's at that
    /// size. Returns `false` for a checkpoint no newer than the latest one held.
    pub fn add_checkpoint(&self, note: &str) -> Result<bool> {
        let inner = self.inner()?;

        let signed = SignedCheckpoint::verify(note, &inner.verifier)?;
        let c = &signed.checkpoint;
        let mut log = inner.checkpoints.lock();
        {
            let st = inner.state.read();
            // Newer means a larger tree, or the same tree signed by a newer term (its term proof).
            if st
                .latest
                .as_ref()
                .is_some_and(|l| (l.checkpoint.size, l.checkpoint.epoch) >= (c.size, c.epoch))
            {
                return Ok(false);
            }
            if c.size > st.visible {
                return Err(Error::OutOfRange {
                    what: "checkpoint size",
                    value: c.size,
                    size: st.visible,
                });
            }
            if merkle::root(&st.merkle, c.size)? != c.root {
                return Err(corruption(
                    c.size,
                    format!(
                        "checkpoint of size {} signs a root this log does not have",
                        c.size
                    ),
                ));
            }
        }
        inner.store_checkpoint(&mut log, signed)?;
        Ok(true)
    }

    /// Stops all writes (client and replicated) with [`NotWritable::Halted`]: the node halted or learned of
    /// a newer primary term (H-1). Reads are the caller's to refuse. Lasts until the database is reopened.
    pub fn halt(&self, reason: impl Into<String>) {
        if let Some(i) = self.live() {
            i.refuse(NotWritable::Halted(reason.into()));
        }
    }

    /// Writes the in-memory part of the key and tenant index to disk now and merges runs as needed (the background
    /// thread does this whenever it grows past [`Options::index_flush_versions`]).
    pub fn flush_index(&self) -> Result<()> {
        let inner = self.inner()?;
        inner.apply_durable(0)?;
        inner.flush_index_table(1)?;
        inner.merge_index_runs()
    }

    /// Makes everything durable, writes a final checkpoint if there are new records, and stops background work.
    pub fn close(mut self) -> Result<()> {
        self.stop_background();
        let inner = self.inner()?;
        inner.apply_durable(0)?;
        let has_new = {
            let st = inner.state.read();
            st.latest
                .as_ref()
                .map_or(st.visible > 0, |c| c.checkpoint.size < st.visible)
        };
        if has_new && inner.writability().is_none() {
            inner.checkpoint_now()?;
        }
        inner.state.write().merkle.sync()?;
        if inner.wal.failure().is_none() && inner.maintains_index() {
            // Persist the index's memory table so the next open replays nothing.
            inner.flush_index_table(1)?;
            inner.merge_index_runs()?;
        }
        Ok(())
    }

    /// Opens the database again in place after its log failed closed (a full disk, an I/O error, a file that
    /// could not be opened), without a restart: the same steps as a restart — WAL recovery, the startup integrity
    /// check, the Merkle store and index caught up from the log — then writes are accepted again. Callers wait
    /// while it runs (new calls block; calls in flight finish first, for at most 10 s).
    ///
    /// Records whose outcome was unknown (their batch failed after its bytes were written) are kept if recovery
    /// finds them whole, and their bytes are written again and synced ([`Wal::rewrite_active`]): a failed
    /// `fdatasync` may have left them in the page cache only. A CommitId is never handed out twice: the log
    /// continues after what it holds.
    ///
    /// Refused ([`Error::RecoveryRefused`]) unless writes are refused because the log or an apply step failed:
    /// a halted node, a read-only database or a replica's role are not failures. If the database cannot be opened
    /// again (the disk is still full, or the startup check finds damage), it is opened read-only so reads go on,
    /// the error is returned and writes stay refused with the reason; if even that fails, every call answers
    /// [`Error::Unavailable`] until a later recovery succeeds. Returns what the new open found.
    pub fn recover_in_place(&self) -> Result<OpenReport> {
        let _one = self.recovering.lock();
        let old = match &*self.live.read() {
            Live::Open(i) => match i.writability() {
                Some(NotWritable::LogFailed(_)) => Some(i.clone()),
                Some(other) => {
                    return Err(Error::RecoveryRefused(format!(
                        "writes are refused because {other}"
                    )))
                }
                None => return Err(Error::RecoveryRefused("the database is writable".into())),
            },
            Live::Gone(_) => None,
        };
        let mut live = self.live.write();
        if let Some(old) = old {
            self.quiesce(&mut live, old)?;
        }
        let t = Instant::now();
        let opts = self.opts.lock().clone();
        let opened = open_inner(self.fs.clone(), &self.dir, opts.clone()).and_then(|(inner, mut report)| {
            let rewritten = inner.wal.rewrite_active()?;
            report.repairs.push(format!(
                "opened again in place after the log failed closed; the active segment's {rewritten} bytes were \
                 written again and synced"
            ));
            report.elapsed = t.elapsed();
            Ok((inner, report))
        });
        match opened {
            Ok((inner, report)) => {
                *self.threads.lock() = start_background(&inner)?;
                *live = Live::Open(inner);
                let mut r = self.recovered.lock();
                r.0 = Some(report.clone());
                r.1 += 1;
                tracing::warn!(
                    records = report.records_verified,
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    "the database was opened again in place; writes are accepted"
                );
                Ok(report)
            }
            Err(e) => {
                let why = format!("opening the database again in place failed: {e}");
                tracing::error!(reason = %why, "in-place recovery failed");
                *live = self.read_only_fallback(opts, why);
                Err(e)
            }
        }
    }

    /// Takes the open database `old` out of `live` and closes it once no call uses it any more: background work
    /// stops, new calls wait on `live`, calls in flight finish (at most 10 s, else it is put back and refused).
    fn quiesce(&self, live: &mut Live, old: Arc<Inner>) -> Result<()> {
        let threads = std::mem::take(&mut *self.threads.lock());
        stop_threads(&old, threads);
        // Take the database out of the cell, then wait until this is its last reference: calls in flight
        // finish (new ones wait on `live`), and the log's durable hook upgrades its weak reference only for
        // the moment it applies.
        *live = Live::Gone("the database is being opened again in place".into());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut old = old;
        let inner = loop {
            match Arc::try_unwrap(old) {
                Ok(inner) => break inner,
                Err(still) if Instant::now() > deadline => {
                    let n = Arc::strong_count(&still) - 1;
                    still.stop.store(false, Ordering::SeqCst);
                    *live = Live::Open(still.clone());
                    *self.threads.lock() = start_background(&still)?;
                    return Err(Error::RecoveryRefused(format!(
                        "{n} calls still use the database after 10 s"
                    )));
                }
                Err(still) => {
                    old = still;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        // Close the log (its threads stop, its lock is released) and every file.
        let Inner { wal, .. } = inner;
        if let Err(e) = wal.close() {
            tracing::info!(error = %e, "closed the log");
        }
        Ok(())
    }

    /// After a failed reopen in place: the database opened read-only (reads go on; writes are refused with `why`),
    /// or gone with the reason if even that fails.
    fn read_only_fallback(&self, opts: Options, why: String) -> Live {
        let ro = Options {
            read_only: true,
            replica: false,
            ..opts
        };
        match open_inner(self.fs.clone(), &self.dir, ro) {
            Ok((inner, _)) => {
                inner.refuse(NotWritable::LogFailed(why));
                Live::Open(inner)
            }
            Err(e2) => Live::Gone(format!("{why}; a read-only open also failed: {e2}")),
        }
    }

    /// For a reopen in place (the caller holds `recovering`): refuses a halted database (the halt is evidence),
    /// else closes the open one ([`Db::quiesce`]) and returns the cell, locked, to put the new one in.
    fn close_unless_halted(&self) -> Result<parking_lot::RwLockWriteGuard<'_, Live>> {
        let old = match &*self.live.read() {
            Live::Open(i) => {
                if let Some(h @ NotWritable::Halted(_)) = i.writability() {
                    return Err(Error::RecoveryRefused(format!("the database is {h}")));
                }
                Some(i.clone())
            }
            Live::Gone(_) => None,
        };
        let mut live = self.live.write();
        if let Some(old) = old {
            self.quiesce(&mut live, old)?;
        }
        Ok(live)
    }

    /// Opens the database again in place in another role (an authority such as etcd changed it): the same steps
    /// as a restart — WAL recovery, the startup integrity check (E-6), the Merkle store and index caught up from
    /// the log — with the options of `role`. A replica that won an election becomes the writable primary of the
    /// new term this way (its first act is to sign a checkpoint of that term); a primary whose term ended becomes
    /// a replica. Callers wait while it runs, as for [`Db::recover_in_place`]. A halted database is refused (the
    /// halt is evidence; only an operator clears it). If the open fails the database is opened read-only, as after
    /// a failed recovery, and the error is returned. Returns what the open found.
    pub fn reopen_as(&self, role: OpenRole) -> Result<OpenReport> {
        let _one = self.recovering.lock();
        let mut live = self.close_unless_halted()?;
        let mut opts = self.opts.lock().clone();
        opts.read_only = false;
        match role {
            OpenRole::Primary { epoch } => {
                opts.replica = false;
                opts.epoch = epoch;
            }
            OpenRole::Replica => opts.replica = true,
        }
        let t = Instant::now();
        match open_inner(self.fs.clone(), &self.dir, opts.clone()) {
            Ok((inner, mut report)) => {
                report.elapsed = t.elapsed();
                *self.threads.lock() = start_background(&inner)?;
                *live = Live::Open(inner);
                *self.opts.lock() = opts;
                tracing::info!(
                    ?role,
                    records = report.records_verified,
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    "the database was opened again in place in a new role; startup integrity check passed"
                );
                Ok(report)
            }
            Err(e) => {
                let why = format!("opening the database again as {role:?} failed: {e}");
                tracing::error!(reason = %why, "reopen failed");
                *live = self.read_only_fallback(opts, why);
                Err(e)
            }
        }
    }

    /// Cuts the log after record `keep` in place (a replica discarding a divergent tail its new primary proved
    /// was never acknowledged): the database is closed as for [`Db::reopen_as`], cut with [`truncate_after`] —
    /// checkpoints past `keep` dropped, Merkle leaves and log frames removed — and opened again with the same
    /// options (the startup check runs). Refused on anything but a replica. Returns the records removed.
    pub fn truncate_in_place(&self, keep: u64) -> Result<u64> {
        let _one = self.recovering.lock();
        let opts = self.opts.lock().clone();
        if !opts.replica {
            return Err(Error::RecoveryRefused(
                "only a replica's log is cut in place".into(),
            ));
        }
        let mut live = self.close_unless_halted()?;
        let cut = truncate_after(self.fs.clone(), &self.dir, keep, &opts, &self.verifier);
        match open_inner(self.fs.clone(), &self.dir, opts.clone()) {
            Ok((inner, _)) => {
                *self.threads.lock() = start_background(&inner)?;
                *live = Live::Open(inner);
            }
            Err(e) => {
                *live = Live::Gone(format!(
                    "opening the database after cutting it after record {keep}: {e}"
                ));
                return Err(e);
            }
        }
        cut
    }

    /// The report of the last successful [`Db::recover_in_place`] and how many have succeeded since open.
    #[must_use]
    pub fn recoveries(&self) -> (Option<OpenReport>, u64) {
        self.recovered.lock().clone()
    }

    /// The open database, or `None` if it is gone.
    fn live(&self) -> Option<Arc<Inner>> {
        match &*self.live.read() {
            Live::Open(i) => Some(i.clone()),
            Live::Gone(_) => None,
        }
    }

    /// The open database, or [`Error::Unavailable`] if it is gone.
    fn inner(&self) -> Result<Arc<Inner>> {
        match &*self.live.read() {
            Live::Open(i) => Ok(i.clone()),
            Live::Gone(why) => Err(Error::Unavailable(why.clone())),
        }
    }

    /// Stops the background threads (they finish their current step).
    fn stop_background(&mut self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        if let Live::Open(i) = &*self.live.read() {
            stop_threads(i, threads);
        }
    }
}

/// Asks an open database's background threads to stop and waits for them.
fn stop_threads(inner: &Inner, threads: Vec<JoinHandle<()>>) {
    inner.stop.store(true, Ordering::SeqCst);
    inner.tick.1.notify_all();
    inner.merge_wake.1.notify_all();
    for t in threads {
        let _ = t.join();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// Cuts the database in `dir` after record `keep` (offline; nothing may have it open): checkpoints of more than
/// `keep` records are dropped (the checkpoint log is rewritten and replaced atomically), Merkle leaves past `keep`
/// are truncated, then the log itself is cut ([`aerodb_wal::truncate_after`]); index runs past `keep` are refused
/// and rebuilt at the next open. This is how a replica discards a divergent tail: every step leaves a directory
/// that opens, and repeating an interrupted cut finishes it. `verifier` checks the checkpoints it keeps. Returns
/// the number of records removed.
pub fn truncate_after(
    fs: Arc<dyn Fs>,
    dir: &Path,
    keep: u64,
    opts: &Options,
    verifier: &VerifierKey,
) -> Result<u64> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    // 1. Checkpoints first: the newest one is the WAL's durable mark, which no cut may go below.
    let cp_path = dir.join(CHECKPOINT_LOG);
    let (log, _) = CheckpointLog::open(&*fs, &cp_path).map_err(io("open checkpoint log", &cp_path))?;
    let mut kept = Vec::new();
    for note in log.notes() {
        let c = SignedCheckpoint::verify(note, verifier)?;
        if c.checkpoint.size <= keep {
            kept.push(note.clone());
        }
    }
    if kept.len() < log.notes().len() {
        drop(log);
        let tmp = dir.join(format!("{CHECKPOINT_LOG}.tmp"));
        let _ = fs.remove_file(&tmp);
        let (mut fresh, _) = CheckpointLog::open(&*fs, &tmp).map_err(io("create checkpoint log", &tmp))?;
        for note in &kept {
            fresh.append(note).map_err(io("write checkpoint log", &tmp))?;
        }
        drop(fresh);
        fs.rename(&tmp, &cp_path)
            .map_err(io("replace checkpoint log", &cp_path))?;
        fs.sync_dir(dir).map_err(io("sync directory", dir))?;
    }
    // 2. Merkle leaves past the cut (a store behind the log is rebuilt at open; one ahead is refused).
    // Synced even when nothing past the cut was trusted: opening cut the untrusted leaves, and a leaf past the
    // log that came back after a power loss would be taken for lost records.
    let (mut merkle, _) = MerkleStore::open(fs.clone(), &dir.join("merkle"))?;
    if merkle.size() > keep {
        merkle.truncate(keep)?;
    }
    merkle.sync()?;
    drop(merkle);
    // 3. Index runs past the cut (opening keeps the runs the first `keep` records cover and records that).
    drop(Index::open(fs.clone(), &dir.join("index"), keep, false)?);
    // 4. The log.
    Ok(aerodb_wal::truncate_after(
        fs,
        &dir.join("wal"),
        CommitId(keep),
        &opts.wal,
    )?)
}

/// The smallest key greater than every key that starts with `prefix` (`None`: no such key, e.g. all 0xFF).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `Ok` when `1 ≤ value ≤ max`, else a typed out-of-range error naming `what`.
fn check_range(what: &'static str, value: u64, max: u64) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::OutOfRange {
            what,
            value,
            size: max,
        });
    }
    Ok(())
}

fn corruption(commit_id: u64, what: String) -> Error {
    Error::Corruption { commit_id, what }
}

fn stored(commit_id: u64, body: Bytes) -> Result<StoredRecord> {
    let record = record::decode(&body).map_err(|e| corruption(commit_id, e.to_string()))?;
    Ok(StoredRecord {
        record,
        hash: record_hash(&body),
        canonical: body,
    })
}

/// One record of an append, from validation to receipt.
struct Item<'a> {
    tenant: &'a str,
    payload: &'a Payload,
    state: ItemState,
}

enum ItemState {
    New,
    /// Encoded and hashed up to the trailer.
    Prepared(record::Prepared),
    /// Sealed and queued in the log.
    Queued(Receipt),
}

impl<'a> Item<'a> {
    fn new(tenant: &'a str, payload: &'a Payload) -> Self {
        Self {
            tenant,
            payload,
            state: ItemState::New,
        }
    }

    /// The receipt of a queued item.
    fn receipt(&self) -> Receipt {
        match &self.state {
            ItemState::Queued(r) => *r,
            _ => unreachable!("a receipt is read only after its record was queued"),
        }
    }
}

/// A record waiting to be applied: its hashes, so applying needs no decoding or record hashing.
#[derive(Clone, Copy, Debug)]
struct Pending {
    commit: u64,
    hash: Hash,
    leaf: Hash,
}

impl Pending {
    fn new(commit: u64, hash: Hash) -> Self {
        Self {
            commit,
            hash,
            leaf: leaf_hash(&hash),
        }
    }
}

/// Validates a record as an append would (tenant, batch, encoded size against `max`), before anything is encoded.
fn check_record(tenant: &str, payload: &Payload, max: usize) -> Result<()> {
    record::check_tenant(tenant)?;
    if let Payload::Batch(ops) = payload {
        record::check_batch(ops)?;
    }
    let len = record::RECORD_OVERHEAD + tenant.len() + record::body_len(payload);
    if len > max {
        return Err(RecordError::TooLarge { len, max }.into());
    }
    Ok(())
}

/// What the chain check found in one run of consecutive records (one WAL segment, seen during the WAL's
/// recovery scan, or one range read back from the log).
#[derive(Default)]
struct ChainRun {
    /// CommitId of the first record (meaningless while `count` is 0).
    first: u64,
    /// Records checked.
    count: u64,
    /// `prev_hash` of the first record (must be the previous run's last hash).
    first_prev: Hash,
    /// Hash of the last record.
    last_hash: Hash,
    first_epoch: u64,
    last_epoch: u64,
    max_ts: u64,
    /// Leaf hashes of the records from the visitor's `leaf_from` on, in order.
    leaves: Vec<(u64, Hash)>,
    /// The first record that failed a check, and why; the run stops there.
    failed: Option<(u64, String)>,
}

impl ChainRun {
    /// Checks the next record: its encoding header, CommitId, epoch order and `prev_hash` link to the record
    /// before it in the run; hashes it, and keeps its leaf hash from `leaf_from` on.
    fn add(&mut self, commit: u64, frame_epoch: Epoch, body: &[u8], leaf_from: u64) {
        if self.failed.is_some() {
            return;
        }
        if let Err(why) = self.check(commit, frame_epoch, body, leaf_from) {
            self.failed = Some((commit, why));
        }
    }

    fn check(&mut self, commit: u64, frame_epoch: Epoch, body: &[u8], leaf_from: u64) -> Result<(), String> {
        let h = record::decode_header(body).map_err(|e| e.to_string())?;
        if h.commit_id != CommitId(commit) || (self.count > 0 && commit != self.first + self.count) {
            return Err(format!("record says CommitId {}", h.commit_id));
        }
        if self.count == 0 {
            self.first = commit;
            self.first_prev = h.prev_hash;
            self.first_epoch = h.epoch.0;
        } else if h.prev_hash != self.last_hash {
            return Err("prev_hash does not match the previous record's hash".into());
        }
        if h.epoch < Epoch(self.last_epoch) || h.epoch != frame_epoch {
            return Err(format!(
                "epoch {} after {} (frame {frame_epoch})",
                h.epoch, self.last_epoch
            ));
        }
        self.last_epoch = h.epoch.0;
        self.max_ts = self.max_ts.max(h.timestamp_ms);
        let hash = record_hash(body);
        if commit >= leaf_from {
            self.leaves.push((commit, leaf_hash(&hash)));
        }
        self.last_hash = hash;
        self.count += 1;
        Ok(())
    }
}

/// Hashes and checks every record while the WAL's recovery scan checks its frame (both cores, one read of the
/// log): each segment becomes a [`ChainRun`], and [`link_chain`] links the runs in order afterwards.
struct ChainVisitor {
    /// Leaf hashes are kept from this CommitId on (the records after the newest checkpoint).
    leaf_from: u64,
}

impl aerodb_wal::RecoveryVisitor for ChainVisitor {
    type Segment = ChainRun;

    fn segment(&self) -> ChainRun {
        ChainRun::default()
    }

    fn frame(&self, run: &mut ChainRun, commit_id: CommitId, epoch: Epoch, body: &[u8]) {
        run.add(commit_id.0, epoch, body, self.leaf_from);
    }
}

/// Reads records `from..=to` back from the log and checks them as a [`ChainRun`] (frame CRCs are not checked
/// again: this open's recovery checked them), keeping leaf hashes from `leaf_from` on.
fn read_run(wal: &Wal, from: u64, to: u64, leaf_from: u64) -> Result<ChainRun> {
    let mut run = ChainRun::default();
    wal.read_recovered(CommitId(from))?
        .for_each_ref(|frame| -> Result<()> {
            if frame.commit_id.0 <= to {
                run.add(frame.commit_id.0, frame.epoch, frame.body(), leaf_from);
            }
            Ok(())
        })?;
    if let Some((commit, why)) = run.failed.take() {
        return Err(corruption(commit, why));
    }
    if run.count != to + 1 - from || run.first != from {
        return Err(corruption(
            from,
            format!("the log holds {} of records {from}..={to}", run.count),
        ));
    }
    Ok(run)
}

/// What the chain pass of opening found.
struct ChainPass {
    tip_hash: Hash,
    last_ts: u64,
    leaves_rebuilt: u64,
    problems: Vec<String>,
}

/// Links the runs the recovery scan checked (one per segment, in order) into one chain over records
/// `1..=records`, then rebuilds the Merkle leaves the store lacks and compares the stored leaves of the records
/// after `check_from` and of the last record (every earlier record is pinned by its successor's `prev_hash`).
/// The runs kept leaf hashes from `kept_from` on; earlier ones the store lacks (a Merkle store behind the newest
/// checkpoint) are read back from the log.
fn link_chain(
    wal: &Wal,
    runs: Vec<ChainRun>,
    kept_from: u64,
    merkle: &mut MerkleStore,
    stored_leaves: u64,
    check_from: u64,
    records: u64,
) -> Result<ChainPass> {
    let mut pass = ChainPass {
        tip_hash: genesis_hash(),
        last_ts: 0,
        leaves_rebuilt: 0,
        problems: Vec::new(),
    };
    let mut prev = genesis_hash();
    let mut prev_epoch = 0;
    let mut next = 1;
    let mut kept = Vec::new();
    for mut r in runs.into_iter().filter(|r| r.count > 0 || r.failed.is_some()) {
        if let Some((commit, why)) = r.failed.take() {
            return Err(corruption(commit, why));
        }
        if r.first != next {
            return Err(corruption(
                next,
                format!(
                    "the recovery scan checked record {} where {next} was next",
                    r.first
                ),
            ));
        }
        if r.first_prev != prev {
            return Err(corruption(
                r.first,
                "prev_hash does not match the previous record's hash".into(),
            ));
        }
        if r.first_epoch < prev_epoch {
            return Err(corruption(
                r.first,
                format!("epoch {} after {prev_epoch}", r.first_epoch),
            ));
        }
        prev = r.last_hash;
        prev_epoch = r.last_epoch;
        pass.last_ts = pass.last_ts.max(r.max_ts);
        next = r.first + r.count;
        kept.append(&mut r.leaves);
    }
    if next != records + 1 {
        return Err(corruption(
            next,
            format!(
                "the recovery scan checked records up to {} of {records}",
                next - 1
            ),
        ));
    }
    pass.tip_hash = prev;
    if records == 0 {
        return Ok(pass);
    }
    let leaf_from = stored_leaves.min(check_from).min(records - 1) + 1;
    if leaf_from < kept_from {
        let to = (kept_from - 1).min(records);
        let mut earlier = read_run(wal, leaf_from, to, leaf_from)?.leaves;
        earlier.extend(kept.into_iter().filter(|&(c, _)| c > to));
        kept = earlier;
    }
    for (commit, leaf) in kept.into_iter().filter(|&(c, _)| c >= leaf_from) {
        if commit > stored_leaves {
            merkle.push(leaf)?;
            pass.leaves_rebuilt += 1;
        } else if commit > check_from || commit == records {
            let stored = merkle::NodeSource::node(&*merkle, 0, commit - 1)?;
            if stored != leaf {
                pass.problems.push(format!(
                    "stored Merkle leaf {} does not match record {commit}",
                    commit - 1
                ));
            }
        }
    }
    Ok(pass)
}

/// Opens the database in `dir`: checkpoints, WAL recovery, the startup integrity check, the Merkle store and the
/// index. The background threads are the caller's to start ([`start_background`]).
fn open_inner(fs: Arc<dyn Fs>, dir: &Path, opts: Options) -> Result<(Arc<Inner>, OpenReport)> {
    let started = Instant::now();
    fs.create_dir_all(dir).map_err(|e| Error::Io {
        op: "create directory",
        path: dir.to_owned(),
        source: e,
    })?;
    let signer = match &opts.signing_key {
        Some(k) => k.clone(),
        None => load_or_create_key(&dir.join(KEY_FILE), &opts.origin)?,
    };
    if signer.name() != opts.origin {
        return Err(Error::InvalidOptions(format!(
            "the signing key is named {:?} but the origin is {:?}; they must match",
            signer.name(),
            opts.origin
        )));
    }
    let verifier = signer.verifier();
    let mut report = OpenReport::default();

    // Checkpoints first: the newest one tells WAL recovery which records must never be cut as a torn tail.
    let cp_path = dir.join(CHECKPOINT_LOG);
    let opened = if opts.read_only {
        CheckpointLog::open_read_only(&*fs, &cp_path)
    } else {
        CheckpointLog::open(&*fs, &cp_path)
    };
    let (checkpoints, cp_report) = opened.map_err(|e| Error::Io {
        op: "open checkpoint log",
        path: cp_path.clone(),
        source: e,
    })?;
    if cp_report.torn_bytes > 0 {
        report.repairs.push(format!(
                "checkpoints.log: a torn last entry ({} bytes, after {} whole entries) {} — its checkpoint was never \
                 returned (an append returns after its fsync)",
                cp_report.torn_bytes,
                cp_report.entries,
                if opts.read_only { "is there (read-only: left in place)" } else { "was cut" }
            ));
    }
    let mut signed = Vec::new();
    for (i, note) in checkpoints.notes().iter().enumerate() {
        match SignedCheckpoint::verify(note, &verifier) {
            Ok(s) => signed.push(s),
            Err(e) => report
                .problems
                .push(format!("checkpoint #{} does not verify: {e}", i + 1)),
        }
    }
    let durable_mark = signed.iter().map(|s| s.checkpoint.size).max().unwrap_or(0);
    let wal_opts = aerodb_wal::Options {
        durable_mark: CommitId(durable_mark),
        // A read-only database changes no file, the log included (a torn tail is reported, not cut).
        read_only: opts.wal.read_only || opts.read_only,
        // The record hash chain commits to every frame; a segment digest would hash every byte a second time.
        // Always off, whatever the caller's WAL options say, so that a primary's and a replica's segments stay
        // byte-identical.
        segment_digest: false,
        ..opts.wal.clone()
    };
    let t = Instant::now();
    // The recovery scan also hashes and checks every record (see `ChainVisitor`); the runs are linked below.
    let chain_visitor = ChainVisitor {
        leaf_from: durable_mark + 1,
    };
    let (wal, chain_runs) = Wal::open_visiting(fs.clone(), dir.join("wal"), wal_opts, &chain_visitor)?;
    report.wal_recovery = t.elapsed();
    report.wal = wal.recovery_report().clone();
    let records = wal.durable_commit_id().0;
    // The rule this log follows is its first record's version (a new log takes the current one).
    let version = match wal.read_from(CommitId(1))?.next().transpose()? {
        Some(f) if records > 0 => {
            record::decode_header(&f.body())
                .map_err(|e| corruption(1, e.to_string()))?
                .version
        }
        _ => record::RECORD_VERSION,
    };
    // Derived files ahead of the log: with every append synced before it is applied, no crash leaves them so
    // (after `kill -9` they hold every applied record; after a power loss, less). It means the log lost
    // records it had acknowledged: refuse before anything is repaired, so the evidence stays.
    if opts.wal.durability == aerodb_wal::Durability::Always {
        let extra = crate::store::leaves_beyond(&*fs, &dir.join("merkle"), records)?;
        let index_reach = crate::index::manifest_reach(&*fs, &dir.join("index")).unwrap_or(0);
        let ahead = if extra > 0 {
            Some(Error::LogBehindDerived {
                derived: "the Merkle store",
                derived_records: records + extra,
                log_records: records,
            })
        } else if index_reach > records {
            Some(Error::LogBehindDerived {
                derived: "the index",
                derived_records: index_reach,
                log_records: records,
            })
        } else {
            None
        };
        if let Some(e) = ahead {
            if opts.fail_on_startup_check {
                return Err(e);
            }
            tracing::error!(error = %e, "STARTUP INTEGRITY CHECK FAILED; continuing because fail_on_startup_check is off");
            report.problems.push(e.to_string());
        }
    }

    let merkle_dir = dir.join("merkle");
    let (mut merkle, _) = if opts.read_only {
        MerkleStore::open_read_only(fs.clone(), &merkle_dir)?
    } else {
        MerkleStore::open(fs.clone(), &merkle_dir)?
    };
    if merkle.size() > records {
        report.problems.push(format!(
            "Merkle store holds {} leaves but the log {} records; the extra leaves were discarded",
            merkle.size(),
            records
        ));
        merkle.truncate(records)?;
    }
    let stored_leaves = merkle.size();
    let (ix, ix_open) = Index::open(fs.clone(), &dir.join("index"), records, opts.read_only)?;
    let index_files = ix.files();
    let mut ix = ix;
    report.index_runs = ix_open.runs;
    report.repairs.extend(ix_open.notes);
    for note in &report.repairs {
        tracing::warn!(note = %note, "repaired at open");
    }
    let mut state = State {
        merkle,
        visible: 0,
        tip_hash: genesis_hash(),
        latest: signed.last().cloned(),
        apply_failed: None,
    };
    // Verify first, then index: the recovery scan hashed and checked every record on both cores, in the same
    // pass as every frame CRC; the runs it made are linked here, so a corrupt log is refused before any index
    // work; then the records after the persisted index runs are replayed into the index's memory table.
    let check_from = durable_mark;
    let t = Instant::now();
    let chain = link_chain(
        &wal,
        chain_runs,
        chain_visitor.leaf_from,
        &mut state.merkle,
        stored_leaves,
        check_from,
        records,
    )?;
    report.chain_verify = t.elapsed();
    let covered = ix_open.covered;
    if covered < records {
        wal.read_from(CommitId(covered + 1))?
            .for_each_ref(|frame| -> Result<()> {
                let commit = frame.commit_id.0;
                if commit > records {
                    return Ok(());
                }
                let v = record::view(frame.body()).map_err(|e| corruption(commit, e.to_string()))?;
                ix.add_view(commit, &v);
                Ok(())
            })?;
    }
    report.index_replayed = records - covered;
    report.records_verified = records;
    report.leaves_rebuilt = chain.leaves_rebuilt;
    report.problems.extend(chain.problems);
    state.tip_hash = chain.tip_hash;
    state.visible = records;
    let last_ts = chain.last_ts;
    // Every checkpoint: sizes never decrease, and the root at its size is what it signed.
    let mut prev_size = 0;
    for (i, s) in signed.iter().enumerate() {
        let c = &s.checkpoint;
        if c.size < prev_size {
            report.problems.push(format!(
                "checkpoint #{} has size {} after size {prev_size}",
                i + 1,
                c.size
            ));
        }
        prev_size = prev_size.max(c.size);
        if c.size > state.visible {
            report.problems.push(format!(
                "checkpoint #{} covers {} records but the log holds {}",
                i + 1,
                c.size,
                state.visible
            ));
        } else if merkle::root(&state.merkle, c.size)? != c.root {
            report.problems.push(format!(
                "checkpoint #{} root does not match the log at size {}",
                i + 1,
                c.size
            ));
        } else {
            report.checkpoints_verified += 1;
        }
    }
    if !report.problems.is_empty() {
        let summary = report.problems.join("; ");
        if opts.fail_on_startup_check {
            return Err(Error::Integrity(summary));
        }
        tracing::error!(problems = %summary, "STARTUP INTEGRITY CHECK FAILED; continuing because fail_on_startup_check is off");
    }
    state.merkle.sync()?;
    let not_writable = (opts.read_only || opts.replica).then_some(NotWritable::NotWriteAuthority);
    let inner = Arc::new(Inner {
        version: std::sync::atomic::AtomicU8::new(version),
        dir: dir.to_owned(),
        chain: std::sync::Mutex::new(Chain {
            last_hash: state.tip_hash,
            last_ts,
        }),
        wal,
        signer,
        verifier,
        pending: Mutex::new(VecDeque::new()),
        applied: AtomicU64::new(state.visible),
        indexed: AtomicU64::new(state.visible),
        state: RwLock::new(state),
        checkpoints: Mutex::new(checkpoints),
        refusing: AtomicBool::new(not_writable.is_some()),
        not_writable: RwLock::new(not_writable),
        stop: AtomicBool::new(false),
        tick: (Mutex::new(()), Condvar::new()),
        index_files,
        index: RwLock::new(ix),
        index_flush: Mutex::new(()),
        index_merge: Mutex::new(()),
        merge_wake: (Mutex::new(false), Condvar::new()),
        opts,
    });
    // The first appender woken after a group commit applies the whole commit before waking the others.
    let weak = Arc::downgrade(&inner);
    inner.wal.set_durable_hook(Box::new(move |mine| {
        if let Some(i) = weak.upgrade() {
            if let Err(e) = i.apply_durable(mine.0) {
                tracing::error!(error = %e, "applying durable records failed");
            }
        }
    }));
    report.elapsed = started.elapsed();
    Ok((inner, report))
}

/// Starts the background threads of an open database: periodic checkpoints and index flushes on one thread; index
/// merges (which can take seconds on a large index) on another, so flushes, and with them the memory table's size,
/// never wait for a merge.
fn start_background(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let spawn = |name: &str, f: fn(&Inner)| {
        let i = inner.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(&i))
            .map_err(|e| Error::Io {
                op: "spawn background thread",
                path: inner.dir.clone(),
                source: e,
            })
    };
    Ok(vec![
        spawn("aerodb-background", Inner::ticker)?,
        spawn("aerodb-index-merge", Inner::merger)?,
    ])
}

/// A bound on owned bytes as a bound on a slice.
fn bound_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn load_or_create_key(path: &Path, origin: &str) -> Result<SigningKey> {
    if path.exists() {
        return Ok(SigningKey::load(path)?);
    }
    let key = SigningKey::generate(origin)?;
    key.save(path)?;
    tracing::info!(path = %path.display(), verifier = %key.verifier(), "generated a checkpoint signing key");
    Ok(key)
}

impl Inner {
    /// Runs `f` on the index key of `key` in `tenant`'s key space, built in this thread's reused buffer (a point
    /// read then allocates nothing for it).
    fn with_scoped<T>(&self, tenant: &str, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let rule = record::tenant_keys(self.version.load(Ordering::Acquire));
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                record::scoped_key(rule, tenant, key, &mut buf);
                f(&buf)
            }
            Err(_) => f(&self.scoped(tenant, key)),
        })
    }

    /// The index key of `key` in `tenant`'s key space under this log's rule.
    fn scoped(&self, tenant: &str, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(tenant.len() + 1 + key.len());
        record::scoped_key(
            record::tenant_keys(self.version.load(Ordering::Acquire)),
            tenant,
            key,
            &mut out,
        );
        out
    }

    /// The applied mark: every record up to it is durable and visible to readers.
    fn visible(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Whether this database writes index runs: a writable one or a replica (not a read-only inspection).
    fn maintains_index(&self) -> bool {
        self.opts.replica || self.writability().is_none()
    }

    /// The stored Merkle tree disagrees with the log or a signed checkpoint: the proof is not served, the node
    /// fails closed (it can no longer prove what it holds) and says why.
    fn merkle_damaged(&self, commit_id: u64, what: String) -> Error {
        let why = format!(
            "{what}: the Merkle store is damaged; the proof was not served (restart to have the startup check name \
             the damage, or rebuild the store from the log)"
        );
        tracing::error!(reason = %why, "the database fails closed");
        self.refuse(NotWritable::LogFailed(why.clone()));
        corruption(commit_id, why)
    }

    /// Refuses every write from now on, for `why` (the first reason stays).
    fn refuse(&self, why: NotWritable) {
        let mut nw = self.not_writable.write();
        if !matches!(*nw, Some(NotWritable::LogFailed(_) | NotWritable::Halted(_))) {
            *nw = Some(why);
        }
        self.refusing.store(true, Ordering::Release);
    }

    fn writability(&self) -> Option<NotWritable> {
        if self.refusing.load(Ordering::Acquire) {
            if let Some(r) = self.not_writable.read().clone() {
                return Some(r);
            }
        }
        self.wal.failure().map(|f| NotWritable::LogFailed(f.to_string()))
    }

    /// Appends `items` as consecutive CommitIds, filling in each one's receipt.
    fn append_items(&self, items: &mut [Item<'_>]) -> Result<()> {
        if let Some(r) = self.writability() {
            return Err(r.into());
        }
        let max = self.opts.wal.max_record_bytes;
        let epoch = self.opts.epoch;
        let version = self.version.load(Ordering::Acquire);
        // Validate, encode and hash everything but the trailer before taking any lock.
        for it in items.iter_mut() {
            check_record(it.tenant, it.payload, max)?;
            let p = record::prepare_version(version, epoch, it.tenant, it.payload);
            debug_assert_eq!(
                p.sealed_len(),
                record::RECORD_OVERHEAD + it.tenant.len() + record::body_len(it.payload)
            );
            it.state = ItemState::Prepared(p);
        }
        if items.is_empty() {
            return Ok(());
        }
        // The chain lock orders the engine's appends; the log's ordering lock is taken inside it, only for
        // sealing and queueing, so the log's flush leader never waits behind an appender's indexing.
        let mut chain = self.lock_chain();
        let queued = self.wal.enqueue_with(epoch, |sink| {
            // Under the log's ordering lock: only the trailer (timestamp, CommitId, previous hash) and the last
            // hash blocks.
            let ts = now_ms().max(chain.last_ts);
            let mut prev = chain.last_hash;
            for it in items.iter_mut() {
                let ItemState::Prepared(p) = std::mem::replace(&mut it.state, ItemState::New) else {
                    unreachable!("every item was prepared above");
                };
                let commit = sink.next_commit_id().0;
                let sealed = p.seal(ts, commit, &prev);
                sink.push(&sealed.canonical)?;
                record::recycle(sealed.canonical);
                it.state = ItemState::Queued(Receipt {
                    commit_id: CommitId(commit),
                    record_hash: sealed.record_hash,
                    leaf_index: commit - 1,
                });
                prev = sealed.record_hash;
            }
            // Only now advance the chain: an error above discards everything this closure pushed.
            chain.last_hash = prev;
            chain.last_ts = ts;
            Ok(())
        });
        // Refused before anything was queued: nothing of it is in the log.
        let ((), queued) = queued?;
        // Still in CommitId order (the chain lock), while the frames are on their way to disk: queue the records
        // for applying and index them, so acknowledging only has to move the applied mark.
        self.pending.lock().extend(items.iter().map(|it| {
            let r = it.receipt();
            Pending::new(r.commit_id.0, r.record_hash)
        }));
        self.index_queued(queued.last().0, |ix| {
            for it in items.iter() {
                ix.add_payload(
                    it.receipt().commit_id.0,
                    record::tenant_keys(version),
                    it.tenant,
                    it.payload,
                );
            }
        });
        drop(chain);
        let first = items.first().map_or(CommitId(0), |it| it.receipt().commit_id);
        let last = items.last().map_or(CommitId(0), |it| it.receipt().commit_id);
        // From here on the records' bytes may reach the disk whatever happens: a failure is an unknown outcome.
        if let Err(e) = queued.wait() {
            if let Some(f) = self.wal.failure() {
                tracing::error!(failure = %f, "the log failed closed; the database refuses writes until reopened");
            }
            return Err(Error::OutcomeUnknown {
                first,
                last,
                reason: e.to_string(),
            });
        }
        self.apply_durable(last.0).map_err(|e| Error::OutcomeUnknown {
            first,
            last,
            reason: format!("applying them failed ({e})"),
        })
    }

    fn lock_chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.chain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds just-queued records up to CommitId `last` to the index with `add` (in CommitId order: the caller
    /// holds the chain lock), moves the indexed mark to `last`, and wakes the background flush when the memory
    /// table is full.
    fn index_queued(&self, last: u64, add: impl FnOnce(&mut Index)) {
        let mut ix = self.index.write();
        add(&mut ix);
        let flush_due = ix.mem_versions() >= self.opts.index_flush_versions;
        drop(ix);
        self.indexed.store(last, Ordering::Release);
        if flush_due {
            self.tick.1.notify_all();
        }
    }

    /// Applies every pending record up to the WAL's durable mark, in CommitId order. Returns at once when
    /// `need` is already applied (another appender applied it with its own batch).
    fn apply_durable(&self, need: u64) -> Result<()> {
        if need > 0 && self.applied.load(Ordering::Acquire) >= need {
            return Ok(());
        }
        // A record is applied once durable and indexed (indexing follows queueing, under the chain lock).
        let durable = self
            .wal
            .durable_commit_id()
            .0
            .min(self.indexed.load(Ordering::Acquire));
        // With nothing to wait for, return when nothing is ready. An appender (need > 0) always goes on to the
        // state lock: another thread may have drained its record and still be applying it, and the appender must
        // not return before its record is visible.
        if need == 0 && self.pending.lock().front().is_none_or(|p| p.commit > durable) {
            return Ok(());
        }
        // The state lock is taken before taking records off the queue, so two appliers never apply out of order.
        // A record leaves the queue only once applied: a failure leaves it (and all after it) queued.
        let mut st = self.state.write();
        if let Some(why) = &st.apply_failed {
            return Err(Error::NotWritable(NotWritable::LogFailed(why.clone())));
        }
        let applied = loop {
            let Some(p) = self
                .pending
                .lock()
                .front()
                .copied()
                .filter(|p| p.commit <= durable)
            else {
                break Ok(());
            };
            if p.commit != st.visible + 1 {
                break Err(corruption(
                    p.commit,
                    format!("queued for applying after record {}", st.visible),
                ));
            }
            if let Err(e) = st.merkle.push(p.leaf) {
                break Err(e.into());
            }
            st.tip_hash = p.hash;
            st.visible = p.commit;
            self.pending.lock().pop_front();
        };
        self.applied.store(st.visible, Ordering::Release);
        if let Err(e) = applied {
            // Durable in the log, not applied: this node can no longer serve what it writes. It fails closed
            // (health, status and metrics say so); a restart applies the records from the log.
            let why = format!(
                "applying record {} failed: {e}; restart the node to apply it from the log",
                st.visible + 1
            );
            tracing::error!(reason = %why, "the database fails closed");
            st.apply_failed = Some(why.clone());
            drop(st);
            self.refuse(NotWritable::LogFailed(why));
            return Err(e);
        }
        let due = self.opts.checkpoint_every_records > 0
            && st.visible - st.latest.as_ref().map_or(0, |c| c.checkpoint.size)
                >= self.opts.checkpoint_every_records;
        drop(st);
        if due {
            self.tick.1.notify_all();
        }
        Ok(())
    }

    fn read_record(&self, commit_id: u64) -> Result<StoredRecord> {
        stored(commit_id, self.body_of(commit_id)?)
    }

    /// The canonical bytes of applied record `commit_id`, from its CRC-checked frame.
    fn body_of(&self, commit_id: u64) -> Result<Bytes> {
        let frame = self
            .wal
            .read_frame(CommitId(commit_id))?
            .ok_or_else(|| corruption(commit_id, "applied record missing from the log".into()))?;
        Ok(frame.body())
    }

    /// The value `key` got in record `commit_id`.
    /// The frame is CRC-checked and the record validated as a whole, but neither hashed (the chain was verified
    /// when the record was recovered or appended, and the CRC guards the bytes since) nor decoded beyond the key.
    fn value_in(&self, commit_id: u64, key: &[u8]) -> Result<Option<Bytes>> {
        match record::write_to(&self.body_of(commit_id)?, key)
            .map_err(|e| corruption(commit_id, e.to_string()))?
        {
            // A copy: the frame may be a slice of a memory-mapped segment, and a value handed out must not change
            // if a replica's divergent tail is later cut (zeroed) in place.
            record::KeyWrite::Put(value) => Ok(Some(Bytes::copy_from_slice(value))),
            record::KeyWrite::Delete => Ok(None),
            record::KeyWrite::Event => Err(corruption(
                commit_id,
                "key index points at an event record".into(),
            )),
            record::KeyWrite::Absent => Err(corruption(
                commit_id,
                "key index points at a record without the key".into(),
            )),
        }
    }

    fn checkpoint_now(&self) -> Result<SignedCheckpoint> {
        // Only the write authority signs (E-2): a replica's checkpoint log is a copy of the primary's, and a
        // read-only, halted or failed node signs nothing.
        if let Some(r) = self.writability() {
            return Err(r.into());
        }
        self.apply_durable(0)?;
        // The log lock orders concurrent checkpoints, so sizes never decrease.
        let mut log = self.checkpoints.lock();
        let (size, root, latest) = {
            let st = self.state.read();
            (
                st.visible,
                merkle::root(&st.merkle, st.visible)?,
                st.latest.clone(),
            )
        };
        // Nothing new: unless this term has not signed yet (a new primary's first checkpoint is its term proof,
        // even over a tree an older term already signed).
        if let Some(l) = latest.filter(|l| l.checkpoint.size >= size && l.checkpoint.epoch >= self.opts.epoch)
        {
            return Ok(l);
        }
        let signed = Checkpoint {
            origin: self.opts.origin.clone(),
            size,
            root,
            epoch: self.opts.epoch,
        }
        .sign(&self.signer);
        self.store_checkpoint(&mut log, signed.clone())?;
        drop(log);
        self.opts.checkpoint_hook.fire(size);
        Ok(signed)
    }

    /// Persists a checkpoint (signed here or by the primary) as the newest one. Called with the checkpoint log's
    /// lock held, which orders checkpoints. The Merkle store's durable watermark advances first, so a crash never
    /// costs more than one checkpoint interval of leaves to rebuild.
    fn store_checkpoint(&self, log: &mut CheckpointLog, signed: SignedCheckpoint) -> Result<()> {
        let ticket = self.state.write().merkle.prepare_sync()?;
        ticket.commit()?;
        log.append(&signed.note).map_err(|e| Error::Io {
            op: "append checkpoint",
            path: log.path().to_owned(),
            source: e,
        })?;
        self.state.write().latest = Some(signed);
        Ok(())
    }

    fn ticker(&self) {
        let mut last = Instant::now();
        loop {
            let wait = self
                .opts
                .checkpoint_interval
                .unwrap_or(Duration::from_secs(3600))
                .min(Duration::from_millis(200));
            {
                let mut g = self.tick.0.lock();
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                self.tick.1.wait_for(&mut g, wait);
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            // Batch/none durability modes make records durable in the background: apply them here too.
            if let Err(e) = self.apply_durable(0) {
                tracing::error!(error = %e, "applying durable records failed");
                continue;
            }
            if self.wal.failure().is_some() || !self.maintains_index() {
                continue;
            }
            let (visible, covered) = {
                let st = self.state.read();
                (st.visible, st.latest.as_ref().map_or(0, |c| c.checkpoint.size))
            };
            let by_count = self.opts.checkpoint_every_records > 0
                && visible - covered >= self.opts.checkpoint_every_records;
            let by_time =
                self.opts.checkpoint_interval.is_some_and(|i| last.elapsed() >= i) && visible > covered;
            if (by_count || by_time) && self.writability().is_none() {
                match self.checkpoint_now() {
                    Ok(_) => last = Instant::now(),
                    Err(e) => tracing::error!(error = %e, "periodic checkpoint failed"),
                }
            }
            match self.flush_index_table(self.opts.index_flush_versions) {
                Ok(true) => {
                    *self.merge_wake.0.lock() = true;
                    self.merge_wake.1.notify_all();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "index flush failed; its entries stay in memory and it is retried");
                }
            }
        }
    }

    /// Writes the index's memory table as a run once it holds `threshold` versions; returns whether it did. The
    /// disk work runs without the state lock: readers keep reading the frozen table until the run is installed.
    fn flush_index_table(&self, threshold: u64) -> Result<bool> {
        let _one = self.index_flush.lock();
        let visible = self.visible();
        let Some(job) = self.index.write().freeze(threshold, visible) else {
            return Ok(false);
        };
        let flushed = job.write()?;
        let _order = self.index_files.manifest_lock.lock();
        let (manifest, frozen) = self.index.write().install_flush(flushed);
        drop(frozen);
        self.index_files.record(&manifest)?;
        Ok(true)
    }

    /// Runs the merges the index's policy asks for, one at a time, each without the state lock.
    fn merge_index_runs(&self) -> Result<()> {
        let _one = self.index_merge.lock();
        loop {
            let Some(job) = self.index.read().merge_job() else {
                return Ok(());
            };
            let merged = job.write()?;
            let order = self.index_files.manifest_lock.lock();
            let Some(manifest) = self.index.write().install_merge(&job, merged) else {
                continue;
            };
            self.index_files.record(&manifest)?;
            drop(order);
            // Only once no manifest lists them; open maps keep serving readers that still hold them.
            self.index_files.remove(&job.inputs);
        }
    }

    /// The merge thread: waits for a flush to signal new runs, then merges.
    fn merger(&self) {
        loop {
            {
                let mut woken = self.merge_wake.0.lock();
                while !*woken && !self.stop.load(Ordering::SeqCst) {
                    self.merge_wake.1.wait_for(&mut woken, Duration::from_secs(1));
                }
                *woken = false;
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.merge_index_runs() {
                tracing::error!(error = %e, "index merge failed; the inputs stay in use and it is retried");
            }
        }
    }
}
