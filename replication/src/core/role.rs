//! The role state machine of seed 004, as a pure core: commands (operator input) and observations go in,
//! the new state comes out (with whether it changed, or why a command was refused); no sockets, clocks or files
//! inside. [`RoleFile`](crate::state_file::RoleFile) persists the state.
//!
//! States: `Uninitialized`, `PrimaryActive`, `ReplicaActive`, `ReplicationHalted`. The illegal states of seed 004
//! §5 are unrepresentable or halt:
//! - *Dual primary*: a primary that learns of another primary with its own or a higher epoch halts at once
//!   (`AuthorityAmbiguity`); it never keeps accepting writes.
//! - *Replica with commit authority*: only `PrimaryActive` answers yes to [`RoleMachine::may_write`]; a replica
//!   state has no way to hold commit authority.
//! - *History fork*: the replication checks report it as [`Observation::Halt`] with [`HaltReason::Fork`].
//! - *Implicit promotion*: the only way into `PrimaryActive` is [`Command::Promote`] with an epoch greater than
//!   every epoch this node has seen; nothing the node observes promotes it.

use aerodb_wal::{CommitId, Epoch};

/// Why a node halted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaltReason {
    /// A frame arrived with a CommitId other than the next one.
    Gap {
        /// The CommitId expected.
        expected: CommitId,
        /// The CommitId received.
        got: CommitId,
    },
    /// The histories differ at a CommitId.
    Fork {
        /// Where.
        commit_id: CommitId,
        /// Our record hash there.
        ours: [u8; 32],
        /// Theirs.
        theirs: [u8; 32],
    },
    /// A frame or primary with an epoch lower than one already accepted.
    EpochRegression {
        /// The highest epoch accepted.
        last: Epoch,
        /// The epoch received.
        got: Epoch,
    },
    /// Bytes that do not check out (CRC, record hash, chain link).
    Corruption(String),
    /// Who the primary is cannot be decided (two primaries, a proven higher epoch elsewhere).
    AuthorityAmbiguity(String),
    /// This node's own log failed (a write or fsync error, or damage found while applying): it can no longer
    /// prove what it serves, so it stops serving.
    LogFailed(String),
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = hex::encode::<&[u8; 32]>;
        match self {
            HaltReason::Gap { expected, got } => write!(f, "Gap: expected CommitId {expected}, got {got}"),
            HaltReason::Fork {
                commit_id,
                ours,
                theirs,
            } => {
                write!(
                    f,
                    "Fork at CommitId {commit_id}: ours {}, theirs {}",
                    hex(ours),
                    hex(theirs)
                )
            }
            HaltReason::EpochRegression { last, got } => {
                write!(f, "EpochRegression: epoch {got} after {last}")
            }
            HaltReason::Corruption(w) => write!(f, "Corruption: {w}"),
            HaltReason::AuthorityAmbiguity(w) => write!(f, "AuthorityAmbiguity: {w}"),
            HaltReason::LogFailed(w) => write!(f, "LogFailed: {w}"),
        }
    }
}

/// A node's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// No authority yet: takes no traffic.
    Uninitialized,
    /// The sole write authority for `epoch`.
    PrimaryActive {
        /// This term's epoch.
        epoch: Epoch,
    },
    /// Follows `primary`, whose epoch is `epoch`.
    ReplicaActive {
        /// The followed primary's epoch.
        epoch: Epoch,
        /// Where the primary is.
        primary: String,
    },
    /// Stopped on an invariant violation: no reads, no writes, until an operator acts.
    ReplicationHalted {
        /// Why.
        reason: HaltReason,
        /// The state it halted from (what `resume` returns to).
        from: Box<State>,
    },
}

impl State {
    /// The state's name, as in seed 004 and HA status.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            State::Uninitialized => "Uninitialized",
            State::PrimaryActive { .. } => "PrimaryActive",
            State::ReplicaActive { .. } => "ReplicaActive",
            State::ReplicationHalted { .. } => "ReplicationHalted",
        }
    }
}

/// Operator input (config at start, `aerodb admin …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Become the write authority for `epoch` (must exceed every epoch seen).
    Promote {
        /// The new term's epoch.
        epoch: Epoch,
    },
    /// Follow `primary` (whose epoch is `epoch`).
    Follow {
        /// The primary's epoch.
        epoch: Epoch,
        /// Where it is.
        primary: String,
    },
    /// Leave `ReplicationHalted` back to the state it halted from, after the operator fixed the cause.
    Resume,
    /// Give up write authority without a successor known yet (an external authority's lease ended or could not be
    /// proven, or the node resigned): `PrimaryActive` becomes `Uninitialized`, keeping the highest epoch, so the
    /// node can only become primary again through a newer term. Anything but a primary is left as it is.
    StepDown,
    /// Leave `ReplicationHalted` as a replica of `primary`, after the log was re-synchronised from it.
    Rebuild {
        /// The primary's epoch.
        epoch: Epoch,
        /// Where it is.
        primary: String,
    },
}

/// What the node observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Another node claims to be primary for `epoch`.
    PeerPrimary {
        /// Its epoch.
        epoch: Epoch,
        /// Who.
        node: String,
    },
    /// The replication checks failed.
    Halt(HaltReason),
}

/// Why a command was refused (the state is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Promotion needs an epoch above every epoch seen.
    #[error("epoch {got} is not above the highest epoch seen ({highest})")]
    StaleEpoch {
        /// The highest epoch seen.
        highest: Epoch,
        /// The epoch given.
        got: Epoch,
    },
    /// The command does not apply in this state.
    #[error("{command} is not allowed in state {state}")]
    NotInState {
        /// The command.
        command: &'static str,
        /// The state.
        state: &'static str,
    },
}

