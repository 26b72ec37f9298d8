//! every halting reason, produced from real bytes (frames of real logs through the replica's apply step, a
//! primary told of a newer term), halts a real node: its role is persisted as `ReplicationHalted` with that
//! reason, an evidence file is written, reads and writes are refused with `HALTED`, HA status and health say why,
//! and after a restart it is still halted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use aerodb_wal::{CommitId, Epoch};
use std::{path::Path, sync::Arc};

use aerodb_engine::{Db, Options, Payload, SigningKey};
use aerodb_replication::{
    apply::{Applier, ApplyError},
    role::{HaltReason, Observation},
};
use aerodb_server::{
    config::{Config, Role},
    error::Code,
};
use bytes::Bytes;
use common::*;

fn engine_opts(epoch: u64, replica: bool) -> Options {
    Options {
        signing_key: Some(SigningKey::from_seed("aerodb-ledger", [4u8; 32]).unwrap()),
        epoch: Epoch(epoch),
        replica,
        checkpoint_every_records: 0,
        checkpoint_interval: None,
        ..Options::default()
    }
}

/// A primary's log of `n` events at `epoch`, as raw frames.
fn frames(dir: &Path, epoch: u64, n: u8, tag: &str) -> Vec<Bytes> {
    let db = Db::open(dir, engine_opts(epoch, false)).unwrap();
    for i in 0..n {
        db.append_event(tag, Bytes::from(vec![i; 16])).unwrap();
    }
    let f = db.raw_frames(CommitId(1), usize::MAX).unwrap();
    db.close().unwrap();
    f
}

/// The reason a replica holding `held` halts with when fed `fed`.
fn reason(dir: &Path, held: &[Bytes], fed: &[Bytes]) -> HaltReason {
    let db = Arc::new(Db::open(dir, engine_opts(1, true)).unwrap());
    let mut a = Applier::new(db, 1 << 20).unwrap();
    a.apply(held).unwrap();
    match a.apply(fed) {
        Err(ApplyError::Halt(r)) => r,
        other => panic!("no halt: {other:?}"),
    }
}

fn node(dir: &Path, role: Role) -> aerodb_server::node::Node {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let key = dir.join("data/checkpoint.key");
    if !key.exists() {
        SigningKey::from_seed("aerodb-ledger", [4u8; 32])
            .unwrap()
            .save(&key)
            .unwrap();
    }
    let config = Config {
        role,
        primary: (role == Role::Replica).then(|| "http://127.0.0.1:9".into()),
        checkpoint_every_records: 0,
        ..Config::local(dir.join("data"), write_tokens(dir))
    };
    aerodb_server::open_node(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_halting_reason_stops_a_real_node() {
    let tmp = TempDir::new("halts");
    let a = frames(&tmp.path().join("a"), 1, 6, "a");
    let b = frames(&tmp.path().join("b"), 1, 6, "b");
    let mut flipped = a[3].to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let epoch2 = {
        // A log whose records 1..=3 are at epoch 2, then a frame 4 at epoch 1 arrives.
        let dir = tmp.path().join("e2");
        let db = Db::open(&dir, engine_opts(2, false)).unwrap();
        for i in 0..3u8 {
            db.append_event("e", Bytes::from(vec![i; 8])).unwrap();
        }
        let f = db.raw_frames(CommitId(1), usize::MAX).unwrap();
        db.close().unwrap();
        f
    };
    let cases: Vec<(&str, Role, Observation)> = vec![
        (
            "Gap",
            Role::Replica,
            Observation::Halt(reason(&tmp.path().join("r-gap"), &a[..2], &a[3..])),
        ),
        (
            "Fork",
            Role::Replica,
            Observation::Halt(reason(&tmp.path().join("r-fork"), &a[..3], &b[3..])),
        ),
        (
            "EpochRegression",
            Role::Replica,
            Observation::Halt(reason(&tmp.path().join("r-epoch"), &epoch2, &a[3..4])),
        ),
        (
            "Corruption",
            Role::Replica,
            Observation::Halt(reason(
                &tmp.path().join("r-corrupt"),
                &a[..3],
                &[Bytes::from(flipped)],
            )),
        ),
        (
            "AuthorityAmbiguity",
            Role::Primary,
            Observation::PeerPrimary {
                epoch: Epoch(2),
                node: "a replica of epoch 2".into(),
            },
        ),
    ];
    for (name, role, observation) in cases {
        let dir = tmp.path().join(format!("node-{name}"));
        let n = node(&dir, role);
        if role == Role::Primary {
            n.append("t".into(), Payload::Event(Bytes::from_static(b"before")), false)
                .await
                .unwrap();
        }
        n.observe(observation, &format!("test: {name}"));
        let ha = n.ha_status().await.unwrap();
        assert_eq!(ha.state, "ReplicationHalted", "{name}");
        assert!(ha.halt_reason.starts_with(name), "{name}: {}", ha.halt_reason);
        assert!(n.health().0.starts_with("halted"), "{name}");
        let read = n
            .record(&aerodb_server::auth::Caller::admin("test"), 1)
            .await
            .unwrap_err();
        assert_eq!(read.code, Code::Halted, "{name}: {}", read.message);
        let write = n
            .append("t".into(), Payload::Event(Bytes::from_static(b"x")), false)
            .await
            .unwrap_err();
        assert_eq!(write.code, Code::Halted, "{name}: {}", write.message);
        let evidence = std::fs::read_dir(dir.join("data"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("halt-evidence-")
            })
            .count();
        assert_eq!(evidence, 1, "{name}");
        // Still halted after a restart.
        n.stop_committers();
        drop(n);
        let n = node(&dir, role);
        assert_eq!(
            n.ha_status().await.unwrap().state,
            "ReplicationHalted",
            "{name} after restart"
        );
        assert_eq!(
            n.record(&aerodb_server::auth::Caller::admin("test"), 1)
                .await
                .unwrap_err()
                .code,
            Code::Halted
        );
        n.stop_committers();
    }
    report_figure(
        "halting reasons on a real node (R-4)",
        "Gap, Fork, EpochRegression, Corruption (from real frames) and AuthorityAmbiguity: each halts, refuses reads and writes with HALTED, writes evidence, stays halted across restart",
    );
}
