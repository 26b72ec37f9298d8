//! An in-memory file system that models what survives a power loss.
//!
//! Each file has a *written* image (what reads see) and a *synced* image (what `sync_data`/`sync_all` made
//! durable). Each directory has a *current* and a *durable* set of entries (creates, renames and removes become
//! durable on `sync_dir`). [`MemFs::crash`] replaces the written state by what a crash leaves behind, optionally
//! tearing each file's last unsynced write, and invalidates every open handle.
//!
//! Simplification, documented in `docs/formats.md`: directories themselves are durable as soon as they are created.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{DirLock, Fs, FsFile, OpenMode};

/// What happens at a crash to data and directory entries that were not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsyncedFate {
    /// Power loss: everything not synced is gone (except the torn part of each file's last write).
    Lost,
    /// Process crash (`kill -9`): the page cache survives, so every completed write and rename survives.
    Kept,
}

/// How each file's last unsynced write is torn at a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// No tearing: the last write follows the [`UnsyncedFate`] like the others.
    None,
    /// Only a prefix of the last write reached the disk; the rest of its range is as before.
    TornPrefix,
    /// The whole range was written, but its tail reads back as zeros.
    ZeroedTail,
    /// The whole range was written, but its tail is garbage.
    RandomTail,
}

/// A crash to simulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashMode {
    /// The fate of unsynced state.
    pub unsynced: UnsyncedFate,
    /// How the last write of each file is torn.
    pub tear: Tear,
    /// Seed choosing the tear point and garbage bytes.
    pub seed: u64,
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    /// Lowest offset changed since the last sync, if any.
    dirty_from: Option<usize>,
    /// The last unsynced write: offset, bytes before it, bytes written.
    last_write: Option<(usize, Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
}

/// The in-memory file system. Cloning shares the same files.
#[derive(Debug, Default, Clone)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct MemFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    generation: u64,
    writable: bool,
}

#[derive(Debug)]
struct MemLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl DirLock for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut s = self.state.lock();
        if s.generation == self.generation {
            s.locks.remove(&self.path);
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

fn stale() -> io::Error {
    io::Error::other("stale file handle: the simulated machine crashed")
}

/// A small deterministic generator (splitmix64) for tear points and garbage.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl MemFs {
    /// A new, empty file system.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash: afterwards the file system holds what `mode` says survived, all handles and locks of
    /// the old "process" are invalid.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.state.lock();
        s.generation += 1;
        s.locks.clear();
        if mode.unsynced == UnsyncedFate::Lost {
            s.names = s.durable_names.clone();
        } else {
            s.durable_names = s.names.clone();
        }
        let mut rng = mode.seed;
        for inode in s.inodes.values_mut() {
            let mut image = match mode.unsynced {
                UnsyncedFate::Lost => inode.synced.clone(),
                UnsyncedFate::Kept => inode.data.clone(),
            };
            if let Some((offset, before, written)) = inode.last_write.take() {
                if mode.tear != Tear::None && !written.is_empty() {
                    let cut = (splitmix64(&mut rng) % written.len() as u64) as usize;
                    // Start from the range as it was before the write, then lay the torn write over it.
                    let end = offset + written.len();
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    let range = &mut image[offset..end];
                    range.fill(0);
                    range[..before.len().min(written.len())]
                        .copy_from_slice(&before[..before.len().min(written.len())]);
                    match mode.tear {
                        Tear::TornPrefix => range[..cut].copy_from_slice(&written[..cut]),
                        Tear::ZeroedTail => {
                            range[..cut].copy_from_slice(&written[..cut]);
                            range[cut..].fill(0);
                        }
                        Tear::RandomTail => {
                            range[..cut].copy_from_slice(&written[..cut]);
                            for b in &mut range[cut..] {
                                *b = splitmix64(&mut rng) as u8;
                            }
                        }
                        Tear::None => {}
                    }
                }
            }
            inode.data = image.clone();
            inode.synced = image;
            inode.dirty_from = None;
        }
        // Forget inodes no name refers to.
        let live: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
    }

    /// The written image of a file, for tests that inspect or damage bytes.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.state.lock();
        let ino = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.inodes[ino].data.clone())
    }

    /// Replaces a file's content and makes it durable, as if written and synced by someone else (used by tests
    /// to flip bits or splice frames).
    pub fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        let ino = match s.names.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.names.insert(path.to_owned(), ino);
                s.durable_names.insert(path.to_owned(), ino);
                ino
            }
        };
        let inode = s.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        inode.data = bytes.to_vec();
        inode.synced = bytes.to_vec();
        inode.dirty_from = None;
        inode.last_write = None;
        Ok(())
    }

    /// Names of every file, durable or not.
    #[must_use]
    pub fn all_files(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }
}

