//! Tampering: change one byte of a record (re-sealing the frame's CRCs, as a forger would), of a stored Merkle
//! node, or of a checkpoint (re-sealing its entry CRC) — the verifier names exactly what and where, and the engine
//! refuses to open where the startup check covers it. T4 at engine level: a valid frame spliced in from another
//! log, or a frame from an older epoch, is rejected by the prev_hash / epoch / CommitId checks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use aerodb_engine::{verify_dir_with_fs, Db, Error, Problem, VerifyOptions, VerifyReport};
use aerodb_tests::{engine_opts, report_figure};
use aerodb_wal::{
    format::{decode_frame_header, encode_frame_header, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN},
    fs::MemFs,
};
use bytes::Bytes;

const DIR: &str = "/db";

fn build(mem: &MemFs, records: u64, seed: u8) {
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()).unwrap();
    for i in 1..=records {
        db.put(
            if i % 3 == 0 { "a" } else { "b" },
            Bytes::from(format!("key{}", i % 17)),
            Bytes::from(vec![seed; (i % 40) as usize]),
        )
        .unwrap();
        if i % 50 == 0 {
            db.checkpoint_now().unwrap();
        }
        if i % 70 == 0 {
            db.flush_index().unwrap();
        }
    }
    db.close().unwrap();
}

fn verify(mem: &MemFs) -> VerifyReport {
    let opts = VerifyOptions {
        verifier: Some(engine_opts().signing_key.unwrap().verifier()),
        strict: true,
    };
    verify_dir_with_fs(Arc::new(mem.clone()), Path::new(DIR), &opts, &mut |_, _| {}).unwrap()
}

