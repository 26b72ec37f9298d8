//! T8: `kill -9` of the real server under sustained concurrent appends, cycle after cycle on one data directory.
//! After every restart: every acknowledged record is there with its acknowledged hash (0 lost), CommitIds are
//! gap-free and unique (0 duplicates), and the server's startup integrity check passed (0 chain breaks); at the
//! end the directory verifies strictly. 30 cycles by default; `AERODB_T8_CYCLES=N` runs more.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use aerodb_proto::v1 as pb;
use common::*;

/// Reads back each acknowledged record: (missing, changed).
async fn check<'a>(
    c: &mut aerodb_proto::v1::ledger_client::LedgerClient<tonic::transport::Channel>,
    acked: impl Iterator<Item = (&'a u64, &'a Vec<u8>)>,
) -> (u64, u64) {
    let (mut lost, mut changed) = (0, 0);
    for (id, hash) in acked {
        match c
            .get_record(with_token(pb::GetRecordRequest { commit_id: *id }, READER))
            .await
        {
            Ok(r) => {
                if r.into_inner().record.map(|r| r.record_hash) != Some(hash.clone()) {
                    changed += 1;
                }
            }
            Err(_) => lost += 1,
        }
    }
    (lost, changed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_concurrent_appends_loses_nothing() {
    let cycles: u64 = std::env::var("AERODB_T8_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let tmp = TempDir::new("t8");
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let (mut lost, mut mismatched, mut duplicates) = (0u64, 0u64, 0u64);
    let mut seed = rand_u64() | 1;
    let mut checked_upto = 0u64;
    for cycle in 0..cycles {
        let mut srv = start(tmp.path(), &["--checkpoint-interval-ms", "20"]);
        // Check what the previous cycle acknowledged (earlier cycles were checked after their own restart; the
        // final restart checks everything again).
        let mut c = srv.grpc().await;
        let (l, m) = check(&mut c, acked.range(checked_upto..)).await;
        lost += l;
        mismatched += m;
        checked_upto = acked.keys().next_back().map_or(0, |k| k + 1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let mut c = srv.grpc().await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let payload = if i.is_multiple_of(3) {
                        pb::new_record::Payload::Batch(pb::Batch {
                            ops: vec![pb::Op {
                                key: format!("k{}", (w * 7 + i) % 50).into_bytes(),
                                value: format!("c{cycle}-w{w}-{i}").into_bytes(),
                                delete: false,
                            }],
                        })
                    } else {
                        pb::new_record::Payload::Event(format!("c{cycle}-w{w}-{i}").into_bytes())
                    };
                    let req = pb::AppendRequest {
                        record: Some(pb::NewRecord {
                            tenant: format!("w{w}"),
                            payload: Some(payload),
                        }),
                        prove: false,
                    };
                    match c.append(with_token(req, WRITER)).await {
                        Ok(r) => got.push(r.into_inner().receipt.unwrap()),
                        Err(_) => break,
                    }
                    i += 1;
                }
                got
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(50 + seed % 250)).await;
        srv.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            for r in t.await.unwrap() {
                if acked.insert(r.commit_id, r.record_hash).is_some() {
                    duplicates += 1;
                }
            }
        }
        eprintln!("cycle {cycle}: {} acknowledged so far", acked.len());
    }
    // A final restart: everything is there, gap-free, and the directory verifies strictly.
    let mut srv = start(tmp.path(), &[]);
    let mut c = srv.grpc().await;
    let (l, m) = check(&mut c, acked.iter()).await;
    lost += l;
    mismatched += m;
    let tip = c
        .ha_status(with_token(pb::HaStatusRequest {}, READER))
        .await
        .unwrap()
        .into_inner()
        .commit_id;
    let status = tokio::task::spawn_blocking(move || {
        let s = srv.terminate();
        (s, srv)
    })
    .await
    .unwrap();
    let (status, srv) = status;
    assert!(status.success());
    let key = aerodb_engine::VerifierKey::parse(&srv.verifier_key).unwrap();
    let report = aerodb_engine::verify_dir(
        &srv.data,
        &aerodb_engine::VerifyOptions {
            verifier: Some(key),
            strict: true,
        },
        &mut |_, _| {},
    )
    .unwrap();
    report_figure(
        "T8 kill -9 under 8 concurrent appenders",
        &format!(
            "{cycles} cycles, {} acknowledged, {lost} lost, {mismatched} changed, {duplicates} duplicate CommitIds, {} records, verifier: {} problems",
            acked.len(),
            tip,
            report.problems.len()
        ),
    );
    assert_eq!((lost, mismatched, duplicates), (0, 0, 0));
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, tip, "CommitIds 1..=tip, every one present");
    assert!(acked.keys().all(|id| *id <= tip));
    assert!(!acked.is_empty());
}
