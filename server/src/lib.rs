//! `aerodb-server`: the `aerodb-server` binary (a primary today; replicas land with replication), its gRPC and
//! REST APIs, and the `aerodb` CLI. The REST layer is axum: tonic 0.14 already builds on axum and hyper for its
//! router, so REST adds no HTTP stack of its own (see `docs/architecture.md`).
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod backup;
pub mod client;
pub mod config;
pub mod error;
pub mod etcd;
pub mod fence;
pub mod grpc;
pub mod ha;
pub mod ha_lab;
pub mod ha_report;
pub mod httpc;
pub mod lab;
pub mod listener;
pub mod main_server;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod replication;
pub mod rest;
pub mod tls;
pub mod witness;

use aerodb_wal::Epoch;
use std::{net::SocketAddr, sync::Arc};

use aerodb_engine::{Db, Options};
use aerodb_proto::v1::{ledger_server::LedgerServer, replication_server::ReplicationServer};
use aerodb_replication::{
    core::bootstrap::{bootstrap, Configured, Start},
    role::{RoleMachine, State},
    state_file::RoleFile,
};
use tokio::net::TcpListener;
use tonic::codegen::http;

pub use crate::error::{Error, Result};
use crate::{
    auth::Auth,
    config::{Config, Role},
    node::Node,
};

/// How often a fenced primary re-checks its fence between writes.
const FENCE_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// How often a node whose log failed closed checks for room to open it again.
const RECOVER_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between failed in-place reopen attempts (doubling from `RECOVER_CHECK`).
const RECOVER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The addresses a running server bound.
#[derive(Clone, Debug)]
pub struct Bound {
    /// REST.
    pub http: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// The log's verifier key (what clients verify checkpoints with).
    pub verifier_key: String,
    /// This node's witness verifier key (cosignature/v1).
    pub witness_key: String,
}

/// Establishes the node's role from its persisted `role.state` and the configuration, by the core's bootstrap
/// rule ([`aerodb_replication::core::bootstrap`]), and persists it if it changed.
pub fn establish_role(config: &Config) -> Result<RoleMachine> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|e| Error::io(format!("creating {}", config.data_dir.display()), e))?;
    }
    let file = RoleFile::new(Arc::new(aerodb_wal::fs::RealFs), &config.data_dir);
    let mut m = file.load()?;
    let before = m.clone();
    let dir = config.data_dir.display();
    let configured = match config.role {
        _ if config.etcd.is_some() => Configured::Elected,
        Role::Primary => Configured::Primary,
        Role::Replica => Configured::Replica {
            primary: config.primary.clone().unwrap_or_default(),
        },
    };
    let start = bootstrap(&mut m, &configured, Epoch(config.epoch)).map_err(|e| match e {
        aerodb_replication::Error::Bootstrap(what) => {
            aerodb_replication::Error::Bootstrap(what.replace("DIR", &dir.to_string()))
        }
        other => other,
    })?;
    if let (Start::Halted, State::ReplicationHalted { reason, .. }) = (start, &m.state) {
        // A halted node starts halted: HA status, health and metrics say why; no reads, no writes, no following.
        tracing::error!(
            reason = %reason,
            "this node is halted: it serves no reads or writes; examine the evidence file in {dir}, then \
             `aerodb admin resume --data-dir {dir}` or `aerodb admin rebuild`"
        );
    }
    if m != before {
        file.store(&m)?;
        tracing::info!(
            from = before.state.name(),
            to = m.state.name(),
            epoch = m.highest_epoch.0,
            "role recorded"
        );
    }
    Ok(m)
}

