//! Messages the broker signs (receipts and share stamps) and the delivery
//! that carries a share to its recipient.
//!
//! Inside an agency's tenant the broker cannot stop one client from
//! publishing on another client's topics, so everything the broker sends is
//! signed with the broker's ed25519 key and checked here before an
//! application sees it.
//!
//! A broker-signed message carries its JSON body as the exact bytes that were
//! signed (base64url), like the envelope's disclosures: a verifier checks the
//! signature over `lp(tag) ‖ lp(key_id) ‖ lp(body)` and only then parses the
//! body, so no JSON is ever re-serialised. Layout in `docs/PROTOCOL.md`.

use ed25519_dalek::{Signer, SigningKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::encoding::Writer;
use crate::envelope::{Base64Url, Envelope, EnvelopeError, VerifiedAlert, verify_signature};
use crate::keys::{KeyError, KeyRegistry, KeyResolver};

/// Domain tag of a receipt.
pub const TAG_RECEIPT: &str = "samverkan/v1/receipt";
/// Domain tag of a share stamp.
pub const TAG_SHARE_STAMP: &str = "samverkan/v1/share-stamp";
/// Domain tag of an acknowledgement (signed by the recipient agency).
pub const TAG_ACK: &str = "samverkan/v1/ack";
/// Domain tag of a replay status (signed by the broker).
pub const TAG_REPLAY_STATUS: &str = "samverkan/v1/replay-status";
/// Domain tag of a share id.
pub const TAG_SHARE_ID: &str = "samverkan/v1/share-id";
/// The owner name under which the broker's keys are registered.
pub const BROKER_KEY_OWNER: &str = "broker";

/// Why a broker-signed message or a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not the expected JSON.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The broker key is unknown, not valid at the signing time, or revoked.
    #[error("broker key: {0}")]
    BrokerKey(KeyError),
    /// The broker's signature does not verify.
    #[error("the broker's signature does not verify (forged or altered message)")]
    BadBrokerSignature,
    /// The stamp names another recipient than this agency.
    #[error("the share is stamped for `{stamped}`, not for `{me}`")]
    WrongRecipient {
        /// Who the stamp names.
        stamped: String,
        /// Who received it.
        me: String,
    },
    /// The stamp and the envelope or topic disagree.
    #[error("the stamp does not match the delivered alert: {0}")]
    StampMismatch(String),
    /// The publisher's envelope does not verify.
    #[error("the publisher's envelope does not verify: {0}")]
    Envelope(#[from] EnvelopeError),
}

impl MessageError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            MessageError::Malformed(_) => "malformed_message",
            MessageError::BrokerKey(_) => "broker_key",
            MessageError::BadBrokerSignature => "bad_broker_signature",
            MessageError::WrongRecipient { .. } => "wrong_recipient",
            MessageError::StampMismatch(_) => "stamp_mismatch",
            MessageError::Envelope(e) => e.code(),
        }
    }
}

/// A JSON body signed by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The exact JSON bytes that were signed.
    pub body: Base64Url,
    /// The broker key that signed.
    pub key_id: String,
    /// Ed25519 over `lp(tag) ‖ lp(key_id) ‖ lp(body)`.
    pub signature: Base64Url,
}

fn signed_input(tag: &str, key_id: &str, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_tag(tag);
    w.str(key_id).bytes(body);
    w.finish()
}

/// A body that records when the broker signed it (to check key validity).
pub trait SignedAt {
    /// Milliseconds since the epoch at which the broker signed.
    fn signed_at_ms(&self) -> i64;
}

