#![no_main]
//! Fuzz target: `aerodb_wal::fuzzing::recover_bytes`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aerodb_wal::fuzzing::recover_bytes(data));
