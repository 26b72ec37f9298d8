//! Replication in the server (R-3..R-6).
//!
//! Primary side: the `aerodb.v1.Replication` gRPC service streams the log to each connected replica — frames
//! from the replica's tip exactly as stored (catch-up), then the live tail as records are applied — plus the
//! checkpoints the primary signs, and reads the replica's acknowledgements into [`Replicas`], the registry of
//! connected replicas, their positions and lag, which synchronous commits wait on.
//!
//! Replica side: [`follow`] keeps one stream open to the primary (reconnecting with backoff), checks the
//! handshake (same log key and segment size, the replica's tip is in the primary's history, no older epoch),
//! applies every batch through [`Applier`] and acknowledges it. Any violation halts the node: the role becomes
//! `ReplicationHalted` (persisted), an evidence file is written, and reads and writes stop.

use std::{
    collections::{BTreeMap, VecDeque},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use aerodb_engine::merkle::to_hex as hex;
use aerodb_proto::v1::{self as pb, primary_message::Msg as PMsg, replica_message::Msg as RMsg};
use aerodb_replication::{
    apply::{Applier, ApplyError},
    role::{HaltReason, Observation},
};
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::Action,
    config::SyncWait,
    error::{ApiError, ApiResult, Code},
    node::Node,
};

/// Bytes of frames per batch sent to a replica.
const BATCH_BYTES: usize = 1 << 20;
/// Up to this many records behind the tip, the primary reads the frames to send on the stream's own task.
const LIVE_TAIL_RECORDS: u64 = 256;
/// A replica applies the batches it has already received together, up to this many bytes.
const GATHER_BYTES: usize = 8 << 20;
/// A heartbeat when the log is idle this long.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// A stream with no message from the other side for this long is dead (a partition drops packets silently; TCP
/// alone would wait minutes): the replica reconnects, the primary forgets the replica.
const SILENCE: Duration = Duration::from_secs(3);
/// The primary's limit: longer than the replica's, so a replica busy applying a large batch is not cut off.
const PRIMARY_SILENCE: Duration = Duration::from_secs(5);
/// Apply-lag samples kept for benchmarks and status (the newest ones).
const LAG_SAMPLES: usize = 1 << 16;

/// One batch sent and not yet acknowledged as applied.
#[derive(Debug)]
struct Sent {
    last: u64,
    bytes: u64,
    at: Instant,
}

/// A connected replica, as the primary sees it.
#[derive(Debug)]
struct Conn {
    node_id: String,
    peer: String,
    connected: Instant,
    written: u64,
    flushed: u64,
    applied: u64,
    sent: VecDeque<Sent>,
    last_heard: Instant,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
    /// Measured apply lags (send of a batch to the acknowledgement that it was applied), newest last.
    lag_samples: VecDeque<Duration>,
    /// Whether synchronous writes were blocked at the last check (to report transitions once).
    blocked: bool,
    /// Writes waiting for enough replicas to flush them, in the order they registered.
    waiting: Vec<SyncWaiter>,
}

/// What a synchronous write's acknowledgement is told: `Ok` once enough replicas flushed it, or why not.
pub type SyncDone = Box<dyn FnOnce(ApiResult<()>) + Send>;

/// A write waiting for replicas.
struct SyncWaiter {
    commit: u64,
    deadline: Instant,
    timeout: Duration,
    done: SyncDone,
}

impl std::fmt::Debug for SyncWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncWaiter({})", self.commit)
    }
}

/// Per-replica lag, as the primary reports it.
#[derive(Clone, Debug, serde::Serialize)]
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

/// The primary's registry of connected replicas; also where synchronous commits wait.
#[derive(Debug)]
pub struct Replicas {
    reg: Mutex<Registry>,
    tip: watch::Sender<u64>,
    /// Replicas that must flush a write before it is acknowledged.
    pub sync_replicas: usize,
    sync_wait: SyncWait,
    /// Wakes the thread that fails synchronous writes whose wait timed out (started with the first wait).
    expiry: Condvar,
    expiry_started: std::sync::Once,
}

impl Replicas {
    /// A registry; `tip` is the applied CommitId now.
    #[must_use]
    pub fn new(tip: u64, sync_replicas: usize, sync_wait: SyncWait) -> Self {
        Self {
            reg: Mutex::new(Registry::default()),
            tip: watch::channel(tip).0,
            sync_replicas,
            sync_wait,
            expiry: Condvar::new(),
            expiry_started: std::sync::Once::new(),
        }
    }

    /// Records are applied up to `commit`: wakes the streams.
    pub fn published(&self, commit: u64) {
        self.tip.send_if_modified(|t| {
            let newer = commit > *t;
            *t = (*t).max(commit);
            newer
        });
    }

