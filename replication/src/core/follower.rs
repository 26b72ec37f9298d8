//! The replica's side of one replication stream, as a pure state machine: the handshake (log key, segment size,
//! epoch and fork rules — all in this one place), the epoch ceiling frames are checked against, the acks, and the
//! silence rule. The edge opens the stream, reads the database and applies frames (through
//! [`Applier`](crate::apply::Applier)); every decision is taken here, with the time passed in.
//!
//! Epoch rules: a primary below the highest epoch this node has seen is an `EpochRegression` (halt). A primary
//! above it must prove its term ([`authority`](super::authority)); an unproven claim is refused (the stream is
//! retried) and changes nothing. Frames may not carry an epoch above the one the primary proved.

use std::time::Duration;

use aerodb_engine::VerifierKey;
use aerodb_wal::{CommitId, Epoch};

use super::authority::{judge, Claim};
use crate::{replay::Tip, role::HaltReason};

/// A replica that hears nothing from its primary for this long drops the stream and reconnects (a partition
/// drops packets silently; TCP alone would wait minutes). Heartbeats come every [`super::primary::HEARTBEAT`].
pub const SILENCE: Duration = Duration::from_secs(3);

/// Why a follower's stream ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// An invariant was violated: halt the node with this reason.
    Halt(HaltReason),
    /// The stream cannot go on now (a refusal, a mismatch the operator must fix, silence): retry with backoff.
    Retry(String),
}

/// The primary's welcome, as the follower needs it.
#[derive(Clone, Debug)]
pub struct Welcome<'a> {
    /// The primary's node id.
    pub node_id: &'a str,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its log's verifier key (text form).
    pub verifier_key: &'a str,
    /// Its WAL segment capacity.
    pub segment_bytes: u64,
    /// Its tip.
    pub commit_id: CommitId,
    /// Its record hash at this replica's tip (`None`: its log is shorter).
    pub hash_at_our_tip: Option<[u8; 32]>,
    /// A checkpoint of its term, signed by the log's key (the term proof).
    pub epoch_proof: Option<&'a str>,
}

/// An acknowledgement to send: positions received, durable and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Received.
    pub written: CommitId,
    /// Durable.
    pub flushed: CommitId,
    /// Applied.
    pub applied: CommitId,
}

/// What the handshake decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Following {
    /// The primary's epoch: frames above it are refused.
    pub epoch: Epoch,
    /// `Some(e)`: a newer term was proven; the node records that it follows epoch `e` (persisted).
    pub raise_to: Option<Epoch>,
}

/// One stream's follower state.
#[derive(Clone, Debug)]
pub struct Follower {
    tip: Tip,
    highest_epoch: Epoch,
    followed: Option<Epoch>,
    last_heard: Duration,
}

impl Follower {
    /// A follower at `tip`, having seen `highest_epoch`, starting at `now`.
    #[must_use]
    pub fn new(tip: Tip, highest_epoch: Epoch, now: Duration) -> Self {
        Self {
            tip,
            highest_epoch,
            followed: None,
            last_heard: now,
        }
    }

    /// The replica's tip.
    #[must_use]
    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// The highest epoch seen.
    #[must_use]
    pub fn highest_epoch(&self) -> Epoch {
        self.highest_epoch
    }

    /// The epoch frames may carry at most (the followed primary's), once the handshake passed.
    #[must_use]
    pub fn epoch_ceiling(&self) -> Option<Epoch> {
        self.followed
    }

    /// Checks the primary's welcome against this replica (`key` and `segment_bytes` are its own).
    pub fn on_welcome(
        &mut self,
        w: &Welcome<'_>,
        key: &VerifierKey,
        segment_bytes: u64,
        now: Duration,
    ) -> Result<Following, End> {
        self.last_heard = now;
        let own_key = key.to_string();
        if w.verifier_key != own_key {
            return Err(End::Retry(format!(
                "the primary's log key is {} but this replica's is {own_key}: a replica must hold the log's \
                 signing key (copy checkpoint.key from the primary into the empty data directory)",
                w.verifier_key
            )));
        }
        if w.segment_bytes != segment_bytes {
            return Err(End::Retry(format!(
                "the primary's WAL segments are {} bytes but this replica's are {segment_bytes}; they must match",
                w.segment_bytes
            )));
        }
        if w.epoch < self.highest_epoch {
            return Err(End::Halt(HaltReason::EpochRegression {
                last: self.highest_epoch,
                got: w.epoch,
            }));
        }
        let raise_to = match judge(self.highest_epoch, w.epoch, w.epoch_proof, key) {
            Claim::NotNewer => None,
            Claim::Proven { epoch } if epoch == w.epoch => Some(epoch),
            Claim::Proven { epoch } => {
                return Err(End::Retry(format!(
                    "primary {} says epoch {} but its term proof is a checkpoint of epoch {}",
                    w.node_id, w.epoch.0, epoch.0
                )))
            }
            Claim::Unproven { claimed, proven } => {
                return Err(End::Retry(format!(
                    "primary {} claims epoch {} above the {} this replica has seen, without a checkpoint of that \
                     epoch signed by the log's key (proof: {}); not followed",
                    w.node_id,
                    claimed.0,
                    self.highest_epoch.0,
                    proven.map_or_else(|| "none".to_owned(), |e| format!("epoch {}", e.0))
                )))
            }
        };
        self.check_fork(w.hash_at_our_tip).map_err(End::Halt)?;
        if let Some(e) = raise_to {
            self.highest_epoch = e;
        }
        self.followed = Some(w.epoch);
        Ok(Following {
            epoch: w.epoch,
            raise_to,
        })
    }

