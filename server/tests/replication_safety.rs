//! Regression tests for four replication safety holes, on the real binaries:
//! - synchronous mode wrote what it refused: a write answered `SYNC_REPLICAS_UNAVAILABLE` was already in the log
//!   (REST and gRPC, single and batch, `fail` and `block`; `block` answered 504 where the docs say 503);
//! - one `ReplicaHello` with `highest_epoch = 2^63` (or `u64::MAX`) from a replicator token halted a healthy primary
//!   for good; now an unproven claim is refused and counted, and only a checkpoint of the newer term signed by the
//!   log's key deposes the primary;
//! - a replica signed checkpoints (`POST /v1/checkpoints` answered 201), so its checkpoint log stopped being a
//!   copy of the primary's;
//! - a halted node answered `/v1/health` with 200.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aerodb_proto::v1::{self as pb, replica_message::Msg as RMsg};
use common::*;

const SEGMENT: &str = "65536";

fn ha(s: &Server) -> serde_json::Value {
    http(s.http, "GET", "/v1/ha/status", Some(READER), None).json()
}

fn tip(s: &Server) -> u64 {
    ha(s)["applied_commit_id"].as_u64().unwrap()
}

fn event(tenant: &str, body: &[u8]) -> pb::NewRecord {
    pb::NewRecord {
        tenant: tenant.into(),
        payload: Some(pb::new_record::Payload::Event(body.to_vec())),
    }
}

