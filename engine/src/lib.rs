//! `aerodb-engine`: hash-chained records on the AeroDB WAL, with a Merkle index, signed checkpoints, proofs and
//! key/value state with history. [`Db`] is the API an application links.
//!
//! ```
//! use aerodb_engine::{merkle, record, Db, Options};
//!
//! let db = Db::open_in_memory(Options::default()).unwrap();
//! let receipt = db.put("acme", &b"invoice/42"[..], &b"paid"[..]).unwrap();
//! // Each tenant has its own keys: acme's invoice/42 is not globex's.
//! assert_eq!(db.get("acme", b"invoice/42").unwrap().as_deref(), Some(&b"paid"[..]));
//! assert_eq!(db.get("globex", b"invoice/42").unwrap(), None);
//!
//! // Prove the write against a signed checkpoint, as a client would.
//! let cp = db.checkpoint_now().unwrap();
//! let proof = db.inclusion_proof(receipt.commit_id, cp.checkpoint.size).unwrap();
//! let record = db.record(receipt.commit_id).unwrap().unwrap();
//! let leaf = record::merkle_leaf(&record.canonical);
//! assert!(merkle::verify_inclusion(&leaf, proof.leaf_index, proof.tree_size, &proof.hashes, &cp.checkpoint.root));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod backup;
pub mod checkpoint;
mod db;
mod error;
pub mod fuzzing;
pub mod index;
pub mod merkle;
pub mod record;
pub mod store;
pub mod verify;
pub mod witness;

pub use checkpoint::{Checkpoint, KeyType, SignedCheckpoint, SigningKey, TreeHead, VerifierKey};
pub use db::{
    truncate_after, Db, InclusionProof, NewRecord, OpenReport, OpenRole, Options, Receipt, StoredRecord, Tip,
    Version, KEY_FILE,
};
pub use error::{Error, NotWritable, Result};
pub use record::{Op, Payload, Record};
pub use verify::{verify_dir, verify_dir_with_fs, Problem, VerifyOptions, VerifyReport};
