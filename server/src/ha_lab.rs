//! The HA validation lab (`aerodb lab`, seed 003 slices VAL13–VAL17): etcd and a three-node AeroDB cluster as
//! real processes on loopback ports the OS picks, with temporary data, driven through the failover, lag,
//! backup/restore, split-brain and quorum-loss scenarios. Each slice writes one evidence file (`<SLICE>.json`,
//! [`crate::ha_report::SliceEvidence`]): schema version, slice id, timestamps, topology and versions, the raw
//! measurements, and exactly ten named checks. `aerodb ha-report` turns them into the report.
//!
//! Every process is killed and every temporary directory removed when a slice ends or fails (the cluster is
//! dropped) or is interrupted (the CLI calls [`clean_up`] on Ctrl-C: `crate::lab` tracks every process and
//! directory from the moment it is made).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::{
    ha_report::{Check, SliceEvidence, Topology, SCHEMA_VERSION, SLICES},
    httpc,
    lab::{
        self, Cluster, ClusterSpec, LabResult, Writers, LAB_ADMIN, LAB_READER, LAB_REPLICATOR, LAB_WRITER,
    },
};

/// How the lab runs.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Where the evidence files go (created).
    pub out: PathBuf,
    /// Which slices (`VAL13` …; empty: all five).
    pub slices: Vec<String>,
    /// Fewer records and shorter phases (CI).
    pub quick: bool,
    /// The `aerodb-server` program.
    pub server: PathBuf,
    /// The `aerodb` program (backup and restore run through it).
    pub cli: PathBuf,
}

/// After an interruption: kills every process the lab started and removes its temporary data
/// ([`lab::stop_all`]).
pub fn clean_up() {
    lab::stop_all();
}

struct Ctx {
    opts: LabOptions,
    topology: Topology,
    poll: Duration,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// `12.3 ms`, or that it did not happen within the 30 s limit.
fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "not within 30 s".into(), |d| format!("{} ms", ms(d)))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Ten checks, numbered in order.
struct Checks {
    slice: &'static str,
    list: Vec<Check>,
}

impl Checks {
    fn new(slice: &'static str) -> Self {
        Self {
            slice,
            list: Vec::new(),
        }
    }
    fn add(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        let id = format!("{}-{:02}", self.slice, self.list.len() + 1);
        self.list.push(Check {
            id,
            name: name.into(),
            pass,
            detail: detail.into(),
        });
    }
}

/// The median `fdatasync` of 200 writes of 256 bytes (which disk the run had).
fn fsync_p50() -> String {
    let probe = || -> std::io::Result<Duration> {
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        lab::track_dir(dir.path());
        let mut f = std::fs::File::create(dir.path().join("probe"))?;
        let mut v = Vec::new();
        for _ in 0..200 {
            f.write_all(&[7u8; 256])?;
            let t = Instant::now();
            f.sync_data()?;
            v.push(t.elapsed());
        }
        v.sort();
        Ok(v[v.len() / 2])
    };
    match probe() {
        Ok(d) => format!(
            "fdatasync p50 {:.0} us ({} disk)",
            d.as_secs_f64() * 1e6,
            if d < Duration::from_micros(80) {
                "fast"
            } else {
                "slow"
            }
        ),
        Err(e) => format!("fdatasync probe failed: {e}"),
    }
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "etcd not found".into())
}

impl Ctx {
    fn cluster(&self, sync: usize, extra: &[&str]) -> LabResult<Cluster> {
        Cluster::start(ClusterSpec {
            bin: self.opts.server.clone(),
            bin_args: Vec::new(),
            nodes: 3,
            sync_replicas: sync,
            lease_ttl_ms: 1000,
            proxied: false,
            log: "error".into(),
            data_root: None,
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
        })
    }
}

fn leader(c: &Cluster) -> LabResult<(usize, SocketAddr)> {
    let l = c.leader(Duration::from_secs(30))?;
    Ok((l, c.http(l).ok_or("the leader is not running")?))
}

/// Polls every live node but `old` every `poll` until one says it leads; the time since `t0`.
fn wait_new_leader(c: &Cluster, old: usize, t0: Instant, poll: Duration) -> LabResult<(usize, Duration)> {
    let deadline = t0 + Duration::from_secs(30);
    loop {
        for (i, a) in c.live() {
            if i != old && lab::ha(a).is_some_and(|v| v["is_leader"] == true) {
                return Ok((i, t0.elapsed()));
            }
        }
        if Instant::now() > deadline {
            return Err("no new leader within 30 s".into());
        }
        std::thread::sleep(poll);
    }
}

fn post(addr: SocketAddr, path: &str, token: &str, body: Option<&str>) -> LabResult<httpc::Response> {
    lab::send(addr, &httpc::request("POST", path, Some(token), body, false))
        .map_err(|e| format!("POST {path}: {e}"))
}

fn block_on<F: std::future::Future>(f: F) -> LabResult<F::Output> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(f))
        .map_err(|e| format!("a runtime: {e}"))
}

/// An auditor bundle of records `1..=` the newest checkpoint from `grpc`, with `since` (a prior note).
fn bundle(grpc: SocketAddr, since: Option<String>) -> LabResult<(aerodb_engine::audit::Bundle, u64)> {
    block_on(async move {
        let mut client = aerodb_proto::v1::ledger_client::LedgerClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| format!("gRPC to {grpc}: {e}"))?;
        let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {LAB_READER}").parse().map_err(|_| "token")?;
        let mut req = tonic::Request::new(aerodb_proto::v1::LatestCheckpointRequest { cosigned: 0 });
        req.metadata_mut().insert("authorization", auth.clone());
        let size = client
            .latest_checkpoint(req)
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner()
            .size
            .min(crate::audit::MAX_EXPORT);
        let b = crate::audit::export(
            &mut client,
            Some(auth),
            crate::audit::ExportRequest {
                from: 1,
                to: size.max(1),
                tenant: None,
                since,
                cosigned: 0,
            },
            &mut |_, _| {},
        )
        .await?;
        Ok((b, size))
    })?
}

