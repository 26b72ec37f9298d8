//! `wal_replay`: reading a 256 MiB log back frame by frame with every CRC and CommitId checked (sealed segments
//! through `memmap2`), reported as bytes/s; and `wal_open`, the recovery scan of the same directory.
//!
//! Run: `cargo bench -p aerodb-benches --bench wal_replay`

use std::{sync::Arc, time::Duration};

use aerodb_benches::bench_dir;
use aerodb_wal::{fs::RealFs, CommitId, Durability, Epoch, Options, Wal};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LOG_BYTES: u64 = 256 << 20;

fn replay(c: &mut Criterion) {
    let dir = bench_dir("wal-replay");
    let frames = LOG_BYTES / (256 + 32);
    {
        let opts = Options {
            durability: Durability::None,
            ..Options::default()
        };
        let wal = Wal::open(Arc::new(RealFs), &dir, opts).expect("open");
        let body = [7u8; 256];
        let batch: Vec<&[u8]> = vec![&body[..]; 1000];
        for _ in 0..frames / 1000 {
            wal.append_batch(Epoch(1), &batch).expect("append");
        }
        wal.sync().expect("sync");
    }
    let wal = Wal::open(Arc::new(RealFs), &dir, Options::default()).expect("open");
    let bytes: u64 = wal
        .read_from(CommitId(1))
        .expect("reader")
        .map(|f| f.expect("frame").raw.len() as u64)
        .sum();
    let scanned = wal.recovery_report().bytes_scanned;
    let mut g = c.benchmark_group("wal_replay");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("read_all_frames_crc_checked", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for f in wal.read_from(CommitId(1)).expect("reader") {
                n += f.expect("frame").raw.len() as u64;
            }
            assert_eq!(n, bytes);
        });
    });
    drop(wal);
    g.throughput(Throughput::Bytes(scanned));
    g.bench_function("open_recovery_scan", |b| {
        b.iter(|| Wal::open(Arc::new(RealFs), &dir, Options::default()).expect("open"));
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

// A private module: criterion_group! generates an undocumented public function.
mod group {
    use super::*;
    criterion_group!(benches, replay);
}
use group::benches;
criterion_main!(benches);
