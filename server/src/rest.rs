//! The REST/JSON API (axum). Every input is parsed by hand from the raw body, path and query, so every bad input
//! gets the JSON error envelope with a precise status — axum's own plain-text rejections never reach a client.
//! Routes and schemas: `GET /v1/openapi.json` (`server/openapi.json`).

use std::{collections::HashMap, sync::Arc};

use aerodb_engine::{merkle, NewRecord, Op, Payload, SignedCheckpoint, StoredRecord};
use axum::{
    body::Bytes as BodyBytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, Path, RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use bytes::Bytes;
use hex::encode as hex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    auth::Action,
    error::{ApiError, ApiResult, Code},
    node::Node,
};

type Shared = State<Arc<Node>>;

/// The REST router.
pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.max_request_bytes;
    Router::new()
        .route("/v1/records", post(append))
        .route("/v1/records/batch", post(append_batch))
        .route("/v1/records/{commit_id}", get(get_record))
        .route("/v1/kv", get(scan))
        .route("/v1/kv/{key}", get(get_key))
        .route("/v1/kv/{key}/history", get(history))
        .route("/v1/proofs/inclusion", get(inclusion))
        .route("/v1/proofs/consistency", get(consistency))
        .route("/v1/checkpoints/latest", get(latest_checkpoint))
        .route("/v1/checkpoints", post(checkpoint_now))
        .route("/v1/health", get(health))
        .route("/v1/ha/status", get(ha_status))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(node.clone(), gate))
        .with_state(node)
}

/// The action a POST route needs, for the routes that take a body.
fn body_route(method: &axum::http::Method, path: &str) -> Option<Action> {
    if method != axum::http::Method::POST {
        return None;
    }
    match path {
        "/v1/records" | "/v1/records/batch" => Some(Action::Write),
        "/v1/checkpoints" => Some(Action::Admin),
        _ => None,
    }
}

/// Before a request body is read: the caller is authenticated and allowed, the content type is exactly JSON,
/// no content encoding is declared, a declared length over `max_request_bytes` is refused at once (413), and
/// the body must then arrive within `header_timeout_ms`. So an unauthenticated client never gets its body
/// buffered, and a slow one cannot hold the buffer.
async fn gate(State(node): Shared, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(action) = body_route(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let checked = (|| {
        authorize(&node, req.headers(), action)?;
        if req.uri().path() == "/v1/checkpoints" {
            return Ok(());
        }
        content_type_is_json(req.headers())?;
        if let Some(enc) = req.headers().get(header::CONTENT_ENCODING) {
            let enc = enc.to_str().unwrap_or("?");
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(ApiError::new(
                    Code::UnsupportedMediaType,
                    format!("Content-Encoding {enc:?} is not supported; send the body unencoded"),
                ));
            }
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > node.config.max_request_bytes as u64) {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "the declared body of {} bytes exceeds max_request_bytes ({})",
                    declared.unwrap_or(0),
                    node.config.max_request_bytes
                ),
            ));
        }
        Ok(())
    })();
    if let Err(e) = checked {
        return finish(&node, 0, Err(e));
    }
    let (parts, body) = req.into_parts();
    let limit = node.config.max_request_bytes;
    let read = tokio::time::timeout(node.config.header_timeout, axum::body::to_bytes(body, limit)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            // axum reports the limit as its body's `LengthLimitError` ("length limit exceeded").
            let too_large = format!("{e:?}").contains("LengthLimit");
            let err = if too_large {
                ApiError::new(
                    Code::PayloadTooLarge,
                    "the request body exceeds max_request_bytes",
                )
            } else {
                ApiError::invalid(format!("could not read the body: {e}"))
            };
            return finish(&node, 0, Err(err));
        }
        Err(_) => {
            return finish(
                &node,
                0,
                Err(ApiError::new(
                    Code::DeadlineExceeded,
                    format!(
                    "the request body did not arrive within {} ms (header_timeout_ms); nothing was written",
                    node.config.header_timeout.as_millis()
                ),
                )),
            )
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// The content type is `application/json`, with at most a `charset=utf-8` parameter.
fn content_type_is_json(headers: &HeaderMap) -> ApiResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = ct.split(';').map(str::trim);
    let essence_ok = parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("application/json"));
    let params_ok = parts.all(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("charset")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
    });
    if essence_ok && params_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::UnsupportedMediaType,
            format!("the body must be application/json (got {ct:?})"),
        ))
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn finish(node: &Node, ok_status: u16, r: ApiResult<Value>) -> Response {
    match r {
        Ok(v) => {
            node.metrics.request("rest", "OK");
            json_response(ok_status, &v)
        }
        Err(e) => {
            node.metrics.request("rest", e.code.as_str());
            if e.code == Code::Internal {
                tracing::error!(message = %e.message, "internal error answering a REST request");
            }
            let mut resp = json_response(e.code.http_status(), &e.to_json());
            if let Some(ms) = e.retry_after_ms {
                // Whole seconds, at least one.
                let secs = ms.div_ceil(1000).max(1);
                if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            resp
        }
    }
}

fn authorize(node: &Node, headers: &HeaderMap, action: Action) -> ApiResult<()> {
    node.authorize(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()), action)
        .map(|_| ())
}

