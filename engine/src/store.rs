//! The persisted Merkle index: one append-only file of 32-byte hashes per tree level (`merkle/level-NN.hashes`),
//! read through memory maps.
//!
//! Level `l` holds the perfect-subtree nodes `(l, 0), (l, 1), …`; with `n` leaves it has exactly `n >> l`
//! entries. The store is derived data: it is rebuilt from the WAL when missing or behind, and truncated when a
//! crash left it longer than the log. It is therefore written without `fsync` on the append path; `sync` makes it
//! durable at checkpoints and on close so reopening does not have to rebuild.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use aerodb_wal::fs::{Fs, FsFile, OpenMode};
use bytes::Bytes;
use parking_lot::RwLock;

use crate::merkle::{node_hash, Hash, NodeSource};

/// Length of `merkle/META`: `{ leaves u64 | root[32] | crc32 u32 }`.
const META_LEN: usize = 44;

/// Hashes buffered per level before they are written.
const FLUSH_EVERY: usize = 4096;

/// Errors of the Merkle store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// File I/O failed.
    #[error("Merkle store I/O error during {op} on {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A node outside the stored tree was asked for.
    #[error("Merkle node (level {level}, index {index}) is beyond the stored tree of {size} leaves")]
    Missing {
        /// Level.
        level: u32,
        /// Index.
        index: u64,
        /// Leaves stored.
        size: u64,
    },
}

#[derive(Debug)]
struct Level {
    path: PathBuf,
    /// The level file; `None` in a read-only store whose file does not exist.
    file: Option<Arc<dyn FsFile>>,
    /// Hashes written to the file.
    written: u64,
    /// A map of the file's first `map.len() / 32` hashes.
    map: RwLock<Bytes>,
    /// Hashes `written..` not yet written.
    buf: Vec<Hash>,
}

/// What opening found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreOpenReport {
    /// Leaves trusted (below the synced watermark).
    pub leaves: u64,
    /// Leaves found beyond the watermark and discarded (they are recomputed from the log).
    pub untrusted_leaves: u64,
    /// The stored tree did not match the root recorded with its watermark and was discarded whole.
    pub discarded_for_root_mismatch: bool,
    /// Hashes discarded because a level was longer than its lower level allows (crash mid-flush).
    pub truncated_hashes: u64,
    /// Hashes recomputed because a level was shorter than its lower level implies.
    pub recomputed_hashes: u64,
}

/// The persisted perfect-subtree hashes.
#[derive(Debug)]
pub struct MerkleStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    levels: Vec<Level>,
    size: u64,
    /// Serializes watermark writes and remembers the highest one, so META never moves backwards.
    meta: Arc<parking_lot::Mutex<u64>>,
    /// A read-only store changes no file: repairs and new hashes stay in memory.
    read_only: bool,
}

/// The second half of a sync, run without holding the store: fsync the level files written by
/// [`MerkleStore::prepare_sync`], then record the watermark it captured.
#[derive(Debug)]
pub struct SyncTicket {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    files: Vec<(Arc<dyn FsFile>, PathBuf)>,
    leaves: u64,
    root: Hash,
    meta: Arc<parking_lot::Mutex<u64>>,
    /// False for a read-only store: nothing is written.
    write: bool,
}

impl SyncTicket {
    /// Fsyncs the files and writes the watermark atomically (temp file, fsync, rename, fsync dir).
    pub fn commit(self) -> Result<(), StoreError> {
        if !self.write {
            return Ok(());
        }
        for (f, path) in &self.files {
            f.sync_data().map_err(io("fsync level file", path))?;
        }
        let mut last = self.meta.lock();
        if self.leaves < *last {
            return Ok(());
        }
        let mut b = [0u8; META_LEN];
        b[..8].copy_from_slice(&self.leaves.to_le_bytes());
        b[8..40].copy_from_slice(&self.root);
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("META.tmp");
        let _ = self.fs.remove_file(&tmp);
        let f = self
            .fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(io("create META", &tmp))?;
        f.write_all_at(&b, 0).map_err(io("write META", &tmp))?;
        f.sync_data().map_err(io("fsync META", &tmp))?;
        let meta = self.dir.join("META");
        self.fs.rename(&tmp, &meta).map_err(io("rename META", &meta))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io("fsync directory", &self.dir))?;
        *last = self.leaves;
        Ok(())
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn level_name(l: usize) -> String {
    format!("level-{l:02}.hashes")
}

/// How many leaves the store in `dir` holds past the first `records`, counting only non-zero ones (a file a
/// power loss extended without its data reads as zeros). Reads only; a missing store holds none.
pub fn leaves_beyond(fs: &dyn Fs, dir: &Path, records: u64) -> Result<u64, StoreError> {
    let path = dir.join(level_name(0));
    let file = match fs.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("open level file", &path)(e)),
    };
    let leaves = file.len().map_err(io("stat level file", &path))? / 32;
    if leaves <= records {
        return Ok(0);
    }
    let map = file.map().map_err(io("map level file", &path))?;
    let from = usize::try_from(records * 32).unwrap_or(usize::MAX).min(map.len());
    let to = usize::try_from(leaves * 32).unwrap_or(usize::MAX).min(map.len());
    Ok(map[from..to]
        .chunks_exact(32)
        .filter(|leaf| leaf.iter().any(|&b| b != 0))
        .count() as u64)
}

