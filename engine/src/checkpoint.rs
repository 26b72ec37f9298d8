//! Signed checkpoints (E-5): C2SP `tlog-checkpoint` bodies signed as C2SP `signed-note`s with Ed25519.
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <base64 root hash>\n
//! epoch <N>\n                                   ← extension line carrying the writer's epoch
//! \n
//! — <key name> <base64(key id[4] ‖ Ed25519 signature[64])>\n
//! ```
//! The signature covers the text up to and including its last newline. Key id =
//! `SHA-256(key name ‖ 0x0A ‖ type ‖ public key)[:4]`. The verifier key string that other tools accept is
//! `<name>+<hex key id>+<base64(type ‖ public key)>`; the private key file holds
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(type ‖ seed)>`.
//!
//! Two key types: `0x01`, the log's own Ed25519 note signature, and `0x04`, a C2SP `cosignature/v1` (a witness's
//! timestamped Ed25519 signature over `cosignature/v1\ntime <T>\n` ‖ the note text; the signature bytes are
//! `key id[4] ‖ timestamp u64 big-endian ‖ Ed25519 signature[64]`).

use aerodb_wal::Epoch;
use std::{io, path::Path};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The largest signed note accepted (bytes).
pub const MAX_NOTE_BYTES: usize = 64 << 10;
/// The most signature lines accepted on one note.
pub const MAX_SIGNATURES: usize = 100;
const SIG_PREFIX: &str = "\u{2014} ";
/// The header line of a `cosignature/v1` signed message.
const COSIGNATURE_HEADER: &str = "cosignature/v1\n";

/// The signature type of a key (C2SP signed-note's type byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `0x01`: an Ed25519 signature over the note text (the log's checkpoint signature).
    Ed25519,
    /// `0x04`: a timestamped Ed25519 witness cosignature (C2SP `tlog-cosignature`, `cosignature/v1`).
    CosignatureV1,
}

impl KeyType {
    /// The type byte.
    #[must_use]
    pub const fn byte(self) -> u8 {
        match self {
            Self::Ed25519 => 0x01,
            Self::CosignatureV1 => 0x04,
        }
    }

    fn from_byte(b: u8) -> Result<Self, CheckpointError> {
        match b {
            0x01 => Ok(Self::Ed25519),
            0x04 => Ok(Self::CosignatureV1),
            _ => Err(CheckpointError::Key(
                "not an Ed25519 (0x01) or cosignature/v1 (0x04) key",
            )),
        }
    }
}

/// The message a `cosignature/v1` signs: `cosignature/v1\ntime <timestamp>\n` then the note text.
#[must_use]
pub fn cosigned_message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("{COSIGNATURE_HEADER}time {timestamp}\n{text}").into_bytes()
}

/// Seconds since the Unix epoch now (0 if the clock is before it).
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Errors of keys, notes and checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A key name is empty or contains a space or `+`.
    #[error("invalid key name {0:?}: must be non-empty, without spaces or '+'")]
    KeyName(String),
    /// A key string does not parse.
    #[error("malformed key: {0}")]
    Key(&'static str),
    /// The note is not a well-formed signed note.
    #[error("malformed signed note: {0}")]
    Note(&'static str),
    /// No signature by the expected key, or the signature does not verify.
    #[error("checkpoint signature does not verify with key {0}")]
    Signature(String),
    /// The checkpoint body is not a well-formed tlog-checkpoint.
    #[error("malformed checkpoint: {0}")]
    Body(&'static str),
    /// The private key file is readable by others.
    #[error("key file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    KeyFileMode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The OS random source failed.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(CheckpointError::KeyName(name.to_owned()));
    }
    Ok(())
}

/// A key's id: `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]`, big-endian.
#[must_use]
pub fn key_id(name: &str, kind: KeyType, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind.byte()]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A signing key: the log's (type `0x01`) or a witness's (type `0x04`).
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    kind: KeyType,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "SigningKey({})", self.verifier())
    }
}

impl SigningKey {
    /// A new random log key named `name` (the log's origin, e.g. `example.com/ledger`).
    pub fn generate(name: &str) -> Result<Self, CheckpointError> {
        Self::generate_typed(name, KeyType::Ed25519)
    }

    /// A new random key of type `kind` (a witness key is [`KeyType::CosignatureV1`]).
    pub fn generate_typed(name: &str, kind: KeyType) -> Result<Self, CheckpointError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| CheckpointError::Random(e.to_string()))?;
        Self::from_seed_typed(name, kind, seed)
    }

    /// A log key from a 32-byte seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, CheckpointError> {
        Self::from_seed_typed(name, KeyType::Ed25519, seed)
    }

    /// A key of type `kind` from a 32-byte seed.
    pub fn from_seed_typed(name: &str, kind: KeyType, seed: [u8; 32]) -> Result<Self, CheckpointError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            kind,
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The key's type.
    #[must_use]
    pub fn kind(&self) -> KeyType {
        self.kind
    }

    /// The key's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier key.
    #[must_use]
    pub fn verifier(&self) -> VerifierKey {
        let public = self.key.verifying_key();
        VerifierKey {
            name: self.name.clone(),
            kind: self.kind,
            id: key_id(&self.name, self.kind, public.as_bytes()),
            key: public,
        }
    }

    /// `PRIVATE+KEY+<name>+<hex id>+<base64(type ‖ seed)>`.
    #[must_use]
    pub fn to_private_string(&self) -> String {
        let mut raw = vec![self.kind.byte()];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.verifier().id,
            B64.encode(raw)
        )
    }

    /// Parses [`SigningKey::to_private_string`]'s format, checking the key id.
    pub fn parse_private(s: &str) -> Result<Self, CheckpointError> {
        let rest = s
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(CheckpointError::Key("missing PRIVATE+KEY+ prefix"))?;
        let (name, id, key) = split3(rest)?;
        let raw = B64
            .decode(key)
            .map_err(|_| CheckpointError::Key("key is not base64"))?;
        let [kind, seed @ ..] = raw.as_slice() else {
            return Err(CheckpointError::Key("empty key"));
        };
        let kind = KeyType::from_byte(*kind)?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| CheckpointError::Key("Ed25519 seed must be 32 bytes"))?;
        let k = Self::from_seed_typed(name, kind, seed)?;
        if format!("{:08x}", k.verifier().id) != id {
            return Err(CheckpointError::Key("key id does not match the key"));
        }
        Ok(k)
    }

    /// Writes the private key to `path` with mode 0600 (refusing to overwrite) and syncs it.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let io_err = |source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        f.write_all(format!("{}\n", self.to_private_string()).as_bytes())
            .map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// Reads a private key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        use std::os::unix::fs::PermissionsExt;
        let io_err = |source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CheckpointError::KeyFileMode {
                path: path.display().to_string(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_err)?;
        Self::parse_private(&text)
    }

    /// Signs `text` (which must end with a newline and hold no blank line) as a signed note; a witness key
    /// cosigns it with the current time.
    #[must_use]
    pub fn sign_note(&self, text: &str) -> String {
        assert!(
            text.ends_with('\n') && !text.contains("\n\n"),
            "note text must be newline-terminated lines"
        );
        format!("{text}\n{}", self.signature_line(text, unix_now()))
    }

    /// This key's signature line over note `text`: `— <name> <base64(key id ‖ signature)>\n`. A witness key
    /// (type `0x04`) signs `cosignature/v1\ntime <timestamp>\n` ‖ `text` and puts the timestamp (seconds, at
    /// most 2^63 − 1) before the signature; a log key ignores `timestamp`.
    #[must_use]
    pub fn signature_line(&self, text: &str, timestamp: u64) -> String {
        let mut raw = self.verifier().id.to_be_bytes().to_vec();
        match self.kind {
            KeyType::Ed25519 => raw.extend_from_slice(&self.key.sign(text.as_bytes()).to_bytes()),
            KeyType::CosignatureV1 => {
                let timestamp = timestamp.min(i64::MAX as u64);
                raw.extend_from_slice(&timestamp.to_be_bytes());
                let sig = self.key.sign(&cosigned_message(text, timestamp));
                raw.extend_from_slice(&sig.to_bytes());
            }
        }
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }
}

fn split3(s: &str) -> Result<(&str, &str, &str), CheckpointError> {
    let mut it = s.splitn(3, '+');
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c)) if !a.is_empty() && b.len() == 8 => Ok((a, b, c)),
        _ => Err(CheckpointError::Key(
            "expected <name>+<8 hex digit id>+<base64 key>",
        )),
    }
}

/// A verifier key: name, type, key id and Ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    kind: KeyType,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![self.kind.byte()];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }
}

impl VerifierKey {
    /// Parses `<name>+<hex id>+<base64(type ‖ public key)>` (type `0x01` or `0x04`), checking that the id
    /// matches the key.
    pub fn parse(s: &str) -> Result<Self, CheckpointError> {
        let (name, id, key) = split3(s.trim())?;
        check_name(name)?;
        let raw = B64
            .decode(key)
            .map_err(|_| CheckpointError::Key("key is not base64"))?;
        let [kind, public @ ..] = raw.as_slice() else {
            return Err(CheckpointError::Key("empty key"));
        };
        let kind = KeyType::from_byte(*kind)?;
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| CheckpointError::Key("Ed25519 key must be 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| CheckpointError::Key("invalid point"))?;
        let want = key_id(name, kind, &public);
        if u32::from_str_radix(id, 16).ok() != Some(want) {
            return Err(CheckpointError::Key("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
            id: want,
            key,
        })
    }

    /// The key's type.
    #[must_use]
    pub fn kind(&self) -> KeyType {
        self.kind
    }

    /// The key id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a signed note and returns its text. The whole note is parsed as strictly as the reference
    /// implementation (Go's `sumdb/note.Open`), see [`parse_note`]. Lines by other keys (another name or key
    /// id) are ignored; the first line by this key must verify, and later lines by it are ignored.
    pub fn verify_note<'a>(&self, note: &'a str) -> Result<&'a str, CheckpointError> {
        self.open_note(note).map(|(text, _)| text)
    }

    /// [`VerifierKey::verify_note`], also returning the cosignature's timestamp (`None` for a log key).
    pub fn open_note<'a>(&self, note: &'a str) -> Result<(&'a str, Option<u64>), CheckpointError> {
        let (text, sigs) = parse_note(note)?;
        let sig = sigs
            .iter()
            .find(|s| s.name == self.name && s.id == self.id)
            .ok_or_else(|| CheckpointError::Signature(self.to_string()))?;
        self.verify_signature(text, &sig.sig)
            .map(|t| (text, t))
            .ok_or_else(|| CheckpointError::Signature(self.to_string()))
    }

    /// Checks `sig` (the signature bytes after the key id) over note `text`; `Some(timestamp)` for a valid
    /// cosignature, `Some(None)` for a valid log signature, `None` if it does not verify.
    #[allow(
        clippy::option_option,
        reason = "valid without a timestamp differs from invalid"
    )]
    fn verify_signature(&self, text: &str, sig: &[u8]) -> Option<Option<u64>> {
        match self.kind {
            KeyType::Ed25519 => {
                let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
                self.key.verify(text.as_bytes(), &sig).ok().map(|()| None)
            }
            KeyType::CosignatureV1 => {
                let (ts, sig) = sig.split_first_chunk::<8>()?;
                let ts = u64::from_be_bytes(*ts);
                if ts > i64::MAX as u64 {
                    return None;
                }
                let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
                self.key
                    .verify(&cosigned_message(text, ts), &sig)
                    .ok()
                    .map(|()| Some(ts))
            }
        }
    }
}

/// One signature line of a signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature<'a> {
    /// The key name.
    pub name: &'a str,
    /// The key id (first four bytes).
    pub id: u32,
    /// The signature bytes after the key id.
    pub sig: Vec<u8>,
    /// The whole line, without its newline.
    pub line: &'a str,
}

/// Splits a signed note into its text (up to and including the newline before the last blank line) and its
/// signature lines, as strictly as Go's `sumdb/note.Open`: at most [`MAX_NOTE_BYTES`], no control character but
/// newline anywhere, every signature line well-formed (em dash, a valid key name, a space, standard base64 of at
/// least 5 bytes), at least one and at most [`MAX_SIGNATURES`] of them.
pub fn parse_note(note: &str) -> Result<(&str, Vec<NoteSignature<'_>>), CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::Note("larger than 64 KiB"));
    }
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(CheckpointError::Note("control character other than newline"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(CheckpointError::Note("no blank line before the signatures"))?;
    let text = &note[..=split];
    let block = &note[split + 2..];
    if !block.ends_with('\n') {
        return Err(CheckpointError::Note("signature block must end with a newline"));
    }
    let mut sigs = Vec::new();
    for line in block.lines() {
        if sigs.len() >= MAX_SIGNATURES {
            return Err(CheckpointError::Note("too many signatures"));
        }
        sigs.push(parse_signature_line(line)?);
    }
    Ok((text, sigs))
}

/// Parses one signature line (without its newline): `— <key name> <base64(key id ‖ signature)>`.
pub fn parse_signature_line(line: &str) -> Result<NoteSignature<'_>, CheckpointError> {
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or(CheckpointError::Note("signature line must start with an em dash"))?;
    let (name, b64) = rest.split_once(' ').ok_or(CheckpointError::Note(
        "signature line needs a name and a signature",
    ))?;
    if check_name(name).is_err() {
        return Err(CheckpointError::Note("signature line has an invalid key name"));
    }
    if b64.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::Note("signature too long"));
    }
    let raw = B64
        .decode(b64)
        .map_err(|_| CheckpointError::Note("signature is not base64"))?;
    let Some((id, sig)) = raw.split_first_chunk::<4>().filter(|(_, s)| !s.is_empty()) else {
        return Err(CheckpointError::Note("signature too short"));
    };
    Ok(NoteSignature {
        name,
        id: u32::from_be_bytes(*id),
        sig: sig.to_vec(),
        line,
    })
}

/// A tree head: what a checkpoint commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (its key name).
    pub origin: String,
    /// Number of leaves (= records).
    pub size: u64,
    /// The Merkle root at that size.
    pub root: Hash,
    /// The writer's epoch when it was made.
    pub epoch: Epoch,
}

impl Checkpoint {
    /// The checkpoint body (the note text that is signed).
    #[must_use]
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\nepoch {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.epoch
        )
    }

    /// Parses one of this log's checkpoint bodies: a [`TreeHead`] with exactly one `epoch <N>` extension line.
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let head = TreeHead::parse(text)?;
        let mut epoch = None;
        for e in head.extensions.iter().filter_map(|l| l.strip_prefix("epoch ")) {
            let n = e
                .parse()
                .map(Epoch)
                .map_err(|_| CheckpointError::Body("epoch is not a number"))?;
            if epoch.replace(n).is_some() {
                return Err(CheckpointError::Body("two epoch lines"));
            }
        }
        Ok(Self {
            origin: head.origin,
            size: head.size,
            root: head.root,
            epoch: epoch.ok_or(CheckpointError::Body("missing epoch line"))?,
        })
    }

    /// Signs this checkpoint.
    #[must_use]
    pub fn sign(&self, key: &SigningKey) -> SignedCheckpoint {
        SignedCheckpoint {
            checkpoint: self.clone(),
            note: key.sign_note(&self.body()),
        }
    }
}

/// The body of any log's checkpoint (C2SP `tlog-checkpoint`): origin, tree size, root hash, then optional
/// extension lines. A witness checks other logs' checkpoints with this; this log's own add an `epoch` line
/// ([`Checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// The origin line (non-empty).
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The root hash.
    pub root: Hash,
    /// The extension lines (each non-empty), in order.
    pub extensions: Vec<String>,
}

