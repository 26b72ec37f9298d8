//! Authority changes only on proof (R-2, E-2). A peer's word that a newer primary term exists — a replica's
//! `highest_epoch` in its hello, a primary's epoch in its welcome — changes nothing by itself: it must come with a
//! **term proof**, a checkpoint of that term signed by the log's key. Only the writable primary signs checkpoints
//! (the engine refuses otherwise), and it signs one for its own epoch as soon as its term starts, so a signed
//! checkpoint whose `epoch` line says `E` shows that an authority (the operator, the fence, etcd) made some node
//! the primary of term `E`.
//!
//! What a proof cannot rule out: a holder of the log's private key signing a checkpoint it should not. Every
//! failover candidate holds that key (see `docs/replication.md`, "Signing"), so a compromised replica can still
//! forge a term proof; what it can no longer do is depose the primary with a bare number.

use aerodb_engine::{SignedCheckpoint, VerifierKey};
use aerodb_wal::Epoch;

/// The epoch a term proof establishes: the `epoch` of a checkpoint note that verifies under the log's key.
/// `None` for a note that does not verify (a forged or foreign note proves nothing).
#[must_use]
pub fn proven_epoch(note: &str, key: &VerifierKey) -> Option<Epoch> {
    SignedCheckpoint::verify(note, key)
        .ok()
        .map(|s| Epoch(s.checkpoint.epoch.0))
}

/// What to make of a peer's claim that a term `claimed` exists, with `proof` (a checkpoint note) or without.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The claim is not above `own`: nothing to decide.
    NotNewer,
    /// A newer term is proven (its checkpoint verifies): this node's term is over.
    Proven {
        /// The proven epoch (at least the claimed one, or above `own` at any rate).
        epoch: Epoch,
    },
    /// A newer term is claimed without proof: refuse the peer, keep the current authority, count it.
    Unproven {
        /// What was claimed.
        claimed: Epoch,
        /// What the proof (if any) established instead.
        proven: Option<Epoch>,
    },
}

/// Judges a claim of term `claimed` against this node's `own` epoch.
#[must_use]
pub fn judge(own: Epoch, claimed: Epoch, proof: Option<&str>, key: &VerifierKey) -> Claim {
    let proven = proof.and_then(|n| proven_epoch(n, key));
    match proven {
        Some(p) if p > own => Claim::Proven { epoch: p },
        _ if claimed <= own => Claim::NotNewer,
        _ => Claim::Unproven { claimed, proven },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use aerodb_engine::{Checkpoint, SigningKey};

    use super::*;

    fn note(key: &SigningKey, epoch: u64) -> String {
        Checkpoint {
            origin: "log".into(),
            size: 3,
            root: [7; 32],
            epoch: Epoch(epoch),
        }
        .sign(key)
        .note
    }

    #[test]
    fn only_a_signed_checkpoint_of_a_newer_term_proves_it() {
        let key = SigningKey::from_seed("log", [1; 32]).unwrap();
        let other = SigningKey::from_seed("log", [2; 32]).unwrap();
        let v = key.verifier();
        assert_eq!(judge(Epoch(3), Epoch(3), None, &v), Claim::NotNewer);
        assert_eq!(
            judge(Epoch(3), Epoch(u64::MAX), None, &v),
            Claim::Unproven {
                claimed: Epoch(u64::MAX),
                proven: None
            }
        );
        // A note signed by another key proves nothing.
        assert_eq!(
            judge(Epoch(3), Epoch(9), Some(&note(&other, 9)), &v),
            Claim::Unproven {
                claimed: Epoch(9),
                proven: None
            }
        );
        // A valid note of an older term does not back a bigger number.
        assert_eq!(
            judge(Epoch(3), Epoch(1 << 63), Some(&note(&key, 2)), &v),
            Claim::Unproven {
                claimed: Epoch(1 << 63),
                proven: Some(Epoch(2))
            }
        );
        assert_eq!(
            judge(Epoch(3), Epoch(4), Some(&note(&key, 4)), &v),
            Claim::Proven { epoch: Epoch(4) }
        );
        // A tampered note does not verify.
        let forged = note(&key, 4).replace("epoch 4", "epoch 5");
        assert!(matches!(
            judge(Epoch(3), Epoch(5), Some(&forged), &v),
            Claim::Unproven { .. }
        ));
    }
}
