//! Behaviour of the WAL on the real and the memory file system: round trips, rolls, reopen, locking, limits,
//! concurrency and readers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{sync::Arc, thread, time::Duration};

use aerodb_tests::{body, small_opts, TempDir, MEM_DIR};
use aerodb_wal::{
    fs::{Fs, MemFs, RealFs},
    CommitId, Durability, Epoch, Error, Options, Wal,
};

/// Runs `f` against both file systems, as STYLE.md asks of every storage test.
fn on_both(tag: &str, f: impl Fn(Arc<dyn Fs>, &std::path::Path)) {
    let tmp = TempDir::new(tag);
    f(Arc::new(RealFs), &tmp.path().join("wal"));
    f(Arc::new(MemFs::new()), std::path::Path::new(MEM_DIR));
}

fn collect(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    wal.read_from(CommitId(from))
        .unwrap()
        .map(|f| f.unwrap())
        .map(|f| (f.commit_id.0, f.body().to_vec()))
        .collect()
}

#[test]
fn append_roll_reopen_read() {
    on_both("roll", |fs, dir| {
        let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
        let mut expect = Vec::new();
        for i in 1..=150u64 {
            let b = body(i, 1);
            assert_eq!(wal.append(Epoch(1), &b).unwrap(), CommitId(i));
            expect.push((i, b));
        }
        assert_eq!(wal.durable_commit_id(), CommitId(150));
        assert_eq!(collect(&wal, 1), expect);
        assert_eq!(collect(&wal, 37), expect[36..]);
        assert_eq!(collect(&wal, 151), []);
        assert!(
            fs.list_dir(dir)
                .unwrap()
                .iter()
                .filter(|n| n.ends_with(".seg"))
                .count()
                > 3,
            "segments rolled"
        );
        assert_eq!(wal.verify().unwrap(), 150);
        wal.close().unwrap();

        let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
        let r = wal.recovery_report().clone();
        assert_eq!(
            (r.last_commit_id, r.frames, r.torn_tail),
            (CommitId(150), 150, None)
        );
        assert_eq!(collect(&wal, 1), expect);
        assert_eq!(wal.append(Epoch(2), b"after reopen").unwrap(), CommitId(151));
        assert_eq!(wal.verify().unwrap(), 151);
        // The reader for the open's own verification (no second CRC of what recovery checked) yields the same
        // frames, those appended since the open included.
        let recovered: Vec<(u64, Vec<u8>)> = wal
            .read_recovered(CommitId(1))
            .unwrap()
            .map(|f| f.unwrap())
            .map(|f| (f.commit_id.0, f.body().to_vec()))
            .collect();
        let mut all = expect.clone();
        all.push((151, b"after reopen".to_vec()));
        assert_eq!(recovered, all);
    });
}

#[test]
fn second_open_is_refused_with_a_clear_error() {
    on_both("lock", |fs, dir| {
        let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
        let err = Wal::open(fs.clone(), dir, small_opts()).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("locked by another AeroDB process"));
        drop(wal);
        Wal::open(fs, dir, small_opts()).unwrap();
    });
}

#[test]
fn the_lock_file_is_really_flocked() {
    // flock is per open file description, so a second open in the same process models a second process.
    let tmp = TempDir::new("flock");
    let _wal = Wal::open(Arc::new(RealFs), tmp.path(), small_opts()).unwrap();
    let f = std::fs::File::open(tmp.path().join("LOCK")).unwrap();
    assert!(f.try_lock().is_err(), "the lock file must be flocked");
}

#[test]
fn limits_and_epochs_are_enforced() {
    on_both("limits", |fs, dir| {
        let wal = Wal::open(fs, dir, small_opts()).unwrap();
        let err = wal.append(Epoch(1), &vec![0u8; 1025]).unwrap_err();
        assert!(
            matches!(err, Error::RecordTooLarge { len: 1025, max: 1024 }),
            "{err}"
        );
        wal.append(Epoch(5), b"x").unwrap();
        let err = wal.append(Epoch(4), b"y").unwrap_err();
        assert!(
            matches!(
                err,
                Error::EpochRegression {
                    last: Epoch(5),
                    got: Epoch(4)
                }
            ),
            "{err}"
        );
        // A failed batch leaves no trace: the next append gets the next CommitId.
        let err = wal
            .append_batch(Epoch(5), &[vec![1u8; 10], vec![2u8; 5000]])
            .unwrap_err();
        assert!(matches!(err, Error::RecordTooLarge { .. }));
        assert_eq!(wal.append(Epoch(5), b"z").unwrap(), CommitId(2));
        assert_eq!(collect(&wal, 1).len(), 2);
        // Empty bodies are valid records.
        assert_eq!(wal.append(Epoch(5), b"").unwrap(), CommitId(3));
    });
}