/// Parses a query string strictly: known parameters only, each at most once, percent-decoded UTF-8.
fn query(raw: Option<String>, allowed: &[&str]) -> ApiResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    let Some(raw) = raw else { return Ok(out) };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {k:?}; this route takes {allowed:?}"
            )));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::invalid(format!("query parameter {k:?} is given twice")));
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> ApiResult<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hexval = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::invalid("malformed percent-encoding in the query"))?;
                out.push(hexval);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid("the query is not valid UTF-8"))
}

fn number(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("{name} must be a non-negative integer, got {v:?}")))
        })
        .transpose()
}

fn required(q: &HashMap<String, String>, name: &str) -> ApiResult<u64> {
    number(q, name)?.ok_or_else(|| ApiError::invalid(format!("the query parameter {name} is required")))
}

fn path_param(p: Result<Path<String>, axum::extract::rejection::PathRejection>) -> ApiResult<String> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::invalid(format!("bad path parameter: {}", e.body_text())))
}

fn body(b: Result<BodyBytes, BytesRejection>, headers: &HeaderMap) -> ApiResult<Bytes> {
    content_type_is_json(headers)?;
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                Code::PayloadTooLarge,
                "the request body exceeds max_request_bytes",
            )
        } else {
            ApiError::invalid(format!("could not read the body: {}", e.body_text()))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpIn {
    op: String,
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn {
    tenant: String,
    ops: Option<Vec<OpIn>>,
    event: Option<String>,
    event_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    records: Vec<RecordIn>,
}

fn b64(field: &str, s: &str) -> ApiResult<Bytes> {
    B64.decode(s)
        .map(Bytes::from)
        .map_err(|e| ApiError::invalid(format!("{field} is not valid base64: {e}")))
}

fn payload_of(r: RecordIn) -> ApiResult<NewRecord> {
    let payload = match (r.ops, r.event, r.event_base64) {
        (Some(ops), None, None) => {
            let mut out = Vec::with_capacity(ops.len());
            for (i, o) in ops.into_iter().enumerate() {
                let key = Bytes::from(o.key.into_bytes());
                out.push(match (o.op.as_str(), o.value, o.value_base64) {
                    ("put", Some(v), None) => Op::Put {
                        key,
                        value: Bytes::from(v.into_bytes()),
                    },
                    ("put", None, Some(v)) => Op::Put {
                        key,
                        value: b64("value_base64", &v)?,
                    },
                    ("put", None, None) => {
                        return Err(ApiError::invalid(format!(
                            "ops[{i}]: a put needs value or value_base64"
                        )))
                    }
                    ("put", Some(_), Some(_)) => {
                        return Err(ApiError::invalid(format!(
                            "ops[{i}]: give value or value_base64, not both"
                        )))
                    }
                    ("delete", None, None) => Op::Delete { key },
                    ("delete", _, _) => {
                        return Err(ApiError::invalid(format!("ops[{i}]: a delete takes no value")))
                    }
                    (other, _, _) => {
                        return Err(ApiError::invalid(format!(
                            "ops[{i}]: unknown op {other:?}; expected \"put\" or \"delete\""
                        )))
                    }
                });
            }
            Payload::Batch(out)
        }
        (None, Some(e), None) => Payload::Event(Bytes::from(e.into_bytes())),
        (None, None, Some(e)) => Payload::Event(b64("event_base64", &e)?),
        (None, None, None) => return Err(ApiError::invalid("a record needs ops, event or event_base64")),
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of ops, event and event_base64",
            ))
        }
    };
    Ok(NewRecord {
        tenant: r.tenant,
        payload,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(b).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn bytes_field(name: &str, b: &[u8]) -> (String, Value) {
    match std::str::from_utf8(b) {
        Ok(s) => (name.to_owned(), Value::String(s.to_owned())),
        Err(_) => (format!("{name}_base64"), Value::String(B64.encode(b))),
    }
}

fn record_json(r: &StoredRecord) -> Value {
    let rec = &r.record;
    let mut v = json!({
        "commit_id": rec.commit_id.0,
        "epoch": rec.epoch.0,
        "timestamp_ms": rec.timestamp_ms,
        "tenant": rec.tenant,
        "prev_hash": hex(rec.prev_hash),
        "record_hash": hex(r.hash),
        "leaf_hash": hex(merkle::leaf_hash(&r.hash)),
        "canonical_base64": B64.encode(&r.canonical),
    });
    match &rec.payload {
        Payload::Batch(ops) => {
            let ops: Vec<Value> = ops
                .iter()
                .map(|op| {
                    let mut o = serde_json::Map::new();
                    let (kn, kv) = bytes_field("key", op.key());
                    o.insert(kn, kv);
                    match op {
                        Op::Put { value, .. } => {
                            o.insert("op".into(), "put".into());
                            let (vn, vv) = bytes_field("value", value);
                            o.insert(vn, vv);
                        }
                        Op::Delete { .. } => {
                            o.insert("op".into(), "delete".into());
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            v["ops"] = Value::Array(ops);
        }
        Payload::Event(e) => {
            let (n, val) = bytes_field("event", e);
            v[n] = val;
        }
    }
    v
}

fn checkpoint_json(c: &SignedCheckpoint) -> Value {
    json!({
        "origin": c.checkpoint.origin,
        "size": c.checkpoint.size,
        "root": hex(c.checkpoint.root),
        "epoch": c.checkpoint.epoch.0,
        "note": c.note,
    })
}

fn receipt_json(r: &aerodb_engine::Receipt) -> Value {
    let mut m = serde_json::Map::with_capacity(3);
    m.insert("commit_id".into(), r.commit_id.0.into());
    m.insert("record_hash".into(), hex(r.record_hash).into());
    m.insert("leaf_index".into(), r.leaf_index.into());
    Value::Object(m)
}

fn flag(q: &HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match q.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(v) => Err(ApiError::invalid(format!(
            "{name} must be true or false, got {v:?}"
        ))),
    }
}

async fn append(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    b: Result<BodyBytes, BytesRejection>,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Write)?;
        let q = query(raw, &["prove"])?;
        let prove = flag(&q, "prove")?;
        let rec = payload_of(parse_json::<RecordIn>(&body(b, &headers)?)?)?;
        let out = node.append(rec.tenant, rec.payload, prove).await?;
        let mut v = receipt_json(&out.receipt);
        if let Some((cp, proof)) = out.proof {
            v["checkpoint"] = checkpoint_json(&cp);
            v["proof"] = json!({
                "leaf_index": proof.leaf_index,
                "tree_size": proof.tree_size,
                "hashes": proof.hashes.iter().map(hex).collect::<Vec<_>>(),
            });
        }
        Ok(v)
    }
    .await;
    finish(&node, 201, r)
}

async fn append_batch(
    State(node): Shared,
    headers: HeaderMap,
    b: Result<BodyBytes, BytesRejection>,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Write)?;
        let batch: BatchIn = parse_json(&body(b, &headers)?)?;
        let records = batch
            .records
            .into_iter()
            .map(payload_of)
            .collect::<ApiResult<Vec<_>>>()?;
        let receipts = node.append_batch(records).await?;
        Ok(json!({ "receipts": receipts.iter().map(receipt_json).collect::<Vec<_>>() }))
    }
    .await;
    finish(&node, 201, r)
}

fn commit_id_param(s: &str) -> ApiResult<u64> {
    s.parse::<u64>()
        .map_err(|_| ApiError::invalid(format!("the CommitId must be a positive integer, got {s:?}")))
}

async fn get_record(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        query(raw, &[])?;
        let id = commit_id_param(&path_param(p)?)?;
        Ok(record_json(&node.record(id).await?))
    }
    .await;
    finish(&node, 200, r)
}

