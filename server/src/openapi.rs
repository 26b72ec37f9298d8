//! The REST API's types and its OpenAPI document, generated from them (`utoipa`): the response types below are
//! what the handlers in [`crate::rest`] serialize, the request types are what they parse, and every route's
//! `#[utoipa::path]` names the statuses it can answer. `GET /v1/openapi.json` serves the document; the committed
//! `server/openapi.json` is checked equal to it by `server/tests/openapi.rs`, which also validates live responses
//! of every route against it.

use serde::{Deserialize, Serialize};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi, ToSchema,
};

use crate::error::Code;

/// A lower-case hex SHA-256 (64 digits).
#[derive(Serialize, ToSchema)]
#[schema(value_type = String, pattern = "^[0-9a-f]{64}$", example = "45891d22996825604eabd7768ba11bc7ce557e7e210acf8fdb24777e6ee7dd81")]
pub struct HexHash(pub String);

impl HexHash {
    /// The hex of `h`.
    #[must_use]
    pub fn of(h: &[u8; 32]) -> Self {
        Self(hex::encode(h))
    }
}

/// One put or delete in a new record.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpIn {
    /// `put` or `delete`.
    pub op: OpKind,
    /// The key (UTF-8, 1 to 1024 bytes).
    #[schema(min_length = 1, max_length = 1024)]
    pub key: String,
    /// With `put`: the value as UTF-8 text (give this or `value_base64`).
    #[serde(default)]
    pub value: Option<String>,
    /// With `put`: the value as standard base64 (give this or `value`).
    #[serde(default)]
    #[schema(format = Byte)]
    pub value_base64: Option<String>,
}

/// What an op does.
#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Set the key.
    Put,
    /// Remove the key.
    Delete,
}

/// A record to append: exactly one of `ops`, `event` and `event_base64`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    /// The tenant: 1 to 128 bytes of UTF-8, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub tenant: String,
    /// Puts and deletes applied atomically (1 to 4096).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 4096)]
    pub ops: Option<Vec<OpIn>>,
    /// An opaque event as UTF-8 text.
    #[serde(default)]
    pub event: Option<String>,
    /// An opaque event as standard base64.
    #[serde(default)]
    #[schema(format = Byte)]
    pub event_base64: Option<String>,
}

/// Several records appended as consecutive CommitIds in one durable write.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// The records (1 to 10,000).
    #[schema(min_items = 1, max_items = 10000)]
    pub records: Vec<RecordIn>,
}

/// What an append was given.
#[derive(Serialize, ToSchema)]
pub struct ReceiptOut {
    /// The record's CommitId.
    #[schema(minimum = 1)]
    pub commit_id: u64,
    /// SHA-256 of the record's canonical bytes.
    pub record_hash: HexHash,
    /// The record's Merkle leaf index (`commit_id - 1`).
    pub leaf_index: u64,
}

/// An inclusion proof (RFC 9162 audit path, leaf side first).
#[derive(Serialize, ToSchema)]
pub struct ProofOut {
    /// The leaf index (`commit_id - 1`).
    pub leaf_index: u64,
    /// The tree size the proof is for.
    #[schema(minimum = 1)]
    pub tree_size: u64,
    /// The audit path.
    #[schema(max_items = 64)]
    pub hashes: Vec<HexHash>,
}

/// The answer to an append: its receipt, and with `?prove=true` a checkpoint covering it and the proof.
#[derive(Serialize, ToSchema)]
pub struct AppendOut {
    /// The receipt.
    #[serde(flatten)]
    pub receipt: ReceiptOut,
    /// With `?prove=true`: a signed checkpoint that covers the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointOut>,
    /// With `?prove=true`: the record's inclusion proof against that checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<ProofOut>,
}

/// The receipts of a batch, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchOut {
    /// One per record.
    pub receipts: Vec<ReceiptOut>,
}

