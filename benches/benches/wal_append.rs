//! `wal_append`: durable (`always`) appends of 256 B and 4 KiB records from 1, 4, 16 and 64 concurrent appenders,
//! reported as records/s; beside it `raw_fsync`, the machine's ceiling: the same records written with one
//! `fdatasync` each into a preallocated, zero-filled, synced file.
//!
//! Run: `cargo bench -p aerodb-benches --bench wal_append`

use std::{sync::Arc, time::Duration};

use aerodb_benches::{bench_dir, run_ceiling, run_wal, RawCeiling};
use aerodb_wal::{fs::RealFs, Epoch, Options, Wal};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 2] = [256, 4096];
const APPENDERS: [usize; 4] = [1, 4, 16, 64];

fn raw_fsync(c: &mut Criterion) {
    let dir = bench_dir("raw-fsync");
    let mut g = c.benchmark_group("raw_fsync");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for size in SIZES {
        let mut raw =
            RawCeiling::create(&dir.join(format!("ceiling-{size}")), 256 << 20).expect("preallocate");
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("records", size), |b| {
            b.iter_custom(|iters| run_ceiling(&mut raw, iters, size).expect("ceiling run").elapsed);
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn wal_append(c: &mut Criterion) {
    let dir = bench_dir("wal-append");
    let mut g = c.benchmark_group("wal_append");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for size in SIZES {
        for appenders in APPENDERS {
            let wal_dir = dir.join(format!("{size}-{appenders}"));
            let wal = Arc::new(Wal::open(Arc::new(RealFs), &wal_dir, Options::default()).expect("open WAL"));
            wal.append(Epoch(1), b"warm-up").expect("append");
            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::new(format!("{size}B"), appenders), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(appenders as u64).max(1);
                    let run = run_wal(&wal, appenders, per_thread, size);
                    // Report time per record for exactly `iters` records.
                    run.elapsed.mul_f64(iters as f64 / run.ops as f64)
                });
            });
            drop(wal);
            let _ = std::fs::remove_dir_all(&wal_dir);
        }
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

// A private module: criterion_group! generates an undocumented public function.
mod group {
    use super::*;
    criterion_group!(benches, raw_fsync, wal_append);
}
use group::benches;
criterion_main!(benches);
