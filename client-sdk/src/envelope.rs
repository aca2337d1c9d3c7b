//! Signed alert envelopes with selective disclosure.
//!
//! A publisher turns each top-level field of an alert into a *disclosure*: the
//! exact bytes `lp(tag) ‖ lp(salt) ‖ lp(name) ‖ lp(value as JSON)`. The
//! SHA-256 of those bytes is the field's *digest*. The publisher signs (ed25519)
//! the header together with the sorted digest list and sends the disclosures
//! alongside. Anyone may drop disclosures (the broker does, per recipient) and
//! the signature still verifies; nobody can add or alter one, because its
//! digest would not be among the signed ones. The salt keeps a withheld field
//! from being guessed from its digest.
//!
//! The byte layouts are specified in `docs/PROTOCOL.md`.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::codes::VerificationCode;
use crate::encoding::{self, Reader, TAG_DISCLOSURE, TAG_ENVELOPE, Writer};
use crate::keys::{KeyError, KeyResolver};
use crate::names;

/// The envelope version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Length of a disclosure salt in bytes (128 bits, as SD-JWT recommends).
pub const SALT_LEN: usize = 16;
/// Most fields (and so digests and disclosures) in one alert.
pub const MAX_FIELDS: usize = 64;
/// Most explicit recipients in `to`.
pub const MAX_RECIPIENTS: usize = 32;

/// Why an envelope was refused. Each variant has a stable [`code`](Self::code)
/// for receipts and audit entries.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not an envelope in JSON form.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The envelope declares a version this implementation does not speak.
    #[error("unsupported envelope version {found} (this implementation speaks version {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// A header field breaks its syntax.
    #[error("invalid header field `{field}`: {reason}")]
    InvalidHeader {
        /// The header field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// More fields than allowed.
    #[error("too many fields: {count} (at most {MAX_FIELDS})")]
    TooManyFields {
        /// How many digests or disclosures were found.
        count: usize,
    },
    /// The signing key cannot be used (unknown, not yet valid, expired, revoked).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signature does not verify over the header and digests.
    #[error("the publisher's signature does not verify over the header and digests")]
    BadSignature,
    /// The signed digest list is not strictly ascending (unsorted or repeated).
    #[error("the signed digest list is not strictly ascending")]
    DigestsNotSorted,
    /// A disclosure is not validly encoded.
    #[error("disclosure {index} is malformed: {reason}")]
    MalformedDisclosure {
        /// Position in the envelope's disclosure list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A disclosure's digest is not among the signed digests: it was altered or added.
    #[error("disclosure {index} does not match any signed digest (altered or added after signing)")]
    DisclosureWithoutDigest {
        /// Position in the envelope's disclosure list.
        index: usize,
    },
    /// Two disclosures carry the same field name.
    #[error("field `{name}` is disclosed more than once")]
    DuplicateField {
        /// The repeated field name.
        name: String,
    },
    /// `issued_at` is too far from the verifier's clock.
    #[error("issued_at is {}s away from the verifier's clock (at most {}s allowed)", skew_seconds(.issued_at_ms, .now_ms), .max_skew_ms / 1000)]
    ClockSkew {
        /// The signed issue time.
        issued_at_ms: i64,
        /// The verifier's time.
        now_ms: i64,
        /// The allowed difference.
        max_skew_ms: i64,
    },
    /// The operating system's random source failed while making salts.
    #[error("random source failed: {0}")]
    Randomness(String),
}

fn skew_seconds(a: &i64, b: &i64) -> u64 {
    a.abs_diff(*b) / 1000
}

impl EnvelopeError {
    /// A stable, machine-readable code for receipts and audit entries.
    pub fn code(&self) -> &'static str {
        self.verification_code().as_str()
    }

    /// The code, as an enum.
    pub fn verification_code(&self) -> VerificationCode {
        match self {
            EnvelopeError::Malformed(_) => VerificationCode::MalformedEnvelope,
            EnvelopeError::UnsupportedVersion { .. } => VerificationCode::UnsupportedVersion,
            EnvelopeError::InvalidHeader { .. } => VerificationCode::InvalidHeader,
            EnvelopeError::TooManyFields { .. } => VerificationCode::TooManyFields,
            EnvelopeError::Key(k) => k.verification_code(),
            EnvelopeError::BadSignature => VerificationCode::BadSignature,
            EnvelopeError::DigestsNotSorted => VerificationCode::DigestsNotSorted,
            EnvelopeError::MalformedDisclosure { .. } => VerificationCode::MalformedDisclosure,
            EnvelopeError::DisclosureWithoutDigest { .. } => {
                VerificationCode::DisclosureWithoutDigest
            }
            EnvelopeError::DuplicateField { .. } => VerificationCode::DuplicateField,
            EnvelopeError::ClockSkew { .. } => VerificationCode::ClockSkew,
            EnvelopeError::Randomness(_) => VerificationCode::Internal,
        }
    }
}

