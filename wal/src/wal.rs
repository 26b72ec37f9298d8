//! The log handle: open/recover, append with group commit, segment roll, fail-closed.
//!
//! # Group commit
//! Appenders encode their frames into a shared pending buffer under one short lock, which also hands out the
//! CommitIds, so the order of CommitIds is the order of bytes in the file. The first appender that finds no flush
//! in progress becomes the *leader*: it takes everything pending, writes it with one `pwrite` per segment touched,
//! issues one `fdatasync`, publishes the new durable mark and wakes the others. Appenders that arrive while a
//! leader is syncing queue up behind it and share the next `fdatasync`.
//!
//! # Segment lifecycle
//! Segments are preallocated (zero-filled and synced) ahead of use, by a background thread unless
//! [`Options::background_preallocation`] is off. Starting segment N: write its header into the preallocated file,
//! `fdatasync`, rename `N.prealloc` to `N.seg`, fsync the directory — all before any frame in it is written, so
//! no acknowledged record can sit in a file whose name is not durable. Sealing: write the footer after the last
//! frame, truncate the file to end there, `fsync`.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Failure, Result},
    format::{
        encode_frame_header, SegmentFooter, SegmentHeader, FOOTER_LEN, FRAME_HEADER_LEN,
        MAX_FRAME_BODY_BYTES, MAX_SEGMENT_BYTES, SEGMENT_HEADER_LEN,
    },
    fs::{DirLock, Fs, FsFile, OpenMode},
    recovery::{
        check_digest, check_follows, check_header, finish_segment, plan_pieces, scan_run, scan_segment,
        scan_segment_with, Expect, RecoveryVisitor, SegmentEnd,
    },
    types::{CommitId, Epoch, SegmentId},
};

/// When an append counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// An append returns only after its bytes are `fdatasync`ed. The default.
    #[default]
    Always,
    /// An append returns once its bytes are written to the OS; a background thread `fdatasync`s every
    /// `interval`. A power loss can lose up to one interval of acknowledged appends.
    Batch {
        /// Time between syncs.
        interval: Duration,
    },
    /// Never `fdatasync` appends (tests and benchmarks of the CPU path only). Segment management still syncs.
    None,
}

/// Options for [`Wal::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Capacity of each segment file in bytes, header and footer included. Default 64 MiB.
    pub segment_bytes: u64,
    /// The largest record body accepted. Default 16 MiB (and never more than fits in a segment).
    pub max_record_bytes: usize,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// Zero-fill the next segment on a background thread. Off in deterministic tests.
    pub background_preallocation: bool,
    /// Check every sealed segment's SHA-256 against its footer when opening (costs one hash pass over the log).
    pub verify_digests_on_open: bool,
    /// Keep a running SHA-256 of each segment and write it into the footer when the segment is sealed. Default
    /// on. The engine turns it off: its records carry a hash chain (every record commits to the one before, so
    /// the chain head commits to every frame of every segment), which the segment digest would only repeat at
    /// ~6 SHA-256 blocks per 384-byte frame on the flush path. A footer written without it says so (flag bit
    /// 1); verification skips digests that were never written, whatever this option says now.
    pub segment_digest: bool,
    /// CommitIds up to this one are known durable by a higher layer (e.g. covered by a signed checkpoint);
    /// recovery reports corruption rather than truncate them.
    pub durable_mark: CommitId,
    /// Open for reading only: recovery reports what it finds but writes nothing (no torn tail is zeroed, no
    /// leftover removed), no background thread starts, and appends fail with [`Error::ReadOnly`]. For offline
    /// verification and inspection.
    pub read_only: bool,
    /// Recovery scans the segments on two workers in pieces of about this many bytes (each cut at a frame
    /// boundary that the scan of the piece before it confirms), so that both stay busy to the end whatever the
    /// segments' sizes. Default 8 MiB; at least 256 bytes.
    pub recovery_piece_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            durability: Durability::Always,
            background_preallocation: true,
            verify_digests_on_open: false,
            segment_digest: true,
            durable_mark: CommitId(0),
            read_only: false,
            recovery_piece_bytes: 8 << 20,
        }
    }
}

/// Bytes a segment always keeps free between its last frame and the end of its capacity, besides the footer's
/// place: a sealed segment is then always shorter than its capacity, so recovery can tell a segment that was
/// cut after its footer (its roll finished) from one that was not.
const SEGMENT_SLACK: u64 = 1;

impl Options {
    /// The largest record body a segment of `segment_bytes` can hold (its header, one frame header, the sealed
    /// footer and one byte of slack take the rest).
    #[must_use]
    pub fn largest_record_for(segment_bytes: u64) -> usize {
        let overhead = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + FOOTER_LEN) as u64 + SEGMENT_SLACK;
        usize::try_from(segment_bytes.saturating_sub(overhead)).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<()> {
        let overhead = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + FOOTER_LEN) as u64 + SEGMENT_SLACK;
        if self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes {} exceeds the maximum {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.max_record_bytes > MAX_FRAME_BODY_BYTES {
            return Err(Error::InvalidOptions(format!(
                "max_record_bytes {} exceeds the hard limit {MAX_FRAME_BODY_BYTES}",
                self.max_record_bytes
            )));
        }
        if self.segment_bytes < overhead + self.max_record_bytes as u64 {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes {} is too small for max_record_bytes {}: raise segment_bytes to at least {} or \
                 lower max_record_bytes",
                self.segment_bytes,
                self.max_record_bytes,
                overhead + self.max_record_bytes as u64
            )));
        }
        if self.recovery_piece_bytes < 256 {
            return Err(Error::InvalidOptions(format!(
                "recovery_piece_bytes {} is below the minimum 256",
                self.recovery_piece_bytes
            )));
        }
        if let Durability::Batch { interval } = self.durability {
            if interval.is_zero() {
                return Err(Error::InvalidOptions("batch interval must be positive".into()));
            }
        }
        Ok(())
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Frames found (all verified by CRC).
    pub frames: u64,
    /// Bytes of frames scanned.
    pub bytes_scanned: u64,
    /// The last CommitId in the log (0 when empty).
    pub last_commit_id: CommitId,
    /// A torn tail that was discarded: (segment, offset, bytes zeroed).
    pub torn_tail: Option<(SegmentId, u64, u64)>,
    /// An interrupted seal that was completed.
    pub completed_seal: Option<SegmentId>,
    /// A roll interrupted before the next segment existed: the footer written for it was zeroed again and
    /// the segment stays the active one.
    pub undone_roll: Option<SegmentId>,
    /// A [`truncate_after`] was interrupted (its intent file is present): run it again to finish the cut.
    pub truncate_in_progress: bool,
    /// An empty trailing segment that was removed (crash right after creating it).
    pub removed_empty_segment: Option<SegmentId>,
    /// Leftover preallocated files removed.
    pub removed_prealloc: usize,
}

/// A segment as readers see it.
#[derive(Debug)]
pub(crate) struct SegView {
    pub(crate) id: SegmentId,
    pub(crate) path: PathBuf,
    pub(crate) first_commit: CommitId,
    /// Last durable CommitId in this segment (`first_commit - 1` when none).
    pub(crate) last_commit: CommitId,
    /// End of the durable frames.
    pub(crate) data_end: u64,
    pub(crate) sealed: bool,
    /// The active segment's file, for reads while it grows.
    pub(crate) file: Option<Arc<dyn FsFile>>,
    /// The memory map of a sealed segment, made on first read.
    pub(crate) map: OnceLock<Bytes>,
    /// The active segment's live map (see [`FsFile::map_live`]), when the file system has one.
    pub(crate) live: Option<Bytes>,
    /// Sparse `(CommitId, offset)` index of the segment's frames, shared with the writer while it grows.
    pub(crate) sparse: SparseIndex,
}

/// Sparse `(CommitId, offset)` points of one segment (see [`crate::recovery::SPARSE_EVERY`]).
pub(crate) type SparseIndex = Arc<RwLock<Vec<(CommitId, u64)>>>;

/// A written chunk's emptied buffers (frame bytes, index points), kept for the next chunk.
type Spare = (Vec<u8>, Vec<(CommitId, u64)>);

/// A consecutive run of encoded frames waiting to be written to one segment.
#[derive(Debug)]
struct Chunk {
    segment: SegmentId,
    offset: u64,
    first: CommitId,
    last: CommitId,
    first_epoch: Epoch,
    last_epoch: Epoch,
    frames: u64,
    bytes: Vec<u8>,
    /// Sparse index points of the frames in `bytes` (absolute offsets).
    sparse: Vec<(CommitId, u64)>,
}

#[derive(Debug)]
struct State {
    next_commit: CommitId,
    last_epoch: Epoch,
    /// Where the next frame goes.
    tail_segment: SegmentId,
    tail_offset: u64,
    /// Capacity of the tail segment: its header's value if it exists, the configured one if it is new.
    tail_segment_bytes: u64,
    pending: Vec<Chunk>,
    leader_active: bool,
    /// Highest CommitId written to the OS.
    written: CommitId,
    /// Highest CommitId known durable (per the durability mode).
    durable: CommitId,
    failed: Option<Arc<Failure>>,
    closed: bool,
    spare: Vec<Spare>,
    /// Appenders parked until a flush covers their CommitId.
    waiters: Vec<Waiter>,
    /// Reused buffer for released waiters.
    wake_buf: Vec<Waiter>,
}

/// How many consecutive flushes one appender may lead before handing over, bounding its own latency.
const MAX_ROUNDS_LED: u32 = 8;