impl Signed {
    /// Parses the JSON form (the three-member wrapper) with [`crate::json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        crate::json::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))
    }

    /// Signs `value` as JSON under `tag`.
    pub fn sign<T: Serialize>(tag: &str, value: &T, key: &SigningKey, key_id: &str) -> Self {
        // Serialising the plain data structures of this module cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_default();
        let signature = key.sign(&signed_input(tag, key_id, &body));
        Self {
            body: Base64Url(body),
            key_id: key_id.to_string(),
            signature: Base64Url(signature.to_bytes().to_vec()),
        }
    }

    /// Verifies the signature with a key of `owner` in `keys`, then parses the
    /// body and checks that the key was valid when the body says it was signed.
    pub fn verify<T: DeserializeOwned + SignedAt>(
        &self,
        tag: &str,
        keys: &KeyRegistry,
        owner: &str,
    ) -> Result<T, MessageError> {
        let key = keys
            .keys_of(owner)
            .find(|k| k.key_id == self.key_id)
            .ok_or_else(|| {
                MessageError::BrokerKey(KeyError::UnknownKey {
                    owner: owner.to_string(),
                    key_id: self.key_id.clone(),
                })
            })?;
        verify_signature(
            &key.public_key,
            &signed_input(tag, &self.key_id, &self.body.0),
            &self.signature.0,
        )
        .map_err(|_| MessageError::BadBrokerSignature)?;
        let value: T = crate::json::from_slice(&self.body.0)
            .map_err(|e| MessageError::Malformed(e.to_string()))?;
        keys.resolve(owner, &self.key_id, value.signed_at_ms())
            .map_err(MessageError::BrokerKey)?;
        Ok(value)
    }
}

/// SHA-256 of an envelope's signing input: identifies exactly what the
/// publisher signed (header and all digests), whatever was disclosed.
pub fn envelope_hash(envelope: &Envelope) -> String {
    hex::encode(Sha256::digest(crate::envelope::signing_input(
        &envelope.header,
        &envelope.digests,
    )))
}

/// The id of the share of an alert (by its envelope hash) with a recipient.
/// Deterministic, so a replayed or re-delivered share keeps its id.
pub fn share_id(envelope_hash: &str, recipient: &str) -> String {
    let mut w = Writer::with_tag(TAG_SHARE_ID);
    w.str(envelope_hash).str(recipient);
    hex::encode(&Sha256::digest(w.finish())[..16])
}

/// Whether the broker accepted an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Verified, decided and recorded; the shares are being delivered.
    Accepted,
    /// Refused; see `rejection`.
    Rejected,
}

/// Why an alert was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable machine-readable code (`bad_signature`, `schema_violation`, `rate_limited`, …).
    pub code: String,
    /// What is wrong, for people (never contains field values).
    pub message: String,
    /// For `rate_limited`: when to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    /// The code as an enum; `None` for a code this SDK does not know (from
    /// a newer broker).
    pub fn kind(&self) -> Option<crate::codes::RejectionCode> {
        self.code.parse().ok()
    }
}

/// One share in a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareReceipt {
    /// The share's id (also in the recipient's stamp).
    pub share_id: String,
    /// The receiving agency.
    pub recipient: String,
    /// The rule that allowed it.
    pub rule_id: String,
    /// The legal basis.
    pub legal_basis: String,
    /// The purpose.
    pub purpose: String,
    /// The fields disclosed.
    pub fields: Vec<String>,
    /// Position of the share's entry in the audit log.
    pub audit_index: u64,
}

/// One denial in a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialReceipt {
    /// The agency denied, or none when nobody could receive the alert.
    pub recipient: Option<String>,
    /// The rule whose condition failed, if any.
    pub rule_id: Option<String>,
    /// Stable machine-readable code (`no_rule_for_recipient`, `condition_not_met`, …).
    pub code: String,
    /// Why, for people.
    pub message: String,
    /// Position of the denial's entry in the audit log.
    pub audit_index: u64,
}

impl DenialReceipt {
    /// The code as an enum; `None` for a code this SDK does not know (from
    /// a newer broker).
    pub fn kind(&self) -> Option<crate::codes::DenialCode> {
        self.code.parse().ok()
    }
}