async fn get_key(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["at"])?;
        let key = path_param(p)?;
        let at = number(&q, "at")?;
        let (value, at) = node.get(Bytes::from(key.clone().into_bytes()), at).await?;
        let value = value.ok_or_else(|| {
            ApiError::new(
                Code::NotFound,
                format!("key {key:?} has no value at CommitId {at}"),
            )
        })?;
        let mut v = json!({ "key": key, "at": at });
        let (n, val) = bytes_field("value", &value);
        v[n] = val;
        Ok(v)
    }
    .await;
    finish(&node, 200, r)
}

async fn history(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        query(raw, &[])?;
        let key = path_param(p)?;
        let versions = node.history(Bytes::from(key.clone().into_bytes())).await?;
        let versions: Vec<Value> = versions
            .iter()
            .map(|ver| {
                let mut o = json!({ "commit_id": ver.commit_id.0, "deleted": ver.value.is_none() });
                if let Some(val) = &ver.value {
                    let (n, x) = bytes_field("value", val);
                    o[n] = x;
                }
                o
            })
            .collect();
        Ok(json!({ "key": key, "versions": versions }))
    }
    .await;
    finish(&node, 200, r)
}

async fn scan(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["prefix", "limit"])?;
        let prefix = q.get("prefix").cloned().unwrap_or_default();
        let limit = number(&q, "limit")?.unwrap_or(100);
        let limit = u32::try_from(limit).map_err(|_| ApiError::invalid("limit is too large"))?;
        let items = node.scan(Bytes::from(prefix.into_bytes()), limit).await?;
        let items: Vec<Value> = items
            .iter()
            .map(|(k, v)| {
                let mut o = serde_json::Map::new();
                let (kn, kv) = bytes_field("key", k);
                let (vn, vv) = bytes_field("value", v);
                o.insert(kn, kv);
                o.insert(vn, vv);
                Value::Object(o)
            })
            .collect();
        Ok(json!({ "items": items }))
    }
    .await;
    finish(&node, 200, r)
}

