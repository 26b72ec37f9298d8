//! The replica's check of every frame it receives, as a pure function: given the replica's tip and
//! the frame's bytes exactly as the primary stored them, either the new tip, a duplicate to skip, or the reason
//! to halt. The frame's CRCs, its CommitId (next after the tip), its epoch (never lower), the record's encoding,
//! its own CommitId and epoch (equal to the frame's) and its `prev_hash` (the tip's record hash) are all checked
//! before a byte is appended to the replica's log.

use aerodb_engine::record::{self, decode_header, genesis_hash};
use aerodb_wal::{format::decode_frame, CommitId, Epoch};

use crate::role::HaltReason;

/// The last record a replica holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Its CommitId (0: empty log).
    pub commit_id: CommitId,
    /// Its record hash (the genesis hash for an empty log).
    pub record_hash: [u8; 32],
    /// Its epoch.
    pub epoch: Epoch,
}

impl Tip {
    /// The tip of an empty log.
    #[must_use]
    pub fn genesis() -> Self {
        Self {
            commit_id: CommitId(0),
            record_hash: genesis_hash(),
            epoch: Epoch(0),
        }
    }
}

/// What to do with a frame that checks out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Append it; this is the new tip.
    Append(Tip),
    /// A frame at or below the tip (a resent or duplicated frame): the caller compares it with the record it
    /// holds at that CommitId — equal bytes are skipped, different bytes are a fork.
    AtOrBelowTip {
        /// Its CommitId.
        commit_id: CommitId,
    },
}

/// Checks one frame (`raw`: header and body, nothing else) against the replica's tip.
pub fn check_frame(tip: &Tip, raw: &[u8], max_body: usize) -> Result<Verdict, HaltReason> {
    let (h, body) =
        decode_frame(raw, max_body).map_err(|e| HaltReason::Corruption(format!("frame: {e:?}")))?;
    if h.frame_len() != raw.len() {
        return Err(HaltReason::Corruption(format!(
            "frame of {} bytes arrived with {} more",
            h.frame_len(),
            raw.len() - h.frame_len().min(raw.len())
        )));
    }
    let commit = h.commit_id;
    if commit <= tip.commit_id {
        return Ok(Verdict::AtOrBelowTip { commit_id: commit });
    }
    if commit != tip.commit_id.next() {
        return Err(HaltReason::Gap {
            expected: tip.commit_id.next(),
            got: commit,
        });
    }
    if h.epoch < tip.epoch {
        return Err(HaltReason::EpochRegression {
            last: tip.epoch,
            got: h.epoch,
        });
    }
    let rec = decode_header(body).map_err(|e| HaltReason::Corruption(format!("record {commit}: {e}")))?;
    if rec.commit_id != commit || rec.epoch != h.epoch {
        return Err(HaltReason::Corruption(format!(
            "record {commit} says CommitId {} epoch {}, its frame CommitId {commit} epoch {}",
            rec.commit_id, rec.epoch, h.epoch
        )));
    }
    if rec.prev_hash != tip.record_hash {
        // The primary's record before this one is not the one we hold there.
        return Err(HaltReason::Fork {
            commit_id: tip.commit_id,
            ours: tip.record_hash,
            theirs: rec.prev_hash,
        });
    }
    Ok(Verdict::Append(Tip {
        commit_id: commit,
        record_hash: record::record_hash(body),
        epoch: h.epoch,
    }))
}
