//! The REST/JSON API (axum). Every input is parsed by hand from the raw body, path and query, so every bad input
//! gets the JSON error envelope with a precise status — axum's own plain-text rejections never reach a client.
//! Routes and schemas: `GET /v1/openapi.json`, generated from the types in [`crate::openapi`] and the
//! `#[utoipa::path]` of each handler (committed as `server/openapi.json`).

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

use crate::{
    auth::{Action, Caller},
    error::{ApiError, ApiResult, Code},
    node::{HaStatus, Node},
    openapi::{
        AppendOut, BatchIn, BatchOut, CheckpointOut, ConsistencyOut, ErrorOut, HealthOut, HexHash,
        HistoryOut, InclusionOut, ItemOut, KeyBytes, KeyValueOut, OpKind, OpOut, ProofOut, ReceiptOut,
        RecordIn, RecordOut, RecordsOut, ScanOut, ValueBytes, VersionOut,
    },
};

type Shared = State<Arc<Node>>;

/// The REST router.
pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.max_request_bytes;
    Router::new()
        .route("/v1/records", post(append).get(list_records))
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
        .route("/witness/add-checkpoint", post(witness_add_checkpoint))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(node.clone(), gate))
        .layer(axum::middleware::from_fn_with_state(node.clone(), head_limits))
        .with_state(node)
}

/// The longest request target (path and query) the REST API reads.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// The most headers a REST request may carry.
pub const MAX_HEADERS: usize = 100;
/// The most header bytes (names and values) a REST request may carry.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// Every request, before routing: a target over [`MAX_URI_BYTES`] is 414 and headers over [`MAX_HEADERS`] or
/// [`MAX_HEADER_BYTES`] are 431, with the JSON error envelope. (The HTTP layer reads up to 4× these before it
/// answers on its own, without a body; a request line it cannot parse gets its bare 400.)
async fn head_limits(
    State(node): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return finish::<()>(
            &node,
            0,
            Err(ApiError::new(
                Code::UriTooLong,
                format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES}"),
            )),
        );
    }
    let h = req.headers();
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if h.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return finish::<()>(
            &node,
            0,
            Err(ApiError::new(
                Code::HeadersTooLarge,
                format!(
                    "{} headers of {bytes} bytes; the limits are {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
                    h.len()
                ),
            )),
        );
    }
    next.run(req).await
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
        let declared = declared_length(req.headers());
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
        return finish::<()>(&node, 0, Err(e));
    }
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, node.config.max_request_bytes, node.config.header_timeout).await {
        Ok(b) => b,
        Err(e) => {
            let err = match e {
                BodyError::TooLarge => ApiError::new(
                    Code::PayloadTooLarge,
                    "the request body exceeds max_request_bytes",
                ),
                BodyError::Unreadable(e) => ApiError::invalid(format!("could not read the body: {e}")),
                BodyError::TooSlow => ApiError::new(
                    Code::DeadlineExceeded,
                    format!(
                        "the request body did not arrive within {} ms (header_timeout_ms); nothing was written",
                        node.config.header_timeout.as_millis()
                    ),
                ),
            };
            return finish::<()>(&node, 0, Err(err));
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Why a request body was not read ([`read_body`]).
enum BodyError {
    /// Declared or found larger than the limit.
    TooLarge,
    /// The connection failed while reading it.
    Unreadable(String),
    /// It did not arrive within the time allowed.
    TooSlow,
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a body of at most `limit` bytes within `timeout`: a declared length over the limit is refused before
/// anything is read, and a body that turns out longer stops being read at the limit.
async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        // axum reports the limit as its body's `LengthLimitError` ("length limit exceeded").
        Ok(Err(e)) if format!("{e:?}").contains("LengthLimit") => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(BodyError::Unreadable(e.to_string())),
        Err(_) => Err(BodyError::TooSlow),
    }
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

fn json_response(status: u16, body: &impl serde::Serialize) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match serde_json::to_string(body) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            ApiError::new(Code::Internal, format!("encoding the answer: {e}"))
                .to_body()
                .error
                .message,
        )
            .into_response(),
    }
}