async fn inclusion(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["commit_id", "tree_size"])?;
        let commit = required(&q, "commit_id")?;
        let size = number(&q, "tree_size")?;
        if size == Some(0) {
            return Err(ApiError::invalid("tree_size must be at least 1"));
        }
        let inc = node.inclusion(commit, size).await?;
        let mut v = json!({
            "leaf_index": inc.proof.leaf_index,
            "tree_size": inc.proof.tree_size,
            "hashes": inc.proof.hashes.iter().map(hex).collect::<Vec<_>>(),
            "record": record_json(&inc.record),
        });
        if let Some(cp) = &inc.checkpoint {
            v["checkpoint"] = checkpoint_json(cp);
        }
        Ok(v)
    }
    .await;
    finish(&node, 200, r)
}

async fn consistency(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["old_size", "new_size"])?;
        let old = required(&q, "old_size")?;
        let new = number(&q, "new_size")?;
        if new == Some(0) {
            return Err(ApiError::invalid("new_size must be at least 1"));
        }
        let (old, new, hashes) = node.consistency(old, new).await?;
        Ok(json!({
            "old_size": old,
            "new_size": new,
            "hashes": hashes.iter().map(hex).collect::<Vec<_>>(),
        }))
    }
    .await;
    finish(&node, 200, r)
}

