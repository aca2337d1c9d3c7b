//! The write path: everything one batch of alerts produces, committed in
//! one transaction, and what the appender reads before it writes.

use std::collections::HashMap;

use sqlx::{Any, AssertSqlSafe, Row};

use super::audit::AUDIT_COLUMNS;
use super::deliveries::DELIVERY_COLUMNS;
use samverkan_sdk::envelope::Base64Url;
use samverkan_sdk::messages::Signed;

use super::dialect::{Script, insert_rows, json_list, placeholders, placeholders_after, to_i64};
use super::records;
use super::{Purge, Store, StoreError, console};
use crate::audit::{AuditEntry, EntryKind};

/// An accepted alert, as stored.
#[derive(Debug, Clone)]
pub struct AlertRow {
    /// The publishing agency.
    pub publisher: String,
    /// The publisher's alert id.
    pub alert_id: String,
    /// Hex SHA-256 of the signing input.
    pub envelope_hash: String,
    /// The alert type.
    pub alert_type: String,
    /// The logical topic.
    pub topic: String,
    /// The publisher's signing time.
    pub issued_at_ms: i64,
    /// When the broker received it.
    pub received_at_ms: i64,
    /// The policy version that decided.
    pub policy_version: String,
    /// The envelope without disclosures (JSON).
    pub signed_envelope: Vec<u8>,
    /// The envelope's field values (personal data), as disclosed.
    pub disclosures: Vec<Base64Url>,
    /// The signed receipt. Only its key id and signature are stored: its
    /// body is rebuilt from the alert's share and denial entries, which
    /// must be in the same commit, with consecutive indexes.
    pub receipt: Signed,
}

/// A share waiting for its recipient.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// The share id.
    pub share_id: String,
    /// The receiving agency.
    pub recipient: String,
    /// The share's audit entry.
    pub audit_idx: u64,
    /// The broker-signed share stamp. Only its key id and signature are
    /// stored: the body is rebuilt from the share's entry, and the delivery
    /// message from the alert's field values and the stamp.
    pub stamp: Signed,
    /// When it was recorded.
    pub created_at_ms: i64,
}

/// Everything one batch of alerts writes, committed atomically.
#[derive(Debug, Default)]
pub struct Commit {
    /// Newly accepted alerts.
    pub alerts: Vec<AlertRow>,
    /// New audit entries, with consecutive indices continuing the log.
    pub audit: Vec<AuditEntry>,
    /// New deliveries.
    pub deliveries: Vec<DeliveryRow>,
    /// Deliveries acknowledged by their recipient.
    pub acks: Vec<AckUpdate>,
    /// New stored hashes of the Merkle tree, by stored-hash index.
    pub tree_hashes: Vec<(u64, [u8; 32])>,
    /// Subject hash → audit entry index.
    pub subjects: Vec<(String, u64)>,
    /// Content to purge after its retention period.
    pub purges: Vec<Purge>,
    /// A policy version to archive (if it is not yet).
    pub policy: Option<PolicyArchive>,
    /// Shares whose recipient has no connection on this node: another node
    /// that holds one claims them.
    pub handoffs: Vec<HandoffRow>,
}

/// A share handed off to the node that holds its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffRow {
    /// The share's audit entry.
    pub audit_idx: u64,
    /// Its recipient.
    pub recipient: String,
    /// When it was recorded.
    pub created_at_ms: i64,
}

impl From<&DeliveryRow> for HandoffRow {
    fn from(d: &DeliveryRow) -> Self {
        Self {
            audit_idx: d.audit_idx,
            recipient: d.recipient.clone(),
            created_at_ms: d.created_at_ms,
        }
    }
}

impl Commit {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.audit.is_empty()
            && self.deliveries.is_empty()
            && self.acks.is_empty()
            && self.tree_hashes.is_empty()
            && self.subjects.is_empty()
            && self.purges.is_empty()
            && self.policy.is_none()
            && self.handoffs.is_empty()
    }
}

