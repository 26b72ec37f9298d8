//! `aerodb-wal`: AeroDB's append-only write-ahead log.
//!
//! The log is a directory of segment files. Each segment starts with a header, holds frames
//! (`header + body`, each with its own CRC32s, epoch and CommitId) and, once full, ends with a sealed footer that
//! carries the SHA-256 of the segment. The byte layout is specified in `docs/formats.md`.
//!
//! - **Durability**: in the default [`Durability::Always`] mode an append returns only after its bytes are
//!   `fdatasync`ed; concurrent appenders share one `fdatasync` (group commit).
//! - **Recovery**: only the active segment may end in a torn tail, which is zeroed and reported in the
//!   [`RecoveryReport`]. Anything else that does not decode is a typed [`Corruption`] error.
//! - **Fail-closed**: after a failed write or fsync the handle refuses every further append
//!   ([`Error::FailedClosed`]); the only way forward is to reopen, which re-runs recovery.
//! - **Readers** ([`Wal::read_from`]) iterate verified frames from any CommitId while appends continue.
//! - **One owner**: a lock file in the directory keeps a second process (or handle) out ([`Error::Locked`]).
//! - **Testing seam**: all I/O goes through [`fs::Fs`]; [`fs::MemFs`] and [`fs::FaultFs`] simulate power loss,
//!   torn writes, EIO, ENOSPC and short writes.
//!
//! ```
//! use std::sync::Arc;
//! use aerodb_wal::{fs::MemFs, CommitId, Epoch, Options, Wal};
//!
//! let fs = Arc::new(MemFs::new());
//! let opts = Options { segment_bytes: 64 << 10, max_record_bytes: 1024, ..Options::default() };
//! let wal = Wal::open(fs.clone(), "/data/wal", opts.clone()).unwrap();
//! assert_eq!(wal.append(Epoch(1), b"hello").unwrap(), CommitId(1));
//! assert_eq!(wal.append_batch(Epoch(1), &[b"a", b"b"]).unwrap(), (CommitId(2), CommitId(3)));
//! let bodies: Vec<_> = wal.read_from(CommitId(2)).unwrap().map(|f| f.unwrap().body()).collect();
//! assert_eq!(bodies, [&b"a"[..], &b"b"[..]]);
//! ```
#![deny(missing_docs)]

mod error;
pub mod format;
pub mod fs;
pub mod fuzzing;
mod mmap;
mod reader;
pub mod recovery;
mod types;
mod wal;

pub use error::{Corruption, CorruptionKind, Error, Failure, Result};
pub use reader::{Frame, FrameRef, WalReader};
pub use recovery::RecoveryVisitor;
pub use types::{CommitId, Epoch, SegmentId};
pub use wal::truncate_after;
pub use wal::{
    segment_file_name, Durability, FrameSink, Options, Queued, RecoveryReport, Wal, WalStats, LOCK_FILE_NAME,
};
