//! The byte layout of segment headers, frames and sealed footers. `docs/formats.md` is the specification; every
//! field here has a named offset constant that matches a row of the tables there. All integers are little-endian.

use sha2::{Digest, Sha256};

use crate::types::{CommitId, Epoch, SegmentId};

// ---------------------------------------------------------------------------------------------------------------
// Segment header: the first 64 bytes of every segment file.
// { magic[8] | version u32 | header_len u32 | segment_id u64 | first_commit_id u64 | epoch u64 |
//   segment_bytes u64 | reserved[12] | crc32 u32 }

/// Magic bytes that start every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"AERODBWS";
/// The segment format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
const SH_MAGIC: usize = 0;
const SH_VERSION: usize = 8;
const SH_HEADER_LEN: usize = 12;
const SH_SEGMENT_ID: usize = 16;
const SH_FIRST_COMMIT: usize = 24;
const SH_EPOCH: usize = 32;
const SH_SEGMENT_BYTES: usize = 40;
const SH_RESERVED: usize = 48;
const SH_CRC: usize = 60;

// ---------------------------------------------------------------------------------------------------------------
// Frame header: 32 bytes before every record body.
// { magic u32 | body_len u32 | commit_id u64 | epoch u64 | body_crc32 u32 | header_crc32 u32 }

/// Magic that starts every frame. Never zero, so the zero fill of a preallocated segment is never a frame.
pub const FRAME_MAGIC: u32 = 0xA1F1_DBAE;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 32;
const FH_MAGIC: usize = 0;
const FH_BODY_LEN: usize = 4;
const FH_COMMIT_ID: usize = 8;
const FH_EPOCH: usize = 16;
const FH_BODY_CRC: usize = 24;
const FH_HEADER_CRC: usize = 28;

/// The hard upper bound on a frame body, whatever the options say. Checked before any allocation.
pub const MAX_FRAME_BODY_BYTES: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------------------------
// Sealed footer: written right after the last frame when a segment is sealed; the file then ends.
// { magic[8] | last_commit_id u64 | frame_count u64 | data_end u64 | last_epoch u64 | sha256[32] |
//   reserved u32 | crc32 u32 }

/// Magic bytes that start a sealed footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"AERODBSF";
/// Length of the sealed footer.
pub const FOOTER_LEN: usize = 80;
const SF_MAGIC: usize = 0;
const SF_LAST_COMMIT: usize = 8;
const SF_FRAME_COUNT: usize = 16;
const SF_DATA_END: usize = 24;
const SF_LAST_EPOCH: usize = 32;
const SF_SHA256: usize = 40;
const SF_FLAGS: usize = 72;
const SF_CRC: usize = 76;

const _: () = assert!(SH_CRC + 4 == SEGMENT_HEADER_LEN);
const _: () = assert!(FH_HEADER_CRC + 4 == FRAME_HEADER_LEN);
const _: () = assert!(SF_CRC + 4 == FOOTER_LEN);
const _: () = assert!(SF_SHA256 + 32 == SF_FLAGS);
const _: () = assert!(MAX_FRAME_BODY_BYTES <= u32::MAX as usize);

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// This segment's id (also in its file name).
    pub segment_id: SegmentId,
    /// The CommitId of the first frame this segment holds (or will hold, while empty).
    pub first_commit_id: CommitId,
    /// The epoch of the first frame.
    pub epoch: Epoch,
    /// The segment's capacity in bytes, header and footer included.
    pub segment_bytes: u64,
}

/// Why a segment header is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Truncated,
    /// Wrong magic.
    BadMagic,
    /// Version this code cannot read.
    UnsupportedVersion(u32),
    /// CRC mismatch.
    Checksum,
    /// A field is out of range.
    Invalid(&'static str),
}

impl HeaderError {
    /// A static description for corruption reports.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            HeaderError::Truncated => "truncated header",
            HeaderError::BadMagic => "bad magic",
            HeaderError::UnsupportedVersion(_) => "unsupported format version",
            HeaderError::Checksum => "header checksum mismatch",
            HeaderError::Invalid(what) => what,
        }
    }
}

