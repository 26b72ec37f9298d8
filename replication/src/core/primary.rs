//! The primary's side of one replication stream, as a pure state machine: whether to accept a replica's hello
//! (and what its epoch claim means), then, at every turn, what to send next — frames from the replica's next
//! CommitId, a checkpoint once everything it covers was sent, a heartbeat when idle — or why to stop (no longer
//! primary, silence). The edge reads frames from the log and moves bytes; the time is passed in.

use std::{collections::VecDeque, time::Duration};

use aerodb_engine::VerifierKey;
use aerodb_wal::{CommitId, Epoch};

use super::authority::{judge, Claim};

/// A heartbeat when the log is idle this long.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A replica silent this long is forgotten: longer than the replica's own limit
/// ([`super::follower::SILENCE`]), so a replica busy applying a large batch is not cut off.
pub const SILENCE: Duration = Duration::from_secs(5);

/// A replica's hello, as the primary needs it.
#[derive(Clone, Debug)]
pub struct Hello<'a> {
    /// The replica's node id.
    pub node_id: &'a str,
    /// Its tip CommitId.
    pub commit_id: CommitId,
    /// The highest epoch it says it has seen.
    pub highest_epoch: Epoch,
    /// Its newest checkpoint note (proof of the highest term it knows).
    pub epoch_proof: Option<&'a str>,
}

/// The decision on a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloDecision {
    /// Stream the log from `from`.
    Accept {
        /// The first CommitId to send.
        from: CommitId,
    },
    /// This node is not a writable primary.
    NotPrimary,
    /// The replica claims a newer term without proof: refused, logged and counted; this node keeps serving.
    Unproven {
        /// The claim.
        claimed: Epoch,
        /// What its proof established, if anything.
        proven: Option<Epoch>,
    },
    /// The replica proved a newer term: this primary's term is over (halt, `AuthorityAmbiguity`).
    Superseded {
        /// The proven epoch.
        epoch: Epoch,
    },
}

/// Judges a replica's hello on a node whose primary epoch is `own` (`None`: not a writable primary).
#[must_use]
pub fn on_hello(own: Option<Epoch>, hello: &Hello<'_>, key: &VerifierKey) -> HelloDecision {
    let Some(own) = own else {
        return HelloDecision::NotPrimary;
    };
    match judge(own, hello.highest_epoch, hello.epoch_proof, key) {
        Claim::NotNewer => HelloDecision::Accept {
            from: hello.commit_id.next(),
        },
        Claim::Proven { epoch } => HelloDecision::Superseded { epoch },
        Claim::Unproven { claimed, proven } => HelloDecision::Unproven { claimed, proven },
    }
}

/// What the primary sees when a stream asks what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The applied (and durable) tip: frames up to it may be sent.
    pub tip: CommitId,
    /// The primary's checkpoint at index [`Stream::checkpoints_sent`] of its checkpoint log, if it has one:
    /// (size, epoch). Checkpoints go out in log order, every one, so a replica's log is a copy of the primary's.
    pub checkpoint: Option<(u64, Epoch)>,
    /// Whether this node is still the writable primary.
    pub may_write: bool,
}

/// What to do next on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send frames from this CommitId (then report them with [`Stream::frames_sent`]).
    Frames {
        /// The first CommitId to send.
        from: CommitId,
    },
    /// Send the checkpoint the view showed (then [`Stream::checkpoint_sent`]).
    Checkpoint,
    /// Send a heartbeat (then [`Stream::heartbeat_sent`]).
    Heartbeat,
    /// Nothing to do until new records are applied or `until`.
    Idle {
        /// When to ask again at the latest.
        until: Duration,
    },
    /// End the stream.
    End(String),
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    last: CommitId,
    bytes: u64,
    at: Duration,
}

