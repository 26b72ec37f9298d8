//! Entry points for the fuzz targets in `fuzz/`, also run over the committed corpus by ordinary tests. Each one
//! feeds untrusted bytes to a decoder and checks the properties that must hold whatever the input: no panic, no
//! allocation driven by an unchecked length, and agreement between decode and re-encode.

use std::{path::Path, sync::Arc};

use crate::{
    format::{decode_frame, encode_frame_into, SegmentFooter, SegmentHeader},
    fs::{Fs, MemFs},
    segment_file_name, CommitId, Options, SegmentId, Wal,
};

/// Frame decoder: any bytes either fail to decode or decode to a frame that re-encodes to the same bytes.
pub fn frame_decoder(data: &[u8]) {
    if let Ok((h, body)) = decode_frame(data, 1 << 16) {
        let mut again = Vec::new();
        encode_frame_into(&mut again, h.commit_id, h.epoch, body);
        assert_eq!(&again[..], &data[..h.frame_len()], "decode/encode round trip");
    }
}

/// Segment header and footer decoders: same round-trip property.
pub fn segment_header_footer(data: &[u8]) {
    if let Ok(h) = SegmentHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..crate::format::SEGMENT_HEADER_LEN]);
    }
    if let Some(f) = SegmentFooter::decode(data) {
        assert_eq!(&f.encode()[..], &data[..crate::format::FOOTER_LEN]);
    }
}

/// Recovery of arbitrary bytes: the first byte picks how many segment files (1–3) the rest is split into. Opening
/// must return a log or a typed error, never panic; an opened log must read back and verify consistently, and
/// accept an append.
pub fn recover_bytes(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let files = 1 + usize::from(first % 3);
    let dir = Path::new("/fuzz/wal");
    let fs = MemFs::new();
    let _ = fs.create_dir_all(dir);
    let chunk = rest.len().div_ceil(files).max(1);
    for (i, part) in rest.chunks(chunk).enumerate() {
        let _ = fs.write_file_durable(&dir.join(segment_file_name(SegmentId(i as u64 + 1))), part);
    }
    let opts = Options {
        segment_bytes: 4096,
        max_record_bytes: 1024,
        background_preallocation: false,
        ..Options::default()
    };
    // Scanned in pieces of 256 bytes or in one run per segment, recovery finds the same thing and shows the
    // same frames, once each and in order.
    let fs = Arc::new(fs);
    let opened = |piece: usize| {
        let o = Options {
            read_only: true,
            recovery_piece_bytes: piece,
            ..opts.clone()
        };
        match Wal::open_visiting(fs.clone(), dir, o, &Frames) {
            Ok((wal, seen)) => Ok((wal.recovery_report().clone(), seen.concat())),
            Err(e) => Err(e.to_string()),
        }
    };
    assert_eq!(opened(256), opened(1 << 30), "pieces and whole scans disagree");
    let Ok(wal) = Wal::open(fs, dir, opts) else {
        return;
    };
    let last = wal.recovery_report().last_commit_id;
    let Ok(reader) = wal.read_from(CommitId(1)) else {
        return;
    };
    let mut n = 0u64;
    for f in reader {
        match f {
            Ok(f) => {
                n += 1;
                assert!(f.commit_id.0 >= n, "CommitIds never go backwards");
            }
            Err(_) => return,
        }
    }
    let _ = wal.verify();
    if let Ok(id) = wal.append(crate::Epoch(u64::MAX), b"fuzz") {
        assert_eq!(id, last.next(), "the next append continues the recovered log");
    }
}

/// Records what recovery shows it: CommitId, epoch and body length of every frame, per piece.
struct Frames;

impl crate::RecoveryVisitor for Frames {
    type Segment = Vec<(u64, u64, usize)>;

    fn segment(&self) -> Self::Segment {
        Vec::new()
    }

    fn frame(&self, seen: &mut Self::Segment, commit_id: CommitId, epoch: crate::Epoch, body: &[u8]) {
        seen.push((commit_id.0, epoch.0, body.len()));
    }
}
