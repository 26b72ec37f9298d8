//! `failover`: the time from the loss of the primary to the first write acknowledged by the new primary, as a
//! client sees it (issue 19's benchmark). A real etcd and three `aerodb-server` processes on loopback under
//! `--authority etcd` with one synchronous replica; four clients append without pause and follow the leader. Each
//! cycle stops the current primary — SIGKILL and SIGTERM in turn — times the first acknowledgement from another
//! node, then starts the stopped node again and waits until every node follows the leader. At the end the history
//! is checked: every acknowledged write is in the final leader's log with its hash, no CommitId acknowledged twice.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin failover -- [--cycles N] [--ttl-ms N] [--quick]` (needs
//! `etcd` from Debian's `etcd-server`; each node is this program again, running the server's own main).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aerodb_benches::{bench_dir, quantile};
use aerodb_server::lab::{self, check_history, Cluster, ClusterSpec, Writers};
use parking_lot::Mutex;

// As in aerodb-server: the nodes are this program.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> std::process::ExitCode {
    aerodb_benches::cluster_bench_main("failover", bench)
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let (mut cycles, mut ttl_ms) = (10u64, 1000u64);
    aerodb_benches::parse_flags(
        "failover [--cycles N] [--ttl-ms N] [--quick]",
        &mut [("--cycles", &mut cycles), ("--ttl-ms", &mut ttl_ms)],
        &[("--cycles", 2)],
    );
    let bin = std::env::current_exe()?;
    let root = bench_dir("failover");
    // Which disk this run had: the p50 of 2,000 fdatasyncs of 256 bytes into a preallocated file.
    let fsync_p50 = aerodb_benches::fsync_p50(&root)?;
    let mut c = Cluster::start(ClusterSpec {
        bin,
        bin_args: vec![aerodb_benches::NODE_ARG.into()],
        nodes: 3,
        sync_replicas: 1,
        lease_ttl_ms: ttl_ms,
        proxied: false,
        log: "error".into(),
        data_root: Some(root.clone()),
        extra_args: Vec::new(),
    })?;
    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = Writers::start(4, addrs.clone());
    let (mut kill, mut term) = (Vec::new(), Vec::new());
    for cycle in 0..cycles * 2 {
        let l = c.leader(Duration::from_secs(30))?;
        let old = c.http(l).ok_or("the leader is not running")?;
        w.wait_for(w.acked() + 200, Duration::from_secs(30))?;
        let sigkill = cycle % 2 == 0;
        let t0 = Instant::now();
        if sigkill {
            c.kill9(l);
        } else if !c.terminate(l)? {
            return Err("a node did not exit cleanly on SIGTERM".into());
        }
        addrs.lock().retain(|a| *a != old);
        let took = w.first_ack_after(t0, old, Duration::from_secs(30))?;
        let (kind, all) = if sigkill {
            ("SIGKILL", &mut kill)
        } else {
            ("SIGTERM", &mut term)
        };
        all.push(took);
        eprintln!("cycle {}/{}: {kind} -> {:.0} ms", cycle + 1, cycles * 2, ms(took));
        c.restart(l)?;
        addrs
            .lock()
            .push(c.http(l).ok_or("the restarted node is not running")?);
    }
    let l = c.leader(Duration::from_secs(30))?;
    let (acks, unknown) = w.finish();
    let leader = c.http(l).ok_or("no leader")?;
    let tip = lab::ha(leader).and_then(|v| v["commit_id"].as_u64()).unwrap_or(0);
    for (_, a) in c.live() {
        lab::wait_caught_up(a, tip, Duration::from_secs(30))?;
        check_history(&acks, a)?;
    }
    println!(
        "failover: 3 nodes, 1 synchronous replica, lease TTL {ttl_ms} ms, 4 clients appending without pause; \
         fdatasync p50 {:.0} us on this disk"
    , fsync_p50.as_secs_f64() * 1e6);
    println!("| stop | cycles | p50 ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (kind, v) in [("SIGKILL", &kill), ("SIGTERM", &term)] {
        let mut s: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
        s.sort_by(f64::total_cmp);
        let p50 = quantile(v, 0.5);
        println!(
            "| {kind} | {} | {:.0} | {:.0} | {:.0} |",
            v.len(),
            ms(p50),
            s.first().copied().unwrap_or(0.0),
            s.last().copied().unwrap_or(0.0)
        );
    }
    println!(
        "history: {} writes acknowledged across {} terms, all present on every node with their hashes, 0 CommitIds \
         acknowledged twice; {} answered OUTCOME_UNKNOWN",
        acks.len(),
        cycles * 2 + 1,
        unknown.len()
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
