//! The etcd authority's client: leases kept alive with a provable validity, and etcd's v3 election service
//! (campaign, leader, observe, resign) — the pieces automatic failover is built from (seed 004 §6: authority is
//! external; here etcd is that authority).
//!
//! **Lease validity.** A keep-alive request sent at monotonic time `t` and answered with a TTL of `ttl` proves the
//! lease lives until at least `t + ttl`: etcd restarts the lease's clock when it processes the request, which is
//! after `t`. [`Lease::valid_for`] is that bound minus a safety margin, or `None` once it has passed — the moment a
//! primary must stop acknowledging, which comes before etcd can expire the lease and elect anyone else.
//!
//! **Epochs.** The winner's leader key is created at an etcd revision; revisions only grow, so successive leaders
//! of one election have strictly increasing revisions, which serve as their epochs (fencing tokens).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aerodb_proto::{etcdserverpb as etcd, v3electionpb as election};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// No endpoint was given, or one is not a URL.
    #[error("etcd endpoints: {0}")]
    Endpoints(String),
    /// An RPC failed (etcd unreachable, the lease expired, …).
    #[error("etcd {op}: {status}")]
    Rpc {
        /// What was asked.
        op: &'static str,
        /// What etcd (or the transport) answered.
        status: tonic::Status,
    },
    /// etcd answered something this client cannot use.
    #[error("etcd {op}: {what}")]
    Answer {
        /// What was asked.
        op: &'static str,
        /// What was wrong with the answer.
        what: String,
    },
}

fn rpc(op: &'static str) -> impl FnOnce(tonic::Status) -> EtcdError {
    move |status| EtcdError::Rpc { op, status }
}

/// A client of one etcd cluster (any of its endpoints).
#[derive(Clone, Debug)]
pub struct Etcd {
    channel: Channel,
    /// The limit on each unary call (not on a campaign, which waits for as long as others lead).
    timeout: Duration,
}

