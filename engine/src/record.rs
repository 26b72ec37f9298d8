//! The record model and its canonical byte encoding (E-1), which is what is hashed and what the WAL stores as a
//! frame body. The layout is specified in `docs/formats.md`; all integers are little-endian.
//!
//! ```text
//! // { version u8 | kind u8 | tenant_len u16 | body_len u32 | epoch u64 | tenant | body |
//! //   timestamp_ms u64 | commit_id u64 | prev_hash[32] }
//! ```
//! `record_hash = SHA-256(canonical bytes)`; the first record's `prev_hash` is [`genesis_hash`].
//!
//! The fields only the write authority knows at the moment of ordering — timestamp, CommitId, previous hash —
//! form a 48-byte *trailer*. Everything before it is encoded and run through SHA-256 before the record takes its
//! place in the log ([`prepare`]), and only the trailer and the last hash blocks are done under the log's
//! ordering lock ([`Prepared::seal`]).

use aerodb_wal::{CommitId, Epoch};
use std::collections::HashSet;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The encoding version this code writes on a new log: version 2, whose keys belong to the record's tenant (each
/// tenant has its own key space). The layout is version 1's; only the rule differs.
pub const RECORD_VERSION: u8 = 2;
/// Version 1: keys are global across tenants (a put by one tenant overwrites another's key of the same name).
/// Still read, and still written to a log whose records are version 1: a log follows one rule, never migrated
/// silently.
pub const RECORD_VERSION_GLOBAL_KEYS: u8 = 1;

/// Whether records of `version` give each tenant its own key space.
#[must_use]
pub fn tenant_keys(version: u8) -> bool {
    version >= RECORD_VERSION
}

