//! Server configuration: defaults, then a TOML file, then `AERODB_*` environment variables, then flags (flags
//! win). `aerodb-server --help` lists every setting; `server/aerodb.example.toml` documents the file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

use crate::error::Error;

/// The most runtime worker threads a configuration may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes (the write authority).
    Primary,
    /// Follows a primary and serves reads (replication lands with the replication issue).
    Replica,
}

/// What a write does when fewer than `--sync-replicas` replicas are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncWait {
    /// Wait (up to the request timeout) for enough replicas to flush it.
    Block,
    /// Refuse at once with `SYNC_REPLICAS_UNAVAILABLE`.
    Fail,
}

/// Whether a primary must hold the writer fence (H-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FenceMode {
    /// Write only while holding the fence for `--writer-fence-lock-id` (in `--writer-fence-dir`).
    Required,
    /// No fence (a single writer is the operator's responsibility).
    Off,
}

/// Who grants write authority (H-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityKind {
    /// The operator: `--role` and `--epoch` at start, `aerodb admin promote` on a stopped node.
    Static,
    /// An etcd election: nodes campaign under a lease; the winner's leader-key revision is its epoch.
    Etcd,
}

/// The etcd authority's settings (`--authority etcd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdAuthority {
    /// etcd client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The election's name: one per ledger, the same on every node of it.
    pub election: String,
    /// The lease's TTL (etcd grants whole seconds: rounded up, at least 1 s).
    pub lease_ttl: Duration,
    /// Nodes in the cluster (primary and replicas) campaigning in this election.
    pub cluster_size: usize,
}

impl EtcdAuthority {
    /// How much before the proven end of its lease a primary stops acknowledging: a tenth of the TTL, at least
    /// 100 ms (covers the rate difference between this node's and etcd's clocks and etcd's own processing).
    #[must_use]
    pub fn margin(&self) -> Duration {
        (self.lease_ttl / 10).max(Duration::from_millis(100))
    }

