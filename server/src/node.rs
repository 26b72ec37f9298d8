//! The node: the open database plus what both APIs share — authorization, limits, timeouts, metrics — and the
//! operations: appends through the committer threads (or in place when the write path is idle), everything else
//! on the blocking pool.

use aerodb_wal::{CommitId, Epoch};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering as AtomicOrdering},
        mpsc, Arc, OnceLock,
    },
    thread::JoinHandle,
    time::Instant,
};

use aerodb_engine::{
    record::MAX_KEY_BYTES, Db, InclusionProof, NewRecord, NotWritable, Payload, Receipt, SignedCheckpoint,
    StoredRecord, Version,
};
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, Semaphore};

use aerodb_replication::{
    role::{Command, Observation, RoleMachine, State},
    state_file::RoleFile,
};

use crate::{
    auth::{Action, Auth, Caller},
    config::Config,
    error::{ApiError, ApiResult, Code},
    metrics::{EngineFigures, Metrics},
    replication::registry::{FollowerStatus, ReplicaLag, Replicas},
};

/// Most pairs a scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// The most records one page of a records scan returns.
pub const MAX_RECORDS_PAGE: u32 = 1_000;
/// Most records in one batch append.
pub const MAX_BATCH_RECORDS: usize = 10_000;

/// Most records one committer gathers into a single durable write.
const MAX_COMMIT_BATCH: usize = 1024;
/// Committer threads: while one waits for its fsync, the next gathers the following batch.
const COMMITTERS: usize = 2;

/// One append waiting for a committer.
struct Job {
    record: NewRecord,
    done: oneshot::Sender<ApiResult<Receipt>>,
    /// Past this, a committer answers `DEADLINE_EXCEEDED` instead of writing it (nothing was written).
    deadline: Instant,
}

/// How long an append whose bytes are on their way to the log waits for the log's answer beyond the request
/// timeout before it answers `OUTCOME_UNKNOWN` (a disk that stalls this long).
const WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The hint given with an admission refusal.
const RETRY_AFTER_MS: u64 = 100;

/// One admitted append (or batch) until it is dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

/// The answer to each write of a batch whose records are durable (or may be) but are not to be acknowledged
/// plainly: `OUTCOME_UNKNOWN` with its own CommitId.
fn unknown_each(receipts: &[Receipt], why: &str) -> Vec<ApiError> {
    receipts
        .iter()
        .map(|r| ApiError::outcome_unknown(r.commit_id, r.commit_id, why))
        .collect()
}

/// What one [`Node::recover_if_possible`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Writes are not refused for a log failure.
    NotNeeded,
    /// The data directory's file system has less room than a reopen needs.
    NoRoom {
        /// Bytes available to this process.
        free: u64,
        /// Bytes wanted: two segments (the active one's successor is preallocated).
        need: u64,
    },
    /// The log was opened again in place and accepts writes.
    Recovered,
    /// The reopen failed; writes stay refused (the reason).
    Failed(String),
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Shared state of a running node.
#[derive(Debug)]
pub struct Node {
    /// The database.
    pub db: Arc<Db>,
    /// The configuration.
    pub config: Config,
    /// Tokens.
    pub auth: Auth,
    /// Metrics.
    pub metrics: Metrics,
    limit: Semaphore,
    /// Appends admitted and not yet answered.
    admitted: AtomicUsize,
    /// Appends from every client go to the committers, which write whatever has gathered as one batch: one
    /// durable write per batch instead of one blocked thread per request.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The role (seed 004): established at start, changed by what replication observes (halts, newer epochs).
    pub role: Mutex<RoleMachine>,
    role_file: RoleFile,
    /// Connected replicas (on a primary) and synchronous-commit waits.
    pub replicas: Arc<Replicas>,
    /// The replica's view of its stream to the primary.
    pub follower: Mutex<FollowerStatus>,
    /// The writer fence (a fenced primary).
    pub fence: Arc<crate::fence::FenceState>,
    committers: Mutex<Vec<JoinHandle<()>>>,
    load: Arc<CommitLoad>,
    /// The runtime serving the APIs (set by `serve`): committers hand it a batch's answers in one wake.
    answer_rt: Arc<OnceLock<tokio::runtime::Handle>>,
    /// Why the node stopped serving (a state change it could not persist), if it did.
    fail_stopped: Mutex<Option<String>>,
    /// Set while an online backup streams (one at a time).
    pub backup_running: std::sync::atomic::AtomicBool,
    /// Under the etcd authority: the lease and the leader as last learned (HA status, routing).
    pub authority: Mutex<crate::ha::View>,
    /// This node's own URLs (set once it listens).
    pub advertised: OnceLock<crate::ha::LeaderInfo>,
    /// This node as a witness, and (on a primary) the cosignatures it gathers.
    pub cosigning: Arc<crate::witness::Cosigning>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({})", self.record.tenant)
    }
}

/// How busy the write path is: lets an append skip the hop to a committer thread when it is the only append in
/// the node (one client, or a quiet moment), and queue behind the committers otherwise.
#[derive(Debug, Default)]
struct CommitLoad {
    /// Single appends between their arrival and their answer.
    in_flight: AtomicUsize,
    /// Appends queued and not yet taken by a committer.
    queued: AtomicUsize,
    /// Batches being written, by a committer or in place.
    writing: AtomicUsize,
    /// Signalled when the last batch being written is done (with `idle_lock`).
    idle: Condvar,
    idle_lock: Mutex<()>,
}

/// Counts one append in [`CommitLoad::in_flight`] until it is dropped.
struct InFlight<'a>(&'a CommitLoad);

