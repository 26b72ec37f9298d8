//! The persisted role (`<data dir>/role.state`): written atomically (temporary file, `fdatasync`, rename, fsync
//! the directory) before the node acts on a new state, and read at start — a restarted node resumes the role it
//! had, and a halted node stays halted (seed 004 §9: crash recovery never infers authority).
//!
//! Layout (little-endian): `magic "AERODBRS" | version u32 = 1 | highest_epoch u64 | body_len u32 | body |
//! crc32` (CRC over everything before it). The body is a state: `tag u8` then 0 Uninitialized; 1 PrimaryActive
//! `epoch u64`; 2 ReplicaActive `epoch u64 | primary str`; 3 ReplicationHalted `reason | from state` (the inner
//! state is never halted). A `str` is `len u16 | UTF-8` (≤ 2048 bytes). A reason is `tag u8` then 0 Gap
//! `expected u64 | got u64`; 1 Fork `commit_id u64 | ours[32] | theirs[32]`; 2 EpochRegression `last u64 |
//! got u64`; 3 Corruption `str`; 4 AuthorityAmbiguity `str`; 5 LogFailed `str`.

use std::path::{Path, PathBuf};

use aerodb_wal::{
    fs::{read_small_file, replace_file, Fs},
    CommitId, Epoch,
};

use crate::{
    role::{HaltReason, RoleMachine, State},
    Error,
};

/// First bytes of the file.
pub const MAGIC: [u8; 8] = *b"AERODBRS";
/// Format version.
pub const VERSION: u32 = 1;
/// Longest string field.
pub const MAX_STR: usize = 2048;
/// Longest body.
pub const MAX_BODY: usize = 8192;
/// The file name in the data directory.
pub const FILE: &str = "role.state";

/// Why bytes are not a valid role file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("role file is malformed: {0}")]
pub struct Malformed(pub String);

fn bad(w: impl Into<String>) -> Malformed {
    Malformed(w.into())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_STR)];
    // Cut at a character boundary so the stored text stays UTF-8.
    let mut end = b.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_state(out: &mut Vec<u8>, s: &State) {
    match s {
        State::Uninitialized => out.push(0),
        State::PrimaryActive { epoch } => {
            out.push(1);
            out.extend_from_slice(&epoch.0.to_le_bytes());
        }
        State::ReplicaActive { epoch, primary } => {
            out.push(2);
            out.extend_from_slice(&epoch.0.to_le_bytes());
            put_str(out, primary);
        }
        State::ReplicationHalted { reason, from } => {
            out.push(3);
            match reason {
                HaltReason::Gap { expected, got } => {
                    out.push(0);
                    out.extend_from_slice(&expected.0.to_le_bytes());
                    out.extend_from_slice(&got.0.to_le_bytes());
                }
                HaltReason::Fork {
                    commit_id,
                    ours,
                    theirs,
                } => {
                    out.push(1);
                    out.extend_from_slice(&commit_id.0.to_le_bytes());
                    out.extend_from_slice(ours);
                    out.extend_from_slice(theirs);
                }
                HaltReason::EpochRegression { last, got } => {
                    out.push(2);
                    out.extend_from_slice(&last.0.to_le_bytes());
                    out.extend_from_slice(&got.0.to_le_bytes());
                }
                HaltReason::Corruption(w) => {
                    out.push(3);
                    put_str(out, w);
                }
                HaltReason::AuthorityAmbiguity(w) => {
                    out.push(4);
                    put_str(out, w);
                }
                HaltReason::LogFailed(w) => {
                    out.push(5);
                    put_str(out, w);
                }
            }
            // A halted state never halts from a halted state (RoleMachine keeps the first reason).
            match &**from {
                State::ReplicationHalted { from, .. } => put_state(out, from),
                other => put_state(out, other),
            }
        }
    }
}

