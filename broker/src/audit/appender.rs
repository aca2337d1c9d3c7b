//! The audit log's appender: the only place in the broker that creates
//! audit entries.
//!
//! Entries are written into a [`Draft`] — a [`Commit`] under construction
//! that numbers each entry as it is added — and a draft becomes part of the
//! log in two steps: [`Appender::seal`] grows (a copy of) the Merkle tree by
//! the draft's entries and records the new stored hashes in the commit, and
//! once the store has committed it, [`Appender::committed`] moves the
//! committed tree on. Between the two, the pipeline may already build the
//! next draft on the sealed one ([`Appender::launched`]); if a commit fails,
//! [`Appender::failed`] makes the next [`Appender::sync`] reread the log's
//! state from the database, so nothing built on the failed commit survives.
//!
//! Checkpoints sign the committed tree only.

use samverkan_sdk::codes::{AccessAction, AuditReason, DenialCode, RejectionCode};

use super::tree::Frontier;
use super::{AuditEntry, EntryKind};
use crate::signer::BrokerSigner;
use crate::store::{AckUpdate, Commit, PolicyArchive, Purge, Store, StoreError, StoredCheckpoint};

/// Where the log stands: the next index, the tree as it will be once every
/// sealed draft has committed, the tree as committed, and the last
/// checkpoint.
#[derive(Debug, Default)]
pub struct Appender {
    next_index: u64,
    /// After every sealed draft.
    frontier: Frontier,
    /// As committed (what checkpoints sign).
    committed: Frontier,
    checkpointed: Option<u64>,
    /// The state must be reread from the database before the next draft.
    stale: bool,
}

/// A draft sealed into the tree: ready to commit.
#[derive(Debug)]
pub struct Sealed {
    /// The rows and entries, with the new tree hashes.
    pub commit: Commit,
    /// The log's size after it.
    pub next: u64,
    /// The tree after it.
    pub frontier: Frontier,
}

impl Appender {
    /// An appender that reads its state from the database on first use.
    pub fn new() -> Self {
        Self {
            stale: true,
            ..Self::default()
        }
    }

    /// An appender for an empty log that has never been written (tools that
    /// fill a fresh store).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads the next index, the tree's frontier and the last checkpoint
    /// from the database, if they may have changed behind the appender's
    /// back (start-up, a failed commit). Never called with a draft in flight.
    pub async fn sync(&mut self, store: &Store) -> Result<(), StoreError> {
        if !self.stale {
            return Ok(());
        }
        let next = store.next_audit_index().await?;
        self.reload(store, next).await
    }

    /// Reads the tree's frontier at `next` entries and the last checkpoint.
    async fn reload(&mut self, store: &Store, next: u64) -> Result<(), StoreError> {
        let frontier = Frontier::load(store, next).await?;
        self.checkpointed = store.latest_checkpoint().await?.map(|c| c.size);
        self.next_index = next;
        self.committed = frontier.clone();
        self.frontier = frontier;
        self.stale = false;
        Ok(())
    }

    /// Moves to a log of `next` entries read under the sequencing lock
    /// (several nodes): if another node appended since this one last did,
    /// the tree's frontier at that size and the last checkpoint are read
    /// again. Never called with a draft in flight.
    pub async fn sync_at(&mut self, store: &Store, next: u64) -> Result<(), StoreError> {
        if !self.stale && next == self.next_index && next == self.committed.size() {
            return Ok(());
        }
        self.reload(store, next).await
    }

    /// A new draft continuing the log, its entries under `policy_version`.
    pub fn draft(&self, policy_version: &str) -> Draft {
        Draft {
            next: self.next_index,
            commit: Commit::default(),
            policy_version: policy_version.to_string(),
        }
    }

