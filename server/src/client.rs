//! A Rust client that trusts nothing it cannot verify (verified reads and writes, E-8 from the client's side).
//!
//! It keeps the newest checkpoint it accepted. A new checkpoint is accepted only if its signature verifies with the
//! log's verifier key and it is consistent with the one before (a verified RFC 9162 consistency proof, or the same
//! root at the same size); a smaller tree is a rollback and is refused. Every write is re-read and its inclusion
//! in an accepted checkpoint verified from the record's own bytes; every read of a record proves the same.
//!
//! With [`VerifiedClient::require_witnesses`] a checkpoint is accepted (trusted) only with at least `threshold`
//! valid `cosignature/v1` cosignatures by the given witness keys: a primary (or whoever holds the log's key) can
//! then not show this client a history the witnesses did not see. A fresh write's own checkpoint is not cosigned
//! yet: [`VerifiedClient::append`] verifies it against the log's signature only (and says so), and
//! [`VerifiedClient::wait_witnessed`] waits for a cosigned checkpoint that covers it.

use aerodb_engine::{merkle, record, Checkpoint, Payload, SignedCheckpoint, VerifierKey};
use aerodb_proto::v1::{self as pb, ledger_client::LedgerClient};
use bytes::Bytes;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

/// What can go wrong.
#[derive(Debug)]
pub enum ClientError {
    /// Could not connect.
    Connect(String),
    /// The server answered with an error status.
    Rpc(tonic::Status),
    /// The server's answer does not verify: it is lying, or the log was rewritten.
    Verification(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Rpc(s) => write!(f, "{}: {}", s.code(), s.message()),
            ClientError::Verification(e) => write!(f, "VERIFICATION FAILED: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

fn bad(what: impl Into<String>) -> ClientError {
    ClientError::Verification(what.into())
}

fn hash32(v: &[u8], what: &str) -> Result<merkle::Hash, ClientError> {
    v.try_into()
        .map_err(|_| bad(format!("{what} is {} bytes, not 32", v.len())))
}

/// A write, verified: its receipt and the accepted checkpoint that proves it.
#[derive(Debug, Clone)]
pub struct VerifiedWrite {
    /// CommitId.
    pub commit_id: u64,
    /// The record's hash.
    pub record_hash: merkle::Hash,
    /// The checkpoint the inclusion proof verified against.
    pub checkpoint: Checkpoint,
    /// Whether that checkpoint carried the witness cosignatures this client requires (false when it requires
    /// none, or when the write's checkpoint was not cosigned yet: see [`VerifiedClient::wait_witnessed`]).
    pub witnessed: bool,
}

/// The verifying client.
#[derive(Debug, Clone)]
pub struct VerifiedClient {
    inner: LedgerClient<Channel>,
    /// The CA an `https://` endpoint is verified with (kept to reconnect to a leader).
    ca: Option<Vec<u8>>,
    /// Where it is connected.
    url: String,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    verifier: VerifierKey,
    trusted: Option<Checkpoint>,
    /// Witness keys and how many of them must have cosigned an accepted checkpoint (0: none).
    witnesses: Vec<VerifierKey>,
    threshold: usize,
}

impl VerifiedClient {
    /// Connects to a gRPC endpoint (`http://127.0.0.1:7001`) with an optional bearer token; checkpoints must be
    /// signed by `verifier`.
    pub async fn connect(url: &str, token: Option<&str>, verifier: VerifierKey) -> Result<Self, ClientError> {
        Self::connect_tls(url, token, verifier, None).await
    }

    /// Like [`VerifiedClient::connect`], for an `https://` endpoint whose certificate chains to `ca_pem` (PEM).
    pub async fn connect_tls(
        url: &str,
        token: Option<&str>,
        verifier: VerifierKey,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let inner = Self::channel(url, ca_pem).await?;
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Connect("the token is not valid header text".into()))
            })
            .transpose()?;
        Ok(Self {
            inner,
            ca: ca_pem.map(<[u8]>::to_vec),
            url: url.to_owned(),
            token,
            verifier,
            trusted: None,
            witnesses: Vec::new(),
            threshold: 0,
        })
    }

