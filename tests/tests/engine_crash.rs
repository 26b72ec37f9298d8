//! T1 at engine level: appends, multi-record batches and checkpoints over the fault file system, dying at every
//! mutating I/O (WAL, Merkle store, checkpoint log, index runs and manifest) under 8 crash modes. After each crash the database must open
//! (its startup integrity check passes), every acknowledged receipt must be there with the same record hash, the
//! stored Merkle tree must equal the tree recomputed from the recovered records, the key and tenant indexes must
//! answer exactly what the recovered log holds, and the offline verifier must
//! find nothing wrong.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_wal::CommitId;
use std::{path::Path, sync::Arc};

use aerodb_engine::{merkle, record, verify_dir_with_fs, Db, NewRecord, Op, Payload, Receipt, VerifyOptions};
use aerodb_tests::{engine_opts, report_figure};
use aerodb_wal::fs::{CrashMode, FaultFs, MemFs, Tear, UnsyncedFate};
use bytes::Bytes;

const DIR: &str = "/db";

fn workload(fs: &FaultFs) -> Vec<Receipt> {
    let mut acked = Vec::new();
    let Ok(db) = Db::open_with_fs(Arc::new(fs.clone()), Path::new(DIR), engine_opts()) else {
        return acked;
    };
    for i in 0..24u64 {
        let result = if i % 5 == 4 {
            let recs: Vec<NewRecord> = (0..3)
                .map(|j| NewRecord {
                    tenant: "t".into(),
                    payload: Payload::Event(Bytes::from(vec![j as u8; 50 + i as usize * 9])),
                })
                .collect();
            db.append_many(&recs)
        } else {
            db.put(
                "t",
                Bytes::from(format!("k{}", i % 7)),
                Bytes::from(vec![i as u8; 30 + i as usize * 11]),
            )
            .map(|r| vec![r])
        };
        match result {
            Ok(r) => acked.extend(r),
            Err(_) => break,
        }
        if i % 8 == 7 && db.checkpoint_now().is_err() {
            break;
        }
        if i % 6 == 5 && db.flush_index().is_err() {
            break;
        }
    }
    let _ = db.close();
    acked
}

fn check(mem: &MemFs, acked: &[Receipt]) -> Result<(), String> {
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts())
        .map_err(|e| format!("open: {e}"))?;
    let tip = db.tip().map_err(|e| e.to_string())?;
    for r in acked {
        let rec = db
            .record(r.commit_id)
            .map_err(|e| e.to_string())?
            .ok_or(format!("receipt {} lost", r.commit_id))?;
        if rec.hash != r.record_hash {
            return Err(format!(
                "record {} has another hash than its receipt",
                r.commit_id
            ));
        }
    }
    let mut tree = merkle::MemTree::new();
    let mut tenant_records = 0;
    for rec in db.records(CommitId(1), usize::MAX).map_err(|e| e.to_string())? {
        tree.push(record::merkle_leaf(&rec.canonical));
        tenant_records += 1;
        // The key index (persisted runs plus what reopening replayed) answers exactly what the log holds.
        if let Payload::Batch(ops) = &rec.record.payload {
            for op in ops {
                let c = rec.record.commit_id;
                let tenant = rec.record.tenant.as_str();
                let got = db.get_at(tenant, op.key(), c).map_err(|e| e.to_string())?;
                let want = match op {
                    Op::Put { value, .. } => Some(value.clone()),
                    Op::Delete { .. } => None,
                };
                if got != want {
                    return Err(format!("index: get_at({:?}, {c}) = {got:?}", op.key()));
                }
                if !db
                    .history(tenant, op.key())
                    .map_err(|e| e.to_string())?
                    .iter()
                    .any(|v| v.commit_id == c)
                {
                    return Err(format!("index: history of {:?} lacks {c}", op.key()));
                }
            }
        }
    }
    let scanned = db
        .scan_tenant("t", CommitId(1), usize::MAX)
        .map_err(|e| e.to_string())?
        .len();
    if scanned != tenant_records {
        return Err(format!(
            "index: tenant scan found {scanned} of {tenant_records} records"
        ));
    }
    if tree.size() != tip.commit_id.0 || merkle::root(&tree, tree.size()).unwrap() != tip.root {
        return Err("stored Merkle root differs from the recomputed one".into());
    }
    db.put("t", Bytes::from_static(b"after"), Bytes::from_static(b"crash"))
        .map_err(|e| format!("append after crash: {e}"))?;
    db.close().map_err(|e| e.to_string())?;
    let opts = VerifyOptions {
        verifier: Some(engine_opts().signing_key.unwrap().verifier()),
        strict: true,
    };
    let r = verify_dir_with_fs(Arc::new(mem.clone()), Path::new(DIR), &opts, &mut |_, _| {})
        .map_err(|e| e.to_string())?;
    if !r.ok() {
        return Err(format!("verifier: {:?}", r.problems));
    }
    Ok(())
}

