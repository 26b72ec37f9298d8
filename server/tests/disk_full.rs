//! T7 against the real server: a data directory on a small tmpfs (in a mount namespace of its own, so nothing
//! outside the test sees it) fills up under appends. The node fails closed — health 503, writes refused, every
//! answer acknowledged, `OUTCOME_UNKNOWN` with its CommitId, or a plain failure that is not in the log — and once
//! space is freed it opens its log again in place, without a restart, and accepts writes; nothing acknowledged is
//! lost and no failed write appears.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{http, report_figure, start_wrapped, TempDir, ADMIN, READER, WRITER};

/// Size of the tmpfs, and of the filler file that leaves the node little room.
const TMPFS_MB: u64 = 24;
const FILLER_MB: u64 = 15;

fn append(h: std::net::SocketAddr, i: u64) -> (u16, serde_json::Value) {
    let body = format!(
        r#"{{"tenant":"t","ops":[{{"op":"put","key":"k{i}","value":"{i}-{}"}}]}}"#,
        "v".repeat(3000)
    );
    let r = http(h, "POST", "/v1/records", Some(WRITER), Some(&body));
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

fn value_at(h: std::net::SocketAddr, id: u64) -> Option<String> {
    let r = http(h, "GET", &format!("/v1/records/{id}"), Some(READER), None);
    (r.status == 200).then(|| {
        r.json()["ops"][0]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    })
}

fn metric(h: std::net::SocketAddr, name: &str) -> f64 {
    let text = String::from_utf8_lossy(&http(h, "GET", "/metrics", Some(READER), None).body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Runs `args` inside the server's mount namespace.
fn in_ns(pid: u32, args: &[&str]) {
    let st = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .status()
        .expect("run nsenter");
    assert!(st.success(), "nsenter {args:?}: {st}");
}

#[test]
fn a_full_disk_fails_closed_and_the_node_recovers_in_place_once_space_is_freed() {
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs `unshare -m` (root, or user namespaces) to give the server a tmpfs of its own"
    );
    let tmp = TempDir::new("disk-full");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_owned();
    // The wrapper mounts the tmpfs in a new mount namespace, fills most of it, then runs the server there.
    let script = format!(
        "mount -t tmpfs -o size={TMPFS_MB}m,mode=0700 tmpfs {mnt_s} && \
         dd if=/dev/zero of={mnt_s}/filler bs=1M count={FILLER_MB} status=none && exec \"$@\""
    );
    let wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ];
    let mut server = start_wrapped(
        tmp.path(),
        &Path::new(&mnt_s).join("data"),
        &wrapper,
        &["--segment-bytes", "1048576", "--checkpoint-every-records", "200"],
    );
    let pid = server.child.as_ref().unwrap().id();
    let h = server.http;

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut unknown: BTreeMap<u64, String> = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    let mut i = 0;
    let started = Instant::now();
    // Append until the node fails closed (a few MB of records).
    loop {
        i += 1;
        let (status, v) = append(h, i);
        let value = format!("{i}-{}", "v".repeat(3000));
        match (status, v["error"]["code"].as_str()) {
            (201, _) => {
                acked.insert(v["commit_id"].as_u64().unwrap(), value);
            }
            (503, Some("OUTCOME_UNKNOWN")) => {
                unknown.insert(v["error"]["commit_id"].as_u64().unwrap(), value);
            }
            (503, Some("LOG_FAILED")) => {
                failed.push(value);
                break;
            }
            other => panic!("append {i}: unexpected answer {other:?}: {v}"),
        }
        assert!(i < 20_000, "the disk never filled");
    }
    let full_after = acked.len();
    let health = http(h, "GET", "/v1/health", None, None);
    let text = String::from_utf8_lossy(&health.body);
    assert_eq!(health.status, 503, "health while the disk is full: {text}");
    assert!(text.contains("failed closed"), "{text}");
    // Still full: it stays failed closed (and keeps refusing) across several recovery checks.
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..3 {
        i += 1;
        let (status, v) = append(h, i);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (503, Some("LOG_FAILED")),
            "{v}"
        );
        failed.push(format!("{i}-{}", "v".repeat(3000)));
    }
    assert_eq!(metric(h, "aerodb_log_recoveries_total"), 0.0);
    assert_eq!(
        value_at(h, 1).as_deref(),
        acked.get(&1).map(String::as_str),
        "reads go on"
    );

    // Free the space: the node opens its log again by itself.
    in_ns(pid, &["rm", &format!("{mnt_s}/filler")]);
    let freed = Instant::now();
    let deadline = freed + Duration::from_secs(30);
    while http(h, "GET", "/v1/health", None, None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the node did not recover within 30 s of space being freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered_in = freed.elapsed();
    assert_eq!(metric(h, "aerodb_log_recoveries_total"), 1.0);
    for _ in 0..50 {
        i += 1;
        let (status, v) = append(h, i);
        assert_eq!(status, 201, "append after recovery: {v}");
        acked.insert(
            v["commit_id"].as_u64().unwrap(),
            format!("{i}-{}", "v".repeat(3000)),
        );
    }
    let cp = http(h, "POST", "/v1/checkpoints", Some(ADMIN), None);
    assert_eq!(cp.status, 201, "{}", String::from_utf8_lossy(&cp.body));

    // Nothing acknowledged is lost; unknown outcomes are whole or absent; failed writes are nowhere.
    let tip = *acked.keys().last().unwrap();
    let mut log = Vec::new();
    for id in 1..=tip {
        log.push(value_at(h, id).unwrap_or_else(|| panic!("record {id} of {tip} is missing")));
    }
    for (id, v) in &acked {
        assert_eq!(&log[*id as usize - 1], v, "acknowledged record {id}");
    }
    let kept = unknown
        .iter()
        .filter(|(id, v)| log.get(**id as usize - 1) == Some(v))
        .count();
    for f in &failed {
        assert!(!log.contains(f), "a write answered LOG_FAILED is in the log");
    }
    assert_eq!(value_at(h, tip + 1), None);
    report_figure(
        "disk_full",
        &format!(
            "{full_after} acknowledged before ENOSPC, {} outcome-unknown ({kept} kept), {} refused \
         (none in the log); recovered in place {:.1} s after space was freed; {} acknowledged in all, 0 lost \
         ({:.1} s)",
            unknown.len(),
            failed.len(),
            recovered_in.as_secs_f64(),
            acked.len(),
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(server.terminate().success());
}
