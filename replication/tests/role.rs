//! The role state machine: every transition, the illegal states of seed 004 §5, and the persisted form
//! (round trips, every corruption refused, atomic replacement across a crash).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::Path, sync::Arc};

use aerodb_replication::{
    role::{Command, HaltReason, Observation, Refusal, RoleMachine, State},
    state_file::{decode, encode, RoleFile},
};
use aerodb_wal::{
    fs::{CrashMode, FaultFs, MemFs, Tear, UnsyncedFate},
    CommitId, Epoch,
};
use proptest::prelude::*;

fn primary(epoch: u64) -> RoleMachine {
    let mut m = RoleMachine::default();
    m.command(Command::Promote { epoch: Epoch(epoch) }).unwrap();
    m
}

fn replica(epoch: u64) -> RoleMachine {
    let mut m = RoleMachine::default();
    m.command(Command::Follow {
        epoch: Epoch(epoch),
        primary: "http://p:7000".into(),
    })
    .unwrap();
    m
}

#[test]
fn only_an_explicit_promotion_above_every_seen_epoch_makes_a_primary() {
    let mut m = RoleMachine::default();
    assert!(!m.may_write() && !m.may_read(), "Uninitialized takes no traffic");
    m.command(Command::Promote { epoch: Epoch(3) }).unwrap();
    assert_eq!(m.state, State::PrimaryActive { epoch: Epoch(3) });
    assert!(m.may_write() && m.may_read());
    // Re-promoting needs a newer epoch.
    assert_eq!(
        m.command(Command::Promote { epoch: Epoch(3) }),
        Err(Refusal::StaleEpoch {
            highest: Epoch(3),
            got: Epoch(3)
        })
    );
    // A replica that has seen epoch 7 cannot be promoted to 5.
    let mut r = replica(7);
    assert!(!r.may_write() && r.may_read());
    assert!(matches!(
        r.command(Command::Promote { epoch: Epoch(5) }),
        Err(Refusal::StaleEpoch { .. })
    ));
    r.command(Command::Promote { epoch: Epoch(8) }).unwrap();
    assert!(r.may_write());
}

#[test]
fn a_primary_that_sees_another_primary_at_its_epoch_or_later_halts() {
    for other in [4u64, 5] {
        let mut m = primary(4);
        assert!(m.observe(Observation::PeerPrimary {
            epoch: Epoch(other),
            node: "n2".into()
        }));
        assert!(matches!(
            m.state,
            State::ReplicationHalted {
                reason: HaltReason::AuthorityAmbiguity(_),
                ..
            }
        ));
        assert!(!m.may_write() && !m.may_read(), "halted: no writes, no reads");
        assert_eq!(m.highest_epoch, Epoch(other.max(4)));
    }
    // Once a newer term is known, resuming would make a second primary: refused until promoted above it.
    let mut m = primary(4);
    m.observe(Observation::PeerPrimary {
        epoch: Epoch(6),
        node: "n2".into(),
    });
    assert_eq!(
        m.command(Command::Resume),
        Err(Refusal::StaleEpoch {
            highest: Epoch(6),
            got: Epoch(4)
        })
    );
    assert!(matches!(m.state, State::ReplicationHalted { .. }), "still halted");
    // A halt at its own epoch resumes: no newer term exists, and the operator decided which node keeps this one.
    let mut same = primary(4);
    same.observe(Observation::PeerPrimary {
        epoch: Epoch(4),
        node: "n3".into(),
    });
    assert_eq!(same.command(Command::Resume), Ok(()), "no newer term was seen");
    // An older primary elsewhere does not change this one (that one will be fenced).
    let mut m = primary(4);
    assert!(!m.observe(Observation::PeerPrimary {
        epoch: Epoch(3),
        node: "old".into()
    }));
    assert!(m.may_write());
}

