//! Witness cosignatures: C2SP `tlog-cosignature`, the Ed25519 form
//! (`cosignature/v1`).
//!
//! A cosignature is one more signature line on a checkpoint, made by a
//! witness under its own key name. It states that, at its timestamp, the
//! checkpoint was the largest one consistent with everything the witness had
//! seen of the log. The line decodes to the 4-byte key id, an 8-byte
//! big-endian timestamp (seconds since the epoch) and the 64-byte Ed25519
//! signature over
//!
//! ```text
//! cosignature/v1
//! time <timestamp>
//! <the checkpoint's text: every line before the empty line>
//! ```
//!
//! The key id is the C2SP signed-note key id with the signature type byte
//! `0x04`, so a witness key can never be taken for a log key (`0x01`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use signed_note::{Note, Signature, VerificationError, Verifier, Verifiers};

use super::AuditProofError;

/// The header line of the signed message, for domain separation.
pub const COSIGNATURE_V1: &str = "cosignature/v1";
/// The signed-note signature type of timestamped Ed25519 cosignatures.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// Bytes of a decoded cosignature: key id, timestamp, signature.
const COSIGNATURE_LEN: usize = 4 + 8 + 64;

/// A witness's public key under its key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    /// The cosigner's key name (a schema-less URL by convention).
    pub name: String,
    /// Its Ed25519 public key.
    pub public_key: VerifyingKey,
}

impl WitnessKey {
    /// The signed-note key id of this key (type `0x04`).
    pub fn key_id(&self) -> u32 {
        cosigner_key_id(&self.name, &self.public_key)
    }

    /// The C2SP verifier key string, `name+keyid+base64(0x04 ‖ key)`.
    pub fn vkey(&self) -> String {
        let mut encoded = vec![ALG_COSIGNATURE_V1];
        encoded.extend_from_slice(self.public_key.as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id(),
            STANDARD.encode(&encoded)
        )
    }

    /// Parses a verifier key string of a cosignature/v1 key; the key id in
    /// the string must be the one computed from the name and the key.
    pub fn from_vkey(vkey: &str) -> Result<Self, String> {
        // The name and id contain no `+`; the base64 key may.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a witness key is written `name+keyid+base64key`".into());
        };
        if !signed_note::is_key_name_valid(name) {
            return Err(format!("`{name}` is not a valid key name"));
        }
        let bytes = STANDARD
            .decode(key)
            .map_err(|_| "the key part is not standard base64".to_string())?;
        let Some((&alg, raw)) = bytes.split_first() else {
            return Err("the key part is empty".into());
        };
        if alg != ALG_COSIGNATURE_V1 {
            return Err(format!(
                "the key's signature type is 0x{alg:02x}; a cosignature/v1 witness key has 0x04"
            ));
        }
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| "an Ed25519 key has 32 bytes".to_string())?;
        let public_key =
            VerifyingKey::from_bytes(&raw).map_err(|e| format!("not an Ed25519 key: {e}"))?;
        let key = WitnessKey {
            name: name.to_string(),
            public_key,
        };
        if id.len() != 8 || format!("{:08x}", key.key_id()) != id {
            return Err(format!(
                "the key id `{id}` does not match the name and key (expected {:08x})",
                key.key_id()
            ));
        }
        Ok(key)
    }
}

/// The key id of an Ed25519 cosigner key: the first four bytes of
/// `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)`.
pub fn cosigner_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut encoded = vec![ALG_COSIGNATURE_V1];
    encoded.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &encoded)
}

/// The exact bytes a cosignature/v1 signs: the header line, the time line
/// and the checkpoint's text (which ends with a line feed).
pub fn cosigned_message(checkpoint_text: &[u8], timestamp: u64) -> Vec<u8> {
    let mut msg = format!("{COSIGNATURE_V1}\ntime {timestamp}\n").into_bytes();
    msg.extend_from_slice(checkpoint_text);
    msg
}

