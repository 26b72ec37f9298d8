//! `aerodb backup`, `aerodb backup verify` and `aerodb restore` (B-1, B-2): backups bound to a signed checkpoint,
//! checked offline like `pg_verifybackup`, restored only after the same checks and a rollback guard. The cut and
//! the manifest are `aerodb_engine::backup`; the format is `docs/formats.md`, "Backup".

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aerodb_engine::{
    backup::{self as eb, FileEntry, Manifest},
    merkle, Checkpoint, SignedCheckpoint, VerifierKey, VerifyOptions,
};
use aerodb_proto::v1 as pb;
use aerodb_replication::{
    role::{RoleMachine, State},
    state_file::RoleFile,
};
use aerodb_wal::Epoch;

/// What a backup run made.
#[derive(Clone, Debug)]
pub struct Made {
    /// The manifest written.
    pub manifest: Manifest,
    /// Bytes of all files.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The directory a backup is written to before it is complete (renamed to `out` at the end).
fn partial(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "backup".into(), |n| n.to_string_lossy().to_string());
    out.with_file_name(format!(".{name}.partial"))
}

/// Refuses an `out` that exists and is not an empty directory; removes a leftover partial directory.
fn prepare_out(out: &Path) -> Result<PathBuf, String> {
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        return Err(format!(
            "{} exists and is not empty: a backup goes to a new directory",
            out.display()
        ));
    }
    let tmp = partial(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| format!("removing the leftover {}: {e}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Writes the manifest, syncs, and renames the partial directory to `out`.
fn finish(tmp: &Path, out: &Path, manifest: &Manifest) -> Result<(), String> {
    let m = tmp.join(eb::MANIFEST);
    eb::write_hashed(std::io::Cursor::new(manifest.encode()), &m, &mut |_| {})?;
    eb::sync_dir(&tmp.join("wal")).or_else(|e| if tmp.join("wal").exists() { Err(e) } else { Ok(()) })?;
    eb::sync_dir(tmp)?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| format!("replacing the empty {}: {e}", out.display()))?;
    }
    std::fs::rename(tmp, out).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), out.display()))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        eb::sync_dir(parent)?;
    }
    Ok(())
}

/// The manifest of a backup bound to `cut`, made now by this tool.
fn manifest(
    cut: &SignedCheckpoint,
    verifier: &VerifierKey,
    head: [u8; 32],
    segment_bytes: u64,
    files: Vec<FileEntry>,
) -> Manifest {
    Manifest {
        origin: cut.checkpoint.origin.clone(),
        verifier: verifier.to_string(),
        size: cut.checkpoint.size,
        head,
        epoch: cut.checkpoint.epoch.0,
        segment_bytes,
        created_ms: now_ms(),
        tool: format!("aerodb {}", env!("CARGO_PKG_VERSION")),
        files,
        checkpoint: cut.note.clone(),
    }
}

