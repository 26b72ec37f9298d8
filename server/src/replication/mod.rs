//! Replication in the server (R-3..R-6): the edge around `aerodb_replication::core`. Every decision — accept a
//! hello, what to send a replica next, the replica's handshake/epoch/fork rules, synchronous admission and
//! confirmation — is the core's; this module moves bytes over gRPC, reads the log and the one clock, and carries
//! the decisions out.
//!
//! - [`registry`]: the primary's connected replicas and the synchronous quorum (it does not know the node).
//! - [`primary`]: the `aerodb.v1.Replication` service.
//! - [`mod@follow`]: the replica's stream to its primary.

pub mod follow;
pub mod primary;
pub mod registry;

pub use follow::follow;
pub use primary::{PrimaryStream, ReplicationService};
pub use registry::{FollowerStatus, ReplicaLag, Replicas, SyncDone, Unconfirmed};

/// Runs blocking work (a durable append: a write and an `fdatasync`) for a stream's task. On a multi-threaded
/// runtime it runs in place (`block_in_place`: the worker's other tasks move to another thread), which saves the
/// two thread hops of the blocking pool on every received batch — on the synchronous-commit path, that is
/// latency every acknowledged write waits for. A current-thread runtime cannot block in place; there it goes to
/// the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if crate::node::can_block_in_place() {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await
    }
}
