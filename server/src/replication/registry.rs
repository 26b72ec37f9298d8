//! The primary's registry of connected replicas — the edge around two pieces of the pure core: one
//! [`Stream`] per replica (what to send, lag) and the
//! [`Quorum`] (synchronous commits). It holds the one clock of the
//! primary's side (`origin`), answers waiting writes, and runs the thread that passes deadlines to the quorum.
//! It does not know the node: the node holds it, not the other way round.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aerodb_replication::core::{
    primary::{Lag, Stream},
    quorum::{Admission, AdmissionDecision, Quorum, Settled, SyncWait},
};
use aerodb_wal::{CommitId, Epoch};
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use crate::error::{ApiError, ApiResult, Code};

/// Apply-lag samples kept for benchmarks and status (the newest ones).
const LAG_SAMPLES: usize = 1 << 16;

/// What a synchronous write's acknowledgement is told: `Ok` once enough replicas flushed it, or why it is
/// unconfirmed (it is durable here either way).
pub type SyncDone = Box<dyn FnOnce(Result<(), Unconfirmed>) + Send>;

/// A write appended and durable on the primary whose replicas did not confirm it in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unconfirmed {
    /// Replicas that had flushed it.
    pub flushed_by: usize,
    /// Replicas connected.
    pub connected: usize,
    /// Replicas required.
    pub required: usize,
}

impl std::fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "only {} of the {} required replicas confirmed it in time ({} connected)",
            self.flushed_by, self.required, self.connected
        )
    }
}

impl Unconfirmed {
    /// The client's answer for the write given CommitIds `first..=last`.
    #[must_use]
    pub fn error(&self, first: CommitId, last: CommitId) -> ApiError {
        ApiError::outcome_unknown(first, last, format_args!("is durable on this node but {self}"))
    }
}

/// A write held by the quorum: appended and waiting for acks, or parked before its append.
enum Token {
    Settle(SyncDone),
    Admit(oneshot::Sender<AdmissionDecision>),
}

impl Token {
    fn settle(self, s: Settled) {
        match (self, s) {
            (Token::Settle(done), Settled::Confirmed) => done(Ok(())),
            (
                Token::Settle(done),
                Settled::Unconfirmed {
                    flushed_by,
                    connected,
                    required,
                    ..
                },
            ) => done(Err(Unconfirmed {
                flushed_by,
                connected,
                required,
            })),
            (Token::Admit(_), _) => debug_assert!(false, "a parked write is admitted, not settled"),
        }
    }

    fn admit(self, d: AdmissionDecision) {
        if let Token::Admit(tx) = self {
            let _ = tx.send(d);
        }
    }
}

/// Per-replica lag, as the primary reports it: a plain snapshot for status and metrics.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReplicaLag {
    /// The replica's node id.
    pub node_id: String,
    /// Its address.
    pub peer: String,
    /// CommitIds it acknowledged as received, durable and applied.
    pub written: u64,
    /// Durable.
    pub flushed: u64,
    /// Applied (visible to reads).
    pub applied: u64,
    /// Records the primary holds beyond what the replica applied.
    pub lag_records: u64,
    /// Bytes of frames sent and not yet acknowledged as applied.
    pub lag_bytes: u64,
    /// How long the oldest unacknowledged batch has waited (0 when caught up).
    pub lag_ms: u64,
    /// How long the stream has been up.
    pub connected_ms: u64,
}

struct Conn {
    node_id: String,
    peer: String,
    stream: Stream,
}

struct Registry {
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
    quorum: Quorum<Token>,
    /// Measured apply lags (send of a batch to the acknowledgement that it was applied), newest last.
    lag_samples: VecDeque<Duration>,
    /// Whether synchronous writes were blocked at the last change (to log transitions once).
    blocked: bool,
}

/// The primary's registry of connected replicas; also where synchronous commits wait.
pub struct Replicas {
    reg: Mutex<Registry>,
    origin: Instant,
    tip: watch::Sender<u64>,
    /// Replicas that must flush a write before it is acknowledged.
    pub sync_replicas: usize,
    /// Wakes the thread that passes deadlines to the quorum (started with the first held write).
    expiry: Condvar,
    expiry_started: std::sync::Once,
    /// Replica hellos that claimed a newer term without proof (refused).
    pub unproven_epoch_claims: AtomicU64,
    /// Writes refused before their append for want of replicas.
    pub sync_refused: AtomicU64,
    /// Writes appended whose replicas did not confirm them in time.
    pub sync_unconfirmed: AtomicU64,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replicas(sync {})", self.sync_replicas)
    }
}

