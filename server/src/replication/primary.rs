//! The primary's edge: the `aerodb.v1.Replication` gRPC service. It authenticates the stream, hands the hello to
//! the core ([`on_hello`]), then loops asking the replica's [`Stream`](aerodb_replication::core::primary::Stream)
//! what to send next and doing it: reading frames from the log, sending checkpoints and heartbeats, reading acks.

use std::{pin::Pin, sync::Arc};

use aerodb_proto::v1::{self as pb, primary_message::Msg as PMsg, replica_message::Msg as RMsg};
use aerodb_replication::{
    core::primary::{on_hello, Hello, HelloDecision, Next, View},
    role::{Observation, State},
};
use aerodb_wal::{CommitId, Epoch};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::Action,
    error::{ApiError, Code},
    node::Node,
};

/// Bytes of frames per batch sent to a replica.
pub const BATCH_BYTES: usize = 1 << 20;
/// Up to this many records behind the tip, the primary reads the frames to send on the stream's own task.
const LIVE_TAIL_RECORDS: u64 = 256;

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

type Tx = mpsc::Sender<Result<pb::PrimaryMessage, Status>>;

fn msg(m: PMsg) -> Result<pb::PrimaryMessage, Status> {
    Ok(pb::PrimaryMessage { msg: Some(m) })
}

/// This node's epoch if it is the writable primary.
pub(crate) fn primary_epoch(node: &Node) -> Option<Epoch> {
    match node.role.lock().state {
        State::PrimaryActive { epoch } if node.db.not_writable().is_none() => Some(epoch),
        _ => None,
    }
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
        // And with an identity allow-list, the certificate must name one of them (any CA-signed certificate is
        // not enough).
        if !node.config.replica_identities.is_empty() {
            let certs = req.peer_certs();
            let leaf = certs.as_ref().and_then(|c| c.first());
            if !leaf.is_some_and(|c| names_one_of(c.as_ref(), &node.config.replica_identities)) {
                return Err(ApiError::new(
                    Code::PermissionDenied,
                    format!(
                        "the replica's client certificate names none of the allowed replica identities ({})",
                        node.config.replica_identities.join(", ")
                    ),
                )
                .to_status());
            }
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
        let key = node.db.verifier_key();
        let own = primary_epoch(&node);
        let view = Hello {
            node_id: &hello.node_id,
            commit_id: CommitId(hello.commit_id),
            highest_epoch: Epoch(hello.highest_epoch),
            epoch_proof: hello.epoch_proof.as_deref(),
        };
        let from = match on_hello(own, &view, &key) {
            HelloDecision::Accept { from } => from,
            HelloDecision::NotPrimary => {
                return Err(ApiError::new(Code::NotLeader, "this node is not a writable primary").to_status())
            }
            HelloDecision::Unproven { claimed, proven } => {
                node.replicas
                    .unproven_epoch_claims
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    replica = %hello.node_id, %peer, claimed = claimed.0, proven = ?proven.map(|e| e.0),
                    "refused a replica claiming a newer epoch without proof; this primary keeps serving"
                );
                return Err(Status::failed_precondition(format!(
                    "UNPROVEN_EPOCH_CLAIM: the replica claims epoch {} above this primary's {} without a checkpoint \
                     of that epoch signed by the log's key; refused (check the replica's --epoch)",
                    claimed.0,
                    own.map_or(0, |e| e.0)
                )));
            }
            HelloDecision::Superseded { epoch } => {
                // The welcome (with this node's older epoch) lets the replica halt on its side too.
                let w = welcome(&node, CommitId(hello.commit_id).next());
                node.observe(
                    Observation::PeerPrimary {
                        epoch,
                        node: format!("the primary followed by replica {}", hello.node_id),
                    },
                    &format!(
                        "replica {} ({peer}) proved epoch {} with the checkpoint:\n{}",
                        hello.node_id,
                        epoch.0,
                        hello.epoch_proof.as_deref().unwrap_or_default()
                    ),
                );
                let w = w.map_err(|e| e.to_status())?;
                let (tx, rx) = mpsc::channel::<Result<pb::PrimaryMessage, Status>>(1);
                let _ = tx.send(msg(PMsg::Welcome(w))).await;
                // The stream stays open until the replica has read the welcome and gone (or a few seconds).
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(aerodb_replication::core::primary::SILENCE, async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    drop(tx);
                });
                let stream: PrimaryStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
                return Ok(Response::new(stream));
            }
        };
        let welcome = welcome(&node, from).map_err(|e| e.to_status())?;
        let (tx, rx) = mpsc::channel::<Result<pb::PrimaryMessage, Status>>(8);
        tx.send(msg(PMsg::Welcome(welcome)))
            .await
            .map_err(|_| Status::cancelled("the replica went away"))?;
        if !hello.witness_key.is_empty() {
            if let Err(e) = node.cosigning.announce(&hello.node_id, &hello.witness_key) {
                tracing::warn!(replica = %hello.node_id, %peer, "ignoring the replica's witness key: {e}");
            }
        }
        let id = node.replicas.register(hello.node_id.clone(), peer.clone(), from);
        tracing::info!(replica = %hello.node_id, %peer, from = from.0, "replica connected");
        // Acknowledgements and cosignatures, until the replica closes its side.
        let acks = {
            let node = node.clone();
            let replica_id = hello.node_id.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    match m.msg {
                        Some(RMsg::Ack(a)) => node.replicas.acked(id, a.written, a.flushed, a.applied),
                        Some(RMsg::Cosignature(c)) => {
                            let (n, key) = (node.clone(), node.db.verifier_key());
                            let replica = replica_id.clone();
                            // Verifying and (at quorum) persisting the published checkpoint: off the runtime.
                            let done = tokio::task::spawn_blocking(move || {
                                n.cosigning.receive(&key, &c.note, &c.lines)
                            })
                            .await;
                            match done {
                                Ok(Ok(count)) => tracing::debug!(%replica, count, "cosignature received"),
                                Ok(Err(e)) => {
                                    tracing::warn!(%replica, "a cosignature from the replica was refused: {e}")
                                }
                                Err(e) => tracing::error!("cosignature task failed: {e}"),
                            }
                        }
                        _ => {}
                    }
                }
            })
        };
        let replica = hello.node_id;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let out = send_log(&node, id, &tx, &acks, stop).await;
            acks.abort();
            node.replicas.unregister(id);
            tracing::info!(%replica, %peer, reason = %out, "replica disconnected");
        });
        let stream: PrimaryStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }
}

