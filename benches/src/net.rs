//! Load generators for AeroDB over the network: gRPC clients on a few HTTP/2 connections and REST clients on
//! keep-alive HTTP/1.1 connections, each appending durable 256-byte puts and recording every latency. Both kinds of
//! client are async tasks (tonic's channel; a task per HTTP/1.1 connection that writes each request and parses
//! each response itself, as `wrk` does), so that the load generator, which shares the host's cores with the server
//! it measures, spends as little CPU per request as it can.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aerodb_proto::v1 as pb;
use aerodb_server::httpc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Run;

/// A gRPC append of record `k` (a put of a 256-byte value).
#[must_use]
pub fn append_request(k: u64) -> pb::AppendRequest {
    pb::AppendRequest {
        record: Some(pb::NewRecord {
            tenant: "bench".into(),
            payload: Some(pb::new_record::Payload::Batch(pb::Batch {
                ops: vec![pb::Op {
                    key: format!("key-{k:012}").into_bytes(),
                    value: vec![b'v'; 256],
                    delete: false,
                }],
            })),
        }),
        prove: false,
    }
}

/// `m` with `authorization: Bearer <token>`.
///
/// # Panics
/// If the token is not a valid header value.
#[must_use]
pub fn authed<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

/// Opens a loopback TCP connection with `TCP_NODELAY` (without it Nagle's algorithm holds small frames back).
async fn connect(addr: SocketAddr) -> tokio::net::TcpStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    tcp
}

/// The largest response head or body the REST load generator accepts (a receipt is about 130 bytes).
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// Reads one HTTP/1.1 response from `tcp` into `buf` (which may hold bytes read earlier) and returns its status and
/// body; the bytes after it stay in `buf`. The body must have a `Content-Length` (every AeroDB response has one).
///
/// # Panics
/// If the connection ends or fails, or the response is malformed, chunked or larger than 64 KiB.
async fn read_response(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<u8>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = r.parse(buf).expect("a well-formed HTTP/1.1 response") {
            let status = r.code.expect("a status code");
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .expect("a response with a Content-Length");
            assert!(len <= MAX_RESPONSE_BYTES, "a {len}-byte response body");
            while buf.len() < head + len {
                read_more(tcp, buf).await;
            }
            let body = buf[head..head + len].to_vec();
            buf.drain(..head + len);
            return (status, body);
        }
        assert!(buf.len() <= MAX_RESPONSE_BYTES, "a response head over 64 KiB");
        read_more(tcp, buf).await;
    }
}

/// Appends what the socket has to `buf`.
async fn read_more(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
    buf.reserve(4096);
    let n = tcp.read_buf(buf).await.expect("reading a REST response");
    assert!(n > 0, "the server closed a keep-alive REST connection");
}

/// `conns` (at least one) HTTP/2 connections to the gRPC server at `addr`, with `TCP_NODELAY`.
async fn channels(addr: SocketAddr, conns: usize) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::new();
    for _ in 0..conns.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect"),
        );
    }
    channels
}

/// `clients` gRPC clients sharing `conns` HTTP/2 connections, round robin.
async fn ledger_clients(
    addr: SocketAddr,
    clients: usize,
    conns: usize,
) -> Vec<pb::ledger_client::LedgerClient<tonic::transport::Channel>> {
    let channels = channels(addr, conns).await;
    (0..clients)
        .map(|c| pb::ledger_client::LedgerClient::new(channels[c % channels.len()].clone()))
        .collect()
}

