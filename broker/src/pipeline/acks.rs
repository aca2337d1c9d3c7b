//! Acknowledgements: a recipient's signed proof that it took shares. A
//! verified acknowledgement adds one `ack` entry per share it acknowledges
//! for the first time to the batch's draft, and opens the window of the
//! recipient's replay (whether or not the batch then commits).

use std::collections::HashSet;

use samverkan_sdk::messages::{self, Ack, Signed};
use sha2::Digest as _;
use tracing::warn;

use super::check::b64;
use crate::audit::appender::{AckFacts, Draft};
use crate::policy::PolicySet;
use crate::store::{Store, StoreError};

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

/// Verifies an acknowledgement and adds what it newly acknowledges to
/// `draft` (skipping shares in `already`: acknowledged in the batch in
/// flight); returns its share ids if it verified.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    store: &Store,
    policy: &PolicySet,
    tenant: &str,
    payload: &[u8],
    (now, max_clock_skew_ms): (i64, i64),
    already: &HashSet<String>,
    draft: &mut Draft,
) -> Result<Option<Vec<String>>, StoreError> {
    let VerifiedAck { ack, signed } = match verify(policy, tenant, payload, now, max_clock_skew_ms)
    {
        Ok(v) => v,
        Err(reason) => {
            warn!(agency = tenant, %reason, "acknowledgement refused");
            return Ok(None);
        }
    };
    let pending = store.unacked_among(tenant, &ack.share_ids).await?;
    let message = serde_json::to_vec(&signed).unwrap_or_default();
    let message_hash = hex::encode(sha2::Sha256::digest(&message));
    let signature = b64(&signed.signature.0);
    for p in pending {
        // A share acknowledged twice (in this batch, or in this one and the
        // batch in flight) is recorded once.
        if draft.commit.acks.iter().any(|a| a.share_id == p.share_id)
            || already.contains(&p.share_id)
        {
            continue;
        }
        draft.ack(
            now,
            &AckFacts {
                share_id: &p.share_id,
                alert_id: &p.alert_id,
                publisher: &p.publisher,
                topic: &p.topic,
                recipient: tenant,
                message: &message,
                message_hash: &message_hash,
                signature: &signature,
            },
        );
    }
    Ok(Some(ack.share_ids))
}