impl Replicas {
    /// A registry; `tip` is the applied CommitId now.
    #[must_use]
    pub fn new(tip: u64, sync_replicas: usize, sync_wait: crate::config::SyncWait) -> Self {
        let mode = match sync_wait {
            crate::config::SyncWait::Block => SyncWait::Block,
            crate::config::SyncWait::Fail => SyncWait::Fail,
        };
        Self {
            reg: Mutex::new(Registry {
                next_id: 0,
                conns: BTreeMap::new(),
                quorum: Quorum::new(sync_replicas, mode),
                lag_samples: VecDeque::new(),
                blocked: sync_replicas > 0,
            }),
            origin: Instant::now(),
            tip: watch::channel(tip).0,
            sync_replicas,
            expiry: Condvar::new(),
            expiry_started: std::sync::Once::new(),
            unproven_epoch_claims: AtomicU64::new(0),
            sync_refused: AtomicU64::new(0),
            sync_unconfirmed: AtomicU64::new(0),
        }
    }

    /// The time the core is told: since this registry was made (the primary side's one clock).
    #[must_use]
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// `at` (a time from [`Self::now`]) as an [`Instant`], for timers.
    #[must_use]
    pub fn instant(&self, at: Duration) -> Instant {
        self.origin + at
    }

    /// Records are applied up to `commit`: wakes the streams.
    pub fn published(&self, commit: u64) {
        self.tip.send_if_modified(|t| {
            let newer = commit > *t;
            *t = (*t).max(commit);
            newer
        });
    }

    /// Wakes the streams without new records (a checkpoint was signed: send it now).
    pub fn wake(&self) {
        self.tip.send_modify(|_| {});
    }

