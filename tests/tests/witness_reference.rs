//! Witness cosignatures and note parsing checked against code and vectors we did not write.
//!
//! - Key ids: published C2SP verifier keys from transparency-dev's `formats/note` tests (a native
//!   `cosignature/v1` key, type 0x04, and an Ed25519 key, type 0x01) parse only with their own key id, and our key
//!   ids equal `signed_note::key_id` (Cloudflare's port of Go's `sumdb/note`).
//! - Timestamps: the cosignature lines of the C2SP `tlog-cosignature` example and of transparency-dev's tests
//!   carry the timestamps those documents state.
//! - Cosignatures: `signed_note::Note` parses our cosigned notes and, with a type-0x04 verifier built here from
//!   the C2SP text, accepts our cosignatures and rejects tampered ones.
//! - Differential parsing: on a set of well-formed and malformed notes and checkpoint bodies, our parser accepts
//!   exactly what `signed_note` (notes) and `tlog_tiles` (checkpoint bodies) accept.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use aerodb_engine::{
    checkpoint::{parse_note, parse_signature_line, KeyType},
    witness::{attach_lines, valid_cosignatures},
    SigningKey, TreeHead, VerifierKey,
};
use aerodb_tests::report_figure;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::Verifier as _;
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};

/// A `cosignature/v1` verifier written from the C2SP text alone, for `signed_note` to drive.
struct CosigV1 {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl CosigV1 {
    /// From a vkey `<name>+<hex id>+<base64(0x04 ‖ key)>`, the id computed by `signed_note::key_id`.
    fn new(vkey: &str) -> Self {
        let mut parts = vkey.splitn(3, '+');
        let (name, _, key) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let raw = B64.decode(key).unwrap();
        assert_eq!(raw[0], 0x04, "a cosignature/v1 key");
        Self {
            name: name.to_owned(),
            id: signed_note::key_id(name, &raw),
            key: ed25519_dalek::VerifyingKey::from_bytes(&raw[1..].try_into().unwrap()).unwrap(),
        }
    }
}

impl Verifier for CosigV1 {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        // timestamped_signature: u64 big-endian timestamp, then the Ed25519 signature over
        // "cosignature/v1\ntime <timestamp>\n" followed by the note text.
        let Some((ts, sig)) = sig.split_first_chunk::<8>() else {
            return false;
        };
        let mut m = format!("cosignature/v1\ntime {}\n", u64::from_be_bytes(*ts)).into_bytes();
        m.extend_from_slice(msg);
        ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| self.key.verify(&m, &s).is_ok())
    }
}

fn reference_accepts(note: &str, vkeys: &[&str]) -> bool {
    let list: Vec<Box<dyn Verifier>> = vkeys
        .iter()
        .map(|k| -> Box<dyn Verifier> {
            if B64.decode(k.splitn(3, '+').nth(2).unwrap()).unwrap()[0] == 0x04 {
                Box::new(CosigV1::new(k))
            } else {
                Box::new(StandardVerifier::new(k).unwrap())
            }
        })
        .collect();
    Note::from_bytes(note.as_bytes()).is_ok_and(|n| n.verify(&VerifierList::new(list)).is_ok())
}

#[test]
fn published_key_ids_and_timestamps_match() {
    // transparency-dev/formats note tests: a native cosignature/v1 verifier key and an Ed25519 one.
    for (vkey, kind) in [
        (
            "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
            KeyType::CosignatureV1,
        ),
        (
            "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
            KeyType::Ed25519,
        ),
    ] {
        let k = VerifierKey::parse(vkey).unwrap_or_else(|e| panic!("{vkey}: {e}"));
        assert_eq!((k.kind(), k.to_string().as_str()), (kind, vkey));
        let wrong = vkey.replacen(&format!("{:08x}", k.id()), &format!("{:08x}", k.id() ^ 1), 1);
        assert!(VerifierKey::parse(&wrong).is_err(), "{wrong}");
    }
    // Our key ids are signed_note's for both types.
    for kind in [KeyType::Ed25519, KeyType::CosignatureV1] {
        let k = SigningKey::from_seed_typed("witness.example/w1", kind, [8; 32])
            .unwrap()
            .verifier();
        let raw = B64.decode(k.to_string().splitn(3, '+').nth(2).unwrap()).unwrap();
        assert_eq!(k.id(), signed_note::key_id("witness.example/w1", &raw));
    }
    // Timestamps: the C2SP tlog-cosignature example ("time 1679315147") and transparency-dev's test line.
    for (line, ts) in [
        (
            "\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==",
            1_679_315_147,
        ),
        (
            "\u{2014} w ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==",
            1_727_964_367,
        ),
    ] {
        let s = parse_signature_line(line).unwrap();
        assert_eq!(s.sig.len(), 8 + 64);
        assert_eq!(u64::from_be_bytes(s.sig[..8].try_into().unwrap()), ts);
    }
}