/// The index key of `key` under a log's rule, into `out` (replacing its content): the key itself for version 1
/// (global keys), `tenant ‖ 0x00 ‖ key` for version 2 (a tenant has no control characters, so the 0x00 cannot be
/// part of it and the scoped keys of different tenants never collide).
pub fn scoped_key(tenant_keys: bool, tenant: &str, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if tenant_keys {
        out.extend_from_slice(tenant.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(key);
}
/// Length of the fixed head of a record (before the tenant).
pub const RECORD_HEAD_LEN: usize = 16;
/// Length of the trailer (after the body).
pub const RECORD_TRAILER_LEN: usize = 48;
/// Bytes a record takes besides its tenant and body.
pub const RECORD_OVERHEAD: usize = RECORD_HEAD_LEN + RECORD_TRAILER_LEN;
const R_VERSION: usize = 0;
const R_KIND: usize = 1;
const R_TENANT_LEN: usize = 2;
const R_BODY_LEN: usize = 4;
const R_EPOCH: usize = 8;
// Trailer offsets, from the start of the trailer.
const T_TIMESTAMP: usize = 0;
const T_COMMIT_ID: usize = 8;
const T_PREV_HASH: usize = 16;
const _: () = assert!(R_EPOCH + 8 == RECORD_HEAD_LEN);
const _: () = assert!(T_PREV_HASH + 32 == RECORD_TRAILER_LEN);

/// Longest tenant name (UTF-8 bytes).
pub const MAX_TENANT_BYTES: usize = 128;
/// Longest key.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most operations in one batch record.
pub const MAX_BATCH_OPS: usize = 4096;

const KIND_BATCH: u8 = 1;
const KIND_EVENT: u8 = 2;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
// Each op: { op u8 | key_len u16 | value_len u32 | key | value }
const OP_HEADER_LEN: usize = 7;

/// The hash record 1 chains to: SHA-256 of the ASCII string `AeroDB genesis v1`.
#[must_use]
pub fn genesis_hash() -> Hash {
    Sha256::digest(b"AeroDB genesis v1").into()
}

/// `SHA-256(canonical bytes)`.
#[must_use]
pub fn record_hash(canonical: &[u8]) -> Hash {
    Sha256::digest(canonical).into()
}

/// The record's Merkle leaf: `SHA-256(0x00 ‖ record_hash)` (RFC 9162 leaf hashing over the 32-byte record hash,
/// so the log is hashed once, not twice).
#[must_use]
pub fn merkle_leaf(canonical: &[u8]) -> Hash {
    crate::merkle::leaf_hash(&record_hash(canonical))
}

/// One write in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key (1..=1024 bytes).
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl Op {
    /// The key this op writes.
    #[must_use]
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// What a record carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Puts and deletes applied atomically, as one record.
    Batch(Vec<Op>),
    /// An opaque event.
    Event(Bytes),
}

/// A record as stored: the canonical fields. Its hash is computed from the encoding, never stored in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The encoding version: 1 (keys global across tenants) or 2 (each tenant its own key space).
    pub version: u8,
    /// Position in the one global history (1-based, gap-free).
    pub commit_id: CommitId,
    /// The epoch of the primary that wrote it.
    pub epoch: Epoch,
    /// Milliseconds since the Unix epoch, as the writer saw it (never decreasing along the log).
    pub timestamp_ms: u64,
    /// The tenant (filters reads only; the order is global).
    pub tenant: String,
    /// The content.
    pub payload: Payload,
    /// The hash of the previous record (or the genesis hash).
    pub prev_hash: Hash,
}

/// Why bytes are not a valid record, or a record is not valid input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than the layout requires.
    #[error("record truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Unknown encoding version.
    #[error("unsupported record version {0}")]
    Version(u8),
    /// Unknown kind byte.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// Unknown op byte.
    #[error("unknown batch op {0}")]
    OpKind(u8),
    /// Bytes after the declared end.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    /// Tenant empty, too long or not UTF-8.
    #[error("invalid tenant: {0}")]
    Tenant(&'static str),
    /// Key empty or too long.
    #[error("invalid key: {0}")]
    Key(&'static str),
    /// Batch empty, too large, or with a key twice.
    #[error("invalid batch: {0}")]
    Batch(&'static str),
    /// A delete carrying a value.
    #[error("delete op carries a value")]
    DeleteWithValue,
    /// The encoded record exceeds the configured size.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks a tenant name.
pub fn check_tenant(tenant: &str) -> Result<(), RecordError> {
    if tenant.is_empty() {
        return Err(RecordError::Tenant("empty"));
    }
    if tenant.len() > MAX_TENANT_BYTES {
        return Err(RecordError::Tenant("longer than 128 bytes"));
    }
    if tenant.chars().any(char::is_control) {
        return Err(RecordError::Tenant("contains a control character"));
    }
    Ok(())
}

/// Checks a key.
pub fn check_key(key: &[u8]) -> Result<(), RecordError> {
    if key.is_empty() {
        return Err(RecordError::Key("empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RecordError::Key("longer than 1024 bytes"));
    }
    Ok(())
}

/// The keys of one batch seen so far. Hashing keeps the check linear in the batch, whatever the keys look like
/// (a decoder of untrusted bytes must not let crafted keys make it quadratic); a batch of one op allocates
/// nothing.
struct DistinctKeys<'a> {
    single: bool,
    seen: HashSet<&'a [u8]>,
}

impl<'a> DistinctKeys<'a> {
    fn new(count: usize) -> Self {
        Self {
            single: count <= 1,
            seen: HashSet::with_capacity(if count > 1 { count } else { 0 }),
        }
    }

    fn insert(&mut self, key: &'a [u8]) -> Result<(), RecordError> {
        if !self.single && !self.seen.insert(key) {
            return Err(RecordError::Batch("the same key twice"));
        }
        Ok(())
    }
}

/// Checks a batch: 1..=4096 ops, valid keys, no key twice.
pub fn check_batch(ops: &[Op]) -> Result<(), RecordError> {
    if ops.is_empty() {
        return Err(RecordError::Batch("no operations"));
    }
    if ops.len() > MAX_BATCH_OPS {
        return Err(RecordError::Batch("more than 4096 operations"));
    }
    let mut keys = DistinctKeys::new(ops.len());
    for op in ops {
        check_key(op.key())?;
        keys.insert(op.key())?;
        if let Op::Put { value, .. } = op {
            if value.len() > u32::MAX as usize {
                return Err(RecordError::Batch("value longer than 4 GiB"));
            }
        }
    }
    Ok(())
}

/// The encoded length of a payload's body.
#[must_use]
pub fn body_len(payload: &Payload) -> usize {
    match payload {
        Payload::Event(b) => b.len(),
        Payload::Batch(ops) => {
            4 + ops
                .iter()
                .map(|op| {
                    OP_HEADER_LEN
                        + op.key().len()
                        + match op {
                            Op::Put { value, .. } => value.len(),
                            Op::Delete { .. } => 0,
                        }
                })
                .sum::<usize>()
        }
    }
}

/// A record encoded up to its trailer, with the record hash run over everything encoded so far.
#[derive(Clone)]
pub struct Prepared {
    buf: Vec<u8>,
    record: Sha256,
}

/// A finished record: its canonical bytes and its hash (the Merkle leaf, `SHA-256(0x00 ‖ record_hash)`, is
/// computed where the record is queued for applying, outside the log's ordering lock).
#[derive(Clone, Debug)]
pub struct Sealed {
    /// The canonical bytes.
    pub canonical: Vec<u8>,
    /// `SHA-256(canonical)`.
    pub record_hash: Hash,
}

thread_local! {
    /// One encoding buffer per thread, handed back with [`recycle`] once its record is copied into the log.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest buffer kept for reuse: bigger records allocate their own.
const SPARE_MAX: usize = 64 << 10;

/// An empty buffer of at least `capacity` bytes: this thread's spare one if it is big enough.
fn spare_buffer(capacity: usize) -> Vec<u8> {
    let mut b = SPARE.with(std::cell::Cell::take);
    if b.capacity() < capacity {
        b = Vec::with_capacity(capacity);
    }
    b.clear();
    b
}

/// Returns a sealed record's buffer (after its bytes were copied into the log) for this thread's next
/// [`prepare`], saving an allocation per record.
pub fn recycle(buf: Vec<u8>) {
    if buf.capacity() <= SPARE_MAX {
        SPARE.with(|s| s.set(buf));
    }
}

/// Encodes everything but the trailer and hashes it. The caller has validated tenant and payload.
#[must_use]
pub fn prepare(epoch: Epoch, tenant: &str, payload: &Payload) -> Prepared {
    prepare_version(RECORD_VERSION, epoch, tenant, payload)
}

/// [`prepare`] with the encoding version of the log the record goes to ([`RECORD_VERSION`] or
/// [`RECORD_VERSION_GLOBAL_KEYS`]).
#[must_use]
pub fn prepare_version(version: u8, epoch: Epoch, tenant: &str, payload: &Payload) -> Prepared {
    let epoch = epoch.0;
    let body = body_len(payload);
    assert!(
        tenant.len() <= MAX_TENANT_BYTES,
        "tenant validated before encoding"
    );
    assert!(
        u32::try_from(body).is_ok(),
        "body length validated before encoding"
    );
    let mut out = spare_buffer(RECORD_OVERHEAD + tenant.len() + body);
    out.push(version);
    out.push(match payload {
        Payload::Batch(_) => KIND_BATCH,
        Payload::Event(_) => KIND_EVENT,
    });
    out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(tenant.as_bytes());
    match payload {
        Payload::Event(b) => out.extend_from_slice(b),
        Payload::Batch(ops) => {
            out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
            for op in ops {
                let (kind, key, value): (u8, &[u8], &[u8]) = match op {
                    Op::Put { key, value } => (OP_PUT, key, value),
                    Op::Delete { key } => (OP_DELETE, key, &[]),
                };
                out.push(kind);
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(value);
            }
        }
    }
    debug_assert_eq!(out.len(), RECORD_HEAD_LEN + tenant.len() + body);
    let mut record = Sha256::new();
    record.update(&out);
    Prepared { buf: out, record }
}

impl Prepared {
    /// Appends the trailer and finishes the record hash.
    #[must_use]
    pub fn seal(mut self, timestamp_ms: u64, commit_id: u64, prev_hash: &Hash) -> Sealed {
        let mut t = [0u8; RECORD_TRAILER_LEN];
        t[T_TIMESTAMP..T_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_le_bytes());
        t[T_COMMIT_ID..T_COMMIT_ID + 8].copy_from_slice(&commit_id.to_le_bytes());
        t[T_PREV_HASH..T_PREV_HASH + 32].copy_from_slice(prev_hash);
        self.buf.extend_from_slice(&t);
        self.record.update(t);
        let record_hash: Hash = self.record.finalize().into();
        Sealed {
            canonical: self.buf,
            record_hash,
        }
    }

    /// The length the sealed record will have.
    #[must_use]
    pub fn sealed_len(&self) -> usize {
        self.buf.len() + RECORD_TRAILER_LEN
    }
}

/// Encodes a whole record of the current version into `out` (replacing its content).
pub fn encode(
    out: &mut Vec<u8>,
    commit_id: CommitId,
    epoch: Epoch,
    timestamp_ms: u64,
    tenant: &str,
    payload: &Payload,
    prev_hash: &Hash,
) {
    *out = prepare(epoch, tenant, payload)
        .seal(timestamp_ms, commit_id.0, prev_hash)
        .canonical;
}

/// Encodes `r` into `out` (replacing its content), in its own version.
pub fn encode_record(out: &mut Vec<u8>, r: &Record) {
    *out = prepare_version(r.version, r.epoch, &r.tenant, &r.payload)
        .seal(r.timestamp_ms, r.commit_id.0, &r.prev_hash)
        .canonical;
}

/// The fixed fields of an encoded record, read without decoding the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The encoding version (1: global keys, 2: keys per tenant).
    pub version: u8,
    /// The CommitId.
    pub commit_id: CommitId,
    /// The epoch.
    pub epoch: Epoch,
    /// The timestamp.
    pub timestamp_ms: u64,
    /// The previous record's hash.
    pub prev_hash: Hash,
}

/// Reads the fixed fields, checking the version, kind and that the declared lengths match `b` exactly.
pub fn decode_header(b: &[u8]) -> Result<RecordHeader, RecordError> {
    if b.len() < RECORD_OVERHEAD {
        return Err(RecordError::Truncated {
            len: b.len(),
            need: RECORD_OVERHEAD,
        });
    }
    if b[R_VERSION] != RECORD_VERSION && b[R_VERSION] != RECORD_VERSION_GLOBAL_KEYS {
        return Err(RecordError::Version(b[R_VERSION]));
    }
    if b[R_KIND] != KIND_BATCH && b[R_KIND] != KIND_EVENT {
        return Err(RecordError::Kind(b[R_KIND]));
    }
    let need = RECORD_OVERHEAD + usize::from(u16_at(b, R_TENANT_LEN)) + u32_at(b, R_BODY_LEN) as usize;
    if b.len() < need {
        return Err(RecordError::Truncated { len: b.len(), need });
    }
    if b.len() > need {
        return Err(RecordError::Trailing(b.len() - need));
    }
    let t = b.len() - RECORD_TRAILER_LEN;
    let mut prev_hash = [0u8; 32];
    prev_hash.copy_from_slice(&b[t + T_PREV_HASH..t + T_PREV_HASH + 32]);
    Ok(RecordHeader {
        version: b[R_VERSION],
        commit_id: CommitId(u64_at(b, t + T_COMMIT_ID)),
        epoch: Epoch(u64_at(b, R_EPOCH)),
        timestamp_ms: u64_at(b, t + T_TIMESTAMP),
        prev_hash,
    })
}

/// Decodes a whole record from untrusted bytes. Keys and values are zero-copy slices of `b`. Every length is
/// checked against the bytes present before it is used.
pub fn decode(b: &Bytes) -> Result<Record, RecordError> {
    let h = decode_header(b)?;
    let tenant_len = usize::from(u16_at(b, R_TENANT_LEN));
    if tenant_len > MAX_TENANT_BYTES {
        return Err(RecordError::Tenant("longer than 128 bytes"));
    }
    let tenant = std::str::from_utf8(&b[RECORD_HEAD_LEN..RECORD_HEAD_LEN + tenant_len])
        .map_err(|_| RecordError::Tenant("not UTF-8"))?
        .to_owned();
    check_tenant(&tenant)?;
    let body = b.slice(RECORD_HEAD_LEN + tenant_len..b.len() - RECORD_TRAILER_LEN);
    let payload = match b[R_KIND] {
        KIND_EVENT => Payload::Event(body),
        _ => Payload::Batch(decode_ops(&body)?),
    };
    Ok(Record {
        version: h.version,
        commit_id: h.commit_id,
        epoch: h.epoch,
        timestamp_ms: h.timestamp_ms,
        tenant,
        payload,
        prev_hash: h.prev_hash,
    })
}

/// Parses the ops of a batch body, checking every bound before it is used, and calls `f(kind, key, value)` for
/// each (value empty for deletes). Checks: 1..=4096 ops, each key 1..=1024 bytes, deletes without value, no key
/// twice, nothing trailing. Shared by [`decode`] and [`RecordView::for_each_write`].
fn parse_ops<'a>(
    body: &'a [u8],
    mut f: impl FnMut(u8, &'a [u8], &'a [u8], usize, usize),
) -> Result<(), RecordError> {
    if body.len() < 4 {
        return Err(RecordError::Truncated {
            len: body.len(),
            need: 4,
        });
    }
    let count = u32_at(body, 0) as usize;
    if count == 0 || count > MAX_BATCH_OPS {
        return Err(RecordError::Batch("operation count out of range"));
    }
    // Each op needs at least its header, so a count larger than the bytes allow is rejected before any work.
    if count > (body.len() - 4) / OP_HEADER_LEN {
        return Err(RecordError::Truncated {
            len: body.len(),
            need: 4 + count * OP_HEADER_LEN,
        });
    }
    let mut keys = DistinctKeys::new(count);
    let mut pos = 4;
    for _ in 0..count {
        if body.len() - pos < OP_HEADER_LEN {
            return Err(RecordError::Truncated {
                len: body.len(),
                need: pos + OP_HEADER_LEN,
            });
        }
        let kind = body[pos];
        let key_len = usize::from(u16_at(body, pos + 1));
        let value_len = u32_at(body, pos + 3) as usize;
        pos += OP_HEADER_LEN;
        let need = pos.saturating_add(key_len).saturating_add(value_len);
        if need > body.len() {
            return Err(RecordError::Truncated {
                len: body.len(),
                need,
            });
        }
        let key = &body[pos..pos + key_len];
        check_key(key)?;
        match kind {
            OP_PUT => {}
            OP_DELETE if value_len == 0 => {}
            OP_DELETE => return Err(RecordError::DeleteWithValue),
            other => return Err(RecordError::OpKind(other)),
        }
        keys.insert(key)?;
        f(kind, key, &body[pos + key_len..need], pos, pos + key_len);
        pos = need;
    }
    if pos != body.len() {
        return Err(RecordError::Trailing(body.len() - pos));
    }
    Ok(())
}

fn decode_ops(body: &Bytes) -> Result<Vec<Op>, RecordError> {
    let mut ops = Vec::new();
    parse_ops(body, |kind, _, value, key_at, value_at| {
        let key = body.slice(key_at..value_at);
        let value = body.slice(value_at..value_at + value.len());
        ops.push(if kind == OP_PUT {
            Op::Put { key, value }
        } else {
            Op::Delete { key }
        });
    })?;
    Ok(ops)
}

/// A record validated and parsed in place from its canonical bytes, without copying or reference counting.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    /// The fixed fields.
    pub header: RecordHeader,
    /// The tenant.
    pub tenant: &'a str,
    /// `true` for a batch of puts/deletes, `false` for an event.
    pub is_batch: bool,
    /// The body (the event payload, or the encoded batch).
    pub body: &'a [u8],
}

/// Validates `b` like [`decode`] and returns a view of it.
pub fn view(b: &[u8]) -> Result<RecordView<'_>, RecordError> {
    let header = decode_header(b)?;
    let tenant_len = usize::from(u16_at(b, R_TENANT_LEN));
    if tenant_len > MAX_TENANT_BYTES {
        return Err(RecordError::Tenant("longer than 128 bytes"));
    }
    let tenant = std::str::from_utf8(&b[RECORD_HEAD_LEN..RECORD_HEAD_LEN + tenant_len])
        .map_err(|_| RecordError::Tenant("not UTF-8"))?;
    check_tenant(tenant)?;
    let body = &b[RECORD_HEAD_LEN + tenant_len..b.len() - RECORD_TRAILER_LEN];
    let is_batch = b[R_KIND] == KIND_BATCH;
    if is_batch {
        parse_ops(body, |_, _, _, _, _| {})?;
    }
    Ok(RecordView {
        header,
        tenant,
        is_batch,
        body,
    })
}

/// What a record wrote to one key (see [`write_to`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyWrite<'a> {
    /// A put of this value (borrowed from the record's bytes).
    Put(&'a [u8]),
    /// A delete.
    Delete,
    /// The record is a batch that does not write the key.
    Absent,
    /// The record is an event.
    Event,
}

/// What the record `b` wrote to `key`, validated like [`decode`] but without decoding the other operations or
/// copying anything: the point-read path.
pub(crate) fn write_to<'a>(b: &'a [u8], key: &[u8]) -> Result<KeyWrite<'a>, RecordError> {
    let v = view(b)?;
    if !v.is_batch {
        return Ok(KeyWrite::Event);
    }
    let mut found = KeyWrite::Absent;
    parse_ops(v.body, |kind, k, value, _, _| {
        if k == key {
            found = if kind == OP_DELETE {
                KeyWrite::Delete
            } else {
                KeyWrite::Put(value)
            };
        }
    })?;
    Ok(found)
}

