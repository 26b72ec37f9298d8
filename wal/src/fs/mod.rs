//! The file-system seam. Every byte the WAL reads or writes goes through [`Fs`] and [`FsFile`], which have three
//! implementations:
//! - [`RealFs`]: the operating system's files, `fdatasync`, directory fsync and `flock`;
//! - [`MemFs`]: memory, which keeps the *written* and the *synced* image of every file and directory apart, so a
//!   simulated power loss ([`MemFs::crash`]) keeps exactly what was synced (and can tear the last write);
//! - [`FaultFs`]: a [`MemFs`] that fails the Nth mutating operation (EIO, ENOSPC, short write; once or for good),
//!   and that can "die" at operation N so crash-point sweeps can enumerate every crash position.

use std::{io, path::Path};

use bytes::Bytes;

mod fault;
mod mem;
mod real;

pub use fault::{FaultFs, FaultKind, FaultPlan};
pub use mem::{CrashMode, MemFs, Tear, UnsyncedFate};
pub use real::RealFs;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Create a new file for reading and writing; fails if it exists.
    CreateNew,
}

/// A directory lock; released on drop.
pub trait DirLock: Send + Sync + std::fmt::Debug {}

/// The operations the WAL needs from a file system.
pub trait Fs: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries in a directory (files only; order unspecified).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>>;
    /// Renames a file (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `lock_file` (created if missing). `Ok(None)` when someone else holds it.
    fn try_lock(&self, lock_file: &Path) -> io::Result<Option<Box<dyn DirLock>>>;

    /// Like [`Fs::try_lock`] for a reader that changes nothing (a read-only open, a verifier): shares the lock
    /// with other readers, excludes a writer, and writes nothing (a missing lock file is not created). The
    /// simulated file systems take the writer's lock.
    fn try_lock_read(&self, lock_file: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        self.try_lock(lock_file)
    }
}

/// An open file.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is an I/O call; emptiness is never asked"
)]
pub trait FsFile: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: makes the data (and a size change) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: makes data and all metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// A read-only view of the whole file. [`RealFs`] memory-maps it; the file must not change afterwards
    /// (the WAL only maps sealed segments, which are immutable).
    fn map(&self) -> io::Result<Bytes>;
    /// A read-only view of the whole file that also shows what is written to it later, or `None` where the file
    /// system has none ([`MemFs`] copies on [`FsFile::map`]; the fault-injecting file system keeps every read on
    /// [`FsFile::read_at`], where its faults are). [`RealFs`] memory-maps the file shared. The WAL maps its
    /// active segment so that a read of a durable frame needs no system call; it reads only bytes below the
    /// durable end, which no write changes while the segment is active, and never shrinks the file below them.
    fn map_live(&self) -> io::Result<Option<Bytes>> {
        Ok(None)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn FsFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = file.read_at(buf, offset)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Replaces `dir/name` with `bytes` durably and atomically: a temporary file `name.tmp` is written and
/// `fdatasync`ed, renamed over `name`, and the directory is fsynced. A crash leaves either the old or the new
/// contents (and perhaps a stale `.tmp`, which the next call removes). The error says which step failed.
pub fn replace_file(fs: &dyn Fs, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let step =
        |op: &str, p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{op} {}: {e}", p.display()));
    let _ = fs.remove_file(&tmp);
    let f = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| step("create", &tmp, e))?;
    f.write_all_at(bytes, 0).map_err(|e| step("write", &tmp, e))?;
    f.sync_data().map_err(|e| step("fsync", &tmp, e))?;
    drop(f);
    fs.rename(&tmp, &path).map_err(|e| step("rename to", &path, e))?;
    fs.sync_dir(dir).map_err(|e| step("fsync directory", dir, e))
}

/// Reads a whole small file of at most `max` bytes; `Ok(None)` if it does not exist. A longer file is an
/// `InvalidData` error (read nothing past the bound).
pub fn read_small_file(fs: &dyn Fs, path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match fs.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.len()?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes is longer than the {max} allowed"),
        ));
    }
    let mut b = vec![0u8; len as usize];
    read_exact_at(&*f, &mut b, 0)?;
    Ok(Some(b))
}