/// How many appenders each woken appender wakes in turn.
const WAKE_FAN_OUT: usize = 2;

const WAITING: u8 = 0;
const ACKED: u8 = 1;
const FAILED: u8 = 2;
const LEAD: u8 = 3;

/// What an appender does after queueing its frames (see `Shared::enlist`).
#[derive(Debug)]
enum Ticket {
    /// Already acknowledged (or nothing was queued).
    Ready,
    /// The log failed closed.
    Failed,
    /// Park until a leader sets the slot's verdict.
    Park(Arc<AtomicU8>),
    /// Lead the next flush.
    Lead,
}

/// Frames queued by [`Wal::enqueue_with`] and not yet known to be acknowledged. [`Queued::wait`] waits for
/// them. Dropping it waits too: its appender may have been chosen to lead the next flush, which every other
/// appender's acknowledgement depends on.
#[derive(Debug)]
#[must_use = "the queued frames are acknowledged only once `wait` returns"]
pub struct Queued<'a> {
    shared: &'a Shared,
    mine: CommitId,
    ticket: Option<Ticket>,
}

impl Queued<'_> {
    /// The last CommitId queued (one before the next CommitId when nothing was pushed).
    #[must_use]
    pub fn last(&self) -> CommitId {
        self.mine
    }

    /// Waits until every frame queued with this handle is acknowledged per the durability mode (leading the
    /// flush if this appender was chosen to).
    ///
    /// # Errors
    /// [`Error::FailedClosed`] if the log failed before acknowledging them, [`Error::Closed`] if it closed.
    pub fn wait(mut self) -> Result<()> {
        let ticket = self.ticket.take().expect("a Queued is waited for once");
        self.shared.complete(ticket, self.mine)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            // The error, if any, is the log's failure, which every later call reports.
            let _ = self.shared.complete(ticket, self.mine);
        }
    }
}

thread_local! {
    /// This thread's verdict slot, reused from one wait to the next.
    static SLOT: Arc<AtomicU8> = Arc::new(AtomicU8::new(WAITING));
}

/// A verdict slot set to `WAITING`: this thread's own one when no earlier waiter still holds it (the usual case:
/// a thread waits for one append at a time, and a waiter returns only once its verdict was published), a new
/// one otherwise (a thread holding several unwaited `Queued`s, or a waker that has not yet dropped its copy).
fn verdict_slot() -> Arc<AtomicU8> {
    SLOT.try_with(|own| {
        (Arc::strong_count(own) == 1).then(|| {
            own.store(WAITING, Ordering::Relaxed);
            own.clone()
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| Arc::new(AtomicU8::new(WAITING)))
}

/// A parked appender.
#[derive(Debug)]
struct Waiter {
    id: CommitId,
    thread: std::thread::Thread,
    /// Where the verdict is published; the waiter spins on it around `park`.
    slot: Arc<AtomicU8>,
    /// The verdict to publish when it is woken.
    verdict: u8,
}

/// The segment being appended to, owned by the current leader.
#[derive(Debug)]
struct Active {
    id: SegmentId,
    path: PathBuf,
    file: Arc<dyn FsFile>,
    /// The running segment digest, when [`Options::segment_digest`] is on.
    hasher: Option<Sha256>,
    /// A live map of the file for readers (see [`FsFile::map_live`]).
    live: Option<Bytes>,
    data_end: u64,
    frames: u64,
    last_commit: CommitId,
    last_epoch: Epoch,
    sparse: SparseIndex,
}

#[derive(Debug)]
struct Io {
    active: Option<Active>,
}

#[derive(Debug, Default)]
struct PreallocState {
    want: Option<SegmentId>,
    working: Option<SegmentId>,
    ready: Option<(SegmentId, Box<dyn FsFile>)>,
    shutdown: bool,
}

/// Counters since the log was opened (for metrics and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Frames written.
    pub frames_written: u64,
    /// Bytes of frames written.
    pub bytes_written: u64,
    /// Leader flushes (each is one group commit).
    pub flushes: u64,
    /// `fdatasync` calls on the append path.
    pub fsyncs: u64,
    /// Total time spent in those `fdatasync` calls, in microseconds.
    pub fsync_micros_total: u64,
    /// The slowest of them, in microseconds.
    pub fsync_micros_max: u64,
    /// Segments sealed.
    pub segments_sealed: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) dir: PathBuf,
    pub(crate) opts: Options,
    state: Mutex<State>,
    cond: Condvar,
    io: Mutex<Io>,
    pub(crate) segments: RwLock<Vec<Arc<SegView>>>,
    prealloc: Mutex<PreallocState>,
    prealloc_cond: Condvar,
    stats: Mutex<WalStats>,
    /// Released waiters not yet woken (kept apart from `state` so waking does not contend with appenders).
    wake_queue: Mutex<Vec<Waiter>>,
    /// Run by woken appenders before they wake others (see `Wal::set_durable_hook`).
    durable_hook: HookSlot,
    /// `state.durable`, readable without the state lock.
    durable_mirror: AtomicU64,
    /// Whether `state.failed` is set, readable without the state lock.
    failed_mirror: AtomicBool,
    /// The last CommitId whose frame this open's recovery scan decoded and CRC-checked (see
    /// [`Wal::read_recovered`]).
    pub(crate) recovered_through: CommitId,
    _lock: Box<dyn DirLock>,
}

/// A callback run by a woken, acknowledged appender with its CommitId (see [`Wal::set_durable_hook`]).
pub type DurableHook = Box<dyn Fn(CommitId) + Send + Sync>;

/// Holds the durable hook; prints whether one is set.
struct HookSlot(OnceLock<DurableHook>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HookSlot({})",
            if self.0.get().is_some() { "set" } else { "empty" }
        )
    }
}

/// An open write-ahead log. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Wal {
    pub(crate) shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    report: RecoveryReport,
}

/// Collects the frames of one append call; handed to the closure of [`Wal::append_with`].
pub struct FrameSink<'a> {
    state: &'a mut State,
    epoch: Epoch,
    max_body: usize,
    segment_bytes: u64,
}

/// File name of a segment.
#[must_use]
pub fn segment_file_name(id: SegmentId) -> String {
    format!("{:020}.seg", id.0)
}

fn prealloc_file_name(id: SegmentId) -> String {
    format!("{:020}.prealloc", id.0)
}

/// The name of the lock file inside a WAL directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Present (and durable) while [`truncate_after`] removes segments: a sealed last segment is then a cut in
/// progress, not a lost active segment.
pub const TRUNCATE_INTENT_FILE_NAME: &str = "TRUNCATING";

fn parse_name(name: &str) -> Option<(SegmentId, bool)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = SegmentId(stem.parse().ok()?);
    match ext {
        "seg" => Some((id, false)),
        "prealloc" => Some((id, true)),
        _ => None,
    }
}

const ZERO_CHUNK: usize = 1 << 20;

fn zero_fill(file: &dyn FsFile, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    file.sync_data()
}

impl FrameSink<'_> {
    /// Adds one record body as the next frame; returns its CommitId.
    pub fn push(&mut self, body: &[u8]) -> Result<CommitId> {
        if body.len() > self.max_body {
            return Err(Error::RecordTooLarge {
                len: body.len(),
                max: self.max_body,
            });
        }
        let s = &mut *self.state;
        let frame_len = (FRAME_HEADER_LEN + body.len()) as u64;
        if s.tail_offset + frame_len + FOOTER_LEN as u64 + SEGMENT_SLACK > s.tail_segment_bytes {
            // Roll. New segments get the configured capacity; an existing one keeps the capacity in its header.
            s.tail_segment = s.tail_segment.next();
            s.tail_offset = SEGMENT_HEADER_LEN as u64;
            s.tail_segment_bytes = self.segment_bytes;
        }
        let id = s.next_commit;
        let needs_new_chunk = s.pending.last().is_none_or(|c| c.segment != s.tail_segment);
        if needs_new_chunk {
            let (bytes, sparse) = s.spare.pop().unwrap_or_default();
            s.pending.push(Chunk {
                segment: s.tail_segment,
                offset: s.tail_offset,
                first: id,
                last: id,
                first_epoch: self.epoch,
                last_epoch: self.epoch,
                frames: 0,
                bytes,
                sparse,
            });
        }
        let chunk = s.pending.last_mut().expect("a chunk was just ensured");
        // The active segment indexes every frame, so a point read of a recent record goes straight to it; the
        // index is thinned to the sparse points when the segment is sealed (see `seal`).
        chunk.sparse.push((id, s.tail_offset));
        chunk
            .bytes
            .extend_from_slice(&encode_frame_header(id, self.epoch, body));
        chunk.bytes.extend_from_slice(body);
        chunk.last = id;
        chunk.last_epoch = self.epoch;
        chunk.frames += 1;
        s.tail_offset += frame_len;
        s.next_commit = id.next();
        Ok(id)
    }

    /// The CommitId the next [`FrameSink::push`] will assign.
    #[must_use]
    pub fn next_commit_id(&self) -> CommitId {
        self.state.next_commit
    }
}

/// A saved cursor so a failed `append_with` closure leaves no trace.
struct Cursor {
    next_commit: CommitId,
    last_epoch: Epoch,
    tail_segment: SegmentId,
    tail_offset: u64,
    tail_segment_bytes: u64,
    chunks: usize,
    last_chunk: Option<ChunkMark>,
}

/// How far the last pending chunk had grown when a cursor was saved.
struct ChunkMark {
    bytes: usize,
    last: CommitId,
    last_epoch: Epoch,
    frames: u64,
    sparse: usize,
}

