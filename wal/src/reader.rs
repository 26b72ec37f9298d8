//! Readers: iterate verified frames from any CommitId while the writer keeps appending.
//!
//! A reader works on a snapshot of the segment list taken when it was created and sees frames up to the durable
//! mark of that moment. Sealed segments are read through their memory map; the active segment's durable prefix is
//! read with `pread`. Every frame is CRC-checked and its CommitId checked for continuity before it is returned.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    error::{Corruption, CorruptionKind, Result},
    format::{decode_frame, decode_frame_header, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN},
    recovery::frame_corruption,
    types::{CommitId, Epoch, SegmentId},
    wal::{SegView, Shared, Wal},
};

/// One verified frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's CommitId.
    pub commit_id: CommitId,
    /// The epoch that wrote it.
    pub epoch: Epoch,
    /// The segment it lives in.
    pub segment: SegmentId,
    /// The whole frame as stored (header and body), e.g. for verbatim replication.
    pub raw: Bytes,
}

impl Frame {
    /// The record body.
    #[must_use]
    pub fn body(&self) -> Bytes {
        self.raw.slice(FRAME_HEADER_LEN..)
    }
}

/// An iterator over verified frames; see the module docs.
#[derive(Debug)]
pub struct WalReader {
    shared: Arc<Shared>,
    views: Vec<Arc<SegView>>,
    seg: usize,
    bytes: Option<Bytes>,
    pos: usize,
    next: CommitId,
    end: CommitId,
    failed: bool,
}

impl Wal {
    /// A reader of the durable frames from `from` (inclusive) to the durable mark at this moment. `from` below the
    /// first retained CommitId starts at the first one; beyond the durable mark yields nothing.
    pub fn read_from(&self, from: CommitId) -> Result<WalReader> {
        let views: Vec<Arc<SegView>> = self.shared.segments.read().clone();
        let end = views.last().map_or(CommitId(0), |v| v.last_commit);
        let first = views.first().map_or(CommitId(1), |v| v.first_commit);
        let from = from.max(first).max(CommitId(1));
        let seg = views
            .iter()
            .position(|v| v.last_commit >= from)
            .unwrap_or(views.len());
        Ok(WalReader {
            shared: self.shared.clone(),
            views,
            seg,
            bytes: None,
            pos: 0,
            next: from,
            end,
            failed: false,
        })
    }
}

impl WalReader {
    /// The CommitId after the last one this reader will yield.
    #[must_use]
    pub fn end(&self) -> CommitId {
        self.end.next()
    }

    fn fail(&mut self, c: Corruption) -> Option<Result<Frame>> {
        self.failed = true;
        Some(Err(c.into()))
    }

    fn step(&mut self) -> Option<Result<Frame>> {
        loop {
            if self.failed || self.next > self.end || self.seg >= self.views.len() {
                return None;
            }
            let view = self.views[self.seg].clone();
            if self.next > view.last_commit {
                self.seg += 1;
                self.bytes = None;
                continue;
            }
            if self.bytes.is_none() {
                match self.shared.segment_bytes(&view) {
                    Ok(b) => self.bytes = Some(b),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
                self.pos = SEGMENT_HEADER_LEN;
                // Seek: walk headers (header CRC checked) up to the wanted CommitId.
                let mut at = view.first_commit;
                while at < self.next {
                    let b = self.bytes.as_ref().expect("bytes were just loaded");
                    let data =
                        &b[self.pos.min(b.len())..usize::try_from(view.data_end).unwrap_or(0).min(b.len())];
                    match decode_frame_header(data, self.shared.opts.max_record_bytes) {
                        Ok(h) if h.commit_id == at => {
                            self.pos += h.frame_len();
                            at = at.next();
                        }
                        Ok(h) => {
                            return self.fail(Corruption::new(
                                view.id,
                                self.pos as u64,
                                Some(at),
                                CorruptionKind::CommitIdGap {
                                    expected: at,
                                    got: h.commit_id,
                                },
                            ))
                        }
                        Err(e) => {
                            return self.fail(frame_corruption(view.id, self.pos as u64, at, e, data.len()))
                        }
                    }
                }
            }
            let b = self.bytes.as_ref().expect("bytes are loaded");
            let data_end = usize::try_from(view.data_end).unwrap_or(0).min(b.len());
            let data = &b[self.pos.min(data_end)..data_end];
            return match decode_frame(data, self.shared.opts.max_record_bytes) {
                Ok((h, _)) if h.commit_id == self.next => {
                    let raw = b.slice(self.pos..self.pos + h.frame_len());
                    let frame = Frame {
                        commit_id: h.commit_id,
                        epoch: h.epoch,
                        segment: view.id,
                        raw,
                    };
                    self.pos += h.frame_len();
                    self.next = self.next.next();
                    Some(Ok(frame))
                }
                Ok((h, _)) => {
                    let expected = self.next;
                    self.fail(Corruption::new(
                        view.id,
                        self.pos as u64,
                        Some(expected),
                        CorruptionKind::CommitIdGap {
                            expected,
                            got: h.commit_id,
                        },
                    ))
                }
                Err(e) => {
                    let (seg, pos, next) = (view.id, self.pos as u64, self.next);
                    self.fail(frame_corruption(seg, pos, next, e, data.len()))
                }
            };
        }
    }
}

impl Iterator for WalReader {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step()
    }
}
