//! T1 and T5 at WAL level: a crash-point sweep. A workload of appends, group commits (batches), segment rolls and
//! directory fsyncs runs over the fault file system, which "dies" at mutating I/O number k; the machine then loses
//! power (or the process is killed) under four tear modes, and the log is reopened. For every k and every mode:
//! every acknowledged CommitId is present with its bytes, the recovered log is a prefix of what was attempted, and
//! the next append continues it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, sync::Arc};

use aerodb_tests::{body, report_figure, small_opts, MEM_DIR};
use aerodb_wal::{
    fs::{CrashMode, FaultFs, MemFs, Tear, UnsyncedFate},
    CommitId, Epoch, Wal,
};

const CALLS: u64 = 40;
const SEED: u64 = 0xC0FFEE;

/// Runs the workload; returns the bodies attempted (index = CommitId - 1) and the highest acknowledged CommitId.
fn workload(fs: &FaultFs) -> (Vec<Vec<u8>>, u64) {
    let mut attempted: Vec<Vec<u8>> = Vec::new();
    let mut acked = 0;
    let Ok(wal) = Wal::open(Arc::new(fs.clone()), MEM_DIR, small_opts()) else {
        return (attempted, acked);
    };
    for call in 0..CALLS {
        let n = 1 + call % 4;
        let bodies: Vec<Vec<u8>> = (0..n).map(|j| body(attempted.len() as u64 + j, SEED)).collect();
        attempted.extend(bodies.iter().cloned());
        // The epoch rises twice, so segment headers and frames carry several epochs.
        match wal.append_batch(Epoch(1 + call / 15), &bodies) {
            Ok((first, last)) => {
                assert_eq!(first.0, acked + 1, "acknowledged CommitIds are contiguous");
                acked = last.0;
            }
            Err(e) => {
                assert!(e.is_fatal(), "a failed I/O fails the log closed: {e}");
                // Fail-closed: nothing is acknowledged after a failure.
                assert!(wal.append(Epoch(9), b"after failure").is_err());
                break;
            }
        }
    }
    (attempted, acked)
}

/// Reopens after the crash and checks the invariants; returns a description of the violation, if any.
fn check(mem: &MemFs, attempted: &[Vec<u8>], acked: u64) -> Result<(), String> {
    let wal =
        Wal::open(Arc::new(mem.clone()), MEM_DIR, small_opts()).map_err(|e| format!("reopen failed: {e}"))?;
    let mut n = 0u64;
    for f in wal.read_from(CommitId(1)).map_err(|e| e.to_string())? {
        let f = f.map_err(|e| format!("read failed: {e}"))?;
        n += 1;
        if f.commit_id.0 != n {
            return Err(format!("gap: expected {n}, got {}", f.commit_id));
        }
        let want = attempted
            .get(n as usize - 1)
            .ok_or(format!("CommitId {n} was never attempted"))?;
        if f.body().as_ref() != want.as_slice() {
            return Err(format!("CommitId {n} holds different bytes than were appended"));
        }
    }
    if n < acked {
        return Err(format!(
            "lost acknowledged records: recovered up to {n}, acknowledged up to {acked}"
        ));
    }
    wal.verify().map_err(|e| format!("verify after recovery: {e}"))?;
    let next = wal
        .append(Epoch(100), b"next")
        .map_err(|e| format!("append after recovery: {e}"))?;
    if next.0 != n + 1 {
        return Err(format!("append after recovery got {next}, expected {}", n + 1));
    }
    Ok(())
}

