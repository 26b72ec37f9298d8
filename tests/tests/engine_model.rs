//! Property test: random puts, deletes, batches, events and reopens against a `BTreeMap` + `Vec` model,
//! checking `get`, `get_at` at every CommitId, `history`, `scan_prefix` and tenant scans.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_wal::CommitId;
use std::{collections::BTreeMap, path::Path, sync::Arc};

use aerodb_engine::{Db, Op, Payload};
use aerodb_tests::engine_opts;
use aerodb_wal::fs::MemFs;
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8, Vec<u8>),
    Delete(u8, u8),
    Batch(u8, Vec<(u8, Option<Vec<u8>>)>),
    Event(u8, Vec<u8>),
    Reopen,
    FlushIndex,
}

/// Writes of one step: (key number, value or `None` for a delete).
type Writes = Vec<(u8, Option<Vec<u8>>)>;
/// The versions of one key: (CommitId, value or `None` for a delete).
type Writes2 = Vec<(u64, Option<Bytes>)>;

fn key(k: u8) -> Bytes {
    Bytes::from(format!("key/{k:02}"))
}

fn tenant(t: u8) -> String {
    format!("tenant-{}", t % 3)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<u8>(), 0u8..12, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(t, k, v)| Step::Put(t, k, v)),
        2 => (any::<u8>(), 0u8..12).prop_map(|(t, k)| Step::Delete(t, k)),
        2 => (any::<u8>(), prop::collection::btree_map(0u8..12, prop::option::of(prop::collection::vec(any::<u8>(), 0..20)), 1..5))
            .prop_map(|(t, m)| Step::Batch(t, m.into_iter().collect())),
        1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..30)).prop_map(|(t, p)| Step::Event(t, p)),
        1 => Just(Step::Reopen),
        1 => Just(Step::FlushIndex),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_a_btreemap_and_vec_model(steps in prop::collection::vec(step(), 1..60)) {
        let mem = MemFs::new();
        let open = || Db::open_with_fs(Arc::new(mem.clone()), Path::new("/db"), engine_opts()).unwrap();
        let mut db = open();
        // Model: per (tenant, key) — each tenant has its own key space — every (commit, value or None for
        // delete); per commit, its tenant.
        let mut versions: BTreeMap<(String, Bytes), Writes2> = BTreeMap::new();
        let mut tenants: Vec<String> = Vec::new();
        for s in steps {
            let commit = tenants.len() as u64 + 1;
            let (t, writes): (u8, Writes) = match s {
                Step::Reopen => {
                    db.close().unwrap();
                    db = open();
                    continue;
                }
                Step::FlushIndex => {
                    db.flush_index().unwrap();
                    continue;
                }
                Step::Put(t, k, v) => {
                    prop_assert_eq!(db.put(&tenant(t), key(k), Bytes::from(v.clone())).unwrap().commit_id.0, commit);
                    (t, vec![(k, Some(v))])
                }
                Step::Delete(t, k) => {
                    prop_assert_eq!(db.delete(&tenant(t), key(k)).unwrap().commit_id.0, commit);
                    (t, vec![(k, None)])
                }
                Step::Batch(t, ops) => {
                    let batch = ops.iter().map(|(k, v)| match v {
                        Some(v) => Op::Put { key: key(*k), value: Bytes::from(v.clone()) },
                        None => Op::Delete { key: key(*k) },
                    }).collect();
                    prop_assert_eq!(db.append_batch(&tenant(t), batch).unwrap().commit_id.0, commit);
                    (t, ops)
                }
                Step::Event(t, p) => {
                    prop_assert_eq!(db.append(&tenant(t), Payload::Event(Bytes::from(p))).unwrap().commit_id.0, commit);
                    (t, vec![])
                }
            };
            tenants.push(tenant(t));
            for (k, v) in writes {
                versions.entry((tenant(t), key(k))).or_default().push((commit, v.map(Bytes::from)));
            }
        }
        let n = tenants.len() as u64;
        prop_assert_eq!(db.tip().unwrap().commit_id.0, n);
        for t in 0..3u8 {
            let tn = tenant(t);
            for k in 0..12u8 {
                let vs = versions.get(&(tn.clone(), key(k))).cloned().unwrap_or_default();
                let at = |c: u64| vs.iter().rev().find(|(vc, _)| *vc <= c).and_then(|(_, v)| v.clone());
                prop_assert_eq!(db.get(&tn, &key(k)).unwrap(), at(n));
                for c in 0..=n {
                    prop_assert_eq!(db.get_at(&tn, &key(k), CommitId(c)).unwrap(), at(c), "{} key {} at {}", tn, k, c);
                }
                let h: Vec<(u64, Option<Bytes>)> = db.history(&tn, &key(k)).unwrap().into_iter().map(|v| (v.commit_id.0, v.value)).collect();
                prop_assert_eq!(h, vs);
            }
            let live: Vec<(Bytes, Bytes)> = versions
                .iter()
                .filter(|((vt, _), _)| *vt == tn)
                .filter_map(|((_, k), vs)| vs.last().and_then(|(_, v)| v.clone()).map(|v| (k.clone(), v)))
                .collect();
            prop_assert_eq!(&db.scan_prefix(&tn, b"key/", 100).unwrap(), &live);
            let mid: Vec<(Bytes, Bytes)> = live.iter().filter(|(k, _)| k.as_ref() > b"key/03".as_slice()).take(4).cloned().collect();
            prop_assert_eq!(db.scan(&tn, (std::ops::Bound::Excluded(&b"key/03"[..]), std::ops::Bound::Unbounded), 4).unwrap(), mid);
        }
        for t in 0..3u8 {
            let want: Vec<u64> = tenants.iter().enumerate().filter(|(_, x)| **x == tenant(t)).map(|(i, _)| i as u64 + 1).collect();
            let got: Vec<u64> = db.scan_tenant(&tenant(t), CommitId(1), 1000).unwrap().iter().map(|r| r.record.commit_id.0).collect();
            prop_assert_eq!(&got, &want);
            let from = n / 2 + 1;
            let got: Vec<u64> = db.scan_tenant(&tenant(t), CommitId(from), 3).unwrap().iter().map(|r| r.record.commit_id.0).collect();
            let want: Vec<u64> = want.into_iter().filter(|c| *c >= from).take(3).collect();
            prop_assert_eq!(got, want);
        }
    }
}