fn files(mem: &MemFs, sub: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mem
        .all_files()
        .into_iter()
        .filter(|p| p.starts_with(Path::new(DIR).join(sub)) && p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// (segment path, frame offset, frame length) of every frame, in CommitId order.
fn frames(mem: &MemFs) -> Vec<(PathBuf, usize, usize)> {
    let mut out = Vec::new();
    for seg in files(mem, "wal", "seg") {
        let b = mem.read_file(&seg).unwrap();
        let mut pos = SEGMENT_HEADER_LEN;
        while let Ok(h) = decode_frame_header(&b[pos..], 1 << 20) {
            out.push((seg.clone(), pos, h.frame_len()));
            pos += h.frame_len();
        }
    }
    out
}

/// Replaces the body of the frame at `pos` with `f(body)` (same length) and re-seals its CRCs.
fn forge_frame(mem: &MemFs, seg: &Path, pos: usize, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = mem.read_file(seg).unwrap();
    let h = decode_frame_header(&b[pos..], 1 << 20).unwrap();
    let mut body = b[pos + FRAME_HEADER_LEN..pos + h.frame_len()].to_vec();
    f(&mut body);
    let header = encode_frame_header(h.commit_id, h.epoch, &body);
    b[pos..pos + FRAME_HEADER_LEN].copy_from_slice(&header);
    b[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + body.len()].copy_from_slice(&body);
    mem.write_file_durable(seg, &b).unwrap();
}

fn snapshot(mem: &MemFs) -> Vec<(PathBuf, Vec<u8>)> {
    mem.all_files()
        .into_iter()
        .map(|p| (p.clone(), mem.read_file(&p).unwrap()))
        .collect()
}

fn restore(mem: &MemFs, snap: &[(PathBuf, Vec<u8>)]) {
    for (p, b) in snap {
        mem.write_file_durable(p, b).unwrap();
    }
}

#[test]
fn a_forged_record_is_refused_at_open_wherever_the_scan_cut_the_log() {
    // The open hashes and links records in pieces of ~1 KiB (the tests' `recovery_piece_bytes`), linked piece to
    // piece afterwards: a record forged anywhere — first, last or inside a piece, in any segment — breaks the link
    // of the record after it, and the open names that record.
    let mem = MemFs::new();
    build(&mem, 400, 7);
    let clean = snapshot(&mem);
    let all = frames(&mem);
    let segments = files(&mem, "wal", "seg").len();
    assert!(segments >= 3, "the log spans several segments ({segments})");
    let mut refused = 0;
    for (i, (seg, pos, len)) in all.iter().enumerate().take(all.len() - 1) {
        for (p, b) in &clean {
            mem.write_file_durable(p, b).unwrap();
        }
        // The tenant's first letter, upper-cased: the record still decodes, its hash changes.
        forge_frame(&mem, seg, *pos, |body| body[16] ^= 0x20);
        let forged = i as u64 + 1;
        match Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()) {
            Err(Error::Corruption { commit_id, what }) => {
                assert_eq!(
                    commit_id,
                    forged + 1,
                    "record {forged} forged (frame of {len} bytes): {what}"
                );
                refused += 1;
            }
            Err(e) => panic!("record {forged} forged: {e}"),
            Ok(_) => panic!("record {forged} forged and the open accepted it"),
        }
    }
    assert_eq!(refused, all.len() - 1);
    report_figure(
        "engine_tamper forged records at open",
        &format!(
            "{refused} of {refused} refused, naming the next record ({segments} segments, 1 KiB pieces)"
        ),
    );
}

#[test]
fn a_clean_directory_verifies() {
    let mem = MemFs::new();
    build(&mem, 300, 1);
    let r = verify(&mem);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(
        (r.records, r.checkpoints, r.checkpoints_ok, r.consistency_ok),
        (300, 6, 6, 5)
    );
    // Every perfect subtree of 300 leaves: the sum of 300 >> l over all levels.
    assert_eq!(r.nodes_checked, (0..9).map(|l| 300u64 >> l).sum::<u64>());
}

#[test]
fn the_verifier_names_every_tampered_record_node_and_checkpoint() {
    let mem = MemFs::new();
    build(&mem, 300, 1);
    let snap = snapshot(&mem);
    let all = frames(&mem);
    let (mut cases, mut missed) = (0, Vec::new());

    // One byte of a record's value, frame CRCs re-sealed: the next record's prev_hash no longer matches, the
    // leaf differs, and the checkpoints covering it do not verify. The last record has no successor: the leaf and
    // the final checkpoint catch it.
    for commit in [1u64, 2, 77, 150, 299, 300] {
        let (seg, pos, len) = &all[commit as usize - 1];
        forge_frame(&mem, seg, *pos, |body| {
            let n = body.len();
            body[n - 1] ^= 0x01;
        });
        let _ = len;
        let r = verify(&mem);
        cases += 1;
        let named = r.problems.iter().any(|p| match p {
            Problem::Record { commit_id, .. } => *commit_id == commit + 1,
            Problem::Node { level: 0, index } => *index == commit - 1,
            _ => false,
        });
        if !named {
            missed.push(format!("record {commit}: {:?}", r.problems));
        }
        // The engine refuses to open it (chain link or checkpoint root).
        assert!(matches!(
            Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()),
            Err(Error::Corruption { .. } | Error::Integrity(_))
        ));
        restore(&mem, &snap);
    }

    // One byte of a stored Merkle node, on every level.
    for (l, file) in files(&mem, "merkle", "hashes").iter().enumerate() {
        let mut b = mem.read_file(file).unwrap();
        let index = (b.len() / 32 / 2) as u64;
        b[index as usize * 32 + 5] ^= 0x80;
        mem.write_file_durable(file, &b).unwrap();
        let r = verify(&mem);
        cases += 1;
        if !r.problems.contains(&Problem::Node {
            level: l as u32,
            index,
        }) {
            missed.push(format!("node {l}/{index}: {:?}", r.problems));
        }
        restore(&mem, &snap);
    }

    // One byte of a checkpoint note, with the log entry's CRC re-sealed so only the signature can catch it.
    let cp_path = Path::new(DIR).join("checkpoints.log");
    for number in 1..=6usize {
        let mut b = mem.read_file(&cp_path).unwrap();
        let mut pos = 0;
        for _ in 1..number {
            pos += 8 + u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        }
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        b[pos + 8 + 15] ^= 0x01;
        let crc = crc32fast::hash(&b[pos + 8..pos + 8 + len]);
        b[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        mem.write_file_durable(&cp_path, &b).unwrap();
        let r = verify(&mem);
        cases += 1;
        if !r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Checkpoint { number: n, .. } if *n == number))
        {
            missed.push(format!("checkpoint {number}: {:?}", r.problems));
        }
        assert!(matches!(
            Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()),
            Err(Error::Integrity(_))
        ));
        restore(&mem, &snap);
    }

    // The index: one byte of every run (checksums catch it), and a forged run whose checksums are re-sealed after
    // turning a put into a delete (only the comparison with the log catches it). The engine repairs the first
    // kind on open; the verifier names both.
    let runs = files(&mem, "index", "idx");
    assert!(runs.len() >= 2, "the build leaves several runs: {runs:?}");
    for run in &runs {
        let mut b = mem.read_file(run).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x04;
        mem.write_file_durable(run, &b).unwrap();
        let r = verify(&mem);
        cases += 1;
        let name = run.file_name().unwrap().to_string_lossy().to_string();
        if !r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Index(w) if w.contains(&name)))
        {
            missed.push(format!("index run {name}: {:?}", r.problems));
        }
        let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()).unwrap();
        assert!(
            !db.open_report().repairs.is_empty(),
            "the damaged run is reported"
        );
        assert_eq!(
            db.history("a", b"key5").unwrap().len() + db.history("b", b"key5").unwrap().len(),
            18,
            "answers come from the rebuilt index"
        );
        drop(db);
        restore(&mem, &snap);
        for extra in files(&mem, "index", "idx")
            .into_iter()
            .filter(|p| !runs.contains(p))
        {
            aerodb_wal::fs::Fs::remove_file(&mem, &extra).unwrap();
        }
    }
    {
        let run = &runs[0];
        let mut b = mem.read_file(run).unwrap();
        let keys = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        let versions_at = 128 + keys * 24;
        b[versions_at] ^= 0x01;
        let versions = u64::from_le_bytes(b[40..48].try_into().unwrap()) as usize;
        let crc = crc32fast::hash(&b[versions_at..versions_at + versions * 8]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        mem.write_file_durable(run, &b).unwrap();
        let r = verify(&mem);
        cases += 1;
        if !r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Index(w) if w.contains("lacks record")))
        {
            missed.push(format!("forged index run: {:?}", r.problems));
        }
        restore(&mem, &snap);
    }
    report_figure(
        "engine tampering (record / node / checkpoint / index)",
        &format!("{cases} cases, {} missed", missed.len()),
    );
    assert!(missed.is_empty(), "{missed:#?}");
    assert!(verify(&mem).ok(), "restored");
}