#[test]
fn crash_point_sweep() {
    // A reference run counts the mutating I/Os of the workload.
    let reference = FaultFs::new(MemFs::new());
    let (attempted_ref, acked_ref) = workload(&reference);
    let total_ops = reference.ops();
    let log = reference.op_log();
    assert_eq!(acked_ref as usize, attempted_ref.len());
    assert!(
        log.iter().filter(|(op, _)| *op == "rename").count() >= 5,
        "the workload rolls several segments"
    );

    let modes: Vec<CrashMode> = [UnsyncedFate::Lost, UnsyncedFate::Kept]
        .into_iter()
        .flat_map(|unsynced| {
            [Tear::None, Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail].map(|tear| (unsynced, tear))
        })
        .enumerate()
        .map(|(i, (unsynced, tear))| CrashMode {
            unsynced,
            tear,
            seed: i as u64,
        })
        .collect();
    let (mut cases, mut violations, mut after_segment_ops, mut lost_acks_t5) = (0u64, Vec::new(), 0u64, 0u64);
    for k in 0..=total_ops {
        for (m, mode) in modes.iter().enumerate() {
            let fs = FaultFs::new(MemFs::new());
            fs.die_at(k);
            let (attempted, acked) = workload(&fs);
            let mem = fs.mem().clone();
            mem.crash(CrashMode {
                seed: mode.seed ^ (k << 8) ^ m as u64,
                ..*mode
            });
            cases += 1;
            // T5: crash right after creating or renaming a segment, with or without the directory fsync after it.
            let prev_op = k
                .checked_sub(1)
                .and_then(|i| log.get(i as usize))
                .map(|(op, _)| *op);
            let t5 = matches!(prev_op, Some("create" | "rename" | "sync_dir"));
            after_segment_ops += u64::from(t5);
            if let Err(v) = check(&mem, &attempted, acked) {
                if t5 && v.contains("lost acknowledged") {
                    lost_acks_t5 += 1;
                }
                violations.push(format!(
                    "k={k} mode={mode:?} last op {:?}: {v}",
                    log.get(k as usize)
                ));
            }
        }
    }
    report_figure(
        "T1 crash-point sweep",
        &format!(
            "{cases} cases ({total_ops} I/O points x {} modes), {} violations",
            modes.len(),
            violations.len()
        ),
    );
    report_figure(
        "T5 crash after segment create/rename/dir fsync",
        &format!("{after_segment_ops} cases, {lost_acks_t5} lost acks"),
    );
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

#[test]
fn directory_entry_of_a_new_segment_is_durable_before_its_first_frame() {
    // From the op log of a run: a segment file is written as `N.prealloc` (zero fill, then header and its first
    // frames), synced, renamed to `N.seg`, and the directory is fsynced; only then are more frames written to it
    // — and only then is the segment before it sealed (its footer written and the file cut), so a sealed last
    // segment never exists. (Acknowledgements come after a sync of the segment that is live by then: T5.)
    let fs = FaultFs::new(MemFs::new());
    workload(&fs);
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut state: std::collections::HashMap<String, &str> = Default::default();
    let (mut frame_writes, mut seals) = (0, 0);
    let mut last_live: Option<String> = None;
    for (op, path) in fs.op_log() {
        let id = stem(&path);
        match (op, state.get(id.as_str()).copied()) {
            ("create", _) => {
                state.insert(id, "created");
            }
            ("sync_data", Some("created")) => {
                state.insert(id, "zeroed");
            }
            ("write", Some("zeroed")) => {
                state.insert(id, "header");
            }
            ("write", Some("header")) => {
                state.insert(id, "first frames");
            }
            ("sync_data", Some("first frames")) => {
                state.insert(id, "synced");
            }
            ("rename", Some(s)) => {
                assert_eq!(
                    s, "synced",
                    "segment {id} renamed before its header and first frames were synced"
                );
                state.insert(id, "renamed");
            }
            ("sync_dir", _) => {
                for (k, s) in state.iter_mut().filter(|(_, s)| **s == "renamed") {
                    *s = "live";
                    last_live = Some(k.clone());
                }
            }
            ("set_len", Some("live")) => {
                // Sealing a segment (the footer's cut) happens only once a later segment is live.
                assert!(
                    last_live.as_ref().is_some_and(|l| *l > id),
                    "segment {id} sealed before the segment after it was live"
                );
                seals += 1;
            }
            ("write", Some(s)) => {
                assert!(
                    s == "live" || s == "created",
                    "frame written to segment {id} in state {s}"
                );
                frame_writes += u64::from(s == "live");
            }
            _ => {}
        }
    }
    assert!(
        frame_writes > 10 && seals >= 4,
        "the check saw the frame writes ({frame_writes}) and the seals ({seals})"
    );
}
