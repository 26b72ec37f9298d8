//! `engine-ratios`: the engine's figures from issue 3, measured in one run.
//!
//! 1. Durable appends, interleaved rounds: the bare WAL and the engine (hash chain, Merkle index, key index) at 1
//!    and 64 appenders, the WAL's bodies the same size as the engine's encoded records.
//! 2. On a directory of `--records` records (default 1M): reopen time (WAL recovery + every record's CRC, encoding
//!    and hash-chain link verified, index runs opened), verified-recovery throughput, inclusion and consistency proof
//!    generation and verification rates, and `get` / `get_at` rates.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin engine-ratios -- [--rounds N] [--ops N] [--records N] [--quick]`

use aerodb_wal::CommitId;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use aerodb_benches::{bench_dir, median_min_max, run_threads, run_wal, Run};
use aerodb_engine::{merkle, record, Db, NewRecord, Op, Options, Payload};
use aerodb_wal::{fs::RealFs, Durability, Epoch, Wal};
use bytes::Bytes;

struct Args {
    rounds: usize,
    ops: u64,
    records: u64,
}

fn parse_args() -> Args {
    let (mut rounds, mut ops, mut records) = (5, 10_000, 1_000_000);
    aerodb_benches::parse_flags(
        "engine-ratios [--rounds N] [--ops N] [--records N] [--quick]",
        &mut [
            ("--rounds", &mut rounds),
            ("--ops", &mut ops),
            ("--records", &mut records),
        ],
        &[("--rounds", 3), ("--ops", 200), ("--records", 20_000)],
    );
    Args {
        rounds: rounds as usize,
        ops: ops.max(64),
        records: records.max(1000),
    }
}

const VALUE_BYTES: usize = 256;

fn payload(key: u64) -> Payload {
    Payload::Batch(vec![Op::Put {
        key: Bytes::from(format!("key-{key:012}")),
        value: Bytes::from(vec![0x5A; VALUE_BYTES]),
    }])
}

fn engine_opts() -> Options {
    Options {
        checkpoint_every_records: 100_000,
        ..Options::default()
    }
}

