//! The persisted key and tenant index: immutable sorted runs on disk (`index/run-*.idx`, read through memory
//! maps) plus an in-memory table of the newest entries.
//!
//! Each run covers a contiguous CommitId range `(lo, hi]` and holds two tables: for every key written in that
//! range the CommitIds that wrote it (and whether the write was a delete), and for every tenant the CommitIds of
//! its records. `index/MANIFEST` lists the live runs; together they cover `(0, covered]`, and opening replays the
//! log after `covered` into the memory table. The index is derived data: a damaged or missing run is dropped
//! (with everything after it) and rebuilt from the verified log. Byte layouts are in `docs/formats.md`.
//!
//! The background thread flushes the memory table into a new run when it grows past a threshold and merges runs
//! so that at most a logarithmic number of them exist; readers never wait for disk writes.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    ops::Bound,
    path::{Path, PathBuf},
    sync::Arc,
};

use aerodb_wal::fs::{read_exact_at, Fs, FsFile, OpenMode};
use bytes::{Bytes, BytesMut};

/// First bytes of every run file.
pub const RUN_MAGIC: [u8; 8] = *b"AERODBIX";
/// First bytes of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"AERODBIM";
/// Format version of runs and manifest.
pub const INDEX_VERSION: u32 = 1;
/// Length of a run file's header.
pub const RUN_HEADER_LEN: usize = 128;
/// Length of one key slot: `{ heap_off u64 | ver_start u64 | key_len u32 | ver_count u32 }`.
pub const SLOT_LEN: usize = 24;
/// Tables per run: keys, then tenants.
pub const TABLES: usize = 2;
/// The longest key a run accepts (the record format's key limit is lower).
pub const MAX_INDEX_KEY: usize = 64 * 1024;
/// The most runs a manifest may list.
pub const MAX_RUNS: usize = 4096;
/// The merge policy keeps at most this many runs.
const TARGET_MAX_RUNS: usize = 16;
/// How many runs of one size tier are merged at once.
const MERGE_FAN_IN: usize = 4;
/// Write buffer per output section.
const WRITE_BUF: usize = 1 << 20;

/// A version: `commit << 1 | deleted`.
pub type Ver = u64;

/// Packs a version.
#[must_use]
pub fn ver(commit: u64, deleted: bool) -> Ver {
    commit << 1 | u64::from(deleted)
}

/// The CommitId of a version.
#[must_use]
pub fn ver_commit(v: Ver) -> u64 {
    v >> 1
}

/// Whether a version is a delete.
#[must_use]
pub fn ver_deleted(v: Ver) -> bool {
    v & 1 == 1
}

/// Why index bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The bytes do not form a valid run or manifest.
    #[error("index file is malformed: {0}")]
    Malformed(String),
}

fn bad(what: impl Into<String>) -> IndexError {
    IndexError::Malformed(what.into())
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn to_usize(v: u64, what: &str) -> Result<usize, IndexError> {
    usize::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit in memory")))
}

/// One table of a run: sorted keys, each with its versions.
#[derive(Debug, Clone)]
pub struct Table {
    slots: Bytes,
    versions: Bytes,
    heap: Bytes,
    keys: usize,
}

impl Table {
    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether the table has no keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    fn slot(&self, i: usize) -> (usize, usize, usize, usize) {
        let s = &self.slots[i * SLOT_LEN..(i + 1) * SLOT_LEN];
        // Every field was bounded when the run was parsed.
        (
            le64(s, 0) as usize,
            le64(s, 8) as usize,
            le32(s, 16) as usize,
            le32(s, 20) as usize,
        )
    }

    /// The key at position `i`, sharing the run's memory.
    #[must_use]
    pub fn key(&self, i: usize) -> Bytes {
        let (off, _, len, _) = self.slot(i);
        self.heap.slice(off..off + len)
    }

    fn key_ref(&self, i: usize) -> &[u8] {
        let (off, _, len, _) = self.slot(i);
        &self.heap[off..off + len]
    }

    /// The versions of the key at position `i`, oldest first.
    pub fn versions(&self, i: usize) -> impl DoubleEndedIterator<Item = Ver> + '_ {
        let (_, start, _, count) = self.slot(i);
        (start..start + count).map(move |v| le64(&self.versions, v * 8))
    }

    /// Whether the key at position `i` has version `v` (binary search: versions are sorted).
    #[must_use]
    pub fn has_version(&self, i: usize, v: Ver) -> bool {
        let (_, start, _, count) = self.slot(i);
        let (mut lo, mut hi) = (start, start + count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let x = le64(&self.versions, mid * 8);
            match x.cmp(&v) {
                Ordering::Equal => return true,
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
            }
        }
        false
    }

    /// The first position whose key is not below `bound`.
    fn lower_bound(&self, bound: Bound<&[u8]>) -> usize {
        let (mut lo, mut hi) = (0, self.keys);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let k = self.key_ref(mid);
            let below = match bound {
                Bound::Unbounded => false,
                Bound::Included(b) => k < b,
                Bound::Excluded(b) => k <= b,
            };
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The position of `key`.
    #[must_use]
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let i = self.lower_bound(Bound::Included(key));
        (i < self.keys && self.key_ref(i) == key).then_some(i)
    }
}

/// A parsed, validated run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Versions in this run have CommitIds above `lo`…
    pub lo: u64,
    /// …and at most `hi`.
    pub hi: u64,
    /// The key table and the tenant table.
    pub tables: [Table; TABLES],
    /// Total versions over both tables.
    pub total_versions: u64,
}

struct TableDesc {
    keys: u64,
    versions: u64,
    heap: u64,
    crcs: [u32; 3],
}

