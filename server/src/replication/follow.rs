//! The replica's edge: keeps one stream open to the primary (reconnecting with backoff), hands every message to
//! the core's [`Follower`] and carries out what it decides — apply frames through the
//! [`Applier`], send acks, halt with evidence, or retry.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aerodb_proto::v1::{self as pb, primary_message::Msg as PMsg, replica_message::Msg as RMsg};
use aerodb_replication::{
    apply::{Applier, ApplyError},
    core::follower::{Ack, End, Follower, Welcome},
    role::{HaltReason, Observation},
};
use aerodb_wal::{CommitId, Epoch};
use bytes::Bytes;
use hex::encode as hex;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::Request;

use super::primary::BATCH_BYTES;
use crate::node::Node;

/// A replica applies the batches it has already received together, up to this many bytes.
const GATHER_BYTES: usize = 8 << 20;

/// Why a follower stream ended.
enum StreamEnd {
    /// The node halted; stop following.
    Halted,
    /// The stream broke or was refused; try again.
    Retry(String),
    /// A divergent tail was cut: read the tip again and reconnect at once.
    Cut(String),
}

impl From<End> for StreamEnd {
    fn from(e: End) -> Self {
        match e {
            End::Retry(w) => StreamEnd::Retry(w),
            // Halts are carried out where the evidence is at hand; this only marks the end.
            End::Halt(_) => StreamEnd::Halted,
        }
    }
}