/// Lag of one replica (R-5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Received.
    pub written: CommitId,
    /// Durable.
    pub flushed: CommitId,
    /// Applied.
    pub applied: CommitId,
    /// Records the primary holds beyond what the replica applied.
    pub records: u64,
    /// Bytes sent and not yet acknowledged as applied.
    pub bytes: u64,
    /// How long the oldest unacknowledged batch has waited.
    pub oldest: Duration,
    /// How long the stream has been up.
    pub connected: Duration,
}

/// One replica's stream, as the primary drives it.
#[derive(Clone, Debug)]
pub struct Stream {
    next: CommitId,
    checkpoints_sent: usize,
    connected_at: Duration,
    last_heard: Duration,
    last_sent: Duration,
    written: CommitId,
    flushed: CommitId,
    applied: CommitId,
    sent: VecDeque<Sent>,
}

impl Stream {
    /// A stream accepted at `now`, sending from `from`.
    #[must_use]
    pub fn new(from: CommitId, now: Duration) -> Self {
        Self {
            next: from,
            checkpoints_sent: 0,
            connected_at: now,
            last_heard: now,
            last_sent: now,
            written: CommitId(0),
            flushed: CommitId(0),
            applied: CommitId(0),
            sent: VecDeque::new(),
        }
    }

    /// The next CommitId to send.
    #[must_use]
    pub fn next_commit(&self) -> CommitId {
        self.next
    }

    /// How many of the primary's checkpoints (in log order) went out: the index of the next one to send.
    #[must_use]
    pub fn checkpoints_sent(&self) -> usize {
        self.checkpoints_sent
    }

    /// What to do now.
    #[must_use]
    pub fn poll(&self, view: &View, now: Duration) -> Next {
        if !view.may_write {
            return Next::End("this node is no longer the primary".into());
        }
        let silent = now.saturating_sub(self.last_heard);
        if silent > SILENCE {
            return Next::End(format!(
                "no acknowledgement from the replica for {} ms",
                silent.as_millis()
            ));
        }
        // The next checkpoint once the replica has been sent everything it covers (a term proof over a tree
        // already sent goes out at once).
        if let Some(cp) = view.checkpoint {
            if cp.0 < self.next.0 {
                return Next::Checkpoint;
            }
        }
        if self.next <= view.tip {
            return Next::Frames { from: self.next };
        }
        let due = self.last_sent + HEARTBEAT;
        if now >= due {
            return Next::Heartbeat;
        }
        Next::Idle { until: due }
    }

    /// Frames up to `last` (`bytes` of them) went out at `now`.
    pub fn frames_sent(&mut self, last: CommitId, bytes: u64, now: Duration) {
        assert!(
            last >= self.next,
            "frames sent end at {last:?}, before the next CommitId {:?}",
            self.next
        );
        self.next = last.next();
        self.last_sent = now;
        self.sent.push_back(Sent { last, bytes, at: now });
    }

    /// The checkpoint the view showed went out.
    pub fn checkpoint_sent(&mut self, now: Duration) {
        self.checkpoints_sent += 1;
        self.last_sent = now;
    }

    /// A heartbeat went out.
    pub fn heartbeat_sent(&mut self, now: Duration) {
        self.last_sent = now;
    }

    /// An ack arrived (positions never go back). Returns the apply lags of the batches it completes.
    pub fn on_ack(
        &mut self,
        written: CommitId,
        flushed: CommitId,
        applied: CommitId,
        now: Duration,
    ) -> Vec<Duration> {
        self.last_heard = now;
        self.written = self.written.max(written);
        self.flushed = self.flushed.max(flushed);
        self.applied = self.applied.max(applied);
        let mut lags = Vec::new();
        while self.sent.front().is_some_and(|s| s.last <= self.applied) {
            if let Some(s) = self.sent.pop_front() {
                lags.push(now.saturating_sub(s.at));
            }
        }
        lags
    }

    /// The flushed position.
    #[must_use]
    pub fn flushed(&self) -> CommitId {
        self.flushed
    }

