//! Entry points for the engine's fuzz targets in `fuzz/`, also run over the committed corpus by ordinary tests.

use bytes::Bytes;

use crate::{
    checkpoint::{parse_entries, Checkpoint, SignedCheckpoint, SigningKey, VerifierKey},
    index::{self, Manifest, Run},
    record,
};

/// Record decoding: `decode` and `view` agree on every input, never panic, and a decoded record re-encodes to
/// exactly the input bytes.
pub fn record(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let decoded = record::decode(&bytes);
    let viewed = record::view(data);
    assert_eq!(
        decoded.is_ok(),
        viewed.is_ok(),
        "decode and view disagree: {decoded:?} / {viewed:?}"
    );
    if let Ok(r) = decoded {
        let mut again = Vec::new();
        record::encode_record(&mut again, &r);
        assert_eq!(again, data, "decode/encode round trip");
    }
}

/// Checkpoints: the body parser, the verifier-key parser, note verification with a fixed key and the checkpoint
/// log's entry parser never panic; a body that parses re-serializes to itself.
pub fn checkpoint(data: &[u8]) {
    let _ = parse_entries(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Checkpoint::parse_body(text) {
        // Only bodies without extra extension lines round-trip exactly.
        if text.lines().count() == 4 {
            assert_eq!(c.body(), text);
        }
    }
    let _ = VerifierKey::parse(text);
    let _ = SigningKey::parse_private(text);
    if let Ok(k) = SigningKey::from_seed("fuzz.example/log", [7u8; 32]) {
        let _ = SignedCheckpoint::verify(text, &k.verifier());
    }
}

/// Backup manifests: the decoder never panics, bounds every length before it allocates, and a manifest that
/// decodes re-encodes to the input byte for byte (its checksum line included).
pub fn backup_manifest(data: &[u8]) {
    if let Ok(m) = crate::backup::Manifest::decode(data) {
        assert_eq!(m.encode(), data, "decode/encode round trip");
        assert!(m.files.len() <= crate::backup::MAX_FILES);
        assert!(m.files.iter().all(|f| crate::backup::allowed_path(&f.path)));
    }
}

/// Auditor bundles: the decoder never panics and bounds every length before it allocates; a bundle that decodes
/// re-encodes to the input and its verification (with a fixed key) never panics.
pub fn audit_bundle(data: &[u8]) {
    if let Ok(b) = crate::audit::Bundle::decode(data) {
        assert_eq!(b.encode(), data, "decode/encode round trip");
        if let Ok(k) = SigningKey::from_seed("fuzz.example/log", [7u8; 32]) {
            let _ = b.verify(&k.verifier(), true);
        }
    }
}

/// Index files: the first byte picks the manifest parser (0) or the run parser (anything else). A manifest that
/// parses re-encodes to the input; a run that parses answers lookups consistently for every key it holds.
pub fn index(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which == 0 {
        if let Ok(m) = Manifest::parse(rest) {
            assert_eq!(m.encode(), rest, "manifest round trip");
        }
        return;
    }
    let Ok(run) = Run::parse(Bytes::copy_from_slice(rest)) else {
        return;
    };
    for table in &run.tables {
        for i in 0..table.len() {
            assert_eq!(table.find(&table.key(i)), Some(i), "a key finds itself");
            let mut last = run.lo;
            for v in table.versions(i) {
                assert!(index::ver_commit(v) > last && index::ver_commit(v) <= run.hi);
                last = index::ver_commit(v);
            }
        }
    }
}

/// Witness requests (C2SP `tlog-witness` `add-checkpoint` bodies): the parser never panics and bounds the body
/// and its proof lines before it allocates; a body that parses re-encodes to itself; a parsed request given to a
/// witness (in memory, trusting one fixed log key) is answered or refused, never a panic, and a cosignature it
/// returns verifies.
pub fn witness_request(data: &[u8]) {
    use crate::witness::{AddCheckpoint, Witness, MAX_PROOF_LINES};
    let Ok(req) = AddCheckpoint::parse(data) else {
        return;
    };
    assert_eq!(req.encode().as_bytes(), data, "request round trip");
    assert!(req.proof.len() <= MAX_PROOF_LINES);
    let fs = std::sync::Arc::new(aerodb_wal::fs::MemFs::new());
    let dir = std::path::Path::new("/w");
    let (Ok(()), Ok(log), Ok(key)) = (
        aerodb_wal::fs::Fs::create_dir_all(&*fs, dir),
        SigningKey::from_seed("fuzz.example/log", [7u8; 32]),
        SigningKey::from_seed_typed("fuzz.example/witness", crate::KeyType::CosignatureV1, [8u8; 32]),
    ) else {
        return;
    };
    let Ok(w) = Witness::open(fs, dir, key, &[log.verifier()]) else {
        return;
    };
    if let Ok(lines) = w.add_checkpoint(&req, 1_700_000_000) {
        let note = crate::witness::attach_lines(&req.note, &lines).expect("a cosigned note parses");
        assert_eq!(
            crate::witness::valid_cosignatures(&note, &[w.verifier()]).len(),
            1
        );
    }
}

/// Cosignature lines, notes and witness state files: the signature-line and note parsers, the tree-head parser
/// and the state decoder never panic; a state file that decodes re-encodes to itself; counting cosignatures with
/// a fixed witness key never panics.
pub fn cosignature(data: &[u8]) {
    if let Ok(s) = crate::witness::WitnessState::decode(data) {
        assert_eq!(s.encode(), data, "state round trip");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let _ = crate::checkpoint::parse_signature_line(line);
    }
    let _ = crate::checkpoint::parse_note(text);
    let _ = crate::TreeHead::parse(text);
    if let Ok(k) =
        SigningKey::from_seed_typed("fuzz.example/witness", crate::KeyType::CosignatureV1, [8u8; 32])
    {
        let _ = crate::witness::valid_cosignatures(text, &[k.verifier()]);
    }
}
