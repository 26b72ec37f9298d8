//! The synchronous-commit quorum as a pure state machine: the primary's view of how far each connected
//! replica has flushed, and the writes waiting for `k` of them. Events go in (`connect`, `ack`, `disconnect`,
//! `tick` with the time), decisions come out; the edge carries them out (answers clients, arms a timer for
//! [`Quorum::next_deadline`]).
//!
//! Two questions are answered, at two different moments, because a refused write must never be in the log:
//! 1. **Before a write is appended** — [`Quorum::admit`]: are `k` replicas connected? If not, `fail` mode refuses
//!    at once and `block` mode parks the write (nothing appended) until enough replicas connect or its deadline
//!    passes ([`Quorum::wait_admission`]); a write refused here was never written.
//! 2. **After it was appended** — [`Quorum::register`]: the write is durable here; it is confirmed once `k`
//!    replicas acknowledged it as flushed. If that does not happen by its deadline (or, in `fail` mode, enough
//!    replicas leave), it is *unconfirmed*: durable on this node, not known to be on `k` replicas. That is not a
//!    failure — the client is told so with the CommitId ([`Settled::Unconfirmed`]), never "not written".
//!
//! Invariants (checked in `tests`): a write is confirmed only when at least `k` distinct connected replicas
//! reported a flushed position at or above its CommitId; every registered write is settled exactly once.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use aerodb_wal::CommitId;

/// How a write that cannot get its `k` replicas right now is treated (`--sync-wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncWait {
    /// Wait (bounded by the write's deadline) for enough replicas to connect before appending.
    #[default]
    Block,
    /// Refuse at once.
    Fail,
}

/// A connected replica, as the quorum knows it.
pub type ReplicaId = u64;

/// The answer to "may this write be appended now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Append it.
    Go,
    /// Do not append: too few replicas connected (`fail` mode, or a `block` wait that ran out).
    Refuse {
        /// Replicas connected.
        connected: usize,
        /// Replicas required.
        required: usize,
    },
    /// `block` mode: park it with [`Quorum::wait_admission`] until enough replicas connect.
    Wait,
}

/// How a registered (appended) write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// `k` replicas flushed it.
    Confirmed,
    /// Durable on this node; not confirmed by `k` replicas in time. The outcome for the cluster is unknown.
    Unconfirmed {
        /// The write's last CommitId.
        commit_id: CommitId,
        /// Replicas that had flushed it.
        flushed_by: usize,
        /// Replicas connected.
        connected: usize,
        /// Replicas required.
        required: usize,
    },
}