impl MerkleStore {
    /// Opens (creating if needed) the store in `dir`, repairing levels whose lengths disagree.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path) -> Result<(Self, StoreOpenReport), StoreError> {
        Self::open_mode(fs, dir, false)
    }

    /// Opens the store without changing any file (a read-only database, a verifier): what a writable open would
    /// repair or catch up is done in memory only.
    pub fn open_read_only(fs: Arc<dyn Fs>, dir: &Path) -> Result<(Self, StoreOpenReport), StoreError> {
        Self::open_mode(fs, dir, true)
    }

    fn open_mode(
        fs: Arc<dyn Fs>,
        dir: &Path,
        read_only: bool,
    ) -> Result<(Self, StoreOpenReport), StoreError> {
        let names = if read_only {
            match fs.list_dir(dir) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io("list directory", dir)(e)),
            }
        } else {
            fs.create_dir_all(dir).map_err(io("create directory", dir))?;
            fs.list_dir(dir).map_err(io("list directory", dir))?
        };
        let mut count = 0;
        while names.contains(&level_name(count)) {
            count += 1;
        }
        let mut store = Self {
            fs,
            dir: dir.to_owned(),
            levels: Vec::new(),
            size: 0,
            meta: Arc::default(),
            read_only,
        };
        let mut report = StoreOpenReport::default();
        for l in 0..count {
            store.open_level(l)?;
        }
        let meta = store.read_meta();
        let found = store.levels.first().map_or(0, |l| l.written);
        let (mut leaves, meta_root) = meta.unwrap_or((0, [0u8; 32]));
        if found < leaves {
            // Files shorter than the synced watermark: damaged outside our control. Trust what is there; the
            // root check below decides.
            leaves = found;
        }
        report.untrusted_leaves = found - leaves;
        store.repair_levels(leaves, &mut report)?;
        store.size = leaves;
        if meta.is_some_and(|(m, _)| m == leaves)
            && leaves > 0
            && crate::merkle::root(&store, leaves)? != meta_root
        {
            report.discarded_for_root_mismatch = true;
            store.truncate(0)?;
            leaves = 0;
        }
        report.leaves = leaves;
        store.flush()?;
        Ok((store, report))
    }

    /// Makes level `l` hold exactly `leaves >> l` hashes: cuts what lies beyond, recomputes what is missing
    /// from the level below, and creates missing upper levels.
    fn repair_levels(&mut self, leaves: u64, report: &mut StoreOpenReport) -> Result<(), StoreError> {
        for l in 0..self.levels.len() {
            let want = leaves >> l;
            let have = self.levels[l].written;
            if have > want {
                report.truncated_hashes += have - want;
                self.truncate_level(l, want)?;
            }
            if l > 0 && self.levels[l].written < want {
                for i in self.levels[l].written..want {
                    let left = self.node_at(l - 1, 2 * i)?;
                    let right = self.node_at(l - 1, 2 * i + 1)?;
                    self.levels[l].buf.push(node_hash(&left, &right));
                    report.recomputed_hashes += 1;
                }
            }
        }
        let mut l = self.levels.len();
        while leaves >> l > 0 {
            self.open_level(l)?;
            for i in 0..leaves >> l {
                let left = self.node_at(l - 1, 2 * i)?;
                let right = self.node_at(l - 1, 2 * i + 1)?;
                self.levels[l].buf.push(node_hash(&left, &right));
                report.recomputed_hashes += 1;
            }
            l += 1;
        }
        Ok(())
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("META")
    }

    /// The synced watermark: `(leaves, root)`, if a valid META exists.
    fn read_meta(&self) -> Option<(u64, Hash)> {
        let f = self.fs.open(&self.meta_path(), OpenMode::Read).ok()?;
        let mut b = [0u8; META_LEN];
        aerodb_wal::fs::read_exact_at(&*f, &mut b, 0).ok()?;
        if crc32fast::hash(&b[..40]) != u32::from_le_bytes([b[40], b[41], b[42], b[43]]) {
            return None;
        }
        let leaves = u64::from_le_bytes(b[..8].try_into().ok()?);
        let root: Hash = b[8..40].try_into().ok()?;
        Some((leaves, root))
    }

    fn open_level(&mut self, l: usize) -> Result<(), StoreError> {
        let path = self.dir.join(level_name(l));
        if self.read_only {
            let file = match self.fs.open(&path, OpenMode::Read) {
                Ok(f) => Some(Arc::<dyn FsFile>::from(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("open level file", &path)(e)),
            };
            let (written, map) = match &file {
                Some(f) => (
                    f.len().map_err(io("stat level file", &path))? / 32,
                    f.map().map_err(io("map level file", &path))?,
                ),
                None => (0, Bytes::new()),
            };
            self.levels.push(Level {
                path,
                file,
                written,
                map: RwLock::new(map),
                buf: Vec::new(),
            });
            return Ok(());
        }
        let file = match self.fs.open(&path, OpenMode::ReadWrite) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self
                .fs
                .open(&path, OpenMode::CreateNew)
                .map_err(io("create level file", &path))?,
            Err(e) => return Err(io("open level file", &path)(e)),
        };
        let len = file.len().map_err(io("stat level file", &path))?;
        let written = len / 32;
        if len % 32 != 0 {
            file.set_len(written * 32)
                .map_err(io("truncate partial hash", &path))?;
        }
        let map = file.map().map_err(io("map level file", &path))?;
        let file: Arc<dyn FsFile> = Arc::from(file);
        self.levels.push(Level {
            path,
            file: Some(file),
            written,
            map: RwLock::new(map),
            buf: Vec::new(),
        });
        Ok(())
    }

    fn truncate_level(&mut self, l: usize, n: u64) -> Result<(), StoreError> {
        let level = &mut self.levels[l];
        level.buf.clear();
        level.written = n;
        if self.read_only {
            // Only `written` bounds what is read from the map: the hashes beyond it are gone for this store.
            return Ok(());
        }
        let Some(file) = &level.file else {
            return Ok(());
        };
        file.set_len(n * 32)
            .map_err(io("truncate level file", &level.path))?;
        *level.map.write() = file.map().map_err(io("map level file", &level.path))?;
        Ok(())
    }

    /// Number of leaves.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Cuts the tree back to `leaves` leaves (the log is shorter than the store after a crash).
    pub fn truncate(&mut self, leaves: u64) -> Result<(), StoreError> {
        self.flush()?;
        for l in 0..self.levels.len() {
            if self.levels[l].written > leaves >> l {
                self.truncate_level(l, leaves >> l)?;
            }
        }
        self.size = leaves.min(self.size);
        Ok(())
    }

    fn node_at(&self, level: usize, index: u64) -> Result<Hash, StoreError> {
        let missing = || StoreError::Missing {
            level: level as u32,
            index,
            size: self.size,
        };
        let l = self.levels.get(level).ok_or_else(missing)?;
        if index >= l.written {
            let i = usize::try_from(index - l.written).map_err(|_| missing())?;
            return l.buf.get(i).copied().ok_or_else(missing);
        }
        let at = usize::try_from(index * 32).map_err(|_| missing())?;
        {
            let map = l.map.read();
            if at + 32 <= map.len() {
                let mut h = [0u8; 32];
                h.copy_from_slice(&map[at..at + 32]);
                return Ok(h);
            }
        }
        // Written since the map was made: map the file again (the old map stays valid for its readers).
        let file = l.file.as_ref().ok_or_else(missing)?;
        let fresh = file.map().map_err(io("map level file", &l.path))?;
        let mut h = [0u8; 32];
        h.copy_from_slice(fresh.get(at..at + 32).ok_or_else(missing)?);
        *l.map.write() = fresh;
        Ok(h)
    }

    /// Appends a leaf hash and the nodes it completes.
    pub fn push(&mut self, leaf: Hash) -> Result<(), StoreError> {
        let mut h = leaf;
        let mut level = 0usize;
        let mut index = self.size;
        loop {
            if self.levels.len() == level {
                self.open_level(level)?;
            }
            self.levels[level].buf.push(h);
            if index.is_multiple_of(2) {
                break;
            }
            let left = self.node_at(level, index - 1)?;
            h = node_hash(&left, &h);
            level += 1;
            index /= 2;
        }
        self.size += 1;
        if self.levels[0].buf.len() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered hashes to the level files (no fsync).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        for l in &mut self.levels {
            if l.buf.is_empty() {
                continue;
            }
            let Some(file) = &l.file else { continue };
            let bytes: Vec<u8> = l.buf.iter().flatten().copied().collect();
            file.write_all_at(&bytes, l.written * 32)
                .map_err(io("write level file", &l.path))?;
            l.written += l.buf.len() as u64;
            l.buf.clear();
        }
        Ok(())
    }

    /// Flushes and fsyncs every level file, then records the watermark (META).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.prepare_sync()?.commit()
    }

    /// Writes buffered hashes and captures the watermark (size and root); the returned ticket does the slow part
    /// (fsyncs, META) and can run after the caller released its lock on the store.
    pub fn prepare_sync(&mut self) -> Result<SyncTicket, StoreError> {
        self.flush()?;
        Ok(SyncTicket {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            files: self
                .levels
                .iter()
                .filter_map(|l| Some((l.file.clone()?, l.path.clone())))
                .collect(),
            leaves: self.size,
            write: !self.read_only,
            root: crate::merkle::root(self, self.size)?,
            meta: self.meta.clone(),
        })
    }
}