impl TreeHead {
    /// Parses a checkpoint body: at least three non-empty newline-terminated lines; the size in decimal without
    /// leading zeroes (`0` for the empty tree); the root as standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Body("must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or(CheckpointError::Body("missing origin"))?;
        let size_line = lines.next().ok_or(CheckpointError::Body("missing tree size"))?;
        let size =
            parse_decimal(size_line).ok_or(CheckpointError::Body("tree size is not a decimal number"))?;
        let root_line = lines.next().ok_or(CheckpointError::Body("missing root hash"))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Body("root hash is not 32 bytes of base64"))?;
        let extensions = lines.map(str::to_owned).collect::<Vec<_>>();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError::Body("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// A decimal number as the C2SP formats write one: ASCII digits, no sign, no leading zero (but `0` itself).
#[must_use]
pub fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        s == "0" || (!s.starts_with('0') && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    s.parse().ok().filter(|_| canonical)
}

/// A checkpoint with its signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The parsed checkpoint.
    pub checkpoint: Checkpoint,
    /// The full signed note text.
    pub note: String,
}

impl SignedCheckpoint {
    /// Verifies a signed note with `key` and parses its checkpoint; the origin must be the key's name.
    pub fn verify(note: &str, key: &VerifierKey) -> Result<Self, CheckpointError> {
        let text = key.verify_note(note)?;
        let checkpoint = Checkpoint::parse_body(text)?;
        if checkpoint.origin != key.name() {
            return Err(CheckpointError::Body("origin differs from the key name"));
        }
        Ok(Self {
            checkpoint,
            note: note.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed("example.com/log", [3u8; 32]).unwrap()
    }

    /// A note of a checkpoint of 12 records at epoch 4, signed by `k`.
    fn sample_note(k: &SigningKey) -> String {
        Checkpoint {
            origin: "example.com/log".into(),
            size: 12,
            root: [9u8; 32],
            epoch: Epoch(4),
        }
        .sign(k)
        .note
    }

    #[test]
    fn sign_verify_round_trip_and_key_strings() {
        let k = key();
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 12,
            root: [9u8; 32],
            epoch: Epoch(4),
        };
        let signed = cp.sign(&k);
        let v = VerifierKey::parse(&k.verifier().to_string()).unwrap();
        assert_eq!(SignedCheckpoint::verify(&signed.note, &v).unwrap().checkpoint, cp);
        assert!(signed.note.starts_with("example.com/log\n12\n"));
        assert!(signed.note.contains("\nepoch 4\n\n\u{2014} example.com/log "));
        let k2 = SigningKey::parse_private(&k.to_private_string()).unwrap();
        assert_eq!(k2.verifier(), k.verifier());
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let k = key();
        let note = sample_note(&k);
        let v = k.verifier();
        for i in 0..note.len() {
            if !note.is_char_boundary(i) || !note.is_char_boundary(i + 1) {
                continue;
            }
            let mut b = note.clone().into_bytes();
            b[i] ^= 0x01;
            if let Ok(s) = String::from_utf8(b) {
                assert!(
                    SignedCheckpoint::verify(&s, &v).is_err(),
                    "flip at byte {i} accepted"
                );
            }
        }
        let other = SigningKey::from_seed("example.com/log", [4u8; 32])
            .unwrap()
            .verifier();
        assert!(SignedCheckpoint::verify(&note, &other).is_err());
    }

    #[test]
    fn notes_are_parsed_as_strictly_as_the_reference() {
        let k = key();
        let note = sample_note(&k);
        let v = k.verifier();
        let other = SigningKey::from_seed("witness.example/w1", [5u8; 32]).unwrap();
        let other_line = other.sign_note("x\n").rsplit("\n\n").next().unwrap().to_owned();
        // Accepted: another key's well-formed line before or after ours, and a repeat of ours.
        let ours = note.rsplit("\n\n").next().unwrap();
        let (text, _) = note.split_at(note.len() - ours.len());
        for ok in [
            format!("{text}{other_line}{ours}"),
            format!("{note}{other_line}"),
            format!("{note}{ours}"),
        ] {
            assert!(SignedCheckpoint::verify(&ok, &v).is_ok(), "{ok:?}");
        }
        // Refused, even though our valid signature comes first (the parser used to stop there).
        for bad in [
            format!("{note}not a signature line\n"),
            format!("{note}\u{2014} witness.example/w1 not*base64\n"),
            format!("{note}\u{2014} witness.example/w1 AAAA\n"),
            format!("{note}\u{2014} witness.example/w1 \n"),
            format!("{note}\u{2014} bad+name AAAAAAAA\n"),
            format!("{note}\u{2014} witness.example/w1\tAAAAAAAA\n"),
            note.replacen("example.com/log\n", "example.com/log\t\n", 1),
            note.replacen("epoch 4", "epoch\t4", 1),
            note.replacen("\u{2014} example.com/log ", "\u{2014} example.com/log\t", 1),
        ] {
            assert!(SignedCheckpoint::verify(&bad, &v).is_err(), "{bad:?}");
        }
        // At most MAX_SIGNATURES lines.
        let many = format!("{note}{}", other_line.repeat(MAX_SIGNATURES));
        assert!(SignedCheckpoint::verify(&many, &v).is_err());
        let enough = format!("{note}{}", other_line.repeat(MAX_SIGNATURES - 1));
        assert!(SignedCheckpoint::verify(&enough, &v).is_ok());
    }

    #[test]
    fn malformed_keys_and_bodies_are_rejected() {
        assert!(SigningKey::from_seed("has space", [0; 32]).is_err());
        assert!(SigningKey::from_seed("a+b", [0; 32]).is_err());
        assert!(VerifierKey::parse("name+00000000+AQ==").is_err());
        let good = key().verifier().to_string();
        let bad_id = format!("example.com/log+deadbeef+{}", good.rsplit('+').next().unwrap());
        assert!(VerifierKey::parse(&bad_id).is_err());
        for body in [
            "o\n012\nAAAA\nepoch 1\n",
            "o\n1\nAAAA\nepoch 1\n",
            "o\n1\n",
            "o\n-1\nx\n",
            "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        ] {
            assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
        }
    }
}

/// The persisted list of signed checkpoints, oldest first: `checkpoints.log`, a sequence of
/// `{ len u32 | crc32 u32 | note bytes }` entries, appended and fsynced one at a time.
#[derive(Debug)]
pub struct CheckpointLog {
    path: std::path::PathBuf,
    /// `None`: opened read-only and missing (reads as empty).
    file: Option<Box<dyn aerodb_wal::fs::FsFile>>,
    end: u64,
    notes: Vec<String>,
}

const ENTRY_HEADER: usize = 8;

/// What opening the checkpoint log found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointLogReport {
    /// Entries read.
    pub entries: usize,
    /// Bytes of a torn last entry that were discarded.
    pub torn_bytes: u64,
}