/// Opens the database named by `config` (the startup integrity check runs here).
pub fn open_node(config: Config) -> Result<Node> {
    budget_file_descriptors(&config)?;
    let role = establish_role(&config)?;
    let auth = if config.insecure_no_auth {
        tracing::warn!("authentication is OFF (--insecure-no-auth); both APIs listen on loopback only");
        Auth::disabled()
    } else {
        let path = config
            .tokens_file
            .as_ref()
            .ok_or_else(|| Error::config("a tokens file is required"))?;
        Auth::load(path)?
    };
    let elected = config.etcd.is_some() && !matches!(role.state, State::ReplicationHalted { .. });
    let opts = Options {
        origin: config.origin.clone(),
        epoch: match role.state {
            State::PrimaryActive { epoch } | State::ReplicaActive { epoch, .. } => Epoch(epoch.0),
            _ => Epoch(config.epoch),
        },
        checkpoint_every_records: config.checkpoint_every_records,
        fail_on_startup_check: config.fail_on_startup_check,
        checkpoint_interval: Some(config.checkpoint_interval),
        // Under the etcd authority every node opens as a replica; the election makes one the primary.
        read_only: !role.may_write() && !matches!(role.state, State::ReplicaActive { .. }) && !elected,
        replica: matches!(role.state, State::ReplicaActive { .. }) || elected,
        // Records up to 16 MiB, or what a segment of the configured size holds: a function of the segment size
        // alone, so a primary and a replica with the same segments take the same records.
        wal: aerodb_wal::Options {
            segment_bytes: config.segment_bytes,
            max_record_bytes: aerodb_wal::Options::default()
                .max_record_bytes
                .min(aerodb_wal::Options::largest_record_for(config.segment_bytes)),
            ..aerodb_wal::Options::default()
        },
        ..Options::default()
    };
    let db = Db::open(&config.data_dir, opts)
        .map_err(|e| Error::engine(format!("opening {}", config.data_dir.display()), e))?;
    let r = db.open_report();
    tracing::info!(
        records = r.records_verified,
        checkpoints = r.checkpoints_verified,
        index_runs = r.index_runs,
        elapsed_ms = r.elapsed.as_millis() as u64,
        verifier_key = %db.verifier_key(),
        "database open; startup integrity check passed"
    );
    if let State::ReplicationHalted { reason, .. } = &role.state {
        db.halt(reason.to_string());
    }
    // A primary term starts by signing a checkpoint of its own epoch: its term proof (a replica raises its epoch,
    // and a primary steps down, only on such a checkpoint signed by the log's key).
    if let State::PrimaryActive { epoch } = role.state {
        if db
            .latest_checkpoint()
            .is_none_or(|c| c.checkpoint.epoch < Epoch(epoch.0))
        {
            let cp = db
                .checkpoint_now()
                .map_err(|e| Error::engine(format!("signing the checkpoint that starts term {epoch}"), e))?;
            tracing::info!(
                epoch = epoch.0,
                size = cp.checkpoint.size,
                "signed the checkpoint that starts this term"
            );
        }
    }
    // The writer fence (H-1): a fenced primary takes it before it serves, with its epoch as the token.
    let fence = match (&role.state, &config.writer_fence) {
        (State::PrimaryActive { epoch }, Some((lock_id, dir))) => Some(fence::Fence::acquire(
            dir,
            *lock_id,
            fence::Holder {
                token: epoch.0,
                node: config.node_id.clone(),
                dir: config.data_dir.display().to_string(),
            },
        )?),
        _ => None,
    };
    let witness_key = witness::load_or_create_key(&config.data_dir, &config.witness_name)?;
    let cosigning = witness::Cosigning::open(
        &config.data_dir,
        witness_key,
        &db.verifier_key(),
        &config.witness_logs,
        config.witnesses.clone(),
        config.witness_quorum,
    )?;
    tracing::info!(
        witness_key = %cosigning.witness.verifier(),
        quorum = config.witness_quorum,
        "witness ready"
    );
    let etcd = config.etcd.is_some();
    let node = Node::new(db, config, auth, role, cosigning);
    if etcd {
        node.fence.set_gate(fence::LeaseGate::Closed(
            "this node has not been elected (the etcd election decides who writes)".into(),
        ));
    }
    if let Some(f) = fence {
        tracing::info!(token = f.token(), "writer fence taken");
        node.fence.install(f);
    }
    Ok(node)
}

/// gRPC answers INTERNAL when a request body is not valid protobuf or ends mid-message (tonic follows the gRPC
/// status guide there). Those are bad input, not server faults: report them as INVALID_ARGUMENT; and a message
/// over the size limit as RESOURCE_EXHAUSTED rather than OUT_OF_RANGE. Such errors are sent before any response
/// message, in the response headers, where this rewrites them.
fn bad_protobuf_is_invalid_argument(
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let h = resp.headers();
    let code = h
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()));
    let message = h.get("grpc-message").map_or(&b""[..], |m| m.as_bytes());
    if let Some(better) = code.and_then(|c| grpc::bad_message_code(c, message)) {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from(better as i32));
    }
    resp
}

/// File descriptors the node needs besides its connections: the log's segments, the Merkle store, the index
/// runs, the checkpoint log, the replication stream and the runtime.
pub const FD_RESERVE: u64 = 128;

/// Raises the soft limit on open files to the hard limit, and refuses a configuration whose connection caps
/// (REST and gRPC, `max_connections` each) do not fit in it with 128 descriptors to spare. A node that runs out
/// of descriptors cannot write its own files; it is better not to start.
pub fn budget_file_descriptors(config: &Config) -> Result<u64> {
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).map_err(|e| Error::io("raising the open-file limit", e))?;
    let needed = 2 * config.max_connections as u64 + FD_RESERVE;
    if limit < needed {
        return Err(Error::config(format!(
            "max_connections {} needs {needed} file descriptors (2 listeners x {} + {FD_RESERVE} for the log, \
             index, checkpoints and replication), but the open-file limit is {limit}: raise it (ulimit -n, \
             LimitNOFILE=) or lower --max-connections",
            config.max_connections, config.max_connections
        )));
    }
    tracing::info!(limit, needed, "file descriptors budgeted");
    Ok(limit)
}