impl Cursor {
    fn save(s: &State) -> Self {
        Cursor {
            next_commit: s.next_commit,
            last_epoch: s.last_epoch,
            tail_segment: s.tail_segment,
            tail_offset: s.tail_offset,
            tail_segment_bytes: s.tail_segment_bytes,
            chunks: s.pending.len(),
            last_chunk: s.pending.last().map(|c| ChunkMark {
                bytes: c.bytes.len(),
                last: c.last,
                last_epoch: c.last_epoch,
                frames: c.frames,
                sparse: c.sparse.len(),
            }),
        }
    }

    fn restore(self, s: &mut State) {
        s.next_commit = self.next_commit;
        s.last_epoch = self.last_epoch;
        s.tail_segment = self.tail_segment;
        s.tail_offset = self.tail_offset;
        s.tail_segment_bytes = self.tail_segment_bytes;
        s.pending.truncate(self.chunks);
        if let (Some(c), Some(m)) = (s.pending.last_mut(), self.last_chunk) {
            c.bytes.truncate(m.bytes);
            c.last = m.last;
            c.last_epoch = m.last_epoch;
            c.frames = m.frames;
            c.sparse.truncate(m.sparse);
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering it per the recovery rule.
    pub fn open(fs: Arc<dyn Fs>, dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Wal::open_visiting(fs, dir, opts, &()).map(|(wal, _)| wal)
    }

    /// [`Wal::open`], showing `visitor` every frame recovery keeps, in the same pass that checks its CRCs (see
    /// [`RecoveryVisitor`]). Returns the log and one visit per segment, in segment order; together the visits
    /// saw every frame of the recovered log once, in order, and nothing else.
    pub fn open_visiting<V: RecoveryVisitor>(
        fs: Arc<dyn Fs>,
        dir: impl AsRef<Path>,
        opts: Options,
        visitor: &V,
    ) -> Result<(Wal, Vec<V::Segment>)> {
        opts.validate()?;
        let dir = dir.as_ref().to_owned();
        if !opts.read_only {
            fs.create_dir_all(&dir)
                .map_err(|e| Error::io("create directory", &dir, e))?;
        }
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = if opts.read_only {
            fs.try_lock_read(&lock_path)
        } else {
            fs.try_lock(&lock_path)
        };
        let lock = lock
            .map_err(|e| Error::io("lock", &lock_path, e))?
            .ok_or_else(|| Error::Locked {
                dir: dir.clone(),
                lock_file: lock_path.clone(),
            })?;
        let (recovered, report, visits) = recover(&*fs, &dir, &opts, visitor)?;
        let recovered_durable = recovered.state.durable.0;
        let shared = Arc::new(Shared {
            fs,
            dir,
            opts,
            state: Mutex::new(recovered.state),
            cond: Condvar::new(),
            io: Mutex::new(Io {
                active: recovered.active,
            }),
            segments: RwLock::new(recovered.views),
            prealloc: Mutex::new(PreallocState::default()),
            prealloc_cond: Condvar::new(),
            stats: Mutex::new(WalStats::default()),
            wake_queue: Mutex::new(Vec::new()),
            durable_hook: HookSlot(OnceLock::new()),
            durable_mirror: AtomicU64::new(recovered_durable),
            failed_mirror: AtomicBool::new(false),
            recovered_through: CommitId(recovered_durable),
            _lock: lock,
        });
        let mut threads = Vec::new();
        if shared.opts.background_preallocation && !shared.opts.read_only {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("aerodb-wal-prealloc".into())
                    .spawn(move || s.prealloc_loop())
                    .map_err(|e| Error::io("spawn preallocation thread", &shared.dir, e))?,
            );
            let next = shared.state.lock().tail_segment;
            // If the tail segment has no file yet, it is the next one to prepare; otherwise the one after.
            let want = if shared.io.lock().active.as_ref().is_some_and(|a| a.id == next) {
                next.next()
            } else {
                next
            };
            shared.request_prealloc(want);
        }
        if let (Durability::Batch { interval }, false) = (shared.opts.durability, shared.opts.read_only) {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("aerodb-wal-sync".into())
                    .spawn(move || s.batch_sync_loop(interval))
                    .map_err(|e| Error::io("spawn sync thread", &shared.dir, e))?,
            );
        }
        Ok((
            Wal {
                shared,
                threads,
                report,
            },
            visits,
        ))
    }

    /// Installs a callback that an acknowledged appender runs with its own CommitId right after it is woken
    /// and *before* it wakes the appenders after it (see the group-commit notes), with no WAL lock held. A layer
    /// above uses it to apply newly durable records once per commit — the first woken appender applies the whole
    /// batch on another core while the leader is already in its next fsync — instead of every woken appender
    /// contending to do so. The appender that led the flush is not woken and runs no hook; the layer above must
    /// also apply after `append_with` returns. The hook must not append to this log. Returns `false` if a hook
    /// was already installed.
    pub fn set_durable_hook(&self, hook: DurableHook) -> bool {
        self.shared.durable_hook.0.set(hook).is_ok()
    }

    /// What recovery found when this handle was opened.
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Appends one record and returns its CommitId once the durability mode is satisfied.
    pub fn append(&self, epoch: Epoch, body: &[u8]) -> Result<CommitId> {
        self.append_with(epoch, |sink| sink.push(body))
    }

    /// Appends several records as consecutive CommitIds with a single write and sync; returns the first and last.
    pub fn append_batch<B: AsRef<[u8]>>(&self, epoch: Epoch, bodies: &[B]) -> Result<(CommitId, CommitId)> {
        self.append_with(epoch, |sink| {
            let first = sink.next_commit_id();
            let mut last = CommitId(first.0 - 1);
            for b in bodies {
                last = sink.push(b.as_ref())?;
            }
            Ok((first, last))
        })
    }

