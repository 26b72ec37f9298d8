#![no_main]
//! Fuzz target: `aerodb_wal::fuzzing::segment_header_footer`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aerodb_wal::fuzzing::segment_header_footer(data));