    /// A replica tip the primary's history does not contain is a fork; the all-zero hash stands for
    /// "absent" (the primary's log is shorter, so our records past its tip exist nowhere else).
    fn check_fork(&self, theirs: Option<[u8; 32]>) -> Result<(), HaltReason> {
        if self.tip.commit_id == CommitId(0) {
            return Ok(());
        }
        match theirs {
            Some(h) if h == self.tip.record_hash => Ok(()),
            theirs => Err(HaltReason::Fork {
                commit_id: self.tip.commit_id,
                ours: self.tip.record_hash,
                theirs: theirs.unwrap_or([0; 32]),
            }),
        }
    }

    /// Frames were applied up to `tip` (the apply step checked each one): the ack to send.
    pub fn applied(&mut self, tip: Tip, now: Duration) -> Ack {
        assert!(
            tip.commit_id >= self.tip.commit_id,
            "the tip never goes back: {} after {}",
            tip.commit_id,
            self.tip.commit_id
        );
        self.tip = tip;
        self.last_heard = now;
        self.ack()
    }

    /// The ack of the current tip (the replica's append is synchronous: received = durable = applied).
    #[must_use]
    pub fn ack(&self) -> Ack {
        let c = self.tip.commit_id;
        Ack {
            written: c,
            flushed: c,
            applied: c,
        }
    }

    /// A heartbeat from the primary with its epoch: answered with an ack, or a halt if the epoch went back.
    pub fn on_heartbeat(&mut self, epoch: Epoch, now: Duration) -> Result<Ack, End> {
        self.last_heard = now;
        match self.followed {
            Some(f) if epoch < f => Err(End::Halt(HaltReason::EpochRegression { last: f, got: epoch })),
            Some(f) if epoch > f => Err(End::Retry(format!(
                "the primary's heartbeat says epoch {} but it proved epoch {}; reconnecting",
                epoch.0, f.0
            ))),
            _ => Ok(self.ack()),
        }
    }

    /// Any other message arrived.
    pub fn heard(&mut self, now: Duration) {
        self.last_heard = now;
    }

    /// A checkpoint of tree size `size` arrived. The primary sends one only after every record it covers, so one
    /// beyond this replica's tip means frames went missing: a `Gap` (the checkpoint itself is then not stored).
    pub fn on_checkpoint(&mut self, size: u64, now: Duration) -> Result<(), End> {
        self.last_heard = now;
        if size > self.tip.commit_id.0 {
            return Err(End::Halt(HaltReason::Gap {
                expected: self.tip.commit_id.next(),
                got: CommitId(size),
            }));
        }
        Ok(())
    }

    /// The time is `now`: a stream silent past [`SILENCE`] is given up.
    pub fn tick(&self, now: Duration) -> Result<(), End> {
        let silent = now.saturating_sub(self.last_heard);
        if silent >= SILENCE {
            return Err(End::Retry(format!(
                "no message from the primary for {} ms (heartbeats come every {} ms)",
                silent.as_millis(),
                super::primary::HEARTBEAT.as_millis()
            )));
        }
        Ok(())
    }

    /// When the stream is silent for too long if nothing else arrives.
    #[must_use]
    pub fn silence_deadline(&self) -> Duration {
        self.last_heard + SILENCE
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use aerodb_engine::{Checkpoint, SigningKey};

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed("log", [1; 32]).unwrap()
    }

