//! The gRPC API (tonic): `aerodb.v1.Ledger`. Bearer tokens travel in the `authorization` metadata entry.

use std::{pin::Pin, sync::Arc};

use aerodb_engine::{NewRecord, Op, Payload, SignedCheckpoint, StoredRecord};
use aerodb_proto::v1 as pb;
use bytes::Bytes;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::{Action, Caller},
    error::{ApiError, ApiResult, Code},
    node::Node,
};

/// The service implementation.
#[derive(Debug, Clone)]
pub struct LedgerService {
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
}

/// The answers of one `AppendStream` call.
pub type AppendStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AppendResponse, Status>> + Send>>;

/// What tonic reports for a request message it could not decode is bad input, not a server fault: a message
/// that is not valid protobuf or ends early is INVALID_ARGUMENT (tonic says INTERNAL), one over the size limit
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE). `message` may be percent-encoded, as in a `grpc-message` header.
/// `None`: leave the status as it is.
#[must_use]
pub fn bad_message_code(code: tonic::Code, message: &[u8]) -> Option<tonic::Code> {
    let starts = |prefixes: &[&[u8]]| prefixes.iter().any(|p| message.starts_with(p));
    match code {
        tonic::Code::Internal
            if starts(&[
                b"Unexpected%20EOF",
                b"Unexpected EOF",
                b"failed%20to%20decode",
                b"failed to decode",
                b"protocol%20error",
                b"protocol error",
                b"Missing%20request%20message",
                b"Missing request message",
            ]) =>
        {
            Some(tonic::Code::InvalidArgument)
        }
        tonic::Code::OutOfRange
            if starts(&[
                b"Error, decoded message length too large",
                b"Error,%20decoded%20message%20length%20too%20large",
            ]) =>
        {
            Some(tonic::Code::ResourceExhausted)
        }
        _ => None,
    }
}

impl LedgerService {
    /// A service over a node; its append streams end (UNAVAILABLE) when `stop` turns true, so a graceful
    /// shutdown is not held up by writers that keep a stream open.
    #[must_use]
    pub fn new(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        Self { node, stop }
    }

    /// Appends one requested record (no authorization check: the caller has made it).
    async fn append_one(&self, caller: &Caller, req: pb::AppendRequest) -> ApiResult<pb::AppendResponse> {
        let rec = new_record(
            req.record
                .ok_or_else(|| ApiError::invalid("the request has no record"))?,
        )?;
        caller.may_use_tenant(&rec.tenant)?;
        let out = self.node.append(rec.tenant, rec.payload, req.prove).await?;
        Ok(pb::AppendResponse {
            receipt: Some(receipt(&out.receipt)),
            checkpoint: out.proof.as_ref().map(|(c, _)| checkpoint(c)),
            proof: out.proof.as_ref().map(|(_, p)| proof(p)),
        })
    }

    /// The answer to the next request of an append stream, once its record is durable; `None` when the client
    /// has sent its last request. A shutdown is noticed only between requests: an append once read is finished.
    async fn next_streamed(
        &self,
        caller: &Caller,
        inbound: &mut Streaming<pb::AppendRequest>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<pb::AppendResponse, Status>> {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => Err(ApiError::new(
                Code::Unavailable,
                "the server is shutting down; every request answered before this is durable, resend the rest",
            )),
            m = inbound.message() => match m {
                Ok(None) => return None,
                Ok(Some(req)) => Ok(req),
                Err(s) => match bad_message_code(s.code(), s.message().as_bytes()) {
                    Some(tonic::Code::ResourceExhausted) => Err(ApiError::new(Code::PayloadTooLarge, s.message())),
                    Some(_) => Err(ApiError::invalid(s.message())),
                    // The stream broke (the client reset it, the connection closed): pass on what tonic saw.
                    None => return Some(Err(s)),
                },
            },
        };
        let r = match msg {
            Ok(req) => self.append_one(caller, req).await,
            Err(e) => Err(e),
        };
        Some(self.finish(r).map(Response::into_inner))
    }

    fn authorize<T>(&self, req: &Request<T>, action: Action) -> ApiResult<Caller> {
        self.node
            .authorize(req.metadata().get("authorization").map(|v| v.as_bytes()), action)
    }