impl Run {
    /// Parses and fully validates run bytes: header and section checksums, every length bounded by the input
    /// before use, keys strictly increasing, versions strictly increasing per key and inside `(lo, hi]`.
    pub fn parse(b: Bytes) -> Result<Run, IndexError> {
        if b.len() < RUN_HEADER_LEN {
            return Err(bad(format!(
                "{} bytes is shorter than the {RUN_HEADER_LEN}-byte header",
                b.len()
            )));
        }
        if b[..8] != RUN_MAGIC {
            return Err(bad("bad run magic"));
        }
        if crc32fast::hash(&b[..RUN_HEADER_LEN - 4]) != le32(&b, RUN_HEADER_LEN - 4) {
            return Err(bad("run header checksum mismatch"));
        }
        if le32(&b, 8) != INDEX_VERSION {
            return Err(bad(format!("unknown run version {}", le32(&b, 8))));
        }
        if le32(&b, 12) as usize != TABLES {
            return Err(bad(format!("{} tables, expected {TABLES}", le32(&b, 12))));
        }
        let (lo, hi) = (le64(&b, 16), le64(&b, 24));
        if lo >= hi || hi >= 1 << 62 {
            return Err(bad(format!("invalid commit range ({lo}, {hi}]")));
        }
        let mut descs = Vec::with_capacity(TABLES);
        for t in 0..TABLES {
            let d = 32 + t * 40;
            descs.push(TableDesc {
                keys: le64(&b, d),
                versions: le64(&b, d + 8),
                heap: le64(&b, d + 16),
                crcs: [le32(&b, d + 24), le32(&b, d + 28), le32(&b, d + 32)],
            });
        }
        // Bound every section against the file before slicing anything.
        let mut at = RUN_HEADER_LEN as u64;
        let mut sections = Vec::with_capacity(TABLES);
        for d in &descs {
            let slot_bytes = d.keys.checked_mul(SLOT_LEN as u64);
            let ver_bytes = d.versions.checked_mul(8);
            let (Some(slot_bytes), Some(ver_bytes)) = (slot_bytes, ver_bytes) else {
                return Err(bad("section length overflows"));
            };
            let mut offs = [0u64; 4];
            offs[0] = at;
            for (i, len) in [slot_bytes, ver_bytes, d.heap].into_iter().enumerate() {
                offs[i + 1] = offs[i]
                    .checked_add(len)
                    .filter(|end| *end <= b.len() as u64)
                    .ok_or_else(|| bad("a section runs past the end of the file"))?;
            }
            at = offs[3];
            sections.push(offs);
        }
        if at != b.len() as u64 {
            return Err(bad(format!(
                "file is {} bytes but its sections end at {at}",
                b.len()
            )));
        }
        let mut tables = Vec::with_capacity(TABLES);
        let mut total_versions = 0u64;
        for (d, offs) in descs.iter().zip(&sections) {
            let part = |i: usize| b.slice(offs[i] as usize..offs[i + 1] as usize);
            let (slots, versions, heap) = (part(0), part(1), part(2));
            for (bytes, crc) in [&slots, &versions, &heap].into_iter().zip(d.crcs) {
                if crc32fast::hash(bytes) != crc {
                    return Err(bad("run section checksum mismatch"));
                }
            }
            let table = Table {
                keys: to_usize(d.keys, "key count")?,
                slots,
                versions,
                heap,
            };
            validate_table(&table, d.versions, lo, hi)?;
            total_versions += d.versions;
            tables.push(table);
        }
        let [keys, tenants]: [Table; TABLES] = tables.try_into().map_err(|_| bad("wrong table count"))?;
        Ok(Run {
            lo,
            hi,
            tables: [keys, tenants],
            total_versions,
        })
    }
}

fn validate_table(t: &Table, versions: u64, lo: u64, hi: u64) -> Result<(), IndexError> {
    let mut next_ver = 0u64;
    for i in 0..t.keys {
        let s = &t.slots[i * SLOT_LEN..(i + 1) * SLOT_LEN];
        let (off, start, len, count) = (le64(s, 0), le64(s, 8), le32(s, 16), le32(s, 20));
        if start != next_ver || count == 0 {
            return Err(bad(format!("key {i}: versions are not contiguous")));
        }
        next_ver = start + u64::from(count);
        if next_ver > versions {
            return Err(bad(format!("key {i}: versions past the version section")));
        }
        if len as usize > MAX_INDEX_KEY || off.saturating_add(u64::from(len)) > t.heap.len() as u64 {
            return Err(bad(format!("key {i}: key bytes out of bounds")));
        }
        if i > 0 && t.key_ref(i - 1) >= t.key_ref(i) {
            return Err(bad(format!("key {i}: keys are not strictly increasing")));
        }
        let mut last = lo;
        for v in t.versions(i) {
            let c = ver_commit(v);
            if c <= last || c > hi {
                return Err(bad(format!(
                    "key {i}: version {c} out of order or outside ({lo}, {hi}]"
                )));
            }
            last = c;
        }
    }
    if next_ver != versions {
        return Err(bad("version count does not match the keys"));
    }
    Ok(())
}

/// The manifest: the live runs' ranges, contiguous from 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// `(lo, hi]` of each run, oldest first.
    pub runs: Vec<(u64, u64)>,
}