#[test]
fn our_cosignatures_verify_with_the_reference_note_parser() {
    let log = SigningKey::from_seed("example.com/log", [3; 32]).unwrap();
    let body = format!("example.com/log\n42\n{}\n", B64.encode([5u8; 32]));
    let note = log.sign_note(&body);
    let witnesses: Vec<SigningKey> = (0..3u8)
        .map(|i| {
            SigningKey::from_seed_typed(
                &format!("witness.example/w{i}"),
                KeyType::CosignatureV1,
                [10 + i; 32],
            )
            .unwrap()
        })
        .collect();
    let mut cosigned = note.clone();
    for (i, w) in witnesses.iter().enumerate() {
        cosigned = attach_lines(&cosigned, &w.signature_line(&body, 1_700_000_000 + i as u64)).unwrap();
    }
    let vkeys: Vec<String> = witnesses.iter().map(|w| w.verifier().to_string()).collect();
    let log_vkey = log.verifier().to_string();
    let mut accepted = 0;
    for v in &vkeys {
        assert!(reference_accepts(&cosigned, &[v]), "{v}");
        accepted += 1;
    }
    assert!(reference_accepts(
        &cosigned,
        &[&log_vkey, &vkeys[0], &vkeys[1], &vkeys[2]]
    ));
    let ours: Vec<VerifierKey> = vkeys.iter().map(|v| VerifierKey::parse(v).unwrap()).collect();
    assert_eq!(valid_cosignatures(&cosigned, &ours).len(), 3);

    // Tampering: every single-byte change of the text or of a cosignature is refused by both.
    let mut rejected = 0;
    let (text, _) = parse_note(&cosigned).unwrap();
    for i in (0..cosigned.len()).step_by(3) {
        let mut b = cosigned.clone().into_bytes();
        b[i] ^= 0x01;
        let Ok(s) = String::from_utf8(b) else { continue };
        let theirs = reference_accepts(&s, &[&vkeys[1]]);
        let mine = valid_cosignatures(&s, &ours[1..2]).len() == 1;
        assert_eq!(theirs, mine, "byte {i}: reference {theirs}, ours {mine}\n{s}");
        if i < text.len() {
            assert!(!mine, "a changed text byte {i} still verifies");
        }
        rejected += usize::from(!mine);
    }
    // A log key never verifies a cosignature, nor a witness key a log signature.
    let as_log = SigningKey::from_seed("witness.example/w0", [10; 32])
        .unwrap()
        .verifier();
    assert!(as_log.verify_note(&cosigned).is_err());
    report_figure(
        "witness cosignatures vs signed_note (reference note parser)",
        &format!("{accepted} cosignatures accepted by both; {rejected} tampered variants rejected by both"),
    );
}

#[test]
fn note_and_checkpoint_parsing_agree_with_the_reference() {
    let log = SigningKey::from_seed("example.com/log", [3; 32]).unwrap();
    let vkey = log.verifier().to_string();
    let v = log.verifier();
    let body = format!("example.com/log\n42\n{}\n", B64.encode([5u8; 32]));
    let note = log.sign_note(&body);
    let other = SigningKey::from_seed("other.example/k", [4; 32]).unwrap();
    let other_line = other.signature_line(&body, 0);
    let ours_line = note.rsplit("\n\n").next().unwrap().to_owned();
    let notes = vec![
        note.clone(),
        format!("{note}{other_line}"),
        format!("{body}\n{other_line}{ours_line}"),
        format!("{note}{ours_line}"),
        format!("{note}not a signature\n"),
        format!("{note}\u{2014} other.example/k not*base64\n"),
        format!("{note}\u{2014} other.example/k AAAA\n"),
        format!("{note}\u{2014} other.example/k \n"),
        format!("{note}\u{2014} bad+name AAAAAAAA\n"),
        format!("{note}\u{2014} other.example/k\tAAAAAAAA\n"),
        note.replacen("example.com/log\n", "example.com/log\t\n", 1),
        note.trim_end_matches('\n').to_owned(),
        note.replacen("\n\n", "\n", 1),
        format!("{body}\n"),
        format!("{note}{}", other_line.repeat(99)),
        format!("{note}{}", other_line.repeat(100)),
        format!("x\n\n{note}"),
        note.replacen('\u{2014}', "-", 1),
        note.replacen("\u{2014} ", "\u{2014}  ", 1),
    ];
    let mut agreed = 0;
    for n in &notes {
        let theirs = reference_accepts(n, &[&vkey]);
        let mine = v.verify_note(n).is_ok();
        assert_eq!(theirs, mine, "note: reference {theirs}, ours {mine}: {n:?}");
        agreed += 1;
    }
    let root = B64.encode([5u8; 32]);
    let bodies = [
        format!("o\n0\n{root}\n"),
        format!("o\n42\n{root}\n"),
        format!("o\n42\n{root}\next one\nepoch 3\n"),
        format!("o\n042\n{root}\n"),
        format!("o\n-1\n{root}\n"),
        format!("o\n+1\n{root}\n"),
        format!("o\n18446744073709551616\n{root}\n"),
        format!("\n1\n{root}\n"),
        format!("o\n1\n{root}"),
        format!("o\n1\n{root}\n\n"),
        format!("o\n1\n{root}\n\nx\n"),
        "o\n1\nAAAA\n".to_owned(),
        format!("o\n1\n{}\n", B64.encode([5u8; 33])),
        "o\n1\n".to_owned(),
    ];
    for b in &bodies {
        let theirs = tlog_tiles::Checkpoint::from_bytes(b.as_bytes()).is_ok();
        let mine = TreeHead::parse(b).is_ok();
        assert_eq!(theirs, mine, "body: reference {theirs}, ours {mine}: {b:?}");
        agreed += 1;
    }
    report_figure(
        "note and checkpoint parsing vs signed_note / tlog_tiles",
        &format!(
            "{} notes and {} checkpoint bodies, same verdict on each ({agreed})",
            notes.len(),
            bodies.len()
        ),
    );
}
