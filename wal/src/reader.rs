//! Readers: verified frames from any CommitId while the writer keeps appending, and single frames by CommitId.
//!
//! A reader works on a snapshot of the segment list taken when it was created and sees frames up to the durable
//! mark of that moment. It seeks through each segment's sparse index (a point every
//! [`crate::recovery::SPARSE_EVERY`] CommitIds in a sealed segment, every frame in the active one, so a point
//! read of a recent record `pread`s just that frame), then reads sealed segments through their memory map and the
//! active segment through bounded `pread` windows (never the whole segment). Every frame is CRC-checked and its
//! CommitId checked before it is returned.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    error::{Corruption, CorruptionKind, Error, Result},
    format::{decode_frame, decode_frame_header, FrameHeader, FRAME_HEADER_LEN},
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
    /// Its byte offset in the segment file.
    pub offset: u64,
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

/// Bytes read from the active segment at a time by sequential readers (a larger frame gets its own window).
const WINDOW_BYTES: u64 = 1 << 20;
/// Bytes read at a time for one random read: enough for the walk from a sparse point over ~32 small frames.
const RANDOM_WINDOW_BYTES: u64 = 16 << 10;
/// Bytes read for one random read whose frame offset is indexed (every frame of the active segment): a small
/// frame in one `pread`; a larger one is read again at its exact length.
const EXACT_WINDOW_BYTES: u64 = 512;

/// A readable range of one segment: the whole map of a sealed segment, or a `pread` window of the active one.
#[derive(Debug)]
struct Window {
    bytes: Bytes,
    start: u64,
    /// How much to read from the active segment at once.
    chunk: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            bytes: Bytes::new(),
            start: 0,
            chunk: WINDOW_BYTES,
        }
    }
}

impl Window {
    /// Makes `[offset, offset + len)` of `view` readable, reading a new window if needed, and returns where it
    /// starts in `self.bytes`. Never reads past the view's durable end; a request beyond it is reported as a frame
    /// overrun at `offset`.
    fn ensure(
        &mut self,
        shared: &Shared,
        view: &SegView,
        offset: u64,
        len: u64,
        expect: CommitId,
    ) -> Result<usize> {
        let overrun = || -> Error {
            Corruption::new(
                view.id,
                offset,
                Some(expect),
                CorruptionKind::FrameOverrun {
                    len,
                    end: view.data_end,
                },
            )
            .into()
        };
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= view.data_end)
            .ok_or_else(overrun)?;
        let covered = offset >= self.start && end <= self.start + self.bytes.len() as u64;
        if !covered {
            if view.sealed {
                self.bytes = shared.segment_bytes(view)?;
                self.start = 0;
            } else if let Some(live) = view.live.as_ref().filter(|m| end <= m.len() as u64) {
                // The active segment's live map: no system call, no copy (its bytes below `data_end` are durable
                // frames that nothing rewrites while the segment is active).
                self.bytes = live.clone();
                self.start = 0;
            } else {
                let want = len.max(self.chunk).min(view.data_end - offset);
                self.bytes = shared.read_active(view, offset, want)?;
                self.start = offset;
            }
        }
        let at = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        if at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX)) > self.bytes.len() {
            return Err(overrun());
        }
        Ok(at)
    }
}

impl Shared {
    /// The offset of frame `commit_id` in `view` (which must contain it), found from the sparse index by walking
    /// frame headers (header CRC checked).
    fn locate(&self, view: &SegView, commit_id: CommitId, window: &mut Window) -> Result<u64> {
        let (mut at, mut offset) = {
            let sparse = view.sparse.read();
            let i = sparse.partition_point(|(c, _)| *c <= commit_id);
            match i.checked_sub(1).and_then(|i| sparse.get(i)) {
                Some(&p) => p,
                None => {
                    return Err(Corruption::new(
                        view.id,
                        0,
                        Some(commit_id),
                        CorruptionKind::SegmentHeader("no index point"),
                    )
                    .into())
                }
            }
        };
        while at < commit_id {
            let i = window.ensure(self, view, offset, FRAME_HEADER_LEN as u64, at)?;
            let h = &window.bytes[i..i + FRAME_HEADER_LEN];
            match decode_frame_header(h, self.opts.max_record_bytes) {
                Ok(h) if h.commit_id == at => {
                    offset += h.frame_len() as u64;
                    at = at.next();
                }
                Ok(h) => {
                    return Err(Corruption::new(
                        view.id,
                        offset,
                        Some(at),
                        CorruptionKind::CommitIdGap {
                            expected: at,
                            got: h.commit_id,
                        },
                    )
                    .into())
                }
                Err(e) => return Err(frame_corruption(view.id, offset, at, e, h.len()).into()),
            }
        }
        Ok(offset)
    }

