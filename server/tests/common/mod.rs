//! Helpers for tests that run the real `aerodb-server` binary on OS-chosen loopback ports: a process guard that
//! kills the server on drop, a minimal HTTP/1.1 client over a raw socket (so malformed requests can be sent
//! as-is), and a gRPC client.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aerodb_proto::v1::ledger_client::LedgerClient;
use tonic::transport::Channel;

pub const WRITER: &str = "writer-token-0123456789";
pub const READER: &str = "reader-token-0123456789";
pub const ADMIN: &str = "admin-token-01234567890";
pub const REPLICATOR: &str = "replicator-token-012345";
/// A writer and a reader limited to tenant `acme`.
pub const ACME_WRITER: &str = "acme-writer-token-0123456";
pub const ACME_READER: &str = "acme-reader-token-0123456";

#[allow(unused_imports, reason = "each test file uses a subset")]
pub use aerodb_tests::TempDir;

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

pub fn write_tokens(dir: &Path) -> PathBuf {
    let p = dir.join("tokens.toml");
    aerodb_server::auth::write_secret_file(
        &p,
        format!(
            "[[tokens]]\nname = \"w\"\nrole = \"writer\"\ntoken = \"{WRITER}\"\n\n\
             [[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"{READER}\"\n\n\
             [[tokens]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"{ADMIN}\"\n\n\
             [[tokens]]\nname = \"p\"\nrole = \"replicator\"\ntoken = \"{REPLICATOR}\"\n\n\
             [[tokens]]\nname = \"acme-w\"\nrole = \"writer\"\ntoken = \"{ACME_WRITER}\"\ntenants = [\"acme\"]\n\n\
             [[tokens]]\nname = \"acme-r\"\nrole = \"reader\"\ntoken = \"{ACME_READER}\"\ntenants = [\"acme\"]\n"
        ),
    )
    .expect("write tokens");
    p
}

/// Runs the `aerodb` CLI with `args`: whether it succeeded, and what it printed (stdout, then stderr).
pub fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(args)
        .output()
        .expect("run aerodb");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts the server in `dir` expecting it to refuse to start; returns what it printed.
pub fn refuse(dir: &Path, extra: &[&str]) -> String {
    let tokens = write_tokens(dir);
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb-server"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tokens-file")
        .arg(&tokens)
        .args(["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .expect("run aerodb-server");
    assert!(
        !out.status.success(),
        "the server started but should have refused"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Starts a replica of `primary` in `dir` with WAL segments of `segment` bytes, holding the log's signing key
/// (copied from `key_from` before its first start) and a replicator token.
pub fn start_replica_with(
    dir: &Path,
    primary: &Server,
    key_from: &Path,
    segment: &str,
    extra: &[&str],
) -> Server {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("create the replica's data directory");
    if !data.join("checkpoint.key").exists() {
        std::fs::copy(key_from.join("checkpoint.key"), data.join("checkpoint.key"))
            .expect("copy the log key");
    }
    let token = dir.join("replicator.token");
    aerodb_server::auth::write_secret_file(&token, REPLICATOR).expect("write the replicator token");
    let url = format!("http://{}", primary.grpc);
    let mut args = vec![
        "--role",
        "replica",
        "--primary",
        &url,
        "--primary-token-file",
        token.to_str().expect("UTF-8 path"),
        "--segment-bytes",
        segment,
    ];
    if !extra.contains(&"--node-id") {
        args.extend_from_slice(&["--node-id", "replica-1"]);
    }
    args.extend_from_slice(extra);
    start(dir, &args)
}

/// A running server; killed (SIGKILL) on drop unless stopped first.
pub struct Server {
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub verifier_key: String,
    /// The node's witness verifier key (cosignature/v1).
    pub witness_key: String,
    pub data: PathBuf,
}

pub fn start(dir: &Path, extra: &[&str]) -> Server {
    start_wrapped(dir, &dir.join("data"), &[], extra)
}

/// Starts the server with data in `data`, run through `wrapper` (a command that ends by running its arguments,
/// such as `unshare`), with the tokens and ports files in `dir`.
pub fn start_wrapped(dir: &Path, data: &Path, wrapper: &[&str], extra: &[&str]) -> Server {
    let data = data.to_owned();
    let tokens = write_tokens(dir);
    let ports = dir.join("ports.json");
    let _ = std::fs::remove_file(&ports);
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_aerodb-server"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_aerodb-server")),
    };
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("--tokens-file")
        .arg(&tokens)
        .args(["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .arg("--ports-file")
        .arg(&ports)
        .args(extra)
        .env(
            "AERODB_LOG",
            std::env::var("AERODB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn aerodb-server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&ports) {
            break t;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the server exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "the server did not start within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("ports file is JSON");
    Server {
        child: Some(child),
        http: v["http"].as_str().expect("http").parse().expect("addr"),
        grpc: v["grpc"].as_str().expect("grpc").parse().expect("addr"),
        verifier_key: v["verifier_key"].as_str().expect("key").to_owned(),
        witness_key: v["witness_key"].as_str().expect("witness key").to_owned(),
        data,
    }
}

impl Server {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("no exit within 30 s of SIGTERM (killed)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn grpc(&self) -> LedgerClient<Channel> {
        LedgerClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect gRPC")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A response: status and body.
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends raw bytes and reads one response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let r = aerodb_server::httpc::send(addr, request).unwrap_or_else(|e| {
        panic!(
            "no response to {:?}: {e}",
            String::from_utf8_lossy(&request[..request.len().min(80)])
        )
    });
    Resp {
        status: r.status,
        body: r.body,
    }
}

/// A well-formed request.
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
    raw(
        addr,
        &aerodb_server::httpc::request(method, path, token, body, false),
    )
}

pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

#[allow(unused_imports, reason = "each test file uses a subset")]
pub use aerodb_tests::report_figure;

/// A real single-member etcd (Debian's `etcd-server`) on loopback ports the OS picked (`aerodb_server::lab`).
pub struct EtcdServer;

impl EtcdServer {
    pub fn start() -> aerodb_server::lab::Etcd {
        aerodb_server::lab::Etcd::start()
            .expect("etcd (Debian package etcd-server; scripts/test installs it)")
    }
}
