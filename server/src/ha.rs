//! Automatic failover under the etcd authority (`--authority etcd`, H-1..H-4): one supervisor task per node holds
//! an etcd lease, publishes the node's flushed tip under it, follows the leader etcd names, campaigns when there is
//! none and it may win, and keeps the write path's lease gate current. `docs/replication.md` ("Automatic failover
//! through etcd") states the rule and the safety argument; in short:
//!
//! - **Authority comes from etcd only.** A node writes only as the holder of the election's leader key, in the term
//!   whose epoch is that key's creation revision (strictly increasing across leaders), and only while it can prove
//!   its lease alive: the gate closes at the last keep-alive's send time + TTL − margin, before etcd can expire the
//!   lease and elect anyone else. A write refused by the gate was not written; one written before the gate closed
//!   but confirmed after is `OUTCOME_UNKNOWN`.
//! - **Who may win.** A node that follows nobody publishes `aerodb-tips/<election>/<node>` = its tip and `0`; one that
//!   follows (or leads) term `r` publishes its tip and `r` *before* it receives anything of that term. A node
//!   campaigns only when it sees fresh tips (`0`) of at least `cluster_size − sync_replicas` nodes, its own among
//!   them, and its own is the highest (ties: the smallest node id); having won, it checks again and resigns if it no
//!   longer holds. Every write the old primary acknowledged was flushed by `sync_replicas` replicas before its lease
//!   ended, so before any node saw the election empty and published a fresh tip: any `cluster_size −
//!   sync_replicas` surviving nodes include one of them, and the highest fresh tip holds the write.
//! - **Handover.** On SIGTERM a leader closes its gate, lets appends in flight finish, signs a final checkpoint,
//!   waits (bounded) until as many replicas as a synchronous write needs (at least one) flushed its tip, records
//!   that final tip and its term in etcd, and revokes its lease: its leader key goes at once and a replica holding
//!   the final tip takes over without waiting for a TTL.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::EtcdAuthority,
    etcd::{Etcd, Leader, LeaderKey, Lease},
    fence::LeaseGate,
    node::Node,
};

/// How often the supervisor looks at the election and the lease.
pub const POLL: Duration = Duration::from_millis(15);
/// The limit on each etcd call (not a campaign).
const ETCD_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one campaign waits before it is withdrawn (another candidate won meanwhile; it is followed next).
const CAMPAIGN_WAIT: Duration = Duration::from_millis(300);
/// How long a leader handing over waits for its replicas to flush its tip.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);
/// Most tip keys read from etcd.
const MAX_TIPS: i64 = 256;

/// Where the nodes of `election` publish their tips: `aerodb-tips/<election>/`, outside the election's own prefix
/// (`<election>/`, every key of which etcd counts as a campaigner).
#[must_use]
pub fn tips_prefix(election: &str) -> String {
    format!("{TIPS_ROOT}{election}/")
}

/// The root of every election's tips (an election's name may not start with it).
pub const TIPS_ROOT: &str = "aerodb-tips/";

/// What a leader publishes as its leader value: who it is and where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderInfo {
    /// Its node id.
    pub node_id: String,
    /// Its REST URL (where clients send writes: `leader_url`).
    pub rest_url: String,
    /// Its gRPC URL (what replicas follow).
    pub grpc_url: String,
}

/// The etcd authority as this node last saw it (HA status, routing, metrics).
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The lease TTL etcd granted, in ms (0: no lease, the static authority).
    pub lease_ms: u64,
    /// Until when this node's lease is proven alive, less the margin.
    pub proven_until: Option<Instant>,
    /// The leader etcd names and its epoch, if any.
    pub leader: Option<(LeaderInfo, u64)>,
}

/// A request to hand over before shutdown: answered once done (or when there was nothing to hand over).
pub type HandoverRequest = oneshot::Sender<()>;

/// What this node is doing in the election.
enum Mode {
    /// Following nobody (no leader yet, or the last one is gone).
    Idle,
    /// Following the leader of term `rev`.
    Following {
        rev: i64,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    },
    /// Leading under `key`.
    Leading { key: LeaderKey },
}

/// One node's tip as published in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tip {
    /// The node.
    pub node_id: String,
    /// Its highest durable CommitId.
    pub commit_id: u64,
    /// The term it follows or leads (0: none: the tip is final until it follows someone).
    pub following: i64,
}