fn evidence(ctx: &Ctx, slice: &str, started: String, measurements: Value, checks: Checks) -> SliceEvidence {
    let name = SLICES.iter().find(|(s, _)| *s == slice).map_or("", |(_, n)| n);
    SliceEvidence {
        schema_version: SCHEMA_VERSION,
        slice: slice.into(),
        name: name.into(),
        started_at: started,
        finished_at: now(),
        topology: ctx.topology.clone(),
        measurements,
        checks: checks.list,
    }
}

/// Runs the slices and writes their evidence into `opts.out`; `progress` hears what happens. Returns the files
/// written. A slice that cannot run at all still writes its evidence, with the error in its failed checks.
pub fn run(opts: LabOptions, progress: &(dyn Fn(&str) + Sync)) -> LabResult<Vec<PathBuf>> {
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let wanted: Vec<&str> = SLICES
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| opts.slices.is_empty() || opts.slices.iter().any(|w| w.eq_ignore_ascii_case(s)))
        .collect();
    if wanted.is_empty() {
        return Err(format!("no such slice among {:?}", SLICES.map(|s| s.0)));
    }
    progress("probing the disk and etcd");
    let ctx = Ctx {
        topology: Topology {
            nodes: 3,
            authority: "etcd".into(),
            aerodb_version: format!("aerodb-server {}", env!("CARGO_PKG_VERSION")),
            etcd_version: etcd_version(),
            sync_replicas: 1,
            lease_ttl_ms: 1000,
            host: format!(
                "{} CPUs; {}",
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                fsync_p50()
            ),
        },
        poll: Duration::from_millis(10),
        opts,
    };
    let mut written = Vec::new();
    for slice in wanted {
        let started = now();
        progress(&format!("{slice}: starting"));
        let e = match slice {
            "VAL13" => val13(&ctx, progress),
            "VAL14" => val14(&ctx, progress),
            "VAL15" => val15(&ctx, progress),
            "VAL16" => val16(&ctx, progress),
            _ => val17(&ctx, progress),
        };
        let e = e.unwrap_or_else(|err| {
            let mut checks = Checks::new(slice_id(slice));
            for _ in 0..10 {
                checks.add("the slice ran", false, format!("the slice failed: {err}"));
            }
            (json!({"error": err}), checks)
        });
        let ev = evidence(&ctx, slice, started, e.0, e.1);
        let path = ctx.opts.out.join(format!("{slice}.json"));
        let text = serde_json::to_string_pretty(&ev).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        let passed = ev.checks.iter().filter(|c| c.pass).count();
        progress(&format!(
            "{slice}: {passed}/10 checks passed -> {}",
            path.display()
        ));
        written.push(path);
    }
    Ok(written)
}

fn slice_id(s: &str) -> &'static str {
    SLICES
        .iter()
        .find(|(id, _)| *id == s)
        .map_or("VAL00", |(id, _)| id)
}

type SliceOut = LabResult<(Value, Checks)>;

