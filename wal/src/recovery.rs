//! Scanning a segment's bytes and deciding what they mean. Pure functions over byte slices, shared by
//! `Wal::open`, `Wal::verify` and the fuzz targets.
//!
//! The decision table (also in `docs/formats.md`):
//!
//! | where the frame scan stops at offset X                          | sealed segment | last (active) segment |
//! |-----------------------------------------------------------------|----------------|-----------------------|
//! | a valid footer that matches the frames, file ends after it      | sealed, ok     | sealed, ok            |
//! | a valid footer that matches, zero fill after it                 | corruption     | seal interrupted: finish it |
//! | zero fill to the end of the file                                | corruption (no footer) | clean end     |
//! | invalid bytes, nothing after X parses as a frame                | corruption     | torn tail: zero it, report |
//! | invalid bytes, a valid frame somewhere after X                  | corruption     | corruption            |
//! | a valid frame with the wrong CommitId or a lower epoch          | corruption     | corruption            |
//! | torn tail that would remove CommitIds ≤ the durable mark        | —              | corruption            |

use sha2::{Digest, Sha256};

use crate::{
    error::{Corruption, CorruptionKind},
    format::{
        decode_frame, FrameError, FrameHeader, SegmentFooter, SegmentHeader, FOOTER_LEN, FRAME_HEADER_LEN,
        FRAME_MAGIC, SEGMENT_HEADER_LEN,
    },
    types::{CommitId, Epoch, SegmentId},
};

/// Sees every frame that recovery keeps, in the pass that checks its CRCs, while its bytes are in cache: the
/// layer above checks what the frames hold (the engine hashes and links its records) without reading the log a
/// second time. Segments are scanned concurrently, each with its own [`RecoveryVisitor::Segment`]; within a
/// segment, frames come in order.
///
/// A visit may have seen frames of a log that recovery then refuses: its result means something only when
/// [`crate::Wal::open_visiting`] succeeds.
pub trait RecoveryVisitor: Sync {
    /// What the visitor keeps of one segment.
    type Segment: Send;
    /// A fresh state for one segment.
    fn segment(&self) -> Self::Segment;
    /// One frame, both CRCs checked, its CommitId next in its segment and its epoch not below the one before.
    fn frame(&self, segment: &mut Self::Segment, commit_id: CommitId, epoch: Epoch, body: &[u8]);
}

/// Visits nothing.
impl RecoveryVisitor for () {
    type Segment = ();
    fn segment(&self) {}
    fn frame(&self, (): &mut (), _: CommitId, _: Epoch, _: &[u8]) {}
}

/// How a segment's frame area ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// A valid, matching footer; `trailing_zeros` is true when the file continues past it (an interrupted seal).
    Sealed {
        /// The footer.
        footer: SegmentFooter,
        /// The file holds zero fill after the footer.
        trailing_zeros: bool,
    },
    /// Zero fill from the end of the last frame to the end of the file.
    Clean,
    /// Garbage after the last valid frame that is not followed by any valid frame.
    Torn {
        /// Offset of the first garbage byte (the end of the valid log).
        offset: u64,
        /// One past the last non-zero byte.
        garbage_end: u64,
    },
}

/// What a segment holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// The decoded header.
    pub header: SegmentHeader,
    /// Number of valid frames.
    pub frame_count: u64,
    /// CommitId of the last valid frame, or `first_commit_id - 1` when there are none.
    pub last_commit_id: CommitId,
    /// Epoch of the last frame (the header's epoch when there are none).
    pub last_epoch: Epoch,
    /// Offset just past the last valid frame.
    pub data_end: u64,
    /// How the frame area ends.
    pub end: SegmentEnd,
    /// Sparse index: `(CommitId, offset)` of the first frame and of every frame whose CommitId is a multiple of
    /// [`SPARSE_EVERY`]; of every frame when the segment was scanned as the last one.
    pub sparse: Vec<(CommitId, u64)>,
}