/// The broker's answer to a published alert.
///
/// A receipt returned by the client (`Client::publish`, or inside
/// `PublishError::Rejected`) has been verified: signed by a key of owner
/// `broker` that was valid when the broker signed, and about exactly the
/// alert that was published (same publisher, alert id and envelope hash).
/// It is the broker's signed statement that:
///
/// * when [`ReceiptStatus::Accepted`], it verified the alert (publisher
///   signature, key, clock, schema), decided it under `policy_version`, and
///   recorded every share and denial in the audit log at the given
///   `audit_index`es; the shares are being delivered. It does not prove that
///   a recipient received or read a share: its acknowledgement, recorded in
///   the audit log, does;
/// * when [`ReceiptStatus::Rejected`], it refused the alert for the reason in
///   `rejection` (codes in `docs/PROTOCOL.md` 13.5.5), shared nothing, and
///   recorded the refusal at `audit_index`.
///
/// Keep it: with the audit log's inclusion proofs (`samverkan audit prove`)
/// it is evidence of what was shared with whom, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The alert, when its id could be read.
    pub alert_id: Option<String>,
    /// The publishing agency (the tenant the alert arrived from).
    pub publisher: String,
    /// [`envelope_hash`] of the alert, when it could be computed.
    pub envelope_hash: Option<String>,
    /// Accepted or rejected.
    pub status: ReceiptStatus,
    /// Why it was rejected.
    pub rejection: Option<Rejection>,
    /// Who receives what.
    pub shares: Vec<ShareReceipt>,
    /// Who receives nothing, and why.
    pub denials: Vec<DenialReceipt>,
    /// Audit position of the rejection entry, for rejected alerts.
    pub audit_index: Option<u64>,
    /// The policy version that decided.
    pub policy_version: String,
    /// When the broker received the alert.
    pub received_at_ms: i64,
    /// When the broker signed this receipt.
    pub signed_at_ms: i64,
}

impl SignedAt for Receipt {
    fn signed_at_ms(&self) -> i64 {
        self.signed_at_ms
    }
}

/// The broker's statement, delivered with a share, of what it shared with
/// whom and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareStamp {
    /// The share's id.
    pub share_id: String,
    /// The alert.
    pub alert_id: String,
    /// The publishing agency.
    pub publisher: String,
    /// The receiving agency.
    pub recipient: String,
    /// The logical topic.
    pub topic: String,
    /// The alert type.
    pub alert_type: String,
    /// The rule that allowed the share.
    pub rule_id: String,
    /// The rule's legal basis.
    pub legal_basis: String,
    /// The rule's purpose.
    pub purpose: String,
    /// The fields disclosed, sorted.
    pub fields: Vec<String>,
    /// [`envelope_hash`] of the alert.
    pub envelope_hash: String,
    /// The policy version that decided.
    pub policy_version: String,
    /// Position of the share's entry in the audit log.
    pub audit_index: u64,
    /// When the broker signed the stamp.
    pub signed_at_ms: i64,
}

impl SignedAt for ShareStamp {
    fn signed_at_ms(&self) -> i64 {
        self.signed_at_ms
    }
}

/// What the broker publishes on a recipient's inbox: the publisher's
/// envelope with only the permitted disclosures, and the broker's stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// The publisher's envelope, redacted for this recipient.
    pub envelope: Envelope,
    /// The broker-signed [`ShareStamp`].
    pub stamp: Signed,
}

/// A delivery whose stamp and envelope have both been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDelivery {
    /// The broker's stamp.
    pub stamp: ShareStamp,
    /// The publisher's verified alert (only the disclosed fields).
    pub alert: VerifiedAlert,
}