    /// Fresh tips (published by nodes that follow nobody) a candidate must see, its own included, before it may
    /// campaign: `cluster_size - sync_replicas`, at least 1 and at most `cluster_size - 1`. Any set of this many
    /// surviving nodes holds at least one of the `sync_replicas` replicas that flushed each acknowledged write.
    #[must_use]
    pub fn tips_needed(&self, sync_replicas: usize) -> usize {
        self.cluster_size
            .saturating_sub(sync_replicas)
            .min(self.cluster_size.saturating_sub(1))
            .max(1)
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Command-line flags; each also reads an `AERODB_*` environment variable. Unset ones fall back to the file.
#[derive(Debug, Parser)]
#[command(
    name = "aerodb-server",
    version,
    about = "AeroDB server: a primary (or, later, a replica) with gRPC and REST APIs"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, env = "AERODB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Role of this node.
    #[arg(long, env = "AERODB_ROLE", value_enum)]
    pub role: Option<Role>,
    /// Data directory (created if missing).
    #[arg(long, env = "AERODB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's id (in HA status).
    #[arg(long, env = "AERODB_NODE_ID")]
    pub node_id: Option<String>,
    /// REST listen address (port 0: the OS picks one).
    #[arg(long, env = "AERODB_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// gRPC listen address (port 0: the OS picks one).
    #[arg(long, env = "AERODB_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// This node's public REST URL (reported as the leader URL).
    #[arg(long, env = "AERODB_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// This node's public gRPC URL (what replicas follow when it leads; default: `http://` and the bound gRPC
    /// address).
    #[arg(long, env = "AERODB_ADVERTISE_GRPC_URL")]
    pub advertise_grpc_url: Option<String>,
    /// Who grants write authority: `static` (the operator: --role, --epoch, `aerodb admin promote`) or `etcd`
    /// (automatic failover: an election through --etcd-endpoints; --role is then ignored).
    #[arg(long, env = "AERODB_AUTHORITY", value_enum)]
    pub authority: Option<AuthorityKind>,
    /// etcd client URLs, comma-separated (`--authority etcd`), e.g. `http://127.0.0.1:2379`.
    #[arg(long, env = "AERODB_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The etcd election's name: one per ledger, the same on all its nodes (default `aerodb/<origin>`).
    #[arg(long, env = "AERODB_ELECTION")]
    pub election: Option<String>,
    /// The authority lease's TTL in milliseconds (etcd grants whole seconds: rounded up; default 2000). A SIGKILLed
    /// primary is replaced about one TTL later; a primary stops acknowledging a tenth of it (at least 100 ms)
    /// before its lease could end.
    #[arg(long, env = "AERODB_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Nodes in the cluster (primary and replicas) taking part in the election (default 3). A candidate needs the
    /// tips of `cluster_size - sync_replicas` of them (itself included, at most all but one) to campaign.
    #[arg(long, env = "AERODB_CLUSTER_SIZE")]
    pub cluster_size: Option<usize>,
    /// The primary's gRPC URL (replica role: what it follows, e.g. `http://127.0.0.1:7001`).
    #[arg(long, env = "AERODB_PRIMARY")]
    pub primary: Option<String>,
    /// A file holding the bearer token (replicator role) this replica presents to its primary.
    #[arg(long, env = "AERODB_PRIMARY_TOKEN_FILE")]
    pub primary_token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the primary's TLS certificate with (replica role, `https://` primary).
    #[arg(long, env = "AERODB_PRIMARY_CA_CERT")]
    pub primary_ca_cert: Option<PathBuf>,
    /// Client certificate chain (PEM) this replica presents to its primary (mutual TLS).
    #[arg(long, env = "AERODB_PRIMARY_CLIENT_CERT")]
    pub primary_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "AERODB_PRIMARY_CLIENT_KEY")]
    pub primary_client_key: Option<PathBuf>,
    /// Synchronous replication: acknowledge a write only after this many replicas flushed it (0: asynchronous).
    #[arg(long, env = "AERODB_SYNC_REPLICAS")]
    pub sync_replicas: Option<usize>,
    /// Writer fencing: `required` makes a primary take (and keep checking) the fence before it writes.
    #[arg(long, env = "AERODB_WRITER_FENCE_MODE", value_enum)]
    pub writer_fence_mode: Option<FenceMode>,
    /// The fence's id, shared by every writer candidate of the same ledger.
    #[arg(long, env = "AERODB_WRITER_FENCE_LOCK_ID", allow_negative_numbers = true)]
    pub writer_fence_lock_id: Option<i64>,
    /// The directory holding fence files, shared by every writer candidate (same host or shared file system).
    #[arg(long, env = "AERODB_WRITER_FENCE_DIR")]
    pub writer_fence_dir: Option<PathBuf>,
    /// With --sync-replicas, what a write does while fewer replicas are connected.
    #[arg(long, env = "AERODB_SYNC_WAIT", value_enum)]
    pub sync_wait: Option<SyncWait>,
    /// TOML file of bearer tokens and their roles.
    #[arg(long, env = "AERODB_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for both APIs; with --tls-key, both serve TLS only.
    #[arg(long, env = "AERODB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "AERODB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) for client certificates on gRPC (mutual TLS): clients may present one; the replication stream
    /// requires one signed by this CA.
    #[arg(long, env = "AERODB_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve without authentication (refused unless every listen address is loopback).
    #[arg(long, env = "AERODB_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Largest request body or gRPC message accepted, in bytes.
    #[arg(long, env = "AERODB_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Requests served at once (more wait, then get RESOURCE_EXHAUSTED / 429 after the timeout).
    #[arg(long, env = "AERODB_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// HTTP/2 streams per gRPC connection.
    #[arg(long, env = "AERODB_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Replica identities the primary accepts on the replication stream (mutual TLS): a replica's client
    /// certificate must name one of them (DNS name or IP address in its SANs). Empty: any certificate the client
    /// CA signed.
    #[arg(long, env = "AERODB_REPLICA_IDENTITIES", value_delimiter = ',')]
    pub replica_identities: Option<Vec<String>>,
    /// REST connections open at once (TLS handshakes included); one more is closed at once.
    #[arg(long, env = "AERODB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Milliseconds a REST client has to send a request head, and to start the next one on an idle
    /// kept-alive connection; also the limit for sending a request body.
    #[arg(long, env = "AERODB_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Refuse to start when the startup integrity check fails (default true). `false` only downgrades a failure
    /// to a loud error log and a node that says so in its health.
    #[arg(long, env = "AERODB_FAIL_ON_STARTUP_CHECK")]
    pub fail_on_startup_check: Option<bool>,
    /// Request timeout in milliseconds.
    #[arg(long, env = "AERODB_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Epoch stamped on every record this node writes.
    #[arg(long, env = "AERODB_EPOCH")]
    pub epoch: Option<u64>,
    /// Checkpoint every this many records.
    #[arg(long, env = "AERODB_CHECKPOINT_EVERY_RECORDS")]
    pub checkpoint_every_records: Option<u64>,
    /// Checkpoint at least this often (milliseconds) when there are new records.
    #[arg(long, env = "AERODB_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Capacity of each WAL segment file in bytes (a replica must use its primary's).
    #[arg(long, env = "AERODB_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// The log's origin (checkpoint origin line and signing-key name).
    #[arg(long, env = "AERODB_ORIGIN")]
    pub origin: Option<String>,
    /// Write the bound addresses as JSON to this file once listening (for scripts and tests).
    #[arg(long, env = "AERODB_PORTS_FILE")]
    pub ports_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "AERODB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// This node's witness key name (its C2SP cosigner name; default `<origin>/<node id>`). The key itself is
    /// `witness.key` in the data directory, created at first start.
    #[arg(long, env = "AERODB_WITNESS_NAME")]
    pub witness_name: Option<String>,
    /// Witness verifier keys (cosignature/v1, comma-separated) whose cosignatures a primary counts, besides the
    /// keys its replicas announce.
    #[arg(long, env = "AERODB_WITNESSES", value_delimiter = ',')]
    pub witnesses: Option<Vec<String>>,
    /// Distinct witness cosignatures a checkpoint needs to be published as cosigned (0: none required).
    #[arg(long, env = "AERODB_WITNESS_QUORUM")]
    pub witness_quorum: Option<usize>,
    /// Verifier keys of other logs this node witnesses through `POST /witness/add-checkpoint` (comma-separated;
    /// each log's origin is its key's name). The node's own log is always witnessed.
    #[arg(long, env = "AERODB_WITNESS_LOGS", value_delimiter = ',')]
    pub witness_logs: Option<Vec<String>>,
    /// External C2SP tlog-witness services (comma-separated `http://host:port[/prefix]`) a primary sends each
    /// checkpoint to; their cosignatures count when their keys are in --witnesses.
    #[arg(long, env = "AERODB_WITNESS_URLS", value_delimiter = ',')]
    pub witness_urls: Option<Vec<String>>,
    /// Threads serving the two APIs (0 or unset: one fewer than the CPUs, at least one; the other core is left
    /// to the committer threads, which encode, hash, write and fsync the log).
    #[arg(long, env = "AERODB_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// The TOML file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    role: Option<Role>,
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
    http_listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    advertise_url: Option<String>,
    advertise_grpc_url: Option<String>,
    authority: Option<AuthorityKind>,
    etcd_endpoints: Option<Vec<String>>,
    election: Option<String>,
    lease_ttl_ms: Option<u64>,
    cluster_size: Option<usize>,
    primary: Option<String>,
    primary_token_file: Option<PathBuf>,
    primary_ca_cert: Option<PathBuf>,
    primary_client_cert: Option<PathBuf>,
    primary_client_key: Option<PathBuf>,
    sync_replicas: Option<usize>,
    sync_wait: Option<SyncWait>,
    writer_fence_mode: Option<FenceMode>,
    writer_fence_lock_id: Option<i64>,
    writer_fence_dir: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    insecure_no_auth: Option<bool>,
    max_request_bytes: Option<usize>,
    max_concurrent_requests: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_connections: Option<usize>,
    replica_identities: Option<Vec<String>>,
    header_timeout_ms: Option<u64>,
    fail_on_startup_check: Option<bool>,
    request_timeout_ms: Option<u64>,
    epoch: Option<u64>,
    checkpoint_every_records: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    origin: Option<String>,
    segment_bytes: Option<u64>,
    ports_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    worker_threads: Option<usize>,
    witness_name: Option<String>,
    witnesses: Option<Vec<String>>,
    witness_quorum: Option<usize>,
    witness_logs: Option<Vec<String>>,
    witness_urls: Option<Vec<String>>,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Role.
    pub role: Role,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id.
    pub node_id: String,
    /// REST address.
    pub http_listen: SocketAddr,
    /// gRPC address.
    pub grpc_listen: SocketAddr,
    /// Public REST URL of this node.
    pub advertise_url: Option<String>,
    /// Public gRPC URL of this node (what replicas follow when it leads); `None`: from the bound address.
    pub advertise_grpc_url: Option<String>,
    /// The etcd authority (`None`: the static one, the operator).
    pub etcd: Option<EtcdAuthority>,
    /// The primary's gRPC URL (replicas).
    pub primary: Option<String>,
    /// The token a replica presents to its primary.
    pub primary_token_file: Option<PathBuf>,
    /// CA certificate for a TLS primary.
    pub primary_ca_cert: Option<PathBuf>,
    /// Client certificate and key a replica presents to its primary.
    pub primary_client_identity: Option<(PathBuf, PathBuf)>,
    /// CA for client certificates on gRPC (the replication stream requires one).
    pub tls_client_ca: Option<PathBuf>,
    /// Replicas that must flush a write before it is acknowledged (0: asynchronous).
    pub sync_replicas: usize,
    /// What a synchronous write does while too few replicas are connected.
    pub sync_wait: SyncWait,
    /// The writer fence (lock id, directory) when `--writer-fence-mode required`.
    pub writer_fence: Option<(i64, PathBuf)>,
    /// Tokens file.
    pub tokens_file: Option<PathBuf>,
    /// TLS certificate chain and key (PEM), when both APIs serve TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// No authentication (loopback only).
    pub insecure_no_auth: bool,
    /// Request size limit.
    pub max_request_bytes: usize,
    /// Concurrency limit.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// REST connections open at once.
    pub max_connections: usize,
    /// Replica certificate identities accepted (empty: any the client CA signed).
    pub replica_identities: Vec<String>,
    /// Time for a REST request head (and body), and for an idle kept-alive connection to start the next one.
    pub header_timeout: Duration,
    /// Refuse to start on a failed startup integrity check.
    pub fail_on_startup_check: bool,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Epoch.
    pub epoch: u64,
    /// Checkpoint cadence in records.
    pub checkpoint_every_records: u64,
    /// Checkpoint cadence in time.
    pub checkpoint_interval: Duration,
    /// Log origin.
    pub origin: String,
    /// WAL segment capacity.
    pub segment_bytes: u64,
    /// Where to write the bound addresses.
    pub ports_file: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Runtime worker threads serving the APIs; 0 picks [`Config::default_worker_threads`].
    pub worker_threads: usize,
    /// This node's witness key name.
    pub witness_name: String,
    /// Witness keys a primary counts toward the quorum (besides those its replicas announce).
    pub witnesses: Vec<aerodb_engine::VerifierKey>,
    /// Cosignatures a checkpoint needs to be published as cosigned (0: none required).
    pub witness_quorum: usize,
    /// Other logs this node witnesses over HTTP.
    pub witness_logs: Vec<aerodb_engine::VerifierKey>,
    /// External witnesses a primary asks to cosign.
    pub witness_urls: Vec<crate::witness::ExternalWitness>,
}