    /// Reads and verifies the frame at `offset` of `view`, which must carry `expect`; returns its header and
    /// where it lies in `window.bytes`.
    fn frame_span(
        &self,
        view: &SegView,
        offset: u64,
        expect: CommitId,
        window: &mut Window,
    ) -> Result<(FrameHeader, usize, usize)> {
        self.frame_span_checked(view, offset, expect, window, true)
    }

    /// [`Shared::frame_span`]; with `body_crc` false the frame's body CRC is not computed again (the header is
    /// still decoded and checked, and the CommitId must be `expect`).
    fn frame_span_checked(
        &self,
        view: &SegView,
        offset: u64,
        expect: CommitId,
        window: &mut Window,
        body_crc: bool,
    ) -> Result<(FrameHeader, usize, usize)> {
        let i = window.ensure(self, view, offset, FRAME_HEADER_LEN as u64, expect)?;
        let h = decode_frame_header(&window.bytes[i..i + FRAME_HEADER_LEN], self.opts.max_record_bytes)
            .map_err(|e| frame_corruption(view.id, offset, expect, e, FRAME_HEADER_LEN))?;
        let len = h.frame_len();
        let i = window.ensure(self, view, offset, len as u64, expect)?;
        if !body_crc && h.commit_id == expect {
            return Ok((h, i, len));
        }
        match decode_frame(&window.bytes[i..i + len], self.opts.max_record_bytes) {
            Ok((h, _)) if h.commit_id == expect => Ok((h, i, len)),
            Ok((h, _)) => Err(Corruption::new(
                view.id,
                offset,
                Some(expect),
                CorruptionKind::CommitIdGap {
                    expected: expect,
                    got: h.commit_id,
                },
            )
            .into()),
            Err(e) => Err(frame_corruption(view.id, offset, expect, e, len).into()),
        }
    }

    /// Reads and verifies the frame at `offset` of `view`, which must carry `expect`.
    fn frame_at(&self, view: &SegView, offset: u64, expect: CommitId, window: &mut Window) -> Result<Frame> {
        let (h, i, len) = self.frame_span(view, offset, expect, window)?;
        Ok(Frame {
            commit_id: h.commit_id,
            epoch: h.epoch,
            segment: view.id,
            offset,
            raw: window.bytes.slice(i..i + len),
        })
    }
}

/// A verified frame borrowed from the reader's buffer (see [`WalReader::for_each_ref`]).
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    /// The frame's CommitId.
    pub commit_id: CommitId,
    /// The epoch that wrote it.
    pub epoch: Epoch,
    /// The whole frame as stored.
    pub raw: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// The record body.
    #[must_use]
    pub fn body(&self) -> &'a [u8] {
        &self.raw[FRAME_HEADER_LEN..]
    }
}

/// The index of the view holding `commit_id`, if any.
fn view_index(views: &[Arc<SegView>], commit_id: CommitId) -> Option<usize> {
    let i = views.partition_point(|v| v.last_commit < commit_id);
    views
        .get(i)
        .filter(|v| v.first_commit <= commit_id && commit_id <= v.last_commit)
        .map(|_| i)
}

/// Where the reader's next frame lies: its segment and offset, its header, and its place in the window.
struct Span {
    segment: SegmentId,
    offset: u64,
    header: FrameHeader,
    at: usize,
    len: usize,
}