    fn finish<T>(&self, r: ApiResult<T>) -> Result<Response<T>, Status> {
        match r {
            Ok(v) => {
                self.node.metrics.request("grpc", "OK");
                Ok(Response::new(v))
            }
            Err(e) => {
                self.node.metrics.request("grpc", e.code.as_str());
                if e.code == crate::error::Code::Internal {
                    tracing::error!(message = %e.message, "internal error answering a gRPC request");
                }
                Err(e.to_status())
            }
        }
    }
}

fn new_record(r: pb::NewRecord) -> ApiResult<NewRecord> {
    let payload = match r.payload {
        Some(pb::new_record::Payload::Event(e)) => Payload::Event(Bytes::from(e)),
        Some(pb::new_record::Payload::Batch(b)) => Payload::Batch(
            b.ops
                .into_iter()
                .enumerate()
                .map(|(i, op)| {
                    if op.delete {
                        if !op.value.is_empty() {
                            return Err(ApiError::invalid(format!("ops[{i}]: a delete takes no value")));
                        }
                        Ok(Op::Delete {
                            key: Bytes::from(op.key),
                        })
                    } else {
                        Ok(Op::Put {
                            key: Bytes::from(op.key),
                            value: Bytes::from(op.value),
                        })
                    }
                })
                .collect::<ApiResult<Vec<_>>>()?,
        ),
        None => return Err(ApiError::invalid("the record has no payload (batch or event)")),
    };
    Ok(NewRecord {
        tenant: r.tenant,
        payload,
    })
}

fn receipt(r: &aerodb_engine::Receipt) -> pb::Receipt {
    pb::Receipt {
        commit_id: r.commit_id.0,
        record_hash: r.record_hash.to_vec(),
        leaf_index: r.leaf_index,
    }
}

/// The protobuf form of a checkpoint.
#[must_use]
pub fn checkpoint(c: &SignedCheckpoint) -> pb::Checkpoint {
    checkpoint_with(c, Vec::new())
}

/// The protobuf form of a checkpoint whose note carries the cosignatures of `witnesses`.
#[must_use]
pub fn checkpoint_with(c: &SignedCheckpoint, witnesses: Vec<String>) -> pb::Checkpoint {
    pb::Checkpoint {
        note: c.note.clone(),
        origin: c.checkpoint.origin.clone(),
        size: c.checkpoint.size,
        root: c.checkpoint.root.to_vec(),
        epoch: c.checkpoint.epoch.0,
        witnesses,
    }
}

/// The protobuf form of a batch.
fn batch(ops: &[Op]) -> pb::Batch {
    pb::Batch {
        ops: ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => pb::Op {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    delete: false,
                },
                Op::Delete { key } => pb::Op {
                    key: key.to_vec(),
                    value: Vec::new(),
                    delete: true,
                },
            })
            .collect(),
    }
}

/// The protobuf form of a record to append (used by clients).
#[must_use]
pub fn new_record_pb(tenant: &str, payload: &Payload) -> pb::NewRecord {
    pb::NewRecord {
        tenant: tenant.to_owned(),
        payload: Some(match payload {
            Payload::Event(e) => pb::new_record::Payload::Event(e.to_vec()),
            Payload::Batch(ops) => pb::new_record::Payload::Batch(batch(ops)),
        }),
    }
}

fn record(r: &StoredRecord) -> pb::Record {
    let rec = &r.record;
    pb::Record {
        commit_id: rec.commit_id.0,
        epoch: rec.epoch.0,
        timestamp_ms: rec.timestamp_ms,
        tenant: rec.tenant.clone(),
        payload: Some(match &rec.payload {
            Payload::Event(e) => pb::record::Payload::Event(e.to_vec()),
            Payload::Batch(ops) => pb::record::Payload::Batch(batch(ops)),
        }),
        prev_hash: rec.prev_hash.to_vec(),
        record_hash: r.hash.to_vec(),
        canonical: r.canonical.to_vec(),
    }
}

