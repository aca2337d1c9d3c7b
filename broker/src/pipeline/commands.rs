//! The work the pipeline is asked to do besides routing — checkpoints,
//! retention purges, console accesses, policy changes — run between
//! batches, so that every audit entry has the one appender.

use std::sync::Arc;
use std::time::Instant;

use samverkan_sdk::codes::AccessAction;
use samverkan_sdk::topics;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::Pipeline;
use crate::audit::appender::Draft;
use crate::policy::PolicySet;
use crate::store::StoreError;
use crate::witness::SignedHead;

/// Why a [`Command`] was not carried out.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The database failed; nothing was recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint could not be signed.
    #[error("could not sign the checkpoint: {0}")]
    Checkpoint(#[from] samverkan_sdk::audit::AuditProofError),
    /// The pipeline has stopped (or stopped before answering).
    #[error("the pipeline has stopped")]
    Stopped,
}

/// Work the pipeline is asked to do besides routing, so that every audit
/// entry is appended by the one appender.
#[derive(Debug)]
pub enum Command {
    /// Sign and publish a checkpoint of the log (if it grew).
    Checkpoint {
        /// Answered with the checkpoint's size.
        done: Option<oneshot::Sender<Result<u64, CommandError>>>,
    },
    /// Purge content past its retention period.
    Purge {
        /// Answered with how many alerts and deliveries were purged.
        done: Option<oneshot::Sender<Result<(u64, u64), CommandError>>>,
    },
    /// An auditor used the console: record it as an `auditor_access` entry
    /// before the console answers.
    RecordAccess {
        /// What was done, by whom.
        access: AccessRecord,
        /// Answered with the entry's index once committed.
        done: oneshot::Sender<Result<u64, CommandError>>,
    },
    /// A new policy is in force: record it, and the keys it revokes.
    PolicyChanged {
        /// The policy that was in force before.
        previous: Arc<PolicySet>,
        /// Answered once recorded.
        done: Option<oneshot::Sender<Result<(), CommandError>>>,
    },
}

/// One use of the auditor console, to be recorded (PROTOCOL.md 13.8.2,
/// `auditor_access`). Holds no personal data: a subject only as its hash.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The auditor's organization (O=): an agency, or the supervisor's body.
    pub organization: String,
    /// What was done.
    pub action: AccessAction,
    /// Who (certificate common name and serial) and what was asked.
    pub reason: String,
    /// The alert looked at (case pages).
    pub alert_id: Option<String>,
    /// The subject hash looked up (subject searches).
    pub subject_hash: Option<String>,
}

