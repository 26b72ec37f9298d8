//! The replica's apply step: frames exactly as the primary stored them go in; each is checked with
//! [`check_frame`] against the replica's tip, and those that follow the tip are appended verbatim to the replica's
//! own log ([`Db::append_replicated`]). A frame at or below the tip (a resend, or a duplicate from the network) is
//! compared byte for byte with the frame the replica holds at that CommitId: equal is skipped, different is a fork.
//! Anything else halts, and nothing after the failing frame is applied.

use aerodb_wal::{CommitId, Epoch};
use std::sync::Arc;

use aerodb_engine::{record, Db};
use bytes::Bytes;

use crate::{
    replay::{check_frame, Tip, Verdict},
    role::HaltReason,
};

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The frames violate an invariant: the node must halt.
    #[error("{0}")]
    Halt(HaltReason),
    /// The local engine failed (a failed fsync fails closed; the node stops replicating).
    #[error("the local log failed: {0}")]
    Engine(#[from] aerodb_engine::Error),
}

/// What one call applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Frames appended.
    pub appended: u64,
    /// Frames at or below the tip that matched what the replica holds (skipped).
    pub duplicates: u64,
}

/// A replica's apply state: its database and tip.
#[derive(Debug)]
pub struct Applier {
    db: Arc<Db>,
    tip: Tip,
    max_body: usize,
    /// The followed primary's proven epoch: a frame above it is refused (no frame raises an epoch).
    epoch_ceiling: u64,
}

/// The tip of a database: its last record's CommitId, hash and epoch.
pub fn tip_of(db: &Db) -> Result<Tip, aerodb_engine::Error> {
    let t = db.tip()?;
    if t.commit_id == CommitId(0) {
        return Ok(Tip::genesis());
    }
    let epoch = db.record(t.commit_id)?.map_or(0, |r| r.record.epoch.0);
    Ok(Tip {
        commit_id: t.commit_id,
        record_hash: t.record_hash,
        epoch: Epoch(epoch),
    })
}

impl Applier {
    /// An applier for `db` (opened as a replica), starting at its tip.
    pub fn new(db: Arc<Db>, max_body: usize) -> Result<Self, aerodb_engine::Error> {
        let tip = tip_of(&db)?;
        Ok(Self {
            db,
            tip,
            max_body,
            epoch_ceiling: u64::MAX,
        })
    }

    /// Refuses frames of an epoch above `epoch` from now on: the epoch the followed primary proved in its
    /// handshake ([`crate::core::follower::Follower::epoch_ceiling`]).
    pub fn set_epoch_ceiling(&mut self, epoch: u64) {
        self.epoch_ceiling = epoch;
    }

    /// The replica's tip.
    #[must_use]
    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// Checks and applies `frames` in order. On a halt, the frames before the failing one are applied (they
    /// checked out) and the error names the reason; nothing after it is.
    pub fn apply(&mut self, frames: &[Bytes]) -> Result<Applied, ApplyError> {
        let mut out = Applied::default();
        // Accepted frames: epoch, body, record hash (from the check), and the frame as received.
        let mut run: Vec<(Epoch, &[u8], [u8; 32])> = Vec::new();
        let mut raws: Vec<&Bytes> = Vec::new();
        let mut tip = self.tip;
        let mut failure = None;
        for raw in frames {
            match check_frame(&tip, raw, self.max_body) {
                Ok(Verdict::Append(next)) if next.epoch > Epoch(self.epoch_ceiling) => {
                    failure = Some(HaltReason::Corruption(format!(
                        "frame {} carries epoch {}, above the epoch {} its primary proved",
                        next.commit_id, next.epoch, self.epoch_ceiling
                    )));
                    break;
                }
                Ok(Verdict::Append(next)) => {
                    run.push((
                        next.epoch,
                        &raw[aerodb_wal::format::FRAME_HEADER_LEN..],
                        next.record_hash,
                    ));
                    raws.push(raw);
                    tip = next;
                }
                Ok(Verdict::AtOrBelowTip { commit_id }) => {
                    // Compare with what this log holds, which may still be in `run`.
                    let held = if commit_id > self.tip.commit_id {
                        let i = (commit_id.0 - self.tip.commit_id.0 - 1) as usize;
                        raws.get(i).map(|f| (*f).clone())
                    } else {
                        self.db.raw_frames(commit_id, 0)?.into_iter().next()
                    };
                    match held {
                        Some(ours) if ours == *raw => out.duplicates += 1,
                        Some(ours) => {
                            let body_of =
                                |f: &[u8]| record::record_hash(&f[aerodb_wal::format::FRAME_HEADER_LEN..]);
                            failure = Some(HaltReason::Fork {
                                commit_id,
                                ours: body_of(&ours),
                                theirs: if raw.len() >= aerodb_wal::format::FRAME_HEADER_LEN {
                                    body_of(raw)
                                } else {
                                    [0; 32]
                                },
                            });
                            break;
                        }
                        None => {
                            failure = Some(HaltReason::Corruption(format!(
                                "frame {commit_id} is at or below the tip {} but this log does not hold it",
                                tip.commit_id
                            )));
                            break;
                        }
                    }
                }
                Err(reason) => {
                    failure = Some(reason);
                    break;
                }
            }
        }
        if !run.is_empty() {
            let last = self.db.append_replicated(&run)?;
            debug_assert_eq!(last, tip.commit_id);
            out.appended += run.len() as u64;
            self.tip = tip;
        }
        match failure {
            Some(reason) => Err(ApplyError::Halt(reason)),
            None => Ok(out),
        }
    }
}