    /// Grows a copy of the tree by the draft's entries, recording the new
    /// stored hashes in its commit.
    pub fn seal(&mut self, draft: Draft) -> Result<Sealed, StoreError> {
        let Draft {
            next, mut commit, ..
        } = draft;
        let mut frontier = self.frontier.clone();
        for entry in &commit.audit {
            if entry.index != frontier.size() {
                self.stale = true;
                return Err(StoreError::Corrupt(format!(
                    "entry {} would be appended at position {}",
                    entry.index,
                    frontier.size()
                )));
            }
            commit
                .tree_hashes
                .extend(frontier.append(entry.leaf_hash()));
        }
        Ok(Sealed {
            commit,
            next,
            frontier,
        })
    }

    /// A sealed draft is being committed: the next draft continues after it.
    pub fn launched(&mut self, next: u64, frontier: &Frontier) {
        self.next_index = next;
        self.frontier = frontier.clone();
    }

    /// A sealed draft has committed: checkpoints may cover it.
    pub fn committed(&mut self, frontier: Frontier) {
        self.committed = frontier;
    }

    /// A commit failed: whatever was built on it is void, and the state is
    /// reread before the next draft.
    pub fn failed(&mut self) {
        self.stale = true;
    }

    /// Whether the state must be reread (at start, after a failed commit).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Entries committed.
    pub fn committed_size(&self) -> u64 {
        self.committed.size()
    }

    /// Committed entries not yet covered by a checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.committed.size() - self.checkpointed.unwrap_or(0)
    }

    /// The size of the last checkpoint stored.
    pub fn last_checkpoint(&self) -> Option<u64> {
        self.checkpointed
    }

    /// A signed checkpoint of the committed tree at `now_ms`, or `None` if
    /// the last one already covers every committed entry. Once it is
    /// stored, call [`Self::checkpoint_stored`].
    pub fn checkpoint(
        &self,
        signer: &BrokerSigner,
        origin: &str,
        now_ms: i64,
    ) -> Result<Option<StoredCheckpoint>, samverkan_sdk::audit::AuditProofError> {
        let size = self.committed.size();
        if self.checkpointed == Some(size) {
            return Ok(None);
        }
        let root = self.committed.root();
        let note = signer.sign_checkpoint(origin, size, &root, now_ms, self.checkpointed)?;
        Ok(Some(StoredCheckpoint {
            size,
            root,
            at_ms: now_ms,
            note,
        }))
    }

    /// The checkpoint of `size` entries is stored.
    pub fn checkpoint_stored(&mut self, size: u64) {
        self.checkpointed = Some(size);
    }
}

/// A commit under construction: every entry added gets the next index.
#[derive(Debug)]
pub struct Draft {
    next: u64,
    /// The rows and entries so far.
    pub commit: Commit,
    policy_version: String,
}

/// The alert an entry is about, as the entry records it.
#[derive(Debug, Clone, Copy)]
pub struct AlertFacts<'a> {
    /// Its id.
    pub alert_id: &'a str,
    /// Its (authenticated) publisher.
    pub publisher: &'a str,
    /// Its logical topic.
    pub topic: &'a str,
    /// Its alert type.
    pub alert_type: &'a str,
    /// Hex SHA-256 of its signing input.
    pub envelope_hash: &'a str,
    /// The publisher's signature, base64url.
    pub signature: &'a str,
    /// Keyed hashes of the identifiers it is about, sorted and unique.
    pub subject_hashes: &'a [String],
}

/// One share of an accepted alert.
#[derive(Debug, Clone, Copy)]
pub struct ShareFacts<'a> {
    /// Its id.
    pub share_id: &'a str,
    /// The receiving agency.
    pub recipient: &'a str,
    /// The rule that allows it, with its legal basis and purpose.
    pub rule_id: &'a str,
    /// See `rule_id`.
    pub legal_basis: &'a str,
    /// See `rule_id`.
    pub purpose: &'a str,
    /// The fields disclosed, sorted.
    pub fields: &'a [String],
    /// Hex SHA-256 over the disclosed fields' digests.
    pub disclosed_digest: &'a str,
}