impl Etcd {
    /// A client balanced over `endpoints` (`http://host:port`); connects lazily; each unary call (not a
    /// campaign, not an observation) times out after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Endpoints("none given".into()));
        }
        let eps = endpoints
            .iter()
            .map(|e| {
                Endpoint::from_shared(e.clone())
                    .map(|ep| ep.connect_timeout(timeout).tcp_nodelay(true))
                    .map_err(|err| EtcdError::Endpoints(format!("{e:?}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            channel: Channel::balance_list(eps.into_iter()),
            timeout,
        })
    }

    /// A request whose answer must come within the unary timeout.
    fn unary<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    fn leases(&self) -> etcd::lease_client::LeaseClient<Channel> {
        etcd::lease_client::LeaseClient::new(self.channel.clone())
    }

    fn kv(&self) -> etcd::kv_client::KvClient<Channel> {
        etcd::kv_client::KvClient::new(self.channel.clone())
    }

    fn elections(&self) -> election::election_client::ElectionClient<Channel> {
        election::election_client::ElectionClient::new(self.channel.clone())
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1; etcd may raise it to its minimum) and keeps it alive
    /// every third of its TTL until the returned [`Lease`] is revoked or dropped.
    pub async fn grant(&self, ttl: Duration, margin: Duration) -> Result<Lease, EtcdError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let r = self
            .leases()
            .lease_grant(self.unary(etcd::LeaseGrantRequest { ttl: secs, id: 0 }))
            .await
            .map_err(rpc("lease grant"))?
            .into_inner();
        if !r.error.is_empty() || r.id == 0 || r.ttl <= 0 {
            return Err(EtcdError::Answer {
                op: "lease grant",
                what: format!("id {}, ttl {}, error {:?}", r.id, r.ttl, r.error),
            });
        }
        let ttl = Duration::from_secs(u64::try_from(r.ttl).unwrap_or(0));
        let state = Arc::new(Mutex::new(LeaseState {
            valid_until: Some(sent + ttl),
            error: None,
            expired: false,
        }));
        let keeper = tokio::spawn(keep_alive(self.leases(), r.id, ttl, state.clone()));
        Ok(Lease {
            id: r.id,
            ttl,
            margin,
            state,
            keeper: Some(keeper),
            etcd: self.clone(),
        })
    }

    /// Campaigns for leadership of `name` under `lease`, publishing `value`; returns once this campaigner leads
    /// (etcd answers when every earlier campaigner's key is gone).
    pub async fn campaign(&self, name: &[u8], lease: &Lease, value: &[u8]) -> Result<LeaderKey, EtcdError> {
        let r = self
            .elections()
            .campaign(election::CampaignRequest {
                name: name.to_vec(),
                lease: lease.id,
                value: value.to_vec(),
            })
            .await
            .map_err(rpc("campaign"))?
            .into_inner();
        let l = r.leader.ok_or(EtcdError::Answer {
            op: "campaign",
            what: "no leader key".into(),
        })?;
        Ok(LeaderKey {
            name: l.name,
            key: l.key,
            rev: l.rev,
            lease: l.lease,
        })
    }

    /// The current leader of `name`: its value and the revision its key was created at (its epoch), or `None`.
    pub async fn leader(&self, name: &[u8]) -> Result<Option<Leader>, EtcdError> {
        match self
            .elections()
            .leader(self.unary(election::LeaderRequest { name: name.to_vec() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().kv.map(Leader::from)),
            // etcd answers "election: no leader" as an error.
            Err(s) if s.message().contains("no leader") => Ok(None),
            Err(s) => Err(rpc("leader")(s)),
        }
    }

    /// Every leader of `name` in turn, as etcd elects them, starting with the current one. etcd starts answering
    /// once the election has a leader: until then this call waits.
    pub async fn observe(
        &self,
        name: &[u8],
    ) -> Result<impl futures_util::Stream<Item = Result<Leader, EtcdError>>, EtcdError> {
        use futures_util::StreamExt as _;
        let s = self
            .elections()
            .observe(election::LeaderRequest { name: name.to_vec() })
            .await
            .map_err(rpc("observe"))?
            .into_inner();
        Ok(s.filter_map(|r| {
            std::future::ready(match r {
                Ok(r) => r.kv.map(|kv| Ok(Leader::from(kv))),
                Err(s) => Some(Err(rpc("observe")(s))),
            })
        }))
    }

    /// Sets `key` to `value`, attached to `lease` (the key goes when the lease does), or kept until overwritten
    /// without one.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: Option<&Lease>) -> Result<(), EtcdError> {
        self.kv()
            .put(self.unary(etcd::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease: lease.map_or(0, |l| l.id),
            }))
            .await
            .map_err(rpc("put"))?;
        Ok(())
    }

    /// Every key starting with `prefix` (at most `limit`), with its value, in key order.
    pub async fn prefix(&self, prefix: &[u8], limit: i64) -> Result<Vec<(Vec<u8>, Vec<u8>)>, EtcdError> {
        let r = self
            .kv()
            .range(self.unary(etcd::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit,
            }))
            .await
            .map_err(rpc("range"))?
            .into_inner();
        Ok(r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// Gives up leadership held by `key` (the next campaigner wins at once).
    pub async fn resign(&self, key: &LeaderKey) -> Result<(), EtcdError> {
        self.elections()
            .resign(self.unary(election::ResignRequest {
                leader: Some(election::LeaderKey {
                    name: key.name.clone(),
                    key: key.key.clone(),
                    rev: key.rev,
                    lease: key.lease,
                }),
            }))
            .await
            .map_err(rpc("resign"))?;
        Ok(())
    }
}

/// The end of the key range holding every key that starts with `prefix`: the prefix with its last byte that is not
/// 0xff increased by one (etcd's convention; `\0` alone means every key).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A leader of an election, as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Its leader key.
    pub key: Vec<u8>,
    /// The value it published.
    pub value: Vec<u8>,
    /// The revision its key was created at: strictly increasing across leaders (its epoch).
    pub rev: i64,
    /// Its lease.
    pub lease: i64,
}

