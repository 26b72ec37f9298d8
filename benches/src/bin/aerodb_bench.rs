//! `aerodb-bench`: AeroDB against the machine's ceiling and the engines a user would pick instead, in one run
//! (`../shared/BENCHMARKS.md`; issue 6). Every workload runs its systems interleaved (A B C … A B C …) for
//! `--reps` repetitions, each on a fresh directory, and reports medians with min–max.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin aerodb-bench -- [all|local|replication] [--reps N]
//! [--quick]`. Writes `docs/performance-peers.md`, `docs/bench.json` and
//! `docs/img/<workload>.svg`; with `--quick` (a smoke run: small counts, one repetition) or `local` /
//! `replication` alone it writes them under `target/bench-<quick|local|replication>/` instead; `--quick` asserts
//! nothing about speed. The full run also replaces the part of
//! `docs/performance.md` between `<!-- aerodb-bench:begin -->` and `<!-- aerodb-bench:end -->`.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aerodb_benches::{
    bench_dir, net,
    peers::{Aero, Ceiling, Fjall, Redb, Sqlite, Store},
    pg::PgPair,
    quantile,
    report::{Measure, Series, Workload},
    run_threads, Run,
};
use aerodb_server::{
    config::{Config, Role},
    Running,
};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-admin-token-0123456789";
const REPLICATOR: &str = "bench-replicator-token-0123456";
const VALUE: [u8; 256] = [b'v'; 256];

struct Counts {
    single: u64,
    concurrent: u64,
    batch: u64,
    reads: u64,
    replay: u64,
    proofs: u64,
    repl_rate: f64,
    repl_seconds: f64,
    sync_ops: u64,
}

fn measure(run: &Run) -> Measure {
    Measure {
        rate: run.rate(),
        p50_us: quantile(&run.latencies, 0.5).as_secs_f64() * 1e6,
        p99_us: quantile(&run.latencies, 0.99).as_secs_f64() * 1e6,
    }
}

fn series(system: &str, ceiling: bool, aerodb: bool) -> Series {
    Series {
        system: system.into(),
        ceiling,
        aerodb,
        runs: Vec::new(),
    }
}

