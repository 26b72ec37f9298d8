//! T6 (fsync returns EIO) and T7 (ENOSPC and short writes, once and persistently) at WAL level. For every
//! mutating I/O number N of a workload: nothing is acknowledged once an I/O failed, the handle is read-only with a
//! clear reason, and the log reopens valid with every acknowledged record intact, both after a clean restart and
//! after a power loss.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::sync::{Arc, Mutex};

use aerodb_tests::{body, report_figure, small_opts, MEM_DIR};
use aerodb_wal::{
    fs::{CrashMode, FaultFs, FaultKind, FaultPlan, MemFs, Tear, UnsyncedFate},
    CommitId, Epoch, Error, Wal,
};

struct Outcome {
    acked: Vec<(u64, Vec<u8>)>,
    acks_after_failure: u64,
    reason: Option<String>,
}

/// Appends from 4 threads until every thread has seen a failure or finished; records what was acknowledged.
fn workload(fs: &FaultFs) -> Outcome {
    let Ok(wal) = Wal::open(Arc::new(fs.clone()), MEM_DIR, small_opts()) else {
        return Outcome {
            acked: vec![],
            acks_after_failure: 0,
            reason: None,
        };
    };
    let wal = Arc::new(wal);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed_at = Arc::new(Mutex::new(None::<std::time::Instant>));
    let late_acks = Arc::new(Mutex::new(0u64));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (wal, acked, failed_at, late_acks) =
                (wal.clone(), acked.clone(), failed_at.clone(), late_acks.clone());
            s.spawn(move || {
                for i in 0..15u64 {
                    let b = body(t * 1000 + i, 5);
                    let started = std::time::Instant::now();
                    match wal.append(Epoch(1), &b) {
                        Ok(id) => {
                            // An ack for an append that *started* after a failure was observed is a violation.
                            if failed_at.lock().unwrap().is_some_and(|f| f < started) {
                                *late_acks.lock().unwrap() += 1;
                            }
                            acked.lock().unwrap().push((id.0, b));
                        }
                        Err(e) => {
                            assert!(
                                matches!(e, Error::FailedClosed(_)),
                                "write-path failures fail closed: {e}"
                            );
                            failed_at.lock().unwrap().get_or_insert(std::time::Instant::now());
                        }
                    }
                }
            });
        }
    });
    let reason = wal.failure().map(|f| f.to_string());
    if reason.is_some() {
        assert!(
            matches!(wal.append(Epoch(1), b"x"), Err(Error::FailedClosed(_))),
            "stays read-only"
        );
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    let late = *late_acks.lock().unwrap();
    Outcome {
        acked,
        acks_after_failure: late,
        reason,
    }
}

/// Reopens the log; returns an error string if an acknowledged record is missing or different.
fn verify(mem: &MemFs, acked: &[(u64, Vec<u8>)]) -> Result<(), String> {
    let wal = Wal::open(Arc::new(mem.clone()), MEM_DIR, small_opts()).map_err(|e| format!("reopen: {e}"))?;
    let frames: Vec<_> = wal
        .read_from(CommitId(1))
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("read: {e}"))?;
    for (id, b) in acked {
        let f = frames
            .get(*id as usize - 1)
            .ok_or(format!("acknowledged CommitId {id} lost"))?;
        if f.body().as_ref() != b.as_slice() {
            return Err(format!("acknowledged CommitId {id} changed"));
        }
    }
    wal.verify().map_err(|e| format!("verify: {e}"))?;
    wal.append(Epoch(2), b"after")
        .map_err(|e| format!("append after reopen: {e}"))?;
    Ok(())
}

fn sweep(kinds: &[FaultKind]) -> (u64, u64, u64, Vec<String>) {
    let reference = FaultFs::new(MemFs::new());
    workload(&reference);
    let total = reference.ops();
    let (mut cases, mut late, mut corruptions, mut problems) = (0, 0, 0, Vec::new());
    for n in 0..total {
        for &kind in kinds {
            for persistent in [false, true] {
                for power_loss in [false, true] {
                    let fs = FaultFs::new(MemFs::new());
                    fs.inject(FaultPlan {
                        at_op: n,
                        kind,
                        persistent,
                    });
                    let out = workload(&fs);
                    cases += 1;
                    late += out.acks_after_failure;
                    if let Some(r) = &out.reason {
                        assert!(r.contains("failed on"), "the reason names the operation: {r}");
                    }
                    let mem = fs.mem().clone();
                    if power_loss {
                        mem.crash(CrashMode {
                            unsynced: UnsyncedFate::Lost,
                            tear: Tear::TornPrefix,
                            seed: n,
                        });
                    } else {
                        mem.crash(CrashMode {
                            unsynced: UnsyncedFate::Kept,
                            tear: Tear::None,
                            seed: n,
                        });
                    }
                    if let Err(e) = verify(&mem, &out.acked) {
                        corruptions += 1;
                        problems.push(format!(
                            "op {n} {kind:?} persistent={persistent} power_loss={power_loss}: {e}"
                        ));
                    }
                }
            }
        }
    }
    (cases, late, corruptions, problems)
}

#[test]
fn t6_fsync_eio_never_becomes_an_ack() {
    let (cases, late, corruptions, problems) = sweep(&[FaultKind::Eio]);
    report_figure(
        "T6 EIO at every I/O",
        &format!("{cases} cases, {late} acks after EIO, {corruptions} corruptions"),
    );
    assert_eq!((late, corruptions), (0, 0), "{problems:#?}");
}

#[test]
fn t7_enospc_and_short_writes_fail_cleanly() {
    let (cases, late, corruptions, problems) = sweep(&[FaultKind::Enospc, FaultKind::ShortWrite]);
    report_figure(
        "T7 ENOSPC/short write at every I/O",
        &format!("{cases} cases, {late} late acks, {corruptions} corruptions"),
    );
    assert_eq!((late, corruptions), (0, 0), "{problems:#?}");
}

#[test]
fn failure_reason_is_precise() {
    let fs = FaultFs::new(MemFs::new());
    let wal = Wal::open(Arc::new(fs.clone()), MEM_DIR, small_opts()).unwrap();
    wal.append(Epoch(1), b"first").unwrap();
    // The next append does: write, fdatasync. Fail the fdatasync.
    let ops = fs.ops();
    fs.inject(FaultPlan {
        at_op: ops + 1,
        kind: FaultKind::Eio,
        persistent: false,
    });
    let err = wal.append(Epoch(1), b"second").unwrap_err();
    let Error::FailedClosed(f) = &err else {
        panic!("{err}")
    };
    assert_eq!((f.op, f.raw_os_error), ("fdatasync", Some(5)));
    assert!(err.to_string().contains("read-only"), "{err}");
    // The fault was one-shot, but the handle never retries: it stays failed.
    assert!(matches!(
        wal.append(Epoch(1), b"third"),
        Err(Error::FailedClosed(_))
    ));
    assert_eq!(wal.durable_commit_id(), CommitId(1));
}
