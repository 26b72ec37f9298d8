//! Profiling aid: builds (once) and reopens a large directory, for `perf record`.
//! Usage: `engine-open-profile DIR RECORDS REOPENS`; `engine-open-profile --appends DIR N` (64 appender threads);
//! `engine-open-profile --batch-cpu DIR N` (N records in `append_many` batches of 64: the process's CPU per record);
//! `engine-open-profile --proofs DIR N` (N random inclusion proofs at DIR's size, three rounds);
//! `engine-open-profile --one-appender DIR N` (one appender, default options: its latency tail and where the
//! longest appends fell, for finding what stalls the appender when the disk is fast, e.g. DIR on tmpfs).
use aerodb_engine::{Db, NewRecord, Op, Options, Payload};
use bytes::Bytes;

fn appends(dir: &std::path::Path, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    let cp: u64 = std::env::var("CP_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let opts = Options {
        checkpoint_every_records: cp,
        checkpoint_interval: if cp == 0 {
            None
        } else {
            Some(std::time::Duration::from_secs(1))
        },
        index_flush_versions: std::env::var("INDEX_FLUSH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Options::default().index_flush_versions),
        ..Options::default()
    };
    let db = std::sync::Arc::new(Db::open(dir, opts)?);
    db.append_event("w", Bytes::from_static(b"warm"))?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..64 {
            let (db, n) = (db.clone(), n.clone());
            s.spawn(move || loop {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let p = Payload::Batch(vec![Op::Put {
                    key: Bytes::from(format!("key-{i:012}")),
                    value: Bytes::from(vec![0x5A; 256]),
                }]);
                db.append("bench", p).expect("append");
            });
        }
    });
    let st = db.wal_stats();
    eprintln!(
        "{total} appends from 64 threads: {:.0}/s; {:.1} records per group commit, fsync mean {:.0} µs",
        total as f64 / t.elapsed().as_secs_f64(),
        st.frames_written as f64 / st.flushes.max(1) as f64,
        st.fsync_micros_total as f64 / st.fsyncs.max(1) as f64
    );
    Ok(())
}