impl Fs for MemFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let mut p = Some(path);
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            s.dirs.insert(d.to_owned());
            p = d.parent();
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let s = self.state.lock();
        if !s.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        let mut s = self.state.lock();
        let ino = match (mode, s.names.get(path)) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ))
            }
            (OpenMode::CreateNew, None) => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !s.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.names.insert(path.to_owned(), ino);
                ino
            }
            (_, Some(ino)) => *ino,
            (_, None) => return Err(not_found(path)),
        };
        Ok(Box::new(MemFile {
            state: self.state.clone(),
            ino,
            generation: s.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_owned(), ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if !s.dirs.contains(path) {
            return Err(not_found(path));
        }
        let State {
            names, durable_names, ..
        } = &mut *s;
        durable_names.retain(|p, _| p.parent() != Some(path));
        for (p, ino) in names.iter() {
            if p.parent() == Some(path) {
                durable_names.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }

    fn try_lock(&self, lock_file: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let mut s = self.state.lock();
        if !s.locks.insert(lock_file.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Box::new(MemLock {
            state: self.state.clone(),
            path: lock_file.to_owned(),
            generation: s.generation,
        })))
    }
}

impl MemFile {
    fn with<R>(&self, f: impl FnOnce(&mut Inode) -> io::Result<R>) -> io::Result<R> {
        let mut s = self.state.lock();
        if s.generation != self.generation {
            return Err(stale());
        }
        let inode = s.inodes.get_mut(&self.ino).ok_or_else(stale)?;
        f(inode)
    }
}

fn sync(inode: &mut Inode) {
    if let Some(from) = inode.dirty_from.take() {
        inode.synced.resize(inode.data.len(), 0);
        let from = from.min(inode.data.len());
        inode.synced[from..].copy_from_slice(&inode.data[from..]);
    }
    inode.last_write = None;
}

impl FsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|inode| {
            let off = usize::try_from(offset).unwrap_or(usize::MAX);
            if off >= inode.data.len() {
                return Ok(0);
            }
            let n = buf.len().min(inode.data.len() - off);
            buf[..n].copy_from_slice(&inode.data[off..off + n]);
            Ok(n)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        self.with(|inode| {
            let off = usize::try_from(offset).map_err(|_| io::Error::other("offset overflow"))?;
            let end = off + buf.len();
            let before_end = end.min(inode.data.len()).max(off);
            let before = inode
                .data
                .get(off..before_end)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[off..end].copy_from_slice(buf);
            inode.dirty_from = Some(inode.dirty_from.map_or(off, |d| d.min(off)));
            inode.last_write = Some((off, before, buf.to_vec()));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|inode| {
            sync(inode);
            Ok(())
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|inode| Ok(inode.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        self.with(|inode| {
            let len = usize::try_from(len).map_err(|_| io::Error::other("length overflow"))?;
            let from = len.min(inode.data.len());
            inode.data.resize(len, 0);
            inode.dirty_from = Some(inode.dirty_from.map_or(from, |d| d.min(from)));
            Ok(())
        })
    }

    fn map(&self) -> io::Result<Bytes> {
        self.with(|inode| Ok(Bytes::copy_from_slice(&inode.data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOST: CrashMode = CrashMode {
        unsynced: UnsyncedFate::Lost,
        tear: Tear::None,
        seed: 1,
    };

    #[test]
    fn unsynced_data_and_names_are_lost_on_power_loss() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.crash(LOST);
        // The file's data was synced but its directory entry was not.
        assert!(fs.open(&dir.join("a"), OpenMode::Read).is_err());

        let f = fs.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(dir).unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b" lost", 7).unwrap();
        fs.crash(LOST);
        assert!(
            f.read_at(&mut [0u8; 1], 0).is_err(),
            "old handles are stale after a crash"
        );
        assert_eq!(fs.read_file(&dir.join("b")).unwrap(), b"durable");
    }

    #[test]
    fn kept_fate_keeps_page_cache() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        fs.crash(CrashMode {
            unsynced: UnsyncedFate::Kept,
            tear: Tear::None,
            seed: 0,
        });
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"abc");
    }

    #[test]
    fn tears_only_the_last_write() {
        let dir = Path::new("/d");
        for tear in [Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail] {
            for seed in 0..20 {
                let fs = MemFs::new();
                fs.create_dir_all(dir).unwrap();
                let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
                fs.sync_dir(dir).unwrap();
                f.write_all_at(&[1u8; 16], 0).unwrap();
                f.sync_data().unwrap();
                f.write_all_at(&[2u8; 16], 16).unwrap();
                fs.crash(CrashMode {
                    unsynced: UnsyncedFate::Lost,
                    tear,
                    seed,
                });
                let img = fs.read_file(&dir.join("a")).unwrap();
                assert_eq!(&img[..16], &[1u8; 16], "synced prefix must survive");
                assert!(img.len() <= 32);
                assert!(
                    img[16..].iter().any(|&b| b != 2) || img.len() == 16,
                    "{tear:?} seed {seed} kept it all"
                );
            }
        }
    }

    #[test]
    fn second_lock_is_refused_until_release() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let l = fs.try_lock(Path::new("/d/LOCK")).unwrap();
        assert!(l.is_some());
        assert!(fs.try_lock(Path::new("/d/LOCK")).unwrap().is_none());
        drop(l);
        assert!(fs.try_lock(Path::new("/d/LOCK")).unwrap().is_some());
    }
}