/// The text of a policy version, archived with the entry that records its load.
#[derive(Debug, Clone)]
pub struct PolicyArchive {
    /// The version.
    pub version: String,
    /// Its files, as JSON.
    pub files_json: String,
    /// When it was first loaded.
    pub at_ms: i64,
}

/// A delivery acknowledged by its recipient.
#[derive(Debug, Clone)]
pub struct AckUpdate {
    /// The share.
    pub share_id: String,
    /// The acknowledging recipient.
    pub recipient: String,
    /// When the broker recorded the acknowledgement.
    pub acked_at_ms: i64,
    /// The acknowledgement's audit entry.
    pub ack_audit_idx: u64,
    /// Hex SHA-256 of the signed acknowledgement that covered it.
    pub message_hash: String,
    /// The recipient's signed acknowledgement (JSON), stored once per
    /// message: shared by the shares it acknowledges, not copied per share.
    pub ack_message: std::sync::Arc<[u8]>,
}

/// What is stored about an alert that was already accepted.
#[derive(Debug, Clone)]
pub struct KnownAlert {
    /// Hex SHA-256 of its signing input.
    pub envelope_hash: String,
    /// The receipt that was sent.
    pub receipt: Vec<u8>,
}

/// Column list of `alerts`, in bind order.
const ALERT_COLUMNS: &str = "publisher, alert_id, envelope_hash, alert_type, topic, issued_at_ms, received_at_ms, policy_version, signed_envelope, disclosures, first_idx, entries, receipt_key_id, receipt_signature";
/// Hashes per row of `tree_hashes`: a proof reads about 2·log₂(n) hashes,
/// each from a row of at most 1 KiB.
pub(super) const TREE_ROW: usize = 32;

impl Store {
    /// The index the next audit entry gets.
    pub async fn next_audit_index(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS next FROM audit_entries")
            .fetch_one(&self.pool)
            .await?;
        let next: i64 = row.try_get("next")?;
        Ok(u64::try_from(next).unwrap_or(0))
    }

