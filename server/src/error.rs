//! One error type for both APIs: a stable code, an HTTP status, a gRPC status, and a message that says what was
//! wrong. Every bad input maps to a precise 4xx / non-INTERNAL gRPC code; only genuine server faults are 500.

use aerodb_engine::{record::RecordError, Error as EngineError, NotWritable};
use aerodb_wal::CommitId;

/// Stable machine-readable error codes (the `error.code` field of REST responses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// The request is malformed or a value is invalid.
    InvalidArgument,
    /// A number is outside what the log holds (CommitId, tree size).
    OutOfRange,
    /// The record, key or route does not exist.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The body or message is larger than the configured limit.
    PayloadTooLarge,
    /// The content type is not JSON.
    UnsupportedMediaType,
    /// The request target (path and query) is longer than the server reads (414).
    UriTooLong,
    /// The request's headers are more or larger than the server reads (431).
    HeadersTooLarge,
    /// No or an unknown bearer token.
    Unauthenticated,
    /// The token's role may not do this.
    PermissionDenied,
    /// This node does not accept writes; another node is (or may be) the leader.
    NotLeader,
    /// The log failed an fsync or write and refuses writes until it is opened again (by the node itself once the
    /// disk has room, or by a restart).
    LogFailed,
    /// The node is halted.
    Halted,
    /// Synchronous replication: too few replicas are connected, so the write was refused **before** it was
    /// appended — nothing of it is in the log; retrying is safe.
    SyncReplicasUnavailable,
    /// The write was appended and is durable on this node, but whether it is durable where it had to be (on
    /// `k` replicas in synchronous mode) is not known: the answer carries its CommitId(s) so the client can look it
    /// up instead of retrying blindly (a retry would write it twice).
    OutcomeUnknown,
    /// Too many requests in flight.
    ResourceExhausted,
    /// The request did not finish within the configured timeout.
    DeadlineExceeded,
    /// The node is shutting down or cannot serve.
    Unavailable,
    /// A fault inside the server (corruption, I/O) — never caused by input.
    Internal,
}

impl Code {
    /// The name used on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::NotFound => "NOT_FOUND",
            Code::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Code::UriTooLong => "URI_TOO_LONG",
            Code::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::NotLeader => "NOT_LEADER",
            Code::LogFailed => "LOG_FAILED",
            Code::Halted => "HALTED",
            Code::SyncReplicasUnavailable => "SYNC_REPLICAS_UNAVAILABLE",
            Code::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
        }
    }

    /// The HTTP status.
    #[must_use]
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument | Code::OutOfRange => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::MethodNotAllowed => 405,
            Code::PayloadTooLarge => 413,
            Code::UnsupportedMediaType => 415,
            Code::UriTooLong => 414,
            Code::HeadersTooLarge => 431,
            Code::ResourceExhausted => 429,
            Code::Internal => 500,
            Code::NotLeader
            | Code::LogFailed
            | Code::Halted
            | Code::Unavailable
            | Code::SyncReplicasUnavailable
            | Code::OutcomeUnknown => 503,
            Code::DeadlineExceeded => 504,
        }
    }

    /// The gRPC status code.
    #[must_use]
    pub fn grpc(self) -> tonic::Code {
        match self {
            Code::InvalidArgument
            | Code::UnsupportedMediaType
            | Code::MethodNotAllowed
            | Code::UriTooLong
            | Code::HeadersTooLarge => tonic::Code::InvalidArgument,
            Code::OutOfRange => tonic::Code::OutOfRange,
            Code::NotFound => tonic::Code::NotFound,
            Code::PayloadTooLarge | Code::ResourceExhausted => tonic::Code::ResourceExhausted,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
            Code::PermissionDenied => tonic::Code::PermissionDenied,
            Code::NotLeader | Code::LogFailed | Code::Halted => tonic::Code::FailedPrecondition,
            Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Code::Unavailable | Code::SyncReplicasUnavailable => tonic::Code::Unavailable,
            Code::Internal => tonic::Code::Internal,
            // Not UNAVAILABLE: clients retry that on their own, and a retry of a write that may be durable writes
            // it twice.
            Code::OutcomeUnknown => tonic::Code::Unknown,
        }
    }
}