/// Cheap deterministic sequence for picking random positions.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn fmt(t: (f64, f64, f64)) -> String {
    format!("{:.0} ({:.0}–{:.0})", t.0, t.1, t.2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let dir = bench_dir("engine-ratios");
    let record_len = record::RECORD_OVERHEAD + "bench".len() + record::body_len(&payload(0));
    let (mut w1, mut e1, mut w64, mut e64) = (
        Vec::<Run>::new(),
        Vec::<Run>::new(),
        Vec::<Run>::new(),
        Vec::<Run>::new(),
    );
    for round in 1..=args.rounds {
        eprintln!(
            "round {round}/{}: WAL x1, engine x1, WAL x64, engine x64",
            args.rounds
        );
        let wal = Arc::new(Wal::open(
            Arc::new(RealFs),
            dir.join(format!("wal-{round}")),
            aerodb_wal::Options::default(),
        )?);
        wal.append(Epoch(1), b"warm-up")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let db = Arc::new(Db::open(dir.join(format!("db-{round}")), engine_opts())?);
        db.append_event("bench", Bytes::from_static(b"warm-up"))?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Payloads are built before the timed region, as the WAL's bodies are: the rates compare the engine's
        // append with the WAL's, not the cost of formatting keys and filling values.
        let total = (args.ops + args.ops * 8 / 64 * 64) as usize;
        let base = (round as u64 - 1) * total as u64;
        let prepared: Arc<Vec<parking_lot::Mutex<Option<Payload>>>> = Arc::new(
            (0..total as u64)
                .map(|i| parking_lot::Mutex::new(Some(payload(base + i))))
                .collect(),
        );
        let next = Arc::new(AtomicU64::new(0));
        let engine_op = {
            let (db, prepared, next) = (db.clone(), prepared.clone(), next.clone());
            move || {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let p = prepared[i].lock().take().expect("each payload is used once");
                db.append("bench", p)
                    .expect("engine append failed during benchmark");
            }
        };
        let engine_op = Arc::new(engine_op);
        w1.push(run_wal(&wal, 1, args.ops, record_len));
        let op = engine_op.clone();
        e1.push(run_threads(1, args.ops, move || op()));
        w64.push(run_wal(&wal, 64, args.ops * 8 / 64, record_len));
        let op = engine_op.clone();
        e64.push(run_threads(64, args.ops * 8 / 64, move || op()));
    }
    let rate = |v: &[Run]| median_min_max(&v.iter().map(Run::rate).collect::<Vec<_>>());
    let (w1r, e1r, w64r, e64r) = (rate(&w1), rate(&e1), rate(&w64), rate(&e64));

    // A large directory, built fast (no fsync per batch; the close makes it durable and checkpoints it).
    eprintln!("building a directory of {} records", args.records);
    let big = dir.join("big");
    let t = Instant::now();
    {
        let opts = Options {
            wal: aerodb_wal::Options {
                durability: Durability::None,
                ..Default::default()
            },
            ..engine_opts()
        };
        let db = Db::open(&big, opts)?;
        let mut n = 0u64;
        while n < args.records {
            let batch: Vec<NewRecord> = (n..(n + 1000).min(args.records))
                .map(|i| NewRecord {
                    tenant: format!("tenant-{}", i % 8),
                    payload: payload(i % 200_000),
                })
                .collect();
            n += batch.len() as u64;
            db.append_many(&batch)?;
        }
        db.close()?;
    }
    eprintln!("built in {:.1} s", t.elapsed().as_secs_f64());
    let n = args.records;
    let mut open_s = Vec::new();
    let mut rss = Vec::new();
    let mut verify_gbs = Vec::new();
    let (mut inc_gen, mut inc_ver, mut con_gen, mut con_ver, mut gets, mut gets_at) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 1..=args.rounds {
        let t = Instant::now();
        let db = Db::open(&big, engine_opts())?;
        let secs = t.elapsed().as_secs_f64();
        let r = db.open_report();
        // Verified recovery: the WAL's scan (every frame CRC) plus the hash-chain pass (every record hash and
        // link). The rest of the reopen opens the index runs and checks the checkpoints.
        let verify = (r.wal_recovery + r.chain_verify).as_secs_f64();
        open_s.push(secs);
        // Only the first reopen measures the index: later rounds also hold heap the allocator kept from the
        // proof benchmarks of earlier rounds.
        if round == 1 {
            rss.push(aerodb_benches::proc_status_mib("RssAnon"));
        }
        verify_gbs.push(r.wal.bytes_scanned as f64 / verify / 1e9);
        eprintln!(
            "round {round}: reopen {secs:.2} s ({} records; WAL scan {:.3} s, hash chain {:.3} s)",
            r.records_verified,
            r.wal_recovery.as_secs_f64(),
            r.chain_verify.as_secs_f64()
        );
        let root = db.root_at(n)?;
        // Inclusion proofs for random records in the full tree.
        let picks: Vec<u64> = (0..200_000).map(|_| 1 + next(&mut seed) % n).collect();
        let t = Instant::now();
        let proofs: Vec<_> = picks
            .iter()
            .map(|&c| db.inclusion_proof(CommitId(c), n))
            .collect::<Result<_, _>>()?;
        inc_gen.push(picks.len() as f64 / t.elapsed().as_secs_f64());
        let leaves: Vec<merkle::Hash> = picks
            .iter()
            .take(20_000)
            .map(|&c| {
                Ok(record::merkle_leaf(
                    &db.record(CommitId(c))?.ok_or("missing")?.canonical,
                ))
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?;
        let t = Instant::now();
        let mut ok = 0usize;
        for _ in 0..10 {
            for (p, leaf) in proofs.iter().zip(&leaves) {
                ok += usize::from(merkle::verify_inclusion(leaf, p.leaf_index, n, &p.hashes, &root));
            }
        }
        inc_ver.push(ok as f64 / t.elapsed().as_secs_f64());
        assert_eq!(ok, leaves.len() * 10, "every inclusion proof verifies");
        // Consistency proofs from random older sizes to the full tree.
        let olds: Vec<u64> = (0..50_000).map(|_| 1 + next(&mut seed) % n).collect();
        let t = Instant::now();
        let cps: Vec<_> = olds
            .iter()
            .map(|&m| db.consistency_proof(m, n))
            .collect::<Result<_, _>>()?;
        con_gen.push(olds.len() as f64 / t.elapsed().as_secs_f64());
        let old_roots: Vec<merkle::Hash> = olds
            .iter()
            .take(5_000)
            .map(|&m| db.root_at(m))
            .collect::<Result<_, _>>()?;
        let t = Instant::now();
        let mut ok = 0usize;
        for _ in 0..10 {
            for ((m, p), r) in olds.iter().zip(&cps).zip(&old_roots) {
                ok += usize::from(merkle::verify_consistency(*m, n, r, &root, p));
            }
        }
        con_ver.push(ok as f64 / t.elapsed().as_secs_f64());
        assert_eq!(ok, old_roots.len() * 10, "every consistency proof verifies");
        // Point reads.
        // Key `x` is written by record `i` with `i % 200_000 == x`, of tenant `i % 8` = `x % 8` (200,000 is a
        // multiple of 8): each key lives in one tenant's key space.
        let keys: Vec<(String, String)> = (0..100_000)
            .map(|_| {
                let x = next(&mut seed) % 200_000.min(n);
                (format!("tenant-{}", x % 8), format!("key-{x:012}"))
            })
            .collect();
        let t = Instant::now();
        for (tenant, k) in &keys {
            db.get(tenant, k.as_bytes())?;
        }
        gets.push(keys.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (tenant, k) in &keys {
            db.get_at(tenant, k.as_bytes(), CommitId(n / 2))?;
        }
        gets_at.push(keys.len() as f64 / t.elapsed().as_secs_f64());
        drop(db);
    }
    let mm = |v: &[f64]| median_min_max(v);
    println!("| workload | median (min–max) | ratio / target |");
    println!("|---|---|---|");
    println!(
        "| bare WAL, 1 appender ({record_len} B bodies), records/s | {} | — |",
        fmt(w1r)
    );
    println!(
        "| engine, 1 appender (256 B values), records/s | {} | {:.2} of the WAL |",
        fmt(e1r),
        e1r.0 / w1r.0
    );
    println!("| bare WAL, 64 appenders, records/s | {} | — |", fmt(w64r));
    println!(
        "| engine, 64 appenders, records/s | {} | **{:.2}** of the WAL (target ≥ 0.80) |",
        fmt(e64r),
        e64r.0 / w64r.0
    );
    let o = mm(&open_s);
    println!("| reopen of {n} records (verify everything, open the index runs), s | {:.2} ({:.2}–{:.2}) | target < 2 s |", o.0, o.1, o.2);
    let v = mm(&verify_gbs);
    println!(
        "| verified recovery (every frame CRC + every record hash and link), GB/s of log | {:.2} ({:.2}–{:.2}) | target ≥ 1 GB/s |",
        v.0, v.1, v.2
    );
    println!(
        "| anonymous RSS after the first reopen of {n} records (mmapped files excluded; this process also built the directory), MiB | {:.0} | 10M records: see `engine-memory` |",
        rss.first().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| inclusion proof generation at {n} leaves, proofs/s | {} | target ≥ 500k/s |",
        fmt(mm(&inc_gen))
    );
    println!(
        "| inclusion proof verification, proofs/s | {} | target ≥ 400k/s |",
        fmt(mm(&inc_ver))
    );
    println!(
        "| consistency proof generation, proofs/s | {} | — |",
        fmt(mm(&con_gen))
    );
    println!(
        "| consistency proof verification, proofs/s | {} | — |",
        fmt(mm(&con_ver))
    );
    println!("| get (random key of 200k), reads/s | {} | — |", fmt(mm(&gets)));
    println!(
        "| get_at (random key, CommitId n/2), reads/s | {} | — |",
        fmt(mm(&gets_at))
    );
    println!(
        "\nrounds: {}, appends per round: {} (x1) / {} (x64), directory: {n} records",
        args.rounds,
        args.ops,
        args.ops * 8 / 64 * 64
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
