//! The operator files in `docs/ops/` name only metrics the server exports: every `aerodb_*` and `ha_*` name in
//! the alerting rules and the Grafana dashboard appears in `/metrics` of a running primary with a replica
//! following, or of that replica. (`.ci/run` checks the rules' syntax with `promtool check rules`.)

mod common;

use std::{collections::BTreeSet, path::Path, time::Duration};

use common::{http, start, start_replica_with, TempDir, READER, WRITER};

/// Every metric name in `text`: identifiers starting `aerodb_` or `ha_`.
fn names_in(text: &str) -> BTreeSet<String> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        if (b[i..].starts_with(b"aerodb_") || b[i..].starts_with(b"ha_")) && (i == 0 || !word(b[i - 1])) {
            let end = b[i..].iter().position(|&c| !word(c)).map_or(b.len(), |n| i + n);
            out.insert(String::from_utf8_lossy(&b[i..end]).into_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The sample names in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_alerts_and_dashboard_name_is_exported() {
    let (pt, rt) = (TempDir::new("ops-p"), TempDir::new("ops-r"));
    let primary = start(pt.path(), &["--segment-bytes", "65536"]);
    let replica = start_replica_with(rt.path(), &primary, &primary.data, "65536", &[]);
    for i in 0..20 {
        let body = format!(r#"{{"tenant":"t","event":"e{i}"}}"#);
        assert_eq!(
            http(primary.http, "POST", "/v1/records", Some(WRITER), Some(&body)).status,
            201
        );
    }
    // Wait until the primary lists the replica (its per-replica lag series exist from then on).
    let scrape = |s: &common::Server| {
        String::from_utf8_lossy(&http(s.http, "GET", "/metrics", Some(READER), None).body).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !scrape(&primary).contains("aerodb_replication_lag_seconds{") {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never connected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut have = exported(&scrape(&primary));
    have.extend(exported(&scrape(&replica)));

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ops");
    let mut checked = 0;
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(docs.join(file)).expect("read the ops file");
        let named = names_in(&text);
        assert!(named.len() >= 8, "{file} names {} metrics", named.len());
        let missing: Vec<_> = named.iter().filter(|n| !have.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the server does not export: {missing:?}"
        );
        checked += named.len();
    }
    // The check can fail: a rule naming a metric the server does not export is caught.
    let made_up = names_in("expr: rate(aerodb_no_such_metric_total[5m]) > 0 and ha_is_leader == 1");
    let missing: Vec<_> = made_up.iter().filter(|n| !have.contains(*n)).collect();
    assert_eq!(missing, ["aerodb_no_such_metric_total"]);
    common::report_figure(
        "ops files",
        &format!("{checked} metric names in docs/ops/alerts.yml and the dashboard, all exported"),
    );
}