/// The role and the highest epoch this node has seen (from promotions, followed primaries and peers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMachine {
    /// The current state.
    pub state: State,
    /// The highest epoch seen.
    pub highest_epoch: Epoch,
}

impl Default for RoleMachine {
    fn default() -> Self {
        Self {
            state: State::Uninitialized,
            highest_epoch: Epoch(0),
        }
    }
}

impl RoleMachine {
    /// Whether writes may be admitted (seed 004 §7; the caller also checks the WAL is writable).
    #[must_use]
    pub fn may_write(&self) -> bool {
        matches!(self.state, State::PrimaryActive { .. })
    }

    /// Whether reads may be served.
    #[must_use]
    pub fn may_read(&self) -> bool {
        matches!(
            self.state,
            State::PrimaryActive { .. } | State::ReplicaActive { .. }
        )
    }

    fn halt(&mut self, reason: HaltReason) {
        if matches!(self.state, State::ReplicationHalted { .. }) {
            return; // the first reason stands: it is the evidence
        }
        let from = Box::new(std::mem::replace(&mut self.state, State::Uninitialized));
        self.state = State::ReplicationHalted { reason, from };
    }

    /// Applies an operator command. On success the caller persists the new state before acting on it.
    pub fn command(&mut self, c: Command) -> Result<(), Refusal> {
        let state = self.state.name();
        match c {
            Command::Promote { epoch } => {
                if matches!(self.state, State::ReplicationHalted { .. }) {
                    return Err(Refusal::NotInState {
                        command: "promote",
                        state,
                    });
                }
                if epoch <= self.highest_epoch {
                    return Err(Refusal::StaleEpoch {
                        highest: self.highest_epoch,
                        got: epoch,
                    });
                }
                self.highest_epoch = epoch;
                self.state = State::PrimaryActive { epoch };
            }
            Command::Follow { epoch, primary } => match self.state {
                State::Uninitialized | State::ReplicaActive { .. } => {
                    let floor = self.highest_epoch;
                    self.become_replica(epoch, primary, floor, false)?;
                }
                // Demoting a primary: only to a primary of a higher epoch (its own term has ended).
                State::PrimaryActive { epoch: mine } => self.become_replica(epoch, primary, mine, true)?,
                State::ReplicationHalted { .. } => {
                    return Err(Refusal::NotInState {
                        command: "follow",
                        state,
                    })
                }
            },
            Command::Resume => match std::mem::replace(&mut self.state, State::Uninitialized) {
                // A primary does not get its authority back once a newer term has been seen: that would be a
                // second primary. It must be promoted above that term, or follow it.
                State::ReplicationHalted { reason, from } => match *from {
                    State::PrimaryActive { epoch } if epoch < self.highest_epoch => {
                        self.state = State::ReplicationHalted { reason, from };
                        return Err(Refusal::StaleEpoch {
                            highest: self.highest_epoch,
                            got: epoch,
                        });
                    }
                    from => self.state = from,
                },
                other => {
                    self.state = other;
                    return Err(Refusal::NotInState {
                        command: "resume",
                        state,
                    });
                }
            },
            Command::StepDown => match self.state {
                State::PrimaryActive { .. } => self.state = State::Uninitialized,
                State::Uninitialized | State::ReplicaActive { .. } => {}
                State::ReplicationHalted { .. } => {
                    return Err(Refusal::NotInState {
                        command: "step-down",
                        state,
                    })
                }
            },
            Command::Rebuild { epoch, primary } => {
                if !matches!(self.state, State::ReplicationHalted { .. }) {
                    return Err(Refusal::NotInState {
                        command: "rebuild",
                        state,
                    });
                }
                let floor = self.highest_epoch;
                self.become_replica(epoch, primary, floor, false)?;
            }
        }
        Ok(())
    }

    /// Follows `primary` at `epoch`, which must be at least `floor` (above it when `strictly`).
    fn become_replica(
        &mut self,
        epoch: Epoch,
        primary: String,
        floor: Epoch,
        strictly: bool,
    ) -> Result<(), Refusal> {
        if epoch < floor || (strictly && epoch == floor) {
            return Err(Refusal::StaleEpoch {
                highest: floor,
                got: epoch,
            });
        }
        self.highest_epoch = self.highest_epoch.max(epoch);
        self.state = State::ReplicaActive { epoch, primary };
        Ok(())
    }

    /// Takes in an observation. Returns whether the state changed (then the caller persists it and stops
    /// serving what the new state forbids).
    pub fn observe(&mut self, o: Observation) -> bool {
        let before = self.state.clone();
        match o {
            Observation::Halt(reason) => self.halt(reason),
            Observation::PeerPrimary { epoch, node } => {
                match &self.state {
                    // Two primaries, or a newer term elsewhere: stop writing now, let an operator decide.
                    State::PrimaryActive { epoch: mine } if epoch >= *mine => self.halt(HaltReason::AuthorityAmbiguity(
                        format!("{node} claims to be primary for epoch {epoch}; this node is primary for epoch {mine}"),
                    )),
                    // A replica never follows a primary it was not told to follow, and never goes back in epochs.
                    State::ReplicaActive { epoch: followed, .. } if epoch < *followed => {
                        let last = *followed;
                        self.halt(HaltReason::EpochRegression { last, got: epoch });
                    }
                    _ => {}
                }
                self.highest_epoch = self.highest_epoch.max(epoch);
            }
        }
        self.state != before
    }
}