impl SegmentHeader {
    /// Encodes the header into its fixed 64 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[SH_MAGIC..SH_MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
        put_u32(&mut b, SH_VERSION, FORMAT_VERSION);
        put_u32(&mut b, SH_HEADER_LEN, SEGMENT_HEADER_LEN as u32);
        put_u64(&mut b, SH_SEGMENT_ID, self.segment_id.0);
        put_u64(&mut b, SH_FIRST_COMMIT, self.first_commit_id.0);
        put_u64(&mut b, SH_EPOCH, self.epoch.0);
        put_u64(&mut b, SH_SEGMENT_BYTES, self.segment_bytes);
        let crc = crc32fast::hash(&b[..SH_CRC]);
        put_u32(&mut b, SH_CRC, crc);
        b
    }

    /// Decodes and validates a header from untrusted bytes.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if b[SH_MAGIC..SH_MAGIC + 8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32fast::hash(&b[..SH_CRC]) != u32_at(b, SH_CRC) {
            return Err(HeaderError::Checksum);
        }
        let version = u32_at(b, SH_VERSION);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        if u32_at(b, SH_HEADER_LEN) as usize != SEGMENT_HEADER_LEN {
            return Err(HeaderError::Invalid("header length field"));
        }
        if b[SH_RESERVED..SH_CRC].iter().any(|&x| x != 0) {
            return Err(HeaderError::Invalid("reserved bytes not zero"));
        }
        let h = SegmentHeader {
            segment_id: SegmentId(u64_at(b, SH_SEGMENT_ID)),
            first_commit_id: CommitId(u64_at(b, SH_FIRST_COMMIT)),
            epoch: Epoch(u64_at(b, SH_EPOCH)),
            segment_bytes: u64_at(b, SH_SEGMENT_BYTES),
        };
        if h.segment_id.0 == 0 {
            return Err(HeaderError::Invalid("segment id 0"));
        }
        if h.first_commit_id.0 == 0 {
            return Err(HeaderError::Invalid("first CommitId 0"));
        }
        if h.segment_bytes < min_segment_bytes() || h.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(HeaderError::Invalid("segment size out of bounds"));
        }
        Ok(h)
    }
}

/// The largest segment capacity accepted (1 GiB).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// The smallest segment that can hold one empty-bodied frame.
#[must_use]
pub const fn min_segment_bytes() -> u64 {
    (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + FOOTER_LEN) as u64
}

/// A frame header decoded from untrusted bytes whose header CRC matched; the body is not yet checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length in bytes.
    pub body_len: u32,
    /// The frame's CommitId.
    pub commit_id: CommitId,
    /// The frame's epoch.
    pub epoch: Epoch,
    /// CRC32 of the body.
    pub body_crc: u32,
}

impl FrameHeader {
    /// Total frame length, header included.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len as usize
    }
}

/// Why bytes at a frame position are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header is all zeros: the zero fill after the end of the log.
    Zero,
    /// Fewer bytes than a header, or than the header says the body needs.
    Truncated {
        /// Bytes needed for the whole frame (or the header, when the header itself is cut).
        needed: usize,
    },
    /// The magic is wrong.
    BadMagic(u32),
    /// Header CRC mismatch.
    HeaderChecksum {
        /// The stored value.
        expected: u32,
        /// The computed value.
        got: u32,
    },
    /// Body length exceeds the bound.
    TooLong {
        /// Length in the header.
        len: u32,
        /// The bound.
        max: usize,
    },
    /// CommitId 0 is never valid.
    ZeroCommitId,
    /// Body CRC mismatch.
    BodyChecksum {
        /// The stored value.
        expected: u32,
        /// The computed value.
        got: u32,
    },
}

/// Encodes one frame header for `body`.
#[must_use]
pub fn encode_frame_header(commit_id: CommitId, epoch: Epoch, body: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    assert!(
        body.len() <= MAX_FRAME_BODY_BYTES,
        "frame body of {} bytes exceeds the hard bound",
        body.len()
    );
    assert!(commit_id.0 != 0, "CommitId 0 is never written");
    let mut h = [0u8; FRAME_HEADER_LEN];
    put_u32(&mut h, FH_MAGIC, FRAME_MAGIC);
    put_u32(&mut h, FH_BODY_LEN, body.len() as u32);
    put_u64(&mut h, FH_COMMIT_ID, commit_id.0);
    put_u64(&mut h, FH_EPOCH, epoch.0);
    put_u32(&mut h, FH_BODY_CRC, crc32fast::hash(body));
    let crc = crc32fast::hash(&h[..FH_HEADER_CRC]);
    put_u32(&mut h, FH_HEADER_CRC, crc);
    h
}