/// Distance in CommitIds between sparse index points.
pub const SPARSE_EVERY: u64 = 32;

/// Whether the frame `commit_id` at `offset` is a sparse index point.
#[must_use]
pub fn is_sparse_point(commit_id: CommitId, offset: u64) -> bool {
    commit_id.0.is_multiple_of(SPARSE_EVERY) || offset == SEGMENT_HEADER_LEN as u64
}

/// What the scan expects from the segment before it.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The segment id from the file name.
    pub segment_id: SegmentId,
    /// The CommitId the first frame must carry, if a previous segment fixes it.
    pub first_commit_id: Option<CommitId>,
    /// The epoch of the previous frame; frames may not go below it.
    pub min_epoch: Epoch,
    /// Whether this is the last segment (the only one allowed a torn tail or a clean unsealed end).
    pub is_last: bool,
    /// Whether this is the segment before the last one, whose seal may be unfinished when a crash interrupted a
    /// roll after the last segment was created: its footer is durable, the cut after it may not be (zero fill
    /// after the footer); recovery finishes the cut.
    pub seal_may_be_unfinished: bool,
    /// Whether `bytes` is the whole file, so that its length can be judged (a verifier reading only the frames
    /// of the active segment passes `false`).
    pub whole_file: bool,
    /// The largest frame body the log accepts.
    pub max_body: usize,
    /// CommitIds up to this one are known durable; a torn tail may not remove them.
    pub durable_mark: CommitId,
}

fn corrupt(segment: SegmentId, offset: u64, commit_id: Option<CommitId>, kind: CorruptionKind) -> Corruption {
    Corruption::new(segment, offset, commit_id, kind)
}

/// Scans one segment's bytes. Never panics on any input.
pub fn scan_segment(bytes: &[u8], expect: &Expect) -> Result<SegmentScan, Corruption> {
    scan_segment_with(bytes, expect, |_, _| {})
}

/// [`scan_segment`], handing each frame it accepts (both CRCs checked, CommitId and epoch in order) to
/// `on_frame` with its body, in order, while the bytes are in cache. A frame handed over is one the scan keeps:
/// whatever it decides about the end of the segment, it never cuts a frame it accepted (it fails instead).
pub fn scan_segment_with(
    bytes: &[u8],
    expect: &Expect,
    on_frame: impl FnMut(&FrameHeader, &[u8]),
) -> Result<SegmentScan, Corruption> {
    let header = check_header(bytes, expect)?;
    let run = scan_run(bytes, &header, expect, SEGMENT_HEADER_LEN, None, on_frame)?;
    finish_segment(bytes, expect, header, run, None)
}

/// The segment header, checked against what the name and the segment before say.
pub fn check_header(bytes: &[u8], expect: &Expect) -> Result<SegmentHeader, Corruption> {
    let seg = expect.segment_id;
    let header = SegmentHeader::decode(bytes)
        .map_err(|e| corrupt(seg, 0, None, CorruptionKind::SegmentHeader(e.describe())))?;
    if header.segment_id != seg {
        return Err(corrupt(
            seg,
            0,
            None,
            CorruptionKind::SegmentIdMismatch {
                in_header: header.segment_id,
                in_name: seg,
            },
        ));
    }
    check_follows(&header, expect)?;
    Ok(header)
}

/// Whether a segment's header follows the segment before it: its first CommitId the one expected, its epoch not
/// below the floor.
pub fn check_follows(header: &SegmentHeader, expect: &Expect) -> Result<(), Corruption> {
    let seg = expect.segment_id;
    if let Some(first) = expect.first_commit_id {
        if header.first_commit_id != first {
            return Err(corrupt(
                seg,
                0,
                Some(first),
                CorruptionKind::CommitIdGap {
                    expected: first,
                    got: header.first_commit_id,
                },
            ));
        }
    }
    if header.epoch < expect.min_epoch {
        return Err(corrupt(
            seg,
            0,
            Some(header.first_commit_id),
            CorruptionKind::EpochRegression {
                prev: expect.min_epoch,
                got: header.epoch,
            },
        ));
    }
    Ok(())
}