impl Pipeline {
    pub(super) async fn handle(&mut self, command: Command) {
        if !self.settle().await {
            warn!("a command waits for the database after a failed commit");
        }
        match command {
            Command::Checkpoint { done } => {
                let result = self.checkpoint().await;
                if let Err(e) = &result {
                    error!(error = %e, "could not sign a checkpoint");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Command::PolicyChanged { previous, done } => {
                let result = self.record_policy_change(&previous).await;
                if let Err(e) = &result {
                    error!(error = %e, "the policy change could not be recorded yet (it will be with the next batch)");
                }
                if let Some(done) = done {
                    let _ = done.send(result.map_err(CommandError::from));
                }
            }
            Command::RecordAccess { access, done } => {
                let result = self.record_access(access).await;
                if let Err(e) = &result {
                    error!(error = %e, "a console access could not be recorded; it is refused");
                }
                let _ = done.send(result.map_err(CommandError::from));
            }
            Command::Purge { done } => {
                let result = self.purge().await;
                if let Err(e) = &result {
                    error!(error = %e, "retention purge failed (will be retried)");
                }
                if let Some(done) = done {
                    let _ = done.send(result.map_err(CommandError::from));
                }
            }
        }
    }

    /// Adds the `policy_loaded` entry of `policy` to `draft`.
    pub(super) async fn record_policy(
        &self,
        policy: &PolicySet,
        now: i64,
        draft: &mut Draft,
    ) -> Result<(), StoreError> {
        let first = !self.store.policy_archived(policy.version()).await?;
        draft.policy_loaded(now, policy, first);
        info!(
            version = policy.version(),
            "policy version recorded in the audit log"
        );
        Ok(())
    }

    pub(super) async fn record_start(&mut self) -> Result<(), StoreError> {
        let turn = self.turn().await?;
        let policy = self.policy.current();
        let mut draft = self.appender.draft(policy.version());
        self.record_policy(&policy, self.clock.now_ms(), &mut draft)
            .await?;
        self.commit_now(turn, draft).await?;
        self.recorded_policy = Some(policy.version().to_string());
        Ok(())
    }

    /// Records a newly loaded policy version and every key it newly revokes.
    async fn record_policy_change(&mut self, previous: &PolicySet) -> Result<(), StoreError> {
        let turn = self.turn().await?;
        let policy = self.policy.current();
        let now = self.clock.now_ms();
        let mut draft = self.appender.draft(policy.version());
        let record_load = self.recorded_policy.as_deref() != Some(policy.version());
        if record_load {
            self.record_policy(&policy, now, &mut draft).await?;
        }
        for key in policy.keys().iter() {
            let Some(revoked_at) = key.revoked_at_ms else {
                continue;
            };
            let before = previous
                .keys()
                .iter()
                .find(|k| k.owner == key.owner && k.key_id == key.key_id)
                .and_then(|k| k.revoked_at_ms);
            if before == Some(revoked_at) {
                continue;
            }
            warn!(agency = %key.owner, key = %key.key_id, "signing key revoked by the new policy");
            draft.key_revoked(now, key);
        }
        if !draft.is_empty() {
            self.commit_now(turn, draft).await?;
            if record_load {
                self.recorded_policy = Some(policy.version().to_string());
            }
        }
        self.limits.refresh(&policy);
        Ok(())
    }

    /// Appends one `auditor_access` entry (and its subject row) and commits it.
    async fn record_access(&mut self, access: AccessRecord) -> Result<u64, StoreError> {
        let turn = self.turn().await?;
        let policy = self.policy.current();
        let mut draft = self.appender.draft(policy.version());
        let index = draft.auditor_access(
            self.clock.now_ms(),
            &access.organization,
            access.action,
            access.reason,
            access.alert_id,
            access.subject_hash,
        );
        self.commit_now(turn, draft).await?;
        Ok(index)
    }

    /// Signs, stores and publishes a checkpoint of the log as it is now,
    /// unless the last one already covers every entry. On a node of
    /// several, under the sequencing lock (so it covers the log exactly as
    /// it stands), only after the no-fork guard has found every published
    /// checkpoint in the database's tree, and not when another node's
    /// checkpoint already covers the log: that one is published here instead.
    pub(super) async fn checkpoint(&mut self) -> Result<u64, CommandError> {
        let mut turn = self.turn().await?;
        if let Some(cluster) = self.cluster.clone() {
            let size = self.appender.committed_size();
            if let Some(newest) = cluster.guard(&self.store, size).await? {
                // Whoever signed the newest, the next one chains to it.
                self.appender.checkpoint_stored(newest.size);
                if newest.size >= size {
                    self.publish_checkpoint(newest.size, newest.note, false)
                        .await;
                    return Ok(size);
                }
            }
        }
        let Some(checkpoint) =
            self.appender
                .checkpoint(&self.signer, &self.audit.origin, self.clock.now_ms())?
        else {
            return Ok(self.appender.committed_size());
        };
        match turn.0.take() {
            Some((mut append, _holding, _)) => {
                self.store.checkpoint_in(&mut append, &checkpoint).await?;
                self.store
                    .finish_append(append, &Default::default())
                    .await?;
            }
            None => self.store.insert_checkpoint(&checkpoint).await?,
        }
        if let Some(cluster) = &self.cluster {
            cluster.signed(&checkpoint)?;
        }
        let size = checkpoint.size;
        self.appender.checkpoint_stored(size);
        info!(size, root = %hex::encode(checkpoint.root), "audit checkpoint signed and published");
        self.publish_checkpoint(size, checkpoint.note, true).await;
        Ok(size)
    }

    /// Publishes a checkpoint to every agency of the policy (their
    /// connections on this node) and to the witness coordinator, unless it
    /// has been already; `signed_here` says whether this node signed it.
    async fn publish_checkpoint(&mut self, size: u64, note: String, signed_here: bool) {
        let known = self.heads.borrow().as_ref().map(|h| h.size);
        if !signed_here && known.is_some_and(|k| k >= size) {
            return;
        }
        let policy = self.policy.current();
        for agency in policy.agencies().keys() {
            self.outbox
                .send(topics::checkpoint(agency), note.clone().into_bytes())
                .await;
        }
        self.heads.send_replace(Some(Arc::new(SignedHead {
            size,
            note,
            signed: Instant::now(),
        })));
    }

    /// Purges alert content past its retention period, with one audit entry
    /// per alert type purged, in one transaction.
    async fn purge(&mut self) -> Result<(u64, u64), StoreError> {
        let turn = self.turn().await?;
        let policy = self.policy.current();
        let now = self.clock.now_ms();
        let mut draft = self.appender.draft(policy.version());
        let (mut alerts, mut deliveries) = (0, 0);
        let mut alert_types: std::collections::BTreeSet<String> =
            policy.alert_types().keys().cloned().collect();
        alert_types.extend(self.store.alert_types_with_content().await?);
        for alert_type in &alert_types {
            let days = policy.retention_days(alert_type);
            let cutoff = now - i64::from(days) * 86_400_000;
            let (a, d) = self.store.purgeable(alert_type, cutoff).await?;
            if a + d == 0 {
                continue;
            }
            alerts += a;
            deliveries += d;
            draft.retention_purge(now, alert_type, cutoff, days, (a, d));
        }
        if !draft.is_empty() {
            self.commit_now(turn, draft).await?;
            info!(
                alerts,
                deliveries, "content past its retention period purged"
            );
        }
        Ok((alerts, deliveries))
    }
}