impl Delivery {
    /// Parses the JSON form with [`crate::json`]; the envelope is read as
    /// [`Envelope::from_json`] reads it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        let malformed = |e: String| MessageError::Malformed(e);
        let value = crate::json::value_from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let serde_json::Value::Object(mut members) = value else {
            return Err(malformed("a delivery is a JSON object".into()));
        };
        let (envelope, stamp) = (members.remove("envelope"), members.remove("stamp"));
        let (Some(envelope), Some(stamp @ serde_json::Value::Object(_)), true) =
            (envelope, stamp, members.is_empty())
        else {
            return Err(malformed(
                "a delivery is a JSON object with exactly an `envelope` and a `stamp` object"
                    .into(),
            ));
        };
        Ok(Self {
            envelope: Envelope::from_value(envelope).map_err(|e| malformed(e.to_string()))?,
            stamp: serde_json::from_value(stamp).map_err(|e| malformed(e.to_string()))?,
        })
    }

    /// The JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks everything a recipient must check before using a share:
    /// the broker's stamp (signature, key validity, addressed to `me`, about
    /// this very envelope and logical topic), the publisher's signature and
    /// disclosures, and that exactly the stamped fields were disclosed.
    pub fn verify(
        &self,
        me: &str,
        logical_topic: &str,
        broker_keys: &KeyRegistry,
        agency_keys: &dyn KeyResolver,
    ) -> Result<VerifiedDelivery, MessageError> {
        let stamp: ShareStamp =
            self.stamp
                .verify(TAG_SHARE_STAMP, broker_keys, BROKER_KEY_OWNER)?;
        if stamp.recipient != me {
            return Err(MessageError::WrongRecipient {
                stamped: stamp.recipient,
                me: me.to_string(),
            });
        }
        let header = &self.envelope.header;
        let mismatch = |what: &str| Err(MessageError::StampMismatch(what.to_string()));
        if stamp.topic != logical_topic || header.topic != logical_topic {
            return mismatch("delivered on another topic than stamped");
        }
        if stamp.alert_id != header.alert_id
            || stamp.publisher != header.publisher
            || stamp.alert_type != header.alert_type
        {
            return mismatch("alert id, publisher or alert type differ");
        }
        if stamp.envelope_hash != envelope_hash(&self.envelope) {
            return mismatch("the envelope is not the one stamped");
        }
        if stamp.share_id != share_id(&stamp.envelope_hash, me) {
            return mismatch("the share id does not belong to this alert and recipient");
        }
        let alert = self.envelope.verify(agency_keys)?;
        if alert.field_names() != stamp.fields {
            return mismatch("the disclosed fields differ from the stamped fields");
        }
        Ok(VerifiedDelivery { stamp, alert })
    }
}

/// A recipient's acknowledgement that it handled shares: signed with the
/// recipient agency's own key (like an envelope) and published on its
/// `acks` topic, so the audit log holds proof of receipt that the broker
/// could not have made up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The acknowledging agency.
    pub agency: String,
    /// The shares handled.
    pub share_ids: Vec<String>,
    /// When the agency signed.
    pub signed_at_ms: i64,
}

impl SignedAt for Ack {
    fn signed_at_ms(&self) -> i64 {
        self.signed_at_ms
    }
}

/// A request, on an agency's `replay` topic, to deliver again every share
/// the agency has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// Chosen by the requester; echoed in the broker's log lines and in the
    /// replay's status (up to [`MAX_REQUEST_ID_LEN`] bytes).
    pub request_id: String,
}

impl ReplayRequest {
    /// Parses the JSON form with [`crate::json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        crate::json::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))
    }
}

/// Longest request id the broker echoes in a [`ReplayStatus`]; a longer one
/// is echoed as `-`.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The broker's word, on an agency's `replay/status` topic, that a replay
/// has ended: how many shares it sent and how many unacknowledged shares it
/// left for another request (PROTOCOL.md section 13.7.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStatus {
    /// The agency whose shares were replayed.
    pub agency: String,
    /// The request this replay answered (`-` if it had none usable).
    pub request_id: String,
    /// Shares sent by this replay.
    pub sent: u64,
    /// Unacknowledged shares not sent because the replay reached its
    /// limit; more than 0 means: acknowledge, then ask again.
    pub remaining: u64,
    /// When the broker signed.
    pub signed_at_ms: i64,
}

impl SignedAt for ReplayStatus {
    fn signed_at_ms(&self) -> i64 {
        self.signed_at_ms
    }
}
