//! `aerodb-engine`: the record model, hash chain, Merkle index, checkpoints and the `Db` API.
//!
//! This crate is intentionally empty until the engine issue lands: it exists so the workspace has its final layout
//! (`wal` ← `engine` ← `replication` ← `server`). It exposes no API, so nothing can depend on behaviour that does not
//! exist yet.
#![forbid(unsafe_code)]
