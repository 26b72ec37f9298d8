//! `engine_cpu`: the CPU cost of the engine's hot paths with the disk taken out (issue 21), so that a regression
//! in CPU per record shows up here even on a machine whose `fdatasync` hides it.
//!
//! - `engine_cpu_append/append_many_64`: one appender, `append_many` of 64 records (256 B values, distinct keys)
//!   with durability `None` (every record still encoded, hashed, chained, written to the log, put in the Merkle
//!   tree and indexed; only the `fdatasync` is skipped). Throughput is per record.
//! - `engine_cpu_append/append_1`: the same for single appends.
//! - `engine_cpu_read/{get,get_at,scan_prefix}` on a directory of 200,000 records (50,000 keys, 8 tenants).
//!
//! Run: `cargo bench -p aerodb-benches --bench engine_cpu`.

use std::time::Duration;

use aerodb_benches::bench_dir;
use aerodb_engine::{Db, NewRecord, Op, Options, Payload};
use aerodb_wal::{CommitId, Durability};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

static VALUE: [u8; 256] = [0x5A; 256];
const READ_RECORDS: u64 = 200_000;
const READ_KEYS: u64 = 50_000;

fn put(key: u64) -> Payload {
    Payload::Batch(vec![Op::Put {
        key: Bytes::from(format!("key-{key:012}")),
        value: Bytes::from_static(&VALUE),
    }])
}

fn no_sync() -> Options {
    Options {
        wal: aerodb_wal::Options {
            durability: Durability::None,
            ..Default::default()
        },
        checkpoint_every_records: 100_000,
        ..Options::default()
    }
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn appends(c: &mut Criterion) {
    let dir = bench_dir("engine-cpu-append");
    let db = Db::open(&dir, no_sync()).expect("open");
    let mut key = 0u64;
    let mut g = c.benchmark_group("engine_cpu_append");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(64));
    g.bench_function("append_many_64", |b| {
        b.iter(|| {
            let batch: Vec<NewRecord> = (0..64)
                .map(|_| {
                    key += 1;
                    NewRecord {
                        tenant: "bench".into(),
                        payload: put(key),
                    }
                })
                .collect();
            db.append_many(&batch).expect("append_many")
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_1", |b| {
        b.iter(|| {
            key += 1;
            db.append("bench", put(key)).expect("append")
        })
    });
    g.finish();
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

fn reads(c: &mut Criterion) {
    let dir = bench_dir("engine-cpu-read");
    let db = Db::open(&dir, no_sync()).expect("open");
    let mut n = 0;
    while n < READ_RECORDS {
        let batch: Vec<NewRecord> = (n..n + 1000)
            .map(|i| NewRecord {
                tenant: format!("t{}", i % 8),
                payload: put(i % READ_KEYS),
            })
            .collect();
        n += 1000;
        db.append_many(&batch).expect("append");
    }
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    let mut g = c.benchmark_group("engine_cpu_read");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    // Key `x` belongs to tenant `x % 8` (50,000 is a multiple of 8).
    g.bench_function("get", |b| {
        b.iter(|| {
            let x = next(&mut seed) % READ_KEYS;
            db.get(&format!("t{}", x % 8), format!("key-{x:012}").as_bytes())
                .expect("get")
        })
    });
    g.bench_function("get_at", |b| {
        b.iter(|| {
            let x = next(&mut seed) % READ_KEYS;
            db.get_at(
                &format!("t{}", x % 8),
                format!("key-{x:012}").as_bytes(),
                CommitId(READ_RECORDS / 2),
            )
            .expect("get_at")
        })
    });
    // A prefix of 100 keys, of which 12 or 13 are in the tenant scanned.
    g.bench_function("scan_prefix", |b| {
        b.iter(|| {
            let x = next(&mut seed) % (READ_KEYS / 100);
            let t = (x * 100) % 8;
            db.scan_prefix(&format!("t{t}"), format!("key-{:010}", x).as_bytes(), 16)
                .expect("scan")
        })
    });
    g.finish();
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

// A private module: criterion_group! generates an undocumented public function.
mod group {
    use super::*;
    criterion_group!(benches, appends, reads);
}
use group::benches;
criterion_main!(benches);
