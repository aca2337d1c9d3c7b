//! The check stage: arrived alerts and the context they are judged in (the
//! policy and its keys, the publish limits, the broker's clock, the alerts
//! accepted earlier under the same ids) in, one decision per alert out.
//!
//! Pure: no database, no I/O, nothing signed. The only state it touches is
//! the publish limiters of the context. The checks and their order are
//! those of `docs/PROTOCOL.md` 13.5.5: size, topic and rate limit first (a
//! flood costs a JSON parse, not a signature check), then the envelope
//! (publisher, topic, clock skew, signature, key valid now), the alert
//! type's schema, the policy's decision, and finally alert ids used before.
//! The publishers' signatures of a batch are checked in one call
//! ([`Envelope::verify_batch`]: exactly the strict check's answers).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use samverkan_sdk::codes::RejectionCode;
use samverkan_sdk::envelope::{Envelope, EnvelopeError};
use samverkan_sdk::messages;
use samverkan_sdk::{VerifiedAlert, names};
use serde_json::Value;

use crate::limits::PublishLimits;
use crate::policy::{Decision, DecisionInput, PolicySet};
use crate::store::KnownAlert;

/// What alerts are checked against: the same for a whole batch.
pub struct CheckContext {
    /// The policy in force, with its keys.
    pub policy: Arc<PolicySet>,
    /// Largest alert payload accepted.
    pub max_payload_bytes: usize,
    /// Largest allowed difference between `issued_at` and `now`.
    pub max_clock_skew_ms: i64,
    /// The publishers' rate limiters.
    pub limits: Arc<PublishLimits>,
    /// The broker's clock.
    pub now: i64,
}

/// An alert as it arrived from a publisher's outbox.
pub struct Arrived {
    /// The agency of the connection it came from.
    pub tenant: String,
    /// The logical topic it was published on.
    pub logical: String,
    /// The bytes as published.
    pub payload: Bytes,
    /// The payload read as an envelope. Even an oversized alert is parsed
    /// (rumqttd bounds packets at 16 MiB), so that its refusal can name it.
    pub parsed: Result<Envelope, EnvelopeError>,
}

impl Arrived {
    /// An alert from `tenant` on `logical`, parsed.
    pub fn new(tenant: String, logical: String, payload: Bytes) -> Self {
        let parsed = Envelope::from_json(&payload);
        Self {
            tenant,
            logical,
            payload,
            parsed,
        }
    }

    /// (publisher, alert id), if the envelope could be read.
    pub fn key(&self) -> Option<(String, String)> {
        let envelope = self.parsed.as_ref().ok()?;
        Some((self.tenant.clone(), envelope.header.alert_id.clone()))
    }
}

/// An alert that passed every check.
#[derive(Debug)]
pub struct Accepted {
    /// Its publisher.
    pub tenant: String,
    /// The verified envelope.
    pub alert: VerifiedAlert,
    /// Hex SHA-256 of its signing input.
    pub envelope_hash: String,
    /// Who receives what, and who does not.
    pub decision: Decision,
}

/// An alert that was refused, with whatever could be read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The agency it came from.
    pub tenant: String,
    /// Its id, when it can be read and is valid.
    pub alert_id: Option<String>,
    /// Its logical topic, when valid.
    pub topic: Option<String>,
    /// Its alert type, when valid.
    pub alert_type: Option<String>,
    /// Its envelope hash, when it is an envelope.
    pub envelope_hash: Option<String>,
    /// Its signature (base64url), when it is an envelope.
    pub signature: Option<String>,
    /// Why.
    pub code: RejectionCode,
    /// Why, in words.
    pub message: String,
    /// For `rate_limited`: when to try again.
    pub retry_after_ms: Option<u64>,
}