fn finish<T: serde::Serialize>(node: &Node, ok_status: u16, r: ApiResult<T>) -> Response {
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
            let mut resp = json_response(e.code.http_status(), &e.to_body());
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

fn authorize(node: &Node, headers: &HeaderMap, action: Action) -> ApiResult<Caller> {
    node.authorize(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()), action)
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
                out.push(match (o.op, o.value, o.value_base64) {
                    (OpKind::Put, Some(v), None) => Op::Put {
                        key,
                        value: Bytes::from(v.into_bytes()),
                    },
                    (OpKind::Put, None, Some(v)) => Op::Put {
                        key,
                        value: b64("value_base64", &v)?,
                    },
                    (OpKind::Put, None, None) => {
                        return Err(ApiError::invalid(format!(
                            "ops[{i}]: a put needs value or value_base64"
                        )))
                    }
                    (OpKind::Put, Some(_), Some(_)) => {
                        return Err(ApiError::invalid(format!(
                            "ops[{i}]: give value or value_base64, not both"
                        )))
                    }
                    (OpKind::Delete, None, None) => Op::Delete { key },
                    (OpKind::Delete, _, _) => {
                        return Err(ApiError::invalid(format!("ops[{i}]: a delete takes no value")))
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

/// Bytes as text when they are UTF-8, else as base64: `(text, base64)`.
fn text_or_b64(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(B64.encode(b))),
    }
}

fn key_bytes(b: &[u8]) -> KeyBytes {
    let (key, key_base64) = text_or_b64(b);
    KeyBytes { key, key_base64 }
}

fn value_bytes(b: &[u8]) -> ValueBytes {
    let (value, value_base64) = text_or_b64(b);
    ValueBytes { value, value_base64 }
}

fn record_out(r: &StoredRecord) -> RecordOut {
    let rec = &r.record;
    let (mut ops, mut event, mut event_base64) = (None, None, None);
    match &rec.payload {
        Payload::Batch(list) => {
            ops = Some(
                list.iter()
                    .map(|op| OpOut {
                        op: match op {
                            Op::Put { .. } => OpKind::Put,
                            Op::Delete { .. } => OpKind::Delete,
                        },
                        key: key_bytes(op.key()),
                        value: match op {
                            Op::Put { value, .. } => value_bytes(value),
                            Op::Delete { .. } => ValueBytes::default(),
                        },
                    })
                    .collect(),
            );
        }
        Payload::Event(e) => (event, event_base64) = text_or_b64(e),
    }
    RecordOut {
        commit_id: rec.commit_id.0,
        epoch: rec.epoch.0,
        timestamp_ms: rec.timestamp_ms,
        tenant: rec.tenant.clone(),
        prev_hash: HexHash::of(&rec.prev_hash),
        record_hash: HexHash::of(&r.hash),
        leaf_hash: HexHash::of(&merkle::leaf_hash(&r.hash)),
        canonical_base64: B64.encode(&r.canonical),
        ops,
        event,
        event_base64,
    }
}

fn checkpoint_out(c: &SignedCheckpoint) -> CheckpointOut {
    checkpoint_with(c, Vec::new())
}

fn checkpoint_with(c: &SignedCheckpoint, witnesses: Vec<String>) -> CheckpointOut {
    CheckpointOut {
        witnesses,
        origin: c.checkpoint.origin.clone(),
        size: c.checkpoint.size,
        root: HexHash::of(&c.checkpoint.root),
        epoch: c.checkpoint.epoch.0,
        note: c.note.clone(),
    }
}

fn receipt_out(r: &aerodb_engine::Receipt) -> ReceiptOut {
    ReceiptOut {
        commit_id: r.commit_id.0,
        record_hash: HexHash::of(&r.record_hash),
        leaf_index: r.leaf_index,
    }
}

fn hashes_out(h: &[merkle::Hash]) -> Vec<HexHash> {
    h.iter().map(HexHash::of).collect()
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

/// Append one record; durable before the answer.
#[utoipa::path(
    post,
    path = "/v1/records",
    operation_id = "append",
    tag = "write",
    params(("prove" = Option<bool>, Query, description = "also return a checkpoint covering the record and its inclusion proof")),
    request_body(content = RecordIn, content_type = "application/json"),
    responses(
        (status = 201, description = "appended and durable", body = AppendOut),
        (status = 400, description = "INVALID_ARGUMENT: a bad body, field or query parameter; nothing written", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED: no or an unknown token (checked before the body is read)", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED: the token's role may not write", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED: another method on this path", body = ErrorOut),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body (declared or read) or the record is over the limit", body = ErrorOut),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: not exactly application/json, or a Content-Encoding", body = ErrorOut),
        (status = 429, description = "RESOURCE_EXHAUSTED: too many appends in flight; retry_after_ms and Retry-After say when; nothing written", body = ErrorOut),
        (status = 500, description = "INTERNAL: a fault inside the server", body = ErrorOut),
        (status = 503, description = "NOT_LEADER (with leader_url), LOG_FAILED, HALTED, SYNC_REPLICAS_UNAVAILABLE (nothing written), OUTCOME_UNKNOWN (with commit_id: look it up before writing again), UNAVAILABLE", body = ErrorOut),
        (status = 504, description = "DEADLINE_EXCEEDED: not written in time (nothing written) or the body did not arrive", body = ErrorOut),
    ),
)]
pub(crate) async fn append(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    b: Result<BodyBytes, BytesRejection>,
) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Write)?;
        let q = query(raw, &["prove"])?;
        let prove = flag(&q, "prove")?;
        let rec = payload_of(parse_json::<RecordIn>(&body(b, &headers)?)?)?;
        caller.may_use_tenant(&rec.tenant)?;
        let out = node.append(rec.tenant, rec.payload, prove).await?;
        let (checkpoint, proof) = match out.proof {
            Some((cp, p)) => (
                Some(checkpoint_out(&cp)),
                Some(ProofOut {
                    leaf_index: p.leaf_index,
                    tree_size: p.tree_size,
                    hashes: hashes_out(&p.hashes),
                }),
            ),
            None => (None, None),
        };
        Ok(AppendOut {
            receipt: receipt_out(&out.receipt),
            checkpoint,
            proof,
        })
    }
    .await;
    finish(&node, 201, r)
}

