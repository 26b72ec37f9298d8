//! `aerodb-replication`: the role state machine of seed 004 and its persisted form. WAL shipping, replay
//! and the halting checks build on it (the replication issue).
#![forbid(unsafe_code)]

pub mod role;
pub mod state_file;

/// Fuzz entry point: role-file decoding never panics, and what decodes re-encodes to the same bytes.
pub fn fuzz_role_file(data: &[u8]) {
    if let Ok(m) = state_file::decode(data) {
        assert_eq!(state_file::encode(&m), data, "role file round trip");
    }
}
