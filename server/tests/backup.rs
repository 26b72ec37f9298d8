//! Backup and restore (issue 20) with the real binaries: an online backup under sustained appends, checked offline
//! and restored, then compared with the source (records, hashes, payloads, KV reads at several CommitIds); every
//! kind of tampering refused with a precise message; rollback refused against a newer trusted checkpoint; a forged
//! history signed with the same key refused by the consistency proof; an offline backup of a stopped node.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use common::*;

fn aerodb(args: &[&str]) -> (bool, String) {
    cli(args)
}

fn put(h: std::net::SocketAddr, key: &str, value: &str) -> u64 {
    let body = format!(
        "{{\"tenant\":\"acme\",\"ops\":[{{\"op\":\"put\",\"key\":\"{key}\",\"value\":\"{value}\"}}]}}"
    );
    let r = http(h, "POST", "/v1/records", Some(WRITER), Some(&body));
    assert!(
        (200..300).contains(&r.status),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["commit_id"].as_u64().unwrap()
}

fn latest_note(h: std::net::SocketAddr) -> String {
    http(h, "GET", "/v1/checkpoints/latest", Some(READER), None).json()["note"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// `backup verify` on a tampered copy of `good` must fail and say `expect`.
fn refused(good: &Path, scratch: &Path, what: &str, expect: &str, tamper: impl FnOnce(&Path)) {
    let d = scratch.join(what.replace(' ', "-"));
    copy_dir(good, &d);
    tamper(&d);
    let (ok, text) = aerodb(&["backup", "verify", d.to_str().unwrap()]);
    assert!(!ok, "{what}: a tampered backup verified:\n{text}");
    assert!(text.contains(expect), "{what}: expected {expect:?} in:\n{text}");
}

#[test]
fn online_backup_under_appends_verifies_restores_and_refuses_tampering_and_rollback() {
    let dir = TempDir::new("backup");
    let mut primary = start(
        dir.path(),
        &["--segment-bytes", "262144", "--checkpoint-interval-ms", "100"],
    );
    let h = primary.http;
    let grpc = format!("http://{}", primary.grpc);
    // A first state and a small backup of it (the future rollback).
    for i in 0..50 {
        put(h, &format!("k{i}"), &format!("v{i}-0"));
    }
    let old = dir.path().join("old-backup");
    let (ok, text) = aerodb(&[
        "--grpc",
        &grpc,
        "--token",
        ADMIN,
        "backup",
        "--out",
        old.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");

    // Sustained appends while the online backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                put(h, &format!("k{}", i % 50), &format!("{}-{i}", "x".repeat(400)));
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    while written.load(Ordering::Relaxed) < 1500 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let b = dir.path().join("backup");
    let (ok, text) = aerodb(&[
        "--grpc",
        &grpc,
        "--token",
        ADMIN,
        "--json",
        "backup",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let during = written.load(Ordering::Relaxed);
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let size = summary["records"].as_u64().unwrap();
    assert!(size >= 1550, "{summary}");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        written.load(Ordering::Relaxed) >= during,
        "appends went on during the backup"
    );
    // The CLI's manifest checksum is the file's.
    let (_, sum) = aerodb_engine::backup::sha256_file(&b.join("MANIFEST")).unwrap();
    assert_eq!(summary["manifest_sha256"], hex::encode(sum));
    assert!(
        segments(&b).len() >= 3,
        "small segments: the backup spans several"
    );

    let (ok, text) = aerodb(&[
        "backup",
        "verify",
        b.to_str().unwrap(),
        "--verifier-key",
        &primary.verifier_key,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("{size} records")), "{text}");

    // Every kind of tampering is refused with a precise message.
    let scratch = dir.path().join("tampered");
    refused(
        &b,
        &scratch,
        "flipped segment byte",
        "does not match its checksum",
        |d| {
            let s = &segments(d)[1];
            let mut bytes = std::fs::read(s).unwrap();
            bytes[5000] ^= 1;
            std::fs::write(s, bytes).unwrap();
        },
    );
    refused(
        &b,
        &scratch,
        "flipped manifest byte",
        "checksum does not match",
        |d| {
            let m = d.join("MANIFEST");
            let mut bytes = std::fs::read(&m).unwrap();
            bytes[30] ^= 1;
            std::fs::write(m, bytes).unwrap();
        },
    );
    refused(
        &b,
        &scratch,
        "flipped checkpoint byte",
        "checkpoints.log does not match its checksum",
        |d| {
            let c = d.join("checkpoints.log");
            let mut bytes = std::fs::read(&c).unwrap();
            let n = bytes.len();
            bytes[n - 10] ^= 1;
            std::fs::write(c, bytes).unwrap();
        },
    );
    refused(&b, &scratch, "missing file", "missing file wal/", |d| {
        std::fs::remove_file(&segments(d)[0]).unwrap();
    });
    refused(&b, &scratch, "extra file", "extra file wal/notes.txt", |d| {
        std::fs::write(d.join("wal/notes.txt"), b"hello").unwrap();
    });
    refused(
        &b,
        &scratch,
        "truncated segment",
        "bytes; the manifest says",
        |d| {
            let s = segments(d).pop().unwrap();
            let len = std::fs::metadata(&s).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&s)
                .unwrap()
                .set_len(len - 100)
                .unwrap();
        },
    );
    refused(
        &b,
        &scratch,
        "swapped segments",
        "wal/00000000000000000001.seg is",
        |d| {
            let s = segments(d);
            let (a, c) = (std::fs::read(&s[0]).unwrap(), std::fs::read(&s[1]).unwrap());
            // Same length pieces swapped (sealed segments of one capacity are similar but never equal).
            std::fs::write(&s[0], &c).unwrap();
            std::fs::write(&s[1], &a).unwrap();
        },
    );
    let (ok, text) = aerodb(&[
        "backup",
        "verify",
        b.to_str().unwrap(),
        "--verifier-key",
        &aerodb_engine::SigningKey::from_seed("aerodb-ledger", [9; 32])
            .unwrap()
            .verifier()
            .to_string(),
    ]);
    assert!(!ok && text.contains("is of another log"), "{text}");

    // Rollback: the older backup against the newer trusted checkpoint.
    let trusted = dir.path().join("trusted.note");
    std::fs::write(&trusted, latest_note(h)).unwrap();
    let key = primary.data.join("checkpoint.key");
    let (ok, text) = aerodb(&[
        "restore",
        old.to_str().unwrap(),
        "--to",
        dir.path().join("rolled-back").to_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
        "--role",
        "unassigned",
        "--trusted-checkpoint",
        trusted.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("ROLLBACK REFUSED"), "{text}");
    assert!(
        !dir.path().join("rolled-back").exists(),
        "a refused restore left a directory"
    );
    // The same with the trusted checkpoint fetched from the live node.
    let (ok, text) = aerodb(&[
        "--token",
        READER,
        "restore",
        old.to_str().unwrap(),
        "--to",
        dir.path().join("rolled-back").to_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
        "--role",
        "unassigned",
        "--trusted-from",
        &grpc,
    ]);
    assert!(!ok && text.contains("ROLLBACK REFUSED"), "{text}");

    // The real restore, anchored to a checkpoint older than the backup; then the restored node serves the same.
    let early = dir.path().join("early.note");
    let notes = std::fs::read(primary.data.join("checkpoints.log")).unwrap();
    let (all, _) = aerodb_engine::checkpoint::parse_entries(&notes).unwrap();
    std::fs::write(&early, &all[all.len() / 2]).unwrap();
    let restored_dir = dir.path().join("restored");
    let restored = restored_dir.join("data");
    let (ok, text) = aerodb(&[
        "restore",
        b.to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
        "--role",
        "primary",
        "--epoch",
        "2",
        "--trusted-checkpoint",
        early.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("restored {size} records")), "{text}");
    assert!(!restored_dir.join(".data.partial").exists());
    // A non-empty target is refused.
    let (ok, text) = aerodb(&[
        "restore",
        b.to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
        "--role",
        "unassigned",
        "--no-rollback-check",
    ]);
    assert!(!ok && text.contains("is not empty"), "{text}");

    let copy = start(&restored_dir, &["--segment-bytes", "262144", "--epoch", "2"]);
    let st = http(copy.http, "GET", "/v1/ha/status", Some(READER), None).json();
    assert_eq!(st["commit_id"].as_u64().unwrap(), size, "{st}");
    for id in [1, size / 3, size / 2, size - 1, size] {
        let a = http(h, "GET", &format!("/v1/records/{id}"), Some(READER), None).json();
        let c = http(copy.http, "GET", &format!("/v1/records/{id}"), Some(READER), None).json();
        assert_eq!(a["record_hash"], c["record_hash"], "record {id}");
        assert_eq!(
            a["canonical_base64"], c["canonical_base64"],
            "record {id} payload"
        );
    }
    for at in [10, size / 2, size] {
        for k in ["k0", "k7", "k49"] {
            let path = format!("/v1/kv/{k}?tenant=acme&at={at}");
            let a = http(h, "GET", &path, Some(READER), None);
            let c = http(copy.http, "GET", &path, Some(READER), None);
            assert_eq!(a.status, c.status, "{path}");
            assert_eq!(a.body, c.body, "{path}");
        }
    }
    // The restored primary's new term continues the chain.
    let next = put(copy.http, "after", "restore");
    assert_eq!(next, size + 1);

    // A forged history signed with the same key (a second node given a copy of the key) is refused against a
    // checkpoint of the real log.
    let forge_dir = dir.path().join("forge");
    std::fs::create_dir_all(forge_dir.join("data")).unwrap();
    std::fs::copy(&key, forge_dir.join("data/checkpoint.key")).unwrap();
    let forger = start(&forge_dir, &["--segment-bytes", "262144"]);
    let trusted_size = aerodb_engine::SignedCheckpoint::verify(
        &std::fs::read_to_string(&trusted).unwrap(),
        &aerodb_engine::VerifierKey::parse(&primary.verifier_key).unwrap(),
    )
    .unwrap()
    .checkpoint
    .size;
    let forged_size = trusted_size + 10;
    for i in 0..forged_size {
        if i % 500 == 0 || i + 1 == forged_size {
            put(forger.http, &format!("k{i}"), "forged");
        } else {
            http(
                forger.http,
                "POST",
                "/v1/records",
                Some(WRITER),
                Some("{\"tenant\":\"acme\",\"event\":\"f\"}"),
            );
        }
    }
    let forged = dir.path().join("forged-backup");
    let (ok, text) = aerodb(&[
        "--grpc",
        &format!("http://{}", forger.grpc),
        "--token",
        ADMIN,
        "backup",
        "--out",
        forged.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = aerodb(&[
        "restore",
        forged.to_str().unwrap(),
        "--to",
        dir.path().join("forged-restore").to_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
        "--role",
        "unassigned",
        "--trusted-checkpoint",
        trusted.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("FORK"), "{text}");

    // An offline backup of the stopped primary verifies too.
    assert!(primary.terminate().success());
    let off = dir.path().join("offline-backup");
    let (ok, text) = aerodb(&[
        "backup",
        "--data-dir",
        primary.data.to_str().unwrap(),
        "--out",
        off.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = aerodb(&["backup", "verify", off.to_str().unwrap()]);
    assert!(ok, "{text}");
    report_figure(
        "backup",
        &format!(
            "online backup of {size} records under sustained appends verified and restored (records, hashes, \
             payloads, KV at 3 CommitIds equal); 8 kinds of tampering, a rollback and a forged history refused"
        ),
    );
}

#[test]
fn a_restore_killed_at_any_point_leaves_nothing_that_starts() {
    let dir = TempDir::new("restore-crash");
    let srv = start(dir.path(), &["--segment-bytes", "262144"]);
    let batch = format!(
        "{{\"records\":[{}]}}",
        (0..200)
            .map(|i| format!("{{\"tenant\":\"acme\",\"event\":\"{}{i}\"}}", "y".repeat(300)))
            .collect::<Vec<_>>()
            .join(",")
    );
    for _ in 0..15 {
        let r = http(srv.http, "POST", "/v1/records/batch", Some(WRITER), Some(&batch));
        assert!(
            (200..300).contains(&r.status),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let b = dir.path().join("backup");
    let (ok, text) = aerodb(&[
        "--grpc",
        &format!("http://{}", srv.grpc),
        "--token",
        ADMIN,
        "backup",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let key = srv.data.join("checkpoint.key");
    let target = dir.path().join("restored");
    let args = |t: &Path| {
        vec![
            "restore".to_owned(),
            b.to_str().unwrap().to_owned(),
            "--to".to_owned(),
            t.to_str().unwrap().to_owned(),
            "--signing-key".to_owned(),
            key.to_str().unwrap().to_owned(),
            "--role".to_owned(),
            "unassigned".to_owned(),
            "--no-rollback-check".to_owned(),
        ]
    };
    let (mut killed_before, mut finished) = (0, 0);
    for delay_ms in [1u64, 3, 6, 10, 15, 25, 40, 60, 100] {
        let _ = std::fs::remove_dir_all(&target);
        let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .args(args(&target))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Either the restore finished (the directory is complete and verifies) or nothing is at the target.
        if target.exists() {
            assert!(
                status.success() || target.join("role.state").exists(),
                "a partial target after {delay_ms} ms"
            );
            let (ok, text) = aerodb(&["verify", target.to_str().unwrap()]);
            assert!(
                ok,
                "the target after a kill at {delay_ms} ms does not verify: {text}"
            );
            finished += 1;
        } else {
            killed_before += 1;
        }
    }
    assert!(
        killed_before > 0,
        "every restore finished before its kill: the test did not interrupt one"
    );
    // A later attempt clears the leftover work directory and succeeds.
    let _ = std::fs::remove_dir_all(&target);
    let (ok, text) = aerodb(&args(&target).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{text}");
    let (ok, text) = aerodb(&["verify", target.to_str().unwrap()]);
    assert!(ok, "{text}");
    report_figure(
        "restore crash",
        &format!(
            "restore killed at 9 points (1–100 ms): {killed_before} left nothing at the target, {finished} had \
             finished and verified; the next attempt restored"
        ),
    );
}

#[test]
fn an_online_backup_of_a_replica_is_bound_to_the_primarys_checkpoint() {
    let pdir = TempDir::new("backup-primary");
    let rdir = TempDir::new("backup-replica");
    let primary = start(
        pdir.path(),
        &["--segment-bytes", "65536", "--checkpoint-interval-ms", "50"],
    );
    let replica = start_replica_with(rdir.path(), &primary, &primary.data, "65536", &[]);
    for i in 0..300 {
        let body = format!("{{\"tenant\":\"acme\",\"event\":\"r{i}\"}}");
        assert!(
            (200..300).contains(&http(primary.http, "POST", "/v1/records", Some(WRITER), Some(&body)).status)
        );
    }
    // Wait until the replica holds a checkpoint of the whole log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let cp = http(replica.http, "GET", "/v1/checkpoints/latest", Some(READER), None);
        if cp.status == 200 && cp.json()["size"].as_u64() == Some(300) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not get the checkpoint of 300 records"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let b = rdir.path().join("backup");
    let (ok, text) = aerodb(&[
        "--grpc",
        &format!("http://{}", replica.grpc),
        "--token",
        ADMIN,
        "backup",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("backup of 300 records"), "{text}");
    let (ok, text) = aerodb(&[
        "backup",
        "verify",
        b.to_str().unwrap(),
        "--verifier-key",
        &primary.verifier_key,
    ]);
    assert!(ok, "{text}");

    // One backup at a time per node (a held stream blocks a second one until it is dropped); admins only. The
    // primary's backup is made larger than what HTTP/2 flow control lets the server send before the client
    // reads (~2.4 MB), so the held stream is still being sent when the second request arrives.
    let big = "x".repeat(20_000);
    for i in 0..120 {
        let body = format!("{{\"tenant\":\"acme\",\"event\":\"{big}{i}\"}}");
        assert!(
            (200..300).contains(&http(primary.http, "POST", "/v1/records", Some(WRITER), Some(&body)).status)
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use aerodb_proto::v1 as pb;
        let mut c = primary.grpc().await;
        let held = c.backup(with_token(pb::BackupRequest {}, ADMIN)).await.unwrap();
        let second = c.backup(with_token(pb::BackupRequest {}, ADMIN)).await;
        let Err(e) = second else {
            panic!("a second concurrent backup was accepted")
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        let denied = c
            .backup(with_token(pb::BackupRequest {}, WRITER))
            .await
            .err()
            .unwrap();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match c.backup(with_token(pb::BackupRequest {}, ADMIN)).await {
                Ok(mut s) => {
                    while s.get_mut().message().await.unwrap().is_some() {}
                    break;
                }
                Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the dropped backup still holds the slot"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    });
}