    /// A receiver woken whenever records are published.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tip.subscribe()
    }

    /// Connected replicas.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.reg.lock().conns.len()
    }

    /// Whether synchronous writes are blocked (fewer than `sync_replicas` connected).
    #[must_use]
    pub fn write_block_active(&self) -> bool {
        self.reg.lock().quorum.blocked()
    }

    /// Registers a replica whose stream starts at `from`; parked writes go ahead once enough are connected.
    pub fn register(&self, node_id: String, peer: String, from: CommitId) -> u64 {
        let now = self.now();
        let mut r = self.reg.lock();
        r.next_id += 1;
        let id = r.next_id;
        r.conns.insert(
            id,
            Conn {
                node_id,
                peer,
                stream: Stream::new(from, now),
            },
        );
        let go = r.quorum.connect(id);
        note_block_state(&mut r);
        drop(r);
        for (t, d) in go {
            t.admit(d);
        }
        id
    }

    /// Forgets a replica (its stream ended).
    pub fn unregister(&self, id: u64) {
        let mut r = self.reg.lock();
        r.conns.remove(&id);
        let settled = r.quorum.disconnect(id);
        note_block_state(&mut r);
        drop(r);
        self.settle(settled);
    }

    fn settle(&self, settled: Vec<(Token, Settled)>) {
        for (t, s) in settled {
            if matches!(s, Settled::Unconfirmed { .. }) {
                self.sync_unconfirmed.fetch_add(1, Ordering::Relaxed);
            }
            t.settle(s);
        }
    }

    /// Runs `f` on replica `id`'s stream state (`None` once it is forgotten).
    pub fn with_stream<T>(&self, id: u64, f: impl FnOnce(&mut Stream) -> T) -> Option<T> {
        self.reg.lock().conns.get_mut(&id).map(|c| f(&mut c.stream))
    }

    /// An ack from replica `id`.
    pub fn acked(&self, id: u64, written: u64, flushed: u64, applied: u64) {
        let now = self.now();
        let mut r = self.reg.lock();
        let Some(c) = r.conns.get_mut(&id) else {
            return;
        };
        let lags = c
            .stream
            .on_ack(CommitId(written), CommitId(flushed), CommitId(applied), now);
        for l in lags {
            if r.lag_samples.len() == LAG_SAMPLES {
                r.lag_samples.pop_front();
            }
            r.lag_samples.push_back(l);
        }
        let flushed = r.conns.get(&id).map_or(CommitId(0), |c| c.stream.flushed());
        let settled = r.quorum.ack(id, flushed);
        drop(r);
        // Synchronous writes now flushed by enough replicas are answered here, on the stream's task.
        self.settle(settled);
    }

    /// The apply-lag samples measured so far (oldest first), and clears them.
    pub fn take_lag_samples(&self) -> Vec<Duration> {
        self.reg.lock().lag_samples.drain(..).collect()
    }

    /// Per-replica positions and lag against the primary's applied CommitId `tip`.
    #[must_use]
    pub fn lags(&self, tip: u64) -> Vec<ReplicaLag> {
        let now = self.now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.reg
            .lock()
            .conns
            .values()
            .map(|c| {
                let Lag {
                    written,
                    flushed,
                    applied,
                    records,
                    bytes,
                    oldest,
                    connected,
                } = c.stream.lag(CommitId(tip), now);
                ReplicaLag {
                    node_id: c.node_id.clone(),
                    peer: c.peer.clone(),
                    written: written.0,
                    flushed: flushed.0,
                    applied: applied.0,
                    lag_records: records,
                    lag_bytes: bytes,
                    lag_ms: ms(oldest),
                    connected_ms: ms(connected),
                }
            })
            .collect()
    }

    /// Before a synchronous write is appended: `Ok` when enough replicas are connected; otherwise refused at
    /// once (`--sync-wait fail`) or after waiting up to `timeout` for them (`block`). A refusal means nothing was
    /// written.
    pub async fn admit(self: &Arc<Self>, timeout: Duration) -> ApiResult<()> {
        if self.sync_replicas == 0 {
            return Ok(());
        }
        let rx = {
            let mut r = self.reg.lock();
            match r.quorum.admit() {
                Admission::Go => return Ok(()),
                Admission::Refuse { connected, required } => {
                    drop(r);
                    return Err(self.refused(connected, required, None));
                }
                Admission::Wait => {
                    let (tx, rx) = oneshot::channel();
                    let deadline = self.now() + timeout;
                    r.quorum.wait_admission(Token::Admit(tx), deadline);
                    rx
                }
            }
        };
        self.wake_expiry();
        match rx.await {
            Ok(AdmissionDecision::Go) => Ok(()),
            Ok(AdmissionDecision::Refuse { connected, required }) => {
                Err(self.refused(connected, required, Some(timeout)))
            }
            Err(_) => Err(ApiError::new(Code::Unavailable, "the node is shutting down")),
        }
    }

    fn refused(&self, connected: usize, required: usize, waited: Option<Duration>) -> ApiError {
        self.sync_refused.fetch_add(1, Ordering::Relaxed);
        let waited = waited.map_or_else(String::new, |w| format!(" after waiting {} ms", w.as_millis()));
        ApiError::new(
            Code::SyncReplicasUnavailable,
            format!(
                "{connected} of the {required} required replicas are connected{waited}; the write was refused \
                 before it was appended (nothing was written; retrying is safe)"
            ),
        )
    }

    /// After a synchronous write was appended (its last CommitId `commit`): calls `done` with `Ok` once
    /// `sync_replicas` replicas flushed it, or with why not by `timeout`. `done` runs on whichever thread settles
    /// the wait (the caller's, a replication stream's, or the expiry thread), so it must not block.
    pub fn when_flushed(self: &Arc<Self>, commit: u64, timeout: Duration, done: SyncDone) {
        if self.sync_replicas == 0 {
            return done(Ok(()));
        }
        let deadline = self.now() + timeout;
        let settled = self
            .reg
            .lock()
            .quorum
            .register(CommitId(commit), deadline, Token::Settle(done));
        match settled {
            Some(s) => self.settle(vec![s]),
            None => self.wake_expiry(),
        }
    }

    /// [`Self::when_flushed`], blocking until it is settled (call off the async runtime).
    pub fn wait_flushed(self: &Arc<Self>, commit: u64, timeout: Duration) -> Result<(), Unconfirmed> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.when_flushed(
            commit,
            timeout,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(Unconfirmed {
            flushed_by: 0,
            connected: 0,
            required: self.sync_replicas,
        }))
    }

    fn wake_expiry(self: &Arc<Self>) {
        self.expiry_started.call_once(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("aerodb-sync-expiry".into())
                .spawn(move || {
                    while let Some(replicas) = weak.upgrade() {
                        replicas.expire_due();
                    }
                });
            if let Err(e) = spawned {
                // Without it a wait past its deadline is only answered by the request's own timeout.
                tracing::error!("spawning the synchronous-commit expiry thread: {e}");
            }
        });
        self.expiry.notify_one();
    }

    /// Passes the time to the quorum (settling and refusing what is due), then sleeps until the next deadline
    /// (at most a second, or until a new write is held).
    fn expire_due(&self) {
        let mut r = self.reg.lock();
        let (settled, refused) = r.quorum.tick(self.now());
        if settled.is_empty() && refused.is_empty() {
            let next = r.quorum.next_deadline().map(|d| self.instant(d));
            let _ = self.expiry.wait_until(
                &mut r,
                next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1)),
            );
            return;
        }
        drop(r);
        self.settle(settled);
        for (t, d) in refused {
            t.admit(d);
        }
    }
}