/// Every way to write, refused with `SYNC_REPLICAS_UNAVAILABLE` (503 / UNAVAILABLE); returns how many were tried.
async fn every_write_is_refused(p: &Server) -> usize {
    let single = r#"{"tenant":"t","event":"x"}"#;
    let batch = r#"{"records":[{"tenant":"t","event":"a"},{"tenant":"t","event":"b"}]}"#;
    for (path, body) in [
        ("/v1/records", single),
        ("/v1/records?prove=true", single),
        ("/v1/records/batch", batch),
    ] {
        let r = http(p.http, "POST", path, Some(WRITER), Some(body));
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (503, Some("SYNC_REPLICAS_UNAVAILABLE")),
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let mut c = p.grpc().await;
    let e = c
        .append(with_token(
            pb::AppendRequest {
                record: Some(event("t", b"g")),
                prove: false,
            },
            WRITER,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().starts_with("SYNC_REPLICAS_UNAVAILABLE"), "{e:?}");
    let e = c
        .append_batch(with_token(
            pb::AppendBatchRequest {
                records: vec![event("t", b"g1"), event("t", b"g2")],
            },
            WRITER,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_synchronous_writes_are_not_in_the_log() {
    let mut tried = 0;
    let mut waited = Duration::ZERO;
    for mode in ["fail", "block"] {
        let t = TempDir::new(&format!("sync-refuse-{mode}"));
        let p = start(
            t.path(),
            &[
                "--segment-bytes",
                SEGMENT,
                "--sync-replicas",
                "1",
                "--sync-wait",
                mode,
                "--request-timeout-ms",
                "300",
            ],
        );
        let started = Instant::now();
        tried += every_write_is_refused(&p).await;
        if mode == "block" {
            // Block mode waited (bounded) before refusing: 5 writes × 300 ms.
            waited = started.elapsed();
            assert!(waited >= Duration::from_millis(1500), "{waited:?}");
        }
        // Nothing refused reached the log: not one record, on either side of a restart.
        assert_eq!(tip(&p), 0, "{mode}: a refused write is in the log");
        let m = http(p.http, "GET", "/metrics", Some(READER), None);
        let text = String::from_utf8_lossy(&m.body).to_string();
        assert!(text.contains("aerodb_sync_refused_total 5"), "{text}");
        let mut p = p;
        p.terminate();
        let p = start(t.path(), &["--segment-bytes", SEGMENT]);
        assert_eq!(
            tip(&p),
            0,
            "{mode}: a refused write is in the log after a restart"
        );
    }
    report_figure(
        "R-6 sync refusals",
        &format!(
            "{tried} writes refused before their append (REST single/prove/batch, gRPC single/batch; fail and block \
             mode, block waited {} ms in all): 0 in the log",
            waited.as_millis()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_replicas_do_not_confirm_is_outcome_unknown_with_its_commit_id() {
    let (pt, rt) = (TempDir::new("sync-unknown-p"), TempDir::new("sync-unknown-r"));
    let p = start(
        pt.path(),
        &[
            "--segment-bytes",
            SEGMENT,
            "--sync-replicas",
            "1",
            "--request-timeout-ms",
            "400",
        ],
    );
    let r = start_replica(rt.path(), &p, &p.data);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha(&p)["write_block_active"] != false {
        assert!(Instant::now() < deadline, "the replica never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The replica stops (SIGSTOP): still counted as connected for the primary's silence limit, so the write is
    // admitted and appended — and its confirmation never comes.
    let pid = r.child.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let resp = http(
        p.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"maybe"}"#),
    );
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
    let body = resp.json();
    assert_eq!(
        (resp.status, body["error"]["code"].as_str()),
        (503, Some("OUTCOME_UNKNOWN")),
        "{body}"
    );
    let id = body["error"]["commit_id"].as_u64().expect("the CommitId");
    // The client can look it up: it is durable on the primary.
    let got = http(p.http, "GET", &format!("/v1/records/{id}"), Some(READER), None);
    assert_eq!(got.status, 200);
}

fn start_replica(dir: &Path, primary: &Server, key_from: &Path) -> Server {
    start_replica_with(dir, primary, key_from, SEGMENT, &[])
}

/// Opens a replication stream with `hello` and returns the first answer (a Welcome, or the refusal).
async fn hello(p: &Server, hello: pb::ReplicaHello) -> Result<pb::PrimaryMessage, tonic::Status> {
    let mut c = pb::replication_client::ReplicationClient::connect(format!("http://{}", p.grpc))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ReplicaMessage {
        msg: Some(RMsg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = c
        .stream(with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            REPLICATOR,
        ))
        .await?
        .into_inner();
    let first = inbound.message().await?;
    drop(tx);
    Ok(first.expect("a first message"))
}

fn claim(epoch: u64, proof: Option<String>) -> pb::ReplicaHello {
    pb::ReplicaHello {
        node_id: "intruder".into(),
        commit_id: 0,
        record_hash: vec![0; 32],
        epoch: 0,
        highest_epoch: epoch,
        epoch_proof: proof,
        witness_key: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_epoch_claim_leaves_the_primary_serving_and_a_proven_one_halts_it() {
    let t = TempDir::new("forged-epoch");
    let p = start(t.path(), &["--segment-bytes", SEGMENT]);
    for i in 0..3 {
        let r = http(
            p.http,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(&format!(r#"{{"tenant":"t","event":"e{i}"}}"#)),
        );
        assert_eq!(r.status, 201);
    }
    // A checkpoint signed by another key proves nothing either.
    let other = aerodb_engine::SigningKey::from_seed("aerodb-ledger", [3; 32]).unwrap();
    let foreign = aerodb_engine::Checkpoint {
        origin: "aerodb-ledger".into(),
        size: 0,
        root: aerodb_engine::merkle::empty_root(),
        epoch: aerodb_wal::Epoch(1 << 62),
    }
    .sign(&other)
    .note;
    for (epoch, proof) in [(1u64 << 63, None), (u64::MAX, None), (1 << 62, Some(foreign))] {
        let e = hello(&p, claim(epoch, proof)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("UNPROVEN_EPOCH_CLAIM"), "{e:?}");
        let h = ha(&p);
        assert_eq!(
            (h["state"].as_str(), h["is_leader"].as_bool(), h["epoch"].as_u64()),
            (Some("PrimaryActive"), Some(true), Some(1)),
            "claim {epoch}: {h}"
        );
        let w = http(
            p.http,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(r#"{"tenant":"t","event":"still writable"}"#),
        );
        assert_eq!(w.status, 201, "claim {epoch}");
    }
    let m = String::from_utf8_lossy(&http(p.http, "GET", "/metrics", Some(READER), None).body).to_string();
    assert!(m.contains("aerodb_unproven_epoch_claims_total 3"), "{m}");
    assert_eq!(http(p.http, "GET", "/v1/health", None, None).status, 200);

    // A proof: a checkpoint of epoch 2 signed by the log's own key (what a primary of term 2 signs first).
    let key = aerodb_engine::SigningKey::load(&p.data.join("checkpoint.key")).unwrap();
    let cp = http(p.http, "GET", "/v1/checkpoints/latest", Some(READER), None).json();
    let size = cp["size"].as_u64().unwrap();
    let root: [u8; 32] = hex::decode(cp["root"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let proof = aerodb_engine::Checkpoint {
        origin: key.name().to_owned(),
        size,
        root,
        epoch: aerodb_wal::Epoch(2),
    }
    .sign(&key)
    .note;
    let first = hello(&p, claim(2, Some(proof))).await.unwrap();
    assert!(
        matches!(first.msg, Some(pb::primary_message::Msg::Welcome(_))),
        "the replica is welcomed so it can halt on its side too"
    );
    let h = ha(&p);
    assert_eq!(h["state"], "ReplicationHalted", "{h}");
    assert!(
        h["halt_reason"]
            .as_str()
            .unwrap()
            .starts_with("AuthorityAmbiguity"),
        "{h}"
    );
    // Halted: health says so with 503, writes are refused.
    let health = http(p.http, "GET", "/v1/health", None, None);
    assert_eq!(health.status, 503, "{}", String::from_utf8_lossy(&health.body));
    assert_eq!(health.json()["serving"], false);
    let w = http(
        p.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"x"}"#),
    );
    assert_eq!(w.status, 503);
}

#[test]
fn a_replica_never_signs_and_its_checkpoint_log_is_the_primarys() {
    let (pt, rt) = (TempDir::new("sign-p"), TempDir::new("sign-r"));
    let mut p = start(
        pt.path(),
        &["--segment-bytes", SEGMENT, "--checkpoint-every-records", "7"],
    );
    let mut r = start_replica(rt.path(), &p, &p.data);
    let mut refused = 0;
    for i in 0..60 {
        let w = http(
            p.http,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(&format!(r#"{{"tenant":"t","event":"e{i}"}}"#)),
        );
        assert_eq!(w.status, 201);
        if i % 10 == 0 {
            // The replica refuses to sign; the primary signs.
            let c = http(r.http, "POST", "/v1/checkpoints", Some(ADMIN), None);
            assert_eq!(c.status, 503, "{}", String::from_utf8_lossy(&c.body));
            assert_eq!(c.json()["error"]["code"], "NOT_LEADER");
            refused += 1;
            assert_eq!(
                http(p.http, "POST", "/v1/checkpoints", Some(ADMIN), None).status,
                201
            );
        }
    }
    // A checkpoint of the whole log, so the primary's close signs nothing the replica could not have.
    assert_eq!(
        http(p.http, "POST", "/v1/checkpoints", Some(ADMIN), None).status,
        201
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (
            http(p.http, "GET", "/v1/checkpoints/latest", Some(READER), None).json(),
            http(r.http, "GET", "/v1/checkpoints/latest", Some(READER), None).json(),
        );
        if a == b && tip(&r) == 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica's checkpoints never caught up: {a} vs {b}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    r.terminate();
    p.terminate();
    let log = |d: &Path| std::fs::read(d.join("checkpoints.log")).unwrap();
    let (a, b) = (log(&p.data), log(&r.data));
    assert!(
        a.starts_with(&b),
        "the replica's checkpoint log is not a prefix of the primary's"
    );
    assert!(
        a == b,
        "the replica's checkpoint log is not the primary's ({} vs {} bytes)",
        b.len(),
        a.len()
    );
    report_figure(
        "E-2 only the primary signs",
        &format!(
            "{refused} checkpoint requests to a replica refused (NOT_LEADER); its checkpoints.log equals the \
             primary's ({} notes)",
            a.windows(2).filter(|w| w == b"\n\n").count()
        ),
    );
}