/// The part of a segment's bytes that frames may use: never past the capacity its header declares, whatever the
/// file length says.
fn frame_area<'a>(bytes: &'a [u8], header: &SegmentHeader) -> &'a [u8] {
    &bytes[..bytes
        .len()
        .min(usize::try_from(header.segment_bytes).unwrap_or(usize::MAX))]
}

/// Frames scanned from one offset of a segment: the whole frame area, or one piece of it (see [`plan_pieces`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRun {
    /// Offset of the run's first frame.
    pub start: usize,
    /// Offset just past its last frame.
    pub end: usize,
    /// CommitId and epoch of its first frame, if it has one.
    pub first: Option<(CommitId, Epoch)>,
    /// The CommitId after its last frame (the first one's when it has none).
    pub next_commit_id: CommitId,
    /// Epoch of its last frame (the floor it started with when it has none).
    pub last_epoch: Epoch,
    /// Number of frames.
    pub count: u64,
    /// Sparse index points within the run (every frame's for the last segment).
    pub sparse: Vec<(CommitId, u64)>,
    /// Why it stopped: `None` when it reached the offset it was told to stop at, exactly.
    pub stop: Option<FrameError>,
}

/// Scans frames from `start` (a frame boundary) until one does not decode, or until `stop_at` is reached. The
/// run at the start of the frame area (`start` = [`SEGMENT_HEADER_LEN`]) must begin with the header's first
/// CommitId and epoch; a later piece begins with whatever CommitId its first frame carries, and
/// [`join_runs`] checks that it continues the piece before it.
pub fn scan_run(
    bytes: &[u8],
    header: &SegmentHeader,
    expect: &Expect,
    start: usize,
    stop_at: Option<usize>,
    mut on_frame: impl FnMut(&FrameHeader, &[u8]),
) -> Result<FrameRun, Corruption> {
    let seg = expect.segment_id;
    let area = frame_area(bytes, header);
    let at_start = start == SEGMENT_HEADER_LEN;
    let mut pos = start.min(area.len());
    let mut expected = at_start.then_some(header.first_commit_id);
    let mut epoch = if at_start { header.epoch } else { Epoch(0) };
    let mut count = 0u64;
    let mut first = None;
    let mut sparse = Vec::new();
    let stop = loop {
        if stop_at.is_some_and(|s| pos >= s) {
            break (Some(pos) != stop_at).then_some(FrameError::Zero);
        }
        match decode_frame(&area[pos..], expect.max_body) {
            Ok((h, body)) => {
                let want = expected.unwrap_or(h.commit_id);
                if h.commit_id != want {
                    return Err(corrupt(
                        seg,
                        pos as u64,
                        Some(want),
                        CorruptionKind::CommitIdGap {
                            expected: want,
                            got: h.commit_id,
                        },
                    ));
                }
                if h.epoch < epoch || (count == 0 && at_start && h.epoch != header.epoch) {
                    return Err(corrupt(
                        seg,
                        pos as u64,
                        Some(h.commit_id),
                        CorruptionKind::EpochRegression {
                            prev: epoch,
                            got: h.epoch,
                        },
                    ));
                }
                on_frame(&h, body);
                // The last segment, which the log goes on appending to, indexes every frame (see `Wal`).
                if expect.is_last || is_sparse_point(h.commit_id, pos as u64) {
                    sparse.push((h.commit_id, pos as u64));
                }
                first.get_or_insert((h.commit_id, h.epoch));
                epoch = h.epoch;
                expected = Some(h.commit_id.next());
                count += 1;
                pos += h.frame_len();
            }
            Err(e) => break Some(e),
        }
    };
    Ok(FrameRun {
        start,
        end: pos,
        first,
        next_commit_id: expected.unwrap_or(CommitId(1)),
        last_epoch: epoch,
        count,
        sparse,
        stop,
    })
}

