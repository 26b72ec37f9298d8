//! The crate's one error type.

use crate::role::Refusal;

/// Errors of `aerodb-replication`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local database failed.
    #[error("the local log: {0}")]
    Engine(#[from] aerodb_engine::Error),
    /// The role file could not be read or written, or is damaged (authority is never inferred from a bad file).
    #[error("role file {path}: {what}")]
    RoleFile {
        /// Its path.
        path: String,
        /// What went wrong.
        what: String,
    },
    /// The role machine refused a command.
    #[error("the role change is refused: {0}")]
    Refused(#[from] Refusal),
    /// The configured role cannot start from the recorded one.
    #[error("{0}")]
    Bootstrap(String),
}