/// Signs `checkpoint_text` at `timestamp` (seconds) and returns the
/// signature line, `— <name> <base64>` and a line feed.
pub fn cosign(name: &str, key: &SigningKey, checkpoint_text: &[u8], timestamp: u64) -> String {
    let signature = key.sign(&cosigned_message(checkpoint_text, timestamp));
    let mut bytes = cosigner_key_id(name, &key.verifying_key())
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(&timestamp.to_be_bytes());
    bytes.extend_from_slice(&signature.to_bytes());
    format!("\u{2014} {name} {}\n", STANDARD.encode(bytes))
}

/// A verified cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness key's name.
    pub name: String,
    /// When the witness signed (seconds since the epoch).
    pub timestamp: u64,
    /// The signature line as written (with its line feed).
    pub line: String,
}

/// The signed-note verifier of one witness key: the signature bytes carry
/// the timestamp in front of the Ed25519 signature.
struct CosignatureVerifier<'a> {
    key: &'a WitnessKey,
    id: u32,
}

impl Verifier for CosignatureVerifier<'_> {
    fn name(&self) -> &str {
        &self.key.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some((ts, signature)) = split_timestamp(sig) else {
            return false;
        };
        ts < (1 << 63)
            && crate::envelope::verify_signature(
                &self.key.public_key,
                &cosigned_message(msg, ts),
                signature,
            )
            .is_ok()
    }
}

fn split_timestamp(sig: &[u8]) -> Option<(u64, &[u8])> {
    if sig.len() != COSIGNATURE_LEN - 4 {
        return None;
    }
    let (ts, signature) = sig.split_at(8);
    Some((u64::from_be_bytes(ts.try_into().ok()?), signature))
}

/// Witness keys as signed-note verifiers; unknown keys are reported as such.
struct WitnessVerifiers<'a> {
    keys: Vec<CosignatureVerifier<'a>>,
}

impl Verifiers for WitnessVerifiers<'_> {
    fn verifier(&self, name: &str, id: u32) -> Result<&dyn Verifier, VerificationError> {
        self.keys
            .iter()
            .find(|v| v.key.name == name && v.id == id)
            .map(|v| v as &dyn Verifier)
            .ok_or(VerificationError::UnknownKey {
                name: name.to_string(),
                id,
            })
    }
}

/// Verifies every signature line of `note` that belongs to one of `keys`
/// and returns those cosignatures, in the note's order. A line of a known
/// key that does not verify makes the note malformed; lines of other keys
/// (the broker's, unknown witnesses') are ignored.
pub fn verify_cosignatures(
    note: &str,
    keys: &[WitnessKey],
) -> Result<Vec<Cosignature>, AuditProofError> {
    let parsed = Note::from_bytes(note.as_bytes())
        .map_err(|e| AuditProofError::MalformedCheckpoint(e.to_string()))?;
    let verifiers = WitnessVerifiers {
        keys: keys
            .iter()
            .map(|key| CosignatureVerifier {
                key,
                id: key.key_id(),
            })
            .collect(),
    };
    let verified = match parsed.verify(&verifiers) {
        Ok((verified, _)) => verified,
        Err(signed_note::NoteError::UnverifiedNote) => Vec::new(),
        Err(e) => return Err(AuditProofError::Cosignature(e.to_string())),
    };
    verified
        .into_iter()
        .map(|sig| {
            let (timestamp, _) = split_timestamp(sig.signature()).ok_or_else(|| {
                AuditProofError::Cosignature(format!("{}: not a cosignature/v1", sig.name()))
            })?;
            Ok(Cosignature {
                name: sig.name().to_string(),
                timestamp,
                line: String::from_utf8_lossy(&sig.to_bytes()).into_owned(),
            })
        })
        .collect()
}