/// A signed checkpoint (C2SP tlog-checkpoint in a signed note).
#[derive(Serialize, ToSchema)]
pub struct CheckpointOut {
    /// The log's origin (first line of the note).
    pub origin: String,
    /// Records covered.
    pub size: u64,
    /// Merkle root at `size`.
    pub root: HexHash,
    /// The primary term that signed it.
    pub epoch: u64,
    /// The signed note, verbatim: verify it with the log's published verifier key. Witness cosignatures
    /// (C2SP cosignature/v1 lines) follow the log's signature line when the checkpoint has any.
    pub note: String,
    /// The witnesses (verifier keys) whose cosignatures are on the note, as verified by this node.
    pub witnesses: Vec<String>,
}

/// Bytes as UTF-8 text under the field's name, or as base64 under `<name>_base64` when they are not UTF-8.
#[derive(Serialize, ToSchema, Default)]
pub struct KeyBytes {
    /// The key as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key as base64 (when it is not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
}

/// A value as text, or as base64 when it is not UTF-8.
#[derive(Serialize, ToSchema, Default)]
pub struct ValueBytes {
    /// The value as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value as base64 (when it is not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub value_base64: Option<String>,
}

/// One op of a stored record.
#[derive(Serialize, ToSchema)]
pub struct OpOut {
    /// `put` or `delete`.
    pub op: OpKind,
    /// The key.
    #[serde(flatten)]
    pub key: KeyBytes,
    /// The value (puts only).
    #[serde(flatten)]
    pub value: ValueBytes,
}

/// A stored record.
#[derive(Serialize, ToSchema)]
pub struct RecordOut {
    /// CommitId.
    #[schema(minimum = 1)]
    pub commit_id: u64,
    /// The primary term that wrote it.
    pub epoch: u64,
    /// When the primary wrote it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The tenant.
    pub tenant: String,
    /// The previous record's hash (the hash chain).
    pub prev_hash: HexHash,
    /// SHA-256 of the canonical bytes.
    pub record_hash: HexHash,
    /// Its Merkle leaf: SHA-256(0x00 ‖ record_hash).
    pub leaf_hash: HexHash,
    /// The canonical bytes (what `record_hash` covers), base64.
    #[schema(format = Byte)]
    pub canonical_base64: String,
    /// The puts and deletes (a batch record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpOut>>,
    /// The event as text (an event record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The event as base64 (an event record that is not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub event_base64: Option<String>,
}

/// A page of records.
#[derive(Serialize, ToSchema)]
pub struct RecordsOut {
    /// The records, in CommitId order.
    pub records: Vec<RecordOut>,
    /// Where the next page starts (0: no more records now).
    pub next_from: u64,
}

/// A key's value at a CommitId.
#[derive(Serialize, ToSchema)]
pub struct KeyValueOut {
    /// The key asked for.
    pub key: String,
    /// The CommitId the value is read at.
    pub at: u64,
    /// The value.
    #[serde(flatten)]
    pub value: ValueBytes,
}

/// One version of a key.
#[derive(Serialize, ToSchema)]
pub struct VersionOut {
    /// The record that wrote it.
    pub commit_id: u64,
    /// Whether that record deleted the key.
    pub deleted: bool,
    /// The value written (absent for a delete).
    #[serde(flatten)]
    pub value: ValueBytes,
}

/// Every version of a key, oldest first.
#[derive(Serialize, ToSchema)]
pub struct HistoryOut {
    /// The key.
    pub key: String,
    /// Its versions.
    pub versions: Vec<VersionOut>,
}

/// One key and its current value.
#[derive(Serialize, ToSchema)]
pub struct ItemOut {
    /// The key.
    #[serde(flatten)]
    pub key: KeyBytes,
    /// The value.
    #[serde(flatten)]
    pub value: ValueBytes,
}

/// Keys with a prefix, in key order.
#[derive(Serialize, ToSchema)]
pub struct ScanOut {
    /// The keys and values.
    pub items: Vec<ItemOut>,
}

/// A record with its inclusion proof.
#[derive(Serialize, ToSchema)]
pub struct InclusionOut {
    /// The leaf index.
    pub leaf_index: u64,
    /// The tree size.
    #[schema(minimum = 1)]
    pub tree_size: u64,
    /// The audit path.
    #[schema(max_items = 64)]
    pub hashes: Vec<HexHash>,
    /// The record.
    pub record: RecordOut,
    /// The signed checkpoint of that size, when one exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointOut>,
}

