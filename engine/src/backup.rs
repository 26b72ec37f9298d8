//! Backups bound to a signed checkpoint (B-1, B-2): which bytes of a data directory make a consistent cut at the
//! size of a checkpoint, the manifest that lists them (`docs/formats.md`, "Backup"), and the offline checks of a
//! backup directory.
//!
//! **The cut.** A backup holds records `1..=N` where `N` is the size of a signed checkpoint: the WAL segments wholly
//! before the one holding record `N`, that segment up to the end of `N`'s frame (it becomes the active segment of
//! a restored log; restore pads it back to its capacity with zeros), and a checkpoint log of the checkpoints of
//! at most `N` records. Nothing else: the Merkle store and the index are derived and rebuilt at the first open; the
//! signing key is a secret and is never in a backup.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use aerodb_wal::format::{
    decode_frame_header, SegmentHeader, FRAME_HEADER_LEN, MAX_FRAME_BODY_BYTES, SEGMENT_HEADER_LEN,
};
use sha2::{Digest, Sha256};

use crate::{checkpoint::encode_entry, record::record_hash, SignedCheckpoint, VerifierKey};

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "MANIFEST";
/// The manifest's first line.
pub const MAGIC: &str = "aerodb-backup v1";
/// The largest manifest read (checked before reading it).
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;
/// The most files a manifest may list.
pub const MAX_FILES: usize = 100_000;
/// The longest checkpoint note a manifest may carry (the checkpoint log's own entry limit).
pub const MAX_NOTE_BYTES: usize = 64 << 10;

/// Where a piece of a backup comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The first `len` bytes of a file of the data directory.
    File {
        /// The file.
        path: PathBuf,
        /// Bytes to take from its start.
        len: u64,
    },
    /// Bytes made for the backup (the checkpoint log of the cut).
    Bytes(Vec<u8>),
}

/// One file of a backup: its path in the backup directory and where its bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Path relative to the backup directory (`wal/<segment>.seg` or `checkpoints.log`).
    pub rel: String,
    /// Its bytes.
    pub source: Source,
}

/// A file as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the backup directory.
    pub path: String,
    /// Its length in bytes.
    pub size: u64,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// A backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The log's origin.
    pub origin: String,
    /// The log's verifier key (what the checkpoint is signed with).
    pub verifier: String,
    /// Records in the backup: the checkpoint's size.
    pub size: u64,
    /// The chain head at that size: the record hash of record `size` (all zeros for an empty log).
    pub head: [u8; 32],
    /// The fencing epoch of the checkpoint.
    pub epoch: u64,
    /// The WAL segment capacity of the log.
    pub segment_bytes: u64,
    /// When the backup was made (Unix ms).
    pub created_ms: u64,
    /// The tool that made it (`aerodb <version>`).
    pub tool: String,
    /// Every file but the manifest.
    pub files: Vec<FileEntry>,
    /// The signed checkpoint note the cut is bound to, verbatim (cosignatures included).
    pub checkpoint: String,
}

fn bad(what: impl Into<String>) -> String {
    what.into()
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32], String> {
    let v = hex::decode(s).map_err(|_| bad(format!("{what} is not hex: {s:?}")))?;
    v.try_into().map_err(|_| bad(format!("{what} is not 32 bytes")))
}