fn proof(p: &aerodb_engine::InclusionProof) -> pb::InclusionProof {
    pb::InclusionProof {
        leaf_index: p.leaf_index,
        tree_size: p.tree_size,
        hashes: p.hashes.iter().map(|h| h.to_vec()).collect(),
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Write)?;
            self.append_one(&caller, req.into_inner()).await
        }
        .await;
        self.finish(r)
    }

    type BackupStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send + 'static>>;

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let r = self.authorize(&req, Action::Admin).and_then(|_| {
            if self
                .node
                .backup_running
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                return Err(ApiError::overloaded(
                    "a backup of this node is already running; one at a time",
                    1000,
                ));
            }
            Ok(())
        });
        if let Err(e) = r {
            // `finish` counts the refusal and turns it into its status.
            return Err(self
                .finish::<()>(Err(e))
                .err()
                .unwrap_or_else(|| Status::internal("backup refused")));
        }
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::BackupChunk, Status>>(4);
        tokio::spawn(async move {
            let n = node.clone();
            let plan = tokio::task::spawn_blocking(move || n.backup_plan()).await;
            let sent = match plan {
                Ok(Ok((cut, pieces, head))) => send_backup(&node, cut, pieces, head, &tx).await,
                Ok(Err(e)) => Err(e.to_status()),
                Err(e) => Err(Status::internal(format!("backup task: {e}"))),
            };
            if let Err(s) = sent {
                let _ = tx.send(Err(s)).await;
            }
        });
        // The node's one backup slot is held by the response stream, not by the task that fills it: a small
        // backup fits in the channel and its task ends at once, while the client is still receiving it.
        let slot = BackupSlot(self.node.clone());
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            move |chunk| {
                let _held = &slot;
                chunk
            },
        ))))
    }

    type AppendStreamStream = AppendStream;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<AppendStream>, Status> {
        // The token is checked once, when the stream opens; whether the node accepts writes, at every append.
        let caller = match self.authorize(&req, Action::Write) {
            Ok(c) => c,
            Err(e) => return self.finish(Err(e)),
        };
        let state = (self.clone(), caller, req.into_inner(), self.stop.clone());
        let answers = futures_util::stream::unfold(Some(state), |state| async move {
            let (svc, caller, mut inbound, mut stop) = state?;
            match svc.next_streamed(&caller, &mut inbound, &mut stop).await? {
                Ok(answer) => Some((Ok(answer), Some((svc, caller, inbound, stop)))),
                // The first error ends the stream, with its status.
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_batch(
        &self,
        req: Request<pb::AppendBatchRequest>,
    ) -> Result<Response<pb::AppendBatchResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Write)?;
            let records = req
                .into_inner()
                .records
                .into_iter()
                .map(new_record)
                .collect::<ApiResult<Vec<_>>>()?;
            for r in &records {
                caller.may_use_tenant(&r.tenant)?;
            }
            let receipts = self.node.append_batch(records).await?;
            Ok(pb::AppendBatchResponse {
                receipts: receipts.iter().map(receipt).collect(),
            })
        }
        .await;
        self.finish(r)
    }

    async fn get_record(
        &self,
        req: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Read)?;
            let rec = self.node.record(&caller, req.into_inner().commit_id).await?;
            Ok(pb::GetRecordResponse {
                record: Some(record(&rec)),
            })
        }
        .await;
        self.finish(r)
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Result<Response<pb::GetKeyResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Read)?;
            let req = req.into_inner();
            let (value, at) = self
                .node
                .get(&caller, req.tenant, Bytes::from(req.key), req.at)
                .await?;
            Ok(pb::GetKeyResponse {
                found: value.is_some(),
                value: value.map(|v| v.to_vec()).unwrap_or_default(),
                at,
            })
        }
        .await;
        self.finish(r)
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Read)?;
            let req = req.into_inner();
            let versions = self
                .node
                .history(&caller, req.tenant, Bytes::from(req.key))
                .await?;
            Ok(pb::HistoryResponse {
                versions: versions
                    .into_iter()
                    .map(|v| pb::Version {
                        commit_id: v.commit_id.0,
                        deleted: v.value.is_none(),
                        value: v.value.map(|b| b.to_vec()).unwrap_or_default(),
                    })
                    .collect(),
            })
        }
        .await;
        self.finish(r)
    }

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Read)?;
            let req = req.into_inner();
            let items = self
                .node
                .scan(&caller, req.tenant, Bytes::from(req.prefix), req.limit)
                .await?;
            Ok(pb::ScanResponse {
                items: items
                    .into_iter()
                    .map(|(k, v)| pb::KeyValue {
                        key: k.to_vec(),
                        value: v.to_vec(),
                    })
                    .collect(),
            })
        }
        .await;
        self.finish(r)
    }

    async fn scan_records(
        &self,
        req: Request<pb::ScanRecordsRequest>,
    ) -> Result<Response<pb::ScanRecordsResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Read)?;
            let req = req.into_inner();
            let (recs, next_from) = self
                .node
                .records(&caller, req.from, req.limit, req.tenant)
                .await?;
            Ok(pb::ScanRecordsResponse {
                records: recs.iter().map(record).collect(),
                next_from,
            })
        }
        .await;
        self.finish(r)
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let r = async {
            let caller = self.authorize(&req, Action::Read)?;
            let req = req.into_inner();
            let inc = self
                .node
                .inclusion(&caller, req.commit_id, Some(req.tree_size).filter(|s| *s > 0))
                .await?;
            Ok(pb::InclusionProofResponse {
                proof: Some(proof(&inc.proof)),
                record: Some(record(&inc.record)),
            })
        }
        .await;
        self.finish(r)
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let r = async {
            self.authorize(&req, Action::Read)?;
            let req = req.into_inner();
            let (old, new, hashes) = self
                .node
                .consistency(req.old_size, Some(req.new_size).filter(|s| *s > 0))
                .await?;
            Ok(pb::ConsistencyProofResponse {
                old_size: old,
                new_size: new,
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            })
        }
        .await;
        self.finish(r)
    }

    async fn latest_checkpoint(
        &self,
        req: Request<pb::LatestCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let r = async {
            self.authorize(&req, Action::Read)?;
            let (cp, witnesses) = self
                .node
                .checkpoint_cosigned(req.get_ref().cosigned as usize)
                .await?;
            Ok(checkpoint_with(&cp, witnesses))
        }
        .await;
        self.finish(r)
    }

    async fn health(&self, _req: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let (status, writable, _serving) = self.node.health();
        self.finish(Ok(pb::HealthResponse { status, writable }))
    }

    async fn ha_status(
        &self,
        req: Request<pb::HaStatusRequest>,
    ) -> Result<Response<pb::HaStatusResponse>, Status> {
        let r = async {
            self.authorize(&req, Action::Read)?;
            let s = self.node.ha_status().await?;
            Ok(pb::HaStatusResponse {
                node_id: s.node_id,
                role: s.role.into(),
                state: s.state.into(),
                epoch: s.epoch,
                leader_id: s.leader_id,
                leader_url: s.leader_url,
                is_leader: s.is_leader,
                lease_ms: s.lease_ms,
                expires_in_ms: s.expires_in_ms,
                commit_id: s.commit_id,
                applied_commit_id: s.applied_commit_id,
                write_block_active: s.write_block_active,
                can_accept_protected_writes: s.can_accept_protected_writes,
                halt_reason: s.halt_reason,
                replicas: s
                    .replicas
                    .into_iter()
                    .map(|r| pb::ReplicaLag {
                        node_id: r.node_id,
                        peer: r.peer,
                        written: r.written,
                        flushed: r.flushed,
                        applied: r.applied,
                        lag_records: r.lag_records,
                        lag_bytes: r.lag_bytes,
                        lag_ms: r.lag_ms,
                        connected_ms: r.connected_ms,
                    })
                    .collect(),
                connected_to_primary: s.connected_to_primary,
                primary_commit_id: s.primary_commit_id,
                replication_error: s.replication_error,
                witness_key: s.witness_key,
                cosignatures_made: s.cosignatures_made,
                witness_quorum: s.witness_quorum,
                witnesses_known: s.witnesses_known,
                cosigned_size: s.cosigned_size,
                cosigned_by: s.cosigned_by,
            })
        }
        .await;
        self.finish(r)
    }
}

