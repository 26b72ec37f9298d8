//! `net-ratios`: durable appends over the network on loopback against the engine in-process, in one run
//! (issue 4's target: REST and gRPC at 64 concurrent clients reach ≥ 50% of the in-process rate; p99 reported).
//!
//! Interleaved rounds of: the engine linked in-process (64 appender threads); gRPC `Append` calls (64 concurrent
//! clients over 2 HTTP/2 connections); REST (64 clients, one keep-alive HTTP/1.1 connection each); gRPC
//! `AppendStream` (64 writers, each with one stream open for the run, over the same connections); and gRPC
//! `GetKey` calls (64 readers, no write: the ceiling of unary calls through the same server and client). Every client
//! sends its next append only once the previous one is answered. The server runs in this process on its own
//! runtime; clients and server share the machine's cores, as they would on one host. 256-byte values, every
//! append durable (fdatasync) before it is acknowledged.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin net-ratios -- [--rounds N] [--ops N] [--quick]`
//! Environment: `GRPC_CONNS` (HTTP/2 connections, 2); `SERVER_THREADS` (the server's runtime workers; unset, the
//! server's default, as `aerodb-server` picks it: one fewer than the CPUs, at least one); `CLIENT_THREADS` (the load
//! generator's runtime workers, 2). The runtimes name their threads `aerodb-worker` and `client-rt`, so a profile
//! can be split between them.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aerodb_benches::{
    bench_dir, median_min_max, net, process_cpu_time as cpu_time, quantile, run_threads, Run,
};
use aerodb_engine::{Db, Op, Options, Payload};
use aerodb_server::{config::Config, httpc};
use bytes::Bytes;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 64;
const TOKEN: &str = "bench-writer-token-0123456789";

fn payload(k: u64) -> Payload {
    Payload::Batch(vec![Op::Put {
        key: Bytes::from(format!("key-{k:012}")),
        value: Bytes::from(vec![b'v'; 256]),
    }])
}

