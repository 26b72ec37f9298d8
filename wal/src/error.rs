//! The WAL's one error type.
//!
//! Errors are classified by what the caller must do:
//! - [`Error::Corruption`]: the bytes on disk contradict the format; a node must halt, never "repair" silently.
//! - [`Error::FailedClosed`]: a write or fsync failed earlier; this handle refuses writes forever. Reopen to recover.
//! - everything else is a refusal of this one call (bad input, locked directory, …) and leaves the log healthy.

use std::{io, path::PathBuf, sync::Arc};

use crate::types::{CommitId, Epoch, SegmentId};

/// Result alias for the WAL.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed while opening or reading the log (not on the acknowledged write path, which
    /// reports [`Error::FailedClosed`]).
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// What the WAL was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The on-disk bytes are not a valid log. Never silently truncated.
    #[error(transparent)]
    Corruption(#[from] Box<Corruption>),
    /// A write or fsync failed; the handle is read-only from now on and says why. Nothing in the failing batch was
    /// acknowledged.
    #[error("the log is failed closed (read-only): {0}")]
    FailedClosed(Arc<Failure>),
    /// Another process (or another handle in this process) holds the data directory's lock.
    #[error("data directory {dir} is locked by another AeroDB process (lock file {lock_file})")]
    Locked {
        /// The directory that is locked.
        dir: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
    },
    /// A record body is larger than a frame may carry.
    #[error("record body of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The body length given.
        len: usize,
        /// The largest body the log accepts with its options.
        max: usize,
    },
    /// An append carried an epoch lower than the log's last epoch.
    #[error("epoch regression: the log is at epoch {last}, the append carries epoch {got}")]
    EpochRegression {
        /// The epoch of the newest frame in the log.
        last: Epoch,
        /// The epoch the append carried.
        got: Epoch,
    },
    /// A frame handed in for verbatim append does not continue the log.
    #[error("frame does not continue the log: expected CommitId {expected}, got {got}")]
    NotContiguous {
        /// The CommitId the log expects next.
        expected: CommitId,
        /// The CommitId of the frame offered.
        got: CommitId,
    },
    /// The options are invalid.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// The handle was closed.
    #[error("the log has been closed")]
    Closed,
    /// The log was opened read-only.
    #[error("the log was opened read-only")]
    ReadOnly,
}

/// Why a log handle failed closed.
#[derive(Debug)]
pub struct Failure {
    /// The operation that failed (`write`, `fdatasync`, `create segment`, …).
    pub op: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The OS error kind.
    pub kind: io::ErrorKind,
    /// The OS error number when there is one (EIO = 5, ENOSPC = 28).
    pub raw_os_error: Option<i32>,
    /// The full message.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed on {}: {}",
            self.op,
            self.path.display(),
            self.message
        )
    }
}

impl Failure {
    pub(crate) fn new(op: &'static str, path: PathBuf, err: &io::Error) -> Self {
        Self {
            op,
            path,
            kind: err.kind(),
            raw_os_error: err.raw_os_error(),
            message: err.to_string(),
        }
    }
}

/// Where and what: a corruption report precise enough for an operator to find the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corruption in segment {segment} at offset {offset} (CommitId {commit_id:?}): {kind}")]
pub struct Corruption {
    /// The segment file's id.
    pub segment: SegmentId,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// The CommitId involved when known (the frame's own, or the one expected at that position).
    pub commit_id: Option<CommitId>,
    /// What is wrong.
    pub kind: CorruptionKind,
}