/// Appends one encoded frame (header + body) to `out`.
pub fn encode_frame_into(out: &mut Vec<u8>, commit_id: CommitId, epoch: Epoch, body: &[u8]) {
    out.extend_from_slice(&encode_frame_header(commit_id, epoch, body));
    out.extend_from_slice(body);
}

/// Decodes and checks a frame header from untrusted bytes. `max_body` bounds the length before anything else
/// trusts it.
pub fn decode_frame_header(b: &[u8], max_body: usize) -> Result<FrameHeader, FrameError> {
    if b.len() < FRAME_HEADER_LEN {
        if b.iter().all(|&x| x == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_LEN,
        });
    }
    let h = &b[..FRAME_HEADER_LEN];
    let magic = u32_at(h, FH_MAGIC);
    if magic != FRAME_MAGIC {
        if h.iter().all(|&x| x == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::BadMagic(magic));
    }
    let stored = u32_at(h, FH_HEADER_CRC);
    let computed = crc32fast::hash(&h[..FH_HEADER_CRC]);
    if stored != computed {
        return Err(FrameError::HeaderChecksum {
            expected: stored,
            got: computed,
        });
    }
    let body_len = u32_at(h, FH_BODY_LEN);
    let max = max_body.min(MAX_FRAME_BODY_BYTES);
    if body_len as usize > max {
        return Err(FrameError::TooLong { len: body_len, max });
    }
    let commit_id = CommitId(u64_at(h, FH_COMMIT_ID));
    if commit_id.0 == 0 {
        return Err(FrameError::ZeroCommitId);
    }
    Ok(FrameHeader {
        body_len,
        commit_id,
        epoch: Epoch(u64_at(h, FH_EPOCH)),
        body_crc: u32_at(h, FH_BODY_CRC),
    })
}

/// Decodes a whole frame (header and body CRC checked) from the start of `b`.
pub fn decode_frame(b: &[u8], max_body: usize) -> Result<(FrameHeader, &[u8]), FrameError> {
    let h = decode_frame_header(b, max_body)?;
    let len = h.frame_len();
    if b.len() < len {
        return Err(FrameError::Truncated { needed: len });
    }
    let body = &b[FRAME_HEADER_LEN..len];
    let got = crc32fast::hash(body);
    if got != h.body_crc {
        return Err(FrameError::BodyChecksum {
            expected: h.body_crc,
            got,
        });
    }
    Ok((h, body))
}

/// The decoded sealed footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFooter {
    /// CommitId of the last frame in the segment.
    pub last_commit_id: CommitId,
    /// Number of frames in the segment.
    pub frame_count: u64,
    /// Offset where the frames end and the footer begins.
    pub data_end: u64,
    /// Epoch of the last frame.
    pub last_epoch: Epoch,
    /// SHA-256 of bytes `[0, data_end)` of the segment file, or `None` for a log written without segment
    /// digests (`Options::segment_digest` off: flag bit 1, the field's bytes zero).
    pub sha256: Option<[u8; 32]>,
    /// The next segment existed, durably and with frames, before this seal was written (every seal since the
    /// roll order changed; older logs have `false`). A sealed **last** segment marked so means its successor
    /// is missing: recovery refuses it.
    pub rolled: bool,
}

/// The `flags` bit of a footer written after its successor segment was durable.
const FOOTER_ROLLED: u32 = 1;
/// The `flags` bit of a footer without a segment digest (its `sha256` bytes are zero).
const FOOTER_NO_DIGEST: u32 = 2;