    /// Alerts already accepted, by (publisher, alert id), with the
    /// receipt that was sent (rebuilt from their entries).
    pub async fn known_alerts(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), KnownAlert>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT publisher, alert_id, envelope_hash, policy_version, received_at_ms, first_idx, entries, receipt_key_id, receipt_signature FROM alerts WHERE (publisher, alert_id) IN ({})",
                placeholders(self.backend, chunk.len(), 2)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (publisher, alert_id) in chunk {
                q = q.bind(publisher.clone()).bind(alert_id.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                let stored = super::audit::StoredReceipt::decode(&row)?;
                let entries = self
                    .audit_range(stored.first_idx, stored.first_idx + stored.entries)
                    .await?;
                let receipt = stored.rebuild(&entries);
                out.insert(
                    (stored.publisher, stored.alert_id),
                    KnownAlert {
                        envelope_hash: stored.envelope_hash,
                        receipt,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Whether the text of a policy version is archived.
    pub async fn policy_archived(&self, version: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM policy_versions WHERE version = $1")
            .bind(version.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Writes a batch in one transaction.
    pub async fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        if c.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        self.write(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the rows of `c` in the open transaction `tx`.
    pub(super) async fn write(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        c: &Commit,
    ) -> Result<(), StoreError> {
        let b = self.backend;
        let mut script = Script::new(b);
        let ranges = alert_entry_ranges(c)?;
        insert_rows(
            &mut script,
            tx,
            &format!("INSERT INTO alerts ({ALERT_COLUMNS})"),
            14,
            &c.alerts,
            |q, a| {
                let (first, count) = ranges
                    .get(&(a.publisher.as_str(), a.alert_id.as_str()))
                    .copied()
                    .unwrap_or((0, 0));
                q.bind(a.publisher.clone())
                    .bind(a.alert_id.clone())
                    .bind(a.envelope_hash.clone())
                    .bind(a.alert_type.clone())
                    .bind(a.topic.clone())
                    .bind(a.issued_at_ms)
                    .bind(a.received_at_ms)
                    .bind(a.policy_version.clone())
                    .bind(a.signed_envelope.clone())
                    .bind(records::encode_disclosures(&a.disclosures))
                    .bind(to_i64(first))
                    .bind(to_i64(count))
                    .bind(a.receipt.key_id.clone())
                    .bind(a.receipt.signature.0.clone())
            },
        )
        .await?;
        insert_rows(
            &mut script,
            tx,
            &format!("INSERT INTO audit_entries ({AUDIT_COLUMNS})"),
            21,
            &c.audit,
            |q, e| {
                q.bind(to_i64(e.index))
                    .bind(e.kind.as_str())
                    .bind(e.at_ms)
                    .bind(e.alert_id.clone())
                    .bind(e.publisher.clone())
                    .bind(e.recipient.clone())
                    .bind(e.topic.clone())
                    .bind(e.alert_type.clone())
                    .bind(e.rule_id.clone())
                    .bind(e.legal_basis.clone())
                    .bind(e.purpose.clone())
                    .bind(json_list(&e.fields))
                    .bind(e.disclosed_digest.clone())
                    .bind(e.envelope_hash.clone())
                    .bind(e.signature.clone())
                    .bind(e.policy_version.clone())
                    .bind(e.share_id.clone())
                    .bind(e.reason_code.clone())
                    .bind(e.reason.clone())
                    .bind(json_list(&e.subject_hashes))
                    .bind(e.leaf_hash().to_vec())
            },
        )
        .await?;
        let day_counts = console::day_counts(&c.audit);
        insert_rows(
            &mut script,
            tx,
            "INSERT INTO audit_day_counts (day, kind, publisher, recipient, legal_basis, n)| \
             ON CONFLICT (day, kind, publisher, recipient, legal_basis) \
             DO UPDATE SET n = audit_day_counts.n + excluded.n",
            6,
            &day_counts,
            |q, (k, n)| {
                q.bind(k.day)
                    .bind(k.kind.clone())
                    .bind(k.publisher.clone())
                    .bind(k.recipient.clone())
                    .bind(k.legal_basis.clone())
                    .bind(*n)
            },
        )
        .await?;
        insert_rows(
            &mut script,
            tx,
            &format!("INSERT INTO deliveries ({DELIVERY_COLUMNS})"),
            6,
            &c.deliveries,
            |q, d| {
                q.bind(to_i64(d.audit_idx))
                    .bind(d.recipient.clone())
                    .bind(d.share_id.clone())
                    .bind(d.created_at_ms)
                    .bind(d.stamp.key_id.clone())
                    .bind(d.stamp.signature.0.clone())
            },
        )
        .await?;
        // Acknowledgements: each signed message once, by the first entry
        // it produced, and the shares marked per recipient and time.
        let mut messages: Vec<(&str, u64, &[u8])> = Vec::new();
        for a in &c.acks {
            match messages.iter_mut().find(|(h, _, _)| *h == a.message_hash) {
                Some((_, first, _)) => *first = (*first).min(a.ack_audit_idx),
                None => messages.push((&a.message_hash, a.ack_audit_idx, &a.ack_message)),
            }
        }
        insert_rows(
            &mut script,
            tx,
            "INSERT INTO ack_messages (first_idx, message)",
            2,
            &messages,
            |q, (_, first, message)| q.bind(to_i64(*first)).bind(message.to_vec()),
        )
        .await?;
        let mut groups: Vec<((&str, i64), Vec<&str>)> = Vec::new();
        for a in &c.acks {
            let key = (a.recipient.as_str(), a.acked_at_ms);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ids)) => ids.push(&a.share_id),
                None => groups.push((key, vec![&a.share_id])),
            }
        }
        for ((recipient, at_ms), ids) in &groups {
            for chunk in ids.chunks(256) {
                let sql = format!(
                    "UPDATE deliveries SET acked_at_ms = {} WHERE recipient = {} AND acked_at_ms IS NULL AND share_id IN {}",
                    placeholders_after(b, 0, 1).trim_matches(|c| c == '(' || c == ')'),
                    placeholders_after(b, 1, 1).trim_matches(|c| c == '(' || c == ')'),
                    placeholders_after(b, 2, chunk.len())
                );
                script
                    .add(tx, &sql, |binds| {
                        let mut binds = binds.bind(*at_ms).bind(recipient.to_string());
                        for id in chunk {
                            binds = binds.bind(id.to_string());
                        }
                        binds
                    })
                    .await?;
            }
        }
        let tree_rows = tree_rows(&c.tree_hashes);
        insert_rows(
            &mut script,
            tx,
            "INSERT INTO tree_hashes (first_idx, hashes)",
            2,
            &tree_rows,
            |q, (first, hashes)| q.bind(to_i64(*first)).bind(hashes.clone()),
        )
        .await?;
        insert_rows(&mut script, tx, "INSERT INTO audit_subjects (subject_hash, idx)| ON CONFLICT (subject_hash, idx) DO NOTHING", 2, &c.subjects, |q, (hash, idx)| {
            q.bind(hash.clone()).bind(to_i64(*idx))
        })
        .await?;
        if let Some(p) = &c.policy {
            let sql = format!(
                "INSERT INTO policy_versions (version, first_loaded_ms, files) VALUES {} ON CONFLICT (version) DO NOTHING",
                placeholders(b, 1, 3)
            );
            script
                .add(tx, &sql, |binds| {
                    binds
                        .bind(p.version.clone())
                        .bind(p.at_ms)
                        .bind(p.files_json.clone())
                })
                .await?;
        }
        insert_rows(
            &mut script,
            tx,
            "INSERT INTO delivery_handoffs (audit_idx, recipient, created_at_ms)| \
             ON CONFLICT (audit_idx) DO NOTHING",
            3,
            &c.handoffs,
            |q, h| {
                q.bind(to_i64(h.audit_idx))
                    .bind(h.recipient.clone())
                    .bind(h.created_at_ms)
            },
        )
        .await?;
        script.run(tx).await?;
        for p in &c.purges {
            p.apply(tx).await?;
        }
        Ok(())
    }
}

/// `(publisher, alert id)` → `(first entry index, count)`.
type EntryRanges<'a> = HashMap<(&'a str, &'a str), (u64, u64)>;

/// The share and denial entries of each accepted alert of a commit, as
/// `(first index, count)`; they must be consecutive (the receipt lists them
/// and is rebuilt from that range).
fn alert_entry_ranges(c: &Commit) -> Result<EntryRanges<'_>, StoreError> {
    let mut spans: HashMap<(&str, &str), (u64, u64, u64)> = HashMap::new();
    for e in &c.audit {
        if !matches!(e.kind, EntryKind::Share | EntryKind::Denial) {
            continue;
        }
        let (Some(publisher), Some(alert_id)) = (&e.publisher, &e.alert_id) else {
            continue;
        };
        let span = spans
            .entry((publisher.as_str(), alert_id.as_str()))
            .or_insert((e.index, e.index, 0));
        span.0 = span.0.min(e.index);
        span.1 = span.1.max(e.index);
        span.2 += 1;
    }
    let mut out = HashMap::new();
    for a in &c.alerts {
        let key = (a.publisher.as_str(), a.alert_id.as_str());
        if let Some((first, last, count)) = spans.get(&key).copied() {
            if last - first + 1 != count {
                return Err(StoreError::Corrupt(format!(
                    "the entries of alert {} are not consecutive",
                    a.alert_id
                )));
            }
            out.insert(key, (first, count));
        }
    }
    Ok(out)
}

/// New tree hashes as rows: each run of consecutive indexes (a commit adds
/// one) cut into rows of at most [`TREE_ROW`] hashes.
pub(super) fn tree_rows(hashes: &[(u64, [u8; 32])]) -> Vec<(u64, Vec<u8>)> {
    let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
    for (idx, hash) in hashes {
        match rows.last_mut() {
            Some((first, bytes))
                if *first + (bytes.len() / 32) as u64 == *idx && bytes.len() < TREE_ROW * 32 =>
            {
                bytes.extend_from_slice(hash)
            }
            _ => rows.push((*idx, hash.to_vec())),
        }
    }
    rows
}
