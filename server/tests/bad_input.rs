//! T14: a table of bad inputs against the real server, each asserting the exact HTTP status and error code (REST)
//! or gRPC status code. None may produce a 500 / INTERNAL, and the server must stay healthy afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use aerodb_proto::v1 as pb;
use bytes::{Buf, BufMut};
use common::*;
use tonic::{codec::Codec, Code};

/// A codec that sends raw bytes as the request message, to put malformed protobuf on the wire.
#[derive(Default, Clone)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// A gRPC client over a new connection to `addr`, ready for a call.
async fn raw_client(addr: std::net::SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

async fn raw_grpc(addr: std::net::SocketAddr, method: &str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = raw_client(addr).await;
    let path: tonic::codegen::http::uri::PathAndQuery = method.parse().unwrap();
    match grpc.unary(with_token(body, WRITER), path, RawCodec).await {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(s) => s,
    }
}

/// Sends raw `messages` on one `AppendStream` call: how many were answered before the stream ended, and how it
/// ended (`Code::Ok` for a clean end).
async fn raw_append_stream(addr: std::net::SocketAddr, messages: Vec<Vec<u8>>) -> (usize, Code) {
    let mut grpc = raw_client(addr).await;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/aerodb.v1.Ledger/AppendStream");
    let req = with_token(tokio_stream::iter(messages), WRITER);
    let mut answers = match grpc.streaming(req, path, RawCodec).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (0, s.code()),
    };
    let mut n = 0;
    loop {
        match answers.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, Code::Ok),
            Err(s) => return (n, s.code()),
        }
    }
}