/// Binds both listeners and serves until `shutdown` resolves; then stops accepting, lets in-flight requests
/// finish, and closes the database (final checkpoint, fsync). `on_bound` sees the bound addresses first.
pub async fn serve(
    node: Node,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    let node = Arc::new(node);
    node.answer_on(tokio::runtime::Handle::current());
    let cfg = node.config.clone();
    let http_listener = TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| Error::io(format!("binding REST on {}", cfg.http_listen), e))?;
    let grpc_listener = TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|e| Error::io(format!("binding gRPC on {}", cfg.grpc_listen), e))?;
    let bound = Bound {
        http: http_listener
            .local_addr()
            .map_err(|e| Error::io("reading the REST address", e))?,
        grpc: grpc_listener
            .local_addr()
            .map_err(|e| Error::io("reading the gRPC address", e))?,
        verifier_key: node.db.verifier_key().to_string(),
        witness_key: node.cosigning.witness.verifier().to_string(),
    };
    tracing::info!(rest = %bound.http, grpc = %bound.grpc, role = ?cfg.role, tls = cfg.tls.is_some(), "listening");
    let (http_addr, grpc_addr) = (bound.http, bound.grpc);
    on_bound(bound);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let me = ha::LeaderInfo {
        node_id: cfg.node_id.clone(),
        rest_url: cfg
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{http_addr}")),
        grpc_url: cfg
            .advertise_grpc_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{grpc_addr}")),
    };
    let _ = node.advertised.set(me.clone());
    // Under the etcd authority a supervisor runs the election; on shutdown it hands over first (a leader's
    // replicas must still be streamed to), then the servers stop.
    let (handover_tx, handover_rx) = tokio::sync::mpsc::channel::<ha::HandoverRequest>(1);
    let supervisor = cfg
        .etcd
        .is_some()
        .then(|| tokio::spawn(ha::supervise(node.clone(), me, stop_rx.clone(), handover_rx)));
    let elected = supervisor.is_some();
    tokio::spawn(async move {
        shutdown.await;
        if elected {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            if handover_tx.send(done_tx).await.is_ok() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(15), done_rx).await;
            }
        }
        tracing::info!("shutdown requested: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tls::TlsFiles::load(cert, key)?),
        None => None,
    };
    let router = rest::router(node.clone());
    let rest = listener::serve(
        http_listener,
        tls.as_ref().map(tls::TlsFiles::acceptor),
        router,
        listener::Limits {
            max_connections: cfg.max_connections,
            header_timeout: cfg.header_timeout,
        },
        node.metrics.rest_connections.clone(),
        stop_rx.clone(),
    );
    let limit = cfg.max_request_bytes;
    let svc = LedgerServer::new(grpc::LedgerService::new(node.clone(), stop_rx.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit.max(16 << 20));
    // Replication: replicas send small hellos and acks; batches of frames go out.
    let replication = ReplicationServer::new(replication::ReplicationService::new(
        node.clone(),
        stop_rx.clone(),
    ))
    .max_decoding_message_size(64 << 10)
    .max_encoding_message_size(128 << 20);
    let follower = match (&cfg.primary, &node.role.lock().state) {
        (Some(url), State::ReplicaActive { .. }) if !elected => Some(tokio::spawn(replication::follow(
            node.clone(),
            url.clone(),
            stop_rx.clone(),
        ))),
        _ => None,
    };
    // A fenced primary re-checks its fence on a timer: a primary resumed after a pause (SIGSTOP) learns within
    // this period that a newer term took over, and reports and refuses from then on.
    if node.fence.token().is_some() {
        let (node, mut stop) = (node.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FENCE_CHECK);
            loop {
                let stopping = tokio::select! {
                    _ = every.tick() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    return;
                }
                let n = node.clone();
                let _ = tokio::task::spawn_blocking(move || n.check_fence()).await;
            }
        });
    }
    if !cfg.witness_urls.is_empty() {
        tokio::spawn(witness::push_to_external(
            node.clone(),
            cfg.witness_urls.clone(),
            stop_rx.clone(),
        ));
    }
    // A node whose log failed closed opens it again in place once the disk has room (see `recover_if_possible`).
    {
        let (node, mut stop) = (node.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut backoff = RECOVER_CHECK;
            let mut said_no_room = false;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let n = node.clone();
                let Ok(step) = tokio::task::spawn_blocking(move || n.recover_if_possible()).await else {
                    continue;
                };
                match step {
                    node::Recovery::NotNeeded => said_no_room = false,
                    node::Recovery::NoRoom { free, need } => {
                        if !said_no_room {
                            tracing::warn!(
                                free,
                                need,
                                "the log failed closed; waiting for free space to open it again"
                            );
                            said_no_room = true;
                        }
                    }
                    node::Recovery::Recovered => {
                        tracing::warn!("the log was opened again in place; writes are accepted");
                        said_no_room = false;
                        backoff = RECOVER_CHECK;
                        continue;
                    }
                    node::Recovery::Failed(why) => {
                        backoff = (backoff * 2).min(RECOVER_BACKOFF_MAX);
                        tracing::error!(
                            retry_in_ms = backoff.as_millis() as u64,
                            "opening the log again failed: {why}"
                        );
                        continue;
                    }
                }
                backoff = RECOVER_CHECK;
            }
        });
    }
    let mut builder = tonic::transport::Server::builder();
    let client_ca = match &cfg.tls_client_ca {
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::file(p, e))?),
        None => None,
    };
    if let Some(files) = &tls {
        builder = builder
            .tls_config(files.grpc(client_ca.as_deref()))
            .map_err(|e| Error::config(format!("gRPC TLS: {e}")))?;
    }
    let grpc = builder
        // The transport's own timeout is a backstop: the handlers answer at `request_timeout` with the precise code
        // (DEADLINE_EXCEEDED unwritten, SYNC_REPLICAS_UNAVAILABLE after a bounded wait), which a transport timeout
        // of the same length would race and turn into a bare CANCELLED.
        .timeout(cfg.request_timeout + std::time::Duration::from_millis(500))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .concurrency_limit_per_connection(cfg.max_concurrent_streams as usize)
        .layer(tower::util::MapResponseLayer::new(
            bad_protobuf_is_invalid_argument,
        ))
        .layer(tower::util::MapRequestLayer::new(
            grpc::one_message_per_unary_call,
        ))
        .add_service(svc)
        .add_service(replication)
        .serve_with_incoming_shutdown(
            listener::grpc_incoming(
                grpc_listener,
                listener::Limits {
                    max_connections: cfg.max_connections,
                    header_timeout: cfg.header_timeout,
                },
                node.metrics.grpc_connections.clone(),
            ),
            stopped(stop_rx),
        );
    let (r1, r2) = tokio::join!(rest, grpc);
    r1.map_err(|e| Error::io("REST server", e))?;
    r2.map_err(|e| Error::Task(format!("gRPC server: {e}")))?;
    if let Some(f) = follower {
        let _ = f.await;
    }
    if let Some(s) = supervisor {
        let _ = s.await;
    }
    // Every request has finished: make everything durable and sign a final checkpoint. Tasks that served the
    // last requests and replication streams may still be dropping their handles; give them a moment.
    node.stop_committers();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (Arc::strong_count(&node) > 1 || Arc::strong_count(&node.db) > 1)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let node = Arc::try_unwrap(node)
        .map_err(|_| Error::Task("requests still hold the node after shutdown".into()))?;
    let db = Arc::try_unwrap(node.db)
        .map_err(|_| Error::Task("the database is still shared after shutdown".into()))?;
    tokio::task::spawn_blocking(move || db.close())
        .await
        .map_err(|e| Error::Task(format!("closing the database: {e}")))?
        .map_err(|e| Error::engine("closing the database", e))?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// The runtime `aerodb-server` serves on: multi-threaded, with [`Config::effective_worker_threads`] workers
/// named `aerodb-worker`. Programs that embed the server (the demo, the network benchmark) use it too.
pub fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.effective_worker_threads())
        .thread_name("aerodb-worker")
        .enable_all()
        .build()
}

/// A server running on a runtime the caller owns (for programs that embed one: the demo, the network benchmark).
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub bound: Bound,
    /// Its replicas (on a primary): positions, lag, apply-lag samples.
    pub replicas: Arc<replication::Replicas>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Starts serving `node` on `rt` and waits until it listens.
    pub fn start(rt: &tokio::runtime::Runtime, node: Node) -> Result<Running> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let replicas = node.replicas.clone();
        let task = rt.spawn(serve(
            node,
            async move {
                let _ = stopped.await;
            },
            move |b| {
                let _ = bound_tx.send(b);
            },
        ));
        let bound = bound_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .map_err(|_| Error::Task("the server did not start listening within 30 s".into()))?;
        Ok(Running {
            bound,
            replicas,
            stop,
            task,
        })
    }

    /// Shuts down gracefully (as on SIGTERM) and waits until the database is closed.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let _ = self.stop.send(());
        rt.block_on(self.task)
            .map_err(|e| Error::Task(format!("the server task ended abnormally: {e}")))?
    }
}
