//! The operating system's file system.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::Path,
};

use bytes::Bytes;

use super::{DirLock, Fs, FsFile, OpenMode};

/// Real files: `pwrite`, `fdatasync`, directory `fsync`, `flock`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

#[derive(Debug)]
struct RealLock(#[expect(dead_code, reason = "held only so the flock lives as long as the guard")] File);

impl DirLock for RealLock {}

impl Fs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Data directories are private to the owner (RELIABILITY.md, Security).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    out.push(name.to_owned());
                }
            }
        }
        Ok(out)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true).mode(0o600),
        };
        Ok(Box::new(RealFile(o.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn try_lock(&self, lock_file: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_file)?;
        match f.try_lock() {
            Ok(()) => {
                // Record the owner for operators; the lock itself is the flock, not the contents.
                let pid = format!("{}\n", std::process::id());
                f.set_len(0)?;
                f.write_all_at(pid.as_bytes(), 0)?;
                Ok(Some(Box::new(RealLock(f))))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn try_lock_read(&self, lock_file: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let f = match OpenOptions::new().read(true).open(lock_file) {
            Ok(f) => f,
            // Nobody ever wrote here: nothing to exclude, and nothing is created.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(Box::new(NoLock))),
            Err(e) => return Err(e),
        };
        match f.try_lock_shared() {
            Ok(()) => Ok(Some(Box::new(RealLock(f)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// The lock of a directory that has no lock file (a reader creates none).
#[derive(Debug)]
struct NoLock;

impl DirLock for NoLock {}

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn map(&self) -> io::Result<Bytes> {
        crate::mmap::map_readonly(&self.0)
    }

    fn map_live(&self) -> io::Result<Option<Bytes>> {
        crate::mmap::map_readonly(&self.0).map(Some)
    }
}
