//! Full API round trips against the real server over REST and gRPC, proofs verified locally with the engine's
//! RFC 9162 verifier and the log's verifier key, the verifying client (and its refusal of a rollback and of a
//! checkpoint signed by another key), metrics, the OpenAPI document, and roles.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use aerodb_engine::{merkle, record, Checkpoint, Op, Payload, SignedCheckpoint, SigningKey, VerifierKey};
use aerodb_proto::v1 as pb;
use aerodb_server::client::{ClientError, VerifiedClient};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use bytes::Bytes;
use common::*;

fn unhex(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_round_trips_with_locally_verified_proofs() {
    let tmp = TempDir::new("api");
    let srv = start(tmp.path(), &["--checkpoint-interval-ms", "50"]);
    let h = srv.http;
    let vkey = VerifierKey::parse(&srv.verifier_key).unwrap();

    // REST: append with a proof, then read it back every way.
    let r = http(
        h,
        "POST",
        "/v1/records?prove=true",
        Some(WRITER),
        Some(
            r#"{"tenant":"acme","ops":[{"op":"put","key":"invoice/42","value":"paid"},{"op":"put","key":"bin","value_base64":"AP8="}]}"#,
        ),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["commit_id"], 1);
    let note = v["checkpoint"]["note"].as_str().unwrap();
    let cp = SignedCheckpoint::verify(note, &vkey).unwrap().checkpoint;
    let hashes: Vec<[u8; 32]> = v["proof"]["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| unhex(x.as_str().unwrap()))
        .collect();
    let leaf = merkle::leaf_hash(&unhex(v["record_hash"].as_str().unwrap()));
    assert!(merkle::verify_inclusion(&leaf, 0, cp.size, &hashes, &cp.root));

    for i in 0..5 {
        let r = http(
            h,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(&format!(
                r#"{{"tenant":"globex","ops":[{{"op":"put","key":"invoice/42","value":"v{i}"}}]}}"#
            )),
        );
        assert_eq!(r.status, 201);
    }
    let r = http(
        h,
        "POST",
        "/v1/records/batch",
        Some(WRITER),
        Some(
            r#"{"records":[{"tenant":"acme","event":"audit"},{"tenant":"acme","ops":[{"op":"delete","key":"bin"}]}]}"#,
        ),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["receipts"].as_array().unwrap().len(), 2);

    // Each tenant has its own key space: globex's invoice/42 did not overwrite acme's.
    let g = http(h, "GET", "/v1/kv/invoice%2F42?tenant=globex", Some(READER), None).json();
    assert_eq!((g["value"].as_str(), g["at"].as_u64()), (Some("v4"), Some(8)));
    let g = http(h, "GET", "/v1/kv/invoice%2F42?tenant=acme", Some(READER), None).json();
    assert_eq!((g["value"].as_str(), g["at"].as_u64()), (Some("paid"), Some(8)));
    let g = http(
        h,
        "GET",
        "/v1/kv/invoice%2F42?tenant=acme&at=1",
        Some(READER),
        None,
    )
    .json();
    assert_eq!(g["value"], "paid");
    assert_eq!(
        http(
            h,
            "GET",
            "/v1/kv/invoice%2F42?tenant=globex&at=1",
            Some(READER),
            None
        )
        .status,
        404
    );
    let g = http(h, "GET", "/v1/kv/bin?tenant=acme&at=1", Some(READER), None).json();
    assert_eq!(g["value_base64"], "AP8=");
    assert_eq!(
        http(h, "GET", "/v1/kv/bin?tenant=acme", Some(READER), None).status,
        404,
        "deleted"
    );
    let no_tenant = http(h, "GET", "/v1/kv/bin", Some(READER), None);
    assert_eq!(no_tenant.status, 400, "a key read names its tenant");
    assert!(String::from_utf8_lossy(&no_tenant.body).contains("tenant"));
    let hist = http(
        h,
        "GET",
        "/v1/kv/invoice%2F42/history?tenant=globex",
        Some(READER),
        None,
    )
    .json();
    assert_eq!(hist["versions"].as_array().unwrap().len(), 5);
    let hist = http(
        h,
        "GET",
        "/v1/kv/invoice%2F42/history?tenant=acme",
        Some(READER),
        None,
    )
    .json();
    assert_eq!(hist["versions"].as_array().unwrap().len(), 1);
    let scan = http(
        h,
        "GET",
        "/v1/kv?tenant=globex&prefix=inv&limit=10",
        Some(READER),
        None,
    )
    .json();
    assert_eq!(scan["items"].as_array().unwrap().len(), 1);
    // Records by CommitId range, a page at a time; and one tenant's.
    let page = http(h, "GET", "/v1/records?from=2&limit=3", Some(READER), None).json();
    let ids: Vec<u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit_id"].as_u64().unwrap())
        .collect();
    assert_eq!((ids, page["next_from"].as_u64()), (vec![2, 3, 4], Some(5)));
    let page = http(h, "GET", "/v1/records?tenant=acme", Some(READER), None).json();
    let ids: Vec<u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit_id"].as_u64().unwrap())
        .collect();
    assert_eq!((ids, page["next_from"].as_u64()), (vec![1, 7, 8], Some(0)));

    // A record and its proof against the newest checkpoint, verified from the record's own bytes.
    let cp_now = http(h, "POST", "/v1/checkpoints", Some(ADMIN), None).json();
    let cp_now = SignedCheckpoint::verify(cp_now["note"].as_str().unwrap(), &vkey)
        .unwrap()
        .checkpoint;
    assert_eq!(cp_now.size, 8);
    let inc = http(h, "GET", "/v1/proofs/inclusion?commit_id=3", Some(READER), None).json();
    let canonical = B64
        .decode(inc["record"]["canonical_base64"].as_str().unwrap())
        .unwrap();
    let hashes: Vec<[u8; 32]> = inc["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| unhex(x.as_str().unwrap()))
        .collect();
    assert_eq!(inc["tree_size"], 8);
    assert!(merkle::verify_inclusion(
        &record::merkle_leaf(&canonical),
        2,
        8,
        &hashes,
        &cp_now.root
    ));
    let rec = http(h, "GET", "/v1/records/3", Some(READER), None).json();
    assert_eq!(rec["tenant"], "globex");
    assert_eq!(rec["ops"][0]["value"], "v1");
    // Consistency between the first checkpoint and the newest.
    let con = http(
        h,
        "GET",
        &format!("/v1/proofs/consistency?old_size={}&new_size=8", cp.size),
        Some(READER),
        None,
    )
    .json();
    let hashes: Vec<[u8; 32]> = con["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| unhex(x.as_str().unwrap()))
        .collect();
    assert!(merkle::verify_consistency(
        cp.size,
        8,
        &cp.root,
        &cp_now.root,
        &hashes
    ));
    let latest = http(h, "GET", "/v1/checkpoints/latest", Some(READER), None).json();
    assert!(latest["size"].as_u64().unwrap() >= 8);

    let health = http(h, "GET", "/v1/health", None, None).json();
    assert_eq!(
        (health["status"].as_str(), health["writable"].as_bool()),
        (Some("ok"), Some(true))
    );
    let ha = http(h, "GET", "/v1/ha/status", Some(READER), None).json();
    assert_eq!(
        (
            ha["role"].as_str(),
            ha["state"].as_str(),
            ha["is_leader"].as_bool()
        ),
        (Some("primary"), Some("PrimaryActive"), Some(true))
    );
    assert_eq!(ha["commit_id"], 8);

    let metrics = String::from_utf8(http(h, "GET", "/metrics", Some(READER), None).body).unwrap();
    for m in [
        "aerodb_appended_records_total 8",
        "aerodb_append_duration_seconds_bucket{le=\"+Inf\"} 7",
        "aerodb_commit_id 8",
        "aerodb_wal_fsyncs_total",
        "aerodb_wal_fsync_seconds_total",
        "aerodb_wal_bytes_written_total",
        "aerodb_checkpoint_size",
        "ha_is_leader 1",
        "ha_leader_changes_total{event=\"became_leader\"}",
        "ha_lock_acquire_failures_total{reason=\"contended\"}",
    ] {
        assert!(metrics.contains(m), "metrics lack {m:?}:\n{metrics}");
    }
    // The OpenAPI document lists every route the router serves.
    let api = http(h, "GET", "/v1/openapi.json", None, None).json();
    for (method, path) in aerodb_server::rest::ROUTES {
        assert!(
            api["paths"][path][method].is_object(),
            "OpenAPI lacks {method} {path}"
        );
    }

    // gRPC: the same log.
    let mut c = srv.grpc().await;
    let r = c
        .append_batch(with_token(
            pb::AppendBatchRequest {
                records: vec![pb::NewRecord {
                    tenant: "acme".into(),
                    payload: Some(pb::new_record::Payload::Batch(pb::Batch {
                        ops: vec![pb::Op {
                            key: b"grpc".to_vec(),
                            value: b"yes".to_vec(),
                            delete: false,
                        }],
                    })),
                }],
            },
            WRITER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.receipts[0].commit_id, 9);
    let g = c
        .get_key(with_token(
            pb::GetKeyRequest {
                key: b"invoice/42".to_vec(),
                at: Some(2),
                tenant: "globex".into(),
            },
            READER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((g.found, g.value.as_slice()), (true, &b"v0"[..]));
    let hist = c
        .history(with_token(
            pb::HistoryRequest {
                key: b"bin".to_vec(),
                tenant: "acme".into(),
            },
            READER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hist.versions.iter().map(|v| v.deleted).collect::<Vec<_>>(),
        vec![false, true]
    );
    let s = c
        .scan(with_token(
            pb::ScanRequest {
                prefix: b"g".to_vec(),
                limit: 0,
                tenant: "acme".into(),
            },
            READER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.items.len(), 1);
    let rec = c
        .get_record(with_token(pb::GetRecordRequest { commit_id: 9 }, READER))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record::record_hash(&rec.canonical).to_vec(), rec.record_hash);
    let hs = c
        .ha_status(with_token(pb::HaStatusRequest {}, READER))
        .await
        .unwrap()
        .into_inner();
    assert!(hs.is_leader && hs.commit_id == 9);
    assert!(
        c.health(tonic::Request::new(pb::HealthRequest {}))
            .await
            .unwrap()
            .into_inner()
            .writable
    );

    // The verifying client: writes and reads verified against signed, mutually consistent checkpoints.
    let url = format!("http://{}", srv.grpc);
    let mut vc = VerifiedClient::connect(&url, Some(WRITER), vkey.clone())
        .await
        .unwrap();
    let payload = Payload::Batch(vec![Op::Put {
        key: Bytes::from_static(b"verified"),
        value: Bytes::from_static(b"write"),
    }]);
    let w = vc.append("acme", payload).await.unwrap();
    assert_eq!(w.commit_id, 10);
    let first = vc.trusted().unwrap().clone();
    vc.append("acme", Payload::Event(Bytes::from_static(b"second")))
        .await
        .unwrap();
    assert!(
        vc.trusted().unwrap().size > first.size,
        "the second checkpoint was accepted through a consistency proof"
    );
    assert_eq!(vc.verified_record(3).await.unwrap().tenant, "globex");
    // A client that saw a bigger tree refuses the server's smaller one: a rollback.
    let mut rolled = VerifiedClient::connect(&url, Some(READER), vkey.clone())
        .await
        .unwrap();
    rolled.trust(Checkpoint {
        size: 1_000,
        ..first.clone()
    });
    assert!(matches!(rolled.refresh().await, Err(ClientError::Verification(m)) if m.contains("rollback")));
    // A client that saw another root at the same size refuses: a fork.
    let mut forked = VerifiedClient::connect(&url, Some(READER), vkey.clone())
        .await
        .unwrap();
    let now = forked.refresh().await.unwrap();
    let mut other = forked.clone();
    other.trust(Checkpoint {
        root: [7u8; 32],
        ..now.clone()
    });
    assert!(
        matches!(other.refresh().await, Err(ClientError::Verification(m)) if m.contains("fork") || m.contains("consistent"))
    );
    // Checkpoints signed by another key are refused.
    let stranger = SigningKey::from_seed("aerodb-ledger", [42u8; 32])
        .unwrap()
        .verifier();
    let mut wrong = VerifiedClient::connect(&url, Some(READER), stranger)
        .await
        .unwrap();
    assert!(matches!(wrong.refresh().await, Err(ClientError::Verification(m)) if m.contains("signature")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_appends_in_flight_and_exits_zero() {
    let tmp = TempDir::new("sigterm");
    let mut srv = start(tmp.path(), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Eight writers on AppendStream calls: at the shutdown their streams end with UNAVAILABLE, after the answer to
    // every append the server read.
    let mut streams = Vec::new();
    for w in 0..8u32 {
        let mut c = srv.grpc().await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut answers = c
            .append_stream(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                WRITER,
            ))
            .await
            .unwrap()
            .into_inner();
        streams.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0u32.. {
                if tx
                    .send(event(&format!("s{w}"), &format!("{w}-{i}"), false))
                    .await
                    .is_err()
                {
                    break;
                }
                match answers.message().await {
                    Ok(Some(a)) => acked.push(a.receipt.unwrap()),
                    Ok(None) => return (acked, tonic::Code::Ok),
                    Err(s) => return (acked, s.code()),
                }
            }
            let end = answers
                .message()
                .await
                .err()
                .map_or(tonic::Code::Ok, |s| s.code());
            (acked, end)
        }));
    }
    for w in 0..16u32 {
        let mut c = srv.grpc().await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = pb::AppendRequest {
                    record: Some(pb::NewRecord {
                        tenant: format!("w{w}"),
                        payload: Some(pb::new_record::Payload::Event(format!("{w}-{i}").into_bytes())),
                    }),
                    prove: false,
                };
                match c.append(with_token(req, WRITER)).await {
                    Ok(r) => acked.push(r.into_inner().receipt.unwrap()),
                    Err(_) => break,
                }
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = srv.terminate();
        (s, srv)
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, srv) = status;
    assert!(status.success(), "SIGTERM exit status {status}");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());
    let unary = acked.len();
    for s in streams {
        let (got, end) = s.await.unwrap();
        assert!(
            !got.is_empty(),
            "a stream writer got no answer before the shutdown"
        );
        assert_eq!(
            end,
            tonic::Code::Unavailable,
            "how an append stream ends at a shutdown"
        );
        acked.extend(got);
    }
    // Everything acknowledged is in the log with the acknowledged hash; the directory verifies strictly, and the
    // shutdown signed a final checkpoint covering the whole log.
    let report = aerodb_engine::verify_dir(
        &srv.data,
        &aerodb_engine::VerifyOptions {
            verifier: Some(VerifierKey::parse(&srv.verifier_key).unwrap()),
            strict: true,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.checkpoints_ok, report.checkpoints);
    let db = aerodb_engine::Db::open(
        &srv.data,
        aerodb_engine::Options {
            read_only: true,
            ..aerodb_engine::Options::default()
        },
    )
    .unwrap();
    assert_eq!(
        db.latest_checkpoint().unwrap().checkpoint.size,
        db.tip().unwrap().commit_id.0,
        "final checkpoint covers everything"
    );
    for r in &acked {
        let rec = db
            .record(aerodb_wal::CommitId(r.commit_id))
            .unwrap()
            .expect("acknowledged record present");
        assert_eq!(rec.hash.to_vec(), r.record_hash);
    }
    let ids: std::collections::BTreeSet<u64> = acked.iter().map(|r| r.commit_id).collect();
    assert_eq!(ids.len(), acked.len(), "a CommitId acknowledged twice");
    report_figure(
        "SIGTERM under 16 unary appenders and 8 append streams",
        &format!(
            "{} acknowledged appends ({unary} unary, {} streamed), 0 lost, exit 0, final checkpoint covers the log",
            acked.len(),
            acked.len() - unary
        ),
    );
}

fn event(tenant: &str, body: &str, prove: bool) -> pb::AppendRequest {
    pb::AppendRequest {
        record: Some(pb::NewRecord {
            tenant: tenant.into(),
            payload: Some(pb::new_record::Payload::Event(body.as_bytes().to_vec())),
        }),
        prove,
    }
}

/// Sends `requests` on one `AppendStream` call with `token`: the answers received, then how the stream ended
/// (`Code::Ok` for a clean end).
async fn append_stream(
    c: &mut pb::ledger_client::LedgerClient<tonic::transport::Channel>,
    requests: Vec<pb::AppendRequest>,
    token: &str,
) -> (Vec<pb::AppendResponse>, tonic::Code) {
    let mut answers = match c
        .append_stream(with_token(tokio_stream::iter(requests), token))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), s.code()),
    };
    let mut got = Vec::new();
    loop {
        match answers.message().await {
            Ok(Some(a)) => got.push(a),
            Ok(None) => return (got, tonic::Code::Ok),
            Err(s) => return (got, s.code()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_stream_answers_each_append_in_order_and_the_first_error_ends_it() {
    let tmp = TempDir::new("append-stream");
    let srv = start(tmp.path(), &[]);
    let mut c = srv.grpc().await;

    // Five appends sent at once: answered in the order sent, as consecutive CommitIds, each with its receipt; the
    // one that asked for a proof gets a checkpoint and an inclusion proof that verify.
    let mut requests: Vec<_> = (0..5)
        .map(|i| event("s", &format!("stream-{i}"), false))
        .collect();
    requests[4].prove = true;
    let (answers, end) = append_stream(&mut c, requests, WRITER).await;
    assert_eq!(end, tonic::Code::Ok);
    let ids: Vec<u64> = answers
        .iter()
        .map(|a| a.receipt.as_ref().unwrap().commit_id)
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    for (i, a) in answers.iter().enumerate() {
        let rec = c
            .get_record(with_token(pb::GetRecordRequest { commit_id: ids[i] }, READER))
            .await
            .unwrap()
            .into_inner()
            .record
            .unwrap();
        assert_eq!(rec.record_hash, a.receipt.as_ref().unwrap().record_hash);
        assert_eq!(
            rec.payload,
            Some(pb::record::Payload::Event(format!("stream-{i}").into_bytes()))
        );
    }
    let (cp, proof) = (
        answers[4].checkpoint.as_ref().unwrap(),
        answers[4].proof.as_ref().unwrap(),
    );
    assert!(answers[..4].iter().all(|a| a.proof.is_none()));
    let h32 = |v: &[u8]| -> [u8; 32] { v.try_into().unwrap() };
    let hashes: Vec<[u8; 32]> = proof.hashes.iter().map(|h| h32(h)).collect();
    let leaf = merkle::leaf_hash(&h32(&answers[4].receipt.as_ref().unwrap().record_hash));
    assert!(merkle::verify_inclusion(
        &leaf,
        proof.leaf_index,
        cp.size,
        &hashes,
        &h32(&cp.root),
    ));

    // A bad request ends the stream with its status; the appends before it stand and nothing after it is taken.
    let bad = pb::AppendRequest {
        record: None,
        prove: false,
    };
    let (answers, end) = append_stream(
        &mut c,
        vec![event("s", "six", false), bad, event("s", "never", false)],
        WRITER,
    )
    .await;
    assert_eq!(end, tonic::Code::InvalidArgument);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].receipt.as_ref().unwrap().commit_id, 6);
    let hs = c
        .ha_status(with_token(pb::HaStatusRequest {}, READER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hs.commit_id, 6, "nothing after the bad request was appended");

    // The token is checked when the stream opens.
    let (answers, end) = append_stream(&mut c, vec![event("s", "read-only", false)], READER).await;
    assert_eq!((answers.len(), end), (0, tonic::Code::PermissionDenied));
    let (answers, end) = append_stream(&mut c, vec![event("s", "anonymous", false)], "not-a-token").await;
    assert_eq!((answers.len(), end), (0, tonic::Code::Unauthenticated));

    // An empty stream is a clean, empty exchange.
    assert_eq!(
        append_stream(&mut c, Vec::new(), WRITER).await,
        (Vec::new(), tonic::Code::Ok)
    );
}
