//! The bootstrap rule: the role a node starts in, from its persisted state and the operator's configuration
//! (seed 004 §9: a restart resumes the recorded role, never infers one). The configuration is the operator's
//! explicit input: it may bootstrap an uninitialized node, start a new primary term (a higher epoch) or make a node
//! follow a primary of a newer term; it may not turn a replica into a primary (that is `aerodb admin promote`) or
//! lower an epoch, and a halted node starts halted until an operator resumes it.

use aerodb_wal::Epoch;

use super::role::{Command, RoleMachine, State};
use crate::Error;

/// The role the configuration asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Configured {
    /// `--role primary`.
    Primary,
    /// `--role replica --primary URL`.
    Replica {
        /// Where the primary is.
        primary: String,
    },
    /// `--authority etcd`: the role comes from the election, never from the configuration or the last run. A node
    /// that was primary starts without write authority (it steps down, keeping its epoch) and must win a newer
    /// term to write again; a replica keeps following until the election says otherwise.
    Elected,
}

/// How the node starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// In the recorded (possibly just changed) role.
    Serving,
    /// Halted: HA status, health and metrics answer; reads, writes and following do not.
    Halted,
}

/// Applies the configuration (`role`, `epoch`) to the persisted machine `m`. On `Ok` the caller persists `m` if
/// it changed, before serving.
pub fn bootstrap(m: &mut RoleMachine, role: &Configured, epoch: Epoch) -> Result<Start, Error> {
    let refused = |e| Error::Refused(e);
    match (&m.state, role) {
        (State::ReplicationHalted { .. }, _) => return Ok(Start::Halted),
        (State::Uninitialized, Configured::Primary) => {
            m.command(Command::Promote { epoch }).map_err(refused)?
        }
        (State::PrimaryActive { epoch: mine }, Configured::Primary) => {
            if epoch > *mine {
                m.command(Command::Promote { epoch }).map_err(refused)?;
            } else if epoch < *mine {
                return Err(Error::Bootstrap(format!(
                    "the configured epoch {} is below this primary's epoch {mine}; epochs never go back",
                    epoch.0
                )));
            }
        }
        (State::ReplicaActive { epoch: e, primary }, Configured::Primary) => {
            return Err(Error::Bootstrap(format!(
                "this node is a replica of {primary} (epoch {e}); a node never promotes itself: run \
                 `aerodb admin promote --data-dir DIR --epoch N` with N above {} first",
                m.highest_epoch
            )))
        }
        (_, Configured::Elected) => m.command(Command::StepDown).map_err(refused)?,
        (_, Configured::Replica { primary }) => m
            .command(Command::Follow {
                epoch,
                primary: primary.clone(),
            })
            .map_err(refused)?,
    }
    Ok(Start::Serving)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn the_configuration_bootstraps_but_never_promotes_a_replica_or_lowers_an_epoch() {
        let mut m = RoleMachine::default();
        assert_eq!(
            bootstrap(&mut m, &Configured::Primary, Epoch(2)).unwrap(),
            Start::Serving
        );
        assert_eq!(m.state, State::PrimaryActive { epoch: Epoch(2) });
        assert!(bootstrap(&mut m, &Configured::Primary, Epoch(1)).is_err());
        bootstrap(&mut m, &Configured::Primary, Epoch(3)).unwrap();
        assert_eq!(m.highest_epoch, Epoch(3));
        let r = Configured::Replica {
            primary: "http://p".into(),
        };
        bootstrap(&mut m, &r, Epoch(4)).unwrap();
        assert!(matches!(m.state, State::ReplicaActive { epoch: Epoch(4), .. }));
        assert!(bootstrap(&mut m, &Configured::Primary, Epoch(9)).is_err());
        m.observe(super::super::role::Observation::Halt(
            super::super::role::HaltReason::LogFailed("disk".into()),
        ));
        assert_eq!(
            bootstrap(&mut m, &Configured::Primary, Epoch(9)).unwrap(),
            Start::Halted
        );
    }
}