impl<'a> RecordView<'a> {
    /// Calls `f(key, is_delete)` for every write of a batch (nothing for an event).
    pub fn for_each_write(&self, mut f: impl FnMut(&'a [u8], bool)) {
        if self.is_batch {
            // Validated by `view`; parsing again cannot fail.
            let _ = parse_ops(self.body, |kind, key, _, _, _| f(key, kind == OP_DELETE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            version: RECORD_VERSION,
            commit_id: CommitId(42),
            epoch: Epoch(3),
            timestamp_ms: 1_700_000_000_000,
            tenant: "acme".into(),
            payload: Payload::Batch(vec![
                Op::Put {
                    key: Bytes::from_static(b"k1"),
                    value: Bytes::from_static(b"v1"),
                },
                Op::Delete {
                    key: Bytes::from_static(b"k2"),
                },
            ]),
            prev_hash: [7u8; 32],
        }
    }

    fn enc(r: &Record) -> Bytes {
        let mut out = Vec::new();
        encode(
            &mut out,
            r.commit_id,
            r.epoch,
            r.timestamp_ms,
            &r.tenant,
            &r.payload,
            &r.prev_hash,
        );
        Bytes::from(out)
    }

    #[test]
    fn write_to_finds_a_key_without_decoding_the_rest() {
        let b = enc(&sample());
        assert_eq!(write_to(&b, b"k1"), Ok(KeyWrite::Put(&b"v1"[..])));
        assert_eq!(write_to(&b, b"k2"), Ok(KeyWrite::Delete));
        assert_eq!(write_to(&b, b"k3"), Ok(KeyWrite::Absent));
        let event = Record {
            payload: Payload::Event(Bytes::from_static(b"e")),
            ..sample()
        };
        assert_eq!(write_to(&enc(&event), b"k1"), Ok(KeyWrite::Event));
        // Validated like `decode`: a damaged batch is an error, not a miss.
        let mut bad = b.to_vec();
        let ops_at = RECORD_HEAD_LEN + "acme".len();
        bad[ops_at] = 0;
        bad[ops_at + 1] = 0;
        bad[ops_at + 2] = 0;
        bad[ops_at + 3] = 0;
        assert!(write_to(&Bytes::from(bad), b"k1").is_err());
    }

    #[test]
    fn genesis_hash_is_the_documented_constant() {
        let hex = hex::encode(genesis_hash());
        assert_eq!(
            hex,
            "45891d22996825604eabd7768ba11bc7ce557e7e210acf8fdb24777e6ee7dd81"
        );
    }

    #[test]
    fn round_trip_batch_and_event() {
        let r = sample();
        assert_eq!(decode(&enc(&r)).unwrap(), r);
        let e = Record {
            payload: Payload::Event(Bytes::from_static(b"opaque \x00 bytes")),
            ..sample()
        };
        assert_eq!(decode(&enc(&e)).unwrap(), e);
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let b = enc(&sample());
        for cut in 0..b.len() {
            assert!(decode(&b.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(matches!(
            decode(&Bytes::from(longer)),
            Err(RecordError::Trailing(1))
        ));
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut b = enc(&sample()).to_vec();
        let body_at = RECORD_HEAD_LEN + 4;
        b[body_at..body_at + 4].copy_from_slice(&4000u32.to_le_bytes());
        assert!(matches!(
            decode(&Bytes::from(b)),
            Err(RecordError::Truncated { .. })
        ));
    }

    /// A maximal batch whose 1 KiB keys differ at byte `at` (2 bytes of the op number there).
    fn wide_batch(at: usize) -> Bytes {
        let ops: Vec<Op> = (0..MAX_BATCH_OPS as u16)
            .map(|i| {
                let mut k = vec![b'x'; MAX_KEY_BYTES];
                k[at..at + 2].copy_from_slice(&i.to_be_bytes());
                Op::Delete { key: Bytes::from(k) }
            })
            .collect();
        enc(&Record {
            payload: Payload::Batch(ops),
            ..sample()
        })
    }

    fn decode_time(b: &Bytes) -> std::time::Duration {
        let t = std::time::Instant::now();
        for _ in 0..3 {
            assert!(decode(b).is_ok() && view(b).is_ok());
        }
        t.elapsed()
    }

    #[test]
    fn duplicate_key_check_is_not_quadratic_in_crafted_keys() {
        // Keys that differ only in their last bytes make a pairwise check compare ~8M pairs of 1 KiB; keys that
        // differ in their first byte let it stop at once. A hashed check costs the same on both, so the ratio
        // tells them apart on any machine (pairwise measured ~15x here; hashed ~1x).
        let early = decode_time(&wide_batch(0));
        let late = decode_time(&wide_batch(MAX_KEY_BYTES - 2));
        assert!(
            late < early * 4,
            "crafted keys took {late:?}, plain keys {early:?}"
        );
        // A batch with a repeated key is still rejected.
        let mut dup = wide_batch(MAX_KEY_BYTES - 2).to_vec();
        let n = dup.len() - RECORD_TRAILER_LEN;
        dup[n - 2..n].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(
            decode(&Bytes::from(dup)),
            Err(RecordError::Batch("the same key twice"))
        );
    }

    #[test]
    fn invalid_batches_are_rejected() {
        assert!(check_batch(&[]).is_err());
        let dup = [
            Op::Delete {
                key: Bytes::from_static(b"a"),
            },
            Op::Put {
                key: Bytes::from_static(b"a"),
                value: Bytes::new(),
            },
        ];
        assert_eq!(check_batch(&dup), Err(RecordError::Batch("the same key twice")));
        assert!(check_key(&[0u8; 1025]).is_err());
        assert!(
            check_tenant("").is_err()
                && check_tenant("a\nb").is_err()
                && check_tenant(&"x".repeat(129)).is_err()
        );
    }
}
