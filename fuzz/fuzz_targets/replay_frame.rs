#![no_main]
//! Fuzz target: `aerodb_replication::fuzz_replay_frame` (a replica's check of a received frame).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aerodb_replication::fuzz_replay_frame(data));
