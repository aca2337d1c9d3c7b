//! Keyed hashes of the persons and companies alerts are about.
//!
//! Legal staff must be able to answer "which agencies received data about
//! this person or company, when and why" (registerutdrag), but the audit log
//! must not hold personnummer in clear. Each share and denial entry therefore
//! records HMAC-SHA256 of the subject's canonical identifier under a secret
//! key that only the broker and its auditors hold. Without the key the hashes
//! cannot be tested against the (small) space of possible personnummer.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use samverkan_sdk::encoding::Writer;
use samverkan_sdk::identifiers::{Organisationsnummer, Personnummer};
use sha2::Sha256;
use thiserror::Error;

use crate::policy::SubjectKind;

/// Domain tag of a subject hash input.
const TAG_SUBJECT: &str = "samverkan/v1/subject";

/// Why the subject key or an identifier was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// The key file could not be read or is not 32 bytes of hex.
    #[error("subject hash key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The identifier is neither a personnummer nor an organisationsnummer.
    #[error("not a personnummer ({personnummer}) nor an organisationsnummer ({orgnr})")]
    Identifier {
        /// Why it is not a personnummer.
        personnummer: String,
        /// Why it is not an organisationsnummer.
        orgnr: String,
    },
}

/// Computes subject hashes with the broker's secret subject key.
#[derive(Clone)]
pub struct SubjectHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for SubjectHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectHasher(..)")
    }
}

impl SubjectHasher {
    /// A hasher with a given key.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Reads a key file: 64 hex digits (whitespace and `#` comment lines ignored).
    pub fn load(path: &Path) -> Result<Self, SubjectError> {
        let err = |reason: String| SubjectError::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let hex_digits: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = hex::decode(&hex_digits).map_err(|_| err("not hex".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("must be 32 bytes (64 hex digits)".into()))?;
        Ok(Self { key })
    }

    /// Writes a new random key file (development PKI).
    pub fn generate_file(path: &Path) -> std::io::Result<()> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        let text = format!(
            "# Samverkan subject hash key (HMAC-SHA256). DEVELOPMENT ONLY.\n# Whoever holds it can test identifiers against the audit log.\n{}\n",
            hex::encode(key)
        );
        std::fs::write(path, text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// The hash of a canonical identifier of `kind`.
    pub fn hash(&self, kind: SubjectKind, canonical: &str) -> String {
        let kind = match kind {
            SubjectKind::Personnummer => "personnummer",
            SubjectKind::Organisationsnummer => "organisationsnummer",
        };
        let mut w = Writer::with_tag(TAG_SUBJECT);
        w.str(kind).str(canonical);
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(&w.finish());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The hash of a field value of `kind` (as it appears in an alert), if it parses.
    pub fn hash_value(&self, kind: SubjectKind, value: &str) -> Option<String> {
        let canonical = match kind {
            SubjectKind::Personnummer => Personnummer::parse(value).ok()?.canonical(),
            SubjectKind::Organisationsnummer => Organisationsnummer::parse(value).ok()?.canonical(),
        };
        Some(self.hash(kind, &canonical))
    }

    /// The hash of an identifier typed by a person: a personnummer or an organisationsnummer.
    pub fn hash_identifier(&self, text: &str) -> Result<String, SubjectError> {
        match Personnummer::parse(text) {
            Ok(p) => Ok(self.hash(SubjectKind::Personnummer, &p.canonical())),
            Err(pe) => match Organisationsnummer::parse(text) {
                Ok(o) => Ok(self.hash(SubjectKind::Organisationsnummer, &o.canonical())),
                Err(oe) => Err(SubjectError::Identifier {
                    personnummer: pe.to_string(),
                    orgnr: oe.to_string(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_one_identifier_hash_alike_and_keys_differ() {
        let h = SubjectHasher::new([1; 32]);
        let a = h.hash_identifier("19121212-1212").unwrap();
        assert_eq!(h.hash_identifier("191212121212").unwrap(), a);
        assert_eq!(
            h.hash_value(SubjectKind::Personnummer, "19121212-1212")
                .unwrap(),
            a
        );
        assert_ne!(
            SubjectHasher::new([2; 32])
                .hash_identifier("19121212-1212")
                .unwrap(),
            a
        );
        let o = h.hash_identifier("556677-8899").unwrap();
        assert_eq!(h.hash_identifier("5566778899").unwrap(), o);
        assert_ne!(o, a);
        assert!(h.hash_identifier("12345").is_err());
        assert!(!a.contains("1212"));
    }
}