/// An iterator over verified frames; see the module docs.
#[derive(Debug)]
pub struct WalReader {
    shared: Arc<Shared>,
    views: Vec<Arc<SegView>>,
    seg: usize,
    window: Window,
    /// Offset of the next frame in the current segment, once located.
    pos: Option<u64>,
    next: CommitId,
    end: CommitId,
    failed: bool,
    /// Skip the body CRC of frames up to this CommitId: this open's recovery checked them (`read_recovered`).
    trusted_through: CommitId,
}

impl Wal {
    /// Like [`Wal::read_from`], for the open's own verification pass right after recovery: the frames this open's
    /// recovery scan already decoded and CRC-checked are not CRC-checked a second time (their headers are still
    /// decoded and checked, CommitId by CommitId); frames appended since are checked as usual. Whoever uses it must
    /// check the bytes themselves (the engine's chain pass hashes every record body and links the hashes).
    pub fn read_recovered(&self, from: CommitId) -> Result<WalReader> {
        let mut r = self.read_from(from)?;
        r.trusted_through = self.shared.recovered_through;
        Ok(r)
    }

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
            window: Window::default(),
            pos: None,
            next: from,
            end,
            failed: false,
            trusted_through: CommitId(0),
        })
    }

    /// The durable frame `commit_id`, verified, or `None` if it is not (yet, or any longer) in the log.
    pub fn read_frame(&self, commit_id: CommitId) -> Result<Option<Frame>> {
        // Only the one view is taken out of the list (no copy of the list per read).
        let view = {
            let views = self.shared.segments.read();
            match view_index(&views, commit_id) {
                Some(i) => views[i].clone(),
                None => return Ok(None),
            }
        };
        let mut window = Window {
            chunk: RANDOM_WINDOW_BYTES,
            ..Window::default()
        };
        let offset = self.shared.locate(&view, commit_id, &mut window)?;
        if window.bytes.is_empty() {
            // Located without a walk (the frame's own index point): read just the frame.
            window.chunk = EXACT_WINDOW_BYTES;
        }
        self.shared
            .frame_at(&view, offset, commit_id, &mut window)
            .map(Some)
    }
}

impl WalReader {
    /// The CommitId after the last one this reader will yield.
    #[must_use]
    pub fn end(&self) -> CommitId {
        self.end.next()
    }

    /// Advances to the next frame; returns its header and where it lies in `self.window.bytes`.
    fn step_span(&mut self) -> Result<Option<Span>> {
        loop {
            if self.next > self.end || self.seg >= self.views.len() {
                return Ok(None);
            }
            // Borrow the view in place: cloning its `Arc` per frame would bounce one reference count between
            // cores when several readers scan the log at once.
            let view = &self.views[self.seg];
            if self.next > view.last_commit {
                self.seg += 1;
                self.pos = None;
                self.window = Window::default();
                continue;
            }
            let offset = match self.pos {
                Some(p) => p,
                None => self.shared.locate(view, self.next, &mut self.window)?,
            };
            let body_crc = self.next > self.trusted_through;
            let (h, i, len) =
                self.shared
                    .frame_span_checked(view, offset, self.next, &mut self.window, body_crc)?;
            self.pos = Some(offset + len as u64);
            self.next = self.next.next();
            return Ok(Some(Span {
                segment: view.id,
                offset,
                header: h,
                at: i,
                len,
            }));
        }
    }

    fn step(&mut self) -> Result<Option<Frame>> {
        Ok(self.step_span()?.map(|sp| Frame {
            commit_id: sp.header.commit_id,
            epoch: sp.header.epoch,
            segment: sp.segment,
            offset: sp.offset,
            raw: self.window.bytes.slice(sp.at..sp.at + sp.len),
        }))
    }

    /// Calls `f` with every remaining frame, borrowed: verified like [`Iterator::next`] but without creating a
    /// reference-counted buffer per frame, for scans that only look at the bytes (recovery, verification).
    pub fn for_each_ref<E: From<crate::Error>>(
        mut self,
        mut f: impl FnMut(FrameRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some(sp) = self.step_span()? {
            let raw = &self.window.bytes[sp.at..sp.at + sp.len];
            f(FrameRef {
                commit_id: sp.header.commit_id,
                epoch: sp.header.epoch,
                raw,
            })?;
        }
        Ok(())
    }
}

impl Iterator for WalReader {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(f) => f.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