/// The gRPC metadata key of a `NOT_LEADER` status that names the leader's gRPC URL (what a client reconnects to).
pub const LEADER_GRPC_URL: &str = "aerodb-leader-grpc-url";

/// An API error: code, message, and for `NOT_LEADER` the leader's URL when known.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The code.
    pub code: Code,
    /// What was wrong, for a person.
    pub message: String,
    /// Where writes go instead (with `NOT_LEADER`).
    pub leader_url: Option<String>,
    /// The leader's gRPC URL (with `NOT_LEADER`; gRPC metadata `aerodb-leader-grpc-url`).
    pub leader_grpc_url: Option<String>,
    /// With `OUTCOME_UNKNOWN`: the first and last CommitId the write was given.
    pub commit_ids: Option<(CommitId, CommitId)>,
    /// With `RESOURCE_EXHAUSTED` from admission: when to try again (REST `Retry-After`, JSON `retry_after_ms`,
    /// gRPC metadata `retry-after-ms`).
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            leader_url: None,
            leader_grpc_url: None,
            commit_ids: None,
            retry_after_ms: None,
        }
    }

    /// `RESOURCE_EXHAUSTED` with a retry hint: refused at admission, nothing written.
    pub fn overloaded(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self {
            retry_after_ms: Some(retry_after_ms),
            ..Self::new(Code::ResourceExhausted, message)
        }
    }

    /// `OUTCOME_UNKNOWN` for a write given CommitIds `first..=last`; `why` completes "record N …" (what is and
    /// is not known).
    pub fn outcome_unknown(first: CommitId, last: CommitId, why: impl std::fmt::Display) -> Self {
        let what = if first == last {
            format!("record {first}")
        } else {
            format!("records {first}..={last}")
        };
        Self {
            commit_ids: Some((first, last)),
            ..Self::new(
                Code::OutcomeUnknown,
                format!("{what} {why}; look it up before writing it again"),
            )
        }
    }

    /// `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The REST body: `{"error": {"code", "message", …}}` ([`crate::openapi::ErrorOut`]).
    #[must_use]
    pub fn to_body(&self) -> crate::openapi::ErrorOut {
        crate::openapi::ErrorOut {
            error: crate::openapi::ErrorBody {
                code: self.code,
                message: self.message.clone(),
                leader_url: self.leader_url.clone(),
                commit_id: self.commit_ids.map(|(first, _)| first.0),
                last_commit_id: self.commit_ids.map(|(_, last)| last.0),
                retry_after_ms: self.retry_after_ms,
            },
        }
    }

    /// The gRPC status (the code name leads the message, so clients can tell `NOT_LEADER` from `LOG_FAILED`).
    #[must_use]
    pub fn to_status(&self) -> tonic::Status {
        let mut msg = format!("{}: {}", self.code.as_str(), self.message);
        if let Some(u) = &self.leader_url {
            msg.push_str(&format!(" (leader_url: {u})"));
        }
        let mut status = tonic::Status::new(self.code.grpc(), msg);
        if let Some((first, last)) = self.commit_ids {
            let md = status.metadata_mut();
            md.insert("aerodb-commit-id", first.0.into());
            md.insert("aerodb-last-commit-id", last.0.into());
        }
        if let Some(ms) = self.retry_after_ms {
            status.metadata_mut().insert("retry-after-ms", ms.into());
        }
        if let Some(v) = self.leader_grpc_url.as_deref().and_then(|u| u.parse().ok()) {
            status.metadata_mut().insert(LEADER_GRPC_URL, v);
        }
        status
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::InvalidInput(RecordError::TooLarge { .. }) => {
                Self::new(Code::PayloadTooLarge, e.to_string())
            }
            EngineError::InvalidInput(_) => Self::invalid(e.to_string()),
            EngineError::OutOfRange { .. } => Self::new(Code::OutOfRange, e.to_string()),
            EngineError::OutcomeUnknown { first, last, reason } => Self::outcome_unknown(
                *first,
                *last,
                format_args!(
                    "was written to the log but the write did not complete ({reason}), so it may be durable"
                ),
            ),
            EngineError::NotWritable(NotWritable::NotWriteAuthority) => Self::new(
                Code::NotLeader,
                "this node does not accept writes (it is not the write authority)",
            ),
            EngineError::NotWritable(NotWritable::LogFailed(_)) => Self::new(Code::LogFailed, e.to_string()),
            EngineError::NotWritable(NotWritable::Halted(_)) => Self::new(Code::Halted, e.to_string()),
            EngineError::Unavailable(_) => Self::new(Code::Unavailable, e.to_string()),
            EngineError::Wal(aerodb_wal::Error::FailedClosed(_)) => Self::new(Code::LogFailed, e.to_string()),
            EngineError::Wal(aerodb_wal::Error::RecordTooLarge { .. }) => {
                Self::new(Code::PayloadTooLarge, e.to_string())
            }
            _ => Self::new(Code::Internal, e.to_string()),
        }
    }
}

