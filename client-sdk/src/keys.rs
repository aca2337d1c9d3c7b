//! Signing keys: the registry of who may sign with which key and when, and
//! the files keys are kept in.
//!
//! An agency may hold several ed25519 keys, each with a key id, a validity
//! window and possibly a revocation time, so keys can be rotated without
//! downtime and a compromised key can be cut off. The same registry format
//! (`keys.toml` in the policy set) serves the broker's own signing keys.
//!
//! Private keys are stored as PKCS#8 v1 PEM and public keys as
//! SubjectPublicKeyInfo PEM, so that standard tools (`openssl pkey`) can read
//! them.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::names;
use crate::source::SourceError;
use crate::time::{format_ms, parse_rfc3339_ms};

/// Why a key could not be used for a signature made at a given time.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No key with this id is registered for this owner.
    #[error("no key `{key_id}` is registered for `{owner}`")]
    UnknownKey {
        /// The agency (or the broker) that claims the key.
        owner: String,
        /// The key id in the signed header.
        key_id: String,
    },
    /// The signature claims a time before the key's validity window.
    #[error("key `{key_id}` of `{owner}` is not valid before {}", format_ms(*not_before_ms))]
    NotYetValid {
        /// Owner of the key.
        owner: String,
        /// The key id.
        key_id: String,
        /// Start of validity.
        not_before_ms: i64,
    },
    /// The signature claims a time after the key's validity window.
    #[error("key `{key_id}` of `{owner}` expired at {}", format_ms(*not_after_ms))]
    Expired {
        /// Owner of the key.
        owner: String,
        /// The key id.
        key_id: String,
        /// End of validity.
        not_after_ms: i64,
    },
    /// The key was revoked at or before the time of the signature.
    #[error("key `{key_id}` of `{owner}` was revoked at {}{}", format_ms(*revoked_at_ms), reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Revoked {
        /// Owner of the key.
        owner: String,
        /// The key id.
        key_id: String,
        /// When the revocation took effect.
        revoked_at_ms: i64,
        /// Why, if the registry says.
        reason: Option<String>,
    },
}

impl KeyError {
    /// A stable, machine-readable code for receipts and audit entries.
    pub fn code(&self) -> &'static str {
        self.verification_code().as_str()
    }

    /// The code, as an enum.
    pub fn verification_code(&self) -> crate::codes::VerificationCode {
        use crate::codes::VerificationCode;
        match self {
            KeyError::UnknownKey { .. } => VerificationCode::UnknownKey,
            KeyError::NotYetValid { .. } => VerificationCode::KeyNotYetValid,
            KeyError::Expired { .. } => VerificationCode::KeyExpired,
            KeyError::Revoked { .. } => VerificationCode::KeyRevoked,
        }
    }
}

/// One registered public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyKey {
    /// The agency id (or `broker`) that signs with it.
    pub owner: String,
    /// The key id that signed headers name.
    pub key_id: String,
    /// The ed25519 public key.
    pub public_key: VerifyingKey,
    /// Signatures made before this time are refused.
    pub not_before_ms: Option<i64>,
    /// Signatures made at or after this time are refused.
    pub not_after_ms: Option<i64>,
    /// Signatures made at or after this time are refused as revoked.
    pub revoked_at_ms: Option<i64>,
    /// Why the key was revoked.
    pub revocation_reason: Option<String>,
}

impl AgencyKey {
    /// Checks the key's validity window and revocation at `at_ms`.
    pub fn check_at(&self, at_ms: i64) -> Result<(), KeyError> {
        if let Some(revoked_at_ms) = self.revoked_at_ms.filter(|&r| at_ms >= r) {
            return Err(KeyError::Revoked {
                owner: self.owner.clone(),
                key_id: self.key_id.clone(),
                revoked_at_ms,
                reason: self.revocation_reason.clone(),
            });
        }
        if let Some(not_before_ms) = self.not_before_ms.filter(|&nb| at_ms < nb) {
            return Err(KeyError::NotYetValid {
                owner: self.owner.clone(),
                key_id: self.key_id.clone(),
                not_before_ms,
            });
        }
        if let Some(not_after_ms) = self.not_after_ms.filter(|&na| at_ms >= na) {
            return Err(KeyError::Expired {
                owner: self.owner.clone(),
                key_id: self.key_id.clone(),
                not_after_ms,
            });
        }
        Ok(())
    }
}

/// Finds the public key for a signature.
pub trait KeyResolver {
    /// The key `key_id` of `owner`, if it is valid and not revoked at `at_ms`.
    fn resolve(&self, owner: &str, key_id: &str, at_ms: i64) -> Result<VerifyingKey, KeyError>;
}