/// Whether `p` is a path a backup may hold: `checkpoints.log` or `wal/<20 digits>.seg`.
#[must_use]
pub fn allowed_path(p: &str) -> bool {
    p == "checkpoints.log"
        || p.strip_prefix("wal/")
            .and_then(|n| n.strip_suffix(".seg"))
            .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Manifest {
    /// The manifest's bytes: the fields as lines, the checkpoint note as a length-prefixed block, and last the
    /// SHA-256 of everything before it.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "{MAGIC}\norigin {}\nverifier {}\nsize {}\nhead {}\nepoch {}\nsegment_bytes {}\ncreated_ms {}\ntool {}\n",
            self.origin,
            self.verifier,
            self.size,
            hex::encode(self.head),
            self.epoch,
            self.segment_bytes,
            self.created_ms,
            self.tool
        );
        for f in &self.files {
            s.push_str(&format!("file {} {} {}\n", f.size, hex::encode(f.sha256), f.path));
        }
        s.push_str(&format!("checkpoint {}\n", self.checkpoint.len()));
        s.push_str(&self.checkpoint);
        let sum = hex::encode(Sha256::digest(s.as_bytes()));
        s.push_str(&format!("sha256 {sum}\n"));
        s.into_bytes()
    }

    /// Parses and checks a manifest from untrusted bytes: its checksum first, then every field (lengths bounded
    /// before anything is allocated for them).
    pub fn decode(b: &[u8]) -> Result<Manifest, String> {
        if b.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                b.len()
            )));
        }
        // The checksum line is the last line: `sha256 <64 hex>\n`.
        const SUM_LINE: usize = "sha256 \n".len() + 64;
        if b.len() < SUM_LINE || !b.ends_with(b"\n") {
            return Err(bad("the manifest is truncated (no checksum line)"));
        }
        let (body, sum_line) = b.split_at(b.len() - SUM_LINE);
        let sum_line = std::str::from_utf8(sum_line).map_err(|_| bad("the checksum line is not UTF-8"))?;
        let want = sum_line
            .strip_prefix("sha256 ")
            .and_then(|s| s.strip_suffix('\n'))
            .ok_or_else(|| bad("the manifest does not end with its sha256 line"))?;
        let got = hex::encode(Sha256::digest(body));
        if got != want {
            return Err(bad(format!(
                "the manifest's checksum does not match (says {want}, is {got})"
            )));
        }
        let text = std::str::from_utf8(body).map_err(|_| bad("the manifest is not UTF-8"))?;
        let (head, note) = match text.find("\ncheckpoint ") {
            Some(i) => (&text[..=i], &text[i + 1..]),
            None => return Err(bad("the manifest has no checkpoint")),
        };
        let (cp_line, note) = note
            .split_once('\n')
            .ok_or_else(|| bad("the checkpoint line is cut"))?;
        let len: usize = cp_line
            .strip_prefix("checkpoint ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad(format!("bad checkpoint line {cp_line:?}")))?;
        if len > MAX_NOTE_BYTES || len != note.len() {
            return Err(bad(format!(
                "the checkpoint block says {len} bytes but holds {}",
                note.len()
            )));
        }
        let mut lines = head.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(format!(
                "not an AeroDB backup manifest (first line is not {MAGIC:?})"
            )));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let l = lines
                .next()
                .ok_or_else(|| bad(format!("the manifest ends before {name}")))?;
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("expected {name}, found {l:?}")))
        };
        let num = |v: String, name: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{name} is not a number: {v:?}")))
        };
        let origin = field("origin")?;
        let verifier = field("verifier")?;
        let size = num(field("size")?, "size")?;
        let head_hash = hex32(&field("head")?, "head")?;
        let epoch = num(field("epoch")?, "epoch")?;
        let segment_bytes = num(field("segment_bytes")?, "segment_bytes")?;
        let created_ms = num(field("created_ms")?, "created_ms")?;
        let tool = field("tool")?;
        let mut files = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for l in lines {
            if files.len() >= MAX_FILES {
                return Err(bad(format!("the manifest lists more than {MAX_FILES} files")));
            }
            let rest = l
                .strip_prefix("file ")
                .ok_or_else(|| bad(format!("unexpected line {l:?}")))?;
            let mut parts = rest.splitn(3, ' ');
            let (Some(sz), Some(sum), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(format!("bad file line {l:?}")));
            };
            if !allowed_path(path) {
                return Err(bad(format!(
                    "the manifest lists a path a backup never holds: {path:?}"
                )));
            }
            if !seen.insert(path.to_owned()) {
                return Err(bad(format!("the manifest lists {path} twice")));
            }
            files.push(FileEntry {
                path: path.to_owned(),
                size: num(sz.to_owned(), "a file size")?,
                sha256: hex32(sum, "a file checksum")?,
            });
        }
        Ok(Manifest {
            origin,
            verifier,
            size,
            head: head_hash,
            epoch,
            segment_bytes,
            created_ms,
            tool,
            files,
            checkpoint: note.to_owned(),
        })
    }
}

