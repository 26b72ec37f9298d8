//! Opening a failed-closed database again in place (`Db::recover_in_place`), without a restart: after a full
//! disk (persistent ENOSPC, a short write) or an I/O error at every mutating operation of a write workload, the
//! reopen is refused while the disk still fails (reads go on), succeeds once it does not, keeps every
//! acknowledged record under its CommitId, answers each write as acknowledged, "outcome unknown" (with its
//! CommitId) or failed — and a failed one is not in the log — and continues the log after what it holds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{collections::BTreeMap, path::Path, sync::Arc};

use aerodb_engine::{Db, Error, NotWritable, Payload};
use aerodb_tests::{engine_opts, report_figure};
use aerodb_wal::{
    fs::{CrashMode, FaultFs, FaultKind, FaultPlan, MemFs, Tear, UnsyncedFate},
    CommitId,
};
use bytes::Bytes;

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record {i} {}", "x".repeat((i % 7 * 40) as usize)))
}

/// What the writes of one case were told.
#[derive(Default)]
struct Answers {
    /// CommitId → payload of every acknowledged write.
    acked: BTreeMap<u64, Bytes>,
    /// CommitId → payload of every write answered "outcome unknown".
    unknown: BTreeMap<u64, Bytes>,
    /// Payloads of writes answered with a plain failure.
    failed: Vec<Bytes>,
}

fn write(db: &Db, i: u64, a: &mut Answers) -> bool {
    let p = payload(i);
    match db.append_event("t", p.clone()) {
        Ok(r) => {
            a.acked.insert(r.commit_id.0, p);
            true
        }
        Err(Error::OutcomeUnknown { first, last, .. }) => {
            assert_eq!(first, last);
            a.unknown.insert(first.0, p);
            false
        }
        Err(Error::NotWritable(NotWritable::LogFailed(_))) => {
            a.failed.push(p);
            false
        }
        Err(e) => panic!("write {i}: unexpected error {e}"),
    }
}

/// Every acknowledged record is there under its CommitId; an "outcome unknown" CommitId holds that record or
/// (cut as a torn write that nobody was told was durable) a later one; no failed write is anywhere in the log.
fn check(db: &Db, a: &Answers, case: &str) -> u64 {
    let tip = db.tip().unwrap().commit_id.0;
    let all = db.records(CommitId(1), usize::MAX).unwrap();
    assert_eq!(all.len() as u64, tip, "{case}: records 1..tip");
    let body = |id: u64| match &all[id as usize - 1].record.payload {
        Payload::Event(b) => b.clone(),
        other => panic!("{case}: record {id} is {other:?}"),
    };
    for (id, p) in &a.acked {
        assert!(
            *id <= tip,
            "{case}: acknowledged record {id} is beyond the tip {tip}"
        );
        assert_eq!(&body(*id), p, "{case}: acknowledged record {id}");
    }
    let mut kept = 0;
    for (id, p) in &a.unknown {
        if *id <= tip && body(*id) == *p {
            kept += 1;
        }
    }
    for f in &a.failed {
        assert!(
            !(1..=tip).any(|id| body(id) == *f),
            "{case}: a write answered 'failed' is in the log"
        );
    }
    kept
}