impl Tip {
    /// The value stored in etcd: `<commit_id> <following>`.
    #[must_use]
    pub fn value(&self) -> String {
        format!("{} {}", self.commit_id, self.following)
    }

    /// Reads a tip key's value (`None` for anything malformed: it is not counted).
    #[must_use]
    pub fn parse(node_id: &str, value: &[u8]) -> Option<Tip> {
        let text = std::str::from_utf8(value).ok()?;
        let (c, f) = text.split_once(' ')?;
        Some(Tip {
            node_id: node_id.to_owned(),
            commit_id: c.parse().ok()?,
            following: f.parse().ok()?,
        })
    }
}

/// Where a leader that hands over records its final tip and term: `aerodb-handover/<election>` = `<tip> <term>`.
/// Kept without a lease (the leader's lease is revoked as it leaves); the next handover overwrites it.
#[must_use]
pub fn handover_key(election: &str) -> String {
    format!("aerodb-handover/{election}")
}

/// The winning rule: whether `me` may campaign given the published `tips`: at least `needed` fresh tips (nodes
/// following nobody), `me`'s among them at its current `my_tip`, and none higher (ties go to the smallest id).
/// `handed_over`: the final tip of the term `me` last followed, when its leader handed over on shutdown; holding
/// it, `me` holds everything that term acknowledged, and one fresh tip (its own) is enough.
#[must_use]
pub fn may_campaign(tips: &[Tip], me: &str, my_tip: u64, needed: usize, handed_over: Option<u64>) -> bool {
    let fresh: Vec<&Tip> = tips.iter().filter(|t| t.following == 0).collect();
    let needed = match handed_over {
        Some(last) if my_tip >= last => 1,
        _ => needed,
    };
    if fresh.len() < needed || !fresh.iter().any(|t| t.node_id == me && t.commit_id == my_tip) {
        return false;
    }
    fresh
        .iter()
        .max_by(|a, b| a.commit_id.cmp(&b.commit_id).then(b.node_id.cmp(&a.node_id)))
        .is_some_and(|best| best.node_id == me)
}

/// Resolves once `stop` says so (the guard `wait_for` returns is not held across later awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// The supervisor: runs until `stop`; answers a handover request (SIGTERM) first.
pub async fn supervise(
    node: Arc<Node>,
    me: LeaderInfo,
    mut stop: watch::Receiver<bool>,
    mut handover: mpsc::Receiver<HandoverRequest>,
) {
    let Some(cfg) = node.config.etcd.clone() else {
        return;
    };
    let etcd = match Etcd::new(&cfg.endpoints, ETCD_TIMEOUT) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("the etcd authority cannot start: {e}; this node will not write");
            return;
        }
    };
    let mut s = Supervisor {
        tips_prefix: tips_prefix(&cfg.election),
        node,
        me,
        etcd,
        cfg,
        mode: Mode::Idle,
        published: None,
        last_term: 0,
    };
    s.node.authority.lock().lease_ms = s.cfg.lease_ttl.as_millis() as u64;
    let mut backoff = POLL;
    loop {
        let lease = tokio::select! {
            l = s.etcd.grant(s.cfg.lease_ttl, s.cfg.margin()) => l,
            () = stopped(&mut stop) => return s.finish(None).await,
            Some(done) = handover.recv() => {
                s.finish(None).await;
                let _ = done.send(());
                return;
            }
        };
        let lease = match lease {
            Ok(l) => {
                backoff = POLL;
                l
            }
            Err(e) => {
                tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "etcd lease: {e}");
                s.failed("error");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut stop) => return s.finish(None).await,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        s.node.authority.lock().lease_ms = lease.ttl().as_millis() as u64;
        s.published = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = stopped(&mut stop) => return s.finish(Some(lease)).await,
                Some(done) = handover.recv() => {
                    s.finish(Some(lease)).await;
                    let _ = done.send(());
                    return;
                }
            }
            if !s.step(&lease).await {
                break;
            }
        }
        // The lease expired: nothing of it can be proven any more. A leader has stepped down; start over.
        tracing::warn!("the etcd lease expired; taking a new one");
    }
}

