//! The node: the open database plus what both APIs share — authorization, limits, timeouts, metrics — and the
//! operations, each run on the blocking pool (appends wait for `fdatasync`).

use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::Instant,
};

use aerodb_engine::{
    record::MAX_KEY_BYTES, Db, InclusionProof, NewRecord, Payload, Receipt, SignedCheckpoint, StoredRecord,
    Version,
};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

use crate::{
    auth::{Action, Auth, Caller},
    config::{Config, Role},
    error::{ApiError, ApiResult, Code},
    metrics::{EngineFigures, Metrics},
};

/// Most pairs a scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
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
    /// Appends from every client go to the committers, which write whatever has gathered as one batch: one
    /// durable write per batch instead of one blocked thread per request.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The role established at start (seed 004).
    pub role: aerodb_replication::role::RoleMachine,
    committers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({})", self.record.tenant)
    }
}

/// A committer: takes the first waiting append (blocking), then everything else already waiting, up to a limit,
/// and appends them as consecutive CommitIds in one durable write. Each record was checked alone beforehand, so
/// a batch can only fail as a whole (the log failed, or the node is not writable), and then every append in it
/// gets that error.
fn committer(db: Arc<Db>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let batch = {
            let rx = jobs.lock();
            let Ok(first) = rx.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_COMMIT_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            batch
        };
        let (records, dones): (Vec<NewRecord>, Vec<_>) =
            batch.into_iter().map(|j| (j.record, j.done)).unzip();
        match db.append_many(&records) {
            Ok(receipts) => {
                for (done, r) in dones.into_iter().zip(receipts) {
                    let _ = done.send(Ok(r));
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for done in dones {
                    let _ = done.send(Err(e.clone()));
                }
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

/// HA status (H-4), the fields that exist before replication.
#[derive(Debug)]
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
    pub fn new(db: Db, config: Config, auth: Auth, role: aerodb_replication::role::RoleMachine) -> Self {
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let committers = (0..COMMITTERS)
            .filter_map(|i| {
                let (db, rx) = (db.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("aerodb-commit-{i}"))
                    .spawn(move || committer(db, rx))
                    .map_err(|e| tracing::error!("spawning a committer thread: {e}"))
                    .ok()
            })
            .collect();
        Self {
            limit: Semaphore::new(config.max_concurrent_requests),
            db,
            config,
            auth,
            metrics: Metrics::default(),
            jobs: Mutex::new(Some(tx)),
            role,
            committers: Mutex::new(committers),
        }
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

    /// Runs `f` on the blocking pool under the concurrency limit and the request timeout.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let timeout = self.config.request_timeout;
        let permit = tokio::time::timeout(timeout, self.limit.acquire())
            .await
            .map_err(|_| {
                ApiError::new(
                    Code::ResourceExhausted,
                    format!(
                        "{} requests are in flight; none finished within {} ms",
                        self.config.max_concurrent_requests,
                        timeout.as_millis()
                    ),
                )
            })?
            .map_err(|_| ApiError::new(Code::Unavailable, "the node is shutting down"))?;
        let db = self.db.clone();
        let task = tokio::task::spawn_blocking(move || f(&db));
        let out = tokio::time::timeout(timeout, task).await.map_err(|_| {
            ApiError::new(
                Code::DeadlineExceeded,
                format!(
                    "the request did not finish within {} ms (an append may still become durable)",
                    timeout.as_millis()
                ),
            )
        })?;
        drop(permit);
        out.map_err(|e| ApiError::new(Code::Internal, format!("request task failed: {e}")))?
    }

    fn not_leader(&self, e: ApiError) -> ApiError {
        if e.code == Code::NotLeader {
            ApiError {
                leader_url: self.config.primary.clone(),
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
        if !prove {
            self.db.check(&tenant, &payload)?;
            let (done, wait) = oneshot::channel();
            let job = Job {
                record: NewRecord { tenant, payload },
                done,
            };
            let sent = self.jobs.lock().as_ref().map(|tx| tx.send(job).is_ok());
            if sent != Some(true) {
                return Err(ApiError::new(Code::Unavailable, "the node is shutting down"));
            }
            let timeout = self.config.request_timeout;
            let receipt = tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| {
                    ApiError::new(
                        Code::DeadlineExceeded,
                        format!(
                            "the append did not finish within {} ms (it may still become durable)",
                            timeout.as_millis()
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
        let out = self
            .run(move |db| {
                if prove {
                    let (receipt, cp, proof) = db.append_and_prove(&tenant, payload)?;
                    Ok(Appended {
                        receipt,
                        proof: Some((cp, proof)),
                    })
                } else {
                    Ok(Appended {
                        receipt: db.append(&tenant, payload)?,
                        proof: None,
                    })
                }
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
        let n = records.len() as u64;
        let out = self
            .run(move |db| Ok(db.append_many(&records)?))
            .await
            .map_err(|e| self.not_leader(e))?;
        self.metrics.append_latency.observe(started.elapsed());
        self.metrics
            .appended_records
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Record `commit_id`.
    pub async fn record(&self, commit_id: u64) -> ApiResult<StoredRecord> {
        if commit_id == 0 {
            return Err(ApiError::invalid("CommitIds start at 1"));
        }
        self.run(move |db| {
            db.record(commit_id)?.ok_or_else(|| {
                let tip = db.tip().map_or(0, |t| t.commit_id);
                ApiError::new(
                    Code::NotFound,
                    format!("record {commit_id} does not exist; the log holds {tip} records"),
                )
            })
        })
        .await
    }

    /// The value of `key` now or right after `at`; returns it with the CommitId the read was answered at.
    pub async fn get(&self, key: Bytes, at: Option<u64>) -> ApiResult<(Option<Bytes>, u64)> {
        check_key(&key)?;
        if at == Some(0) {
            return Err(ApiError::invalid(
                "at=0 is before the first record; CommitIds start at 1",
            ));
        }
        self.run(move |db| {
            let tip = db.tip()?.commit_id;
            let at = match at {
                Some(a) if a > tip => {
                    return Err(ApiError::new(
                        Code::OutOfRange,
                        format!("at={a} is beyond the tip ({tip})"),
                    ))
                }
                Some(a) => a,
                None => tip,
            };
            Ok((db.get_at(&key, at)?, at))
        })
        .await
    }

    /// Every version of `key`.
    pub async fn history(&self, key: Bytes) -> ApiResult<Vec<Version>> {
        check_key(&key)?;
        self.run(move |db| Ok(db.history(&key)?)).await
    }

    /// Current pairs whose key starts with `prefix`.
    pub async fn scan(&self, prefix: Bytes, limit: u32) -> ApiResult<Vec<(Bytes, Bytes)>> {
        if prefix.len() > MAX_KEY_BYTES {
            return Err(ApiError::invalid("the prefix is longer than a key may be"));
        }
        if limit > MAX_SCAN_LIMIT {
            return Err(ApiError::invalid(format!(
                "limit {limit} exceeds the maximum {MAX_SCAN_LIMIT}"
            )));
        }
        let limit = if limit == 0 { 100 } else { limit as usize };
        self.run(move |db| Ok(db.scan_prefix(&prefix, limit)?)).await
    }

    /// The inclusion proof of `commit_id` in the tree of `tree_size` (0 or `None`: the newest checkpoint's size).
    pub async fn inclusion(&self, commit_id: u64, tree_size: Option<u64>) -> ApiResult<Inclusion> {
        if commit_id == 0 {
            return Err(ApiError::invalid("CommitIds start at 1"));
        }
        self.run(move |db| {
            let (size, checkpoint) = match tree_size.filter(|s| *s > 0) {
                Some(s) => (s, None),
                None => {
                    let cp = db.latest_checkpoint().ok_or_else(|| {
                        ApiError::new(Code::NotFound, "there is no checkpoint yet; pass tree_size")
                    })?;
                    (cp.checkpoint.size, Some(cp))
                }
            };
            let proof = db.inclusion_proof(commit_id, size)?;
            let record = db
                .record(commit_id)?
                .ok_or_else(|| ApiError::new(Code::NotFound, format!("record {commit_id} does not exist")))?;
            Ok(Inclusion {
                proof,
                record,
                checkpoint,
            })
        })
        .await
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

    /// Health: `ok`, or why writes are refused.
    #[must_use]
    pub fn health(&self) -> (String, bool) {
        match self.db.not_writable() {
            None => ("ok".into(), true),
            Some(r) if self.config.role == Role::Replica => (format!("ok (read-only replica: {r})"), false),
            Some(r) => (format!("degraded: {r}"), false),
        }
    }

    /// HA status.
    pub async fn ha_status(&self) -> ApiResult<HaStatus> {
        let applied = self.run(|db| Ok(db.tip()?.commit_id)).await?;
        let writable = self.db.not_writable().is_none();
        let primary = self.config.role == Role::Primary;
        let halt = self
            .db
            .not_writable()
            .filter(|_| primary)
            .map(|r| r.to_string())
            .unwrap_or_default();
        Ok(HaStatus {
            node_id: self.config.node_id.clone(),
            role: if primary { "primary" } else { "replica" },
            state: match (self.role.state.name(), writable) {
                ("PrimaryActive", false) => "ReadOnly",
                (name, _) => name,
            },
            epoch: self.role.highest_epoch,
            leader_id: if primary {
                self.config.node_id.clone()
            } else {
                String::new()
            },
            leader_url: if primary {
                self.config.advertise_url.clone().unwrap_or_default()
            } else {
                self.config.primary.clone().unwrap_or_default()
            },
            is_leader: primary && writable,
            commit_id: applied,
            applied_commit_id: applied,
            write_block_active: !writable,
            can_accept_protected_writes: primary && writable,
            halt_reason: halt,
        })
    }

    /// Engine figures for metrics.
    #[must_use]
    pub fn engine_figures(&self) -> EngineFigures {
        let writable = self.db.not_writable().is_none();
        EngineFigures {
            commit_id: self.db.tip().map_or(0, |t| t.commit_id),
            checkpoint_size: self.db.latest_checkpoint().map_or(0, |c| c.checkpoint.size),
            wal: self.db.wal_stats(),
            is_leader: self.config.role == Role::Primary && writable,
            writable,
        }
    }
}
