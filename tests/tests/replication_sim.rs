//! T15: a seeded, deterministic simulation of a primary and two replicas driving the **production replication
//! core** (`aerodb_replication::core`: the primary's hello decision and per-replica send state, the follower's
//! handshake/epoch/fork rules and acks, the synchronous quorum's admission and confirmation) with the real engine
//! (`Db` over the simulated file system, power-loss crashes with torn writes) and the real replica apply step
//! (`Applier`). The simulator owns the clock (every step advances it; heartbeats, silence and sync deadlines come
//! from the core's own constants), the network (messages in flight per stream, dropped, duplicated or reordered;
//! links partitioned and healed) and an operator (restarts, resumes halted replicas, fails over to the most
//! advanced replica with a new epoch whose first checkpoint is its term proof, rebuilds a demoted primary whose log
//! forked).
//!
//! Writes are synchronous with `k = 1` (`--sync-replicas 1`), in `block` or `fail` mode by seed: admitted by the
//! quorum before they are appended, acknowledged once the quorum confirms them.
//! Invariants, checked as the schedule runs and at the end once everything is healed and caught up:
//! - a synchronous acknowledgement implies `k` replicas flushed the record (their logs hold it at that moment);
//! - a write refused by the quorum (never appended) is in no log, ever;
//! - no two nodes accept writes in the same epoch;
//! - no acknowledged write is lost: the current primary holds every one, same hash at the same CommitId;
//! - no fork: a replica's log is always a prefix of the primary's (only a demoted primary may have diverged, and
//!   its handshake must find that and halt with `Fork`);
//! - halts happen only for a cause the schedule injected (a dropped or reordered batch → `Gap`; a diverged
//!   demoted primary → `Fork`), never `Corruption` or an unexplained reason;
//! - at the end every replica has the primary's tip and every sealed segment is byte-identical.
//!
//! `AERODB_SIM_SEEDS` (default 1000) seeds run; `AERODB_SIM_SEED=n` runs one. A failure prints its seed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{collections::VecDeque, path::Path, sync::Arc};

use aerodb_engine::{Db, NewRecord, Options, Payload, SigningKey};
use aerodb_replication::{
    apply::{Applier, ApplyError},
    core::{
        follower::{self, End, Follower},
        primary::{self as psend, on_hello, HelloDecision, Next, View},
        quorum::{Admission, AdmissionDecision, Quorum, Settled, SyncWait},
    },
    role::HaltReason,
};
use aerodb_wal::fs::{CrashMode, Fs, MemFs, Tear, UnsyncedFate};
use aerodb_wal::{CommitId, Epoch};
use bytes::Bytes;
use std::{collections::BTreeMap, time::Duration};

const DIR: &str = "/node";
const STEPS: usize = 120;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn opts(epoch: u64, replica: bool) -> Options {
    Options {
        signing_key: Some(SigningKey::from_seed("aerodb-ledger", [5u8; 32]).unwrap()),
        epoch: Epoch(epoch),
        replica,
        checkpoint_every_records: 0,
        checkpoint_interval: None,
        index_flush_versions: 1 << 20,
        wal: aerodb_wal::Options {
            segment_bytes: 4096,
            max_record_bytes: 1024,
            background_preallocation: false,
            ..aerodb_wal::Options::default()
        },
        ..Options::default()
    }
}

/// A message from the primary on the wire.
#[derive(Clone)]
enum Msg {
    Frames(Vec<Bytes>),
    Checkpoint(String),
    Heartbeat(u64),
}

/// One replication stream: the primary's send state (the core's), the replica's follower (the core's), and the
/// messages on the wire.
struct Stream {
    send: psend::Stream,
    follower: Follower,
    wire: VecDeque<Msg>,
    /// A batch of this stream was dropped or reordered: a `Gap` halt is explained.
    faulted: bool,
    /// The quorum's id for this stream.
    id: u64,
}

/// A client write held by the quorum.
#[derive(Debug)]
enum Write {
    /// Parked before its append: its records.
    Parked(u64, Vec<NewRecord>),
    /// Appended: its receipts (CommitId, hash).
    Appended(u64, Vec<(u64, [u8; 32])>),
}

