//! `aerodb-replication`: the role state machine, epochs and fencing, WAL shipping and deterministic replay.
//!
//! Intentionally empty until the replication issue lands; see `docs/architecture.md` for the planned layer.
#![forbid(unsafe_code)]