/// A decision for a parked (not yet appended) write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionDecision {
    /// Enough replicas connected: append it now.
    Go,
    /// Its deadline passed with too few replicas: refuse it (nothing was written).
    Refuse {
        /// Replicas connected.
        connected: usize,
        /// Replicas required.
        required: usize,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Position {
    flushed: CommitId,
}

#[derive(Debug)]
struct Waiter<W> {
    commit: CommitId,
    deadline: Duration,
    token: W,
}

/// What [`Quorum::tick`] found due: appended writes settled (unconfirmed), parked writes refused.
pub type Expired<W> = (Vec<(W, Settled)>, Vec<(W, AdmissionDecision)>);

/// The quorum: replicas' flushed positions, appended writes waiting for them, and writes parked before their
/// append. `W` is the edge's handle for a write (whatever it needs to answer the client).
#[derive(Debug)]
pub struct Quorum<W> {
    required: usize,
    mode: SyncWait,
    replicas: BTreeMap<ReplicaId, Position>,
    /// Appended writes, ordered by CommitId.
    waiting: VecDeque<Waiter<W>>,
    /// Writes parked before their append (block mode), in arrival order.
    parked: VecDeque<(Duration, W)>,
}

impl<W> Quorum<W> {
    /// A quorum of `required` replicas (0: asynchronous replication, every write is confirmed at once).
    #[must_use]
    pub fn new(required: usize, mode: SyncWait) -> Self {
        Self {
            required,
            mode,
            replicas: BTreeMap::new(),
            waiting: VecDeque::new(),
            parked: VecDeque::new(),
        }
    }

    /// Replicas required (`--sync-replicas`).
    #[must_use]
    pub fn required(&self) -> usize {
        self.required
    }

    /// Replicas connected.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.replicas.len()
    }

    /// Whether synchronous writes are blocked now (fewer than `required` replicas connected).
    #[must_use]
    pub fn blocked(&self) -> bool {
        self.required > 0 && self.replicas.len() < self.required
    }

    /// The highest CommitId that at least `required` replicas flushed (`CommitId(0)` when fewer are connected).
    #[must_use]
    pub fn sync_point(&self) -> CommitId {
        if self.required == 0 || self.replicas.len() < self.required {
            return CommitId(0);
        }
        let mut flushed: Vec<CommitId> = self.replicas.values().map(|p| p.flushed).collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        flushed[self.required - 1]
    }

    /// Before appending: may a synchronous write go ahead?
    #[must_use]
    pub fn admit(&self) -> Admission {
        if !self.blocked() {
            return Admission::Go;
        }
        match self.mode {
            SyncWait::Fail => Admission::Refuse {
                connected: self.replicas.len(),
                required: self.required,
            },
            SyncWait::Block => Admission::Wait,
        }
    }

    /// Parks a write that [`Self::admit`] told to wait, until `deadline`. It is released by a later
    /// [`Self::connect`] (go) or [`Self::tick`] (refused).
    pub fn wait_admission(&mut self, token: W, deadline: Duration) {
        self.parked.push_back((deadline, token));
    }

    /// After appending a write whose last CommitId is `commit`: returns `Some(Confirmed)` if it is already
    /// confirmed (or no replicas are required), else keeps it until `deadline` and returns `None` with the token
    /// held. In `fail` mode with too few replicas connected right now it is settled unconfirmed at once.
    pub fn register(&mut self, commit: CommitId, deadline: Duration, token: W) -> Option<(W, Settled)> {
        if self.required == 0 || self.sync_point() >= commit {
            return Some((token, Settled::Confirmed));
        }
        if self.mode == SyncWait::Fail && self.blocked() {
            let s = self.unconfirmed(commit);
            return Some((token, s));
        }
        // Kept in CommitId order: concurrent committers may register their batches in either order.
        let at = self.waiting.partition_point(|w| w.commit <= commit);
        self.waiting.insert(
            at,
            Waiter {
                commit,
                deadline,
                token,
            },
        );
        None
    }

    fn unconfirmed(&self, commit: CommitId) -> Settled {
        Settled::Unconfirmed {
            commit_id: commit,
            flushed_by: self.replicas.values().filter(|p| p.flushed >= commit).count(),
            connected: self.replicas.len(),
            required: self.required,
        }
    }

    /// A replica connected. Parked writes go ahead once enough are connected.
    pub fn connect(&mut self, id: ReplicaId) -> Vec<(W, AdmissionDecision)> {
        self.replicas.entry(id).or_default();
        if self.blocked() {
            return Vec::new();
        }
        self.parked
            .drain(..)
            .map(|(_, w)| (w, AdmissionDecision::Go))
            .collect()
    }

    /// A replica acknowledged `flushed` (positions never go back). Returns the writes now confirmed.
    pub fn ack(&mut self, id: ReplicaId, flushed: CommitId) -> Vec<(W, Settled)> {
        let Some(p) = self.replicas.get_mut(&id) else {
            return Vec::new(); // an ack from a stream already forgotten counts for nothing
        };
        p.flushed = p.flushed.max(flushed);
        let point = self.sync_point();
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|w| w.commit <= point) {
            if let Some(w) = self.waiting.pop_front() {
                out.push((w.token, Settled::Confirmed));
            }
        }
        out
    }

    /// A replica disconnected (or was forgotten). In `fail` mode, appended writes still waiting are settled
    /// unconfirmed once too few replicas remain.
    pub fn disconnect(&mut self, id: ReplicaId) -> Vec<(W, Settled)> {
        self.replicas.remove(&id);
        if self.mode == SyncWait::Fail && self.blocked() {
            let waiting = std::mem::take(&mut self.waiting);
            return waiting
                .into_iter()
                .map(|w| {
                    let s = self.unconfirmed(w.commit);
                    (w.token, s)
                })
                .collect();
        }
        Vec::new()
    }

    /// The time is `now`: appended writes past their deadline are settled unconfirmed, parked writes past theirs
    /// are refused.
    pub fn tick(&mut self, now: Duration) -> Expired<W> {
        let mut settled = Vec::new();
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for w in std::mem::take(&mut self.waiting) {
            if w.deadline <= now {
                let s = self.unconfirmed(w.commit);
                settled.push((w.token, s));
            } else {
                keep.push_back(w);
            }
        }
        self.waiting = keep;
        let mut refused = Vec::new();
        let mut keep = VecDeque::with_capacity(self.parked.len());
        for (deadline, w) in std::mem::take(&mut self.parked) {
            if deadline <= now {
                refused.push((
                    w,
                    AdmissionDecision::Refuse {
                        connected: self.replicas.len(),
                        required: self.required,
                    },
                ));
            } else {
                keep.push_back((deadline, w));
            }
        }
        self.parked = keep;
        (settled, refused)
    }

    /// The earliest deadline of any write held (when the edge should call [`Self::tick`] next).
    #[must_use]
    pub fn next_deadline(&self) -> Option<Duration> {
        let a = self.waiting.iter().map(|w| w.deadline).min();
        let b = self.parked.iter().map(|(d, _)| *d).min();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes held (appended and waiting, parked).
    #[must_use]
    pub fn held(&self) -> (usize, usize) {
        (self.waiting.len(), self.parked.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn confirmed_only_once_k_replicas_flushed() {
        let mut q = Quorum::new(2, SyncWait::Block);
        assert_eq!(q.admit(), Admission::Wait);
        assert!(q.connect(1).is_empty());
        assert!(q.connect(2).is_empty());
        assert_eq!(q.admit(), Admission::Go);
        assert!(q.register(CommitId(7), 100 * MS, "w7").is_none());
        assert!(q.register(CommitId(9), 100 * MS, "w9").is_none());
        assert!(q.ack(1, CommitId(9)).is_empty(), "one of two is not enough");
        assert_eq!(q.ack(2, CommitId(8)), vec![("w7", Settled::Confirmed)]);
        assert_eq!(q.ack(2, CommitId(9)), vec![("w9", Settled::Confirmed)]);
        assert_eq!(
            q.register(CommitId(9), MS, "again"),
            Some(("again", Settled::Confirmed))
        );
    }

    #[test]
    fn fail_mode_refuses_before_the_append_and_settles_unconfirmed_after_it() {
        let mut q = Quorum::new(1, SyncWait::Fail);
        assert_eq!(
            q.admit(),
            Admission::Refuse {
                connected: 0,
                required: 1
            }
        );
        q.connect(5);
        assert_eq!(q.admit(), Admission::Go);
        assert!(q.register(CommitId(3), 100 * MS, "w").is_none());
        let out = q.disconnect(5);
        assert_eq!(
            out,
            vec![(
                "w",
                Settled::Unconfirmed {
                    commit_id: CommitId(3),
                    flushed_by: 0,
                    connected: 0,
                    required: 1
                }
            )]
        );
    }

    #[test]
    fn block_mode_parks_until_a_replica_connects_or_the_deadline() {
        let mut q = Quorum::new(1, SyncWait::Block);
        assert_eq!(q.admit(), Admission::Wait);
        q.wait_admission("a", 50 * MS);
        q.wait_admission("b", 10 * MS);
        assert_eq!(q.next_deadline(), Some(10 * MS));
        let (s, r) = q.tick(10 * MS);
        assert!(s.is_empty());
        assert_eq!(
            r,
            vec![(
                "b",
                AdmissionDecision::Refuse {
                    connected: 0,
                    required: 1
                }
            )]
        );
        assert_eq!(q.connect(1), vec![("a", AdmissionDecision::Go)]);
        assert_eq!(q.held(), (0, 0));
        // Appended, then no ack by its deadline: unconfirmed with the CommitId.
        assert!(q.register(CommitId(4), 30 * MS, "c").is_none());
        let (s, _) = q.tick(30 * MS);
        assert!(matches!(
            s.as_slice(),
            [(
                "c",
                Settled::Unconfirmed {
                    commit_id: CommitId(4),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn writes_registered_out_of_commit_order_are_confirmed_in_order() {
        let mut q = Quorum::new(1, SyncWait::Block);
        q.connect(1);
        assert!(q.register(CommitId(9), MS, "b").is_none());
        assert!(q.register(CommitId(5), MS, "a").is_none());
        assert_eq!(q.ack(1, CommitId(5)), vec![("a", Settled::Confirmed)]);
        assert_eq!(q.ack(1, CommitId(9)), vec![("b", Settled::Confirmed)]);
    }

    #[test]
    fn an_ack_from_a_forgotten_replica_counts_for_nothing() {
        let mut q = Quorum::new(1, SyncWait::Block);
        q.connect(1);
        q.disconnect(1);
        assert!(q.register(CommitId(1), MS, "w").is_none());
        assert!(q.ack(1, CommitId(5)).is_empty());
        assert_eq!(q.sync_point(), CommitId(0));
    }

    #[test]
    fn asynchronous_mode_confirms_at_once() {
        let mut q = Quorum::new(0, SyncWait::Fail);
        assert_eq!(q.admit(), Admission::Go);
        assert_eq!(q.register(CommitId(1), MS, 1), Some((1, Settled::Confirmed)));
    }
}
