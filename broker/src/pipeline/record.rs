//! The record stage: the check stage's decisions become the store's rows
//! (alerts, deliveries, subject rows), audit entries (through the
//! appender's [`Draft`]) and the broker-signed answers: one share stamp per
//! delivery and one receipt per alert. CPU work only, so that it runs on a
//! blocking thread while the previous batch commits.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use samverkan_sdk::messages::{
    self, Delivery, DenialReceipt, Receipt, ReceiptStatus, Rejection, ShareReceipt, ShareStamp,
};
use samverkan_sdk::topics;
use tracing::{info, warn};

use super::check::{self, Accepted, Arrived, CheckContext, Outcome, Rejected, b64};
use crate::audit::appender::{AlertFacts, Draft, RejectionFacts, ShareFacts};
use crate::audit::disclosed_digest;
use crate::audit::subject::SubjectHasher;
use crate::limits::PublishLimits;
use crate::policy::PolicySet;
use crate::signer::BrokerSigner;
use crate::store::KnownAlert;
use crate::store::{AlertRow, DeliveryRow};

/// What the record stage signs and records with: the same for a whole batch.
pub struct Recorder {
    /// The policy in force.
    pub policy: Arc<PolicySet>,
    /// The broker's signing key.
    pub signer: Arc<BrokerSigner>,
    /// The subject hash key.
    pub subjects: SubjectHasher,
    /// The broker's clock.
    pub now: i64,
}

/// What a recorded batch sends once committed, and what it counts.
#[derive(Default)]
pub struct Recorded {
    /// Receipts (tenant, signed receipt), in arrival order.
    pub receipts: Vec<(String, Vec<u8>)>,
    /// Deliveries of the shares (topic, payload).
    pub deliveries: Vec<(String, Vec<u8>)>,
    /// Alerts accepted.
    pub accepted: u64,
    /// The accepted alerts by (publisher, alert id), with the receipt just
    /// serialised for them, so that a resend before their commit is
    /// answered with the same bytes.
    pub known: Vec<((String, String), KnownAlert)>,
    /// Resends answered with an earlier receipt.
    pub resent: u64,
    /// The code of every refusal.
    pub rejected: Vec<samverkan_sdk::codes::RejectionCode>,
}

