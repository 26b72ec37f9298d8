//! Prometheus text-format metrics (exposition format 0.0.4), kept in atomics; the engine's own counters (WAL
//! bytes, fsyncs, commit id, checkpoint size) are read when scraped.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use parking_lot::Mutex;

/// Upper bounds of the append latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    inf: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.inf.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.inf.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records appended.
    pub appended_records: AtomicU64,
    /// Append latency (request received to durable).
    pub append_latency: Histogram,
    /// Requests by (api, code).
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Successful requests per API, counted without a lock (the common case).
    rest_ok: AtomicU64,
    grpc_ok: AtomicU64,
    /// Leader changes by event.
    pub leader_changes: Mutex<BTreeMap<&'static str, u64>>,
    /// Write-authority acquisition failures by reason.
    pub lock_acquire_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Appends refused at admission (`max_concurrent_requests` in flight).
    pub appends_refused_overload: AtomicU64,
    /// Times the log was opened again in place after it failed closed.
    pub log_recoveries: AtomicU64,
    /// In-place reopen attempts that failed.
    pub log_recovery_failures: AtomicU64,
    /// The REST listener's connection counts.
    pub rest_connections: std::sync::Arc<crate::listener::Counters>,
    /// The gRPC listener's refused connections.
    pub grpc_connections: std::sync::Arc<crate::listener::Counters>,
}