#[test]
fn a_replica_halts_on_every_replication_failure_and_on_an_older_primary() {
    let reasons = [
        HaltReason::Gap {
            expected: CommitId(10),
            got: CommitId(12),
        },
        HaltReason::Fork {
            commit_id: CommitId(9),
            ours: [1; 32],
            theirs: [2; 32],
        },
        HaltReason::EpochRegression {
            last: Epoch(5),
            got: Epoch(4),
        },
        HaltReason::Corruption("frame 12 CRC".into()),
        HaltReason::AuthorityAmbiguity("two primaries".into()),
    ];
    for reason in reasons {
        let mut m = replica(5);
        assert!(m.observe(Observation::Halt(reason.clone())));
        assert!(matches!(&m.state, State::ReplicationHalted { reason: r, .. } if *r == reason));
        // The first reason stands.
        assert!(!m.observe(Observation::Halt(HaltReason::Corruption("later".into()))));
        assert!(matches!(&m.state, State::ReplicationHalted { reason: r, .. } if *r == reason));
        // Halted: nothing but resume or rebuild.
        assert!(matches!(
            m.command(Command::Promote { epoch: Epoch(99) }),
            Err(Refusal::NotInState { .. })
        ));
        assert!(matches!(
            m.command(Command::Follow {
                epoch: Epoch(99),
                primary: "x".into()
            }),
            Err(Refusal::NotInState { .. })
        ));
        let mut resumed = m.clone();
        resumed.command(Command::Resume).unwrap();
        assert_eq!(resumed.state, replica(5).state);
        m.command(Command::Rebuild {
            epoch: Epoch(6),
            primary: "http://q:7000".into(),
        })
        .unwrap();
        assert_eq!(
            m.state,
            State::ReplicaActive {
                epoch: Epoch(6),
                primary: "http://q:7000".into()
            }
        );
    }
    let mut m = replica(5);
    assert!(m.observe(Observation::PeerPrimary {
        epoch: Epoch(4),
        node: "stale".into()
    }));
    assert!(matches!(
        m.state,
        State::ReplicationHalted {
            reason: HaltReason::EpochRegression {
                last: Epoch(5),
                got: Epoch(4)
            },
            ..
        }
    ));
    // Resume and rebuild only apply to a halted node.
    assert!(matches!(
        replica(5).command(Command::Resume),
        Err(Refusal::NotInState { .. })
    ));
    assert!(matches!(
        primary(1).command(Command::Rebuild {
            epoch: Epoch(2),
            primary: "p".into()
        }),
        Err(Refusal::NotInState { .. })
    ));
}

#[test]
fn a_primary_is_demoted_only_to_a_newer_term() {
    let mut m = primary(4);
    assert!(matches!(
        m.command(Command::Follow {
            epoch: Epoch(4),
            primary: "p".into()
        }),
        Err(Refusal::StaleEpoch { .. })
    ));
    m.command(Command::Follow {
        epoch: Epoch(5),
        primary: "p".into(),
    })
    .unwrap();
    assert!(!m.may_write());
}

fn any_reason() -> impl Strategy<Value = HaltReason> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(expected, got)| HaltReason::Gap {
            expected: CommitId(expected),
            got: CommitId(got)
        }),
        (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(commit_id, ours, theirs)| {
            HaltReason::Fork {
                commit_id: CommitId(commit_id),
                ours,
                theirs,
            }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(last, got)| HaltReason::EpochRegression {
            last: Epoch(last),
            got: Epoch(got)
        }),
        ".{0,40}".prop_map(HaltReason::Corruption),
        ".{0,40}".prop_map(HaltReason::AuthorityAmbiguity),
    ]
}

fn any_observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        (0u64..20, ".{0,8}").prop_map(|(epoch, node)| Observation::PeerPrimary {
            epoch: Epoch(epoch),
            node
        }),
        any_reason().prop_map(Observation::Halt),
    ]
}

fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (0u64..20).prop_map(|epoch| Command::Promote { epoch: Epoch(epoch) }),
        (0u64..20, ".{0,8}").prop_map(|(epoch, primary)| Command::Follow {
            epoch: Epoch(epoch),
            primary
        }),
        Just(Command::Resume),
        (0u64..20, ".{0,8}").prop_map(|(epoch, primary)| Command::Rebuild {
            epoch: Epoch(epoch),
            primary
        }),
    ]
}

proptest! {
    /// Seed 004 §5 as properties over random command and observation sequences: observations never grant write
    /// authority; a primary's epoch only ever grows; the highest epoch never decreases; and every state the
    /// machine reaches survives the file round trip.
    #[test]
    fn no_sequence_reaches_an_illegal_state(
        steps in prop::collection::vec(prop_oneof![any_command().prop_map(Ok), any_observation().prop_map(Err)], 0..40)
    ) {
        let mut m = RoleMachine::default();
        let mut last_primary_epoch = Epoch(0);
        for step in steps {
            let could_write = m.may_write();
            let highest = m.highest_epoch;
            match step {
                Ok(c) => { let _ = m.command(c); }
                Err(o) => {
                    m.observe(o);
                    prop_assert!(!m.may_write() || could_write, "an observation granted write authority");
                }
            }
            prop_assert!(m.highest_epoch >= highest);
            if let State::PrimaryActive { epoch } = m.state {
                prop_assert!(epoch >= last_primary_epoch);
                prop_assert_eq!(epoch, m.highest_epoch, "a primary's epoch is the highest this node has seen");
                last_primary_epoch = epoch;
            }
            prop_assert_eq!(decode(&encode(&m)).unwrap(), m.clone());
        }
    }
}