/// The WAL segments of a data directory, by number, with their headers.
fn segments(dir: &Path) -> Result<Vec<(PathBuf, SegmentHeader, u64)>, String> {
    let wal = dir.join("wal");
    let rd = std::fs::read_dir(&wal).map_err(|e| format!("reading {}: {e}", wal.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("reading {}: {e}", wal.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        if !allowed_path(&format!("wal/{name}")) {
            continue;
        }
        let path = e.path();
        let f = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        f.read_exact_at(&mut h, 0)
            .map_err(|e| format!("reading the header of {}: {e}", path.display()))?;
        let header = SegmentHeader::decode(&h)
            .map_err(|e| format!("{}: bad segment header: {e:?}", path.display()))?;
        out.push((path, header, len));
    }
    out.sort_by_key(|(_, h, _)| h.segment_id);
    Ok(out)
}

/// The segment capacity of the log in `dir` (from its first segment's header; `None` without segments).
pub fn segment_bytes(dir: &Path) -> Result<Option<u64>, String> {
    Ok(segments(dir)?.first().map(|(_, h, _)| h.segment_bytes))
}

/// The end offset of record `last`'s frame in segment `path` (whose first record is `first`), and that record's
/// body, reading frame headers from the start of the segment.
fn frame_end(path: &Path, first: u64, last: u64, len: u64) -> Result<(u64, Vec<u8>), String> {
    let f = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut off = SEGMENT_HEADER_LEN as u64;
    let mut h = [0u8; FRAME_HEADER_LEN];
    for c in first..=last {
        if off + FRAME_HEADER_LEN as u64 > len {
            return Err(format!("{} ends before record {c}", path.display()));
        }
        f.read_exact_at(&mut h, off)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let fh = decode_frame_header(&h, MAX_FRAME_BODY_BYTES).map_err(|e| {
            format!(
                "{}: no valid frame for record {c} at offset {off}: {e:?}",
                path.display()
            )
        })?;
        if fh.commit_id.0 != c {
            return Err(format!(
                "{}: record {} where {c} was expected",
                path.display(),
                fh.commit_id.0
            ));
        }
        if c == last {
            let mut body = vec![0u8; fh.body_len as usize];
            f.read_exact_at(&mut body, off + FRAME_HEADER_LEN as u64)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            return Ok((off + fh.frame_len() as u64, body));
        }
        off += fh.frame_len() as u64;
    }
    Err(format!("{}: record {last} not found", path.display()))
}

/// The pieces of a backup of the data directory `dir` cut at checkpoint `cut` (its size `N`), given the log's
/// checkpoint notes in log order: segments before the one holding `N`, that one up to `N`'s frame end, and a
/// checkpoint log of the notes of at most `N` records. Also the record hash of `N` (the chain head). Reads only
/// bytes that are durable and never rewritten (a running node appends after them), so it works on a live node.
pub fn plan(
    dir: &Path,
    notes: &[String],
    cut: &SignedCheckpoint,
    key: &VerifierKey,
) -> Result<(Vec<Piece>, [u8; 32]), String> {
    let n = cut.checkpoint.size;
    let mut pieces = Vec::new();
    let mut head = [0u8; 32];
    if n > 0 {
        let segs = segments(dir)?;
        let holding = segs
            .iter()
            .rposition(|(_, h, _)| h.first_commit_id.0 <= n)
            .ok_or_else(|| format!("no segment holds record {n}"))?;
        for (path, h, len) in &segs[..holding] {
            pieces.push(Piece {
                rel: format!("wal/{:020}.seg", h.segment_id.0),
                source: Source::File {
                    path: path.clone(),
                    len: *len,
                },
            });
        }
        let (path, h, len) = &segs[holding];
        let (end, body) = frame_end(path, h.first_commit_id.0, n, *len)?;
        head = record_hash(&body);
        pieces.push(Piece {
            rel: format!("wal/{:020}.seg", h.segment_id.0),
            source: Source::File {
                path: path.clone(),
                len: end,
            },
        });
    }
    let mut log = Vec::new();
    for note in notes {
        let c = SignedCheckpoint::verify(note, key)
            .map_err(|e| format!("a checkpoint of the log does not verify: {e}"))?;
        if c.checkpoint.size <= n {
            log.extend_from_slice(&encode_entry(note));
        }
    }
    pieces.push(Piece {
        rel: "checkpoints.log".into(),
        source: Source::Bytes(log),
    });
    Ok((pieces, head))
}

/// Copies `reader` into `out` (created new), hashing as it goes; syncs it. Returns the length and SHA-256.
pub fn write_hashed(
    mut reader: impl Read,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, [u8; 32]), String> {
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let k = reader
            .read(&mut buf)
            .map_err(|e| format!("reading for {}: {e}", out.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        f.write_all(&buf[..k])
            .map_err(|e| format!("writing {}: {e}", out.display()))?;
        total += k as u64;
        progress(k as u64);
    }
    f.sync_all()
        .map_err(|e| format!("syncing {}: {e}", out.display()))?;
    Ok((total, h.finalize().into()))
}

/// The bytes of a piece, as a reader.
pub fn open_piece(p: &Piece) -> Result<Box<dyn Read + Send>, String> {
    match &p.source {
        Source::File { path, len } => {
            let f = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            Ok(Box::new(f.take(*len)))
        }
        Source::Bytes(b) => Ok(Box::new(std::io::Cursor::new(b.clone()))),
    }
}

/// Syncs directory `dir` (so the names of the files just created in it are durable).
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(u64, [u8; 32]), String> {
    let mut f = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        total += k as u64;
    }
    Ok((total, h.finalize().into()))
}

/// What the offline checks of a backup directory found: the manifest, or every problem (precise, one per line).
pub fn check_files(dir: &Path) -> Result<Manifest, Vec<String>> {
    check_listing(dir, true)
}

/// [`check_files`], with the files' checksums compared only when `hash` (otherwise names and sizes: the caller
/// hashes them as it copies them, [`materialize`]).
pub fn check_listing(dir: &Path, hash: bool) -> Result<Manifest, Vec<String>> {
    let path = dir.join(MANIFEST);
    let len = std::fs::metadata(&path)
        .map_err(|e| vec![format!("{}: {e}", path.display())])?
        .len();
    if len > MAX_MANIFEST_BYTES {
        return Err(vec![format!(
            "{}: {len} bytes; the limit is {MAX_MANIFEST_BYTES}",
            path.display()
        )]);
    }
    let bytes = std::fs::read(&path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let m = Manifest::decode(&bytes).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let mut problems = Vec::new();
    // What is there, besides the manifest.
    let mut present = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{}: {e}", d.display()));
                continue;
            }
        };
        for e in rd.flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push((e.path(), format!("{name}/"))),
                Ok(_) if name == MANIFEST => {}
                Ok(_) => {
                    present.insert(name, e.path());
                }
                Err(err) => problems.push(format!("{name}: {err}")),
            }
        }
    }
    for f in &m.files {
        match present.remove(&f.path) {
            None => problems.push(format!(
                "missing file {} (the manifest lists {} bytes)",
                f.path, f.size
            )),
            Some(p) => match if hash {
                sha256_file(&p)
            } else {
                std::fs::metadata(&p)
                    .map(|m| (m.len(), f.sha256))
                    .map_err(|e| format!("{}: {e}", p.display()))
            } {
                Err(e) => problems.push(e),
                Ok((size, _)) if size != f.size => problems.push(format!(
                    "{} is {size} bytes; the manifest says {}",
                    f.path, f.size
                )),
                Ok((_, sum)) if sum != f.sha256 => problems.push(format!(
                    "{} does not match its checksum (manifest {}, file {})",
                    f.path,
                    hex::encode(f.sha256),
                    hex::encode(sum)
                )),
                Ok(_) => {}
            },
        }
    }
    for extra in present.keys() {
        problems.push(format!("extra file {extra} (not in the manifest)"));
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(problems)
    }
}

