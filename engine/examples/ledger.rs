//! A tour of the engine: open a ledger, append a few thousand records across tenants, read by key now and at an
//! older CommitId, produce and verify an inclusion proof and a consistency proof the way an independent client
//! would (with nothing but the published verifier key), print a signed checkpoint, and verify the whole
//! directory offline.
//!
//! Run: `cargo run --release -p aerodb-engine --example ledger [-- DIR]`

use aerodb_wal::CommitId;
use std::path::PathBuf;

use aerodb_engine::{
    merkle, record, verify_dir, Db, NewRecord, Op, Options, Payload, SignedCheckpoint, VerifierKey,
    VerifyOptions,
};
use bytes::Bytes;
use hex::encode as hex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/ledger-demo"), PathBuf::from);
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options {
        origin: "example.com/ledger".into(),
        ..Options::default()
    };
    let db = Db::open(&dir, opts.clone())?;
    println!("opened {} (verifier key: {})", dir.display(), db.verifier_key());

    // A few thousand records across three tenants: balance updates as batches, audit events as opaque records.
    let tenants = ["acme", "globex", "initech"];
    let started = std::time::Instant::now();
    let mut batch = Vec::new();
    for i in 0..3000u64 {
        let tenant = tenants[(i % 3) as usize];
        let payload = if i % 10 == 9 {
            Payload::Event(Bytes::from(format!("{{\"audit\":\"review {i}\"}}")))
        } else {
            Payload::Batch(vec![
                Op::Put {
                    key: Bytes::from(format!("{tenant}/balance")),
                    value: Bytes::from(i.to_string()),
                },
                Op::Put {
                    key: Bytes::from(format!("{tenant}/last-op")),
                    value: Bytes::from(format!("op-{i}")),
                },
            ])
        };
        batch.push(NewRecord {
            tenant: tenant.into(),
            payload,
        });
        // 100 records per durable write: one fdatasync for all of them.
        if batch.len() == 100 {
            db.append_many(&batch)?;
            batch.clear();
        }
    }
    let tip = db.tip()?;
    println!(
        "appended {} records in {:.0} ms; root {}",
        tip.commit_id,
        started.elapsed().as_secs_f64() * 1e3,
        hex(tip.root)
    );

    // Reads: now, at an older CommitId, the history of one key, one tenant's records.
    println!(
        "acme/balance now      = {:?}",
        utf8(db.get("acme", b"acme/balance")?)
    );
    println!(
        "acme/balance at #1500 = {:?}",
        utf8(db.get_at("acme", b"acme/balance", CommitId(1500))?)
    );
    println!(
        "globex/last-op has {} versions",
        db.history("globex", b"globex/last-op")?.len()
    );
    println!(
        "initech has {} records from #2900 on",
        db.scan_tenant("initech", CommitId(2900), 1000)?.len()
    );

    // A checkpoint, as a client receives it, and the key it was told to trust.
    let cp = db.checkpoint_now()?;
    println!("\nsigned checkpoint:\n{}", cp.note);
    let trusted = VerifierKey::parse(&db.verifier_key().to_string())?;
    let checkpoint = SignedCheckpoint::verify(&cp.note, &trusted)?.checkpoint;

    // Inclusion: record #1234 is in the tree the checkpoint signs.
    let record = db.record(CommitId(1234))?.ok_or("record 1234 missing")?;
    let proof = db.inclusion_proof(CommitId(1234), checkpoint.size)?;
    let included = merkle::verify_inclusion(
        &record::merkle_leaf(&record.canonical),
        proof.leaf_index,
        checkpoint.size,
        &proof.hashes,
        &checkpoint.root,
    );
    println!(
        "inclusion proof of #1234 in tree of {} ({} hashes): {}",
        checkpoint.size,
        proof.hashes.len(),
        ok(included)
    );

    // Consistency: the tree at 1000 records is a prefix of the signed tree.
    let old_root = db.root_at(1000)?;
    let cproof = db.consistency_proof(1000, checkpoint.size)?;
    let consistent = merkle::verify_consistency(1000, checkpoint.size, &old_root, &checkpoint.root, &cproof);
    println!(
        "consistency proof 1000 -> {} ({} hashes): {}",
        checkpoint.size,
        cproof.len(),
        ok(consistent)
    );

    // A write with its own proof (E-8).
    let (receipt, cp2, p2) =
        db.append_and_prove("acme", Payload::Event(Bytes::from_static(b"closing the books")))?;
    let leaf = record::merkle_leaf(&db.record(receipt.commit_id)?.ok_or("missing")?.canonical);
    let mine = merkle::verify_inclusion(
        &leaf,
        p2.leaf_index,
        p2.tree_size,
        &p2.hashes,
        &cp2.checkpoint.root,
    );
    println!(
        "receipt #{} proved against checkpoint of size {}: {}",
        receipt.commit_id,
        cp2.checkpoint.size,
        ok(mine)
    );
    db.close()?;

    // The offline verifier: every record, every stored node, every checkpoint.
    let report = verify_dir(
        &dir,
        &VerifyOptions {
            verifier: Some(trusted),
            strict: true,
        },
        &mut |_, _| {},
    )?;
    println!(
        "\noffline verify: {} records, {} Merkle nodes, {} checkpoints ({} consistent pairs) in {:.0} ms: {}",
        report.records,
        report.nodes_checked,
        report.checkpoints_ok,
        report.consistency_ok,
        report.elapsed.as_secs_f64() * 1e3,
        ok(report.ok())
    );
    if !(included && consistent && mine && report.ok()) {
        return Err("a proof or the verification failed".into());
    }
    Ok(())
}

fn ok(b: bool) -> &'static str {
    if b {
        "verified"
    } else {
        "FAILED"
    }
}

fn utf8(v: Option<Bytes>) -> Option<String> {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
}
