//! Reads of the audit log and of what it records: entries by index,
//! filter and alert, the archived policy texts, and the rows `audit verify`
//! holds against the entries.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::dialect::{BindValue, to_i64};
use super::{Store, StoreError, records};
use crate::audit::{AuditEntry, EntryKind};
use samverkan_sdk::audit::evidence::PolicyFile;

/// Filters for [`Store::audit_query`]; every set filter must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// The alert id.
    pub alert_id: Option<String>,
    /// An agency, as publisher or recipient.
    pub agency: Option<String>,
    /// The rule.
    pub rule_id: Option<String>,
    /// The legal basis.
    pub legal_basis: Option<String>,
    /// The alert type.
    pub alert_type: Option<String>,
    /// The entry kind.
    pub kind: Option<EntryKind>,
    /// Entries at or after this time.
    pub from_ms: Option<i64>,
    /// Entries before this time.
    pub to_ms: Option<i64>,
    /// Entries about this subject (keyed hash).
    pub subject_hash: Option<String>,
    /// At most this many entries (oldest first).
    pub limit: Option<u64>,
}

/// An accepted alert as `audit verify` reads it back.
#[derive(Debug, Clone)]
pub struct StoredAlert {
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
    /// When the broker received it.
    pub received_at_ms: i64,
    /// The policy version that decided.
    pub policy_version: String,
    /// The envelope without disclosures (JSON).
    pub signed_envelope: Vec<u8>,
    /// The complete envelope, unless purged.
    pub content: Option<Vec<u8>>,
    /// The signed receipt (JSON), rebuilt from the alert's entries.
    pub receipt: Vec<u8>,
    /// The alert's share and denial entries: `[first_idx, first_idx + entries)`.
    pub first_idx: u64,
    /// See `first_idx`.
    pub entries: u64,
}

/// What an alert row stores of its receipt.
pub(super) struct StoredReceipt {
    pub publisher: String,
    pub alert_id: String,
    pub envelope_hash: String,
    pub policy_version: String,
    pub received_at_ms: i64,
    pub first_idx: u64,
    pub entries: u64,
    key_id: String,
    signature: Vec<u8>,
}

impl StoredReceipt {
    /// Reads the receipt's columns of an `alerts` row.
    pub(super) fn decode(row: &AnyRow) -> Result<Self, StoreError> {
        let index = |col: &str| -> Result<u64, StoreError> {
            let v: i64 = row.try_get(col)?;
            u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("alerts.{col} is negative")))
        };
        Ok(Self {
            publisher: row.try_get("publisher")?,
            alert_id: row.try_get("alert_id")?,
            envelope_hash: row.try_get("envelope_hash")?,
            policy_version: row.try_get("policy_version")?,
            received_at_ms: row.try_get("received_at_ms")?,
            first_idx: index("first_idx")?,
            entries: index("entries")?,
            key_id: row.try_get("receipt_key_id")?,
            signature: row.try_get("receipt_signature")?,
        })
    }

    /// The signed receipt, from the alert's entries (others are ignored).
    pub(super) fn rebuild(&self, entries: &[AuditEntry]) -> Vec<u8> {
        let end = self.first_idx + self.entries;
        let mine: Vec<AuditEntry> = entries
            .iter()
            .filter(|e| e.index >= self.first_idx && e.index < end)
            .cloned()
            .collect();
        records::receipt(
            records::ReceiptFacts {
                publisher: &self.publisher,
                alert_id: &self.alert_id,
                envelope_hash: &self.envelope_hash,
                policy_version: &self.policy_version,
                received_at_ms: self.received_at_ms,
                key_id: self.key_id.clone(),
                signature: self.signature.clone(),
            },
            &mine,
        )
    }
}

/// Column lists, in bind order.
pub(super) const AUDIT_COLUMNS: &str = "idx, kind, at_ms, alert_id, publisher, recipient, topic, alert_type, rule_id, legal_basis, purpose, fields, disclosed_digest, envelope_hash, signature, policy_version, share_id, reason_code, reason, subject_hashes, leaf_hash";