/// How far [`plan_pieces`] looks for a frame from each point.
const PLAN_WINDOW: usize = 64 << 10;

/// Where a segment's frame area can be cut into about `pieces` runs to scan concurrently: the offsets after
/// the first run's start where a frame that decodes begins, searched from evenly spaced points. A body may
/// hold bytes that look like a frame, so a cut point is only a guess; [`join_runs`] accepts the pieces only if
/// each one ended exactly where the next began (then the cut was a real frame boundary, found from the start
/// of the area), and the caller scans the whole segment in one run otherwise.
#[must_use]
pub fn plan_pieces(bytes: &[u8], expect: &Expect, pieces: usize) -> Vec<usize> {
    let area = bytes.len().saturating_sub(SEGMENT_HEADER_LEN);
    let step = area / pieces.max(1);
    let mut cuts: Vec<usize> = Vec::new();
    if step < FRAME_HEADER_LEN {
        return cuts;
    }
    for i in 1..pieces {
        let from = SEGMENT_HEADER_LEN + i * step;
        let floor = cuts.last().copied().unwrap_or(SEGMENT_HEADER_LEN);
        if from <= floor {
            continue;
        }
        // Look a bounded distance only (a cut not found just leaves the piece before it longer): the active
        // segment's area is mostly zero fill, which the planning must not read through.
        let window = &bytes[from..(from + step.min(PLAN_WINDOW)).min(bytes.len())];
        if let Some(at) = find_valid_frame(window, expect.max_body) {
            cuts.push(from + at);
        }
    }
    cuts
}

/// Joins the runs of one segment scanned from the cuts of [`plan_pieces`]: `None` unless each run but the last
/// stopped exactly where the next starts and continues its CommitIds and epochs (then the result is what one
/// run over the whole area would have found).
#[must_use]
pub fn join_runs(runs: Vec<FrameRun>) -> Option<FrameRun> {
    let mut runs = runs.into_iter();
    let mut whole = runs.next()?;
    for r in runs {
        let (first, first_epoch) = r.first?;
        if whole.stop.is_some()
            || whole.end != r.start
            || first != whole.next_commit_id
            || first_epoch < whole.last_epoch
        {
            return None;
        }
        whole.end = r.end;
        whole.next_commit_id = r.next_commit_id;
        whole.last_epoch = r.last_epoch;
        whole.count += r.count;
        whole.sparse.extend(r.sparse);
        whole.stop = r.stop;
    }
    Some(whole)
}