/// A consistency proof between two tree sizes (RFC 9162).
#[derive(Serialize, ToSchema)]
pub struct ConsistencyOut {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// The proof.
    #[schema(max_items = 128)]
    pub hashes: Vec<HexHash>,
}

/// Node health.
#[derive(Serialize, ToSchema)]
pub struct HealthOut {
    /// `ok`, `ok (read-only replica)`, `failed closed: …`, `halted: …` or `stopped: …`.
    pub status: String,
    /// Whether writes are accepted now.
    pub writable: bool,
    /// Whether the node serves (false: 503).
    pub serving: bool,
}

/// The error envelope every non-2xx JSON answer carries.
#[derive(Serialize, ToSchema)]
pub struct ErrorOut {
    /// The error.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The code (stable; switch on it).
    pub code: Code,
    /// For a person.
    pub message: String,
    /// With `NOT_LEADER`: where writes go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_url: Option<String>,
    /// With `OUTCOME_UNKNOWN`: the first CommitId the write was given (look it up before writing again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_id: Option<u64>,
    /// With `OUTCOME_UNKNOWN`: the last CommitId the write was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_id: Option<u64>,
    /// With `RESOURCE_EXHAUSTED`: when to try again (also the `Retry-After` header, in seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The bearer-token security scheme.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The REST API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "AeroDB REST API",
        description = "An append-only, hash-chained, Merkle-proven ledger. Writes are durable before they are \
                       answered; every error is `{\"error\": {\"code\", \"message\", …}}`. Authenticate with \
                       `Authorization: Bearer <token>` (roles: reader, writer, admin).",
        license(name = "Apache-2.0"),
    ),
    paths(
        crate::rest::append,
        crate::rest::append_batch,
        crate::rest::list_records,
        crate::rest::get_record,
        crate::rest::scan,
        crate::rest::get_key,
        crate::rest::history,
        crate::rest::inclusion,
        crate::rest::consistency,
        crate::rest::latest_checkpoint,
        crate::rest::checkpoint_now,
        crate::rest::health,
        crate::rest::ha_status,
        crate::rest::openapi,
        crate::rest::metrics,
        crate::rest::witness_add_checkpoint,
    ),
    components(schemas(ErrorOut, ErrorBody, Code, RecordIn, OpIn, BatchIn)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document as served (pretty JSON, with a trailing newline, as committed in `server/openapi.json`): the
/// generated document plus the rules a struct cannot state — a new record has exactly one of `ops`, `event` and
/// `event_base64`; a `put` has exactly one of `value` and `value_base64`, a `delete` neither.
#[must_use]
pub fn document() -> String {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(v) => v,
        Err(e) => return format!("{{\"error\": \"{e}\"}}\n"),
    };
    let schemas = &mut doc["components"]["schemas"];
    schemas["RecordIn"]["oneOf"] = serde_json::json!([
        { "required": ["ops"], "properties": { "ops": { "type": "array" } } },
        { "required": ["event"], "properties": { "event": { "type": "string" } } },
        { "required": ["event_base64"], "properties": { "event_base64": { "type": "string" } } },
    ]);
    schemas["OpIn"]["oneOf"] = serde_json::json!([
        { "properties": { "op": { "const": "delete" }, "value": { "type": "null" }, "value_base64": { "type": "null" } } },
        { "required": ["value"], "properties": { "op": { "const": "put" }, "value": { "type": "string" } } },
        { "required": ["value_base64"], "properties": { "op": { "const": "put" }, "value_base64": { "type": "string" } } },
    ]);
    // Every operation can be refused before routing for an oversized target or headers.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for ops in paths.values_mut().filter_map(serde_json::Value::as_object_mut) {
            for op in ops.values_mut() {
                for (status, what) in [
                    ("414", "URI_TOO_LONG: the path and query are longer than 8 KiB"),
                    (
                        "431",
                        "HEADERS_TOO_LARGE: more than 100 headers or 16 KiB of them",
                    ),
                ] {
                    op["responses"][status] = serde_json::json!({
                        "description": what,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorOut" } } }
                    });
                }
            }
        }
    }
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