/// Append several records as consecutive CommitIds in one durable write.
#[utoipa::path(
    post,
    path = "/v1/records/batch",
    operation_id = "appendBatch",
    tag = "write",
    request_body(content = BatchIn, content_type = "application/json"),
    responses(
        (status = 201, description = "all appended and durable", body = BatchOut),
        (status = 400, description = "INVALID_ARGUMENT: a bad body or record (the whole batch is refused; nothing written)", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorOut),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE", body = ErrorOut),
        (status = 429, description = "RESOURCE_EXHAUSTED (retry_after_ms); nothing written", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "NOT_LEADER, LOG_FAILED, HALTED, SYNC_REPLICAS_UNAVAILABLE, OUTCOME_UNKNOWN (commit_id..last_commit_id), UNAVAILABLE", body = ErrorOut),
        (status = 504, description = "DEADLINE_EXCEEDED", body = ErrorOut),
    ),
)]
pub(crate) async fn append_batch(
    State(node): Shared,
    headers: HeaderMap,
    b: Result<BodyBytes, BytesRejection>,
) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Write)?;
        let batch: BatchIn = parse_json(&body(b, &headers)?)?;
        let records = batch
            .records
            .into_iter()
            .map(payload_of)
            .collect::<ApiResult<Vec<_>>>()?;
        for r in &records {
            caller.may_use_tenant(&r.tenant)?;
        }
        let receipts = node.append_batch(records).await?;
        Ok(BatchOut {
            receipts: receipts.iter().map(receipt_out).collect(),
        })
    }
    .await;
    finish(&node, 201, r)
}

fn commit_id_param(s: &str) -> ApiResult<u64> {
    s.parse::<u64>()
        .map_err(|_| ApiError::invalid(format!("the CommitId must be a positive integer, got {s:?}")))
}