/// A SHA-256 digest of a disclosure.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality (digests of withheld fields must not leak through timing).
    pub fn ct_eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("digest is not base64url without padding"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("digest must be 32 bytes"))?;
        Ok(Digest(arr))
    }
}

/// Bytes carried in JSON as base64url without padding (signatures, disclosures).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Base64Url(pub Vec<u8>);

impl fmt::Debug for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Url({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Url {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map(Base64Url)
            .map_err(|_| serde::de::Error::custom("not base64url without padding"))
    }
}

/// The signed header of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHeader {
    /// Envelope version ([`VERSION`]).
    pub version: u16,
    /// Unique id chosen by the publisher; a resend carries the same id.
    pub alert_id: String,
    /// The publishing agency.
    pub publisher: String,
    /// The id of the publisher's key that signed.
    pub key_id: String,
    /// The alert type, naming the schema the fields follow.
    pub alert_type: String,
    /// The logical topic, e.g. `welfare/incorrect-payment/ost`.
    pub topic: String,
    /// When the publisher signed, in milliseconds since the Unix epoch.
    pub issued_at_ms: i64,
    /// Optional explicit recipients (sorted, unique); the policy still decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
}

fn header_error(field: &'static str, e: impl fmt::Display) -> EnvelopeError {
    EnvelopeError::InvalidHeader {
        field,
        reason: e.to_string(),
    }
}

impl EnvelopeHeader {
    /// Checks the syntax of every field.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion {
                found: self.version,
            });
        }
        names::validate_alert_id(&self.alert_id).map_err(|e| header_error("alert_id", e))?;
        names::validate_agency_id(&self.publisher).map_err(|e| header_error("publisher", e))?;
        names::validate_key_id(&self.key_id).map_err(|e| header_error("key_id", e))?;
        names::validate_alert_type(&self.alert_type).map_err(|e| header_error("alert_type", e))?;
        names::validate_logical_topic(&self.topic).map_err(|e| header_error("topic", e))?;
        if self.issued_at_ms < 0 {
            return Err(header_error("issued_at_ms", "must not be negative"));
        }
        if let Some(to) = &self.to {
            if to.is_empty() || to.len() > MAX_RECIPIENTS {
                return Err(header_error(
                    "to",
                    format!("must name 1 to {MAX_RECIPIENTS} agencies when present"),
                ));
            }
            for id in to {
                names::validate_agency_id(id).map_err(|e| header_error("to", e))?;
            }
            if !to.windows(2).all(|w| w[0] < w[1]) {
                return Err(header_error("to", "must be sorted and without repeats"));
            }
        }
        Ok(())
    }

    /// Fails when `issued_at` is more than `max_skew_ms` away from `now_ms`.
    pub fn check_clock_skew(&self, now_ms: i64, max_skew_ms: i64) -> Result<(), EnvelopeError> {
        if self.issued_at_ms.abs_diff(now_ms) > max_skew_ms.unsigned_abs() {
            return Err(EnvelopeError::ClockSkew {
                issued_at_ms: self.issued_at_ms,
                now_ms,
                max_skew_ms,
            });
        }
        Ok(())
    }
}

/// The exact bytes the publisher signs: the header and the sorted digests
/// (layout in `docs/PROTOCOL.md`).
pub fn signing_input(header: &EnvelopeHeader, digests: &[Digest]) -> Vec<u8> {
    let mut w = Writer::with_tag(TAG_ENVELOPE);
    w.u16(header.version)
        .str(&header.alert_id)
        .str(&header.publisher)
        .str(&header.key_id)
        .str(&header.alert_type)
        .str(&header.topic)
        .i64(header.issued_at_ms);
    match &header.to {
        None => {
            w.u8(0);
        }
        Some(to) => {
            w.u8(1).count(to.len());
            for id in to {
                w.str(id);
            }
        }
    }
    w.count(digests.len());
    for d in digests {
        w.raw(&d.0);
    }
    w.finish()
}