#[test]
fn t4_spliced_and_stale_epoch_frames_are_rejected() {
    // Two logs with the same shape but different content: frame k of one is a perfectly valid frame (CRCs,
    // CommitId) that does not belong in the other.
    let (a, other) = (MemFs::new(), MemFs::new());
    build(&a, 120, 1);
    build(&other, 120, 2);
    let snap = snapshot(&a);
    let fa = frames(&a);
    let fo = frames(&other);
    let (mut cases, mut accepted) = (0, 0);
    for k in [1usize, 2, 60, 119, 120] {
        let (seg, pos, len) = &fa[k - 1];
        let (oseg, opos, olen) = &fo[k - 1];
        assert_eq!(len, olen, "same shape");
        let mut b = a.read_file(seg).unwrap();
        let ob = other.read_file(oseg).unwrap();
        b[*pos..*pos + len].copy_from_slice(&ob[*opos..*opos + olen]);
        a.write_file_durable(seg, &b).unwrap();
        cases += 1;
        let opened = Db::open_with_fs(Arc::new(a.clone()), Path::new(DIR), engine_opts());
        let r = verify(&a);
        if opened.is_ok() || r.ok() {
            accepted += 1;
        }
        restore(&a, &snap);
    }
    // A frame whose record claims an older epoch (re-sealed).
    for k in [5usize, 100] {
        let (seg, pos, _) = &fa[k - 1];
        forge_frame(&a, seg, *pos, |body| body[16] = 0);
        cases += 1;
        let opened = Db::open_with_fs(Arc::new(a.clone()), Path::new(DIR), engine_opts());
        if opened.is_ok() || verify(&a).ok() {
            accepted += 1;
        }
        restore(&a, &snap);
    }
    report_figure(
        "T4 splices and stale epochs (engine)",
        &format!("{cases} cases, {accepted} accepted"),
    );
    assert_eq!(accepted, 0);
}