impl From<etcd::KeyValue> for Leader {
    fn from(kv: etcd::KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value,
            rev: kv.create_revision,
            lease: kv.lease,
        }
    }
}

/// The key that holds a won election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election.
    pub name: Vec<u8>,
    /// The key.
    pub key: Vec<u8>,
    /// The revision it was created at (the epoch of this term).
    pub rev: i64,
    /// The lease it is attached to.
    pub lease: i64,
}

#[derive(Debug)]
struct LeaseState {
    /// Until when the lease is proven alive (`None`: it is not, or no longer).
    valid_until: Option<Instant>,
    /// Why keep-alive stopped, if it did.
    error: Option<String>,
    /// etcd answered that the lease has expired.
    expired: bool,
}

/// A granted lease, kept alive in the background.
#[derive(Debug)]
pub struct Lease {
    id: i64,
    ttl: Duration,
    margin: Duration,
    state: Arc<Mutex<LeaseState>>,
    keeper: Option<JoinHandle<()>>,
    etcd: Etcd,
}

impl Lease {
    /// The lease id.
    #[must_use]
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How much longer the lease is proven alive, less the safety margin; `None` once that time has passed (or
    /// keep-alive failed): a holder must then act as if it had lost the lease.
    #[must_use]
    pub fn valid_for(&self) -> Option<Duration> {
        let until = self.state.lock().valid_until?;
        until
            .checked_sub(self.margin)?
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// The monotonic instant until which the lease is proven alive, less the safety margin (`None`: not proven).
    #[must_use]
    pub fn proven_until(&self) -> Option<Instant> {
        self.state.lock().valid_until?.checked_sub(self.margin)
    }

    /// Whether etcd said the lease has expired (nothing can revive it: a new one is needed).
    #[must_use]
    pub fn expired(&self) -> bool {
        self.state.lock().expired
    }

    /// Why keep-alive stopped, if it did.
    #[must_use]
    pub fn error(&self) -> Option<String> {
        self.state.lock().error.clone()
    }

    /// Revokes the lease (its keys, a leader key among them, go at once) and stops keeping it alive.
    pub async fn revoke(mut self) -> Result<(), EtcdError> {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        self.state.lock().valid_until = None;
        self.etcd
            .leases()
            .lease_revoke(self.etcd.unary(etcd::LeaseRevokeRequest { id: self.id }))
            .await
            .map_err(rpc("lease revoke"))?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

/// Renews the lease every third of its TTL over one keep-alive stream (reopened on failure), recording after each
/// answer how long the lease is proven alive: from when that request was sent.
async fn keep_alive(
    mut client: etcd::lease_client::LeaseClient<Channel>,
    id: i64,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
) {
    let every = (ttl / 3).max(Duration::from_millis(50));
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // The first request goes in before the call: etcd sends the stream's headers with its first answer.
        let mut sent = Instant::now();
        if tx.send(etcd::LeaseKeepAliveRequest { id }).await.is_err() {
            return;
        }
        let opened = tokio::time::timeout(
            every,
            client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(e)) => {
                state.lock().error = Some(format!("keep-alive stream: {e}"));
                tokio::time::sleep(every).await;
                continue;
            }
            Err(_) => {
                state.lock().error = Some("keep-alive stream: no answer in time".into());
                continue;
            }
        };
        loop {
            match tokio::time::timeout(every, answers.message()).await {
                Ok(Ok(Some(r))) if r.ttl > 0 => {
                    let mut s = state.lock();
                    s.valid_until = Some(sent + Duration::from_secs(u64::try_from(r.ttl).unwrap_or(0)));
                    s.error = None;
                }
                Ok(Ok(Some(_))) => {
                    // TTL ≤ 0: etcd says the lease has expired; nothing can revive it.
                    let mut s = state.lock();
                    s.valid_until = None;
                    s.expired = true;
                    s.error = Some("the lease expired".into());
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    state.lock().error = Some("keep-alive got no answer in time".into());
                    break;
                }
            }
            tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
            sent = Instant::now();
            if tx.send(etcd::LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
        }
    }
}