impl NodeSource for MerkleStore {
    type Error = StoreError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if (index + 1) << level > self.size {
            return Err(StoreError::Missing {
                level,
                index,
                size: self.size,
            });
        }
        self.node_at(level as usize, index)
    }
}

#[cfg(test)]
mod tests {
    use aerodb_wal::fs::MemFs;

    use super::*;
    use crate::merkle::{leaf_hash, root, MemTree};

    #[test]
    fn store_matches_memory_tree_across_flushes_and_reopen() {
        let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
        let dir = Path::new("/db/merkle");
        let (mut s, r) = MerkleStore::open(fs.clone(), dir).unwrap();
        assert_eq!(r.leaves, 0);
        let mut t = MemTree::new();
        for i in 0..10_000u32 {
            let l = leaf_hash(&i.to_le_bytes());
            s.push(l).unwrap();
            t.push(l);
            if i % 997 == 0 {
                assert_eq!(root(&s, s.size()).unwrap(), root(&t, t.size()).unwrap());
            }
        }
        s.sync().unwrap();
        drop(s);
        let (s, r) = MerkleStore::open(fs.clone(), dir).unwrap();
        assert_eq!(
            (r.leaves, r.truncated_hashes, r.recomputed_hashes),
            (10_000, 0, 0)
        );
        for n in [1u64, 2, 3, 4095, 4096, 4097, 9999, 10_000] {
            assert_eq!(root(&s, n).unwrap(), root(&t, n).unwrap(), "size {n}");
        }
    }

