//! `wal-ratios`: the WAL's performance as ratios to the machine's own ceiling, measured in one run with
#![allow(unsafe_code)]
//! interleaved repetitions (ceiling, WAL ×1, WAL ×64, … repeated). Prints a markdown table for
//! `docs/performance.md`.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin wal-ratios -- [--rounds N] [--ops N] [--quick]`

use std::{sync::Arc, time::Instant};

use aerodb_benches::{bench_dir, median_min_max, run_ceiling, run_wal, RawCeiling, Run};
use aerodb_wal::{fs::RealFs, CommitId, Epoch, Options, Wal};

struct Args {
    rounds: usize,
    ops: u64,
    replay_mb: u64,
}

fn parse_args() -> Args {
    let (mut rounds, mut ops, mut replay_mb) = (5, 4000, 512);
    aerodb_benches::parse_flags(
        "wal-ratios [--rounds N] [--ops N] [--replay-mb N] [--quick]",
        &mut [
            ("--rounds", &mut rounds),
            ("--ops", &mut ops),
            ("--replay-mb", &mut replay_mb),
        ],
        &[("--rounds", 3), ("--ops", 300), ("--replay-mb", 16)],
    );
    Args {
        rounds: rounds as usize,
        ops: ops.max(64),
        replay_mb,
    }
}

fn us(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// User + system CPU time of this process so far, in microseconds.
fn cpu_micros() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer it is given; a zeroed one is a valid start.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let dir = bench_dir("wal-ratios");
    let size = 256;
    let mut ceiling = RawCeiling::create(&dir.join("ceiling.dat"), 64 << 20)?;
    let (mut c1, mut w1, mut w64) = (Vec::<Run>::new(), Vec::<Run>::new(), Vec::<Run>::new());
    for round in 1..=args.rounds {
        eprintln!(
            "round {round}/{}: ceiling, WAL x1, WAL x64 ({} ops each)",
            args.rounds, args.ops
        );
        c1.push(run_ceiling(&mut ceiling, args.ops, size)?);
        let wal_dir = dir.join(format!("wal-{round}"));
        let wal = Arc::new(Wal::open(Arc::new(RealFs), &wal_dir, Options::default())?);
        // Let the background thread finish preallocating the next segment so the run measures appends only.
        wal.append(Epoch(1), b"warm-up")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        w1.push(run_wal(&wal, 1, args.ops, size));
        let before = wal.stats();
        let cpu_before = cpu_micros();
        w64.push(run_wal(&wal, 64, (args.ops * 8 / 64).max(1), size));
        let after = wal.stats();
        let cpu = cpu_micros() - cpu_before;
        let flushes = after.flushes - before.flushes;
        let fsync_us = (after.fsync_micros_total - before.fsync_micros_total) as f64 / flushes.max(1) as f64;
        eprintln!(
            "  x64: {:.1} records per group commit, mean fdatasync {fsync_us:.0} µs, {:.0} µs per flush cycle, {:.1} µs CPU (user+sys) per record",
            (after.frames_written - before.frames_written) as f64 / flushes.max(1) as f64,
            w64.last().map_or(0.0, |r| r.elapsed.as_secs_f64() * 1e6 / flushes.max(1) as f64),
            cpu as f64 / (after.frames_written - before.frames_written).max(1) as f64,
        );
        drop(wal);
        std::fs::remove_dir_all(&wal_dir)?;
    }

    // Replay: build a log of ~replay_mb MiB, then time reading every frame back (CRC checked), interleaved.
    eprintln!("replay: building a {} MiB log", args.replay_mb);
    let rdir = dir.join("replay");
    let frames = args.replay_mb * (1 << 20) / (256 + 32);
    {
        let opts = Options {
            durability: aerodb_wal::Durability::None,
            ..Options::default()
        };
        let wal = Wal::open(Arc::new(RealFs), &rdir, opts)?;
        let body = vec![7u8; 256];
        let bodies: Vec<&[u8]> = (0..1000).map(|_| &body[..]).collect();
        let mut n = 0;
        while n < frames {
            wal.append_batch(Epoch(1), &bodies)?;
            n += 1000;
        }
        wal.sync()?;
    }
    let mut replay_rates = Vec::new();
    let mut open_rates = Vec::new();
    for round in 1..=args.rounds {
        let t = Instant::now();
        let wal = Wal::open(Arc::new(RealFs), &rdir, Options::default())?;
        let open = t.elapsed();
        let t = Instant::now();
        let mut bytes = 0u64;
        let mut count = 0u64;
        for f in wal.read_from(CommitId(1))? {
            let f = f?;
            bytes += f.raw.len() as u64;
            count += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        replay_rates.push(bytes as f64 / secs / 1e9);
        open_rates.push(wal.recovery_report().bytes_scanned as f64 / open.as_secs_f64() / 1e9);
        eprintln!(
            "replay round {round}: {count} frames, {:.2} GB/s",
            bytes as f64 / secs / 1e9
        );
    }

    let rate = |v: &[Run]| median_min_max(&v.iter().map(Run::rate).collect::<Vec<_>>());
    let p = |v: &[Run], q| median_min_max(&v.iter().map(|r| us(r.quantile(q))).collect::<Vec<_>>());
    let (c_rate, w1_rate, w64_rate) = (rate(&c1), rate(&w1), rate(&w64));
    let (c_p99, w1_p99) = (p(&c1, 0.99), p(&w1, 0.99));
    let (c_p50, w1_p50, w64_p50, w64_p99) = (p(&c1, 0.5), p(&w1, 0.5), p(&w64, 0.5), p(&w64, 0.99));
    let fmt = |t: (f64, f64, f64), unit: &str| format!("{:.0} ({:.0}–{:.0}) {unit}", t.0, t.1, t.2);
    let fmtf = |t: (f64, f64, f64), unit: &str| format!("{:.2} ({:.2}–{:.2}) {unit}", t.0, t.1, t.2);
    println!("| workload (256 B records, `always`) | records/s median (min–max) | p50 µs | p99 µs | ratio | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| raw_fsync ceiling (preallocated, 1 writer) | {} | {:.0} | {:.0} | 1.00 | — |",
        fmt(c_rate, ""),
        c_p50.0,
        c_p99.0
    );
    println!(
        "| WAL, 1 appender | {} | {:.0} | {:.0} | {:.2} of ceiling; p99 {:.2}× ceiling p99 | ≥ 0.90; p99 ≤ 1.5× |",
        fmt(w1_rate, ""), w1_p50.0, w1_p99.0, w1_rate.0 / c_rate.0, w1_p99.0 / c_p99.0
    );
    println!(
        "| WAL, 64 appenders | {} | {:.0} | {:.0} | {:.1}× the 1-appender rate | ≥ 20× |",
        fmt(w64_rate, ""),
        w64_p50.0,
        w64_p99.0,
        w64_rate.0 / w1_rate.0
    );
    let rr = median_min_max(&replay_rates);
    let or = median_min_max(&open_rates);
    println!(
        "| WAL replay (read every frame, CRC checked) | {} | | | | ≥ 1 GB/s |",
        fmtf(rr, "GB/s")
    );
    println!("| WAL open (recovery scan) | {} | | | | — |", fmtf(or, "GB/s"));
    println!();
    println!(
        "rounds: {}, ops per round: {} (x1) / {} (x64), replay log: {} MiB",
        args.rounds,
        args.ops,
        (args.ops * 8 / 64) * 64,
        args.replay_mb
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