/// Logs when synchronous writes become blocked and when they recover.
fn note_block_state(r: &mut Registry) {
    let blocked = r.quorum.blocked();
    if r.quorum.required() == 0 || blocked == r.blocked {
        return;
    }
    r.blocked = blocked;
    if blocked {
        tracing::warn!(
            connected = r.conns.len(),
            needed = r.quorum.required(),
            "synchronous writes blocked: too few replicas connected"
        );
    } else {
        tracing::info!(
            connected = r.conns.len(),
            "synchronous writes recovered: enough replicas connected again"
        );
    }
}

/// What the replica knows of its stream, for HA status.
#[derive(Debug, Default, Clone)]
pub struct FollowerStatus {
    /// Whether a stream to the primary is up.
    pub connected: bool,
    /// The primary's applied CommitId, as last reported.
    pub primary_commit_id: u64,
    /// The primary's advertised REST URL (where writes go), when it has one.
    pub leader_url: String,
    /// The primary's node id.
    pub leader_id: String,
    /// The followed primary's proven epoch.
    pub epoch: Epoch,
    /// Why the last stream ended or could not start.
    pub last_error: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::config::SyncWait as Mode;

    /// A waiter whose answer lands in the returned receiver.
    fn waiter() -> (SyncDone, std::sync::mpsc::Receiver<Result<(), Unconfirmed>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    const LONG: Duration = Duration::from_secs(60);

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_write_is_confirmed_only_once_k_replicas_flushed_it() {
        let r = Arc::new(Replicas::new(0, 2, Mode::Block));
        let a = r.register("a".into(), "p".into(), CommitId(1));
        let b = r.register("b".into(), "p".into(), CommitId(1));
        let (done7, rx7) = waiter();
        let (done9, rx9) = waiter();
        r.when_flushed(7, LONG, done7);
        r.when_flushed(9, LONG, done9);
        r.acked(a, 9, 9, 9);
        assert!(rx7.try_recv().is_err(), "one of two replicas is not enough");
        r.acked(b, 8, 8, 8);
        assert!(rx7.try_recv().unwrap().is_ok());
        assert!(rx9.try_recv().is_err(), "replica b has not flushed 9");
        r.acked(b, 9, 9, 9);
        assert!(rx9.try_recv().unwrap().is_ok());
        assert!(r.wait_flushed(9, LONG).is_ok());
    }

    #[test]
    fn fail_mode_refuses_before_the_append() {
        let r = Arc::new(Replicas::new(0, 1, Mode::Fail));
        let e = rt().block_on(r.admit(LONG)).unwrap_err();
        assert_eq!(e.code, Code::SyncReplicasUnavailable, "{}", e.message);
        assert!(e.message.contains("nothing was written"), "{}", e.message);
        let id = r.register("a".into(), "p".into(), CommitId(1));
        assert!(rt().block_on(r.admit(LONG)).is_ok());
        let (done, rx) = waiter();
        r.when_flushed(2, LONG, done);
        assert!(rx.try_recv().is_err(), "waits while the replica is connected");
        r.unregister(id);
        let u = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(u.required, 1);
        assert_eq!(u.error(CommitId(2), CommitId(2)).code, Code::OutcomeUnknown);
    }

    #[test]
    fn block_mode_waits_before_the_append_then_refuses_and_settles_unconfirmed_at_the_deadline() {
        let r = Arc::new(Replicas::new(0, 1, Mode::Block));
        let started = Instant::now();
        let e = rt().block_on(r.admit(Duration::from_millis(100))).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(e.code, Code::SyncReplicasUnavailable);
        // A replica connecting releases a parked write.
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            r2.register("a".into(), "p".into(), CommitId(1))
        });
        assert!(rt().block_on(r.admit(LONG)).is_ok());
        t.join().unwrap();
        let started = Instant::now();
        let u = r.wait_flushed(3, Duration::from_millis(150)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!((u.flushed_by, u.connected), (0, 1));
    }
}
