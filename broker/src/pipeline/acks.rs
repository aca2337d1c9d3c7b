//! Acknowledgements: a recipient's signed proof that it took shares. A
//! verified acknowledgement adds one `ack` entry per share it acknowledges
//! for the first time to the batch's draft, and opens the window of the
//! recipient's replay (whether or not the batch then commits).
//!
//! A batch's acknowledgements are verified with its alerts ([`verify_all`],
//! pure), their shares looked up with one query per acknowledging agency
//! ([`pending`]), and their entries added after the alerts' ([`record`],
//! pure).

use std::collections::{BTreeSet, HashMap, HashSet};

use samverkan_sdk::messages::{self, Ack, Signed};
use sha2::Digest as _;
use tracing::warn;

use super::check::b64;
use crate::audit::appender::{AckFacts, Draft};
use crate::policy::PolicySet;
use crate::store::{PendingDelivery, Store, StoreError};

/// Most share ids one acknowledgement may carry.
const MAX_SHARE_IDS: usize = 1000;

/// An acknowledgement that verified.
#[derive(Debug)]
pub struct VerifiedAck {
    /// What it acknowledges.
    pub ack: Ack,
    /// As received.
    pub signed: Signed,
}

/// Why an acknowledgement was not taken (logged, never answered).
#[derive(Debug, thiserror::Error)]
pub enum AckRefusal {
    /// Not a signed acknowledgement of this agency.
    #[error("{0}")]
    Invalid(String),
    /// For another agency, or too many share ids.
    #[error("wrong agency or too many share ids")]
    Scope,
    /// Stale, or signed with a key not valid now.
    #[error("stale ({fresh}), or signed with a key not valid now ({key_valid_now})")]
    NotNow {
        /// Signed within the clock skew tolerance.
        fresh: bool,
        /// Its key is valid now.
        key_valid_now: bool,
    },
}

/// Verifies `tenant`'s acknowledgement `payload` at `now`. Pure.
pub fn verify(
    policy: &PolicySet,
    tenant: &str,
    payload: &[u8],
    now: i64,
    max_clock_skew_ms: i64,
) -> Result<VerifiedAck, AckRefusal> {
    let signed = Signed::from_json(payload).map_err(|e| AckRefusal::Invalid(e.to_string()))?;
    let ack = signed
        .verify::<Ack>(messages::TAG_ACK, policy.keys(), tenant)
        .map_err(|e| AckRefusal::Invalid(e.to_string()))?;
    if ack.agency != tenant || ack.share_ids.len() > MAX_SHARE_IDS {
        return Err(AckRefusal::Scope);
    }
    // Proof of receipt must be fresh and made with a key valid now, so a
    // revoked key cannot produce backdated acknowledgements.
    let fresh = ack.signed_at_ms.abs_diff(now) <= max_clock_skew_ms.unsigned_abs();
    let key_valid_now = policy
        .keys()
        .keys_of(tenant)
        .find(|k| k.key_id == signed.key_id)
        .is_some_and(|k| k.check_at(now).is_ok());
    if !fresh || !key_valid_now {
        return Err(AckRefusal::NotNow {
            fresh,
            key_valid_now,
        });
    }
    Ok(VerifiedAck { ack, signed })
}

/// An acknowledgement that verified, ready to record: its agency and the
/// bytes and hash the log keeps as evidence.
#[derive(Debug)]
pub struct Verified {
    /// The acknowledging agency.
    pub tenant: String,
    /// The share ids it names, as sent.
    pub share_ids: Vec<String>,
    /// The signed acknowledgement, serialised once for the log.
    message: std::sync::Arc<[u8]>,
    /// Hex SHA-256 of `message`.
    message_hash: String,
    /// Its signature (base64url).
    signature: String,
}

/// Verifies a batch's acknowledgements (`(tenant, payload)`, in arrival
/// order) at `now`, logging each refusal. Pure, so that it runs with the
/// check stage on a blocking thread.
pub fn verify_all(
    policy: &PolicySet,
    acks: Vec<(String, bytes::Bytes)>,
    (now, max_clock_skew_ms): (i64, i64),
) -> Vec<Verified> {
    acks.into_iter()
        .filter_map(|(tenant, payload)| {
            match verify(policy, &tenant, &payload, now, max_clock_skew_ms) {
                Ok(VerifiedAck { ack, signed }) => {
                    let message: std::sync::Arc<[u8]> =
                        serde_json::to_vec(&signed).unwrap_or_default().into();
                    Some(Verified {
                        message_hash: hex::encode(sha2::Sha256::digest(&message)),
                        signature: b64(&signed.signature.0),
                        message,
                        share_ids: ack.share_ids,
                        tenant,
                    })
                }
                Err(reason) => {
                    warn!(agency = %tenant, %reason, "acknowledgement refused");
                    None
                }
            }
        })
        .collect()
}