/// The text of a note (everything before the empty line, with its final
/// line feed) and its signature lines, each with its line feed.
pub fn split_note(note: &str) -> Result<(String, Vec<String>), AuditProofError> {
    let malformed = |m: &str| AuditProofError::MalformedCheckpoint(m.to_string());
    Note::from_bytes(note.as_bytes()).map_err(|e| malformed(&e.to_string()))?;
    let (text, sigs) = note
        .rsplit_once("\n\n")
        .ok_or_else(|| malformed("no empty line before the signatures"))?;
    let lines = sigs
        .strip_suffix('\n')
        .ok_or_else(|| malformed("the last signature line has no line feed"))?
        .split('\n')
        .map(|l| format!("{l}\n"))
        .collect();
    Ok((format!("{text}\n"), lines))
}

/// Parses signature lines (a witness's answer) into signed-note signatures.
pub fn parse_signature_lines(body: &str) -> Result<Vec<String>, AuditProofError> {
    let lines = body.strip_suffix('\n').ok_or_else(|| {
        AuditProofError::Cosignature("the answer does not end with a line feed".into())
    })?;
    lines
        .split('\n')
        .map(|line| {
            Signature::from_bytes(line.as_bytes())
                .map(|_| format!("{line}\n"))
                .map_err(|e| AuditProofError::Cosignature(format!("`{line}`: {e}")))
        })
        .collect()
}

/// Joins a note's text and signature lines into a signed note.
pub fn join_note(text: &str, lines: &[String]) -> String {
    let mut note = String::with_capacity(text.len() + 1 + lines.len() * 120);
    note.push_str(text);
    note.push('\n');
    for line in lines {
        note.push_str(line);
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn cosign_and_verify() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let witness = WitnessKey {
            name: "witness.example/w1".into(),
            public_key: key.verifying_key(),
        };
        let line = cosign(&witness.name, &key, TEXT.as_bytes(), 1_679_315_147);
        let note = join_note(TEXT, std::slice::from_ref(&line));
        let found = verify_cosignatures(&note, std::slice::from_ref(&witness)).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].timestamp, 1_679_315_147);
        assert_eq!(found[0].line, line);
        // Another text, another key: no longer the witness's.
        let other = join_note(
            &TEXT.replace("20852163", "20852164"),
            std::slice::from_ref(&line),
        );
        assert!(verify_cosignatures(&other, std::slice::from_ref(&witness)).is_err());
        let stranger = WitnessKey {
            name: witness.name.clone(),
            public_key: SigningKey::from_bytes(&[8; 32]).verifying_key(),
        };
        assert!(verify_cosignatures(&note, &[stranger]).unwrap().is_empty());
        // The verifier key string round-trips, and a wrong id is refused.
        let vkey = witness.vkey();
        assert_eq!(WitnessKey::from_vkey(&vkey).unwrap(), witness);
        let mut wrong = vkey.clone();
        wrong.replace_range(witness.name.len() + 1..witness.name.len() + 2, "0");
        if wrong != vkey {
            assert!(WitnessKey::from_vkey(&wrong).is_err());
        }
        // A log key (type 0x01) is not a witness key.
        let log_key = crate::audit::checkpoint::verifier_key_string("x", &key.verifying_key());
        assert!(WitnessKey::from_vkey(&log_key).is_err());
    }

    #[test]
    fn split_and_join() {
        let note = "a\n1\nAAAA\n\n\u{2014} a AAAAAQAAAAA=\n";
        let (text, lines) = split_note(note).unwrap();
        assert_eq!(text, "a\n1\nAAAA\n");
        assert_eq!(lines, vec!["\u{2014} a AAAAAQAAAAA=\n".to_string()]);
        assert_eq!(join_note(&text, &lines), note);
        assert!(parse_signature_lines("\u{2014} a AAAAAQAAAAA=\n").is_ok());
        assert!(parse_signature_lines("\u{2014} a AAAAAQAAAAA=").is_err());
        assert!(parse_signature_lines("junk\n").is_err());
    }
}