/// All registered keys, by owner and key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRegistry {
    keys: BTreeMap<(String, String), AgencyKey>,
}

impl KeyResolver for KeyRegistry {
    fn resolve(&self, owner: &str, key_id: &str, at_ms: i64) -> Result<VerifyingKey, KeyError> {
        let key = self
            .keys
            .get(&(owner.to_string(), key_id.to_string()))
            .ok_or_else(|| KeyError::UnknownKey {
                owner: owner.to_string(),
                key_id: key_id.to_string(),
            })?;
        key.check_at(at_ms)?;
        Ok(key.public_key)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    #[serde(default)]
    key: Vec<Spanned<RawKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(alias = "agency")]
    owner: Spanned<String>,
    id: Spanned<String>,
    public_key: Spanned<String>,
    not_before: Option<Spanned<toml::value::Datetime>>,
    not_after: Option<Spanned<toml::value::Datetime>>,
    revoked_at: Option<Spanned<toml::value::Datetime>>,
    revocation_reason: Option<String>,
}

impl KeyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; a second key with the same owner and id replaces the first.
    pub fn insert(&mut self, key: AgencyKey) {
        self.keys
            .insert((key.owner.clone(), key.key_id.clone()), key);
    }

    /// All keys, ordered by owner and key id.
    pub fn iter(&self) -> impl Iterator<Item = &AgencyKey> {
        self.keys.values()
    }

    /// The keys of one owner.
    pub fn keys_of<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a AgencyKey> {
        self.keys.values().filter(move |k| k.owner == owner)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a `keys.toml` file (see [`Self::from_toml`]).
    pub fn load(path: &Path) -> Result<Self, Vec<SourceError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![SourceError::file(
                path,
                format!("cannot read key file: {e}"),
            )]
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses a key registry in TOML:
    ///
    /// ```toml
    /// [[key]]
    /// owner = "linkoping"
    /// id = "linkoping-2026-1"
    /// public_key = "base64 of the 32-byte ed25519 public key"
    /// not_before = 2026-01-01T00:00:00Z   # optional
    /// not_after = 2028-01-01T00:00:00Z    # optional
    /// revoked_at = 2027-03-01T08:00:00Z   # optional
    /// revocation_reason = "laptop stolen" # optional
    /// ```
    ///
    /// Every mistake is reported with file, line and column.
    pub fn from_toml(text: &str, file: &Path) -> Result<Self, Vec<SourceError>> {
        let raw: RawKeyFile =
            toml::from_str(text).map_err(|e| vec![SourceError::from_toml(file, text, &e)])?;
        let mut errors = Vec::new();
        let mut registry = Self::new();
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for entry in raw.key {
            let span = entry.span();
            let raw = entry.into_inner();
            let mut err = |offset: usize, msg: String| {
                errors.push(SourceError::at(file, text, offset, msg));
            };
            if let Err(e) = names::validate_agency_id(raw.owner.get_ref()) {
                err(raw.owner.span().start, format!("key owner: {e}"));
            }
            if let Err(e) = names::validate_key_id(raw.id.get_ref()) {
                err(raw.id.span().start, e.to_string());
            }
            let public_key = match parse_public_key_base64(raw.public_key.get_ref()) {
                Ok(k) => Some(k),
                Err(e) => {
                    err(raw.public_key.span().start, e.to_string());
                    None
                }
            };
            let mut time = |dt: &Option<Spanned<toml::value::Datetime>>, what: &str| {
                let dt = dt.as_ref()?;
                let parsed = parse_rfc3339_ms(&dt.get_ref().to_string());
                if parsed.is_none() {
                    err(
                        dt.span().start,
                        format!(
                            "{what} must be a date and time with a time zone, e.g. 2026-01-01T00:00:00Z"
                        ),
                    );
                }
                parsed
            };
            let not_before_ms = time(&raw.not_before, "not_before");
            let not_after_ms = time(&raw.not_after, "not_after");
            let revoked_at_ms = time(&raw.revoked_at, "revoked_at");
            if let (Some(nb), Some(na)) = (not_before_ms, not_after_ms)
                && nb >= na
            {
                err(
                    span.start,
                    "not_before must be earlier than not_after".into(),
                );
            }
            let id = (raw.owner.get_ref().clone(), raw.id.get_ref().clone());
            if let Some(&first) = seen.get(&id) {
                let (line, _) = crate::source::line_and_column(text, first);
                err(
                    raw.id.span().start,
                    format!(
                        "key `{}` of `{}` is already defined at line {line}",
                        id.1, id.0
                    ),
                );
            }
            seen.insert(id.clone(), raw.id.span().start);
            if let Some(public_key) = public_key {
                registry.insert(AgencyKey {
                    owner: id.0,
                    key_id: id.1,
                    public_key,
                    not_before_ms,
                    not_after_ms,
                    revoked_at_ms,
                    revocation_reason: raw.revocation_reason,
                });
            }
        }
        if errors.is_empty() {
            Ok(registry)
        } else {
            Err(errors)
        }
    }

    /// Writes the registry in the format [`Self::from_toml`] reads, after a header comment.
    pub fn to_toml(&self, header: &str) -> String {
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        for key in self.iter() {
            out.push_str("\n[[key]]\n");
            out.push_str(&format!("owner = \"{}\"\n", key.owner));
            out.push_str(&format!("id = \"{}\"\n", key.key_id));
            out.push_str(&format!(
                "public_key = \"{}\"\n",
                public_key_base64(&key.public_key)
            ));
            for (name, value) in [
                ("not_before", key.not_before_ms),
                ("not_after", key.not_after_ms),
                ("revoked_at", key.revoked_at_ms),
            ] {
                if let Some(ms) = value {
                    out.push_str(&format!("{name} = {}\n", format_ms(ms)));
                }
            }
            if let Some(reason) = &key.revocation_reason {
                out.push_str(&format!("revocation_reason = {reason:?}\n"));
            }
        }
        out
    }
}

