//! Automatic failover through etcd (issue 19): a real etcd and three real `aerodb-server` processes on loopback
//! ports the OS picked, `--authority etcd`, one synchronous replica. Clients append without pause and follow the
//! leader; the primary is killed (SIGKILL), later the new one is stopped (SIGTERM). A checker over the client-side
//! history: every acknowledged write is in the final log with its hash, and no CommitId was acknowledged twice
//! (two writers never acknowledged overlapping writes).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use parking_lot::Mutex;

const TTL_MS: &str = "1000";

/// One acknowledged write as the client saw it.
#[derive(Clone, Debug)]
struct Ack {
    commit_id: u64,
    record_hash: String,
    at: Instant,
    by: SocketAddr,
}

struct Cluster {
    etcd: EtcdServer,
    dirs: Vec<TempDir>,
    nodes: Vec<Option<Server>>,
    sync: String,
    /// Each node's way to etcd (a proxy that a test can cut), when not direct.
    proxies: Vec<Proxy>,
}

/// A TCP proxy between one node and etcd that a test can cut (every connection closed, new ones refused) and
/// restore: the node loses etcd while clients still reach it.
struct Proxy {
    endpoint: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn to(target: &str) -> Proxy {
        let target: SocketAddr = target.strip_prefix("http://").unwrap().parse().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for down in l.incoming() {
                let Ok(down) = down else { return };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(up) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                cs.lock()
                    .extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
                let (mut d, mut u) = (down, up);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut d, &mut u);
                    let _ = u.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut d2);
                    let _ = d2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy { endpoint, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn start_node(c: &Cluster, i: usize) -> Server {
    let dir = c.dirs[i].path();
    let token = dir.join("replicator.token");
    aerodb_server::auth::write_secret_file(&token, REPLICATOR).unwrap();
    let id = format!("n{}", i + 1);
    start(
        dir,
        &[
            "--authority",
            "etcd",
            "--etcd-endpoints",
            c.proxies.get(i).map_or(&c.etcd.endpoint, |p| &p.endpoint),
            "--node-id",
            &id,
            "--lease-ttl-ms",
            TTL_MS,
            "--cluster-size",
            "3",
            "--sync-replicas",
            &c.sync,
            "--primary-token-file",
            token.to_str().unwrap(),
            "--segment-bytes",
            "1048576",
            "--request-timeout-ms",
            "2000",
        ],
    )
}

fn cluster(sync: &str, proxied: bool) -> Cluster {
    let etcd = EtcdServer::start();
    let proxies = if proxied {
        (0..3).map(|_| Proxy::to(&etcd.endpoint)).collect()
    } else {
        Vec::new()
    };
    let mut c = Cluster {
        etcd,
        dirs: (0..3).map(|_| TempDir::new("failover")).collect(),
        nodes: Vec::new(),
        sync: sync.into(),
        proxies,
    };
    // Every node holds the log's one key (docs/replication.md, "Signing"): the first node makes it.
    let first = start_node(&c, 0);
    let key = first.data.join("checkpoint.key");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !key.exists() {
        assert!(Instant::now() < deadline, "the first node made no key");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.nodes.push(Some(first));
    for i in 1..3 {
        let data = c.dirs[i].path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(&key, data.join("checkpoint.key")).unwrap();
        let n = start_node(&c, i);
        c.nodes.push(Some(n));
    }
    c
}

/// One request with a short timeout: a paused node must not hold a client (or the test) for long.
fn send(addr: SocketAddr, raw: &[u8]) -> std::io::Result<aerodb_server::httpc::Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(1500)))?;
    aerodb_server::httpc::exchange(&mut s, raw)
}

fn get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = send(
        addr,
        &aerodb_server::httpc::request("GET", path, Some(READER), None, false),
    )
    .ok()?;
    serde_json::from_slice(&r.body).ok()
}

fn ha(addr: SocketAddr) -> Option<serde_json::Value> {
    get(addr, "/v1/ha/status")
}