/// One field of an alert as the exact bytes that were hashed.
#[derive(Clone, PartialEq, Eq)]
pub struct Disclosure {
    name: String,
    value: Value,
    encoded: Vec<u8>,
    digest: Digest,
}

impl fmt::Debug for Disclosure {
    // Field values may be personal data: never print them by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disclosure")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Disclosure {
    /// A disclosure of `name = value` with a fresh random salt.
    pub fn new(name: &str, value: &Value) -> Result<Self, EnvelopeError> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| EnvelopeError::Randomness(e.to_string()))?;
        Self::with_salt(salt, name, value)
    }

    /// A disclosure with a given salt (for test vectors; use [`Self::new`] otherwise).
    pub fn with_salt(
        salt: [u8; SALT_LEN],
        name: &str,
        value: &Value,
    ) -> Result<Self, EnvelopeError> {
        names::validate_field_name(name).map_err(|e| header_error("fields", e))?;
        let value_json = serde_json::to_vec(value)
            .map_err(|e| EnvelopeError::Malformed(format!("field `{name}`: {e}")))?;
        let mut w = Writer::with_tag(TAG_DISCLOSURE);
        w.bytes(&salt).str(name).bytes(&value_json);
        let encoded = w.finish();
        Ok(Self {
            name: name.to_string(),
            value: value.clone(),
            digest: Digest::of(&encoded),
            encoded,
        })
    }

    /// Decodes disclosure bytes as received (`index` is used in errors).
    pub fn decode(encoded: &[u8], index: usize) -> Result<Self, EnvelopeError> {
        let malformed = |reason: String| EnvelopeError::MalformedDisclosure { index, reason };
        let mut r = Reader::with_tag(encoded, TAG_DISCLOSURE)
            .map_err(|e: encoding::DecodeError| malformed(e.to_string()))?;
        let salt = r.bytes("salt").map_err(|e| malformed(e.to_string()))?;
        if salt.len() != SALT_LEN {
            return Err(malformed(format!("salt must be {SALT_LEN} bytes")));
        }
        let name = r.str("name").map_err(|e| malformed(e.to_string()))?;
        names::validate_field_name(name).map_err(|e| malformed(e.to_string()))?;
        let value_json = r.bytes("value").map_err(|e| malformed(e.to_string()))?;
        r.finish().map_err(|e| malformed(e.to_string()))?;
        // A value whose objects repeat a member name would read differently
        // in a parser that keeps the first of the repeats: refused.
        let value: Value = crate::json::value_from_slice(value_json)
            .map_err(|e| malformed(format!("value of `{name}` is not JSON: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            value,
            encoded: encoded.to_vec(),
            digest: Digest::of(encoded),
        })
    }

    /// The field name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The exact bytes that were hashed.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// SHA-256 of [`Self::encoded`].
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// An alert envelope as it travels (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The signed header.
    pub header: EnvelopeHeader,
    /// The signed digests of all fields, strictly ascending.
    pub digests: Vec<Digest>,
    /// The publisher's ed25519 signature over [`signing_input`].
    pub signature: Base64Url,
    /// The disclosed fields, each as the exact bytes that were hashed.
    pub disclosures: Vec<Base64Url>,
}

impl Envelope {
    /// Signs `fields` (top-level name → value) under `header` with fresh salts.
    pub fn sign(
        header: EnvelopeHeader,
        fields: &Map<String, Value>,
        key: &SigningKey,
    ) -> Result<Self, EnvelopeError> {
        let disclosures = fields
            .iter()
            .map(|(name, value)| Disclosure::new(name, value))
            .collect::<Result<Vec<_>, _>>()?;
        Self::sign_disclosures(header, disclosures, key)
    }

    /// Signs prepared disclosures (for test vectors with fixed salts).
    pub fn sign_disclosures(
        header: EnvelopeHeader,
        disclosures: Vec<Disclosure>,
        key: &SigningKey,
    ) -> Result<Self, EnvelopeError> {
        header.validate()?;
        if disclosures.len() > MAX_FIELDS {
            return Err(EnvelopeError::TooManyFields {
                count: disclosures.len(),
            });
        }
        let mut names = BTreeSet::new();
        for d in &disclosures {
            if !names.insert(d.name()) {
                return Err(EnvelopeError::DuplicateField {
                    name: d.name().to_string(),
                });
            }
        }
        let mut digests: Vec<Digest> = disclosures.iter().map(Disclosure::digest).collect();
        digests.sort();
        let signature = key.sign(&signing_input(&header, &digests));
        Ok(Self {
            header,
            digests,
            signature: Base64Url(signature.to_bytes().to_vec()),
            disclosures: disclosures
                .into_iter()
                .map(|d| Base64Url(d.encoded))
                .collect(),
        })
    }

