//! The OpenAPI document is generated from the code, committed, and true: `GET /v1/openapi.json` equals the
//! committed `server/openapi.json` (run with `AERODB_BLESS_OPENAPI=1` to rewrite it after an API change), and
//! live answers of every route — successes and errors — are validated against the schema the document gives for
//! that route and status, with a JSON Schema validator. A status a route answers but the document does not list
//! fails the test.

mod common;

use std::collections::BTreeSet;

use common::{http, start, TempDir, ADMIN, READER, WRITER};
use serde_json::{json, Value};

/// The schema the document gives for `method path` answering `status` (JSON bodies), with the document's
/// components attached so its `$ref`s resolve.
fn schema_for(doc: &Value, method: &str, path: &str, status: u16) -> Option<Value> {
    let resp = &doc["paths"][path][method]["responses"][status.to_string()];
    if resp.is_null() {
        return None;
    }
    let content = resp["content"].as_object()?;
    let schema = content.get("application/json").map(|c| c["schema"].clone())?;
    let mut root = json!({ "allOf": [schema] });
    root["components"] = doc["components"].clone();
    Some(root)
}

#[test]
fn the_document_is_generated_committed_and_every_live_answer_matches_it() {
    let tmp = TempDir::new("openapi");
    let server = start(tmp.path(), &["--checkpoint-every-records", "2"]);
    let h = server.http;
    let served = http(h, "GET", "/v1/openapi.json", None, None);
    assert_eq!(served.status, 200);
    let served_text = String::from_utf8(served.body.clone()).unwrap();
    let committed_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("AERODB_BLESS_OPENAPI").is_some() {
        std::fs::write(&committed_path, &served_text).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    assert!(
        committed == served_text,
        "server/openapi.json is not what the server serves; rerun with AERODB_BLESS_OPENAPI=1 and commit it"
    );
    let doc: Value = serde_json::from_str(&served_text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // Every error code the server has is in the document's enum.
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["Code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "SYNC_REPLICAS_UNAVAILABLE",
        "OUTCOME_UNKNOWN",
        "RESOURCE_EXHAUSTED",
        "METHOD_NOT_ALLOWED",
    ] {
        assert!(codes.contains(c), "{c} missing from the Code enum: {codes:?}");
    }

    // Data to read back: a key, an event, a non-UTF-8 value, a checkpoint.
    let writes = [
        r#"{"tenant":"acme","ops":[{"op":"put","key":"invoice/42","value":"v1"}]}"#,
        r#"{"tenant":"acme","event":"shipped"}"#,
        r#"{"tenant":"acme","ops":[{"op":"put","key":"bin","value_base64":"/wA="},{"op":"delete","key":"gone"}]}"#,
    ];
    for w in writes {
        assert_eq!(http(h, "POST", "/v1/records", Some(WRITER), Some(w)).status, 201);
    }

    // (method, template, concrete path, token, body, expected status)
    type Case<'a> = (&'a str, &'a str, String, Option<&'a str>, Option<&'a str>, u16);
    let record = r#"{"tenant":"acme","event":"x"}"#;
    let cases: Vec<Case<'_>> = vec![
        (
            "post",
            "/v1/records",
            "/v1/records".into(),
            Some(WRITER),
            Some(record),
            201,
        ),
        (
            "post",
            "/v1/records",
            "/v1/records?prove=true".into(),
            Some(WRITER),
            Some(record),
            201,
        ),
        (
            "post",
            "/v1/records",
            "/v1/records".into(),
            None,
            Some(record),
            401,
        ),
        (
            "post",
            "/v1/records",
            "/v1/records".into(),
            Some(READER),
            Some(record),
            403,
        ),
        (
            "post",
            "/v1/records",
            "/v1/records".into(),
            Some(WRITER),
            Some(r#"{"tenant":"acme"}"#),
            400,
        ),
        (
            "post",
            "/v1/records",
            "/v1/records?x=1".into(),
            Some(WRITER),
            Some(record),
            400,
        ),
        (
            "post",
            "/v1/records/batch",
            "/v1/records/batch".into(),
            Some(WRITER),
            Some(r#"{"records":[{"tenant":"a","event":"1"},{"tenant":"b","event":"2"}]}"#),
            201,
        ),
        (
            "post",
            "/v1/records/batch",
            "/v1/records/batch".into(),
            Some(WRITER),
            Some(r#"{"records":[]}"#),
            400,
        ),
        (
            "get",
            "/v1/records/{commit_id}",
            "/v1/records/1".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/records/{commit_id}",
            "/v1/records/2".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/records/{commit_id}",
            "/v1/records/3".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/records/{commit_id}",
            "/v1/records/999".into(),
            Some(READER),
            None,
            404,
        ),
        (
            "get",
            "/v1/records/{commit_id}",
            "/v1/records/abc".into(),
            Some(READER),
            None,
            400,
        ),
        (
            "get",
            "/v1/records/{commit_id}",
            "/v1/records/1".into(),
            None,
            None,
            401,
        ),
        (
            "get",
            "/v1/kv",
            "/v1/kv?tenant=acme&prefix=inv&limit=5".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/kv",
            "/v1/kv?tenant=acme".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/kv",
            "/v1/kv?tenant=acme&limit=x".into(),
            Some(READER),
            None,
            400,
        ),
        (
            "get",
            "/v1/kv/{key}",
            "/v1/kv/invoice%2F42?tenant=acme".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/kv/{key}",
            "/v1/kv/bin?tenant=acme".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/kv/{key}",
            "/v1/kv/nope?tenant=acme".into(),
            Some(READER),
            None,
            404,
        ),
        (
            "get",
            "/v1/kv/{key}/history",
            "/v1/kv/invoice%2F42/history?tenant=acme".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/kv/{key}/history",
            "/v1/kv/gone/history?tenant=acme".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/proofs/inclusion",
            "/v1/proofs/inclusion?commit_id=1".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/proofs/inclusion",
            "/v1/proofs/inclusion?commit_id=1&tree_size=0".into(),
            Some(READER),
            None,
            400,
        ),
        (
            "get",
            "/v1/proofs/inclusion",
            "/v1/proofs/inclusion".into(),
            Some(READER),
            None,
            400,
        ),
        (
            "get",
            "/v1/proofs/consistency",
            "/v1/proofs/consistency?old_size=1&new_size=2".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/proofs/consistency",
            "/v1/proofs/consistency?old_size=5&new_size=2".into(),
            Some(READER),
            None,
            400,
        ),
        (
            "get",
            "/v1/checkpoints/latest",
            "/v1/checkpoints/latest".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "post",
            "/v1/checkpoints",
            "/v1/checkpoints".into(),
            Some(ADMIN),
            None,
            201,
        ),
        (
            "post",
            "/v1/checkpoints",
            "/v1/checkpoints".into(),
            Some(WRITER),
            None,
            403,
        ),
        (
            "post",
            "/v1/checkpoints",
            "/v1/checkpoints?x=1".into(),
            Some(ADMIN),
            None,
            400,
        ),
        ("get", "/v1/health", "/v1/health".into(), None, None, 200),
        (
            "get",
            "/v1/ha/status",
            "/v1/ha/status".into(),
            Some(READER),
            None,
            200,
        ),
        ("get", "/v1/ha/status", "/v1/ha/status".into(), None, None, 401),
        (
            "get",
            "/v1/openapi.json",
            "/v1/openapi.json".into(),
            None,
            None,
            200,
        ),
        ("get", "/metrics", "/metrics".into(), Some(READER), None, 200),
        ("get", "/metrics", "/metrics".into(), None, None, 401),
        (
            "put",
            "/v1/records",
            "/v1/records".into(),
            Some(READER),
            None,
            405,
        ),
        ("post", "/v1/health", "/v1/health".into(), None, None, 405),
        (
            "get",
            "/v1/records/{commit_id}",
            format!("/v1/records/1?pad={}", "a".repeat(9 << 10)),
            Some(READER),
            None,
            414,
        ),
        (
            "get",
            "/v1/records",
            "/v1/records?from=2&limit=2".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/records",
            "/v1/records?tenant=acme".into(),
            Some(READER),
            None,
            200,
        ),
        (
            "get",
            "/v1/records",
            "/v1/records?limit=5000".into(),
            Some(READER),
            None,
            400,
        ),
        ("get", "/v1/kv/{key}", "/v1/kv/x".into(), Some(READER), None, 400),
    ];
    let mut covered = BTreeSet::new();
    let mut validated = 0;
    for (method, template, path, token, body, want) in &cases {
        let r = http(h, &method.to_uppercase(), path, *token, *body);
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, *want, "{method} {path}: {text}");
        // A 405 is documented on the operation that exists on the path (any method).
        let op_method = if *want == 405 {
            doc["paths"][*template]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone()
        } else {
            (*method).to_owned()
        };
        let documented = &doc["paths"][*template][&op_method]["responses"][want.to_string()];
        assert!(
            !documented.is_null(),
            "{method} {template} answers {want}, which the document does not list"
        );
        if *want != 405 {
            covered.insert(((*method).to_owned(), (*template).to_owned()));
        }
        let is_json = documented["content"].get("application/json").is_some();
        if !is_json {
            continue;
        }
        let schema = schema_for(&doc, &op_method, template, *want).unwrap();
        let value: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("the schema of {method} {template} {want} does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} → {want} does not match its schema: {errors:?}\n{text}"
        );
        validated += 1;
    }
    // Every route the router serves was exercised.
    for (method, path) in aerodb_server::rest::ROUTES {
        assert!(
            covered.contains(&((*method).to_owned(), (*path).to_owned())),
            "no case exercises {method} {path}"
        );
        assert!(
            doc["paths"][*path][*method].is_object(),
            "the document lacks {method} {path}"
        );
        assert!(
            doc["paths"][*path][*method]["operationId"].is_string(),
            "{method} {path} has no operationId"
        );
    }
    // The request schemas say what the server takes: exactly one of ops/event/event_base64, a put with one value.
    let mut req = json!({ "$ref": "#/components/schemas/BatchIn" });
    req["components"] = doc["components"].clone();
    let v = jsonschema::draft202012::new(&req).unwrap();
    let mut tried = 0;
    for (body, accepted) in [
        (r#"{"records":[{"tenant":"t","event":"e"}]}"#, true),
        (
            r#"{"records":[{"tenant":"t","ops":[{"op":"put","key":"k","value":"v"}]}]}"#,
            true,
        ),
        (
            r#"{"records":[{"tenant":"t","ops":[{"op":"delete","key":"k"}]}]}"#,
            true,
        ),
        (r#"{"records":[{"tenant":"t","event_base64":"AAE="}]}"#, true),
        (r#"{"records":[{"tenant":"t"}]}"#, false),
        (
            r#"{"records":[{"tenant":"t","event":"e","event_base64":"AAE="}]}"#,
            false,
        ),
        (
            r#"{"records":[{"tenant":"t","ops":[{"op":"put","key":"k"}]}]}"#,
            false,
        ),
        (
            r#"{"records":[{"tenant":"t","ops":[{"op":"put","key":"k","value":"v","value_base64":"AA=="}]}]}"#,
            false,
        ),
        (
            r#"{"records":[{"tenant":"t","ops":[{"op":"delete","key":"k","value":"v"}]}]}"#,
            false,
        ),
        (r#"{"records":[{"tenant":"t","event":"e","extra":1}]}"#, false),
        (r#"{"records":[]}"#, false),
    ] {
        let instance: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v.is_valid(&instance), accepted, "schema on {body}");
        let r = http(h, "POST", "/v1/records/batch", Some(WRITER), Some(body));
        assert_eq!(
            r.status == 201,
            accepted,
            "server on {body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        tried += 1;
    }
    validated += tried;

    // The validator can fail: a receipt without its record hash is refused.
    let receipt_schema = schema_for(&doc, "post", "/v1/records/batch", 201).unwrap();
    let v = jsonschema::draft202012::new(&receipt_schema).unwrap();
    assert!(!v.is_valid(&json!({"receipts": [{"commit_id": 1, "leaf_index": 0}]})));
    assert!(!v.is_valid(&json!({"receipts": [{"commit_id": 1, "leaf_index": 0, "record_hash": "XYZ"}]})));
    common::report_figure(
        "openapi",
        &format!(
            "{} routes, {} live answers validated against the generated document ({} cases)",
            covered.len(),
            validated,
            cases.len()
        ),
    );
}
