//! Real-process clusters on loopback for the failover tests, the `failover` benchmark and the HA lab: a
//! single-member etcd (Debian's `etcd-server`) and `aerodb-server` nodes under `--authority etcd`, on ports the OS
//! picked, with temporary data removed on drop and every process killed on drop. Clients that append without pause
//! and follow the leader ([`Writers`]), and the checker over their history ([`check_history`]).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::httpc;

/// What went wrong starting or driving a lab cluster.
pub type LabResult<T> = std::result::Result<T, String>;

/// Every process and temporary directory the lab started in this program, so an interrupted run can remove them
/// ([`stop_all`]), and whether it is stopping (no process is started then).
#[derive(Default)]
struct Tracked {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    stopping: bool,
}

fn tracked() -> &'static Mutex<Tracked> {
    static T: std::sync::OnceLock<Mutex<Tracked>> = std::sync::OnceLock::new();
    T.get_or_init(|| Mutex::new(Tracked::default()))
}

/// Records a process the lab started; if the lab is stopping, kills it at once and says so.
fn track_child(child: &mut Child) -> LabResult<()> {
    let mut t = tracked().lock();
    if t.stopping {
        let _ = child.kill();
        let _ = child.wait();
        return Err("the lab is stopping".into());
    }
    t.pids.push(child.id());
    Ok(())
}

/// Kills a process the lab started (SIGCONT first, so a paused one dies too), waits for it and forgets it (its
/// pid may be reused once it is reaped, so [`stop_all`] must not signal it).
fn reap(child: &mut Child) {
    signal(child.id(), "CONT");
    let _ = child.kill();
    let _ = child.wait();
    tracked().lock().pids.retain(|p| *p != child.id());
}

/// Records a temporary directory for [`stop_all`] to remove.
pub fn track_dir(dir: &std::path::Path) {
    tracked().lock().dirs.push(dir.to_owned());
}

/// After an interruption (Ctrl-C): no process is started from now on; every process the lab started is killed
/// (SIGCONT first, so a paused one dies too) and every temporary directory it made is removed.
pub fn stop_all() {
    let (pids, dirs) = {
        let mut t = tracked().lock();
        t.stopping = true;
        (std::mem::take(&mut t.pids), std::mem::take(&mut t.dirs))
    };
    for pid in pids {
        signal(pid, "CONT");
        signal(pid, "KILL");
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A free loopback port (bound, then released: the OS picked it).
pub fn free_port() -> LabResult<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("picking a free port: {e}"))
}

