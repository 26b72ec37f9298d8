#![no_main]
//! Fuzz target: `aerodb_wal::fuzzing::frame_decoder`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aerodb_wal::fuzzing::frame_decoder(data));