/// The shares that verified acknowledgements name and that are stored for
/// the acknowledging agency without an acknowledgement yet, by agency and
/// share id.
pub type Pending = HashMap<String, HashMap<String, PendingDelivery>>;

/// Looks up [`Pending`] for a batch's acknowledgements: one query per
/// acknowledging agency, however many acknowledgements it sent.
pub async fn pending(store: &Store, acks: &[Verified]) -> Result<Pending, StoreError> {
    let mut asked: HashMap<&str, BTreeSet<&String>> = HashMap::new();
    for a in acks {
        asked.entry(&a.tenant).or_default().extend(&a.share_ids);
    }
    let mut pending = Pending::new();
    for (tenant, ids) in asked {
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        let found = store.unacked_among(tenant, &ids).await?;
        pending.insert(
            tenant.to_string(),
            found.into_iter().map(|p| (p.share_id.clone(), p)).collect(),
        );
    }
    Ok(pending)
}

/// Adds to `draft` what the verified acknowledgements `acks` newly
/// acknowledge, in their order: one `ack` entry per share in `pending`,
/// skipping shares in `already` (acknowledged in the batch in flight).
/// Pure.
pub fn record(
    acks: &[Verified],
    pending: &Pending,
    now: i64,
    already: &HashSet<String>,
    draft: &mut Draft,
) {
    // A share acknowledged twice (in this batch, or in this one and the
    // batch in flight) is recorded once.
    let mut recorded: HashSet<&str> = HashSet::new();
    for a in acks {
        for id in &a.share_ids {
            let Some(p) = pending.get(&a.tenant).and_then(|m| m.get(id)) else {
                continue;
            };
            if already.contains(id) || !recorded.insert(id) {
                continue;
            }
            draft.ack(
                now,
                &AckFacts {
                    share_id: &p.share_id,
                    alert_id: &p.alert_id,
                    publisher: &p.publisher,
                    topic: &p.topic,
                    recipient: &a.tenant,
                    message: &a.message,
                    message_hash: &a.message_hash,
                    signature: &a.signature,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::appender::Appender;

    fn verified(tenant: &str, share_ids: &[&str], message: &str) -> Verified {
        Verified {
            tenant: tenant.into(),
            share_ids: share_ids.iter().map(|s| s.to_string()).collect(),
            message: message.as_bytes().into(),
            message_hash: format!("hash-of-{message}"),
            signature: format!("signature-of-{message}"),
        }
    }

    fn pending_of(tenant: &str, share_ids: &[&str]) -> (String, HashMap<String, PendingDelivery>) {
        let shares = share_ids.iter().map(|id| {
            let p = PendingDelivery {
                share_id: id.to_string(),
                alert_id: format!("alert-of-{id}"),
                publisher: "skatteverket".into(),
                topic: "welfare/incorrect-payment/ost".into(),
                payload: None,
            };
            (id.to_string(), p)
        });
        (tenant.to_string(), shares.collect())
    }

    #[test]
    fn each_pending_share_is_recorded_once_in_the_order_acknowledged() {
        let acks = [
            verified("polisen", &["s2", "s1", "s2"], "m1"),
            // s1 again, s3 acknowledged in the batch in flight, s9 not pending.
            verified("polisen", &["s1", "s3", "s9", "s4"], "m2"),
            // Pending for polisen, not for this agency.
            verified("linkoping", &["s4"], "m3"),
        ];
        let pending: Pending = [pending_of("polisen", &["s1", "s2", "s3", "s4"])].into();
        let already: HashSet<String> = ["s3".to_string()].into();
        let mut draft = Appender::empty().draft("v1");
        record(&acks, &pending, 7, &already, &mut draft);

        let shares: Vec<_> = draft
            .commit
            .audit
            .iter()
            .map(|e| e.share_id.clone())
            .collect();
        assert_eq!(
            shares,
            [Some("s2".into()), Some("s1".into()), Some("s4".into())]
        );
        let entry = &draft.commit.audit[2];
        assert_eq!(entry.kind, crate::audit::EntryKind::Ack);
        assert_eq!(entry.recipient.as_deref(), Some("polisen"));
        assert_eq!(entry.alert_id.as_deref(), Some("alert-of-s4"));
        assert_eq!(entry.signature.as_deref(), Some("signature-of-m2"));
        let updates = &draft.commit.acks;
        assert_eq!(updates[1].message_hash, "hash-of-m1");
        assert_eq!(updates[2].message_hash, "hash-of-m2");
        // The shares of one message share its bytes instead of copying them.
        assert!(std::sync::Arc::ptr_eq(
            &updates[0].ack_message,
            &updates[1].ack_message
        ));
        assert_eq!(&*updates[2].ack_message, b"m2");
    }
}