impl Manifest {
    /// Highest CommitId the runs cover.
    #[must_use]
    pub fn covered(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.1)
    }

    /// Serializes: `magic | version u32 | count u32 | count × { lo u64 | hi u64 } | crc32`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + self.runs.len() * 16);
        b.extend_from_slice(&MANIFEST_MAGIC);
        b.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for (lo, hi) in &self.runs {
            b.extend_from_slice(&lo.to_le_bytes());
            b.extend_from_slice(&hi.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates manifest bytes (count bounded by the input; ranges contiguous from 0).
    pub fn parse(b: &[u8]) -> Result<Manifest, IndexError> {
        if b.len() < 20 || b[..8] != MANIFEST_MAGIC {
            return Err(bad("bad manifest magic or length"));
        }
        let body = b.len() - 4;
        if crc32fast::hash(&b[..body]) != le32(b, body) {
            return Err(bad("manifest checksum mismatch"));
        }
        if le32(b, 8) != INDEX_VERSION {
            return Err(bad(format!("unknown manifest version {}", le32(b, 8))));
        }
        let count = le32(b, 12) as usize;
        if count > MAX_RUNS || body != 16 + count * 16 {
            return Err(bad(format!("manifest lists {count} runs in {} bytes", b.len())));
        }
        let mut runs = Vec::with_capacity(count);
        let mut prev = 0;
        for i in 0..count {
            let (lo, hi) = (le64(b, 16 + i * 16), le64(b, 24 + i * 16));
            if lo != prev || hi <= lo {
                return Err(bad(format!("run {i} covers ({lo}, {hi}] after {prev}")));
            }
            prev = hi;
            runs.push((lo, hi));
        }
        Ok(Manifest { runs })
    }
}

/// The offline check of a directory's index: every run parses, and (record by record) holds exactly the entries
/// the log implies.
pub(crate) struct IndexCheck {
    runs: Vec<Run>,
    /// Versions of each run matched against the log so far.
    matched: Vec<u64>,
    cur: usize,
    /// What is wrong (each a complete sentence for the report).
    pub problems: Vec<String>,
}

impl IndexCheck {
    /// Reads the manifest and parses every run it lists.
    pub fn open(fs: &dyn Fs, dir: &Path) -> Self {
        let mut check = IndexCheck {
            runs: Vec::new(),
            matched: Vec::new(),
            cur: 0,
            problems: Vec::new(),
        };
        let manifest = match read_file(fs, &dir.join(MANIFEST), 16 + MAX_RUNS as u64 * 16 + 4) {
            Ok(None) => return check,
            Ok(Some(b)) => match Manifest::parse(&b) {
                Ok(m) => m,
                Err(e) => {
                    check.problems.push(format!("index manifest: {e}"));
                    return check;
                }
            },
            Err(e) => {
                check.problems.push(format!("index manifest: {e}"));
                return check;
            }
        };
        for (lo, hi) in manifest.runs {
            let path = dir.join(run_name(lo, hi));
            match fs
                .open(&path, OpenMode::Read)
                .and_then(|f| f.map())
                .map_err(|e| e.to_string())
                .and_then(|b| Run::parse(b).map_err(|e| e.to_string()))
            {
                Ok(r) if (r.lo, r.hi) == (lo, hi) => check.runs.push(r),
                Ok(r) => check.problems.push(format!(
                    "index run {}: covers ({}, {}]",
                    path.display(),
                    r.lo,
                    r.hi
                )),
                Err(e) => check.problems.push(format!("index run {}: {e}", path.display())),
            }
        }
        check.matched = vec![0; check.runs.len()];
        check
    }

    /// Checks that the run covering `commit` holds the record's writes and tenant.
    pub fn record(&mut self, commit: u64, v: &crate::record::RecordView<'_>) {
        while self.cur < self.runs.len() && self.runs[self.cur].hi < commit {
            self.cur += 1;
        }
        let Some(run) = self.runs.get(self.cur).filter(|r| r.lo < commit) else {
            return;
        };
        let mut missing = Vec::new();
        let mut found = 0u64;
        let mut probe = |table: usize, key: &[u8], x: Ver| {
            let t = &run.tables[table];
            if t.find(key).is_some_and(|i| t.has_version(i, x)) {
                found += 1;
            } else {
                missing.push(format!(
                    "index run ({}, {}] lacks record {commit}'s {} {:?}",
                    run.lo,
                    run.hi,
                    if table == KEYS { "key" } else { "tenant" },
                    String::from_utf8_lossy(key)
                ));
            }
        };
        let tenant_keys = crate::record::tenant_keys(v.header.version);
        let mut scoped = Vec::new();
        v.for_each_write(|key, deleted| {
            crate::record::scoped_key(tenant_keys, v.tenant, key, &mut scoped);
            probe(KEYS, &scoped, ver(commit, deleted));
        });
        probe(TENANTS, v.tenant.as_bytes(), ver(commit, false));
        self.matched[self.cur] += found;
        self.problems.extend(missing);
    }

    /// After the last record: every run must be fully matched and inside the log.
    pub fn finish(mut self, records: u64) -> Vec<String> {
        for (r, matched) in self.runs.iter().zip(&self.matched) {
            if r.hi > records {
                self.problems.push(format!(
                    "index run ({}, {}] reaches past the log's {records} records",
                    r.lo, r.hi
                ));
            } else if *matched != r.total_versions {
                self.problems.push(format!(
                    "index run ({}, {}] holds {} entries, the log implies {matched}",
                    r.lo, r.hi, r.total_versions
                ));
            }
        }
        self.problems
    }
}

/// One key's versions in the memory table, oldest first. Most keys have a single version there, which is held
/// inline: indexing a new key then allocates nothing beyond the map's own node space.
#[derive(Clone, Debug)]
enum Vers {
    One(Ver),
    Many(Vec<Ver>),
}

impl Vers {
    fn push(&mut self, v: Ver) {
        match self {
            Vers::One(first) => *self = Vers::Many(vec![*first, v]),
            Vers::Many(vs) => vs.push(v),
        }
    }

    /// Adds `v` where its CommitId puts it (the versions stay oldest first).
    fn insert_ordered(&mut self, v: Ver) {
        let at = self.partition_point(|x| ver_commit(*x) < ver_commit(v));
        match self {
            Vers::One(first) if at == 0 => *self = Vers::Many(vec![v, *first]),
            Vers::One(first) => *self = Vers::Many(vec![*first, v]),
            Vers::Many(vs) => vs.insert(at, v),
        }
    }
}

impl std::ops::Deref for Vers {
    type Target = [Ver];

    fn deref(&self) -> &[Ver] {
        match self {
            Vers::One(v) => std::slice::from_ref(v),
            Vers::Many(vs) => vs,
        }
    }
}

/// Entries not yet in a run, sorted in memory.
#[derive(Debug, Default)]
pub(crate) struct MemTable {
    /// Versions per key, then per tenant.
    tables: [BTreeMap<Bytes, Vers>; TABLES],
    lo: u64,
    hi: u64,
    versions: u64,
    /// Where new keys are copied: each key is a slice of a shared chunk, so indexing a new key costs a copy
    /// and a reference count instead of an allocation.
    arena: BytesMut,
}

/// Size of the memory table's key chunks.
const ARENA_CHUNK: usize = 64 << 10;

impl MemTable {
    fn starting_after(lo: u64) -> Self {
        Self {
            lo,
            hi: lo,
            ..Self::default()
        }
    }

    fn push(&mut self, table: usize, key: &[u8], v: Ver) {
        match self.tables[table].get_mut(key) {
            Some(vs) => vs.push(v),
            None => {
                if self.arena.capacity() < key.len() {
                    self.arena = BytesMut::with_capacity(ARENA_CHUNK.max(key.len()));
                }
                self.arena.extend_from_slice(key);
                let owned = self.arena.split().freeze();
                self.tables[table].insert(owned, Vers::One(v));
            }
        }
        self.versions += 1;
    }

    /// Adds an older version of `key` than the ones the table may already hold for it (the entries a flush
    /// hands back, see [`Index::install_flush`]).
    fn insert_older(&mut self, table: usize, key: &Bytes, v: Ver) {
        match self.tables[table].get_mut(&key[..]) {
            Some(vs) => vs.insert_ordered(v),
            None => {
                self.tables[table].insert(key.clone(), Vers::One(v));
            }
        }
        self.versions += 1;
    }

    /// [`MemTable::push`] for a key that is probably new: one B-tree search instead of two, at the price of
    /// leaving the key's copy unused in the arena when it was not new.
    fn push_new(&mut self, table: usize, key: &[u8], v: Ver) {
        if self.arena.capacity() < key.len() {
            self.arena = BytesMut::with_capacity(ARENA_CHUNK.max(key.len()));
        }
        self.arena.extend_from_slice(key);
        let owned = self.arena.split().freeze();
        match self.tables[table].entry(owned) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().push(v),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Vers::One(v));
            }
        }
        self.versions += 1;
    }
}

/// One source of index entries: the memory table, the table being flushed, or a run. A memory table's entries
/// count only up to the CommitId beside it (`u64::MAX`: all of them); a flush writes a frozen table up to its end.
#[derive(Clone, Copy)]
enum Source<'a> {
    Mem(&'a BTreeMap<Bytes, Vers>, u64),
    Run(&'a Table),
}

/// The versions of `vs` up to CommitId `through`.
fn through(vs: &[Ver], through: u64) -> &[Ver] {
    if through == u64::MAX {
        vs
    } else {
        &vs[..vs.partition_point(|v| ver_commit(*v) <= through)]
    }
}

impl<'a> Source<'a> {
    fn versions_of(self, key: &[u8]) -> Vec<Ver> {
        match self {
            Source::Mem(m, last) => m.get(key).map_or_else(Vec::new, |vs| through(vs, last).to_vec()),
            Source::Run(t) => t.find(key).map_or_else(Vec::new, |i| t.versions(i).collect()),
        }
    }

    fn last_at_or_below(self, key: &[u8], at: u64) -> Option<Ver> {
        match self {
            Source::Mem(m, last) => m
                .get(key)
                .and_then(|vs| vs.iter().rev().find(|v| ver_commit(**v) <= at.min(last)).copied()),
            Source::Run(t) => t
                .find(key)
                .and_then(|i| t.versions(i).rev().find(|v| ver_commit(*v) <= at)),
        }
    }

    fn cursor(self, from: Bound<&[u8]>) -> Cursor<'a> {
        match self {
            Source::Mem(m, last) => Cursor::mem(m.range::<[u8], _>((from, Bound::Unbounded)), last),
            Source::Run(t) => Cursor::Run(t, t.lower_bound(from)),
        }
    }
}