impl CheckpointLog {
    /// Opens (creating) the log at `path`. A torn last entry (crash during an append) is cut off and reported;
    /// the checkpoint it carried was never returned to anyone, since appends return after the fsync.
    pub fn open(fs: &dyn aerodb_wal::fs::Fs, path: &Path) -> Result<(Self, CheckpointLogReport), io::Error> {
        Self::open_mode(fs, path, false)
    }

    /// Opens the log at `path` without changing anything: a missing log reads as empty, a torn last entry is
    /// reported and left in place. (Appending to it fails.)
    pub fn open_read_only(
        fs: &dyn aerodb_wal::fs::Fs,
        path: &Path,
    ) -> Result<(Self, CheckpointLogReport), io::Error> {
        Self::open_mode(fs, path, true)
    }

    fn open_mode(
        fs: &dyn aerodb_wal::fs::Fs,
        path: &Path,
        read_only: bool,
    ) -> Result<(Self, CheckpointLogReport), io::Error> {
        use aerodb_wal::fs::OpenMode;
        let mode = if read_only {
            OpenMode::Read
        } else {
            OpenMode::ReadWrite
        };
        let file = match fs.open(path, mode) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && read_only => {
                return Ok((
                    Self {
                        path: path.to_owned(),
                        file: None,
                        end: 0,
                        notes: Vec::new(),
                    },
                    CheckpointLogReport::default(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let f = fs.open(path, OpenMode::CreateNew)?;
                if let Some(dir) = path.parent() {
                    fs.sync_dir(dir)?;
                }
                f
            }
            Err(e) => return Err(e),
        };
        let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("checkpoint log too large"))?;
        let mut bytes = vec![0u8; len];
        aerodb_wal::fs::read_exact_at(&*file, &mut bytes, 0)?;
        let (notes, end) = parse_entries(&bytes)?;
        let mut report = CheckpointLogReport {
            entries: notes.len(),
            torn_bytes: (len - end) as u64,
        };
        if end < len && !read_only {
            tracing::warn!(path = %path.display(), bytes = len - end, "discarding a torn checkpoint log entry");
            file.set_len(end as u64)?;
            file.sync_all()?;
        }
        report.entries = notes.len();
        Ok((
            Self {
                path: path.to_owned(),
                file: Some(file),
                end: end as u64,
                notes,
            },
            report,
        ))
    }

    /// Appends a signed note and fsyncs it.
    pub fn append(&mut self, note: &str) -> Result<(), io::Error> {
        assert!(note.len() <= MAX_NOTE_BYTES, "notes are bounded when made");
        let entry = encode_entry(note);
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("the checkpoint log was opened read-only"))?;
        file.write_all_at(&entry, self.end)?;
        file.sync_data()?;
        self.end += entry.len() as u64;
        self.notes.push(note.to_owned());
        Ok(())
    }