    fn proof(epoch: u64) -> String {
        Checkpoint {
            origin: "log".into(),
            size: 0,
            root: [0; 32],
            epoch: Epoch(epoch),
        }
        .sign(&key())
        .note
    }

    fn welcome<'a>(epoch: u64, vk: &'a str, proof: Option<&'a str>, hash: Option<[u8; 32]>) -> Welcome<'a> {
        Welcome {
            node_id: "p",
            epoch: Epoch(epoch),
            verifier_key: vk,
            segment_bytes: 4096,
            commit_id: CommitId(10),
            hash_at_our_tip: hash,
            epoch_proof: proof,
        }
    }

    #[test]
    fn the_handshake_takes_a_newer_epoch_only_with_proof() {
        let v = key().verifier();
        let vk = v.to_string();
        let mut f = Follower::new(Tip::genesis(), Epoch(2), Duration::ZERO);
        let e = f.on_welcome(&welcome(u64::MAX, &vk, None, None), &v, 4096, Duration::ZERO);
        assert!(matches!(e, Err(End::Retry(m)) if m.contains("without a checkpoint")));
        assert_eq!(f.highest_epoch(), Epoch(2), "an unproven claim changes nothing");
        let p = proof(3);
        let ok = f.on_welcome(&welcome(3, &vk, Some(&p), None), &v, 4096, Duration::ZERO);
        assert_eq!(
            ok,
            Ok(Following {
                epoch: Epoch(3),
                raise_to: Some(Epoch(3))
            })
        );
        assert_eq!(f.epoch_ceiling(), Some(Epoch(3)));
        let back = f.on_welcome(&welcome(2, &vk, None, None), &v, 4096, Duration::ZERO);
        assert!(matches!(
            back,
            Err(End::Halt(HaltReason::EpochRegression {
                last: Epoch(3),
                got: Epoch(2)
            }))
        ));
    }

    #[test]
    fn mismatched_keys_and_segments_are_retried_and_a_fork_halts() {
        let v = key().verifier();
        let vk = v.to_string();
        let mut f = Follower::new(Tip::genesis(), Epoch(1), Duration::ZERO);
        assert!(matches!(
            f.on_welcome(&welcome(1, "other", None, None), &v, 4096, Duration::ZERO),
            Err(End::Retry(_))
        ));
        assert!(matches!(
            f.on_welcome(&welcome(1, &vk, None, None), &v, 8192, Duration::ZERO),
            Err(End::Retry(_))
        ));
        let tip = Tip {
            commit_id: CommitId(4),
            record_hash: [4; 32],
            epoch: Epoch(1),
        };
        let mut f = Follower::new(tip, Epoch(1), Duration::ZERO);
        let fork = f.on_welcome(&welcome(1, &vk, None, Some([5; 32])), &v, 4096, Duration::ZERO);
        assert!(matches!(
            fork,
            Err(End::Halt(HaltReason::Fork {
                commit_id: CommitId(4),
                ..
            }))
        ));
        let shorter = f.on_welcome(&welcome(1, &vk, None, None), &v, 4096, Duration::ZERO);
        assert!(matches!(shorter, Err(End::Halt(HaltReason::Fork { theirs, .. })) if theirs == [0; 32]));
        assert!(f
            .on_welcome(&welcome(1, &vk, None, Some([4; 32])), &v, 4096, Duration::ZERO)
            .is_ok());
    }

    #[test]
    fn heartbeats_and_silence() {
        let v = key().verifier();
        let vk = v.to_string();
        let mut f = Follower::new(Tip::genesis(), Epoch(1), Duration::ZERO);
        f.on_welcome(&welcome(1, &vk, None, None), &v, 4096, Duration::ZERO)
            .unwrap();
        assert!(f.on_heartbeat(Epoch(1), Duration::from_secs(1)).is_ok());
        assert!(f.tick(Duration::from_secs(3)).is_ok());
        assert!(matches!(f.tick(Duration::from_secs(4)), Err(End::Retry(_))));
        assert!(matches!(
            f.on_heartbeat(Epoch(0), Duration::from_secs(4)),
            Err(End::Halt(HaltReason::EpochRegression { .. }))
        ));
        assert!(matches!(
            f.on_heartbeat(Epoch(7), Duration::from_secs(4)),
            Err(End::Retry(_))
        ));
        assert!(f.on_checkpoint(0, Duration::from_secs(4)).is_ok());
        assert!(matches!(
            f.on_checkpoint(3, Duration::from_secs(4)),
            Err(End::Halt(HaltReason::Gap {
                expected: CommitId(1),
                got: CommitId(3)
            }))
        ));
    }
}
