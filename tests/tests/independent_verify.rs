//! Checkpoints and proofs verified by an independent implementation: `tests/python/independent_verify.py`, written
//! from the C2SP signed-note / tlog-checkpoint specs and RFC 9162 with Python's `cryptography` for Ed25519, sharing
//! no code with ours. It must accept what we produce, and reject a tampered note, a wrong key and a bad proof.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{path::PathBuf, process::Command};

use aerodb_engine::{merkle, Db, SigningKey};
use aerodb_tests::{engine_opts, report_figure, TempDir};
use bytes::Bytes;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hex_list(v: &[merkle::Hash]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|h| format!("\"{}\"", hex(h)))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Runs the independent verifier on a case; returns (accepted, its output).
fn run(case: &str) -> (bool, String) {
    let tmp = TempDir::new("indep");
    let path = tmp.path().join("case.json");
    std::fs::write(&path, case).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/independent_verify.py");
    let out = Command::new("python3").arg(&script).arg(&path).output().expect(
        "python3 with the `cryptography` package is required for this test (.ci/run installs it: pip install cryptography)",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ACCEPT") || text.contains("REJECT"),
        "the verifier did not run: {text}"
    );
    (out.status.success(), text)
}

#[test]
fn an_independent_verifier_accepts_our_checkpoints_and_proofs_and_rejects_tampering() {
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
    let size = cp.checkpoint.size;
    let root = cp.checkpoint.root;
    let mut inclusion = Vec::new();
    for commit in [1u64, 2, 100, 256, 257, 500, 776, 777] {
        let p = db.inclusion_proof(aerodb_wal::CommitId(commit), size).unwrap();
        let canonical = db
            .record(aerodb_wal::CommitId(commit))
            .unwrap()
            .unwrap()
            .canonical;
        inclusion.push(format!(
            "{{\"record\":\"{}\",\"index\":{},\"size\":{size},\"proof\":{},\"root\":\"{}\"}}",
            hex(&canonical),
            p.leaf_index,
            hex_list(&p.hashes),
            hex(&root)
        ));
    }
    let mut consistency = Vec::new();
    for old in [1u64, 2, 3, 64, 100, 511, 512, 776, 777] {
        let p = db.consistency_proof(old, size).unwrap();
        consistency.push(format!(
            "{{\"old\":{old},\"new\":{size},\"old_root\":\"{}\",\"new_root\":\"{}\",\"proof\":{}}}",
            hex(&db.root_at(old).unwrap()),
            hex(&root),
            hex_list(&p)
        ));
    }
    let case = |vkey: &str, note: &str, inc: &[String], con: &[String]| {
        format!(
            "{{\"vkey\":{},\"note\":{},\"inclusion\":[{}],\"consistency\":[{}]}}",
            json_str(vkey),
            json_str(note),
            inc.join(","),
            con.join(",")
        )
    };
    let vkey = db.verifier_key().to_string();
    let (ok, out) = run(&case(&vkey, &cp.note, &inclusion, &consistency));
    assert!(ok, "{out}");

    // Rejections: a changed tree size in the note, another key, a changed proof hash, a changed record.
    let mut rejected = 0;
    let tampered_note = cp
        .note
        .replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert_ne!(tampered_note, cp.note);
    assert!(!run(&case(&vkey, &tampered_note, &[], &[])).0);
    rejected += 1;
    let other = SigningKey::from_seed("aerodb-ledger", [9u8; 32])
        .unwrap()
        .verifier()
        .to_string();
    assert!(!run(&case(&other, &cp.note, &[], &[])).0);
    rejected += 1;
    let mut bad_inclusion = inclusion[3].clone();
    let first_hash_at = bad_inclusion.find("\"proof\":[\"").unwrap() + 10;
    let flipped = if &bad_inclusion[first_hash_at..first_hash_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    bad_inclusion.replace_range(first_hash_at..first_hash_at + 1, flipped);
    assert!(!run(&case(&vkey, &cp.note, &[bad_inclusion], &[])).0);
    rejected += 1;
    // One hex digit of the record's body (the first byte after the 16-byte head).
    let mut wrong_record = inclusion[0].clone();
    let at = "{\"record\":\"".len() + 32;
    let digit = if &wrong_record[at..at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    wrong_record.replace_range(at..at + 1, digit);
    assert!(!run(&case(&vkey, &cp.note, &[wrong_record], &[])).0);
    rejected += 1;
    report_figure(
        "independent verifier (Python, C2SP + RFC 9162)",
        &format!(
            "1 checkpoint, {} inclusion, {} consistency proofs accepted; {rejected} tampered cases rejected",
            inclusion.len(),
            consistency.len()
        ),
    );
}
