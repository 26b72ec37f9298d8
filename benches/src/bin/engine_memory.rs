//! `engine-memory`: resident memory while serving a large directory (issue 3's memory target: RSS beyond the
//! page cache held for memory-mapped files stays under 256 MiB at 10M records).
//!
//! Builds a directory of `--records` records (default 10M), every record writing a distinct key (the index's
//! worst case), closes it, reopens it, and then serves a mixed load for `--serve-secs` seconds: point reads,
//! reads at an older CommitId, key history, prefix scans, tenant scans, inclusion proofs and durable appends.
//! `RssAnon` (heap, stacks) is sampled throughout; `RssFile` (mapped log, Merkle and index pages, reclaimable by
//! the kernel) is reported beside it.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin engine-memory -- [--records N] [--serve-secs S] [--quick]`

use aerodb_wal::CommitId;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aerodb_benches::{bench_dir, proc_status_mib};
use aerodb_engine::{Db, NewRecord, Op, Options, Payload};
use aerodb_wal::Durability;
use bytes::Bytes;
use std::sync::Mutex;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key-{i:012}"))
}

fn payload(i: u64) -> Payload {
    Payload::Batch(vec![Op::Put {
        key: key(i),
        value: Bytes::from(vec![0x5A; 256]),
    }])
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut records, mut serve_secs) = (10_000_000u64, 20u64);
    aerodb_benches::parse_flags(
        "engine-memory [--records N] [--serve-secs S] [--quick]",
        &mut [("--records", &mut records), ("--serve-secs", &mut serve_secs)],
        &[("--records", 200_000), ("--serve-secs", 3)],
    );
    if let Some(db_dir) = std::env::var_os(SERVE_ENV) {
        return serve(std::path::Path::new(&db_dir), records, serve_secs);
    }
    let dir = bench_dir("engine-memory");
    let db_dir = dir.join("db");
    eprintln!(
        "building {records} records with distinct keys in {}",
        db_dir.display()
    );
    let t = Instant::now();
    let mut build_peak = 0f64;
    {
        let opts = Options {
            wal: aerodb_wal::Options {
                durability: Durability::None,
                ..Default::default()
            },
            checkpoint_every_records: 1_000_000,
            ..Options::default()
        };
        let db = Db::open(&db_dir, opts)?;
        let mut n = 0u64;
        let mut last_report = Instant::now();
        while n < records {
            let batch: Vec<NewRecord> = (n..(n + 1000).min(records))
                .map(|i| NewRecord {
                    tenant: format!("tenant-{}", i % 16),
                    payload: payload(i),
                })
                .collect();
            n += batch.len() as u64;
            db.append_many(&batch)?;
            if last_report.elapsed() >= Duration::from_secs(5) {
                let anon = proc_status_mib("RssAnon");
                build_peak = build_peak.max(anon);
                eprintln!(
                    "  {n}/{records} records, {:.0} s, RssAnon {anon:.0} MiB",
                    t.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        }
        db.close()?;
    }
    eprintln!("built in {:.1} s", t.elapsed().as_secs_f64());

    // Serve from a fresh process, so its memory is what serving the directory takes, not what building it left
    // in this process's allocator.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env(SERVE_ENV, &db_dir)
        .status()?;
    std::fs::remove_dir_all(&dir)?;
    if !status.success() {
        return Err(format!("the serving process failed: {status}").into());
    }
    println!("| peak RssAnon of the building process (sampled every 5 s), MiB | {build_peak:.0} | — |");
    Ok(())
}

const SERVE_ENV: &str = "AERODB_MEMORY_SERVE_DIR";

fn serve(db_dir: &std::path::Path, records: u64, serve_secs: u64) -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let db = Arc::new(Db::open(db_dir, Options::default())?);
    let open_secs = t.elapsed().as_secs_f64();
    let rep = db.open_report();
    let after_open = proc_status_mib("RssAnon");
    eprintln!(
        "reopened in {open_secs:.2} s ({} index runs, {} records replayed into the index); RssAnon {after_open:.0} MiB",
        rep.index_runs, rep.index_replayed
    );
    let n = db.tip()?.commit_id.0;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Mutex::new([0u64; 2]));
    let mut workers = Vec::new();
    for w in 0..2u64 {
        let (db, stop, ops) = (db.clone(), stop.clone(), ops.clone());
        workers.push(std::thread::spawn(move || -> Result<(), String> {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
            let mut reads = 0u64;
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = next(&mut seed) % records;
                let e = |e: aerodb_engine::Error| e.to_string();
                // Key `i` was written by tenant `i % 16`, in that tenant's key space.
                let tenant = format!("tenant-{}", i % 16);
                match next(&mut seed) % 8 {
                    0 => {
                        db.get(&tenant, &key(i))
                            .map_err(e)?
                            .ok_or("a written key is missing")?;
                    }
                    1 => {
                        db.get_at(&tenant, &key(i), CommitId(n / 2)).map_err(e)?;
                    }
                    2 => {
                        db.history(&tenant, &key(i)).map_err(e)?;
                    }
                    3 => {
                        db.scan_prefix(&tenant, format!("key-{:09}", i / 1000).as_bytes(), 100)
                            .map_err(e)?;
                    }
                    4 => {
                        db.scan_tenant(&format!("tenant-{}", i % 16), CommitId(i), 50)
                            .map_err(e)?;
                    }
                    5 => {
                        db.inclusion_proof(CommitId(1 + i % n), n).map_err(e)?;
                    }
                    6 => {
                        db.append("serve", payload(records + next(&mut seed) % records))
                            .map_err(e)?;
                        writes += 1;
                        continue;
                    }
                    _ => {
                        db.record(CommitId(1 + i % n)).map_err(e)?;
                    }
                }
                reads += 1;
            }
            let mut o = ops.lock().map_err(|_| "poisoned")?;
            o[0] += reads;
            o[1] += writes;
            Ok(())
        }));
    }
    let t = Instant::now();
    let (mut peak_anon, mut peak_file) = (after_open, 0f64);
    while t.elapsed() < Duration::from_secs(serve_secs) {
        std::thread::sleep(Duration::from_millis(100));
        peak_anon = peak_anon.max(proc_status_mib("RssAnon"));
        peak_file = peak_file.max(proc_status_mib("RssFile"));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().map_err(|_| "worker panicked")??;
    }
    let [reads, writes] = *ops.lock().map_err(|_| "poisoned")?;
    let secs = t.elapsed().as_secs_f64();
    drop(db);
    println!("| engine memory, {records} records (distinct keys) | value | target |");
    println!("|---|---|---|");
    println!("| reopen, s | {open_secs:.2} | — |");
    println!("| RssAnon after reopen, MiB | {after_open:.0} | — |");
    println!(
        "| **peak RssAnon while serving** ({:.0} reads/s + {:.0} durable appends/s for {secs:.0} s), MiB | **{peak_anon:.0}** | < 256 MiB |",
        reads as f64 / secs,
        writes as f64 / secs
    );
    println!("| peak RssFile while serving (mapped log, Merkle and index pages; page cache), MiB | {peak_file:.0} | not counted |");
    Ok(())
}
