//! The engine's API end to end, on the real and the memory file system: writes, reads at any CommitId,
//! history, scans, tenants, proofs for every tree size, checkpoints, reopen, and refusal of writes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_wal::CommitId;
use std::{path::Path, sync::Arc};

use aerodb_engine::{merkle, record, Db, Error, NotWritable, Op, Payload, SignedCheckpoint, VerifierKey};
use aerodb_tests::{engine_opts, TempDir};
use aerodb_wal::fs::{FaultFs, FaultKind, FaultPlan, Fs, MemFs, RealFs};
use bytes::Bytes;

fn on_both(tag: &str, f: impl Fn(Arc<dyn Fs>, &Path)) {
    let tmp = TempDir::new(tag);
    f(Arc::new(RealFs), &tmp.path().join("db"));
    f(Arc::new(MemFs::new()), Path::new("/db"));
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn key_value_with_history_tenants_and_reopen() {
    on_both("kv", |fs, dir| {
        let db = Db::open_with_fs(fs.clone(), dir, engine_opts()).unwrap();
        let r1 = db.put("acme", b("k1"), b("v1")).unwrap();
        let r2 = db.put("globex", b("k2"), b("a")).unwrap();
        let r3 = db
            .append_batch(
                "acme",
                vec![
                    Op::Put {
                        key: b("k1"),
                        value: b("v2"),
                    },
                    Op::Delete { key: b("k2") },
                ],
            )
            .unwrap();
        let r4 = db.append_event("acme", b("something happened")).unwrap();
        assert_eq!(
            [r1.commit_id.0, r2.commit_id.0, r3.commit_id.0, r4.commit_id.0],
            [1, 2, 3, 4]
        );
        let check = |db: &Db| {
            assert!(db.tenant_keys(), "a new log gives each tenant its own key space");
            assert_eq!(db.get("acme", b"k1").unwrap(), Some(b("v2")));
            assert_eq!(
                db.get("globex", b"k1").unwrap(),
                None,
                "acme's key is not globex's"
            );
            // acme's delete of k2 is in acme's key space: globex's k2 stands.
            assert_eq!(db.get("globex", b"k2").unwrap(), Some(b("a")));
            assert_eq!(db.get("acme", b"k2").unwrap(), None);
            assert_eq!(db.get_at("acme", b"k1", CommitId(1)).unwrap(), Some(b("v1")));
            assert_eq!(db.get_at("globex", b"k2", CommitId(3)).unwrap(), Some(b("a")));
            assert_eq!(db.get_at("globex", b"k2", CommitId(1)).unwrap(), None);
            assert_eq!(db.get_at("acme", b"k1", CommitId(0)).unwrap(), None);
            let h = |t: &str| -> Vec<_> {
                db.history(t, b"k2")
                    .unwrap()
                    .into_iter()
                    .map(|v| (v.commit_id, v.value))
                    .collect()
            };
            assert_eq!(h("globex"), vec![(CommitId(2), Some(b("a")))]);
            assert_eq!(h("acme"), vec![(CommitId(3), None)]);
            assert_eq!(
                db.scan_prefix("acme", b"k", 10).unwrap(),
                vec![(b("k1"), b("v2"))]
            );
            assert_eq!(
                db.scan_prefix("globex", b"", 10).unwrap(),
                vec![(b("k2"), b("a"))]
            );
            assert_eq!(db.scan("acme", .., 10).unwrap(), vec![(b("k1"), b("v2"))]);
            assert!(db.scan_prefix("nobody", b"", 10).unwrap().is_empty());
            let acme: Vec<u64> = db
                .scan_tenant("acme", CommitId(1), 10)
                .unwrap()
                .iter()
                .map(|r| r.record.commit_id.0)
                .collect();
            assert_eq!(acme, vec![1, 3, 4]);
            assert_eq!(
                db.scan_tenant("acme", CommitId(2), 1).unwrap()[0]
                    .record
                    .commit_id,
                CommitId(3)
            );
            let recs = db.records(CommitId(2), 2).unwrap();
            assert_eq!(
                recs.iter().map(|r| r.record.commit_id.0).collect::<Vec<_>>(),
                vec![2, 3]
            );
            assert_eq!(recs[1].record.prev_hash, recs[0].hash, "records are hash-chained");
            assert_eq!(
                db.record(CommitId(4)).unwrap().unwrap().record.payload,
                Payload::Event(b("something happened"))
            );
            assert!(db.record(CommitId(0)).unwrap().is_none() && db.record(CommitId(5)).unwrap().is_none());
            assert_eq!(db.tip().unwrap().commit_id, CommitId(4));
        };
        check(&db);
        let tip = db.tip().unwrap();
        db.close().unwrap();
        let db = Db::open_with_fs(fs.clone(), dir, engine_opts()).unwrap();
        check(&db);
        assert_eq!(db.tip().unwrap(), tip, "same head after reopen");
        assert_eq!(db.open_report().records_verified, 4);
        assert_eq!(
            db.open_report().checkpoints_verified,
            1,
            "close wrote a checkpoint"
        );
        assert_eq!(
            db.put("acme", b("k3"), b("x")).unwrap().commit_id,
            CommitId(5),
            "the chain continues"
        );
    });
}

#[test]
fn proofs_for_every_size_verify_with_the_published_key_string() {
    let db = Db::open_in_memory(engine_opts()).unwrap();
    let mut receipts = Vec::new();
    for i in 0..150u32 {
        receipts.push(
            db.append_event("t", Bytes::from(i.to_le_bytes().to_vec()))
                .unwrap(),
        );
    }
    let cp = db.checkpoint_now().unwrap();
    // A verifier that has only the key string and the note.
    let vkey = VerifierKey::parse(&db.verifier_key().to_string()).unwrap();
    let verified = SignedCheckpoint::verify(&cp.note, &vkey).unwrap().checkpoint;
    assert_eq!(verified.size, 150);
    for size in 1..=150u64 {
        let root = db.root_at(size).unwrap();
        for commit in (1..=size).step_by(7) {
            let p = db.inclusion_proof(CommitId(commit), size).unwrap();
            let rec = db.record(CommitId(commit)).unwrap().unwrap();
            assert_eq!(rec.hash, receipts[commit as usize - 1].record_hash);
            assert!(merkle::verify_inclusion(
                &record::merkle_leaf(&rec.canonical),
                p.leaf_index,
                size,
                &p.hashes,
                &root
            ));
        }
        let c = db.consistency_proof(size, 150).unwrap();
        assert!(
            merkle::verify_consistency(size, 150, &root, &verified.root, &c),
            "{size} -> 150"
        );
    }
    // Out-of-range requests are typed errors, not panics.
    assert!(matches!(
        db.inclusion_proof(CommitId(0), 10),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        db.inclusion_proof(CommitId(11), 10),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        db.inclusion_proof(CommitId(1), 151),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        db.consistency_proof(0, 5),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        db.consistency_proof(6, 5),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(db.root_at(151), Err(Error::OutOfRange { .. })));
}

#[test]
fn append_and_prove_gives_a_verifiable_receipt() {
    let db = Db::open_in_memory(engine_opts()).unwrap();
    db.put("t", b("a"), b("1")).unwrap();
    let (receipt, cp, proof) = db.append_and_prove("t", Payload::Event(b("mine"))).unwrap();
    let leaf = record::merkle_leaf(&db.record(receipt.commit_id).unwrap().unwrap().canonical);
    assert!(cp.checkpoint.size >= receipt.commit_id.0);
    assert!(merkle::verify_inclusion(
        &leaf,
        proof.leaf_index,
        proof.tree_size,
        &proof.hashes,
        &cp.checkpoint.root
    ));
    let (r2, cp2, _) = db.append_and_prove("t", Payload::Event(b("again"))).unwrap();
    assert!(cp2.checkpoint.size >= r2.commit_id.0 && cp2.checkpoint.size > cp.checkpoint.size);
}

#[test]
fn bad_input_is_refused_and_leaves_no_trace() {
    let db = Db::open_in_memory(engine_opts()).unwrap();
    assert!(matches!(db.put("", b("k"), b("v")), Err(Error::InvalidInput(_))));
    assert!(matches!(
        db.put("t", Bytes::new(), b("v")),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        db.put("t", Bytes::from(vec![1u8; 1025]), b("v")),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        db.put("t", b("k"), Bytes::from(vec![0u8; 5000])),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        db.append_batch("t", vec![]),
        Err(Error::InvalidInput(_))
    ));
    let dup = vec![Op::Delete { key: b("x") }, Op::Delete { key: b("x") }];
    assert!(matches!(db.append_batch("t", dup), Err(Error::InvalidInput(_))));
    assert_eq!(
        db.put("t", b("k"), b("v")).unwrap().commit_id,
        CommitId(1),
        "refusals consumed no CommitId"
    );
}

#[test]
fn writes_are_refused_without_authority_or_after_fsync_failure() {
    let mem = MemFs::new();
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new("/db"), engine_opts()).unwrap();
    db.put("t", b("k"), b("v")).unwrap();
    db.close().unwrap();
    let ro = aerodb_engine::Options {
        read_only: true,
        ..engine_opts()
    };
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new("/db"), ro).unwrap();
    assert!(matches!(
        db.put("t", b("k"), b("w")),
        Err(Error::NotWritable(NotWritable::NotWriteAuthority))
    ));
    assert_eq!(db.get("t", b"k").unwrap(), Some(b("v")), "reads still work");
    drop(db);

    let fault = FaultFs::new(mem);
    let db = Db::open_with_fs(Arc::new(fault.clone()), Path::new("/db"), engine_opts()).unwrap();
    fault.inject(FaultPlan {
        at_op: fault.ops() + 1,
        kind: FaultKind::Eio,
        persistent: false,
    });
    // The fsync failed after the record's bytes were written: not a plain failure, an unknown outcome with its
    // CommitId (the bytes may be durable and be there after a restart).
    let err = db.put("t", b("k"), b("lost")).unwrap_err();
    assert!(
        matches!(err, Error::OutcomeUnknown { first: CommitId(2), last: CommitId(2), ref reason } if reason.contains("fdatasync")),
        "{err}"
    );
    let err = db.put("t", b("k"), b("after")).unwrap_err();
    assert!(
        matches!(err, Error::NotWritable(NotWritable::LogFailed(ref why)) if why.contains("fdatasync")),
        "{err}"
    );
    assert_eq!(
        db.get("t", b"k").unwrap(),
        Some(b("v")),
        "the failed write is not visible"
    );
}

