//! Signed tree heads: the broker's periodic, signed statement of the audit
//! log's size and root, in the C2SP `tlog-checkpoint` text format, signed as
//! a C2SP `signed-note` with the broker's ed25519 key. Agencies keep the
//! checkpoints they receive as witnesses: a later log that is not consistent
//! with one of them was rewritten.
//!
//! ```text
//! samverkan-dev/audit          ← origin (also the note key name)
//! 1042                         ← tree size (entries)
//! 9b8c…base64…=                ← root hash (standard base64)
//! time 1795957284308           ← extension: signing time, ms since epoch
//! prev 1000                    ← extension: the size of the previous checkpoint
//!
//! — samverkan-dev/audit Az3X…  ← signature line: base64(key id ‖ ed25519 signature)
//! ```
//!
//! The `prev` line chains the checkpoints the broker signs, so a checkpoint
//! removed from the broker's store is missed by the next one (the first
//! checkpoint of a log, and those signed before the line existed, have none).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use signed_note::{Note, Verifier, VerifierList};
use tlog_tiles::checkpoint::Checkpoint;
use tlog_tiles::tlog::Hash;

use super::AuditProofError;
use super::proof::NodeHash;
use crate::keys::KeyRegistry;
use crate::messages::BROKER_KEY_OWNER;

/// The origin of the development broker's log: the broker's `[audit] origin`
/// unless configured, and what `samverkan-client witness --init` witnesses
/// unless told otherwise.
pub const DEV_ORIGIN: &str = "samverkan-dev/audit";

/// The ed25519 algorithm byte of a signed-note key.
const ALG_ED25519: u8 = 0x01;

/// A verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The log's name (and the note key's name).
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// The Merkle root.
    pub root: NodeHash,
    /// When the broker signed it.
    pub time_ms: i64,
    /// The size of the checkpoint the broker signed before this one, if named.
    pub prev: Option<u64>,
    /// The id of the broker key in `broker-keys.toml` that signed.
    pub key_id: String,
    /// The complete signed note.
    pub note: String,
}

/// The signed-note key id of an ed25519 key under `name` (C2SP signed-note).
pub fn note_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut encoded = vec![ALG_ED25519];
    encoded.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &encoded)
}

/// The verifier key string `name+hash+base64` that C2SP tools accept.
pub fn verifier_key_string(name: &str, key: &VerifyingKey) -> String {
    let mut encoded = vec![ALG_ED25519];
    encoded.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{:08x}+{}",
        note_key_id(name, key),
        STANDARD.encode(&encoded)
    )
}

/// The broker's key as a signed-note signer.
pub struct NoteSigner<'a> {
    name: &'a str,
    id: u32,
    key: &'a SigningKey,
}

impl<'a> NoteSigner<'a> {
    /// Signs notes under `name` with `key`.
    pub fn new(name: &'a str, key: &'a SigningKey) -> Self {
        Self {
            name,
            id: note_key_id(name, &key.verifying_key()),
            key,
        }
    }
}

impl signed_note::Signer for NoteSigner<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature2::Error> {
        Ok(self.key.sign(msg).to_bytes().to_vec())
    }
}

struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl Verifier for NoteVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        crate::envelope::verify_signature(&self.key, msg, sig).is_ok()
    }
}

/// The extension lines the broker writes: `time`, then `prev` when there
/// was an earlier checkpoint.
fn extension(time_ms: i64, prev: Option<u64>) -> String {
    match prev {
        Some(p) => format!("time {time_ms}\nprev {p}\n"),
        None => format!("time {time_ms}\n"),
    }
}

/// Signs a checkpoint for a tree of `size` entries with `root` at `time_ms`;
/// `prev` is the size of the checkpoint signed before it, if any.
pub fn sign_checkpoint(
    origin: &str,
    size: u64,
    root: &NodeHash,
    time_ms: i64,
    prev: Option<u64>,
    key: &SigningKey,
) -> Result<String, AuditProofError> {
    let malformed = |e: String| AuditProofError::MalformedCheckpoint(e);
    let text = Checkpoint::new(origin, size, Hash(*root), &extension(time_ms, prev))
        .map_err(|e| malformed(e.to_string()))?
        .to_bytes();
    let mut note = Note::new(&text, &[]).map_err(|e| malformed(e.to_string()))?;
    note.add_sigs(&[&NoteSigner::new(origin, key)])
        .map_err(|e| malformed(e.to_string()))?;
    String::from_utf8(note.to_bytes()).map_err(|e| malformed(e.to_string()))
}