/// Results of API operations.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Errors of `aerodb-server` outside request handling: configuration, start-up, serving and shutdown. (Request
/// errors are [`ApiError`]s, answered to the client.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid: a flag, a value, or a combination. Fix the configuration and start again.
    #[error("{0}")]
    Config(String),
    /// A file the server reads at start (configuration, tokens, TLS certificate or key) is missing or invalid.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// An operating-system call failed (creating the data directory, binding a listener).
    #[error("{what}: {source}")]
    Io {
        /// What the server was doing.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The database refused to open, sign or close.
    #[error("{what}: {source}")]
    Engine {
        /// What the server was doing.
        what: String,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// The role file or the role machine (a configured role the recorded one refuses, a damaged role file).
    #[error(transparent)]
    Replication(#[from] aerodb_replication::Error),
    /// The writer fence refused this node or could not be read or written.
    #[error("refusing to start as primary: {0}")]
    Fence(#[from] crate::fence::FenceError),
    /// A peer (the primary a replica follows) could not be reached or refused the connection's settings.
    #[error("{0}")]
    Peer(String),
    /// The server task did not start listening in time, or ended abnormally.
    #[error("{0}")]
    Task(String),
}

impl Error {
    /// An invalid configuration.
    pub fn config(what: impl Into<String>) -> Self {
        Error::Config(what.into())
    }

    /// A bad file.
    pub fn file(path: &std::path::Path, what: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.to_path_buf(),
            what: what.to_string(),
        }
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// An engine failure while doing `what`.
    pub fn engine(what: impl Into<String>, source: EngineError) -> Self {
        Error::Engine {
            what: what.into(),
            source,
        }
    }
}

/// The result of the server's start-up and serving functions.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::Code;

    /// The JSON name of every code (what the OpenAPI enum lists) is the name the server sends.
    #[test]
    fn serde_names_are_the_wire_names() {
        for c in [
            Code::InvalidArgument,
            Code::OutOfRange,
            Code::NotFound,
            Code::MethodNotAllowed,
            Code::PayloadTooLarge,
            Code::UnsupportedMediaType,
            Code::UriTooLong,
            Code::HeadersTooLarge,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotLeader,
            Code::LogFailed,
            Code::Halted,
            Code::SyncReplicasUnavailable,
            Code::OutcomeUnknown,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Unavailable,
            Code::Internal,
        ] {
            assert_eq!(
                serde_json::to_value(c).ok(),
                Some(serde_json::Value::from(c.as_str()))
            );
        }
    }
}