/// Records in CommitId order, a page at a time: every tenant's, or one tenant's.
#[utoipa::path(
    get,
    path = "/v1/records",
    operation_id = "listRecords",
    tag = "read",
    params(
        ("from" = Option<u64>, Query, description = "the first CommitId (default 1)"),
        ("limit" = Option<u32>, Query, maximum = 1000, description = "at most this many (default 100)"),
        ("tenant" = Option<String>, Query, description = "only this tenant's records (a token limited to tenants must give one)"),
    ),
    responses(
        (status = 200, description = "a page of records; `next_from` continues it (0: no more now)", body = RecordsOut),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED: another tenant's records, or every tenant's with a token limited to some", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn list_records(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["from", "limit", "tenant"])?;
        let from = number(&q, "from")?.unwrap_or(1);
        let limit = number(&q, "limit")?.unwrap_or(100);
        let limit = u32::try_from(limit).map_err(|_| ApiError::invalid("limit is too large"))?;
        let (recs, next_from) = node
            .records(&caller, from, limit, q.get("tenant").cloned())
            .await?;
        Ok(RecordsOut {
            records: recs.iter().map(record_out).collect(),
            next_from,
        })
    }
    .await;
    finish(&node, 200, r)
}

/// One record by CommitId.
#[utoipa::path(
    get,
    path = "/v1/records/{commit_id}",
    operation_id = "getRecord",
    tag = "read",
    params(("commit_id" = u64, Path, minimum = 1, description = "the record's CommitId")),
    responses(
        (status = 200, description = "the record", body = RecordOut),
        (status = 400, description = "INVALID_ARGUMENT (not a number, an unknown query parameter) or OUT_OF_RANGE", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 404, description = "NOT_FOUND: the log does not hold it (yet)", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE: this node serves no reads", body = ErrorOut),
    ),
)]
pub(crate) async fn get_record(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Read)?;
        query(raw, &[])?;
        let id = commit_id_param(&path_param(p)?)?;
        Ok(record_out(&node.record(&caller, id).await?))
    }
    .await;
    finish(&node, 200, r)
}

/// A key's value, now or at a CommitId.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    operation_id = "getKey",
    tag = "read",
    params(
        ("key" = String, Path, description = "the key (percent-encoded), 1 to 1024 bytes"),
        ("tenant" = Option<String>, Query, description = "the tenant whose key space the key is in (required on a log of version-2 records; docs/formats.md)"),
        ("at" = Option<u64>, Query, description = "read as of this CommitId (default: the newest)"),
    ),
    responses(
        (status = 200, description = "the value", body = KeyValueOut),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 404, description = "NOT_FOUND: the key has no value at that CommitId", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn get_key(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["at", "tenant"])?;
        let key = path_param(p)?;
        let at = number(&q, "at")?;
        let tenant = q.get("tenant").cloned().unwrap_or_default();
        let (value, at) = node
            .get(&caller, tenant, Bytes::from(key.clone().into_bytes()), at)
            .await?;
        let value = value.ok_or_else(|| {
            ApiError::new(
                Code::NotFound,
                format!("key {key:?} has no value at CommitId {at}"),
            )
        })?;
        Ok(KeyValueOut {
            key,
            at,
            value: value_bytes(&value),
        })
    }
    .await;
    finish(&node, 200, r)
}

/// Every version of a key, oldest first.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}/history",
    operation_id = "keyHistory",
    tag = "read",
    params(
        ("key" = String, Path, description = "the key (percent-encoded)"),
        ("tenant" = Option<String>, Query, description = "the tenant whose key space the key is in (required on a log of version-2 records)"),
    ),
    responses(
        (status = 200, description = "its versions (empty: never written)", body = HistoryOut),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn history(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["tenant"])?;
        let key = path_param(p)?;
        let tenant = q.get("tenant").cloned().unwrap_or_default();
        let versions = node
            .history(&caller, tenant, Bytes::from(key.clone().into_bytes()))
            .await?;
        let versions = versions
            .iter()
            .map(|ver| VersionOut {
                commit_id: ver.commit_id.0,
                deleted: ver.value.is_none(),
                value: ver.value.as_deref().map(value_bytes).unwrap_or_default(),
            })
            .collect();
        Ok(HistoryOut { key, versions })
    }
    .await;
    finish(&node, 200, r)
}