/// The kinds of corruption the WAL detects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The bytes at a frame position are not a frame header (and are not the zero fill after the log end).
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// The frame header's CRC does not match.
    #[error("frame header checksum mismatch: stored {expected:#010x}, computed {got:#010x}")]
    HeaderChecksum {
        /// The stored CRC.
        expected: u32,
        /// The CRC computed over the bytes read.
        got: u32,
    },
    /// The frame body's CRC does not match.
    #[error("frame body checksum mismatch: stored {expected:#010x}, computed {got:#010x}")]
    BodyChecksum {
        /// The stored CRC.
        expected: u32,
        /// The CRC computed over the bytes read.
        got: u32,
    },
    /// A length field is outside its bounds.
    #[error("frame length {len} out of bounds (max {max})")]
    LengthOutOfBounds {
        /// The length read.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The frame ends beyond the end of the segment data.
    #[error("frame of {len} bytes runs past the segment end at {end}")]
    FrameOverrun {
        /// Total frame length.
        len: u64,
        /// The end of the usable segment area.
        end: u64,
    },
    /// CommitIds are not consecutive.
    #[error("CommitId gap: expected {expected}, found {got}")]
    CommitIdGap {
        /// The CommitId that should be at this position.
        expected: CommitId,
        /// The CommitId found.
        got: CommitId,
    },
    /// A frame's epoch is lower than the frame before it.
    #[error("epoch regression: previous frame has epoch {prev}, this one {got}")]
    EpochRegression {
        /// The previous frame's epoch.
        prev: Epoch,
        /// This frame's epoch.
        got: Epoch,
    },
    /// The segment header is invalid.
    #[error("invalid segment header: {0}")]
    SegmentHeader(&'static str),
    /// The segment header names a different id than its file name.
    #[error("segment header says id {in_header}, file name says {in_name}")]
    SegmentIdMismatch {
        /// Id in the header.
        in_header: SegmentId,
        /// Id in the file name.
        in_name: SegmentId,
    },
    /// A segment that is not the last one has no valid footer.
    #[error("sealed segment has no valid footer")]
    MissingFooter,
    /// The sealed footer is invalid or disagrees with the frames.
    #[error("segment footer invalid: {0}")]
    Footer(&'static str),
    /// The SHA-256 in the footer does not match the segment bytes.
    #[error("segment digest mismatch")]
    SegmentDigest,
    /// A segment file between two others is missing.
    #[error("segment file missing (expected id {expected})")]
    SegmentMissing {
        /// The id that should exist.
        expected: SegmentId,
    },
    /// An invalid frame is followed by a valid later frame: this is not a torn tail.
    #[error("invalid frame followed by a valid frame at offset {later_offset}")]
    ValidFrameAfterBadFrame {
        /// Where the valid later frame starts.
        later_offset: u64,
    },
    /// Truncating the torn tail would remove records the caller declared durable.
    #[error("torn tail would remove CommitIds up to {durable} that are known durable")]
    TailBelowDurableMark {
        /// The durable mark given to recovery.
        durable: CommitId,
    },
    /// Unexpected bytes after a sealed segment's footer.
    #[error("trailing bytes after the footer")]
    TrailingBytes,
    /// An unsealed segment is shorter than the capacity it was preallocated to. Segments are zero-filled and
    /// synced to their full capacity before their first frame, so no crash shortens one: the file was cut, and
    /// acknowledged records may have been in the part that is gone.
    #[error(
        "the segment file is {len} bytes but was preallocated to {capacity}: it was shortened, not torn, and \
         acknowledged records may be lost"
    )]
    SegmentShortened {
        /// The file's length.
        len: u64,
        /// Its capacity (from its header).
        capacity: u64,
    },
    /// The last segment is sealed by a roll (its footer says the next segment was durable before the seal), but
    /// there is no next segment: the active segment was removed, with whatever acknowledged records it held.
    #[error(
        "the last segment was sealed after segment {missing} was created, but segment {missing} is missing"
    )]
    ActiveSegmentMissing {
        /// The segment that should follow.
        missing: SegmentId,
    },
    /// A segment whose seal was interrupted by a crash is followed by one that holds no frame; a roll never
    /// leaves that state (the next segment is created with its first frames).
    #[error("an unsealed segment is followed by an empty one")]
    EmptySuccessor,
}

impl Corruption {
    pub(crate) fn new(
        segment: SegmentId,
        offset: u64,
        commit_id: Option<CommitId>,
        kind: CorruptionKind,
    ) -> Self {
        Self {
            segment,
            offset,
            commit_id,
            kind,
        }
    }
}

impl From<Corruption> for Error {
    fn from(c: Corruption) -> Self {
        Error::Corruption(Box::new(c))
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The corruption report, if this is a corruption error.
    #[must_use]
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            Error::Corruption(c) => Some(c),
            _ => None,
        }
    }

    /// True when this error means the node must halt (data on disk contradicts the format or the handle failed).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Corruption(_) | Error::FailedClosed(_))
    }
}