    /// Every note, oldest first.
    #[must_use]
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The newest note.
    #[must_use]
    pub fn latest(&self) -> Option<&str> {
        self.notes.last().map(String::as_str)
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One checkpoint log entry: `len u32 | crc32 u32 | note bytes` (little-endian), as appended to the log.
#[must_use]
pub fn encode_entry(note: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(ENTRY_HEADER + note.len());
    entry.extend_from_slice(&(note.len() as u32).to_le_bytes());
    entry.extend_from_slice(&crc32fast::hash(note.as_bytes()).to_le_bytes());
    entry.extend_from_slice(note.as_bytes());
    entry
}

/// Parses entries from untrusted bytes; returns the valid notes and where the valid prefix ends. A bad entry
/// that reaches the end of the file is a torn tail (the caller cuts it off); a bad entry with bytes after it is
/// corruption, reported as an error with its offset.
pub fn parse_entries(bytes: &[u8]) -> Result<(Vec<String>, usize), io::Error> {
    let mut notes = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < ENTRY_HEADER {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let end = ENTRY_HEADER.saturating_add(len.min(MAX_NOTE_BYTES + 1));
        let valid = len <= MAX_NOTE_BYTES
            && rest.len() >= ENTRY_HEADER + len
            && crc32fast::hash(&rest[ENTRY_HEADER..ENTRY_HEADER + len]) == crc;
        let note = if valid {
            std::str::from_utf8(&rest[ENTRY_HEADER..ENTRY_HEADER + len]).ok()
        } else {
            None
        };
        match note {
            Some(n) => {
                notes.push(n.to_owned());
                pos += ENTRY_HEADER + len;
            }
            None if end >= rest.len() => break,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("checkpoint log corrupt at offset {pos}: a bad entry is followed by more data"),
                ))
            }
        }
    }
    Ok((notes, pos))
}