/// The welcome for a replica whose next CommitId is `from`.
fn welcome(node: &Node, from: CommitId) -> Result<pb::Welcome, ApiError> {
    let db = &node.db;
    let replica_tip = from.0 - 1;
    let hash_at_replica_tip = match replica_tip {
        0 => None,
        c => db.record(CommitId(c))?.map(|r| r.hash.to_vec()),
    };
    Ok(pb::Welcome {
        node_id: node.config.node_id.clone(),
        epoch: node.role.lock().highest_epoch.0,
        verifier_key: db.verifier_key().to_string(),
        segment_bytes: db.segment_bytes(),
        commit_id: (db.tip()?.commit_id).0,
        hash_at_replica_tip,
        leader_url: node
            .advertised
            .get()
            .map(|a| a.rest_url.clone())
            .or_else(|| node.config.advertise_url.clone())
            .unwrap_or_default(),
        epoch_proof: db.latest_checkpoint().map(|c| c.note),
    })
}

/// Queues one message for the replica; a replica that stops reading (a partition: the stream's flow-control
/// window stays full) is given up after the silence limit.
async fn deliver(tx: &Tx, m: PMsg) -> crate::Result<()> {
    let limit = aerodb_replication::core::primary::SILENCE;
    match tokio::time::timeout(limit, tx.send(msg(m))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(crate::Error::Peer("the replica went away".into())),
        Err(_) => Err(crate::Error::Peer(format!(
            "the replica read nothing for {} ms",
            limit.as_millis()
        ))),
    }
}

