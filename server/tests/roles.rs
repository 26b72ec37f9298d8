//! Static authority on the real binaries (R-1, R-2, H-3): the role is persisted and re-established at start; a
//! node never promotes itself; epochs never go back; a replica refuses writes with NOT_LEADER and the leader's
//! URL; a halted node starts halted (status only, no reads or writes) until an operator resumes it; admin commands refuse a running node.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use aerodb_replication::{
    role::{HaltReason, Observation},
    state_file::RoleFile,
};
use common::*;

fn admin(args: &[&str]) -> (bool, String) {
    cli(&[&["admin"], args].concat())
}

#[test]
fn roles_are_persisted_explicit_and_never_inferred() {
    let tmp = TempDir::new("roles");
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();

    // Bootstrap as primary of epoch 1.
    let mut srv = start(tmp.path(), &[]);
    let ha = http(srv.http, "GET", "/v1/ha/status", Some(READER), None).json();
    assert_eq!(
        (ha["state"].as_str(), ha["epoch"].as_u64()),
        (Some("PrimaryActive"), Some(1))
    );
    assert_eq!(
        http(
            srv.http,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(r#"{"tenant":"t","event":"e1"}"#)
        )
        .status,
        201
    );
    // Admin commands refuse a running node.
    let (ok, out) = admin(&["role", "--data-dir", d]);
    assert!(!ok && out.contains("stop the server"), "{out}");
    assert!(srv.terminate().success());

    let (ok, out) = admin(&["role", "--data-dir", d]);
    assert!(ok && out.contains("PrimaryActive"), "{out}");
    // Demote to a replica of a newer term.
    let (ok, out) = admin(&[
        "demote",
        "--data-dir",
        d,
        "--epoch",
        "2",
        "--primary",
        "http://127.0.0.1:9",
    ]);
    assert!(ok && out.contains("ReplicaActive"), "{out}");
    // It will not start as primary: no self-promotion.
    let err = refuse(tmp.path(), &[]);
    assert!(err.contains("never promotes itself"), "{err}");
    // As a replica it serves reads and refuses writes with NOT_LEADER and the leader's URL.
    let mut srv = start(
        tmp.path(),
        &[
            "--role",
            "replica",
            "--primary",
            "http://127.0.0.1:9",
            "--epoch",
            "2",
        ],
    );
    let r = http(
        srv.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"nope"}"#),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "NOT_LEADER");
    assert_eq!(r.json()["error"]["leader_url"], "http://127.0.0.1:9");
    assert_eq!(
        http(srv.http, "GET", "/v1/records/1", Some(READER), None).status,
        200
    );
    let ha = http(srv.http, "GET", "/v1/ha/status", Some(READER), None).json();
    assert_eq!(
        (
            ha["role"].as_str(),
            ha["state"].as_str(),
            ha["is_leader"].as_bool()
        ),
        (Some("replica"), Some("ReplicaActive"), Some(false))
    );
    assert!(srv.terminate().success());

    // Promotion needs an epoch above every epoch seen.
    let (ok, out) = admin(&["promote", "--data-dir", d, "--epoch", "2"]);
    assert!(!ok && out.contains("not above"), "{out}");
    let (ok, out) = admin(&["promote", "--data-dir", d, "--epoch", "3"]);
    assert!(ok && out.contains("PrimaryActive"), "{out}");
    // A configuration below the recorded epoch is refused; the recorded one starts and stamps its epoch.
    let err = refuse(tmp.path(), &["--epoch", "2"]);
    assert!(err.contains("never go back"), "{err}");
    let mut srv = start(tmp.path(), &["--epoch", "3"]);
    let r = http(
        srv.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"e3"}"#),
    )
    .json();
    let rec = http(
        srv.http,
        "GET",
        &format!("/v1/records/{}", r["commit_id"]),
        Some(READER),
        None,
    )
    .json();
    assert_eq!(rec["epoch"], 3);
    assert!(srv.terminate().success());

    // A halted node does not start; resume brings it back.
    let file = RoleFile::new(std::sync::Arc::new(aerodb_wal::fs::RealFs), &data);
    let mut m = file.load().unwrap();
    m.observe(Observation::Halt(HaltReason::Gap {
        expected: aerodb_wal::CommitId(3),
        got: aerodb_wal::CommitId(5),
    }));
    file.store(&m).unwrap();
    // A halted node starts halted: HA status and health say why; reads and writes are refused.
    let mut srv = start(tmp.path(), &["--epoch", "3"]);
    let ha = http(srv.http, "GET", "/v1/ha/status", Some(READER), None).json();
    assert_eq!(ha["state"], "ReplicationHalted", "{ha}");
    assert!(ha["halt_reason"].as_str().unwrap().contains("Gap"), "{ha}");
    let r = http(srv.http, "GET", "/v1/records/1", Some(READER), None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("HALTED"))
    );
    let r = http(
        srv.http,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"no"}"#),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("HALTED"))
    );
    assert!(srv.terminate().success());
    let (ok, out) = admin(&["resume", "--data-dir", d]);
    assert!(ok && out.contains("PrimaryActive"), "{out}");
    let mut srv = start(tmp.path(), &["--epoch", "3"]);
    assert!(srv.terminate().success());
    report_figure("static authority (roles)", "bootstrap, demote, no self-promotion, NOT_LEADER + leader_url, epoch fencing, halt/resume: all as specified");
}
