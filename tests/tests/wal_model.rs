//! Property tests: random appends, crashes at random I/O points and reopens, compared against a `Vec` model;
//! and the frame codec's round trip on arbitrary inputs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::sync::Arc;

use aerodb_tests::{small_opts, MEM_DIR};
use aerodb_wal::{
    format::{decode_frame, encode_frame_into},
    fs::{CrashMode, FaultFs, MemFs, Tear, UnsyncedFate},
    CommitId, Epoch, Wal,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Cycle {
    batches: Vec<Vec<Vec<u8>>>,
    die_after_ops: Option<u64>,
    power_loss: bool,
    tear: u8,
}

fn cycle() -> impl Strategy<Value = Cycle> {
    (
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..5),
            1..20,
        ),
        prop::option::of(0u64..80),
        any::<bool>(),
        0u8..4,
    )
        .prop_map(|(batches, die_after_ops, power_loss, tear)| Cycle {
            batches,
            die_after_ops,
            power_loss,
            tear,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_append_crash_reopen_matches_a_vec_model(cycles in prop::collection::vec(cycle(), 1..5)) {
        let mem = MemFs::new();
        // The model: every acknowledged record, in CommitId order. The log may also keep records whose append
        // failed (they may have reached the disk), so the model also tracks what was attempted at each id.
        let mut acked: Vec<Vec<u8>> = Vec::new();
        let mut log: Vec<Vec<u8>> = Vec::new();
        for c in cycles {
            let fs = FaultFs::new(mem.clone());
            let wal = Wal::open(Arc::new(fs.clone()), MEM_DIR, small_opts()).unwrap();
            // What recovery found must extend the acknowledged model and agree with everything attempted.
            let recovered: Vec<Vec<u8>> = wal.read_from(CommitId(1)).unwrap().map(|f| f.unwrap().body().to_vec()).collect();
            prop_assert!(recovered.len() >= acked.len(), "lost acknowledged records");
            prop_assert_eq!(&recovered[..acked.len()], &acked[..]);
            prop_assert_eq!(&recovered[..], &log[..recovered.len()]);
            acked.clone_from(&recovered);
            log.clone_from(&recovered);
            if let Some(k) = c.die_after_ops {
                fs.die_at(fs.ops() + k);
            }
            for batch in &c.batches {
                log.extend(batch.iter().cloned());
                match wal.append_batch(Epoch(1), batch) {
                    Ok((first, last)) => {
                        prop_assert_eq!(first.0 as usize, acked.len() + 1);
                        acked.extend(batch.iter().cloned());
                        prop_assert_eq!(last.0 as usize, acked.len());
                    }
                    Err(_) => break,
                }
            }
            drop(wal);
            let tear = [Tear::None, Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail][c.tear as usize];
            let unsynced = if c.power_loss { UnsyncedFate::Lost } else { UnsyncedFate::Kept };
            mem.crash(CrashMode { unsynced, tear, seed: acked.len() as u64 });
        }
        let wal = Wal::open(Arc::new(mem), MEM_DIR, small_opts()).unwrap();
        let recovered: Vec<Vec<u8>> = wal.read_from(CommitId(1)).unwrap().map(|f| f.unwrap().body().to_vec()).collect();
        prop_assert!(recovered.len() >= acked.len());
        prop_assert_eq!(&recovered[..acked.len()], &acked[..]);
        wal.verify().unwrap();
    }

    #[test]
    fn frame_codec_round_trips(commit in 1u64.., epoch in any::<u64>(), body in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut out = Vec::new();
        encode_frame_into(&mut out, CommitId(commit), Epoch(epoch), &body);
        let (h, b) = decode_frame(&out, 4096).unwrap();
        prop_assert_eq!((h.commit_id, h.epoch, b), (CommitId(commit), Epoch(epoch), &body[..]));
    }

    #[test]
    fn frame_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_frame(&bytes, 100);
    }
}
