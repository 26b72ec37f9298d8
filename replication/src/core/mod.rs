//! The replication protocol as a pure core: messages and the time (`now`, a [`Duration`](std::time::Duration)
//! since an origin the edge chose) go in, decisions come out. Nothing in here reads a clock, opens a file or a
//! socket, or spawns a task (`.ci/run` checks the imports); the server's edge (`aerodb-server`'s
//! `replication` module) and the simulator (`tests/tests/replication_sim.rs`) drive the same code.
//!
//! - [`role`]: the seed-004 role machine; [`bootstrap`]: the role a node starts in.
//! - [`authority`]: a claim of a newer term counts only with a term proof.
//! - [`primary`]: accepting a replica's hello; what to send it next; its lag.
//! - [`follower`]: the replica's handshake, epoch and fork rules, acks, silence.
//! - [`quorum`]: synchronous commits — admission before the append, confirmation after it.

pub mod authority;
pub mod bootstrap;
pub mod follower;
pub mod primary;
pub mod quorum;
pub mod role;