    /// Connected replicas.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.reg.lock().conns.len()
    }

    /// Whether synchronous writes are blocked (fewer than `sync_replicas` connected).
    #[must_use]
    pub fn write_block_active(&self) -> bool {
        self.sync_replicas > 0 && self.connected() < self.sync_replicas
    }

    fn register(&self, node_id: String, peer: String) -> u64 {
        let mut r = self.reg.lock();
        r.next_id += 1;
        let id = r.next_id;
        r.conns.insert(
            id,
            Conn {
                node_id,
                peer,
                connected: Instant::now(),
                written: 0,
                flushed: 0,
                applied: 0,
                sent: VecDeque::new(),
                last_heard: Instant::now(),
            },
        );
        self.note_block_state(&mut r);
        id
    }

    fn unregister(&self, id: u64) {
        let mut r = self.reg.lock();
        r.conns.remove(&id);
        self.note_block_state(&mut r);
        let connected = r.conns.len();
        let failed = if self.sync_wait == SyncWait::Fail && connected < self.sync_replicas {
            std::mem::take(&mut r.waiting)
        } else {
            Vec::new()
        };
        drop(r);
        for w in failed {
            let e = self.too_few(w.commit, connected);
            (w.done)(Err(e));
        }
    }

    /// The error for a synchronous write that cannot wait (`--sync-wait fail`) with `connected` replicas.
    fn too_few(&self, commit: u64, connected: usize) -> ApiError {
        ApiError::new(
            Code::SyncReplicasUnavailable,
            format!(
                "record {commit} is durable on the primary but not acknowledged: {connected} of the {} required \
                 replicas are connected",
                self.sync_replicas
            ),
        )
    }

    /// The highest CommitId that at least `sync_replicas` replicas flushed (0 when fewer are connected).
    fn sync_point(&self, r: &Registry) -> u64 {
        if self.sync_replicas == 0 || r.conns.len() < self.sync_replicas {
            return 0;
        }
        let mut flushed: Vec<u64> = r.conns.values().map(|c| c.flushed).collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        flushed[self.sync_replicas - 1]
    }

    /// Logs when synchronous writes become blocked and when they recover.
    fn note_block_state(&self, r: &mut Registry) {
        if self.sync_replicas == 0 {
            return;
        }
        let blocked = r.conns.len() < self.sync_replicas;
        if blocked != r.blocked {
            r.blocked = blocked;
            if blocked {
                tracing::warn!(
                    connected = r.conns.len(),
                    needed = self.sync_replicas,
                    "synchronous writes blocked: too few replicas connected"
                );
            } else {
                tracing::info!(
                    connected = r.conns.len(),
                    "synchronous writes recovered: enough replicas connected again"
                );
            }
        }
    }

    fn sent(&self, id: u64, last: u64, bytes: u64) {
        if let Some(c) = self.reg.lock().conns.get_mut(&id) {
            c.sent.push_back(Sent {
                last,
                bytes,
                at: Instant::now(),
            });
        }
    }

    fn acked(&self, id: u64, ack: &pb::ReplicaAck) {
        let now = Instant::now();
        let mut r = self.reg.lock();
        let mut lags = Vec::new();
        if let Some(c) = r.conns.get_mut(&id) {
            c.last_heard = now;
            c.written = c.written.max(ack.written);
            c.flushed = c.flushed.max(ack.flushed);
            c.applied = c.applied.max(ack.applied);
            while c.sent.front().is_some_and(|s| s.last <= c.applied) {
                if let Some(s) = c.sent.pop_front() {
                    lags.push(now - s.at);
                }
            }
        }
        for l in lags {
            if r.lag_samples.len() == LAG_SAMPLES {
                r.lag_samples.pop_front();
            }
            r.lag_samples.push_back(l);
        }
        // Synchronous writes now flushed by enough replicas are answered here, on the stream's task: no thread
        // is woken just to pass the answer on.
        let point = if r.waiting.is_empty() {
            0
        } else {
            self.sync_point(&r)
        };
        let released = if r.waiting.iter().any(|w| w.commit <= point) {
            let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut r.waiting)
                .into_iter()
                .partition(|w| w.commit <= point);
            r.waiting = still;
            done
        } else {
            Vec::new()
        };
        drop(r);
        for w in released {
            (w.done)(Ok(()));
        }
    }

    /// How long replica `id` has been silent.
    fn silent_for(&self, id: u64) -> Duration {
        self.reg
            .lock()
            .conns
            .get(&id)
            .map_or(Duration::MAX, |c| c.last_heard.elapsed())
    }

    /// The apply-lag samples measured so far (oldest first), and clears them.
    pub fn take_lag_samples(&self) -> Vec<Duration> {
        self.reg.lock().lag_samples.drain(..).collect()
    }

    /// Per-replica positions and lag against the primary's applied CommitId `tip`.
    #[must_use]
    pub fn lags(&self, tip: u64) -> Vec<ReplicaLag> {
        let now = Instant::now();
        self.reg
            .lock()
            .conns
            .values()
            .map(|c| ReplicaLag {
                node_id: c.node_id.clone(),
                peer: c.peer.clone(),
                written: c.written,
                flushed: c.flushed,
                applied: c.applied,
                lag_records: tip.saturating_sub(c.applied),
                lag_bytes: c.sent.iter().map(|s| s.bytes).sum(),
                lag_ms: c
                    .sent
                    .front()
                    .map_or(0, |s| u64::try_from((now - s.at).as_millis()).unwrap_or(u64::MAX)),
                connected_ms: u64::try_from((now - c.connected).as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Synchronous mode: calls `done` with `Ok` once `sync_replicas` replicas flushed `commit`. With fewer
    /// connected, it fails at once (`--sync-wait fail`) or waits up to `timeout` (`block`) and then fails. The
    /// write itself is durable on the primary either way; only its acknowledgement waits. `done` runs on
    /// whichever thread settles the wait (the caller's, a replication stream's, or the expiry thread), so it
    /// must not block. Without synchronous replicas it runs at once.
    pub fn when_flushed(self: &Arc<Self>, commit: u64, timeout: Duration, done: SyncDone) {
        let k = self.sync_replicas;
        if k == 0 {
            return done(Ok(()));
        }
        let mut r = self.reg.lock();
        if self.sync_point(&r) >= commit {
            drop(r);
            return done(Ok(()));
        }
        let connected = r.conns.len();
        if connected < k && self.sync_wait == SyncWait::Fail {
            drop(r);
            return done(Err(self.too_few(commit, connected)));
        }
        let first = r.waiting.is_empty();
        r.waiting.push(SyncWaiter {
            commit,
            deadline: Instant::now() + timeout,
            timeout,
            done,
        });
        drop(r);
        self.expiry_started.call_once(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("aerodb-sync-expiry".into())
                .spawn(move || expire_sync_waits(&weak));
            if let Err(e) = spawned {
                // Without it a wait past its deadline is only answered by the request's own timeout.
                tracing::error!("spawning the synchronous-commit expiry thread: {e}");
            }
        });
        if first {
            self.expiry.notify_one();
        }
    }

    /// [`Self::when_flushed`], blocking until it is settled (call off the async runtime).
    pub fn wait_flushed(self: &Arc<Self>, commit: u64, timeout: Duration) -> ApiResult<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.when_flushed(
            commit,
            timeout,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(ApiError::new(Code::Unavailable, "the node is shutting down")))
    }

    /// Fails the synchronous writes whose wait passed its deadline, or sleeps until the next deadline (at most
    /// a second, or until a first waiter arrives).
    fn expire_due(&self) {
        let mut r = self.reg.lock();
        let now = Instant::now();
        if !r.waiting.iter().any(|w| w.deadline <= now) {
            let next = r.waiting.iter().map(|w| w.deadline).min();
            let _ = self
                .expiry
                .wait_until(&mut r, next.unwrap_or(now + Duration::from_secs(1)));
            return;
        }
        let (due, still): (Vec<_>, Vec<_>) = std::mem::take(&mut r.waiting)
            .into_iter()
            .partition(|w| w.deadline <= now);
        r.waiting = still;
        let connected = r.conns.len();
        let failed: Vec<(SyncDone, ApiError)> = due
            .into_iter()
            .map(|w| {
                let flushed = r.conns.values().filter(|c| c.flushed >= w.commit).count();
                let e = ApiError::new(
                    Code::SyncReplicasUnavailable,
                    format!(
                        "record {} is durable on the primary but {flushed} of the {} required replicas flushed it \
                         within {} ms ({connected} connected)",
                        w.commit,
                        self.sync_replicas,
                        w.timeout.as_millis()
                    ),
                );
                (w.done, e)
            })
            .collect();
        drop(r);
        for (done, e) in failed {
            done(Err(e));
        }
    }
}

/// The expiry thread: runs while the registry exists.
fn expire_sync_waits(weak: &std::sync::Weak<Replicas>) {
    while let Some(replicas) = weak.upgrade() {
        replicas.expire_due();
    }
}

/// The primary's `aerodb.v1.Replication` service.
#[derive(Debug, Clone)]
pub struct ReplicationService {
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
}

impl ReplicationService {
    /// A service over a node; its streams end when `stop` turns true (so a graceful shutdown is not held up by
    /// replicas, which reconnect).
    #[must_use]
    pub fn new(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        Self { node, stop }
    }
}

/// A stream of primary messages.
pub type PrimaryStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::PrimaryMessage, Status>> + Send + 'static>>;

fn msg(m: PMsg) -> Result<pb::PrimaryMessage, Status> {
    Ok(pb::PrimaryMessage { msg: Some(m) })
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    type StreamStream = PrimaryStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let node = self.node.clone();
        node.authorize(
            req.metadata().get("authorization").map(|v| v.as_bytes()),
            Action::Replicate,
        )
        .map_err(|e| e.to_status())?;
        // Mutual TLS: with a client CA configured, a replica must present a certificate it signed (tonic has
        // verified the chain; here its presence is required).
        if node.config.tls_client_ca.is_some() && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(ApiError::new(
                Code::PermissionDenied,
                "the replication stream needs a client certificate signed by this node's client CA",
            )
            .to_status());
        }
        let peer = req.remote_addr().map_or_else(|| "?".into(), |a| a.to_string());
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ReplicaMessage {
                msg: Some(RMsg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a ReplicaHello",
                ))
            }
        };
        let (epoch, may_write) = {
            let role = node.role.lock();
            (role.highest_epoch, role.may_write())
        };
        if !may_write && hello.highest_epoch <= epoch {
            return Err(ApiError::new(Code::NotLeader, "this node is not a primary").to_status());
        }
        let db = node.db.clone();
        let replica_tip = hello.commit_id;
        let primary_tip = db.tip().map_err(|e| ApiError::from(e).to_status())?.commit_id;
        let hash_at_replica_tip = match replica_tip {
            0 => None,
            c => db
                .record(c)
                .map_err(|e| ApiError::from(e).to_status())?
                .map(|r| r.hash.to_vec()),
        };
        let welcome = pb::Welcome {
            node_id: node.config.node_id.clone(),
            epoch,
            verifier_key: db.verifier_key().to_string(),
            segment_bytes: db.segment_bytes(),
            commit_id: primary_tip,
            hash_at_replica_tip,
            leader_url: node.config.advertise_url.clone().unwrap_or_default(),
        };
        let (tx, rx) = mpsc::channel::<Result<pb::PrimaryMessage, Status>>(8);
        tx.send(msg(PMsg::Welcome(welcome)))
            .await
            .map_err(|_| Status::cancelled("the replica went away"))?;
        if hello.highest_epoch > epoch {
            // A replica has seen a newer term: this primary has been superseded and stops writing at once. The
            // Welcome (with this node's older epoch) lets the replica halt on its side too.
            node.observe(
                Observation::PeerPrimary {
                    epoch: hello.highest_epoch,
                    node: format!("the primary followed by replica {}", hello.node_id),
                },
                &format!(
                    "replica {} ({peer}) reported epoch {}",
                    hello.node_id, hello.highest_epoch
                ),
            );
            let stream: PrimaryStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            return Ok(Response::new(stream));
        }
        let id = node.replicas.register(hello.node_id.clone(), peer.clone());
        tracing::info!(replica = %hello.node_id, %peer, from = replica_tip + 1, "replica connected");
        // Acknowledgements, until the replica closes its side.
        let acks = {
            let node = node.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    if let Some(RMsg::Ack(a)) = m.msg {
                        node.replicas.acked(id, &a);
                    }
                }
            })
        };
        let replica = hello.node_id;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let out = send_log(&node, id, replica_tip + 1, &tx, &acks, stop).await;
            acks.abort();
            node.replicas.unregister(id);
            tracing::info!(%replica, %peer, reason = %out, "replica disconnected");
        });
        let stream: PrimaryStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }
}

