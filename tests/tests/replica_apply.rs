//! The replica's apply step on real logs on disk (R-3, R-4; T10, T11 at frame level): a replica fed the primary's
//! frames in arbitrary chunks ends with sealed segments byte-identical to the primary's, the same tip and root, and
//! the primary's checkpoints; dropped frames halt with `Gap` and nothing after them is applied; duplicates are
//! applied once; reordered frames halt; a replica whose log differs at any CommitId k halts with `Fork` at k.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, sync::Arc, time::Duration};

use aerodb_engine::{Db, Error, NotWritable, Options, SigningKey};
use aerodb_replication::{
    apply::{Applier, ApplyError},
    core::follower::{End, Follower, Welcome},
    role::HaltReason,
};
use aerodb_tests::TempDir;
use aerodb_wal::{CommitId, Epoch};
use bytes::Bytes;

fn opts(epoch: u64, replica: bool) -> Options {
    Options {
        signing_key: Some(SigningKey::from_seed("aerodb-ledger", [9u8; 32]).unwrap()),
        epoch: Epoch(epoch),
        replica,
        checkpoint_every_records: 25,
        checkpoint_interval: None,
        index_flush_versions: 64,
        wal: aerodb_wal::Options {
            segment_bytes: 8192,
            max_record_bytes: 2048,
            ..aerodb_wal::Options::default()
        },
        ..Options::default()
    }
}

/// A primary with `n` records per epoch (reopened for each epoch).
fn primary(dir: &Path, epochs: &[u64], n: u64) -> Db {
    let mut db = None;
    for &e in epochs {
        if let Some(d) = db.take() {
            Db::close(d).unwrap();
        }
        let d = Db::open(dir, opts(e, false)).unwrap();
        for i in 0..n {
            d.put(
                "t",
                Bytes::from(format!("k{}", i % 17)),
                Bytes::from(vec![(i % 251) as u8; 20 + (i as usize * 37) % 300]),
            )
            .unwrap();
        }
        db = Some(d);
    }
    db.unwrap()
}

fn all_frames(db: &Db) -> Vec<Bytes> {
    db.raw_frames(CommitId(1), usize::MAX).unwrap()
}

fn sha(path: &Path) -> [u8; 32] {
    aerodb_wal::format::sha256(&std::fs::read(path).unwrap())
}

/// Sealed segment files (every segment but the newest), by name.
fn sealed_segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names.pop();
    names
}

#[test]
fn a_replica_fed_in_chunks_holds_byte_identical_sealed_segments() {
    let (pd, rd) = (TempDir::new("rep-p"), TempDir::new("rep-r"));
    let p = primary(pd.path(), &[1, 3], 150);
    p.checkpoint_now().unwrap();
    let r = Arc::new(Db::open(rd.path(), opts(3, true)).unwrap());
    let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
    // Stream as a primary does: raw frames from the replica's tip, bounded by bytes, in uneven chunks.
    let mut step = 1;
    loop {
        let from = a.tip().commit_id.next();
        let frames = p.raw_frames(from, 700 * step).unwrap();
        if frames.is_empty() {
            break;
        }
        let got = a.apply(&frames).unwrap();
        assert_eq!(got.appended, frames.len() as u64);
        step = step % 5 + 1;
    }
    for note in p.checkpoints() {
        r.add_checkpoint(&note).unwrap();
    }
    let (pt, rt) = (p.tip().unwrap(), r.tip().unwrap());
    assert_eq!(pt, rt);
    assert_eq!(a.tip().epoch, Epoch(3));
    assert_eq!(
        r.latest_checkpoint().unwrap().note,
        p.latest_checkpoint().unwrap().note
    );
    assert_eq!(r.get("t", b"k3").unwrap(), p.get("t", b"k3").unwrap());
    assert_eq!(r.history("t", b"k5").unwrap(), p.history("t", b"k5").unwrap());
    let sealed = sealed_segments(pd.path());
    assert!(sealed.len() >= 5, "the log rolled: {sealed:?}");
    assert_eq!(sealed, sealed_segments(rd.path()));
    for name in &sealed {
        assert_eq!(
            sha(&pd.path().join("wal").join(name)),
            sha(&rd.path().join("wal").join(name)),
            "sealed segment {name} differs"
        );
    }
    // A replica takes no client writes; a primary takes no replicated records.
    assert!(matches!(
        r.put("t", &b"x"[..], &b"y"[..]),
        Err(Error::NotWritable(NotWritable::NotWriteAuthority))
    ));
    let f = all_frames(&p);
    let body = &f[0][aerodb_wal::format::FRAME_HEADER_LEN..];
    assert!(matches!(
        p.append_replicated(&[(Epoch(1), body, aerodb_engine::record::record_hash(body))]),
        Err(Error::InvalidOptions(_))
    ));
    // The replica reopens to the same tip, and its on-disk index answers.
    drop(a);
    Arc::try_unwrap(r).unwrap().close().unwrap();
    let r = Db::open(rd.path(), opts(3, true)).unwrap();
    assert_eq!(r.tip().unwrap(), pt);
    assert_eq!(r.get("t", b"k16").unwrap(), p.get("t", b"k16").unwrap());
}

