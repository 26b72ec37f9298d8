//! A [`MemFs`] that fails on schedule.
//!
//! Every *mutating* operation (create, write, `sync_data`, `sync_all`, `set_len`, rename, remove, `sync_dir`) gets a
//! number, starting at 0. A [`FaultPlan`] fails the operation with that number (once, or it and every later one);
//! [`FaultFs::die_at`] makes operation N and everything after it fail, which is how a crash-point sweep stops the
//! "process" at each I/O before calling [`MemFs::crash`].

use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{mem::MemFs, DirLock, Fs, FsFile, OpenMode};

/// The error a fault produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`.
    Eio,
    /// `ENOSPC`.
    Enospc,
    /// A write that stores only its first half, then fails with `ENOSPC`. On non-write operations: `ENOSPC`.
    ShortWrite,
}

/// One scheduled fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// The mutating-operation number to fail.
    pub at_op: u64,
    /// What error.
    pub kind: FaultKind,
    /// Fail this and every later mutating operation (a disk that stays full or broken).
    pub persistent: bool,
}

#[derive(Debug, Default)]
struct Plan {
    faults: Vec<FaultPlan>,
    die_at: Option<u64>,
}

/// The fault-injecting file system.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    mem: MemFs,
    ops: Arc<AtomicU64>,
    plan: Arc<Mutex<Plan>>,
    log: Arc<Mutex<Vec<(&'static str, PathBuf)>>>,
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn FsFile>,
    fs: FaultFs,
    path: PathBuf,
}

enum Verdict {
    Proceed,
    Fail(FaultKind),
    Dead,
}

impl FaultFs {
    /// A fault file system over `mem`.
    #[must_use]
    pub fn new(mem: MemFs) -> Self {
        Self {
            mem,
            ops: Arc::default(),
            plan: Arc::default(),
            log: Arc::default(),
        }
    }

    /// The underlying memory file system (for `crash` and inspection).
    #[must_use]
    pub fn mem(&self) -> &MemFs {
        &self.mem
    }

    /// Schedules a fault.
    pub fn inject(&self, fault: FaultPlan) {
        self.plan.lock().faults.push(fault);
    }

    /// Mutating operation `op` and all later ones fail, as if the process died just before it.
    pub fn die_at(&self, op: u64) {
        self.plan.lock().die_at = Some(op);
    }

    /// Clears every scheduled fault and the death point, and restarts the operation count.
    pub fn reset(&self) {
        *self.plan.lock() = Plan::default();
        self.ops.store(0, Ordering::SeqCst);
        self.log.lock().clear();
    }

    /// How many mutating operations were attempted.
    #[must_use]
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Every mutating operation attempted since the last reset, in order: its name and path.
    #[must_use]
    pub fn op_log(&self) -> Vec<(&'static str, PathBuf)> {
        self.log.lock().clone()
    }

    fn verdict(&self, op: &'static str, path: &Path) -> Verdict {
        self.log.lock().push((op, path.to_owned()));
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan.lock();
        if plan.die_at.is_some_and(|d| n >= d) {
            return Verdict::Dead;
        }
        for f in &plan.faults {
            if n == f.at_op || (f.persistent && n > f.at_op) {
                return Verdict::Fail(f.kind);
            }
        }
        Verdict::Proceed
    }

    fn check(&self, op: &'static str, path: &Path) -> io::Result<()> {
        match self.verdict(op, path) {
            Verdict::Proceed => Ok(()),
            Verdict::Fail(kind) => Err(fault_error(kind)),
            Verdict::Dead => Err(dead()),
        }
    }
}

fn fault_error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::Eio => io::Error::from_raw_os_error(libc::EIO),
        FaultKind::Enospc | FaultKind::ShortWrite => io::Error::from_raw_os_error(libc::ENOSPC),
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

impl Fs for FaultFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.mem.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.mem.list_dir(path)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        if mode == OpenMode::CreateNew {
            self.check("create", path)?;
        }
        Ok(Box::new(FaultFile {
            inner: self.mem.open(path, mode)?,
            fs: self.clone(),
            path: path.to_owned(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check("rename", to)?;
        self.mem.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check("remove", path)?;
        self.mem.remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check("sync_dir", path)?;
        self.mem.sync_dir(path)
    }

    fn try_lock(&self, lock_file: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        self.mem.try_lock(lock_file)
    }
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.fs.verdict("write", &self.path) {
            Verdict::Proceed => self.inner.write_all_at(buf, offset),
            Verdict::Fail(FaultKind::ShortWrite) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                Err(fault_error(FaultKind::ShortWrite))
            }
            Verdict::Fail(kind) => Err(fault_error(kind)),
            Verdict::Dead => Err(dead()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.check("sync_data", &self.path)?;
        self.inner.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.fs.check("sync_all", &self.path)?;
        self.inner.sync_all()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check("set_len", &self.path)?;
        self.inner.set_len(len)
    }

    fn map(&self) -> io::Result<Bytes> {
        self.inner.map()
    }
}
