//! The engines `aerodb-bench` compares, behind one small interface: a durable single-record commit, a durable
//! commit of many records, and a point read. Every peer is configured so that a commit that returns is on disk
//! (the settings are listed in `docs/performance.md`, "Fairness").

use std::{
    os::unix::fs::FileExt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use aerodb_engine::{Db, NewRecord, Op, Options, Payload};
use bytes::Bytes;
use parking_lot::Condvar;

/// Key bytes of record `k` (big-endian, so keys sort in insertion order for every engine).
#[must_use]
pub fn key(k: u64) -> [u8; 8] {
    k.to_be_bytes()
}

/// An engine under test.
pub trait Store: Send + Sync {
    /// Commits one record durably.
    fn put(&self, k: u64, v: &[u8]);
    /// Commits `keys.len()` records durably as one commit.
    fn put_batch(&self, keys: &[u64], v: &[u8]);
    /// Reads record `k`.
    fn get(&self, k: u64) -> Option<Vec<u8>>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// AeroDB linked (`Db`): every put is a hash-chained record, durable (fdatasync) before it returns.
pub struct Aero(pub Arc<Db>);

impl Aero {
    /// Opens a fresh database in `dir` (checkpoints every 100k records, as in the other benchmarks).
    ///
    /// # Panics
    /// If it cannot be opened.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        let opts = Options {
            checkpoint_every_records: 100_000,
            ..Options::default()
        };
        let db = Db::open(dir, opts).expect("open AeroDB");
        // As in `wal-ratios`: one append starts the background preallocation of the next segment (64 MiB of
        // zeros, written and synced ahead of use); let it finish so the run measures appends, not the setup.
        db.append_event("bench-warm-up", Bytes::from_static(b"warm-up"))
            .expect("AeroDB warm-up append");
        std::thread::sleep(std::time::Duration::from_millis(500));
        Self(Arc::new(db))
    }
}

fn put_op(k: u64, v: &[u8]) -> Payload {
    Payload::Batch(vec![Op::Put {
        key: Bytes::copy_from_slice(&key(k)),
        value: Bytes::copy_from_slice(v),
    }])
}

impl Store for Aero {
    fn put(&self, k: u64, v: &[u8]) {
        self.0.append("bench", put_op(k, v)).expect("AeroDB append");
    }
    fn put_batch(&self, keys: &[u64], v: &[u8]) {
        let records: Vec<NewRecord> = keys
            .iter()
            .map(|&k| NewRecord {
                tenant: "bench".into(),
                payload: put_op(k, v),
            })
            .collect();
        self.0.append_many(&records).expect("AeroDB append_many");
    }
    fn get(&self, k: u64) -> Option<Vec<u8>> {
        self.0
            .get("bench", &key(k))
            .expect("AeroDB get")
            .map(|b| b.to_vec())
    }
}

/// SQLite (bundled) in WAL mode with `synchronous=FULL`: a commit fsyncs the WAL. One connection; writers take
/// turns (SQLite has one writer at a time).
pub struct Sqlite(Mutex<rusqlite::Connection>);

impl Sqlite {
    /// Opens a fresh database file in `dir`.
    ///
    /// # Panics
    /// If it cannot be opened.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("sqlite dir");
        let c = rusqlite::Connection::open(dir.join("bench.sqlite")).expect("open SQLite");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
             CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .expect("configure SQLite");
        Self(Mutex::new(c))
    }
}

impl Store for Sqlite {
    fn put(&self, k: u64, v: &[u8]) {
        lock(&self.0)
            .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(rusqlite::params![k as i64, v]))
            .expect("SQLite insert");
    }
    fn put_batch(&self, keys: &[u64], v: &[u8]) {
        let mut c = lock(&self.0);
        let tx = c.transaction().expect("SQLite transaction");
        {
            let mut s = tx
                .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                .expect("prepare");
            for &k in keys {
                s.execute(rusqlite::params![k as i64, v]).expect("SQLite insert");
            }
        }
        tx.commit().expect("SQLite commit");
    }
    fn get(&self, k: u64) -> Option<Vec<u8>> {
        let c = lock(&self.0);
        let mut s = c
            .prepare_cached("SELECT v FROM kv WHERE k = ?1")
            .expect("prepare");
        s.query_row([k as i64], |r| r.get::<_, Vec<u8>>(0)).ok()
    }
}

/// fjall 3: an insert, then `persist(SyncData)` so the journal is on disk before the commit returns.
pub struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    /// Opens a fresh database in `dir`.
    ///
    /// # Panics
    /// If it cannot be opened.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).open().expect("open fjall");
        let ks = db
            .keyspace("kv", fjall::KeyspaceCreateOptions::default)
            .expect("fjall keyspace");
        Self { db, ks }
    }
}

impl Store for Fjall {
    fn put(&self, k: u64, v: &[u8]) {
        self.ks.insert(key(k), v).expect("fjall insert");
        self.db
            .persist(fjall::PersistMode::SyncData)
            .expect("fjall persist");
    }
    fn put_batch(&self, keys: &[u64], v: &[u8]) {
        let mut b = self.db.batch();
        for &k in keys {
            b.insert(&self.ks, key(k), v);
        }
        b.commit().expect("fjall batch");
        self.db
            .persist(fjall::PersistMode::SyncData)
            .expect("fjall persist");
    }
    fn get(&self, k: u64) -> Option<Vec<u8>> {
        self.ks.get(key(k)).expect("fjall get").map(|v| v.to_vec())
    }
}

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("kv");