/// A single-member etcd on loopback with a short election timeout (so leases of one second are allowed), its data
/// in a temporary directory; killed and removed on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    /// Its client URL (`http://127.0.0.1:port`).
    pub endpoint: String,
    peer_url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `etcd` from `PATH` and waits (at most 20 s) until it accepts connections.
    pub fn start() -> LabResult<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("aerodb-etcd-")
            .tempdir()
            .map_err(|e| format!("a temporary directory for etcd: {e}"))?;
        track_dir(dir.path());
        let (client, peer) = (free_port()?, free_port()?);
        let mut etcd = Etcd {
            child: None,
            endpoint: format!("http://127.0.0.1:{client}"),
            peer_url: format!("http://127.0.0.1:{peer}"),
            _dir: dir,
        };
        etcd.run()?;
        Ok(etcd)
    }

    fn run(&mut self) -> LabResult<()> {
        let child = Command::new("etcd")
            .args(["--name", "lab", "--data-dir"])
            .arg(self._dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint, "--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &self.peer_url, "--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &format!("lab={}", self.peer_url)])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("running etcd: {e} (install Debian's etcd-server: apt-get install etcd-server; scripts/test does)")
            })?;
        let mut child = child;
        track_child(&mut child)?;
        self.child = Some(child);
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                return Err("etcd did not accept connections within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILLs etcd (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            reap(&mut c);
        }
    }

    /// Starts etcd again on the same ports with the same data, after [`Etcd::kill`].
    pub fn restart(&mut self) -> LabResult<()> {
        self.kill();
        self.run()
    }

    /// Its temporary directory.
    #[must_use]
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Its process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` (`STOP`, `CONT`, `KILL`) to the etcd process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            signal(c.id(), sig);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            reap(&mut c);
        }
    }
}

/// Sends `sig` to process `pid` (with `kill`).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A TCP proxy between one node and etcd that can be cut (every connection closed, new ones refused) and
/// restored: the node loses etcd while its clients still reach it.
#[derive(Debug)]
pub struct Proxy {
    /// The URL to give the node instead of etcd's.
    pub endpoint: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// A proxy to `target` (`http://host:port`) on a loopback port the OS picked.
    pub fn to(target: &str) -> LabResult<Proxy> {
        let target: SocketAddr = target
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("not an http://host:port URL: {target}"))?;
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy listener: {e}"))?;
        let endpoint = format!(
            "http://{}",
            l.local_addr().map_err(|e| format!("proxy address: {e}"))?
        );
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
                let pair = (|| {
                    Some((
                        down.try_clone().ok()?,
                        up.try_clone().ok()?,
                        down.try_clone().ok()?,
                    ))
                })();
                let Some((mut d2, mut u2, d3)) = pair else {
                    continue;
                };
                if let Ok(u3) = up.try_clone() {
                    cs.lock().extend([d3, u3]);
                }
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
        Ok(Proxy { endpoint, cut, conns })
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The tokens a lab cluster's tokens file holds.
pub const LAB_WRITER: &str = "lab-writer-token-0123456789";
/// A reader token.
pub const LAB_READER: &str = "lab-reader-token-0123456789";
/// An admin token (signs checkpoints on demand).
pub const LAB_ADMIN: &str = "lab-admin-token-0123456789ab";
/// The replicator token every node presents to the leader.
pub const LAB_REPLICATOR: &str = "lab-replicator-token-01234567";

/// How a lab cluster is run.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The program that runs a node: `aerodb-server`, or a program that runs
    /// [`crate::main_server::run`] when given `bin_args` first.
    pub bin: PathBuf,
    /// Arguments before the node's flags (empty for `aerodb-server`).
    pub bin_args: Vec<String>,
    /// Nodes.
    pub nodes: usize,
    /// `--sync-replicas`.
    pub sync_replicas: usize,
    /// `--lease-ttl-ms`.
    pub lease_ttl_ms: u64,
    /// Give each node its own [`Proxy`] to etcd.
    pub proxied: bool,
    /// `AERODB_LOG` for the nodes (their stderr is inherited).
    pub log: String,
    /// Where the nodes' temporary data directories go (`None`: the system's temporary directory).
    pub data_root: Option<PathBuf>,
    /// More flags for every node (e.g. `--witness-quorum 2`).
    pub extra_args: Vec<String>,
}

/// A running node of a lab cluster.
#[derive(Debug)]
pub struct LabNode {
    child: Child,
    /// REST address.
    pub http: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// The log's verifier key, as the node reported it.
    pub verifier_key: String,
    /// The node's witness key, as it reported it.
    pub witness_key: String,
}