    /// The general append: `f` is called once, under the log's ordering lock, with a sink that assigns
    /// consecutive CommitIds to the bodies pushed into it. Keep `f` short: every appender waits for it. If `f`
    /// returns an error, nothing it pushed is kept. Returns `f`'s value once all its frames are acknowledged per
    /// the durability mode.
    pub fn append_with<R>(&self, epoch: Epoch, f: impl FnOnce(&mut FrameSink<'_>) -> Result<R>) -> Result<R> {
        let (out, queued) = self.enqueue_with(epoch, f)?;
        queued.wait()?;
        Ok(out)
    }

    /// [`Wal::append_with`] in two steps: queues `f`'s frames (in the same group commit as any other appender's)
    /// and returns `f`'s value with a [`Queued`] that waits for their acknowledgement. Work done between the
    /// two steps runs outside the log's ordering lock while the frames are already on their way to disk, so a
    /// caller with its own ordering lock can finish per-record work under that lock instead of this one. An
    /// error from `f` keeps nothing it pushed and returns no `Queued`.
    pub fn enqueue_with<R>(
        &self,
        epoch: Epoch,
        f: impl FnOnce(&mut FrameSink<'_>) -> Result<R>,
    ) -> Result<(R, Queued<'_>)> {
        let sh = &*self.shared;
        if sh.opts.read_only {
            return Err(Error::ReadOnly);
        }
        let mut s = sh.state.lock();
        s.check_writable()?;
        if epoch < s.last_epoch {
            return Err(Error::EpochRegression {
                last: s.last_epoch,
                got: epoch,
            });
        }
        let cursor = Cursor::save(&s);
        let mut sink = FrameSink {
            state: &mut s,
            epoch,
            max_body: sh.opts.max_record_bytes,
            segment_bytes: sh.opts.segment_bytes,
        };
        let out = match f(&mut sink) {
            Ok(out) => out,
            Err(e) => {
                cursor.restore(&mut s);
                return Err(e);
            }
        };
        let mine = CommitId(s.next_commit.0 - 1);
        let ticket = if s.next_commit == cursor.next_commit {
            Ticket::Ready
        } else {
            s.last_epoch = epoch;
            sh.enlist(&mut s, mine)
        };
        drop(s);
        Ok((
            out,
            Queued {
                shared: sh,
                mine,
                ticket: Some(ticket),
            },
        ))
    }

    /// The highest CommitId that is durable (in `Always` mode: acknowledged). 0 when the log is empty.
    #[must_use]
    pub fn durable_commit_id(&self) -> CommitId {
        // Read without the state lock, which every appender contends for.
        CommitId(self.shared.durable_mirror.load(Ordering::Acquire))
    }

    /// The CommitId the next append will get.
    #[must_use]
    pub fn next_commit_id(&self) -> CommitId {
        self.shared.state.lock().next_commit
    }

    /// The epoch of the newest frame (or of the last append accepted).
    #[must_use]
    pub fn last_epoch(&self) -> Epoch {
        self.shared.state.lock().last_epoch
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> WalStats {
        *self.shared.stats.lock()
    }

    /// Writes the active segment's bytes (header and every recovered frame) back in place and syncs them, so that
    /// what recovery read is on the disk and not only in the page cache. After an earlier handle's `fdatasync`
    /// failed, the kernel may have dropped the dirty pages' error and marked them clean: the bytes then read back
    /// as written although the disk may not hold them, and a later sync would not write them again. A fresh write
    /// dirties them, and a successful sync makes them durable. Used when a log is opened again in place after it
    /// failed closed. Returns the bytes written (0 without an active segment or when read-only).
    pub fn rewrite_active(&self) -> Result<u64> {
        if self.shared.opts.read_only {
            return Ok(0);
        }
        let io = self.shared.io.lock();
        let Some(a) = io.active.as_ref() else {
            return Ok(0);
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < a.data_end {
            let n = (a.data_end - at).min(buf.len() as u64) as usize;
            crate::fs::read_exact_at(&*a.file, &mut buf[..n], at)
                .map_err(|e| Error::io("read segment for rewrite", &a.path, e))?;
            a.file
                .write_all_at(&buf[..n], at)
                .map_err(|e| Error::io("rewrite segment", &a.path, e))?;
            at += n as u64;
        }
        a.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync rewritten segment", &a.path, e))?;
        Ok(a.data_end)
    }

    /// Why the log failed closed, if it did.
    #[must_use]
    pub fn failure(&self) -> Option<Arc<Failure>> {
        // The common answer ("no") without the state lock.
        if !self.shared.failed_mirror.load(Ordering::Acquire) {
            return None;
        }
        self.shared.state.lock().failed.clone()
    }

    /// Blocks until `commit_id` is durable, the timeout passes (returns false) or the log fails.
    pub fn wait_durable(&self, commit_id: CommitId, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.state.lock();
        loop {
            if s.durable >= commit_id {
                return Ok(true);
            }
            if let Some(f) = &s.failed {
                return Err(Error::FailedClosed(f.clone()));
            }
            if self.shared.cond.wait_until(&mut s, deadline).timed_out() {
                return Ok(s.durable >= commit_id);
            }
        }
    }

    /// Forces everything written so far to disk (useful in `Batch` and `None` modes).
    pub fn sync(&self) -> Result<()> {
        self.shared.sync_now()
    }

    /// The directory this log lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Re-reads every segment from disk and checks every frame CRC, CommitId continuity, epochs, footers and the
    /// SHA-256 of every sealed segment. Returns the number of frames verified.
    pub fn verify(&self) -> Result<u64> {
        let views: Vec<Arc<SegView>> = self.shared.segments.read().clone();
        let mut expected = None;
        let mut min_epoch = Epoch(0);
        let mut frames = 0;
        for v in &views {
            let bytes = self.shared.segment_bytes(v)?;
            let expect = Expect {
                segment_id: v.id,
                first_commit_id: expected,
                min_epoch,
                is_last: !v.sealed,
                seal_may_be_unfinished: false,
                whole_file: v.sealed,
                max_body: self.shared.opts.max_record_bytes,
                durable_mark: CommitId(0),
            };
            let scan = scan_segment(&bytes, &expect)?;
            check_digest(&bytes, &scan)?;
            frames += scan.frame_count;
            expected = Some(scan.last_commit_id.next());
            min_epoch = scan.last_epoch;
        }
        Ok(frames)
    }

    /// Closes the log: waits for in-flight appends, syncs, stops background threads.
    pub fn close(mut self) -> Result<()> {
        let res = self.shared.close();
        self.stop_threads();
        res
    }

    fn stop_threads(&mut self) {
        {
            let mut s = self.shared.state.lock();
            s.closed = true;
        }
        self.shared.cond.notify_all();
        self.shared.prealloc.lock().shutdown = true;
        self.shared.prealloc_cond.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            // Best effort: a dropped handle syncs what it wrote, like `close`.
            let _ = self.shared.close();
            self.stop_threads();
        }
    }
}

impl State {
    /// The highest CommitId whose appender may be told "done" under the durability mode.
    fn acked(&self, opts: &Options) -> CommitId {
        match opts.durability {
            Durability::Always => self.durable,
            Durability::Batch { .. } | Durability::None => self.written,
        }
    }

    fn check_writable(&self) -> Result<()> {
        if let Some(f) = &self.failed {
            return Err(Error::FailedClosed(f.clone()));
        }
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl Shared {
    /// Waits until `mine` is acknowledged, leading flushes when nobody else is.
    ///
    /// Waiters park on their own slot and are woken individually with a verdict (acknowledged, failed, or "lead
    /// the next flush"), so a woken appender need not take the state lock again. A leader keeps leading while work
    /// is pending (up to [`MAX_ROUNDS_LED`] flushes), so the next flush starts on a thread that is already
    /// running. After each flush it wakes one acknowledged appender, and every woken appender wakes
    /// [`WAKE_FAN_OUT`] more: the wake-ups run as a tree on the other core while the leader is in its next
    /// `fdatasync`. (A shared condition variable would wake every appender on every flush; on a 2-core machine
    /// that herd costs more than the fsync itself.)
    fn wait_acknowledged(&self, mut s: parking_lot::MutexGuard<'_, State>, mine: CommitId) -> Result<()> {
        let ticket = self.enlist(&mut s, mine);
        drop(s);
        self.complete(ticket, mine)
    }

    /// The first step of waiting for `mine`, under the state lock: already acknowledged, failed, park until a
    /// leader's verdict, or lead the next flush (nobody else is).
    fn enlist(&self, s: &mut State, mine: CommitId) -> Ticket {
        if s.acked(&self.opts) >= mine {
            return Ticket::Ready;
        }
        if s.failed.is_some() {
            return Ticket::Failed;
        }
        if s.leader_active {
            let slot = verdict_slot();
            s.waiters.push(Waiter {
                id: mine,
                thread: std::thread::current(),
                slot: slot.clone(),
                verdict: WAITING,
            });
            Ticket::Park(slot)
        } else {
            s.leader_active = true;
            Ticket::Lead
        }
    }

    /// The rest of waiting for `mine`, without the state lock held on entry.
    fn complete(&self, mut ticket: Ticket, mine: CommitId) -> Result<()> {
        loop {
            let mut s = match ticket {
                Ticket::Ready => return Ok(()),
                Ticket::Failed => return Err(self.failure_error()),
                Ticket::Park(slot) => {
                    let verdict = loop {
                        match slot.load(Ordering::Acquire) {
                            WAITING => std::thread::park(),
                            v => break v,
                        }
                    };
                    if verdict == ACKED {
                        // Before waking the next appenders, let the layer above apply what became durable: this
                        // runs on another core while the leader is already in its next fsync, and the appenders
                        // woken after this one find their records applied.
                        if let Some(hook) = self.durable_hook.0.get() {
                            hook(mine);
                        }
                    }
                    self.wake_some(WAKE_FAN_OUT);
                    match verdict {
                        ACKED => return Ok(()),
                        FAILED => return Err(self.failure_error()),
                        _ => {
                            // LEAD: the previous leader handed the pending work to this appender.
                            let s = self.state.lock();
                            debug_assert!(s.leader_active);
                            s
                        }
                    }
                }
                Ticket::Lead => self.state.lock(),
            };
            ticket = self.lead(&mut s, mine);
        }
    }

    /// This thread is the leader: flushes everything pending, for as long as it keeps leading, then enlists
    /// again for `mine` (which is acknowledged by then unless it arrived after the last flush started).
    fn lead(&self, s: &mut parking_lot::MutexGuard<'_, State>, mine: CommitId) -> Ticket {
        let mut rounds_led = 0u32;
        loop {
            rounds_led += 1;
            let chunks = std::mem::take(&mut s.pending);
            let result = parking_lot::MutexGuard::unlocked(s, || self.flush(chunks));
            match result {
                Ok((last, spare)) => {
                    s.written = s.written.max(last);
                    if matches!(self.opts.durability, Durability::Always | Durability::None) {
                        s.durable = s.durable.max(last);
                        self.durable_mirror.store(s.durable.0, Ordering::Release);
                    }
                    s.spare.extend(spare);
                }
                Err(f) => {
                    tracing::error!(failure = %f, "WAL failed closed");
                    s.failed.get_or_insert(Arc::new(f));
                    self.failed_mirror.store(true, Ordering::Release);
                }
            }
            let acked = s.acked(&self.opts);
            let failed = s.failed.is_some();
            let mut released = std::mem::take(&mut s.wake_buf);
            {
                let waiters = &mut s.waiters;
                let mut i = 0;
                while i < waiters.len() {
                    if failed || waiters[i].id <= acked {
                        let mut w = waiters.swap_remove(i);
                        w.verdict = if w.id <= acked { ACKED } else { FAILED };
                        released.push(w);
                    } else {
                        i += 1;
                    }
                }
            }
            let more = !s.pending.is_empty() && !failed;
            // Pending frames always belong to appenders that enlisted in the same critical section that queued
            // them, but never leave work without a leader: keep leading if there is nobody to hand to.
            let keep_leading = more && (rounds_led < MAX_ROUNDS_LED || s.waiters.is_empty());
            if !keep_leading {
                s.leader_active = false;
                if more {
                    // Hand the pending work to one of its appenders; it stays marked as leader meanwhile.
                    if let Some(mut w) = s.waiters.pop() {
                        w.verdict = LEAD;
                        s.leader_active = true;
                        released.push(w);
                    }
                }
            }
            parking_lot::MutexGuard::unlocked(s, || {
                self.release(&mut released);
                // `wait_durable` and `close` wait on the condition variable.
                self.cond.notify_all();
            });
            s.wake_buf = released;
            if !keep_leading {
                // Our own record may still be pending (it arrived after this flush started): enlist like anyone
                // else (which may mean leading again at once).
                match self.enlist(s, mine) {
                    Ticket::Lead => rounds_led = 0,
                    other => return other,
                }
            }
        }
    }

    /// Queues released waiters for waking and wakes the first of them; the rest are woken in a fan-out tree.
    fn release(&self, released: &mut Vec<Waiter>) {
        if released.is_empty() {
            return;
        }
        let mut q = self.wake_queue.lock();
        // The LEAD handoff (if any) is last in `released`: wake it first so the next flush starts soonest.
        q.extend(released.drain(..));
        drop(q);
        self.wake_some(1);
    }

    /// Wakes up to `n` waiters from the wake queue.
    fn wake_some(&self, n: usize) {
        let mut batch: [Option<Waiter>; WAKE_FAN_OUT] = Default::default();
        {
            let mut q = self.wake_queue.lock();
            for slot in batch.iter_mut().take(n) {
                *slot = q.pop();
            }
        }
        for w in batch.into_iter().flatten() {
            w.slot.store(w.verdict, Ordering::Release);
            w.thread.unpark();
        }
    }

    fn failure_error(&self) -> Error {
        self.failure_error_locked(&self.state.lock())
    }

    fn failure_error_locked(&self, s: &State) -> Error {
        match &s.failed {
            Some(f) => Error::FailedClosed(f.clone()),
            None => Error::Closed,
        }
    }

    /// Writes the chunks, rolling segments as they say, then syncs per the durability mode. Returns the last
    /// CommitId written and the emptied buffers for reuse.
    fn flush(&self, chunks: Vec<Chunk>) -> Result<(CommitId, Vec<Spare>), Failure> {
        let mut io = self.io.lock();
        let mut last = CommitId(0);
        let mut spare = Vec::with_capacity(chunks.len());
        let (mut frames, mut bytes, mut sealed) = (0u64, 0u64, 0u64);
        for mut chunk in chunks {
            let rolled = io.active.as_ref().is_none_or(|a| a.id != chunk.segment);
            if rolled {
                // Roll: the old segment's footer is written and synced with its last frames; then the new
                // segment is created with this chunk already in it; only then is the old one cut after its
                // footer. A crash at any point leaves the old segment active (recovery zeroes a footer that was
                // not followed by a live segment), or both with the old one's cut to finish — never a cut
                // segment without a successor, so a missing active segment is always detected
                // (docs/formats.md, recovery).
                if let Some(old) = io.active.as_ref() {
                    self.write_footer(old)?;
                }
                let new = self.start_segment(&chunk)?;
                if let Some(old) = io.active.take() {
                    self.cut_sealed(old)?;
                    sealed += 1;
                }
                io.active = Some(new);
            }
            let active = io.active.as_mut().expect("active segment was just ensured");
            assert_eq!(
                chunk.offset, active.data_end,
                "chunk must continue the segment exactly"
            );
            assert_eq!(
                chunk.first,
                active.last_commit.next(),
                "chunk must continue the CommitIds"
            );
            if !rolled {
                active
                    .file
                    .write_all_at(&chunk.bytes, chunk.offset)
                    .map_err(|e| Failure::new("write", active.path.clone(), &e))?;
            }
            if let Some(h) = &mut active.hasher {
                h.update(&chunk.bytes);
            }
            active.data_end += chunk.bytes.len() as u64;
            active.frames += chunk.frames;
            active.last_commit = chunk.last;
            active.last_epoch = chunk.last_epoch;
            last = chunk.last;
            frames += chunk.frames;
            bytes += chunk.bytes.len() as u64;
            active.sparse.write().append(&mut chunk.sparse);
            chunk.bytes.clear();
            spare.push((chunk.bytes, chunk.sparse));
        }
        let mut fsync_micros = None;
        if let Some(active) = io.active.as_ref() {
            if self.opts.durability == Durability::Always {
                let t = Instant::now();
                active
                    .file
                    .sync_data()
                    .map_err(|e| Failure::new("fdatasync", active.path.clone(), &e))?;
                fsync_micros = Some(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                self.publish(active);
            } else if self.opts.durability == Durability::None {
                self.publish(active);
            }
        }
        let mut st = self.stats.lock();
        st.frames_written += frames;
        st.bytes_written += bytes;
        st.flushes += 1;
        st.segments_sealed += sealed;
        if let Some(us) = fsync_micros {
            st.fsyncs += 1;
            st.fsync_micros_total += us;
            st.fsync_micros_max = st.fsync_micros_max.max(us);
        }
        Ok((last, spare))
    }

    /// Makes the active segment's durable frames visible to readers.
    fn publish(&self, active: &Active) {
        self.publish_view(active, false);
    }

    /// Replaces (or appends) the readers' view of `a`'s segment.
    fn publish_view(&self, a: &Active, sealed: bool) {
        let view = Arc::new(SegView {
            id: a.id,
            path: a.path.clone(),
            first_commit: CommitId(a.last_commit.0 + 1 - a.frames),
            last_commit: a.last_commit,
            data_end: a.data_end,
            sealed,
            // Sealed segments are read through their memory map; the active one through its live map, else its
            // open file.
            file: if sealed { None } else { Some(a.file.clone()) },
            map: OnceLock::new(),
            live: if sealed { None } else { a.live.clone() },
            sparse: a.sparse.clone(),
        });
        let mut segs = self.segments.write();
        match segs.last_mut() {
            Some(last) if last.id == a.id => *last = view,
            _ => segs.push(view),
        }
    }

    /// First step of a roll: writes the footer after the frames and syncs both (the file still has its
    /// capacity; [`Shared::cut_sealed`] cuts it once the next segment is live).
    fn write_footer(&self, a: &Active) -> Result<(), Failure> {
        assert!(a.frames > 0, "never seal an empty segment ({})", a.id);
        let footer = SegmentFooter {
            last_commit_id: a.last_commit,
            frame_count: a.frames,
            data_end: a.data_end,
            last_epoch: a.last_epoch,
            sha256: a.hasher.clone().map(|h| h.finalize().into()),
            rolled: true,
        };
        let fail = |op, e: &std::io::Error| Failure::new(op, a.path.clone(), e);
        a.file
            .write_all_at(&footer.encode(), a.data_end)
            .map_err(|e| fail("write footer", &e))?;
        a.file.sync_data().map_err(|e| fail("fdatasync footer", &e))
    }

    /// Last step of a roll: cuts the file after its footer and fsyncs; readers then see it sealed.
    fn cut_sealed(&self, a: Active) -> Result<(), Failure> {
        let fail = |op, e: &std::io::Error| Failure::new(op, a.path.clone(), e);
        a.file
            .set_len(a.data_end + FOOTER_LEN as u64)
            .map_err(|e| fail("truncate sealed segment", &e))?;
        a.file.sync_all().map_err(|e| fail("fsync sealed segment", &e))?;
        // Sealed segments keep only the sparse points (the dense index served reads while it was active).
        a.sparse
            .write()
            .retain(|&(c, o)| crate::recovery::is_sparse_point(c, o));
        self.publish_view(&a, true);
        Ok(())
    }

    /// Turns a preallocated file into segment `id` holding `first_chunk` (its first frames): header and frames
    /// are written and synced under the preallocated name, then the file is renamed and the directory synced. A
    /// segment file therefore never exists without frames, and its name is durable before any of its frames is
    /// acknowledged (T5).
    fn start_segment(&self, first_chunk: &Chunk) -> Result<Active, Failure> {
        let (id, first, epoch) = (first_chunk.segment, first_chunk.first, first_chunk.first_epoch);
        let path = self.dir.join(segment_file_name(id));
        let pre_path = self.dir.join(prealloc_file_name(id));
        let fail = |op, p: &Path, e: &std::io::Error| Failure::new(op, p.to_owned(), e);
        let file = match self.take_prealloc(id) {
            Some(f) => f,
            None => {
                // Inline preallocation (no background thread, or it failed). A leftover partial file is stale.
                let _ = self.fs.remove_file(&pre_path);
                let f = self
                    .fs
                    .open(&pre_path, OpenMode::CreateNew)
                    .map_err(|e| fail("create segment file", &pre_path, &e))?;
                zero_fill(&*f, self.opts.segment_bytes)
                    .map_err(|e| fail("preallocate segment", &pre_path, &e))?;
                f
            }
        };
        let header = SegmentHeader {
            segment_id: id,
            first_commit_id: first,
            epoch,
            segment_bytes: self.opts.segment_bytes,
        };
        let hb = header.encode();
        assert_eq!(
            first_chunk.offset, SEGMENT_HEADER_LEN as u64,
            "a segment's first chunk follows its header"
        );
        file.write_all_at(&hb, 0)
            .map_err(|e| fail("write segment header", &pre_path, &e))?;
        file.write_all_at(&first_chunk.bytes, first_chunk.offset)
            .map_err(|e| fail("write", &pre_path, &e))?;
        file.sync_data()
            .map_err(|e| fail("fdatasync new segment", &pre_path, &e))?;
        self.fs
            .rename(&pre_path, &path)
            .map_err(|e| fail("rename segment", &pre_path, &e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| fail("fsync directory", &self.dir, &e))?;
        if self.opts.background_preallocation {
            self.request_prealloc(id.next());
        }
        let hasher = self.opts.segment_digest.then(|| {
            let mut h = Sha256::new();
            h.update(hb);
            h
        });
        let file: Arc<dyn FsFile> = Arc::from(file);
        let live = live_map(&*file, &path);
        Ok(Active {
            id,
            path,
            file,
            hasher,
            live,
            data_end: SEGMENT_HEADER_LEN as u64,
            frames: 0,
            last_commit: CommitId(first.0 - 1),
            last_epoch: epoch,
            sparse: SparseIndex::default(),
        })
    }

    fn request_prealloc(&self, id: SegmentId) {
        let mut p = self.prealloc.lock();
        if p.ready.as_ref().is_some_and(|(r, _)| *r == id) || p.working == Some(id) {
            return;
        }
        p.want = Some(id);
        self.prealloc_cond.notify_all();
    }

    /// The preallocated file for `id`, waiting for the background thread if it is making it right now.
    fn take_prealloc(&self, id: SegmentId) -> Option<Box<dyn FsFile>> {
        let mut p = self.prealloc.lock();
        while p.working == Some(id)
            || (p.want == Some(id) && !p.shutdown && self.opts.background_preallocation)
        {
            self.prealloc_cond.wait(&mut p);
        }
        match p.ready.take() {
            Some((r, f)) if r == id => Some(f),
            other => {
                p.ready = other;
                None
            }
        }
    }

    fn prealloc_loop(&self) {
        let mut p = self.prealloc.lock();
        loop {
            if p.shutdown {
                return;
            }
            let Some(id) = p.want.take() else {
                self.prealloc_cond.wait(&mut p);
                continue;
            };
            p.working = Some(id);
            drop(p);
            let path = self.dir.join(prealloc_file_name(id));
            let made = (|| {
                let _ = self.fs.remove_file(&path);
                let f = self.fs.open(&path, OpenMode::CreateNew)?;
                zero_fill(&*f, self.opts.segment_bytes)?;
                Ok::<_, std::io::Error>(f)
            })();
            p = self.prealloc.lock();
            p.working = None;
            match made {
                Ok(f) => p.ready = Some((id, f)),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "background preallocation failed; the writer will retry inline")
                }
            }
            self.prealloc_cond.notify_all();
        }
    }

    fn batch_sync_loop(&self, interval: Duration) {
        loop {
            {
                let mut s = self.state.lock();
                if s.closed {
                    return;
                }
                self.cond.wait_for(&mut s, interval);
                if s.closed {
                    return;
                }
            }
            if let Err(e) = self.sync_now() {
                tracing::error!(error = %e, "periodic WAL sync failed");
            }
        }
    }

    /// Syncs the active segment and advances the durable mark to what was written.
    fn sync_now(&self) -> Result<()> {
        let written = {
            let s = self.state.lock();
            s.check_writable().or_else(|e| {
                if matches!(e, Error::Closed) {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            s.written
        };
        let io = self.io.lock();
        if let Some(active) = io.active.as_ref() {
            if let Err(e) = active.file.sync_data() {
                let f = Arc::new(Failure::new("fdatasync", active.path.clone(), &e));
                let mut s = self.state.lock();
                s.failed.get_or_insert(f.clone());
                self.failed_mirror.store(true, Ordering::Release);
                self.cond.notify_all();
                return Err(Error::FailedClosed(f));
            }
            self.publish(active);
        }
        drop(io);
        let mut s = self.state.lock();
        s.durable = s.durable.max(written);
        self.durable_mirror.store(s.durable.0, Ordering::Release);
        self.cond.notify_all();
        Ok(())
    }

    fn close(&self) -> Result<()> {
        let mut s = self.state.lock();
        while s.leader_active || !s.pending.is_empty() {
            if s.failed.is_some() {
                break;
            }
            if !s.leader_active {
                // Pending frames with no waiter cannot happen: every pusher waits. Defensive: flush them.
                let mine = CommitId(s.next_commit.0 - 1);
                return self.wait_acknowledged(s, mine);
            }
            self.cond.wait(&mut s);
        }
        let failed = s.failed.clone();
        drop(s);
        if let Some(f) = failed {
            return Err(Error::FailedClosed(f));
        }
        if self.opts.durability != Durability::Always {
            self.sync_now()?;
        }
        Ok(())
    }

    /// `len` bytes of the active segment `v` from `offset` (within its durable prefix).
    pub(crate) fn read_active(&self, v: &SegView, offset: u64, len: u64) -> Result<Bytes> {
        let file = match &v.file {
            Some(f) => f.clone(),
            None => Arc::from(
                self.fs
                    .open(&v.path, OpenMode::Read)
                    .map_err(|e| Error::io("open segment", &v.path, e))?,
            ),
        };
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        crate::fs::read_exact_at(&*file, &mut buf, offset)
            .map_err(|e| Error::io("read segment", &v.path, e))?;
        Ok(Bytes::from(buf))
    }

    /// The bytes of a segment: its map if sealed, its durable prefix if active (from the live map when there is
    /// one, else a fresh read).
    pub(crate) fn segment_bytes(&self, v: &SegView) -> Result<Bytes> {
        if v.sealed {
            if let Some(b) = v.map.get() {
                return Ok(b.clone());
            }
            let f = self
                .fs
                .open(&v.path, OpenMode::Read)
                .map_err(|e| Error::io("open segment", &v.path, e))?;
            let b = f.map().map_err(|e| Error::io("map segment", &v.path, e))?;
            return Ok(v.map.get_or_init(|| b).clone());
        }
        if let Some(live) = v.live.as_ref().filter(|m| v.data_end <= m.len() as u64) {
            return Ok(live.slice(..usize::try_from(v.data_end).unwrap_or(usize::MAX)));
        }
        self.read_active(v, 0, v.data_end)
    }
}

/// A live map of the active segment `file` for readers, or `None` (the file system has none, or mapping failed:
/// readers then `pread`, which is only slower).
fn live_map(file: &dyn FsFile, path: &Path) -> Option<Bytes> {
    match file.map_live() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot map the active segment; reading it with pread");
            None
        }
    }
}

/// A segment opened, mapped and planned for recovery.
struct Planned {
    file: Box<dyn FsFile>,
    map: Bytes,
    /// `map` is a live map ([`FsFile::map_live`]).
    is_live: bool,
    /// What the scan expects of the segment on its own (what links it to the one before is checked in order).
    exp: Expect,
    header: crate::format::SegmentHeader,
    /// Offsets where later pieces start.
    cuts: Vec<usize>,
}

/// One unit of recovery's concurrent work.
enum Job {
    /// Scan the frames of one piece of segment `seg`.
    Piece {
        seg: usize,
        start: usize,
        stop: Option<usize>,
    },
    /// Find the last non-zero byte of segment `seg` (the active one).
    Zeros { seg: usize },
    /// Remove the stale preallocated files (never acknowledged, never read) and sync the directory.
    RemoveStale,
}

/// What a job found: a piece's run (`None` when it met a problem a whole scan must judge) and its visit.
enum JobOut<S> {
    Piece(Option<crate::recovery::FrameRun>, S),
    Zeros(Option<usize>),
    Removed(Result<usize>),
}

/// Removes `stale` preallocated files and syncs `dir`; returns how many were removed.
fn remove_stale(fs: &dyn Fs, dir: &Path, stale: &[PathBuf]) -> Result<usize> {
    for p in stale {
        fs.remove_file(p)
            .map_err(|e| Error::io("remove stale preallocated file", p, e))?;
    }
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(stale.len())
}

struct Recovered {
    state: State,
    active: Option<Active>,
    views: Vec<Arc<SegView>>,
}

fn recover<V: RecoveryVisitor>(
    fs: &dyn Fs,
    dir: &Path,
    opts: &Options,
    visitor: &V,
) -> Result<(Recovered, RecoveryReport, Vec<V::Segment>)> {
    let mut report = RecoveryReport::default();
    let names = fs
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    let mut ids = Vec::new();
    let mut stale = Vec::new();
    for name in &names {
        match parse_name(name) {
            Some((_, true)) if opts.read_only => {}
            // Removed by the scan's workers, as one of their jobs (below): unlinking a zero-filled file of a
            // segment's size frees all its pages, milliseconds of work that need not wait for anything.
            Some((_, true)) => stale.push(dir.join(name)),
            Some((id, false)) => ids.push(id),
            None if name == LOCK_FILE_NAME => {}
            None if name == TRUNCATE_INTENT_FILE_NAME => report.truncate_in_progress = true,
            None => tracing::warn!(file = %name, "ignoring unknown file in the WAL directory"),
        }
    }
    ids.sort();
    for w in ids.windows(2) {
        if w[1] != w[0].next() {
            return Err(crate::error::Corruption::new(
                w[0].next(),
                0,
                None,
                crate::error::CorruptionKind::SegmentMissing {
                    expected: w[0].next(),
                },
            )
            .into());
        }
    }
    let mut views = Vec::new();
    let mut expected: Option<CommitId> = None;
    let mut min_epoch = Epoch(0);
    let mut active = None;
    let mut last_commit = CommitId(0);
    let mut tail_segment = SegmentId(1);
    let mut tail_offset = SEGMENT_HEADER_LEN as u64;
    let mut tail_segment_bytes = opts.segment_bytes;
    // Segments are mapped and scanned on both cores, the active one among them, while the visitor hashes what
    // each frame holds. Only the checks that link one segment to the one before it (first CommitId, epoch floor)
    // need order; they are made below, in order, so the first problem reported is the one a sequential scan
    // reports.
    let penultimate = ids.len().checked_sub(2).map(|i| ids[i]);
    let expect = |segment_id, first_commit_id, min_epoch, is_last| Expect {
        segment_id,
        first_commit_id,
        min_epoch,
        is_last,
        seal_may_be_unfinished: Some(segment_id) == penultimate,
        whole_file: true,
        max_body: opts.max_record_bytes,
        durable_mark: opts.durable_mark,
    };
    // The segment before the last one, when a crash interrupted a roll before the cut after its footer.
    let mut unfinished_cut: Option<SegmentId> = None;
    let last_index = ids.len().checked_sub(1);
    // First, in order: open and map each segment, check its header, and plan where its frame area may be cut
    // into pieces of about `Options::recovery_piece_bytes`, so that two workers stay busy to the end whatever the
    // segments' sizes.
    let planned: Vec<Result<Planned>> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let is_last = Some(i) == last_index;
            let path = dir.join(segment_file_name(id));
            // The active segment is opened for writing (recovery may repair it) and mapped, not copied: it is
            // mostly preallocated zeros. Its map is dropped before any repair below writes to the file (see
            // `mmap.rs`).
            let mode = if is_last && !opts.read_only {
                OpenMode::ReadWrite
            } else {
                OpenMode::Read
            };
            let file = fs
                .open(&path, mode)
                .map_err(|e| Error::io("open segment", &path, e))?;
            // The active segment's map, where the file system has live maps, is the one its readers will use
            // afterwards when recovery writes nothing to the file: unmapping it and mapping it again would only
            // fault its pages in a second time.
            let live = if is_last {
                file.map_live().ok().flatten()
            } else {
                None
            };
            let is_live = live.is_some();
            let map = match live {
                Some(m) => m,
                None => file.map().map_err(|e| Error::io("map segment", &path, e))?,
            };
            let exp = expect(id, None, Epoch(0), is_last);
            let header = check_header(&map, &exp)?;
            let cuts = plan_pieces(&map, &exp, map.len().div_ceil(opts.recovery_piece_bytes));
            Ok(Planned {
                file,
                map,
                is_live,
                exp,
                header,
                cuts,
            })
        })
        .collect();
    // The work: every piece, and the search for the active segment's last non-zero byte (the rest of its
    // preallocated zeros), taken in order from a shared counter by two workers.
    let mut jobs = Vec::new();
    if !stale.is_empty() {
        jobs.push(Job::RemoveStale);
    }
    for (i, p) in planned.iter().enumerate() {
        let Ok(p) = p else { continue };
        if Some(i) == last_index {
            jobs.push(Job::Zeros { seg: i });
        }
        let starts = std::iter::once(SEGMENT_HEADER_LEN).chain(p.cuts.iter().copied());
        let stops = p.cuts.iter().copied().map(Some).chain(std::iter::once(None));
        for (start, stop) in starts.zip(stops) {
            jobs.push(Job::Piece { seg: i, start, stop });
        }
    }
    let next_job = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let j = next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(job) = jobs.get(j) else {
                return done;
            };
            let out = match *job {
                Job::RemoveStale => JobOut::Removed(remove_stale(fs, dir, &stale)),
                Job::Zeros { seg } => {
                    let Ok(p) = &planned[seg] else { continue };
                    JobOut::Zeros(crate::recovery::last_nonzero(&p.map))
                }
                Job::Piece { seg, start, stop } => {
                    let Ok(p) = &planned[seg] else { continue };
                    let mut visit = visitor.segment();
                    let run = scan_run(&p.map, &p.header, &p.exp, start, stop, |h, body| {
                        visitor.frame(&mut visit, h.commit_id, h.epoch, body);
                    });
                    JobOut::Piece(run.ok(), visit)
                }
            };
            done.push((j, out));
        }
    };
    let mut outs: Vec<Option<JobOut<V::Segment>>> =
        std::iter::repeat_with(|| None).take(jobs.len()).collect();
    let joined = std::thread::scope(|scope| {
        let other = (jobs.len() > 1).then(|| scope.spawn(work));
        let mut done = work();
        if let Some(h) = other {
            done.extend(h.join().ok()?);
        }
        for (j, out) in done {
            outs[j] = Some(out);
        }
        Some(())
    });
    if joined.is_none() {
        return Err(Error::InvalidOptions("segment scan thread panicked".into()));
    }
    // Per segment: the pieces' runs and visits, and the active segment's last non-zero byte.
    let mut seg_runs: Vec<Vec<(Option<crate::recovery::FrameRun>, V::Segment)>> =
        std::iter::repeat_with(Vec::new).take(ids.len()).collect();
    let mut tail_nonzero = None;
    for (job, out) in jobs.iter().zip(outs) {
        match (job, out) {
            (Job::RemoveStale, Some(JobOut::Removed(r))) => report.removed_prealloc = r?,
            (Job::Piece { seg, .. }, Some(JobOut::Piece(run, visit))) => seg_runs[*seg].push((run, visit)),
            (Job::Zeros { .. }, Some(JobOut::Zeros(t))) => tail_nonzero = Some(t),
            _ => return Err(Error::InvalidOptions("a segment scan job was lost".into())),
        }
    }
    let mut visits = Vec::with_capacity(ids.len());
    for (i, ((&id, plan), runs)) in ids.iter().zip(planned).zip(seg_runs).enumerate() {
        let is_last = i + 1 == ids.len();
        let path = dir.join(segment_file_name(id));
        let Planned {
            file,
            map: bytes,
            is_live,
            exp,
            header: h,
            ..
        } = plan?;
        check_follows(&h, &expect(id, expected, min_epoch, is_last))?;
        let (runs, piece_visits): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
        let whole = runs
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(crate::recovery::join_runs);
        let scan = match whole {
            Some(run) => {
                visits.extend(piece_visits);
                finish_segment(&bytes, &exp, h, run, if is_last { tail_nonzero } else { None })?
            }
            None => {
                // A piece met something a whole scan must judge (or a cut was not a frame boundary): scan the
                // segment in one run, as a sequential recovery does.
                let mut visit = visitor.segment();
                let scan = scan_segment_with(&bytes, &exp, |fh, body| {
                    visitor.frame(&mut visit, fh.commit_id, fh.epoch, body);
                })?;
                visits.push(visit);
                scan
            }
        };
        report.segments += 1;
        report.frames += scan.frame_count;
        report.bytes_scanned += scan.data_end;
        let first = scan.header.first_commit_id;
        if opts.verify_digests_on_open {
            check_digest(&bytes, &scan)?;
        }
        // Everything recovery needs from the last segment's bytes is taken now; its map is dropped before any
        // repair writes to or truncates the file.
        let prefix_hasher = (is_last && opts.segment_digest).then(|| {
            let mut h = Sha256::new();
            h.update(&bytes[..usize::try_from(scan.data_end).unwrap_or(0)]);
            h
        });
        // A clean end with frames needs no repair: the live map stays, for the readers.
        let mut kept_live =
            (is_live && scan.end == SegmentEnd::Clean && scan.frame_count > 0).then(|| bytes.clone());
        let bytes = if is_last { Bytes::new() } else { bytes };
        let mut end = scan.end.clone();
        if let SegmentEnd::Sealed {
            footer,
            trailing_zeros,
        } = &scan.end
        {
            if footer.rolled && is_last {
                // A roll writes the footer, creates the next segment, then cuts the file after the footer.
                if !trailing_zeros && !report.truncate_in_progress {
                    // Cut: the next segment was live, and it is gone.
                    return Err(crate::error::Corruption::new(
                        id,
                        footer.data_end,
                        Some(footer.last_commit_id),
                        crate::error::CorruptionKind::ActiveSegmentMissing { missing: id.next() },
                    )
                    .into());
                }
                // Not cut: the crash came before the next segment was live. The roll is undone (the footer
                // zeroed); this segment stays the active one and the next append rolls again.
                if *trailing_zeros && !opts.read_only {
                    file.write_all_at(&[0u8; FOOTER_LEN], footer.data_end)
                        .and_then(|()| file.sync_data())
                        .map_err(|e| Error::io("undo an interrupted roll", &path, e))?;
                }
                if *trailing_zeros {
                    report.undone_roll = Some(id);
                    end = SegmentEnd::Clean;
                }
            }
            if *trailing_zeros && !is_last {
                unfinished_cut = Some(id);
            }
        }
        if is_last && unfinished_cut.is_some() && scan.frame_count == 0 {
            return Err(crate::error::Corruption::new(
                id,
                SEGMENT_HEADER_LEN as u64,
                Some(scan.header.first_commit_id),
                crate::error::CorruptionKind::EmptySuccessor,
            )
            .into());
        }
        match end {
            SegmentEnd::Sealed { trailing_zeros, .. } => {
                if trailing_zeros && !opts.read_only {
                    // The segment before the last (or, in a log written before rolls were ordered so, the last):
                    // finish the cut after the footer.
                    let len = scan.data_end + FOOTER_LEN as u64;
                    let rw = fs
                        .open(&path, OpenMode::ReadWrite)
                        .map_err(|e| Error::io("complete interrupted seal", &path, e))?;
                    rw.set_len(len)
                        .and_then(|()| rw.sync_all())
                        .map_err(|e| Error::io("complete interrupted seal", &path, e))?;
                    report.completed_seal = Some(id);
                }
                views.push(Arc::new(SegView {
                    id,
                    path,
                    first_commit: first,
                    last_commit: scan.last_commit_id,
                    data_end: scan.data_end,
                    sealed: true,
                    file: None,
                    // Keep the map recovery made (not when the file was cut after it was mapped).
                    map: if is_last || trailing_zeros {
                        OnceLock::new()
                    } else {
                        OnceLock::from(bytes.clone())
                    },
                    live: None,
                    sparse: Arc::new(RwLock::new(
                        scan.sparse
                            .iter()
                            .copied()
                            .filter(|&(c, o)| crate::recovery::is_sparse_point(c, o))
                            .collect(),
                    )),
                }));
                tail_segment = id.next();
                tail_offset = SEGMENT_HEADER_LEN as u64;
            }
            SegmentEnd::Clean | SegmentEnd::Torn { .. } if scan.frame_count == 0 && opts.read_only => {
                tail_segment = id;
                tail_offset = SEGMENT_HEADER_LEN as u64;
            }
            SegmentEnd::Clean | SegmentEnd::Torn { .. } if scan.frame_count == 0 => {
                // A segment created just before a crash, before any frame reached it: it holds nothing.
                debug_assert!(is_last);
                fs.remove_file(&path)
                    .map_err(|e| Error::io("remove empty segment", &path, e))?;
                fs.sync_dir(dir)
                    .map_err(|e| Error::io("fsync directory", dir, e))?;
                report.removed_empty_segment = Some(id);
                tail_segment = id;
                tail_offset = SEGMENT_HEADER_LEN as u64;
            }
            SegmentEnd::Clean | SegmentEnd::Torn { .. } => {
                if let (SegmentEnd::Torn { offset, garbage_end }, true) = (&scan.end, opts.read_only) {
                    report.torn_tail = Some((id, *offset, garbage_end - offset));
                } else if let SegmentEnd::Torn { offset, garbage_end } = scan.end {
                    let zeros = vec![0u8; usize::try_from(garbage_end - offset).unwrap_or(0)];
                    file.write_all_at(&zeros, offset)
                        .map_err(|e| Error::io("discard torn tail", &path, e))?;
                    file.sync_data()
                        .map_err(|e| Error::io("discard torn tail", &path, e))?;
                    tracing::warn!(
                        segment = id.0,
                        offset,
                        bytes = garbage_end - offset,
                        "discarded torn tail"
                    );
                    report.torn_tail = Some((id, offset, garbage_end - offset));
                }
                let hasher = prefix_hasher;
                let sparse: SparseIndex = Arc::new(RwLock::new(scan.sparse.clone()));
                let file: Arc<dyn FsFile> = Arc::from(file);
                let live = kept_live.take().or_else(|| live_map(&*file, &path));
                views.push(Arc::new(SegView {
                    id,
                    path: path.clone(),
                    first_commit: first,
                    last_commit: scan.last_commit_id,
                    data_end: scan.data_end,
                    sealed: false,
                    file: Some(file.clone()),
                    map: OnceLock::new(),
                    live: live.clone(),
                    sparse: sparse.clone(),
                }));
                active = Some(Active {
                    id,
                    path,
                    file,
                    hasher,
                    live,
                    data_end: scan.data_end,
                    frames: scan.frame_count,
                    last_commit: scan.last_commit_id,
                    last_epoch: scan.last_epoch,
                    sparse,
                });
                tail_segment = id;
                tail_offset = scan.data_end;
                tail_segment_bytes = scan.header.segment_bytes;
            }
        }
        last_commit = scan.last_commit_id;
        if scan.frame_count > 0 {
            min_epoch = scan.last_epoch;
        }
        expected = Some(scan.last_commit_id.next());
    }
    report.last_commit_id = last_commit;
    let state = State {
        next_commit: last_commit.next(),
        last_epoch: min_epoch,
        tail_segment,
        tail_offset,
        tail_segment_bytes,
        pending: Vec::new(),
        leader_active: false,
        written: last_commit,
        durable: last_commit,
        failed: None,
        closed: false,
        spare: Vec::new(),
        waiters: Vec::new(),
        wake_buf: Vec::new(),
    };
    Ok((Recovered { state, active, views }, report, visits))
}

/// Cuts the log in `dir` after CommitId `keep` (offline: takes the directory's lock): every later frame is
/// removed — the segment holding `keep` becomes the active one, zero-filled after `keep`'s frame (unsealed if it
/// was sealed), and every later segment file is deleted. `keep = 0` removes every segment. Returns the number of
/// frames removed.
///
/// This is how a replica discards a divergent tail (`aerodb admin rebuild --discard-divergent-tail`); the engine
/// first removes what is derived from the cut records (checkpoints, Merkle leaves, index runs). Each step is
/// synced before the next; an interrupted cut leaves a log that is a prefix of the original ending somewhere
/// between `keep` and the old end, and running the cut again finishes it.
pub fn truncate_after(fs: Arc<dyn Fs>, dir: &Path, keep: CommitId, opts: &Options) -> Result<u64> {
    let (segment, end, last) = {
        let wal = Wal::open(
            fs.clone(),
            dir,
            Options {
                read_only: true,
                ..opts.clone()
            },
        )?;
        let last = wal.durable_commit_id();
        // An interrupted cut (its intent file is there) is finished even when no frame is left to remove: the
        // segment holding `keep` may still be sealed.
        if keep >= last && !wal.recovery_report().truncate_in_progress {
            return Ok(0);
        }
        let at = if keep.0 == 0 {
            None
        } else {
            let f = wal.read_frame(keep)?.ok_or_else(|| Error::Io {
                op: "find the frame to cut after",
                path: dir.to_owned(),
                source: std::io::Error::other(format!("frame {keep} is not in the log")),
            })?;
            Some((f.segment, f.offset + f.raw.len() as u64))
        };
        (at.map(|a| a.0), at.map_or(0, |a| a.1), last)
    };
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let lock_path = dir.join(LOCK_FILE_NAME);
    let _lock = fs
        .try_lock(&lock_path)
        .map_err(io("lock", &lock_path))?
        .ok_or_else(|| Error::Locked {
            dir: dir.to_owned(),
            lock_file: lock_path.clone(),
        })?;
    // Later segments go first, newest first, so an interruption leaves a prefix of the log.
    let mut later: Vec<(SegmentId, String)> = fs
        .list_dir(dir)
        .map_err(io("list", dir))?
        .into_iter()
        .filter_map(|name| parse_name(&name).map(|(id, _)| (id, name)))
        .filter(|(id, _)| segment.is_none_or(|s| *id > s))
        .collect();
    later.sort();
    // While segments go, a sealed last segment is a cut in progress, not a lost active segment: say so first.
    let intent = dir.join(TRUNCATE_INTENT_FILE_NAME);
    {
        let _ = fs.remove_file(&intent);
        let f = fs
            .open(&intent, OpenMode::CreateNew)
            .map_err(io("create truncate intent", &intent))?;
        f.write_all_at(format!("cutting after CommitId {keep}\n").as_bytes(), 0)
            .and_then(|()| f.sync_data())
            .map_err(io("write truncate intent", &intent))?;
        fs.sync_dir(dir).map_err(io("sync directory", dir))?;
    }
    for (_, name) in later.iter().rev() {
        let p = dir.join(name);
        fs.remove_file(&p).map_err(io("remove segment", &p))?;
        fs.sync_dir(dir).map_err(io("sync directory", dir))?;
    }
    if let Some(s) = segment {
        let p = dir.join(segment_file_name(s));
        let file = fs.open(&p, OpenMode::ReadWrite).map_err(io("open segment", &p))?;
        let mut hb = [0u8; SEGMENT_HEADER_LEN];
        crate::fs::read_exact_at(&*file, &mut hb, 0).map_err(io("read segment header", &p))?;
        let header = SegmentHeader::decode(&hb).map_err(|e| Error::Io {
            op: "decode segment header",
            path: p.clone(),
            source: std::io::Error::other(e.describe()),
        })?;
        // What follows `keep`'s frame: whole frames, then (if the segment was sealed) the footer, then nothing
        // or zero fill.
        let len = file.len().map_err(io("stat segment", &p))?;
        let mut rest = vec![0u8; usize::try_from(len.saturating_sub(end)).unwrap_or(0)];
        crate::fs::read_exact_at(&*file, &mut rest, end).map_err(io("read segment", &p))?;
        let mut frames = Vec::new();
        let mut at = 0usize;
        while let Ok(h) = crate::format::decode_frame_header(&rest[at..], MAX_FRAME_BODY_BYTES) {
            if at + h.frame_len() > rest.len() {
                break;
            }
            frames.push((end + at as u64, h.frame_len()));
            at += h.frame_len();
        }
        let tail_end = rest.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        // An active segment keeps its capacity (the rest reads as zeros). Extended first: an unsealed segment
        // shorter than its capacity is refused as shortened, while a sealed one with zero fill after its footer
        // is an interrupted seal that recovery finishes (leaving the sealed segment this cut started from).
        let cap = header.segment_bytes.max(len);
        if len < cap {
            file.set_len(cap).map_err(io("extend segment", &p))?;
            file.sync_all().map_err(io("sync segment", &p))?;
        }
        // Zero back to front, one piece per synced write: the footer (or other bytes after the last frame) first,
        // then each frame from the last one. A crash at any point leaves valid frames, then at most one partly
        // zeroed piece, then zeros: a torn tail that recovery cuts, never an invalid region before a valid frame.
        let zero = |offset: u64, n: usize| -> Result<()> {
            file.write_all_at(&vec![0u8; n], offset)
                .map_err(io("zero segment tail", &p))?;
            file.sync_data().map_err(io("sync segment", &p))
        };
        if tail_end > at {
            zero(end + at as u64, tail_end - at)?;
        }
        for &(offset, n) in frames.iter().rev() {
            zero(offset, n)?;
        }
        file.sync_all().map_err(io("sync segment", &p))?;
        fs.sync_dir(dir).map_err(io("sync directory", dir))?;
    }
    fs.remove_file(&intent)
        .map_err(io("remove truncate intent", &intent))?;
    fs.sync_dir(dir).map_err(io("sync directory", dir))?;
    Ok(last.0.saturating_sub(keep.0))
}