/// The log's last `n` frames replaced by zeros, as if they had never been written: the WAL alone reads a clean
/// end there.
fn zero_last_frames(mem: &MemFs, n: usize) -> u64 {
    let seg = files(mem, "wal", "seg").pop().unwrap();
    let f = aerodb_wal::fs::Fs::open(mem, &seg, aerodb_wal::fs::OpenMode::ReadWrite).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    aerodb_wal::fs::read_exact_at(&*f, &mut b, 0).unwrap();
    let mut offs = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while let Ok(h) = decode_frame_header(&b[pos..], 1 << 20) {
        offs.push(pos);
        pos += h.frame_len();
    }
    let from = offs[offs.len() - n];
    f.write_all_at(&vec![0u8; pos - from], from as u64).unwrap();
    f.sync_all().unwrap();
    (pos - from) as u64
}

#[test]
fn derived_files_ahead_of_the_log_refuse_the_open_and_stay_untouched() {
    // A log that lost its last records after a crash (here: zeroed, which the WAL cannot tell from a clean end)
    // while the Merkle store or the index, derived from it, still hold them: the open is refused with a typed
    // error naming which, and nothing is repaired. (Issue 17: the extra leaves were discarded with one WARN line
    // and the lost CommitIds handed out again.)
    let opts = || {
        let base = engine_opts();
        aerodb_engine::Options {
            // No checkpoint covers the lost records: only the derived files know of them. One segment holds them
            // all.
            checkpoint_every_records: 0,
            checkpoint_interval: None,
            wal: aerodb_wal::Options {
                segment_bytes: 1 << 20,
                ..base.wal.clone()
            },
            ..base
        }
    };
    let mut cases = Vec::new();
    // (a) the index: a run covering every record was flushed.
    let mem = MemFs::new();
    {
        let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), opts()).unwrap();
        for i in 0..60u64 {
            db.put("t", Bytes::from(format!("k{i}")), Bytes::from_static(b"v"))
                .unwrap();
        }
        db.flush_index().unwrap();
        drop(db); // as kill -9 would leave it: no final checkpoint
    }
    zero_last_frames(&mem, 3);
    let before = mem.all_files().len();
    match Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), opts()) {
        Err(Error::LogBehindDerived {
            derived,
            derived_records: 60,
            log_records: 57,
        }) => cases.push(derived),
        other => panic!("index ahead: {:?}", other.map(|_| ())),
    }
    assert_eq!(mem.all_files().len(), before, "nothing removed");
    // Downgraded, it opens (loudly) and says so in its report.
    let lax = aerodb_engine::Options {
        fail_on_startup_check: false,
        ..opts()
    };
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), lax).unwrap();
    assert!(db
        .open_report()
        .problems
        .iter()
        .any(|p| p.contains("the index covers 60")));
    drop(db);
    // (b) the Merkle store: enough records that leaves reached its file (written in blocks of 4,096).
    let mem = MemFs::new();
    {
        let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), opts()).unwrap();
        let records: Vec<aerodb_engine::NewRecord> = (0..4200u64)
            .map(|i| aerodb_engine::NewRecord {
                tenant: "t".into(),
                payload: aerodb_engine::Payload::Event(Bytes::from(i.to_le_bytes().to_vec())),
            })
            .collect();
        for chunk in records.chunks(500) {
            db.append_many(chunk).unwrap();
        }
        drop(db);
    }
    zero_last_frames(&mem, 120);
    match Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), opts()) {
        Err(Error::LogBehindDerived {
            derived,
            derived_records: 4096,
            log_records: 4080,
        }) => cases.push(derived),
        other => panic!("Merkle store ahead: {:?}", other.map(|_| ())),
    }
    report_figure(
        "derived files ahead of the log",
        &format!(
            "{} cases ({}): open refused, nothing changed",
            cases.len(),
            cases.join(", ")
        ),
    );
}

