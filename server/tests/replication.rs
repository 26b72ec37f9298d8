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
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    if !data.join("checkpoint.key").exists() {
        std::fs::copy(key_from.join("checkpoint.key"), data.join("checkpoint.key")).unwrap();
    }
    let token = dir.join("replicator.token");
    std::fs::write(&token, REPLICATOR).unwrap();
    let url = format!("http://{}", primary.grpc);
    let mut args = vec![
        "--role",
        "replica",
        "--primary",
        &url,
        "--primary-token-file",
        token.to_str().unwrap(),
        "--segment-bytes",
        SEGMENT,
        "--node-id",
        "replica-1",
    ];
    args.extend_from_slice(extra);
    start(dir, &args)
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

#[test]
fn a_replica_follows_restarts_and_ends_byte_identical() {
    let (pt, rt) = (Tmp::new("repl-p"), Tmp::new("repl-r"));
    let advertise = "http://127.0.0.1:1/primary";
    let primary = start(
        &pt.0,
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
    let mut replica = start_replica(&rt.0, &primary, &primary.data, &[]);
    // The live tail under concurrent appends, with a kill -9 of the replica in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            let addr = primary.http;
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
    std::thread::sleep(Duration::from_millis(700));
    replica.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let replica = start_replica(&rt.0, &primary, &primary.data, &[]);
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
    let a = http(primary.http, "GET", "/v1/kv/k7", Some(READER), None).json();
    let b = http(replica.http, "GET", "/v1/kv/k7", Some(READER), None).json();
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
    let (a, b) = (sealed(&primary.data), sealed(&replica.data));
    assert!(a.len() >= 3, "the log rolled: {a:?}");
    assert_eq!(a, b, "sealed segments differ");
    let report = aerodb_engine::verify_dir(
        &replica.data,
        &aerodb_engine::VerifyOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(report.problems.is_empty() && report.records == tip, "{report:?}");
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
    let (at, bt, rt) = (Tmp::new("fork-a"), Tmp::new("fork-b"), Tmp::new("fork-r"));
    let a = start(&at.0, &["--segment-bytes", SEGMENT]);
    // B holds the same log key but its own history.
    std::fs::create_dir_all(bt.0.join("data")).unwrap();
    std::fs::copy(a.data.join("checkpoint.key"), bt.0.join("data/checkpoint.key")).unwrap();
    let b = start(&bt.0, &["--segment-bytes", SEGMENT]);
    for i in 0..30 {
        append(&a, "a", i);
        append(&b, "b", i);
    }
    let mut r = start_replica(&rt.0, &a, &a.data, &[]);
    wait_applied(&r, 30);
    r.terminate();
    // Pointed at B, whose record 30 is not the replica's: a fork at the handshake.
    let mut r = start_replica(&rt.0, &b, &a.data, &[]);
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
    let check_refuses = |s: &Server| {
        for (m, p, b) in [
            ("GET", "/v1/records/1", None),
            ("GET", "/v1/kv/k1", None),
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
    let mut r = start_replica(&rt.0, &b, &a.data, &[]);
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
    let mut r = start_replica(&rt.0, &b, &a.data, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha(&r)["state"] != "ReplicationHalted" {
        assert!(Instant::now() < deadline, "the fork was not found again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(r.terminate().success());
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
    let r = start_replica(&rt.0, &b, &a.data, &[]);
    wait_applied(&r, 30);
    let (x, y) = (
        http(b.http, "GET", "/v1/records/30", Some(READER), None).json(),
        http(r.http, "GET", "/v1/records/30", Some(READER), None).json(),
    );
    assert_eq!(x, y);
    assert_eq!(ha(&r)["state"], "ReplicaActive");
    assert!(std::fs::read_dir(&r.data).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("divergent-")));
}

#[test]
fn epochs_fence_a_superseded_primary() {
    let (at, rt) = (Tmp::new("epoch-a"), Tmp::new("epoch-r"));
    let mut a = start(&at.0, &["--segment-bytes", SEGMENT]);
    for i in 0..10 {
        append(&a, "a", i);
    }
    let mut r = start_replica(&rt.0, &a, &a.data, &[]);
    wait_applied(&r, 10);
    r.terminate();
    a.terminate();
    // A new term: the old primary is promoted again with epoch 2 (standing in for a new primary of the same log),
    // and the replica follows it.
    let (ok, out) = aerodb_admin(&["promote", "--data-dir", a.data.to_str().unwrap(), "--epoch", "2"]);
    assert!(ok, "{out}");
    let a2 = start(&at.0, &["--segment-bytes", SEGMENT, "--epoch", "2"]);
    append(&a2, "a", 11);
    let mut r = start_replica(&rt.0, &a2, &a.data, &["--epoch", "2"]);
    wait_applied(&r, 11);
    assert_eq!(ha(&r)["epoch"], 2);
    r.terminate();
    let mut a2 = a2;
    a2.terminate();
    // A stale primary of epoch 1 (another node with the same log up to 10).
    let st = Tmp::new("epoch-stale");
    std::fs::create_dir_all(st.0.join("data")).unwrap();
    std::fs::copy(a.data.join("checkpoint.key"), st.0.join("data/checkpoint.key")).unwrap();
    let stale = start(&st.0, &["--segment-bytes", SEGMENT]);
    // The replica, which saw epoch 2, refuses it: EpochRegression.
    let r = start_replica(&rt.0, &stale, &a.data, &["--epoch", "2"]);
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
    let (pt, rt) = (Tmp::new("sync-p"), Tmp::new("sync-r"));
    let p = start(
        &pt.0,
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
    let mut replica = start_replica(&rt.0, &p, &p.data, &[]);
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .arg("admin")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