async fn latest_checkpoint(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        query(raw, &[])?;
        Ok(checkpoint_json(&node.latest_checkpoint().await?))
    }
    .await;
    finish(&node, 200, r)
}

async fn checkpoint_now(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Admin)?;
        query(raw, &[])?;
        Ok(checkpoint_json(&node.checkpoint_now().await?))
    }
    .await;
    finish(&node, 201, r)
}

async fn health(State(node): Shared) -> Response {
    let (status, writable, serving) = node.health();
    let code = if serving { 200 } else { 503 };
    finish(
        &node,
        code,
        Ok(json!({ "status": status, "writable": writable, "serving": serving })),
    )
}

async fn ha_status(State(node): Shared, headers: HeaderMap) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let s = node.ha_status().await?;
        Ok(json!({
            "node_id": s.node_id,
            "role": s.role,
            "state": s.state,
            "epoch": s.epoch,
            "leader_id": s.leader_id,
            "leader_url": s.leader_url,
            "is_leader": s.is_leader,
            "lease_ms": 0,
            "expires_in_ms": 0,
            "commit_id": s.commit_id,
            "applied_commit_id": s.applied_commit_id,
            "replicas": s.replicas,
            "write_block_active": s.write_block_active,
            "can_accept_protected_writes": s.can_accept_protected_writes,
            "halt_reason": s.halt_reason,
            "connected_to_primary": s.connected_to_primary,
            "primary_commit_id": s.primary_commit_id,
            "replication_error": s.replication_error,
        }))
    }
    .await;
    finish(&node, 200, r)
}

async fn openapi(State(node): Shared) -> Response {
    node.metrics.request("rest", "OK");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

async fn metrics(State(node): Shared, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&node, &headers, Action::Metrics) {
        return finish(&node, 200, Err(e));
    }
    node.metrics.request("rest", "OK");
    let text = node.metrics.render(&node.engine_figures());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn not_found(State(node): Shared, uri: axum::http::Uri) -> Response {
    finish(
        &node,
        200,
        Err(ApiError::new(Code::NotFound, format!("no route {}", uri.path()))),
    )
}

async fn method_not_allowed(
    State(node): Shared,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    finish(
        &node,
        200,
        Err(ApiError::new(
            Code::MethodNotAllowed,
            format!("{method} is not allowed on {}", uri.path()),
        )),
    )
}

/// Used by the OpenAPI test: every route the router serves.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/records"),
    ("post", "/v1/records/batch"),
    ("get", "/v1/records/{commit_id}"),
    ("get", "/v1/kv"),
    ("get", "/v1/kv/{key}"),
    ("get", "/v1/kv/{key}/history"),
    ("get", "/v1/proofs/inclusion"),
    ("get", "/v1/proofs/consistency"),
    ("get", "/v1/checkpoints/latest"),
    ("post", "/v1/checkpoints"),
    ("get", "/v1/health"),
    ("get", "/v1/ha/status"),
    ("get", "/v1/openapi.json"),
    ("get", "/metrics"),
];