/// Decides what the end of a segment's frame area means (the table at the top of this module), given the run
/// over its whole frame area. `last_nonzero_byte` is the offset of the last non-zero byte of `bytes` when it
/// was found beforehand ([`last_nonzero`], concurrently with the frames); `None` has it found here when needed.
pub fn finish_segment(
    bytes: &[u8],
    expect: &Expect,
    header: SegmentHeader,
    run: FrameRun,
    last_nonzero_byte: Option<Option<usize>>,
) -> Result<SegmentScan, Corruption> {
    let seg = expect.segment_id;
    let area = frame_area(bytes, &header);
    let FrameRun {
        end: pos,
        next_commit_id: expected,
        last_epoch: epoch,
        count,
        sparse,
        stop,
        ..
    } = run;
    let stop = stop.unwrap_or(FrameError::Zero);
    let last_commit_id = CommitId(expected.0 - 1);
    let scan = |end| SegmentScan {
        header,
        frame_count: count,
        last_commit_id,
        last_epoch: epoch,
        data_end: pos as u64,
        end,
        sparse: sparse.clone(),
    };
    // A footer that matches the frames before it ends the segment.
    if let Some(footer) = SegmentFooter::decode(&bytes[pos.min(bytes.len())..]) {
        let matches = footer.data_end == pos as u64
            && footer.frame_count == count
            && footer.last_commit_id == last_commit_id
            && footer.last_epoch == epoch
            && count > 0;
        if !matches {
            return Err(corrupt(
                seg,
                pos as u64,
                Some(last_commit_id),
                CorruptionKind::Footer("fields disagree with frames"),
            ));
        }
        let after = &bytes[pos + FOOTER_LEN..];
        if after.is_empty() {
            return Ok(scan(SegmentEnd::Sealed {
                footer,
                trailing_zeros: false,
            }));
        }
        let after_zero = match last_nonzero_byte {
            Some(t) => t.is_none_or(|t| t < pos + FOOTER_LEN),
            None => last_nonzero(after).is_none(),
        };
        if (expect.is_last || expect.seal_may_be_unfinished) && after_zero {
            return Ok(scan(SegmentEnd::Sealed {
                footer,
                trailing_zeros: true,
            }));
        }
        return Err(corrupt(
            seg,
            (pos + FOOTER_LEN) as u64,
            Some(last_commit_id),
            CorruptionKind::TrailingBytes,
        ));
    }
    let at = pos as u64;
    let rest = &area[pos..];
    if expect.whole_file && expect.is_last && (bytes.len() as u64) < header.segment_bytes {
        // Unsealed and shorter than its preallocated capacity: no crash does that (a segment is cut only after
        // its footer is durable).
        return Err(corrupt(
            seg,
            bytes.len() as u64,
            Some(expected),
            CorruptionKind::SegmentShortened {
                len: bytes.len() as u64,
                capacity: header.segment_bytes,
            },
        ));
    }
    if !expect.is_last {
        let kind = frame_error_kind(stop, rest.len());
        return Err(corrupt(
            seg,
            at,
            Some(expected),
            kind.unwrap_or(CorruptionKind::MissingFooter),
        ));
    }
    // The last segment: anything after the last valid frame must be zero fill or a torn tail.
    let garbage_end = match last_nonzero_byte {
        Some(t) if area.len() == bytes.len() => t.filter(|&t| t >= pos).map(|t| t + 1),
        _ => last_nonzero(rest).map(|i| pos + i + 1),
    };
    let Some(garbage_end) = garbage_end else {
        return Ok(scan(SegmentEnd::Clean));
    };
    if let Some(later) = find_valid_frame(&area[pos + 1..], expect.max_body) {
        return Err(corrupt(
            seg,
            at,
            Some(expected),
            CorruptionKind::ValidFrameAfterBadFrame {
                later_offset: (pos + 1 + later) as u64,
            },
        ));
    }
    if last_commit_id < expect.durable_mark {
        return Err(corrupt(
            seg,
            at,
            Some(expected),
            CorruptionKind::TailBelowDurableMark {
                durable: expect.durable_mark,
            },
        ));
    }
    Ok(scan(SegmentEnd::Torn {
        offset: at,
        garbage_end: garbage_end as u64,
    }))
}