#[test]
fn invalid_options_are_rejected() {
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    for opts in [
        Options {
            segment_bytes: 100,
            ..small_opts()
        },
        Options {
            max_record_bytes: 1 << 30,
            ..small_opts()
        },
        Options {
            segment_bytes: 2 << 30,
            ..small_opts()
        },
        Options {
            durability: Durability::Batch {
                interval: Duration::ZERO,
            },
            ..small_opts()
        },
    ] {
        assert!(matches!(
            Wal::open(fs.clone(), MEM_DIR, opts),
            Err(Error::InvalidOptions(_))
        ));
    }
}

#[test]
fn concurrent_appenders_get_unique_contiguous_ids() {
    on_both("conc", |fs, dir| {
        let opts = Options {
            segment_bytes: 64 << 10,
            ..small_opts()
        };
        let wal = Arc::new(Wal::open(fs.clone(), dir, opts.clone()).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let wal = wal.clone();
                thread::spawn(move || {
                    (0..50u64)
                        .map(|i| {
                            let b = format!("t{t}-{i}").into_bytes();
                            (wal.append(Epoch(1), &b).unwrap().0, b)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut acked: Vec<(u64, Vec<u8>)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        acked.sort();
        assert_eq!(
            acked.iter().map(|a| a.0).collect::<Vec<_>>(),
            (1..=400).collect::<Vec<_>>()
        );
        assert_eq!(collect(&wal, 1), acked);
        drop(wal);
        let wal = Wal::open(fs, dir, opts).unwrap();
        assert_eq!(collect(&wal, 1), acked);
    });
}

#[test]
fn readers_run_concurrently_with_the_writer() {
    on_both("readers", |fs, dir| {
        let wal = Arc::new(Wal::open(fs, dir, small_opts()).unwrap());
        let writer = {
            let wal = wal.clone();
            thread::spawn(move || {
                for i in 1..=200u64 {
                    wal.append(Epoch(1), &body(i, 7)).unwrap();
                }
            })
        };
        let mut seen = 0u64;
        while seen < 200 {
            let mut r = wal.read_from(CommitId(seen + 1)).unwrap();
            for f in r.by_ref() {
                let f = f.unwrap();
                assert_eq!(f.commit_id.0, seen + 1, "readers see a gap-free prefix");
                assert_eq!(f.body().to_vec(), body(f.commit_id.0, 7));
                seen += 1;
            }
        }
        writer.join().unwrap();
    });
}

#[test]
fn batch_and_none_modes_ack_on_write_and_sync_later() {
    on_both("modes", |fs, dir| {
        let opts = Options {
            durability: Durability::Batch {
                interval: Duration::from_millis(5),
            },
            ..small_opts()
        };
        let wal = Wal::open(fs.clone(), dir, opts.clone()).unwrap();
        let (_, last) = wal.append_batch(Epoch(1), &[b"a", b"b", b"c"]).unwrap();
        assert!(
            wal.wait_durable(last, Duration::from_secs(5)).unwrap(),
            "the sync thread makes it durable"
        );
        wal.close().unwrap();
        let opts = Options {
            durability: Durability::None,
            ..small_opts()
        };
        let wal = Wal::open(fs, dir, opts).unwrap();
        assert_eq!(wal.append(Epoch(1), b"d").unwrap(), CommitId(4));
        wal.sync().unwrap();
        assert_eq!(collect(&wal, 1).len(), 4);
    });
}

#[test]
fn background_preallocation_is_used_and_cleaned_up() {
    let tmp = TempDir::new("prealloc");
    let opts = Options {
        background_preallocation: true,
        ..small_opts()
    };
    let wal = Wal::open(Arc::new(RealFs), tmp.path(), opts.clone()).unwrap();
    for i in 1..=100u64 {
        wal.append(Epoch(1), &body(i, 3)).unwrap();
    }
    drop(wal);
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".prealloc")),
        "the next segment is prepared ahead: {names:?}"
    );
    let wal = Wal::open(Arc::new(RealFs), tmp.path(), opts).unwrap();
    assert_eq!(wal.recovery_report().last_commit_id, CommitId(100));
    assert!(wal.recovery_report().removed_prealloc >= 1);
    // Active segments are preallocated to full size, so appends never grow the file.
    let active = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .max_by_key(|e| e.file_name())
        .unwrap();
    assert_eq!(active.metadata().unwrap().len(), 4096);
}

#[test]
fn reopening_with_another_segment_size_keeps_the_active_segments_capacity() {
    //! Regression: the writer sized the existing active segment by the new option instead of its header, so
    //! frames past the header's capacity were written where recovery never reads.
    on_both("resize", |fs, dir| {
        let big = Options {
            segment_bytes: 16 << 10,
            ..small_opts()
        };
        let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
        for i in 1..=10u64 {
            wal.append(Epoch(1), &body(i, 9)).unwrap();
        }
        drop(wal);
        let wal = Wal::open(fs.clone(), dir, big.clone()).unwrap();
        for i in 11..=200u64 {
            wal.append(Epoch(1), &body(i, 9)).unwrap();
        }
        drop(wal);
        let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
        let got = collect(&wal, 1);
        assert_eq!(got.len(), 200);
        assert!(got.iter().all(|(i, b)| *b == body(*i, 9)));
        assert_eq!(wal.verify().unwrap(), 200);
    });
}

#[test]
fn random_access_by_commit_id_matches_sequential_reads() {
    on_both("random", |fs, dir| {
        let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
        for i in 1..=300u64 {
            wal.append(Epoch(1), &body(i, 4)).unwrap();
        }
        let check = |wal: &Wal| {
            for i in (1..=300u64).rev() {
                let f = wal.read_frame(CommitId(i)).unwrap().unwrap();
                assert_eq!((f.commit_id, f.body().to_vec()), (CommitId(i), body(i, 4)));
            }
            assert!(wal.read_frame(CommitId(0)).unwrap().is_none());
            assert!(wal.read_frame(CommitId(301)).unwrap().is_none());
            // Readers starting anywhere see the same frames.
            for start in [1u64, 31, 32, 33, 150, 299, 300] {
                assert_eq!(
                    collect(wal, start),
                    (start..=300).map(|i| (i, body(i, 4))).collect::<Vec<_>>()
                );
            }
        };
        check(&wal);
        drop(wal);
        let wal = Wal::open(fs, dir, small_opts()).unwrap();
        check(&wal);
    });
}

#[test]
fn readers_of_the_active_segment_outlive_its_seal() {
    // On RealFs the active segment is read through a live memory map; sealing cuts the file to just after its
    // footer. A reader, and a frame, taken while the segment was active must stay readable and unchanged after.
    on_both("outlive-seal", |fs, dir| {
        let wal = Wal::open(fs, dir, small_opts()).unwrap();
        for i in 1..=5u64 {
            wal.append(Epoch(1), &body(i, 9)).unwrap();
        }
        let reader = wal.read_from(CommitId(1)).unwrap();
        let frame = wal.read_frame(CommitId(3)).unwrap().unwrap();
        let first_segment = frame.segment;
        let mut i = 6u64;
        while wal.read_frame(CommitId(i - 1)).unwrap().unwrap().segment == first_segment {
            wal.append(Epoch(1), &body(i, 9)).unwrap();
            i += 1;
        }
        assert!(i > 7, "the first segment was sealed and a second one started");
        let frames: Vec<(u64, Vec<u8>)> = reader
            .map(|f| f.unwrap())
            .map(|f| (f.commit_id.0, f.body().to_vec()))
            .collect();
        assert_eq!(frames, (1..=5).map(|i| (i, body(i, 9))).collect::<Vec<_>>());
        assert_eq!(frame.body().to_vec(), body(3, 9));
        // And the sealed segment reads back as before.
        assert_eq!(collect(&wal, 1)[..5], frames[..]);
    });
}

#[test]
fn read_only_open_reports_but_never_writes() {
    let mem = MemFs::new();
    let fs: Arc<dyn Fs> = Arc::new(mem.clone());
    let wal = Wal::open(fs.clone(), MEM_DIR, small_opts()).unwrap();
    for i in 1..=20u64 {
        wal.append(Epoch(1), &body(i, 2)).unwrap();
    }
    drop(wal);
    // Tear the last frame.
    let mut names = mem.all_files();
    names.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    names.sort();
    let last = names.last().unwrap().clone();
    let mut bytes = mem.read_file(&last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end - 3] ^= 0xFF;
    mem.write_file_durable(&last, &bytes).unwrap();
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = mem
        .all_files()
        .into_iter()
        .map(|p| (p.clone(), mem.read_file(&p).unwrap()))
        .collect();
    let ro = Options {
        read_only: true,
        ..small_opts()
    };
    let wal = Wal::open(fs.clone(), MEM_DIR, ro).unwrap();
    assert!(
        wal.recovery_report().torn_tail.is_some(),
        "the torn tail is reported"
    );
    assert_eq!(collect(&wal, 1).len(), 19, "reads stop before the torn frame");
    assert!(matches!(wal.append(Epoch(1), b"x"), Err(Error::ReadOnly)));
    drop(wal);
    let after: Vec<(std::path::PathBuf, Vec<u8>)> = mem
        .all_files()
        .into_iter()
        .map(|p| (p.clone(), mem.read_file(&p).unwrap()))
        .collect();
    assert_eq!(before, after, "a read-only open changed no byte");
}
