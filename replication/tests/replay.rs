//! The replica's frame check on real frames from real logs: a whole log replays to the primary's tip;
//! a missing frame is a Gap, a resent one is reported for comparison, a changed byte is Corruption, a frame from
//! another history is a Fork, and an older epoch after a newer one is an EpochRegression.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_wal::Epoch;
use std::{path::Path, sync::Arc};

use aerodb_engine::{Db, Options, SigningKey};
use aerodb_replication::{
    replay::{check_frame, Tip, Verdict},
    role::HaltReason,
};
use aerodb_wal::{fs::MemFs, CommitId, Wal};
use bytes::Bytes;

const MAX: usize = 1 << 20;

/// Writes `n` records per epoch in `epochs` to a fresh log and returns its raw frames and tip.
fn log(tag: &str, epochs: &[u64], n: u64) -> (Vec<Vec<u8>>, Tip) {
    let mem = MemFs::new();
    let dir = Path::new("/primary");
    let mut tip = Tip::genesis();
    for &epoch in epochs {
        let opts = Options {
            signing_key: Some(SigningKey::from_seed("aerodb-ledger", [3u8; 32]).unwrap()),
            epoch: Epoch(epoch),
            checkpoint_every_records: 0,
            checkpoint_interval: None,
            wal: aerodb_wal::Options {
                segment_bytes: 1 << 20,
                max_record_bytes: 64 << 10,
                ..aerodb_wal::Options::default()
            },
            ..Options::default()
        };
        let db = Db::open_with_fs(Arc::new(mem.clone()), dir, opts).unwrap();
        for i in 0..n {
            db.put(
                tag,
                Bytes::from(format!("{tag}/{epoch}/{i}")),
                Bytes::from(vec![i as u8; 40]),
            )
            .unwrap();
        }
        let t = db.tip().unwrap();
        tip = Tip {
            commit_id: t.commit_id,
            record_hash: t.record_hash,
            epoch: Epoch(epoch),
        };
        db.close().unwrap();
    }
    let wal = Wal::open(
        Arc::new(mem),
        dir.join("wal"),
        aerodb_wal::Options {
            read_only: true,
            ..aerodb_wal::Options::default()
        },
    )
    .unwrap();
    let frames = wal
        .read_from(CommitId(1))
        .unwrap()
        .map(|f| f.unwrap().raw.to_vec())
        .collect();
    (frames, tip)
}

fn replay(frames: &[Vec<u8>]) -> Result<Tip, HaltReason> {
    let mut tip = Tip::genesis();
    for f in frames {
        match check_frame(&tip, f, MAX)? {
            Verdict::Append(t) => tip = t,
            Verdict::AtOrBelowTip { commit_id } => panic!("unexpected duplicate {commit_id}"),
        }
    }
    Ok(tip)
}

#[test]
fn a_whole_log_replays_to_the_primarys_tip() {
    let (frames, tip) = log("a", &[1, 2, 5], 10);
    assert_eq!(frames.len(), 30);
    assert_eq!(replay(&frames).unwrap(), tip);
}

#[test]
fn every_failure_halts_with_its_reason() {
    let (a, _) = log("a", &[1, 2], 10);
    let (b, _) = log("b", &[1], 20);
    let (late, _) = log("a", &[1], 20);
    let tip_at = |k: usize| replay(&a[..k]).unwrap();

    // A missing frame.
    let t = tip_at(5);
    assert_eq!(
        check_frame(&t, &a[6], MAX),
        Err(HaltReason::Gap {
            expected: CommitId(6),
            got: CommitId(7)
        })
    );
    // A resent frame is handed back for comparison.
    assert_eq!(
        check_frame(&t, &a[2], MAX),
        Ok(Verdict::AtOrBelowTip {
            commit_id: CommitId(3)
        })
    );
    // A changed byte anywhere in the frame.
    let mut flipped = a[5].clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        check_frame(&t, &flipped, MAX),
        Err(HaltReason::Corruption(_))
    ));
    let mut header = a[5].clone();
    header[9] ^= 1;
    assert!(matches!(
        check_frame(&t, &header, MAX),
        Err(HaltReason::Corruption(_))
    ));
    // Trailing bytes after the frame, and a truncated frame.
    let mut longer = a[5].clone();
    longer.push(0);
    assert!(matches!(
        check_frame(&t, &longer, MAX),
        Err(HaltReason::Corruption(_))
    ));
    assert!(matches!(
        check_frame(&t, &a[5][..a[5].len() - 1], MAX),
        Err(HaltReason::Corruption(_))
    ));
    // A frame from another history at the next position: the histories fork at our tip.
    assert_eq!(
        check_frame(&t, &b[5], MAX),
        Err(HaltReason::Fork {
            commit_id: CommitId(5),
            ours: t.record_hash,
            theirs: {
                let bt = replay(&b[..5]).unwrap();
                bt.record_hash
            }
        })
    );
    // An epoch-1 frame after an epoch-2 tip: the primary went back a term.
    let t = tip_at(12); // records 11.. are epoch 2
    assert_eq!(t.epoch, Epoch(2));
    assert_eq!(
        check_frame(&t, &late[12], MAX),
        Err(HaltReason::EpochRegression {
            last: Epoch(2),
            got: Epoch(1)
        })
    );
}