/// Engine figures read at scrape time.
#[derive(Debug, Default)]
pub struct EngineFigures {
    /// Highest applied CommitId.
    pub commit_id: u64,
    /// Size of the newest checkpoint.
    pub checkpoint_size: u64,
    /// The WAL's counters.
    pub wal: aerodb_wal::WalStats,
    /// 1 if this node accepts writes.
    pub is_leader: bool,
    /// 1 if writes are possible right now.
    pub writable: bool,
    /// 1 if the node is `ReplicationHalted`.
    pub halted: bool,
    /// Synchronous writes blocked for want of replicas.
    pub write_block_active: bool,
    /// Per-replica lag (primary).
    pub replicas: Vec<crate::replication::registry::ReplicaLag>,
    /// Replica: 1 while its stream to the primary is up.
    pub connected_to_primary: Option<bool>,
    /// Replica: records the primary reported beyond this node's tip.
    pub behind_primary: u64,
    /// Replica hellos that claimed a newer epoch without proof (refused; the primary kept serving).
    pub unproven_epoch_claims: u64,
    /// Synchronous writes refused before their append (too few replicas).
    pub sync_refused: u64,
    /// Synchronous writes appended but not confirmed by enough replicas in time (answered OUTCOME_UNKNOWN).
    pub sync_unconfirmed: u64,
    /// 1 when the node stopped serving (a state change it could not persist, a halt, a failed-closed log).
    pub not_serving: bool,
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, api: &'static str, code: &'static str) {
        match (api, code) {
            ("rest", "OK") => {
                self.rest_ok.fetch_add(1, Ordering::Relaxed);
            }
            ("grpc", "OK") => {
                self.grpc_ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => *self.requests.lock().entry((api, code)).or_default() += 1,
        }
    }

    /// The exposition text.
    #[must_use]
    pub fn render(&self, e: &EngineFigures) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "aerodb_appended_records_total",
            "Records appended through the APIs and acknowledged durable.",
            self.appended_records.load(Ordering::Relaxed),
        );
        self.append_latency.render(
            &mut out,
            "aerodb_append_duration_seconds",
            "Append latency from request to durable acknowledgement.",
        );
        let _ = writeln!(
            out,
            "# HELP aerodb_requests_total Requests finished, by API and result code.\n# TYPE aerodb_requests_total counter"
        );
        let mut requests = self.requests.lock().clone();
        for (api, n) in [("rest", &self.rest_ok), ("grpc", &self.grpc_ok)] {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                requests.insert((api, "OK"), n);
            }
        }
        for ((api, code), n) in &requests {
            let _ = writeln!(out, "aerodb_requests_total{{api=\"{api}\",code=\"{code}\"}} {n}");
        }
        gauge(
            &mut out,
            "aerodb_commit_id",
            "Highest applied CommitId.",
            e.commit_id as f64,
        );
        gauge(
            &mut out,
            "aerodb_checkpoint_size",
            "Tree size of the newest signed checkpoint.",
            e.checkpoint_size as f64,
        );
        counter(
            &mut out,
            "aerodb_wal_bytes_written_total",
            "Bytes of WAL frames written since start.",
            e.wal.bytes_written,
        );
        counter(
            &mut out,
            "aerodb_wal_group_commits_total",
            "Group commits (leader flushes) since start.",
            e.wal.flushes,
        );
        counter(
            &mut out,
            "aerodb_wal_fsyncs_total",
            "fdatasync calls on the append path.",
            e.wal.fsyncs,
        );
        let _ = writeln!(
            out,
            "# HELP aerodb_wal_fsync_seconds_total Time spent in those fdatasync calls (divide by aerodb_wal_fsyncs_total for the mean).\n# TYPE aerodb_wal_fsync_seconds_total counter\naerodb_wal_fsync_seconds_total {}",
            e.wal.fsync_micros_total as f64 / 1e6
        );
        gauge(
            &mut out,
            "aerodb_wal_fsync_seconds_max",
            "The slowest fdatasync since start.",
            e.wal.fsync_micros_max as f64 / 1e6,
        );
        gauge(
            &mut out,
            "aerodb_writable",
            "1 when this node accepts writes now.",
            f64::from(u8::from(e.writable)),
        );
        gauge(
            &mut out,
            "ha_is_leader",
            "1 when this node is the write authority.",
            f64::from(u8::from(e.is_leader)),
        );
        let _ = writeln!(
            out,
            "# HELP ha_leader_changes_total Leadership changes of this node, by event.\n# TYPE ha_leader_changes_total counter"
        );
        let changes = self.leader_changes.lock();
        for event in ["became_leader", "stepped_down", "halted"] {
            let _ = writeln!(
                out,
                "ha_leader_changes_total{{event=\"{event}\"}} {}",
                changes.get(event).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ha_lock_acquire_failures_total Failed attempts to take write authority, by reason.\n# TYPE ha_lock_acquire_failures_total counter"
        );
        let failures = self.lock_acquire_failures.lock();
        for reason in ["contended", "error"] {
            let _ = writeln!(
                out,
                "ha_lock_acquire_failures_total{{reason=\"{reason}\"}} {}",
                failures.get(reason).copied().unwrap_or(0)
            );
        }
        gauge(
            &mut out,
            "ha_halted",
            "1 when this node is ReplicationHalted (no reads, no writes; see the evidence file).",
            f64::from(u8::from(e.halted)),
        );
        gauge(
            &mut out,
            "ha_write_block_active",
            "1 when synchronous writes are blocked because too few replicas are connected.",
            f64::from(u8::from(e.write_block_active)),
        );
        for (name, help, v) in [
            (
                "aerodb_unproven_epoch_claims_total",
                "Replica hellos that claimed a newer epoch without a checkpoint of it signed by the log's key (refused).",
                e.unproven_epoch_claims,
            ),
            (
                "aerodb_sync_refused_total",
                "Synchronous writes refused before their append because too few replicas were connected.",
                e.sync_refused,
            ),
            (
                "aerodb_sync_unconfirmed_total",
                "Synchronous writes appended but not confirmed by enough replicas in time (OUTCOME_UNKNOWN).",
                e.sync_unconfirmed,
            ),
            (
                "aerodb_appends_refused_overload_total",
                "Appends refused at admission with 429 / RESOURCE_EXHAUSTED (max_concurrent_requests in flight); none was written.",
                self.appends_refused_overload
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "aerodb_log_recoveries_total",
                "Times the log was opened again in place (recovery and startup check re-run) after it failed closed, once the disk had room.",
                self.log_recoveries
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "aerodb_log_recovery_failures_total",
                "In-place reopen attempts of a failed-closed log that failed (writes stay refused; retried with backoff).",
                self.log_recovery_failures
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "aerodb_grpc_connections_refused_total",
                "gRPC connections closed at once because max_connections were open.",
                self.grpc_connections
                    .refused
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "aerodb_rest_connections_refused_total",
                "REST connections closed at once because max_connections were open.",
                self.rest_connections
                    .refused
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        gauge(
            &mut out,
            "aerodb_rest_connections_open",
            "REST connections open now (TLS handshakes included).",
            self.rest_connections
                .open
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "aerodb_not_serving",
            "1 when this node serves nothing (halted, failed closed, or fail-stopped); /v1/health answers 503.",
            f64::from(u8::from(e.not_serving)),
        );
        gauge(
            &mut out,
            "aerodb_replication_connected_replicas",
            "Replicas with an open replication stream.",
            e.replicas.len() as f64,
        );
        for (name, help, get) in [
            (
                "aerodb_replication_lag_records",
                "Records the primary holds beyond what the replica applied.",
                (|r: &crate::replication::registry::ReplicaLag| r.lag_records as f64) as fn(&_) -> f64,
            ),
            (
                "aerodb_replication_lag_bytes",
                "Bytes of frames sent and not yet acknowledged as applied.",
                |r| r.lag_bytes as f64,
            ),
            (
                "aerodb_replication_lag_seconds",
                "How long the oldest unacknowledged batch has waited (0 when caught up).",
                |r| r.lag_ms as f64 / 1e3,
            ),
            (
                "aerodb_replication_flushed_commit_id",
                "The highest CommitId the replica acknowledged as durable.",
                |r| r.flushed as f64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for r in &e.replicas {
                let _ = writeln!(
                    out,
                    "{name}{{replica=\"{}\"}} {}",
                    r.node_id.escape_default(),
                    get(r)
                );
            }
        }
        if let Some(c) = e.connected_to_primary {
            gauge(
                &mut out,
                "aerodb_replica_connected",
                "1 while this replica's stream to its primary is up.",
                f64::from(u8::from(c)),
            );
            gauge(
                &mut out,
                "aerodb_replica_behind_records",
                "Records the primary last reported beyond this replica's applied tip.",
                e.behind_primary as f64,
            );
        }
        out
    }
}