impl SegmentFooter {
    /// Encodes the footer into its fixed 80 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[SF_MAGIC..SF_MAGIC + 8].copy_from_slice(&FOOTER_MAGIC);
        put_u64(&mut b, SF_LAST_COMMIT, self.last_commit_id.0);
        put_u64(&mut b, SF_FRAME_COUNT, self.frame_count);
        put_u64(&mut b, SF_DATA_END, self.data_end);
        put_u64(&mut b, SF_LAST_EPOCH, self.last_epoch.0);
        if let Some(d) = &self.sha256 {
            b[SF_SHA256..SF_SHA256 + 32].copy_from_slice(d);
        }
        let flags = if self.rolled { FOOTER_ROLLED } else { 0 }
            | if self.sha256.is_none() {
                FOOTER_NO_DIGEST
            } else {
                0
            };
        put_u32(&mut b, SF_FLAGS, flags);
        let crc = crc32fast::hash(&b[..SF_CRC]);
        put_u32(&mut b, SF_CRC, crc);
        b
    }

    /// Decodes a footer from untrusted bytes; `None` if these bytes are not a valid footer.
    #[must_use]
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < FOOTER_LEN || b[SF_MAGIC..SF_MAGIC + 8] != FOOTER_MAGIC {
            return None;
        }
        let flags = u32_at(b, SF_FLAGS);
        if crc32fast::hash(&b[..SF_CRC]) != u32_at(b, SF_CRC)
            || flags & !(FOOTER_ROLLED | FOOTER_NO_DIGEST) != 0
        {
            return None;
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[SF_SHA256..SF_SHA256 + 32]);
        let sha256 = if flags & FOOTER_NO_DIGEST == 0 {
            Some(digest)
        } else if digest == [0u8; 32] {
            None
        } else {
            // Flagged as digest-less but carrying one: not a footer this code wrote.
            return None;
        };
        Some(SegmentFooter {
            last_commit_id: CommitId(u64_at(b, SF_LAST_COMMIT)),
            frame_count: u64_at(b, SF_FRAME_COUNT),
            data_end: u64_at(b, SF_DATA_END),
            last_epoch: Epoch(u64_at(b, SF_LAST_EPOCH)),
            sha256,
            rolled: flags & FOOTER_ROLLED != 0,
        })
    }
}

/// SHA-256 of a byte slice (the segment digest in the footer).
#[must_use]
pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_every_byte_matters() {
        let h = SegmentHeader {
            segment_id: SegmentId(7),
            first_commit_id: CommitId(1234),
            epoch: Epoch(3),
            segment_bytes: 1 << 20,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(SegmentHeader::decode(&c).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn frame_round_trip_and_flips_detected() {
        let mut out = Vec::new();
        encode_frame_into(&mut out, CommitId(9), Epoch(2), b"hello world");
        let (h, body) = decode_frame(&out, 1 << 20).unwrap();
        assert_eq!(
            (h.commit_id, h.epoch, body),
            (CommitId(9), Epoch(2), &b"hello world"[..])
        );
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut c = out.clone();
                c[i] ^= 1 << bit;
                assert!(
                    decode_frame(&c, 1 << 20).is_err(),
                    "flip of bit {bit} at byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn zero_fill_is_end_not_corruption() {
        assert_eq!(decode_frame_header(&[0u8; 40], 100), Err(FrameError::Zero));
        assert_eq!(decode_frame_header(&[0u8; 5], 100), Err(FrameError::Zero));
    }

    #[test]
    fn length_is_bounded_before_use() {
        let mut out = Vec::new();
        encode_frame_into(&mut out, CommitId(1), Epoch(0), &[7u8; 100]);
        assert_eq!(
            decode_frame_header(&out, 99),
            Err(FrameError::TooLong { len: 100, max: 99 })
        );
    }

    #[test]
    fn footer_round_trip() {
        let f = SegmentFooter {
            last_commit_id: CommitId(77),
            frame_count: 5,
            data_end: 999,
            last_epoch: Epoch(4),
            sha256: Some([9u8; 32]),
            rolled: true,
        };
        let legacy = SegmentFooter { rolled: false, ..f };
        let no_digest = SegmentFooter { sha256: None, ..f };
        for f in [f, legacy, no_digest] {
            let b = f.encode();
            assert_eq!(SegmentFooter::decode(&b), Some(f));
            for i in 0..FOOTER_LEN {
                let mut c = b;
                c[i] ^= 1;
                assert_eq!(
                    SegmentFooter::decode(&c),
                    None,
                    "flip at byte {i} of {f:?} accepted"
                );
            }
        }
        // A digest-less footer whose digest bytes are not zero is refused even with a matching CRC.
        let mut c = no_digest.encode();
        c[SF_SHA256] = 1;
        let crc = crc32fast::hash(&c[..SF_CRC]);
        put_u32(&mut c, SF_CRC, crc);
        assert_eq!(SegmentFooter::decode(&c), None);
    }
}