impl Config {
    /// A primary on loopback ports the OS picks, with the defaults of every other setting (for embedding the
    /// server in a program: the demo, the network benchmark).
    #[must_use]
    pub fn local(data_dir: PathBuf, tokens_file: PathBuf) -> Config {
        Config {
            role: Role::Primary,
            data_dir,
            node_id: "node-1".into(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_url: None,
            advertise_grpc_url: None,
            etcd: None,
            primary: None,
            primary_token_file: None,
            primary_ca_cert: None,
            primary_client_identity: None,
            tls_client_ca: None,
            sync_replicas: 0,
            sync_wait: SyncWait::Block,
            writer_fence: None,
            tokens_file: Some(tokens_file),
            tls: None,
            insecure_no_auth: false,
            max_request_bytes: 4 << 20,
            max_concurrent_requests: 512,
            max_concurrent_streams: 128,
            max_connections: 512,
            replica_identities: Vec::new(),
            header_timeout: Duration::from_secs(10),
            fail_on_startup_check: true,
            request_timeout: Duration::from_secs(10),
            epoch: 1,
            checkpoint_every_records: 10_000,
            checkpoint_interval: Duration::from_secs(1),
            origin: "aerodb-ledger".into(),
            segment_bytes: aerodb_wal::Options::default().segment_bytes,
            ports_file: None,
            log_format: LogFormat::Text,
            worker_threads: 0,
            witness_name: "aerodb-ledger/node-1".into(),
            witnesses: Vec::new(),
            witness_quorum: 0,
            witness_logs: Vec::new(),
            witness_urls: Vec::new(),
        }
    }

    /// The default number of runtime workers: one fewer than the CPUs this process may use, at least one. The
    /// committers' work per append (encoding, SHA-256, indexing, the write and its fsync) runs on threads of its
    /// own; a worker per CPU on top of them oversubscribes the cores, and on a small host the workers then spend
    /// their time waking and stealing from each other (`docs/architecture.md` has the measurements).
    #[must_use]
    pub fn default_worker_threads() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .max(1)
    }