    async fn channel(url: &str, ca_pem: Option<&[u8]>) -> Result<LedgerClient<Channel>, ClientError> {
        let connect_err = |e: tonic::transport::Error| ClientError::Connect(format!("{url}: {e}"));
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(connect_err)?;
        if let Some(ca) = ca_pem {
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
                .map_err(connect_err)?;
        }
        Ok(LedgerClient::new(endpoint.connect().await.map_err(connect_err)?))
    }

    /// Where this client is connected.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// After a `NOT_LEADER` answer that names the leader's gRPC URL (metadata `aerodb-leader-grpc-url`) other than
    /// this client's: reconnects there (same token, CA and trusted checkpoint) and returns true, so the caller
    /// retries once. Anything else: false.
    pub async fn follow_leader(&mut self, status: &tonic::Status) -> Result<bool, ClientError> {
        let Some(url) = status
            .metadata()
            .get(crate::error::LEADER_GRPC_URL)
            .and_then(|v| v.to_str().ok())
            .filter(|u| *u != self.url && status.message().starts_with("NOT_LEADER"))
            .map(str::to_owned)
        else {
            return Ok(false);
        };
        self.inner = Self::channel(&url, self.ca.as_deref()).await?;
        self.url = url;
        Ok(true)
    }

    /// The newest checkpoint accepted so far.
    #[must_use]
    pub fn trusted(&self) -> Option<&Checkpoint> {
        self.trusted.as_ref()
    }