/// The decision about one alert.
#[derive(Debug)]
pub enum Outcome {
    /// Accepted: record its shares and denials.
    Accepted(Box<Accepted>),
    /// Refused.
    Rejected(Box<Rejected>),
    /// Already accepted earlier: answer with the stored receipt.
    Resend {
        /// Its publisher.
        tenant: String,
        /// Its alert id.
        alert_id: String,
        /// The receipt given then.
        receipt: Vec<u8>,
    },
    /// The same alert as an earlier one of this batch (by position): answer
    /// with that one's receipt.
    SameAs {
        /// Its publisher.
        tenant: String,
        /// The earlier alert's position in the batch.
        index: usize,
    },
}

/// Checks `alerts` in arrival order. `known` holds the alerts accepted
/// earlier, by (publisher, alert id).
pub fn check(
    ctx: &CheckContext,
    alerts: Vec<Arrived>,
    known: &HashMap<(String, String), KnownAlert>,
) -> Vec<Outcome> {
    // An exact resend of an alert accepted earlier gets its receipt again
    // before any other check: it was verified and decided then, and a later
    // clock, limit, key or policy must not turn it into a refusal.
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(alerts.len());
    let mut to_verify: Vec<(usize, Envelope, Arrived)> = Vec::new();
    for a in alerts {
        if let (Some(key), Ok(envelope)) = (a.key(), &a.parsed)
            && let Some(k) = known.get(&key)
            && k.envelope_hash == messages::envelope_hash(envelope)
        {
            outcomes.push(Some(Outcome::Resend {
                tenant: a.tenant,
                alert_id: key.1,
                receipt: k.receipt.clone(),
            }));
            continue;
        }
        match before_signature(ctx, &a) {
            Ok(envelope) => {
                to_verify.push((outcomes.len(), envelope, a));
                outcomes.push(None);
            }
            Err(r) => outcomes.push(Some(Outcome::Rejected(r))),
        }
    }

    // Every signature of the batch in one call.
    let envelopes: Vec<&Envelope> = to_verify.iter().map(|(_, e, _)| e).collect();
    let verified = Envelope::verify_batch(&envelopes, ctx.policy.keys());
    for ((i, envelope, a), result) in to_verify.iter().zip(verified) {
        outcomes[*i] = Some(after_signature(ctx, a, envelope, result));
    }
    let mut outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    refuse_reused_ids(&mut outcomes, known);
    outcomes
}

/// The (publisher, alert id) of each alert that `outcomes` answer as a resend.
pub fn resent_keys(outcomes: &[Outcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Resend {
                tenant, alert_id, ..
            } => Some((tenant.clone(), alert_id.clone())),
            _ => None,
        })
        .collect()
}

/// The (publisher, alert id) of each alert that `outcomes` accept.
pub fn accepted_keys(outcomes: &[Outcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Accepted(a) => Some((a.tenant.clone(), a.alert.header().alert_id.clone())),
            _ => None,
        })
        .collect()
}

/// Alerts of a checked batch that were accepted meanwhile elsewhere (by
/// another node, between the check and the sequencing lock; `late` is read
/// under the lock): the same content is answered with the stored receipt,
/// other content is refused as a reused id.
pub fn settle_late_resends(outcomes: &mut [Outcome], late: &HashMap<(String, String), KnownAlert>) {
    for outcome in outcomes.iter_mut() {
        let Outcome::Accepted(a) = outcome else {
            continue;
        };
        let key = (a.tenant.clone(), a.alert.header().alert_id.clone());
        let Some(k) = late.get(&key) else {
            continue;
        };
        *outcome = if k.envelope_hash == a.envelope_hash {
            Outcome::Resend {
                tenant: a.tenant.clone(),
                alert_id: key.1,
                receipt: k.receipt.clone(),
            }
        } else {
            reused(a)
        };
    }
}