/// The supervisor's state between steps.
struct Supervisor {
    node: Arc<Node>,
    me: LeaderInfo,
    etcd: Etcd,
    cfg: EtcdAuthority,
    tips_prefix: String,
    mode: Mode,
    /// The tip last published under the current lease.
    published: Option<Tip>,
    /// The term this node last followed or led (0: none since it started).
    last_term: i64,
}

impl Supervisor {
    /// Runs `f` on the blocking pool (role changes reopen the database).
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Node) -> T + Send + 'static) -> Option<T> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || f(&node)).await.ok()
    }

    /// One look at the lease and the election. Returns false when the lease has expired.
    async fn step(&mut self, lease: &Lease) -> bool {
        let proven = lease.proven_until();
        self.node.authority.lock().proven_until = proven;
        if lease.expired() {
            if matches!(self.mode, Mode::Leading { .. }) {
                self.mode = Mode::Idle;
                self.blocking(|n| n.step_down("the authority lease expired"))
                    .await;
            }
            return false;
        }
        if let Mode::Leading { .. } = self.mode {
            // Past the proven end the gate refuses by itself; this keeps it moving while keep-alives succeed.
            self.node
                .fence
                .set_gate(LeaseGate::Until(proven.unwrap_or_else(Instant::now)));
        }
        if self.halted() {
            // A halted node serves nothing: it follows nobody and, if it led, gives the term up at once so the
            // election can go on without waiting for its lease (which it keeps alive while it runs).
            self.stop_following().await;
            if let Mode::Leading { key } = std::mem::replace(&mut self.mode, Mode::Idle) {
                self.node
                    .fence
                    .set_gate(LeaseGate::Closed("this node is halted".into()));
                if let Err(e) = self.etcd.resign(&key).await {
                    tracing::warn!("resigning the term of a halted node: {e}");
                    self.mode = Mode::Leading { key };
                }
            }
            return true;
        }
        let leader = match self.etcd.leader(self.cfg.election.as_bytes()).await {
            Ok(l) => l,
            // etcd unreachable: a leader's gate closes by itself when its lease can no longer be proven;
            // a replica keeps its stream and serves reads.
            Err(_) => return true,
        };
        match (&self.mode, leader) {
            (Mode::Leading { key }, Some(l)) if l.rev == key.rev => {}
            (Mode::Leading { .. }, other) => {
                let why = match other {
                    Some(l) => format!("etcd names another leader (term {})", l.rev),
                    None => "this node's leader key is gone from etcd".to_owned(),
                };
                self.mode = Mode::Idle;
                self.node.authority.lock().leader = None;
                self.blocking(move |n| n.step_down(&why)).await;
            }
            (Mode::Following { rev, .. }, Some(l)) if l.rev == *rev => {}
            (Mode::Following { .. }, _) => {
                self.stop_following().await;
                self.node.authority.lock().leader = None;
            }
            (Mode::Idle, Some(l)) if l.lease == lease.id() => {
                // A campaign of ours that was withdrawn just as it won: give it up (nothing was served under it).
                let key = LeaderKey {
                    name: self.cfg.election.as_bytes().to_vec(),
                    key: l.key.clone(),
                    rev: l.rev,
                    lease: l.lease,
                };
                let _ = self.etcd.resign(&key).await;
            }
            (Mode::Idle, Some(l)) => self.follow(lease, l).await,
            (Mode::Idle, None) => self.maybe_campaign(lease).await,
        }
        true
    }

    /// Counts a failed attempt to take write authority (`contended` or `error`).
    fn failed(&self, reason: &'static str) {
        *self
            .node
            .metrics
            .lock_acquire_failures
            .lock()
            .entry(reason)
            .or_default() += 1;
    }

    fn halted(&self) -> bool {
        self.node.is_halted()
    }

    fn my_tip(&self) -> u64 {
        self.node.db.tip().map_or(0, |t| t.commit_id.0)
    }

    /// Publishes this node's tip (if it changed since the last time under this lease).
    async fn publish(&mut self, lease: &Lease, following: i64) -> bool {
        let tip = Tip {
            node_id: self.node.config.node_id.clone(),
            commit_id: self.my_tip(),
            following,
        };
        if self.published.as_ref() == Some(&tip) {
            return true;
        }
        let key = format!("{}{}", self.tips_prefix, tip.node_id);
        match self
            .etcd
            .put(key.as_bytes(), tip.value().as_bytes(), Some(lease))
            .await
        {
            Ok(()) => {
                self.published = Some(tip);
                true
            }
            Err(e) => {
                tracing::warn!("publishing this node's tip: {e}");
                false
            }
        }
    }

    /// Follows leader `l`: the tip is published as following its term before anything of it is received.
    async fn follow(&mut self, lease: &Lease, l: Leader) {
        let info: LeaderInfo = match serde_json::from_slice(&l.value) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(
                    rev = l.rev,
                    "the leader's value in etcd is not a leader record: {e}"
                );
                return;
            }
        };
        if !self.publish(lease, l.rev).await {
            return;
        }
        let epoch = u64::try_from(l.rev).unwrap_or(0);
        let url = info.grpc_url.clone();
        match self.blocking(move |n| n.follow_authority(epoch, &url)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::error!(leader = %info.node_id, "cannot follow the elected leader: {e}");
                return;
            }
            None => return,
        }
        tracing::info!(leader = %info.node_id, url = %info.grpc_url, epoch, "following the elected leader");
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::replication::follow(
            self.node.clone(),
            info.grpc_url.clone(),
            stop_rx,
        ));
        {
            let mut f = self.node.follower.lock();
            f.leader_url.clone_from(&info.rest_url);
            f.leader_id.clone_from(&info.node_id);
        }
        self.node.authority.lock().leader = Some((info, epoch));
        self.mode = Mode::Following {
            rev: l.rev,
            stop,
            task,
        };
    }

    /// Stops following (the stream ends and its last apply finishes) so the tip is final.
    async fn stop_following(&mut self) {
        if let Mode::Following { stop, task, rev } = std::mem::replace(&mut self.mode, Mode::Idle) {
            self.last_term = rev;
            let _ = stop.send(true);
            let _ = task.await;
            self.node.follower.lock().connected = false;
        }
    }

    /// No leader: publish the final tip and campaign if the winning rule allows.
    async fn maybe_campaign(&mut self, lease: &Lease) {
        if !self.publish(lease, 0).await {
            return;
        }
        if !self.rule_holds().await {
            return;
        }
        let value = match serde_json::to_vec(&self.me) {
            Ok(v) => v,
            Err(_) => return,
        };
        let name = self.cfg.election.as_bytes().to_vec();
        let won = tokio::time::timeout(CAMPAIGN_WAIT, self.etcd.campaign(&name, lease, &value)).await;
        let key = match won {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                self.failed("error");
                tracing::warn!("campaign: {e}");
                return;
            }
            Err(_) => {
                // Withdrawn (etcd deletes the key of a cancelled campaign): someone else leads; follow it next.
                self.failed("contended");
                return;
            }
        };
        // Won. Check the rule again: a tip published meanwhile may be higher; then give the term up unused.
        if !self.rule_holds().await {
            self.failed("contended");
            let _ = self.etcd.resign(&key).await;
            return;
        }
        if !self.publish(lease, key.rev).await {
            let _ = self.etcd.resign(&key).await;
            return;
        }
        let epoch = u64::try_from(key.rev).unwrap_or(0);
        match self.blocking(move |n| n.take_authority(epoch)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::error!(epoch, "won the election but cannot take the term: {e}; resigning");
                self.failed("error");
                let _ = self.etcd.resign(&key).await;
                return;
            }
            None => return,
        }
        self.node.fence.set_gate(LeaseGate::Until(
            lease.proven_until().unwrap_or_else(Instant::now),
        ));
        self.node.authority.lock().leader = Some((self.me.clone(), epoch));
        self.mode = Mode::Leading { key };
    }

    /// Whether the published tips let this node campaign now.
    async fn rule_holds(&self) -> bool {
        let tips = match self.etcd.prefix(self.tips_prefix.as_bytes(), MAX_TIPS).await {
            Ok(t) => t,
            Err(_) => return false,
        };
        let tips: Vec<Tip> = tips
            .iter()
            .filter_map(|(k, v)| {
                let id = std::str::from_utf8(k).ok()?.strip_prefix(&self.tips_prefix)?;
                Tip::parse(id, v)
            })
            .collect();
        let handed_over = match self
            .etcd
            .prefix(handover_key(&self.cfg.election).as_bytes(), 1)
            .await
        {
            Ok(kv) => kv
                .iter()
                .find(|(k, _)| k == handover_key(&self.cfg.election).as_bytes())
                .and_then(|(_, v)| Tip::parse("", v))
                .filter(|h| self.last_term != 0 && h.following == self.last_term)
                .map(|h| h.commit_id),
            Err(_) => return false,
        };
        may_campaign(
            &tips,
            &self.node.config.node_id,
            self.my_tip(),
            self.cfg.tips_needed(self.node.config.sync_replicas),
            handed_over,
        )
    }

    /// Shutdown: a leader hands over (gate closed, appends in flight finished, final checkpoint, replicas caught
    /// up, lease revoked); any node gives up its lease so its keys go at once.
    async fn finish(&mut self, lease: Option<Lease>) {
        if let Mode::Leading { key } = &self.mode {
            let term = key.rev;
            self.node.fence.set_gate(LeaseGate::Closed(
                "this node is handing over leadership (shutting down); retry at the new leader".into(),
            ));
            let started = Instant::now();
            let deadline = started + self.node.config.request_timeout;
            while self.node.appends_in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let tip = self
                .blocking(|n| {
                    if let Err(e) = n.db.checkpoint_now() {
                        tracing::warn!("the final checkpoint before handing over: {e}");
                    }
                    n.db.tip().map_or(0, |t| t.commit_id.0)
                })
                .await
                .unwrap_or(0);
            let drained = started.elapsed();
            let deadline = Instant::now() + HANDOVER_WAIT;
            loop {
                // The replicas a synchronous write needs (at least one) hold the final tip: one of them wins.
                let lags = self.node.replicas.lags(tip);
                let caught = lags.iter().filter(|r| r.flushed >= tip).count();
                let needed = self.node.config.sync_replicas.max(1).min(lags.len());
                if caught >= needed || Instant::now() > deadline {
                    tracing::info!(
                        tip,
                        drained_ms = drained.as_millis() as u64,
                        waited_ms = started.elapsed().as_millis() as u64,
                        replicas = lags.len(),
                        caught_up = caught,
                        "handing over leadership"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let record = Tip {
                node_id: String::new(),
                commit_id: tip,
                following: term,
            };
            let key = handover_key(&self.cfg.election);
            if let Err(e) = self
                .etcd
                .put(key.as_bytes(), record.value().as_bytes(), None)
                .await
            {
                tracing::warn!("recording the handover in etcd: {e}; the next leader waits for enough tips");
            }
        }
        self.stop_following().await;
        if let Some(l) = lease {
            if let Err(e) = l.revoke().await {
                tracing::warn!("revoking the etcd lease: {e}");
            }
        }
        if let Mode::Leading { .. } = std::mem::replace(&mut self.mode, Mode::Idle) {
            *self
                .node
                .metrics
                .leader_changes
                .lock()
                .entry("stepped_down")
                .or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(id: &str, c: u64, f: i64) -> Tip {
        Tip {
            node_id: id.into(),
            commit_id: c,
            following: f,
        }
    }

    #[test]
    fn only_the_most_advanced_of_enough_fresh_tips_campaigns() {
        let tips = [tip("a", 10, 0), tip("b", 12, 0), tip("c", 12, 7)];
        // c follows a term: not counted; b is ahead of a.
        assert!(may_campaign(&tips, "b", 12, 2, None));
        assert!(!may_campaign(&tips, "a", 10, 2, None));
        // Too few fresh tips.
        assert!(!may_campaign(&tips, "b", 12, 3, None));
        // Unless the last term handed over a tip this node holds.
        assert!(may_campaign(&tips, "b", 12, 3, Some(12)));
        assert!(!may_campaign(&tips, "b", 12, 3, Some(13)));
        // The published tip must be the current one.
        assert!(!may_campaign(&tips, "b", 13, 2, None));
        // Ties go to the smallest id.
        let tied = [tip("b", 5, 0), tip("a", 5, 0)];
        assert!(may_campaign(&tied, "a", 5, 2, None));
        assert!(!may_campaign(&tied, "b", 5, 2, None));
        assert_eq!(Tip::parse("x", b"42 0"), Some(tip("x", 42, 0)));
        assert_eq!(Tip::parse("x", b"42"), None);
        assert_eq!(Tip::parse("x", b"-1 0"), None);
    }
}