/// The protobuf bytes of a good append.
fn good_append() -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::AppendRequest {
        record: Some(pb::NewRecord {
            tenant: "t".into(),
            payload: Some(pb::new_record::Payload::Event(b"fine".to_vec())),
        }),
        prove: false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_precise_error_and_the_server_stays_healthy() {
    let tmp = TempDir::new("t14");
    let srv = start(
        tmp.path(),
        &["--max-request-bytes", "65536", "--checkpoint-interval-ms", "50"],
    );
    let h = srv.http;
    // Some data to point at: 3 records.
    for i in 0..3 {
        let r = http(
            h,
            "POST",
            "/v1/records",
            Some(WRITER),
            Some(&format!(
                r#"{{"tenant":"t","ops":[{{"op":"put","key":"k","value":"v{i}"}}]}}"#
            )),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    // A checkpoint exists before the proof cases.
    assert_eq!(http(h, "POST", "/v1/checkpoints", Some(ADMIN), None).status, 201);

    let long = "x".repeat(2000);
    let big_body = format!(r#"{{"tenant":"t","event":"{}"}}"#, "y".repeat(70_000));
    let post = |body: &str| http(h, "POST", "/v1/records", Some(WRITER), Some(body));
    let get = |path: &str| http(h, "GET", path, Some(READER), None);
    let mut cases: Vec<(&str, Resp, u16, &str)> = vec![
        ("malformed JSON", post("{"), 400, "INVALID_ARGUMENT"),
        ("JSON array instead of object", post("[]"), 400, "INVALID_ARGUMENT"),
        ("tenant of the wrong type", post(r#"{"tenant":5,"event":"x"}"#), 400, "INVALID_ARGUMENT"),
        ("no payload", post(r#"{"tenant":"t"}"#), 400, "INVALID_ARGUMENT"),
        ("ops and event together", post(r#"{"tenant":"t","ops":[],"event":"x"}"#), 400, "INVALID_ARGUMENT"),
        ("empty batch", post(r#"{"tenant":"t","ops":[]}"#), 400, "INVALID_ARGUMENT"),
        ("empty tenant", post(r#"{"tenant":"","event":"x"}"#), 400, "INVALID_ARGUMENT"),
        ("oversized tenant", post(&format!(r#"{{"tenant":"{}","event":"x"}}"#, "t".repeat(200))), 400, "INVALID_ARGUMENT"),
        ("empty key", post(r#"{"tenant":"t","ops":[{"op":"put","key":"","value":"v"}]}"#), 400, "INVALID_ARGUMENT"),
        ("oversized key", post(&format!(r#"{{"tenant":"t","ops":[{{"op":"put","key":"{long}","value":"v"}}]}}"#)), 400, "INVALID_ARGUMENT"),
        ("unknown op kind", post(r#"{"tenant":"t","ops":[{"op":"frob","key":"k"}]}"#), 400, "INVALID_ARGUMENT"),
        ("put without a value", post(r#"{"tenant":"t","ops":[{"op":"put","key":"k"}]}"#), 400, "INVALID_ARGUMENT"),
        ("put with value and value_base64", post(r#"{"tenant":"t","ops":[{"op":"put","key":"k","value":"a","value_base64":"YQ=="}]}"#), 400, "INVALID_ARGUMENT"),
        ("delete with a value", post(r#"{"tenant":"t","ops":[{"op":"delete","key":"k","value":"a"}]}"#), 400, "INVALID_ARGUMENT"),
        ("invalid base64 value", post(r#"{"tenant":"t","ops":[{"op":"put","key":"k","value_base64":"%%%"}]}"#), 400, "INVALID_ARGUMENT"),
        ("invalid base64 event", post(r#"{"tenant":"t","event_base64":"not base64!"}"#), 400, "INVALID_ARGUMENT"),
        ("unknown field", post(r#"{"tenant":"t","event":"x","extra":1}"#), 400, "INVALID_ARGUMENT"),
        ("duplicate key in one batch", post(r#"{"tenant":"t","ops":[{"op":"put","key":"k","value":"a"},{"op":"delete","key":"k"}]}"#), 400, "INVALID_ARGUMENT"),
        ("value of the wrong type", post(r#"{"tenant":"t","ops":[{"op":"put","key":"k","value":7}]}"#), 400, "INVALID_ARGUMENT"),
        ("body over max_request_bytes", post(&big_body), 413, "PAYLOAD_TOO_LARGE"),
        ("text/plain body", raw(h, format!("POST /v1/records HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {WRITER}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes()), 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("no content type", raw(h, format!("POST /v1/records HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {WRITER}\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes()), 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("invalid UTF-8 in the JSON body", {
            let body: &[u8] = b"{\"tenant\":\"t\",\"event\":\"\xff\xfe\"}";
            raw(h, &[format!("POST /v1/records HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {WRITER}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(), body].concat())
        }, 400, "INVALID_ARGUMENT"),
        ("prove=maybe", http(h, "POST", "/v1/records?prove=maybe", Some(WRITER), Some(r#"{"tenant":"t","event":"x"}"#)), 400, "INVALID_ARGUMENT"),
        ("unknown query parameter on append", http(h, "POST", "/v1/records?fast=1", Some(WRITER), Some(r#"{"tenant":"t","event":"x"}"#)), 400, "INVALID_ARGUMENT"),
        ("empty batch of records", http(h, "POST", "/v1/records/batch", Some(WRITER), Some(r#"{"records":[]}"#)), 400, "INVALID_ARGUMENT"),
        ("batch with a bad record", http(h, "POST", "/v1/records/batch", Some(WRITER), Some(r#"{"records":[{"tenant":"t","event":"x"},{"tenant":""}]}"#)), 400, "INVALID_ARGUMENT"),
        ("CommitId 0", get("/v1/records/0"), 400, "INVALID_ARGUMENT"),
        ("CommitId not a number", get("/v1/records/abc"), 400, "INVALID_ARGUMENT"),
        ("negative CommitId", get("/v1/records/-1"), 400, "INVALID_ARGUMENT"),
        ("CommitId beyond the tip", get("/v1/records/999999"), 404, "NOT_FOUND"),
        ("CommitId overflowing u64", get("/v1/records/18446744073709551616"), 400, "INVALID_ARGUMENT"),
        ("query on a route without parameters", get("/v1/records/1?x=1"), 400, "INVALID_ARGUMENT"),
        ("invalid UTF-8 in a path key", get("/v1/kv/%FF%FE?tenant=t"), 400, "INVALID_ARGUMENT"),
        ("missing key", get("/v1/kv/missing?tenant=t"), 404, "NOT_FOUND"),
        ("a key read without its tenant", get("/v1/kv/k"), 400, "INVALID_ARGUMENT"),
        ("a 9 KiB request target", get(&format!("/v1/kv/k?tenant=t&pad={}", "a".repeat(9 << 10))), 414, "URI_TOO_LONG"),
        (
            "150 headers",
            raw(h, format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n", (0..150).map(|i| format!("X-Pad-{i}: 1\r\n")).collect::<String>()).as_bytes()),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            "20 KiB of headers",
            raw(h, format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n", "b".repeat(20 << 10)).as_bytes()),
            431,
            "HEADERS_TOO_LARGE",
        ),
        ("a tenant with a control character", get("/v1/kv/k?tenant=a%01b"), 400, "INVALID_ARGUMENT"),
        ("records page over the maximum", get("/v1/records?limit=5000"), 400, "INVALID_ARGUMENT"),
        ("at=0", get("/v1/kv/k?tenant=t&at=0"), 400, "INVALID_ARGUMENT"),
        ("at not a number", get("/v1/kv/k?tenant=t&at=abc"), 400, "INVALID_ARGUMENT"),
        ("at beyond the tip", get("/v1/kv/k?tenant=t&at=99999"), 400, "OUT_OF_RANGE"),
        ("oversized key in the path", get(&format!("/v1/kv/{long}?tenant=t")), 400, "INVALID_ARGUMENT"),
        ("scan limit over the maximum", get("/v1/kv?tenant=t&limit=20000"), 400, "INVALID_ARGUMENT"),
        ("scan limit not a number", get("/v1/kv?tenant=t&limit=ten"), 400, "INVALID_ARGUMENT"),
        ("inclusion proof without commit_id", get("/v1/proofs/inclusion"), 400, "INVALID_ARGUMENT"),
        ("inclusion proof of CommitId 0", get("/v1/proofs/inclusion?commit_id=0"), 400, "INVALID_ARGUMENT"),
        ("inclusion proof of a record beyond the tree", get("/v1/proofs/inclusion?commit_id=3&tree_size=2"), 400, "OUT_OF_RANGE"),
        ("inclusion proof in a tree beyond the log", get("/v1/proofs/inclusion?commit_id=1&tree_size=99999"), 400, "OUT_OF_RANGE"),
        ("inclusion proof in tree size 0", get("/v1/proofs/inclusion?commit_id=1&tree_size=0"), 400, "INVALID_ARGUMENT"),
        ("consistency from a larger to a smaller tree", get("/v1/proofs/consistency?old_size=3&new_size=2"), 400, "OUT_OF_RANGE"),
        ("consistency from size 0", get("/v1/proofs/consistency?old_size=0&new_size=2"), 400, "INVALID_ARGUMENT"),
        ("consistency to a tree beyond the log", get("/v1/proofs/consistency?old_size=1&new_size=99999"), 400, "OUT_OF_RANGE"),
        ("consistency without old_size", get("/v1/proofs/consistency?new_size=2"), 400, "INVALID_ARGUMENT"),
        ("malformed percent-encoding", get("/v1/kv?tenant=t&prefix=%zz"), 400, "INVALID_ARGUMENT"),
        ("repeated query parameter", get("/v1/kv/k?tenant=t&at=1&at=2"), 400, "INVALID_ARGUMENT"),
        ("no token", http(h, "GET", "/v1/records/1", None, None), 401, "UNAUTHENTICATED"),
        ("unknown token", http(h, "GET", "/v1/records/1", Some("not-a-real-token-at-all"), None), 401, "UNAUTHENTICATED"),
        ("Basic instead of Bearer", raw(h, b"GET /v1/records/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n"), 401, "UNAUTHENTICATED"),
        ("reader appends", http(h, "POST", "/v1/records", Some(READER), Some(r#"{"tenant":"t","event":"x"}"#)), 403, "PERMISSION_DENIED"),
        ("writer signs a checkpoint", http(h, "POST", "/v1/checkpoints", Some(WRITER), None), 403, "PERMISSION_DENIED"),
        ("replicator scrapes metrics", http(h, "GET", "/metrics", Some(REPLICATOR), None), 403, "PERMISSION_DENIED"),
        ("metrics without a token", http(h, "GET", "/metrics", None, None), 401, "UNAUTHENTICATED"),
        ("unknown route", get("/v2/anything"), 404, "NOT_FOUND"),
        ("DELETE on records", http(h, "DELETE", "/v1/records", Some(WRITER), None), 405, "METHOD_NOT_ALLOWED"),
        ("PUT on a key", http(h, "PUT", "/v1/kv/k?tenant=t", Some(WRITER), Some("{}")), 405, "METHOD_NOT_ALLOWED"),
    ];
    let mut failures = Vec::new();
    let n_rest = cases.len();
    for (name, resp, status, code) in cases.drain(..) {
        let got_code = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if resp.status != status || got_code != code {
            failures.push(format!(
                "REST {name}: got {} {got_code:?} ({}), want {status} {code}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
    }

    // gRPC.
    let mut c = srv.grpc().await;
    let rec = |tenant: &str, payload: Option<pb::new_record::Payload>| pb::AppendRequest {
        record: Some(pb::NewRecord {
            tenant: tenant.into(),
            payload,
        }),
        prove: false,
    };
    let put = |k: &[u8], v: &[u8], delete: bool| {
        Some(pb::new_record::Payload::Batch(pb::Batch {
            ops: vec![pb::Op {
                key: k.to_vec(),
                value: v.to_vec(),
                delete,
            }],
        }))
    };
    let grpc_cases: Vec<(&str, Code, Code)> = vec![
        (
            "append without a record",
            c.append(with_token(
                pb::AppendRequest {
                    record: None,
                    prove: false,
                },
                WRITER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "append without a payload",
            c.append(with_token(rec("t", None), WRITER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "delete with a value",
            c.append(with_token(rec("t", put(b"k", b"v", true)), WRITER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "empty tenant",
            c.append(with_token(rec("", put(b"k", b"v", false)), WRITER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "empty key",
            c.append(with_token(rec("t", put(b"", b"v", false)), WRITER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "empty batch append",
            c.append_batch(with_token(pb::AppendBatchRequest { records: vec![] }, WRITER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "record 0",
            c.get_record(with_token(pb::GetRecordRequest { commit_id: 0 }, READER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "record beyond the tip",
            c.get_record(with_token(pb::GetRecordRequest { commit_id: 1 << 40 }, READER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::NotFound,
        ),
        (
            "get of an empty key",
            c.get_key(with_token(
                pb::GetKeyRequest {
                    key: vec![],
                    at: None,
                    tenant: "t".into(),
                },
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "get without a tenant",
            c.get_key(with_token(
                pb::GetKeyRequest {
                    key: b"k".to_vec(),
                    at: None,
                    tenant: String::new(),
                },
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "get at beyond the tip",
            c.get_key(with_token(
                pb::GetKeyRequest {
                    key: b"k".to_vec(),
                    at: Some(1 << 40),
                    tenant: "t".into(),
                },
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::OutOfRange,
        ),
        (
            "inclusion in a tree beyond the log",
            c.inclusion_proof(with_token(
                pb::InclusionProofRequest {
                    commit_id: 1,
                    tree_size: 1 << 40,
                },
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::OutOfRange,
        ),
        (
            "consistency backwards",
            c.consistency_proof(with_token(
                pb::ConsistencyProofRequest {
                    old_size: 3,
                    new_size: 2,
                },
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::OutOfRange,
        ),
        (
            "scan limit over the maximum",
            c.scan(with_token(
                pb::ScanRequest {
                    prefix: vec![],
                    limit: 1_000_000,
                    tenant: "t".into(),
                },
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::InvalidArgument,
        ),
        (
            "no token",
            c.get_record(tonic::Request::new(pb::GetRecordRequest { commit_id: 1 }))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::Unauthenticated,
        ),
        (
            "reader appends",
            c.append(with_token(rec("t", put(b"k", b"v", false)), READER))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code()),
            Code::PermissionDenied,
        ),
        (
            "message over max_request_bytes",
            c.append(with_token(
                rec("t", Some(pb::new_record::Payload::Event(vec![1u8; 70_000]))),
                WRITER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::ResourceExhausted,
        ),
        (
            "truncated protobuf",
            raw_grpc(srv.grpc, "/aerodb.v1.Ledger/Append", vec![0x0a, 0x10, 0x0a])
                .await
                .code(),
            Code::InvalidArgument,
        ),
        (
            "protobuf with an invalid wire type",
            raw_grpc(srv.grpc, "/aerodb.v1.Ledger/GetRecord", vec![0x0f, 0x01])
                .await
                .code(),
            Code::InvalidArgument,
        ),
        (
            "append stream: truncated protobuf after a good append",
            match raw_append_stream(srv.grpc, vec![good_append(), vec![0x0a, 0x10, 0x0a]]).await {
                (1, code) => code,
                (n, code) => panic!("{n} answers before {code:?}"),
            },
            Code::InvalidArgument,
        ),
        (
            "append stream: a request without a record after a good append",
            match raw_append_stream(srv.grpc, vec![good_append(), Vec::new(), good_append()]).await {
                (1, code) => code,
                (n, code) => panic!("{n} answers before {code:?}"),
            },
            Code::InvalidArgument,
        ),
        (
            "append stream: a message over max_request_bytes",
            raw_append_stream(
                srv.grpc,
                vec![prost::Message::encode_to_vec(&rec(
                    "t",
                    Some(pb::new_record::Payload::Event(vec![1u8; 70_000])),
                ))],
            )
            .await
            .1,
            Code::ResourceExhausted,
        ),
        (
            "append stream: reader token",
            c.append_stream(with_token(
                tokio_stream::iter(vec![rec("t", put(b"k", b"v", false))]),
                READER,
            ))
            .await
            .err()
            .map_or(Code::Ok, |s| s.code()),
            Code::PermissionDenied,
        ),
        (
            "unknown method",
            raw_grpc(srv.grpc, "/aerodb.v1.Ledger/DropTable", vec![])
                .await
                .code(),
            Code::Unimplemented,
        ),
    ];
    let n_grpc = grpc_cases.len();
    for (name, got, want) in grpc_cases {
        if got != want {
            failures.push(format!("gRPC {name}: got {got:?}, want {want:?}"));
        }
    }

    // Still healthy, still writing.
    let health = http(h, "GET", "/v1/health", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["writable"], true);
    assert_eq!(post(r#"{"tenant":"t","event":"after the storm"}"#).status, 201);
    let metrics = String::from_utf8(http(h, "GET", "/metrics", Some(READER), None).body).unwrap();
    assert!(
        !metrics.contains("code=\"INTERNAL\""),
        "an INTERNAL error was counted:\n{metrics}"
    );
    report_figure(
        "T14 bad input (REST + gRPC)",
        &format!(
            "{} cases ({n_rest} REST, {n_grpc} gRPC), {} wrong status, 0 INTERNAL, server healthy after",
            n_rest + n_grpc,
            failures.len()
        ),
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(n_rest + n_grpc >= 50);
}
