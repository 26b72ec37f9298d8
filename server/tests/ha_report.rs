//! `aerodb ha-report` as a pure function (seed 003, VAL26), with golden outputs on fixture evidence
//! (`tests/fixtures/ha-evidence/`, five passing slices) and its variants: all pass, a missing slice, a schema
//! mismatch, a failed check, timestamps outside the 6-hour window, a slow failover. Each golden text is
//! `tests/golden/ha-report-<case>.txt`; `AERODB_BLESS_GOLDEN=1` rewrites them. The JSON form carries the same
//! verdict and matrix, and the CLI exits non-zero when the verdict is not reached.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::path::PathBuf;

use aerodb_server::ha_report::{derive_thresholds, Input, Report, SLICES};
use serde_json::Value;

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ha-evidence");
    SLICES
        .iter()
        .map(|(id, _)| {
            let text = std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap();
            ((*id).to_owned(), text)
        })
        .collect()
}

fn edit(files: &mut [(String, String)], id: &str, f: impl FnOnce(&mut Value)) {
    let entry = files.iter_mut().find(|(s, _)| s == id).unwrap();
    let mut v: Value = serde_json::from_str(&entry.1).unwrap();
    f(&mut v);
    entry.1 = serde_json::to_string_pretty(&v).unwrap();
}

fn report(files: &[(String, Option<String>)]) -> Report {
    let input = Input {
        dir: "evidence/lab-2026-12-06",
        generated_at: "2026-12-06T08:00:00Z",
        files: files.iter().map(|(s, c)| (s.as_str(), c.as_deref())).collect(),
    };
    Report::build(&input)
}

fn golden(case: &str, r: &Report) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/ha-report-{case}.txt"));
    let text = r.text();
    if std::env::var_os("AERODB_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with AERODB_BLESS_GOLDEN=1)", path.display()));
    assert_eq!(
        text, want,
        "golden {case} differs; rerun with AERODB_BLESS_GOLDEN=1 if intended"
    );
    // The JSON says the same.
    let j = r.json();
    assert_eq!(j["verdict"], r.verdict());
    assert_eq!(j["matrix"].as_array().unwrap().len(), 10);
    assert_eq!(j["readiness"]["design_partner"], r.design_partner_ready());
}

fn all(files: Vec<(String, String)>) -> Vec<(String, Option<String>)> {
    files.into_iter().map(|(s, c)| (s, Some(c))).collect()
}

#[test]
fn all_slices_pass_and_the_verdict_is_reached() {
    let r = report(&all(fixtures()));
    assert!(r.design_partner_ready());
    assert!(r.text().contains("Verdict: HA DESIGN PARTNER READY\n"));
    golden("all-pass", &r);
}

#[test]
fn a_missing_slice_is_reported_missing_and_the_verdict_is_not_reached() {
    let mut files = all(fixtures());
    files.retain(|(s, _)| s != "VAL16");
    files.push(("VAL16".into(), None));
    let r = report(&files);
    assert!(!r.design_partner_ready());
    assert!(r
        .text()
        .contains("VAL16 Split-Brain Chaos Validation     MISSING (no evidence file)"));
    golden("missing-slice", &r);
}

#[test]
fn a_schema_mismatch_is_degraded_to_missing() {
    let mut files = fixtures();
    edit(&mut files, "VAL14", |v| v["schema_version"] = 2.into());
    edit(&mut files, "VAL15", |v| {
        v.as_object_mut().unwrap().remove("checks");
    });
    let r = report(&all(files));
    assert!(!r.design_partner_ready());
    let t = r.text();
    assert!(
        t.contains("MISSING (schema mismatch: schema_version 2, expected 1)"),
        "{t}"
    );
    assert!(
        t.contains("VAL15 Backup/Restore Validation        MISSING (schema mismatch: missing field `checks`"),
        "{t}"
    );
    golden("schema-mismatch", &r);
}

#[test]
fn a_failed_check_fails_its_slice_and_the_verdict() {
    let mut files = fixtures();
    edit(&mut files, "VAL17", |v| {
        v["checks"][2]["pass"] = false.into();
        v["checks"][2]["detail"] = "write_block_active stayed false".into();
    });
    let r = report(&all(files));
    assert!(!r.design_partner_ready());
    let t = r.text();
    assert!(
        t.contains("VAL17 Quorum Loss Validation           FAIL (9/10 checks)"),
        "{t}"
    );
    assert!(t.contains("VAL26-09 FAIL"), "{t}");
    golden("failed-check", &r);
}

#[test]
fn timestamps_outside_one_window_break_coherence() {
    let mut files = fixtures();
    edit(&mut files, "VAL17", |v| {
        v["started_at"] = "2026-12-06T14:00:00Z".into();
        v["finished_at"] = "2026-12-06T14:02:00Z".into();
    });
    let r = report(&all(files));
    assert!(!r.design_partner_ready());
    assert!(r.text().contains("VAL26-10 FAIL"));
    golden("outside-window", &r);
}