impl Store {
    /// Audit entries with index in `[from, to)`, in order.
    pub async fn audit_range(&self, from: u64, to: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_i64(from))
            .bind(to_i64(to))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_audit).collect()
    }

    /// Audit entries with index in `[from, to)` with their stored leaf hashes.
    pub async fn audit_range_with_leaves(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(AuditEntry, Vec<u8>)>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_i64(from))
            .bind(to_i64(to))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((decode_audit(row)?, row.try_get::<Vec<u8>, _>("leaf_hash")?)))
            .collect()
    }

    /// Number of audit entries and the highest index + 1.
    pub async fn audit_extent(&self) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(idx) + 1, 0) AS next FROM audit_entries",
        )
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        let next: i64 = row.try_get("next")?;
        Ok((
            u64::try_from(n).unwrap_or(0),
            u64::try_from(next).unwrap_or(0),
        ))
    }

    /// Audit entries matching `filter`, oldest first.
    pub async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut binds: Vec<BindValue> = Vec::new();
        let mut add = |clause: &dyn Fn(usize) -> String, value: BindValue| {
            binds.push(value);
            conditions.push(clause(binds.len()));
        };
        if let Some(v) = &filter.alert_id {
            add(&|n| format!("alert_id = ${n}"), BindValue::Text(v.clone()));
        }
        if let Some(v) = &filter.agency {
            add(
                &|n| format!("(publisher = ${n} OR recipient = ${n})"),
                BindValue::Text(v.clone()),
            );
        }
        if let Some(v) = &filter.rule_id {
            add(&|n| format!("rule_id = ${n}"), BindValue::Text(v.clone()));
        }
        if let Some(v) = &filter.legal_basis {
            add(
                &|n| format!("legal_basis = ${n}"),
                BindValue::Text(v.clone()),
            );
        }
        if let Some(v) = &filter.alert_type {
            add(
                &|n| format!("alert_type = ${n}"),
                BindValue::Text(v.clone()),
            );
        }
        if let Some(v) = &filter.kind {
            add(
                &|n| format!("kind = ${n}"),
                BindValue::Text(v.as_str().to_string()),
            );
        }
        if let Some(v) = filter.from_ms {
            add(&|n| format!("at_ms >= ${n}"), BindValue::Int(v));
        }
        if let Some(v) = filter.to_ms {
            add(&|n| format!("at_ms < ${n}"), BindValue::Int(v));
        }
        if let Some(v) = &filter.subject_hash {
            add(
                &|n| format!("idx IN (SELECT idx FROM audit_subjects WHERE subject_hash = ${n})"),
                BindValue::Text(v.clone()),
            );
        }
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_entries");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY idx");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = b.bind_to(q);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(decode_audit).collect()
    }

    /// All audit entries about one alert, in order.
    pub async fn audit_for_alert(&self, alert_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let sql =
            format!("SELECT {AUDIT_COLUMNS} FROM audit_entries WHERE alert_id = $1 ORDER BY idx");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(alert_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_audit).collect()
    }

    /// The publisher's envelope without disclosures, as stored for evidence.
    pub async fn signed_envelope(
        &self,
        publisher: &str,
        alert_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query(
            "SELECT signed_envelope FROM alerts WHERE publisher = $1 AND alert_id = $2",
        )
        .bind(publisher.to_string())
        .bind(alert_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("signed_envelope")).transpose()?)
    }

    /// The complete stored envelope (personal data), unless purged.
    pub async fn alert_content(
        &self,
        publisher: &str,
        alert_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query(
            "SELECT signed_envelope, disclosures FROM alerts WHERE publisher = $1 AND alert_id = $2",
        )
        .bind(publisher.to_string())
        .bind(alert_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let signed: Vec<u8> = row.try_get("signed_envelope")?;
        let disclosures: Option<Vec<u8>> = row.try_get("disclosures")?;
        disclosures
            .map(|d| records::envelope(&signed, &d).map(|e| e.to_json()))
            .transpose()
    }

    /// The files of an archived policy version.
    pub async fn policy_files(&self, version: &str) -> Result<Option<Vec<PolicyFile>>, StoreError> {
        let row = sqlx::query("SELECT files FROM policy_versions WHERE version = $1")
            .bind(version.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get("files")?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("policy_versions.files: {e}")))
    }

    /// Every archived policy version with the time it was first loaded.
    pub async fn policy_versions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, first_loaded_ms FROM policy_versions ORDER BY first_loaded_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("version")?, r.try_get("first_loaded_ms")?)))
            .collect()
    }

    /// The alerts that the share and denial entries with index in
    /// `[from, to)` are about, with their receipts rebuilt.
    pub async fn alerts_of_entries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let rows = sqlx::query(
            "SELECT publisher, alert_id, envelope_hash, alert_type, topic, received_at_ms, policy_version, signed_envelope, disclosures, first_idx, entries, receipt_key_id, receipt_signature FROM alerts \
             WHERE (publisher, alert_id) IN (SELECT publisher, alert_id FROM audit_entries WHERE idx >= $1 AND idx < $2 AND kind IN ('share', 'denial'))",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await?;
        let receipts = rows
            .iter()
            .map(StoredReceipt::decode)
            .collect::<Result<Vec<_>, _>>()?;
        // The entries of all of them at once (an alert's entries may reach
        // beyond the range).
        let low = receipts.iter().map(|r| r.first_idx).min().unwrap_or(0);
        let high = receipts
            .iter()
            .map(|r| r.first_idx + r.entries)
            .max()
            .unwrap_or(0);
        let entries = if receipts.is_empty() {
            Vec::new()
        } else {
            self.audit_range(low, high).await?
        };
        rows.iter()
            .zip(receipts)
            .map(|(r, receipt)| {
                let signed_envelope: Vec<u8> = r.try_get("signed_envelope")?;
                let content = r
                    .try_get::<Option<Vec<u8>>, _>("disclosures")?
                    .map(|d| records::envelope(&signed_envelope, &d).map(|e| e.to_json()))
                    .transpose()?;
                Ok(StoredAlert {
                    publisher: r.try_get("publisher")?,
                    alert_id: r.try_get("alert_id")?,
                    envelope_hash: r.try_get("envelope_hash")?,
                    alert_type: r.try_get("alert_type")?,
                    topic: r.try_get("topic")?,
                    received_at_ms: r.try_get("received_at_ms")?,
                    policy_version: r.try_get("policy_version")?,
                    signed_envelope,
                    content,
                    receipt: receipt.rebuild(&entries),
                    first_idx: receipt.first_idx,
                    entries: receipt.entries,
                })
            })
            .collect()
    }

    /// The subject index rows `(subject_hash, idx)` of the entries with
    /// index in `[from, to)`.
    pub async fn subjects_of_entries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject_hash, idx FROM audit_subjects WHERE idx >= $1 AND idx < $2",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let idx: i64 = r.try_get("idx")?;
                Ok((
                    r.try_get("subject_hash")?,
                    u64::try_from(idx).map_err(|_| StoreError::Corrupt("negative idx".into()))?,
                ))
            })
            .collect()
    }

    /// Rows that refer to no entry of a log of `size` entries: deliveries
    /// and subject rows of later indices, and alerts no entry records.
    pub async fn rows_without_entries(&self, size: u64) -> Result<(u64, u64, u64), StoreError> {
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql)
                .bind(to_i64(size))
                .fetch_one(&self.pool)
                .await?;
            let n: i64 = row.try_get("n")?;
            Ok::<u64, StoreError>(u64::try_from(n).unwrap_or(0))
        };
        Ok((
            count("SELECT COUNT(*) AS n FROM deliveries WHERE audit_idx >= $1").await?,
            count("SELECT COUNT(*) AS n FROM audit_subjects WHERE idx >= $1").await?,
            count(
                "SELECT COUNT(*) AS n FROM alerts a WHERE $1 >= 0 AND NOT EXISTS \
                 (SELECT 1 FROM audit_entries e WHERE e.alert_id = a.alert_id AND e.publisher = a.publisher)",
            )
            .await?,
        ))
    }
}

pub(super) fn decode_audit(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let kind: String = row.try_get("kind")?;
    let list = |col: &str| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(col)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
    };
    let idx: i64 = row.try_get("idx")?;
    Ok(AuditEntry {
        index: u64::try_from(idx).map_err(|_| StoreError::Corrupt("negative idx".into()))?,
        kind: EntryKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown entry kind `{kind}`")))?,
        at_ms: row.try_get("at_ms")?,
        alert_id: row.try_get("alert_id")?,
        publisher: row.try_get("publisher")?,
        recipient: row.try_get("recipient")?,
        topic: row.try_get("topic")?,
        alert_type: row.try_get("alert_type")?,
        rule_id: row.try_get("rule_id")?,
        legal_basis: row.try_get("legal_basis")?,
        purpose: row.try_get("purpose")?,
        fields: list("fields")?,
        disclosed_digest: row.try_get("disclosed_digest")?,
        envelope_hash: row.try_get("envelope_hash")?,
        signature: row.try_get("signature")?,
        policy_version: row.try_get("policy_version")?,
        share_id: row.try_get("share_id")?,
        reason_code: row.try_get("reason_code")?,
        reason: row.try_get("reason")?,
        subject_hashes: list("subject_hashes")?,
    })
}
