//! `cosign`: how long a checkpoint takes to be cosigned by two replicas acting as witnesses (issue 22), and what it
//! costs the primary. A real etcd and three `aerodb-server` processes on loopback under `--authority etcd` with
//! `--witness-quorum 2`; background checkpoints are off. Each round appends one record, has the leader sign a
//! checkpoint (`POST /v1/checkpoints`) and then polls `GET /v1/checkpoints/latest?cosigned=2` until that
//! checkpoint is published with both cosignatures (a poll every 200 us). The latency is from the signing
//! request's answer to the first poll that sees it (a poll and its pause cost about a third of a millisecond, so
//! this overstates it by up to that). The cost on the primary: its CPU time (user + system, from `/proc`) over
//! rounds that append, sign a checkpoint and pause 20 ms without polling, divided by the rounds, once with the two
//! witnesses cosigning and once with them stopped; the difference is what cosigning costs the primary per
//! checkpoint (receiving and verifying two cosignatures, publishing the cosigned note durably).
//!
//! Usage: `cargo run -p aerodb-benches --release --bin cosign -- [--rounds N] [--quick]` (needs `etcd` from
//! Debian's `etcd-server`).

use std::time::{Duration, Instant};

use aerodb_benches::{bench_dir, median_min_max, quantile};
use aerodb_server::{
    httpc,
    lab::{self, Cluster, ClusterSpec, LAB_ADMIN, LAB_WRITER},
};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    aerodb_benches::cluster_bench_main("cosign", bench)
}

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// A process's CPU time (user + system) so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> R<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').ok_or("malformed /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).ok_or("no utime")?.parse::<u64>()? + f.get(12).ok_or("no stime")?.parse::<u64>()?;
    // The kernel's USER_HZ is 100 on Linux for every architecture this runs on.
    Ok(Duration::from_millis(ticks * 10))
}

fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: Option<&str>) -> R<serde_json::Value> {
    let r = lab::send(addr, &httpc::request("POST", path, Some(token), body, false))?;
    if !(200..300).contains(&r.status) {
        return Err(format!("POST {path}: {} {}", r.status, String::from_utf8_lossy(&r.body)).into());
    }
    Ok(r.json())
}

/// One round: append, sign a checkpoint; with `wait`, the time until it is published with 2 cosignatures, else a
/// 20 ms pause.
fn round(leader: std::net::SocketAddr, i: u64, wait: bool) -> R<Option<Duration>> {
    post(
        leader,
        "/v1/records",
        LAB_WRITER,
        Some(&format!(r#"{{"tenant":"t","event":"e{i}"}}"#)),
    )?;
    let size = post(leader, "/v1/checkpoints", LAB_ADMIN, None)?["size"]
        .as_u64()
        .ok_or("no checkpoint size")?;
    let t0 = Instant::now();
    if !wait {
        std::thread::sleep(Duration::from_millis(20));
        return Ok(None);
    }
    loop {
        std::thread::sleep(Duration::from_micros(200));
        if let Some(v) = lab::get(leader, "/v1/checkpoints/latest?cosigned=2") {
            if v["size"].as_u64().is_some_and(|s| s >= size) {
                return Ok(Some(t0.elapsed()));
            }
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("checkpoint {size} was not cosigned by 2 witnesses within 10 s").into());
        }
    }
}

fn bench() -> R<()> {
    let mut rounds = 300u64;
    aerodb_benches::parse_flags(
        "cosign [--rounds N] [--quick]",
        &mut [("--rounds", &mut rounds)],
        &[("--rounds", 30)],
    );
    let root = bench_dir("cosign");
    let fsync_p50 = aerodb_benches::fsync_p50(&root)?;
    let mut c = Cluster::start(ClusterSpec {
        bin: std::env::current_exe()?,
        bin_args: vec![aerodb_benches::NODE_ARG.into()],
        nodes: 3,
        sync_replicas: 0,
        lease_ttl_ms: 2000,
        proxied: false,
        log: "error".into(),
        data_root: Some(root.clone()),
        extra_args: ["--witness-quorum", "2", "--checkpoint-interval-ms", "3600000"]
            .map(String::from)
            .to_vec(),
    })?;
    let l = c.leader(Duration::from_secs(30))?;
    let leader = c.http(l).ok_or("no leader")?;
    let pid = c.nodes[l].as_ref().ok_or("no leader")?.pid();
    // Both followers connected and cosigning: the first round reaches the quorum.
    round(leader, 0, true)?;
    let mut lat = Vec::new();
    for i in 1..=rounds {
        lat.extend(round(leader, i, true)?);
    }
    let cpu0 = cpu_time(pid)?;
    for i in 1..=rounds {
        round(leader, 5_000 + i, false)?;
    }
    let with = (cpu_time(pid)? - cpu0) / rounds as u32;
    let published = lab::get(leader, "/v1/ha/status").and_then(|v| v["cosigned_size"].as_u64());
    // The same rounds with the witnesses stopped: no cosignature arrives.
    for i in 0..c.nodes.len() {
        if i != l {
            c.kill9(i);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let cpu1 = cpu_time(pid)?;
    for i in 1..=rounds {
        round(leader, 10_000 + i, false)?;
    }
    let without = (cpu_time(pid)? - cpu1) / rounds as u32;
    let ms: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let (p50, min, max) = median_min_max(&ms);
    println!(
        "cosign: 3 nodes (etcd authority), --witness-quorum 2, {rounds} rounds of append + checkpoint; fdatasync p50 \
         {:.0} us on this disk ({})",
        fsync_p50.as_secs_f64() * 1e6,
        if fsync_p50 < Duration::from_micros(80) { "fast" } else { "slow" }
    );
    println!("| checkpoint -> published with 2 cosignatures | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| latency | {p50:.2} | {:.2} | {min:.2} | {max:.2} |",
        quantile(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "primary CPU per round (append + checkpoint): {:.2} ms with 2 witnesses cosigning, {:.2} ms with none: \
         {:.2} ms per checkpoint for cosigning (newest cosigned size after the CPU pass: {})",
        with.as_secs_f64() * 1e3,
        without.as_secs_f64() * 1e3,
        (with.as_secs_f64() - without.as_secs_f64()) * 1e3,
        published.unwrap_or(0)
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