/// VAL13: SIGTERM, SIGKILL and three rapid failovers under sustained appends.
fn val13(ctx: &Ctx, progress: &(dyn Fn(&str) + Sync)) -> SliceOut {
    let mut ch = Checks::new("VAL13");
    let mut c = ctx.cluster(1, &[])?;
    let (l, addr) = leader(&c)?;
    ch.add("cluster elected a leader", true, format!("n{} leads", l + 1));
    let key = aerodb_engine::VerifierKey::parse(&c.nodes[l].as_ref().ok_or("no leader")?.verifier_key)
        .map_err(|e| e.to_string())?;
    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = Writers::start(3, addrs.clone());
    let warm = if ctx.opts.quick { 100 } else { 500 };
    let warmed = w.wait_for(warm, Duration::from_secs(30));
    ch.add(
        "sustained appends acknowledged",
        warmed.is_ok(),
        format!("{} of {warm} acknowledged before the first stop", w.acked()),
    );
    // The auditor bundle before: every record up to a checkpoint signed now, strict.
    post(addr, "/v1/checkpoints", LAB_ADMIN, None)?;
    let grpc = c.nodes[l].as_ref().ok_or("no leader")?.grpc;
    let (before, before_size) = bundle(grpc, None)?;
    let before_ok = before.verify(&key, true);
    let cycles = [
        ("SIGTERM", false),
        ("SIGKILL", true),
        ("rapid 1", false),
        ("rapid 2", false),
        ("rapid 3", false),
    ];
    let mut timings: Vec<(String, f64, f64)> = Vec::new();
    for (name, kill) in cycles {
        progress(&format!("VAL13: {name} failover"));
        let (l, old) = leader(&c)?;
        if !name.starts_with("rapid") {
            w.wait_for(w.acked() + warm / 2, Duration::from_secs(30))?;
        }
        let t0 = Instant::now();
        if kill {
            c.kill9(l);
        } else if !c.terminate(l)? {
            return Err(format!("n{} did not exit cleanly on SIGTERM", l + 1));
        }
        addrs.lock().retain(|a| *a != old);
        let (_, detected) = wait_new_leader(&c, l, t0, ctx.poll)?;
        let first_ack = w.first_ack_after(t0, old, Duration::from_secs(30))?;
        timings.push((name.into(), ms(detected), ms(first_ack)));
        c.restart(l)?;
        addrs
            .lock()
            .push(c.http(l).ok_or("the restarted node is not running")?);
    }
    let (l, addr_now) = leader(&c)?;
    let (acks, unknown) = w.finish();
    let tip = lab::ha(addr_now)
        .and_then(|v| v["commit_id"].as_u64())
        .unwrap_or(0);
    let mut history = Ok(());
    for (_, a) in c.live() {
        lab::wait_caught_up(a, tip, Duration::from_secs(30))?;
        if history.is_ok() {
            history = lab::check_history(&acks, a);
        }
    }
    let duplicate = history.as_ref().err().is_some_and(|e| e.contains("twice"));
    let lost = usize::from(history.is_err() && !duplicate);
    let t = |n: &str| timings.iter().find(|x| x.0 == n).map_or(f64::MAX, |x| x.1);
    let target = crate::ha_report::FAILOVER_TARGET_MS;
    ch.add(
        "SIGTERM failover <= 5,000 ms",
        t("SIGTERM") <= target,
        format!("{} ms", t("SIGTERM")),
    );
    ch.add(
        "zero acknowledged writes lost",
        lost == 0 && !duplicate,
        match &history {
            Ok(()) => format!(
                "all {} acknowledged writes on every node with their hashes",
                acks.len()
            ),
            Err(e) => e.clone(),
        },
    );
    ch.add(
        "SIGKILL failover <= 5,000 ms",
        t("SIGKILL") <= target,
        format!("{} ms", t("SIGKILL")),
    );
    let rapid: Vec<f64> = ["rapid 1", "rapid 2", "rapid 3"].iter().map(|n| t(n)).collect();
    ch.add(
        "3 rapid cycles all <= 5,000 ms",
        rapid.iter().all(|r| *r <= target),
        format!("{rapid:?} ms"),
    );
    ch.add(
        "no CommitId acknowledged twice",
        !duplicate,
        if duplicate {
            "a CommitId was acknowledged twice"
        } else {
            "none"
        },
    );
    // After: a bundle from the new leader proving consistency with the checkpoint of the bundle before.
    post(addr_now, "/v1/checkpoints", LAB_ADMIN, None)?;
    let grpc = c.nodes[l].as_ref().ok_or("no leader")?.grpc;
    let (after, after_size) = bundle(grpc, Some(before.checkpoint.clone()))?;
    let after_ok = after.verify(&key, true);
    let epochs = match (&before_ok, &after_ok) {
        (Ok(b), Ok(a)) => format!("epoch {} -> {}", b.epoch, a.epoch),
        _ => String::new(),
    };
    ch.add(
        "chain, leaf index and checkpoint continuity across each boundary",
        after_ok.is_ok() && after.prior.is_some(),
        format!("checkpoint {before_size} -> {after_size} proven consistent across 5 terms ({epochs}); every chain link and leaf index verified"),
    );
    ch.add(
        "auditor bundle verified (strict) before",
        before_ok.is_ok(),
        before_ok.as_ref().map_or_else(
            |e| e.join("; "),
            |c| format!("{} records to checkpoint {}", before.records.len(), c.size),
        ),
    );
    ch.add(
        "auditor bundle verified (strict) after, every node caught up",
        after_ok.is_ok(),
        after_ok.as_ref().map_or_else(
            |e| e.join("; "),
            |c| {
                format!(
                    "{} records to checkpoint {}; all nodes at {tip}",
                    after.records.len(),
                    c.size
                )
            },
        ),
    );
    let m = json!({
        "sigterm_ms": t("SIGTERM"), "sigkill_ms": t("SIGKILL"), "rapid_ms": rapid,
        "first_ack_ms": timings.iter().map(|x| json!({"cycle": x.0, "ms": x.2})).collect::<Vec<_>>(),
        "detection": "a follower's /v1/ha/status says is_leader", "poll_interval_ms": ctx.poll.as_millis() as u64,
        "acked_writes": acks.len(), "lost_writes": lost, "duplicate_commit_ids": usize::from(duplicate),
        "outcome_unknown": unknown.len(), "tip": tip,
        "bundle_before": {"records": before.records.len(), "checkpoint": before_size},
        "bundle_after": {"records": after.records.len(), "checkpoint": after_size},
        "target_aerodb_ms": {"sigterm": 100, "sigkill": 1500},
    });
    drop(c);
    let _ = addr;
    Ok((m, ch))
}

/// Samples of each replica's positions on the primary.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    tip: u64,
    /// Per replica: written, flushed, applied.
    replicas: Vec<(u64, u64, u64)>,
}

fn sampler(
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(v) = lab::ha(addr) {
                let reps = v["replicas"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                let g = |k: &str| r[k].as_u64().unwrap_or(0);
                                (g("written"), g("flushed"), g("applied"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Sample {
                    at: Instant::now(),
                    tip: v["applied_commit_id"].as_u64().unwrap_or(0),
                    replicas: reps,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out
    })
}

/// Lag in ms at each sample: the age of the oldest record the primary held that the replica had not yet
/// written (flushed, applied): `now − (first time the primary's tip reached position + 1)`, 0 when caught up.
fn lag_ms(samples: &[Sample], pick: fn(&(u64, u64, u64)) -> u64) -> Vec<f64> {
    let mut out = Vec::new();
    for s in samples {
        for r in &s.replicas {
            let pos = pick(r);
            if pos >= s.tip {
                out.push(0.0);
                continue;
            }
            let since = samples.iter().find(|x| x.tip > pos).map_or(s.at, |x| x.at);
            out.push(ms(s.at.saturating_duration_since(since)));
        }
    }
    out
}

fn quantiles(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if s.is_empty() {
            0.0
        } else {
            s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
        }
    };
    json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)})
}