/// Walks one source's keys in order. Keys are borrowed from the source, so walking allocates nothing.
enum Cursor<'a> {
    Mem {
        it: std::collections::btree_map::Range<'a, Bytes, Vers>,
        /// The current key and its versions up to `last` (never empty: keys without one are skipped).
        cur: Option<(&'a Bytes, &'a [Ver])>,
        last: u64,
    },
    Run(&'a Table, usize),
}

impl<'a> Cursor<'a> {
    fn mem(it: std::collections::btree_map::Range<'a, Bytes, Vers>, last: u64) -> Self {
        let mut c = Cursor::Mem { it, cur: None, last };
        c.advance();
        c
    }

    /// The current key.
    fn peek(&self) -> Option<&'a [u8]> {
        match self {
            Cursor::Mem { cur, .. } => cur.map(|(k, _)| k.as_ref()),
            Cursor::Run(t, i) => (*i < t.keys).then(|| t.key_ref(*i)),
        }
    }

    fn advance(&mut self) {
        match self {
            Cursor::Mem { it, cur, last } => {
                *cur = it
                    .by_ref()
                    .map(|(k, vs)| (k, through(vs, *last)))
                    .find(|(_, vs)| !vs.is_empty());
            }
            Cursor::Run(_, i) => *i += 1,
        }
    }

    /// Appends the current key's versions to `out`, then advances.
    fn take_into(&mut self, out: &mut Vec<Ver>) {
        match self {
            Cursor::Mem {
                cur: Some((_, v)), ..
            } => out.extend_from_slice(v),
            Cursor::Run(t, i) if *i < t.keys => out.extend(t.versions(*i)),
            _ => {}
        }
        self.advance();
    }

    /// The number of versions of the current key, then advances.
    fn take_count(&mut self) -> usize {
        let n = match self {
            Cursor::Mem {
                cur: Some((_, v)), ..
            } => v.len(),
            Cursor::Run(t, i) if *i < t.keys => t.slot(*i).3,
            _ => 0,
        };
        self.advance();
        n
    }

    /// The current key and its newest version up to CommitId `at`, then advances.
    fn take_last(&mut self, at: u64) -> Option<(Bytes, Ver)> {
        let out = match self {
            Cursor::Mem {
                cur: Some((k, v)), ..
            } => v
                .iter()
                .rev()
                .find(|v| ver_commit(**v) <= at)
                .map(|last| ((*k).clone(), *last)),
            Cursor::Run(t, i) if *i < t.keys => t
                .versions(*i)
                .rev()
                .find(|v| ver_commit(*v) <= at)
                .map(|v| (t.key(*i), v)),
            _ => None,
        };
        self.advance();
        out
    }
}

/// The smallest current key among cursors; `holders` receives the cursors that hold it.
fn min_key<'a>(cursors: &[Cursor<'a>], holders: &mut Vec<usize>) -> Option<&'a [u8]> {
    let mut best: Option<&'a [u8]> = None;
    holders.clear();
    for (i, c) in cursors.iter().enumerate() {
        let Some(k) = c.peek() else { continue };
        match best.map(|b| k.cmp(b)) {
            None | Some(Ordering::Less) => {
                best = Some(k);
                holders.clear();
                holders.push(i);
            }
            Some(Ordering::Equal) => holders.push(i),
            Some(Ordering::Greater) => {}
        }
    }
    best
}

/// The index: runs on disk, the memory table, and the memory table being flushed.
#[derive(Debug)]
pub(crate) struct Index {
    files: Arc<IndexFiles>,
    runs: Vec<Arc<Run>>,
    /// The memory table being flushed, whole (readers see all of it until the flush is installed), and the
    /// CommitId its run ends at: the last visible record when it was frozen; the entries of later ones go back to
    /// `mem` when the run is installed.
    frozen: Option<(Arc<MemTable>, u64)>,
    mem: MemTable,
    /// Reused for the tenant-scoped key of each write.
    scratch: Vec<u8>,
}

/// Table numbers.
pub(crate) const KEYS: usize = 0;
pub(crate) const TENANTS: usize = 1;

/// What opening the index found.
#[derive(Debug, Default)]
pub(crate) struct IndexOpen {
    pub covered: u64,
    pub runs: usize,
    pub notes: Vec<String>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> crate::Error + 'a {
    move |source| crate::Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn run_name(lo: u64, hi: u64) -> String {
    format!("run-{lo:020}-{hi:020}.idx")
}

const MANIFEST: &str = "MANIFEST";

/// The highest CommitId the index manifest in `dir` says its runs cover, if the manifest is there and valid.
/// Reads only.
#[must_use]
pub fn manifest_reach(fs: &dyn Fs, dir: &Path) -> Option<u64> {
    let b = read_file(fs, &dir.join(MANIFEST), 16 + MAX_RUNS as u64 * 16 + 4).ok()??;
    Manifest::parse(&b).ok()?.runs.last().map(|&(_, hi)| hi)
}

impl Index {
    /// Opens the runs the manifest lists, keeping the longest valid prefix that the log (of `records` records)
    /// covers, and removes files the manifest does not list. `read_only` changes no file: refused runs are left
    /// in place and what they covered is replayed from the log into memory.
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        records: u64,
        read_only: bool,
    ) -> crate::Result<(Index, IndexOpen)> {
        if !read_only {
            fs.create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        let mut report = IndexOpen::default();
        let manifest_path = dir.join(MANIFEST);
        let manifest = match read_file(&*fs, &manifest_path, 16 + MAX_RUNS as u64 * 16 + 4) {
            Ok(None) => Manifest::default(),
            Ok(Some(b)) => Manifest::parse(&b).unwrap_or_else(|e| {
                report.notes.push(format!(
                    "index manifest refused ({e}); rebuilding the index from the log"
                ));
                Manifest::default()
            }),
            Err(e) => {
                report.notes.push(format!(
                    "index manifest unreadable ({e}); rebuilding the index from the log"
                ));
                Manifest::default()
            }
        };
        let mut runs = Vec::new();
        for &(lo, hi) in &manifest.runs {
            if hi > records {
                report.notes.push(format!(
                    "index run ({lo}, {hi}] reaches past the log's {records} records; rebuilt from the log"
                ));
                break;
            }
            let path = dir.join(run_name(lo, hi));
            let parsed = fs
                .open(&path, OpenMode::Read)
                .and_then(|f| f.map())
                .map_err(|e| e.to_string())
                .and_then(|b| Run::parse(b).map_err(|e| e.to_string()))
                .and_then(|r| {
                    if (r.lo, r.hi) == (lo, hi) {
                        Ok(r)
                    } else {
                        Err(format!("it covers ({}, {}]", r.lo, r.hi))
                    }
                });
            match parsed {
                Ok(r) => runs.push(Arc::new(r)),
                Err(e) => {
                    report.notes.push(format!(
                        "index run {} refused ({e}); it and later runs are rebuilt from the log",
                        path.display()
                    ));
                    break;
                }
            }
        }
        let live: Vec<String> = runs.iter().map(|r| run_name(r.lo, r.hi)).collect();
        let names = match fs.list_dir(dir) {
            Ok(n) if !read_only => n,
            Ok(_) => Vec::new(),
            Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("list directory", dir)(e)),
        };
        for name in names {
            if name != MANIFEST && !live.contains(&name) {
                let _ = fs.remove_file(&dir.join(&name));
            }
        }
        let covered = runs.last().map_or(0, |r| r.hi);
        report.covered = covered;
        report.runs = runs.len();
        if runs.len() != manifest.runs.len() && !read_only {
            // Record the shorter list now, so a later crash cannot resurrect a refused run.
            write_manifest(
                &*fs,
                dir,
                &Manifest {
                    runs: runs.iter().map(|r| (r.lo, r.hi)).collect(),
                },
            )?;
        }
        Ok((
            Index {
                files: Arc::new(IndexFiles {
                    fs,
                    dir: dir.to_owned(),
                    manifest_lock: parking_lot::Mutex::new(()),
                }),
                runs,
                frozen: None,
                mem: MemTable::starting_after(covered),
                scratch: Vec::new(),
            },
            report,
        ))
    }

