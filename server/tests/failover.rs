//! Automatic failover through etcd (issue 19): a real etcd and three real `aerodb-server` processes on loopback
//! ports the OS picked, `--authority etcd`, one synchronous replica (the harness is `aerodb_server::lab`). Clients
//! append without pause and follow the leader; the primary is killed (SIGKILL), stopped (SIGTERM), cut from etcd,
//! paused past its lease; etcd itself is paused. The checker over the client-side history: every acknowledged
//! write is in the final log with its hash, no CommitId was acknowledged twice (two writers never acknowledged
//! overlapping writes), and no node acknowledged anything after its lease.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aerodb_server::lab::{
    check_history, get, ha, send, signal, wait_caught_up, Ack, Cluster, ClusterSpec, Writers, LAB_WRITER,
};
use common::report_figure;
use parking_lot::Mutex;

const TTL_MS: u64 = 1000;

fn cluster(sync: usize, proxied: bool) -> Cluster {
    Cluster::start(ClusterSpec {
        bin: env!("CARGO_BIN_EXE_aerodb-server").into(),
        bin_args: Vec::new(),
        nodes: 3,
        sync_replicas: sync,
        lease_ttl_ms: TTL_MS,
        proxied,
        log: std::env::var("AERODB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        data_root: None,
        extra_args: Vec::new(),
    })
    .unwrap()
}

/// The value of metric line `name` (with its labels) at `node`.
fn metric(node: SocketAddr, name: &str) -> f64 {
    let r = send(
        node,
        &aerodb_server::httpc::request(
            "GET",
            "/metrics",
            Some(aerodb_server::lab::LAB_READER),
            None,
            false,
        ),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

fn epoch_of_latest_checkpoint(node: SocketAddr) -> u64 {
    let cp = get(node, "/v1/checkpoints/latest").unwrap();
    let note = cp["note"].as_str().unwrap().to_owned();
    note.lines()
        .find_map(|l| l.strip_prefix("epoch "))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch line in {note}"))
}

#[test]
fn sigkill_and_sigterm_of_the_primary_under_sync_appends_lose_nothing() {
    let mut c = cluster(1, false);
    let first = c.leader(Duration::from_secs(20)).unwrap();
    let leader_http = c.http(first).unwrap();
    // A follower's HA status: the lease and the leader's URL.
    let (_, follower) = c.live().into_iter().find(|(i, _)| *i != first).unwrap();
    let st = ha(follower).unwrap();
    assert!(st["lease_ms"].as_u64().unwrap() >= 1000, "{st}");
    assert!(st["expires_in_ms"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["leader_url"], format!("http://{leader_http}").as_str(), "{st}");
    assert_eq!(st["is_leader"], false);
    let leader_st = ha(leader_http).unwrap();
    let epoch1 = leader_st["epoch"].as_u64().unwrap();
    assert!(epoch1 > 0, "{leader_st}");
    // A write sent to a follower: NOT_LEADER with the leader's URL, nothing written.
    let r = send(
        follower,
        &aerodb_server::httpc::request(
            "POST",
            "/v1/records",
            Some(LAB_WRITER),
            Some("{\"tenant\":\"t\",\"event\":\"x\"}"),
            false,
        ),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "NOT_LEADER", "{v}");
    assert_eq!(
        v["error"]["leader_url"],
        format!("http://{leader_http}").as_str(),
        "{v}"
    );

    // The CLI and the Rust client pointed at a follower follow the leader's URL once.
    let follower_node = c.live().into_iter().find(|(i, _)| *i != first).unwrap().0;
    let follower_grpc = format!("http://{}", c.nodes[follower_node].as_ref().unwrap().grpc);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args([
            "--grpc",
            &follower_grpc,
            "--token",
            LAB_WRITER,
            "append",
            "--tenant",
            "t",
            "--event",
            "via-cli",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("appended CommitId"),
        "{out:?}"
    );
    let key = c.nodes[first].as_ref().unwrap().verifier_key.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let w = rt.block_on(async {
        let mut client = aerodb_server::client::VerifiedClient::connect(
            &follower_grpc,
            Some(LAB_WRITER),
            aerodb_engine::VerifierKey::parse(&key).unwrap(),
        )
        .await
        .unwrap();
        let w = client
            .append(
                "t",
                aerodb_engine::Payload::Event(bytes::Bytes::from_static(b"via-client")),
            )
            .await
            .unwrap();
        assert_ne!(
            client.url(),
            follower_grpc,
            "the client did not move to the leader"
        );
        w
    });
    assert!(w.commit_id >= 2, "{w:?}");

    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = Writers::start(4, addrs.clone());
    w.wait_for(300, Duration::from_secs(30)).unwrap();

    // 1. SIGKILL of the primary under sustained synchronous appends.
    let t0 = Instant::now();
    c.kill9(first);
    addrs.lock().retain(|a| *a != leader_http);
    let kill_failover = w
        .first_ack_after(t0, leader_http, Duration::from_secs(15))
        .unwrap();
    let second = c.leader(Duration::from_secs(10)).unwrap();
    let second_http = c.http(second).unwrap();
    let epoch2 = ha(second_http).unwrap()["epoch"].as_u64().unwrap();
    assert!(epoch2 > epoch1, "epochs {epoch1} then {epoch2}");
    assert_eq!(epoch_of_latest_checkpoint(second_http), epoch2);
    let n = w.acked();
    w.wait_for(n + 200, Duration::from_secs(30)).unwrap();

    // 2. The killed node comes back and rejoins as a replica of the new primary (with one synchronous replica,
    // writes need it), then SIGTERM of the new primary: it hands over.
    c.restart(first).unwrap();
    addrs.lock().push(c.http(first).unwrap());
    assert_eq!(
        c.leader(Duration::from_secs(20)).unwrap(),
        second,
        "the leader changed when the old primary returned"
    );
    let n = w.acked();
    w.wait_for(n + 100, Duration::from_secs(30)).unwrap();
    let t1 = Instant::now();
    assert!(c.terminate(second).unwrap(), "SIGTERM: not a clean exit");
    addrs.lock().retain(|a| *a != second_http);
    let term_failover = w
        .first_ack_after(t1, second_http, Duration::from_secs(15))
        .unwrap();
    let third = c.leader(Duration::from_secs(10)).unwrap();
    let third_http = c.http(third).unwrap();
    let n = w.acked();
    w.wait_for(n + 100, Duration::from_secs(30)).unwrap();
    let (acks, unknown) = w.finish();
    check_history(&acks, third_http).unwrap();
    report_figure(
        "failover",
        &format!(
            "lease TTL {TTL_MS} ms, sync replicas 1: SIGKILL -> first acknowledged write at the new leader {} ms, \
             SIGTERM -> {} ms; {} writes acknowledged across 3 terms, 0 lost, 0 CommitIds acknowledged twice; {} \
             answered OUTCOME_UNKNOWN",
            kill_failover.as_millis(),
            term_failover.as_millis(),
            acks.len(),
            unknown.len()
        ),
    );

    // 3. The stopped node comes back and rejoins; every node holds every acknowledged write.
    let tip = ha(third_http).unwrap()["commit_id"].as_u64().unwrap();
    c.restart(second).unwrap();
    assert_eq!(
        c.leader(Duration::from_secs(20)).unwrap(),
        third,
        "the leader changed when a stopped node returned"
    );
    for (_, a) in c.live() {
        wait_caught_up(a, tip, Duration::from_secs(20)).unwrap();
        check_history(&acks, a).unwrap();
    }
    // HA metrics by value: the leader says so and counted its election; the others do not lead.
    assert_eq!(metric(third_http, "ha_is_leader "), 1.0);
    assert!(metric(third_http, "ha_leader_changes_total{event=\"became_leader\"} ") >= 1.0);
    for (i, a) in c.live() {
        if i != third {
            assert_eq!(metric(a, "ha_is_leader "), 0.0, "node {i}");
        }
    }
}

/// Acknowledgements `node` gave after `t`.
fn acks_by_after(acks: &[Ack], node: SocketAddr, t: Instant) -> Vec<u64> {
    acks.iter()
        .filter(|a| a.by == node && a.at > t)
        .map(|a| a.commit_id)
        .collect()
}

#[test]
fn a_primary_that_cannot_prove_its_lease_acknowledges_nothing() {
    let ttl = Duration::from_millis(TTL_MS);
    let mut c = cluster(1, true);
    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = Writers::start(3, addrs.clone());
    let mut checks = Vec::new();

    // 1. The primary is cut from etcd but not from its clients: it stops acknowledging within its lease, a new
    //    primary is elected, and the old one acknowledges nothing after its lease (checked by the history).
    let l = c.leader(Duration::from_secs(20)).unwrap();
    let old = c.http(l).unwrap();
    w.wait_for(100, Duration::from_secs(30)).unwrap();
    let t_cut = Instant::now();
    c.proxies[l].cut();
    let took = w.first_ack_after(t_cut, old, Duration::from_secs(15)).unwrap();
    let (acks_now, _) = (w.acks.lock().clone(), ());
    let late = acks_by_after(&acks_now, old, t_cut + ttl);
    assert!(
        late.is_empty(),
        "the primary cut from etcd acknowledged {late:?} after its lease"
    );
    // Its HA status says it does not lead.
    let st = ha(old).unwrap();
    assert_eq!(st["is_leader"], false, "{st}");
    assert_eq!(st["can_accept_protected_writes"], false, "{st}");
    c.proxies[l].restore();
    // It stepped down without a restart: counted by value.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(old, "ha_leader_changes_total{event=\"stepped_down\"} ") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the deposed primary did not count its step-down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(old, "ha_is_leader "), 0.0);
    let l2 = c.leader(Duration::from_secs(20)).unwrap();
    assert_ne!(l2, l);
    checks.push(format!(
        "etcd cut from the primary: new leader's first ack after {} ms",
        took.as_millis()
    ));

    // 2. The primary is paused (SIGSTOP) past its lease, then resumed: a newer term took over meanwhile and the
    //    resumed node acknowledges nothing (its pending requests answer NOT_LEADER or OUTCOME_UNKNOWN).
    let paused = c.nodes[l2].as_ref().unwrap();
    let (paused_http, pid) = (paused.http, paused.pid());
    w.wait_for(w.acked() + 100, Duration::from_secs(30)).unwrap();
    let t_stop = Instant::now();
    signal(pid, "STOP");
    // Clients stop asking it (a paused node would hold each probe until its timeout).
    addrs.lock().retain(|a| *a != paused_http);
    let took = w
        .first_ack_after(t_stop, paused_http, Duration::from_secs(15))
        .unwrap();
    signal(pid, "CONT");
    addrs.lock().push(paused_http);
    let l3 = c.leader(Duration::from_secs(20)).unwrap();
    assert_ne!(l3, l2);
    w.wait_for(w.acked() + 100, Duration::from_secs(30)).unwrap();
    let late = acks_by_after(&w.acks.lock().clone(), paused_http, t_stop + ttl);
    assert!(
        late.is_empty(),
        "the paused primary acknowledged {late:?} after its lease"
    );
    checks.push(format!(
        "primary paused past its lease: new leader's first ack after {} ms",
        took.as_millis()
    ));

    // 3. etcd itself killed (SIGKILL) for longer than the TTL, then restarted with its data: the primary stops
    //    acknowledging within its lease; replicas keep serving reads; writes resume once etcd is back.
    let leader_http = c.http(l3).unwrap();
    let replica_http = c.live().into_iter().find(|(i, _)| *i != l3).unwrap().1;
    let t_etcd = Instant::now();
    c.etcd.kill();
    std::thread::sleep(ttl + Duration::from_millis(500));
    let st = ha(leader_http).unwrap();
    assert_eq!(st["can_accept_protected_writes"], false, "{st}");
    assert_eq!(st["write_block_active"], true, "{st}");
    let read = get(replica_http, "/v1/records/1").expect("a replica serves reads while etcd is away");
    assert_eq!(read["commit_id"], 1, "{read}");
    let during = w.acks.lock().iter().filter(|a| a.at > t_etcd + ttl).count();
    c.etcd.restart().unwrap();
    let resumed = Instant::now();
    w.wait_for(w.acked() + 50, Duration::from_secs(30)).unwrap();
    assert_eq!(
        during, 0,
        "{during} writes acknowledged while etcd was away past the lease"
    );
    let back = w
        .acks
        .lock()
        .iter()
        .find(|a| a.at > resumed)
        .map(|a| a.at - resumed)
        .unwrap();
    checks.push(format!(
        "etcd killed for {} ms: 0 acknowledged after the lease, writes back {} ms after its restart",
        (ttl + Duration::from_millis(500)).as_millis(),
        back.as_millis()
    ));

    // 4. A replica far behind never wins: pause it, let the primary run ahead, kill the primary, resume it.
    let l4 = c.leader(Duration::from_secs(20)).unwrap();
    let (lag_i, _) = c.live().into_iter().find(|(i, _)| *i != l4).unwrap();
    let lag_pid = c.nodes[lag_i].as_ref().unwrap().pid();
    signal(lag_pid, "STOP");
    // Far more than its socket buffers hold: what the primary sent before it died and the paused node had not
    // read yet still reaches it after it resumes, so a small lag can legitimately vanish.
    w.wait_for(w.acked() + 3000, Duration::from_secs(30)).unwrap();
    let killed = c.http(l4).unwrap();
    c.kill9(l4);
    addrs.lock().retain(|a| *a != killed);
    signal(lag_pid, "CONT");
    let l5 = c.leader(Duration::from_secs(20)).unwrap();
    assert_ne!(l5, lag_i, "the replica that was far behind won the election");
    let (acks, unknown) = w.finish();
    let final_leader = c.http(l5).unwrap();
    check_history(&acks, final_leader).unwrap();
    let tip = ha(final_leader).unwrap()["commit_id"].as_u64().unwrap();
    let lagger = c.http(lag_i).unwrap();
    wait_caught_up(lagger, tip, Duration::from_secs(20)).unwrap();
    check_history(&acks, lagger).unwrap();
    checks.push("a lagging replica never won".into());
    report_figure(
        "failover-lease",
        &format!(
            "lease TTL {TTL_MS} ms: {}; {} writes acknowledged, 0 lost, 0 after a lease; {} OUTCOME_UNKNOWN",
            checks.join("; "),
            acks.len(),
            unknown.len()
        ),
    );
}

#[test]
fn three_rapid_failovers_in_a_row_lose_nothing() {
    let mut c = cluster(1, false);
    let addrs = Arc::new(Mutex::new(
        c.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
    ));
    let w = Writers::start(3, addrs.clone());
    let mut took = Vec::new();
    // Each cycle kills the primary as soon as the previous failover's leader is followed by all, with the old
    // node restarted at once: three terms in a few seconds.
    for _ in 0..3 {
        let l = c.leader(Duration::from_secs(20)).unwrap();
        let old = c.http(l).unwrap();
        w.wait_for(w.acked() + 50, Duration::from_secs(30)).unwrap();
        let t0 = Instant::now();
        c.kill9(l);
        addrs.lock().retain(|a| *a != old);
        took.push(w.first_ack_after(t0, old, Duration::from_secs(15)).unwrap());
        c.restart(l).unwrap();
        addrs.lock().push(c.http(l).unwrap());
    }
    let l = c.leader(Duration::from_secs(20)).unwrap();
    w.wait_for(w.acked() + 50, Duration::from_secs(30)).unwrap();
    let (acks, unknown) = w.finish();
    let leader = c.http(l).unwrap();
    let tip = ha(leader).unwrap()["commit_id"].as_u64().unwrap();
    for (_, a) in c.live() {
        wait_caught_up(a, tip, Duration::from_secs(20)).unwrap();
        check_history(&acks, a).unwrap();
    }
    report_figure(
        "failover-cycles",
        &format!(
            "3 SIGKILL failovers in a row (lease TTL {TTL_MS} ms): {:?} ms to the new leader's first ack; {} writes \
             acknowledged, 0 lost on every node; {} OUTCOME_UNKNOWN",
            took.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            acks.len(),
            unknown.len()
        ),
    );
}
