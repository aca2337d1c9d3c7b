//! `audit prove`: the evidence bundle for one entry, built from the store.
//! The bundle and its offline check are defined in
//! [`samverkan_sdk::audit::evidence`].

use samverkan_sdk::Envelope;
use samverkan_sdk::audit::evidence::{BUNDLE_FORMAT, EvidenceBundle};
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
}

/// Builds the evidence bundle for entry `index`.
pub async fn build_bundle(store: &Store, index: u64) -> Result<EvidenceBundle, EvidenceError> {
    let entry = store
        .audit_range(index, index + 1)
        .await?
        .into_iter()
        .next()
        .ok_or(EvidenceError::NoEntry(index))?;
    let checkpoint = store
        .checkpoint_covering(index)
        .await?
        .ok_or(EvidenceError::NotYetCheckpointed(index))?;
    let proof = inclusion_proof(store, checkpoint.size, index).await?;
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
    let version = entry
        .policy_version
        .clone()
        .ok_or_else(|| EvidenceError::Missing(format!("entry {index} names no policy version")))?;
    let policy_files = store.policy_files(&version).await?.ok_or_else(|| {
        EvidenceError::Missing(format!("policy version {version} is not archived"))
    })?;
    Ok(EvidenceBundle {
        format: BUNDLE_FORMAT.into(),
        entry,
        checkpoint: checkpoint.note,
        inclusion_proof: proof.iter().map(hex::encode).collect(),
        envelope,
        policy_files,
    })
}