/// The offset of the last non-zero byte of `b`. The active segment is mostly preallocated zeros, all of which
/// an open must look at: this compares eight bytes at a time, a page at a time from the end, and searches
/// byte by byte only inside the page that holds the answer.
#[must_use]
pub fn last_nonzero(b: &[u8]) -> Option<usize> {
    const PAGE: usize = 4096;
    let mut end = b.len();
    while end > 0 {
        let start = end.saturating_sub(PAGE);
        let page = &b[start..end];
        let (words, rest) = page.as_chunks::<8>();
        let tail_zero = rest.iter().all(|&x| x == 0);
        let words_zero = words.iter().fold(0u64, |acc, w| acc | u64::from_ne_bytes(*w)) == 0;
        if !(tail_zero && words_zero) {
            return page.iter().rposition(|&x| x != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

/// The corruption kind for a frame-decoding failure in a place where frames must be valid.
fn frame_error_kind(e: FrameError, available: usize) -> Option<CorruptionKind> {
    Some(match e {
        FrameError::Zero => return None,
        FrameError::Truncated { needed } => CorruptionKind::FrameOverrun {
            len: needed as u64,
            end: available as u64,
        },
        FrameError::BadMagic(found) => CorruptionKind::BadMagic { found },
        FrameError::HeaderChecksum { expected, got } => CorruptionKind::HeaderChecksum { expected, got },
        FrameError::TooLong { len, max } => CorruptionKind::LengthOutOfBounds {
            len: len.into(),
            max: max as u64,
        },
        FrameError::ZeroCommitId => CorruptionKind::CommitIdGap {
            expected: CommitId(1),
            got: CommitId(0),
        },
        FrameError::BodyChecksum { expected, got } => CorruptionKind::BodyChecksum { expected, got },
    })
}

/// Converts a frame-decoding failure into a corruption report at a known position.
pub(crate) fn frame_corruption(
    segment: SegmentId,
    offset: u64,
    commit_id: CommitId,
    e: FrameError,
    available: usize,
) -> Corruption {
    let kind = frame_error_kind(e, available).unwrap_or(CorruptionKind::FrameOverrun {
        len: FRAME_HEADER_LEN as u64,
        end: available as u64,
    });
    corrupt(segment, offset, Some(commit_id), kind)
}

/// The offset of the first position in `b` where a whole valid frame starts, if any.
fn find_valid_frame(b: &[u8], max_body: usize) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut i = 0;
    while i + FRAME_HEADER_LEN <= b.len() {
        // Skip quickly to the next byte that could start the magic.
        match b[i..].iter().position(|&x| x == magic[0]) {
            Some(p) => i += p,
            None => return None,
        }
        if i + FRAME_HEADER_LEN <= b.len() && b[i..i + 4] == magic && decode_frame(&b[i..], max_body).is_ok()
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// SHA-256 of the segment's bytes `[0, data_end)`, compared with the footer.
pub fn check_digest(bytes: &[u8], scan: &SegmentScan) -> Result<(), Corruption> {
    if let SegmentEnd::Sealed { footer, .. } = &scan.end {
        let end = usize::try_from(footer.data_end)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let Some(want) = footer.sha256 else {
            // Written without a segment digest: the layer above chains the records (see `Options`).
            return Ok(());
        };
        let got: [u8; 32] = Sha256::digest(&bytes[..end]).into();
        if got != want {
            return Err(corrupt(
                scan.header.segment_id,
                footer.data_end,
                Some(footer.last_commit_id),
                CorruptionKind::SegmentDigest,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "test code: a panic is the failure report"
    )]

    use super::*;
    use crate::format::encode_frame_into;

    const CAPACITY: usize = 64 << 10;

    /// A segment of `bodies` (one frame each, CommitIds from 1), sealed with its footer or left active with
    /// zero fill to its capacity.
    fn segment(bodies: &[Vec<u8>], sealed: bool) -> Vec<u8> {
        let header = SegmentHeader {
            segment_id: SegmentId(1),
            first_commit_id: CommitId(1),
            epoch: Epoch(1),
            segment_bytes: CAPACITY as u64,
        };
        let mut b = header.encode().to_vec();
        for (i, body) in bodies.iter().enumerate() {
            encode_frame_into(&mut b, CommitId(i as u64 + 1), Epoch(1), body);
        }
        if sealed {
            let footer = SegmentFooter {
                last_commit_id: CommitId(bodies.len() as u64),
                frame_count: bodies.len() as u64,
                data_end: b.len() as u64,
                last_epoch: Epoch(1),
                sha256: None,
                rolled: false,
            };
            b.extend_from_slice(&footer.encode());
        } else {
            b.resize(CAPACITY, 0);
        }
        b
    }

    fn expect(is_last: bool) -> Expect {
        Expect {
            segment_id: SegmentId(1),
            first_commit_id: None,
            min_epoch: Epoch(0),
            is_last,
            seal_may_be_unfinished: false,
            whole_file: true,
            max_body: 4096,
            durable_mark: CommitId(0),
        }
    }

    /// Scans in `pieces` pieces as recovery does; `None` when the pieces did not join (recovery then scans
    /// the whole segment).
    fn scan_in_pieces(bytes: &[u8], exp: &Expect, pieces: usize) -> Option<(SegmentScan, Vec<u64>)> {
        let header = check_header(bytes, exp).unwrap();
        let cuts = plan_pieces(bytes, exp, pieces);
        let starts = std::iter::once(SEGMENT_HEADER_LEN).chain(cuts.iter().copied());
        let stops = cuts.iter().copied().map(Some).chain(std::iter::once(None));
        let mut seen = Vec::new();
        let runs = starts
            .zip(stops)
            .map(|(start, stop)| {
                scan_run(bytes, &header, exp, start, stop, |h, _| seen.push(h.commit_id.0)).ok()
            })
            .collect::<Option<Vec<_>>>()?;
        let whole = join_runs(runs)?;
        let nonzero = exp.is_last.then(|| last_nonzero(bytes));
        Some((finish_segment(bytes, exp, header, whole, nonzero).unwrap(), seen))
    }

    fn bodies(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| (0..len + i % 7).map(|j| (i * 31 + j * 7) as u8 | 1).collect())
            .collect()
    }

    #[test]
    fn pieces_find_what_one_whole_scan_finds() {
        for sealed in [true, false] {
            let bytes = segment(&bodies(150, 300), sealed);
            let exp = expect(!sealed);
            let whole = scan_segment(&bytes, &exp).unwrap();
            for pieces in 1..=40 {
                let (scan, seen) = scan_in_pieces(&bytes, &exp, pieces).expect("real frame boundaries join");
                assert_eq!(scan, whole, "{pieces} pieces, sealed {sealed}");
                assert_eq!(seen, (1..=150).collect::<Vec<_>>(), "every frame once, in order");
            }
        }
    }

    #[test]
    fn a_frame_inside_a_body_is_not_taken_for_a_boundary() {
        // Every body carries a whole valid frame (of a foreign log) after a few bytes: a cut planned from a
        // point inside a body finds that one first, and the piece before it cannot end there.
        let mut inner = Vec::new();
        encode_frame_into(&mut inner, CommitId(900), Epoch(1), &[0x55; 40]);
        let bodies: Vec<Vec<u8>> = (0..150u8)
            .map(|i| {
                let mut b = vec![i | 1; 3];
                b.extend_from_slice(&inner);
                b.extend(std::iter::repeat_n(i | 1, 200));
                b
            })
            .collect();
        for sealed in [true, false] {
            let bytes = segment(&bodies, sealed);
            let exp = expect(!sealed);
            let whole = scan_segment(&bytes, &exp).unwrap();
            let mut refused = 0;
            for pieces in 2..=40 {
                match scan_in_pieces(&bytes, &exp, pieces) {
                    Some((scan, _)) => assert_eq!(scan, whole, "{pieces} pieces"),
                    None => refused += 1,
                }
            }
            assert!(
                refused > 0,
                "some cut landed on a frame inside a body and was refused"
            );
        }
    }

    #[test]
    fn damage_inside_a_piece_sends_the_segment_to_a_whole_scan() {
        let mut bytes = segment(&bodies(150, 300), true);
        let exp = expect(false);
        bytes[CAPACITY / 8] ^= 0x40;
        assert!(scan_segment(&bytes, &exp).is_err(), "one whole scan refuses it");
        assert!(
            scan_in_pieces(&bytes, &exp, 8).is_none(),
            "a damaged piece does not join"
        );
    }

    #[test]
    fn last_nonzero_finds_the_last_set_byte_at_any_position() {
        for len in [0usize, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5] {
            let zeros = vec![0u8; len];
            assert_eq!(last_nonzero(&zeros), None, "len {len}");
            for at in [0, len / 3, len.saturating_sub(1)] {
                if at >= len {
                    continue;
                }
                let mut b = zeros.clone();
                b[at] = 0x80;
                if at > 0 {
                    b[0] = 1;
                }
                assert_eq!(last_nonzero(&b), Some(at), "len {len} at {at}");
            }
        }
    }
}