#[test]
fn a_slow_failover_fails_the_sigterm_check() {
    let mut files = fixtures();
    edit(&mut files, "VAL13", |v| {
        v["measurements"]["sigterm_ms"] = 6200.0.into();
        v["checks"][2]["pass"] = false.into();
        v["checks"][2]["detail"] = "6200 ms > 5000 ms".into();
    });
    let r = report(&all(files));
    assert!(!r.design_partner_ready());
    let t = r.text();
    assert!(
        t.contains("SIGTERM graceful failover: 6200 ms [target <= 5,000 ms] FAIL"),
        "{t}"
    );
    assert!(t.contains("VAL26-06 FAIL"));
    golden("slow-failover", &r);
    // The chart shows the bar past the target line.
    let svg = r.failover_svg().unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("6200.0") && svg.contains("target 5000"));
}

#[test]
fn thresholds_follow_the_seed_formulas() {
    assert_eq!(derive_thresholds(0.0, 1.0), (1.0, 10.0, 100.0, 500.0));
    assert_eq!(derive_thresholds(7.0, 3.0), (7.0, 22.0, 220.0, 1100.0));
    let r = report(&all(fixtures()));
    assert_eq!(r.thresholds(), Some((1.0, 10.0, 100.0, 500.0)));
    assert!(r.lag_svg().unwrap().contains("heavy p99"));
}

#[test]
fn the_cli_writes_the_report_beside_the_evidence_and_exits_non_zero_when_not_ready() {
    let t = common::TempDir::new("ha-report-cli");
    let dir = t.path().join("evidence");
    std::fs::create_dir_all(&dir).unwrap();
    for (id, text) in fixtures() {
        std::fs::write(dir.join(format!("{id}.json")), text).unwrap();
    }
    let json = t.path().join("report.json");
    let (ok, out) = common::cli(&[
        "ha-report",
        dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("Verdict: HA DESIGN PARTNER READY"), "{out}");
    for f in ["ha-report.txt", "failover.svg", "lag.svg"] {
        assert!(dir.join(f).exists(), "{f} not written");
    }
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["verdict"], "HA DESIGN PARTNER READY");
    std::fs::remove_file(dir.join("VAL13.json")).unwrap();
    let (ok, out) = common::cli(&["ha-report", dir.to_str().unwrap()]);
    assert!(!ok && out.contains("Verdict: NOT READY"), "{out}");
}

#[test]
fn the_lab_writes_evidence_that_the_report_reads() {
    // Two slices of the real lab (etcd and three aerodb-server processes): each writes ten passing checks.
    let t = common::TempDir::new("ha-lab");
    let dir = t.path().join("evidence");
    let d = dir.to_str().unwrap();
    let (ok, out) = common::cli(&[
        "lab", "--quick", "--slice", "VAL15", "--slice", "VAL17", "--out", d,
    ]);
    assert!(ok, "{out}");
    for id in ["VAL15", "VAL17"] {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap()).unwrap();
        let failed: Vec<&Value> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["pass"] != true)
            .collect();
        assert!(failed.is_empty(), "{id}: {failed:?}");
        assert_eq!(v["checks"].as_array().unwrap().len(), 10);
    }
    // The report reads them; three slices are missing, so the verdict is not reached.
    let (ok, out) = common::cli(&["ha-report", d]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("VAL15 Backup/Restore Validation        PASS (10/10 checks)"),
        "{out}"
    );
    assert!(
        out.contains("VAL13 HA Failover Validation           MISSING"),
        "{out}"
    );
}

#[test]
fn ctrl_c_stops_the_lab_and_leaves_nothing_behind() {
    // Interrupted while its cluster is starting (two of etcd's and the nodes' directories made), and once it runs.
    for (dirs, wait_ms) in [(2, 0), (4, 500)] {
        interrupt_lab(dirs, wait_ms);
    }
}

fn interrupt_lab(dirs: usize, wait_ms: u64) {
    let t = common::TempDir::new("ha-lab-int");
    // The lab's temporary directories go under a TMPDIR of this test's own, so what is left can be seen.
    let tmp = t.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["lab", "--quick", "--slice", "VAL13", "--out"])
        .arg(t.path().join("evidence"))
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("aerodb-"))
        .count()
        < dirs
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lab did not start its cluster"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(wait_ms));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "temporary data left behind ({dirs} dirs, {wait_ms} ms): {left:?}"
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let tmp_s = tmp.to_string_lossy().to_string();
    let running: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&tmp_s))
        .map(str::to_owned)
        .collect();
    assert!(
        running.is_empty(),
        "processes left running ({dirs} dirs, {wait_ms} ms): {running:?}"
    );
}