impl Cluster {
    fn live(&self) -> Vec<(usize, SocketAddr)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|s| (i, s.http)))
            .collect()
    }

    /// Waits until exactly one live node leads and every other live node follows it; returns its index.
    fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live();
            let st: Vec<(usize, serde_json::Value)> =
                live.iter().filter_map(|(i, a)| ha(*a).map(|v| (*i, v))).collect();
            let leaders: Vec<usize> = st
                .iter()
                .filter(|(_, v)| v["is_leader"] == true)
                .map(|(i, _)| *i)
                .collect();
            if let [l] = leaders[..] {
                let url = format!("http://{}", self.nodes[l].as_ref().unwrap().http);
                let followers_agree = st.len() == live.len()
                    && st.iter().all(|(i, v)| {
                        *i == l || (v["leader_url"] == url.as_str() && v["connected_to_primary"] == true)
                    });
                if followers_agree {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single leader followed by all within {within:?}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Writers that append without pause to whichever node leads, following `leader_url` answers and otherwise
/// asking the nodes' HA status.
struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    unknown: Arc<Mutex<Vec<u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn writers(n: usize, nodes: Arc<Mutex<Vec<SocketAddr>>>) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..n)
        .map(|w| {
            let (stop, acks, unknown, nodes) = (stop.clone(), acks.clone(), unknown.clone(), nodes.clone());
            std::thread::spawn(move || {
                let mut target: Option<SocketAddr> = None;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(addr) = target else {
                        target = nodes
                            .lock()
                            .iter()
                            .copied()
                            .find(|a| ha(*a).is_some_and(|v| v["is_leader"] == true));
                        if target.is_none() {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        continue;
                    };
                    seq += 1;
                    let body = format!("{{\"tenant\":\"t\",\"event\":\"w{w}-{seq}\"}}");
                    let r = send(
                        addr,
                        &aerodb_server::httpc::request(
                            "POST",
                            "/v1/records",
                            Some(WRITER),
                            Some(&body),
                            false,
                        ),
                    );
                    let Ok(r) = r else {
                        target = None;
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if (200..300).contains(&r.status) {
                        acks.lock().push(Ack {
                            commit_id: v["commit_id"].as_u64().unwrap(),
                            record_hash: v["record_hash"].as_str().unwrap().to_owned(),
                            at: Instant::now(),
                            by: addr,
                        });
                        continue;
                    }
                    match v["error"]["code"].as_str() {
                        Some("OUTCOME_UNKNOWN") => {
                            unknown.lock().push(v["error"]["commit_id"].as_u64().unwrap_or(0))
                        }
                        Some("NOT_LEADER") => {
                            target = v["error"]["leader_url"]
                                .as_str()
                                .and_then(|u| u.strip_prefix("http://"))
                                .and_then(|a| a.parse().ok())
                                .filter(|a| *a != addr);
                            if target.is_none() {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                        }
                        _ => {
                            target = None;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                }
            })
        })
        .collect();
    Writers {
        stop,
        acks,
        unknown,
        threads,
    }
}

impl Writers {
    fn acked(&self) -> usize {
        self.acks.lock().len()
    }

    fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} writes acknowledged",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first write acknowledged by another node than `old` after `t0`: the failover time as a client sees it.
    fn first_ack_after(&self, t0: Instant, old: SocketAddr, within: Duration) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            if let Some(a) = self.acks.lock().iter().find(|a| a.at > t0 && a.by != old) {
                return a.at - t0;
            }
            assert!(
                Instant::now() < deadline,
                "no write acknowledged by a new leader within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn finish(mut self) -> (Vec<Ack>, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let acks = self.acks.lock().clone();
        let unknown = self.unknown.lock().clone();
        (acks, unknown)
    }
}

/// The checker: no CommitId acknowledged twice, and every acknowledged write on `node` with its hash.
fn check_history(acks: &[Ack], node: SocketAddr) {
    let mut by_id: BTreeMap<u64, &Ack> = BTreeMap::new();
    for a in acks {
        if let Some(prev) = by_id.insert(a.commit_id, a) {
            panic!(
                "CommitId {} acknowledged twice: by {} ({}) and by {} ({})",
                a.commit_id, prev.by, prev.record_hash, a.by, a.record_hash
            );
        }
    }
    for a in acks {
        let r = get(node, &format!("/v1/records/{}", a.commit_id)).unwrap_or_else(|| {
            panic!(
                "CommitId {} acknowledged by {} is not readable",
                a.commit_id, a.by
            )
        });
        assert_eq!(
            r["record_hash"].as_str(),
            Some(a.record_hash.as_str()),
            "CommitId {} acknowledged by {} differs in the final log: {r}",
            a.commit_id,
            a.by
        );
    }
}

fn wait_caught_up(node: SocketAddr, tip: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while ha(node)
        .and_then(|v| v["applied_commit_id"].as_u64())
        .unwrap_or(0)
        < tip
    {
        assert!(Instant::now() < deadline, "{node} did not reach CommitId {tip}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn epoch_of_latest_checkpoint(node: SocketAddr) -> u64 {
    let cp = get(node, "/v1/checkpoints/latest").unwrap();
    let note = cp["note"].as_str().unwrap().to_owned();
    note.lines()
        .find_map(|l| l.strip_prefix("epoch "))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch line in {note}"))
}

#[test]
fn sigkill_and_sigterm_of_the_primary_under_sync_appends_lose_nothing() {
    let mut c = cluster("1", false);
    let first = c.leader(Duration::from_secs(20));
    let leader_http = c.nodes[first].as_ref().unwrap().http;
    // A follower's HA status: the lease and the leader's URL.
    let (_, follower) = c.live().into_iter().find(|(i, _)| *i != first).unwrap();
    let st = ha(follower).unwrap();
    assert!(st["lease_ms"].as_u64().unwrap() >= 1000, "{st}");
    assert!(st["expires_in_ms"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["leader_url"], format!("http://{leader_http}").as_str(), "{st}");
    assert_eq!(st["is_leader"], false);
    let leader_st = ha(leader_http).unwrap();
    let epoch1 = leader_st["epoch"].as_u64().unwrap();
    assert!(epoch1 > 0, "{leader_st}");
    // A write sent to a follower: NOT_LEADER with the leader's URL, nothing written.
    let r = aerodb_server::httpc::send(
        follower,
        &aerodb_server::httpc::request(
            "POST",
            "/v1/records",
            Some(WRITER),
            Some("{\"tenant\":\"t\",\"event\":\"x\"}"),
            false,
        ),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "NOT_LEADER", "{v}");
    assert_eq!(
        v["error"]["leader_url"],
        format!("http://{leader_http}").as_str(),
        "{v}"
    );

    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = writers(4, addrs.clone());
    w.wait_for(300, Duration::from_secs(30));

    // 1. SIGKILL of the primary under sustained synchronous appends.
    let t0 = Instant::now();
    c.nodes[first].as_mut().unwrap().kill9();
    c.nodes[first] = None;
    addrs.lock().retain(|a| *a != leader_http);
    let kill_failover = w.first_ack_after(t0, leader_http, Duration::from_secs(15));
    let second = c.leader(Duration::from_secs(10));
    let second_http = c.nodes[second].as_ref().unwrap().http;
    let epoch2 = ha(second_http).unwrap()["epoch"].as_u64().unwrap();
    assert!(epoch2 > epoch1, "epochs {epoch1} then {epoch2}");
    assert_eq!(epoch_of_latest_checkpoint(second_http), epoch2);
    let n = w.acked();
    w.wait_for(n + 200, Duration::from_secs(30));

    // 2. The killed node comes back and rejoins as a replica of the new primary (with one synchronous replica,
    // writes need it), then SIGTERM of the new primary: it hands over.
    let n = start_node(&c, first);
    addrs.lock().push(n.http);
    c.nodes[first] = Some(n);
    assert_eq!(
        c.leader(Duration::from_secs(20)),
        second,
        "the leader changed when the old primary returned"
    );
    let n = w.acked();
    w.wait_for(n + 100, Duration::from_secs(30));
    let t1 = Instant::now();
    let status = c.nodes[second].as_mut().unwrap().terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    c.nodes[second] = None;
    addrs.lock().retain(|a| *a != second_http);
    let term_failover = w.first_ack_after(t1, second_http, Duration::from_secs(15));
    let third = c.leader(Duration::from_secs(10));
    let third_http = c.nodes[third].as_ref().unwrap().http;
    let n = w.acked();
    w.wait_for(n + 100, Duration::from_secs(30));
    let (acks, unknown) = w.finish();
    check_history(&acks, third_http);
    report_figure(
        "failover",
        &format!(
            "lease TTL {TTL_MS} ms, sync replicas 1: SIGKILL -> first acknowledged write at the new leader {} ms, \
             SIGTERM -> {} ms; {} writes acknowledged across 3 terms, 0 lost, 0 CommitIds acknowledged twice; {} \
             answered OUTCOME_UNKNOWN",
            kill_failover.as_millis(),
            term_failover.as_millis(),
            acks.len(),
            unknown.len()
        ),
    );

    // 3. The stopped node comes back and rejoins; every node holds every acknowledged write.
    let tip = ha(third_http).unwrap()["commit_id"].as_u64().unwrap();
    let n = start_node(&c, second);
    c.nodes[second] = Some(n);
    assert_eq!(
        c.leader(Duration::from_secs(20)),
        third,
        "the leader changed when a stopped node returned"
    );
    for (_, a) in c.live() {
        wait_caught_up(a, tip, Duration::from_secs(20));
        check_history(&acks, a);
    }
}

/// Acknowledgements `node` gave after `t`.
fn acks_by_after(acks: &[Ack], node: SocketAddr, t: Instant) -> Vec<u64> {
    acks.iter()
        .filter(|a| a.by == node && a.at > t)
        .map(|a| a.commit_id)
        .collect()
}

#[test]
fn a_primary_that_cannot_prove_its_lease_acknowledges_nothing() {
    let ttl = Duration::from_millis(TTL_MS.parse().unwrap());
    let mut c = cluster("1", true);
    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = writers(3, addrs.clone());
    let mut checks = Vec::new();

    // 1. The primary is cut from etcd but not from its clients: it stops acknowledging within its lease, a new
    //    primary is elected, and the old one acknowledges nothing after its lease (checked by the history).
    let l = c.leader(Duration::from_secs(20));
    let old = c.nodes[l].as_ref().unwrap().http;
    w.wait_for(100, Duration::from_secs(30));
    let t_cut = Instant::now();
    c.proxies[l].cut();
    let took = w.first_ack_after(t_cut, old, Duration::from_secs(15));
    let (acks_now, _) = (w.acks.lock().clone(), ());
    let late = acks_by_after(&acks_now, old, t_cut + ttl);
    assert!(
        late.is_empty(),
        "the primary cut from etcd acknowledged {late:?} after its lease"
    );
    // Its HA status says it does not lead.
    let st = ha(old).unwrap();
    assert_eq!(st["is_leader"], false, "{st}");
    assert_eq!(st["can_accept_protected_writes"], false, "{st}");
    c.proxies[l].restore();
    let l2 = c.leader(Duration::from_secs(20));
    assert_ne!(l2, l);
    checks.push(format!(
        "etcd cut from the primary: new leader's first ack after {} ms",
        took.as_millis()
    ));

    // 2. The primary is paused (SIGSTOP) past its lease, then resumed: a newer term took over meanwhile and the
    //    resumed node acknowledges nothing (its pending requests answer NOT_LEADER or OUTCOME_UNKNOWN).
    let paused = c.nodes[l2].as_ref().unwrap();
    let (paused_http, pid) = (paused.http, paused.child.as_ref().unwrap().id().to_string());
    w.wait_for(w.acked() + 100, Duration::from_secs(30));
    let t_stop = Instant::now();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    let took = w.first_ack_after(t_stop, paused_http, Duration::from_secs(15));
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    let l3 = c.leader(Duration::from_secs(20));
    assert_ne!(l3, l2);
    w.wait_for(w.acked() + 100, Duration::from_secs(30));
    let late = acks_by_after(&w.acks.lock().clone(), paused_http, t_stop + ttl);
    assert!(
        late.is_empty(),
        "the paused primary acknowledged {late:?} after its lease"
    );
    checks.push(format!(
        "primary paused past its lease: new leader's first ack after {} ms",
        took.as_millis()
    ));

    // 3. etcd itself paused past the TTL: the primary stops acknowledging within its lease; replicas keep serving
    //    reads; writes resume once etcd is back.
    let leader_http = c.nodes[l3].as_ref().unwrap().http;
    let replica_http = c.live().into_iter().find(|(i, _)| *i != l3).unwrap().1;
    let t_etcd = Instant::now();
    c.etcd.signal("STOP");
    std::thread::sleep(ttl + Duration::from_millis(500));
    let st = ha(leader_http).unwrap();
    assert_eq!(st["can_accept_protected_writes"], false, "{st}");
    assert_eq!(st["write_block_active"], true, "{st}");
    let read = get(replica_http, "/v1/records/1").expect("a replica serves reads while etcd is away");
    assert_eq!(read["commit_id"], 1, "{read}");
    let during = w.acks.lock().iter().filter(|a| a.at > t_etcd + ttl).count();
    c.etcd.signal("CONT");
    let resumed = Instant::now();
    w.wait_for(w.acked() + 50, Duration::from_secs(30));
    assert_eq!(
        during, 0,
        "{during} writes acknowledged while etcd was away past the lease"
    );
    let back = w
        .acks
        .lock()
        .iter()
        .find(|a| a.at > resumed)
        .map(|a| a.at - resumed)
        .unwrap();
    checks.push(format!(
        "etcd paused {} ms: 0 acknowledged after the lease, writes back {} ms after etcd",
        (ttl + Duration::from_millis(500)).as_millis(),
        back.as_millis()
    ));

    // 4. A replica far behind never wins: pause it, let the primary run ahead, kill the primary, resume it.
    let l4 = c.leader(Duration::from_secs(20));
    let (lag_i, _) = c.live().into_iter().find(|(i, _)| *i != l4).unwrap();
    let lag_pid = c.nodes[lag_i]
        .as_ref()
        .unwrap()
        .child
        .as_ref()
        .unwrap()
        .id()
        .to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &lag_pid])
        .status()
        .unwrap();
    w.wait_for(w.acked() + 300, Duration::from_secs(30));
    let killed = c.nodes[l4].as_ref().unwrap().http;
    c.nodes[l4].as_mut().unwrap().kill9();
    c.nodes[l4] = None;
    addrs.lock().retain(|a| *a != killed);
    std::process::Command::new("kill")
        .args(["-CONT", &lag_pid])
        .status()
        .unwrap();
    let l5 = c.leader(Duration::from_secs(20));
    assert_ne!(l5, lag_i, "the replica that was far behind won the election");
    let (acks, unknown) = w.finish();
    let final_leader = c.nodes[l5].as_ref().unwrap().http;
    check_history(&acks, final_leader);
    let tip = ha(final_leader).unwrap()["commit_id"].as_u64().unwrap();
    let lagger = c.nodes[lag_i].as_ref().unwrap().http;
    wait_caught_up(lagger, tip, Duration::from_secs(20));
    check_history(&acks, lagger);
    checks.push("a lagging replica never won".into());
    report_figure(
        "failover-lease",
        &format!(
            "lease TTL {TTL_MS} ms: {}; {} writes acknowledged, 0 lost, 0 after a lease; {} OUTCOME_UNKNOWN",
            checks.join("; "),
            acks.len(),
            unknown.len()
        ),
    );
}