    #[test]
    fn crash_leftovers_are_repaired_on_open() {
        let mem = MemFs::new();
        let fs: Arc<dyn Fs> = Arc::new(mem.clone());
        let dir = Path::new("/db/merkle");
        let (mut s, _) = MerkleStore::open(fs.clone(), dir).unwrap();
        let mut t = MemTree::new();
        for i in 0..100u32 {
            let l = leaf_hash(&i.to_le_bytes());
            s.push(l).unwrap();
            t.push(l);
        }
        s.sync().unwrap();
        drop(s);
        // Level 1 lost its last hashes, level 3 gained garbage, level 0 has a torn partial hash.
        let p1 = dir.join(level_name(1));
        let l1 = mem.read_file(&p1).unwrap();
        mem.write_file_durable(&p1, &l1[..l1.len() - 64]).unwrap();
        let p3 = dir.join(level_name(3));
        let mut l3 = mem.read_file(&p3).unwrap();
        l3.extend_from_slice(&[0xAB; 64]);
        mem.write_file_durable(&p3, &l3).unwrap();
        let p0 = dir.join(level_name(0));
        let mut l0 = mem.read_file(&p0).unwrap();
        l0.extend_from_slice(&[1, 2, 3]);
        mem.write_file_durable(&p0, &l0).unwrap();
        let (s, r) = MerkleStore::open(fs, dir).unwrap();
        assert_eq!((r.leaves, r.truncated_hashes, r.recomputed_hashes), (100, 2, 2));
        assert_eq!(root(&s, 100).unwrap(), root(&t, 100).unwrap());
    }
}