struct Node {
    fs: MemFs,
    db: Option<Arc<Db>>,
    applier: Option<Applier>,
    /// `Some(epoch)`: the primary; `None`: a replica.
    primary_epoch: Option<u64>,
    halted: Option<HaltReason>,
    link_up: bool,
    stream: Option<Stream>,
    /// A demoted primary whose log may hold records the new primary never had.
    may_diverge: bool,
    /// The highest epoch this node has seen (raised only by a proven welcome or a promotion).
    highest_epoch: Epoch,
}

impl Node {
    fn up(&self) -> bool {
        self.db.is_some()
    }
}

struct Sim {
    rng: Rng,
    nodes: Vec<Node>,
    epoch: u64,
    /// Written on the primary, not yet acknowledged (no replica applied them).
    pending: Vec<(u64, [u8; 32])>,
    acked: Vec<(u64, [u8; 32])>,
    tenant_seq: u64,
    log: Vec<String>,
    /// The simulated clock.
    now: Duration,
    /// The primary's synchronous quorum (new for every term).
    quorum: Quorum<Write>,
    mode: SyncWait,
    next_stream: u64,
    /// Writes the quorum refused before their append: the payload tags that must never appear in any log.
    refused: Vec<u64>,
    /// Writes answered "outcome unknown".
    unknown: u64,
    /// Which node accepted writes in each epoch.
    writers: BTreeMap<u64, usize>,
}

impl Sim {
    fn note(&mut self, what: String) {
        if std::env::var_os("AERODB_SIM_SEED").is_some() {
            eprintln!("  {what}");
        }
        self.log.push(what);
    }

    fn open(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let replica = n.primary_epoch.is_none();
        let db = Arc::new(
            Db::open_with_fs(Arc::new(n.fs.clone()), Path::new(DIR), opts(self.epoch, replica))
                .unwrap_or_else(|e| panic!("node {i} does not reopen: {e}")),
        );
        n.applier = replica.then(|| Applier::new(db.clone(), 1 << 20).unwrap());
        n.db = Some(db);
    }

    fn crash(&mut self, i: usize) {
        let seed = self.rng.next();
        let tear = [Tear::None, Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail][(seed % 4) as usize];
        self.drop_stream(i);
        let n = &mut self.nodes[i];
        n.applier = None;
        n.db = None; // no close: the process dies
        n.fs.crash(CrashMode {
            unsynced: UnsyncedFate::Lost,
            tear,
            seed,
        });
        let was_primary = n.primary_epoch.is_some();
        self.note(format!("crash {i} ({tear:?})"));
        if was_primary {
            // Streams die with the primary, and so does its quorum: writes it held have an unknown outcome.
            for r in 0..self.nodes.len() {
                self.drop_stream(r);
            }
            self.quorum = Quorum::new(1, self.mode);
        }
    }

    fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.primary_epoch.is_some())
    }

    fn halt(&mut self, i: usize, reason: HaltReason) {
        let n = &self.nodes[i];
        let explained = match &reason {
            HaltReason::Gap { .. } => n.stream.as_ref().is_some_and(|s| s.faulted),
            HaltReason::Fork { .. } => n.may_diverge,
            _ => false,
        };
        assert!(explained, "node {i} halted without a cause: {reason}");
        self.note(format!("node {i} halts: {reason}"));
        self.drop_stream(i);
        self.nodes[i].halted = Some(reason);
    }

    fn key() -> aerodb_engine::VerifierKey {
        SigningKey::from_seed("aerodb-ledger", [5u8; 32])
            .unwrap()
            .verifier()
    }

    /// A replica connects: the core decides the hello (primary side) and the welcome (replica side).
    fn connect(&mut self, r: usize, p: usize) {
        let tip = self.nodes[r].applier.as_ref().unwrap().tip();
        let pdb = self.nodes[p].db.clone().unwrap();
        let rdb = self.nodes[r].db.clone().unwrap();
        let key = Self::key();
        let proof = rdb.latest_checkpoint().map(|c| c.note);
        let hello = psend::Hello {
            node_id: "r",
            commit_id: tip.commit_id,
            highest_epoch: self.nodes[r].highest_epoch,
            epoch_proof: proof.as_deref(),
        };
        let own = self.nodes[p].primary_epoch.map(Epoch);
        let from = match on_hello(own, &hello, &key) {
            HelloDecision::Accept { from } => from,
            other => panic!("primary {p} refused replica {r}'s hello: {other:?}"),
        };
        let theirs = (tip.commit_id > CommitId(0))
            .then(|| pdb.record(tip.commit_id).unwrap().map(|x| x.hash))
            .flatten();
        let welcome_proof = pdb.latest_checkpoint().map(|c| c.note);
        let vk = key.to_string();
        let welcome = follower::Welcome {
            node_id: "p",
            epoch: own.unwrap(),
            verifier_key: &vk,
            segment_bytes: pdb.segment_bytes(),
            commit_id: CommitId(pdb.tip().unwrap().commit_id.0),
            hash_at_our_tip: theirs,
            epoch_proof: welcome_proof.as_deref(),
        };
        let mut f = Follower::new(tip, self.nodes[r].highest_epoch, self.now);
        match f.on_welcome(&welcome, &key, rdb.segment_bytes(), self.now) {
            Ok(following) => {
                if let Some(e) = following.raise_to {
                    self.nodes[r].highest_epoch = e;
                }
                self.nodes[r]
                    .applier
                    .as_mut()
                    .unwrap()
                    .set_epoch_ceiling(following.epoch.0);
                self.note(format!("{r} connects to {p} at {}", tip.commit_id));
                self.nodes[r].may_diverge = false;
                self.next_stream += 1;
                let id = self.next_stream;
                self.nodes[r].stream = Some(Stream {
                    send: psend::Stream::new(from, self.now),
                    follower: f,
                    wire: VecDeque::new(),
                    faulted: false,
                    id,
                });
                let go = self.quorum.connect(id);
                for (w, d) in go {
                    assert_eq!(d, AdmissionDecision::Go);
                    self.append_admitted(w);
                }
            }
            Err(End::Halt(reason)) => self.halt(r, reason),
            Err(End::Retry(why)) => panic!("replica {r} cannot follow {p}: {why}"),
        }
    }

    /// Ends replica `r`'s stream (the link or a node went down): the quorum forgets it.
    fn drop_stream(&mut self, r: usize) {
        if let Some(s) = self.nodes[r].stream.take() {
            let settled = self.quorum.disconnect(s.id);
            self.settle_writes(settled);
        }
    }

    /// A client write: admitted by the quorum before it is appended (R-6).
    fn client_write(&mut self, k: u64) {
        let records: Vec<NewRecord> = (0..k)
            .map(|_| {
                self.tenant_seq += 1;
                NewRecord {
                    tenant: "t".into(),
                    payload: Payload::Event(Bytes::from(format!(
                        "w{:08}{}",
                        self.tenant_seq,
                        "x".repeat((self.tenant_seq % 200) as usize)
                    ))),
                }
            })
            .collect();
        let tag = self.tenant_seq;
        match self.quorum.admit() {
            Admission::Go => self.append_admitted(Write::Parked(tag, records)),
            Admission::Refuse { .. } => {
                self.note(format!("write {tag} refused before its append"));
                self.refused.extend(tag + 1 - k..=tag);
            }
            Admission::Wait => {
                self.note(format!("write {tag} waits for a replica"));
                let deadline = self.now + Duration::from_millis(1000);
                self.quorum.wait_admission(Write::Parked(tag, records), deadline);
            }
        }
    }

    fn append_admitted(&mut self, w: Write) {
        let Write::Parked(tag, records) = w else {
            unreachable!("only parked writes are admitted")
        };
        let p = self.primary().unwrap();
        let db = self.nodes[p].db.clone().unwrap();
        let epoch = self.nodes[p].primary_epoch.unwrap();
        let writer = *self.writers.entry(epoch).or_insert(p);
        assert_eq!(writer, p, "two nodes accept writes in epoch {epoch}");
        let receipts: Vec<(u64, [u8; 32])> = db
            .append_many(&records)
            .unwrap()
            .iter()
            .map(|r| (r.commit_id.0, r.record_hash))
            .collect();
        let last = receipts.last().unwrap().0;
        self.pending.extend(receipts.iter().copied());
        let deadline = self.now + Duration::from_millis(1000);
        if let Some(done) = self
            .quorum
            .register(CommitId(last), deadline, Write::Appended(tag, receipts))
        {
            self.settle_writes(vec![done]);
        }
    }

    /// The quorum settled appended writes: confirmed ones are acknowledged — and `k` replicas must hold them.
    fn settle_writes(&mut self, settled: Vec<(Write, Settled)>) {
        for (w, s) in settled {
            let Write::Appended(tag, receipts) = w else {
                unreachable!("only appended writes settle")
            };
            match s {
                Settled::Confirmed => {
                    let (last, hash) = *receipts.last().unwrap();
                    let holders = self
                        .nodes
                        .iter()
                        .filter(|n| n.primary_epoch.is_none())
                        .filter_map(|n| n.db.as_ref())
                        .filter(|db| db.record(CommitId(last)).unwrap().is_some_and(|r| r.hash == hash))
                        .count();
                    assert!(
                        holders >= 1,
                        "write {tag} confirmed but no replica holds record {last}"
                    );
                    self.pending.retain(|(c, _)| !receipts.iter().any(|r| r.0 == *c));
                    self.acked.extend(receipts);
                }
                Settled::Unconfirmed { commit_id, .. } => {
                    self.note(format!("write {tag} outcome unknown at {}", commit_id.0));
                    self.unknown += 1;
                }
            }
        }
    }

    /// The clock advances: the core's deadlines fire (sync waits, silence on both sides of every stream).
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let (settled, refused) = self.quorum.tick(self.now);
        self.settle_writes(settled);
        for (w, d) in refused {
            let Write::Parked(tag, records) = w else {
                unreachable!()
            };
            assert!(matches!(d, AdmissionDecision::Refuse { .. }));
            self.note(format!("write {tag} refused at its deadline, never appended"));
            self.refused.extend(tag + 1 - records.len() as u64..=tag);
        }
        for r in 0..self.nodes.len() {
            let silent = self.nodes[r]
                .stream
                .as_ref()
                .is_some_and(|s| s.follower.tick(self.now).is_err());
            if silent {
                self.note(format!("replica {r} hears nothing: reconnects"));
                self.drop_stream(r);
            }
        }
    }

    /// The primary's side of every stream: the core decides what goes on the wire.
    fn pump(&mut self, p: usize) {
        let pdb = self.nodes[p].db.clone().unwrap();
        for r in 0..self.nodes.len() {
            let max = 1 + self.rng.below(1500) as usize;
            let index = self.nodes[r]
                .stream
                .as_ref()
                .map_or(0, |s| s.send.checkpoints_sent());
            let cp = pdb.checkpoint_at(index);
            let view = View {
                tip: CommitId(pdb.tip().unwrap().commit_id.0),
                checkpoint: cp.as_ref().map(|c| (c.checkpoint.size, c.checkpoint.epoch)),
                may_write: true,
            };
            let now = self.now;
            let epoch = self.nodes[p].primary_epoch.unwrap();
            let Some(s) = self.nodes[r].stream.as_mut() else {
                continue;
            };
            match s.send.poll(&view, now) {
                Next::Frames { from } => {
                    let frames = pdb.raw_frames(from, max).unwrap();
                    if frames.is_empty() {
                        continue;
                    }
                    let last = CommitId(from.0 + frames.len() as u64 - 1);
                    s.send.frames_sent(last, 0, now);
                    s.wire.push_back(Msg::Frames(frames));
                }
                Next::Checkpoint => {
                    let cp = cp.unwrap();
                    s.send.checkpoint_sent(now);
                    s.wire.push_back(Msg::Checkpoint(cp.note));
                }
                Next::Heartbeat => {
                    s.send.heartbeat_sent(now);
                    s.wire.push_back(Msg::Heartbeat(epoch));
                }
                Next::Idle { .. } => {}
                Next::End(why) => {
                    self.note(format!("primary ends the stream to {r}: {why}"));
                    self.drop_stream(r);
                }
            }
        }
    }

    fn deliver(&mut self, r: usize) {
        let fault = self.rng.below(100);
        let n = &mut self.nodes[r];
        let Some(s) = n.stream.as_mut() else { return };
        let Some(mut msg) = s.wire.pop_front() else {
            return;
        };
        match fault {
            0..=2 => {
                s.faulted |= matches!(msg, Msg::Frames(_));
                self.note(format!("drop a message to {r}"));
                return;
            }
            3..=5 => s.wire.push_front(msg.clone()), // delivered twice
            6..=8 if !s.wire.is_empty() => {
                s.faulted = true;
                let later = s.wire.pop_front().unwrap();
                s.wire.push_front(msg);
                msg = later;
                self.note(format!("reorder messages to {r}"));
            }
            _ => {}
        }
        let now = self.now;
        let n = &mut self.nodes[r];
        let ack = match msg {
            Msg::Frames(batch) => match n.applier.as_mut().unwrap().apply(&batch) {
                Ok(_) => {
                    let tip = n.applier.as_ref().unwrap().tip();
                    n.stream.as_mut().unwrap().follower.applied(tip, now)
                }
                Err(ApplyError::Halt(reason)) => return self.halt(r, reason),
                Err(ApplyError::Engine(e)) => panic!("replica {r}'s engine failed: {e}"),
            },
            Msg::Checkpoint(note) => {
                let size = aerodb_engine::SignedCheckpoint::verify(&note, &Self::key())
                    .unwrap()
                    .checkpoint
                    .size;
                match n.stream.as_mut().unwrap().follower.on_checkpoint(size, now) {
                    Ok(()) => {}
                    Err(End::Halt(reason)) => return self.halt(r, reason),
                    Err(End::Retry(why)) => panic!("replica {r}: {why}"),
                }
                let n = &mut self.nodes[r];
                if let Err(e) = n.db.as_ref().unwrap().add_checkpoint(&note) {
                    panic!("replica {r} refuses a checkpoint of its primary: {e}");
                }
                return;
            }
            Msg::Heartbeat(epoch) => match n
                .stream
                .as_mut()
                .unwrap()
                .follower
                .on_heartbeat(Epoch(epoch), now)
            {
                Ok(ack) => ack,
                Err(End::Halt(reason)) => return self.halt(r, reason),
                Err(End::Retry(why)) => panic!("replica {r}: {why}"),
            },
        };
        // The ack reaches the primary (acks are not faulted here: a lost ack is a silent replica, which the
        // silence rule covers).
        let s = self.nodes[r].stream.as_mut().unwrap();
        s.send.on_ack(ack.written, ack.flushed, ack.applied, now);
        let id = s.id;
        let settled = self.quorum.ack(id, ack.flushed);
        self.settle_writes(settled);
    }

    /// `aerodb admin rebuild --discard-divergent-tail`: find the longest common prefix with the primary (the
    /// chain makes "record k matches" monotone, so a binary search), cut the local log after it, resume.
    fn cut_divergent_tail(&mut self, i: usize, p: usize) {
        let local = self.nodes[i].db.clone().unwrap();
        let primary = self.nodes[p].db.clone().unwrap();
        let hash = |db: &Db, k: u64| db.record(CommitId(k)).unwrap().map(|r| r.hash);
        let (mut lo, mut hi) = (
            0,
            local
                .tip()
                .unwrap()
                .commit_id
                .min(primary.tip().unwrap().commit_id)
                .0,
        );
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if hash(&local, mid) == hash(&primary, mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        drop(local);
        let n = &mut self.nodes[i];
        n.applier = None;
        let db = n.db.take().unwrap();
        Arc::try_unwrap(db).ok().unwrap().close().unwrap();
        let verifier = SigningKey::from_seed("aerodb-ledger", [5u8; 32])
            .unwrap()
            .verifier();
        let removed = aerodb_engine::truncate_after(
            Arc::new(n.fs.clone()),
            Path::new(DIR),
            lo,
            &opts(1, true),
            &verifier,
        )
        .unwrap();
        n.halted = None;
        n.may_diverge = false;
        self.open(i);
        assert_eq!(
            self.nodes[i].applier.as_ref().unwrap().tip().commit_id,
            CommitId(lo)
        );
        self.note(format!("rebuild {i}: cut {removed} records after {lo}"));
    }

    fn check_prefixes(&self) {
        let Some(p) = self.primary() else { return };
        let Some(pdb) = self.nodes[p].db.as_ref() else {
            return;
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if i == p || n.may_diverge || n.halted.is_some() {
                continue;
            }
            let Some(a) = n.applier.as_ref() else { continue };
            let tip = a.tip();
            if tip.commit_id == CommitId(0) {
                continue;
            }
            let theirs = pdb.record(tip.commit_id).unwrap().map(|r| r.hash);
            assert_eq!(
                theirs,
                Some(tip.record_hash),
                "replica {i} at {} is not a prefix of primary {p}",
                tip.commit_id
            );
        }
    }

    fn check_acked(&self) {
        let Some(p) = self.primary() else { return };
        let Some(pdb) = self.nodes[p].db.as_ref() else {
            return;
        };
        for (c, h) in &self.acked {
            let got = pdb.record(CommitId(*c)).unwrap().map(|r| r.hash);
            assert_eq!(
                got,
                Some(*h),
                "acknowledged record {c} lost or changed on primary {p}"
            );
        }
    }

    fn step(&mut self) {
        let action = self.rng.below(100);
        let p = self.primary();
        match action {
            // Client writes on the primary, through the quorum's admission.
            0..=29 => {
                let Some(p) = p else { return };
                if self.nodes[p].db.is_none() {
                    return;
                }
                let k = 1 + self.rng.below(3);
                self.client_write(k);
            }
            // The primary streams to each connected replica, as the core decides; sometimes it checkpoints.
            30..=49 => {
                let Some(p) = p else { return };
                let Some(db) = self.nodes[p].db.clone() else {
                    return;
                };
                if self.rng.below(4) == 0 {
                    db.checkpoint_now().unwrap();
                }
                self.pump(p);
            }
            // The network delivers.
            50..=74 => {
                let r = self.rng.below(self.nodes.len() as u64) as usize;
                self.deliver(r);
            }
            // (Re)connections: down nodes restart, replicas connect, the operator resumes Gap halts and rebuilds
            // forked demoted primaries.
            75..=84 => {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                if !self.nodes[i].up() {
                    self.open(i);
                    self.note(format!("restart {i}"));
                    return;
                }
                match self.nodes[i].halted.clone() {
                    Some(HaltReason::Gap { .. }) => {
                        self.nodes[i].halted = None;
                        self.note(format!("resume {i}"));
                    }
                    Some(HaltReason::Fork { .. }) => {
                        if let Some(p) = p.filter(|&p| self.nodes[p].up()) {
                            self.cut_divergent_tail(i, p);
                        }
                    }
                    Some(other) => panic!("unexpected halt {other}"),
                    None => {
                        let primary_up = p.is_some_and(|p| self.nodes[p].up());
                        if self.nodes[i].primary_epoch.is_none()
                            && self.nodes[i].stream.is_none()
                            && self.nodes[i].link_up
                            && primary_up
                        {
                            self.connect(i, p.unwrap());
                        }
                    }
                }
            }
            // Partitions.
            85..=89 => {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                self.nodes[i].link_up = !self.nodes[i].link_up;
                if !self.nodes[i].link_up {
                    self.drop_stream(i);
                }
                let n = &self.nodes[i];
                let what = format!("link {i} {}", if n.link_up { "healed" } else { "cut" });
                self.note(what);
            }
            // Crashes.
            90..=95 => {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                if self.nodes[i].up() {
                    self.crash(i);
                }
            }
            // Failover, when the primary is down: the most advanced replica becomes primary of a new epoch.
            _ => {
                let Some(old) = p else { return };
                if self.nodes[old].up() {
                    return;
                }
                // The runbook: bring every other node up (a down node's log still counts) and resume halted ones,
                // then promote the most up-to-date log: the highest last epoch, then the highest CommitId.
                // A write is acknowledged once a replica holds it (with the primary, a majority of three), and only
                // writes of the current term are counted, so that log holds every acknowledged write (the same
                // argument as Raft's election restriction).
                for i in 0..self.nodes.len() {
                    if i == old {
                        continue;
                    }
                    if !self.nodes[i].up() {
                        self.open(i);
                    }
                    // A halted node is resumed first (promotion is refused while halted). A node halted on a
                    // fork may be exactly the one holding the acknowledged writes: its fork was against a primary
                    // that lacked its tail.
                    self.nodes[i].halted = None;
                }
                let best = (0..self.nodes.len()).filter(|&i| i != old).max_by_key(|&i| {
                    let t = self.nodes[i].applier.as_ref().unwrap().tip();
                    (t.epoch, t.commit_id)
                });
                let Some(new) = best else { return };
                // Every replica that could still be connected stops following the old primary.
                for r in 0..self.nodes.len() {
                    self.drop_stream(r);
                }
                self.quorum = Quorum::new(1, self.mode);
                self.epoch += 1;
                let n = &mut self.nodes[new];
                n.applier = None;
                let db = n.db.take().unwrap();
                Arc::try_unwrap(db).ok().unwrap().close().unwrap();
                n.primary_epoch = Some(self.epoch);
                n.may_diverge = false;
                self.nodes[old].primary_epoch = None;
                // Until its handshake with the new primary succeeds, no other node is known to be a prefix of it.
                for (i, m) in self.nodes.iter_mut().enumerate() {
                    if i != new {
                        m.may_diverge = true;
                    }
                }
                self.open(new);
                // The new term's first act: a checkpoint of its epoch, the proof its replicas raise their epoch on.
                self.nodes[new].highest_epoch = Epoch(self.epoch);
                self.nodes[new].db.as_ref().unwrap().checkpoint_now().unwrap();
                self.note(format!("failover {old} -> {new} (epoch {})", self.epoch));
                // Records the old primary wrote that no replica had were never acknowledged.
                self.pending.clear();
                self.check_acked();
            }
        }
        self.check_prefixes();
        let by = Duration::from_millis(self.rng.below(400));
        self.advance(by);
    }

    /// Heals everything and lets the replicas catch up; then every log matches the primary's.
    fn settle(&mut self) {
        // Writes still held by the quorum reach their deadlines first (parked ones are refused, appended ones
        // answered outcome-unknown), so nothing is appended while the replicas catch up.
        self.advance(Duration::from_secs(10));
        for n in &mut self.nodes {
            n.link_up = true;
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up() {
                self.open(i);
            }
        }
        let p = self.primary().unwrap();
        let pdb = self.nodes[p].db.clone().unwrap();
        let tip = pdb.tip().unwrap();
        for r in 0..self.nodes.len() {
            if r == p {
                continue;
            }
            for _ in 0..3 {
                match self.nodes[r].halted.clone() {
                    Some(HaltReason::Gap { .. }) => self.nodes[r].halted = None,
                    Some(HaltReason::Fork { .. }) => self.cut_divergent_tail(r, p),
                    Some(other) => panic!("unexpected halt {other}"),
                    None => {}
                }
                self.drop_stream(r);
                self.connect(r, p);
                if self.nodes[r].halted.is_some() {
                    continue;
                }
                let frames = pdb
                    .raw_frames(
                        CommitId(self.nodes[r].stream.as_ref().unwrap().send.next_commit().0),
                        usize::MAX,
                    )
                    .unwrap();
                if let Err(e) = self.nodes[r].applier.as_mut().unwrap().apply(&frames) {
                    panic!("replica {r} failed to catch up: {e}");
                }
                break;
            }
            let rt = self.nodes[r].applier.as_ref().unwrap().tip();
            assert_eq!(
                (rt.commit_id, rt.record_hash),
                (tip.commit_id, tip.record_hash),
                "replica {r} did not converge"
            );
            // Byte-identical sealed segments (all but each log's newest).
            let segs = |fs: &MemFs| {
                let mut v: Vec<_> = fs
                    .all_files()
                    .into_iter()
                    .filter(|f| f.extension().is_some_and(|e| e == "seg"))
                    .collect();
                v.sort();
                v.pop();
                v.into_iter()
                    .map(|f| (f.clone(), fs.read_file(&f).unwrap()))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (segs(&self.nodes[p].fs), segs(&self.nodes[r].fs));
            let common = a.len().min(b.len());
            assert_eq!(a[..common], b[..common], "sealed segments of replica {r} differ");
        }
        self.acked.append(&mut self.pending);
        self.check_acked();
        self.check_refused_absent(p);
    }

    /// No write the quorum refused is in the primary's log (every replica converged to it).
    fn check_refused_absent(&self, p: usize) {
        let db = self.nodes[p].db.as_ref().unwrap();
        let tip = db.tip().unwrap().commit_id.0;
        let mut from = 1;
        while from <= tip {
            let recs = db.records(CommitId(from), 1000).unwrap();
            for r in &recs {
                let Payload::Event(b) = &r.record.payload else {
                    continue;
                };
                let tag: u64 = std::str::from_utf8(&b[1..9]).unwrap().parse().unwrap();
                assert!(
                    !self.refused.contains(&tag),
                    "write {tag} was refused before its append but record {} holds it",
                    r.record.commit_id
                );
            }
            from += recs.len().max(1) as u64;
        }
    }
}

/// What a run did, summed over seeds for the report.
#[derive(Default)]
struct Tally {
    acked: u64,
    failovers: u64,
    crashes: u64,
    gap_halts: u64,
    fork_halts: u64,
    rebuilds: u64,
    refused: u64,
    unknown: u64,
    silences: u64,
}

fn tally(log: &[String], acked: usize, t: &mut Tally) {
    t.acked += acked as u64;
    for l in log {
        let c = if l.starts_with("failover") {
            &mut t.failovers
        } else if l.starts_with("crash") {
            &mut t.crashes
        } else if l.contains("halts: Gap") {
            &mut t.gap_halts
        } else if l.contains("halts: Fork") {
            &mut t.fork_halts
        } else if l.starts_with("rebuild") {
            &mut t.rebuilds
        } else if l.contains("hears nothing") {
            &mut t.silences
        } else {
            continue;
        };
        *c += 1;
    }
}

fn run(seed: u64) -> Result<Tally, String> {
    let outcome = std::panic::catch_unwind(|| {
        let mut sim = Sim {
            rng: Rng(seed),
            nodes: (0..3)
                .map(|i| Node {
                    fs: MemFs::new(),
                    db: None,
                    applier: None,
                    primary_epoch: (i == 0).then_some(1),
                    halted: None,
                    link_up: true,
                    stream: None,
                    may_diverge: false,
                    highest_epoch: Epoch(1),
                })
                .collect(),
            epoch: 1,
            pending: Vec::new(),
            acked: Vec::new(),
            tenant_seq: 0,
            log: Vec::new(),
            now: Duration::ZERO,
            quorum: Quorum::new(
                1,
                if seed.is_multiple_of(2) {
                    SyncWait::Block
                } else {
                    SyncWait::Fail
                },
            ),
            mode: if seed.is_multiple_of(2) {
                SyncWait::Block
            } else {
                SyncWait::Fail
            },
            next_stream: 0,
            refused: Vec::new(),
            unknown: 0,
            writers: BTreeMap::new(),
        };
        for n in &sim.nodes {
            n.fs.create_dir_all(Path::new(DIR)).unwrap();
        }
        for i in 0..3 {
            sim.open(i);
        }
        // The first term's proof.
        sim.nodes[0].db.as_ref().unwrap().checkpoint_now().unwrap();
        for _ in 0..STEPS {
            sim.step();
        }
        sim.settle();
        let mut t = Tally::default();
        tally(&sim.log, sim.acked.len(), &mut t);
        t.refused = sim.refused.len() as u64;
        t.unknown = sim.unknown;
        t
    });
    outcome.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

#[test]
fn primary_and_two_replicas_under_crashes_partitions_and_failovers() {
    if let Ok(one) = std::env::var("AERODB_SIM_SEED") {
        let seed: u64 = one.parse().expect("AERODB_SIM_SEED");
        if let Err(e) = run(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("AERODB_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let started = std::time::Instant::now();
    let mut total = Tally::default();
    for seed in 0..seeds {
        match run(seed) {
            Ok(t) => {
                total.acked += t.acked;
                total.failovers += t.failovers;
                total.crashes += t.crashes;
                total.gap_halts += t.gap_halts;
                total.fork_halts += t.fork_halts;
                total.rebuilds += t.rebuilds;
                total.refused += t.refused;
                total.unknown += t.unknown;
                total.silences += t.silences;
            }
            Err(e) => panic!("seed {seed} failed (rerun: AERODB_SIM_SEED={seed}): {e}"),
        }
    }
    aerodb_tests::report_figure(
        "T15 replication simulator",
        &format!(
            "{seeds} seeds × {STEPS} steps on the production replication core (hello, welcome, send state, \
             quorum, silence; simulated clock), primary + 2 replicas, --sync-replicas 1 block/fail: {} \
             acknowledged writes (each held by a replica when confirmed), {} records refused before their append \
             (0 found in any log), {} writes answered outcome-unknown, {} crashes (torn writes), {} failovers, {} \
             silent-stream reconnects, {} Gap halts from injected drops/reorders, {} Fork halts of diverged \
             ex-primaries ({} rebuilds); 0 acknowledged writes lost, 0 replicas off the primary's prefix, 0 \
             unexplained halts, 0 epochs with two writers, all converge byte-identical ({:.1} s)",
            total.acked,
            total.refused,
            total.unknown,
            total.crashes,
            total.failovers,
            total.silences,
            total.gap_halts,
            total.fork_halts,
            total.rebuilds,
            started.elapsed().as_secs_f64()
        ),
    );
}