/// Runs one task per client state on the current runtime, each making its share of `total` appends (at least one)
/// with `append(state, key)`
/// (which hands the state back) and timing each; then `finish(state)`. With `rate` > 0 the appends of all clients
/// are paced to that many per second overall (a client's slot is taken before its clock starts). The clock of the
/// returned run starts once every state exists (connections and streams are opened before).
async fn run_clients<S, A, AF, F, FF>(
    states: Vec<S>,
    total: u64,
    rate: f64,
    keys: &Arc<AtomicU64>,
    append: A,
    finish: F,
) -> Run
where
    S: Send + 'static,
    A: Fn(S, u64) -> AF + Clone + Send + 'static,
    AF: std::future::Future<Output = S> + Send,
    F: Fn(S) -> FF + Clone + Send + 'static,
    FF: std::future::Future<Output = ()> + Send,
{
    let clients = states.len() as u64;
    let per = (total / clients.max(1)).max(1);
    let start = Instant::now();
    let t0 = tokio::time::Instant::now();
    let tasks: Vec<_> = states
        .into_iter()
        .enumerate()
        .map(|(c, mut state)| {
            let (keys, append, finish) = (keys.clone(), append.clone(), finish.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per as usize);
                for i in 0..per {
                    if rate > 0.0 {
                        let slot = (i * clients + c as u64) as f64 / rate;
                        tokio::time::sleep_until(t0 + Duration::from_secs_f64(slot)).await;
                    }
                    let k = keys.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    state = append(state, k).await;
                    lat.push(t.elapsed());
                }
                finish(state).await;
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    Run {
        ops: latencies.len() as u64,
        elapsed: start.elapsed(),
        latencies,
    }
}

/// `clients` concurrent gRPC clients over `conns` HTTP/2 connections append `total` records (keys from `keys`);
/// with `rate` > 0 they are paced to that many appends per second overall.
///
/// # Panics
/// If a connection or an append fails (a benchmark on a failing server has no meaning).
#[must_use]
#[allow(clippy::too_many_arguments, reason = "a load generator's knobs")]
pub fn grpc_appends(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    token: &str,
    clients: usize,
    conns: usize,
    total: u64,
    rate: f64,
    keys: &Arc<AtomicU64>,
) -> Run {
    rt.block_on(async {
        let states = ledger_clients(addr, clients, conns).await;
        let token: Arc<str> = token.into();
        let append = move |mut client: pb::ledger_client::LedgerClient<_>, k| {
            let token = token.clone();
            async move {
                client
                    .append(authed(append_request(k), &token))
                    .await
                    .expect("gRPC append failed during the benchmark");
                client
            }
        };
        run_clients(states, total, rate, keys, append, |_| async {}).await
    })
}

/// `clients` concurrent gRPC readers over `conns` HTTP/2 connections make `total` `GetKey` calls (keys from
/// `keys`, modulo `modulo`): unary calls through the same server, its layers (authentication, limits, timeout)
/// and the same client, with no write, no `fdatasync` and no replication behind them. What they reach is the
/// ceiling of unary gRPC calls on the machine, for the `Append` row to be read against.
///
/// # Panics
/// If a connection or a call fails.
#[must_use]
#[allow(clippy::too_many_arguments, reason = "a load generator's knobs")]
pub fn grpc_gets(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    token: &str,
    clients: usize,
    conns: usize,
    total: u64,
    modulo: u64,
    keys: &Arc<AtomicU64>,
) -> Run {
    rt.block_on(async {
        let states = ledger_clients(addr, clients, conns).await;
        let token: Arc<str> = token.into();
        let get = move |mut client: pb::ledger_client::LedgerClient<_>, k: u64| {
            let token = token.clone();
            async move {
                let req = pb::GetKeyRequest {
                    key: format!("key-{:012}", k % modulo.max(1)).into_bytes(),
                    at: None,
                    tenant: "bench".into(),
                };
                client
                    .get_key(authed(req, &token))
                    .await
                    .expect("gRPC GetKey failed during the benchmark");
                client
            }
        };
        run_clients(states, total, 0.0, keys, get, |_| async {}).await
    })
}

/// `clients` concurrent gRPC writers over `conns` HTTP/2 connections, each with one `AppendStream` call open for
/// the whole run, append `total` records (keys from `keys`): a writer sends its next append only when the previous
/// one has been answered (is durable). The streams are opened before the clock starts.
///
/// # Panics
/// If a connection, a stream or an append fails.
#[must_use]
pub fn grpc_stream_appends(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    token: &str,
    clients: usize,
    conns: usize,
    total: u64,
    keys: &Arc<AtomicU64>,
) -> Run {
    rt.block_on(async {
        type Writer = (
            tokio::sync::mpsc::Sender<pb::AppendRequest>,
            tonic::Streaming<pb::AppendResponse>,
        );
        let mut writers: Vec<Writer> = Vec::new();
        for mut client in ledger_clients(addr, clients, conns).await {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::AppendRequest>(1);
            let answers = client
                .append_stream(authed(tokio_stream::wrappers::ReceiverStream::new(rx), token))
                .await
                .expect("open an append stream")
                .into_inner();
            writers.push((tx, answers));
        }
        let append = |(tx, mut answers): Writer, k| async move {
            tx.send(append_request(k))
                .await
                .expect("the append stream closed");
            answers
                .message()
                .await
                .expect("gRPC streamed append failed during the benchmark")
                .expect("the server ended the append stream early");
            (tx, answers)
        };
        let finish = |(tx, mut answers): Writer| async move {
            drop(tx);
            assert!(
                answers
                    .message()
                    .await
                    .expect("end of the append stream")
                    .is_none(),
                "an answer to no request"
            );
        };
        run_clients(writers, total, 0.0, keys, append, finish).await
    })
}

/// `clients` REST clients, one keep-alive HTTP/1.1 connection each, append `total` records (keys from `keys`). Each
/// client is one task on `rt` that writes its request to the socket and parses the response itself (status,
/// `Content-Length`, body), the way `wrk` does: hyper's client spends a second task per connection and a body
/// channel per response on the same exchange. The connections are made before the clock starts.
///
/// # Panics
/// If a connection or an append fails (any status but 201, or a body without a CommitId).
#[must_use]
pub fn rest_appends(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    token: &str,
    clients: usize,
    total: u64,
    keys: &Arc<AtomicU64>,
) -> Run {
    rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..clients {
            conns.push((
                connect(addr).await,
                Vec::with_capacity(1024),
                Vec::with_capacity(4096),
            ));
        }
        let (token, value): (Arc<str>, Arc<str>) = (token.into(), "v".repeat(256).into());
        let append = move |(mut tcp, mut req, mut buf): (tokio::net::TcpStream, Vec<u8>, Vec<u8>), k| {
            let (token, value) = (token.clone(), value.clone());
            async move {
                let body = format!(
                    r#"{{"tenant":"bench","ops":[{{"op":"put","key":"key-{k:012}","value":"{value}"}}]}}"#
                );
                req.clear();
                req.extend_from_slice(
                    format!(
                        "POST /v1/records HTTP/1.1\r\nhost: aerodb\r\nauthorization: Bearer {token}\r\n\
                         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                req.extend_from_slice(body.as_bytes());
                tcp.write_all(&req)
                    .await
                    .expect("REST connection failed during the benchmark");
                let (status, body) = read_response(&mut tcp, &mut buf).await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                assert!(
                    body.windows(12).any(|w| w == b"\"commit_id\":"),
                    "a receipt without a CommitId: {}",
                    String::from_utf8_lossy(&body)
                );
                (tcp, req, buf)
            }
        };
        run_clients(conns, total, 0.0, keys, append, |_| async {}).await
    })
}

/// Polls `GET /v1/ha/status` on `http` until `ready` holds for it; returns how long that took.
///
/// # Panics
/// If the status cannot be read, or `ready` does not hold within `limit` (the message names `what`).
#[must_use]
pub fn wait_for_status(
    http: SocketAddr,
    token: &str,
    limit: Duration,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = httpc::call(http, "GET", "/v1/ha/status", Some(token), None).expect("HA status");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("HA status JSON");
        if ready(&v) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what} within {limit:?}: {v}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the node at `http` has applied `tip` (see [`wait_for_status`]).
#[must_use]
pub fn wait_applied(http: SocketAddr, token: &str, tip: u64, limit: Duration) -> Duration {
    wait_for_status(
        http,
        token,
        limit,
        &format!("the replica did not reach {tip}"),
        |v| v["applied_commit_id"].as_u64().unwrap_or(0) >= tip,
    )
}