/// Records per group commit and mean fsync time on the server, from its metrics.
fn bound_stats(http: SocketAddr) -> Result<String, Box<dyn std::error::Error>> {
    let m = String::from_utf8(httpc::call(http, "GET", "/metrics", Some(TOKEN), None)?.body)?;
    let get = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(f64::NAN)
    };
    let records = get("aerodb_appended_records_total ");
    let commits = get("aerodb_wal_group_commits_total ");
    let fsyncs = get("aerodb_wal_fsyncs_total ");
    let fsync_s = get("aerodb_wal_fsync_seconds_total ");
    Ok(format!(
        "{:.1} records per group commit, fsync mean {:.0} µs",
        records / commits,
        fsync_s / fsyncs * 1e6
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut rounds, mut ops) = (5u64, 32_000u64);
    aerodb_benches::parse_flags(
        "net-ratios [--rounds N] [--ops N] [--quick]",
        &mut [("--rounds", &mut rounds), ("--ops", &mut ops)],
        &[("--rounds", 2), ("--ops", 3_200)],
    );
    let per_client = (ops / CLIENTS as u64).max(1);
    let dir = bench_dir("net-ratios");
    let tokens = dir.join("tokens.toml");
    aerodb_server::auth::write_secret_file(
        &tokens,
        format!("[[tokens]]\nname = \"bench\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n"),
    )?;
    let config = Config {
        node_id: "bench".into(),
        max_concurrent_requests: 1024,
        max_concurrent_streams: 256,
        request_timeout: Duration::from_secs(30),
        checkpoint_every_records: 100_000,
        ..Config::local(dir.join("server"), tokens)
    };
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // The server's own runtime, as `aerodb-server` builds it (workers: one fewer than the CPUs, at least one).
    let config = Config {
        worker_threads: env("SERVER_THREADS", 0),
        ..config
    };
    let server_rt = aerodb_server::runtime(&config)?;
    let server_workers = config.effective_worker_threads();
    let node = aerodb_server::open_node(config).map_err(|e| e.to_string())?;
    let server = aerodb_server::Running::start(&server_rt, node)?;
    let bound = server.bound.clone();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("CLIENT_THREADS", 2))
        .thread_name("client-rt")
        .enable_all()
        .build()?;
    let db = Arc::new(Db::open(
        dir.join("engine"),
        Options {
            checkpoint_every_records: 100_000,
            ..Options::default()
        },
    )?);
    let conns = env("GRPC_CONNS", 2);
    let keys = Arc::new(AtomicU64::new(0));
    let (mut eng, mut grpc, mut rest, mut stream) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gets = Vec::new();
    let mut cpu = [Duration::ZERO; 5];
    for round in 0..=rounds {
        eprintln!(
            "round {round}/{rounds}{}: engine in-process x{CLIENTS}, gRPC x{CLIENTS}, REST x{CLIENTS}, gRPC streams x{CLIENTS}, gRPC GetKey x{CLIENTS} ({} calls each)",
            if round == 0 { " (warm-up, not counted)" } else { "" },
            per_client * CLIENTS as u64
        );
        let (d, k) = (db.clone(), keys.clone());
        let c0 = cpu_time();
        let e = run_threads(CLIENTS, per_client, move || {
            d.append("bench", payload(k.fetch_add(1, Ordering::Relaxed)))
                .expect("engine append failed during the benchmark");
        });
        let c1 = cpu_time();
        let total = per_client * CLIENTS as u64;
        let g = net::grpc_appends(&client_rt, bound.grpc, TOKEN, CLIENTS, conns, total, 0.0, &keys);
        let c2 = cpu_time();
        let r = net::rest_appends(&client_rt, bound.http, TOKEN, CLIENTS, total, &keys);
        let c3 = cpu_time();
        let s = net::grpc_stream_appends(&client_rt, bound.grpc, TOKEN, CLIENTS, conns, total, &keys);
        let c4 = cpu_time();
        let written = keys.load(Ordering::Relaxed);
        let reads = Arc::new(AtomicU64::new(0));
        let q = net::grpc_gets(
            &client_rt, bound.grpc, TOKEN, CLIENTS, conns, total, written, &reads,
        );
        let c5 = cpu_time();
        if round > 0 {
            cpu[0] += c1 - c0;
            cpu[1] += c2 - c1;
            cpu[2] += c3 - c2;
            cpu[3] += c4 - c3;
            cpu[4] += c5 - c4;
            gets.push(q);
            eng.push(e);
            grpc.push(g);
            rest.push(r);
            stream.push(s);
        }
    }
    let figures = bound_stats(bound.http)?;
    server.stop(&server_rt)?;
    drop(db);
    std::fs::remove_dir_all(&dir)?;

    let rate = |v: &[Run]| median_min_max(&v.iter().map(Run::rate).collect::<Vec<_>>());
    let lat = |v: &[Run], q: f64| {
        let all: Vec<Duration> = v.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        quantile(&all, q).as_secs_f64() * 1e3
    };
    let e = rate(&eng);
    let per_op = |i: usize, runs: &[Run]| {
        let ops: u64 = runs.iter().map(|r| r.ops).sum();
        cpu[i].as_secs_f64() * 1e6 / ops.max(1) as f64
    };
    println!(
        "| durable appends, {CLIENTS} concurrent clients, 256 B values | records/s median (min–max) | p50 ms | p99 ms | CPU µs per append (clients + server) | ratio to in-process | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| engine in-process ({CLIENTS} threads) | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {:.1} | 1.00 | — |",
        e.0,
        e.1,
        e.2,
        lat(&eng, 0.5),
        lat(&eng, 0.99),
        per_op(0, &eng)
    );
    for (i, name, runs, target) in [
        (
            1,
            format!("gRPC Append ({conns} HTTP/2 connections)"),
            &grpc,
            "≥ 0.50",
        ),
        (
            2,
            format!("REST ({CLIENTS} keep-alive connections)"),
            &rest,
            "≥ 0.50",
        ),
        (
            3,
            format!("gRPC AppendStream ({CLIENTS} streams, {conns} HTTP/2 connections)"),
            &stream,
            "≥ 0.50",
        ),
        (
            4,
            format!("gRPC GetKey, no write ({conns} HTTP/2 connections; the unary-call ceiling here)"),
            &gets,
            "—",
        ),
    ] {
        let r = rate(runs);
        println!(
            "| {name} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {:.1} | **{:.2}** | {target} |",
            r.0,
            r.1,
            r.2,
            lat(runs, 0.5),
            lat(runs, 0.99),
            per_op(i, runs),
            r.0 / e.0
        );
    }
    println!(
        "\nrounds: {rounds}, appends per measurement: {}; server: {server_workers} runtime worker(s), {figures}",
        per_client * CLIENTS as u64
    );
    Ok(())
}