impl Recorder {
    /// Records `outcomes` (in arrival order) into `draft`.
    pub fn record(&self, outcomes: &[Outcome], draft: &mut Draft) -> Recorded {
        let mut recorded = Recorded::default();
        let mut receipts: Vec<Option<(String, Vec<u8>)>> = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let receipt = match outcome {
                Outcome::Accepted(a) => {
                    recorded.accepted += 1;
                    let (tenant, receipt) = self.accepted(a, draft, &mut recorded.deliveries);
                    recorded.known.push((
                        (tenant.clone(), a.alert.header().alert_id.clone()),
                        KnownAlert {
                            envelope_hash: a.envelope_hash.clone(),
                            receipt: receipt.clone(),
                        },
                    ));
                    Some((tenant, receipt))
                }
                Outcome::Rejected(r) => {
                    recorded.rejected.push(r.code);
                    Some(self.rejected(r, draft))
                }
                Outcome::Resend {
                    tenant, receipt, ..
                } => {
                    recorded.resent += 1;
                    Some((tenant.clone(), receipt.clone()))
                }
                Outcome::SameAs { .. } => {
                    recorded.resent += 1;
                    None
                }
            };
            receipts.push(receipt);
        }
        for (i, outcome) in outcomes.iter().enumerate() {
            if let Outcome::SameAs { tenant, index } = outcome {
                let receipt = receipts
                    .get(*index)
                    .and_then(Option::as_ref)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                receipts[i] = Some((tenant.clone(), receipt));
            }
        }
        recorded.receipts = receipts.into_iter().flatten().collect();
        recorded
    }

    /// The keyed hashes of the identifiers `a` is about, sorted and unique.
    fn subject_hashes(&self, a: &Accepted) -> Vec<String> {
        let h = a.alert.header();
        self.policy
            .alert_type(&h.alert_type)
            .map(|t| t.subject_fields.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|(field, kind)| {
                let value = a.alert.field(field)?.as_str()?;
                self.subjects.hash_value(*kind, value)
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn accepted(
        &self,
        a: &Accepted,
        draft: &mut Draft,
        publish: &mut Vec<(String, Vec<u8>)>,
    ) -> (String, Vec<u8>) {
        let (policy, now) = (&*self.policy, self.now);
        let h = a.alert.header();
        let signature = b64(&a.alert.envelope().signature.0);
        let subject_hashes = self.subject_hashes(a);
        let facts = AlertFacts {
            alert_id: &h.alert_id,
            publisher: &a.tenant,
            topic: &h.topic,
            alert_type: &h.alert_type,
            envelope_hash: &a.envelope_hash,
            signature: &signature,
            subject_hashes: &subject_hashes,
        };
        let mut shares = Vec::new();
        for share in &a.decision.shares {
            let share_id = messages::share_id(&a.envelope_hash, &share.recipient);
            let mut digests: Vec<_> = a
                .alert
                .disclosures()
                .iter()
                .filter(|d| share.fields.iter().any(|f| f == d.name()))
                .map(|d| d.digest())
                .collect();
            digests.sort();
            let index = draft.share(
                now,
                &facts,
                &ShareFacts {
                    share_id: &share_id,
                    recipient: &share.recipient,
                    rule_id: &share.rule_id,
                    legal_basis: &share.legal_basis,
                    purpose: &share.purpose,
                    fields: &share.fields,
                    disclosed_digest: &disclosed_digest(&digests),
                },
            );
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
            let stamp = self.signer.sign(messages::TAG_SHARE_STAMP, &stamp);
            let delivery = Delivery {
                envelope: a
                    .alert
                    .redacted(|name| share.fields.iter().any(|f| f == name)),
                stamp: stamp.clone(),
            }
            .to_json();
            draft.commit.deliveries.push(DeliveryRow {
                share_id: share_id.clone(),
                recipient: share.recipient.clone(),
                audit_idx: index,
                stamp,
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
            let code = denial.reason.denial_code();
            let index = draft.denial(
                now,
                &facts,
                denial.recipient.as_deref(),
                denial.rule_id.as_deref(),
                code,
                denial.reason.to_string(),
            );
            denials.push(DenialReceipt {
                recipient: denial.recipient.clone(),
                rule_id: denial.rule_id.clone(),
                code: code.as_str().to_string(),
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
        let signed_receipt = self.signer.sign(messages::TAG_RECEIPT, &receipt);
        let receipt = serde_json::to_vec(&signed_receipt).unwrap_or_default();
        let envelope = a.alert.envelope();
        draft.commit.alerts.push(AlertRow {
            publisher: a.tenant.clone(),
            alert_id: h.alert_id.clone(),
            envelope_hash: a.envelope_hash.clone(),
            alert_type: h.alert_type.clone(),
            topic: h.topic.clone(),
            issued_at_ms: h.issued_at_ms,
            received_at_ms: now,
            policy_version: policy.version().to_string(),
            signed_envelope: envelope.redact(|_| false).to_json(),
            disclosures: envelope.disclosures.clone(),
            receipt: signed_receipt,
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

    fn rejected(&self, r: &Rejected, draft: &mut Draft) -> (String, Vec<u8>) {
        let (policy, now) = (&*self.policy, self.now);
        let index = draft.rejection(
            now,
            &RejectionFacts {
                publisher: &r.tenant,
                alert_id: r.alert_id.as_deref(),
                topic: r.topic.as_deref(),
                alert_type: r.alert_type.as_deref(),
                envelope_hash: r.envelope_hash.as_deref(),
                signature: r.signature.as_deref(),
                code: r.code,
                reason: &r.message,
            },
        );
        let receipt = Receipt {
            alert_id: r.alert_id.clone(),
            publisher: r.tenant.clone(),
            envelope_hash: r.envelope_hash.clone(),
            status: ReceiptStatus::Rejected,
            rejection: Some(Rejection {
                code: r.code.as_str().to_string(),
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

/// Checks and records alerts exactly as the pipeline does, outside it: for
/// tools that build a genuine log without MQTT (the console benchmark fills
/// a store with it). Signature checks, schema, policy, audit entries, share
/// stamps and receipts are the pipeline's own; publish limits are not
/// applied, since a bulk fill runs far faster than the clock it simulates.
pub struct BatchDecider {
    check: CheckContext,
    record: Recorder,
}

impl BatchDecider {
    /// A decider with `policy` in force whose clock reads `now`.
    pub fn new(
        policy: Arc<PolicySet>,
        signer: Arc<BrokerSigner>,
        subjects: SubjectHasher,
        now: i64,
    ) -> Self {
        let settings = super::RouterSettings::default();
        Self {
            check: CheckContext {
                limits: Arc::new(PublishLimits::unlimited(&policy)),
                policy: policy.clone(),
                max_payload_bytes: settings.max_payload_bytes,
                max_clock_skew_ms: settings.max_clock_skew_ms,
                now,
            },
            record: Recorder {
                policy,
                signer,
                subjects,
                now,
            },
        }
    }

    /// Decides `alerts` (publisher, logical topic, payload) as one batch,
    /// adding their rows and entries to `draft`; every alert id is taken to
    /// be new. Returns how many were accepted and how many refused.
    pub fn decide(&self, alerts: Vec<(String, String, Bytes)>, draft: &mut Draft) -> (u64, u64) {
        let arrived = alerts
            .into_iter()
            .map(|(tenant, logical, payload)| Arrived::new(tenant, logical, payload))
            .collect();
        let outcomes = check::check(&self.check, arrived, &Default::default());
        let recorded = self.record.record(&outcomes, draft);
        (recorded.accepted, recorded.rejected.len() as u64)
    }
}