type Opener = (&'static str, bool, bool, fn(&Path) -> Box<dyn Store>);

fn openers() -> Vec<Opener> {
    vec![
        ("ceiling: raw preallocated fdatasync", true, false, |d| {
            Box::new(Ceiling::open(d, 256 << 20))
        }),
        ("AeroDB (linked)", false, true, |d| Box::new(Aero::open(d))),
        ("SQLite WAL, synchronous=FULL", false, false, |d| {
            Box::new(Sqlite::open(d))
        }),
        ("fjall 3, persist(SyncData)", false, false, |d| {
            Box::new(Fjall::open(d))
        }),
        ("redb 4, Durability::Immediate", false, false, |d| {
            Box::new(Redb::open(d))
        }),
        #[cfg(feature = "rocksdb")]
        ("RocksDB (Debian's 7.8), sync=true", false, false, |d| {
            Box::new(aerodb_benches::peers::Rocks::open(d))
        }),
    ]
}

/// Runs `f` for every system, interleaved over `reps` repetitions, each on a fresh directory.
fn interleaved(
    dir: &Path,
    tag: &str,
    reps: u64,
    systems: &[Opener],
    f: &dyn Fn(&Arc<dyn Store>) -> Run,
) -> Vec<Series> {
    let mut out: Vec<Series> = systems.iter().map(|(n, c, a, _)| series(n, *c, *a)).collect();
    for rep in 0..reps {
        for (i, (name, _, _, open)) in systems.iter().enumerate() {
            let d = dir.join(format!("{tag}-{i}-{rep}"));
            let store: Arc<dyn Store> = Arc::from(open(&d));
            let run = f(&store);
            eprintln!("  {tag} rep {}/{reps}: {name}: {:.0}/s", rep + 1, run.rate());
            out[i].runs.push(measure(&run));
            drop(store);
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    out
}

fn local(dir: &Path, reps: u64, n: &Counts, rt: &tokio::runtime::Runtime) -> Vec<Workload> {
    let systems = openers();
    let mut out = Vec::new();

    eprintln!("append, 1 appender ({} records per run)", n.single);
    let single = n.single;
    out.push(Workload {
        id: "append-1",
        title: "Durable append, 1 appender, 256 B".into(),
        unit: "records/s",
        lower_is_better: false,
        series: interleaved(dir, "single", reps, &systems, &move |s| {
            let s = s.clone();
            let k = AtomicU64::new(0);
            run_threads(1, single, move || {
                s.put(k.fetch_add(1, Ordering::Relaxed), &VALUE)
            })
        }),
    });

    eprintln!(
        "append, 64 concurrent appenders ({} records per run)",
        n.concurrent
    );
    let per = n.concurrent / 64;
    let mut w = Workload {
        id: "append-64",
        title: "Durable append, 64 concurrent appenders, one record each, 256 B".into(),
        unit: "records/s",
        lower_is_better: false,
        series: interleaved(dir, "concurrent", reps, &systems, &move |s| {
            let s = s.clone();
            let k = Arc::new(AtomicU64::new(0));
            run_threads(64, per, move || s.put(k.fetch_add(1, Ordering::Relaxed), &VALUE))
        }),
    };
    // AeroDB over the network, same concurrency.
    let (mut grpc, mut rest) = (
        series("AeroDB over gRPC (loopback)", false, false),
        series("AeroDB over REST (loopback)", false, false),
    );
    for rep in 0..reps {
        let d = dir.join(format!("net-{rep}"));
        let server = start_server(rt, &d, Role::Primary, None, 0);
        let keys = Arc::new(AtomicU64::new(0));
        let g = net::grpc_appends(rt, server.bound.grpc, TOKEN, 64, 8, n.concurrent, 0.0, &keys);
        let r = net::rest_appends(rt, server.bound.http, TOKEN, 64, n.concurrent, &keys);
        eprintln!(
            "  concurrent rep {}/{reps}: gRPC {:.0}/s, REST {:.0}/s",
            rep + 1,
            g.rate(),
            r.rate()
        );
        grpc.runs.push(measure(&g));
        rest.runs.push(measure(&r));
        server.stop(rt).expect("stop server");
        let _ = std::fs::remove_dir_all(&d);
    }
    w.series.push(grpc);
    w.series.push(rest);
    out.push(w);

    eprintln!("append_batch of 64 ({} records per run)", n.batch);
    let batches = n.batch / 64;
    out.push(Workload {
        id: "batch-64",
        title: "Durable append_batch of 64 records, 256 B, 1 appender".into(),
        unit: "records/s",
        lower_is_better: false,
        series: interleaved(dir, "batch", reps, &systems, &move |s| {
            let mut lat = Vec::with_capacity(batches as usize);
            let start = Instant::now();
            for b in 0..batches {
                let keys: Vec<u64> = (b * 64..(b + 1) * 64).collect();
                let t = Instant::now();
                s.put_batch(&keys, &VALUE);
                lat.push(t.elapsed());
            }
            Run {
                ops: batches * 64,
                elapsed: start.elapsed(),
                latencies: lat,
            }
        }),
    });

    eprintln!(
        "point reads ({} records loaded, then as many random reads)",
        n.reads
    );
    let reads = n.reads;
    let readers: Vec<Opener> = systems.into_iter().filter(|s| !s.1).collect();
    out.push(Workload {
        id: "reads",
        title: format!("Point reads of {reads} records (256 B values), 1 reader"),
        unit: "reads/s",
        lower_is_better: false,
        series: interleaved(dir, "reads", reps, &readers, &move |s| {
            for b in 0..reads.div_ceil(1000) {
                let keys: Vec<u64> = (b * 1000..((b + 1) * 1000).min(reads)).collect();
                s.put_batch(&keys, &VALUE);
            }
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let mut lat = Vec::with_capacity(reads as usize);
            let start = Instant::now();
            for _ in 0..reads {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = Instant::now();
                assert!(s.get(x % reads).is_some(), "a loaded key is missing");
                lat.push(t.elapsed());
            }
            Run {
                ops: reads,
                elapsed: start.elapsed(),
                latencies: lat,
            }
        }),
    });

    out.push(replay(dir, reps, n.replay));
    out.push(proofs(dir, reps, n.proofs));
    out
}

/// Verified replay: reopening AeroDB reads every frame (CRC) and rehashes every record (chain); the ceiling
/// reads the same segment files sequentially with no checks.
fn replay(dir: &Path, reps: u64, records: u64) -> Workload {
    eprintln!("verified replay of {records} records");
    let d = dir.join("replay");
    let bytes = {
        let a = Aero::open(&d);
        for b in 0..records.div_ceil(1000) {
            let keys: Vec<u64> = (b * 1000..((b + 1) * 1000).min(records)).collect();
            a.put_batch(&keys, &VALUE);
        }
        a.0.wal_stats().bytes_written
    };
    let (mut ceiling, mut aero) = (
        series("ceiling: sequential read of the segments", true, false),
        series("AeroDB open (every CRC and record hash)", false, true),
    );
    for rep in 0..reps {
        let t = Instant::now();
        let mut read = 0u64;
        for e in std::fs::read_dir(d.join("wal")).expect("wal dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "seg") {
                read += std::fs::read(&p).expect("read segment").len() as u64;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        ceiling.runs.push(Measure {
            rate: read as f64 / secs / 1e9,
            ..Measure::default()
        });
        let db = aerodb_engine::Db::open(&d, aerodb_engine::Options::default()).expect("reopen");
        let r = db.open_report();
        let verify = r.wal_recovery + r.chain_verify;
        aero.runs.push(Measure {
            rate: bytes as f64 / verify.as_secs_f64() / 1e9,
            ..Measure::default()
        });
        eprintln!(
            "  replay rep {}/{reps}: {:.2} GB/s verified",
            rep + 1,
            bytes as f64 / verify.as_secs_f64() / 1e9
        );
        drop(db);
    }
    let _ = std::fs::remove_dir_all(&d);
    Workload {
        id: "replay",
        title: format!(
            "Recovery / verified replay of a {:.0} MB log (page cache warm)",
            bytes as f64 / 1e6
        ),
        unit: "GB/s",
        lower_is_better: false,
        series: vec![ceiling, aero],
    }
}

/// Inclusion proofs at `leaves` leaves: generation and verification per second (AeroDB only; no peer has them).
fn proofs(dir: &Path, reps: u64, leaves: u64) -> Workload {
    eprintln!("inclusion proofs at {leaves} leaves");
    let d = dir.join("proofs");
    let a = Aero::open(&d);
    for b in 0..leaves.div_ceil(1000) {
        let keys: Vec<u64> = (b * 1000..((b + 1) * 1000).min(leaves)).collect();
        a.put_batch(&keys, &VALUE);
    }
    let db = a.0.clone();
    let root = db.root_at(leaves).expect("root");
    let (mut gen, mut ver) = (
        series("AeroDB: generate", false, true),
        series("AeroDB: verify", false, false),
    );
    let n = 100_000u64.min(leaves * 4);
    for _ in 0..reps {
        let mut x = 12345u64;
        let mut proofs = Vec::with_capacity(1000);
        let t = Instant::now();
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = x % leaves + 1;
            let p = db
                .inclusion_proof(aerodb_wal::CommitId(c), leaves)
                .expect("proof");
            if i < 1000 {
                proofs.push((c, p));
            }
        }
        gen.runs.push(Measure {
            rate: n as f64 / t.elapsed().as_secs_f64(),
            ..Measure::default()
        });
        let leaves_of: Vec<_> = proofs
            .iter()
            .map(|(c, _)| {
                aerodb_engine::merkle::leaf_hash(
                    &db.record(aerodb_wal::CommitId(*c))
                        .expect("record")
                        .expect("exists")
                        .hash,
                )
            })
            .collect();
        let t = Instant::now();
        let rounds = n / 1000;
        for _ in 0..rounds {
            for ((_, p), leaf) in proofs.iter().zip(&leaves_of) {
                assert!(aerodb_engine::merkle::verify_inclusion(
                    leaf,
                    p.leaf_index,
                    p.tree_size,
                    &p.hashes,
                    &root
                ));
            }
        }
        ver.runs.push(Measure {
            rate: (rounds * 1000) as f64 / t.elapsed().as_secs_f64(),
            ..Measure::default()
        });
    }
    drop(db);
    drop(a);
    let _ = std::fs::remove_dir_all(&d);
    Workload {
        id: "proofs",
        title: format!(
            "Inclusion proofs at {leaves} leaves (targets: generate ≥ 500k/s, verify ≥ 400k/s at 1M)"
        ),
        unit: "proofs/s",
        lower_is_better: false,
        series: vec![gen, ver],
    }
}

fn tokens(dir: &Path) -> PathBuf {
    let p = dir.join("tokens.toml");
    std::fs::create_dir_all(dir).expect("dir");
    aerodb_server::auth::write_secret_file(
        &p,
        format!(
            "[[tokens]]\nname = \"bench\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n\n\
             [[tokens]]\nname = \"replica\"\nrole = \"replicator\"\ntoken = \"{REPLICATOR}\"\n"
        ),
    )
    .expect("tokens");
    p
}

/// Starts a server in `dir/data` on its own runtime threads; a replica follows `primary` (gRPC address).
fn start_server(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    role: Role,
    primary: Option<(&str, &Path)>,
    sync_replicas: usize,
) -> Running {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut config = Config {
        role,
        node_id: format!("{role:?}").to_lowercase(),
        max_concurrent_requests: 1024,
        max_concurrent_streams: 256,
        request_timeout: Duration::from_secs(30),
        checkpoint_every_records: 100_000,
        sync_replicas,
        ..Config::local(data.clone(), tokens(dir))
    };
    if let Some((url, key_from)) = primary {
        std::fs::copy(key_from.join("checkpoint.key"), data.join("checkpoint.key"))
            .expect("copy the log key");
        let token = dir.join("replicator.token");
        aerodb_server::auth::write_secret_file(&token, REPLICATOR).expect("token");
        config.primary = Some(url.to_owned());
        config.primary_token_file = Some(token);
    }
    let node = aerodb_server::open_node(config).expect("open node");
    Running::start(rt, node).expect("start server")
}

fn replication(dir: &Path, reps: u64, n: &Counts, rt: &tokio::runtime::Runtime) -> Vec<Workload> {
    let lag_title = format!(
        "Async replication: apply lag at {:.0} records/s offered by 8 clients for {:.0} s",
        n.repl_rate, n.repl_seconds
    );
    let mut lag50 = Workload {
        id: "repl-lag-p50",
        title: format!("{lag_title} — p50"),
        unit: "ms",
        lower_is_better: true,
        series: vec![
            series("AeroDB (primary → replica, gRPC stream)", false, true),
            series("PostgreSQL 15 streaming replication", false, false),
        ],
    };
    let mut lag99 = Workload {
        id: "repl-lag-p99",
        title: format!("{lag_title} — p99"),
        unit: "ms",
        lower_is_better: true,
        series: lag50.series.clone(),
    };
    let sync_title = format!(
        "Synchronous commit (a replica flushed it), 1 client, {} commits",
        n.sync_ops
    );
    let mut sync50 = Workload {
        id: "sync-p50",
        title: format!("{sync_title} — p50 latency"),
        unit: "ms",
        lower_is_better: true,
        series: vec![
            series("AeroDB --sync-replicas 1 (gRPC Append)", false, true),
            series("PostgreSQL synchronous_commit=on", false, false),
            series(
                "AeroDB --sync-replicas 1 (REST, HTTP/1.1 keep-alive)",
                false,
                false,
            ),
            series(
                "AeroDB --sync-replicas 1 (gRPC AppendStream, one stream)",
                false,
                false,
            ),
        ],
    };
    let mut sync99 = Workload {
        id: "sync-p99",
        title: format!("{sync_title} — p99 latency"),
        unit: "ms",
        lower_is_better: true,
        series: sync50.series.clone(),
    };
    let total = (n.repl_rate * n.repl_seconds) as u64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for rep in 0..reps {
        // AeroDB, asynchronous: per-batch apply lag measured by the primary.
        let d = dir.join(format!("aero-repl-{rep}"));
        let p = start_server(rt, &d.join("p"), Role::Primary, None, 0);
        let r = start_server(
            rt,
            &d.join("r"),
            Role::Replica,
            Some((&format!("http://{}", p.bound.grpc), &d.join("p/data"))),
            0,
        );
        let keys = Arc::new(AtomicU64::new(0));
        // Warm up, then measure.
        let _ = net::grpc_appends(rt, p.bound.grpc, TOKEN, 8, 2, 1000, 0.0, &keys);
        let _ = net::wait_applied(
            r.bound.http,
            TOKEN,
            keys.load(Ordering::Relaxed),
            Duration::from_secs(120),
        );
        let replicas = p.replicas.clone();
        replicas.take_lag_samples();
        let _ = net::grpc_appends(rt, p.bound.grpc, TOKEN, 8, 2, total, n.repl_rate, &keys);
        let _ = net::wait_applied(
            r.bound.http,
            TOKEN,
            keys.load(Ordering::Relaxed),
            Duration::from_secs(120),
        );
        let lags = replicas.take_lag_samples();
        lag50.series[0].runs.push(Measure {
            rate: ms(quantile(&lags, 0.5)),
            ..Measure::default()
        });
        lag99.series[0].runs.push(Measure {
            rate: ms(quantile(&lags, 0.99)),
            ..Measure::default()
        });
        eprintln!(
            "  rep {}/{reps}: AeroDB async lag p50 {:.2} ms p99 {:.2} ms ({} batches)",
            rep + 1,
            ms(quantile(&lags, 0.5)),
            ms(quantile(&lags, 0.99)),
            lags.len()
        );
        r.stop(rt).expect("stop replica");
        p.stop(rt).expect("stop primary");
        let _ = std::fs::remove_dir_all(&d);

        // PostgreSQL, asynchronous: replay_lag sampled from pg_stat_replication every 2 ms under the same load.
        // Under the system temp directory: the `postgres` user must be able to reach it (a checkout under /root
        // is not), and it is the same file system here.
        let d = std::env::temp_dir().join(format!("aerodb-bench-pg-{}-{rep}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        match PgPair::start(&d) {
            Ok(pg) => {
                pg.set_synchronous(false).expect("async");
                let samples = pg_async(&pg, n.repl_rate, total);
                lag50.series[1].runs.push(Measure {
                    rate: ms(quantile(&samples, 0.5)),
                    ..Measure::default()
                });
                lag99.series[1].runs.push(Measure {
                    rate: ms(quantile(&samples, 0.99)),
                    ..Measure::default()
                });
                eprintln!(
                    "  rep {}/{reps}: PostgreSQL async replay_lag p50 {:.2} ms p99 {:.2} ms ({} samples)",
                    rep + 1,
                    ms(quantile(&samples, 0.5)),
                    ms(quantile(&samples, 0.99)),
                    samples.len()
                );
                pg.set_synchronous(true).expect("sync");
                let lat = pg_sync(&pg, n.sync_ops);
                sync50.series[1].runs.push(Measure {
                    rate: ms(quantile(&lat, 0.5)),
                    ..Measure::default()
                });
                sync99.series[1].runs.push(Measure {
                    rate: ms(quantile(&lat, 0.99)),
                    ..Measure::default()
                });
                eprintln!(
                    "  rep {}/{reps}: PostgreSQL sync commit p50 {:.2} ms p99 {:.2} ms",
                    rep + 1,
                    ms(quantile(&lat, 0.5)),
                    ms(quantile(&lat, 0.99))
                );
            }
            Err(e) => panic!("PostgreSQL did not start (install Debian's postgresql package): {e}"),
        }
        let _ = std::fs::remove_dir_all(&d);

        // AeroDB, synchronous: one client, each append acknowledged after the replica flushed it.
        let d = dir.join(format!("aero-sync-{rep}"));
        let p = start_server(rt, &d.join("p"), Role::Primary, None, 1);
        let r = start_server(
            rt,
            &d.join("r"),
            Role::Replica,
            Some((&format!("http://{}", p.bound.grpc), &d.join("p/data"))),
            0,
        );
        let _ = net::wait_for_status(
            p.bound.http,
            TOKEN,
            Duration::from_secs(30),
            "the replica never connected",
            |v| v["can_accept_protected_writes"] == true,
        );
        let keys = Arc::new(AtomicU64::new(0));
        let _ = net::grpc_appends(rt, p.bound.grpc, TOKEN, 1, 1, 200, 0.0, &keys);
        let run = net::grpc_appends(rt, p.bound.grpc, TOKEN, 1, 1, n.sync_ops, 0.0, &keys);
        // The same commits over REST: one keep-alive HTTP/1.1 connection, the protocol nearest to PostgreSQL's
        // own (a request, a response, no HTTP/2 framing).
        let _ = net::rest_appends(rt, p.bound.http, TOKEN, 1, 200, &keys);
        let rest = net::rest_appends(rt, p.bound.http, TOKEN, 1, n.sync_ops, &keys);
        // And over one gRPC `AppendStream`: the next append is sent once the previous one is answered, as above,
        // without a new HTTP/2 stream (headers and trailers) per commit.
        let _ = net::grpc_stream_appends(rt, p.bound.grpc, TOKEN, 1, 1, 200, &keys);
        let stream = net::grpc_stream_appends(rt, p.bound.grpc, TOKEN, 1, 1, n.sync_ops, &keys);
        for (series, r) in [(0, &run), (2, &rest), (3, &stream)] {
            for (w, q) in [(&mut sync50, 0.5), (&mut sync99, 0.99)] {
                w.series[series].runs.push(Measure {
                    rate: ms(quantile(&r.latencies, q)),
                    ..Measure::default()
                });
            }
        }
        eprintln!(
            "  rep {}/{reps}: AeroDB sync commit p50 / p99: {:.2} / {:.2} ms (gRPC Append), {:.2} / {:.2} ms (REST), \
             {:.2} / {:.2} ms (gRPC AppendStream)",
            rep + 1,
            ms(quantile(&run.latencies, 0.5)),
            ms(quantile(&run.latencies, 0.99)),
            ms(quantile(&rest.latencies, 0.5)),
            ms(quantile(&rest.latencies, 0.99)),
            ms(quantile(&stream.latencies, 0.5)),
            ms(quantile(&stream.latencies, 0.99))
        );
        r.stop(rt).expect("stop replica");
        p.stop(rt).expect("stop primary");
        let _ = std::fs::remove_dir_all(&d);
    }
    let mut out = vec![lag50, lag99, sync50, sync99];
    for w in &mut out {
        w.series.retain(|s| !s.runs.is_empty());
    }
    out
}

/// 8 connections insert `total` rows paced to `rate` per second (autocommit, asynchronous replication) while a
/// ninth samples `replay_lag` every 2 ms; returns the non-null samples.
fn pg_async(pg: &PgPair, rate: f64, total: u64) -> Vec<Duration> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let mut c = pg.connect().expect("connect");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let row = c
                    .query_one(
                        "SELECT extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication LIMIT 1",
                        &[],
                    )
                    .expect("sample");
                if let Some(s) = row.get::<_, Option<f64>>(0) {
                    v.push(Duration::from_secs_f64(s));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            v
        })
    };
    let per = total / 8;
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..8u64 {
            let mut client = pg.connect().expect("connect");
            s.spawn(move || {
                let stmt = client
                    .prepare("INSERT INTO kv (k, v) VALUES ($1, $2)")
                    .expect("prepare");
                for i in 0..per {
                    let slot = Duration::from_secs_f64((i * 8 + c) as f64 / rate);
                    if let Some(wait) = slot.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    client
                        .execute(&stmt, &[&((c << 40 | i) as i64), &&VALUE[..]])
                        .expect("insert");
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler")
}

/// One connection inserts `n` rows, each commit waiting for the standby (synchronous_commit=on); latencies.
fn pg_sync(pg: &PgPair, n: u64) -> Vec<Duration> {
    let mut c = pg.connect().expect("connect");
    let stmt = c
        .prepare("INSERT INTO kv (k, v) VALUES ($1, $2)")
        .expect("prepare");
    for i in 0..200u64 {
        c.execute(&stmt, &[&((1u64 << 50 | i) as i64), &&VALUE[..]])
            .expect("warm-up");
    }
    (0..n)
        .map(|i| {
            let t = Instant::now();
            c.execute(&stmt, &[&((1u64 << 51 | i) as i64), &&VALUE[..]])
                .expect("insert");
            t.elapsed()
        })
        .collect()
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    args.retain(|a| a != "--quick");
    let mut mode = "all".to_owned();
    let mut reps = if quick { 1 } else { 3 };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "all" | "local" | "replication" => mode = a,
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| *v > 0)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let n = if quick {
        Counts {
            single: 200,
            concurrent: 1280,
            batch: 3200,
            reads: 2000,
            replay: 5000,
            proofs: 5000,
            repl_rate: 500.0,
            repl_seconds: 1.0,
            sync_ops: 100,
        }
    } else {
        Counts {
            single: 3000,
            concurrent: 12800,
            batch: 64000,
            reads: 50_000,
            replay: 400_000,
            proofs: 1_000_000,
            repl_rate: 2000.0,
            repl_seconds: 5.0,
            sync_ops: 2000,
        }
    };
    let dir = bench_dir("aerodb-bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut workloads = Vec::new();
    if mode != "replication" {
        workloads.extend(local(&dir, reps, &n, &rt));
    }
    if mode != "local" {
        workloads.extend(replication(&dir, reps, &n, &rt));
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Only a full run (every workload, full counts) updates the committed docs; a quick or partial one writes
    // under target/.
    let partial = quick || mode != "all";
    let out_dir = if partial {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/bench-{}", if quick { "quick" } else { &mode }))
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
    };
    write_outputs(&out_dir, &workloads, reps, started.elapsed(), partial);
}

fn usage() -> ! {
    eprintln!("usage: aerodb-bench [all|local|replication] [--reps N] [--quick]");
    std::process::exit(2)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cores} cores ({cpu}), {mem} GiB RAM")
}

/// Below this median `fdatasync` time (the ceiling's 1-writer p50) a disk is called fast: there, CPU per record
/// decides the ratios; above it, the sync does.
const FAST_DISK_P50_US: f64 = 80.0;

/// Which kind of disk the run had, from the ceiling's median commit latency at 1 writer (one `pwrite` and one
/// `fdatasync` of 256 B), the median over the repetitions.
fn disk(workloads: &[Workload]) -> String {
    let p50s: Vec<f64> = workloads
        .iter()
        .filter(|w| w.id == "append-1")
        .flat_map(|w| w.series.iter().filter(|s| s.ceiling))
        .flat_map(|s| s.runs.iter().map(|m| m.p50_us))
        .filter(|p| *p > 0.0)
        .collect();
    if p50s.is_empty() {
        return "Disk: not measured in this run (no 1-writer ceiling).".to_owned();
    }
    let (p50, _, _) = aerodb_benches::median_min_max(&p50s);
    let kind = if p50 < FAST_DISK_P50_US { "fast" } else { "slow" };
    format!(
        "Disk: **{kind}** (the ceiling's median `fdatasync` of 256 B at 1 writer took {p50:.0} µs; fast means under \
         {FAST_DISK_P50_US:.0} µs)."
    )
}

fn write_outputs(dir: &Path, workloads: &[Workload], reps: u64, took: Duration, partial: bool) {
    std::fs::create_dir_all(dir.join("img")).expect("output dir");
    let disk = disk(workloads);
    eprintln!("{disk}");
    let mut md = format!(
        "<!-- Written by `cargo run -p aerodb-benches --release --bin aerodb-bench -- all`; do not edit by hand. -->\n\
         Machine: {}. {disk} Repetitions: {reps}, interleaved; medians with min–max. Run time {:.0} s.\n\n",
        machine(),
        took.as_secs_f64()
    );
    for w in workloads {
        md.push_str(&w.markdown());
        md.push_str(&format!("\n![{}](img/{}.svg)\n\n", w.title, w.id));
        std::fs::write(dir.join("img").join(format!("{}.svg", w.id)), w.svg()).expect("write svg");
    }
    std::fs::write(dir.join("performance-peers.md"), &md).expect("write markdown");
    // The full run also replaces the generated part of docs/performance.md.
    let perf = dir.join("performance.md");
    if !partial {
        if let Ok(text) = std::fs::read_to_string(&perf) {
            let (begin, end) = ("<!-- aerodb-bench:begin -->", "<!-- aerodb-bench:end -->");
            if let (Some(b), Some(e)) = (text.find(begin), text.find(end)) {
                let updated = format!("{}{begin}\n{md}{}", &text[..b], &text[e..]);
                std::fs::write(&perf, updated).expect("write performance.md");
            }
        }
    }
    let json = serde_json::json!({
        "machine": machine(), "reps": reps, "partial": partial, "seconds": took.as_secs_f64(),
        "workloads": workloads.iter().map(Workload::json).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("bench.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write json");
    println!("{md}");
    eprintln!(
        "wrote {}/performance-peers.md, bench.json and img/*.svg",
        dir.display()
    );
}