    /// Versions in the memory table (not counting one being flushed).
    pub fn mem_versions(&self) -> u64 {
        self.mem.versions
    }

    /// Adds the writes of record `commit` (which must follow every record added before).
    #[cfg(test)]
    pub fn add(&mut self, commit: u64, tenant: &str, writes: impl IntoIterator<Item = (Bytes, bool)>) {
        debug_assert!(commit > self.mem.hi);
        for (key, deleted) in writes {
            self.mem.push(KEYS, &key, ver(commit, deleted));
        }
        self.mem.push(TENANTS, tenant.as_bytes(), ver(commit, false));
        self.mem.hi = commit;
    }

    /// Adds a record being appended (each key is copied into the memory table's key chunks the first time the
    /// table sees it), its keys scoped to its tenant when `tenant_keys` (record version 2).
    pub fn add_payload(
        &mut self,
        commit: u64,
        tenant_keys: bool,
        tenant: &str,
        payload: &crate::record::Payload,
    ) {
        debug_assert!(commit > self.mem.hi);
        if let crate::record::Payload::Batch(ops) = payload {
            for op in ops {
                crate::record::scoped_key(tenant_keys, tenant, op.key(), &mut self.scratch);
                let deleted = matches!(op, crate::record::Op::Delete { .. });
                self.mem.push_new(KEYS, &self.scratch, ver(commit, deleted));
            }
        }
        self.mem.push(TENANTS, tenant.as_bytes(), ver(commit, false));
        self.mem.hi = commit;
    }

    /// Adds a record read back from the log, copying each key only the first time the memory table sees it.
    pub fn add_view(&mut self, commit: u64, v: &crate::record::RecordView<'_>) {
        let tenant_keys = crate::record::tenant_keys(v.header.version);
        let (mem, scratch) = (&mut self.mem, &mut self.scratch);
        v.for_each_write(|key, deleted| {
            crate::record::scoped_key(tenant_keys, v.tenant, key, scratch);
            mem.push(KEYS, scratch, ver(commit, deleted));
        });
        self.mem.push(TENANTS, v.tenant.as_bytes(), ver(commit, false));
        self.mem.hi = commit;
    }