#[test]
fn a_damaged_stored_leaf_is_never_served_in_a_proof() {
    // One stored Merkle leaf changed below the newest checkpoint (the startup check compares only the leaves after
    // it and the last one, so the node opens): a proof through it would not verify against the signed root. The
    // node does not serve it; it fails closed and says why. (Issue 17: it served proofs that did not verify.)
    let mem = MemFs::new();
    build(&mem, 120, 7);
    let level0 = PathBuf::from(DIR).join("merkle/level-00.hashes");
    let f = aerodb_wal::fs::Fs::open(&mem, &level0, aerodb_wal::fs::OpenMode::ReadWrite).unwrap();
    let mut leaf = [0u8; 32];
    aerodb_wal::fs::read_exact_at(&*f, &mut leaf, 2 * 32).unwrap();
    leaf[0] ^= 1;
    f.write_all_at(&leaf, 2 * 32).unwrap();
    f.sync_all().unwrap();
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()).unwrap();
    let size = db.latest_checkpoint().unwrap().checkpoint.size;
    // Record 3's own proof does not use its stored leaf (the leaf comes from the log): it verifies and is
    // served. Record 4's proof has the damaged leaf as its sibling: refused.
    let p3 = db.inclusion_proof(aerodb_wal::CommitId(3), size).unwrap();
    assert_eq!(p3.leaf_index, 2);
    match db.inclusion_proof(aerodb_wal::CommitId(4), size) {
        Err(Error::Corruption { .. }) => {}
        other => panic!(
            "proof of 4 through a damaged leaf: {:?}",
            other.map(|p| p.hashes.len())
        ),
    }
    assert!(
        db.not_writable()
            .is_some_and(|r| r.to_string().contains("Merkle store is damaged")),
        "{:?}",
        db.not_writable()
    );
    // A proof that does not touch the damaged subtree is still fine to serve.
    let p = db.inclusion_proof(aerodb_wal::CommitId(100), size).unwrap();
    assert_eq!(p.tree_size, size);
    report_figure(
        "damaged stored leaf",
        "the proof through it refused, the node fails closed with the reason; proofs that do not use it still served",
    );
}

#[test]
fn a_torn_last_checkpoint_entry_is_reported_and_a_read_only_open_leaves_it() {
    let mem = MemFs::new();
    build(&mem, 120, 3);
    let path = PathBuf::from(DIR).join("checkpoints.log");
    let f = aerodb_wal::fs::Fs::open(&mem, &path, aerodb_wal::fs::OpenMode::ReadWrite).unwrap();
    let len = f.len().unwrap();
    // Half an entry, as a crash during an append leaves it: a length header and part of a note.
    let mut torn = 200u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xAB; 4]);
    torn.extend_from_slice(b"aerodb-ledger\n12");
    f.write_all_at(&torn, len).unwrap();
    f.sync_all().unwrap();
    let read_only = aerodb_engine::Options {
        read_only: true,
        ..engine_opts()
    };
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), read_only).unwrap();
    assert!(
        db.open_report()
            .repairs
            .iter()
            .any(|r| r.contains("torn last entry") && r.contains("left in place")),
        "{:?}",
        db.open_report().repairs
    );
    drop(db);
    assert_eq!(
        f.len().unwrap(),
        len + torn.len() as u64,
        "a read-only open changed the file"
    );
    let db = Db::open_with_fs(Arc::new(mem.clone()), Path::new(DIR), engine_opts()).unwrap();
    assert!(
        db.open_report()
            .repairs
            .iter()
            .any(|r| r.contains("torn last entry") && r.contains("was cut")),
        "{:?}",
        db.open_report().repairs
    );
    drop(db);
    assert_eq!(f.len().unwrap(), len, "cut back to the last whole entry");
    report_figure(
        "torn checkpoint log entry",
        "read-only open: reported, file unchanged; writable open: cut to the last whole entry and reported",
    );
}
