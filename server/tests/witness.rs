//! Replicas as witnesses (issue 22) on the real binaries: a primary and two replicas. Each replica cosigns every
//! checkpoint it receives (C2SP cosignature/v1, its own key), the primary attaches the cosignatures and serves
//! the newest checkpoint with at least k of them (`?cosigned=k`, gRPC `cosigned`); losing a witness stops new
//! checkpoints from reaching the quorum and HA status shows it; a restarted witness keeps its state and cosigns
//! again after the checkpoints it missed. Every node also answers C2SP `tlog-witness` `add-checkpoint`: 409 with
//! the latest size to a client that is behind, 200 with a cosignature after a consistency proof, 403 to a
//! checkpoint signed by another key, 404 to an unknown log, 409 to a forged split view (same size, other root,
//! signed with the log's key), 422 to a bad proof, 400 to a rollback, 413 to an oversized body.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::time::{Duration, Instant};

use aerodb_engine::{
    checkpoint::TreeHead,
    witness::{valid_cosignatures, AddCheckpoint, MAX_REQUEST_BYTES},
    SigningKey, VerifierKey,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::*;

const SEGMENT: &str = "65536";

fn append(s: &Server, i: u64) {
    let body = format!(
        r#"{{"tenant":"t","ops":[{{"op":"put","key":"k{}","value":"v{i}"}}]}}"#,
        i % 20
    );
    let r = http(s.http, "POST", "/v1/records", Some(WRITER), Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

fn ha(s: &Server) -> serde_json::Value {
    http(s.http, "GET", "/v1/ha/status", Some(READER), None).json()
}

fn checkpoint_now(s: &Server) -> u64 {
    let r = http(s.http, "POST", "/v1/checkpoints", Some(ADMIN), None);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["size"].as_u64().unwrap()
}

/// Appends records `range`, signs a checkpoint: its size and note.
fn append_and_sign(s: &Server, range: std::ops::Range<u64>) -> (u64, String) {
    for i in range {
        append(s, i);
    }
    let size = checkpoint_now(s);
    let note = http(s.http, "GET", "/v1/checkpoints/latest", Some(READER), None).json()["note"]
        .as_str()
        .unwrap()
        .to_owned();
    (size, note)
}

/// `GET /v1/checkpoints/latest?cosigned=k`: status and JSON.
fn cosigned(s: &Server, k: usize) -> (u16, serde_json::Value) {
    let r = http(
        s.http,
        "GET",
        &format!("/v1/checkpoints/latest?cosigned={k}"),
        Some(READER),
        None,
    );
    let json = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, json)
}

/// Waits until the newest checkpoint with `k` cosignatures covers at least `size` records; returns its note.
fn wait_cosigned(s: &Server, k: usize, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, j) = cosigned(s, k);
        if status == 200 && j["size"].as_u64().unwrap() >= size {
            return j["note"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of size {size} with {k} cosignatures: {status} {j}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `POST /witness/add-checkpoint` with a text body: status and body text.
fn add_checkpoint(s: &Server, body: &str) -> (u16, String) {
    let req = format!(
        "POST /witness/add-checkpoint HTTP/1.1\r\nHost: w\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw(s.http, req.as_bytes());
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The primary's consistency proof between two sizes.
fn consistency(s: &Server, old: u64, new: u64) -> Vec<[u8; 32]> {
    let r = http(
        s.http,
        "GET",
        &format!("/v1/proofs/consistency?old_size={old}&new_size={new}"),
        Some(READER),
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

fn replica(dir: &std::path::Path, primary: &Server, id: &str) -> Server {
    start_replica_with(dir, primary, &primary.data, SEGMENT, &["--node-id", id])
}

#[test]
fn replicas_cosign_checkpoints_and_the_primary_publishes_them_at_quorum() {
    let dir = TempDir::new("witness-quorum");
    let (pd, r1d, r2d) = (dir.path().join("p"), dir.path().join("r1"), dir.path().join("r2"));
    for d in [&pd, &r1d, &r2d] {
        std::fs::create_dir_all(d).unwrap();
    }
    let primary = start(
        &pd,
        &[
            "--segment-bytes",
            SEGMENT,
            "--checkpoint-interval-ms",
            "100",
            "--witness-quorum",
            "2",
            "--node-id",
            "p",
        ],
    );
    let r1 = replica(&r1d, &primary, "r1");
    let mut r2 = replica(&r2d, &primary, "r2");
    let log = VerifierKey::parse(&primary.verifier_key).unwrap();
    let witnesses: Vec<VerifierKey> = [&r1, &r2]
        .iter()
        .map(|r| VerifierKey::parse(&r.witness_key).unwrap())
        .collect();
    assert_ne!(witnesses[0], witnesses[1], "each node has its own witness key");
    for i in 0..40 {
        append(&primary, i);
    }

    // Both replicas cosign; the primary publishes a checkpoint with both cosignatures covering the 40 records.
    let note = wait_cosigned(&primary, 2, 40);
    assert!(aerodb_engine::SignedCheckpoint::verify(&note, &log).is_ok());
    assert_eq!(valid_cosignatures(&note, &witnesses).len(), 2, "{note}");
    let h = ha(&primary);
    assert_eq!(
        (h["witness_quorum"].as_u64(), h["witnesses_known"].as_u64()),
        (Some(2), Some(2)),
        "{h}"
    );
    assert!(
        h["cosigned_size"].as_u64().unwrap() >= 40 && h["cosigned_by"].as_u64() == Some(2),
        "{h}"
    );
    let h1 = ha(&r1);
    assert_eq!(h1["witness_key"].as_str(), Some(r1.witness_key.as_str()));
    assert!(h1["cosignatures_made"].as_u64().unwrap() >= 1, "{h1}");
    assert!(r1.data.join("witness.state").exists() && r1.data.join("witness.key").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(r1.data.join("witness.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Quorum loss: with one witness gone, new checkpoints get one cosignature, none reaches two; status shows it.
    r2.kill9();
    for i in 40..60 {
        append(&primary, i);
    }
    let size = checkpoint_now(&primary);
    assert_eq!(size, 60);
    wait_cosigned(&primary, 1, 60);
    std::thread::sleep(Duration::from_millis(500));
    let (_, j) = cosigned(&primary, 2);
    assert!(
        j["size"].as_u64().unwrap() < 60,
        "a checkpoint reached quorum without its second witness: {j}"
    );
    let h = ha(&primary);
    assert!(h["cosigned_size"].as_u64().unwrap() < 60, "{h}");

    // The witness comes back: it kept its state, and cosigns again after the checkpoints it missed.
    let state_before = std::fs::read(r2d.join("data/witness.state")).unwrap();
    let r2 = replica(&r2d, &primary, "r2");
    assert_eq!(
        VerifierKey::parse(&r2.witness_key).unwrap(),
        witnesses[1],
        "the key survives a restart"
    );
    for i in 60..70 {
        append(&primary, i);
    }
    let note = wait_cosigned(&primary, 2, 70);
    assert_eq!(valid_cosignatures(&note, &witnesses).len(), 2);
    assert_ne!(
        std::fs::read(r2d.join("data/witness.state")).unwrap(),
        state_before
    );
    // gRPC serves the same.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = rt.block_on(async {
        let mut c = primary.grpc().await;
        c.latest_checkpoint(with_token(
            aerodb_proto::v1::LatestCheckpointRequest { cosigned: 2 },
            READER,
        ))
        .await
        .unwrap()
        .into_inner()
    });
    assert!(cp.size >= 70 && cp.witnesses.len() == 2, "{cp:?}");
    let (status, _) = cosigned(&primary, 3);
    assert_eq!(
        status, 404,
        "no checkpoint can have three cosignatures from two witnesses"
    );

    // Clients that require the witnesses: the CLI's checkpoint, proof, append and audit commands.
    let grpc = format!("http://{}", primary.grpc);
    let both = format!("{},{}", r1.witness_key, r2.witness_key);
    let stranger = SigningKey::from_seed_typed(
        "witness.example/stranger",
        aerodb_engine::KeyType::CosignatureV1,
        [9; 32],
    )
    .unwrap()
    .verifier()
    .to_string();
    let run = |token: &str, extra: &[&str]| {
        let mut a = vec!["--grpc", grpc.as_str(), "--token", token];
        a.extend_from_slice(extra);
        cli(&a)
    };
    let (ok, out) = run(READER, &["--witness", &both, "checkpoint"]);
    assert!(ok, "{out}");
    let (ok, out) = run(
        READER,
        &[
            "--witness",
            &both,
            "proof",
            "5",
            "--verifier-key",
            &primary.verifier_key,
        ],
    );
    assert!(ok && out.contains("OK: record 5"), "{out}");
    let (ok, out) = run(
        WRITER,
        &[
            "--witness",
            &both,
            "--witness-threshold",
            "2",
            "append",
            "--tenant",
            "t",
            "--event",
            "e",
            "--verifier-key",
            &primary.verifier_key,
        ],
    );
    assert!(ok && out.contains("cosigned by the required witnesses"), "{out}");
    // A witness the cluster does not have: refused, whatever the server says.
    let (ok, out) = run(READER, &["--witness", &stranger, "checkpoint"]);
    assert!(
        !ok && out.contains("0 valid cosignatures of the 1 required"),
        "{out}"
    );
    let (ok, out) = run(
        READER,
        &[
            "--witness",
            &stranger,
            "proof",
            "5",
            "--verifier-key",
            &primary.verifier_key,
        ],
    );
    assert!(!ok, "{out}");
    // The auditor bundle keeps the cosignatures; verifying it can require them.
    let bundle = dir.path().join("bundle.aerodb");
    let bundle_s = bundle.to_str().unwrap();
    let (ok, out) = run(
        READER,
        &[
            "--witness",
            &both,
            "audit",
            "export",
            "--from",
            "1",
            "--to",
            "20",
            "--out",
            bundle_s,
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        READER,
        &[
            "--witness",
            &both,
            "audit",
            "verify",
            bundle_s,
            "--verifier-key",
            &primary.verifier_key,
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        READER,
        &[
            "--witness",
            &stranger,
            "audit",
            "verify",
            bundle_s,
            "--verifier-key",
            &primary.verifier_key,
        ],
    );
    assert!(!ok && out.contains("required"), "{out}");
    report_figure(
        "witness quorum (2 replicas)",
        &format!("cosigned checkpoints published up to size {}; quorum loss held them at < 60 until the witness returned", cp.size),
    );
    drop(r1);
    drop(r2);
    // Offline: the stopped primary's data directory holds the published cosigned checkpoint.
    let mut primary = primary;
    assert!(primary.terminate().success());
    let data = pd.join("data");
    let (ok, out) = cli(&["--witness", &both, "verify", data.to_str().unwrap()]);
    assert!(ok && out.contains("cosigned checkpoint of size"), "{out}");
    let (ok, out) = cli(&["--witness", &stranger, "verify", data.to_str().unwrap()]);
    assert!(!ok, "{out}");
}

#[test]
fn every_node_answers_tlog_witness_add_checkpoint() {
    let dir = TempDir::new("witness-api");
    let (pd, rd) = (dir.path().join("p"), dir.path().join("r"));
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(&rd).unwrap();
    let primary = start(&pd, &["--segment-bytes", SEGMENT, "--node-id", "p"]);
    // The replica also witnesses a foreign log (no epoch line in its checkpoints).
    let foreign = SigningKey::from_seed("example.com/foreign", [6; 32]).unwrap();
    let foreign_vkey = foreign.verifier().to_string();
    let r = start_replica_with(
        &rd,
        &primary,
        &primary.data,
        SEGMENT,
        &["--node-id", "r", "--witness-logs", &foreign_vkey],
    );
    let wkey = VerifierKey::parse(&r.witness_key).unwrap();
    let (size, note) = append_and_sign(&primary, 0..30);
    // The replica cosigned over replication already; a client that does not know its size learns it from 409.
    let deadline = Instant::now() + Duration::from_secs(20);
    let latest = loop {
        let (status, body) = add_checkpoint(
            &r,
            &AddCheckpoint {
                old_size: 0,
                proof: vec![],
                note: note.clone(),
            }
            .encode(),
        );
        if status == 409 {
            break body.trim().parse::<u64>().unwrap();
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(latest > 0 && latest <= size);
    // With the right old size and the primary's consistency proof: 200 and a cosignature that verifies.
    let proof = if latest == size {
        vec![]
    } else {
        consistency(&primary, latest, size)
    };
    let req = AddCheckpoint {
        old_size: latest,
        proof,
        note: note.clone(),
    };
    let (status, lines) = add_checkpoint(&r, &req.encode());
    assert_eq!(status, 200, "{lines}");
    let cosigned = aerodb_engine::witness::attach_lines(&note, &lines).unwrap();
    assert_eq!(
        valid_cosignatures(&cosigned, std::slice::from_ref(&wkey)).len(),
        1
    );

    // A forged split view: same size, another root, signed with the log's own key (copied from the primary).
    let log_key = std::fs::read_to_string(primary.data.join("checkpoint.key")).unwrap();
    let log_key = SigningKey::parse_private(&log_key).unwrap();
    let head = TreeHead::parse(&note[..=note.rfind("\n\n").unwrap()]).unwrap();
    let forged = log_key.sign_note(&format!(
        "{}\n{size}\n{}\n{}\n",
        head.origin,
        B64.encode([0xAB; 32]),
        head.extensions.join("\n")
    ));
    let (status, body) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: size,
            proof: vec![],
            note: forged,
        }
        .encode(),
    );
    assert_eq!(status, 409, "{body}");
    // A rogue key for the same origin: 403. An unknown origin: 404.
    let rogue = SigningKey::from_seed(&head.origin, [1; 32]).unwrap();
    let rogue_note = rogue.sign_note(&note[..=note.rfind("\n\n").unwrap()]);
    let (status, _) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: size,
            proof: vec![],
            note: rogue_note,
        }
        .encode(),
    );
    assert_eq!(status, 403);
    let stranger = SigningKey::from_seed("example.com/stranger", [2; 32]).unwrap();
    let stranger_note = stranger.sign_note(&format!("example.com/stranger\n1\n{}\n", B64.encode([1u8; 32])));
    let (status, _) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: stranger_note,
        }
        .encode(),
    );
    assert_eq!(status, 404);
    // A bigger checkpoint with a broken proof: 422; a rollback (old above the size): 400.
    let (size2, note2) = append_and_sign(&primary, 30..45);
    let mut proof = consistency(&primary, size, size2);
    proof[0][0] ^= 1;
    // The replica may have cosigned size2 over replication already (then 409 with it); else the proof is 422.
    let (status, body) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: size,
            proof,
            note: note2.clone(),
        }
        .encode(),
    );
    assert!(
        // (or, if the replica cosigned a newer checkpoint over replication first, a background one included,
        // 409 with that size: the broken proof is never accepted either way)
        status == 422 || (status == 409 && body.trim().parse::<u64>().is_ok_and(|s| s > size)),
        "{status} {body}"
    );
    let (status, _) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: size2 + 1,
            proof: vec![],
            note: note2.clone(),
        }
        .encode(),
    );
    assert_eq!(status, 400);

    // The foreign log: first contact (old 0), then an extension with a consistency proof, computed here.
    let mut tree = aerodb_engine::merkle::MemTree::new();
    for i in 0..20u64 {
        tree.push(aerodb_engine::merkle::leaf_hash(&i.to_le_bytes()));
    }
    let fnote = |n: u64| {
        foreign.sign_note(&format!(
            "example.com/foreign\n{n}\n{}\n",
            B64.encode(aerodb_engine::merkle::root(&tree, n).unwrap())
        ))
    };
    let (status, l1) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: fnote(7),
        }
        .encode(),
    );
    assert_eq!(status, 200, "{l1}");
    let p = aerodb_engine::merkle::consistency_proof(&tree, 7, 20).unwrap();
    let (status, l2) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: 7,
            proof: p,
            note: fnote(20),
        }
        .encode(),
    );
    assert_eq!(status, 200, "{l2}");
    let (status, body) = add_checkpoint(
        &r,
        &AddCheckpoint {
            old_size: 7,
            proof: vec![],
            note: fnote(20),
        }
        .encode(),
    );
    assert_eq!((status, body.trim()), (409, "20"));
    // An oversized body is refused before it is read.
    let (status, _) = add_checkpoint(&r, &"x".repeat(MAX_REQUEST_BYTES + 1));
    assert_eq!(status, 413);
    let _ = primary;
}