/// Whether the gRPC method at `path` takes exactly one request message.
fn is_unary(path: &str) -> bool {
    path.starts_with("/aerodb.v1.Ledger/") && path != "/aerodb.v1.Ledger/AppendStream"
}

/// Wraps the body of a unary call so that a second request message is refused with `INVALID_ARGUMENT` (tonic
/// reads the first and drops the rest silently).
pub fn one_message_per_unary_call(
    req: tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body> {
    if is_unary(req.uri().path()) {
        req.map(|b| tonic::body::Body::new(OneMessage::new(b)))
    } else {
        req
    }
}

/// A request body that counts gRPC messages (each: a flag byte, a big-endian `u32` length, the bytes) and fails
/// once a second one begins.
struct OneMessage {
    inner: tonic::body::Body,
    /// Bytes of the current message still to come.
    need: u64,
    header: [u8; 5],
    header_got: usize,
    messages: u32,
}

impl OneMessage {
    fn new(inner: tonic::body::Body) -> Self {
        Self {
            inner,
            need: 0,
            header: [0; 5],
            header_got: 0,
            messages: 0,
        }
    }

    fn scan(&mut self, mut b: &[u8]) -> Result<(), Status> {
        while !b.is_empty() {
            if self.need > 0 {
                let n = usize::try_from(self.need).unwrap_or(usize::MAX).min(b.len());
                self.need -= n as u64;
                b = &b[n..];
                continue;
            }
            if self.header_got == 0 {
                self.messages += 1;
                if self.messages > 1 {
                    return Err(Status::invalid_argument(
                        "INVALID_ARGUMENT: a unary call carries exactly one request message; this one carries more",
                    ));
                }
            }
            let n = (5 - self.header_got).min(b.len());
            self.header[self.header_got..self.header_got + n].copy_from_slice(&b[..n]);
            self.header_got += n;
            b = &b[n..];
            if self.header_got == 5 {
                self.need = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.header_got = 0;
            }
        }
        Ok(())
    }
}

impl http_body::Body for OneMessage {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(s) = this.scan(data) {
                        return std::task::Poll::Ready(Some(Err(s)));
                    }
                }
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// Streams an online backup: the start, then each piece as its header and 1 MiB chunks (read off the runtime).
async fn send_backup(
    node: &Node,
    cut: aerodb_engine::SignedCheckpoint,
    pieces: Vec<aerodb_engine::backup::Piece>,
    head: [u8; 32],
    tx: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
) -> Result<(), Status> {
    use aerodb_engine::backup::Source;
    use pb::backup_chunk::Part;
    let size = |p: &aerodb_engine::backup::Piece| match &p.source {
        Source::File { len, .. } => *len,
        Source::Bytes(b) => b.len() as u64,
    };
    let gone = || Status::cancelled("the client went away");
    let start = pb::BackupStart {
        checkpoint: cut.note.clone(),
        head: if cut.checkpoint.size == 0 {
            Vec::new()
        } else {
            head.to_vec()
        },
        segment_bytes: node.db.segment_bytes(),
        origin: cut.checkpoint.origin.clone(),
        verifier_key: node.db.verifier_key().to_string(),
        total_bytes: pieces.iter().map(size).sum(),
    };
    let chunk = |part| Ok(pb::BackupChunk { part: Some(part) });
    tx.send(chunk(Part::Start(start))).await.map_err(|_| gone())?;
    for p in pieces {
        tx.send(chunk(Part::File(pb::BackupFile {
            path: p.rel.clone(),
            size: size(&p),
        })))
        .await
        .map_err(|_| gone())?;
        let mut reader = aerodb_engine::backup::open_piece(&p).map_err(Status::internal)?;
        loop {
            let (r, buf) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut filled = 0;
                while filled < buf.len() {
                    match std::io::Read::read(&mut reader, &mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(k) => filled += k,
                        Err(e) => return (Err(e), (reader, buf)),
                    }
                }
                buf.truncate(filled);
                (Ok(filled), (reader, buf))
            })
            .await
            .map_err(|e| Status::internal(format!("backup read task: {e}")))?;
            let (rd, data) = buf;
            reader = rd;
            let k = r.map_err(|e| Status::internal(format!("reading {}: {e}", p.rel)))?;
            if k == 0 {
                break;
            }
            tx.send(chunk(Part::Data(data))).await.map_err(|_| gone())?;
        }
    }
    Ok(())
}

/// Frees a node's backup slot when the backup's response stream is dropped (sent in full, failed, or abandoned by
/// the client).
struct BackupSlot(Arc<Node>);

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.0
            .backup_running
            .store(false, std::sync::atomic::Ordering::Release);
    }
}