/// Keys with a prefix and their current values, in key order.
#[utoipa::path(
    get,
    path = "/v1/kv",
    operation_id = "scanKeys",
    tag = "read",
    params(
        ("tenant" = Option<String>, Query, description = "the tenant whose keys to scan (required on a log of version-2 records)"),
        ("prefix" = Option<String>, Query, description = "only keys starting with this (default: all)"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "the keys", body = ScanOut),
        (status = 400, description = "INVALID_ARGUMENT", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn scan(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["prefix", "limit", "tenant"])?;
        let prefix = q.get("prefix").cloned().unwrap_or_default();
        let limit = number(&q, "limit")?.unwrap_or(100);
        let limit = u32::try_from(limit).map_err(|_| ApiError::invalid("limit is too large"))?;
        let tenant = q.get("tenant").cloned().unwrap_or_default();
        let items = node
            .scan(&caller, tenant, Bytes::from(prefix.into_bytes()), limit)
            .await?;
        Ok(ScanOut {
            items: items
                .iter()
                .map(|(k, v)| ItemOut {
                    key: key_bytes(k),
                    value: value_bytes(v),
                })
                .collect(),
        })
    }
    .await;
    finish(&node, 200, r)
}

/// A record with its inclusion proof (verify it against a signed checkpoint of `tree_size`).
#[utoipa::path(
    get,
    path = "/v1/proofs/inclusion",
    operation_id = "inclusionProof",
    tag = "proofs",
    params(
        ("commit_id" = u64, Query, minimum = 1, description = "the record"),
        ("tree_size" = Option<u64>, Query, minimum = 1, description = "the tree size (default: the newest checkpoint's)"),
    ),
    responses(
        (status = 200, description = "the record and its audit path", body = InclusionOut),
        (status = 400, description = "INVALID_ARGUMENT or OUT_OF_RANGE", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 404, description = "NOT_FOUND", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL (a proof that would not verify is never served)", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn inclusion(State(node): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let r = async {
        let caller = authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["commit_id", "tree_size"])?;
        let commit = required(&q, "commit_id")?;
        let size = number(&q, "tree_size")?;
        if size == Some(0) {
            return Err(ApiError::invalid("tree_size must be at least 1"));
        }
        let inc = node.inclusion(&caller, commit, size).await?;
        Ok(InclusionOut {
            leaf_index: inc.proof.leaf_index,
            tree_size: inc.proof.tree_size,
            hashes: hashes_out(&inc.proof.hashes),
            record: record_out(&inc.record),
            checkpoint: inc.checkpoint.as_ref().map(checkpoint_out),
        })
    }
    .await;
    finish(&node, 200, r)
}

/// A consistency proof between two tree sizes.
#[utoipa::path(
    get,
    path = "/v1/proofs/consistency",
    operation_id = "consistencyProof",
    tag = "proofs",
    params(
        ("old_size" = u64, Query, description = "the older size"),
        ("new_size" = Option<u64>, Query, minimum = 1, description = "the newer size (default: the newest checkpoint's)"),
    ),
    responses(
        (status = 200, description = "the proof", body = ConsistencyOut),
        (status = 400, description = "INVALID_ARGUMENT or OUT_OF_RANGE", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 404, description = "NOT_FOUND", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn consistency(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["old_size", "new_size"])?;
        let old = required(&q, "old_size")?;
        let new = number(&q, "new_size")?;
        if new == Some(0) {
            return Err(ApiError::invalid("new_size must be at least 1"));
        }
        let (old, new, hashes) = node.consistency(old, new).await?;
        Ok(ConsistencyOut {
            old_size: old,
            new_size: new,
            hashes: hashes_out(&hashes),
        })
    }
    .await;
    finish(&node, 200, r)
}