/// Reads up to a batch of frames from `from`: the live tail (a few records just written, in the page cache) in
/// place — a hop to the blocking pool would cost more than the read — and catch-up reads on the blocking pool.
async fn read_frames(node: &Arc<Node>, from: CommitId, tip: CommitId) -> crate::Result<Vec<Bytes>> {
    let reading = |e| crate::Error::engine(format!("reading frames from CommitId {}", from.0), e);
    if tip.0.saturating_sub(from.0) < LIVE_TAIL_RECORDS {
        return node.db.raw_frames(CommitId(from.0), BATCH_BYTES).map_err(reading);
    }
    let db = node.db.clone();
    tokio::task::spawn_blocking(move || db.raw_frames(CommitId(from.0), BATCH_BYTES))
        .await
        .map_err(|e| crate::Error::Task(format!("the frame reader failed: {e}")))?
        .map_err(reading)
}

/// Streams the log to replica `id` until it disconnects or this node stops being primary: each turn asks the
/// core what to do and does it.
async fn send_log(
    node: &Arc<Node>,
    id: u64,
    tx: &Tx,
    acks: &tokio::task::JoinHandle<()>,
    mut stop: watch::Receiver<bool>,
) -> String {
    let mut published = node.replicas.subscribe();
    loop {
        if acks.is_finished() {
            return "the replica closed its stream".into();
        }
        if *stop.borrow() {
            return "the node is shutting down".into();
        }
        let tip = CommitId(node.db.tip().map_or(0, |t| t.commit_id.0));
        // The checkpoint the view shows is the one sent (the next in log order), so it never covers frames not
        // yet sent.
        let Some(index) = node.replicas.with_stream(id, |s| s.checkpoints_sent()) else {
            return "the replica was forgotten".into();
        };
        let checkpoint = node.db.checkpoint_at(index);
        let view = View {
            tip,
            checkpoint: checkpoint
                .as_ref()
                .map(|c| (c.checkpoint.size, Epoch(c.checkpoint.epoch.0))),
            may_write: primary_epoch(node).is_some(),
        };
        let now = node.replicas.now();
        let Some(next) = node.replicas.with_stream(id, |s| s.poll(&view, now)) else {
            return "the replica was forgotten".into();
        };
        let sent = match next {
            Next::End(why) => return why,
            Next::Frames { from } => match read_frames(node, from, tip).await {
                Err(e) => return e.to_string(),
                Ok(frames) if frames.is_empty() => Ok(()),
                Ok(frames) => {
                    let last = CommitId(from.0 + frames.len() as u64 - 1);
                    let bytes = frames.iter().map(|f| f.len() as u64).sum();
                    let batch = pb::FrameBatch {
                        frames: frames.into_iter().map(|f: Bytes| f.to_vec()).collect(),
                        primary_commit_id: tip.0,
                    };
                    let now = node.replicas.now();
                    node.replicas.with_stream(id, |s| s.frames_sent(last, bytes, now));
                    deliver(tx, PMsg::Frames(batch)).await
                }
            },
            Next::Checkpoint => {
                let Some(cp) = checkpoint else { continue };
                let now = node.replicas.now();
                node.replicas.with_stream(id, |s| s.checkpoint_sent(now));
                deliver(tx, PMsg::Checkpoint(cp.note)).await
            }
            Next::Heartbeat => {
                let now = node.replicas.now();
                node.replicas.with_stream(id, |s| s.heartbeat_sent(now));
                let hb = pb::Heartbeat {
                    primary_commit_id: tip.0,
                    epoch: node.role.lock().highest_epoch.0,
                };
                deliver(tx, PMsg::Heartbeat(hb)).await
            }
            Next::Idle { until } => {
                let at = tokio::time::Instant::from_std(node.replicas.instant(until));
                tokio::select! {
                    _ = stop.changed() => {}
                    changed = published.changed() => {
                        if changed.is_err() {
                            return "the node is shutting down".into();
                        }
                    }
                    () = tokio::time::sleep_until(at) => {}
                }
                Ok(())
            }
        };
        if let Err(why) = sent {
            return why.to_string();
        }
    }
}

/// Whether the DER certificate `der` is valid for one of `names` (DNS names or IP addresses in its SANs).
fn names_one_of(der: &[u8], names: &[String]) -> bool {
    let der = rustls_pki_types::CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    names.iter().any(|n| {
        rustls_pki_types::ServerName::try_from(n.as_str())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}