/// redb 4 with its default durability (`Immediate`: a commit is fsynced before it returns).
pub struct Redb(redb::Database);

impl Redb {
    /// Creates a fresh database file in `dir`.
    ///
    /// # Panics
    /// If it cannot be created.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("redb dir");
        Self(redb::Database::create(dir.join("bench.redb")).expect("open redb"))
    }
}

impl Store for Redb {
    fn put(&self, k: u64, v: &[u8]) {
        self.put_batch(&[k], v);
    }
    fn put_batch(&self, keys: &[u64], v: &[u8]) {
        let tx = self.0.begin_write().expect("redb write");
        {
            let mut t = tx.open_table(REDB_TABLE).expect("redb table");
            for &k in keys {
                t.insert(k, v).expect("redb insert");
            }
        }
        tx.commit().expect("redb commit");
    }
    fn get(&self, k: u64) -> Option<Vec<u8>> {
        use redb::ReadableDatabase as _;
        let tx = self.0.begin_read().expect("redb read");
        let t = tx.open_table(REDB_TABLE).expect("redb table");
        t.get(k).expect("redb get").map(|v| v.value().to_vec())
    }
}

/// RocksDB (opt-in feature `rocksdb`) with `WriteOptions::set_sync(true)`: every write batch is fsynced before it
/// returns.
#[cfg(feature = "rocksdb")]
pub struct Rocks(rocksdb::DB);

#[cfg(feature = "rocksdb")]
impl Rocks {
    /// Opens a fresh database in `dir`.
    ///
    /// # Panics
    /// If it cannot be opened.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        Self(rocksdb::DB::open(&o, dir).expect("open RocksDB"))
    }

    fn sync() -> rocksdb::WriteOptions {
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(true);
        w
    }
}

#[cfg(feature = "rocksdb")]
impl Store for Rocks {
    fn put(&self, k: u64, v: &[u8]) {
        self.0.put_opt(key(k), v, &Self::sync()).expect("RocksDB put");
    }
    fn put_batch(&self, keys: &[u64], v: &[u8]) {
        let mut b = rocksdb::WriteBatch::default();
        for &k in keys {
            b.put(key(k), v);
        }
        self.0.write_opt(b, &Self::sync()).expect("RocksDB write");
    }
    fn get(&self, k: u64) -> Option<Vec<u8>> {
        self.0.get(key(k)).expect("RocksDB get")
    }
}

/// The machine's ceiling: records (a 16-byte header and the value) appended to a preallocated, zero-filled,
/// synced file, one `fdatasync` per commit; concurrent committers share fsyncs (leader/follower group commit: the
/// first waiter writes and syncs everything queued, the others wait for it). No database in the way.
pub struct Ceiling {
    file: std::fs::File,
    len: u64,
    state: parking_lot::Mutex<Group>,
    done: Condvar,
}

#[derive(Default)]
struct Group {
    queued: Vec<u8>,
    queued_upto: u64,
    durable_upto: u64,
    leader: bool,
    offset: u64,
}

impl Ceiling {
    /// Preallocates `len` bytes in `dir`.
    ///
    /// # Panics
    /// On an I/O error.
    #[must_use]
    pub fn open(dir: &Path, len: u64) -> Self {
        std::fs::create_dir_all(dir).expect("ceiling dir");
        let raw = crate::RawCeiling::create(&dir.join("ceiling.dat"), len).expect("preallocate");
        drop(raw);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("ceiling.dat"))
            .expect("open ceiling file");
        Self {
            file,
            len,
            state: parking_lot::Mutex::new(Group::default()),
            done: Condvar::new(),
        }
    }

    fn commit(&self, records: usize, v: &[u8]) {
        let mut s = self.state.lock();
        for _ in 0..records {
            s.queued.extend_from_slice(&(v.len() as u64).to_le_bytes());
            s.queued.extend_from_slice(&[0u8; 8]);
            s.queued.extend_from_slice(v);
        }
        s.queued_upto += 1;
        let mine = s.queued_upto;
        loop {
            if s.durable_upto >= mine {
                return;
            }
            if !s.leader {
                s.leader = true;
                let buf = std::mem::take(&mut s.queued);
                let upto = s.queued_upto;
                if s.offset + buf.len() as u64 > self.len {
                    s.offset = 0;
                }
                let at = s.offset;
                s.offset += buf.len() as u64;
                drop(s);
                self.file.write_all_at(&buf, at).expect("ceiling write");
                self.file.sync_data().expect("ceiling fdatasync");
                s = self.state.lock();
                s.durable_upto = upto;
                s.leader = false;
                self.done.notify_all();
            } else {
                self.done.wait(&mut s);
            }
        }
    }
}

impl Store for Ceiling {
    fn put(&self, _k: u64, v: &[u8]) {
        self.commit(1, v);
    }
    fn put_batch(&self, keys: &[u64], v: &[u8]) {
        self.commit(keys.len(), v);
    }
    fn get(&self, _k: u64) -> Option<Vec<u8>> {
        None
    }
}