#[test]
fn dropped_duplicated_and_reordered_frames() {
    let pd = TempDir::new("rep-p");
    let p = primary(pd.path(), &[1], 40);
    let f = all_frames(&p);
    for drop_at in [0usize, 1, 17, 39] {
        let rd = TempDir::new("rep-r");
        let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
        let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
        let mut fed: Vec<Bytes> = f.clone();
        fed.remove(drop_at);
        match a.apply(&fed) {
            Err(ApplyError::Halt(HaltReason::Gap { expected, got })) if drop_at < 39 => {
                assert_eq!((expected.0, got.0), (drop_at as u64 + 1, drop_at as u64 + 2));
            }
            Ok(_) if drop_at == 39 => {} // the last frame missing is only lag
            other => panic!("drop at {drop_at}: {other:?}"),
        }
        // Nothing past the gap was applied.
        assert_eq!(r.tip().unwrap().commit_id, CommitId(drop_at as u64));
    }
    // Every frame sent twice (and the whole stream again): applied once each.
    let rd = TempDir::new("rep-r");
    let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
    let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
    let doubled: Vec<Bytes> = f.iter().flat_map(|x| [x.clone(), x.clone()]).collect();
    let got = a.apply(&doubled).unwrap();
    assert_eq!((got.appended, got.duplicates), (40, 40));
    assert_eq!(a.apply(&f).unwrap().duplicates, 40);
    assert_eq!(r.tip().unwrap(), p.tip().unwrap());
    // Two frames swapped: the later one arrives first, which is a gap.
    let rd = TempDir::new("rep-r");
    let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
    let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
    let mut swapped = f.clone();
    swapped.swap(10, 11);
    assert!(matches!(
        a.apply(&swapped),
        Err(ApplyError::Halt(HaltReason::Gap {
            expected: CommitId(11),
            got: CommitId(12)
        }))
    ));
    assert_eq!(r.tip().unwrap().commit_id, CommitId(10));
}