/// Lays a checked backup out as a data directory in `target` (which must be empty or absent): its segments (the
/// last padded back to its capacity with zeros, so it is an active segment) and checkpoint log, each synced.
pub fn materialize(backup: &Path, m: &Manifest, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(target.join("wal")).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let last_seg = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("wal/"))
        .map(|f| f.path.clone())
        .max();
    for f in &m.files {
        let src = backup.join(&f.path);
        let dst = target.join(&f.path);
        let r = File::open(&src).map_err(|e| format!("opening {}: {e}", src.display()))?;
        let (_, sum) = write_hashed(r, &dst, &mut |_| {})?;
        if sum != f.sha256 {
            return Err(format!(
                "{} does not match its checksum (manifest {}, file {})",
                f.path,
                hex::encode(f.sha256),
                hex::encode(sum)
            ));
        }
        if Some(&f.path) == last_seg.as_ref() {
            if f.size > m.segment_bytes {
                return Err(format!(
                    "{} is longer than a segment ({} bytes)",
                    f.path, m.segment_bytes
                ));
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&dst)
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            file.set_len(m.segment_bytes)
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            file.sync_all().map_err(|e| format!("{}: {e}", dst.display()))?;
        }
    }
    sync_dir(&target.join("wal"))?;
    sync_dir(target)
}