/// A refused alert, with whatever could be read of it.
#[derive(Debug, Clone, Copy)]
pub struct RejectionFacts<'a> {
    /// The tenant it came from.
    pub publisher: &'a str,
    /// Its id, topic, alert type, envelope hash and signature, when readable.
    pub alert_id: Option<&'a str>,
    /// See `alert_id`.
    pub topic: Option<&'a str>,
    /// See `alert_id`.
    pub alert_type: Option<&'a str>,
    /// See `alert_id`.
    pub envelope_hash: Option<&'a str>,
    /// See `alert_id`.
    pub signature: Option<&'a str>,
    /// Why.
    pub code: RejectionCode,
    /// Why, in words.
    pub reason: &'a str,
}

/// A share acknowledged for the first time.
#[derive(Debug, Clone, Copy)]
pub struct AckFacts<'a> {
    /// The share.
    pub share_id: &'a str,
    /// Its alert, publisher and topic.
    pub alert_id: &'a str,
    /// See `alert_id`.
    pub publisher: &'a str,
    /// See `alert_id`.
    pub topic: &'a str,
    /// The acknowledging agency.
    pub recipient: &'a str,
    /// The signed acknowledgement as received, and its signature (base64url).
    pub message: &'a std::sync::Arc<[u8]>,
    /// Hex SHA-256 of `message`.
    pub message_hash: &'a str,
    /// See `message`.
    pub signature: &'a str,
}