    /// Starts from a checkpoint the caller already trusts (a previous session's), so rollbacks across sessions
    /// are caught too.
    pub fn trust(&mut self, c: Checkpoint) {
        self.trusted = Some(c);
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// From now on, accept only checkpoints with at least `threshold` valid cosignatures by distinct keys among
    /// `witnesses` (C2SP `cosignature/v1` verifier keys). A threshold above the number of distinct keys is refused.
    pub fn require_witnesses(
        &mut self,
        witnesses: Vec<VerifierKey>,
        threshold: usize,
    ) -> Result<(), ClientError> {
        let mut distinct: Vec<VerifierKey> = Vec::new();
        for w in witnesses {
            if w.kind() != aerodb_engine::KeyType::CosignatureV1 {
                return Err(ClientError::Connect(format!(
                    "{w} is not a cosignature/v1 witness key"
                )));
            }
            if !distinct.contains(&w) {
                distinct.push(w);
            }
        }
        if threshold > distinct.len() {
            return Err(ClientError::Connect(format!(
                "a threshold of {threshold} witnesses needs at least that many distinct witness keys ({} given)",
                distinct.len()
            )));
        }
        self.witnesses = distinct;
        self.threshold = threshold;
        Ok(())
    }

    /// The witnesses (verifier key strings) whose valid cosignatures are on `note`.
    #[must_use]
    pub fn cosigners(&self, note: &str) -> Vec<String> {
        aerodb_engine::witness::valid_cosignatures(note, &self.witnesses)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Verifies a checkpoint from the server and makes it the trusted one, if it is consistent with it and
    /// carries the witness cosignatures this client requires.
    pub async fn accept(&mut self, cp: &pb::Checkpoint) -> Result<Checkpoint, ClientError> {
        let cosigned = self.cosigners(&cp.note).len();
        if cosigned < self.threshold {
            return Err(bad(format!(
                "checkpoint {} carries {cosigned} valid cosignatures of the {} required witnesses",
                cp.size, self.threshold
            )));
        }
        self.check(cp, true).await
    }

    /// Checks a checkpoint's signature and its consistency with the trusted one; with `adopt`, a newer one
    /// becomes the trusted one.
    async fn check(&mut self, cp: &pb::Checkpoint, adopt: bool) -> Result<Checkpoint, ClientError> {
        let signed = SignedCheckpoint::verify(&cp.note, &self.verifier)
            .map_err(|e| bad(format!("checkpoint signature: {e}")))?;
        let new = signed.checkpoint;
        if new.size != cp.size || new.root.as_slice() != cp.root.as_slice() {
            return Err(bad("the checkpoint's fields differ from its signed note"));
        }
        if let Some(old) = self.trusted.clone() {
            if new.size < old.size {
                return Err(bad(format!(
                    "rollback: checkpoint size {} after an accepted size {}",
                    new.size, old.size
                )));
            }
            if old.size == 0 {
                // Every tree extends the empty tree: nothing to prove.
            } else if new.size == old.size {
                if new.root != old.root {
                    return Err(bad(format!("fork: two roots at size {}", new.size)));
                }
            } else {
                let p = self
                    .inner
                    .consistency_proof(self.req(pb::ConsistencyProofRequest {
                        old_size: old.size,
                        new_size: new.size,
                    }))
                    .await?
                    .into_inner();
                let hashes = p
                    .hashes
                    .iter()
                    .map(|h| hash32(h, "a proof hash"))
                    .collect::<Result<Vec<_>, _>>()?;
                if !merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &hashes) {
                    return Err(bad(format!(
                        "checkpoint {} is not consistent with the accepted checkpoint {}",
                        new.size, old.size
                    )));
                }
            }
        }
        if adopt && self.trusted.as_ref().is_none_or(|t| new.size > t.size) {
            self.trusted = Some(new.clone());
        }
        Ok(new)
    }

    /// Fetches and accepts the newest checkpoint.
    pub async fn refresh(&mut self) -> Result<Checkpoint, ClientError> {
        let cp = self
            .inner
            .latest_checkpoint(self.req(pb::LatestCheckpointRequest {
                cosigned: self.threshold as u32,
            }))
            .await?
            .into_inner();
        self.accept(&cp).await
    }

    /// Waits (polling every 50 ms, at most `timeout`) until a checkpoint with the required witness cosignatures
    /// covers record `commit_id`, then proves the record's inclusion in it. Returns that checkpoint.
    pub async fn wait_witnessed(
        &mut self,
        commit_id: u64,
        timeout: std::time::Duration,
    ) -> Result<Checkpoint, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.refresh().await {
                Ok(cp) if cp.size >= commit_id => break,
                Ok(_) => {}
                Err(ClientError::Rpc(s)) if s.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(bad(format!(
                    "no checkpoint with {} witness cosignatures covers record {commit_id} after {} ms",
                    self.threshold,
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.verified_record(commit_id).await?;
        self.trusted.clone().ok_or_else(|| bad("no trusted checkpoint"))
    }

    /// Appends a record and verifies it: the server's proof against a checkpoint it signed, the checkpoint's
    /// consistency with what this client saw before, and that the record at that CommitId is the one written.
    /// A `NOT_LEADER` answer naming the leader is followed once ([`VerifiedClient::follow_leader`]).
    pub async fn append(&mut self, tenant: &str, payload: Payload) -> Result<VerifiedWrite, ClientError> {
        let record = crate::grpc::new_record_pb(tenant, &payload);
        let request = pb::AppendRequest {
            record: Some(record),
            prove: true,
        };
        let resp = match self.inner.append(self.req(request.clone())).await {
            Ok(r) => r,
            Err(s) if self.follow_leader(&s).await? => self.inner.append(self.req(request)).await?,
            Err(s) => return Err(s.into()),
        }
        .into_inner();
        let receipt = resp.receipt.ok_or_else(|| bad("no receipt"))?;
        let cp = resp
            .checkpoint
            .ok_or_else(|| bad("no checkpoint with the proof"))?;
        let proof = resp.proof.ok_or_else(|| bad("no inclusion proof"))?;
        // The write's own checkpoint was signed just now; witnesses have not cosigned it yet, so with witnesses
        // required it is checked (signature, consistency) but not trusted.
        let witnessed = self.threshold > 0 && self.cosigners(&cp.note).len() >= self.threshold;
        // Counted once: trusted (adopted) only with the cosignatures required.
        let checkpoint = self.check(&cp, self.threshold == 0 || witnessed).await?;
        let record_hash = hash32(&receipt.record_hash, "the record hash")?;
        let hashes = proof
            .hashes
            .iter()
            .map(|h| hash32(h, "a proof hash"))
            .collect::<Result<Vec<_>, _>>()?;
        if proof.leaf_index + 1 != receipt.commit_id || proof.tree_size != checkpoint.size {
            return Err(bad("the proof is for another record or tree size"));
        }
        if !merkle::verify_inclusion(
            &merkle::leaf_hash(&record_hash),
            proof.leaf_index,
            proof.tree_size,
            &hashes,
            &checkpoint.root,
        ) {
            return Err(bad(format!(
                "record {} is not in the signed tree",
                receipt.commit_id
            )));
        }
        // The proof binds the record hash; the record behind it must be what was written.
        let stored = self.record_bytes(receipt.commit_id).await?;
        if record::record_hash(&stored) != record_hash {
            return Err(bad("the stored record does not hash to the receipt"));
        }
        let decoded = record::decode(&Bytes::from(stored)).map_err(|e| bad(format!("record: {e}")))?;
        if decoded.tenant != tenant
            || decoded.payload != payload
            || decoded.commit_id != aerodb_wal::CommitId(receipt.commit_id)
        {
            return Err(bad("the stored record is not the one written"));
        }
        Ok(VerifiedWrite {
            commit_id: receipt.commit_id,
            record_hash,
            checkpoint,
            witnessed,
        })
    }

    async fn record_bytes(&mut self, commit_id: u64) -> Result<Vec<u8>, ClientError> {
        let r = self
            .inner
            .get_record(self.req(pb::GetRecordRequest { commit_id }))
            .await?
            .into_inner()
            .record
            .ok_or_else(|| bad("no record in the answer"))?;
        Ok(r.canonical)
    }

    /// Reads record `commit_id` and proves it is in the newest accepted checkpoint (refreshing first).
    pub async fn verified_record(&mut self, commit_id: u64) -> Result<aerodb_engine::Record, ClientError> {
        let cp = self.refresh().await?;
        if commit_id == 0 || commit_id > cp.size {
            return Err(bad(format!(
                "record {commit_id} is not covered by the newest checkpoint (size {})",
                cp.size
            )));
        }
        let resp = self
            .inner
            .inclusion_proof(self.req(pb::InclusionProofRequest {
                commit_id,
                tree_size: cp.size,
            }))
            .await?
            .into_inner();
        let proof = resp.proof.ok_or_else(|| bad("no proof"))?;
        let canonical = resp.record.ok_or_else(|| bad("no record"))?.canonical;
        let hashes = proof
            .hashes
            .iter()
            .map(|h| hash32(h, "a proof hash"))
            .collect::<Result<Vec<_>, _>>()?;
        if proof.leaf_index + 1 != commit_id
            || proof.tree_size != cp.size
            || !merkle::verify_inclusion(
                &record::merkle_leaf(&canonical),
                proof.leaf_index,
                cp.size,
                &hashes,
                &cp.root,
            )
        {
            return Err(bad(format!(
                "record {commit_id} does not verify against checkpoint {}",
                cp.size
            )));
        }
        let rec = record::decode(&Bytes::from(canonical)).map_err(|e| bad(format!("record: {e}")))?;
        if rec.commit_id != aerodb_wal::CommitId(commit_id) {
            return Err(bad("the record carries another CommitId"));
        }
        Ok(rec)
    }

    /// The raw gRPC client (with this client's token added per request by [`VerifiedClient::request`]).
    #[must_use]
    pub fn raw(&self) -> LedgerClient<Channel> {
        self.inner.clone()
    }

    /// Wraps a message in a request carrying this client's token.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        self.req(msg)
    }
}
