//! T2 (torn last frame) and T3 (bit flips below the tail) at WAL level, on the memory and the real file system,
//! plus frames spliced from elsewhere in the log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, sync::Arc};

use aerodb_tests::{body, report_figure, small_opts, splitmix64, TempDir, MEM_DIR};
use aerodb_wal::{
    format::{decode_frame_header, SEGMENT_HEADER_LEN},
    fs::{Fs, MemFs, RealFs},
    segment_file_name, CommitId, CorruptionKind, Epoch, Error, SegmentId, Wal,
};

/// Builds a log of `n` records; returns the segment files (path, bytes) in order.
fn build(fs: Arc<dyn Fs>, dir: &Path, n: u64) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
    for i in 1..=n {
        wal.append(Epoch(1 + i / 40), &body(i, 11)).unwrap();
    }
    drop(wal);
    let names = segment_names(&*fs, dir);
    names
        .iter()
        .map(|n| (dir.join(n), read(&*fs, &dir.join(n))))
        .collect()
}

/// The segment file names in `dir`, in log order.
fn segment_names(fs: &dyn Fs, dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

fn read(fs: &dyn Fs, p: &Path) -> Vec<u8> {
    let f = fs.open(p, aerodb_wal::fs::OpenMode::Read).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    aerodb_wal::fs::read_exact_at(&*f, &mut b, 0).unwrap();
    b
}

fn write(fs: &dyn Fs, p: &Path, bytes: &[u8]) {
    let f = fs.open(p, aerodb_wal::fs::OpenMode::ReadWrite).unwrap();
    f.set_len(0).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_all().unwrap();
}

/// Frame start offsets in a segment's bytes.
fn frame_offsets(seg: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while let Ok(h) = decode_frame_header(&seg[pos..], 1 << 20) {
        out.push(pos);
        pos += h.frame_len();
    }
    out
}

fn last_commit(fs: &Arc<dyn Fs>, dir: &Path) -> Result<(u64, bool), Error> {
    let wal = Wal::open(fs.clone(), dir, small_opts())?;
    let torn = wal.recovery_report().torn_tail.is_some();
    let n = wal
        .read_from(CommitId(1))?
        .map(|f| f.map(|_| ()))
        .collect::<Result<Vec<_>, _>>()?
        .len() as u64;
    Ok((n, torn))
}

fn torn_tail_suite(fs: Arc<dyn Fs>, dir: &Path) -> (u64, u64) {
    let n = 30;
    let segs = build(fs.clone(), dir, n);
    let (active_path, active) = segs.last().unwrap().clone();
    let offs = frame_offsets(&active);
    let start = *offs.last().unwrap();
    let end = start + 32 + body(n, 11).len();
    let (mut cases, mut failures) = (0u64, 0u64);
    let mut rng = 42u64;
    for cut in start..end {
        for fill in 0..3 {
            let mut damaged = active.clone();
            for b in &mut damaged[cut..end] {
                *b = match fill {
                    0 => 0,
                    1 => 0xFF,
                    _ => splitmix64(&mut rng) as u8,
                };
            }
            write(&*fs, &active_path, &damaged);
            cases += 1;
            let ok = match last_commit(&fs, dir) {
                // The torn frame is gone, everything before it is intact, and the chain continues.
                Ok((got, torn)) if got == n - 1 && (torn || (fill == 0 && cut == start)) => {
                    let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
                    let next = wal.append(Epoch(9), b"continues").unwrap();
                    next == CommitId(n) && wal.verify().is_ok()
                }
                // Random fill can, very rarely, leave the frame intact only if it rewrote the same bytes.
                Ok((got, _)) => got == n && damaged == active,
                Err(_) => false,
            };
            failures += u64::from(!ok);
        }
    }
    write(&*fs, &active_path, &active);
    (cases, failures)
}

#[test]
fn t2_torn_last_frame_is_truncated_at_every_offset() {
    let (c1, f1) = torn_tail_suite(Arc::new(MemFs::new()), Path::new(MEM_DIR));
    let tmp = TempDir::new("torn");
    let (c2, f2) = torn_tail_suite(Arc::new(RealFs), tmp.path());
    report_figure(
        "T2 torn last frame",
        &format!("{} cases, {} failures", c1 + c2, f1 + f2),
    );
    assert_eq!(f1 + f2, 0);
}

fn bit_flip_suite(fs: Arc<dyn Fs>, dir: &Path) -> (u64, u64, u64) {
    let n = 120;
    let segs = build(fs.clone(), dir, n);
    assert!(segs.len() >= 3);
    let (mut cases, mut silent, mut untyped) = (0u64, 0u64, 0u64);
    let mut rng = 7u64;
    for (si, (path, bytes)) in segs.iter().enumerate() {
        let is_active = si + 1 == segs.len();
        let offs = frame_offsets(bytes);
        // Below the tail: every byte of a sealed segment (header, frames, footer); in the active segment every
        // frame but the last (the last one may legitimately be torn).
        let end = if is_active {
            *offs.last().unwrap()
        } else {
            bytes.len()
        };
        for pos in 0..end {
            let mut damaged = bytes.clone();
            damaged[pos] ^= 1 << (splitmix64(&mut rng) % 8);
            write(&*fs, path, &damaged);
            cases += 1;
            match last_commit(&fs, dir) {
                Err(Error::Corruption(c)) => {
                    let expected_seg = SegmentId(si as u64 + 1);
                    if c.segment != expected_seg && !matches!(c.kind, CorruptionKind::CommitIdGap { .. }) {
                        untyped += 1;
                    }
                }
                Err(_) => untyped += 1,
                Ok(_) => silent += 1,
            }
        }
        write(&*fs, path, bytes);
    }
    assert_eq!(last_commit(&fs, dir).unwrap().0, n, "restored log is whole again");
    (cases, silent, untyped)
}

#[test]
fn t3_bit_flips_below_the_tail_are_typed_corruption() {
    let (c1, s1, u1) = bit_flip_suite(Arc::new(MemFs::new()), Path::new(MEM_DIR));
    let tmp = TempDir::new("flip");
    let (c2, s2, u2) = bit_flip_suite(Arc::new(RealFs), tmp.path());
    report_figure(
        "T3 bit flips",
        &format!(
            "{} cases, {} silent outcomes, {} untyped errors",
            c1 + c2,
            s1 + s2,
            u1 + u2
        ),
    );
    assert_eq!((s1 + s2, u1 + u2), (0, 0));
}

#[test]
fn sealed_segment_digest_catches_what_crcs_cannot() {
    // Swap two whole, valid frames of equal CommitId position between two logs: CRCs pass, the chain of
    // CommitIds passes, only the footer's SHA-256 differs.
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    let dir = Path::new(MEM_DIR);
    let segs = build(fs.clone(), dir, 60);
    replace_first_frame_body(&*fs, &segs[0].0);
    // Opening without the digest check accepts the frames (they are well-formed) ...
    let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
    // ... but `verify` and a digest-checking open report the sealed segment as corrupt.
    assert_digest_mismatch(&wal.verify().unwrap_err());
    drop(wal);
    let opts = aerodb_wal::Options {
        verify_digests_on_open: true,
        ..small_opts()
    };
    assert_digest_mismatch(&Wal::open(fs, dir, opts).unwrap_err());
}

/// Re-encodes the first frame of segment file `path` with a different body of the same length, keeping every CRC
/// valid: only a segment digest can tell.
fn replace_first_frame_body(fs: &dyn Fs, path: &Path) {
    let bytes = read(fs, path);
    let offs = frame_offsets(&bytes);
    let h = decode_frame_header(&bytes[offs[0]..], 1 << 20).unwrap();
    let mut frame = Vec::new();
    aerodb_wal::format::encode_frame_into(&mut frame, h.commit_id, h.epoch, &vec![0xAB; h.body_len as usize]);
    let mut damaged = bytes.clone();
    damaged[offs[0]..offs[0] + frame.len()].copy_from_slice(&frame);
    write(fs, path, &damaged);
}

fn assert_digest_mismatch(err: &Error) {
    assert!(
        matches!(
            err.corruption().map(|c| &c.kind),
            Some(CorruptionKind::SegmentDigest)
        ),
        "{err}"
    );
}

#[test]
fn segments_written_without_a_digest_say_so_and_digests_written_are_still_checked() {
    // The engine writes its segments without a digest (its hash chain covers them). A log whose first segments
    // were written so and whose later ones carry digests opens, verifies, and still reports a damaged segment
    // that carries one.
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    let dir = Path::new(MEM_DIR);
    let no_digest = aerodb_wal::Options {
        segment_digest: false,
        ..small_opts()
    };
    let wal = Wal::open(fs.clone(), dir, no_digest.clone()).unwrap();
    for i in 1..=60 {
        wal.append(Epoch(1), &body(i, 11)).unwrap();
    }
    drop(wal);
    let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
    for i in 61..=120 {
        wal.append(Epoch(1), &body(i, 11)).unwrap();
    }
    wal.verify().unwrap();
    drop(wal);
    let names = segment_names(&*fs, dir);
    let footers: Vec<_> = names
        .iter()
        .filter_map(|n| {
            let b = read(&*fs, &dir.join(n));
            aerodb_wal::format::SegmentFooter::decode(&b[b.len() - aerodb_wal::format::FOOTER_LEN..])
        })
        .collect();
    assert!(footers.len() >= 2, "both runs sealed segments: {footers:?}");
    assert!(footers.first().unwrap().sha256.is_none(), "{footers:?}");
    assert!(footers.last().unwrap().sha256.is_some(), "{footers:?}");
    let opts = aerodb_wal::Options {
        verify_digests_on_open: true,
        ..small_opts()
    };
    drop(Wal::open(fs.clone(), dir, opts.clone()).unwrap());
    // Damage a frame of the last sealed segment, which has a digest, keeping its CRCs valid.
    replace_first_frame_body(&*fs, &dir.join(&names[footers.len() - 1]));
    assert_digest_mismatch(&Wal::open(fs, dir, opts).unwrap_err());
}

#[test]
fn spliced_frames_are_rejected() {
    // T4 at WAL level: a valid frame copied from another position or segment breaks CommitId continuity.
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    let dir = Path::new(MEM_DIR);
    let segs = build(fs.clone(), dir, 60);
    let (mut cases, mut accepted) = (0, 0);
    for (target, source) in [(0usize, 1usize), (1, 0), (segs.len() - 1, 0)] {
        let (tpath, tbytes) = &segs[target];
        let (_, sbytes) = &segs[source];
        let to = frame_offsets(tbytes)[0];
        let so = frame_offsets(sbytes)[0];
        let len = decode_frame_header(&sbytes[so..], 1 << 20).unwrap().frame_len();
        let mut damaged = tbytes.clone();
        let take = len.min(damaged.len() - to);
        damaged[to..to + take].copy_from_slice(&sbytes[so..so + take]);
        write(&*fs, tpath, &damaged);
        cases += 1;
        if last_commit(&fs, dir).is_ok() {
            accepted += 1;
        }
        write(&*fs, tpath, tbytes);
    }
    report_figure(
        "T4 spliced frames (WAL level)",
        &format!("{cases} cases, {accepted} accepted"),
    );
    assert_eq!(accepted, 0);
}

#[test]
fn missing_segment_and_durable_mark_are_corruption() {
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    let dir = Path::new(MEM_DIR);
    let segs = build(fs.clone(), dir, 60);
    // Tearing the tail would remove CommitId 60, which a higher layer declared durable.
    let (path, bytes) = segs.last().unwrap();
    let last = *frame_offsets(bytes).last().unwrap();
    let mut torn = bytes.clone();
    torn[last + 40] ^= 0xFF;
    write(&*fs, path, &torn);
    let opts = aerodb_wal::Options {
        durable_mark: CommitId(60),
        ..small_opts()
    };
    let err = Wal::open(fs.clone(), dir, opts).unwrap_err();
    assert!(
        matches!(
            err.corruption().map(|c| &c.kind),
            Some(CorruptionKind::TailBelowDurableMark { .. })
        ),
        "{err}"
    );
    write(&*fs, path, bytes);
    // A segment missing from the middle.
    fs.remove_file(&dir.join(segment_file_name(SegmentId(2))))
        .unwrap();
    let err = Wal::open(fs, dir, small_opts()).unwrap_err();
    assert!(
        matches!(
            err.corruption().map(|c| &c.kind),
            Some(CorruptionKind::SegmentMissing { .. })
        ),
        "{err}"
    );
}

/// The kind of corruption opening `dir` reports, or a description of what else happened.
fn open_outcome(fs: &Arc<dyn Fs>, dir: &Path) -> Result<CorruptionKind, String> {
    match Wal::open(fs.clone(), dir, small_opts()) {
        Err(e) => e
            .corruption()
            .map(|c| c.kind.clone())
            .ok_or(format!("untyped error: {e}")),
        Ok(w) => Err(format!(
            "opened silently with {} records (report {:?})",
            w.durable_commit_id(),
            w.recovery_report()
        )),
    }
}

/// Damage no crash can cause, on the active end of a log: recovery refuses it with a typed error instead of
/// cutting acknowledged records (issue 17: shortened or deleted active segments lost 1–297 acknowledged records
/// with at most one WARN line, and their CommitIds were handed out again).
fn damaged_directory_suite(fs: Arc<dyn Fs>, dir: &Path) -> (u64, Vec<String>) {
    let segs = build(fs.clone(), dir, 120);
    assert!(segs.len() >= 5, "several segments");
    let (active_path, active) = segs.last().unwrap().clone();
    let offs = frame_offsets(&active);
    let mut problems = Vec::new();
    let mut cases = 0u64;
    let mut expect = |what: &str, got: Result<CorruptionKind, String>, ok: fn(&CorruptionKind) -> bool| {
        cases += 1;
        match got {
            Ok(k) if ok(&k) => {}
            other => problems.push(format!("{what}: {other:?}")),
        }
    };
    let shortened = |k: &CorruptionKind| matches!(k, CorruptionKind::SegmentShortened { .. });
    let missing = |k: &CorruptionKind| matches!(k, CorruptionKind::ActiveSegmentMissing { .. });
    // The active segment cut inside each of its last frames, in the middle, and right after its last frame.
    let last = *offs.last().unwrap();
    let mut cuts: Vec<usize> = offs.iter().rev().take(3).map(|&o| o + 5).collect();
    cuts.push(offs[offs.len() / 2]);
    cuts.push(last + 1);
    let data_end = last + 32 + body(120, 11).len();
    cuts.push(data_end);
    for cut in cuts {
        write(&*fs, &active_path, &active[..cut]);
        expect(
            &format!("active segment cut at {cut}"),
            open_outcome(&fs, dir),
            shortened,
        );
    }
    write(&*fs, &active_path, &active);
    // The active segment deleted; then also the two sealed segments before it.
    for k in 1..=3 {
        for (p, _) in segs.iter().rev().take(k) {
            let _ = fs.remove_file(p);
        }
        expect(
            &format!("last {k} segment(s) deleted"),
            open_outcome(&fs, dir),
            missing,
        );
        for (p, b) in segs.iter().rev().take(k) {
            let f = fs.open(p, aerodb_wal::fs::OpenMode::CreateNew).unwrap();
            f.write_all_at(b, 0).unwrap();
            f.sync_all().unwrap();
        }
        fs.sync_dir(dir).unwrap();
    }
    assert_eq!(
        last_commit(&fs, dir).unwrap().0,
        120,
        "restored log is whole again"
    );
    (cases, problems)
}

#[test]
fn shortened_or_deleted_active_segments_are_refused_not_cut() {
    let (c1, mut problems) = damaged_directory_suite(Arc::new(MemFs::new()), Path::new(MEM_DIR));
    let tmp = TempDir::new("damaged-dir");
    let (c2, p2) = damaged_directory_suite(Arc::new(RealFs), tmp.path());
    problems.extend(p2);
    report_figure(
        "damaged active end (cut inside the last frames, in the middle, after them; 1-3 last segments deleted)",
        &format!("{} cases on two file systems, {} opened silently or untyped", c1 + c2, problems.len()),
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn an_interrupted_roll_is_undone_or_finished() {
    // The two crash states a roll can leave: the footer written but no successor live (undone: the segment stays
    // active and the log continues), and the successor live but the old segment not yet cut (finished).
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    let dir = Path::new(MEM_DIR);
    let segs = build(fs.clone(), dir, 120);
    let n = segs.len();
    let (sealed_path, sealed) = segs[n - 2].clone();
    let capacity = small_opts().segment_bytes as usize;
    let mut uncut = sealed.clone();
    uncut.resize(capacity, 0);
    // 1. Successor live, old segment not cut: the cut is finished and nothing is lost.
    write(&*fs, &sealed_path, &uncut);
    let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
    assert_eq!(
        wal.recovery_report().completed_seal,
        Some(SegmentId(n as u64 - 1))
    );
    assert_eq!(wal.durable_commit_id(), CommitId(120));
    drop(wal);
    assert_eq!(read(&*fs, &sealed_path), sealed, "cut after its footer again");
    // 2. No successor, old segment not cut: the roll is undone, the records stay, and appends continue.
    let (last_path, _) = segs[n - 1].clone();
    fs.remove_file(&last_path).unwrap();
    write(&*fs, &sealed_path, &uncut);
    let first_of_last = {
        let f = frame_offsets(&segs[n - 1].1)[0];
        decode_frame_header(&segs[n - 1].1[f..], 1 << 20)
            .unwrap()
            .commit_id
    };
    let wal = Wal::open(fs.clone(), dir, small_opts()).unwrap();
    assert_eq!(wal.recovery_report().undone_roll, Some(SegmentId(n as u64 - 1)));
    assert_eq!(wal.durable_commit_id(), CommitId(first_of_last.0 - 1));
    let next = wal.append(Epoch(9), &body(999, 11)).unwrap();
    assert_eq!(
        next, first_of_last,
        "the next CommitId follows the records present"
    );
    wal.verify().unwrap();
    report_figure(
        "interrupted roll",
        "successor live + old segment uncut: cut finished, 0 lost; no successor: footer undone, appends continue",
    );
}