/// Why a key file or encoded key could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is not a key of the expected kind.
    #[error("{what}: {reason}")]
    Format {
        /// What was being read.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// Standard base64 of the raw 32-byte public key, as written in `keys.toml`.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses [`public_key_base64`] output.
pub fn parse_public_key_base64(s: &str) -> Result<VerifyingKey, KeyFileError> {
    let format = |reason: &str| KeyFileError::Format {
        what: "public_key".into(),
        reason: reason.into(),
    };
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|_| format("not valid base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format("an ed25519 public key is 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| format("not a valid ed25519 point"))?;
    if key.is_weak() {
        return Err(format("a small-order (weak) ed25519 key cannot be used"));
    }
    Ok(key)
}

/// Generates a new signing key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyFileError::Format {
        what: "random source".into(),
        reason: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// PKCS#8 v1 PEM of a signing key (RFC 8410: the seed, no public key).
///
/// `ed25519-dalek` writes v2 (RFC 5958, with the public key), which OpenSSL
/// 3.0 and Python's `cryptography` refuse; v1 is what every tool reads.
/// [`read_signing_key`] reads both.
pub fn signing_key_pem(key: &SigningKey) -> Result<String, KeyFileError> {
    let v1 = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    v1.to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| KeyFileError::Format {
            what: "signing key".into(),
            reason: e.to_string(),
        })
}

/// SubjectPublicKeyInfo PEM of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, KeyFileError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyFileError::Format {
            what: "public key".into(),
            reason: e.to_string(),
        })
}

/// Reads a PKCS#8 PEM ed25519 signing key, v1 or v2 (a v2 public key must
/// belong to the seed).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let pem = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyFileError::Format {
        what: path.display().to_string(),
        reason: format!("not a PKCS#8 PEM ed25519 private key ({e})"),
    })
}