/// `append_many` batches of 64 records (256-byte values, default options: every batch durable) from one thread:
/// the whole process's CPU per record (the appender and every background thread: index flushes and merges,
/// checkpoints, segment preallocation), from `getrusage` before and after.
fn batch_cpu(dir: &std::path::Path, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    let db = Db::open(dir, Options::default())?;
    let value = Bytes::from(vec![0x5A; 256]);
    let (cpu0, t) = (aerodb_benches::process_cpu_time(), std::time::Instant::now());
    let mut n = 0;
    while n < total {
        let batch: Vec<NewRecord> = (n..n + 64)
            .map(|i| NewRecord {
                tenant: "bench".into(),
                payload: Payload::Batch(vec![Op::Put {
                    key: Bytes::from(format!("key-{i:012}")),
                    value: value.clone(),
                }]),
            })
            .collect();
        db.append_many(&batch)?;
        n += 64;
    }
    db.close()?;
    let (cpu, took) = (aerodb_benches::process_cpu_time() - cpu0, t.elapsed());
    eprintln!(
        "{n} records in batches of 64: {:.0} records/s; process CPU {:.2} µs per record ({:.2} s of CPU in {:.2} s, \
         close included)",
        n as f64 / took.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        cpu.as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(())
}

fn proofs(dir: &std::path::Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let db = Db::open(dir, Options::default())?;
    let size = db.tip()?.commit_id.0;
    let mut x = 12345u64;
    for round in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..n {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            db.inclusion_proof(aerodb_wal::CommitId(x % size + 1), size)?;
        }
        eprintln!(
            "round {round}: {n} inclusion proofs at {size} leaves: {:.0}/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    db.close()?;
    Ok(())
}

fn one_appender(dir: &std::path::Path, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    let opts = Options {
        index_flush_versions: std::env::var("INDEX_FLUSH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Options::default().index_flush_versions),
        ..Options::default()
    };
    let db = Db::open(dir, opts)?;
    let value = Bytes::from(vec![0x5A; 256]);
    let mut lat = Vec::with_capacity(usize::try_from(total)?);
    let start = std::time::Instant::now();
    for i in 0..total {
        let p = Payload::Batch(vec![Op::Put {
            key: Bytes::from(format!("key-{i:012}")),
            value: value.clone(),
        }]);
        let t = std::time::Instant::now();
        db.append("bench", p)?;
        lat.push((t.elapsed(), t - start, i));
    }
    let took = start.elapsed();
    let mut sorted: Vec<u128> = lat.iter().map(|l| l.0.as_nanos()).collect();
    sorted.sort_unstable();
    let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f) as usize] as f64 / 1e3;
    let slow: u128 = sorted.iter().filter(|&&n| n > 50_000).sum();
    eprintln!(
        "{total} appends in {:.3} s: {:.0}/s; p50 {:.2} µs p99 {:.2} µs p99.9 {:.1} µs max {:.0} µs; appends over 50 µs: \
         {} taking {:.1} ms in all ({:.0}% of the run)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0),
        sorted.iter().filter(|&&n| n > 50_000).count(),
        slow as f64 / 1e6,
        slow as f64 / took.as_nanos() as f64 * 100.0
    );
    lat.sort_by_key(|l| std::cmp::Reverse(l.0));
    for (d, at, i) in lat.iter().take(12) {
        eprintln!(
            "  append #{i} at {:.3} s took {:.0} µs",
            at.as_secs_f64(),
            d.as_secs_f64() * 1e6
        );
    }
    db.close()?;
    Ok(())
}

/// 64 threads appending 352-byte frames to a bare WAL.
fn wal_appends(dir: &std::path::Path, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    let wal = std::sync::Arc::new(aerodb_wal::Wal::open(
        std::sync::Arc::new(aerodb_wal::fs::RealFs),
        dir,
        aerodb_wal::Options::default(),
    )?);
    wal.append(aerodb_wal::Epoch(1), b"warm")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    let run = aerodb_benches::run_wal(&wal, 64, total / 64, 352);
    let st = wal.stats();
    eprintln!(
        "{} WAL appends from 64 threads: {:.0}/s; {:.1} records per group commit, fsync mean {:.0} µs",
        run.ops,
        run.ops as f64 / t.elapsed().as_secs_f64(),
        st.frames_written as f64 / st.flushes.max(1) as f64,
        st.fsync_micros_total as f64 / st.fsyncs.max(1) as f64
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    // The modes `--MODE DIR N`: every one but `--proofs` starts from an empty DIR.
    type Mode = fn(&std::path::Path, u64) -> Result<(), Box<dyn std::error::Error>>;
    let mode: Option<(Mode, bool)> = match a.get(1).map(String::as_str) {
        Some("--wal-appends") => Some((wal_appends, true)),
        Some("--appends") => Some((appends, true)),
        Some("--one-appender") => Some((one_appender, true)),
        Some("--batch-cpu") => Some((batch_cpu, true)),
        Some("--proofs") => Some((proofs, false)),
        _ => None,
    };
    if let Some((run, fresh)) = mode {
        let dir = std::path::PathBuf::from(a.get(2).ok_or("DIR")?);
        if fresh {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return run(&dir, a.get(3).ok_or("N")?.parse()?);
    }
    let dir = std::path::PathBuf::from(a.get(1).ok_or("DIR")?);
    let records: u64 = a.get(2).ok_or("RECORDS")?.parse()?;
    let reopens: u32 = a.get(3).ok_or("REOPENS")?.parse()?;
    if !dir.exists() {
        let opts = Options {
            wal: aerodb_wal::Options {
                durability: aerodb_wal::Durability::None,
                ..Default::default()
            },
            ..Options::default()
        };
        let db = Db::open(&dir, opts)?;
        let mut n = 0;
        while n < records {
            let batch: Vec<NewRecord> = (n..n + 1000)
                .map(|i| NewRecord {
                    tenant: format!("tenant-{}", i % 8),
                    payload: Payload::Batch(vec![Op::Put {
                        key: Bytes::from(format!("key-{:012}", i % 200_000)),
                        value: Bytes::from(vec![0x5A; 256]),
                    }]),
                })
                .collect();
            n += 1000;
            db.append_many(&batch)?;
        }
        db.close()?;
    }
    for _ in 0..reopens {
        let t = std::time::Instant::now();
        let db = Db::open(&dir, Options::default())?;
        let r = db.open_report();
        eprintln!(
            "open {:.3} s (WAL recovery {:.3} s, chain verify {:.3} s)",
            t.elapsed().as_secs_f64(),
            r.wal_recovery.as_secs_f64(),
            r.chain_verify.as_secs_f64()
        );
        drop(db);
    }
    Ok(())
}
