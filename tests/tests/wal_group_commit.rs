//! Stress of the group-commit protocol (leader hand-off, fan-out wake-ups): many threads, with and without an
//! I/O failure part-way. Every thread must finish (no lost wake-up), acknowledged CommitIds must be exactly a
//! gap-free prefix, and no append that returned Ok may be missing after reopen.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aerodb_tests::{report_figure, MEM_DIR};
use aerodb_wal::{
    fs::{FaultFs, FaultKind, FaultPlan, MemFs},
    CommitId, Durability, Epoch, Options, Wal,
};

fn opts(durability: Durability) -> Options {
    Options {
        segment_bytes: 32 << 10,
        max_record_bytes: 1024,
        durability,
        background_preallocation: false,
        ..Options::default()
    }
}

/// How the appenders call the log.
#[derive(Clone, Copy, PartialEq)]
enum Calls {
    /// `Wal::append`.
    Append,
    /// `Wal::enqueue_with`, a yield (work outside the ordering lock, as the engine indexes there), then
    /// `Queued::wait` for even appends and a plain drop of the `Queued` for odd ones.
    Enqueue,
}

fn run(
    threads: u64,
    per_thread: u64,
    fail_at: Option<u64>,
    durability: Durability,
    calls: Calls,
) -> (u64, u64) {
    let fs = FaultFs::new(MemFs::new());
    if let Some(n) = fail_at {
        fs.inject(FaultPlan {
            at_op: n,
            kind: FaultKind::Eio,
            persistent: false,
        });
    }
    let wal = Arc::new(Wal::open(Arc::new(fs.clone()), MEM_DIR, opts(durability)).unwrap());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (wal, acked) = (wal.clone(), acked.clone());
            s.spawn(move || {
                for i in 0..per_thread {
                    let body = format!("{t}:{i}");
                    let result = match calls {
                        Calls::Append => wal.append(Epoch(1), body.as_bytes()),
                        Calls::Enqueue => wal
                            .enqueue_with(Epoch(1), |sink| sink.push(body.as_bytes()))
                            .and_then(|(id, queued)| {
                                assert_eq!(queued.last(), id);
                                std::thread::yield_now();
                                if i % 2 == 0 {
                                    queued.wait().map(|()| id)
                                } else {
                                    // Dropping waits too (and leads the flush if this appender was chosen to).
                                    drop(queued);
                                    if wal.durable_commit_id() >= id || durability != Durability::Always {
                                        Ok(id)
                                    } else {
                                        Err(aerodb_wal::Error::Closed)
                                    }
                                }
                            }),
                    };
                    match result {
                        Ok(id) => acked.lock().unwrap().push((id.0, body)),
                        Err(_) => break,
                    }
                    assert!(Instant::now() < deadline, "appender stuck");
                }
            });
        }
    });
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    let n = acked.len() as u64;
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "acks form a gap-free prefix"
    );
    if fail_at.is_none() {
        assert_eq!(n, threads * per_thread);
    }
    drop(wal);
    let wal = Wal::open(Arc::new(fs.mem().clone()), MEM_DIR, opts(Durability::Always)).unwrap();
    let frames: Vec<_> = wal.read_from(CommitId(1)).unwrap().map(|f| f.unwrap()).collect();
    for (id, body) in &acked {
        assert_eq!(
            frames[*id as usize - 1].body().as_ref(),
            body.as_bytes(),
            "acked record {id} intact"
        );
    }
    (n, wal.recovery_report().frames)
}

#[test]
fn many_appenders_no_lost_wakeups() {
    let mut total = 0;
    for durability in [Durability::Always, Durability::None] {
        for calls in [Calls::Append, Calls::Enqueue] {
            for _ in 0..3 {
                total += run(64, 100, None, durability, calls).0;
            }
        }
    }
    report_figure(
        "group commit stress",
        &format!("{total} acknowledged appends from 64 threads, 0 lost"),
    );
}

#[test]
fn failure_part_way_wakes_everyone_with_the_right_verdict() {
    let mut cases = 0;
    for fail_at in [3, 10, 25, 60, 120, 250] {
        for calls in [Calls::Append, Calls::Enqueue] {
            run(32, 40, Some(fail_at), Durability::Always, calls);
            cases += 1;
        }
    }
    report_figure(
        "group commit with EIO part-way",
        &format!("{cases} cases, every appender finished"),
    );
}
