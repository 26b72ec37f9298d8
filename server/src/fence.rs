//! The writer fence (H-1, seed 000 §4): with `--writer-fence-mode required`, a primary writes only while it holds
//! the fence for `--writer-fence-lock-id`, and its epoch is the fence's token.
//!
//! The fence is a small file, `aerodb-fence-<lock id>`, in a directory every writer candidate of the ledger
//! shares (`--writer-fence-dir`). It records the current token (an epoch) and its holder (node id and data
//! directory). Taking the fence — under an exclusive `flock`, so two candidates never interleave — succeeds only
//! with an epoch above the recorded token, or with the same epoch by the same holder (a restart); the token is
//! then written and fsynced. Holding it is checked before and after every durable write: once a newer term has
//! taken the fence, the old primary's next write is refused and the node halts (`AuthorityAmbiguity`), however
//! long it was paused (SIGSTOP) in between.
//!
//! Layout (text, one line): `aerodb-fence v1 token=<epoch> node=<node id> dir=<data dir>\n`.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use parking_lot::Mutex;

use crate::error::{ApiError, ApiResult, Code};

/// Who holds a fence, as recorded in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The fence token: the holder's epoch.
    pub token: u64,
    /// Its node id.
    pub node: String,
    /// Its data directory.
    pub dir: String,
}

/// Largest fence file read (it is one short line).
const MAX_FENCE_BYTES: u64 = 4096;

/// Why a fence could not be taken or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The fence file or directory could not be created, opened, locked, read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the node was doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an AeroDB fence file (never taken as free).
    #[error("fence file: {0}")]
    Malformed(String),
    /// A newer term holds the fence: this node's term is over.
    #[error(
        "writer fence {lock_id} is held by {} ({}) for epoch {}, newer than this node's epoch {mine}: this node's \
         term is over",
        holder.node, holder.dir, holder.token
    )]
    Newer {
        /// The fence.
        lock_id: i64,
        /// Who holds it.
        holder: Holder,
        /// This node's epoch.
        mine: u64,
    },
    /// Another node holds the fence at the same epoch.
    #[error(
        "writer fence {lock_id} is held by {} ({}) for epoch {}: two primaries may not share a fence and an \
         epoch; promote this node with a higher epoch (`aerodb admin promote`) if the other one is gone",
        holder.node, holder.dir, holder.token
    )]
    SameEpoch {
        /// The fence.
        lock_id: i64,
        /// Who holds it.
        holder: Holder,
    },
}

/// Parses a fence file's content.
pub fn parse(text: &str) -> Result<Holder, FenceError> {
    let bad = |what: String| FenceError::Malformed(what);
    let line = text.strip_suffix('\n').unwrap_or(text);
    let rest = line
        .strip_prefix("aerodb-fence v1 token=")
        .ok_or_else(|| bad(format!("not an AeroDB fence file: {line:?}")))?;
    let (token, rest) = rest.split_once(" node=").ok_or_else(|| bad("no node".into()))?;
    let (node, dir) = rest.split_once(" dir=").ok_or_else(|| bad("no dir".into()))?;
    Ok(Holder {
        token: token.parse().map_err(|_| bad(format!("bad token {token:?}")))?,
        node: node.to_owned(),
        dir: dir.to_owned(),
    })
}

fn render(h: &Holder) -> String {
    format!(
        "aerodb-fence v1 token={} node={} dir={}\n",
        h.token, h.node, h.dir
    )
}

fn read_holder(f: &mut File, path: &Path) -> Result<Option<Holder>, FenceError> {
    let io = |what| {
        move |source| FenceError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let len = f.metadata().map_err(io("reading"))?.len();
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_FENCE_BYTES {
        return Err(FenceError::Malformed(format!(
            "{len} bytes; a fence file is one short line"
        )));
    }
    let mut text = String::new();
    f.seek(SeekFrom::Start(0)).map_err(io("reading"))?;
    f.take(MAX_FENCE_BYTES)
        .read_to_string(&mut text)
        .map_err(io("reading"))?;
    parse(&text).map(Some)
}

/// Why a node no longer holds its fence.
#[derive(Clone, Debug)]
pub struct Lost {
    /// For people.
    pub message: String,
    /// The holder now, when the fence file says.
    pub holder: Option<Holder>,
}

/// The etcd authority's lease as the write path sees it (H-2, seed 001's lease semantics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LeaseGate {
    /// No lease: the static authority (the operator, and the fence if one is configured).
    #[default]
    Off,
    /// Writes may be acknowledged until this monotonic instant: the lease's proven end less the safety margin.
    Until(std::time::Instant),
    /// This node may not write now (it does not lead, or it is handing over): why.
    Closed(String),
}

/// The fence as the node uses it: installed at start on a fenced primary, checked around every durable write;
/// under the etcd authority also the lease gate, checked before a write and again before it is acknowledged.
#[derive(Debug, Default)]
pub struct FenceState {
    fence: std::sync::OnceLock<Fence>,
    lost: Mutex<Option<Lost>>,
    gate: Mutex<LeaseGate>,
}

impl FenceState {
    /// Installs the fence this node took at start.
    pub fn install(&self, fence: Fence) {
        let _ = self.fence.set(fence);
    }

    /// The token of the installed fence.
    #[must_use]
    pub fn token(&self) -> Option<u64> {
        self.fence.get().map(Fence::token)
    }

    /// Sets the lease gate (the etcd authority's supervisor keeps it current).
    pub fn set_gate(&self, gate: LeaseGate) {
        *self.gate.lock() = gate;
    }

    /// The lease gate now.
    #[must_use]
    pub fn gate(&self) -> LeaseGate {
        self.gate.lock().clone()
    }