    /// Sources newest first.
    fn sources(&self, table: usize) -> impl DoubleEndedIterator<Item = Source<'_>> {
        // An iterator, not a vector: a point read allocates nothing to visit them.
        std::iter::once(Source::Mem(&self.mem.tables[table], u64::MAX))
            .chain(
                self.frozen
                    .iter()
                    .map(move |(f, _)| Source::Mem(&f.tables[table], u64::MAX)),
            )
            .chain(self.runs.iter().rev().map(move |r| Source::Run(&r.tables[table])))
    }

    /// The newest version of `key` at or below CommitId `at`.
    pub fn version_at(&self, table: usize, key: &[u8], at: u64) -> Option<Ver> {
        self.sources(table).find_map(|s| s.last_at_or_below(key, at))
    }

    /// Every version of `key` up to CommitId `at`, oldest first.
    pub fn versions(&self, table: usize, key: &[u8], at: u64) -> Vec<Ver> {
        let mut out = Vec::new();
        for s in self.sources(table).rev() {
            out.extend(s.versions_of(key).into_iter().filter(|v| ver_commit(*v) <= at));
        }
        out
    }

    /// Versions of `key` with CommitIds in `from..=at`, oldest first, at most `limit`.
    pub fn versions_from(&self, table: usize, key: &[u8], from: u64, at: u64, limit: usize) -> Vec<Ver> {
        let mut out = Vec::new();
        for s in self.sources(table).rev() {
            if out.len() >= limit {
                break;
            }
            if let Source::Run(t) = s {
                // Runs are ordered by CommitId; skip the ones entirely before `from` without copying.
                if let Some(i) = t.find(key) {
                    if t.versions(i).next_back().is_some_and(|v| ver_commit(v) < from) {
                        continue;
                    }
                }
            }
            out.extend(
                s.versions_of(key)
                    .into_iter()
                    .filter(|v| (from..=at).contains(&ver_commit(*v)))
                    .take(limit - out.len()),
            );
        }
        out
    }

    /// Keys in `range` whose newest version up to CommitId `at` is not a delete, with that version's CommitId, at
    /// most `limit`.
    pub fn scan(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>, at: u64, limit: usize) -> Vec<(Bytes, u64)> {
        let mut cursors: Vec<Cursor<'_>> = self.sources(KEYS).map(|s| s.cursor(lo)).collect();
        let mut holders = Vec::new();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(key) = min_key(&cursors, &mut holders) else {
                break;
            };
            let in_range = match hi {
                Bound::Unbounded => true,
                Bound::Included(h) => key <= h,
                Bound::Excluded(h) => key < h,
            };
            if !in_range {
                break;
            }
            // Sources are newest first: the first holder with a version up to `at` has the key's newest one.
            let mut newest = None;
            for &i in &holders {
                match newest {
                    None => newest = cursors[i].take_last(at),
                    Some(_) => cursors[i].advance(),
                }
            }
            if let Some((k, v)) = newest.filter(|(_, v)| !ver_deleted(*v)) {
                out.push((k, ver_commit(v)));
            }
        }
        out
    }

    /// Freezes the memory table, to flush the entries of records up to `upto` (the durable, visible ones; later
    /// records are indexed before their commit completes), if it holds at least `threshold` versions and no
    /// flush is under way. The freeze swaps the table for an empty one and nothing more, so appenders never wait
    /// for it: the flush, off every lock, leaves out the entries after `upto` and hands them back at
    /// [`Index::install_flush`]. Returns the flush to run (a new one, or one that failed before and is retried).
    pub fn freeze(&mut self, threshold: u64, upto: u64) -> Option<FlushJob> {
        if self.frozen.is_none() && self.mem.versions >= threshold.max(1) && upto > self.mem.lo {
            let hi = self.mem.hi;
            let table = std::mem::replace(&mut self.mem, MemTable::starting_after(hi));
            self.frozen = Some((Arc::new(table), upto.min(hi)));
        }
        self.frozen.clone().map(|(frozen, upto)| FlushJob {
            files: self.files.clone(),
            frozen,
            upto,
        })
    }

    /// Adds the run a flush wrote, moves the entries it left out (records after its end, see
    /// [`Index::freeze`]) back into the memory table, and releases the frozen table. Returns the new list for the
    /// manifest and the frozen table, for the caller to drop after releasing its lock on the index (freeing tens
    /// of thousands of entries takes milliseconds, which appenders waiting for the lock should not spend).
    pub fn install_flush(&mut self, flushed: Flushed) -> (Manifest, Option<Arc<MemTable>>) {
        self.mem.lo = flushed.run.hi;
        for (table, key, v) in &flushed.later {
            self.mem.insert_older(*table, key, *v);
        }
        self.runs.push(flushed.run);
        let frozen = self.frozen.take().map(|(f, _)| f);
        (self.manifest(), frozen)
    }

    /// The merge the policy asks for, if any. Size-tiered: the newest runs whose sizes (in versions) are all
    /// below four times the smallest of them are merged once there are at least four of them, so runs form a
    /// base-4 counter: O(log₄ n) runs, each version rewritten O(log₄ n) times. With more than 16 runs the
    /// adjacent pair with the fewest versions is merged regardless.
    pub fn merge_job(&self) -> Option<MergeJob> {
        let r = &self.runs;
        let n = r.len();
        let mut start = n;
        let mut smallest = u64::MAX;
        while start > 0 {
            let v = r[start - 1].total_versions;
            let low = smallest.min(v);
            let high = r[start - 1..n]
                .iter()
                .map(|x| x.total_versions)
                .max()
                .unwrap_or(0);
            if high >= low.saturating_mul(MERGE_FAN_IN as u64) {
                break;
            }
            smallest = low;
            start -= 1;
        }
        let range = if n - start >= MERGE_FAN_IN {
            start..n
        } else if n > TARGET_MAX_RUNS {
            let i = (1..n).min_by_key(|&i| r[i - 1].total_versions + r[i].total_versions)?;
            i - 1..i + 1
        } else {
            return None;
        };
        Some(MergeJob {
            files: self.files.clone(),
            inputs: r[range].to_vec(),
        })
    }

    /// Replaces a merge's inputs by its output. Returns the new list for the manifest, or `None` when the inputs
    /// are no longer adjacent runs (nothing is changed then).
    pub fn install_merge(&mut self, job: &MergeJob, merged: Arc<Run>) -> Option<Manifest> {
        let first = job.inputs.first()?;
        let i = self.runs.iter().position(|r| Arc::ptr_eq(r, first))?;
        let k = job.inputs.len();
        let here = self.runs.get(i..i + k)?;
        if !here.iter().zip(&job.inputs).all(|(a, b)| Arc::ptr_eq(a, b)) {
            return None;
        }
        self.runs.splice(i..i + k, [merged]);
        Some(self.manifest())
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            runs: self.runs.iter().map(|r| (r.lo, r.hi)).collect(),
        }
    }

    /// The directory's files, shared with the jobs.
    pub fn files(&self) -> Arc<IndexFiles> {
        self.files.clone()
    }
}

/// The index directory. Its manifest lock orders list changes: take it, change the list under the state lock,
/// write the manifest, release it; so manifests are written in the order the lists changed.
#[derive(Debug)]
pub(crate) struct IndexFiles {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// Held while a list change is recorded.
    pub manifest_lock: parking_lot::Mutex<()>,
}

impl IndexFiles {
    /// Fsyncs the directory (so renamed runs are durable), then replaces the manifest atomically.
    pub fn record(&self, m: &Manifest) -> crate::Result<()> {
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync directory", &self.dir))?;
        write_manifest(&*self.fs, &self.dir, m)
    }

    /// Removes the files of runs no longer listed. A failure only leaves an orphan that the next open removes.
    pub fn remove(&self, runs: &[Arc<Run>]) {
        for r in runs {
            let _ = self.fs.remove_file(&self.dir.join(run_name(r.lo, r.hi)));
        }
    }
}

/// Writing the frozen memory table as a run, without holding the state lock.
pub(crate) struct FlushJob {
    files: Arc<IndexFiles>,
    frozen: Arc<MemTable>,
    /// The run ends at this CommitId.
    upto: u64,
}

/// What a flush wrote, and the entries it left for the memory table.
pub(crate) struct Flushed {
    /// The run.
    pub run: Arc<Run>,
    /// Entries of records after the run's end: (table, key, version), oldest first per key.
    later: Vec<(usize, Bytes, Ver)>,
}

impl FlushJob {
    /// Writes the run of the frozen table's entries up to the job's end (fsynced and renamed into place; listed
    /// once the caller records the manifest), and collects the later entries.
    pub fn write(&self) -> crate::Result<Flushed> {
        let f = &*self.frozen;
        let inputs: [Vec<Source<'_>>; TABLES] = [
            vec![Source::Mem(&f.tables[KEYS], self.upto)],
            vec![Source::Mem(&f.tables[TENANTS], self.upto)],
        ];
        let run = Arc::new(write_run(
            &*self.files.fs,
            &self.files.dir,
            f.lo,
            self.upto,
            &inputs,
        )?);
        // The entries of records after the run's end (usually none; with appends in flight, those of the few
        // records indexed but not yet durable when it was frozen).
        let mut later = Vec::new();
        if self.upto < f.hi {
            for (t, table) in f.tables.iter().enumerate() {
                for (key, vs) in table {
                    let kept = through(vs, self.upto).len();
                    later.extend(vs[kept..].iter().map(|&v| (t, key.clone(), v)));
                }
            }
        }
        Ok(Flushed { run, later })
    }
}

/// Merging two adjacent runs into one, without holding the state lock. Streams its inputs: memory use is the
/// write buffers, not the run sizes.
pub(crate) struct MergeJob {
    files: Arc<IndexFiles>,
    /// The adjacent runs to merge, oldest first.
    pub inputs: Vec<Arc<Run>>,
}

