//! Checking, deciding and recording one batch of alerts: size, topic,
//! rate limit, signature, schema, policy, resends, and the broker-signed
//! stamps and receipts. Pure CPU work without database access, so that the
//! router can run it on a blocking thread while the previous batch commits.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use samverkan_sdk::envelope::{Envelope, EnvelopeError};
use samverkan_sdk::messages::{
    self, Delivery, DenialReceipt, Receipt, ReceiptStatus, Rejection, ShareReceipt, ShareStamp,
};
use samverkan_sdk::topics;
use samverkan_sdk::{VerifiedAlert, names};
use serde_json::Value;
use tracing::{info, warn};

use super::RouterSettings;
use crate::audit::subject::SubjectHasher;
use crate::audit::{AuditEntry, EntryKind, disclosed_digest};
use crate::limits::PublishLimits;
use crate::policy::{Decision, DecisionInput, PolicySet};
use crate::signer::BrokerSigner;
use crate::store::{AlertRow, Commit, DeliveryRow, KnownAlert};

/// Everything one batch is checked and decided with.
pub(super) struct Decider {
    /// The policy in force for the whole batch.
    pub policy: Arc<PolicySet>,
    pub settings: RouterSettings,
    pub limits: Arc<PublishLimits>,
    pub signer: Arc<BrokerSigner>,
    pub subjects: SubjectHasher,
    /// The broker's clock for the whole batch.
    pub now: i64,
}

/// An alert as it arrived from a publisher's outbox.
pub(super) struct Arrived {
    pub tenant: String,
    pub logical: String,
    pub payload: Bytes,
    /// Even an oversized alert is parsed (rumqttd bounds packets at
    /// 16 MiB), so that its refusal can name it.
    pub parsed: Result<Envelope, EnvelopeError>,
}

impl Arrived {
    /// (publisher, alert id), if the envelope could be read.
    pub fn key(&self) -> Option<(String, String)> {
        let envelope = self.parsed.as_ref().ok()?;
        Some((self.tenant.clone(), envelope.header.alert_id.clone()))
    }
}

/// What a decided batch sends once committed, and what it counts.
#[derive(Default)]
pub(super) struct Decided {
    /// Receipts, in arrival order.
    pub receipts: Vec<(String, Vec<u8>)>,
    /// Deliveries of the shares.
    pub deliveries: Vec<(String, Vec<u8>)>,
    pub accepted: u64,
    pub resent: u64,
    /// The code of every refusal.
    pub rejected: Vec<String>,
}

/// Decides alerts exactly as the router does, outside the router: for tools
/// that build a genuine log without MQTT (the console benchmark fills a
/// store with it). Signature checks, schema, policy, audit entries, share
/// stamps and receipts are the router's own; publish limits are not applied,
/// since a bulk fill runs far faster than the clock it simulates.
pub struct BatchDecider(Decider);

impl BatchDecider {
    /// A decider with `policy` in force whose clock reads `now`.
    pub fn new(
        policy: Arc<PolicySet>,
        signer: Arc<BrokerSigner>,
        subjects: SubjectHasher,
        now: i64,
    ) -> Self {
        let limits = Arc::new(PublishLimits::unlimited(&policy));
        Self(Decider {
            policy,
            settings: RouterSettings::default(),
            limits,
            signer,
            subjects,
            now,
        })
    }

    /// Decides `alerts` (publisher, logical topic, payload) as one batch,
    /// appending their rows and entries to `commit` from index `next` on;
    /// every alert id is taken to be new. Returns how many were accepted
    /// and how many refused.
    pub fn decide(
        &self,
        alerts: Vec<(String, String, Bytes)>,
        next: &mut u64,
        commit: &mut Commit,
    ) -> (u64, u64) {
        let arrived = alerts
            .into_iter()
            .map(|(tenant, logical, payload)| Arrived {
                parsed: Envelope::from_json(&payload),
                tenant,
                logical,
                payload,
            })
            .collect();
        let decided = self.0.decide(arrived, &HashMap::new(), next, commit);
        (decided.accepted, decided.rejected.len() as u64)
    }
}