/// An offline backup of the stopped node's data directory `data`, bound to its newest checkpoint. `progress`
/// sees the total bytes first (as a negative count is impossible, via `set_total`) and then each chunk.
pub fn offline(
    data: &Path,
    out: &Path,
    set_total: &mut dyn FnMut(u64),
    progress: &mut dyn FnMut(u64),
) -> Result<Made, String> {
    let started = Instant::now();
    let key_path = data.join(aerodb_engine::KEY_FILE);
    let key =
        aerodb_engine::SigningKey::load(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let verifier = key.verifier();
    // The checkpoint log and the segments are read as they are (no open, no startup check: `backup verify` and
    // restore check everything); the newest checkpoint is the cut.
    let log = data.join("checkpoints.log");
    let notes = std::fs::read(&log)
        .map_err(|e| format!("{}: {e}", log.display()))
        .and_then(|b| {
            aerodb_engine::checkpoint::parse_entries(&b)
                .map(|(n, _)| n)
                .map_err(|e| format!("{}: {e}", log.display()))
        })?;
    let last = notes.last().ok_or_else(|| {
        format!(
            "{} holds no signed checkpoint: a backup is bound to one",
            data.display()
        )
    })?;
    let cut = SignedCheckpoint::verify(last, &verifier)
        .map_err(|e| format!("the newest checkpoint of {} does not verify: {e}", data.display()))?;
    let segment_bytes = eb::segment_bytes(data)?.unwrap_or(aerodb_wal::Options::default().segment_bytes);
    let (pieces, head) = eb::plan(data, &notes, &cut, &verifier)?;
    let tmp = prepare_out(out)?;
    set_total(pieces.iter().map(piece_len).sum());
    let mut files = Vec::new();
    let mut bytes = 0;
    for p in &pieces {
        let (size, sum) = eb::write_hashed(eb::open_piece(p)?, &tmp.join(&p.rel), progress)?;
        bytes += size;
        files.push(FileEntry {
            path: p.rel.clone(),
            size,
            sha256: sum,
        });
    }
    let manifest = manifest(&cut, &verifier, head, segment_bytes, files);
    finish(&tmp, out, &manifest)?;
    Ok(Made {
        manifest,
        bytes,
        elapsed: started.elapsed(),
    })
}

fn piece_len(p: &eb::Piece) -> u64 {
    match &p.source {
        eb::Source::File { len, .. } => *len,
        eb::Source::Bytes(b) => b.len() as u64,
    }
}

/// An online backup from a running node over gRPC (`Backup`, admin token in `auth`), written to `out`.
pub async fn online(
    client: &mut pb::ledger_client::LedgerClient<tonic::transport::Channel>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    out: &Path,
    set_total: &mut dyn FnMut(u64),
    progress: &mut dyn FnMut(u64),
) -> Result<Made, String> {
    use pb::backup_chunk::Part;
    use sha2::Digest as _;
    use std::io::Write as _;
    let started = Instant::now();
    let tmp = prepare_out(out)?;
    let mut req = tonic::Request::new(pb::BackupRequest {});
    if let Some(a) = auth {
        req.metadata_mut().insert("authorization", a);
    }
    let mut stream = client
        .backup(req)
        .await
        .map_err(|s| format!("the node refused the backup: {}", s.message()))?
        .into_inner();
    let next = |r: Result<Option<pb::BackupChunk>, tonic::Status>| -> Result<Option<Part>, String> {
        r.map(|c| c.and_then(|c| c.part))
            .map_err(|s| format!("the backup stream broke: {}", s.message()))
    };
    let Some(Part::Start(start)) = next(stream.message().await)? else {
        return Err("the node did not start the backup with its checkpoint".into());
    };
    let verifier =
        VerifierKey::parse(&start.verifier_key).map_err(|e| format!("the node's verifier key: {e}"))?;
    let cut = SignedCheckpoint::verify(&start.checkpoint, &verifier)
        .map_err(|e| format!("the node's checkpoint does not verify under its key: {e}"))?;
    set_total(start.total_bytes);
    let mut files: Vec<FileEntry> = Vec::new();
    // The file being written: its entry, handle, hash and bytes still expected.
    let mut current: Option<(FileEntry, std::fs::File, sha2::Sha256, u64)> = None;
    let mut bytes = 0u64;
    let close = |cur: (FileEntry, std::fs::File, sha2::Sha256, u64),
                 files: &mut Vec<FileEntry>|
     -> Result<(), String> {
        let (mut e, f, h, left) = cur;
        if left != 0 {
            return Err(format!("{} ended {left} bytes short", e.path));
        }
        f.sync_all().map_err(|err| format!("syncing {}: {err}", e.path))?;
        e.sha256 = h.finalize().into();
        files.push(e);
        Ok(())
    };
    loop {
        match next(stream.message().await)? {
            None => break,
            Some(Part::Start(_)) => return Err("a second backup start in one stream".into()),
            Some(Part::File(f)) => {
                if let Some(c) = current.take() {
                    close(c, &mut files)?;
                }
                if !eb::allowed_path(&f.path) || files.iter().any(|e| e.path == f.path) {
                    return Err(format!("the node sent a file a backup never holds: {:?}", f.path));
                }
                let path = tmp.join(&f.path);
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| format!("creating {}: {e}", path.display()))?;
                current = Some((
                    FileEntry {
                        path: f.path,
                        size: f.size,
                        sha256: [0; 32],
                    },
                    file,
                    sha2::Sha256::new(),
                    f.size,
                ));
            }
            Some(Part::Data(d)) => {
                let Some((e, file, h, left)) = current.as_mut() else {
                    return Err("file bytes before any file".into());
                };
                if d.len() as u64 > *left {
                    return Err(format!("{} is longer than announced", e.path));
                }
                file.write_all(&d)
                    .map_err(|err| format!("writing {}: {err}", e.path))?;
                h.update(&d);
                *left -= d.len() as u64;
                bytes += d.len() as u64;
                progress(d.len() as u64);
            }
        }
    }
    if let Some(c) = current.take() {
        close(c, &mut files)?;
    }
    let head: [u8; 32] = if cut.checkpoint.size == 0 {
        [0; 32]
    } else {
        start
            .head
            .as_slice()
            .try_into()
            .map_err(|_| "the node's chain head is not 32 bytes".to_string())?
    };
    let manifest = manifest(&cut, &verifier, head, start.segment_bytes, files);
    finish(&tmp, out, &manifest)?;
    Ok(Made {
        manifest,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// What a full check of a backup established.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The manifest.
    pub manifest: Manifest,
    /// The checkpoint the backup is bound to.
    pub checkpoint: Checkpoint,
    /// Records read and checked.
    pub records: u64,
    /// Checkpoints whose signature and root verified.
    pub checkpoints: usize,
}

/// Every check of a backup laid out as a data directory in `work` (created there; the caller removes or keeps
/// it): files against the manifest, the checkpoint's signature (under `key` when given, else the manifest's key)
/// and binding (size, epoch, chain head), then every frame, record, chain link and checkpoint of the log.
pub fn check(backup: &Path, key: Option<&VerifierKey>, work: &Path) -> Result<Checked, Vec<String>> {
    check_with(backup, key, work, true)
}

/// [`check`]; without `thorough`, the files are hashed only as they are copied and the log is not verified here
/// (restore's own open runs the startup integrity check over every record and checkpoint next).
fn check_with(
    backup: &Path,
    key: Option<&VerifierKey>,
    work: &Path,
    thorough: bool,
) -> Result<Checked, Vec<String>> {
    let m = eb::check_listing(backup, thorough)?;
    let one = |e: String| vec![e];
    let manifest_key =
        VerifierKey::parse(&m.verifier).map_err(|e| one(format!("the manifest's verifier key: {e}")))?;
    let key = match key {
        Some(k) if k.to_string() != m.verifier => {
            return Err(one(format!(
                "the backup is of another log: its key is {}, expected {k}",
                m.verifier
            )))
        }
        Some(k) => k.clone(),
        None => manifest_key,
    };
    let cut = SignedCheckpoint::verify(&m.checkpoint, &key)
        .map_err(|e| one(format!("the manifest's checkpoint does not verify: {e}")))?;
    let c = &cut.checkpoint;
    if c.size != m.size || c.epoch.0 != m.epoch || c.origin != m.origin {
        return Err(one(format!(
            "the manifest says {} records, epoch {}, origin {}; its checkpoint says {}, {}, {}",
            m.size, m.epoch, m.origin, c.size, c.epoch, c.origin
        )));
    }
    eb::materialize(backup, &m, work).map_err(one)?;
    let head = eb::head_of(work, m.size).map_err(one)?;
    if head != m.head {
        return Err(one(format!(
            "the chain head at record {} is {}; the manifest says {}",
            m.size,
            hex::encode(head),
            hex::encode(m.head)
        )));
    }
    let notes = std::fs::read(work.join("checkpoints.log"))
        .map_err(|e| one(format!("checkpoints.log: {e}")))
        .and_then(|b| {
            aerodb_engine::checkpoint::parse_entries(&b)
                .map(|(n, _)| n)
                .map_err(|e| one(format!("checkpoints.log: {e}")))
        })?;
    if !notes.contains(&m.checkpoint) {
        return Err(one(
            "the manifest's checkpoint is not in the backup's checkpoint log".into(),
        ));
    }
    // The Merkle store is derived (never in a backup): built from the backup's own leaves, then checked with
    // everything else.
    eb::build_merkle(work, m.size).map_err(one)?;
    let report = aerodb_engine::verify_dir(
        work,
        &VerifyOptions {
            verifier: Some(key),
            strict: false,
        },
        &mut |_, _| {},
    )
    .map_err(|e| one(format!("verifying the log: {e}")))?;
    let mut problems: Vec<String> = report
        .problems
        .iter()
        .filter(|p| !p.is_repairable())
        .map(|p| format!("{p:?}"))
        .collect();
    if report.records != m.size {
        problems.push(format!(
            "the log holds {} records; the checkpoint {}",
            report.records, m.size
        ));
    }
    if report.checkpoints_ok != report.checkpoints {
        problems.push(format!(
            "{} of {} checkpoints verified",
            report.checkpoints_ok, report.checkpoints
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Checked {
        checkpoint: cut.checkpoint.clone(),
        records: report.records,
        checkpoints: report.checkpoints_ok,
        manifest: m,
    })
}

/// The role a restored node starts in: always explicit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreRole {
    /// A replica of `primary` (gRPC URL) at `epoch`.
    Replica {
        /// The primary it follows.
        primary: String,
        /// The primary's epoch.
        epoch: u64,
    },
    /// The primary of a new term `epoch` (above the backup's).
    Primary {
        /// The new term.
        epoch: u64,
    },
    /// No role: under the etcd authority the election decides; under the static one the configuration does.
    Unassigned,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The checks.
    pub checked: Checked,
    /// The trusted checkpoint's size it was proven consistent with, if one was given.
    pub anchored_at: Option<u64>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Restores `backup` into the new data directory `target` (absent or empty): everything [`check`] checks, then the
/// rollback guard against `trusted` (a checkpoint note the operator trusts: a backup older than it is refused,
/// otherwise a consistency proof from it to the backup's checkpoint, computed from the backup's own leaves, must
/// verify), then the signing key and the explicit `role`. Atomic: everything happens in a hidden sibling directory
/// that is renamed to `target` at the end; a crash before leaves nothing at `target`.
pub fn restore(
    backup: &Path,
    target: &Path,
    signing_key: &Path,
    role: &RestoreRole,
    trusted: Option<&str>,
) -> Result<Restored, Vec<String>> {
    let started = Instant::now();
    let one = |e: String| vec![e];
    if target.exists() && std::fs::read_dir(target).map_or(true, |mut d| d.next().is_some()) {
        return Err(one(format!(
            "{} exists and is not empty: restore goes to a new data directory",
            target.display()
        )));
    }
    let key = aerodb_engine::SigningKey::load(signing_key)
        .map_err(|e| one(format!("{}: {e}", signing_key.display())))?;
    let verifier = key.verifier();
    let work = partial(target);
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| one(format!("removing the leftover {}: {e}", work.display())))?;
    }
    let mut checked = check_with(backup, Some(&verifier), &work, false)?;
    let n = checked.checkpoint.size;
    if let RestoreRole::Primary { epoch } = role {
        if *epoch <= checked.checkpoint.epoch.0 {
            return Err(one(format!(
                "a restored primary needs an epoch above the backup's ({}); got {epoch}",
                checked.checkpoint.epoch
            )));
        }
    }
    // The key, then a replica open: the Merkle store and index are built, the startup check runs again.
    let key_dst = work.join(aerodb_engine::KEY_FILE);
    crate::auth::write_secret_file(
        &key_dst,
        std::fs::read(signing_key).map_err(|e| one(e.to_string()))?,
    )
    .map_err(|e| one(format!("{}: {e}", key_dst.display())))?;
    let db = aerodb_engine::Db::open(
        &work,
        aerodb_engine::Options {
            origin: key.name().to_owned(),
            signing_key: Some(key),
            replica: true,
            checkpoint_every_records: 0,
            checkpoint_interval: None,
            // As the server opens it: records up to what a segment of this size holds.
            wal: aerodb_wal::Options {
                segment_bytes: checked.manifest.segment_bytes,
                max_record_bytes: aerodb_wal::Options::default().max_record_bytes.min(
                    aerodb_wal::Options::largest_record_for(checked.manifest.segment_bytes),
                ),
                ..aerodb_wal::Options::default()
            },
            ..aerodb_engine::Options::default()
        },
    )
    .map_err(|e| {
        one(format!(
            "the restored log does not pass the startup integrity check: {e}"
        ))
    })?;
    let report = db.open_report();
    checked.records = report.records_verified;
    checked.checkpoints = report.checkpoints_verified;
    if report.records_verified != n || db.tip().map(|t| t.commit_id.0).ok() != Some(n) {
        return Err(one(format!(
            "the restored log holds {} records; its checkpoint {n}",
            report.records_verified
        )));
    }
    let mut anchored_at = None;
    if let Some(note) = trusted {
        let t = SignedCheckpoint::verify(note, &verifier)
            .map_err(|e| {
                one(format!(
                    "the trusted checkpoint does not verify under the log's key: {e}"
                ))
            })?
            .checkpoint;
        if t.size > n {
            return Err(one(format!(
                "ROLLBACK REFUSED: the backup holds {n} records but a trusted checkpoint of this log covers {}: \
                 restoring it would undo acknowledged history",
                t.size
            )));
        }
        let proof = db
            .consistency_proof(t.size, n)
            .map_err(|e| one(format!("a consistency proof from {} to {n}: {e}", t.size)))?;
        let ok = if t.size == n {
            t.root == checked.checkpoint.root
        } else {
            t.size == 0 || merkle::verify_consistency(t.size, n, &t.root, &checked.checkpoint.root, &proof)
        };
        if !ok {
            return Err(one(format!(
                "FORK: the backup's history is not an extension of the trusted checkpoint (size {}, root {}): \
                 the consistency proof from the backup's own leaves does not verify",
                t.size,
                hex::encode(t.root)
            )));
        }
        anchored_at = Some(t.size);
    }
    db.close()
        .map_err(|e| one(format!("closing the restored log: {e}")))?;
    let highest = checked.checkpoint.epoch.0;
    let machine = match role {
        RestoreRole::Replica { primary, epoch } => RoleMachine {
            state: State::ReplicaActive {
                epoch: Epoch((*epoch).max(highest)),
                primary: primary.clone(),
            },
            highest_epoch: Epoch((*epoch).max(highest)),
        },
        RestoreRole::Primary { epoch } => RoleMachine {
            state: State::PrimaryActive { epoch: Epoch(*epoch) },
            highest_epoch: Epoch(*epoch),
        },
        RestoreRole::Unassigned => RoleMachine {
            state: State::Uninitialized,
            highest_epoch: Epoch(highest),
        },
    };
    RoleFile::new(std::sync::Arc::new(aerodb_wal::fs::RealFs), &work)
        .store(&machine)
        .map_err(|e| one(format!("writing the role: {e}")))?;
    eb::sync_dir(&work).map_err(one)?;
    if target.exists() {
        std::fs::remove_dir(target)
            .map_err(|e| one(format!("replacing the empty {}: {e}", target.display())))?;
    }
    std::fs::rename(&work, target).map_err(|e| one(format!("renaming into {}: {e}", target.display())))?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        eb::sync_dir(parent).map_err(one)?;
    }
    Ok(Restored {
        checked,
        anchored_at,
        elapsed: started.elapsed(),
    })
}