    /// Under the etcd authority: refuses (`NOT_LEADER`) unless this node leads and can prove its lease is still
    /// valid at this moment. Checked before a write (nothing written) and again right before it is acknowledged.
    pub fn check_lease(&self) -> ApiResult<()> {
        match &*self.gate.lock() {
            LeaseGate::Off => Ok(()),
            LeaseGate::Until(t) if std::time::Instant::now() < *t => Ok(()),
            LeaseGate::Until(_) => Err(ApiError::new(
                Code::NotLeader,
                "this node cannot prove that its authority lease is still valid (etcd unreachable or slow); it \
                 acknowledges nothing until it can",
            )),
            LeaseGate::Closed(why) => Err(ApiError::new(Code::NotLeader, why.clone())),
        }
    }

    /// Before and after a durable write on a fenced primary: refuses once the fence was taken by a newer term,
    /// and stops the database's writes at once (the node turns the loss into a halt on its next request). Under
    /// the etcd authority, the lease gate ([`FenceState::check_lease`]).
    pub fn check_write(&self, db: &aerodb_engine::Db) -> ApiResult<()> {
        self.check_lease()?;
        let Some(f) = self.fence.get() else {
            return Ok(());
        };
        f.check().map_err(|lost| {
            db.halt(lost.message.clone());
            let e = ApiError::new(
                Code::Halted,
                format!("{}; the write is not acknowledged", lost.message),
            );
            self.lost.lock().get_or_insert(lost);
            e
        })
    }

    /// A loss not yet turned into a halt.
    pub fn take_lost(&self) -> Option<Lost> {
        self.lost.lock().take()
    }
}

/// A fence this node took.
#[derive(Debug)]
pub struct Fence {
    path: PathBuf,
    me: Holder,
    file: Mutex<File>,
}

impl Fence {
    /// Takes fence `lock_id` in `dir` for `me`, or says why not (a newer term, or another holder at the same epoch).
    pub fn acquire(dir: &Path, lock_id: i64, me: Holder) -> Result<Fence, FenceError> {
        std::fs::create_dir_all(dir).map_err(|source| FenceError::Io {
            what: "creating the fence directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(format!("aerodb-fence-{lock_id}"));
        let io = |what| {
            let path = path.clone();
            move |source| FenceError::Io { what, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the fence"))?;
        file.lock().map_err(io("locking the fence"))?;
        let result = (|| {
            if let Some(h) = read_holder(&mut file, &path)? {
                if h.token > me.token {
                    return Err(FenceError::Newer {
                        lock_id,
                        holder: h,
                        mine: me.token,
                    });
                }
                if h.token == me.token && (h.node != me.node || h.dir != me.dir) {
                    return Err(FenceError::SameEpoch { lock_id, holder: h });
                }
            }
            let text = render(&me);
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(text.as_bytes()))
                .and_then(|()| file.sync_all())
                .map_err(io("writing the fence"))?;
            Ok(())
        })();
        let _ = file.unlock();
        result?;
        Ok(Fence {
            path,
            me,
            file: Mutex::new(file),
        })
    }

    /// Whether this node still holds the fence: `Err` says who holds it now, if anyone can tell (a failure to
    /// read it also means no write may be acknowledged).
    pub fn check(&self) -> Result<(), Lost> {
        let mut f = self.file.lock();
        match read_holder(&mut f, &self.path) {
            Ok(Some(h)) if h == self.me => Ok(()),
            Ok(Some(h)) => Err(Lost {
                message: format!(
                    "writer fence {} was taken by {} ({}) for epoch {}; this node (epoch {}) no longer holds it",
                    self.path.display(),
                    h.node,
                    h.dir,
                    h.token,
                    self.me.token
                ),
                holder: Some(h),
            }),
            Ok(None) => Err(Lost {
                message: format!("writer fence {} is empty", self.path.display()),
                holder: None,
            }),
            Err(e) => Err(Lost {
                message: format!("writer fence: {e}"),
                holder: None,
            }),
        }
    }

    /// The token (this node's epoch).
    #[must_use]
    pub fn token(&self) -> u64 {
        self.me.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_only_go_up_and_one_holder_per_epoch() {
        let dir = std::env::temp_dir().join(format!("aerodb-fence-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let h = |token, node: &str| Holder {
            token,
            node: node.into(),
            dir: format!("/data/{node}"),
        };
        let a = Fence::acquire(&dir, 7, h(1, "a")).expect("first");
        assert!(a.check().is_ok());
        // Same epoch, another node: refused; the same node again (a restart): fine.
        let err = Fence::acquire(&dir, 7, h(1, "b")).expect_err("second primary");
        assert!(err.to_string().contains("two primaries"), "{err}");
        assert!(Fence::acquire(&dir, 7, h(1, "a")).is_ok());
        // Another lock id is another fence.
        assert!(Fence::acquire(&dir, 8, h(1, "b")).is_ok());
        // A newer term takes it; the old holder's check fails from then on, and it cannot take it back.
        let b = Fence::acquire(&dir, 7, h(2, "b")).expect("newer term");
        assert!(b.check().is_ok());
        assert!(a.check().expect_err("superseded").message.contains("epoch 2"));
        assert!(Fence::acquire(&dir, 7, h(1, "a"))
            .expect_err("older")
            .to_string()
            .contains("term is over"));
        // Damaged or foreign content is refused, never taken as free.
        std::fs::write(dir.join("aerodb-fence-9"), "garbage").expect("write");
        assert!(Fence::acquire(&dir, 9, h(5, "c")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parse_round_trips() {
        let h = Holder {
            token: 42,
            node: "n-1".into(),
            dir: "/var/lib/aerodb data".into(),
        };
        assert_eq!(parse(&render(&h)).ok(), Some(h));
        assert!(parse("aerodb-fence v1 token=x node=a dir=b").is_err());
    }
}