/// Reads a SubjectPublicKeyInfo PEM ed25519 public key.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyFileError> {
    let pem = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyFileError::Format {
        what: path.display().to_string(),
        reason: format!("not a PEM ed25519 public key ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn registry_round_trip_and_validity() {
        let text = format!(
            r#"
[[key]]
owner = "polisen"
id = "polisen-1"
public_key = "{}"
not_before = 2026-01-01T00:00:00Z
not_after = 2027-01-01T00:00:00Z

[[key]]
owner = "polisen"
id = "polisen-0"
public_key = "{}"
revoked_at = 2026-06-01T00:00:00Z
revocation_reason = "lost"
"#,
            public_key_base64(&key(1).verifying_key()),
            public_key_base64(&key(2).verifying_key()),
        );
        let reg = KeyRegistry::from_toml(&text, Path::new("keys.toml")).unwrap();
        assert_eq!(reg.len(), 2);
        let t = |s| parse_rfc3339_ms(s).unwrap();
        assert_eq!(
            reg.resolve("polisen", "polisen-1", t("2026-05-01T00:00:00Z")),
            Ok(key(1).verifying_key())
        );
        assert!(matches!(
            reg.resolve("polisen", "polisen-1", t("2025-05-01T00:00:00Z")),
            Err(KeyError::NotYetValid { .. })
        ));
        assert!(matches!(
            reg.resolve("polisen", "polisen-1", t("2027-01-01T00:00:00Z")),
            Err(KeyError::Expired { .. })
        ));
        assert!(
            reg.resolve("polisen", "polisen-0", t("2026-05-31T23:59:59Z"))
                .is_ok()
        );
        let err = reg
            .resolve("polisen", "polisen-0", t("2026-06-01T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.code(), "key_revoked");
        assert!(err.to_string().contains("lost"));
        assert!(matches!(
            reg.resolve("skatteverket", "polisen-1", t("2026-05-01T00:00:00Z")),
            Err(KeyError::UnknownKey { .. })
        ));

        let again = KeyRegistry::from_toml(&reg.to_toml("test"), Path::new("k")).unwrap();
        assert_eq!(again, reg);
    }

    #[test]
    fn mistakes_have_file_and_line() {
        let text = "[[key]]\nowner = \"Polisen\"\nid = \"k\"\npublic_key = \"AAAA\"\nnot_before = 2026-01-01\n";
        let errs = KeyRegistry::from_toml(text, Path::new("keys.toml")).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("keys.toml:2:9: key owner")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("keys.toml:4:14: public_key")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("keys.toml:5:14: not_before")),
            "{msgs:?}"
        );

        let errs = KeyRegistry::from_toml("[[key]]\nowner = 3\n", Path::new("k.toml")).unwrap_err();
        assert_eq!(errs[0].line, 2);
    }

    #[test]
    fn pem_round_trip() {
        let dir = std::env::temp_dir().join(format!("svk-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = key(7);
        std::fs::write(dir.join("k.pem"), signing_key_pem(&k).unwrap()).unwrap();
        std::fs::write(
            dir.join("p.pem"),
            public_key_pem(&k.verifying_key()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            read_signing_key(&dir.join("k.pem")).unwrap().to_bytes(),
            k.to_bytes()
        );
        assert_eq!(
            read_public_key(&dir.join("p.pem")).unwrap(),
            k.verifying_key()
        );
        assert!(read_public_key(&dir.join("k.pem")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The DER inside a PEM file.
    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn signing_keys_are_written_as_pkcs8_v1_and_v2_is_still_read() {
        let dir = tempdir("v1");
        let k = key(7);
        // RFC 8410 section 10.3: version 0 (v1), the Ed25519 OID, the seed,
        // and no public key, which is what OpenSSL 3.0 and Python's
        // `cryptography` read.
        let pem = signing_key_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let der = pem_der(&pem);
        assert_eq!(
            hex::encode(&der[..16]),
            "302e020100300506032b657004220420",
            "{pem}"
        );
        assert_eq!(&der[16..], k.as_bytes());
        std::fs::write(dir.join("v1.key"), &pem).unwrap();
        assert_eq!(
            read_signing_key(&dir.join("v1.key")).unwrap().to_bytes(),
            k.to_bytes()
        );

        // PKCS#8 v2 (RFC 5958, with the public key), as earlier versions
        // wrote it, is still read; a public key that does not belong to the
        // seed is refused.
        let v2 = k.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        assert_eq!(pem_der(&v2)[2..5], [0x02, 0x01, 0x01], "{v2}");
        std::fs::write(dir.join("v2.key"), &v2).unwrap();
        assert_eq!(
            read_signing_key(&dir.join("v2.key")).unwrap().to_bytes(),
            k.to_bytes()
        );
        let wrong = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: k.to_bytes(),
            public_key: Some(ed25519_dalek::pkcs8::PublicKeyBytes(
                key(8).verifying_key().to_bytes(),
            )),
        }
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
        std::fs::write(dir.join("wrong.key"), wrong.as_bytes()).unwrap();
        assert!(read_signing_key(&dir.join("wrong.key")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_committed_development_signing_keys_are_pkcs8_v1() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs-dev");
        let mut files = vec![dir.join("broker-signing.key")];
        for entry in std::fs::read_dir(&dir).unwrap() {
            let key = entry.unwrap().path().join("signing.key");
            if key.exists() {
                files.push(key);
            }
        }
        assert!(files.len() > 1, "no agency keys in {}", dir.display());
        for file in files {
            let pem = std::fs::read_to_string(&file).unwrap();
            assert_eq!(pem_der(&pem).len(), 48, "{} is not v1", file.display());
            read_signing_key(&file).unwrap();
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("svk-keys-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
