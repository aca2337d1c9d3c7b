//! `audit prove`: the evidence bundle for one entry, built from the store.
//! The bundle and its offline check are defined in
//! [`samverkan_sdk::audit::evidence`].

use samverkan_sdk::Envelope;
use samverkan_sdk::audit::evidence::{
    BUNDLE_FORMAT, BUNDLE_FORMAT_V2, EvidenceBundle, witness_policy_of,
};
use thiserror::Error;

use super::EntryKind;
use super::tree::inclusion_proof;
use crate::store::{Store, StoreError};

/// Why no bundle could be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is no such entry.
    #[error("there is no audit entry {0}")]
    NoEntry(u64),
    /// No signed checkpoint covers the entry yet.
    #[error(
        "no signed checkpoint covers entry {0} yet; the broker signs one periodically (see [audit] in the configuration)"
    )]
    NotYetCheckpointed(u64),
    /// Something the bundle needs is not stored.
    #[error("{0}")]
    Missing(String),
    /// No checkpoint that covers the entry has the cosignatures the quorum
    /// of the entry's policy needs.
    #[error(
        "no checkpoint that covers entry {0} has reached the witness quorum `{1}` yet (see `samverkan admin health` for the witnesses' state)"
    )]
    NotYetWitnessed(u64, String),
}

/// Checkpoints examined for a quorum before giving up: the witnesses cosign
/// every checkpoint they can, so a covering one with a quorum comes early.
const QUORUM_SEARCH: u32 = 4096;

/// The first checkpoint covering `index` whose cosignatures meet the quorum
/// of `policy`, as a note with those cosignatures.
async fn witnessed_checkpoint(
    store: &Store,
    index: u64,
    policy: &samverkan_sdk::audit::witnesses::WitnessPolicy,
) -> Result<Option<(u64, String)>, EvidenceError> {
    let keys: std::collections::BTreeMap<String, String> = policy
        .witnesses()
        .values()
        .map(|w| (w.key.vkey(), w.agency.clone()))
        .collect();
    for checkpoint in store.checkpoints_after(Some(index), QUORUM_SEARCH).await? {
        let cosignatures: Vec<_> = store
            .cosignatures(checkpoint.size)
            .await?
            .into_iter()
            .filter(|c| keys.get(&c.vkey) == Some(&c.witness))
            .collect();
        let signed = cosignatures.iter().map(|c| c.witness.clone()).collect();
        if !cosignatures.is_empty() && policy.quorum_met(&signed) {
            let note = crate::witness::cosigned_note(
                &checkpoint.note,
                cosignatures.into_iter().map(|c| c.line).collect(),
            )
            .map_err(|e| EvidenceError::Missing(format!("checkpoint {}: {e}", checkpoint.size)))?;
            return Ok(Some((checkpoint.size, note)));
        }
    }
    Ok(None)
}

/// Builds the evidence bundle for entry `index`.
pub async fn build_bundle(store: &Store, index: u64) -> Result<EvidenceBundle, EvidenceError> {
    let entry = store
        .audit_range(index, index + 1)
        .await?
        .into_iter()
        .next()
        .ok_or(EvidenceError::NoEntry(index))?;
    let version = entry
        .policy_version
        .clone()
        .ok_or_else(|| EvidenceError::Missing(format!("entry {index} names no policy version")))?;
    let policy_files = store.policy_files(&version).await?.ok_or_else(|| {
        EvidenceError::Missing(format!("policy version {version} is not archived"))
    })?;
    let witnesses = witness_policy_of(&policy_files)
        .map_err(|e| EvidenceError::Missing(format!("policy version {version}: {e}")))?;
    let (format, size, note) = if witnesses.requires_cosignatures() {
        let (size, note) = witnessed_checkpoint(store, index, &witnesses)
            .await?
            .ok_or_else(|| {
                EvidenceError::NotYetWitnessed(index, witnesses.quorum_name().to_string())
            })?;
        (BUNDLE_FORMAT_V2, size, note)
    } else {
        let checkpoint = store
            .checkpoint_covering(index)
            .await?
            .ok_or(EvidenceError::NotYetCheckpointed(index))?;
        (BUNDLE_FORMAT, checkpoint.size, checkpoint.note)
    };
    let proof = inclusion_proof(store, size, index).await?;
    let envelope = match (entry.kind, &entry.publisher, &entry.alert_id) {
        (EntryKind::Share | EntryKind::Denial, Some(publisher), Some(alert_id)) => {
            let bytes = store
                .signed_envelope(publisher, alert_id)
                .await?
                .ok_or_else(|| {
                    EvidenceError::Missing(format!(
                        "the signed envelope of alert {alert_id} is not stored"
                    ))
                })?;
            Some(Envelope::from_json(&bytes).map_err(|e| {
                EvidenceError::Missing(format!("the stored envelope of alert {alert_id}: {e}"))
            })?)
        }
        _ => None,
    };
    Ok(EvidenceBundle {
        format: format.into(),
        entry,
        checkpoint: note,
        inclusion_proof: proof.iter().map(hex::encode).collect(),
        envelope,
        policy_files,
    })
}