/// The newest signed checkpoint.
#[utoipa::path(
    get,
    path = "/v1/checkpoints/latest",
    operation_id = "latestCheckpoint",
    tag = "proofs",
    params(("cosigned" = Option<u32>, Query, maximum = 64, description = "the newest checkpoint with at least this many distinct witness cosignatures (404 if none yet)")),
    responses(
        (status = 200, description = "the checkpoint", body = CheckpointOut),
        (status = 400, description = "INVALID_ARGUMENT (a query parameter)", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 404, description = "NOT_FOUND: none signed yet, or none with the cosignatures asked for", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "HALTED or UNAVAILABLE", body = ErrorOut),
    ),
)]
pub(crate) async fn latest_checkpoint(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        let q = query(raw, &["cosigned"])?;
        let k = number(&q, "cosigned")?.unwrap_or(0);
        let k = usize::try_from(k)
            .ok()
            .filter(|k| *k <= crate::witness::MAX_WITNESSES)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "cosigned must be at most {}",
                    crate::witness::MAX_WITNESSES
                ))
            })?;
        let (cp, witnesses) = node.checkpoint_cosigned(k).await?;
        Ok(checkpoint_with(&cp, witnesses))
    }
    .await;
    finish(&node, 200, r)
}

/// Sign a checkpoint now (admin; the writable primary only).
#[utoipa::path(
    post,
    path = "/v1/checkpoints",
    operation_id = "checkpointNow",
    tag = "admin",
    responses(
        (status = 201, description = "signed", body = CheckpointOut),
        (status = 400, description = "INVALID_ARGUMENT (a query parameter)", body = ErrorOut),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED: not an admin token", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
        (status = 503, description = "NOT_LEADER (only the writable primary signs), LOG_FAILED, HALTED, UNAVAILABLE", body = ErrorOut),
        (status = 504, description = "DEADLINE_EXCEEDED", body = ErrorOut),
    ),
)]
pub(crate) async fn checkpoint_now(
    State(node): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Admin)?;
        query(raw, &[])?;
        Ok(checkpoint_out(&node.checkpoint_now().await?))
    }
    .await;
    finish(&node, 201, r)
}

/// Node health (no token needed).
#[utoipa::path(
    get,
    path = "/v1/health",
    operation_id = "health",
    tag = "status",
    security(()),
    responses(
        (status = 200, description = "serving", body = HealthOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 503, description = "not serving: halted, failed closed or stopped (the status says why)", body = HealthOut),
    ),
)]
pub(crate) async fn health(State(node): Shared) -> Response {
    let (status, writable, serving) = node.health();
    let code = if serving { 200 } else { 503 };
    finish(
        &node,
        code,
        Ok(HealthOut {
            status,
            writable,
            serving,
        }),
    )
}

/// Replication and authority status (answered even when halted: it says why).
#[utoipa::path(
    get,
    path = "/v1/ha/status",
    operation_id = "haStatus",
    tag = "status",
    responses(
        (status = 200, description = "the status", body = HaStatus),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
        (status = 500, description = "INTERNAL", body = ErrorOut),
    ),
)]
pub(crate) async fn ha_status(State(node): Shared, headers: HeaderMap) -> Response {
    let r = async {
        authorize(&node, &headers, Action::Read)?;
        node.ha_status().await
    }
    .await;
    finish(&node, 200, r)
}