/// The record hash of record `size` (the chain head) in the data directory `dir`, read from its segments (all
/// zeros for 0).
pub fn head_of(dir: &Path, size: u64) -> Result<[u8; 32], String> {
    if size == 0 {
        return Ok([0; 32]);
    }
    let segs = segments(dir)?;
    let (path, h, len) = segs
        .iter()
        .rev()
        .find(|(_, h, _)| h.first_commit_id.0 <= size)
        .ok_or_else(|| format!("no segment holds record {size}"))?;
    let (_, body) = frame_end(path, h.first_commit_id.0, size, *len)?;
    Ok(record_hash(&body))
}

/// What [`for_each_record`] calls with each record's CommitId and body.
pub type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// Calls `f` with each record's CommitId and body, `1..=size`, reading the segments of `dir` in order (each frame's
/// header is checked for its CommitId; the full checks are the verifier's).
pub fn for_each_record(dir: &Path, size: u64, f: &mut RecordVisitor<'_>) -> Result<(), String> {
    let mut next = 1u64;
    for (path, h, len) in segments(dir)? {
        if next > size {
            break;
        }
        if h.first_commit_id.0 != next {
            return Err(format!(
                "{} starts at record {}, expected {next}",
                path.display(),
                h.first_commit_id.0
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut off = SEGMENT_HEADER_LEN;
        while next <= size && off + FRAME_HEADER_LEN <= bytes.len() && (off as u64) < len {
            let Ok(fh) = decode_frame_header(&bytes[off..], MAX_FRAME_BODY_BYTES) else {
                break;
            };
            let end = off + fh.frame_len();
            if fh.commit_id.0 != next || end > bytes.len() {
                return Err(format!(
                    "{}: a bad frame at offset {off} (record {next} expected)",
                    path.display()
                ));
            }
            f(next, &bytes[off + FRAME_HEADER_LEN..end])?;
            next += 1;
            off = end;
        }
    }
    if next <= size {
        return Err(format!("the log ends at record {}, before {size}", next - 1));
    }
    Ok(())
}

/// Builds the Merkle store of the data directory `dir` from its first `size` records (a restored or verified
/// backup has none: it is derived), so proofs between its checkpoints can be computed.
pub fn build_merkle(dir: &Path, size: u64) -> Result<(), String> {
    let fs: std::sync::Arc<dyn aerodb_wal::fs::Fs> = std::sync::Arc::new(aerodb_wal::fs::RealFs);
    let (mut store, _) = crate::store::MerkleStore::open(fs, &dir.join("merkle"))
        .map_err(|e| format!("opening the Merkle store: {e}"))?;
    if store.size() != 0 {
        return Err("the Merkle store is not empty".into());
    }
    for_each_record(dir, size, &mut |_, body| {
        store
            .push(crate::merkle::leaf_hash(&record_hash(body)))
            .map_err(|e| format!("building the Merkle store: {e}"))
    })?;
    store
        .flush()
        .map_err(|e| format!("flushing the Merkle store: {e}"))?;
    store.sync().map_err(|e| format!("syncing the Merkle store: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            origin: "log".into(),
            verifier: "log+01020304+AQ".into(),
            size: 7,
            head: [3; 32],
            epoch: 2,
            segment_bytes: 4096,
            created_ms: 1,
            tool: "aerodb test".into(),
            files: vec![
                FileEntry {
                    path: "wal/00000000000000000001.seg".into(),
                    size: 100,
                    sha256: [1; 32],
                },
                FileEntry {
                    path: "checkpoints.log".into(),
                    size: 10,
                    sha256: [2; 32],
                },
            ],
            // A note whose text holds a line that looks like the manifest's own.
            checkpoint: "log\n7\nroot\nepoch 2\n\ncheckpoint 99\n".into(),
        }
    }

    #[test]
    fn manifests_round_trip_and_every_change_is_caught() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        // Any flipped byte: the checksum (or the checksum line itself) refuses it.
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x20;
            assert!(Manifest::decode(&t).is_err(), "byte {i} flipped was accepted");
        }
        assert!(Manifest::decode(&b[..b.len() - 1]).is_err());
        // A path outside the backup's layout is refused even with a valid checksum.
        let mut bad = sample();
        bad.files[0].path = "wal/../../etc/passwd".into();
        assert!(Manifest::decode(&bad.encode())
            .unwrap_err()
            .contains("never holds"));
        let mut dup = sample();
        dup.files[1].path = dup.files[0].path.clone();
        assert!(Manifest::decode(&dup.encode()).unwrap_err().contains("twice"));
        // Limits are checked before reading on.
        let big = vec![b'a'; MAX_MANIFEST_BYTES as usize + 1];
        assert!(Manifest::decode(&big).unwrap_err().contains("limit"));
    }
}
