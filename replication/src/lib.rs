//! `aerodb-replication`: the replication protocol of seed 004 as a pure core ([`core`]: the role machine and its
//! bootstrap rule, the primary's per-replica send state, the follower's handshake and epoch rules, the
//! synchronous quorum, term proofs), the replica's check of every received frame ([`replay`], [`apply`]) and the
//! persisted role ([`state_file`]). The server's edge drives the core over gRPC; the simulator drives the same core.
#![forbid(unsafe_code)]

pub mod apply;
pub mod core;
mod error;
pub mod replay;
pub mod state_file;

pub use crate::core::role;
pub use error::Error;

/// Fuzz entry point for the replica's frame check: the first 48 bytes are a tip (CommitId u64, record hash, epoch
/// u64, little-endian), the rest a frame as received. Never panics; an accepted frame advances the tip by one.
pub fn fuzz_replay_frame(data: &[u8]) {
    if data.len() < 48 {
        return;
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&data[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&data[8..40]);
    let mut e = [0u8; 8];
    e.copy_from_slice(&data[40..48]);
    let tip = replay::Tip {
        commit_id: aerodb_wal::CommitId(u64::from_le_bytes(c)),
        record_hash: hash,
        epoch: aerodb_wal::Epoch(u64::from_le_bytes(e)),
    };
    if let Ok(replay::Verdict::Append(t)) = replay::check_frame(&tip, &data[48..], 1 << 20) {
        assert_eq!(t.commit_id, tip.commit_id.next());
        assert!(t.epoch >= tip.epoch);
    }
}

/// Fuzz entry point: role-file decoding never panics, and what decodes re-encodes to the same bytes.
pub fn fuzz_role_file(data: &[u8]) {
    if let Ok(m) = state_file::decode(data) {
        assert_eq!(state_file::encode(&m), data, "role file round trip");
    }
}
