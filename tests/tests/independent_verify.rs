//! Checkpoints and proofs verified by implementations we did not write: the `signed_note` and `tlog_tiles` crates
//! (Cloudflare's ports of Go's `golang.org/x/mod/sumdb/note` and `tlog`, the reference code behind C2SP
//! signed-note and tlog-checkpoint, and RFC 6962 proofs). They must accept what we produce — the signed note under
//! our published verifier key, the checkpoint body, inclusion proofs of record hashes, consistency proofs between
//! sizes — and reject a tampered note, a wrong key, a changed proof hash and a changed record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_engine::{merkle, Db, SigningKey};
use aerodb_tests::{engine_opts, report_figure};
use aerodb_wal::CommitId;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{check_record, check_tree, record_hash, Checkpoint, Hash};

fn hashes(v: &[merkle::Hash]) -> Vec<Hash> {
    v.iter().map(|h| Hash(*h)).collect()
}

/// The note's signature under `vkey`, then its checkpoint body: `(origin, size, root)`.
fn open_note(note: &str, vkey: &str) -> Result<(String, u64, Hash), String> {
    let verifier = StandardVerifier::new(vkey).map_err(|e| format!("verifier key: {e:?}"))?;
    let n = Note::from_bytes(note.as_bytes()).map_err(|e| format!("note: {e:?}"))?;
    n.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("signature: {e:?}"))?;
    let c = Checkpoint::from_bytes(n.text()).map_err(|e| format!("checkpoint: {e:?}"))?;
    Ok((c.origin().to_owned(), c.size(), *c.hash()))
}

/// Inclusion of the record whose canonical bytes are `canonical` (leaf data: its SHA-256, our record hash).
fn check_inclusion(proof: &[merkle::Hash], size: u64, root: Hash, index: u64, canonical: &[u8]) -> bool {
    let leaf_data: [u8; 32] = Sha256::digest(canonical).into();
    check_record(&hashes(proof), size, root, index, record_hash(&leaf_data)).is_ok()
}

#[test]
fn independent_implementations_accept_our_checkpoints_and_proofs_and_reject_tampering() {
    let db = Db::open_in_memory(engine_opts()).unwrap();
    for i in 0..777u32 {
        db.put(
            "t",
            Bytes::from(format!("k{}", i % 50)),
            Bytes::from(i.to_le_bytes().to_vec()),
        )
        .unwrap();
    }
    let cp = db.checkpoint_now().unwrap();
    let vkey = db.verifier_key().to_string();
    let (origin, size, root) = open_note(&cp.note, &vkey).unwrap();
    assert_eq!(
        (origin.as_str(), size, root.0),
        ("aerodb-ledger", 777, cp.checkpoint.root)
    );

    let mut inclusion = 0;
    for commit in [1u64, 2, 100, 256, 257, 500, 776, 777] {
        let p = db.inclusion_proof(CommitId(commit), size).unwrap();
        let canonical = db.record(CommitId(commit)).unwrap().unwrap().canonical;
        assert!(
            check_inclusion(&p.hashes, size, root, p.leaf_index, &canonical),
            "inclusion of {commit} in {size}"
        );
        inclusion += 1;
    }
    let mut consistency = 0;
    for old in [1u64, 2, 3, 64, 100, 511, 512, 776, 777] {
        let p = db.consistency_proof(old, size).unwrap();
        let old_root = Hash(db.root_at(old).unwrap());
        check_tree(&hashes(&p), size, root, old, old_root)
            .unwrap_or_else(|e| panic!("consistency {old} → {size}: {e:?}"));
        consistency += 1;
    }

    // Rejections: a changed tree size in the note, another key, a changed proof hash, a changed record, a
    // consistency proof against the wrong old root.
    let mut rejected = 0;
    let tampered = cp
        .note
        .replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert_ne!(tampered, cp.note);
    assert!(open_note(&tampered, &vkey).is_err(), "a changed size verifies");
    rejected += 1;
    let other = SigningKey::from_seed("aerodb-ledger", [9u8; 32])
        .unwrap()
        .verifier()
        .to_string();
    assert!(open_note(&cp.note, &other).is_err(), "another key verifies");
    rejected += 1;
    let p = db.inclusion_proof(CommitId(256), size).unwrap();
    let canonical = db.record(CommitId(256)).unwrap().unwrap().canonical;
    let mut bad = p.hashes.clone();
    bad[0][0] ^= 1;
    assert!(
        !check_inclusion(&bad, size, root, p.leaf_index, &canonical),
        "a changed proof hash"
    );
    rejected += 1;
    let mut changed = canonical.to_vec();
    changed[16] ^= 1;
    assert!(
        !check_inclusion(&p.hashes, size, root, p.leaf_index, &changed),
        "a changed record"
    );
    rejected += 1;
    let p = db.consistency_proof(100, size).unwrap();
    assert!(check_tree(&hashes(&p), size, root, 100, Hash(db.root_at(99).unwrap())).is_err());
    rejected += 1;
    report_figure(
        "independent verifier (signed_note + tlog_tiles, ports of Go's sumdb)",
        &format!(
            "1 checkpoint, {inclusion} inclusion, {consistency} consistency proofs accepted; {rejected} tampered cases rejected"
        ),
    );
}
