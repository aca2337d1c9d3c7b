//! Durable state in SQLite (the embedded default) or PostgreSQL, through
//! sqlx: accepted alerts, the audit log, the delivery queue and archived
//! policy versions.
//!
//! One implementation serves both databases through sqlx's `Any` driver:
//! the SQL is written once with `$n` placeholders (both backends accept
//! them), and what differs — migrations, connection pragmas — is chosen by
//! [`Backend`]. Everything one batch of alerts produces is written in one
//! transaction ([`Store::commit`]): nothing is acknowledged to anyone before
//! that transaction has committed.

use std::collections::HashMap;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};
use thiserror::Error;

use crate::audit::{AuditEntry, EntryKind};

/// Why the store failed. Every variant means "not recorded": the caller
/// must not acknowledge anything that depended on it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database URL `{0}` (use sqlite://PATH or postgres://…)")]
    UnsupportedUrl(String),
    /// The database could not be reached or refused the operation.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not decode (tampered or corrupt).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    fn of_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    fn migrator(self) -> Migrator {
        let sql: &'static str = match self {
            Backend::Sqlite => include_str!("../../migrations/sqlite/0001_init.sql"),
            Backend::Postgres => include_str!("../../migrations/postgres/0001_init.sql"),
        };
        Migrator::with_migrations(vec![Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            sqlx::SqlStr::from_static(sql),
            false,
        )])
    }
}

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
    /// The complete envelope (JSON).
    pub content: Vec<u8>,
    /// The signed receipt (JSON).
    pub receipt: Vec<u8>,
}

/// A share waiting for its recipient.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// The share id.
    pub share_id: String,
    /// The receiving agency.
    pub recipient: String,
    /// The alert shared.
    pub alert_id: String,
    /// Its publisher.
    pub publisher: String,
    /// The logical topic.
    pub topic: String,
    /// The share's audit entry.
    pub audit_idx: u64,
    /// The signed delivery message (JSON).
    pub payload: Vec<u8>,
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
}

impl Commit {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.audit.is_empty()
            && self.deliveries.is_empty()
            && self.acks.is_empty()
    }
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
    /// The recipient's signed acknowledgement (JSON).
    pub ack_message: Vec<u8>,
}

/// A stored delivery that is not acknowledged yet.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// The share.
    pub share_id: String,
    /// The alert.
    pub alert_id: String,
    /// Its publisher.
    pub publisher: String,
    /// The logical topic.
    pub topic: String,
    /// The signed delivery message, unless purged.
    pub payload: Option<Vec<u8>>,
}