/// An alert id used earlier or in this batch: the same content is a resend,
/// other content is refused.
fn refuse_reused_ids(outcomes: &mut [Outcome], known: &HashMap<(String, String), KnownAlert>) {
    let mut first_in_batch: HashMap<(String, String), (usize, String)> = HashMap::new();
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        let Outcome::Accepted(a) = outcome else {
            continue;
        };
        let key = (a.tenant.clone(), a.alert.header().alert_id.clone());
        let replacement = if known.contains_key(&key) {
            Some(reused(a))
        } else if let Some((j, hash)) = first_in_batch.get(&key) {
            Some(if *hash == a.envelope_hash {
                Outcome::SameAs {
                    tenant: a.tenant.clone(),
                    index: *j,
                }
            } else {
                reused(a)
            })
        } else {
            first_in_batch.insert(key, (i, a.envelope_hash.clone()));
            None
        };
        if let Some(r) = replacement {
            *outcome = r;
        }
    }
}

fn reject(tenant: &str, code: RejectionCode, message: impl Into<String>) -> Rejected {
    Rejected {
        tenant: tenant.to_string(),
        alert_id: None,
        topic: None,
        alert_type: None,
        envelope_hash: None,
        signature: None,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

/// A refusal of an alert whose envelope could be read: it names the alert,
/// so that the publisher's SDK can match the receipt to what it sent.
fn refuse_envelope(
    tenant: &str,
    logical: &str,
    envelope: &Envelope,
    code: RejectionCode,
    message: String,
) -> Rejected {
    let h = &envelope.header;
    Rejected {
        tenant: tenant.to_string(),
        alert_id: Some(h.alert_id.clone()).filter(|id| names::validate_alert_id(id).is_ok()),
        topic: Some(logical.to_string()).filter(|t| names::validate_logical_topic(t).is_ok()),
        alert_type: Some(h.alert_type.clone()).filter(|t| names::validate_alert_type(t).is_ok()),
        envelope_hash: Some(messages::envelope_hash(envelope)),
        signature: Some(b64(&envelope.signature.0)),
        code,
        message,
        retry_after_ms: None,
    }
}

/// The refusal code of an envelope error. The verifier never reports
/// `internal` (a signer's error); were it to, the envelope is malformed.
fn code_of(e: &EnvelopeError) -> RejectionCode {
    RejectionCode::try_from(e.verification_code()).unwrap_or(RejectionCode::MalformedEnvelope)
}

/// Steps 1 to 7 (PROTOCOL 13.5.5): everything before the signature.
/// Returns the envelope to verify.
fn before_signature(ctx: &CheckContext, a: &Arrived) -> Result<Envelope, Box<Rejected>> {
    let (tenant, logical, payload) = (a.tenant.as_str(), a.logical.as_str(), &a.payload);
    // Steps 1 to 3 name the alert if it can be read.
    let early = |code, message: String| {
        Box::new(match &a.parsed {
            Ok(envelope) => refuse_envelope(tenant, logical, envelope, code, message),
            Err(_) => Rejected {
                alert_id: peek_alert_id(payload),
                ..reject(tenant, code, message)
            },
        })
    };
    if payload.len() > ctx.max_payload_bytes {
        return Err(early(
            RejectionCode::PayloadTooLarge,
            format!(
                "the alert is {} bytes; at most {} are accepted",
                payload.len(),
                ctx.max_payload_bytes
            ),
        ));
    }
    if let Err(e) = names::validate_logical_topic(logical) {
        return Err(early(RejectionCode::InvalidTopic, e.to_string()));
    }
    if let Err(wait) = ctx.limits.check(tenant) {
        let mut r = early(
            RejectionCode::RateLimited,
            format!("`{tenant}` exceeds its publish limit; retry later"),
        );
        r.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        return Err(r);
    }
    let envelope = match &a.parsed {
        Ok(e) => e.clone(),
        Err(e) => return Err(early(code_of(e), e.to_string())),
    };
    let h = &envelope.header;
    let refused = |code, message| {
        Err(Box::new(refuse_envelope(
            tenant, logical, &envelope, code, message,
        )))
    };
    if h.publisher != tenant {
        return refused(
            RejectionCode::PublisherMismatch,
            format!(
                "the envelope names `{}` as publisher but arrived from `{tenant}`",
                names_or_escaped(&h.publisher)
            ),
        );
    }
    if h.topic != logical {
        return refused(
            RejectionCode::TopicMismatch,
            "the signed topic differs from the topic the alert was published on".into(),
        );
    }
    if let Err(e) = h.check_clock_skew(ctx.now, ctx.max_clock_skew_ms) {
        return refused(code_of(&e), e.to_string());
    }
    Ok(envelope)
}

/// Steps 8 to 12: the verification's result, the key valid now, the alert
/// type and its schema, and the policy's decision.
fn after_signature(
    ctx: &CheckContext,
    a: &Arrived,
    envelope: &Envelope,
    verified: Result<VerifiedAlert, EnvelopeError>,
) -> Outcome {
    let (tenant, logical) = (a.tenant.as_str(), a.logical.as_str());
    let policy = &*ctx.policy;
    let h = &envelope.header;
    let refused = |code, message| {
        Outcome::Rejected(Box::new(refuse_envelope(
            tenant, logical, envelope, code, message,
        )))
    };
    let alert = match verified {
        Ok(alert) => alert,
        Err(e) => return refused(code_of(&e), e.to_string()),
    };
    // A key revoked now is refused even for an alert signed just before.
    if let Some(key) = policy
        .keys()
        .keys_of(tenant)
        .find(|k| k.key_id == alert.header().key_id)
        && let Err(e) = key.check_at(ctx.now)
    {
        let e = EnvelopeError::from(e);
        return refused(code_of(&e), e.to_string());
    }
    let Some(schema) = policy.alert_type(&h.alert_type) else {
        return refused(
            RejectionCode::UnknownAlertType,
            format!("`{}` is not an alert type of the policy", h.alert_type),
        );
    };
    let fields = alert.fields();
    if let Err(problems) = schema.validate(&Value::Object(fields.clone())) {
        return refused(RejectionCode::SchemaViolation, problems.join("; "));
    }
    let decision = policy.decide(&DecisionInput {
        publisher: tenant,
        topic: logical,
        alert_type: &h.alert_type,
        fields: &fields,
        to: h.to.as_deref(),
    });
    Outcome::Accepted(Box::new(Accepted {
        tenant: tenant.to_string(),
        envelope_hash: messages::envelope_hash(envelope),
        alert,
        decision,
    }))
}

fn reused(a: &Accepted) -> Outcome {
    let h = a.alert.header();
    Outcome::Rejected(Box::new(Rejected {
        tenant: a.tenant.clone(),
        alert_id: Some(h.alert_id.clone()),
        topic: Some(h.topic.clone()),
        alert_type: Some(h.alert_type.clone()),
        envelope_hash: Some(a.envelope_hash.clone()),
        signature: Some(b64(&a.alert.envelope().signature.0)),
        code: RejectionCode::AlertIdReused,
        message: "this alert id was already used for an alert with different content".into(),
        retry_after_ms: None,
    }))
}

/// Reads just the alert id of an envelope (for receipts of refused alerts),
/// with the SDK's one JSON reader: bytes in which an object repeats a member
/// name are not read at all.
fn peek_alert_id(payload: &[u8]) -> Option<String> {
    let envelope = samverkan_sdk::json::value_from_slice(payload).ok()?;
    let alert_id = envelope.get("header")?.get("alert_id")?.as_str()?;
    names::validate_alert_id(alert_id).ok()?;
    Some(alert_id.to_string())
}

/// Unpadded URL-safe base64, as signatures appear in the audit log.
pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A name for logs: as is when it is a valid agency id, escaped otherwise.
fn names_or_escaped(s: &str) -> String {
    if names::validate_agency_id(s).is_ok() {
        s.to_string()
    } else {
        s.chars().take(40).flat_map(char::escape_default).collect()
    }
}

#[cfg(test)]
mod tests;
