//! Load generators for AeroDB over the network: gRPC clients on a few HTTP/2 connections and REST clients on
//! keep-alive HTTP/1.1 connections, each appending durable 256-byte puts and recording every latency. Both kinds of
//! client are async tasks (tonic's channel; hyper's HTTP/1.1 connection), so that the load generator, which shares
//! the host's cores with the server it measures, spends as little CPU per request as it can.

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
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

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
async fn connect(addr: SocketAddr) -> TokioIo<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    TokioIo::new(tcp)
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

/// Waits for every client task and gathers their latencies into a run that started at `start`.
async fn joined(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, start: Instant) -> Run {
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
        let channels = channels(addr, conns).await;
        let per = (total / clients as u64).max(1);
        let start = Instant::now();
        let t0 = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let mut client = pb::ledger_client::LedgerClient::new(channels[c % channels.len()].clone());
                let (keys, token) = (keys.clone(), token.to_owned());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per as usize);
                    for i in 0..per {
                        if rate > 0.0 {
                            let slot = (i * clients as u64 + c as u64) as f64 / rate;
                            tokio::time::sleep_until(t0 + Duration::from_secs_f64(slot)).await;
                        }
                        let k = keys.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        client
                            .append(authed(append_request(k), &token))
                            .await
                            .expect("gRPC append failed during the benchmark");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        joined(tasks, start).await
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
        let channels = channels(addr, conns).await;
        let mut writers = Vec::new();
        for c in 0..clients {
            let mut client = pb::ledger_client::LedgerClient::new(channels[c % channels.len()].clone());
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::AppendRequest>(1);
            let answers = client
                .append_stream(authed(tokio_stream::wrappers::ReceiverStream::new(rx), token))
                .await
                .expect("open an append stream")
                .into_inner();
            writers.push((tx, answers));
        }
        let per = (total / clients as u64).max(1);
        let start = Instant::now();
        let tasks: Vec<_> = writers
            .into_iter()
            .map(|(tx, mut answers)| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per as usize);
                    for _ in 0..per {
                        let k = keys.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        tx.send(append_request(k))
                            .await
                            .expect("the append stream closed");
                        answers
                            .message()
                            .await
                            .expect("gRPC streamed append failed during the benchmark")
                            .expect("the server ended the append stream early");
                        lat.push(t.elapsed());
                    }
                    drop(tx);
                    assert!(
                        answers
                            .message()
                            .await
                            .expect("end of the append stream")
                            .is_none(),
                        "an answer to no request"
                    );
                    lat
                })
            })
            .collect();
        joined(tasks, start).await
    })
}

/// `clients` REST clients, one keep-alive HTTP/1.1 connection each, append `total` records (keys from `keys`). The
/// clients are tasks on `rt`, as the gRPC clients are (64 blocking threads cost about 5 µs more CPU per request in
/// wake-ups); the connections are made before the clock starts.
///
/// # Panics
/// If a connection or an append fails.
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
            let (send, conn) = hyper::client::conn::http1::handshake(connect(addr).await)
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            conns.push(send);
        }
        let per = (total / clients as u64).max(1);
        let auth = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
        let start = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut send| {
                let (keys, auth) = (keys.clone(), auth.clone());
                tokio::spawn(async move {
                    let v = "v".repeat(256);
                    let mut lat = Vec::with_capacity(per as usize);
                    for _ in 0..per {
                        let k = keys.fetch_add(1, Ordering::Relaxed);
                        let body = format!(
                            r#"{{"tenant":"bench","ops":[{{"op":"put","key":"key-{k:012}","value":"{v}"}}]}}"#
                        );
                        let req = http::Request::post("/v1/records")
                            .header(http::header::HOST, "aerodb")
                            .header(http::header::AUTHORIZATION, auth.clone())
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("request");
                        let t = Instant::now();
                        send.ready()
                            .await
                            .expect("REST connection failed during the benchmark");
                        let r = send
                            .send_request(req)
                            .await
                            .expect("REST append failed during the benchmark");
                        let status = r.status();
                        let body = r.into_body().collect().await.expect("response body").to_bytes();
                        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        joined(tasks, start).await
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