#[test]
fn a_failed_closed_database_opens_again_in_place_and_loses_nothing() {
    let (mut cases, mut unknown_total, mut unknown_kept, mut refused_while_full) = (0, 0, 0, 0);
    for (kind, persistent) in [
        (FaultKind::Enospc, true),
        (FaultKind::ShortWrite, true),
        (FaultKind::Eio, false),
    ] {
        // A fault at each mutating operation of the next 24 appends (writes, syncs, rolls, preallocation,
        // Merkle store appends, checkpoints).
        for k in 1..=120 {
            let fault = FaultFs::new(MemFs::new());
            let db = Db::open_with_fs(Arc::new(fault.clone()), Path::new("/db"), engine_opts()).unwrap();
            let mut a = Answers::default();
            let mut i = 0;
            for _ in 0..30 {
                i += 1;
                assert!(write(&db, i, &mut a));
            }
            db.checkpoint_now().unwrap();
            fault.inject(FaultPlan {
                at_op: fault.ops() + k,
                kind,
                persistent,
            });
            let mut failed_at = None;
            for _ in 0..24 {
                i += 1;
                if !write(&db, i, &mut a) && failed_at.is_none() {
                    failed_at = Some(i);
                }
                if i % 8 == 0 {
                    let _ = db.checkpoint_now();
                }
            }
            let Some(_) = failed_at else {
                // The fault hit background work that did not fail the log (or no operation at all).
                continue;
            };
            cases += 1;
            let case = format!("{kind:?} persistent={persistent} at op +{k}");
            assert!(
                matches!(db.not_writable(), Some(NotWritable::LogFailed(_))),
                "{case}: the database fails closed"
            );
            if persistent {
                // The disk is still full: the reopen fails, reads go on, writes stay refused.
                let e = db.recover_in_place().unwrap_err();
                refused_while_full += 1;
                assert!(db.not_writable().is_some(), "{case}: still refusing after {e}");
                for (id, p) in &a.acked {
                    let r = db
                        .record(CommitId(*id))
                        .unwrap()
                        .expect("acknowledged record readable");
                    assert_eq!(r.record.payload, Payload::Event(p.clone()), "{case}");
                }
                i += 1;
                assert!(
                    !write(&db, i, &mut a),
                    "{case}: a write while the disk is full is refused"
                );
            }
            // Space is back.
            fault.reset();
            let report = db.recover_in_place().unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(report.problems.is_empty(), "{case}: {:?}", report.problems);
            assert_eq!(db.not_writable(), None, "{case}: writable again");
            assert_eq!(db.recoveries().1, 1);
            unknown_total += a.unknown.len();
            unknown_kept += check(&db, &a, &case);
            let tip = db.tip().unwrap().commit_id.0;
            // The log continues after what it holds; the new records are durable and provable.
            for _ in 0..10 {
                i += 1;
                assert!(write(&db, i, &mut a), "{case}: write after recovery");
            }
            assert_eq!(*a.acked.keys().last().unwrap(), tip + 10, "{case}");
            let cp = db.checkpoint_now().unwrap();
            let proof = db.inclusion_proof(CommitId(tip + 1), cp.checkpoint.size).unwrap();
            assert_eq!(proof.tree_size, cp.checkpoint.size);
            // And all of it survives a power loss right now (only synced bytes remain) and a cold open.
            drop(db);
            let mem = fault.mem().clone();
            mem.crash(CrashMode {
                unsynced: UnsyncedFate::Lost,
                tear: Tear::None,
                seed: k,
            });
            let db = Db::open_with_fs(Arc::new(mem), Path::new("/db"), engine_opts()).unwrap();
            check(&db, &a, &format!("{case}, after a power loss"));
        }
    }
    report_figure(
        "engine_recover",
        &format!(
        "{cases} failed-closed cases, {refused_while_full} reopens refused while the fault \
         lasted, {unknown_total} writes answered outcome-unknown ({unknown_kept} of them kept), 0 acknowledged lost"
    ),
    );
    assert!(
        cases >= 100,
        "the sweep reached the failure paths ({cases} cases)"
    );
    assert!(refused_while_full > 0 && unknown_total > 0);
}

#[test]
fn in_place_recovery_is_refused_unless_the_log_failed() {
    let db = Db::open_in_memory(engine_opts()).unwrap();
    db.append_event("t", Bytes::from_static(b"a")).unwrap();
    assert!(matches!(db.recover_in_place(), Err(Error::RecoveryRefused(ref w)) if w.contains("writable")));
    db.halt("a newer term");
    assert!(
        matches!(db.recover_in_place(), Err(Error::RecoveryRefused(ref w)) if w.contains("halted")),
        "a halt is not a failure a reopen may clear"
    );
    assert!(db.not_writable().is_some());
}