impl MergeJob {
    /// Writes the merged run.
    pub fn write(&self) -> crate::Result<Arc<Run>> {
        let (Some(first), Some(last)) = (self.inputs.first(), self.inputs.last()) else {
            return Err(crate::Error::InvalidOptions("a merge needs inputs".into()));
        };
        let sources =
            |t: usize| -> Vec<Source<'_>> { self.inputs.iter().map(|r| Source::Run(&r.tables[t])).collect() };
        let inputs: [Vec<Source<'_>>; TABLES] = [sources(KEYS), sources(TENANTS)];
        Ok(Arc::new(write_run(
            &*self.files.fs,
            &self.files.dir,
            first.lo,
            last.hi,
            &inputs,
        )?))
    }
}

/// Reads a whole small file, refusing one longer than `max` before allocating.
fn read_file(fs: &dyn Fs, path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = match fs.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.len()?;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut b = vec![0u8; len as usize];
    read_exact_at(&*f, &mut b, 0)?;
    Ok(Some(b))
}

fn write_manifest(fs: &dyn Fs, dir: &Path, m: &Manifest) -> crate::Result<()> {
    let tmp = dir.join("MANIFEST.tmp");
    let _ = fs.remove_file(&tmp);
    let f = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(io_err("create index manifest", &tmp))?;
    f.write_all_at(&m.encode(), 0)
        .map_err(io_err("write index manifest", &tmp))?;
    f.sync_data().map_err(io_err("fsync index manifest", &tmp))?;
    let path = dir.join(MANIFEST);
    fs.rename(&tmp, &path)
        .map_err(io_err("rename index manifest", &path))?;
    fs.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Sequential writer of one section of a run file at a fixed offset, with a running checksum.
struct SectionWriter<'a> {
    file: &'a dyn FsFile,
    path: &'a Path,
    at: u64,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl<'a> SectionWriter<'a> {
    fn new(file: &'a dyn FsFile, path: &'a Path, at: u64) -> Self {
        Self {
            file,
            path,
            at,
            buf: Vec::with_capacity(WRITE_BUF),
            crc: crc32fast::Hasher::new(),
        }
    }

    fn put(&mut self, b: &[u8]) -> crate::Result<()> {
        self.buf.extend_from_slice(b);
        self.crc.update(b);
        if self.buf.len() >= WRITE_BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> crate::Result<()> {
        self.file
            .write_all_at(&self.buf, self.at)
            .map_err(io_err("write index run", self.path))?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> crate::Result<u32> {
        self.flush()?;
        Ok(self.crc.finalize())
    }
}

/// Merges sources (oldest first, disjoint ascending CommitId ranges) key by key, calling `each` with every key
/// and its concatenated versions.
fn merge_sources(
    sources: &[Source<'_>],
    mut each: impl FnMut(&[u8], &[Ver]) -> crate::Result<()>,
) -> crate::Result<()> {
    let mut cursors: Vec<Cursor<'_>> = sources.iter().map(|s| s.cursor(Bound::Unbounded)).collect();
    let (mut versions, mut holders) = (Vec::new(), Vec::new());
    while let Some(key) = min_key(&cursors, &mut holders) {
        versions.clear();
        for &i in &holders {
            cursors[i].take_into(&mut versions);
        }
        each(key, &versions)?;
    }
    Ok(())
}

/// The sizes a merge of `sources` will have: (keys, versions, key bytes), without copying any version.
fn merge_sizes(sources: &[Source<'_>]) -> (u64, u64, u64) {
    let mut cursors: Vec<Cursor<'_>> = sources.iter().map(|s| s.cursor(Bound::Unbounded)).collect();
    let mut holders = Vec::new();
    let (mut keys, mut versions, mut heap) = (0u64, 0u64, 0u64);
    while let Some(key) = min_key(&cursors, &mut holders) {
        keys += 1;
        heap += key.len() as u64;
        for &i in &holders {
            versions += cursors[i].take_count() as u64;
        }
    }
    (keys, versions, heap)
}

/// Writes a run of `(lo, hi]` from per-table sources: a counting pass sizes the sections, a second pass streams
/// them; the file is fsynced under a temporary name and renamed into place (the caller fsyncs the directory).
fn write_run(
    fs: &dyn Fs,
    dir: &Path,
    lo: u64,
    hi: u64,
    inputs: &[Vec<Source<'_>>; TABLES],
) -> crate::Result<Run> {
    let sizes: Vec<(u64, u64, u64)> = inputs.iter().map(|srcs| merge_sizes(srcs)).collect();
    let name = run_name(lo, hi);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = fs.remove_file(&tmp);
    let file = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(io_err("create index run", &tmp))?;
    let mut header = vec![0u8; RUN_HEADER_LEN];
    header[..8].copy_from_slice(&RUN_MAGIC);
    header[8..12].copy_from_slice(&INDEX_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(TABLES as u32).to_le_bytes());
    header[16..24].copy_from_slice(&lo.to_le_bytes());
    header[24..32].copy_from_slice(&hi.to_le_bytes());
    let mut at = RUN_HEADER_LEN as u64;
    for (t, srcs) in inputs.iter().enumerate() {
        let (keys, versions, heap) = sizes[t];
        let mut slots = SectionWriter::new(&*file, &tmp, at);
        let mut vers = SectionWriter::new(&*file, &tmp, at + keys * SLOT_LEN as u64);
        let mut heap_w = SectionWriter::new(&*file, &tmp, at + keys * SLOT_LEN as u64 + versions * 8);
        let (mut heap_off, mut ver_start) = (0u64, 0u64);
        merge_sources(srcs, |k, v| {
            let mut slot = [0u8; SLOT_LEN];
            slot[..8].copy_from_slice(&heap_off.to_le_bytes());
            slot[8..16].copy_from_slice(&ver_start.to_le_bytes());
            slot[16..20].copy_from_slice(&(k.len() as u32).to_le_bytes());
            slot[20..24].copy_from_slice(&(v.len() as u32).to_le_bytes());
            slots.put(&slot)?;
            for x in v {
                vers.put(&x.to_le_bytes())?;
            }
            heap_w.put(k)?;
            heap_off += k.len() as u64;
            ver_start += v.len() as u64;
            Ok(())
        })?;
        let d = 32 + t * 40;
        header[d..d + 8].copy_from_slice(&keys.to_le_bytes());
        header[d + 8..d + 16].copy_from_slice(&versions.to_le_bytes());
        header[d + 16..d + 24].copy_from_slice(&heap.to_le_bytes());
        for (i, w) in [slots, vers, heap_w].into_iter().enumerate() {
            let crc = w.finish()?;
            header[d + 24 + i * 4..d + 28 + i * 4].copy_from_slice(&crc.to_le_bytes());
        }
        at += keys * SLOT_LEN as u64 + versions * 8 + heap;
    }
    let crc = crc32fast::hash(&header[..RUN_HEADER_LEN - 4]);
    header[RUN_HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0)
        .map_err(io_err("write index run", &tmp))?;
    file.sync_data().map_err(io_err("fsync index run", &tmp))?;
    fs.rename(&tmp, &path)
        .map_err(io_err("rename index run", &path))?;
    let bytes = fs
        .open(&path, OpenMode::Read)
        .and_then(|f| f.map())
        .map_err(io_err("map index run", &path))?;
    Run::parse(bytes)
        .map_err(|e| crate::Error::Integrity(format!("index run {} just written: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aerodb_wal::fs::MemFs;

    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn flush_merge_and_reopen_answer_like_memory() {
        let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
        let dir = Path::new("/ix");
        let (mut ix, _) = Index::open(fs.clone(), dir, 0, false).unwrap();
        let mut model: BTreeMap<Bytes, Vec<Ver>> = BTreeMap::new();
        for c in 1..=500u64 {
            let key = k(&format!("k{:03}", c % 37));
            let del = c % 11 == 0;
            ix.add(c, if c % 2 == 0 { "even" } else { "odd" }, [(key.clone(), del)]);
            model.entry(key).or_default().push(ver(c, del));
            if let Some(job) = ix.freeze(20, u64::MAX) {
                let flushed = job.write().unwrap();
                let m = ix.install_flush(flushed).0;
                ix.files().record(&m).unwrap();
                while let Some(job) = ix.merge_job() {
                    let merged = job.write().unwrap();
                    let m = ix.install_merge(&job, merged).unwrap();
                    ix.files().record(&m).unwrap();
                    ix.files().remove(&job.inputs);
                }
            }
        }
        assert!(ix.runs.len() > 1 && ix.runs.len() <= TARGET_MAX_RUNS);
        let check = |ix: &Index| {
            for (key, vs) in &model {
                assert_eq!(&ix.versions(KEYS, key, u64::MAX), vs);
                assert_eq!(
                    ix.version_at(KEYS, key, 250),
                    vs.iter().rev().find(|v| ver_commit(**v) <= 250).copied()
                );
            }
            let live: Vec<(Bytes, u64)> = model
                .iter()
                .filter_map(|(k, v)| {
                    v.last()
                        .filter(|v| !ver_deleted(**v))
                        .map(|v| (k.clone(), ver_commit(*v)))
                })
                .collect();
            assert_eq!(
                ix.scan(Bound::Unbounded, Bound::Unbounded, u64::MAX, usize::MAX),
                live
            );
            let evens = ix.versions_from(TENANTS, b"even", 101, u64::MAX, 10);
            assert_eq!(
                evens.iter().map(|v| ver_commit(*v)).collect::<Vec<_>>(),
                (102..=120).step_by(2).collect::<Vec<_>>()
            );
        };
        check(&ix);
        let covered = ix.runs.last().unwrap().hi;
        let (mut again, rep) = Index::open(fs.clone(), dir, 500, false).unwrap();
        assert_eq!(rep.covered, covered);
        for c in covered + 1..=500 {
            let key = k(&format!("k{:03}", c % 37));
            again.add(c, if c % 2 == 0 { "even" } else { "odd" }, [(key, c % 11 == 0)]);
        }
        check(&again);
        // A log shorter than the runs: runs past it are dropped.
        let (short, rep) = Index::open(fs, dir, covered - 1, false).unwrap();
        assert!(short.runs.iter().all(|r| r.hi < covered));
        assert!(!rep.notes.is_empty());
    }

    #[test]
    fn parse_refuses_every_single_byte_change_in_a_run() {
        let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
        let dir = Path::new("/ix");
        let (mut ix, _) = Index::open(fs.clone(), dir, 0, false).unwrap();
        for c in 1..=20u64 {
            ix.add(c, "t", [(k(&format!("key{c}")), false)]);
        }
        let flushed = ix.freeze(1, u64::MAX).unwrap().write().unwrap();
        let m = ix.install_flush(flushed).0;
        ix.files().record(&m).unwrap();
        let path = dir.join(run_name(0, 20));
        let bytes = fs.open(&path, OpenMode::Read).unwrap().map().unwrap().to_vec();
        Run::parse(Bytes::from(bytes.clone())).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Run::parse(Bytes::from(b)).is_err(), "flip at byte {i} accepted");
        }
        for cut in 0..bytes.len() {
            assert!(Run::parse(Bytes::copy_from_slice(&bytes[..cut])).is_err());
        }
    }

    #[test]
    fn freezing_keeps_records_after_the_visible_mark_in_memory() {
        let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
        let (mut ix, _) = Index::open(fs, Path::new("/ix"), 0, false).unwrap();
        for c in 1..=10u64 {
            ix.add(c, "t", [(k(&format!("k{}", c % 3)), c == 9)]);
        }
        let before: Vec<Vec<Ver>> = (0..3)
            .map(|i| ix.versions(KEYS, format!("k{i}").as_bytes(), 10))
            .collect();
        // Frozen with records 7..=10 indexed but not yet visible: the freeze only swaps the tables.
        let job = ix.freeze(1, 6).unwrap();
        assert_eq!(
            (
                job.frozen.lo,
                job.frozen.hi,
                job.upto,
                ix.mem.lo,
                ix.mem.hi,
                ix.mem.versions
            ),
            (0, 10, 6, 10, 10, 0)
        );
        assert_eq!(
            (0..3)
                .map(|i| ix.versions(KEYS, format!("k{i}").as_bytes(), 10))
                .collect::<Vec<_>>(),
            before,
            "readers see the frozen table whole while it is flushed"
        );
        // Appends go on meanwhile, to the same keys.
        for c in 11..=14u64 {
            ix.add(c, "t", [(k(&format!("k{}", c % 3)), false)]);
        }
        let before: Vec<Vec<Ver>> = (0..3)
            .map(|i| ix.versions(KEYS, format!("k{i}").as_bytes(), 14))
            .collect();
        let flushed = job.write().unwrap();
        assert_eq!((flushed.run.lo, flushed.run.hi), (0, 6));
        assert!(flushed.later.iter().all(|&(_, _, v)| ver_commit(v) > 6));
        assert_eq!(
            flushed.later.len(),
            8,
            "records 7..=10: a key and a tenant entry each"
        );
        let m = ix.install_flush(flushed).0;
        ix.files().record(&m).unwrap();
        assert_eq!((ix.mem.lo, ix.mem.hi, ix.mem.versions), (6, 14, 16));
        for t in &ix.mem.tables {
            for vs in t.values() {
                assert!(
                    vs.windows(2).all(|w| ver_commit(w[0]) < ver_commit(w[1])),
                    "oldest first"
                );
            }
        }
        let after: Vec<Vec<Ver>> = (0..3)
            .map(|i| ix.versions(KEYS, format!("k{i}").as_bytes(), 14))
            .collect();
        assert_eq!(before, after);
        assert_eq!(
            ix.versions(KEYS, b"k0", 8).len(),
            2,
            "the at bound hides later versions"
        );
        assert_eq!(ix.version_at(KEYS, b"k0", 9).map(ver_deleted), Some(true));
        let live = ix.scan(Bound::Unbounded, Bound::Unbounded, 8, 10);
        assert_eq!(live.iter().map(|(_, c)| *c).collect::<Vec<_>>(), vec![6, 7, 8]);
    }

    #[test]
    fn manifest_round_trip_and_refusals() {
        let m = Manifest {
            runs: vec![(0, 5), (5, 9)],
        };
        let b = m.encode();
        assert_eq!(Manifest::parse(&b).unwrap(), m);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x80;
            assert!(Manifest::parse(&x).is_err());
        }
        let gap = Manifest {
            runs: vec![(0, 5), (6, 9)],
        }
        .encode();
        assert!(Manifest::parse(&gap).is_err());
    }
}