/// What a replica reads once to connect: its token, the CA it trusts, its client identity.
struct Credentials {
    token: Option<String>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn credentials(node: &Node) -> crate::Result<Credentials> {
    let c = &node.config;
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| crate::Error::file(p, format_args!("reading {what}: {e}")))
    };
    // The replicator token and the client key are secrets: refused if others may read them.
    if let Some(p) = &c.primary_token_file {
        crate::auth::refuse_shared_file(p)?;
    }
    if let Some((_, key)) = &c.primary_client_identity {
        crate::auth::refuse_shared_file(key)?;
    }
    let token = match &c.primary_token_file {
        Some(p) => Some(
            String::from_utf8_lossy(&read(p, "the replicator token")?)
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let ca = match &c.primary_ca_cert {
        Some(p) => Some(read(p, "the primary's CA certificate")?),
        None => None,
    };
    let identity = match &c.primary_client_identity {
        Some((cert, key)) => Some((
            read(cert, "the client certificate")?,
            read(key, "the client key")?,
        )),
        None => None,
    };
    Ok(Credentials { token, ca, identity })
}

/// The replica's side: keeps a stream to the primary at `url` (gRPC) open until `stop`, a halt, or shutdown,
/// reconnecting with backoff.
pub async fn follow(node: Arc<Node>, url: String, mut stop: watch::Receiver<bool>) {
    let creds = match credentials(&node) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}; not following");
            node.follower.lock().last_error = e.to_string();
            return;
        }
    };
    let new_applier = |node: &Arc<Node>| {
        let db = node.db.clone();
        async move {
            match tokio::task::spawn_blocking(move || Applier::new(db, 64 << 20)).await {
                Ok(Ok(a)) => Ok(Arc::new(Mutex::new(a))),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let mut applier = match new_applier(&node).await {
        Ok(a) => a,
        Err(e) => return log_failed(&node, &format!("reading the replica's tip: {e}")),
    };
    // How far back the next cut of a divergent tail goes (doubling while the histories still differ).
    let mut cut_step = 1;
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let end = tokio::select! {
            end = stream_once(&node, &url, &creds, &applier, &mut cut_step) => Some(end),
            _ = stop.wait_for(|s| *s) => None,
        };
        {
            let mut s = node.follower.lock();
            s.connected = false;
            if let Some(StreamEnd::Retry(why)) = &end {
                s.last_error.clone_from(why);
            }
        }
        match end {
            None | Some(StreamEnd::Halted) => return,
            Some(StreamEnd::Cut(what)) => {
                tracing::warn!(primary = %url, "{what}; reconnecting");
                applier = match new_applier(&node).await {
                    Ok(a) => a,
                    Err(e) => {
                        return log_failed(&node, &format!("reading the replica's tip after a cut: {e}"))
                    }
                };
            }
            Some(StreamEnd::Retry(why)) => {
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

/// The replica's own log failed: it can no longer prove what it serves, so the node halts (no stale reads).
fn log_failed(node: &Node, what: &str) {
    tracing::error!("the replica's log failed: {what}; the node halts");
    node.observe(Observation::Halt(HaltReason::LogFailed(what.to_owned())), what);
}

/// Halts the node with `reason` and the evidence, and ends the stream.
fn halt(node: &Node, reason: HaltReason, evidence: &str) -> StreamEnd {
    node.observe(Observation::Halt(reason), evidence);
    StreamEnd::Halted
}

async fn connect(url: &str, creds: &Credentials) -> crate::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| crate::Error::config(format!("bad primary URL {url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let endpoint = if creds.ca.is_none() && creds.identity.is_none() {
        endpoint
    } else {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &creds.ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &creds.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| crate::Error::Peer(format!("TLS to {url}: {e}")))?
    };
    endpoint
        .connect()
        .await
        .map_err(|e| crate::Error::Peer(format!("connecting to {url}: {e}")))
}

async fn send_ack(out: &mpsc::Sender<pb::ReplicaMessage>, ack: Ack) -> Result<(), StreamEnd> {
    let ack = pb::ReplicaAck {
        written: ack.written.0,
        flushed: ack.flushed.0,
        applied: ack.applied.0,
    };
    out.send(pb::ReplicaMessage {
        msg: Some(RMsg::Ack(ack)),
    })
    .await
    .map_err(|_| StreamEnd::Retry("the outbound stream closed".into()))
}

/// One stream: connect, handshake, apply until it ends.
async fn stream_once(
    node: &Arc<Node>,
    url: &str,
    creds: &Credentials,
    applier: &Arc<Mutex<Applier>>,
    cut_step: &mut u64,
) -> StreamEnd {
    let channel = match connect(url, creds).await {
        Ok(c) => c,
        Err(e) => return StreamEnd::Retry(e.to_string()),
    };
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(BATCH_BYTES + (64 << 20))
        .max_encoding_message_size(1 << 20);
    let tip = applier.lock().tip();
    let highest = node.role.lock().highest_epoch;
    let clock = Instant::now();
    let now = || clock.elapsed();
    let mut follower = Follower::new(tip, highest, now());
    let (out_tx, out_rx) = mpsc::channel::<pb::ReplicaMessage>(16);
    let hello = pb::ReplicaHello {
        node_id: node.config.node_id.clone(),
        commit_id: tip.commit_id.0,
        record_hash: tip.record_hash.to_vec(),
        epoch: tip.epoch.0,
        highest_epoch: highest.0,
        epoch_proof: node.db.latest_checkpoint().map(|c| c.note),
        witness_key: node.cosigning.witness.verifier().to_string(),
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
    if let Some(t) = &creds.token {
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
    let w = match inbound.message().await {
        Ok(Some(pb::PrimaryMessage {
            msg: Some(PMsg::Welcome(w)),
        })) => w,
        Ok(_) => return StreamEnd::Retry("the primary did not start with a Welcome".into()),
        Err(s) => return StreamEnd::Retry(format!("the primary refused the stream: {}", s.message())),
    };
    let welcome = Welcome {
        node_id: &w.node_id,
        epoch: Epoch(w.epoch),
        verifier_key: &w.verifier_key,
        segment_bytes: w.segment_bytes,
        commit_id: CommitId(w.commit_id),
        hash_at_our_tip: w
            .hash_at_replica_tip
            .as_deref()
            .and_then(|h| <[u8; 32]>::try_from(h).ok()),
        epoch_proof: w.epoch_proof.as_deref(),
    };
    let following = match follower.on_welcome(
        &welcome,
        &node.db.verifier_key(),
        node.db.segment_bytes(),
        now(),
    ) {
        Ok(f) => {
            *cut_step = 1;
            f
        }
        Err(End::Halt(HaltReason::Fork { commit_id, .. })) if node.may_cut_divergent_tail() => {
            // The elected primary's history differs at our tip. Under the etcd authority with synchronous
            // replication the winner holds every acknowledged record, so ours past the common prefix were never
            // acknowledged: cut them (kept in an evidence file) and try again, further back each time.
            let keep = commit_id.0.saturating_sub(*cut_step).min(w.commit_id);
            *cut_step = cut_step.saturating_mul(2);
            let n = node.clone();
            let primary = format!("{} at {url} (tip {}, epoch {})", w.node_id, w.commit_id, w.epoch);
            return match tokio::task::spawn_blocking(move || n.cut_divergent_tail(keep, &primary)).await {
                Ok(Ok(what)) => StreamEnd::Cut(what),
                Ok(Err(e)) => {
                    log_failed(node, &e);
                    StreamEnd::Halted
                }
                Err(e) => StreamEnd::Retry(format!("cut task failed: {e}")),
            };
        }
        Err(End::Halt(reason)) => {
            let evidence = format!(
                "handshake with primary {} at {url}: replica tip {} (epoch {}, hash {}), primary tip {} epoch {}\n\
                 the primary's latest checkpoint:\n{}",
                w.node_id,
                tip.commit_id,
                tip.epoch,
                hex(tip.record_hash),
                w.commit_id,
                w.epoch,
                w.epoch_proof.as_deref().unwrap_or("(none)\n")
            );
            return halt(node, reason, &evidence);
        }
        Err(e) => return e.into(),
    };
    if let Some(e) = following.raise_to {
        if !node.follow_epoch(e.0, url) {
            return StreamEnd::Halted;
        }
    }
    applier.lock().set_epoch_ceiling(following.epoch.0);
    {
        let mut s = node.follower.lock();
        s.connected = true;
        s.primary_commit_id = w.commit_id;
        s.leader_url.clone_from(&w.leader_url);
        s.leader_id.clone_from(&w.node_id);
        s.epoch = following.epoch;
        s.last_error.clear();
    }
    tracing::info!(primary = %w.node_id, %url, epoch = w.epoch, tip = tip.commit_id.0, "following");
    let ctx = Ctx {
        node,
        url,
        primary: &w.node_id,
        applier,
        their_checkpoint: Mutex::new(w.epoch_proof.clone()),
    };
    follow_stream(&ctx, &mut follower, &mut inbound, &out_tx, &now).await
}

/// What the message loop needs besides the follower.
struct Ctx<'a> {
    node: &'a Arc<Node>,
    url: &'a str,
    primary: &'a str,
    applier: &'a Arc<Mutex<Applier>>,
    /// The primary's latest checkpoint this replica was sent (halt evidence carries it).
    their_checkpoint: Mutex<Option<String>>,
}

impl Ctx<'_> {
    /// Halt evidence: what was observed, then the primary's tip and latest checkpoint as last heard (the node adds
    /// its own tip and checkpoints).
    fn evidence(&self, observed: &str) -> String {
        let their_tip = self.node.follower.lock().primary_commit_id;
        let cp = self.their_checkpoint.lock().clone();
        format!(
            "{observed}\nprimary {} at {}: tip {their_tip}; its latest checkpoint sent here:\n{}",
            self.primary,
            self.url,
            cp.as_deref().unwrap_or("(none)\n")
        )
    }
}

/// As a witness, cosigns a checkpoint the primary sent (its own log already reproduced the root). A checkpoint
/// of another history than the one this node cosigned (a fork) halts it, with the evidence; a witness state that cannot
/// be made durable is logged and nothing is cosigned.
async fn cosign(ctx: &Ctx<'_>, note: String) -> Result<Option<pb::Cosignature>, StreamEnd> {
    let node = ctx.node.clone();
    let n = note.clone();
    match tokio::task::spawn_blocking(move || node.cosigning.cosign_replicated(&n, &node.db)).await {
        Ok(Ok(Some(lines))) => Ok(Some(pb::Cosignature { note, lines })),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) if e.is_evidence() => {
            let reason = HaltReason::Corruption(format!(
                "WITNESS_REFUSED: {e}; this node cosigned a checkpoint that the log it now holds contradicts"
            ));
            let evidence = ctx.evidence(&format!("this checkpoint from the primary:\n{note}"));
            Err(halt(ctx.node, reason, &evidence))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "not cosigning a checkpoint from the primary");
            Ok(None)
        }
        Err(e) => Err(StreamEnd::Retry(format!("cosigning task failed: {e}"))),
    }
}

/// The message loop after the handshake.
async fn follow_stream(
    ctx: &Ctx<'_>,
    follower: &mut Follower,
    inbound: &mut tonic::Streaming<pb::PrimaryMessage>,
    out: &mpsc::Sender<pb::ReplicaMessage>,
    now: &impl Fn() -> Duration,
) -> StreamEnd {
    // A message read while gathering batches that is not a batch: handled next.
    let mut deferred = None;
    loop {
        let m = match deferred.take() {
            Some(m) => m,
            None => {
                let silence = follower.silence_deadline().saturating_sub(now());
                match tokio::time::timeout(silence, inbound.message()).await {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => return StreamEnd::Retry("the primary ended the stream".into()),
                    Ok(Err(s)) => return StreamEnd::Retry(format!("the stream broke: {}", s.message())),
                    Err(_) => match follower.tick(now()) {
                        Ok(()) => continue,
                        Err(e) => return e.into(),
                    },
                }
            }
        };
        let sent = match m.msg {
            Some(PMsg::Frames(batch)) => {
                let (ack, next) = match apply_gathered(ctx, follower, batch, inbound, now).await {
                    Ok(x) => x,
                    Err(end) => return end,
                };
                deferred = next;
                send_ack(out, ack).await
            }
            Some(PMsg::Checkpoint(note)) => {
                let size = aerodb_engine::SignedCheckpoint::verify(&note, &ctx.node.db.verifier_key())
                    .map_or(0, |c| c.checkpoint.size);
                match follower.on_checkpoint(size, now()) {
                    Ok(()) => {}
                    Err(End::Halt(reason)) => {
                        let evidence = ctx.evidence(&format!("this checkpoint from the primary:\n{note}"));
                        return halt(ctx.node, reason, &evidence);
                    }
                    Err(e) => return e.into(),
                }
                let db = ctx.node.db.clone();
                let n = note.clone();
                match tokio::task::spawn_blocking(move || db.add_checkpoint(&n)).await {
                    Ok(Ok(_)) => {
                        *ctx.their_checkpoint.lock() = Some(note.clone());
                        match cosign(ctx, note).await {
                            Ok(Some(c)) => out
                                .send(pb::ReplicaMessage {
                                    msg: Some(RMsg::Cosignature(c)),
                                })
                                .await
                                .map_err(|_| StreamEnd::Retry("the outbound stream closed".into())),
                            Ok(None) => Ok(()),
                            Err(end) => return end,
                        }
                    }
                    Ok(Err(e)) => {
                        let reason = HaltReason::Corruption(format!(
                            "a checkpoint from the primary does not check: {e}"
                        ));
                        let evidence = ctx.evidence(&format!("this checkpoint from the primary:\n{note}"));
                        return halt(ctx.node, reason, &evidence);
                    }
                    Err(e) => return StreamEnd::Retry(format!("checkpoint task failed: {e}")),
                }
            }
            Some(PMsg::Heartbeat(hb)) => {
                ctx.node.follower.lock().primary_commit_id = hb.primary_commit_id;
                match follower.on_heartbeat(Epoch(hb.epoch), now()) {
                    Ok(ack) => send_ack(out, ack).await,
                    Err(End::Halt(reason)) => {
                        let evidence = ctx.evidence(&format!("a heartbeat with epoch {}", hb.epoch));
                        return halt(ctx.node, reason, &evidence);
                    }
                    Err(e) => return e.into(),
                }
            }
            Some(PMsg::Welcome(_)) | None => {
                Err(StreamEnd::Retry("unexpected message from the primary".into()))
            }
        };
        if let Err(end) = sent {
            return end;
        }
    }
}

/// Applies `batch` together with the batches already received (one durable write, one fsync for all), and
/// returns the ack and a non-batch message read meanwhile.
async fn apply_gathered(
    ctx: &Ctx<'_>,
    follower: &mut Follower,
    batch: pb::FrameBatch,
    inbound: &mut tonic::Streaming<pb::PrimaryMessage>,
    now: &impl Fn() -> Duration,
) -> Result<(Ack, Option<pb::PrimaryMessage>), StreamEnd> {
    let mut primary_commit = batch.primary_commit_id;
    let mut frames: Vec<Bytes> = batch.frames.into_iter().map(Bytes::from).collect();
    let mut bytes: usize = frames.iter().map(Bytes::len).sum();
    let mut deferred = None;
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
    ctx.node.follower.lock().primary_commit_id = primary_commit;
    let a = ctx.applier.clone();
    let applied = super::blocking(move || {
        let mut a = a.lock();
        let r = a.apply(&frames);
        (r, a.tip(), frames)
    })
    .await;
    let (result, tip, frames) = applied.map_err(|e| StreamEnd::Retry(format!("apply task failed: {e}")))?;
    match result {
        Ok(_) => {}
        Err(ApplyError::Halt(reason)) => {
            let failing = frames
                .iter()
                .find(|f| {
                    // The first frame past the tip, or the first that does not even decode.
                    aerodb_wal::format::decode_frame_header(f, usize::MAX)
                        .map_or(true, |h| h.commit_id.0 > tip.commit_id.0)
                })
                .map(|f| hex(&f[..f.len().min(256)]))
                .unwrap_or_default();
            let evidence = ctx.evidence(&format!(
                "frames from the primary; replica tip {} (epoch {}); first frame not applied (up to 256 bytes, \
                 hex): {failing}",
                tip.commit_id, tip.epoch
            ));
            return Err(halt(ctx.node, reason, &evidence));
        }
        Err(ApplyError::Engine(e)) => {
            log_failed(ctx.node, &e.to_string());
            return Err(StreamEnd::Halted);
        }
    }
    ctx.node.replicas.published(tip.commit_id.0);
    Ok((follower.applied(tip, now()), deferred))
}