/// Queues one message for the replica; a replica that stops reading (a partition: the stream's flow-control
/// window stays full) is given up after the silence limit.
async fn deliver(tx: &mpsc::Sender<Result<pb::PrimaryMessage, Status>>, m: PMsg) -> Result<(), String> {
    match tokio::time::timeout(PRIMARY_SILENCE, tx.send(msg(m))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the replica went away".into()),
        Err(_) => Err(format!(
            "the replica read nothing for {} ms",
            PRIMARY_SILENCE.as_millis()
        )),
    }
}

/// Streams the log to one replica from `next` on until it disconnects or this node stops being primary.
async fn send_log(
    node: &Arc<Node>,
    id: u64,
    mut next: u64,
    tx: &mpsc::Sender<Result<pb::PrimaryMessage, Status>>,
    acks: &tokio::task::JoinHandle<()>,
    mut stop: watch::Receiver<bool>,
) -> String {
    let mut published = node.replicas.tip.subscribe();
    let mut last_checkpoint = 0;
    loop {
        if acks.is_finished() {
            return "the replica closed its stream".into();
        }
        if *stop.borrow() {
            return "the node is shutting down".into();
        }
        let silent = node.replicas.silent_for(id);
        if silent > PRIMARY_SILENCE {
            return format!(
                "no acknowledgement from the replica for {} ms",
                silent.as_millis()
            );
        }
        if !node.role.lock().may_write() {
            return "this node is no longer the primary".into();
        }
        // The live tail (a few records just written, in the page cache) is read in place: a hop to the blocking
        // pool would cost more than the read. Catch-up reads (up to a batch of 1 MiB) go to the blocking pool.
        let behind = node.db.tip().map_or(0, |t| t.commit_id).saturating_sub(next);
        let read = if behind < LIVE_TAIL_RECORDS {
            node.db.raw_frames(next, BATCH_BYTES).map_err(|e| e.to_string())
        } else {
            let db = node.db.clone();
            tokio::task::spawn_blocking(move || db.raw_frames(next, BATCH_BYTES))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        };
        let frames = match read {
            Ok(f) => f,
            Err(e) => return format!("reading the log: {e}"),
        };
        let primary_tip = node.db.tip().map_or(0, |t| t.commit_id);
        if !frames.is_empty() {
            let n = frames.len() as u64;
            let bytes = frames.iter().map(|f| f.len() as u64).sum();
            node.replicas.sent(id, next + n - 1, bytes);
            let batch = pb::FrameBatch {
                frames: frames.into_iter().map(|f: Bytes| f.to_vec()).collect(),
                primary_commit_id: primary_tip,
            };
            if let Err(why) = deliver(tx, PMsg::Frames(batch)).await {
                return why;
            }
            next += n;
        }
        // A checkpoint once the replica has been sent everything it covers.
        if let Some(cp) = node.db.latest_checkpoint() {
            let size = cp.checkpoint.size;
            if size > last_checkpoint && size < next {
                if let Err(why) = deliver(tx, PMsg::Checkpoint(cp.note)).await {
                    return why;
                }
                last_checkpoint = size;
            }
        }
        if next <= primary_tip {
            continue; // more to catch up on
        }
        tokio::select! {
            _ = stop.changed() => continue,
            changed = published.changed() => {
                if changed.is_err() {
                    return "the node is shutting down".into();
                }
            }
            () = tokio::time::sleep(HEARTBEAT) => {
                let epoch = node.role.lock().highest_epoch;
                let hb = pb::Heartbeat { primary_commit_id: primary_tip, epoch };
                if let Err(why) = deliver(tx, PMsg::Heartbeat(hb)).await {
                    return why;
                }
            }
        }
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
    /// Why the last stream ended or could not start.
    pub last_error: String,
}

/// Why a follower stream ended.
enum StreamEnd {
    /// The node halted; stop following.
    Halted,
    /// The stream broke or was refused; try again.
    Retry(String),
    /// Shutdown.
    Stop,
}

/// The replica's side: keeps a stream to the primary open until shutdown or a halt, reconnecting with backoff.
pub async fn follow(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let Some(url) = node.config.primary.clone() else {
        return;
    };
    let token = match &node.config.primary_token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                tracing::error!(path = %p.display(), "reading the replicator token: {e}; not following");
                return;
            }
        },
        None => None,
    };
    let ca = match &node.config.primary_ca_cert {
        Some(p) => match std::fs::read(p) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(path = %p.display(), "reading the primary's CA certificate: {e}; not following");
                return;
            }
        },
        None => None,
    };
    let identity = match &node.config.primary_client_identity {
        Some((c, k)) => match (std::fs::read(c), std::fs::read(k)) {
            (Ok(c), Ok(k)) => Some((c, k)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("reading the replica's client certificate or key: {e}; not following");
                return;
            }
        },
        None => None,
    };
    let db = node.db.clone();
    let applier = match tokio::task::spawn_blocking(move || Applier::new(db, 64 << 20)).await {
        Ok(Ok(a)) => Arc::new(Mutex::new(a)),
        Ok(Err(e)) => {
            tracing::error!("reading the replica's tip: {e}; not following");
            return;
        }
        Err(e) => {
            tracing::error!("reading the replica's tip: {e}; not following");
            return;
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let end = tokio::select! {
            end = stream_once(&node, &url, token.as_deref(), ca.as_deref(), identity.as_ref(), &applier) => end,
            _ = stop.wait_for(|s| *s) => StreamEnd::Stop,
        };
        {
            let mut s = node.follower.lock();
            s.connected = false;
            if let StreamEnd::Retry(why) = &end {
                s.last_error.clone_from(why);
            }
        }
        match end {
            StreamEnd::Halted | StreamEnd::Stop => return,
            StreamEnd::Retry(why) => {
                if started.elapsed() > Duration::from_secs(5) {
                    backoff = Duration::from_millis(50);
                }
                tracing::warn!(primary = %url, retry_in_ms = backoff.as_millis() as u64, "replication stream: {why}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Halts the node with `reason` and the evidence, and ends the stream.
fn halt(node: &Node, reason: HaltReason, evidence: &str) -> StreamEnd {
    node.observe(Observation::Halt(reason), evidence);
    StreamEnd::Halted
}

/// One stream: connect, handshake, apply until it ends.
async fn stream_once(
    node: &Arc<Node>,
    url: &str,
    token: Option<&str>,
    ca: Option<&[u8]>,
    identity: Option<&(Vec<u8>, Vec<u8>)>,
    applier: &Arc<Mutex<Applier>>,
) -> StreamEnd {
    let endpoint = match tonic::transport::Endpoint::from_shared(url.to_owned()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true),
        Err(e) => return StreamEnd::Retry(format!("bad primary URL {url}: {e}")),
    };
    let endpoint = match (ca, identity) {
        (None, None) => endpoint,
        (ca, identity) => {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            match endpoint.tls_config(tls) {
                Ok(e) => e,
                Err(e) => return StreamEnd::Retry(format!("TLS to {url}: {e}")),
            }
        }
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return StreamEnd::Retry(format!("connecting to {url}: {e}")),
    };
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(BATCH_BYTES + (64 << 20))
        .max_encoding_message_size(1 << 20);
    let tip = applier.lock().tip();
    let highest_epoch = node.role.lock().highest_epoch;
    let (out_tx, out_rx) = mpsc::channel::<pb::ReplicaMessage>(16);
    let hello = pb::ReplicaHello {
        node_id: node.config.node_id.clone(),
        commit_id: tip.commit_id,
        record_hash: tip.record_hash.to_vec(),
        epoch: tip.epoch,
        highest_epoch,
    };
    if out_tx
        .send(pb::ReplicaMessage {
            msg: Some(RMsg::Hello(hello)),
        })
        .await
        .is_err()
    {
        return StreamEnd::Retry("the outbound stream closed".into());
    }
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    if let Some(t) = token {
        match format!("Bearer {t}").parse() {
            Ok(v) => {
                req.metadata_mut().insert("authorization", v);
            }
            Err(_) => return StreamEnd::Retry("the replicator token is not a valid header value".into()),
        }
    }
    let mut inbound = match client.stream(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return StreamEnd::Retry(format!("the primary refused the stream: {}", s.message())),
    };
    // The handshake.
    let welcome = match inbound.message().await {
        Ok(Some(pb::PrimaryMessage {
            msg: Some(PMsg::Welcome(w)),
        })) => w,
        Ok(_) => return StreamEnd::Retry("the primary did not start with a Welcome".into()),
        Err(s) => return StreamEnd::Retry(format!("the primary refused the stream: {}", s.message())),
    };
    let own_key = node.db.verifier_key().to_string();
    if welcome.verifier_key != own_key {
        return StreamEnd::Retry(format!(
            "the primary's log key is {} but this replica's is {own_key}: a replica must hold the log's \
             signing key (copy checkpoint.key from the primary into the empty data directory)",
            welcome.verifier_key
        ));
    }
    if welcome.segment_bytes != node.db.segment_bytes() {
        return StreamEnd::Retry(format!(
            "the primary's WAL segments are {} bytes but this replica's are {}; they must match",
            welcome.segment_bytes,
            node.db.segment_bytes()
        ));
    }
    if welcome.epoch < highest_epoch {
        return halt(
            node,
            HaltReason::EpochRegression {
                last: highest_epoch,
                got: welcome.epoch,
            },
            &format!(
                "primary {} at {url} claims epoch {} after this replica saw epoch {highest_epoch}",
                welcome.node_id, welcome.epoch
            ),
        );
    }
    let theirs = welcome
        .hash_at_replica_tip
        .as_deref()
        .and_then(|h| <[u8; 32]>::try_from(h).ok());
    if let Err(reason) = applier.lock().check_handshake(theirs) {
        return halt(
            node,
            reason,
            &format!(
                "handshake with primary {} at {url}: replica tip {} (epoch {}), primary tip {}",
                welcome.node_id, tip.commit_id, tip.epoch, welcome.commit_id
            ),
        );
    }
    if welcome.epoch > highest_epoch {
        node.follow_epoch(welcome.epoch, url);
    }
    {
        let mut s = node.follower.lock();
        s.connected = true;
        s.primary_commit_id = welcome.commit_id;
        s.leader_url.clone_from(&welcome.leader_url);
        s.leader_id.clone_from(&welcome.node_id);
        s.last_error.clear();
    }
    tracing::info!(primary = %welcome.node_id, %url, epoch = welcome.epoch, tip = tip.commit_id, "following");
    let mut followed_epoch = welcome.epoch;
    // A message read while gathering batches that is not a batch: handled next.
    let mut deferred = None;
    loop {
        let m = match deferred.take() {
            Some(m) => m,
            None => match tokio::time::timeout(SILENCE, inbound.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return StreamEnd::Retry("the primary ended the stream".into()),
                Ok(Err(s)) => return StreamEnd::Retry(format!("the stream broke: {}", s.message())),
                Err(_) => {
                    return StreamEnd::Retry(format!(
                        "no message from the primary for {} ms (heartbeats come every {} ms)",
                        SILENCE.as_millis(),
                        HEARTBEAT.as_millis()
                    ))
                }
            },
        };
        match m.msg {
            Some(PMsg::Frames(batch)) => {
                let mut primary_commit = batch.primary_commit_id;
                let mut frames: Vec<Bytes> = batch.frames.into_iter().map(Bytes::from).collect();
                // Batches already received are applied together: one durable write (one fsync) for all of them.
                let mut bytes: usize = frames.iter().map(Bytes::len).sum();
                while bytes < GATHER_BYTES {
                    // Only what is already here: a pending read gives way to the ready branch at once.
                    let next = tokio::select! {
                        biased;
                        m = inbound.message() => m,
                        () = std::future::ready(()) => break,
                    };
                    match next {
                        Ok(Some(pb::PrimaryMessage {
                            msg: Some(PMsg::Frames(more)),
                        })) => {
                            primary_commit = primary_commit.max(more.primary_commit_id);
                            bytes += more.frames.iter().map(Vec::len).sum::<usize>();
                            frames.extend(more.frames.into_iter().map(Bytes::from));
                        }
                        Ok(Some(other)) => {
                            deferred = Some(other);
                            break;
                        }
                        // The stream ended or broke: seen on the next read.
                        Ok(None) | Err(_) => break,
                    }
                }
                node.follower.lock().primary_commit_id = primary_commit;
                let a = applier.clone();
                let applied = blocking(move || {
                    let mut a = a.lock();
                    let r = a.apply(&frames);
                    (r, a.tip(), frames)
                })
                .await;
                let (result, tip, frames) = match applied {
                    Ok(x) => x,
                    Err(e) => return StreamEnd::Retry(format!("apply task failed: {e}")),
                };
                match result {
                    Ok(_) => {}
                    Err(ApplyError::Halt(reason)) => {
                        let failing = frames
                            .iter()
                            .find(|f| {
                                // The first frame past the tip, or the first that does not even decode.
                                aerodb_wal::format::decode_frame_header(f, usize::MAX)
                                    .map_or(true, |h| h.commit_id.0 > tip.commit_id)
                            })
                            .map(|f| hex(&f[..f.len().min(256)]))
                            .unwrap_or_default();
                        return halt(
                            node,
                            reason,
                            &format!(
                                "frames from primary {} at {url}; replica tip {} (epoch {}); first frame not \
                                 applied (up to 256 bytes, hex): {failing}",
                                welcome.node_id, tip.commit_id, tip.epoch
                            ),
                        );
                    }
                    Err(ApplyError::Engine(e)) => {
                        tracing::error!("the replica's log failed: {e}; it stops replicating");
                        node.db.halt(format!("the replica's log failed: {e}"));
                        return StreamEnd::Halted;
                    }
                }
                if tip.epoch > followed_epoch {
                    followed_epoch = tip.epoch;
                    node.follow_epoch(tip.epoch, url);
                }
                node.replicas.published(tip.commit_id);
                if let Err(end) = send_ack(&out_tx, tip.commit_id).await {
                    return end;
                }
            }
            Some(PMsg::Checkpoint(note)) => {
                let db = node.db.clone();
                let n = note.clone();
                match tokio::task::spawn_blocking(move || db.add_checkpoint(&n)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return halt(
                            node,
                            HaltReason::Corruption(format!(
                                "a checkpoint from the primary does not check: {e}"
                            )),
                            &format!("checkpoint from primary {} at {url}:\n{note}", welcome.node_id),
                        )
                    }
                    Err(e) => return StreamEnd::Retry(format!("checkpoint task failed: {e}")),
                }
            }
            Some(PMsg::Heartbeat(hb)) => {
                node.follower.lock().primary_commit_id = hb.primary_commit_id;
                // An ack of the same position: the primary's sign that this replica is alive.
                let t = applier.lock().tip().commit_id;
                if let Err(end) = send_ack(&out_tx, t).await {
                    return end;
                }
                if hb.epoch < followed_epoch {
                    return halt(
                        node,
                        HaltReason::EpochRegression {
                            last: followed_epoch,
                            got: hb.epoch,
                        },
                        &format!("heartbeat from primary {} at {url}", welcome.node_id),
                    );
                }
            }
            Some(PMsg::Welcome(_)) | None => {
                return StreamEnd::Retry("unexpected message from the primary".into());
            }
        }
    }
}

/// Runs blocking work (a durable append: a write and an `fdatasync`) for the stream's task. On a multi-threaded
/// runtime it runs in place (`block_in_place`: the worker's other tasks move to another thread), which saves the
/// two thread hops of the blocking pool on every received batch — on the synchronous-commit path, that is
/// latency every acknowledged write waits for. A current-thread runtime cannot block in place; there it goes to
/// the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if crate::node::can_block_in_place() {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

/// Acknowledges `tip` as written, flushed and applied (the replica's append is synchronous, so they are equal).
async fn send_ack(out: &mpsc::Sender<pb::ReplicaMessage>, tip: u64) -> Result<(), StreamEnd> {
    let ack = pb::ReplicaAck {
        written: tip,
        flushed: tip,
        applied: tip,
    };
    out.send(pb::ReplicaMessage {
        msg: Some(RMsg::Ack(ack)),
    })
    .await
    .map_err(|_| StreamEnd::Retry("the outbound stream closed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter whose answer lands in the returned receiver.
    fn waiter() -> (SyncDone, std::sync::mpsc::Receiver<ApiResult<()>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    fn ack(flushed: u64) -> pb::ReplicaAck {
        pb::ReplicaAck {
            written: flushed,
            flushed,
            applied: flushed,
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn without_sync_replicas_a_write_is_acknowledged_at_once() {
        let r = Arc::new(Replicas::new(0, 0, SyncWait::Block));
        let (done, rx) = waiter();
        r.when_flushed(5, LONG, done);
        assert!(rx.try_recv().unwrap().is_ok());
    }

    #[test]
    fn a_write_is_acknowledged_only_once_k_replicas_flushed_it() {
        let r = Arc::new(Replicas::new(0, 2, SyncWait::Block));
        let (a, b) = (
            r.register("a".into(), "p".into()),
            r.register("b".into(), "p".into()),
        );
        let (done7, rx7) = waiter();
        let (done9, rx9) = waiter();
        r.when_flushed(7, LONG, done7);
        r.when_flushed(9, LONG, done9);
        r.acked(a, &ack(9));
        assert!(rx7.try_recv().is_err(), "one of two replicas is not enough");
        r.acked(b, &ack(8));
        assert!(rx7.try_recv().unwrap().is_ok());
        assert!(rx9.try_recv().is_err(), "replica b has not flushed 9");
        r.acked(b, &ack(9));
        assert!(rx9.try_recv().unwrap().is_ok());
        // Already flushed: answered at once, and the blocking form returns.
        assert!(r.wait_flushed(9, LONG).is_ok());
    }

    #[test]
    fn fail_mode_refuses_at_once_and_fails_waiters_when_a_replica_leaves() {
        let r = Arc::new(Replicas::new(0, 1, SyncWait::Fail));
        let (done, rx) = waiter();
        r.when_flushed(1, LONG, done);
        let e = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(e.code, Code::SyncReplicasUnavailable, "{}", e.message);
        let id = r.register("a".into(), "p".into());
        let (done, rx) = waiter();
        r.when_flushed(2, LONG, done);
        assert!(rx.try_recv().is_err(), "waits while the replica is connected");
        r.unregister(id);
        let e = rx.try_recv().unwrap().unwrap_err();
        assert!(e.message.contains("0 of the 1 required"), "{}", e.message);
    }

    #[test]
    fn block_mode_fails_a_wait_at_its_deadline() {
        let r = Arc::new(Replicas::new(0, 1, SyncWait::Block));
        let started = Instant::now();
        let (done, rx) = waiter();
        r.when_flushed(3, Duration::from_millis(150), done);
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the expiry thread answers")
            .unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert_eq!(e.code, Code::SyncReplicasUnavailable);
        assert!(e.message.contains("within 150 ms"), "{}", e.message);
        // A later wait on the same registry still expires (the thread keeps running).
        let e = r.wait_flushed(4, Duration::from_millis(50)).unwrap_err();
        assert!(e.message.contains("within 50 ms"), "{}", e.message);
    }
}
