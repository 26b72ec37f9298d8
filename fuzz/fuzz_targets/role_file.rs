#![no_main]
//! Fuzz target: `aerodb_replication::fuzz_role_file` (the persisted role state).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aerodb_replication::fuzz_role_file(data));
