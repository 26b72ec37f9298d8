//! `engine`: the engine's criterion benches (issue 3): durable appends of 256 B values at 1, 16 and 64 appenders;
//! on a directory of 1M records: `get`, `get_at`, inclusion and consistency proof generation and verification,
//! and reopening the directory (WAL recovery, hash-chain verification, index rebuild).
//!
//! Run: `cargo bench -p aerodb-benches --bench engine` (builds a 1M-record directory first, ≈ 5 s).

use aerodb_wal::CommitId;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aerodb_benches::{bench_dir, run_threads};
use aerodb_engine::{merkle, Db, NewRecord, Op, Options, Payload};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const RECORDS: u64 = 1_000_000;
static VALUE: [u8; 256] = [0x5A; 256];

fn payload(key: u64) -> Payload {
    Payload::Batch(vec![Op::Put {
        key: Bytes::from(format!("key-{key:012}")),
        value: Bytes::from_static(&VALUE),
    }])
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn appends(c: &mut Criterion) {
    let dir = bench_dir("engine-append");
    let mut g = c.benchmark_group("engine_append");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for appenders in [1usize, 16, 64] {
        let db = Arc::new(Db::open(dir.join(format!("a{appenders}")), Options::default()).expect("open"));
        db.append_event("bench", Bytes::from_static(b"warm-up"))
            .expect("append");
        let keys = Arc::new(AtomicU64::new(0));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("256B", appenders), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(appenders as u64).max(1);
                let (db, keys) = (db.clone(), keys.clone());
                let run = run_threads(appenders, per, move || {
                    db.append("bench", payload(keys.fetch_add(1, Ordering::Relaxed)))
                        .expect("append");
                });
                run.elapsed.mul_f64(iters as f64 / run.ops as f64)
            });
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn at_one_million(c: &mut Criterion) {
    let dir = bench_dir("engine-1m");
    {
        let opts = Options {
            wal: aerodb_wal::Options {
                durability: aerodb_wal::Durability::None,
                ..Default::default()
            },
            ..Options::default()
        };
        let db = Db::open(&dir, opts).expect("open");
        let mut n = 0;
        while n < RECORDS {
            let batch: Vec<NewRecord> = (n..n + 1000)
                .map(|i| NewRecord {
                    tenant: format!("t{}", i % 8),
                    payload: payload(i % 200_000),
                })
                .collect();
            n += 1000;
            db.append_many(&batch).expect("append");
        }
        db.close().expect("close");
    }
    let db = Db::open(&dir, Options::default()).expect("open");
    let root = db.root_at(RECORDS).expect("root");
    let mut seed = 0x1234_5678_9ABC_DEF1u64;

    let mut g = c.benchmark_group("engine_read_1m");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("get", |b| {
        b.iter(|| {
            // Key `x` belongs to tenant `x % 8` (200,000 is a multiple of 8).
            let x = next(&mut seed) % 200_000;
            db.get(&format!("t{}", x % 8), format!("key-{x:012}").as_bytes())
                .expect("get")
        })
    });
    g.bench_function("get_at", |b| {
        b.iter(|| {
            let x = next(&mut seed) % 200_000;
            db.get_at(
                &format!("t{}", x % 8),
                format!("key-{x:012}").as_bytes(),
                CommitId(RECORDS / 2),
            )
            .expect("get_at")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("engine_proof_1m");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("inclusion_generate", |b| {
        b.iter(|| {
            db.inclusion_proof(CommitId(1 + next(&mut seed) % RECORDS), RECORDS)
                .expect("proof")
        })
    });
    let samples: Vec<(merkle::Hash, aerodb_engine::InclusionProof)> = (0..1000)
        .map(|_| {
            let c = 1 + next(&mut seed) % RECORDS;
            let leaf = aerodb_engine::record::merkle_leaf(
                &db.record(CommitId(c)).expect("read").expect("record").canonical,
            );
            (leaf, db.inclusion_proof(CommitId(c), RECORDS).expect("proof"))
        })
        .collect();
    let mut i = 0;
    g.bench_function("inclusion_verify", |b| {
        b.iter(|| {
            let (leaf, p) = &samples[i % samples.len()];
            i += 1;
            assert!(merkle::verify_inclusion(
                leaf,
                p.leaf_index,
                RECORDS,
                &p.hashes,
                &root
            ));
        })
    });
    g.bench_function("consistency_generate", |b| {
        b.iter(|| {
            db.consistency_proof(1 + next(&mut seed) % RECORDS, RECORDS)
                .expect("proof")
        })
    });
    let csamples: Vec<(u64, merkle::Hash, Vec<merkle::Hash>)> = (0..1000)
        .map(|_| {
            let m = 1 + next(&mut seed) % RECORDS;
            (
                m,
                db.root_at(m).expect("root"),
                db.consistency_proof(m, RECORDS).expect("proof"),
            )
        })
        .collect();
    let mut j = 0;
    g.bench_function("consistency_verify", |b| {
        b.iter(|| {
            let (m, r, p) = &csamples[j % csamples.len()];
            j += 1;
            assert!(merkle::verify_consistency(*m, RECORDS, r, &root, p));
        })
    });
    g.finish();
    drop(db);

    let mut g = c.benchmark_group("engine_open_1m");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("reopen", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                drop(Db::open(&dir, Options::default()).expect("open"));
            }
            t.elapsed()
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

// A private module: criterion_group! generates an undocumented public function.
mod group {
    use super::*;
    criterion_group!(benches, appends, at_one_million);
}
use group::benches;
criterion_main!(benches);
