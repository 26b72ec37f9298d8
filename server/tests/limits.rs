//! Connections and bodies an unauthenticated or slow client can hold are bounded (issue 17): a connection cap
//! (one more is closed at once), a head timeout that also closes idle kept-alive connections, authentication
//! before a body is read, a declared oversized body refused at once, a body that does not arrive in time refused
//! with nothing written, and exact content types. Each limit is crossed here and seen to hold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;

const CAP: usize = 8;
const HEAD_MS: u64 = 700;

/// Reads until the server closes the connection or `limit` passes; returns the bytes and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (out, Some(start.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, Some(start.elapsed())),
        }
    }
    (out, None)
}

fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn tip(srv: &Server) -> u64 {
    http(srv.http, "GET", "/v1/ha/status", Some(READER), None).json()["commit_id"]
        .as_u64()
        .expect("HA status has commit_id")
}

#[test]
fn connections_heads_and_bodies_are_bounded() {
    let tmp = TempDir::new("limits");
    let srv = start(
        tmp.path(),
        &[
            "--max-connections",
            &CAP.to_string(),
            "--header-timeout-ms",
            &HEAD_MS.to_string(),
            "--max-request-bytes",
            "65536",
        ],
    );
    let h = srv.http;
    let before = tip(&srv);

    // 1. The cap: CAP idle connections take every slot; one more is closed at once.
    let mut idle: Vec<TcpStream> = (0..CAP).map(|_| TcpStream::connect(h).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = TcpStream::connect(h).unwrap();
    let (_, closed) = read_until_closed(&mut extra, Duration::from_millis(HEAD_MS / 2));
    assert!(
        closed.is_some(),
        "a connection over the cap of {CAP} was kept open"
    );

    // 2. The head timeout: the idle connections, which never sent a byte, are closed after it.
    let started = Instant::now();
    for s in &mut idle {
        let (_, closed) = read_until_closed(s, Duration::from_millis(HEAD_MS * 4));
        assert!(
            closed.is_some(),
            "an idle connection was kept past {} ms",
            HEAD_MS * 4
        );
    }
    let idle_closed_after = started.elapsed();

    // 3. A kept-alive connection that goes quiet after one request is closed too.
    let mut keep = TcpStream::connect(h).unwrap();
    keep.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (resp, closed) = read_until_closed(&mut keep, Duration::from_millis(HEAD_MS * 4));
    assert_eq!(status_of(&resp), 200);
    assert!(
        closed.is_some(),
        "an idle kept-alive connection was kept past {} ms",
        HEAD_MS * 4
    );

    // 4. No token: 401 before the body is read (the body is never sent).
    let mut s = TcpStream::connect(h).unwrap();
    s.write_all(
        b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n",
    )
    .unwrap();
    let t = Instant::now();
    let (resp, _) = read_until_closed(&mut s, Duration::from_millis(HEAD_MS / 2));
    assert_eq!(status_of(&resp), 401, "{}", String::from_utf8_lossy(&resp));
    let unauth_ms = t.elapsed().as_millis();

    // 5. A declared body over the limit: 413 at once, whatever follows.
    let mut s = TcpStream::connect(h).unwrap();
    s.write_all(
        format!(
            "POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (resp, _) = read_until_closed(&mut s, Duration::from_millis(HEAD_MS / 2));
    assert_eq!(status_of(&resp), 413, "{}", String::from_utf8_lossy(&resp));

    // 6. A body that stops arriving: 504 after the timeout, and nothing is written.
    let mut s = TcpStream::connect(h).unwrap();
    s.write_all(
        format!(
            "POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"tenant\":\"t\","
        )
        .as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let (resp, _) = read_until_closed(&mut s, Duration::from_millis(HEAD_MS * 4));
    assert_eq!(status_of(&resp), 504, "{}", String::from_utf8_lossy(&resp));
    let slow_body_ms = t.elapsed().as_millis();
    assert!(slow_body_ms >= u128::from(HEAD_MS) - 50);

    // 7. Exact content types; no content encodings.
    for (ct, extra_header) in [
        ("application/jsonx", ""),
        ("text/plain", ""),
        ("application/json", "Content-Encoding: gzip\r\n"),
    ] {
        let body = r#"{"tenant":"t","event":"x"}"#;
        let req = format!(
            "POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Type: {ct}\r\n{extra_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(raw(h, req.as_bytes()).status, 415, "{ct} {extra_header}");
    }
    let ok = http(
        h,
        "POST",
        "/v1/records",
        Some(WRITER),
        Some(r#"{"tenant":"t","event":"x"}"#),
    );
    assert_eq!(ok.status, 201);
    assert_eq!(tip(&srv), before + 1, "only the well-formed write was appended");

    let metrics = String::from_utf8(http(h, "GET", "/metrics", Some(ADMIN), None).body).unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aerodb_rest_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("refused connections counted");
    assert!(refused >= 1);
    report_figure(
        "REST connection and body limits",
        &format!(
            "cap {CAP}: the next connection closed at once ({refused} refused); {CAP} idle connections closed \
             within {} ms (head timeout {HEAD_MS} ms); idle kept-alive closed; no token: 401 in {unauth_ms} ms \
             without the body; 10 GB declared: 413; stalled body: 504 after {slow_body_ms} ms, nothing written; \
             3 bad content types/encodings: 415",
            idle_closed_after.as_millis()
        ),
    );
}

/// Starts the server with an open-file limit of `nofile` (soft and hard), as a shell's `ulimit -n` does.
fn start_with_nofile(dir: &std::path::Path, nofile: u64, extra: &[&str]) -> Server {
    let data = dir.join("data");
    let tokens = write_tokens(dir);
    let ports = dir.join("ports.json");
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        data.display().to_string(),
        "--tokens-file".into(),
        tokens.display().to_string(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--grpc-listen".into(),
        "127.0.0.1:0".into(),
        "--ports-file".into(),
        ports.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_aerodb-server"))
        .args(&args)
        .env("AERODB_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&ports) {
            break t;
        }
        if let Some(s) = child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the server exited at start: {s}");
        }
        assert!(Instant::now() < deadline, "no start within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Server {
        child,
        http: v["http"].as_str().unwrap().parse().unwrap(),
        grpc: v["grpc"].as_str().unwrap().parse().unwrap(),
        verifier_key: v["verifier_key"].as_str().unwrap().to_owned(),
        witness_key: v["witness_key"].as_str().unwrap().to_owned(),
        data,
    }
}

#[test]
fn running_out_of_file_descriptors_is_refused_at_the_door_not_in_the_log() {
    // Issue 17: ~1,030 idle connections exhausted a 1,024-descriptor limit; the next append got a 500 from the
    // Merkle store, the committers panicked, later appends got 503 while health said writable, and the strict
    // verifier found damage after SIGTERM. Here: 256 descriptors, caps of 48 connections per API, and 600 idle
    // connections opened against both APIs while 8 clients append.
    let tmp = TempDir::new("nofile");
    // A configuration whose caps do not fit the limit is refused at start, with the arithmetic.
    let refused = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_aerodb-server"))
        .args([
            "--data-dir",
            &tmp.path().join("x").display().to_string(),
            "--insecure-no-auth",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(["--max-connections", "512"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("open-file limit is 256"),
        "{stderr}"
    );

    let mut srv = start_with_nofile(
        tmp.path(),
        256,
        &["--max-connections", "48", "--header-timeout-ms", "1500"],
    );
    let (h, g) = (srv.http, srv.grpc);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (statuses, held) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let stop = &stop;
                s.spawn(move || {
                    let mut seen = std::collections::BTreeMap::<u16, u64>::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let body = format!(r#"{{"tenant":"t","event":"w{w}-{i}"}}"#);
                        let req = aerodb_server::httpc::request(
                            "POST",
                            "/v1/records",
                            Some(WRITER),
                            Some(&body),
                            false,
                        );
                        // A refused connection is closed before any answer: no status, nothing written.
                        let status = aerodb_server::httpc::send(h, &req).map_or(0, |r| r.status);
                        *seen.entry(status).or_default() += 1;
                        i += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut held = Vec::new();
        for i in 0..600 {
            if let Ok(c) = TcpStream::connect(if i % 2 == 0 { h } else { g }) {
                held.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = std::collections::BTreeMap::<u16, u64>::new();
        for w in writers {
            for (k, v) in w.join().unwrap() {
                *all.entry(k).or_default() += v;
            }
        }
        (all, held.len())
    });
    // Only successes and refusals at the door: no 500, no 503, no panic.
    assert!(
        statuses.keys().all(|s| [0, 201].contains(s)),
        "answers under descriptor pressure: {statuses:?}"
    );
    let health = http(h, "GET", "/v1/health", None, None);
    assert_eq!(health.status, 200, "{}", String::from_utf8_lossy(&health.body));
    assert_eq!(health.json()["writable"], true);
    assert_eq!(
        http(
            h,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(r#"{"tenant":"t","event":"after"}"#)
        )
        .status,
        201
    );
    let acked = statuses.get(&201).copied().unwrap_or(0) + 1;
    assert!(srv.terminate().success(), "clean exit after the flood");
    let report = aerodb_engine::verify_dir(
        &srv.data,
        &aerodb_engine::VerifyOptions {
            verifier: Some(aerodb_engine::VerifierKey::parse(&srv.verifier_key).unwrap()),
            strict: true,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, acked, "every acknowledged append, nothing else");
    report_figure(
        "file descriptors exhausted at the door (RLIMIT_NOFILE 256, caps 48+48)",
        &format!(
            "{held} idle connections opened against both APIs while 8 clients appended: {acked} appends \
             acknowledged, {} refused at the door, 0 errors from the log; healthy and writable after; strict \
             verify after SIGTERM: {} records, 0 problems",
            statuses.get(&0).copied().unwrap_or(0),
            report.records
        ),
    );
}