#[test]
fn every_byte_of_the_role_file_matters() {
    let mut m = replica(7);
    m.observe(Observation::Halt(HaltReason::Fork {
        commit_id: CommitId(3),
        ours: [5; 32],
        theirs: [6; 32],
    }));
    let b = encode(&m);
    assert_eq!(decode(&b).unwrap(), m);
    for i in 0..b.len() {
        let mut x = b.clone();
        x[i] ^= 0x10;
        assert!(decode(&x).is_err(), "flip at {i} accepted");
    }
    for cut in 0..b.len() {
        assert!(decode(&b[..cut]).is_err());
    }
}

#[test]
fn the_role_file_is_replaced_atomically_across_a_crash() {
    let dir = Path::new("/node");
    let (old, new) = (replica(3), primary(4));
    let reference = FaultFs::new(MemFs::new());
    let f = RoleFile::new(Arc::new(reference.clone()), dir);
    aerodb_wal::fs::Fs::create_dir_all(&reference, dir).unwrap();
    f.store(&old).unwrap();
    let before = reference.ops();
    f.store(&new).unwrap();
    let total = reference.ops() - before;
    let mut cases = 0;
    for k in 0..=total {
        for unsynced in [UnsyncedFate::Lost, UnsyncedFate::Kept] {
            for tear in [Tear::None, Tear::TornPrefix, Tear::ZeroedTail, Tear::RandomTail] {
                let fs = FaultFs::new(MemFs::new());
                aerodb_wal::fs::Fs::create_dir_all(&fs, dir).unwrap();
                let f = RoleFile::new(Arc::new(fs.clone()), dir);
                f.store(&old).unwrap();
                fs.die_at(fs.ops() + k);
                let acked = f.store(&new).is_ok();
                let mem = fs.mem().clone();
                mem.crash(CrashMode {
                    unsynced,
                    tear,
                    seed: k * 8 + cases,
                });
                let got = RoleFile::new(Arc::new(mem), dir)
                    .load()
                    .expect("the role file is never damaged");
                assert!(got == new || (!acked && got == old), "k={k}: {got:?}");
                cases += 1;
            }
        }
    }
    assert!(cases >= 8);
    // A missing file is Uninitialized; a damaged one is an error, never a default.
    let mem = MemFs::new();
    let f = RoleFile::new(Arc::new(mem.clone()), dir);
    assert_eq!(f.load().unwrap(), RoleMachine::default());
    mem.write_file_durable(&dir.join("role.state"), b"AERODBRS garbage")
        .unwrap();
    assert!(f.load().is_err());
}

#[test]
fn a_primary_that_steps_down_writes_again_only_in_a_newer_term() {
    let mut m = RoleMachine::default();
    m.command(Command::Promote { epoch: Epoch(5) }).unwrap();
    m.command(Command::StepDown).unwrap();
    assert_eq!(m.state, State::Uninitialized);
    assert!(!m.may_write() && !m.may_read());
    assert_eq!(m.highest_epoch, Epoch(5));
    // Its own term again is refused: that term may have a successor's records by now.
    assert!(matches!(
        m.command(Command::Promote { epoch: Epoch(5) }),
        Err(Refusal::StaleEpoch { .. })
    ));
    m.command(Command::Promote { epoch: Epoch(9) }).unwrap();
    assert!(m.may_write());
    // A replica is left as it is; a halted node refuses.
    let mut r = RoleMachine::default();
    r.command(Command::Follow {
        epoch: Epoch(2),
        primary: "p".into(),
    })
    .unwrap();
    r.command(Command::StepDown).unwrap();
    assert!(matches!(r.state, State::ReplicaActive { .. }));
    r.observe(Observation::Halt(HaltReason::Corruption("x".into())));
    assert!(r.command(Command::StepDown).is_err());
}
