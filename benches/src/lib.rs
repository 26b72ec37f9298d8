//! Shared code for AeroDB's benchmarks: the machine's own ceilings (what the disk can do with no database in the
//! way) and the drivers that run the WAL under the same workloads, so every figure can be quoted as a ratio
//! measured in one run (see `../shared/BENCHMARKS.md` and `docs/performance.md`).

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use aerodb_wal::{Epoch, Wal};

pub mod net;
pub mod peers;
pub mod pg;
pub mod report;

/// A fresh directory for benchmark data on the same file system as the repository (not tmpfs).
///
/// # Panics
/// If the directory cannot be created.
#[must_use]
pub fn bench_dir(tag: &str) -> PathBuf {
    let base = std::env::var_os("AERODB_BENCH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"),
        PathBuf::from,
    );
    let p = base.join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create bench dir");
    p
}

/// CPU time (user + system) this process has used, all its threads together; zero if it cannot be read.
#[must_use]
pub fn process_cpu_time() -> Duration {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    #[allow(unsafe_code, reason = "one libc call, no memory is shared")]
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    // SAFETY: initialised by the successful call above.
    #[allow(unsafe_code, reason = "reading what getrusage wrote")]
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The ceiling: fixed-size appends, each followed by `fdatasync`, into a file that was preallocated, zero-filled
/// and synced first, so no append changes the file size.
#[derive(Debug)]
pub struct RawCeiling {
    file: File,
    offset: u64,
    len: u64,
}

impl RawCeiling {
    /// Creates and preallocates `len` bytes at `path`.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn create(path: &Path, len: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(Self { file, offset: 0, len })
    }

    /// Writes `buf` at the next offset and `fdatasync`s. Wraps around at the end of the file.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn append_sync(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.offset + buf.len() as u64 > self.len {
            self.offset = 0;
        }
        self.file.write_all_at(buf, self.offset)?;
        self.offset += buf.len() as u64;
        self.file.sync_data()
    }
}

/// Per-operation latencies and the wall time of a run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Operations completed.
    pub ops: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Latency of each operation, in no particular order.
    pub latencies: Vec<Duration>,
}

impl Run {
    /// Operations per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of the latencies.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
}

/// The `q` quantile of a sample (nearest rank).
#[must_use]
pub fn quantile(sample: &[Duration], q: f64) -> Duration {
    if sample.is_empty() {
        return Duration::ZERO;
    }
    let mut v = sample.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs `ops` ceiling appends of `size` bytes.
///
/// # Errors
/// Any I/O error.
pub fn run_ceiling(raw: &mut RawCeiling, ops: u64, size: usize) -> std::io::Result<Run> {
    let buf = vec![0x5Au8; size];
    let mut latencies = Vec::with_capacity(ops as usize);
    let start = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        raw.append_sync(&buf)?;
        latencies.push(t.elapsed());
    }
    Ok(Run {
        ops,
        elapsed: start.elapsed(),
        latencies,
    })
}

/// Runs `threads` threads that each call `op` `per_thread` times, all starting together behind a barrier;
/// records each call's latency.
///
/// # Panics
/// If `op` panics (a benchmark on a failing disk has no meaning).
pub fn run_threads<F>(threads: usize, per_thread: u64, op: F) -> Run
where
    F: Fn() + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_thread as usize);
                barrier.wait();
                for _ in 0..per_thread {
                    let t = Instant::now();
                    op();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("benchmark thread panicked"))
        .collect();
    Run {
        ops: threads as u64 * per_thread,
        elapsed: start.elapsed(),
        latencies,
    }
}

/// Runs `threads` appenders, each appending `per_thread` records of `size` bytes to `wal`, all starting together.
///
/// # Panics
/// If an append fails.
#[must_use]
pub fn run_wal(wal: &Arc<Wal>, threads: usize, per_thread: u64, size: usize) -> Run {
    let wal = wal.clone();
    let body = vec![0xA5u8; size];
    run_threads(threads, per_thread, move || {
        wal.append(Epoch(1), &body)
            .expect("append failed during benchmark");
    })
}

/// Median, minimum and maximum of a sample of rates.
#[must_use]
pub fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// Parses `--name N` flags into `flags` and `--quick` into the `quick` values; prints `usage` for `--help` and
/// exits with status 2 on anything else.
pub fn parse_flags(usage: &str, flags: &mut [(&str, &mut u64)], quick: &[(&str, u64)]) {
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            println!("{usage}");
            std::process::exit(0);
        }
        if arg == "--quick" {
            for (name, v) in quick {
                if let Some((_, slot)) = flags.iter_mut().find(|(n, _)| n == name) {
                    **slot = *v;
                }
            }
            continue;
        }
        let Some((_, slot)) = flags.iter_mut().find(|(n, _)| **n == arg) else {
            eprintln!("unknown argument {arg}\n{usage}");
            std::process::exit(2);
        };
        match it.next().and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0) {
            Some(v) => **slot = v,
            None => {
                eprintln!("{arg} needs a positive integer\n{usage}");
                std::process::exit(2);
            }
        }
    }
}

/// A `kB` field of `/proc/self/status` (e.g. `RssAnon`, `RssFile`, `VmHWM`) in MiB; NaN where unavailable.
#[must_use]
pub fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Which disk a run had: the median of 2,000 `fdatasync`s of 256 bytes into a preallocated file under `dir`.
///
/// # Errors
///
/// I/O errors of the probe file.
pub fn fsync_p50(dir: &Path) -> std::io::Result<Duration> {
    let mut raw = RawCeiling::create(&dir.join("ceiling"), 8 << 20)?;
    let run = run_ceiling(&mut raw, 2000, 256)?;
    Ok(quantile(&run.latencies, 0.5))
}

/// The first argument that makes a cluster benchmark run as one of its nodes.
pub const NODE_ARG: &str = "--lab-node";

/// `main` of a benchmark whose cluster nodes are the benchmark program itself: run with [`NODE_ARG`] first, it is
/// the server's own main; otherwise it runs `bench`, printing its error under `name`.
#[must_use]
pub fn cluster_bench_main(
    name: &str,
    bench: fn() -> Result<(), Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(NODE_ARG)) {
        return aerodb_server::main_server::run(
            std::iter::once(std::ffi::OsString::from("aerodb-server")).chain(std::env::args_os().skip(2)),
        );
    }
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
