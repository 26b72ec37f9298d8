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
        decode_frame, FrameError, SegmentFooter, SegmentHeader, FOOTER_LEN, FRAME_HEADER_LEN, FRAME_MAGIC,
        SEGMENT_HEADER_LEN,
    },
    types::{CommitId, Epoch, SegmentId},
};

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
    // The usable area never extends past the declared capacity, whatever the file length says.
    let limit = bytes
        .len()
        .min(usize::try_from(header.segment_bytes).unwrap_or(usize::MAX));
    let area = &bytes[..limit];
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = header.first_commit_id;
    let mut epoch = header.epoch;
    let mut count = 0u64;
    let mut sparse = Vec::new();
    let stop = loop {
        match decode_frame(&area[pos..], expect.max_body) {
            Ok((h, _body)) => {
                if h.commit_id != expected {
                    return Err(corrupt(
                        seg,
                        pos as u64,
                        Some(expected),
                        CorruptionKind::CommitIdGap {
                            expected,
                            got: h.commit_id,
                        },
                    ));
                }
                if h.epoch < epoch || (count == 0 && h.epoch != header.epoch) {
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
                // The last segment, which the log goes on appending to, indexes every frame (see `Wal`).
                if expect.is_last || is_sparse_point(h.commit_id, pos as u64) {
                    sparse.push((h.commit_id, pos as u64));
                }
                epoch = h.epoch;
                expected = expected.next();
                count += 1;
                pos += h.frame_len();
            }
            Err(e) => break e,
        }
    };
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
        if (expect.is_last || expect.seal_may_be_unfinished) && after.iter().all(|&b| b == 0) {
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
    let Some(garbage_end) = rest.iter().rposition(|&b| b != 0).map(|i| pos + i + 1) else {
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
