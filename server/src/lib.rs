//! `aerodb-server`: the `aerodb-server` binary (primary/replica) and the `aerodb` CLI.
//!
//! Intentionally empty until the server issue lands; see `docs/architecture.md` for the planned layer.
#![forbid(unsafe_code)]
