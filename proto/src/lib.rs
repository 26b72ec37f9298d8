//! `aerodb-proto`: protobuf definitions for the client API and the replication stream.
//!
//! Intentionally empty until the server issue lands; see `docs/architecture.md` for the planned layer.
#![forbid(unsafe_code)]