#[test]
fn engine_crash_point_sweep() {
    let reference = FaultFs::new(MemFs::new());
    let all = workload(&reference);
    assert_eq!(all.len(), 24 + 4 * 2, "the reference run acknowledges everything");
    let total = reference.ops();
    let (mut cases, mut violations) = (0u64, Vec::new());
    for k in 0..=total {
        for (m, unsynced) in [UnsyncedFate::Lost, UnsyncedFate::Kept].into_iter().enumerate() {
            for (t, tear) in [Tear::None, Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail]
                .into_iter()
                .enumerate()
            {
                let fs = FaultFs::new(MemFs::new());
                fs.die_at(k);
                let acked = workload(&fs);
                let mem = fs.mem().clone();
                mem.crash(CrashMode {
                    unsynced,
                    tear,
                    seed: k * 8 + (m * 4 + t) as u64,
                });
                cases += 1;
                if let Err(v) = check(&mem, &acked) {
                    violations.push(format!("k={k} {unsynced:?}/{tear:?}: {v}"));
                }
            }
        }
    }
    report_figure(
        "T1 engine crash-point sweep",
        &format!(
            "{cases} cases ({total} I/O points x 8 modes), {} violations",
            violations.len()
        ),
    );
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

/// Cutting a divergent tail (`aerodb_engine::truncate_after`) dying at every I/O under 8 crash modes: the
/// directory always opens (startup check passes) as a prefix of the original that ends between the cut and the
/// old end, and cutting again finishes the job, after which the verifier finds nothing wrong.
#[test]
fn truncate_crash_point_sweep() {
    const KEEP: u64 = 20;
    let base = MemFs::new();
    let mut hashes = Vec::new();
    {
        let db = Db::open_with_fs(Arc::new(base.clone()), Path::new(DIR), engine_opts()).unwrap();
        for i in 0..60u64 {
            let r = db
                .put(
                    "t",
                    Bytes::from(format!("k{}", i % 9)),
                    Bytes::from(vec![i as u8; 400 + (i as usize % 7) * 50]),
                )
                .unwrap();
            hashes.push(r.record_hash);
            if i % 15 == 14 {
                db.checkpoint_now().unwrap();
            }
        }
        db.close().unwrap();
    }
    let files: Vec<(std::path::PathBuf, Vec<u8>)> = base
        .all_files()
        .into_iter()
        .map(|p| (p.clone(), base.read_file(&p).unwrap()))
        .collect();
    let copy = || {
        let m = MemFs::new();
        for (p, b) in &files {
            aerodb_wal::fs::Fs::create_dir_all(&m, p.parent().unwrap()).unwrap();
            m.write_file_durable(p, b).unwrap();
        }
        m
    };
    let opts = engine_opts();
    let verifier = opts.signing_key.as_ref().unwrap().verifier();
    let reference = FaultFs::new(copy());
    assert_eq!(
        aerodb_engine::truncate_after(
            Arc::new(reference.clone()),
            Path::new(DIR),
            KEEP,
            &opts,
            &verifier
        )
        .unwrap(),
        40
    );
    let total = reference.ops();
    let (mut cases, mut violations) = (0u64, Vec::new());
    for k in 0..=total {
        for (m, unsynced) in [UnsyncedFate::Lost, UnsyncedFate::Kept].into_iter().enumerate() {
            for (t, tear) in [Tear::None, Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail]
                .into_iter()
                .enumerate()
            {
                let fs = FaultFs::new(copy());
                fs.die_at(k);
                let _ = aerodb_engine::truncate_after(
                    Arc::new(fs.clone()),
                    Path::new(DIR),
                    KEEP,
                    &opts,
                    &verifier,
                );
                let mem = fs.mem().clone();
                mem.crash(CrashMode {
                    unsynced,
                    tear,
                    seed: k * 8 + (m * 4 + t) as u64,
                });
                cases += 1;
                let outcome = (|| -> Result<(), String> {
                    let fs: Arc<dyn aerodb_wal::fs::Fs> = Arc::new(mem.clone());
                    let db = Db::open_with_fs(fs.clone(), Path::new(DIR), engine_opts())
                        .map_err(|e| e.to_string())?;
                    let tip = db.tip().map_err(|e| e.to_string())?.commit_id;
                    if !(KEEP..=60).contains(&tip.0) {
                        return Err(format!("tip {tip} outside {KEEP}..=60"));
                    }
                    for c in 1..=tip.0 {
                        let h = db.record(CommitId(c)).map_err(|e| e.to_string())?.map(|r| r.hash);
                        if h != Some(hashes[c as usize - 1]) {
                            return Err(format!("record {c} is not the original's"));
                        }
                    }
                    db.close().map_err(|e| e.to_string())?;
                    aerodb_engine::truncate_after(fs.clone(), Path::new(DIR), KEEP, &opts, &verifier)
                        .map_err(|e| format!("cutting again: {e}"))?;
                    let db = Db::open_with_fs(fs.clone(), Path::new(DIR), engine_opts())
                        .map_err(|e| e.to_string())?;
                    if db.tip().map_err(|e| e.to_string())?.commit_id != CommitId(KEEP) {
                        return Err("the second cut did not finish".into());
                    }
                    db.close().map_err(|e| e.to_string())?;
                    let vo = VerifyOptions {
                        verifier: Some(verifier.clone()),
                        strict: true,
                    };
                    let r = verify_dir_with_fs(fs, Path::new(DIR), &vo, &mut |_, _| {})
                        .map_err(|e| e.to_string())?;
                    if !r.ok() {
                        return Err(format!("verifier: {:?}", r.problems));
                    }
                    Ok(())
                })();
                if let Err(v) = outcome {
                    violations.push(format!("k={k} {unsynced:?}/{tear:?}: {v}"));
                }
            }
        }
    }
    report_figure(
        "T1 divergent-tail cut crash-point sweep",
        &format!(
            "{cases} cases ({total} I/O points x 8 modes), {} violations",
            violations.len()
        ),
    );
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}