/// What is stored about an alert that was already accepted.
#[derive(Debug, Clone)]
pub struct KnownAlert {
    /// Hex SHA-256 of its signing input.
    pub envelope_hash: String,
    /// The receipt that was sent.
    pub receipt: Vec<u8>,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static DRIVERS: Once = Once::new();

/// Column lists, in bind order.
const AUDIT_COLUMNS: &str = "idx, kind, at_ms, alert_id, publisher, recipient, topic, alert_type, rule_id, legal_basis, purpose, fields, disclosed_digest, envelope_hash, signature, policy_version, share_id, reason_code, reason, subject_hashes, leaf_hash";
const ALERT_COLUMNS: &str = "publisher, alert_id, envelope_hash, alert_type, topic, issued_at_ms, received_at_ms, policy_version, signed_envelope, content, receipt";
const DELIVERY_COLUMNS: &str =
    "share_id, recipient, alert_id, publisher, topic, audit_idx, payload, created_at_ms";

/// `($1, …, $k), ($k+1, …)` for `rows` rows of `cols` columns.
fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(r * cols + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// Rows per INSERT statement: SQLite allows 32766 bound values.
const MAX_BINDS: usize = 30_000;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the single writer;
                        // FULL makes every commit durable across power loss
                        // (group commit keeps that affordable).
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        backend.migrator().run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes all connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The index the next audit entry gets.
    pub async fn next_audit_index(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS next FROM audit_entries")
            .fetch_one(&self.pool)
            .await?;
        let next: i64 = row.try_get("next")?;
        Ok(u64::try_from(next).unwrap_or(0))
    }

    /// Alerts already accepted, by (publisher, alert id).
    pub async fn known_alerts(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), KnownAlert>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(500) {
            let mut sql = String::from(
                "SELECT publisher, alert_id, envelope_hash, receipt FROM alerts WHERE (publisher, alert_id) IN (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
            }
            sql.push(')');
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (publisher, alert_id) in chunk {
                q = q.bind(publisher.clone()).bind(alert_id.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                let key = (row.try_get("publisher")?, row.try_get("alert_id")?);
                out.insert(
                    key,
                    KnownAlert {
                        envelope_hash: row.try_get("envelope_hash")?,
                        receipt: row.try_get("receipt")?,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Writes a batch in one transaction.
    pub async fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        if c.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in c.alerts.chunks(MAX_BINDS / 11) {
            let sql = format!(
                "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES {}",
                placeholders(chunk.len(), 11)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for a in chunk {
                q = q
                    .bind(a.publisher.clone())
                    .bind(a.alert_id.clone())
                    .bind(a.envelope_hash.clone())
                    .bind(a.alert_type.clone())
                    .bind(a.topic.clone())
                    .bind(a.issued_at_ms)
                    .bind(a.received_at_ms)
                    .bind(a.policy_version.clone())
                    .bind(a.signed_envelope.clone())
                    .bind(a.content.clone())
                    .bind(a.receipt.clone());
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in c.audit.chunks(MAX_BINDS / 21) {
            let sql = format!(
                "INSERT INTO audit_entries ({AUDIT_COLUMNS}) VALUES {}",
                placeholders(chunk.len(), 21)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(to_i64(e.index))
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
                    .bind(e.leaf_hash().to_vec());
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in c.deliveries.chunks(MAX_BINDS / 8) {
            let sql = format!(
                "INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES {}",
                placeholders(chunk.len(), 8)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for d in chunk {
                q = q
                    .bind(d.share_id.clone())
                    .bind(d.recipient.clone())
                    .bind(d.alert_id.clone())
                    .bind(d.publisher.clone())
                    .bind(d.topic.clone())
                    .bind(to_i64(d.audit_idx))
                    .bind(d.payload.clone())
                    .bind(d.created_at_ms);
            }
            q.execute(&mut *tx).await?;
        }
        for a in &c.acks {
            sqlx::query(
                "UPDATE deliveries SET acked_at_ms = $1, ack_audit_idx = $2, ack_message = $3 WHERE share_id = $4 AND recipient = $5 AND acked_at_ms IS NULL",
            )
            .bind(a.acked_at_ms)
            .bind(to_i64(a.ack_audit_idx))
            .bind(a.ack_message.clone())
            .bind(a.share_id.clone())
            .bind(a.recipient.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Of the given shares, those stored for `recipient` and not yet acknowledged.
    pub async fn unacked_among(
        &self,
        recipient: &str,
        share_ids: &[String],
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let mut out = Vec::new();
        for chunk in share_ids.chunks(500) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT share_id, alert_id, publisher, topic FROM deliveries WHERE recipient = $1 AND acked_at_ms IS NULL AND share_id IN ({list})"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(recipient.to_string());
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(PendingDelivery {
                    share_id: row.try_get("share_id")?,
                    alert_id: row.try_get("alert_id")?,
                    publisher: row.try_get("publisher")?,
                    topic: row.try_get("topic")?,
                    payload: None,
                });
            }
        }
        Ok(out)
    }

    /// The oldest `limit` unacknowledged deliveries of `recipient`, with payloads.
    pub async fn pending_deliveries(
        &self,
        recipient: &str,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT share_id, alert_id, publisher, topic, payload FROM deliveries WHERE recipient = $1 AND acked_at_ms IS NULL ORDER BY created_at_ms, audit_idx LIMIT $2",
        )
        .bind(recipient.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PendingDelivery {
                    share_id: row.try_get("share_id")?,
                    alert_id: row.try_get("alert_id")?,
                    publisher: row.try_get("publisher")?,
                    topic: row.try_get("topic")?,
                    payload: row.try_get("payload")?,
                })
            })
            .collect()
    }

    /// Records the text of a policy version if it is not archived yet.
    pub async fn archive_policy(
        &self,
        version: &str,
        files_json: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO policy_versions (version, first_loaded_ms, files) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
        )
        .bind(version.to_string())
        .bind(at_ms)
        .bind(files_json.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

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

    /// Number of deliveries stored for a recipient.
    pub async fn delivery_count(&self, recipient: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM deliveries WHERE recipient = $1")
            .bind(recipient.to_string())
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn decode_audit(row: &AnyRow) -> Result<AuditEntry, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_row_major() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
