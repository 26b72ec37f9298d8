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
    let tmp = TempDir::new("flood");
    let srv = start(
        tmp.path(),
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
                    let r = http(
                        h,
                        "POST",
                        "/v1/records",
                        Some(WRITER),
                        Some(&format!(r#"{{"tenant":"t","event":"flood {i}"}}"#)),
                    );
                    if r.status == 429 {
                        // Refused at admission: said so at once, with a retry hint.
                        let e = &r.json()["error"];
                        assert_eq!(e["code"], "RESOURCE_EXHAUSTED");
                        assert!(e["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
                    }
                    (i, r.status)
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
        let mut answered = BTreeMap::new();
        for t in appends {
            let (i, st) = t.join().unwrap();
            *out.entry(("append", st)).or_default() += 1;
            answered.insert(format!("flood {i}"), st);
        }
        for t in oversized {
            *out.entry(("oversized", t.join().unwrap())).or_default() += 1;
        }
        (out, answered)
    });
    let (statuses, answered) = statuses;
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
    // The limit was crossed: overload was answered with 429 ...
    assert!(
        statuses.get(&("append", 429)).copied().unwrap_or(0) > 0,
        "200 appends over a limit of 2 were all admitted: {statuses:?}"
    );
    // ... and what the log holds is exactly what was acknowledged: nothing answered 429 (or 504: it waited past
    // its deadline in the queue and was not written) is in it.
    let tip = http(h, "GET", "/v1/ha/status", Some(READER), None).json()["commit_id"]
        .as_u64()
        .unwrap();
    let mut in_log = std::collections::BTreeSet::new();
    for c in 1..=tip {
        let r = http(h, "GET", &format!("/v1/records/{c}"), Some(READER), None).json();
        if let Some(ev) = r["record"]["event"].as_str().or(r["event"].as_str()) {
            in_log.insert(ev.to_owned());
        }
    }
    for (ev, st) in &answered {
        assert_eq!(
            in_log.contains(ev),
            *st == 201,
            "{ev}: answered {st}, in the log: {}",
            in_log.contains(ev)
        );
    }
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