#[test]
fn scan_prefix_stops_at_the_end_of_the_prefix_and_handles_0xff() {
    let db = Db::open_in_memory(engine_opts()).unwrap();
    for k in [
        &b"a"[..],
        b"ab",
        b"ab\xff",
        b"ab\xff\xff",
        b"ac",
        b"b",
        b"\xff",
        b"\xff\x01",
    ] {
        db.put("t", Bytes::copy_from_slice(k), Bytes::copy_from_slice(k))
            .unwrap();
    }
    let keys = |p: &[u8], limit| -> Vec<Vec<u8>> {
        db.scan_prefix("t", p, limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect()
    };
    assert_eq!(
        keys(b"ab", 10),
        vec![b"ab".to_vec(), b"ab\xff".to_vec(), b"ab\xff\xff".to_vec()]
    );
    assert_eq!(keys(b"ab", 2).len(), 2, "the limit counts matching keys only");
    assert_eq!(
        keys(b"\xff", 10),
        vec![b"\xff".to_vec(), b"\xff\x01".to_vec()],
        "a prefix of 0xFF has no successor"
    );
    assert_eq!(keys(b"", 100).len(), 8);
    assert!(keys(b"zz", 10).is_empty());
}

/// The index under load: a tiny flush threshold makes the background threads flush and merge runs constantly
/// while writers append and readers check every acknowledged write; afterwards every key's full history is
/// there, before and after a reopen, with no in-memory entries left to replay.
#[test]
fn index_flushes_and_merges_under_concurrent_reads_and_writes() {
    on_both("ix-load", |fs, dir| {
        let opts = aerodb_engine::Options {
            index_flush_versions: 64,
            ..engine_opts()
        };
        let db = Arc::new(Db::open_with_fs(fs.clone(), dir, opts.clone()).unwrap());
        let (writers, per_writer, keys) = (4u64, 300u64, 50u64);
        std::thread::scope(|s| {
            for w in 0..writers {
                let db = db.clone();
                s.spawn(move || {
                    for i in 0..per_writer {
                        let k = format!("k{:03}", (w * per_writer + i) % keys);
                        let v = format!("w{w}-{i}");
                        let t = format!("t{w}");
                        let r = db.put(&t, b(&k), b(&v)).unwrap();
                        // Read-your-write at the receipt's CommitId, whichever source holds it now.
                        assert_eq!(db.get_at(&t, k.as_bytes(), r.commit_id).unwrap(), Some(b(&v)));
                        assert!(db
                            .history(&t, k.as_bytes())
                            .unwrap()
                            .iter()
                            .any(|x| x.commit_id == r.commit_id));
                    }
                });
            }
        });
        let check = |db: &Db| {
            let total: usize = (0..keys * writers)
                .map(|n| {
                    let (k, w) = (n % keys, n / keys);
                    let h = db
                        .history(&format!("t{w}"), format!("k{k:03}").as_bytes())
                        .unwrap();
                    assert!(h.windows(2).all(|w| w[0].commit_id < w[1].commit_id));
                    h.len()
                })
                .sum();
            assert_eq!(total as u64, writers * per_writer);
            for w in 0..writers {
                assert_eq!(
                    db.scan_tenant(&format!("t{w}"), CommitId(1), usize::MAX)
                        .unwrap()
                        .len() as u64,
                    per_writer
                );
            }
            for w in 0..writers {
                let t = format!("t{w}");
                assert_eq!(db.scan_prefix(&t, b"k", usize::MAX).unwrap().len() as u64, keys);
            }
        };
        check(&db);
        Arc::into_inner(db).unwrap().close().unwrap();
        let db = Db::open_with_fs(fs.clone(), dir, opts).unwrap();
        assert_eq!(db.open_report().index_replayed, 0, "close left nothing to replay");
        assert!(db.open_report().index_runs >= 1);
        check(&db);
    });
}

/// Every file under `dir` with its bytes and mode, and every directory.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            if m.is_dir() {
                out.push((name + "/", Vec::new(), m.permissions().mode()));
                todo.push(p);
            } else {
                out.push((name, std::fs::read(&p).unwrap(), m.permissions().mode()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_read_only_open_changes_no_file_even_when_derived_files_lag_or_are_damaged() {
    let tmp = TempDir::new("ro-open");
    let dir = tmp.path().join("db");
    let opts = aerodb_engine::Options {
        index_flush_versions: 64,
        ..engine_opts()
    };
    let db = Db::open(&dir, opts.clone()).unwrap();
    for i in 0..300u32 {
        db.put(
            "t",
            Bytes::from(format!("k{}", i % 50)),
            Bytes::from(i.to_string()),
        )
        .unwrap();
        if i == 150 {
            db.checkpoint_now().unwrap();
            db.flush_index().unwrap();
        }
    }
    drop(db); // no final checkpoint, no index flush: the index's memory table and the last leaves are replayed
    let ro = aerodb_engine::Options {
        read_only: true,
        ..opts.clone()
    };
    let mut cases = 0;
    type Hurt = fn(&Path);
    let damage: [(&str, Hurt); 4] = [
        ("as the crash left it", |_| {}),
        ("Merkle store behind the log", |d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("merkle/level-00.hashes"))
                .unwrap();
            f.set_len(100 * 32 + 7).unwrap();
        }),
        ("index manifest damaged", |d| {
            std::fs::write(d.join("index/MANIFEST"), b"garbage").unwrap()
        }),
        ("Merkle store deleted", |d| {
            std::fs::remove_dir_all(d.join("merkle")).unwrap()
        }),
    ];
    for (what, hurt) in damage {
        hurt(&dir);
        let before = snapshot(&dir);
        let db = Db::open(&dir, ro.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(db.tip().unwrap().commit_id, CommitId(300), "{what}");
        assert_eq!(db.get("t", b"k7").unwrap(), Some(b("257")), "{what}");
        let cp = db.latest_checkpoint().unwrap();
        let p = db.inclusion_proof(CommitId(120), cp.checkpoint.size).unwrap();
        assert_eq!(p.tree_size, 151, "{what}");
        db.close().unwrap();
        assert_eq!(
            snapshot(&dir),
            before,
            "{what}: a read-only open changed the directory"
        );
        cases += 1;
    }
    // A writable open then repairs what the read-only ones left.
    let db = Db::open(&dir, opts).unwrap();
    assert!(!db.open_report().repairs.is_empty());
    assert_eq!(db.get("t", b"k7").unwrap(), Some(b("257")));
    aerodb_tests::report_figure(
        "engine_basic read-only open",
        &format!("{cases} directory states, 0 bytes changed"),
    );
}

/// A log of version-1 records (written before tenants had their own key spaces) keeps its rule: keys are global
/// there, whatever tenant wrote them, and the records appended to it are version 1 as well; a version-2 record
/// cannot join it.
#[test]
fn a_log_of_version_1_records_keeps_global_keys() {
    use aerodb_engine::record::{self as rec, RECORD_VERSION_GLOBAL_KEYS};
    use aerodb_wal::Epoch;
    let mem = MemFs::new();
    let replica = aerodb_engine::Options {
        replica: true,
        ..engine_opts()
    };
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new("/db"), replica.clone()).unwrap();
    assert!(
        db.tenant_keys(),
        "an empty log takes the current rule until its first record"
    );
    // Records as an older primary wrote them: acme puts k=a, globex puts k=b.
    let put = |k: &str, v: &str| {
        Payload::Batch(vec![Op::Put {
            key: b(k),
            value: b(v),
        }])
    };
    let mut prev = rec::genesis_hash();
    let mut frames = Vec::new();
    for (i, (tenant, payload)) in [("acme", put("k", "a")), ("globex", put("k", "b"))]
        .into_iter()
        .enumerate()
    {
        let s = rec::prepare_version(RECORD_VERSION_GLOBAL_KEYS, Epoch(1), tenant, &payload).seal(
            1_700_000_000_000 + i as u64,
            i as u64 + 1,
            &prev,
        );
        prev = s.record_hash;
        frames.push(s);
    }
    let refs: Vec<(Epoch, &[u8], merkle::Hash)> = frames
        .iter()
        .map(|s| (Epoch(1), s.canonical.as_slice(), s.record_hash))
        .collect();
    db.append_replicated(&refs).unwrap();
    let check = |db: &Db| {
        assert!(!db.tenant_keys(), "the log's first record is version 1");
        assert_eq!(
            db.get("acme", b"k").unwrap(),
            Some(b("b")),
            "globex overwrote acme's k: keys are global"
        );
        assert_eq!(db.get("", b"k").unwrap(), Some(b("b")));
        assert_eq!(db.history("globex", b"k").unwrap().len(), 2);
    };
    check(&db);
    // A version-2 record does not join a version-1 log.
    let v2 = rec::prepare(Epoch(1), "acme", &put("k", "c")).seal(1_700_000_000_005, 3, &prev);
    let err = db
        .append_replicated(&[(Epoch(1), v2.canonical.as_slice(), v2.record_hash)])
        .unwrap_err();
    assert!(matches!(err, Error::Corruption { commit_id: 3, .. }), "{err}");
    db.close().unwrap();
    // Opened as a writer, it goes on writing version-1 records.
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new("/db"), engine_opts()).unwrap();
    check(&db);
    let r = db.put("acme", b("k"), b("c")).unwrap();
    assert_eq!(
        db.record(r.commit_id).unwrap().unwrap().record.version,
        RECORD_VERSION_GLOBAL_KEYS
    );
    assert_eq!(db.get("globex", b"k").unwrap(), Some(b("c")));
    // A new log is version 2.
    let fresh = Db::open_in_memory(engine_opts()).unwrap();
    let r = fresh.put("acme", b("k"), b("x")).unwrap();
    assert_eq!(
        fresh.record(r.commit_id).unwrap().unwrap().record.version,
        rec::RECORD_VERSION
    );
}
