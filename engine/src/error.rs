//! The engine's error type, classified by what the caller must do: reject the request (`InvalidInput`,
//! `OutOfRange`), retry elsewhere (`NotWritable`), or halt (`Corruption`, `Integrity`, a fatal WAL error).

use std::path::PathBuf;

use aerodb_wal::CommitId;

use crate::{checkpoint::CheckpointError, record::RecordError, store::StoreError};

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the engine refuses writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotWritable {
    /// This node does not hold write authority (opened read-only, or a replica).
    #[error("this node is not the write authority (read-only)")]
    NotWriteAuthority,
    /// The WAL failed a write or fsync; nothing more is accepted until the database is reopened.
    #[error("the log failed closed: {0}")]
    LogFailed(String),
    /// The node is halted (a failed integrity check was overridden, or replication halted it).
    #[error("the node is halted: {0}")]
    Halted(String),
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The write-ahead log reported an error.
    #[error(transparent)]
    Wal(#[from] aerodb_wal::Error),
    /// The request is invalid (bad key, tenant, batch, or too large); nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] RecordError),
    /// A CommitId or tree size outside what the log holds.
    #[error("{what} {value} is out of range (the log holds {size} records)")]
    OutOfRange {
        /// What was asked for.
        what: &'static str,
        /// The value given.
        value: u64,
        /// Records in the log.
        size: u64,
    },
    /// Writes are refused, and why.
    #[error("not writable: {0}")]
    NotWritable(#[from] NotWritable),
    /// The records contradict their hashes or encoding.
    #[error("corruption at CommitId {commit_id}: {what}")]
    Corruption {
        /// The record involved.
        commit_id: u64,
        /// What is wrong.
        what: String,
    },
    /// Files derived from the log (the Merkle store, the index) hold records the log does not: the log lost
    /// records it had made durable and applied. Nothing is repaired or discarded; the node does not open.
    #[error(
        "{derived} covers {derived_records} records but the log holds {log_records}: the log lost records it had \
         acknowledged (nothing was changed; restore the log, or rebuild this node from a replica)"
    )]
    LogBehindDerived {
        /// Which derived file.
        derived: &'static str,
        /// How many records it covers.
        derived_records: u64,
        /// How many the log holds.
        log_records: u64,
    },
    /// The database is not open: an in-place recovery could not open it again (the reason says why). A restart
    /// runs the startup check and names the problem.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// [`crate::Db::recover_in_place`] did not run: the database has not failed closed, or is still in use.
    #[error("in-place recovery refused: {0}")]
    RecoveryRefused(String),
    /// The startup integrity check failed (E-6); the report says what.
    #[error("startup integrity check failed: {0}")]
    Integrity(String),
    /// A checkpoint or key error.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The Merkle store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File I/O outside the WAL failed.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The records were written to the log, but the write or the step after it failed, so whether they are
    /// durable (and will be there after a restart) is not known. Not a plain failure: a client must look the
    /// CommitIds up (comparing the record hash) before writing again. The database fails closed.
    #[error(
        "records {first}..={last} were written to the log but {reason}: they may be durable; look them up before \
         writing again"
    )]
    OutcomeUnknown {
        /// The first CommitId the records were given.
        first: CommitId,
        /// The last.
        last: CommitId,
        /// What failed.
        reason: String,
    },
    /// The database was opened with invalid options.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
}

impl Error {
    /// True when the node must stop serving (corruption, failed integrity, a failed log).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Wal(e) => e.is_fatal(),
            Error::Corruption { .. }
            | Error::Integrity(_)
            | Error::Store(_)
            | Error::LogBehindDerived { .. } => true,
            _ => false,
        }
    }
}