/// Verifies a checkpoint note against the broker's keys (owner `broker` in
/// `broker-keys.toml`): one of them, valid at the checkpoint's time, must
/// have signed it under the checkpoint's origin.
pub fn verify_checkpoint(
    note: &str,
    broker_keys: &KeyRegistry,
) -> Result<SignedCheckpoint, AuditProofError> {
    let parsed = Note::from_bytes(note.as_bytes())
        .map_err(|e| AuditProofError::MalformedCheckpoint(e.to_string()))?;
    let checkpoint = Checkpoint::from_bytes(parsed.text())
        .map_err(|e| AuditProofError::MalformedCheckpoint(e.to_string()))?;
    let origin = checkpoint.origin().to_string();
    let time_ms = checkpoint
        .extension()
        .lines()
        .find_map(|l| l.strip_prefix("time "))
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| AuditProofError::MalformedCheckpoint("no `time` extension line".into()))?;
    let prev = match checkpoint
        .extension()
        .lines()
        .find_map(|l| l.strip_prefix("prev "))
    {
        Some(p) => Some(p.parse::<u64>().map_err(|_| {
            AuditProofError::MalformedCheckpoint(format!("`prev {p}` is not a size"))
        })?),
        None => None,
    };
    let mut last_error = format!("no key of `{BROKER_KEY_OWNER}` in the registry signed it");
    for key in broker_keys.keys_of(BROKER_KEY_OWNER) {
        let verifier = NoteVerifier {
            name: origin.clone(),
            id: note_key_id(&origin, &key.public_key),
            key: key.public_key,
        };
        let list = VerifierList::new(vec![Box::new(verifier)]);
        match parsed.verify(&list) {
            Ok(_) => {
                key.check_at(time_ms)
                    .map_err(|e| AuditProofError::CheckpointSignature(e.to_string()))?;
                return Ok(SignedCheckpoint {
                    origin,
                    size: checkpoint.size(),
                    root: checkpoint.hash().0,
                    time_ms,
                    prev,
                    key_id: key.key_id.clone(),
                    note: note.to_string(),
                });
            }
            Err(signed_note::NoteError::UnverifiedNote) => {}
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(AuditProofError::CheckpointSignature(last_error))
}

/// Checks that `note` is exactly the note the broker signs for `checkpoint`
/// (already verified with [`verify_checkpoint`]): the text rebuilt from its
/// parts (origin, size, root, the `time` and `prev` lines, decimal without
/// leading zeros, canonical base64), an empty line, and one signature line,
/// the broker's, in canonical base64. Any other line, another signature
/// line included, makes it differ.
pub fn check_exact_note(note: &str, checkpoint: &SignedCheckpoint) -> Result<(), AuditProofError> {
    let malformed = |e: String| AuditProofError::MalformedCheckpoint(e);
    let text = Checkpoint::new(
        &checkpoint.origin,
        checkpoint.size,
        Hash(checkpoint.root),
        &extension(checkpoint.time_ms, checkpoint.prev),
    )
    .map_err(|e| malformed(e.to_string()))?
    .to_bytes();
    let text = String::from_utf8(text).map_err(|e| malformed(e.to_string()))?;
    let rest = note
        .strip_prefix(text.as_str())
        .and_then(|r| r.strip_prefix('\n'))
        .ok_or_else(|| {
            malformed("its text is not exactly the checkpoint the broker signs".into())
        })?;
    let line = rest
        .strip_suffix('\n')
        .filter(|l| !l.contains('\n'))
        .ok_or_else(|| {
            malformed("it must carry exactly one signature line, the broker's".into())
        })?;
    // The one line is the broker's: `verify_checkpoint` found a broker
    // signature among the lines.
    line.strip_prefix("\u{2014} ")
        .and_then(|l| l.strip_prefix(checkpoint.origin.as_str()))
        .and_then(|l| l.strip_prefix(' '))
        .and_then(|b| STANDARD.decode(b).ok().filter(|d| STANDARD.encode(d) == b))
        .filter(|d| d.len() == 68)
        .ok_or_else(|| malformed("its signature line is not in the broker's form".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AgencyKey;

    fn registry(key: &SigningKey) -> KeyRegistry {
        let mut reg = KeyRegistry::new();
        reg.insert(AgencyKey {
            owner: BROKER_KEY_OWNER.into(),
            key_id: "broker-1".into(),
            public_key: key.verifying_key(),
            not_before_ms: None,
            not_after_ms: None,
            revoked_at_ms: None,
            revocation_reason: None,
        });
        reg
    }

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let note =
            sign_checkpoint("samverkan-test/audit", 7, &[9; 32], 1_000, Some(5), &key).unwrap();
        assert!(note.starts_with("samverkan-test/audit\n7\n"), "{note}");
        assert!(
            note.contains("\ntime 1000\nprev 5\n\n\u{2014} samverkan-test/audit "),
            "{note}"
        );
        let cp = verify_checkpoint(&note, &registry(&key)).unwrap();
        assert_eq!((cp.size, cp.root, cp.time_ms), (7, [9; 32], 1_000));
        assert_eq!(cp.prev, Some(5));
        check_exact_note(&note, &cp).unwrap();
        // Another signature line, a leading zero, a missing `prev`: not the note signed.
        let line = note.lines().last().unwrap();
        assert!(check_exact_note(&format!("{note}{line}\n"), &cp).is_err());
        let zero = note.replacen("\nprev 5\n", "\nprev 05\n", 1);
        assert!(check_exact_note(&zero, &cp).is_err());
        let first =
            sign_checkpoint("samverkan-test/audit", 7, &[9; 32], 1_000, None, &key).unwrap();
        let first = verify_checkpoint(&first, &registry(&key)).unwrap();
        assert_eq!(first.prev, None);
        assert!(check_exact_note(&first.note, &cp).is_err());
        assert_eq!(cp.key_id, "broker-1");

        // Another key, a changed size, a changed signature: refused.
        assert!(verify_checkpoint(&note, &registry(&SigningKey::from_bytes(&[4; 32]))).is_err());
        assert!(verify_checkpoint(&note.replacen("\n7\n", "\n8\n", 1), &registry(&key)).is_err());
        let sig_start = note.rfind(' ').unwrap() + 3;
        let mut bytes = note.clone().into_bytes();
        bytes[sig_start] = if bytes[sig_start] == b'A' { b'B' } else { b'A' };
        assert!(verify_checkpoint(&String::from_utf8(bytes).unwrap(), &registry(&key)).is_err());
        assert!(
            verifier_key_string("samverkan-test/audit", &key.verifying_key())
                .starts_with("samverkan-test/audit+")
        );
    }
}