impl Draft {
    /// The index the next entry gets (the log's size after the draft).
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.commit.is_empty()
    }

    /// Adds an entry of `kind` at `at_ms`, filled in by `fill`; returns its index.
    fn push(&mut self, kind: EntryKind, at_ms: i64, fill: impl FnOnce(&mut AuditEntry)) -> u64 {
        let index = self.next;
        self.next += 1;
        let mut entry = AuditEntry::new(kind, at_ms);
        entry.index = index;
        entry.policy_version = Some(self.policy_version.clone());
        fill(&mut entry);
        self.commit.audit.push(entry);
        index
    }

    /// Entries about `alert` also index its subjects.
    fn push_about(
        &mut self,
        kind: EntryKind,
        at_ms: i64,
        alert: &AlertFacts<'_>,
        fill: impl FnOnce(&mut AuditEntry),
    ) -> u64 {
        let index = self.push(kind, at_ms, |e| {
            e.alert_id = Some(alert.alert_id.to_string());
            e.publisher = Some(alert.publisher.to_string());
            e.topic = Some(alert.topic.to_string());
            e.alert_type = Some(alert.alert_type.to_string());
            e.envelope_hash = Some(alert.envelope_hash.to_string());
            e.signature = Some(alert.signature.to_string());
            e.subject_hashes = alert.subject_hashes.to_vec();
            fill(e);
        });
        self.commit
            .subjects
            .extend(alert.subject_hashes.iter().map(|s| (s.clone(), index)));
        index
    }

    /// A `share` entry; returns its index.
    pub fn share(&mut self, at_ms: i64, alert: &AlertFacts<'_>, share: &ShareFacts<'_>) -> u64 {
        self.push_about(EntryKind::Share, at_ms, alert, |e| {
            e.recipient = Some(share.recipient.to_string());
            e.rule_id = Some(share.rule_id.to_string());
            e.legal_basis = Some(share.legal_basis.to_string());
            e.purpose = Some(share.purpose.to_string());
            e.fields = share.fields.to_vec();
            e.disclosed_digest = Some(share.disclosed_digest.to_string());
            e.share_id = Some(share.share_id.to_string());
        })
    }

    /// A `denial` entry; returns its index.
    pub fn denial(
        &mut self,
        at_ms: i64,
        alert: &AlertFacts<'_>,
        recipient: Option<&str>,
        rule_id: Option<&str>,
        code: DenialCode,
        reason: String,
    ) -> u64 {
        self.push_about(EntryKind::Denial, at_ms, alert, |e| {
            e.recipient = recipient.map(str::to_string);
            e.rule_id = rule_id.map(str::to_string);
            e.reason_code = Some(code.as_str().to_string());
            e.reason = Some(reason);
        })
    }

    /// A `rejection` entry; returns its index.
    pub fn rejection(&mut self, at_ms: i64, r: &RejectionFacts<'_>) -> u64 {
        self.push(EntryKind::Rejection, at_ms, |e| {
            e.alert_id = r.alert_id.map(str::to_string);
            e.publisher = Some(r.publisher.to_string());
            e.topic = r.topic.map(str::to_string);
            e.alert_type = r.alert_type.map(str::to_string);
            e.envelope_hash = r.envelope_hash.map(str::to_string);
            e.signature = r.signature.map(str::to_string);
            e.reason_code = Some(r.code.as_str().to_string());
            e.reason = Some(r.reason.to_string());
        })
    }

    /// An `ack` entry, and the share's acknowledgement row; returns the entry's index.
    pub fn ack(&mut self, at_ms: i64, ack: &AckFacts<'_>) -> u64 {
        let index = self.push(EntryKind::Ack, at_ms, |e| {
            e.alert_id = Some(ack.alert_id.to_string());
            e.publisher = Some(ack.publisher.to_string());
            e.recipient = Some(ack.recipient.to_string());
            e.topic = Some(ack.topic.to_string());
            e.share_id = Some(ack.share_id.to_string());
            e.signature = Some(ack.signature.to_string());
        });
        self.commit.acks.push(AckUpdate {
            share_id: ack.share_id.to_string(),
            recipient: ack.recipient.to_string(),
            acked_at_ms: at_ms,
            ack_audit_idx: index,
            message_hash: ack.message_hash.to_string(),
            ack_message: ack.message.clone(),
        });
        index
    }

    /// A `policy_loaded` entry, archiving the policy's text in the same
    /// commit; `first` if this version was never archived before.
    pub fn policy_loaded(
        &mut self,
        at_ms: i64,
        policy: &crate::policy::PolicySet,
        first: bool,
    ) -> u64 {
        self.commit.policy = Some(PolicyArchive {
            version: policy.version().to_string(),
            files_json: serde_json::to_string(policy.files()).unwrap_or_default(),
            at_ms,
        });
        let reason = format!(
            "policy {} in force ({} agencies, {} rules)",
            policy.short_version(),
            policy.agencies().len(),
            policy.rules().len()
        );
        let version = policy.version().to_string();
        self.push(EntryKind::PolicyLoaded, at_ms, |e| {
            e.policy_version = Some(version);
            e.reason_code = Some(
                if first {
                    AuditReason::FirstLoad
                } else {
                    AuditReason::Load
                }
                .as_str()
                .to_string(),
            );
            e.reason = Some(reason);
        })
    }

    /// A `key_revoked` entry for `key`, revoked by the policy in force.
    pub fn key_revoked(&mut self, at_ms: i64, key: &samverkan_sdk::keys::AgencyKey) -> u64 {
        let revoked_at = key.revoked_at_ms.unwrap_or_default();
        let reason = format!(
            "signing key `{}` of `{}` is revoked from {}{}",
            key.key_id,
            key.owner,
            samverkan_sdk::time::format_ms(revoked_at),
            key.revocation_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        self.push(EntryKind::KeyRevoked, at_ms, |e| {
            e.publisher = Some(key.owner.clone());
            e.reason_code = Some(AuditReason::KeyRevoked.as_str().to_string());
            e.reason = Some(reason);
        })
    }

    /// A `retention_purge` entry, and the purge itself: `alerts` alerts and
    /// `deliveries` deliveries of `alert_type` received before `cutoff_ms`,
    /// kept `days` days.
    pub fn retention_purge(
        &mut self,
        at_ms: i64,
        alert_type: &str,
        cutoff_ms: i64,
        days: u32,
        (alerts, deliveries): (u64, u64),
    ) -> u64 {
        self.commit.purges.push(Purge {
            alert_type: alert_type.to_string(),
            cutoff_ms,
        });
        let reason = format!(
            "content of {alerts} alerts and {deliveries} deliveries received before {} purged ({days} days of retention)",
            samverkan_sdk::time::format_ms(cutoff_ms)
        );
        self.push(EntryKind::RetentionPurge, at_ms, |e| {
            e.alert_type = Some(alert_type.to_string());
            e.reason_code = Some(AuditReason::Retention.as_str().to_string());
            e.reason = Some(reason);
        })
    }

    /// An `auditor_access` entry: `organization` did `action` (`reason`
    /// says who and what); `alert_id` for case pages, `subject_hash` for
    /// subject searches.
    pub fn auditor_access(
        &mut self,
        at_ms: i64,
        organization: &str,
        action: AccessAction,
        reason: String,
        alert_id: Option<String>,
        subject_hash: Option<String>,
    ) -> u64 {
        let index = self.push(EntryKind::AuditorAccess, at_ms, |e| {
            e.recipient = Some(organization.to_string());
            e.alert_id = alert_id;
            e.reason_code = Some(action.as_str().to_string());
            e.reason = Some(reason);
            e.subject_hashes = subject_hash.iter().cloned().collect();
        });
        if let Some(hash) = subject_hash {
            self.commit.subjects.push((hash, index));
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert<'a>(subjects: &'a [String]) -> AlertFacts<'a> {
        AlertFacts {
            alert_id: "a1",
            publisher: "polisen",
            topic: "akrim/ost/inspection",
            alert_type: "akrim.inspection_result",
            envelope_hash: "00",
            signature: "sig",
            subject_hashes: subjects,
        }
    }

    #[test]
    fn entries_are_numbered_in_order_and_carry_the_policy_version() {
        let appender = Appender::empty();
        let mut draft = appender.draft("v1");
        let subjects = vec!["h1".to_string(), "h2".to_string()];
        let fields = vec!["orgnr".to_string()];
        let share = ShareFacts {
            share_id: "s1",
            recipient: "skatteverket",
            rule_id: "r1",
            legal_basis: "lag",
            purpose: "p",
            fields: &fields,
            disclosed_digest: "dd",
        };
        assert_eq!(draft.share(5, &alert(&subjects), &share), 0);
        assert_eq!(
            draft.denial(
                5,
                &alert(&subjects),
                None,
                None,
                DenialCode::NoRuleForAlert,
                "none".into()
            ),
            1
        );
        assert_eq!(draft.next_index(), 2);
        let audit = &draft.commit.audit;
        assert!(
            audit
                .iter()
                .all(|e| e.policy_version.as_deref() == Some("v1"))
        );
        assert_eq!(audit[1].reason_code.as_deref(), Some("no_rule_for_alert"));
        // Both entries index both subjects.
        assert_eq!(draft.commit.subjects.len(), 4);
        assert_eq!(draft.commit.subjects[3], ("h2".to_string(), 1));
    }

    #[test]
    fn sealing_grows_the_tree_and_refuses_a_gap() {
        let mut appender = Appender::empty();
        let mut draft = appender.draft("v1");
        draft.auditor_access(1, "tillsynen", AccessAction::Search, "x".into(), None, None);
        draft.auditor_access(
            2,
            "tillsynen",
            AccessAction::Subject,
            "y".into(),
            None,
            Some("h".into()),
        );
        let sealed = appender.seal(draft).unwrap();
        assert_eq!((sealed.next, sealed.frontier.size()), (2, 2));
        // Two leaves and their parent.
        assert_eq!(sealed.commit.tree_hashes.len(), 3);
        assert_eq!(sealed.commit.subjects, vec![("h".to_string(), 1)]);
        appender.launched(sealed.next, &sealed.frontier);
        // Built on the sealed draft before it committed: continues at 2.
        let mut next = appender.draft("v1");
        assert_eq!(
            next.auditor_access(3, "tillsynen", AccessAction::Case, "z".into(), None, None),
            2
        );
        // Not committed yet: nothing to checkpoint.
        assert_eq!(appender.since_checkpoint(), 0);
        appender.committed(sealed.frontier);
        assert_eq!(appender.since_checkpoint(), 2);

        let mut gap = appender.draft("v1");
        gap.commit.audit.push(AuditEntry::new(EntryKind::Share, 0));
        assert!(matches!(appender.seal(gap), Err(StoreError::Corrupt(_))));
    }
}