/// One load phase: `records` appends of `bytes` each by 4 clients while sampling; the distributions and the
/// drain time (from the last acknowledgement until every replica applied the tip).
fn load_phase(addr: SocketAddr, records: usize, bytes: usize, idle: Duration) -> LabResult<Value> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = sampler(addr, stop.clone());
    let payload = "x".repeat(bytes);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (next, payload, errors) = (next.clone(), payload.clone(), errors.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < records {
                    let body = format!("{{\"tenant\":\"lag\",\"event\":\"{payload}\"}}");
                    match post(addr, "/v1/records", LAB_WRITER, Some(&body)) {
                        Ok(r) if r.status == 201 => {}
                        Ok(r) => {
                            errors
                                .lock()
                                .push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
                        }
                        Err(e) => errors.lock().push(e),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let acked = Instant::now();
    if records == 0 {
        std::thread::sleep(idle);
    }
    let tip = lab::ha(addr)
        .and_then(|v| v["applied_commit_id"].as_u64())
        .unwrap_or(0);
    let deadline = acked + Duration::from_secs(30);
    let drain = loop {
        let done = lab::ha(addr)
            .and_then(|v| v["replicas"].as_array().cloned())
            .is_some_and(|r| r.len() == 2 && r.iter().all(|x| x["applied"].as_u64().unwrap_or(0) >= tip));
        if done {
            break acked.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("the replicas did not apply {tip} within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = s.join().map_err(|_| "the sampler failed")?;
    let errors = errors.lock().clone();
    Ok(json!({
        "acked": records - errors.len(), "first_error": errors.first(),
        "write_lag_ms": quantiles(&lag_ms(&samples, |r| r.0)),
        "flush_lag_ms": quantiles(&lag_ms(&samples, |r| r.1)),
        "apply_lag_ms": quantiles(&lag_ms(&samples, |r| r.2)),
        "drain_ms": ms(drain), "records": records, "record_bytes": bytes, "samples": samples.len(), "tip": tip,
    }))
}

/// VAL14: replication lag at rest, under a light and a heavy load; drain times; derived thresholds.
fn val14(ctx: &Ctx, progress: &(dyn Fn(&str) + Sync)) -> SliceOut {
    let mut ch = Checks::new("VAL14");
    let c = ctx.cluster(1, &[])?;
    let (_, addr) = leader(&c)?;
    ch.add("cluster up", true, "3 nodes, one leader");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab::ha(addr).and_then(|v| v["replicas"].as_array().map(Vec::len)) != Some(2) {
        if Instant::now() > deadline {
            return Err("two replicas did not connect within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ch.add("both replicas connected", true, "2 replicas streaming");
    progress("VAL14: idle");
    let idle = load_phase(
        addr,
        0,
        0,
        if ctx.opts.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        },
    )?;
    ch.add(
        "idle lag sampled",
        idle["samples"].as_u64().unwrap_or(0) > 10,
        format!("{} samples", idle["samples"]),
    );
    // A light and a heavy load: every record acknowledged, and the replicas drained within the phase's target.
    let mut phase = |name: &str, records: usize, bytes: usize, drain_check: &str, drain_target: f64| {
        progress(&format!("VAL14: {name} load ({records} x {bytes} B)"));
        let load = load_phase(addr, records, bytes, Duration::ZERO)?;
        let acked = load["acked"].as_u64().unwrap_or(0);
        ch.add(
            &format!("{name} load acknowledged"),
            acked == records as u64,
            format!(
                "{acked} of {records} records of {bytes} B acknowledged; first error: {}",
                load["first_error"]
            ),
        );
        let drain = load["drain_ms"].as_f64().unwrap_or(f64::MAX);
        ch.add(drain_check, drain <= drain_target, format!("{drain} ms"));
        LabResult::Ok(load)
    };
    let light = phase(
        "light",
        100,
        500,
        "light drain <= 2,000 ms",
        crate::ha_report::LIGHT_DRAIN_TARGET_MS,
    )?;
    let heavy = phase(
        "heavy",
        500,
        2000,
        "heavy drain <= 5,000 ms",
        crate::ha_report::HEAVY_DRAIN_TARGET_MS,
    )?;
    // Every node at the same tip with the same record hash.
    let tip = lab::ha(addr)
        .and_then(|v| v["applied_commit_id"].as_u64())
        .unwrap_or(0);
    let hashes: Vec<Option<String>> = c
        .live()
        .iter()
        .map(|(_, a)| {
            lab::wait_caught_up(*a, tip, Duration::from_secs(10)).ok()?;
            lab::get(*a, &format!("/v1/records/{tip}"))
                .and_then(|r| r["record_hash"].as_str().map(str::to_owned))
        })
        .collect();
    let same = hashes.iter().all(|h| h.is_some() && *h == hashes[0]);
    ch.add(
        "replicas hold the primary's tip and hash",
        same,
        format!("tip {tip} on all 3 nodes"),
    );
    let q = |v: &Value| v["write_lag_ms"]["p95"].as_f64().unwrap_or(0.0);
    let (obs, h, d, a) = crate::ha_report::derive_thresholds(q(&idle), q(&light));
    ch.add(
        "thresholds derived in order",
        h <= d && d <= a,
        format!("observed_p95 {obs} ms: healthy {h}, degraded {d}, alert {a} (derived, not targets)"),
    );
    let errs: Vec<String> = c
        .live()
        .iter()
        .filter_map(|(_, a)| lab::ha(*a))
        .filter_map(|v| {
            let e = v["replication_error"].as_str().unwrap_or("");
            (v["state"] == "ReplicationHalted" || (!e.is_empty() && v["is_leader"] != true))
                .then(|| format!("{}: {} {e}", v["node_id"], v["state"]))
        })
        .collect();
    ch.add(
        "no replication error or halt",
        errs.is_empty(),
        if errs.is_empty() {
            "none".into()
        } else {
            errs.join("; ")
        },
    );
    let m = json!({"idle": idle, "light": light, "heavy": heavy,
                   "lag_definition": "age of the oldest record the primary held that the replica had not yet written (flushed, applied), sampled from the primary's /v1/ha/status every ~2 ms",
                   "thresholds_derived": {"observed_p95_ms": obs, "healthy_ms": h, "degraded_ms": d, "alert_ms": a},
                   "target_aerodb_ms": {"light_drain": 200, "heavy_drain": 500}});
    Ok((m, ch))
}

fn run_cli(ctx: &Ctx, args: &[&str]) -> LabResult<(bool, String, Duration)> {
    let t = Instant::now();
    let out = std::process::Command::new(&ctx.opts.cli)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", ctx.opts.cli.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text, t.elapsed()))
}

/// VAL15: an online backup and a verified restore of the lab data set; checksum, correctness, rollback guard.
fn val15(ctx: &Ctx, progress: &(dyn Fn(&str) + Sync)) -> SliceOut {
    use sha2::Digest;
    let mut ch = Checks::new("VAL15");
    let c = ctx.cluster(1, &[])?;
    let (l, addr) = leader(&c)?;
    let node = c.nodes[l].as_ref().ok_or("no leader")?;
    let (grpc, vkey) = (node.grpc, node.verifier_key.clone());
    let records = if ctx.opts.quick { 2_000 } else { 20_000 };
    progress(&format!("VAL15: writing {records} records"));
    // Batches of 100 puts of 200-byte values: keys k0..k999 overwritten, so KV reads have history.
    let mut written = 0;
    while written < records {
        let ops: Vec<String> = (written..written + 100)
            .map(|i| {
                format!(
                    "{{\"op\":\"put\",\"key\":\"k{}\",\"value\":\"v{i}-{}\"}}",
                    i % 1000,
                    "p".repeat(200)
                )
            })
            .collect();
        let body = format!(
            "{{\"records\":[{}]}}",
            ops.iter()
                .map(|o| format!("{{\"tenant\":\"acme\",\"ops\":[{o}]}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = post(addr, "/v1/records/batch", LAB_WRITER, Some(&body))?;
        if r.status != 201 {
            return Err(format!(
                "batch append: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        written += 100;
    }
    let cp = post(addr, "/v1/checkpoints", LAB_ADMIN, None)?;
    let size = serde_json::from_slice::<Value>(&cp.body)
        .ok()
        .and_then(|v| v["size"].as_u64())
        .unwrap_or(0);
    let data_bytes: u64 = walk_bytes(&c.data(l));
    ch.add(
        "data set written",
        size >= records as u64,
        format!("{size} records, {data_bytes} bytes in the data directory"),
    );
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    lab::track_dir(tmp.path());
    let backup_dir = tmp.path().join("backup");
    let url = format!("http://{grpc}");
    progress("VAL15: online backup");
    let (ok, out, took) = run_cli(
        ctx,
        &[
            "--grpc",
            &url,
            "--token",
            LAB_ADMIN,
            "--json",
            "backup",
            "--out",
            backup_dir.to_str().unwrap_or(""),
        ],
    )?;
    let made: Value = serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or_default();
    ch.add(
        "backup made",
        ok,
        if ok {
            format!("{} records, {} files", made["records"], made["files"])
        } else {
            out.clone()
        },
    );
    let backup_ms = ms(took);
    ch.add(
        "backup <= 30,000 ms",
        ok && backup_ms <= crate::ha_report::BACKUP_TARGET_MS,
        format!("{backup_ms} ms"),
    );
    let cli_sha = made["manifest_sha256"].as_str().unwrap_or("").to_owned();
    let file_sha = std::fs::read(backup_dir.join(aerodb_engine::backup::MANIFEST))
        .map(|b| hex::encode(sha2::Sha256::digest(&b)))
        .unwrap_or_default();
    ch.add(
        "SHA-256: the CLI's checksum is the file's",
        !cli_sha.is_empty() && cli_sha == file_sha,
        format!("{cli_sha} / {file_sha}"),
    );
    // Restore into a new directory, trusting the checkpoint the backup was bound to.
    let note_file = tmp.path().join("trusted.note");
    let note = latest_note(addr);
    std::fs::write(&note_file, &note).map_err(|e| e.to_string())?;
    let key_file = c.data(l).join(aerodb_engine::KEY_FILE);
    let restored = tmp.path().join("restored");
    progress("VAL15: verified restore");
    let (ok, out, took) = restore(ctx, &backup_dir, &restored, &key_file, &note_file)?;
    ch.add("restore made", ok, out.trim().to_owned());
    let restore_ms = ms(took);
    // Correctness: the restored log's records, payload spot values and KV reads equal the primary's.
    let correct = if ok {
        restore_correct(&restored, addr, size)
    } else {
        Err("not restored".into())
    };
    ch.add(
        "restore correctness: counts, payloads, KV reads",
        correct.as_ref().is_ok_and(|b| *b),
        format!("{correct:?}"),
    );
    ch.add(
        "restore <= 60,000 ms",
        ok && restore_ms <= crate::ha_report::RESTORE_TARGET_MS,
        format!("{restore_ms} ms"),
    );
    let (ok_v, out_v, _) = run_cli(
        ctx,
        &[
            "backup",
            "verify",
            backup_dir.to_str().unwrap_or(""),
            "--verifier-key",
            &vkey,
        ],
    )?;
    ch.add("backup verifies offline", ok_v, out_v.trim().to_owned());
    // Rollback: more writes, a newer trusted checkpoint; restoring the older backup is refused.
    for i in 0..50 {
        post(
            addr,
            "/v1/records",
            LAB_WRITER,
            Some(&format!("{{\"tenant\":\"acme\",\"event\":\"after-{i}\"}}")),
        )?;
    }
    post(addr, "/v1/checkpoints", LAB_ADMIN, None)?;
    let newer = latest_note(addr);
    std::fs::write(&note_file, &newer).map_err(|e| e.to_string())?;
    let again = tmp.path().join("rolled-back");
    let (ok_r, out_r, _) = restore(ctx, &backup_dir, &again, &key_file, &note_file)?;
    ch.add(
        "rollback refused",
        !ok_r,
        out_r.lines().take(2).collect::<Vec<_>>().join(" "),
    );
    let (ok_s, out_s, _) = run_cli(ctx, &["verify", restored.to_str().unwrap_or(""), "--strict"])?;
    ch.add(
        "the restored directory passes verify --strict",
        ok_s,
        out_s.lines().last().unwrap_or("").to_owned(),
    );
    let m = json!({"records": size, "data_bytes": data_bytes, "backup_bytes": walk_bytes(&backup_dir),
                   "backup_ms": backup_ms, "restore_ms": restore_ms, "sha256_cli": cli_sha, "sha256_file": file_sha,
                   "restore_correct": correct.as_ref().is_ok_and(|b| *b), "rollback_refused": !ok_r,
                   "target_aerodb_ms": {"backup": 3000, "restore": 6000}});
    Ok((m, ch))
}

/// `aerodb restore BACKUP --to TO` as an unassigned node, trusting the checkpoint note in `note`.
fn restore(
    ctx: &Ctx,
    backup: &Path,
    to: &Path,
    key: &Path,
    note: &Path,
) -> LabResult<(bool, String, Duration)> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    run_cli(
        ctx,
        &[
            "restore",
            &s(backup),
            "--to",
            &s(to),
            "--signing-key",
            &s(key),
            "--role",
            "unassigned",
            "--trusted-checkpoint",
            &s(note),
        ],
    )
}

/// The node's newest checkpoint note.
fn latest_note(addr: SocketAddr) -> String {
    lab::get(addr, "/v1/checkpoints/latest")
        .and_then(|v| v["note"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn walk_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk_bytes(&p)
                } else {
                    e.metadata().map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

/// The restored directory holds `size` records whose hashes at 1, the middle and the end equal the primary's,
/// and `k0..k9` read the same values as on the primary.
fn restore_correct(dir: &Path, primary: SocketAddr, size: u64) -> Result<bool, String> {
    let db = aerodb_engine::Db::open(
        dir,
        aerodb_engine::Options {
            read_only: true,
            ..aerodb_engine::Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let tip = db.tip().map_err(|e| e.to_string())?.commit_id.0;
    if tip != size {
        return Err(format!("{tip} records restored, {size} backed up"));
    }
    for n in [1, size / 2, size] {
        let ours = db
            .record(aerodb_wal::CommitId(n))
            .map_err(|e| e.to_string())?
            .ok_or("missing record")?;
        let theirs = lab::get(primary, &format!("/v1/records/{n}")).ok_or("primary read")?;
        if theirs["record_hash"].as_str() != Some(hex::encode(ours.hash).as_str()) {
            return Err(format!("record {n} differs"));
        }
    }
    for k in 0..10 {
        let ours = db
            .get_at("acme", format!("k{k}").as_bytes(), aerodb_wal::CommitId(size))
            .map_err(|e| e.to_string())?;
        let theirs =
            lab::get(primary, &format!("/v1/kv/k{k}?tenant=acme&at={size}")).ok_or("primary KV read")?;
        let want = theirs["value"].as_str().map(|s| s.as_bytes().to_vec());
        if ours.map(|b| b.to_vec()) != want {
            return Err(format!("key k{k} differs"));
        }
    }
    Ok(true)
}

/// VAL16: a paused old primary resumed, a forged newer epoch, a tampered etcd authority entry, a replica with a
/// divergent tail.
fn val16(ctx: &Ctx, progress: &(dyn Fn(&str) + Sync)) -> SliceOut {
    let mut ch = Checks::new("VAL16");
    let mut c = ctx.cluster(1, &[])?;
    let (l, old) = leader(&c)?;
    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = Writers::start(2, addrs.clone());
    w.wait_for(100, Duration::from_secs(30))?;
    ch.add("cluster up", true, format!("n{} leads; writers running", l + 1));
    let mut scenarios = Vec::new();
    // 1. A paused old primary resumed: it must not write again.
    progress("VAL16: paused primary");
    let pid = c.nodes[l].as_ref().ok_or("no leader")?.pid();
    lab::signal(pid, "STOP");
    let t0 = Instant::now();
    let (_, took) = wait_new_leader(&c, l, t0, ctx.poll)?;
    ch.add(
        "paused primary replaced",
        true,
        format!("a new leader after {} ms", ms(took)),
    );
    lab::signal(pid, "CONT");
    std::thread::sleep(Duration::from_millis(300));
    let r = post(
        old,
        "/v1/records",
        LAB_WRITER,
        Some("{\"tenant\":\"probe16\",\"event\":\"resumed\"}"),
    );
    let refused = r.as_ref().is_ok_and(|r| r.status != 201);
    let st = lab::ha(old).unwrap_or_default();
    let stepped = st["is_leader"] != true;
    ch.add(
        "paused primary refused writes after resuming",
        refused && stepped,
        format!(
            "write answered {}; is_leader {}",
            r.map_or(0, |r| r.status),
            st["is_leader"]
        ),
    );
    scenarios.push(json!({"name": "paused old primary resumed", "pass": refused && stepped, "outcome": format!("SIGSTOP -> new leader in {} ms; after SIGCONT is_leader={} and its write was refused", ms(took), st["is_leader"])}));
    let (nl, leader_addr) = leader(&c)?;
    // 2. A forged newer epoch: a replica hello claiming epoch 1,000,000 without proof.
    progress("VAL16: forged epoch claim");
    let grpc = c.nodes[nl].as_ref().ok_or("no leader")?.grpc;
    let refused_claim = forged_claim(grpc)?;
    let still = lab::ha(leader_addr).is_some_and(|v| v["is_leader"] == true);
    ch.add(
        "forged epoch claim refused",
        refused_claim.contains("UNPROVEN_EPOCH_CLAIM"),
        refused_claim.clone(),
    );
    ch.add(
        "primary kept serving after the forged claim",
        still,
        format!("n{} still leads", nl + 1),
    );
    scenarios.push(json!({"name": "forged newer epoch", "pass": still && refused_claim.contains("UNPROVEN_EPOCH_CLAIM"), "outcome": "refused with UNPROVEN_EPOCH_CLAIM; the primary kept serving"}));
    // 3. A tampered authority entry: a forged leader record put under the election prefix.
    progress("VAL16: tampered etcd entry");
    let endpoint = c.etcd.endpoint.clone();
    let forged =
        json!({"node_id": "rogue", "rest_url": "http://127.0.0.1:1", "grpc_url": "http://127.0.0.1:1"})
            .to_string();
    block_on(async move {
        let e = crate::etcd::Etcd::new(&[endpoint], Duration::from_secs(2)).map_err(|e| e.to_string())?;
        e.put(b"aerodb/aerodb-ledger/00000000deadbeef", forged.as_bytes(), None)
            .await
            .map_err(|e| e.to_string())
    })??;
    std::thread::sleep(Duration::from_millis(500));
    let (nl2, _) = leader(&c)?;
    let follows = c
        .live()
        .iter()
        .all(|(_, a)| lab::ha(*a).is_some_and(|v| v["leader_id"] != "rogue"));
    ch.add(
        "tampered etcd entry not followed",
        nl2 == nl && follows,
        format!("n{} still leads; no node follows \"rogue\"", nl2 + 1),
    );
    scenarios.push(json!({"name": "tampered authority entry in etcd", "pass": nl2 == nl && follows, "outcome": "a forged leader record under the election prefix was not followed; the leader kept its term"}));
    // 4. A replica with a divergent tail: a record of its own appended while stopped.
    progress("VAL16: divergent replica");
    let victim = (0..3).find(|i| *i != nl).ok_or("no replica")?;
    let victim_addr = c.http(victim).ok_or("victim down")?;
    let epoch = lab::ha(victim_addr)
        .and_then(|v| v["epoch"].as_u64())
        .ok_or("the replica's epoch")?;
    let _ = c.terminate(victim)?;
    addrs.lock().retain(|a| *a != victim_addr);
    let tail = diverge(&c.data(victim), epoch)?;
    c.restart(victim)?;
    let va = c.http(victim).ok_or("victim down")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let v = lab::ha(va).unwrap_or_default();
        let cut = std::fs::read_dir(c.data(victim)).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("divergent-tail"))
        });
        if v["state"] == "ReplicationHalted" {
            break format!("halted: {}", v["halt_reason"]);
        }
        if cut {
            break "the never-acknowledged tail was cut with its evidence file".to_owned();
        }
        if Instant::now() > deadline {
            break format!("not detected within 30 s: {v}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let detected = outcome.starts_with("halted") || outcome.starts_with("the never");
    ch.add(
        "divergent replica detected",
        detected,
        format!("{tail}; {outcome}"),
    );
    let recovered = if outcome.starts_with("halted") {
        let _ = c.terminate(victim);
        let primary = c.nodes[nl]
            .as_ref()
            .map(|n| format!("http://{}", n.grpc))
            .unwrap_or_default();
        let data = c.data(victim);
        let (ok, out, _) = run_cli(
            ctx,
            &[
                "admin",
                "rebuild",
                "--data-dir",
                data.to_str().unwrap_or(""),
                "--primary",
                &primary,
                "--discard-local-log",
            ],
        )?;
        c.restart(victim)?;
        (ok, out)
    } else {
        (true, "cut automatically".to_owned())
    };
    addrs.lock().push(c.http(victim).ok_or("victim down")?);
    let (_, la) = leader(&c)?;
    let (acks, _) = w.finish();
    let tip = lab::ha(la).and_then(|v| v["commit_id"].as_u64()).unwrap_or(0);
    let caught = c
        .http(victim)
        .is_some_and(|a| lab::wait_caught_up(a, tip, Duration::from_secs(30)).is_ok());
    ch.add(
        "divergent replica recovered by the documented command",
        recovered.0 && caught,
        format!(
            "{}; caught up to {tip}: {caught}",
            recovered.1.lines().next().unwrap_or("")
        ),
    );
    scenarios.push(
        json!({"name": "replica with a divergent tail", "pass": detected && caught, "outcome": outcome}),
    );
    let mut history = Ok(());
    for (_, a) in c.live() {
        let _ = lab::wait_caught_up(a, tip, Duration::from_secs(30));
        if history.is_ok() {
            history = lab::check_history(&acks, a);
        }
    }
    ch.add(
        "no acknowledged write lost",
        history.is_ok(),
        history
            .clone()
            .err()
            .unwrap_or_else(|| format!("{} acknowledged writes on every node", acks.len())),
    );
    let serves = post(
        la,
        "/v1/records",
        LAB_WRITER,
        Some("{\"tenant\":\"lab\",\"event\":\"after\"}"),
    )
    .is_ok_and(|r| r.status == 201);
    ch.add(
        "cluster serves after",
        serves,
        "a write acknowledged by the leader",
    );
    let m = json!({"scenarios": scenarios, "acked_writes": acks.len(), "acked_lost": usize::from(history.is_err())});
    Ok((m, ch))
}

/// Sends a replica hello claiming a far newer epoch without a proof; the primary's answer.
fn forged_claim(grpc: SocketAddr) -> LabResult<String> {
    use aerodb_proto::v1::{self as pb, replica_message::Msg};
    block_on(async move {
        let mut client = pb::replication_client::ReplicationClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let hello = pb::ReplicaHello {
            node_id: "intruder".into(),
            commit_id: 0,
            record_hash: vec![0; 32],
            epoch: 0,
            highest_epoch: 1_000_000,
            epoch_proof: None,
            witness_key: String::new(),
        };
        tx.send(pb::ReplicaMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {LAB_REPLICATOR}").parse().map_err(|_| "token")?,
        );
        Ok(match client.stream(req).await {
            Ok(_) => "accepted".to_owned(),
            Err(s) => s.message().to_owned(),
        })
    })?
}

/// Appends one record of this node's own, at the cluster's current `epoch` (no newer term is claimed), to a
/// stopped node's log (a divergent tail); what was written.
fn diverge(data: &Path, epoch: u64) -> LabResult<String> {
    let role = std::fs::read(data.join("role.state")).ok();
    let db = aerodb_engine::Db::open(
        data,
        aerodb_engine::Options {
            replica: false,
            read_only: false,
            epoch: aerodb_wal::Epoch(epoch),
            checkpoint_interval: None,
            checkpoint_every_records: 0,
            ..aerodb_engine::Options::default()
        },
    )
    .map_err(|e| format!("opening the stopped replica: {e}"))?;
    let r = db
        .append(
            "lab",
            aerodb_engine::Payload::Event(bytes::Bytes::from_static(b"divergent")),
        )
        .map_err(|e| format!("appending the divergent record: {e}"))?;
    db.close().map_err(|e| e.to_string())?;
    // The node's role file is its own; the open above must not have changed it.
    if let Some(r) = role {
        std::fs::write(data.join("role.state"), r).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "divergent record {} written at epoch {epoch}",
        r.commit_id.0
    ))
}

/// During a loss that began at `t0`: the time until `addr` reports writes blocked (`write_block_active`, not
/// `can_accept_protected_writes`), checked as "`what` loss detected" and "writes blocked during `what` loss", and a
/// probe write to `tenant`. Returns the detection time, the status then, the probe's status and whether it was
/// refused.
fn during_loss(
    ch: &mut Checks,
    ctx: &Ctx,
    addr: SocketAddr,
    what: &str,
    tenant: &str,
    t0: Instant,
) -> (Option<Duration>, Value, u16, bool) {
    let blocked = |v: &Value| v["write_block_active"] == true && v["can_accept_protected_writes"] == false;
    let mut detect = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if lab::ha(addr).is_some_and(|v| blocked(&v)) {
            detect = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(ctx.poll);
    }
    let limit = if what == "etcd" { " <= 30,000 ms" } else { "" };
    ch.add(
        &format!("{what} loss detected{limit}"),
        detect.is_some(),
        opt_ms(detect),
    );
    let st = lab::ha(addr).unwrap_or_default();
    ch.add(
        &format!("writes blocked during {what} loss"),
        blocked(&st),
        format!(
            "write_block_active={} can_accept_protected_writes={}",
            st["write_block_active"], st["can_accept_protected_writes"]
        ),
    );
    let body = format!("{{\"tenant\":\"{tenant}\",\"event\":\"during {what} loss\"}}");
    let probe = post(addr, "/v1/records", LAB_WRITER, Some(&body));
    let status = probe.as_ref().map_or(0, |r| r.status);
    (detect, st, status, !(200..300).contains(&status))
}

/// VAL17: etcd lost, then the synchronous replicas lost: detection, writes blocked and refused, recovery.
fn val17(ctx: &Ctx, progress: &(dyn Fn(&str) + Sync)) -> SliceOut {
    let mut ch = Checks::new("VAL17");
    let mut c = ctx.cluster(1, &["--sync-wait", "fail"])?;
    let (l, addr) = leader(&c)?;
    for i in 0..20 {
        post(
            addr,
            "/v1/records",
            LAB_WRITER,
            Some(&format!("{{\"tenant\":\"lab\",\"event\":\"before-{i}\"}}")),
        )?;
    }
    ch.add(
        "cluster up",
        true,
        format!("n{} leads; 20 writes acknowledged", l + 1),
    );
    let serving = |c: &Cluster| {
        c.live().into_iter().find(|(_, a)| {
            lab::ha(*a).is_some_and(|v| v["is_leader"] == true && v["can_accept_protected_writes"] == true)
        })
    };
    let wait = |f: &dyn Fn() -> bool, t0: Instant| -> Option<Duration> {
        while t0.elapsed() < Duration::from_secs(30) {
            if f() {
                return Some(t0.elapsed());
            }
            std::thread::sleep(ctx.poll);
        }
        None
    };
    // etcd lost.
    progress("VAL17: etcd lost");
    c.etcd.kill();
    let t0 = Instant::now();
    let (detect, st_etcd, probe, refused_a) = during_loss(&mut ch, ctx, addr, "etcd", "probe17a", t0);
    c.etcd.restart().map_err(|e| format!("restarting etcd: {e}"))?;
    let t1 = Instant::now();
    let recov = wait(&|| serving(&c).is_some(), t1);
    let (_, la) = serving(&c).ok_or("no leader after etcd returned")?;
    let absent_a = lab::get(la, "/v1/records?tenant=probe17a")
        .is_some_and(|v| v["records"].as_array().is_some_and(Vec::is_empty));
    ch.add(
        "a write during etcd loss refused and absent",
        refused_a && absent_a,
        format!("answered {}; absent from the log: {absent_a}", probe),
    );
    ch.add(
        "recovery after etcd restored <= 30,000 ms",
        recov.is_some(),
        opt_ms(recov),
    );
    // The synchronous replicas lost.
    progress("VAL17: replicas lost");
    let (nl, addr) = leader(&c)?;
    for i in (0..3).filter(|i| *i != nl) {
        c.kill9(i);
    }
    let t2 = Instant::now();
    let (detect_r, _, probe, refused_b) = during_loss(&mut ch, ctx, addr, "replica", "probe17b", t2);
    let absent_b = lab::get(addr, "/v1/records?tenant=probe17b")
        .is_some_and(|v| v["records"].as_array().is_some_and(Vec::is_empty));
    ch.add(
        "a write during replica loss refused and absent",
        refused_b && absent_b,
        format!("answered {}; absent: {absent_b}", probe),
    );
    for i in (0..3).filter(|i| *i != nl) {
        c.restart(i)?;
    }
    let t3 = Instant::now();
    let recov_r = wait(
        &|| lab::ha(addr).is_some_and(|v| v["can_accept_protected_writes"] == true),
        t3,
    );
    let ok = post(
        addr,
        "/v1/records",
        LAB_WRITER,
        Some("{\"tenant\":\"lab\",\"event\":\"after\"}"),
    )
    .is_ok_and(|r| r.status == 201);
    ch.add(
        "recovery after replicas restored",
        recov_r.is_some() && ok,
        format!("{}; a write acknowledged after: {ok}", opt_ms(recov_r)),
    );
    let kept = lab::get(addr, "/v1/records?tenant=lab&limit=100")
        .and_then(|v| v["records"].as_array().map(Vec::len))
        .unwrap_or(0);
    ch.add(
        "no acknowledged write lost",
        kept >= 21,
        format!("{kept} of the 21 acknowledged writes of tenant lab in the leader's log"),
    );
    let m = json!({
        "etcd_loss": {"detection_ms": detect.map(ms), "recovery_ms": recov.map(ms),
                      "write_block_active": st_etcd["write_block_active"], "can_accept_protected_writes": st_etcd["can_accept_protected_writes"],
                      "write_refused_and_absent": refused_a && absent_a},
        "replica_loss": {"detection_ms": detect_r.map(ms), "recovery_ms": recov_r.map(ms),
                         "write_refused_and_absent": refused_b && absent_b},
        "poll_interval_ms": ctx.poll.as_millis() as u64, "target_aerodb_ms": {"detection": 1000},
    });
    Ok((m, ch))
}