/// Takes the next audit index.
pub(super) fn take_index(next: &mut u64) -> u64 {
    let i = *next;
    *next += 1;
    i
}

/// An alert that passed every check.
struct Accepted {
    tenant: String,
    alert: VerifiedAlert,
    envelope_hash: String,
    decision: Decision,
}

/// An alert that was refused, with whatever could be read of it.
#[derive(Default)]
struct Rejected {
    tenant: String,
    alert_id: Option<String>,
    topic: Option<String>,
    alert_type: Option<String>,
    envelope_hash: Option<String>,
    signature: Option<String>,
    code: String,
    message: String,
    retry_after_ms: Option<u64>,
}

enum Outcome {
    Accepted(Box<Accepted>),
    Rejected(Box<Rejected>),
    /// Already accepted earlier: resend the stored receipt.
    Resend {
        tenant: String,
        receipt: Vec<u8>,
    },
    /// Same as an earlier alert of this batch (by position).
    SameAs {
        tenant: String,
        index: usize,
    },
}

fn reject(tenant: &str, code: &str, message: impl Into<String>) -> Rejected {
    Rejected {
        tenant: tenant.to_string(),
        code: code.to_string(),
        message: message.into(),
        ..Default::default()
    }
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
pub(super) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Decider {
    /// Checks, decides and records `alerts`, appending their rows and audit
    /// entries (from index `next` on) to `commit`. `known` holds the alerts
    /// accepted earlier under the same (publisher, alert id).
    pub fn decide(
        &self,
        alerts: Vec<Arrived>,
        known: &HashMap<(String, String), KnownAlert>,
        next: &mut u64,
        commit: &mut Commit,
    ) -> Decided {
        // An exact resend of an alert accepted earlier gets its receipt again
        // before any other check: it was verified and decided then, and a
        // later clock, limit, key or policy must not turn it into a refusal.
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(alerts.len());
        for a in alerts {
            if let (Some(key), Ok(envelope)) = (a.key(), &a.parsed)
                && let Some(k) = known.get(&key)
                && k.envelope_hash == messages::envelope_hash(envelope)
            {
                outcomes.push(Outcome::Resend {
                    tenant: a.tenant,
                    receipt: k.receipt.clone(),
                });
                continue;
            }
            outcomes.push(self.evaluate(&a.tenant, &a.logical, &a.payload, Some(a.parsed)));
        }

        // An alert id used earlier or in this batch: the same content is a
        // resend, other content is refused.
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

        // Audit entries, deliveries and signed receipts.
        let mut decided = Decided::default();
        let mut receipts: Vec<Option<(String, Vec<u8>)>> = Vec::with_capacity(outcomes.len());
        for outcome in &outcomes {
            let receipt = match outcome {
                Outcome::Accepted(a) => {
                    decided.accepted += 1;
                    Some(self.record_accepted(a, next, commit, &mut decided.deliveries))
                }
                Outcome::Rejected(r) => {
                    decided.rejected.push(r.code.clone());
                    Some(self.record_rejected(r, next, commit))
                }
                Outcome::Resend { tenant, receipt } => {
                    decided.resent += 1;
                    Some((tenant.clone(), receipt.clone()))
                }
                Outcome::SameAs { .. } => {
                    decided.resent += 1;
                    None
                }
            };
            receipts.push(receipt);
        }
        for i in 0..outcomes.len() {
            if let Outcome::SameAs { tenant, index } = &outcomes[i] {
                let receipt = receipts[*index]
                    .as_ref()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                receipts[i] = Some((tenant.clone(), receipt));
            }
        }
        decided.receipts = receipts.into_iter().flatten().collect();
        decided
    }

    /// Checks one alert; no database access.
    /// `parsed` is the payload parsed as an envelope, unless it was too large to parse.
    fn evaluate(
        &self,
        tenant: &str,
        logical: &str,
        payload: &[u8],
        parsed: Option<Result<Envelope, EnvelopeError>>,
    ) -> Outcome {
        let (policy, now) = (&*self.policy, self.now);
        // A refusal names the alert when it can be read, so that the
        // publisher's SDK can match the receipt to what it sent.
        let refused = |mut r: Rejected| {
            if r.envelope_hash.is_none() {
                match parsed.as_ref().map(|p| p.as_ref()) {
                    Some(Ok(envelope)) => {
                        let h = &envelope.header;
                        r.alert_id = Some(h.alert_id.clone())
                            .filter(|id| names::validate_alert_id(id).is_ok());
                        r.topic = Some(logical.to_string())
                            .filter(|t| names::validate_logical_topic(t).is_ok());
                        r.alert_type = Some(h.alert_type.clone())
                            .filter(|t| names::validate_alert_type(t).is_ok());
                        r.envelope_hash = Some(messages::envelope_hash(envelope));
                        r.signature = Some(b64(&envelope.signature.0));
                    }
                    _ => r.alert_id = peek_alert_id(payload),
                }
            }
            Outcome::Rejected(Box::new(r))
        };
        if payload.len() > self.settings.max_payload_bytes {
            return refused(reject(
                tenant,
                "payload_too_large",
                format!(
                    "the alert is {} bytes; at most {} are accepted",
                    payload.len(),
                    self.settings.max_payload_bytes
                ),
            ));
        }
        if let Err(e) = names::validate_logical_topic(logical) {
            return refused(reject(tenant, "invalid_topic", e.to_string()));
        }
        if let Err(wait) = self.limits.check(tenant) {
            let mut r = reject(
                tenant,
                "rate_limited",
                format!("`{tenant}` exceeds its publish limit; retry later"),
            );
            r.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
            return refused(r);
        }
        let envelope = match parsed.clone() {
            Some(Ok(e)) => e,
            Some(Err(e)) => return refused(reject(tenant, e.code(), e.to_string())),
            None => {
                return refused(reject(
                    tenant,
                    "malformed_envelope",
                    "not parsed".to_string(),
                ));
            }
        };
        let h = &envelope.header;
        let base = |code: &str, message: String| Rejected {
            tenant: tenant.to_string(),
            alert_id: Some(h.alert_id.clone()).filter(|id| names::validate_alert_id(id).is_ok()),
            topic: Some(logical.to_string()),
            alert_type: Some(h.alert_type.clone())
                .filter(|t| names::validate_alert_type(t).is_ok()),
            envelope_hash: Some(messages::envelope_hash(&envelope)),
            signature: Some(b64(&envelope.signature.0)),
            code: code.to_string(),
            message,
            retry_after_ms: None,
        };
        if h.publisher != tenant {
            return refused(base(
                "publisher_mismatch",
                format!(
                    "the envelope names `{}` as publisher but arrived from `{tenant}`",
                    names_or_escaped(&h.publisher)
                ),
            ));
        }
        if h.topic != logical {
            return refused(base(
                "topic_mismatch",
                "the signed topic differs from the topic the alert was published on".into(),
            ));
        }
        if let Err(e) = h.check_clock_skew(now, self.settings.max_clock_skew_ms) {
            return refused(base(e.code(), e.to_string()));
        }
        let alert = match envelope.verify(policy.keys()) {
            Ok(a) => a,
            Err(e) => return refused(base(e.code(), e.to_string())),
        };
        // A key revoked now is refused even for an alert signed just before.
        if let Some(key) = policy
            .keys()
            .keys_of(tenant)
            .find(|k| k.key_id == alert.header().key_id)
            && let Err(e) = key.check_at(now)
        {
            let e = EnvelopeError::from(e);
            return refused(base(e.code(), e.to_string()));
        }
        let Some(schema) = policy.alert_type(&h.alert_type) else {
            return refused(base(
                "unknown_alert_type",
                format!("`{}` is not an alert type of the policy", h.alert_type),
            ));
        };
        let fields = alert.fields();
        if let Err(problems) = schema.validate(&Value::Object(fields.clone())) {
            return refused(base("schema_violation", problems.join("; ")));
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
            envelope_hash: messages::envelope_hash(&envelope),
            alert,
            decision,
        }))
    }

    fn record_accepted(
        &self,
        a: &Accepted,
        next: &mut u64,
        commit: &mut Commit,
        publish: &mut Vec<(String, Vec<u8>)>,
    ) -> (String, Vec<u8>) {
        let (policy, now) = (&*self.policy, self.now);
        let h = a.alert.header();
        let signature = b64(&a.alert.envelope().signature.0);
        let subject_hashes: Vec<String> = policy
            .alert_type(&h.alert_type)
            .map(|t| t.subject_fields.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|(field, kind)| {
                let value = a.alert.field(field)?.as_str()?;
                self.subjects.hash_value(*kind, value)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let base = |kind: EntryKind, index: u64| {
            let mut e = AuditEntry::new(kind, now);
            e.index = index;
            e.alert_id = Some(h.alert_id.clone());
            e.publisher = Some(a.tenant.clone());
            e.topic = Some(h.topic.clone());
            e.alert_type = Some(h.alert_type.clone());
            e.envelope_hash = Some(a.envelope_hash.clone());
            e.signature = Some(signature.clone());
            e.policy_version = Some(policy.version().to_string());
            e.subject_hashes = subject_hashes.clone();
            e
        };
        let mut shares = Vec::new();
        for share in &a.decision.shares {
            let index = take_index(next);
            let share_id = messages::share_id(&a.envelope_hash, &share.recipient);
            let mut digests: Vec<_> = a
                .alert
                .disclosures()
                .iter()
                .filter(|d| share.fields.iter().any(|f| f == d.name()))
                .map(|d| d.digest())
                .collect();
            digests.sort();
            let mut entry = base(EntryKind::Share, index);
            entry.recipient = Some(share.recipient.clone());
            entry.rule_id = Some(share.rule_id.clone());
            entry.legal_basis = Some(share.legal_basis.clone());
            entry.purpose = Some(share.purpose.clone());
            entry.fields = share.fields.clone();
            entry.disclosed_digest = Some(disclosed_digest(&digests));
            entry.share_id = Some(share_id.clone());
            commit
                .subjects
                .extend(subject_hashes.iter().map(|s| (s.clone(), index)));
            commit.audit.push(entry);

            let stamp = ShareStamp {
                share_id: share_id.clone(),
                alert_id: h.alert_id.clone(),
                publisher: a.tenant.clone(),
                recipient: share.recipient.clone(),
                topic: h.topic.clone(),
                alert_type: h.alert_type.clone(),
                rule_id: share.rule_id.clone(),
                legal_basis: share.legal_basis.clone(),
                purpose: share.purpose.clone(),
                fields: share.fields.clone(),
                envelope_hash: a.envelope_hash.clone(),
                policy_version: policy.version().to_string(),
                audit_index: index,
                signed_at_ms: now,
            };
            let delivery = Delivery {
                envelope: a
                    .alert
                    .redacted(|name| share.fields.iter().any(|f| f == name)),
                stamp: self.signer.sign(messages::TAG_SHARE_STAMP, &stamp),
            }
            .to_json();
            commit.deliveries.push(DeliveryRow {
                share_id: share_id.clone(),
                recipient: share.recipient.clone(),
                alert_id: h.alert_id.clone(),
                publisher: a.tenant.clone(),
                alert_type: h.alert_type.clone(),
                topic: h.topic.clone(),
                audit_idx: index,
                payload: delivery.clone(),
                created_at_ms: now,
            });
            publish.push((topics::inbox(&share.recipient, &h.topic), delivery));
            shares.push(ShareReceipt {
                share_id,
                recipient: share.recipient.clone(),
                rule_id: share.rule_id.clone(),
                legal_basis: share.legal_basis.clone(),
                purpose: share.purpose.clone(),
                fields: share.fields.clone(),
                audit_index: index,
            });
        }
        let mut denials = Vec::new();
        for denial in &a.decision.denials {
            let index = take_index(next);
            let mut entry = base(EntryKind::Denial, index);
            entry.recipient = denial.recipient.clone();
            entry.rule_id = denial.rule_id.clone();
            entry.reason_code = Some(denial.reason.code().to_string());
            entry.reason = Some(denial.reason.to_string());
            commit
                .subjects
                .extend(subject_hashes.iter().map(|s| (s.clone(), index)));
            commit.audit.push(entry);
            denials.push(DenialReceipt {
                recipient: denial.recipient.clone(),
                rule_id: denial.rule_id.clone(),
                code: denial.reason.code().to_string(),
                message: denial.reason.to_string(),
                audit_index: index,
            });
        }
        let receipt = Receipt {
            alert_id: Some(h.alert_id.clone()),
            publisher: a.tenant.clone(),
            envelope_hash: Some(a.envelope_hash.clone()),
            status: ReceiptStatus::Accepted,
            rejection: None,
            shares,
            denials,
            audit_index: None,
            policy_version: policy.version().to_string(),
            received_at_ms: now,
            signed_at_ms: now,
        };
        let receipt = serde_json::to_vec(&self.signer.sign(messages::TAG_RECEIPT, &receipt))
            .unwrap_or_default();
        let envelope = a.alert.envelope();
        commit.alerts.push(AlertRow {
            publisher: a.tenant.clone(),
            alert_id: h.alert_id.clone(),
            envelope_hash: a.envelope_hash.clone(),
            alert_type: h.alert_type.clone(),
            topic: h.topic.clone(),
            issued_at_ms: h.issued_at_ms,
            received_at_ms: now,
            policy_version: policy.version().to_string(),
            signed_envelope: envelope.redact(|_| false).to_json(),
            content: envelope.to_json(),
            receipt: receipt.clone(),
        });
        info!(
            alert = %h.alert_id,
            publisher = %a.tenant,
            alert_type = %h.alert_type,
            shares = a.decision.shares.len(),
            denials = a.decision.denials.len(),
            "alert accepted"
        );
        (a.tenant.clone(), receipt)
    }

    fn record_rejected(
        &self,
        r: &Rejected,
        next: &mut u64,
        commit: &mut Commit,
    ) -> (String, Vec<u8>) {
        let (policy, now) = (&*self.policy, self.now);
        let index = take_index(next);
        let mut entry = AuditEntry::new(EntryKind::Rejection, now);
        entry.index = index;
        entry.alert_id = r.alert_id.clone();
        entry.publisher = Some(r.tenant.clone());
        entry.topic = r.topic.clone();
        entry.alert_type = r.alert_type.clone();
        entry.envelope_hash = r.envelope_hash.clone();
        entry.signature = r.signature.clone();
        entry.policy_version = Some(policy.version().to_string());
        entry.reason_code = Some(r.code.clone());
        entry.reason = Some(r.message.clone());
        commit.audit.push(entry);
        let receipt = Receipt {
            alert_id: r.alert_id.clone(),
            publisher: r.tenant.clone(),
            envelope_hash: r.envelope_hash.clone(),
            status: ReceiptStatus::Rejected,
            rejection: Some(Rejection {
                code: r.code.clone(),
                message: r.message.clone(),
                retry_after_ms: r.retry_after_ms,
            }),
            shares: Vec::new(),
            denials: Vec::new(),
            audit_index: Some(index),
            policy_version: policy.version().to_string(),
            received_at_ms: now,
            signed_at_ms: now,
        };
        warn!(
            publisher = %r.tenant,
            alert = r.alert_id.as_deref().unwrap_or("-"),
            code = %r.code,
            reason = %r.message,
            "alert refused"
        );
        let receipt = serde_json::to_vec(&self.signer.sign(messages::TAG_RECEIPT, &receipt))
            .unwrap_or_default();
        (r.tenant.clone(), receipt)
    }
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
        code: "alert_id_reused".into(),
        message: "this alert id was already used for an alert with different content".into(),
        retry_after_ms: None,
    }))
}

/// A name for logs: as is when it is a valid agency id, escaped otherwise.
fn names_or_escaped(s: &str) -> String {
    if names::validate_agency_id(s).is_ok() {
        s.to_string()
    } else {
        s.chars().take(40).flat_map(char::escape_default).collect()
    }
}