    /// The runtime workers this configuration asks for.
    #[must_use]
    pub fn effective_worker_threads(&self) -> usize {
        if self.worker_threads == 0 {
            Self::default_worker_threads()
        } else {
            self.worker_threads
        }
    }

    /// Layers defaults, the file named by `--config`, the environment (through the flags) and the flags.
    pub fn load(flags: Flags) -> Result<Config, Error> {
        let file = match &flags.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::file(p, e))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| Error::file(p, e))?
            }
            None => FileConfig::default(),
        };
        let loopback = |a: &SocketAddr| a.ip().is_loopback();
        let keys = |what: &str, list: Option<Vec<String>>, kind: aerodb_engine::KeyType| {
            list.unwrap_or_default()
                .iter()
                .filter(|k| !k.trim().is_empty())
                .map(|k| {
                    let v = aerodb_engine::VerifierKey::parse(k)
                        .map_err(|e| Error::config(format!("{what} {k:?}: {e}")))?;
                    if v.kind() != kind {
                        return Err(Error::config(format!(
                            "{what} {k:?} is a key of type {:?}, not {kind:?}",
                            v.kind()
                        )));
                    }
                    Ok(v)
                })
                .collect::<Result<Vec<_>, Error>>()
        };
        let witnesses = keys(
            "--witnesses key",
            flags.witnesses.or(file.witnesses),
            aerodb_engine::KeyType::CosignatureV1,
        )?;
        let witness_logs = keys(
            "--witness-logs key",
            flags.witness_logs.or(file.witness_logs),
            aerodb_engine::KeyType::Ed25519,
        )?;
        let node_id = flags.node_id.or(file.node_id).unwrap_or_else(|| "node-1".into());
        let origin = flags
            .origin
            .clone()
            .or(file.origin.clone())
            .unwrap_or_else(|| "aerodb-ledger".into());
        let witness_name = flags
            .witness_name
            .or(file.witness_name)
            .unwrap_or_else(|| format!("{origin}/{node_id}"));
        let witness_quorum = flags.witness_quorum.or(file.witness_quorum).unwrap_or(0);
        let witness_urls = flags
            .witness_urls
            .or(file.witness_urls)
            .unwrap_or_default()
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| crate::witness::ExternalWitness::parse(u.trim()).map_err(Error::config))
            .collect::<Result<Vec<_>, Error>>()?;
        let c =
            Config {
                role: flags.role.or(file.role).unwrap_or(Role::Primary),
                data_dir: flags.data_dir.or(file.data_dir).ok_or_else(|| {
                    Error::config(
                        "a data directory is required (--data-dir, AERODB_DATA_DIR or data_dir in the file)",
                    )
                })?,
                node_id,
                http_listen: flags
                    .http_listen
                    .or(file.http_listen)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7000))),
                grpc_listen: flags
                    .grpc_listen
                    .or(file.grpc_listen)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7001))),
                advertise_url: flags.advertise_url.or(file.advertise_url),
                advertise_grpc_url: flags.advertise_grpc_url.or(file.advertise_grpc_url),
                etcd: match flags
                    .authority
                    .or(file.authority)
                    .unwrap_or(AuthorityKind::Static)
                {
                    AuthorityKind::Static => None,
                    AuthorityKind::Etcd => Some(EtcdAuthority {
                        endpoints: flags.etcd_endpoints.or(file.etcd_endpoints).unwrap_or_default(),
                        election: flags.election.or(file.election).unwrap_or_else(|| {
                            format!(
                                "aerodb/{}",
                                flags
                                    .origin
                                    .as_deref()
                                    .or(file.origin.as_deref())
                                    .unwrap_or("aerodb-ledger")
                            )
                        }),
                        lease_ttl: Duration::from_millis(
                            flags.lease_ttl_ms.or(file.lease_ttl_ms).unwrap_or(2_000),
                        ),
                        cluster_size: flags.cluster_size.or(file.cluster_size).unwrap_or(3),
                    }),
                },
                primary: flags.primary.or(file.primary),
                primary_token_file: flags.primary_token_file.or(file.primary_token_file),
                primary_ca_cert: flags.primary_ca_cert.or(file.primary_ca_cert),
                primary_client_identity: match (
                    flags.primary_client_cert.or(file.primary_client_cert),
                    flags.primary_client_key.or(file.primary_client_key),
                ) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => {
                        return Err(Error::config(
                            "a client certificate needs both --primary-client-cert and --primary-client-key",
                        ))
                    }
                },
                tls_client_ca: flags.tls_client_ca.or(file.tls_client_ca),
                sync_replicas: flags.sync_replicas.or(file.sync_replicas).unwrap_or(0),
                sync_wait: flags.sync_wait.or(file.sync_wait).unwrap_or(SyncWait::Block),
                writer_fence: match (
                    flags
                        .writer_fence_mode
                        .or(file.writer_fence_mode)
                        .unwrap_or(FenceMode::Off),
                    flags.writer_fence_lock_id.or(file.writer_fence_lock_id),
                    flags.writer_fence_dir.or(file.writer_fence_dir),
                ) {
                    (FenceMode::Off, _, _) => None,
                    (FenceMode::Required, Some(id), Some(dir)) => Some((id, dir)),
                    (FenceMode::Required, _, _) => return Err(Error::config(
                        "--writer-fence-mode required needs --writer-fence-lock-id and --writer-fence-dir",
                    )),
                },
                tokens_file: flags.tokens_file.or(file.tokens_file),
                tls: match (flags.tls_cert.or(file.tls_cert), flags.tls_key.or(file.tls_key)) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => {
                        return Err(Error::config(
                            "TLS needs both a certificate (--tls-cert) and a key (--tls-key)",
                        ))
                    }
                },
                insecure_no_auth: flags.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
                max_request_bytes: flags
                    .max_request_bytes
                    .or(file.max_request_bytes)
                    .unwrap_or(4 << 20),
                max_concurrent_requests: flags
                    .max_concurrent_requests
                    .or(file.max_concurrent_requests)
                    .unwrap_or(512),
                max_connections: flags.max_connections.or(file.max_connections).unwrap_or(512),
                replica_identities: flags
                    .replica_identities
                    .or(file.replica_identities)
                    .unwrap_or_default(),
                header_timeout: Duration::from_millis(
                    flags
                        .header_timeout_ms
                        .or(file.header_timeout_ms)
                        .unwrap_or(10_000),
                ),
                fail_on_startup_check: flags
                    .fail_on_startup_check
                    .or(file.fail_on_startup_check)
                    .unwrap_or(true),
                max_concurrent_streams: flags
                    .max_concurrent_streams
                    .or(file.max_concurrent_streams)
                    .unwrap_or(128),
                request_timeout: Duration::from_millis(
                    flags
                        .request_timeout_ms
                        .or(file.request_timeout_ms)
                        .unwrap_or(10_000),
                ),
                epoch: flags.epoch.or(file.epoch).unwrap_or(1),
                checkpoint_every_records: flags
                    .checkpoint_every_records
                    .or(file.checkpoint_every_records)
                    .unwrap_or(10_000),
                checkpoint_interval: Duration::from_millis(
                    flags
                        .checkpoint_interval_ms
                        .or(file.checkpoint_interval_ms)
                        .unwrap_or(1_000),
                ),
                origin,
                segment_bytes: flags
                    .segment_bytes
                    .or(file.segment_bytes)
                    .unwrap_or(aerodb_wal::Options::default().segment_bytes),
                ports_file: flags.ports_file.or(file.ports_file),
                log_format: flags.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
                worker_threads: flags.worker_threads.or(file.worker_threads).unwrap_or(0),
                witness_name,
                witnesses,
                witness_quorum,
                witness_logs,
                witness_urls,
            };
        if c.witness_name.is_empty() || c.witness_name.chars().any(|ch| ch.is_whitespace() || ch == '+') {
            return Err(Error::config(format!(
                "witness name {:?} must be non-empty, without spaces or '+' (set --witness-name)",
                c.witness_name
            )));
        }
        if c.witness_quorum > crate::witness::MAX_WITNESSES
            || c.witnesses.len() > crate::witness::MAX_WITNESSES
        {
            return Err(Error::config(format!(
                "at most {} witnesses (--witnesses, --witness-quorum)",
                crate::witness::MAX_WITNESSES
            )));
        }
        if c.tls_client_ca.is_some() && c.tls.is_none() {
            return Err(Error::config(
                "--tls-client-ca needs TLS (--tls-cert and --tls-key)",
            ));
        }
        if c.insecure_no_auth && !(loopback(&c.http_listen) && loopback(&c.grpc_listen)) {
            return Err(Error::config(
                "--insecure-no-auth is only allowed when both APIs listen on loopback addresses",
            ));
        }
        if !c.insecure_no_auth && c.tokens_file.is_none() {
            return Err(Error::config(
                "a tokens file is required (--tokens-file); --insecure-no-auth serves loopback without auth",
            ));
        }
        if c.max_request_bytes < 1024 || c.max_request_bytes > 256 << 20 {
            return Err(Error::config(format!(
                "max_request_bytes {} is outside 1 KiB ..= 256 MiB",
                c.max_request_bytes
            )));
        }
        if !c.replica_identities.is_empty() && c.tls_client_ca.is_none() {
            return Err(Error::config(
                "--replica-identities needs mutual TLS (--tls-client-ca): identities are read from client certificates",
            ));
        }
        if c.max_connections == 0 || c.header_timeout.is_zero() {
            return Err(Error::config(
                "max_connections and header_timeout_ms must be positive",
            ));
        }
        if c.max_concurrent_requests == 0 || c.max_concurrent_streams == 0 {
            return Err(Error::config("concurrency limits must be positive"));
        }
        if c.worker_threads > MAX_WORKER_THREADS {
            return Err(Error::config(format!(
                "worker_threads {} is above {MAX_WORKER_THREADS} (0 picks one fewer than the CPUs)",
                c.worker_threads
            )));
        }
        if (c.primary_ca_cert.is_some() || c.primary_client_identity.is_some())
            && c.primary.as_deref().is_some_and(|u| !u.starts_with("https://"))
        {
            return Err(Error::config(
                "--primary-ca-cert / --primary-client-cert need an https:// primary URL: with http:// the replica \
                 would send its token in clear",
            ));
        }
        if let Some(e) = &c.etcd {
            if e.endpoints.is_empty() {
                return Err(Error::config("--authority etcd needs --etcd-endpoints"));
            }
            if e.lease_ttl.is_zero() || e.lease_ttl > Duration::from_secs(3600) {
                return Err(Error::config("--lease-ttl-ms must be within 1 ..= 3600000"));
            }
            if !(1..=64).contains(&e.cluster_size) {
                return Err(Error::config("--cluster-size must be within 1 ..= 64"));
            }
            if e.election.is_empty() || e.election.len() > 256 || e.election.starts_with(crate::ha::TIPS_ROOT)
            {
                return Err(Error::config(format!(
                    "--election must be 1 to 256 bytes and not start with {:?} (where tips are published)",
                    crate::ha::TIPS_ROOT
                )));
            }
            if c.writer_fence.is_some() {
                return Err(Error::config(
                    "--authority etcd fences writers by its lease; --writer-fence-mode required is for the static \
                     authority",
                ));
            }
            return Ok(c);
        }
        if c.role == Role::Replica && c.primary.is_none() {
            return Err(Error::config("a replica needs --primary <url>"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, flags: &[&str]) -> Result<Config, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aerodb-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("aerodb.toml");
        std::fs::write(&path, file).unwrap();
        let mut args = vec!["aerodb-server", "--config", path.to_str().unwrap()];
        args.extend_from_slice(flags);
        let r = Flags::try_parse_from(args)
            .map_err(|e| e.to_string())
            .and_then(|f| Config::load(f).map_err(|e| e.to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    const BASE: &str = "data_dir = \"/tmp/x\"\ntokens_file = \"/tmp/tokens.toml\"\n";

    #[test]
    fn the_example_file_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/aerodb.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.worker_threads, 0);
        assert_eq!(c.effective_worker_threads(), Config::default_worker_threads());
    }

    #[test]
    fn worker_threads_default_to_one_fewer_than_the_cpus_and_flags_win() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::default_worker_threads(), cpus.saturating_sub(1).max(1));
        let c = load(BASE, &[]).unwrap();
        assert_eq!(c.effective_worker_threads(), Config::default_worker_threads());
        let c = load(&format!("{BASE}worker_threads = 3\n"), &[]).unwrap();
        assert_eq!(c.effective_worker_threads(), 3);
        let c = load(&format!("{BASE}worker_threads = 3\n"), &["--worker-threads", "5"]).unwrap();
        assert_eq!(c.effective_worker_threads(), 5);
        let e = load(&format!("{BASE}worker_threads = 5000\n"), &[]).unwrap_err();
        assert!(e.contains("worker_threads 5000 is above 1024"), "{e}");
        let e = load(&format!("{BASE}worker_threads = -1\n"), &[]).unwrap_err();
        assert!(e.contains("worker_threads"), "{e}");
    }

    #[test]
    fn the_etcd_authority_needs_endpoints_and_counts_tips() {
        let e = load(BASE, &["--authority", "etcd"]).unwrap_err();
        assert!(e.contains("--etcd-endpoints"), "{e}");
        let c = load(
            BASE,
            &[
                "--authority",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:1,http://127.0.0.1:2",
            ],
        )
        .unwrap();
        let a = c.etcd.unwrap();
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.election, "aerodb/aerodb-ledger");
        assert_eq!(a.lease_ttl, Duration::from_secs(2));
        assert_eq!(a.margin(), Duration::from_millis(200));
        // 3 nodes: with 1 synchronous replica both survivors' tips are needed; with 2, either one holds all.
        assert_eq!((a.tips_needed(0), a.tips_needed(1), a.tips_needed(2)), (2, 2, 1));
        let e = load(
            BASE,
            &[
                "--authority",
                "etcd",
                "--etcd-endpoints",
                "http://x:1",
                "--cluster-size",
                "0",
            ],
        )
        .unwrap_err();
        assert!(e.contains("--cluster-size"), "{e}");
    }
}