/// A split view: whoever holds the log's key shows a witness a history other than the one it cosigned (here a
/// second primary with the same key and other records). The witness cosigns nothing of it and halts, with the
/// evidence; the second primary never gets a cosignature.
#[test]
fn a_witness_shown_another_history_under_the_same_key_halts_and_cosigns_nothing() {
    let dir = TempDir::new("witness-split-view");
    let (p1d, p2d, rd) = (dir.path().join("p1"), dir.path().join("p2"), dir.path().join("r"));
    for d in [&p1d, &p2d, &rd] {
        std::fs::create_dir_all(d).unwrap();
    }
    let flags = [
        "--segment-bytes",
        SEGMENT,
        "--checkpoint-interval-ms",
        "100",
        "--node-id",
        "p",
    ];
    let mut p1 = start(&p1d, &flags);
    let mut r = replica(&rd, &p1, "r");
    for i in 0..30 {
        append(&p1, i);
    }
    wait_cosigned(&p1, 1, 30);
    r.kill9();
    assert!(p1.terminate().success());

    // The same key, another history: 40 other records.
    std::fs::create_dir_all(p2d.join("data")).unwrap();
    std::fs::copy(p1d.join("data/checkpoint.key"), p2d.join("data/checkpoint.key")).unwrap();
    let p2 = start(&p2d, &flags);
    assert_eq!(p2.verifier_key, p1.verifier_key);
    for i in 0..40 {
        append(&p2, 1000 + i);
    }
    // The witness keeps only its key and what it cosigned; its log is rebuilt from the second primary.
    let data = rd.join("data");
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        let keep = ["witness.key", "witness.state"].iter().any(|k| p.ends_with(k));
        if !keep {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    let r = replica(&rd, &p2, "r");
    let deadline = Instant::now() + Duration::from_secs(20);
    let h = loop {
        let h = ha(&r);
        if h["state"] == "ReplicationHalted" {
            break h;
        }
        assert!(Instant::now() < deadline, "the witness did not halt: {h}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let reason = h["halt_reason"].as_str().unwrap();
    assert!(
        reason.contains("WITNESS_REFUSED") && reason.contains("fork"),
        "{reason}"
    );
    assert_eq!(h["cosignatures_made"].as_u64(), Some(0), "{h}");
    let (status, j) = cosigned(&p2, 1);
    assert_eq!(status, 404, "the second history got a cosignature: {j}");
    let evidence = std::fs::read_dir(rd.join("data"))
        .unwrap()
        .chain(std::fs::read_dir(&rd).unwrap())
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("evidence"));
    assert!(evidence, "no evidence file written");
}

/// The primary asks an external C2SP witness (here another AeroDB node, of another log, told to witness this
/// one with `--witness-logs`) to cosign each checkpoint, learning the witness's size from its 409 and sending the
/// consistency proof from there; the cosignatures count toward the quorum because the witness's key is in
/// `--witnesses`.
#[test]
fn a_primary_asks_external_witnesses_to_cosign() {
    let dir = TempDir::new("witness-external");
    let (pd, wd) = (dir.path().join("p"), dir.path().join("w"));
    std::fs::create_dir_all(pd.join("data")).unwrap();
    std::fs::create_dir_all(&wd).unwrap();
    let key_path = pd.join("data/checkpoint.key");
    let (ok, out) = cli(&["--json", "keygen", "--out", key_path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let log_key = serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()
        ["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let w = start(
        &wd,
        &["--origin", "example.com/witness-host", "--witness-logs", &log_key],
    );
    // An AeroDB node's submission prefix is /witness.
    let url = format!("http://{}/witness", w.http);
    let p = start(
        &pd,
        &[
            "--checkpoint-interval-ms",
            "100",
            "--witness-urls",
            &url,
            "--witnesses",
            &w.witness_key,
            "--witness-quorum",
            "1",
        ],
    );
    assert_eq!(p.verifier_key, log_key);
    for i in 0..25 {
        append(&p, i);
    }
    let note = wait_cosigned(&p, 1, 25);
    let wkey = VerifierKey::parse(&w.witness_key).unwrap();
    assert_eq!(
        valid_cosignatures(&note, std::slice::from_ref(&wkey)).len(),
        1,
        "{note}"
    );
    for i in 25..40 {
        append(&p, i);
    }
    wait_cosigned(&p, 1, 40);
    assert!(ha(&w)["cosignatures_made"].as_u64().unwrap() >= 2);
    // Restarted, the primary starts again from old 0: the witness's 409 tells it where to go on from.
    let mut p = p;
    assert!(p.terminate().success());
    let p = start(
        &pd,
        &[
            "--witness-urls",
            &url,
            "--witnesses",
            &w.witness_key,
            "--witness-quorum",
            "1",
            "--checkpoint-interval-ms",
            "100",
        ],
    );
    for i in 40..50 {
        append(&p, i);
    }
    wait_cosigned(&p, 1, 50);
}

/// The witness API is unauthenticated: its body is bounded before it is read (413 above) and must arrive within
/// the head timeout, or the answer is 408 and nothing is cosigned.
#[test]
fn a_stalled_witness_request_is_cut_off() {
    use std::io::{Read, Write};
    let dir = TempDir::new("witness-stall");
    let n = start(dir.path(), &["--header-timeout-ms", "300"]);
    let mut s = std::net::TcpStream::connect(n.http).unwrap();
    s.write_all(b"POST /witness/add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 1000\r\n\r\nold 0\n")
        .unwrap();
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        t.elapsed()
    );
    assert_eq!(ha(&n)["cosignatures_made"].as_u64(), Some(0));
}