#[test]
fn a_log_that_differs_at_any_commit_id_is_a_fork_there() {
    let pd = TempDir::new("rep-p");
    let p = primary(pd.path(), &[1], 12);
    let f = all_frames(&p);
    for k in 1..=12u64 {
        let rd = TempDir::new("rep-fork");
        // The replica holds the primary's first k-1 records, then a record k of its own (written while it was,
        // wrongly, a primary of the same epoch).
        {
            let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
            let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
            a.apply(&f[..k as usize - 1]).unwrap();
            drop(a);
            Arc::try_unwrap(r).unwrap().close().unwrap();
            let own = Db::open(rd.path(), opts(1, false)).unwrap();
            own.put("t", &b"mine"[..], &b"diverged"[..]).unwrap();
            own.close().unwrap();
        }
        let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
        let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
        let theirs = p.record(CommitId(k)).unwrap().unwrap().hash;
        let ours = r.tip().unwrap().record_hash;
        // At the handshake (the core's follower): the primary's record at the replica's tip is another one.
        let key = r.verifier_key();
        let vk = key.to_string();
        let mut follower = Follower::new(a.tip(), Epoch(1), Duration::ZERO);
        let welcome = Welcome {
            node_id: "p",
            epoch: Epoch(1),
            verifier_key: &vk,
            segment_bytes: r.segment_bytes(),
            commit_id: CommitId(12),
            hash_at_our_tip: Some(theirs),
            epoch_proof: None,
        };
        assert_eq!(
            follower.on_welcome(&welcome, &key, r.segment_bytes(), Duration::ZERO),
            Err(End::Halt(HaltReason::Fork {
                commit_id: CommitId(k),
                ours,
                theirs
            }))
        );
        // And frame by frame: the primary's frame k is compared with the replica's and refused.
        match a.apply(&f[k as usize - 1..]) {
            Err(ApplyError::Halt(HaltReason::Fork { commit_id, .. })) => assert_eq!(commit_id, CommitId(k)),
            other => panic!("fork at {k}: {other:?}"),
        }
        assert_eq!(
            r.tip().unwrap().commit_id,
            CommitId(k),
            "nothing applied past the fork"
        );
    }
}

#[test]
fn a_divergent_tail_is_cut_and_the_replica_rejoins_byte_identical() {
    let (pd, rd) = (TempDir::new("cut-p"), TempDir::new("cut-r"));
    let p = primary(pd.path(), &[1], 150);
    let f = all_frames(&p);
    // The replica holds the primary's first 100 records (several sealed segments), then 40 of its own.
    {
        let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
        let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
        a.apply(&f[..100]).unwrap();
        drop(a);
        Arc::try_unwrap(r).unwrap().close().unwrap();
        let own = Db::open(rd.path(), opts(1, false)).unwrap();
        for i in 0..40 {
            own.put("t", Bytes::from(format!("mine{i}")), Bytes::from(vec![7u8; 200]))
                .unwrap();
        }
        own.checkpoint_now().unwrap();
        own.close().unwrap();
    }
    let before = sealed_segments(rd.path()).len();
    let verifier = SigningKey::from_seed("aerodb-ledger", [9u8; 32])
        .unwrap()
        .verifier();
    let removed = aerodb_engine::truncate_after(
        Arc::new(aerodb_wal::fs::RealFs),
        rd.path(),
        100,
        &opts(1, true),
        &verifier,
    )
    .unwrap();
    assert_eq!(removed, 40);
    assert!(
        sealed_segments(rd.path()).len() < before,
        "later segments were removed"
    );
    // It opens (startup check passes) at the cut, with the primary's record 100 as its tip, and follows again.
    let r = Arc::new(Db::open(rd.path(), opts(1, true)).unwrap());
    assert_eq!(
        r.tip().unwrap().record_hash,
        p.record(CommitId(100)).unwrap().unwrap().hash
    );
    assert!(r.latest_checkpoint().is_none_or(|c| c.checkpoint.size <= 100));
    let mut a = Applier::new(r.clone(), 1 << 20).unwrap();
    a.apply(&f[100..]).unwrap();
    assert_eq!(r.tip().unwrap(), p.tip().unwrap());
    assert_eq!(r.get("t", b"k3").unwrap(), p.get("t", b"k3").unwrap());
    assert!(
        r.get("t", b"mine3").unwrap().is_none(),
        "the cut records' keys are gone from the index"
    );
    drop(a);
    Arc::try_unwrap(r).unwrap().close().unwrap();
    let sealed = sealed_segments(pd.path());
    assert_eq!(sealed, sealed_segments(rd.path()));
    for name in &sealed {
        assert_eq!(
            sha(&pd.path().join("wal").join(name)),
            sha(&rd.path().join("wal").join(name)),
            "sealed segment {name} differs after the cut"
        );
    }
    // Cutting again at or past the tip changes nothing.
    let tip = p.tip().unwrap().commit_id;
    assert_eq!(
        aerodb_engine::truncate_after(
            Arc::new(aerodb_wal::fs::RealFs),
            rd.path(),
            tip.0,
            &opts(1, true),
            &verifier
        )
        .unwrap(),
        0
    );
}