    /// Parses the JSON form with [`crate::json`], so an object that repeats
    /// a member name, at any depth, is [`EnvelopeError::Malformed`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let value = crate::json::value_from_slice(bytes)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        Self::from_value(value)
    }

    /// Converts a JSON value read with [`crate::json`] (for an envelope
    /// inside another message). Only JSON objects are accepted for the
    /// envelope and its header (serde alone would also take arrays in field
    /// order).
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        if !value.is_object() || !value.get("header").is_some_and(Value::is_object) {
            return Err(EnvelopeError::Malformed(
                "an envelope is a JSON object with a `header` object".into(),
            ));
        }
        serde_json::from_value(value).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// The JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Verifies the publisher's signature and every disclosure.
    ///
    /// The key is looked up for the header's publisher and key id and must be
    /// valid at `issued_at`. Clock skew is the verifier's own policy: see
    /// [`EnvelopeHeader::check_clock_skew`].
    pub fn verify(&self, keys: &dyn KeyResolver) -> Result<VerifiedAlert, EnvelopeError> {
        let public_key = self.check_before_signature(keys)?;
        verify_signature(
            &public_key,
            &signing_input(&self.header, &self.digests),
            &self.signature.0,
        )?;
        self.check_after_signature()
    }

    /// Steps 2 to 5 of the verification (section 9 of `docs/PROTOCOL.md`):
    /// the header, the number of fields, and the key, which it returns.
    fn check_before_signature(
        &self,
        keys: &dyn KeyResolver,
    ) -> Result<VerifyingKey, EnvelopeError> {
        self.header.validate()?;
        let count = self.digests.len().max(self.disclosures.len());
        if count > MAX_FIELDS {
            return Err(EnvelopeError::TooManyFields { count });
        }
        Ok(keys.resolve(
            &self.header.publisher,
            &self.header.key_id,
            self.header.issued_at_ms,
        )?)
    }

    /// Steps 7 and 8, once the signature has verified: the digests' order
    /// and every disclosure.
    fn check_after_signature(&self) -> Result<VerifiedAlert, EnvelopeError> {
        if !self.digests.windows(2).all(|w| w[0] < w[1]) {
            return Err(EnvelopeError::DigestsNotSorted);
        }
        let mut names = BTreeSet::new();
        let mut disclosures = Vec::with_capacity(self.disclosures.len());
        for (index, raw) in self.disclosures.iter().enumerate() {
            // Match the raw bytes first: any alteration is reported as such,
            // whatever it did to the encoding.
            let digest = Digest::of(&raw.0);
            if !self.digests.iter().any(|d| d.ct_eq(&digest)) {
                return Err(EnvelopeError::DisclosureWithoutDigest { index });
            }
            let disclosure = Disclosure::decode(&raw.0, index)?;
            if !names.insert(disclosure.name.clone()) {
                return Err(EnvelopeError::DuplicateField {
                    name: disclosure.name,
                });
            }
            disclosures.push(disclosure);
        }
        Ok(VerifiedAlert {
            envelope: self.clone(),
            disclosures,
        })
    }

    /// Verifies several envelopes: each result is exactly what
    /// [`Envelope::verify`] gives for that envelope.
    ///
    /// The signatures are checked one by one. A batch check that accepts
    /// exactly what the strict check accepts ([`crate::batch`]) needs a
    /// subgroup check of every `R`, which costs about as much as the
    /// verification it saves: measured 1.4 times slower than single
    /// checks (`docs/DECISIONS.md`). [`BATCH_SIGNATURES`] switches to it.
    pub fn verify_batch(
        envelopes: &[&Envelope],
        keys: &dyn KeyResolver,
    ) -> Vec<Result<VerifiedAlert, EnvelopeError>> {
        Self::verify_all(envelopes, keys, BATCH_SIGNATURES)
    }

    /// [`Envelope::verify_batch`], the signatures checked together if `batched`.
    pub(crate) fn verify_all(
        envelopes: &[&Envelope],
        keys: &dyn KeyResolver,
        batched: bool,
    ) -> Vec<Result<VerifiedAlert, EnvelopeError>> {
        // The checks before the signature, in `verify`'s order.
        let prepared: Vec<Result<(VerifyingKey, Vec<u8>), EnvelopeError>> = envelopes
            .iter()
            .map(|e| {
                let public_key = e.check_before_signature(keys)?;
                Ok((public_key, signing_input(&e.header, &e.digests)))
            })
            .collect();
        let items: Vec<crate::batch::Item<'_>> = prepared
            .iter()
            .zip(envelopes)
            .filter_map(|(p, e)| {
                let (key, input) = p.as_ref().ok()?;
                Some((key, input.as_slice(), e.signature.0.as_slice()))
            })
            .collect();
        let signatures_ok = if batched {
            crate::batch::verify_strict_batch(&items)
        } else {
            items
                .iter()
                .map(|(key, input, signature)| verify_signature(key, input, signature).is_ok())
                .collect()
        };
        let mut signatures_ok = signatures_ok.into_iter();
        prepared
            .into_iter()
            .zip(envelopes)
            .map(|(p, e)| {
                p?;
                if !signatures_ok.next().unwrap_or(false) {
                    return Err(EnvelopeError::BadSignature);
                }
                e.check_after_signature()
            })
            .collect()
    }

    /// A copy that keeps only the disclosures whose field name `keep` accepts.
    /// The signature still verifies. Disclosures that cannot be decoded are dropped.
    pub fn redact(&self, keep: impl Fn(&str) -> bool) -> Envelope {
        let mut out = self.clone();
        out.disclosures = self
            .disclosures
            .iter()
            .enumerate()
            .filter(|(i, raw)| Disclosure::decode(&raw.0, *i).is_ok_and(|d| keep(d.name())))
            .map(|(_, raw)| raw.clone())
            .collect();
        out
    }
}