impl LabNode {
    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// etcd and the nodes of one ledger.
#[derive(Debug)]
pub struct Cluster {
    /// The etcd they elect through.
    pub etcd: Etcd,
    /// Each node's proxy to etcd (when [`ClusterSpec::proxied`]).
    pub proxies: Vec<Proxy>,
    /// The nodes (`None`: stopped).
    pub nodes: Vec<Option<LabNode>>,
    spec: ClusterSpec,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts etcd and `spec.nodes` nodes (the first makes the log's key, the others get a copy).
    pub fn start(spec: ClusterSpec) -> LabResult<Cluster> {
        let etcd = Etcd::start()?;
        let proxies = if spec.proxied {
            (0..spec.nodes)
                .map(|_| Proxy::to(&etcd.endpoint))
                .collect::<LabResult<_>>()?
        } else {
            Vec::new()
        };
        let dirs = (0..spec.nodes)
            .map(|_| {
                let b = tempfile::Builder::new().prefix("aerodb-lab-").clone();
                match &spec.data_root {
                    Some(root) => b.tempdir_in(root),
                    None => b.tempdir(),
                }
                .inspect(|d| track_dir(d.path()))
                .map_err(|e| format!("a temporary directory: {e}"))
            })
            .collect::<LabResult<Vec<_>>>()?;
        let mut c = Cluster {
            etcd,
            proxies,
            nodes: Vec::new(),
            spec,
            dirs,
        };
        for i in 0..c.spec.nodes {
            if i > 0 {
                let key = c.data(0).join(aerodb_engine::KEY_FILE);
                let deadline = Instant::now() + Duration::from_secs(10);
                while !key.exists() {
                    if Instant::now() > deadline {
                        return Err("the first node made no log key within 10 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::fs::create_dir_all(c.data(i)).map_err(|e| format!("a data directory: {e}"))?;
                std::fs::copy(&key, c.data(i).join(aerodb_engine::KEY_FILE))
                    .map_err(|e| format!("copying the log key: {e}"))?;
            }
            let n = c.start_node(i)?;
            c.nodes.push(Some(n));
        }
        Ok(c)
    }

    /// Node `i`'s data directory.
    #[must_use]
    pub fn data(&self, i: usize) -> PathBuf {
        self.dirs[i].path().join("data")
    }

    /// Node `i`'s id (`n1`, `n2`, …).
    #[must_use]
    pub fn id(i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn start_node(&self, i: usize) -> LabResult<LabNode> {
        let dir = self.dirs[i].path();
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| format!("{what}: {e}")
        };
        let tokens = dir.join("tokens.toml");
        crate::auth::write_secret_file(
            &tokens,
            format!(
                "[[tokens]]\nname = \"w\"\nrole = \"writer\"\ntoken = \"{LAB_WRITER}\"\n\n\
                 [[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"{LAB_READER}\"\n\n\
                 [[tokens]]\nname = \"p\"\nrole = \"replicator\"\ntoken = \"{LAB_REPLICATOR}\"\n\n\
                 [[tokens]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"{LAB_ADMIN}\"\n"
            ),
        )
        .map_err(io("writing the tokens file"))?;
        let token = dir.join("replicator.token");
        crate::auth::write_secret_file(&token, LAB_REPLICATOR).map_err(io("writing the replicator token"))?;
        let ports = dir.join("ports.json");
        let _ = std::fs::remove_file(&ports);
        let endpoint = self.proxies.get(i).map_or(&self.etcd.endpoint, |p| &p.endpoint);
        let mut child = Command::new(&self.spec.bin)
            .args(&self.spec.bin_args)
            .arg("--data-dir")
            .arg(self.data(i))
            .arg("--tokens-file")
            .arg(&tokens)
            .arg("--ports-file")
            .arg(&ports)
            .args(["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(["--authority", "etcd", "--etcd-endpoints", endpoint])
            .args(["--node-id", &Self::id(i)])
            .args(["--lease-ttl-ms", &self.spec.lease_ttl_ms.to_string()])
            .args(["--cluster-size", &self.spec.nodes.to_string()])
            .args(["--sync-replicas", &self.spec.sync_replicas.to_string()])
            .arg("--primary-token-file")
            .arg(&token)
            .args(["--segment-bytes", "1048576", "--request-timeout-ms", "2000"])
            .args(&self.spec.extra_args)
            .env("AERODB_LOG", &self.spec.log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.spec.bin.display()))?;
        track_child(&mut child)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&ports) {
                break t;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("node {} exited at start: {status}", Self::id(i)));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("node {} did not start within 30 s", Self::id(i)));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("the ports file is not JSON: {e}"))?;
        let addr = |k: &str| -> LabResult<SocketAddr> {
            v[k].as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("the ports file has no {k} address"))
        };
        Ok(LabNode {
            http: addr("http")?,
            grpc: addr("grpc")?,
            verifier_key: v["verifier_key"].as_str().unwrap_or_default().to_owned(),
            witness_key: v["witness_key"].as_str().unwrap_or_default().to_owned(),
            child,
        })
    }

    /// Starts node `i` again (after a stop), on new ports, with its data.
    pub fn restart(&mut self, i: usize) -> LabResult<()> {
        let n = self.start_node(i)?;
        self.nodes[i] = Some(n);
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// SIGTERMs node `i` and waits (at most 30 s) for it to exit; whether it exited cleanly.
    pub fn terminate(&mut self, i: usize) -> LabResult<bool> {
        let Some(mut n) = self.nodes[i].take() else {
            return Err(format!("node {} is not running", Self::id(i)));
        };
        signal(n.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match n.child.try_wait() {
                Ok(Some(s)) => return Ok(s.success()),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    return Err(format!(
                        "node {} did not exit within 30 s of SIGTERM",
                        Self::id(i)
                    ))
                }
            }
        }
    }

    /// The REST address of each running node, by index.
    #[must_use]
    pub fn live(&self) -> Vec<(usize, SocketAddr)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|s| (i, s.http)))
            .collect()
    }

    /// Node `i`'s REST address (it must be running).
    #[must_use]
    pub fn http(&self, i: usize) -> Option<SocketAddr> {
        self.nodes[i].as_ref().map(|n| n.http)
    }

    /// Waits until exactly one running node leads and every other running node follows it (connected);
    /// returns its index.
    pub fn leader(&self, within: Duration) -> LabResult<usize> {
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
                let url = format!(
                    "http://{}",
                    live.iter()
                        .find(|(i, _)| *i == l)
                        .map_or(String::new(), |(_, a)| a.to_string())
                );
                if st.len() == live.len()
                    && st.iter().all(|(i, v)| {
                        *i == l || (v["leader_url"] == url.as_str() && v["connected_to_primary"] == true)
                    })
                {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no single leader followed by every node within {within:?}: {st:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One request with short timeouts (a paused node must not hold a client for long).
pub fn send(addr: SocketAddr, raw: &[u8]) -> std::io::Result<httpc::Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(1500)))?;
    httpc::exchange(&mut s, raw)
}

