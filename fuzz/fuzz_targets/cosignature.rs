#![no_main]
//! Fuzz target: `aerodb_engine::fuzzing::cosignature`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aerodb_engine::fuzzing::cosignature(data));
