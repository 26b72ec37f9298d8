//! The auditor bundle (issue 20) with the real binaries: exported from a running node, verified offline with the
//! log's verifier key only (strict mode included), for a range and for one tenant; every field tampered with (and
//! the checksum recomputed, as a forger would) is refused with a precise message.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use aerodb_engine::audit::Bundle;
use common::*;

fn aerodb(args: &[&str]) -> (bool, String) {
    cli(args)
}

#[test]
fn bundles_verify_offline_and_every_tampered_field_is_refused() {
    let dir = TempDir::new("audit");
    let srv = start(dir.path(), &[]);
    let h = srv.http;
    let grpc = format!("http://{}", srv.grpc);
    let event = |tenant: &str, i: u32| {
        let body = format!("{{\"tenant\":\"{tenant}\",\"event\":\"e{i}\"}}");
        let r = http(h, "POST", "/v1/records", Some(WRITER), Some(&body));
        assert!((200..300).contains(&r.status));
    };
    for i in 0..100 {
        event(if i % 3 == 0 { "acme" } else { "globex" }, i);
    }
    let cp = |path: &str| {
        let r = http(h, "POST", "/v1/checkpoints", Some(ADMIN), None);
        assert!(
            (200..300).contains(&r.status),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let note = r.json()["note"].as_str().unwrap().to_owned();
        std::fs::write(dir.path().join(path), &note).unwrap();
        note
    };
    cp("early.note");
    for i in 100..300 {
        event(if i % 3 == 0 { "acme" } else { "globex" }, i);
    }
    cp("late.note");
    let key = srv.verifier_key.clone();
    let bundle = dir.path().join("range.bundle");
    let (ok, text) = aerodb(&[
        "--grpc",
        &grpc,
        "--token",
        READER,
        "audit",
        "export",
        "--from",
        "50",
        "--to",
        "300",
        "--since",
        dir.path().join("early.note").to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let verify = |p: &std::path::Path, strict: bool| {
        let mut args = vec!["audit", "verify", p.to_str().unwrap(), "--verifier-key", &key];
        if strict {
            args.push("--strict");
        }
        aerodb(&args)
    };
    let (ok, text) = verify(&bundle, true);
    assert!(ok, "{text}");
    assert!(
        text.contains("251 records") && text.contains("consistent with the earlier checkpoint"),
        "{text}"
    );

    // One tenant's records (not contiguous: still strict-valid).
    let acme = dir.path().join("acme.bundle");
    let (ok, text) = aerodb(&[
        "--grpc",
        &grpc,
        "--token",
        READER,
        "audit",
        "export",
        "--from",
        "1",
        "--to",
        "300",
        "--tenant",
        "acme",
        "--out",
        acme.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = verify(&acme, true);
    assert!(ok && text.contains("100 records"), "{text}");
    // Beyond the newest checkpoint: refused with the reason.
    let (ok, text) = aerodb(&[
        "--grpc",
        &grpc,
        "--token",
        READER,
        "audit",
        "export",
        "--from",
        "1",
        "--to",
        "9999",
        "--out",
        dir.path().join("x.bundle").to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("beyond it"), "{text}");

    // A flipped byte: the checksum.
    let good = std::fs::read(&bundle).unwrap();
    let t = dir.path().join("t.bundle");
    let mut flipped = good.clone();
    flipped[200] ^= 1;
    std::fs::write(&t, &flipped).unwrap();
    let (ok, text) = verify(&t, false);
    assert!(!ok && text.contains("checksum"), "{text}");

    // Each field changed by a forger who recomputes the checksum.
    let b = Bundle::decode(&good).unwrap();
    let mut cases: Vec<(&str, &str, Bundle)> = Vec::new();
    let mut x = b.clone();
    x.records[10].canonical[20] ^= 1;
    cases.push(("record bytes", "record 60:", x));
    let mut x = b.clone();
    x.records[10].proof[0][0] ^= 1;
    cases.push(("inclusion proof", "record 60: not included", x));
    let mut x = b.clone();
    x.records[10].commit_id += 1;
    cases.push(("record CommitId", "its bytes say CommitId 60", x));
    let mut x = b.clone();
    x.records.remove(10);
    cases.push(("a dropped record", "strict: records 60 to 60 are missing", x));
    let mut x = b.clone();
    x.records.swap(3, 4);
    cases.push(("reordered records", "not in CommitId order", x));
    let mut x = b.clone();
    x.checkpoint = x.checkpoint.replacen("\n300\n", "\n299\n", 1);
    cases.push(("checkpoint size", "the checkpoint does not verify", x));
    let mut x = b.clone();
    if let Some((note, _)) = &mut x.prior {
        *note = note.replacen("epoch", "epoch 9", 1);
    }
    cases.push(("prior checkpoint", "the prior checkpoint does not verify", x));
    let mut x = b.clone();
    if let Some((_, proof)) = &mut x.prior {
        proof[0][0] ^= 1;
    }
    cases.push(("consistency proof", "is not consistent with the checkpoint", x));
    let mut x = b.clone();
    x.tenant = Some("acme".into());
    cases.push(("tenant", "not \"acme\"", x));
    for (what, expect, x) in cases {
        std::fs::write(&t, x.encode()).unwrap();
        let (ok, text) = verify(&t, true);
        assert!(!ok, "{what}: a tampered bundle verified:\n{text}");
        assert!(text.contains(expect), "{what}: expected {expect:?} in:\n{text}");
    }
    // Another log's key.
    let other = aerodb_engine::SigningKey::from_seed("aerodb-ledger", [4; 32])
        .unwrap()
        .verifier()
        .to_string();
    let (ok, text) = aerodb(&[
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--verifier-key",
        &other,
    ]);
    assert!(!ok && text.contains("does not verify"), "{text}");
    report_figure(
        "audit bundle",
        "251-record and one-tenant bundles verified offline (strict); a flipped byte and 9 forged fields refused",
    );
}
