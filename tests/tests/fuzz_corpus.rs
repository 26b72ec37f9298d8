//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points the fuzz targets
//! call, so every change re-checks every input the fuzzer ever kept. With `AERODB_WRITE_SEED_CORPUS=1` it first
//! writes seed inputs made from real WAL bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_wal::CommitId;
use std::{path::PathBuf, sync::Arc};

use aerodb_tests::{body, small_opts, MEM_DIR};
use aerodb_wal::{fs::MemFs, fuzzing, Epoch, Wal};
use base64::{engine::general_purpose::STANDARD as B64, Engine};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n > 0, "the corpus of {target} is empty");
    n
}

fn write_seeds() {
    let mem = MemFs::new();
    let wal = Wal::open(Arc::new(mem.clone()), MEM_DIR, small_opts()).unwrap();
    for i in 1..=40 {
        wal.append(Epoch(1 + i / 20), &body(i, 3)).unwrap();
    }
    drop(wal);
    let mut segs: Vec<Vec<u8>> = mem
        .all_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| mem.read_file(&p).unwrap())
        .collect();
    segs.sort();
    let save = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(corpus_dir(target)).unwrap();
        std::fs::write(corpus_dir(target).join(name), bytes).unwrap();
    };
    let first = &segs[0];
    save("wal_frame", "seed-frame", &first[64..64 + 32 + body(1, 3).len()]);
    save("wal_frame", "seed-empty", b"");
    save("wal_segment_header", "seed-header", &first[..64]);
    save("wal_segment_header", "seed-footer", &first[first.len() - 80..]);
    let last = segs.last().unwrap();
    let active_used = last.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    save("wal_recover", "seed-one-sealed", &[&[0u8][..], first].concat());
    save(
        "wal_recover",
        "seed-sealed-and-active",
        &[&[1u8][..], first, &segs[1]].concat(),
    );
    save(
        "wal_recover",
        "seed-active-trimmed",
        &[&[0u8][..], &last[..active_used + 16]].concat(),
    );

    // Engine: a batch record, an event record, a signed checkpoint, a key string, a checkpoint log entry.
    let mut rec = Vec::new();
    let ops = vec![
        aerodb_engine::Op::Put {
            key: bytes::Bytes::from_static(b"k1"),
            value: bytes::Bytes::from_static(b"v1"),
        },
        aerodb_engine::Op::Delete {
            key: bytes::Bytes::from_static(b"k2"),
        },
    ];
    aerodb_engine::record::encode(
        &mut rec,
        CommitId(7),
        Epoch(2),
        1_700_000_000_000,
        "acme",
        &aerodb_engine::Payload::Batch(ops),
        &[3u8; 32],
    );
    save("record", "seed-batch", &rec);
    let event = aerodb_engine::Payload::Event(bytes::Bytes::from_static(b"{\"audit\":1}"));
    aerodb_engine::record::encode(
        &mut rec,
        CommitId(8),
        Epoch(2),
        1_700_000_000_001,
        "globex",
        &event,
        &[4u8; 32],
    );
    save("record", "seed-event", &rec);
    let key = aerodb_engine::SigningKey::from_seed("fuzz.example/log", [7u8; 32]).unwrap();
    let cp = aerodb_engine::Checkpoint {
        origin: "fuzz.example/log".into(),
        size: 42,
        root: [9u8; 32],
        epoch: Epoch(3),
    }
    .sign(&key);
    save("checkpoint", "seed-note", cp.note.as_bytes());
    save("checkpoint", "seed-body", cp.checkpoint.body().as_bytes());
    save(
        "checkpoint",
        "seed-verifier-key",
        key.verifier().to_string().as_bytes(),
    );
    let mut entry = (cp.note.len() as u32).to_le_bytes().to_vec();
    entry.extend_from_slice(&crc32fast::hash(cp.note.as_bytes()).to_le_bytes());
    entry.extend_from_slice(cp.note.as_bytes());
    save("checkpoint", "seed-log-entry", &entry);

    // Witness requests and cosignatures: a first request (old 0), one with a consistency proof, a cosigned note,
    // a witness state file.
    {
        use aerodb_engine::{merkle, witness};
        let mut tree = merkle::MemTree::new();
        for i in 0..13u64 {
            tree.push(merkle::leaf_hash(&i.to_le_bytes()));
        }
        let note = |n: u64| {
            let root = merkle::root(&tree, n).unwrap();
            let body = format!("fuzz.example/log\n{n}\n{}\n", B64.encode(root));
            key.sign_note(&body)
        };
        let first = witness::AddCheckpoint {
            old_size: 0,
            proof: Vec::new(),
            note: note(5),
        };
        save("witness_request", "seed-first", first.encode().as_bytes());
        let next = witness::AddCheckpoint {
            old_size: 5,
            proof: merkle::consistency_proof(&tree, 5, 13).unwrap(),
            note: note(13),
        };
        save("witness_request", "seed-extend", next.encode().as_bytes());
        let w = aerodb_engine::SigningKey::from_seed_typed(
            "fuzz.example/witness",
            aerodb_engine::KeyType::CosignatureV1,
            [8u8; 32],
        )
        .unwrap();
        let n = note(13);
        let body = &n[..=n.rfind("\n\n").unwrap()];
        let cosigned = witness::attach_lines(&n, &w.signature_line(body, 1_700_000_000)).unwrap();
        save("cosignature", "seed-cosigned-note", cosigned.as_bytes());
        let mut state = witness::WitnessState::default();
        state.logs.insert(
            "fuzz.example/log".into(),
            witness::Cosigned {
                size: 13,
                root: merkle::root(&tree, 13).unwrap(),
            },
        );
        save("cosignature", "seed-state", &state.encode());
    }

    // Role files: a primary, a replica, a halted node.
    {
        use aerodb_replication::{role::*, state_file::encode};
        let mut m = RoleMachine::default();
        m.command(Command::Promote { epoch: Epoch(3) }).unwrap();
        save("role_file", "seed-primary", &encode(&m));
        let mut r = RoleMachine::default();
        r.command(Command::Follow {
            epoch: Epoch(3),
            primary: "http://127.0.0.1:7000".into(),
        })
        .unwrap();
        save("role_file", "seed-replica", &encode(&r));
        r.observe(Observation::Halt(HaltReason::Fork {
            commit_id: CommitId(9),
            ours: [1; 32],
            theirs: [2; 32],
        }));
        save("role_file", "seed-halted", &encode(&r));
    }

    // A replica's first frame: the genesis tip, then record 1's frame as the primary stored it.
    {
        let mem = MemFs::new();
        let db = aerodb_engine::Db::open_with_fs(
            Arc::new(mem.clone()),
            std::path::Path::new("/p"),
            aerodb_tests::engine_opts(),
        )
        .unwrap();
        db.put("acme", &b"k"[..], &b"v"[..]).unwrap();
        db.close().unwrap();
        let wal = Wal::open(
            Arc::new(mem),
            "/p/wal",
            aerodb_wal::Options {
                read_only: true,
                ..small_opts()
            },
        )
        .unwrap();
        let frame = wal
            .read_from(CommitId(1))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .raw
            .to_vec();
        let mut seed = vec![0u8; 8];
        seed.extend_from_slice(&aerodb_engine::record::genesis_hash());
        seed.extend_from_slice(&0u64.to_le_bytes());
        seed.extend_from_slice(&frame);
        save("replay_frame", "seed-first-frame", &seed);
    }

    // Index: a run and a manifest written by a real database.
    let mem = MemFs::new();
    let dir = std::path::Path::new("/db");
    let db =
        aerodb_engine::Db::open_with_fs(Arc::new(mem.clone()), dir, aerodb_tests::engine_opts()).unwrap();
    for i in 0..12u32 {
        db.put(
            if i % 2 == 0 { "acme" } else { "globex" },
            format!("key/{}", i % 5),
            format!("value {i}"),
        )
        .unwrap();
    }
    db.delete("acme", &b"key/1"[..]).unwrap();
    db.flush_index().unwrap();
    db.close().unwrap();
    for p in mem.all_files() {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.parent() == Some(&dir.join("index")) {
            let tag = if name == "MANIFEST" { 0u8 } else { 1u8 };
            save(
                "index",
                &format!("seed-{name}"),
                &[&[tag][..], &mem.read_file(&p).unwrap()].concat(),
            );
        }
    }
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    if std::env::var_os("AERODB_WRITE_SEED_CORPUS").is_some() {
        write_seeds();
    }
    let n = replay("wal_frame", fuzzing::frame_decoder)
        + replay("wal_segment_header", fuzzing::segment_header_footer)
        + replay("wal_recover", fuzzing::recover_bytes)
        + replay("record", aerodb_engine::fuzzing::record)
        + replay("checkpoint", aerodb_engine::fuzzing::checkpoint)
        + replay("index", aerodb_engine::fuzzing::index)
        + replay("backup_manifest", aerodb_engine::fuzzing::backup_manifest)
        + replay("audit_bundle", aerodb_engine::fuzzing::audit_bundle)
        + replay("witness_request", aerodb_engine::fuzzing::witness_request)
        + replay("cosignature", aerodb_engine::fuzzing::cosignature)
        + replay("role_file", aerodb_replication::fuzz_role_file)
        + replay("replay_frame", aerodb_replication::fuzz_replay_frame);
    aerodb_tests::report_figure("T13 fuzz corpus replay", &format!("{n} inputs, 0 failures"));
}