    /// Lag against the primary's `tip` at `now`.
    #[must_use]
    pub fn lag(&self, tip: CommitId, now: Duration) -> Lag {
        Lag {
            written: self.written,
            flushed: self.flushed,
            applied: self.applied,
            records: tip.0.saturating_sub(self.applied.0),
            bytes: self.sent.iter().map(|s| s.bytes).sum(),
            oldest: self
                .sent
                .front()
                .map_or(Duration::ZERO, |s| now.saturating_sub(s.at)),
            connected: now.saturating_sub(self.connected_at),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use aerodb_engine::{Checkpoint, SigningKey};

    use super::*;

    fn view(tip: u64, cp: Option<(u64, u64)>) -> View {
        View {
            tip: CommitId(tip),
            checkpoint: cp.map(|(s, e)| (s, Epoch(e))),
            may_write: true,
        }
    }

    #[test]
    fn a_forged_epoch_claim_is_refused_and_a_proven_one_supersedes() {
        let key = SigningKey::from_seed("log", [1; 32]).unwrap();
        let v = key.verifier();
        let hello = |claim, proof| Hello {
            node_id: "r",
            commit_id: CommitId(4),
            highest_epoch: Epoch(claim),
            epoch_proof: proof,
        };
        assert_eq!(
            on_hello(Some(Epoch(1)), &hello(1, None), &v),
            HelloDecision::Accept { from: CommitId(5) }
        );
        for claim in [1 << 63, u64::MAX] {
            assert!(matches!(
                on_hello(Some(Epoch(1)), &hello(claim, None), &v),
                HelloDecision::Unproven { .. }
            ));
        }
        assert_eq!(on_hello(None, &hello(1, None), &v), HelloDecision::NotPrimary);
        let note = Checkpoint {
            origin: "log".into(),
            size: 4,
            root: [0; 32],
            epoch: Epoch(2),
        }
        .sign(&key)
        .note;
        assert_eq!(
            on_hello(Some(Epoch(1)), &hello(2, Some(&note)), &v),
            HelloDecision::Superseded { epoch: Epoch(2) }
        );
    }

    #[test]
    fn frames_then_checkpoints_then_heartbeats() {
        let t0 = Duration::ZERO;
        let mut s = Stream::new(CommitId(1), t0);
        assert_eq!(
            s.poll(&view(3, Some((2, 1))), t0),
            Next::Frames { from: CommitId(1) }
        );
        s.frames_sent(CommitId(3), 300, t0);
        assert_eq!(s.poll(&view(3, Some((2, 1))), t0), Next::Checkpoint);
        s.checkpoint_sent(t0);
        assert_eq!(s.checkpoints_sent(), 1);
        assert_eq!(s.poll(&view(3, None), t0), Next::Idle { until: HEARTBEAT });
        // The same tree signed in a newer term is the next checkpoint: it goes out too.
        assert_eq!(s.poll(&view(3, Some((2, 2))), t0), Next::Checkpoint);
        s.checkpoint_sent(t0);
        // A checkpoint of records not yet sent waits for them.
        assert_eq!(
            s.poll(&view(5, Some((5, 2))), t0),
            Next::Frames { from: CommitId(4) }
        );
        assert_eq!(s.poll(&view(3, None), HEARTBEAT), Next::Heartbeat);
        let lags = s.on_ack(CommitId(3), CommitId(3), CommitId(3), Duration::from_millis(7));
        assert_eq!(lags, vec![Duration::from_millis(7)]);
        assert_eq!(s.lag(CommitId(5), Duration::from_millis(7)).records, 2);
        assert!(matches!(
            s.poll(&view(3, None), Duration::from_secs(6)),
            Next::End(_)
        ));
        let mut stopped = view(3, None);
        stopped.may_write = false;
        assert!(matches!(s.poll(&stopped, Duration::from_millis(8)), Next::End(_)));
    }
}