/// Checks an ed25519 signature with the strict rules (no malleable or
/// small-order encodings).
pub fn verify_signature(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), EnvelopeError> {
    let bytes: [u8; 64] = signature
        .try_into()
        .map_err(|_| EnvelopeError::BadSignature)?;
    key.verify_strict(message, &Signature::from_bytes(&bytes))
        .map_err(|_| EnvelopeError::BadSignature)
}

/// Whether [`Envelope::verify_batch`] checks signatures with the strict
/// batch check of [`crate::batch`] rather than one by one. Off: on
/// curve25519-dalek 5 the batch, kept strict, is slower (`docs/DECISIONS.md`).
pub const BATCH_SIGNATURES: bool = false;

/// An envelope whose signature and disclosures have been verified
/// ([`Envelope::verify`]): the publisher's ed25519 signature over the header
/// and every field digest verifies with a key the resolver holds for the
/// header's publisher and key id, valid at `issued_at_ms`; every disclosure
/// is well formed and matches a signed digest, and no field is disclosed
/// twice. The values are therefore exactly what the publisher signed.
/// Withheld fields are only digests: their values cannot be recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAlert {
    envelope: Envelope,
    disclosures: Vec<Disclosure>,
}

impl VerifiedAlert {
    /// The signed header.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.envelope.header
    }

    /// The envelope exactly as received.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The verified disclosures, in envelope order.
    pub fn disclosures(&self) -> &[Disclosure] {
        &self.disclosures
    }

    /// The value of one disclosed field.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.disclosures
            .iter()
            .find(|d| d.name == name)
            .map(|d| &d.value)
    }

    /// All disclosed fields as a JSON object.
    pub fn fields(&self) -> Map<String, Value> {
        self.disclosures
            .iter()
            .map(|d| (d.name.clone(), d.value.clone()))
            .collect()
    }

    /// The names of the disclosed fields, sorted.
    pub fn field_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.disclosures.iter().map(|d| d.name.clone()).collect();
        names.sort();
        names
    }

    /// The envelope with only the disclosures whose name `keep` accepts.
    pub fn redacted(&self, keep: impl Fn(&str) -> bool) -> Envelope {
        let mut out = self.envelope.clone();
        out.disclosures = self
            .disclosures
            .iter()
            .filter(|d| keep(&d.name))
            .map(|d| Base64Url(d.encoded.clone()))
            .collect();
        out
    }
}