/// C2SP `tlog-witness` `add-checkpoint`: cosign a checkpoint of this node's own log, or of a log given by
/// `--witness-logs`. The body is `old <size>`, up to 63 base64 consistency-proof lines, an empty line and the
/// signed note; the answer is `text/plain` cosignature lines (200), or 400 (malformed; old size above the
/// checkpoint's), 403 (no trusted signature), 404 (unknown origin), 409 (`text/x.tlog.size`: the size this
/// witness last cosigned; or a root other than the one cosigned at that size), 413 (body too large), 422
/// (consistency proof fails). Unauthenticated, as the protocol specifies: the checkpoint's signature is the
/// authentication.
#[utoipa::path(
    post,
    path = "/witness/add-checkpoint",
    operation_id = "witnessAddCheckpoint",
    tag = "witness",
    security(()),
    request_body(content = String, content_type = "text/plain", description = "old size line, proof lines, empty line, signed checkpoint note"),
    responses(
        (status = 200, description = "cosignature lines", content_type = "text/plain", body = String),
        (status = 400, description = "malformed request", content_type = "text/plain", body = String),
        (status = 403, description = "no signature by a trusted key of the log", content_type = "text/plain", body = String),
        (status = 404, description = "unknown log origin", content_type = "text/plain", body = String),
        (status = 409, description = "old size is not the latest cosigned size (body: that size), or a fork", content_type = "text/x.tlog.size", body = String),
        (status = 413, description = "body too large", content_type = "text/plain", body = String),
        (status = 422, description = "the consistency proof does not verify", content_type = "text/plain", body = String),
        (status = 500, description = "the witness state cannot be made durable; nothing was cosigned", content_type = "text/plain", body = String),
    ),
)]
pub(crate) async fn witness_add_checkpoint(State(node): Shared, req: axum::extract::Request) -> Response {
    use aerodb_engine::witness::{AddCheckpoint, WitnessError, MAX_REQUEST_BYTES};
    let text = |status: u16, ctype: &'static str, body: String| {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        node.metrics
            .request("witness", status.canonical_reason().unwrap_or("?"));
        (status, [(header::CONTENT_TYPE, ctype)], body).into_response()
    };
    let plain = "text/plain; charset=utf-8";
    let too_large = format!("the body is larger than {MAX_REQUEST_BYTES} bytes\n");
    if declared_length(req.headers()).is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        return text(413, plain, too_large);
    }
    let body = match read_body(req.into_body(), MAX_REQUEST_BYTES, node.config.header_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return text(413, plain, too_large),
        Err(BodyError::Unreadable(e)) => return text(400, plain, format!("could not read the body: {e}\n")),
        Err(BodyError::TooSlow) => return text(408, plain, "the body did not arrive in time\n".into()),
    };
    let req = match AddCheckpoint::parse(&body) {
        Ok(r) => r,
        Err(e) => return text(e.status(), plain, format!("{e}\n")),
    };
    let cosigning = node.cosigning.clone();
    let out = tokio::task::spawn_blocking(move || {
        cosigning
            .witness
            .add_checkpoint(&req, aerodb_engine::checkpoint::unix_now())
            .inspect(|_| {
                cosigning
                    .cosigned
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .map_err(|e| (e, req.note))
    })
    .await;
    match out {
        Ok(Ok(lines)) => text(200, plain, lines),
        Ok(Err((WitnessError::SizeConflict { latest, .. }, _))) => {
            text(409, "text/x.tlog.size", format!("{latest}\n"))
        }
        Ok(Err((e, note))) => {
            if e.is_evidence() {
                tracing::warn!(error = %e, %note, "witness: refused a checkpoint that is evidence of log misbehaviour");
            }
            text(e.status(), plain, format!("{e}\n"))
        }
        Err(e) => text(500, plain, format!("the witness task failed: {e}\n")),
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "status",
    security(()),
    responses(
        (status = 200, description = "the OpenAPI document", content_type = "application/json", body = Object),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
    ),
)]
pub(crate) async fn openapi(State(node): Shared) -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    node.metrics.request("rest", "OK");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(crate::openapi::document).clone(),
    )
        .into_response()
}

/// Prometheus metrics (text exposition 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "status",
    responses(
        (status = 200, description = "the metrics", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorOut),
        (status = 403, description = "PERMISSION_DENIED: the token's role may not read metrics", body = ErrorOut),
        (status = 405, description = "METHOD_NOT_ALLOWED", body = ErrorOut),
    ),
)]
pub(crate) async fn metrics(State(node): Shared, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&node, &headers, Action::Metrics) {
        return finish::<()>(&node, 200, Err(e));
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
    finish::<()>(
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
    finish::<()>(
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
    ("get", "/v1/records"),
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
