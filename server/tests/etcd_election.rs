//! The etcd authority's client against a real etcd (Debian's `etcd-server`, started here on loopback): leases
//! kept alive and their proven validity, campaigns, strictly increasing leader revisions (the epochs), handover by
//! resign, takeover when a holder's lease expires, observing leaders, and a holder that can no longer reach etcd
//! knowing its lease is unproven before etcd could expire it.

mod common;

use std::time::{Duration, Instant};

use aerodb_server::etcd::Etcd;
use common::{report_figure, EtcdServer};
use futures_util::StreamExt as _;

const NAME: &[u8] = b"aerodb/test-ledger/leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_leases_and_epochs_on_a_real_etcd() {
    let server = EtcdServer::start();
    let etcd = Etcd::new(std::slice::from_ref(&server.endpoint), Duration::from_secs(2)).unwrap();
    let (ttl, margin) = (Duration::from_secs(1), Duration::from_millis(200));
    // etcd may take a moment to elect itself: retry the first grant.
    let deadline = Instant::now() + Duration::from_secs(20);
    let a_lease = loop {
        match etcd.grant(ttl, margin).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "etcd never answered: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(a_lease.valid_for().is_some_and(|d| d <= ttl));
    assert_eq!(etcd.leader(NAME).await.unwrap(), None, "no leader yet");

    // A wins at once.
    let a = etcd.campaign(NAME, &a_lease, b"node-a").await.unwrap();
    let mut observed = Box::pin(etcd.observe(NAME).await.unwrap());
    let leader = etcd.leader(NAME).await.unwrap().unwrap();
    assert_eq!((leader.value.as_slice(), leader.rev), (&b"node-a"[..], a.rev));
    assert_eq!(observed.next().await.unwrap().unwrap().rev, a.rev);

    // B waits behind A; A resigns; B wins with a higher revision.
    let b_lease = etcd.grant(ttl, margin).await.unwrap();
    let etcd_b = etcd.clone();
    let b_campaign = tokio::spawn(async move {
        let k = etcd_b.campaign(NAME, &b_lease, b"node-b").await;
        (k, b_lease)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "B must not win while A leads");
    // A's lease stays proven across several TTLs of keep-alive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        a_lease.valid_for().is_some(),
        "keep-alive holds A's lease: {:?}",
        a_lease.error()
    );
    let resigned = Instant::now();
    etcd.resign(&a).await.unwrap();
    let (b, b_lease) = b_campaign.await.unwrap();
    let b = b.unwrap();
    let handover = resigned.elapsed();
    assert!(b.rev > a.rev, "epochs increase: {} then {}", a.rev, b.rev);
    assert_eq!(observed.next().await.unwrap().unwrap().value, b"node-b");

    // C waits behind B; B dies (its keep-alive stops, nothing is revoked): etcd expires B's lease and C wins.
    let c_lease = etcd.grant(ttl, margin).await.unwrap();
    let etcd_c = etcd.clone();
    let c_campaign = tokio::spawn(async move {
        let k = etcd_c.campaign(NAME, &c_lease, b"node-c").await;
        (k, c_lease)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let died = Instant::now();
    drop(b_lease);
    let (c, c_lease) = c_campaign.await.unwrap();
    let c = c.unwrap();
    let takeover = died.elapsed();
    assert!(c.rev > b.rev);
    assert!(
        takeover >= Duration::from_millis(500),
        "C cannot win before B's lease could expire: {takeover:?}"
    );
    assert!(takeover < Duration::from_secs(4), "{takeover:?}");

    // etcd unreachable (frozen): the holder's lease stops being proven before its TTL is over.
    assert!(c_lease.valid_for().is_some());
    server.signal("STOP");
    let frozen = Instant::now();
    while c_lease.valid_for().is_some() {
        assert!(
            frozen.elapsed() < ttl,
            "the lease must become unproven within its TTL"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let noticed = frozen.elapsed();
    server.signal("CONT");
    drop(a_lease);
    report_figure(
        "etcd election (real etcd 3.4, lease TTL 1 s, margin 200 ms)",
        &format!(
            "epochs {} < {} < {}; handover by resign {} ms; takeover after the holder died {} ms; a holder cut from \
             etcd stopped trusting its lease after {} ms (< TTL)",
            a.rev,
            b.rev,
            c.rev,
            handover.as_millis(),
            takeover.as_millis(),
            noticed.as_millis()
        ),
    );
}