/// Encodes a role machine.
#[must_use]
pub fn encode(m: &RoleMachine) -> Vec<u8> {
    let mut body = Vec::new();
    put_state(&mut body, &m.state);
    let mut out = Vec::with_capacity(28 + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&m.highest_epoch.0.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        if self.0.len() < n {
            return Err(bad(format!(
                "truncated: need {n} more bytes, have {}",
                self.0.len()
            )));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn hash(&mut self) -> Result<[u8; 32], Malformed> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn str(&mut self) -> Result<String, Malformed> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        let n = u16::from_le_bytes(a) as usize;
        if n > MAX_STR {
            return Err(bad(format!("string of {n} bytes exceeds {MAX_STR}")));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }
    fn state(&mut self, nested: bool) -> Result<State, Malformed> {
        Ok(match self.u8()? {
            0 => State::Uninitialized,
            1 => State::PrimaryActive {
                epoch: Epoch(self.u64()?),
            },
            2 => State::ReplicaActive {
                epoch: Epoch(self.u64()?),
                primary: self.str()?,
            },
            3 if !nested => {
                let reason = match self.u8()? {
                    0 => HaltReason::Gap {
                        expected: CommitId(self.u64()?),
                        got: CommitId(self.u64()?),
                    },
                    1 => HaltReason::Fork {
                        commit_id: CommitId(self.u64()?),
                        ours: self.hash()?,
                        theirs: self.hash()?,
                    },
                    2 => HaltReason::EpochRegression {
                        last: Epoch(self.u64()?),
                        got: Epoch(self.u64()?),
                    },
                    3 => HaltReason::Corruption(self.str()?),
                    4 => HaltReason::AuthorityAmbiguity(self.str()?),
                    5 => HaltReason::LogFailed(self.str()?),
                    t => return Err(bad(format!("unknown halt reason {t}"))),
                };
                State::ReplicationHalted {
                    reason,
                    from: Box::new(self.state(true)?),
                }
            }
            3 => return Err(bad("a halted state inside a halted state")),
            t => return Err(bad(format!("unknown state {t}"))),
        })
    }
}

/// Decodes and validates role-file bytes: lengths bounded before use, checksum, no trailing bytes.
pub fn decode(b: &[u8]) -> Result<RoleMachine, Malformed> {
    if b.len() < 28 || b[..8] != MAGIC {
        return Err(bad("bad magic or length"));
    }
    let end = b.len() - 4;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[end..]);
    if crc32fast::hash(&b[..end]) != u32::from_le_bytes(crc) {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader(&b[8..end]);
    let mut v = [0u8; 4];
    v.copy_from_slice(r.take(4)?);
    if u32::from_le_bytes(v) != VERSION {
        return Err(bad(format!("unknown version {}", u32::from_le_bytes(v))));
    }
    let highest_epoch = r.u64()?;
    let mut l = [0u8; 4];
    l.copy_from_slice(r.take(4)?);
    let body_len = u32::from_le_bytes(l) as usize;
    if body_len > MAX_BODY || body_len != r.0.len() {
        return Err(bad(format!("body length {body_len} does not match the file")));
    }
    let state = r.state(false)?;
    if !r.0.is_empty() {
        return Err(bad(format!("{} trailing bytes", r.0.len())));
    }
    Ok(RoleMachine {
        state,
        highest_epoch: Epoch(highest_epoch),
    })
}

/// The role file of a data directory.
#[derive(Debug)]
pub struct RoleFile {
    fs: std::sync::Arc<dyn Fs>,
    dir: PathBuf,
}

impl RoleFile {
    /// The role file in `dir`.
    pub fn new(fs: std::sync::Arc<dyn Fs>, dir: &Path) -> Self {
        Self {
            fs,
            dir: dir.to_owned(),
        }
    }

    /// Reads the persisted role (`Uninitialized` if there is none). A damaged file is an error, never a default:
    /// authority is not inferred.
    pub fn load(&self) -> Result<RoleMachine, Error> {
        let path = self.dir.join(FILE);
        let err = |what: String| Error::RoleFile {
            path: path.display().to_string(),
            what,
        };
        let Some(b) =
            read_small_file(&*self.fs, &path, (MAX_BODY + 28) as u64).map_err(|e| err(e.to_string()))?
        else {
            return Ok(RoleMachine::default());
        };
        decode(&b).map_err(|e| err(e.to_string()))
    }

    /// Writes the role durably (temporary file, `fdatasync`, rename, directory fsync).
    pub fn store(&self, m: &RoleMachine) -> Result<(), Error> {
        replace_file(&*self.fs, &self.dir, FILE, &encode(m)).map_err(|e| Error::RoleFile {
            path: self.dir.join(FILE).display().to_string(),
            what: e.to_string(),
        })
    }
}
