//! Helpers shared by AeroDB's integration, crash and fault tests.

use std::{io::Write, path::Path};

use aerodb_wal::{Durability, Options};

/// A temporary directory, removed on drop (the one temporary-directory type of the tests; `tempfile` underneath).
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Creates a fresh directory under the system temp dir, its name starting with `aerodb-<tag>-`.
    ///
    /// # Panics
    /// If the directory cannot be created.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("aerodb-{tag}-"))
                .tempdir()
                .expect("create temp dir"),
        )
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Small segments so a few dozen records roll several times; deterministic I/O (no background thread).
#[must_use]
pub fn small_opts() -> Options {
    Options {
        segment_bytes: 4096,
        max_record_bytes: 1024,
        durability: Durability::Always,
        background_preallocation: false,
        // Four pieces per segment: every recovery in the tests scans in pieces and joins them (or falls back
        // to a whole scan), so the damage suites check that both find the same thing.
        recovery_piece_bytes: 1024,
        ..Options::default()
    }
}

/// A deterministic record body of 0..300 bytes for record number `i`.
#[must_use]
pub fn body(i: u64, seed: u64) -> Vec<u8> {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    let len = (splitmix64(&mut s) % 300) as usize;
    (0..len).map(|_| splitmix64(&mut s) as u8).collect()
}

/// splitmix64: a tiny deterministic generator for test data.
pub fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The WAL directory used on the memory file systems.
pub const MEM_DIR: &str = "/db/wal";

/// Prints a reliability figure and appends it to `target/aerodb-figures.txt`, which `.ci/run` prints at the end.
pub fn report_figure(test: &str, figure: &str) {
    let line = format!("{test}: {figure}");
    println!("{line}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/aerodb-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Engine options for tests: small segments, a fixed signing key, no background checkpoints.
#[must_use]
pub fn engine_opts() -> aerodb_engine::Options {
    aerodb_engine::Options {
        signing_key: Some(aerodb_engine::SigningKey::from_seed("aerodb-ledger", [5u8; 32]).expect("key")),
        checkpoint_every_records: 0,
        checkpoint_interval: None,
        wal: Options {
            segment_bytes: 16 << 10,
            max_record_bytes: 4096,
            ..small_opts()
        },
        ..aerodb_engine::Options::default()
    }
}