impl<'a> InFlight<'a> {
    fn enter(load: &'a CommitLoad) -> Self {
        load.in_flight.fetch_add(1, AtomicOrdering::AcqRel);
        Self(load)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

impl CommitLoad {
    /// Counts a batch out of `writing`, waking a committer that waits for the write path to be free.
    fn finish_writing(&self) {
        if self.writing.fetch_sub(1, AtomicOrdering::AcqRel) == 1 {
            let _g = self.idle_lock.lock();
            self.idle.notify_all();
        }
    }

    /// Waits (at most `limit`) until no batch is being written.
    fn wait_while_writing(&self, limit: std::time::Duration) {
        let deadline = Instant::now() + limit;
        let mut g = self.idle_lock.lock();
        while self.writing.load(AtomicOrdering::Acquire) > 0 {
            if self.idle.wait_until(&mut g, deadline).timed_out() {
                return;
            }
        }
    }

    /// Claims the write path for an append written in place: only when no other append is in the node (so none
    /// could share its fsync) and nothing is queued or being written. Under concurrent load every append goes to
    /// the committers: an append written in place would make a batch of one and block a runtime worker for its
    /// fsync.
    fn claim_idle(&self) -> bool {
        self.in_flight.load(AtomicOrdering::Acquire) == 1
            && self.queued.load(AtomicOrdering::Acquire) == 0
            && self
                .writing
                .compare_exchange(0, 1, AtomicOrdering::AcqRel, AtomicOrdering::Acquire)
                .is_ok()
    }
}

/// Whether blocking work may run in place on this task (`block_in_place`), which a current-thread runtime does not
/// allow.
pub(crate) fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// A committer: takes the first waiting append (blocking), then everything else already waiting, up to a limit,
/// and writes them with [`commit_batch`].
fn committer(
    db: Arc<Db>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    replicas: Arc<Replicas>,
    fence: Arc<crate::fence::FenceState>,
    load: Arc<CommitLoad>,
    timeout: std::time::Duration,
    answer_rt: Arc<OnceLock<tokio::runtime::Handle>>,
) {
    loop {
        let batch = {
            let rx = jobs.lock();
            let Ok(first) = rx.recv() else { return };
            // While another batch is being written, this one cannot reach the log before that batch's fsync ends:
            // gather until then, so that everything arriving meanwhile shares the next fsync. (Taken at once, this
            // batch would often be one or two appends with an fsync of their own, and the appends arriving after
            // it would wait for a third.)
            load.wait_while_writing(timeout);
            let mut batch = vec![first];
            while batch.len() < MAX_COMMIT_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            batch
        };
        // Counted as writing before it stops counting as queued, so an append never sees an idle path meanwhile.
        load.writing.fetch_add(1, AtomicOrdering::AcqRel);
        load.queued.fetch_sub(batch.len(), AtomicOrdering::AcqRel);
        // An append that waited past its deadline is not written: its client gets a definite answer.
        let now = Instant::now();
        let (batch, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.deadline > now);
        for j in expired {
            let _ = j.done.send(Err(ApiError::new(
                Code::DeadlineExceeded,
                format!(
                    "the append waited longer than the request timeout ({} ms) for the log; it was not written",
                    timeout.as_millis()
                ),
            )));
        }
        if batch.is_empty() {
            load.finish_writing();
            continue;
        }
        commit_batch(&db, &replicas, &fence, timeout, batch, answer_rt.get());
        load.finish_writing();
    }
}

/// Appends a batch of checked appends as consecutive CommitIds in one durable write and answers each with its
/// own receipt — once enough replicas flushed the batch in synchronous mode (the answer then comes from the
/// replication stream, and this returns at once). Each record was checked alone beforehand, so a batch can only
/// fail as a whole (the log failed, or the node is not writable), and then every append in it gets that error.
///
/// With `answer_on` (a thread outside the runtime), the answers are sent from one task spawned there: waking each
/// waiting request from this thread would cost a cross-thread wake-up of a runtime worker per append, where the
/// task wakes them on the worker's own queue, one wake-up per batch.
fn commit_batch(
    db: &Db,
    replicas: &Arc<Replicas>,
    fence: &Arc<crate::fence::FenceState>,
    timeout: std::time::Duration,
    batch: Vec<Job>,
    answer_on: Option<&tokio::runtime::Handle>,
) {
    let answer_on = answer_on.cloned();
    let (records, dones): (Vec<NewRecord>, Vec<_>) = batch.into_iter().map(|j| (j.record, j.done)).unzip();
    // A fenced primary checks the fence before writing (a refusal: nothing written) and after (the records are
    // durable but this node may no longer be the writer: not acknowledged, an unknown outcome for each).
    let written: Result<Vec<Receipt>, Vec<ApiError>> = match fence.check_write(db) {
        Err(e) => Err(vec![e; records.len()]),
        Ok(()) => match db.append_many(&records) {
            // Written: the replication streams send it whatever the answer (an unacknowledged record is still in
            // the log, and a handover waits for its replicas to hold the whole log).
            Ok(r) => {
                replicas.published(r.last().map_or(0, |x| x.commit_id.0));
                match fence.check_write(db) {
                    Ok(()) => Ok(r),
                    Err(e) => Err(unknown_each(&r, &format!("is durable on this node but {}", e.message))),
                }
            }
            // Possibly durable: each client gets its own CommitId.
            Err(aerodb_engine::Error::OutcomeUnknown { first, reason, .. }) => Err((0..records.len())
                .map(|i| {
                    let c = CommitId(first.0 + i as u64);
                    ApiError::outcome_unknown(
                        c,
                        c,
                        format_args!(
                            "was written to the log but the write did not complete ({reason}), so it may be durable"
                        ),
                    )
                })
                .collect()),
            Err(e) => Err(vec![ApiError::from(e); records.len()]),
        },
    };
    match written {
        Ok(receipts) => {
            let lease = fence.clone();
            let last = receipts.last().map_or(0, |r| r.commit_id.0);
            replicas.published(last);
            replicas.when_flushed(
                last,
                timeout,
                Box::new(move |flushed| {
                    match flushed
                        .map_err(Err)
                        .and_then(|()| lease.check_lease().map_err(Ok))
                    {
                        // The lease could no longer be proven while the replicas flushed: durable, not acknowledged.
                        Err(Ok(e)) => {
                            for (done, r) in dones.into_iter().zip(receipts) {
                                let _ = done.send(Err(ApiError::outcome_unknown(
                                    r.commit_id,
                                    r.commit_id,
                                    format_args!("is durable but {}", e.message),
                                )));
                            }
                        }
                        Ok(()) => {
                            let answer = move || {
                                for (done, r) in dones.into_iter().zip(receipts) {
                                    let _ = done.send(Ok(r));
                                }
                            };
                            match answer_on {
                                // Dropped unrun only if the runtime is shutting down: the requests then see the node
                                // shutting down.
                                Some(rt) => drop(rt.spawn(async move { answer() })),
                                None => answer(),
                            }
                        }
                        // Durable here, not confirmed by the replicas: each client is told so with its own CommitId.
                        Err(Err(u)) => {
                            for (done, r) in dones.into_iter().zip(receipts) {
                                let _ = done.send(Err(u.error(r.commit_id, r.commit_id)));
                            }
                        }
                    }
                }),
            );
        }
        Err(errors) => {
            for (done, e) in dones.into_iter().zip(errors) {
                let _ = done.send(Err(e));
            }
        }
    }
}

/// What an append returns.
#[derive(Debug)]
pub struct Appended {
    /// The receipt.
    pub receipt: Receipt,
    /// With `prove`: a checkpoint covering the record and the inclusion proof against it.
    pub proof: Option<(SignedCheckpoint, InclusionProof)>,
}

/// An inclusion proof with what it proves.
#[derive(Debug)]
pub struct Inclusion {
    /// The proof.
    pub proof: InclusionProof,
    /// The record.
    pub record: StoredRecord,
    /// The checkpoint whose size the proof is for, when it was taken from the newest checkpoint.
    pub checkpoint: Option<SignedCheckpoint>,
}

/// HA status (H-4).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HaStatus {
    /// Node id.
    pub node_id: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// `PrimaryActive`, `ReplicaActive`, `ReadOnly` (log failed).
    pub state: &'static str,
    /// Epoch.
    pub epoch: u64,
    /// The leader's id, when known.
    pub leader_id: String,
    /// The leader's URL, when known.
    pub leader_url: String,
    /// Whether this node is the write authority.
    pub is_leader: bool,
    /// The authority lease's length in ms: 0 under the static authority (no lease; the operator and the fence
    /// decide), the etcd lease's TTL under automatic failover.
    pub lease_ms: u64,
    /// Until the lease must be renewed, in ms (0 without a lease).
    pub expires_in_ms: u64,
    /// Highest durable CommitId.
    pub commit_id: u64,
    /// Highest applied CommitId.
    pub applied_commit_id: u64,
    /// Whether writes are blocked.
    pub write_block_active: bool,
    /// Whether protected writes can be accepted.
    pub can_accept_protected_writes: bool,
    /// Why the node is halted or read-only.
    pub halt_reason: String,
    /// Connected replicas and their lag (on a primary).
    pub replicas: Vec<ReplicaLag>,
    /// On a replica: whether its stream to the primary is up.
    pub connected_to_primary: bool,
    /// On a replica: the primary's CommitId as last reported.
    pub primary_commit_id: u64,
    /// On a replica: why the last stream ended or could not start.
    pub replication_error: String,
    /// This node's witness verifier key.
    pub witness_key: String,
    /// Cosignatures this node made as a witness.
    pub cosignatures_made: u64,
    /// Cosignatures a checkpoint needs to be published as cosigned.
    pub witness_quorum: u32,
    /// Witness keys counted (configured and announced by replicas).
    pub witnesses_known: u32,
    /// The size of the newest checkpoint published as cosigned (0: none).
    pub cosigned_size: u64,
    /// How many witnesses cosigned it.
    pub cosigned_by: u32,
}

fn check_key(key: &[u8]) -> ApiResult<()> {
    if key.is_empty() {
        return Err(ApiError::invalid("the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "the key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

impl Node {
    /// A node over an open database.
    #[must_use]
    pub fn new(
        db: Db,
        config: Config,
        auth: Auth,
        role: RoleMachine,
        cosigning: crate::witness::Cosigning,
    ) -> Self {
        let db = Arc::new(db);
        let replicas = Arc::new(Replicas::new(
            db.tip().map_or(0, |t| t.commit_id.0),
            config.sync_replicas,
            config.sync_wait,
        ));
        {
            let replicas = replicas.clone();
            db.on_checkpoint(move |_| replicas.wake());
        }
        let (tx, rx) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let fence = Arc::new(crate::fence::FenceState::default());
        let answer_rt = Arc::new(OnceLock::new());
        let load = Arc::new(CommitLoad::default());
        let committers = (0..COMMITTERS)
            .filter_map(|i| {
                let (db, rx, replicas, fence) = (db.clone(), rx.clone(), replicas.clone(), fence.clone());
                let (load, timeout, answer_rt) = (load.clone(), config.request_timeout, answer_rt.clone());
                std::thread::Builder::new()
                    .name(format!("aerodb-commit-{i}"))
                    .spawn(move || committer(db, rx, replicas, fence, load, timeout, answer_rt))
                    .map_err(|e| tracing::error!("spawning a committer thread: {e}"))
                    .ok()
            })
            .collect();
        Self {
            role_file: RoleFile::new(Arc::new(aerodb_wal::fs::RealFs), &config.data_dir),
            limit: Semaphore::new(config.max_concurrent_requests),
            admitted: AtomicUsize::new(0),
            db,
            config,
            auth,
            metrics: Metrics::default(),
            jobs: Mutex::new(Some(tx)),
            role: Mutex::new(role),
            replicas,
            follower: Mutex::new(FollowerStatus::default()),
            fence,
            committers: Mutex::new(committers),
            load,
            answer_rt,
            fail_stopped: Mutex::new(None),
            backup_running: std::sync::atomic::AtomicBool::new(false),
            authority: Mutex::new(crate::ha::View::default()),
            advertised: OnceLock::new(),
            cosigning: Arc::new(cosigning),
        }
    }

    /// Takes in what replication observed (a halt, another primary). A change of state is persisted at once; a
    /// halt also stops every write, writes an evidence file next to the data and makes reads refused.
    pub fn observe(&self, o: Observation, evidence: &str) {
        let mut role = self.role.lock();
        let before = role.clone();
        let changed = role.observe(o);
        // Persist any change, including a newly seen higher epoch that leaves the state as it was. A change that
        // cannot be persisted stops the node from serving anything (fail-stop): after a restart it could not
        // prove the state it is in now.
        if *role != before {
            if let Err(e) = self.role_file.store(&role) {
                self.fail_stop(&format!("persisting the role {:?}: {e}", role.state.name()));
            }
        }
        if !changed {
            return;
        }
        let before = before.state;
        if let State::ReplicationHalted { reason, .. } = &role.state {
            self.db.halt(reason.to_string());
            let path = self.write_evidence(&before, &role, evidence);
            *self.metrics.leader_changes.lock().entry("halted").or_default() += 1;
            tracing::error!(
                reason = %reason,
                from = before.name(),
                evidence = %path,
                "REPLICATION HALTED: no reads, no writes until `aerodb admin resume` or `aerodb admin rebuild`"
            );
        }
    }

    /// Records that the followed primary's term is `epoch` (a replica following a proven newer term). Returns
    /// false when the node may not go on (the new role could not be persisted: it fail-stops).
    pub fn follow_epoch(&self, epoch: u64, primary: &str) -> bool {
        let mut role = self.role.lock();
        if role
            .command(Command::Follow {
                epoch: Epoch(epoch),
                primary: primary.to_owned(),
            })
            .is_ok()
        {
            if let Err(e) = self.role_file.store(&role) {
                drop(role);
                self.fail_stop(&format!("persisting the followed epoch {epoch}: {e}"));
                return false;
            }
        }
        true
    }

    /// Persists the role after a change; a change that cannot be persisted fail-stops the node. Returns whether it
    /// was persisted.
    fn persist_role(&self, role: &RoleMachine) -> bool {
        match self.role_file.store(role) {
            Ok(()) => true,
            Err(e) => {
                self.fail_stop(&format!("persisting the role {:?}: {e}", role.state.name()));
                false
            }
        }
    }

    /// The etcd authority elected this node for term `epoch` (its leader-key revision): the role becomes
    /// `PrimaryActive` (persisted first), the database is opened again in place as the writable primary of that
    /// term — the startup integrity check runs — and the checkpoint that starts the term is signed, consistent
    /// with every earlier one. Writes are still refused until the caller opens the lease gate. Blocking.
    pub fn take_authority(&self, epoch: u64) -> Result<SignedCheckpoint, String> {
        {
            let mut role = self.role.lock();
            role.command(Command::Promote { epoch: Epoch(epoch) })
                .map_err(|e| format!("term {epoch} refused: {e}"))?;
            if !self.persist_role(&role) {
                return Err("the new role could not be persisted".into());
            }
        }
        let opened = self
            .db
            .reopen_as(aerodb_engine::OpenRole::Primary { epoch: Epoch(epoch) })
            .map_err(|e| format!("opening the log as primary of term {epoch}: {e}"))
            .and_then(|_| {
                self.db
                    .checkpoint_now()
                    .map_err(|e| format!("signing the checkpoint that starts term {epoch}: {e}"))
            });
        match opened {
            Ok(cp) => {
                self.replicas.published(cp.checkpoint.size);
                *self
                    .metrics
                    .leader_changes
                    .lock()
                    .entry("became_leader")
                    .or_default() += 1;
                tracing::warn!(
                    epoch,
                    size = cp.checkpoint.size,
                    "elected: this node is the primary of a new term"
                );
                Ok(cp)
            }
            Err(e) => {
                self.step_down(&e);
                Err(e)
            }
        }
    }

    /// This node's term ended or never started (the lease could not be proven, another node leads, it resigned):
    /// writes are refused from now on (`NOT_LEADER`, `why`), the role steps down (persisted), and a database open
    /// as primary is opened again as a replica, ready to follow whoever etcd elects. Blocking.
    pub fn step_down(&self, why: &str) {
        self.fence
            .set_gate(crate::fence::LeaseGate::Closed(why.to_owned()));
        let was_primary = {
            let mut role = self.role.lock();
            let was = role.may_write();
            if was && role.command(Command::StepDown).is_ok() {
                self.persist_role(&role);
            }
            was
        };
        if was_primary {
            *self
                .metrics
                .leader_changes
                .lock()
                .entry("stepped_down")
                .or_default() += 1;
            tracing::warn!(reason = why, "stepped down: this node no longer accepts writes");
        }
        if !self.db.is_replica() {
            if let Err(e) = self.db.reopen_as(aerodb_engine::OpenRole::Replica) {
                tracing::error!("opening the log again as a replica: {e}");
            }
        }
    }

    /// The etcd authority names `primary` (gRPC URL) the leader of term `epoch`: the role becomes
    /// `ReplicaActive` following it (persisted), with the database open as a replica. Blocking.
    pub fn follow_authority(&self, epoch: u64, primary: &str) -> Result<(), String> {
        {
            let mut role = self.role.lock();
            role.command(Command::Follow {
                epoch: Epoch(epoch),
                primary: primary.to_owned(),
            })
            .map_err(|e| format!("following term {epoch} refused: {e}"))?;
            if !self.persist_role(&role) {
                return Err("the new role could not be persisted".into());
            }
        }
        if !self.db.is_replica() {
            self.db
                .reopen_as(aerodb_engine::OpenRole::Replica)
                .map_err(|e| format!("opening the log as a replica: {e}"))?;
        }
        Ok(())
    }

    /// Whether a history that differs from the elected primary's at this replica's tip may be cut instead of
    /// halting: under the etcd authority with synchronous replication (the winning rule guarantees the elected
    /// primary holds every acknowledged record), on a replica. Every node of a cluster runs the same
    /// `--sync-replicas`.
    #[must_use]
    pub fn may_cut_divergent_tail(&self) -> bool {
        self.config.etcd.is_some()
            && self.config.sync_replicas >= 1
            && matches!(self.role.lock().state, State::ReplicaActive { .. })
    }

    /// Cuts this replica's log after record `keep` (see [`Node::may_cut_divergent_tail`]): the records removed and
    /// the checkpoints they invalidate are first written, with `primary` and this node's state, to
    /// `divergent-tail-<unix ms>.txt` in the data directory and synced; nothing is dropped without that file.
    /// Blocking. Returns what was done, for the log.
    pub fn cut_divergent_tail(&self, keep: u64, primary: &str) -> Result<String, String> {
        use std::io::Write as _;
        let tip = self.db.tip().map_err(|e| e.to_string())?.commit_id.0;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self.config.data_dir.join(format!("divergent-tail-{ms}.txt"));
        let mut text = format!(
            "AeroDB divergent tail\nnode: {}\nelected primary: {primary}\nthis node's tip: {tip}; kept: 1..={keep}\n\
             these records were never acknowledged (the etcd authority's winning rule with synchronous replication: \
             the elected primary holds every acknowledged record)\n\ncheckpoints dropped (over more than {keep} \
             records):\n",
            self.config.node_id
        );
        for note in self.db.checkpoints() {
            if aerodb_engine::SignedCheckpoint::verify(&note, &self.db.verifier_key())
                .is_ok_and(|c| c.checkpoint.size > keep)
            {
                text.push_str(&note);
                text.push('\n');
            }
        }
        text.push_str("\nframes removed (hex, one per line):\n");
        let mut next = keep + 1;
        while next <= tip {
            let frames = self
                .db
                .raw_frames(CommitId(next), 8 << 20)
                .map_err(|e| format!("reading the divergent tail: {e}"))?;
            if frames.is_empty() {
                break;
            }
            for f in &frames {
                text.push_str(&hex::encode(f));
                text.push('\n');
            }
            next += frames.len() as u64;
        }
        std::fs::File::create(&path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::File::open(&self.config.data_dir)?.sync_all())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let removed = self
            .db
            .truncate_in_place(keep)
            .map_err(|e| format!("cutting the divergent tail after record {keep}: {e}"))?;
        self.replicas.published(keep);
        Ok(format!(
            "cut {removed} records after CommitId {keep} that differ from the elected primary's history (never \
             acknowledged); evidence in {}",
            path.display()
        ))
    }

    /// Whether the node is halted or fail-stopped (it serves nothing until an operator acts).
    #[must_use]
    pub fn is_halted(&self) -> bool {
        self.fail_stopped.lock().is_some()
            || matches!(self.role.lock().state, State::ReplicationHalted { .. })
    }

    /// Appends (and batches) admitted and not yet answered.
    #[must_use]
    pub fn appends_in_flight(&self) -> usize {
        self.admitted.load(AtomicOrdering::Acquire)
    }

    /// Stops serving anything: a state change the node could not persist (it could not prove it after a restart).
    /// Reads, writes and replication are refused; health answers 503 with the reason.
    fn fail_stop(&self, why: &str) {
        tracing::error!("FAIL-STOP: {why}; this node serves nothing until it is restarted and examined");
        self.db.halt(format!("fail-stop: {why}"));
        let mut f = self.fail_stopped.lock();
        if f.is_none() {
            *f = Some(why.to_owned());
        }
    }

    /// Writes `halt-evidence-<unix ms>.txt` in the data directory: the reason, both states, this node's tip and
    /// checkpoints, and what the caller saw (the other side's tip, the failing frame or checkpoint).
    fn write_evidence(&self, before: &State, role: &RoleMachine, evidence: &str) -> String {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self.config.data_dir.join(format!("halt-evidence-{ms}.txt"));
        let tip = self.db.tip().ok();
        let hex = hex::encode::<&[u8; 32]>;
        let mut text = format!(
            "AeroDB halt evidence\nnode: {}\nstate before: {before:?}\nstate now: {:?}\nhighest epoch: {}\n",
            self.config.node_id, role.state, role.highest_epoch
        );
        if let Some(t) = tip {
            text.push_str(&format!(
                "this node's tip: CommitId {} record hash {} root {}\n",
                t.commit_id,
                hex(&t.record_hash),
                hex(&t.root)
            ));
        }
        text.push_str(&format!(
            "observed: {evidence}\n\nthis node's checkpoints (newest last):\n"
        ));
        let cps = self.db.checkpoints();
        for note in cps.iter().skip(cps.len().saturating_sub(3)) {
            text.push_str(note);
            text.push('\n');
        }
        if let Err(e) = std::fs::write(&path, text) {
            tracing::error!(path = %path.display(), "writing the halt evidence: {e}");
        }
        path.display().to_string()
    }

    /// Turns a lost writer fence into a halt (the committers found it; they cannot change the role themselves).
    fn note_fence_loss(&self) {
        if let Some(lost) = self.fence.take_lost() {
            let epoch = lost.holder.as_ref().map_or(u64::MAX, |h| h.token);
            let node = lost.holder.as_ref().map_or_else(
                || "an unknown holder".to_owned(),
                |h| format!("{} ({})", h.node, h.dir),
            );
            self.observe(
                Observation::PeerPrimary {
                    epoch: Epoch(epoch),
                    node,
                },
                &lost.message,
            );
        }
    }

    fn refuse_if_halted(&self) -> ApiResult<()> {
        self.note_fence_loss();
        if let Some(why) = self.fail_stopped.lock().clone() {
            return Err(ApiError::new(
                Code::Halted,
                format!("this node stopped serving: {why}"),
            ));
        }
        let role = self.role.lock();
        if let State::ReplicationHalted { reason, .. } = &role.state {
            return Err(ApiError::new(
                Code::Halted,
                format!(
                    "this node is halted ({reason}); it serves no reads or writes until an operator acts"
                ),
            ));
        }
        Ok(())
    }

    /// After a write of `first..=last` returned: wakes the replication streams and, in synchronous mode, waits
    /// until enough replicas flushed it (blocking; call off the async runtime). Unconfirmed in time, it is
    /// `OUTCOME_UNKNOWN` with its CommitIds: it is durable here.
    fn replicate(
        replicas: &Arc<Replicas>,
        first: CommitId,
        last: CommitId,
        timeout: std::time::Duration,
    ) -> ApiResult<()> {
        replicas.published(last.0);
        replicas
            .wait_flushed(last.0, timeout)
            .map_err(|u| u.error(first, last))
    }

    /// Right before acknowledging `first..=last`: under the etcd authority the lease must still be provable, or
    /// the records (durable here) are answered `OUTCOME_UNKNOWN`.
    fn still_leased(fence: &crate::fence::FenceState, first: CommitId, last: CommitId) -> ApiResult<()> {
        fence
            .check_lease()
            .map_err(|e| ApiError::outcome_unknown(first, last, format_args!("durable but {}", e.message)))
    }

    /// Has the committers answer appends on `rt` (the runtime serving the APIs; the first call wins).
    pub fn answer_on(&self, rt: tokio::runtime::Handle) {
        let _ = self.answer_rt.set(rt);
    }

    /// Stops the committers once the appends they hold are written (after the servers stopped accepting).
    pub fn stop_committers(&self) {
        self.jobs.lock().take();
        for t in self.committers.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// Authorizes `header` for `action`.
    pub fn authorize(&self, header: Option<&[u8]>, action: Action) -> ApiResult<Caller> {
        self.auth.check(header, action)
    }

    /// Admits one append (or batch) under `max_concurrent_requests`, or refuses it at once with a retry hint
    /// (nothing written). Every append path — REST and gRPC, single, `prove`, batch and stream — comes through here.
    fn admit_append(&self) -> ApiResult<Admitted<'_>> {
        // A node that does not lead under the etcd authority refuses before anything else (synchronous admission
        // included): NOT_LEADER with the leader's URL.
        self.fence.check_lease().map_err(|e| self.not_leader(e))?;
        let limit = self.config.max_concurrent_requests;
        if self.admitted.fetch_add(1, AtomicOrdering::AcqRel) >= limit {
            self.admitted.fetch_sub(1, AtomicOrdering::AcqRel);
            self.metrics
                .appends_refused_overload
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::overloaded(
                format!(
                    "{limit} appends are in flight (max_concurrent_requests); this one was not written: retry \
                     after {RETRY_AFTER_MS} ms"
                ),
                RETRY_AFTER_MS,
            ));
        }
        Ok(Admitted(&self.admitted))
    }

    /// Runs a write on the blocking pool: like [`Node::run`], but once it runs it is waited for (its bytes may
    /// reach the log; only the log's own answer tells).
    async fn run_write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let permit = self.permit().await?;
        let db = self.db.clone();
        let out = tokio::task::spawn_blocking(move || f(&db)).await;
        drop(permit);
        out.map_err(|e| ApiError::new(Code::Internal, format!("request task failed: {e}")))?
    }

    /// A slot of the blocking-pool concurrency limit, waited for at most the request timeout (then refused with
    /// a retry hint: nothing was started).
    async fn permit(&self) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
        self.refuse_if_halted()?;
        let timeout = self.config.request_timeout;
        tokio::time::timeout(timeout, self.limit.acquire())
            .await
            .map_err(|_| {
                ApiError::overloaded(
                    format!(
                        "{} requests are in flight; none finished within {} ms; this one was not started",
                        self.config.max_concurrent_requests,
                        timeout.as_millis()
                    ),
                    RETRY_AFTER_MS,
                )
            })?
            .map_err(|_| ApiError::new(Code::Unavailable, "the node is shutting down"))
    }

    /// Runs `f` (a read, or a non-append write) on the blocking pool under the concurrency limit and the request
    /// timeout.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let timeout = self.config.request_timeout;
        let permit = self.permit().await?;
        let db = self.db.clone();
        let task = tokio::task::spawn_blocking(move || f(&db));
        let out = tokio::time::timeout(timeout, task).await.map_err(|_| {
            ApiError::new(
                Code::DeadlineExceeded,
                format!("the request did not finish within {} ms", timeout.as_millis()),
            )
        })?;
        drop(permit);
        out.map_err(|e| ApiError::new(Code::Internal, format!("request task failed: {e}")))?
    }

    fn not_leader(&self, e: ApiError) -> ApiError {
        if e.code == Code::NotLeader {
            ApiError {
                leader_url: self.leader_url(),
                leader_grpc_url: self.leader_grpc_url(),
                ..e
            }
        } else {
            e
        }
    }

    /// Appends one record: checked here, then written by a committer together with whatever other appends are
    /// waiting (with `prove`, on its own, since it also makes a checkpoint).
    pub async fn append(&self, tenant: String, payload: Payload, prove: bool) -> ApiResult<Appended> {
        let started = Instant::now();
        let _admitted = self.admit_append()?;
        if !prove {
            let _in_flight = InFlight::enter(&self.load);
            self.refuse_if_halted()?;
            self.db.check(&tenant, &payload)?;
            // Synchronous mode refuses (or waits) before anything is appended.
            self.replicas.admit(self.config.request_timeout).await?;
            let (done, wait) = oneshot::channel();
            let job = Job {
                record: NewRecord { tenant, payload },
                done,
                deadline: Instant::now() + self.config.request_timeout,
            };
            let timeout = self.config.request_timeout;
            let open = self.jobs.lock().is_some();
            if open && can_block_in_place() && self.load.claim_idle() {
                // The only append in the node: write it here, saving the wake-up of a committer thread. Appends
                // arriving meanwhile queue for the committers.
                tokio::task::block_in_place(|| {
                    commit_batch(&self.db, &self.replicas, &self.fence, timeout, vec![job], None);
                });
                self.load.finish_writing();
            } else {
                self.load.queued.fetch_add(1, AtomicOrdering::AcqRel);
                let sent = self.jobs.lock().as_ref().map(|tx| tx.send(job).is_ok());
                if sent != Some(true) {
                    self.load.queued.fetch_sub(1, AtomicOrdering::AcqRel);
                    return Err(ApiError::new(Code::Unavailable, "the node is shutting down"));
                }
            }
            // A committer answers a job that waited past its deadline without writing it; one it writes is answered
            // when the log is: wait for that, with a grace period for a stalled disk.
            let receipt = tokio::time::timeout(timeout + WRITE_GRACE, wait)
                .await
                .map_err(|_| {
                    // Taken by a committer (or it would have been answered by now): its bytes may be on their way.
                    ApiError::new(
                        Code::OutcomeUnknown,
                        format!(
                            "the log did not answer within {} ms; the record may be durable (its CommitId is not \
                             known here): look up its content before writing it again",
                            (timeout + WRITE_GRACE).as_millis()
                        ),
                    )
                })?
                .map_err(|_| ApiError::new(Code::Unavailable, "the node is shutting down"))?
                .map_err(|e| self.not_leader(e))?;
            self.metrics.append_latency.observe(started.elapsed());
            self.metrics
                .appended_records
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Appended { receipt, proof: None });
        }
        let (replicas, timeout, fence) = (
            self.replicas.clone(),
            self.config.request_timeout,
            self.fence.clone(),
        );
        self.refuse_if_halted()?;
        self.replicas.admit(timeout).await?;
        let out = self
            .run_write(move |db| {
                fence.check_write(db)?;
                let (receipt, cp, proof) = db.append_and_prove(&tenant, payload)?;
                replicas.published(receipt.commit_id.0);
                fence.check_write(db).map_err(|e| {
                    ApiError::outcome_unknown(
                        receipt.commit_id,
                        receipt.commit_id,
                        format_args!("is durable on this node but {}", e.message),
                    )
                })?;
                Self::replicate(&replicas, receipt.commit_id, receipt.commit_id, timeout)?;
                Self::still_leased(&fence, receipt.commit_id, receipt.commit_id)?;
                Ok(Appended {
                    receipt,
                    proof: Some((cp, proof)),
                })
            })
            .await
            .map_err(|e| self.not_leader(e))?;
        self.metrics.append_latency.observe(started.elapsed());
        self.metrics
            .appended_records
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Appends records as consecutive CommitIds in one durable write.
    pub async fn append_batch(&self, records: Vec<NewRecord>) -> ApiResult<Vec<Receipt>> {
        if records.is_empty() {
            return Err(ApiError::invalid("the batch has no records"));
        }
        if records.len() > MAX_BATCH_RECORDS {
            return Err(ApiError::invalid(format!(
                "the batch has {} records; the limit is {MAX_BATCH_RECORDS}",
                records.len()
            )));
        }
        let started = Instant::now();
        let _admitted = self.admit_append()?;
        let n = records.len() as u64;
        let (replicas, timeout, fence) = (
            self.replicas.clone(),
            self.config.request_timeout,
            self.fence.clone(),
        );
        self.refuse_if_halted()?;
        self.replicas.admit(timeout).await?;
        let out = self
            .run_write(move |db| {
                fence.check_write(db)?;
                let receipts = db.append_many(&records)?;
                let first = receipts.first().map_or(CommitId(0), |r| r.commit_id);
                let last = receipts.last().map_or(CommitId(0), |r| r.commit_id);
                replicas.published(last.0);
                fence.check_write(db).map_err(|e| {
                    ApiError::outcome_unknown(
                        first,
                        last,
                        format_args!("are durable on this node but {}", e.message),
                    )
                })?;
                Self::replicate(&replicas, first, last, timeout)?;
                Self::still_leased(&fence, first, last)?;
                Ok(receipts)
            })
            .await
            .map_err(|e| self.not_leader(e))?;
        self.metrics.append_latency.observe(started.elapsed());
        self.metrics
            .appended_records
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Record `commit_id`.
    pub async fn record(&self, caller: &Caller, commit_id: u64) -> ApiResult<StoredRecord> {
        if commit_id == 0 {
            return Err(ApiError::invalid("CommitIds start at 1"));
        }
        let rec = self
            .run(move |db| {
                db.record(CommitId(commit_id))?.ok_or_else(|| {
                    let tip = db.tip().map_or(0, |t| t.commit_id.0);
                    ApiError::new(
                        Code::NotFound,
                        format!("record {commit_id} does not exist; the log holds {tip} records"),
                    )
                })
            })
            .await?;
        caller.may_use_tenant(&rec.record.tenant)?;
        Ok(rec)
    }

    /// Up to `limit` records from CommitId `from` (only `tenant`'s when given), and where the next page starts
    /// (0: no more now).
    pub async fn records(
        &self,
        caller: &Caller,
        from: u64,
        limit: u32,
        tenant: Option<String>,
    ) -> ApiResult<(Vec<StoredRecord>, u64)> {
        if limit > MAX_RECORDS_PAGE {
            return Err(ApiError::invalid(format!(
                "limit {limit} exceeds the maximum {MAX_RECORDS_PAGE}"
            )));
        }
        let limit = if limit == 0 { 100 } else { limit as usize };
        match &tenant {
            Some(t) => {
                aerodb_engine::record::check_tenant(t)
                    .map_err(|e| ApiError::invalid(format!("tenant: {e}")))?;
                caller.may_use_tenant(t)?;
            }
            None => caller.may_use_every_tenant("a scan of every tenant's records")?,
        }
        let from = from.max(1);
        self.run(move |db| {
            // One more than asked: whether a next page exists.
            let mut recs = match &tenant {
                Some(t) => db.scan_tenant(t, CommitId(from), limit + 1)?,
                None => db.records(CommitId(from), limit + 1)?,
            };
            let next = if recs.len() > limit {
                recs.truncate(limit);
                recs.last().map_or(0, |r| r.record.commit_id.0 + 1)
            } else {
                0
            };
            Ok((recs, next))
        })
        .await
    }

    /// Checks that `caller` may read keys of `tenant` on this log: a tenant is required where tenants have their
    /// own key spaces (version-2 records), and a log of global keys (version 1) needs a token for every tenant.
    fn key_scope(&self, caller: &Caller, tenant: &str) -> ApiResult<()> {
        if self.db.tenant_keys() {
            if tenant.is_empty() {
                return Err(ApiError::invalid(
                    "keys belong to a tenant on this log: give the tenant (REST ?tenant=, gRPC `tenant`)",
                ));
            }
            aerodb_engine::record::check_tenant(tenant)
                .map_err(|e| ApiError::invalid(format!("tenant: {e}")))?;
            caller.may_use_tenant(tenant)
        } else {
            caller
                .may_use_every_tenant("a key of this log (its version-1 records share one global key space)")
        }
    }

    /// The value of `key` now or right after `at`; returns it with the CommitId the read was answered at.
    pub async fn get(
        &self,
        caller: &Caller,
        tenant: String,
        key: Bytes,
        at: Option<u64>,
    ) -> ApiResult<(Option<Bytes>, u64)> {
        check_key(&key)?;
        self.key_scope(caller, &tenant)?;
        if at == Some(0) {
            return Err(ApiError::invalid(
                "at=0 is before the first record; CommitIds start at 1",
            ));
        }
        self.run(move |db| {
            let tip = db.tip()?.commit_id;
            let at = match at {
                Some(a) if a > tip.0 => {
                    return Err(ApiError::new(
                        Code::OutOfRange,
                        format!("at={a} is beyond the tip ({tip})"),
                    ))
                }
                Some(a) => a,
                None => tip.0,
            };
            Ok((db.get_at(&tenant, &key, CommitId(at))?, at))
        })
        .await
    }

    /// Every version of `key`.
    pub async fn history(&self, caller: &Caller, tenant: String, key: Bytes) -> ApiResult<Vec<Version>> {
        check_key(&key)?;
        self.key_scope(caller, &tenant)?;
        self.run(move |db| Ok(db.history(&tenant, &key)?)).await
    }

    /// Current pairs whose key starts with `prefix`.
    pub async fn scan(
        &self,
        caller: &Caller,
        tenant: String,
        prefix: Bytes,
        limit: u32,
    ) -> ApiResult<Vec<(Bytes, Bytes)>> {
        self.key_scope(caller, &tenant)?;
        if prefix.len() > MAX_KEY_BYTES {
            return Err(ApiError::invalid("the prefix is longer than a key may be"));
        }
        if limit > MAX_SCAN_LIMIT {
            return Err(ApiError::invalid(format!(
                "limit {limit} exceeds the maximum {MAX_SCAN_LIMIT}"
            )));
        }
        let limit = if limit == 0 { 100 } else { limit as usize };
        self.run(move |db| Ok(db.scan_prefix(&tenant, &prefix, limit)?))
            .await
    }

    /// The inclusion proof of `commit_id` in the tree of `tree_size` (0 or `None`: the newest checkpoint's size).
    pub async fn inclusion(
        &self,
        caller: &Caller,
        commit_id: u64,
        tree_size: Option<u64>,
    ) -> ApiResult<Inclusion> {
        if commit_id == 0 {
            return Err(ApiError::invalid("CommitIds start at 1"));
        }
        let inc = self
            .run(move |db| {
                let (size, checkpoint) = match tree_size.filter(|s| *s > 0) {
                    Some(s) => (s, None),
                    None => {
                        let cp = db.latest_checkpoint().ok_or_else(|| {
                            ApiError::new(Code::NotFound, "there is no checkpoint yet; pass tree_size")
                        })?;
                        (cp.checkpoint.size, Some(cp))
                    }
                };
                let proof = db.inclusion_proof(CommitId(commit_id), size)?;
                let record = db.record(CommitId(commit_id))?.ok_or_else(|| {
                    ApiError::new(Code::NotFound, format!("record {commit_id} does not exist"))
                })?;
                Ok(Inclusion {
                    proof,
                    record,
                    checkpoint,
                })
            })
            .await?;
        caller.may_use_tenant(&inc.record.record.tenant)?;
        Ok(inc)
    }

    /// The consistency proof between two tree sizes (`new_size` 0 or `None`: the newest checkpoint's size).
    pub async fn consistency(
        &self,
        old_size: u64,
        new_size: Option<u64>,
    ) -> ApiResult<(u64, u64, Vec<[u8; 32]>)> {
        if old_size == 0 {
            return Err(ApiError::invalid("old_size must be at least 1"));
        }
        self.run(move |db| {
            let new = match new_size.filter(|s| *s > 0) {
                Some(s) => s,
                None => {
                    db.latest_checkpoint()
                        .ok_or_else(|| {
                            ApiError::new(Code::NotFound, "there is no checkpoint yet; pass new_size")
                        })?
                        .checkpoint
                        .size
                }
            };
            Ok((old_size, new, db.consistency_proof(old_size, new)?))
        })
        .await
    }

    /// `cosigned` 0: the newest checkpoint, as signed (its note as in the checkpoint log, the same on every
    /// node). `cosigned` k > 0: the newest checkpoint with at least k distinct witness cosignatures attached to
    /// its note, with the witnesses (verifier keys) that cosigned it; cosignatures are gathered by the primary.
    pub async fn checkpoint_cosigned(&self, cosigned: usize) -> ApiResult<(SignedCheckpoint, Vec<String>)> {
        if cosigned == 0 {
            return Ok((self.latest_checkpoint().await?, Vec::new()));
        }
        let g = self.cosigning.newest_cosigned(cosigned).ok_or_else(|| {
            ApiError::new(
                Code::NotFound,
                format!(
                    "no checkpoint with {cosigned} witness cosignatures yet (this node counts {} witnesses, quorum {}; \
                     the primary gathers cosignatures: see /v1/ha/status)",
                    self.cosigning.witnesses().len(),
                    self.cosigning.quorum
                ),
            )
        })?;
        // Its log signature was verified when it arrived; every line on the note was verified too.
        let cp = SignedCheckpoint {
            checkpoint: g.checkpoint,
            note: g.note,
        };
        Ok((cp, g.witnesses))
    }

    /// The newest checkpoint.
    pub async fn latest_checkpoint(&self) -> ApiResult<SignedCheckpoint> {
        self.run(|db| {
            db.latest_checkpoint()
                .ok_or_else(|| ApiError::new(Code::NotFound, "there is no checkpoint yet"))
        })
        .await
    }

    /// Signs a checkpoint now (admin).
    pub async fn checkpoint_now(&self) -> ApiResult<SignedCheckpoint> {
        self.run(|db| Ok(db.checkpoint_now()?))
            .await
            .map_err(|e| self.not_leader(e))
    }

    /// Health: `(status, writable, serving)`. `serving` is false — and REST answers 503 — when the node cannot
    /// serve: halted, fail-stopped, or a primary whose log failed closed. A replica is read-only by design and
    /// serving.
    #[must_use]
    pub fn health(&self) -> (String, bool, bool) {
        self.check_fence();
        if let Some(why) = self.fail_stopped.lock().clone() {
            return (format!("stopped: {why}"), false, false);
        }
        if let State::ReplicationHalted { reason, .. } = &self.role.lock().state {
            return (format!("halted: {reason}"), false, false);
        }
        match self.db.not_writable() {
            None => ("ok".into(), true, true),
            Some(NotWritable::NotWriteAuthority) if !self.role.lock().may_write() => {
                ("ok (read-only replica)".into(), false, true)
            }
            Some(r) => (format!("failed closed: {r}"), false, false),
        }
    }

    /// A node whose log failed closed (a full disk, an I/O error) opens it again in place once the data
    /// directory's file system has room for two segments: recovery and the startup check run again, then writes
    /// are accepted (called on a timer by `serve`). A halted or fail-stopped node is not failed closed and is left
    /// alone; so is a replica, which halts when its log fails.
    pub fn recover_if_possible(&self) -> Recovery {
        if self.fail_stopped.lock().is_some()
            || !matches!(self.db.not_writable(), Some(NotWritable::LogFailed(_)))
        {
            return Recovery::NotNeeded;
        }
        let need = self.config.segment_bytes.saturating_mul(2);
        match free_bytes(&self.config.data_dir) {
            Ok(free) if free < need => return Recovery::NoRoom { free, need },
            Ok(_) => {}
            Err(e) => {
                return Recovery::Failed(format!("free space of {}: {e}", self.config.data_dir.display()))
            }
        }
        match self.db.recover_in_place() {
            Ok(_) => {
                self.metrics.log_recoveries.fetch_add(1, AtomicOrdering::Relaxed);
                Recovery::Recovered
            }
            Err(e) => {
                self.metrics
                    .log_recovery_failures
                    .fetch_add(1, AtomicOrdering::Relaxed);
                Recovery::Failed(e.to_string())
            }
        }
    }

    /// A fenced primary re-checks that it still holds the fence (a small read): called on a timer and before
    /// health and HA status, so a primary resumed after a pause reports and refuses at once, not at its next
    /// write.
    pub fn check_fence(&self) {
        if self.fence.token().is_some() && self.db.not_writable().is_none() {
            let _ = self.fence.check_write(&self.db);
        }
        self.note_fence_loss();
    }

    /// HA status (H-4). Answered even when halted: it is how an operator sees why.
    pub async fn ha_status(&self) -> ApiResult<HaStatus> {
        self.check_fence();
        let db = self.db.clone();
        let applied = tokio::task::spawn_blocking(move || db.tip().map(|t| t.commit_id))
            .await
            .map_err(|e| ApiError::new(Code::Internal, e.to_string()))??;
        let writable = self.db.not_writable().is_none();
        let role = self.role.lock().clone();
        let primary = matches!(role.state, State::PrimaryActive { .. })
            || matches!(&role.state, State::ReplicationHalted { from, .. } if matches!(**from, State::PrimaryActive { .. }));
        let halt = match &role.state {
            State::ReplicationHalted { reason, .. } => reason.to_string(),
            _ if primary => self.db.not_writable().map(|r| r.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        let follower = self.follower.lock().clone();
        let block = primary && self.replicas.write_block_active();
        let authority = self.authority.lock().clone();
        let leased = self.fence.check_lease().is_ok();
        let is_leader = primary && writable && role.may_write() && leased;
        let etcd_leader = authority.leader.as_ref().map(|(l, _)| l.clone());
        let published = self.cosigning.published();
        Ok(HaStatus {
            lease_ms: authority.lease_ms,
            expires_in_ms: authority.proven_until.map_or(0, |t| {
                t.saturating_duration_since(Instant::now()).as_millis() as u64
            }),
            node_id: self.config.node_id.clone(),
            role: if primary { "primary" } else { "replica" },
            state: match (role.state.name(), writable) {
                ("PrimaryActive", false) => "ReadOnly",
                (name, _) => name,
            },
            epoch: role.highest_epoch.0,
            leader_id: match etcd_leader {
                _ if primary => self.config.node_id.clone(),
                Some(l) => l.node_id,
                None => follower.leader_id.clone(),
            },
            leader_url: self.leader_url().unwrap_or_default(),
            is_leader,
            commit_id: if primary {
                applied.0
            } else {
                follower.primary_commit_id.max(applied.0)
            },
            applied_commit_id: applied.0,
            write_block_active: !is_leader || block,
            can_accept_protected_writes: is_leader && !block,
            halt_reason: halt,
            replicas: if primary {
                self.replicas.lags(applied.0)
            } else {
                Vec::new()
            },
            connected_to_primary: follower.connected,
            primary_commit_id: follower.primary_commit_id,
            replication_error: follower.last_error,
            witness_key: self.cosigning.witness.verifier().to_string(),
            cosignatures_made: self.cosigning.cosigned.load(std::sync::atomic::Ordering::Relaxed),
            witness_quorum: self.cosigning.quorum as u32,
            witnesses_known: self.cosigning.witnesses().len() as u32,
            cosigned_size: published.as_ref().map_or(0, |g| g.checkpoint.size),
            cosigned_by: published.map_or(0, |g| g.witnesses.len() as u32),
        })
    }

    /// Where writes go: this node's advertised URL on a primary; on a replica the primary's advertised URL once
    /// its stream told it, else the configured primary URL.
    #[must_use]
    pub fn leader_url(&self) -> Option<String> {
        if self.config.etcd.is_some() {
            if self.role.lock().may_write() {
                return self.advertised.get().map(|a| a.rest_url.clone());
            }
            return self
                .authority
                .lock()
                .leader
                .as_ref()
                .map(|(l, _)| l.rest_url.clone())
                .filter(|u| !u.is_empty());
        }
        if self.role.lock().may_write() {
            return self.config.advertise_url.clone();
        }
        let f = self.follower.lock();
        if f.leader_url.is_empty() {
            self.config.primary.clone()
        } else {
            Some(f.leader_url.clone())
        }
    }

    /// The leader's gRPC URL: this node's own when it leads; under the etcd authority the elected leader's; on a
    /// static replica the primary it follows.
    #[must_use]
    pub fn leader_grpc_url(&self) -> Option<String> {
        if self.role.lock().may_write() {
            return self.advertised.get().map(|a| a.grpc_url.clone());
        }
        if self.config.etcd.is_some() {
            return self
                .authority
                .lock()
                .leader
                .as_ref()
                .map(|(l, _)| l.grpc_url.clone());
        }
        self.config.primary.clone()
    }

    /// The cut of an online backup (B-1): a writable primary signs a checkpoint of its tip first; any other node
    /// uses its newest checkpoint. Returns the checkpoint, the pieces to send and the chain head. Blocking.
    pub fn backup_plan(&self) -> ApiResult<(SignedCheckpoint, Vec<aerodb_engine::backup::Piece>, [u8; 32])> {
        let cut = if self.role.lock().may_write() && self.db.not_writable().is_none() {
            self.db.checkpoint_now()?
        } else {
            self.db.latest_checkpoint().ok_or_else(|| {
                ApiError::new(
                    Code::Unavailable,
                    "this node holds no signed checkpoint yet (a backup is bound to one): retry after the primary's \
                     next checkpoint",
                )
            })?
        };
        let notes = self.db.checkpoints();
        let (pieces, head) =
            aerodb_engine::backup::plan(self.db.dir(), &notes, &cut, &self.db.verifier_key())
                .map_err(|e| ApiError::new(Code::Internal, format!("planning the backup: {e}")))?;
        Ok((cut, pieces, head))
    }

    /// Engine figures for metrics.
    #[must_use]
    pub fn engine_figures(&self) -> EngineFigures {
        let writable = self.db.not_writable().is_none();
        let role = self.role.lock().clone();
        let commit_id = self.db.tip().map_or(0, |t| t.commit_id.0);
        let primary = role.may_write();
        let follower = self.follower.lock().clone();
        EngineFigures {
            commit_id,
            checkpoint_size: self.db.latest_checkpoint().map_or(0, |c| c.checkpoint.size),
            wal: self.db.wal_stats(),
            is_leader: primary && writable,
            writable,
            halted: matches!(role.state, State::ReplicationHalted { .. }),
            write_block_active: primary && self.replicas.write_block_active(),
            replicas: if primary {
                self.replicas.lags(commit_id)
            } else {
                Vec::new()
            },
            connected_to_primary: matches!(role.state, State::ReplicaActive { .. })
                .then_some(follower.connected),
            behind_primary: follower.primary_commit_id.saturating_sub(commit_id),
            unproven_epoch_claims: self.replicas.unproven_epoch_claims.load(AtomicOrdering::Relaxed),
            sync_refused: self.replicas.sync_refused.load(AtomicOrdering::Relaxed),
            sync_unconfirmed: self.replicas.sync_unconfirmed.load(AtomicOrdering::Relaxed),
            not_serving: !self.health().2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_append_is_written_in_place() {
        let load = CommitLoad::default();
        {
            let _only = InFlight::enter(&load);
            assert!(load.claim_idle(), "a lone append on an idle path writes in place");
            assert!(!load.claim_idle(), "the path is taken while it writes");
            load.finish_writing();
            load.queued.fetch_add(1, AtomicOrdering::AcqRel);
            assert!(!load.claim_idle(), "an append is queued for the committers");
            load.queued.fetch_sub(1, AtomicOrdering::AcqRel);
            let _second = InFlight::enter(&load);
            assert!(
                !load.claim_idle(),
                "two appends in flight go to the committers, to share a fsync"
            );
        }
        assert_eq!(
            load.in_flight.load(AtomicOrdering::Acquire),
            0,
            "dropping the guards counts them out"
        );
        let _again = InFlight::enter(&load);
        assert!(load.claim_idle());
    }

    #[test]
    fn a_committer_gathers_until_the_write_in_progress_is_done() {
        use std::time::Duration;
        let load = Arc::new(CommitLoad::default());
        let t = Instant::now();
        load.wait_while_writing(Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "nothing is being written: no wait"
        );

        load.writing.fetch_add(1, AtomicOrdering::AcqRel);
        let t = Instant::now();
        load.wait_while_writing(Duration::from_millis(50));
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "a write in progress holds the committer back"
        );

        let writer = {
            let load = load.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                load.finish_writing();
            })
        };
        let t = Instant::now();
        load.wait_while_writing(Duration::from_secs(30));
        let waited = t.elapsed();
        writer.join().expect("writer thread");
        assert!(
            waited >= Duration::from_millis(90),
            "released only when the write is done ({waited:?})"
        );
        assert!(
            waited < Duration::from_secs(10),
            "released when the write is done, not at the limit ({waited:?})"
        );
        assert_eq!(load.writing.load(AtomicOrdering::Acquire), 0);
    }
}
