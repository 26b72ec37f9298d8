//! Limits hold under a flood: far more concurrent appends than the concurrency limit, oversized bodies in
//! parallel, and hundreds of idle connections. Every answer is a success or a precise limit error (429 / 413 /
//! 504), never a 500; afterwards the server is healthy and writes again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::{collections::BTreeMap, net::TcpStream};

use common::*;

#[test]
fn limits_hold_under_a_flood_and_the_server_recovers() {
    let tmp = Tmp::new("flood");
    let srv = start(
        &tmp.0,
        &[
            "--max-concurrent-requests",
            "2",
            "--request-timeout-ms",
            "40",
            "--max-request-bytes",
            "65536",
        ],
    );
    let h = srv.http;
    // 300 idle connections held open throughout.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(h).expect("connect"))
        .collect();

    let statuses = std::thread::scope(|s| {
        let appends: Vec<_> = (0..200)
            .map(|i| {
                s.spawn(move || {
                    http(
                        h,
                        "POST",
                        "/v1/records",
                        Some(WRITER),
                        Some(&format!(r#"{{"tenant":"t","event":"flood {i}"}}"#)),
                    )
                    .status
                })
            })
            .collect();
        let big = format!(r#"{{"tenant":"t","event":"{}"}}"#, "z".repeat(100_000));
        let oversized: Vec<_> = (0..50)
            .map(|_| {
                let big = big.clone();
                s.spawn(move || http(h, "POST", "/v1/records", Some(WRITER), Some(&big)).status)
            })
            .collect();
        let mut out: BTreeMap<(&str, u16), u32> = BTreeMap::new();
        for t in appends {
            *out.entry(("append", t.join().unwrap())).or_default() += 1;
        }
        for t in oversized {
            *out.entry(("oversized", t.join().unwrap())).or_default() += 1;
        }
        out
    });
    drop(idle);
    let bad: Vec<_> = statuses
        .iter()
        .filter(|((kind, st), _)| match *kind {
            "append" => ![201, 429, 504].contains(st),
            _ => *st != 413,
        })
        .collect();
    assert!(bad.is_empty(), "unexpected answers: {statuses:?}");
    assert!(
        statuses.get(&("append", 201)).copied().unwrap_or(0) > 0,
        "some appends got through: {statuses:?}"
    );
    let health = http(h, "GET", "/v1/health", None, None);
    assert_eq!(
        (health.status, health.json()["writable"].as_bool()),
        (200, Some(true))
    );
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
    let metrics = String::from_utf8(http(h, "GET", "/metrics", Some(READER), None).body).unwrap();
    assert!(!metrics.contains("code=\"INTERNAL\""));
    report_figure(
        "flood (limit 2 in flight, 40 ms timeout, 64 KiB bodies)",
        &format!("200 appends + 50 oversized bodies + 300 idle connections: {statuses:?}; healthy after"),
    );
}
