//! `aerodb-engine`: hash-chained records on the AeroDB WAL, with a Merkle index, signed checkpoints, proofs and
//! key/value state with history.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod merkle;
pub mod checkpoint;
pub mod record;
pub mod store;
