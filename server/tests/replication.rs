//! Replication on the real binaries (R-3..R-6, H-3, H-4): a replica catches up and follows the live tail under
//! concurrent appends, is restarted mid-stream (kill -9) and resumes without duplicates, serves verified reads,
//! refuses writes with the leader's URL, and ends with sealed segments byte-identical to the primary's; a replica
//! pointed at a log that forked from its own halts with `Fork` and an evidence file, refuses reads and writes and
//! stays halted across a restart until `aerodb admin rebuild` (which keeps the divergent log aside); a replica that saw a newer epoch halts on an older primary, and that primary,
//! told of the newer term, stops writing; synchronous mode blocks acknowledgements until a replica flushed them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;

const SEGMENT: &str = "65536";

/// Starts a replica of `primary` in `dir`, holding the log's signing key (copied from `key_from`).
fn start_replica(dir: &Path, primary: &Server, key_from: &Path, extra: &[&str]) -> Server {
    start_replica_with(dir, primary, key_from, SEGMENT, extra)
}

fn ha(s: &Server) -> serde_json::Value {
    http(s.http, "GET", "/v1/ha/status", Some(READER), None).json()
}

fn append(s: &Server, tenant: &str, i: u64) -> u64 {
    let body = format!(
        r#"{{"tenant":"{tenant}","ops":[{{"op":"put","key":"k{}","value":"v{i}"}}]}}"#,
        i % 50
    );
    let r = http(s.http, "POST", "/v1/records", Some(WRITER), Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["commit_id"].as_u64().unwrap()
}

/// Four writers appending events to `addr` until `stop`; `acked` is the highest CommitId acknowledged.
fn sustained_load(
    addr: std::net::SocketAddr,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers = (0..4)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!(r#"{{"tenant":"w{w}","event":"e{i}"}}"#);
                    let r = http(addr, "POST", "/v1/records", Some(WRITER), Some(&body));
                    assert_eq!(r.status, 201);
                    acked.fetch_max(r.json()["commit_id"].as_u64().unwrap(), Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    (stop, acked, writers)
}

/// Waits until the replica applied `commit` (or panics after 30 s).
fn wait_applied(replica: &Server, commit: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = ha(replica);
        if h["applied_commit_id"].as_u64().unwrap() >= commit {
            return;
        }
        assert!(Instant::now() < deadline, "replica stuck: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sealed(data: &Path) -> Vec<(String, [u8; 32])> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names.pop();
    names
        .into_iter()
        .map(|n| {
            let h = aerodb_wal::format::sha256(&std::fs::read(data.join("wal").join(&n)).unwrap());
            (n, h)
        })
        .collect()
}

/// For two stopped servers: every sealed segment of the replica equals the primary's (returned), and the
/// replica's directory verifies on its own with `tip` records.
fn identical_logs(primary: &Server, replica: &Server, tip: u64) -> Vec<(String, [u8; 32])> {
    let (a, b) = (sealed(&primary.data), sealed(&replica.data));
    assert_eq!(a, b, "sealed segments differ");
    let report = aerodb_engine::verify_dir(
        &replica.data,
        &aerodb_engine::VerifyOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(report.problems.is_empty() && report.records == tip, "{report:?}");
    a
}

#[test]
fn a_replica_follows_restarts_and_ends_byte_identical() {
    let (pt, rt) = (TempDir::new("repl-p"), TempDir::new("repl-r"));
    let advertise = "http://127.0.0.1:1/primary";
    let primary = start(
        pt.path(),
        &[
            "--segment-bytes",
            SEGMENT,
            "--advertise-url",
            advertise,
            "--checkpoint-every-records",
            "100",
        ],
    );
    // History before the replica exists: catch-up.
    for i in 0..400 {
        append(&primary, "before", i);
    }
    let mut replica = start_replica(rt.path(), &primary, &primary.data, &[]);
    // The live tail under concurrent appends, with a kill -9 of the replica in the middle.
    let (stop, acked, writers) = sustained_load(primary.http);
    std::thread::sleep(Duration::from_millis(700));
    replica.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let replica = start_replica(rt.path(), &primary, &primary.data, &[]);
    std::thread::sleep(Duration::from_millis(700));
    // The primary sees the replica and its lag.
    let h = ha(&primary);
    let reps = h["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 1, "{h}");
    assert_eq!(reps[0]["node_id"], "replica-1");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let tip = acked.load(Ordering::Relaxed);
    assert!(tip > 600, "the load ran: {tip}");
    wait_applied(&replica, tip);

    // The replica serves the same records and reads, and refuses writes with the leader's URL.
    for c in [1, tip / 2, tip] {
        let a = http(
            primary.http,
            "GET",
            &format!("/v1/records/{c}"),
            Some(READER),
            None,
        )
        .json();
        let b = http(
            replica.http,
            "GET",
            &format!("/v1/records/{c}"),
            Some(READER),
            None,
        )
        .json();
        assert_eq!(a, b, "record {c}");
    }
    let a = http(primary.http, "GET", "/v1/kv/k7?tenant=before", Some(READER), None).json();
    let b = http(replica.http, "GET", "/v1/kv/k7?tenant=before", Some(READER), None).json();
    assert!(a["value"].is_string(), "{a}");
    assert_eq!(a["value"], b["value"]);
    let r = http(
        replica.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"x"}"#),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "NOT_LEADER");
    assert_eq!(r.json()["error"]["leader_url"], advertise);
    let rh = ha(&replica);
    assert_eq!(
        (
            rh["state"].as_str(),
            rh["connected_to_primary"].as_bool(),
            rh["leader_url"].as_str()
        ),
        (Some("ReplicaActive"), Some(true), Some(advertise)),
        "{rh}"
    );
    // Checkpoints arrive too: the replica's newest is one the primary signed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = http(primary.http, "GET", "/v1/checkpoints/latest", Some(READER), None).json();
        let b = http(replica.http, "GET", "/v1/checkpoints/latest", Some(READER), None);
        if b.status == 200 && b.json()["note"] == a["note"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints did not arrive: {a} vs {}",
            b.json()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = String::from_utf8(http(primary.http, "GET", "/metrics", Some(ADMIN), None).body).unwrap();
    assert!(
        metrics.contains("aerodb_replication_lag_records{replica=\"replica-1\"}"),
        "{metrics}"
    );

    // Stop both; every sealed segment is byte-identical; the replica's directory verifies on its own.
    let (mut primary, mut replica) = (primary, replica);
    assert!(replica.terminate().success());
    assert!(primary.terminate().success());
    let a = identical_logs(&primary, &replica, tip);
    assert!(a.len() >= 3, "the log rolled: {a:?}");
    report_figure(
        "replication (two real servers)",
        &format!(
            "{tip} records (400 catch-up, the rest live from 4 writers, replica kill -9 mid-stream): {} sealed \
             segments byte-identical, 0 verifier problems on the replica",
            a.len()
        ),
    );
}

#[test]
fn a_forked_replica_halts_with_evidence_and_stays_halted() {
    let (at, bt, rt) = (
        TempDir::new("fork-a"),
        TempDir::new("fork-b"),
        TempDir::new("fork-r"),
    );
    let a = start(at.path(), &["--segment-bytes", SEGMENT]);
    // B holds the same log key but its own history.
    std::fs::create_dir_all(bt.path().join("data")).unwrap();
    std::fs::copy(
        a.data.join("checkpoint.key"),
        bt.path().join("data/checkpoint.key"),
    )
    .unwrap();
    let b = start(bt.path(), &["--segment-bytes", SEGMENT]);
    for i in 0..30 {
        append(&a, "a", i);
        append(&b, "b", i);
    }
    let mut r = start_replica(rt.path(), &a, &a.data, &[]);
    wait_applied(&r, 30);
    r.terminate();
    // Pointed at B, whose record 30 is not the replica's: a fork at the handshake.
    let mut r = start_replica(rt.path(), &b, &a.data, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = ha(&r);
        if h["state"] == "ReplicationHalted" {
            break h;
        }
        assert!(Instant::now() < deadline, "no halt: {h}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        h["halt_reason"]
            .as_str()
            .unwrap()
            .starts_with("Fork at CommitId 30"),
        "{h}"
    );
    let evidence: Vec<_> = std::fs::read_dir(&r.data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("halt-evidence-"))
        .collect();
    assert_eq!(evidence.len(), 1);
    let text = std::fs::read_to_string(r.data.join(&evidence[0])).unwrap();
    assert!(text.contains("Fork") && text.contains("replica tip 30"), "{text}");
    // R-4: both sides' latest checkpoints (signed notes: each ends with a signature line "— <key name> …").
    let (theirs, ours) = text
        .split_once("the primary's latest checkpoint:")
        .expect("the primary's checkpoint is in the evidence");
    assert!(theirs.contains("primary tip"), "{text}");
    assert!(ours.contains("\n\u{2014} "), "the primary's signed note: {text}");
    let own = ours
        .split_once("this node's checkpoints (newest last):")
        .expect("this node's checkpoints are in the evidence")
        .1;
    assert!(own.contains("\n\u{2014} "), "this node's signed notes: {text}");
    let check_refuses = |s: &Server| {
        for (m, p, b) in [
            ("GET", "/v1/records/1", None),
            ("GET", "/v1/kv/k1?tenant=t", None),
            ("POST", "/v1/records", Some(r#"{"tenant":"t","event":"x"}"#)),
        ] {
            let resp = http(s.http, m, p, Some(WRITER), b);
            assert_eq!(
                (resp.status, resp.json()["error"]["code"].as_str()),
                (503, Some("HALTED")),
                "{m} {p}"
            );
        }
        let metrics = String::from_utf8(http(s.http, "GET", "/metrics", Some(ADMIN), None).body).unwrap();
        assert!(metrics.contains("ha_halted 1"), "{metrics}");
    };
    check_refuses(&r);
    // Still halted after a restart, and nothing of B's was applied.
    assert!(r.terminate().success());
    let mut r = start_replica(rt.path(), &b, &a.data, &[]);
    let h = ha(&r);
    assert_eq!(h["state"], "ReplicationHalted");
    assert_eq!(h["applied_commit_id"], 30);
    check_refuses(&r);
    assert!(r.terminate().success());

    // The operator's way out: verify-stats, then rebuild from B, discarding the local log (kept aside).
    let d = r.data.to_str().unwrap();
    let (ok, out) = aerodb_admin(&["verify-stats", "--data-dir", d, "--json"]);
    assert!(ok, "{out}");
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            stats["min_commit_id"].as_u64(),
            stats["max_commit_id"].as_u64(),
            stats["count"].as_u64()
        ),
        (Some(1), Some(30), Some(30))
    );
    assert_eq!(
        (stats["leaf_count"].as_u64(), stats["leaf_parity"].as_bool()),
        (Some(30), Some(true))
    );
    let url = format!("http://{}", b.grpc);
    let (ok, out) = aerodb_admin(&["rebuild", "--data-dir", d, "--epoch", "1", "--primary", &url]);
    assert!(ok && out.contains("ReplicaActive"), "{out}");
    // Without discarding, the fork is found again at the handshake.
    let mut r = start_replica(rt.path(), &b, &a.data, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha(&r)["state"] != "ReplicationHalted" {
        assert!(Instant::now() < deadline, "the fork was not found again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(r.terminate().success());
    // Cutting the divergent tail: B's history shares nothing with A's (record 1 already differs), so all 30 go.
    let (ok, out) = aerodb_admin(&[
        "--token",
        READER,
        "rebuild",
        "--data-dir",
        d,
        "--epoch",
        "1",
        "--primary",
        &url,
        "--discard-divergent-tail",
    ]);
    assert!(
        ok && out.contains("shares 0 records") && out.contains("cut the 30"),
        "{out}"
    );
    let r = start_replica(rt.path(), &b, &a.data, &[]);
    wait_applied(&r, 30);
    let (x, y) = (
        http(b.http, "GET", "/v1/records/30", Some(READER), None).json(),
        http(r.http, "GET", "/v1/records/30", Some(READER), None).json(),
    );
    assert_eq!(x, y);
    assert_eq!(ha(&r)["state"], "ReplicaActive");
    // The whole-log variant keeps the old log aside.
    let mut r = r;
    assert!(r.terminate().success());
    let file =
        aerodb_replication::state_file::RoleFile::new(std::sync::Arc::new(aerodb_wal::fs::RealFs), &r.data);
    let mut m = file.load().unwrap();
    m.observe(aerodb_replication::role::Observation::Halt(
        aerodb_replication::role::HaltReason::Corruption("test".into()),
    ));
    file.store(&m).unwrap();
    let (ok, out) = aerodb_admin(&[
        "rebuild",
        "--data-dir",
        d,
        "--epoch",
        "1",
        "--primary",
        &url,
        "--discard-local-log",
    ]);
    assert!(ok && out.contains("moved to"), "{out}");
    assert!(std::fs::read_dir(&r.data).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("divergent-")));
    let r = start_replica(rt.path(), &b, &a.data, &[]);
    wait_applied(&r, 30);
}

#[test]
fn epochs_fence_a_superseded_primary() {
    let (at, rt) = (TempDir::new("epoch-a"), TempDir::new("epoch-r"));
    let mut a = start(at.path(), &["--segment-bytes", SEGMENT]);
    for i in 0..10 {
        append(&a, "a", i);
    }
    let mut r = start_replica(rt.path(), &a, &a.data, &[]);
    wait_applied(&r, 10);
    r.terminate();
    a.terminate();
    // A new term: the old primary is promoted again with epoch 2 (standing in for a new primary of the same log),
    // and the replica follows it.
    let (ok, out) = aerodb_admin(&["promote", "--data-dir", a.data.to_str().unwrap(), "--epoch", "2"]);
    assert!(ok, "{out}");
    let a2 = start(at.path(), &["--segment-bytes", SEGMENT, "--epoch", "2"]);
    append(&a2, "a", 11);
    let mut r = start_replica(rt.path(), &a2, &a.data, &["--epoch", "2"]);
    wait_applied(&r, 11);
    assert_eq!(ha(&r)["epoch"], 2);
    r.terminate();
    let mut a2 = a2;
    a2.terminate();
    // A stale primary of epoch 1 (another node with the same log up to 10).
    let st = TempDir::new("epoch-stale");
    std::fs::create_dir_all(st.path().join("data")).unwrap();
    std::fs::copy(
        a.data.join("checkpoint.key"),
        st.path().join("data/checkpoint.key"),
    )
    .unwrap();
    let stale = start(st.path(), &["--segment-bytes", SEGMENT]);
    // The replica, which saw epoch 2, refuses it: EpochRegression.
    let r = start_replica(rt.path(), &stale, &a.data, &["--epoch", "2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = ha(&r);
        if h["state"] == "ReplicationHalted" {
            assert!(
                h["halt_reason"].as_str().unwrap().starts_with("EpochRegression"),
                "{h}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no halt: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And the stale primary, told of epoch 2 by that replica's hello, stopped writing at once.
    let h = ha(&stale);
    assert_eq!(h["state"], "ReplicationHalted", "{h}");
    assert!(
        h["halt_reason"]
            .as_str()
            .unwrap()
            .starts_with("AuthorityAmbiguity"),
        "{h}"
    );
    let resp = http(
        stale.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"x"}"#),
    );
    assert_eq!(resp.status, 503);
}

#[test]
fn synchronous_mode_waits_for_a_replica() {
    let (pt, rt) = (TempDir::new("sync-p"), TempDir::new("sync-r"));
    let p = start(
        pt.path(),
        &[
            "--segment-bytes",
            SEGMENT,
            "--sync-replicas",
            "1",
            "--sync-wait",
            "fail",
        ],
    );
    let h = ha(&p);
    assert_eq!(
        (
            h["write_block_active"].as_bool(),
            h["can_accept_protected_writes"].as_bool()
        ),
        (Some(true), Some(false)),
        "{h}"
    );
    let r = http(
        p.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"x"}"#),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("SYNC_REPLICAS_UNAVAILABLE"))
    );
    let mut replica = start_replica(rt.path(), &p, &p.data, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha(&p)["write_block_active"] != false {
        assert!(Instant::now() < deadline, "the replica never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ha(&p)["can_accept_protected_writes"], true);
    // Every acknowledged write is already durable on the replica.
    for i in 0..20 {
        let c = append(&p, "t", i);
        let applied = ha(&replica)["applied_commit_id"].as_u64().unwrap();
        assert!(
            applied >= c,
            "acknowledged {c} before the replica had it ({applied})"
        );
    }
    replica.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha(&p)["write_block_active"] != true {
        assert!(Instant::now() < deadline, "the replica never left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn aerodb_admin(args: &[&str]) -> (bool, String) {
    cli(&[&["admin"], args].concat())
}

fn hash32(hex: &str) -> [u8; 32] {
    hex::decode(hex).unwrap().try_into().unwrap()
}

/// T12 and seed 000 §7: two primaries on one fence (the second refuses to start); the primary paused (SIGSTOP)
/// under sustained appends, its replica promoted with epoch + 1 on the same fence, appends continue there with the
/// chain, leaf indexes and checkpoints continuous across the boundary; the old primary resumed (SIGCONT) cannot
/// acknowledge a write and halts.
#[test]
fn fencing_and_failover_under_load() {
    let (at, bt, rt, ft) = (
        TempDir::new("fence-a"),
        TempDir::new("fence-b"),
        TempDir::new("fence-r"),
        TempDir::new("fence-dir"),
    );
    let fdir = ft.path().to_str().unwrap();
    let fence = |node: &'static str| -> Vec<String> {
        [
            "--writer-fence-mode",
            "required",
            "--writer-fence-lock-id",
            "-7",
            "--writer-fence-dir",
            fdir,
            "--node-id",
            node,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let args = |v: &[String], more: &[&str]| -> Vec<String> {
        v.iter()
            .cloned()
            .chain(more.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    // Synchronous replication: an acknowledged write is on the replica, so the failover loses none.
    let a_args = args(
        &fence("a"),
        &[
            "--segment-bytes",
            SEGMENT,
            "--checkpoint-every-records",
            "50",
            "--sync-replicas",
            "1",
        ],
    );
    let a = start(at.path(), &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    // A second primary on the same fence and epoch refuses to start, with the reason.
    let b_args = args(&fence("b"), &["--segment-bytes", SEGMENT]);
    let err = refuse(bt.path(), &b_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("two primaries may not share a fence"), "{err}");

    let r = start_replica(rt.path(), &a, &a.data, &[]);
    // Sustained appends on A from 4 writers; each records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            let addr = a.http;
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!(r#"{{"tenant":"w{w}","event":"e{i}"}}"#);
                    match aerodb_server::httpc::call(addr, "POST", "/v1/records", Some(WRITER), Some(&body)) {
                        Ok(r) if r.status == 201 => {
                            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                            let hash = v["record_hash"].as_str().unwrap().to_owned();
                            acked.lock().push((v["commit_id"].as_u64().unwrap(), hash));
                        }
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    // The primary "fails": paused mid-load (its writers' requests hang until it resumes).
    let a_pid = a.child.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &a_pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    let before = acked.lock().iter().map(|a| a.0).max().unwrap_or(0);
    assert!(before > 100, "the load ran before the failure: {before}");
    let a_checkpoint = http(r.http, "GET", "/v1/checkpoints/latest", Some(READER), None).json();
    let replica_tip = ha(&r)["applied_commit_id"].as_u64().unwrap();
    // Everything A acknowledged before the pause reached the replica only if it was streamed; the promoted replica
    // continues from what it holds.
    let mut r = r;
    assert!(r.terminate().success());
    let (ok, out) = aerodb_admin(&["promote", "--data-dir", r.data.to_str().unwrap(), "--epoch", "2"]);
    assert!(ok, "{out}");
    let r_args = args(&fence("r"), &["--segment-bytes", SEGMENT, "--epoch", "2"]);
    let p2 = start(rt.path(), &r_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut last = replica_tip;
    for i in 0..20 {
        let c = append(&p2, "after", i);
        assert_eq!(c, last + 1, "leaf indexes continue without a gap");
        last = c;
    }
    // The chain links across the boundary, and the new term's records carry epoch 2.
    let boundary = http(
        p2.http,
        "GET",
        &format!("/v1/records/{}", replica_tip + 1),
        Some(READER),
        None,
    )
    .json();
    let prev = http(
        p2.http,
        "GET",
        &format!("/v1/records/{replica_tip}"),
        Some(READER),
        None,
    )
    .json();
    assert_eq!(boundary["prev_hash"], prev["record_hash"]);
    assert_eq!(
        (boundary["epoch"].as_u64(), prev["epoch"].as_u64()),
        (Some(2), Some(1))
    );
    // Checkpoint continuity: the new primary's checkpoint is consistent with the last one A signed.
    let new_cp = http(p2.http, "POST", "/v1/checkpoints", Some(ADMIN), None).json();
    let (old_size, new_size) = (
        a_checkpoint["size"].as_u64().unwrap(),
        new_cp["size"].as_u64().unwrap(),
    );
    let proof = http(
        p2.http,
        "GET",
        &format!("/v1/proofs/consistency?old_size={old_size}&new_size={new_size}"),
        Some(READER),
        None,
    )
    .json();
    let hashes: Vec<[u8; 32]> = proof["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hash32(h.as_str().unwrap()))
        .collect();
    assert!(aerodb_engine::merkle::verify_consistency(
        old_size,
        new_size,
        &hash32(a_checkpoint["root"].as_str().unwrap()),
        &hash32(new_cp["root"].as_str().unwrap()),
        &hashes
    ));

    // The old primary resumes: the fence now belongs to epoch 2, so it acknowledges nothing more and halts.
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &a_pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let resp = http(
        a.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"stale"}"#),
    );
    assert_eq!(resp.status, 503);
    let h = ha(&a);
    assert_eq!(h["state"], "ReplicationHalted", "{h}");
    assert!(
        h["halt_reason"]
            .as_str()
            .unwrap()
            .starts_with("AuthorityAmbiguity"),
        "{h}"
    );
    // Every write A acknowledged is in the new primary's log, with the same record hash at the same leaf index
    // (synchronous mode), and none was acknowledged once the fence moved.
    let acked = acked.lock().clone();
    let mut lost = 0;
    for (c, hash) in &acked {
        let rec = http(p2.http, "GET", &format!("/v1/records/{c}"), Some(READER), None);
        if rec.status != 200 || rec.json()["record_hash"].as_str() != Some(hash.as_str()) || *c > replica_tip
        {
            lost += 1;
        }
    }
    assert_eq!(
        lost, 0,
        "acknowledged writes missing or different after the failover"
    );
    // Seed 000 §7.5: the auditor's strict verification of the new primary's log after the failover.
    let mut p2 = p2;
    assert!(p2.terminate().success());
    let strict = aerodb_engine::VerifyOptions {
        verifier: None,
        strict: true,
    };
    let report = aerodb_engine::verify_dir(&p2.data, &strict, &mut |_, _| {}).unwrap();
    assert!(report.ok() && report.records == last, "{report:?}");
    report_figure(
        "T12 fencing / failover under load (seed 000 §7)",
        &format!(
            "second primary on the fence refused; {} writes acknowledged by the old primary (sync-replicas 1) \
             before the pause: 0 lost or changed after promoting its replica at epoch 2; 0 acknowledged after the \
             new term took the fence (old primary halted); chain, leaf indexes and checkpoint consistency \
             continuous across the boundary; strict verification of the new primary's log clean",
            acked.len()
        ),
    );
}

/// A userspace TCP proxy between a replica and its primary that can cut the link: while partitioned it forwards
/// nothing in either direction (bytes wait, as when packets are dropped) and new connections hang; healing drops
/// the connections that lived through the partition (their state is gone, as after a real one) and forwards new
/// ones.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    fn start(to: std::net::SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (c, g) = (c.clone(), g.clone());
                std::thread::spawn(move || {
                    while c.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let Ok(server) = std::net::TcpStream::connect(to) else {
                        return;
                    };
                    let born = g.load(Ordering::SeqCst);
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let (c, g) = (c.clone(), g.clone());
                        std::thread::spawn(move || {
                            use std::io::{Read, Write};
                            from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                            let mut buf = vec![0u8; 64 << 10];
                            loop {
                                if g.load(Ordering::SeqCst) != born {
                                    let _ = from.shutdown(std::net::Shutdown::Both);
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                if c.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                                match from.read(&mut buf) {
                                    Ok(0) => {
                                        let _ = to.shutdown(std::net::Shutdown::Write);
                                        return;
                                    }
                                    Ok(n) => {
                                        if to.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
        }
    }

    fn partition(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// T9: the link between primary and replica is cut under load, then healed. While cut, the replica reports the
/// disconnection and accepts no writes, and the primary drops it from its replicas; after healing the replica
/// catches up to the same CommitId and root, and the sealed segments are byte-identical.
#[test]
fn a_partition_under_load_heals_to_identical_logs() {
    let (pt, rt) = (TempDir::new("part-p"), TempDir::new("part-r"));
    let mut primary = start(pt.path(), &["--segment-bytes", SEGMENT]);
    let proxy = Proxy::start(primary.grpc);
    let data = rt.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(primary.data.join("checkpoint.key"), data.join("checkpoint.key")).unwrap();
    aerodb_server::auth::write_secret_file(&rt.path().join("replicator.token"), REPLICATOR).unwrap();
    let via = format!("http://{}", proxy.addr);
    let token = rt.path().join("replicator.token");
    let mut replica = start(
        rt.path(),
        &[
            "--role",
            "replica",
            "--primary",
            &via,
            "--primary-token-file",
            token.to_str().unwrap(),
            "--segment-bytes",
            SEGMENT,
            "--node-id",
            "replica-1",
        ],
    );
    let (stop, acked, writers) = sustained_load(primary.http);
    std::thread::sleep(Duration::from_millis(500));
    wait_applied(&replica, acked.load(Ordering::Relaxed).min(100));
    proxy.partition();
    let cut_at = Instant::now();
    // The replica notices (no heartbeat within its silence limit) and says so; it takes no writes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = ha(&replica);
        if h["connected_to_primary"] == false {
            assert!(!h["replication_error"].as_str().unwrap().is_empty(), "{h}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never noticed the partition: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let detected = cut_at.elapsed();
    let r = http(
        replica.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"x"}"#),
    );
    assert_eq!(r.json()["error"]["code"], "NOT_LEADER");
    // The primary forgets it, and its behind-count grows while the load goes on.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ha(&primary)["replicas"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the primary kept a dead replica");
        std::thread::sleep(Duration::from_millis(50));
    }
    let behind_during = acked.load(Ordering::Relaxed) - ha(&replica)["applied_commit_id"].as_u64().unwrap();
    assert!(behind_during > 0);
    proxy.heal();
    let healed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let tip = acked.load(Ordering::Relaxed);
    wait_applied(&replica, tip);
    let caught_up = healed_at.elapsed();
    let (a, b) = (
        http(
            primary.http,
            "GET",
            &format!("/v1/records/{tip}"),
            Some(READER),
            None,
        )
        .json(),
        http(
            replica.http,
            "GET",
            &format!("/v1/records/{tip}"),
            Some(READER),
            None,
        )
        .json(),
    );
    assert_eq!(a, b);
    assert!(replica.terminate().success());
    assert!(primary.terminate().success());
    let pa = identical_logs(&primary, &replica, tip);
    assert!(!pa.is_empty());
    report_figure(
        "T9 partition under load",
        &format!(
            "1 partition: detected by the replica in {} ms, {behind_during}+ records behind while cut; healed: caught \
             up to {tip} in {} ms; same record at the tip, {} sealed segments byte-identical, 0 forks, replica \
             verifies clean",
            detected.as_millis(),
            caught_up.as_millis(),
            pa.len()
        ),
    );
}

/// Mutual TLS on the replication stream: the primary serves TLS with a client CA and an identity allow-list; a
/// replica that presents no client certificate is refused (and says why in HA status), so is one whose
/// certificate the CA signed for another name; one with a certificate for an allowed name follows.
#[test]
fn the_replication_stream_takes_mutual_tls() {
    let (pt, rt, rt2, rt3) = (
        TempDir::new("mtls-p"),
        TempDir::new("mtls-r"),
        TempDir::new("mtls-r2"),
        TempDir::new("mtls-r3"),
    );
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["replica-1".into()]);
    let (other_cert, other_key) = leaf(vec!["intruder".into()]);
    let w = |dir: &Path, name: &str, text: &str| {
        let p = dir.join(name);
        aerodb_server::auth::write_secret_file(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (sc, sk, ca_path) = (
        w(pt.path(), "server.pem", &server_cert),
        w(pt.path(), "server.key", &server_key),
        w(pt.path(), "ca.pem", &ca.pem()),
    );
    let primary = start(
        pt.path(),
        &[
            "--segment-bytes",
            SEGMENT,
            "--tls-cert",
            &sc,
            "--tls-key",
            &sk,
            "--tls-client-ca",
            &ca_path,
            "--replica-identities",
            "replica-1,replica-2",
        ],
    );
    // Writes go over REST/TLS here; use the gRPC API with the CA to append.
    let rt_ = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt_.block_on(async {
        let vkey = aerodb_engine::VerifierKey::parse(&primary.verifier_key).unwrap();
        let url = format!("https://127.0.0.1:{}", primary.grpc.port());
        let mut c = aerodb_server::client::VerifiedClient::connect_tls(
            &url,
            Some(WRITER),
            vkey,
            Some(ca.pem().as_bytes()),
        )
        .await
        .unwrap();
        for i in 0..10u8 {
            c.append(
                "t",
                aerodb_engine::Payload::Event(bytes::Bytes::from(vec![i; 10])),
            )
            .await
            .unwrap();
        }
    });
    let url = format!("https://127.0.0.1:{}", primary.grpc.port());
    let follow = |dir: &Path, cert: Option<(&str, &str)>| {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(primary.data.join("checkpoint.key"), data.join("checkpoint.key")).unwrap();
        let token = w(dir, "replicator.token", REPLICATOR);
        let ca_file = w(dir, "ca.pem", &ca.pem());
        let mut args = vec![
            "--role".to_owned(),
            "replica".into(),
            "--primary".into(),
            url.clone(),
            "--primary-token-file".into(),
            token,
            "--primary-ca-cert".into(),
            ca_file,
            "--segment-bytes".into(),
            SEGMENT.into(),
        ];
        if let Some((c, k)) = cert {
            args.extend([
                "--primary-client-cert".to_owned(),
                w(dir, "client.pem", c),
                "--primary-client-key".into(),
                w(dir, "client.key", k),
            ]);
        }
        start(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Without a client certificate: refused, and the replica says why.
    let bare = follow(rt.path(), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = ha(&bare);
        if h["replication_error"]
            .as_str()
            .unwrap()
            .contains("client certificate")
        {
            assert_eq!(h["applied_commit_id"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "no refusal: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // With one the CA signed for a name not on the list: refused.
    let other = follow(rt3.path(), Some((&other_cert, &other_key)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = ha(&other);
        if h["replication_error"].as_str().unwrap().contains("names none") {
            assert_eq!(h["applied_commit_id"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "no refusal of a foreign identity: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // With one the CA signed for an allowed name: it follows.
    let good = follow(rt2.path(), Some((&client_cert, &client_key)));
    wait_applied(&good, 10);
}
