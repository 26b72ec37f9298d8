//! Security details (issue 17): secrets others may read are refused, the data directory is created 0700, a
//! replica configured for TLS never talks to an `http://` primary, and a gRPC unary call without its request
//! message is bad input, not a server fault.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_modes_plaintext_replicas_and_empty_unary_calls() {
    let mut refused = 0;
    // 1. A tokens file its group or others may read: refused, with the fix in the message.
    let tmp = TempDir::new("sec-tokens");
    let tokens = write_tokens(tmp.path());
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb-server"))
        .args(["--data-dir", &tmp.path().join("data").display().to_string()])
        .args(["--tokens-file", &tokens.display().to_string()])
        .args(["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    refused += 1;

    // 2. A replica with a CA or client certificate and an http:// primary: refused (its token would go in clear).
    let tmp = TempDir::new("sec-plain");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, "not read: refused before").unwrap();
    let err = refuse(
        tmp.path(),
        &[
            "--role",
            "replica",
            "--primary",
            "http://127.0.0.1:9",
            "--primary-ca-cert",
            &ca.display().to_string(),
        ],
    );
    assert!(err.contains("https://"), "{err}");
    refused += 1;

    // 3. The data directory is created 0700.
    let tmp = TempDir::new("sec-dir");
    let srv = start(tmp.path(), &[]);
    let mode = std::fs::metadata(&srv.data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data directory mode {mode:o}");
    let key_mode = std::fs::metadata(srv.data.join("checkpoint.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);

    // 4. A replicator token file others may read: the replica does not follow with it, and says why.
    let rt = TempDir::new("sec-replica");
    std::fs::create_dir_all(rt.path().join("data")).unwrap();
    std::fs::copy(
        srv.data.join("checkpoint.key"),
        rt.path().join("data/checkpoint.key"),
    )
    .unwrap();
    let token = rt.path().join("replicator.token");
    std::fs::write(&token, REPLICATOR).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let primary_url = format!("http://{}", srv.grpc);
    let replica = start(
        rt.path(),
        &[
            "--role",
            "replica",
            "--node-id",
            "r1",
            "--primary",
            &primary_url,
            "--primary-token-file",
            &token.display().to_string(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let s = http(replica.http, "GET", "/v1/ha/status", Some(READER), None).json();
        if s["replication_error"].as_str().is_some_and(|e| !e.is_empty())
            || std::time::Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let why = status["replication_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("mode 0640") && status["connected_to_primary"] == false,
        "{status}"
    );
    refused += 1;

    // 5. A unary call with no request message: INVALID_ARGUMENT (tonic says INTERNAL).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", srv.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<
        aerodb_proto::v1::GetRecordRequest,
        aerodb_proto::v1::GetRecordResponse,
    > = tonic_prost::ProstCodec::default();
    let req = with_token(
        futures_util::stream::empty::<aerodb_proto::v1::GetRecordRequest>(),
        READER,
    );
    let status = grpc
        .client_streaming(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static("/aerodb.v1.Ledger/GetRecord"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Two request messages: INVALID_ARGUMENT too (tonic read the first and dropped the second).
    let codec: tonic_prost::ProstCodec<
        aerodb_proto::v1::GetRecordRequest,
        aerodb_proto::v1::GetRecordResponse,
    > = tonic_prost::ProstCodec::default();
    let two = futures_util::stream::iter(vec![
        aerodb_proto::v1::GetRecordRequest { commit_id: 1 },
        aerodb_proto::v1::GetRecordRequest { commit_id: 2 },
    ]);
    grpc.ready().await.unwrap();
    let status = grpc
        .client_streaming(
            with_token(two, READER),
            tonic::codegen::http::uri::PathAndQuery::from_static("/aerodb.v1.Ledger/GetRecord"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    report_figure(
        "security details",
        &format!(
            "{refused} unsafe configurations refused (tokens 0644, TLS replica to http://, replicator token 0640); \
             data dir 0700, key 0600; unary call without a message or with two: INVALID_ARGUMENT"
        ),
    );
}

/// Runs the server in `dir` and returns (whether it exited on its own within `secs`, what it printed).
fn run_briefly(dir: &std::path::Path, extra: &[&str], secs: u64) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb-server"))
        .args(["--data-dir", &dir.join("data").display().to_string()])
        .args(["--tokens-file", &dir.join("tokens.toml").display().to_string()])
        .args(["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (true, String::from_utf8_lossy(&out.stderr).to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (false, String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn a_failed_startup_check_refuses_to_start_unless_downgraded() {
    let tmp = TempDir::new("startup-check");
    let mut srv = start(tmp.path(), &[]);
    for i in 0..20 {
        let body = format!(r#"{{"tenant":"t","event":"e{i}"}}"#);
        assert_eq!(
            http(srv.http, "POST", "/v1/records", Some(WRITER), Some(&body)).status,
            201
        );
    }
    assert!(srv.terminate().success());
    // The last two frames of the log zeroed: the log reads a clean end, but the final checkpoint (and the index)
    // cover them — the startup check fails.
    let mut segs: Vec<_> = std::fs::read_dir(srv.data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let seg = segs.last().unwrap();
    let mut b = std::fs::read(seg).unwrap();
    let mut offs = Vec::new();
    let mut pos = aerodb_wal::format::SEGMENT_HEADER_LEN;
    while let Ok(h) = aerodb_wal::format::decode_frame_header(&b[pos..], 1 << 24) {
        offs.push(pos);
        pos += h.frame_len();
    }
    let from = offs[offs.len() - 2];
    b[from..pos].fill(0);
    std::fs::write(seg, &b).unwrap();
    let (exited, err) = run_briefly(tmp.path(), &[], 20);
    assert!(
        exited && (err.contains("startup integrity check failed") || err.contains("the log lost records")),
        "{err}"
    );
    // Downgraded: it starts, and says loudly what failed.
    let (exited, err) = run_briefly(tmp.path(), &["--fail-on-startup-check", "false"], 3);
    assert!(!exited, "did not keep running: {err}");
    assert!(err.contains("STARTUP INTEGRITY CHECK FAILED"), "{err}");
    report_figure(
        "--fail-on-startup-check",
        "the log's last frames gone under a checkpoint covering them: refused to start by default; runs (and \
         says so) with --fail-on-startup-check false",
    );
}

/// A token limited to tenants (`tenants = ["acme"]` in the tokens file) writes and reads only acme's records and
/// keys, on both APIs; records of other tenants, their keys and proofs of their records are PERMISSION_DENIED, and
/// so is a scan of every tenant's records. Roots and consistency proofs carry no tenant data and stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limited_to_a_tenant_sees_and_writes_only_that_tenant() {
    use aerodb_proto::v1 as pb;
    let tmp = TempDir::new("tenant-tokens");
    let srv = start(tmp.path(), &["--checkpoint-every-records", "1"]);
    let h = srv.http;
    let put = |tenant: &str, v: &str| {
        format!(r#"{{"tenant":"{tenant}","ops":[{{"op":"put","key":"k","value":"{v}"}}]}}"#)
    };
    let post = |token: &str, body: &str| http(h, "POST", "/v1/records", Some(token), Some(body)).status;
    let get = |token: &str, path: &str| http(h, "GET", path, Some(token), None).status;
    let mut checks = 0;
    // Writes.
    assert_eq!(post(WRITER, &put("globex", "g")), 201); // record 1
    assert_eq!(post(ACME_WRITER, &put("acme", "a")), 201); // record 2
    assert_eq!(post(ACME_WRITER, &put("globex", "x")), 403);
    let mixed = r#"{"records":[{"tenant":"acme","event":"e"},{"tenant":"globex","event":"e"}]}"#;
    assert_eq!(
        http(h, "POST", "/v1/records/batch", Some(ACME_WRITER), Some(mixed)).status,
        403
    );
    checks += 4;
    // Reads.
    for (path, want) in [
        ("/v1/kv/k?tenant=acme", 200),
        ("/v1/kv/k?tenant=globex", 403),
        ("/v1/kv/k/history?tenant=globex", 403),
        ("/v1/kv?tenant=globex", 403),
        ("/v1/records/2", 200),
        ("/v1/records/1", 403),
        ("/v1/records?tenant=acme", 200),
        ("/v1/records?tenant=globex", 403),
        ("/v1/records", 403),
        ("/v1/proofs/inclusion?commit_id=2&tree_size=2", 200),
        ("/v1/proofs/inclusion?commit_id=1&tree_size=2", 403),
        ("/v1/proofs/consistency?old_size=1&new_size=2", 200),
        ("/v1/checkpoints/latest", 200),
    ] {
        assert_eq!(get(ACME_READER, path), want, "{path}");
        checks += 1;
    }
    // The unlimited reader sees both.
    assert_eq!(get(READER, "/v1/records/1"), 200);
    assert_eq!(get(READER, "/v1/records"), 200);
    // Nothing of the refused writes is in the log.
    let all = http(h, "GET", "/v1/records", Some(READER), None).json();
    assert_eq!(all["records"].as_array().unwrap().len(), 2);
    // gRPC: the same rules.
    let mut c = srv.grpc().await;
    fn denied<T>(r: Result<tonic::Response<T>, tonic::Status>) -> bool {
        matches!(r, Err(s) if s.code() == tonic::Code::PermissionDenied)
    }
    let r = c
        .get_key(with_token(
            pb::GetKeyRequest {
                key: b"k".to_vec(),
                at: None,
                tenant: "globex".into(),
            },
            ACME_READER,
        ))
        .await;
    assert!(denied(r));
    let r = c
        .scan_records(with_token(
            pb::ScanRecordsRequest {
                from: 1,
                limit: 10,
                tenant: None,
            },
            ACME_READER,
        ))
        .await;
    assert!(denied(r));
    let page = c
        .scan_records(with_token(
            pb::ScanRecordsRequest {
                from: 1,
                limit: 10,
                tenant: Some("acme".into()),
            },
            ACME_READER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.records.iter().map(|r| r.commit_id).collect::<Vec<_>>(),
        vec![2]
    );
    let r = c
        .append(with_token(
            pb::AppendRequest {
                record: Some(pb::NewRecord {
                    tenant: "globex".into(),
                    payload: Some(pb::new_record::Payload::Event(b"x".to_vec())),
                }),
                prove: false,
            },
            ACME_WRITER,
        ))
        .await;
    assert!(denied(r));
    let r = c
        .get_record(with_token(pb::GetRecordRequest { commit_id: 1 }, ACME_READER))
        .await;
    assert!(denied(r));
    checks += 5;
    report_figure(
        "tenant-limited tokens",
        &format!("{checks} REST and gRPC requests: acme's token wrote and read only acme, the rest PERMISSION_DENIED"),
    );
}