/// `GET path` with the lab's reader token, as JSON (`None` on any failure).
#[must_use]
pub fn get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = send(addr, &httpc::request("GET", path, Some(LAB_READER), None, false)).ok()?;
    serde_json::from_slice(&r.body).ok()
}

/// A node's HA status.
#[must_use]
pub fn ha(addr: SocketAddr) -> Option<serde_json::Value> {
    get(addr, "/v1/ha/status")
}

/// One acknowledged write as the client saw it.
#[derive(Clone, Debug)]
pub struct Ack {
    /// Its CommitId.
    pub commit_id: u64,
    /// Its record hash (hex).
    pub record_hash: String,
    /// When the acknowledgement arrived.
    pub at: Instant,
    /// The node that acknowledged it.
    pub by: SocketAddr,
}

/// Clients that append without pause to whichever node leads: they follow `NOT_LEADER` answers' `leader_url`
/// and otherwise ask the nodes' HA status. Every acknowledgement is recorded.
#[derive(Debug)]
pub struct Writers {
    stop: Arc<AtomicBool>,
    /// Every acknowledged write, in arrival order.
    pub acks: Arc<Mutex<Vec<Ack>>>,
    /// CommitIds answered `OUTCOME_UNKNOWN`.
    pub unknown: Arc<Mutex<Vec<u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// Starts `n` clients over the REST addresses in `nodes` (the caller keeps that list current).
    #[must_use]
    pub fn start(n: usize, nodes: Arc<Mutex<Vec<SocketAddr>>>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|w| {
                let (stop, acks, unknown, nodes) =
                    (stop.clone(), acks.clone(), unknown.clone(), nodes.clone());
                std::thread::spawn(move || write_loop(w, &stop, &acks, &unknown, &nodes))
            })
            .collect();
        Writers {
            stop,
            acks,
            unknown,
            threads,
        }
    }

    /// Writes acknowledged so far.
    #[must_use]
    pub fn acked(&self) -> usize {
        self.acks.lock().len()
    }

    /// Waits until `n` writes are acknowledged in all.
    pub fn wait_for(&self, n: usize, within: Duration) -> LabResult<()> {
        let deadline = Instant::now() + within;
        while self.acked() < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {n} writes acknowledged within {within:?}",
                    self.acked()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// The time from `t0` to the first write acknowledged after it by another node than `old`: a failover as a
    /// client sees it.
    pub fn first_ack_after(&self, t0: Instant, old: SocketAddr, within: Duration) -> LabResult<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(a) = self.acks.lock().iter().find(|a| a.at > t0 && a.by != old) {
                return Ok(a.at - t0);
            }
            if Instant::now() > deadline {
                return Err(format!("no write acknowledged by a new leader within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the clients; returns the acknowledged writes and the CommitIds answered `OUTCOME_UNKNOWN`.
    pub fn finish(mut self) -> (Vec<Ack>, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let acks = self.acks.lock().clone();
        let unknown = self.unknown.lock().clone();
        (acks, unknown)
    }
}

fn write_loop(
    w: usize,
    stop: &AtomicBool,
    acks: &Mutex<Vec<Ack>>,
    unknown: &Mutex<Vec<u64>>,
    nodes: &Mutex<Vec<SocketAddr>>,
) {
    let mut target: Option<SocketAddr> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(addr) = target else {
            let candidates = nodes.lock().clone();
            target = candidates
                .into_iter()
                .find(|a| ha(*a).is_some_and(|v| v["is_leader"] == true));
            if target.is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
            continue;
        };
        seq += 1;
        let body = format!("{{\"tenant\":\"lab\",\"event\":\"w{w}-{seq}\"}}");
        let Ok(r) = send(
            addr,
            &httpc::request("POST", "/v1/records", Some(LAB_WRITER), Some(&body), false),
        ) else {
            target = None;
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if (200..300).contains(&r.status) {
            if let (Some(commit_id), Some(hash)) = (v["commit_id"].as_u64(), v["record_hash"].as_str()) {
                acks.lock().push(Ack {
                    commit_id,
                    record_hash: hash.to_owned(),
                    at: Instant::now(),
                    by: addr,
                });
            }
            continue;
        }
        let e = &v["error"];
        match e["code"].as_str() {
            Some("OUTCOME_UNKNOWN") => unknown.lock().push(e["commit_id"].as_u64().unwrap_or(0)),
            Some("NOT_LEADER") => {
                target = e["leader_url"]
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
}

/// The checker over a client-side history: no CommitId acknowledged twice (two writers never acknowledged
/// overlapping writes), and every acknowledged write readable on `node` with the hash the client was given.
pub fn check_history(acks: &[Ack], node: SocketAddr) -> LabResult<()> {
    let mut by_id: BTreeMap<u64, &Ack> = BTreeMap::new();
    for a in acks {
        if let Some(prev) = by_id.insert(a.commit_id, a) {
            return Err(format!(
                "CommitId {} acknowledged twice: by {} ({}) and by {} ({})",
                a.commit_id, prev.by, prev.record_hash, a.by, a.record_hash
            ));
        }
    }
    for a in acks {
        let r = get(node, &format!("/v1/records/{}", a.commit_id)).ok_or_else(|| {
            format!(
                "CommitId {} acknowledged by {} is not readable on {node}",
                a.commit_id, a.by
            )
        })?;
        if r["record_hash"].as_str() != Some(a.record_hash.as_str()) {
            return Err(format!(
                "CommitId {} acknowledged by {} differs on {node}: {r}",
                a.commit_id, a.by
            ));
        }
    }
    Ok(())
}

/// Waits until `node` has applied CommitId `tip`.
pub fn wait_caught_up(node: SocketAddr, tip: u64, within: Duration) -> LabResult<()> {
    let deadline = Instant::now() + within;
    while ha(node)
        .and_then(|v| v["applied_commit_id"].as_u64())
        .unwrap_or(0)
        < tip
    {
        if Instant::now() > deadline {
            return Err(format!("{node} did not reach CommitId {tip} within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
