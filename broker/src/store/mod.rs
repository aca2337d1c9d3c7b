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
use samverkan_sdk::audit::evidence::PolicyFile;

pub mod console;

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

    /// The migrations, in order; a database created by an older broker gets
    /// the ones it lacks at the next start.
    fn migrator(self) -> Migrator {
        let files: [(&'static str, &'static str); 3] = match self {
            Backend::Sqlite => [
                (
                    "init",
                    include_str!("../../migrations/sqlite/0001_init.sql"),
                ),
                (
                    "cosignatures",
                    include_str!("../../migrations/sqlite/0002_cosignatures.sql"),
                ),
                (
                    "console",
                    include_str!("../../migrations/sqlite/0003_console.sql"),
                ),
            ],
            Backend::Postgres => [
                (
                    "init",
                    include_str!("../../migrations/postgres/0001_init.sql"),
                ),
                (
                    "cosignatures",
                    include_str!("../../migrations/postgres/0002_cosignatures.sql"),
                ),
                (
                    "console",
                    include_str!("../../migrations/postgres/0003_console.sql"),
                ),
            ],
        };
        Migrator::with_migrations(
            files
                .into_iter()
                .zip(1..)
                .map(|((name, sql), version)| {
                    Migration::new(
                        version,
                        name.into(),
                        MigrationType::Simple,
                        sqlx::SqlStr::from_static(sql),
                        false,
                    )
                })
                .collect(),
        )
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
    /// Its alert type (for retention).
    pub alert_type: String,
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
    /// New stored hashes of the Merkle tree, by stored-hash index.
    pub tree_hashes: Vec<(u64, [u8; 32])>,
    /// Subject hash → audit entry index.
    pub subjects: Vec<(String, u64)>,
    /// Content to purge after its retention period.
    pub purges: Vec<Purge>,
    /// A policy version to archive (if it is not yet).
    pub policy: Option<PolicyArchive>,
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

/// Content of one alert type stored before a cutoff, to be purged.
#[derive(Debug, Clone)]
pub struct Purge {
    /// The alert type.
    pub alert_type: String,
    /// Content received before this time is purged.
    pub cutoff_ms: i64,
}

/// A witness's cosignature of a checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCosignature {
    /// The checkpoint's size.
    pub size: u64,
    /// The witness (agency id).
    pub witness: String,
    /// The witness's verifier key at the time.
    pub vkey: String,
    /// The cosignature line, with its line feed.
    pub line: String,
    /// When the broker received it.
    pub at_ms: i64,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// When it was signed.
    pub at_ms: i64,
    /// The signed note.
    pub note: String,
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
    /// The signed receipt (JSON).
    pub receipt: Vec<u8>,
}

/// A delivery row as `audit verify` reads it back.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    /// The share id.
    pub share_id: String,
    /// The receiving agency.
    pub recipient: String,
    /// The alert shared.
    pub alert_id: String,
    /// Its publisher.
    pub publisher: String,
    /// Its alert type.
    pub alert_type: String,
    /// The logical topic.
    pub topic: String,
    /// The share's audit entry.
    pub audit_idx: u64,
    /// The signed delivery message, unless purged.
    pub payload: Option<Vec<u8>>,
    /// When it was recorded.
    pub created_at_ms: i64,
}

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
    /// Hex SHA-256 of the signed acknowledgement that covered it.
    pub message_hash: String,
    /// The recipient's signed acknowledgement (JSON), stored once per message.
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

/// Where a replay stands in an agency's delivery queue: the (creation time,
/// audit index) of the last share it sent, the order replays follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuePosition {
    /// `created_at_ms` of the delivery.
    pub created_at_ms: i64,
    /// `audit_idx` of the delivery.
    pub audit_idx: i64,
}

impl QueuePosition {
    /// Before every delivery.
    pub const START: QueuePosition = QueuePosition {
        created_at_ms: i64::MIN,
        audit_idx: i64::MIN,
    };
}

/// An unacknowledged delivery to send again, and where it stands in the queue.
#[derive(Debug, Clone)]
pub struct ReplayDelivery {
    /// The share.
    pub share_id: String,
    /// The logical topic.
    pub topic: String,
    /// The signed delivery message, exactly as first sent.
    pub payload: Vec<u8>,
    /// Its place in the queue.
    pub position: QueuePosition,
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
const DELIVERY_COLUMNS: &str = "share_id, recipient, alert_id, publisher, alert_type, topic, audit_idx, payload, created_at_ms";

/// `($1, …, $k), ($k+1, …)` for `rows` rows of `cols` columns.
///
/// SQLite gets anonymous `?` placeholders: sqlx looks every parameter up by
/// name, and SQLite's name lookup is linear, so numbered placeholders make
/// a statement's binding quadratic in its size (it was a tenth of the
/// broker's CPU time under load).
fn placeholders(backend: Backend, rows: usize, cols: usize) -> String {
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
            match backend {
                Backend::Sqlite => s.push('?'),
                Backend::Postgres => {
                    s.push('$');
                    s.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        s.push(')');
    }
    s
}

/// `(…)` with `n` placeholders numbered from `after + 1` (PostgreSQL) or anonymous (SQLite).
fn placeholders_after(backend: Backend, after: usize, n: usize) -> String {
    let mut s = String::from("(");
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        match backend {
            Backend::Sqlite => s.push('?'),
            Backend::Postgres => {
                s.push('$');
                s.push_str(&(after + i + 1).to_string());
            }
        }
    }
    s.push(')');
    s
}

/// Rows per multi-row INSERT. Only these few sizes are used (a batch of 300
/// rows is written as 256 + 32 + 8 + 4), so every statement comes from
/// sqlx's prepared-statement cache instead of being parsed anew per batch.
const CHUNKS: [usize; 6] = [256, 64, 32, 8, 4, 1];

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Inserts `rows` with `insert` (`INSERT INTO t (cols)`), `cols` values per
/// row. `insert` may end with `…ON CONFLICT DO NOTHING` after a `|`.
async fn insert_rows<T>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    insert: &str,
    cols: usize,
    rows: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &T) -> AnyQuery<'q>,
) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let size = CHUNKS
            .iter()
            .copied()
            .find(|&c| c <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        let (head, tail_sql) = insert.split_once('|').unwrap_or((insert, ""));
        let sql = format!(
            "{head} VALUES {}{tail_sql}",
            placeholders(backend, size, cols)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            q = bind(q, row);
        }
        q.execute(&mut **tx).await?;
        rest = tail;
    }
    Ok(())
}

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
                        // The log is copied into the database file by
                        // `checkpoint_wal`, off the commit path; a commit
                        // does it itself only if that falls 64 MiB behind.
                        conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
                        conn.execute("PRAGMA journal_size_limit = 67108864").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        backend.migrator().run(&pool).await?;
        if backend == Backend::Sqlite {
            // Statistics for the planner (which of the console's indexes
            // narrows a search most), gathered when the tables have grown
            // since the last time, on a sample: quick even on a large log.
            // PostgreSQL's autovacuum keeps its own.
            sqlx::query("PRAGMA optimize = 0x10002")
                .execute(&pool)
                .await?;
        }
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

    /// Copies committed pages from SQLite's write-ahead log into the
    /// database file without waiting for readers or the writer (a passive
    /// checkpoint). Left to commits, this work made every commit under load
    /// two to three times slower; run in the background, it costs them
    /// nothing. A no-op on PostgreSQL.
    pub async fn checkpoint_wal(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.pool)
                .await?;
        }
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
            let sql = format!(
                "SELECT publisher, alert_id, envelope_hash, receipt FROM alerts WHERE (publisher, alert_id) IN ({})",
                placeholders(self.backend, chunk.len(), 2)
            );
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
        let b = self.backend;
        let mut tx = self.pool.begin().await?;
        insert_rows(
            &mut tx,
            b,
            &format!("INSERT INTO alerts ({ALERT_COLUMNS})"),
            11,
            &c.alerts,
            |q, a| {
                q.bind(a.publisher.clone())
                    .bind(a.alert_id.clone())
                    .bind(a.envelope_hash.clone())
                    .bind(a.alert_type.clone())
                    .bind(a.topic.clone())
                    .bind(a.issued_at_ms)
                    .bind(a.received_at_ms)
                    .bind(a.policy_version.clone())
                    .bind(a.signed_envelope.clone())
                    .bind(a.content.clone())
                    .bind(a.receipt.clone())
            },
        )
        .await?;
        insert_rows(
            &mut tx,
            b,
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
            &mut tx,
            b,
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
            &mut tx,
            b,
            &format!("INSERT INTO deliveries ({DELIVERY_COLUMNS})"),
            9,
            &c.deliveries,
            |q, d| {
                q.bind(d.share_id.clone())
                    .bind(d.recipient.clone())
                    .bind(d.alert_id.clone())
                    .bind(d.publisher.clone())
                    .bind(d.alert_type.clone())
                    .bind(d.topic.clone())
                    .bind(to_i64(d.audit_idx))
                    .bind(d.payload.clone())
                    .bind(d.created_at_ms)
            },
        )
        .await?;
        // Acknowledgements: the signed messages once each, a row per share,
        // and the shares marked in bulk.
        let mut messages: Vec<(&str, &[u8])> = Vec::new();
        for a in &c.acks {
            if !messages.iter().any(|(h, _)| *h == a.message_hash) {
                messages.push((&a.message_hash, &a.ack_message));
            }
        }
        insert_rows(
            &mut tx,
            b,
            "INSERT INTO ack_messages (message_hash, message)| ON CONFLICT (message_hash) DO NOTHING",
            2,
            &messages,
            |q, (hash, message)| q.bind(hash.to_string()).bind(message.to_vec()),
        )
        .await?;
        insert_rows(&mut tx, b, "INSERT INTO acks (share_id, recipient, acked_at_ms, ack_audit_idx, message_hash)| ON CONFLICT (share_id) DO NOTHING", 5, &c.acks, |q, a| {
            q.bind(a.share_id.clone())
                .bind(a.recipient.clone())
                .bind(a.acked_at_ms)
                .bind(to_i64(a.ack_audit_idx))
                .bind(a.message_hash.clone())
        })
        .await?;
        for chunk in c.acks.chunks(256) {
            let sql = format!(
                "UPDATE deliveries SET acked_at_ms = {} WHERE share_id IN {} AND acked_at_ms IS NULL",
                placeholders(b, 1, 1).trim_matches(|c| c == '(' || c == ')'),
                placeholders_after(b, 1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(chunk[0].acked_at_ms);
            for a in chunk {
                q = q.bind(a.share_id.clone());
            }
            q.execute(&mut *tx).await?;
        }
        insert_rows(
            &mut tx,
            b,
            "INSERT INTO tree_hashes (idx, hash)",
            2,
            &c.tree_hashes,
            |q, (idx, hash)| q.bind(to_i64(*idx)).bind(hash.to_vec()),
        )
        .await?;
        insert_rows(&mut tx, b, "INSERT INTO audit_subjects (subject_hash, idx)| ON CONFLICT (subject_hash, idx) DO NOTHING", 2, &c.subjects, |q, (hash, idx)| {
            q.bind(hash.clone()).bind(to_i64(*idx))
        })
        .await?;
        if let Some(p) = &c.policy {
            sqlx::query(
                "INSERT INTO policy_versions (version, first_loaded_ms, files) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
            )
            .bind(p.version.clone())
            .bind(p.at_ms)
            .bind(p.files_json.clone())
            .execute(&mut *tx)
            .await?;
        }
        for p in &c.purges {
            sqlx::query(
                "UPDATE alerts SET content = NULL WHERE alert_type = $1 AND received_at_ms < $2 AND content IS NOT NULL",
            )
            .bind(p.alert_type.clone())
            .bind(p.cutoff_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE deliveries SET payload = NULL WHERE alert_type = $1 AND created_at_ms < $2 AND payload IS NOT NULL",
            )
            .bind(p.alert_type.clone())
            .bind(p.cutoff_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The alert types of which content is still stored, including types
    /// no longer in the policy (their content is kept for the default
    /// retention period, never forever).
    pub async fn alert_types_with_content(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT alert_type FROM alerts WHERE content IS NOT NULL \
             UNION SELECT DISTINCT alert_type FROM deliveries WHERE payload IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>("alert_type")
                    .map_err(StoreError::from)
            })
            .collect()
    }

    /// How much content of `alert_type` received before `cutoff_ms` is still
    /// stored: (alerts, deliveries).
    pub async fn purgeable(
        &self,
        alert_type: &str,
        cutoff_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql)
                .bind(alert_type.to_string())
                .bind(cutoff_ms)
                .fetch_one(&self.pool)
                .await?;
            let n: i64 = row.try_get("n")?;
            Ok::<u64, StoreError>(u64::try_from(n).unwrap_or(0))
        };
        Ok((
            count("SELECT COUNT(*) AS n FROM alerts WHERE alert_type = $1 AND received_at_ms < $2 AND content IS NOT NULL").await?,
            count("SELECT COUNT(*) AS n FROM deliveries WHERE alert_type = $1 AND created_at_ms < $2 AND payload IS NOT NULL").await?,
        ))
    }

    /// Stored tree hashes by stored-hash index (missing ones are left out).
    pub async fn tree_hashes(&self, indexes: &[u64]) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
        let mut out = HashMap::new();
        for chunk in indexes.chunks(500) {
            let list = placeholders(self.backend, 1, chunk.len());
            let sql = format!("SELECT idx, hash FROM tree_hashes WHERE idx IN {list}");
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for i in chunk {
                q = q.bind(to_i64(*i));
            }
            for row in q.fetch_all(&self.pool).await? {
                let (idx, hash) = decode_tree_hash(&row)?;
                out.insert(idx, hash);
            }
        }
        Ok(out)
    }

    /// Stored tree hashes with index in `[from, to)`, in order.
    pub async fn tree_hash_range(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, hash FROM tree_hashes WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_tree_hash).collect()
    }

    /// Stores a signed checkpoint.
    pub async fn insert_checkpoint(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO checkpoints (size, root, at_ms, note) VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING")
            .bind(to_i64(cp.size))
            .bind(cp.root.to_vec())
            .bind(cp.at_ms)
            .bind(cp.note.clone())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores witnesses' cosignatures (each once per checkpoint and key), in
    /// one transaction.
    pub async fn insert_cosignatures(&self, rows: &[StoredCosignature]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for c in rows {
            sqlx::query("INSERT INTO cosignatures (size, witness, vkey, line, at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (size, vkey) DO NOTHING")
                .bind(to_i64(c.size))
                .bind(c.witness.clone())
                .bind(c.vkey.clone())
                .bind(c.line.clone())
                .bind(c.at_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The cosignatures of the checkpoint of `size`, by witness.
    pub async fn cosignatures(&self, size: u64) -> Result<Vec<StoredCosignature>, StoreError> {
        let rows = sqlx::query(
            "SELECT size, witness, vkey, line, at_ms FROM cosignatures WHERE size = $1 ORDER BY witness",
        )
        .bind(to_i64(size))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get("size")?;
                Ok(StoredCosignature {
                    size: u64::try_from(size).unwrap_or(0),
                    witness: r.try_get("witness")?,
                    vkey: r.try_get("vkey")?,
                    line: r.try_get("line")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect()
    }

    /// The largest checkpoint size the witness key `vkey` cosigned, if any.
    pub async fn last_cosigned(&self, vkey: &str) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> =
            sqlx::query_scalar("SELECT MAX(size) FROM cosignatures WHERE vkey = $1")
                .bind(vkey.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }

    /// The checkpoint of exactly `size`.
    pub async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = sqlx::query("SELECT size, root, at_ms, note FROM checkpoints WHERE size = $1")
            .bind(to_i64(size))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_checkpoint).transpose()
    }

    /// All checkpoints, by size.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows = sqlx::query("SELECT size, root, at_ms, note FROM checkpoints ORDER BY size")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_checkpoint).collect()
    }

    /// The smallest checkpoint whose tree has more than `index` entries.
    pub async fn checkpoint_covering(
        &self,
        index: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT size, root, at_ms, note FROM checkpoints WHERE size > $1 ORDER BY size LIMIT 1",
        )
        .bind(to_i64(index))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_checkpoint).transpose()
    }

    /// The newest checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT size, root, at_ms, note FROM checkpoints ORDER BY size DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_checkpoint).transpose()
    }

    /// Up to `limit` checkpoints larger than `after` (all, if `None`), by size.
    pub async fn checkpoints_after(
        &self,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT size, root, at_ms, note FROM checkpoints WHERE size > $1 ORDER BY size LIMIT $2",
        )
        .bind(after.map_or(-1, to_i64))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_checkpoint).collect()
    }

    /// The alerts that the share and denial entries with index in
    /// `[from, to)` are about.
    pub async fn alerts_of_entries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let rows = sqlx::query(
            "SELECT publisher, alert_id, envelope_hash, alert_type, topic, received_at_ms, policy_version, signed_envelope, content, receipt FROM alerts \
             WHERE alert_id IN (SELECT alert_id FROM audit_entries WHERE idx >= $1 AND idx < $2 AND kind IN ('share', 'denial'))",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAlert {
                    publisher: r.try_get("publisher")?,
                    alert_id: r.try_get("alert_id")?,
                    envelope_hash: r.try_get("envelope_hash")?,
                    alert_type: r.try_get("alert_type")?,
                    topic: r.try_get("topic")?,
                    received_at_ms: r.try_get("received_at_ms")?,
                    policy_version: r.try_get("policy_version")?,
                    signed_envelope: r.try_get("signed_envelope")?,
                    content: r.try_get("content")?,
                    receipt: r.try_get("receipt")?,
                })
            })
            .collect()
    }

    /// The deliveries of the entries with index in `[from, to)`.
    pub async fn deliveries_of_entries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE audit_idx >= $1 AND audit_idx < $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_i64(from))
            .bind(to_i64(to))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let idx: i64 = r.try_get("audit_idx")?;
                Ok(StoredDelivery {
                    share_id: r.try_get("share_id")?,
                    recipient: r.try_get("recipient")?,
                    alert_id: r.try_get("alert_id")?,
                    publisher: r.try_get("publisher")?,
                    alert_type: r.try_get("alert_type")?,
                    topic: r.try_get("topic")?,
                    audit_idx: u64::try_from(idx)
                        .map_err(|_| StoreError::Corrupt("negative audit_idx".into()))?,
                    payload: r.try_get("payload")?,
                    created_at_ms: r.try_get("created_at_ms")?,
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
            q = match b {
                BindValue::Text(t) => q.bind(t),
                BindValue::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
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
        let row = sqlx::query("SELECT content FROM alerts WHERE publisher = $1 AND alert_id = $2")
            .bind(publisher.to_string())
            .bind(alert_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.try_get::<Option<Vec<u8>>, _>("content").ok().flatten()))
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

    /// Of the given shares, those stored for `recipient` and not yet acknowledged.
    pub async fn unacked_among(
        &self,
        recipient: &str,
        share_ids: &[String],
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let mut out = Vec::new();
        for chunk in share_ids.chunks(500) {
            // The recipient is the first value, then the share ids.
            let all = placeholders(self.backend, 1, chunk.len() + 1);
            let (first, rest) = all
                .trim_matches(|c| c == '(' || c == ')')
                .split_once(", ")
                .unwrap_or(("?", ""));
            let sql = format!(
                "SELECT share_id, alert_id, publisher, topic FROM deliveries WHERE recipient = {first} AND acked_at_ms IS NULL AND share_id IN ({rest})"
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

    /// The oldest `limit` unacknowledged deliveries of `recipient` whose
    /// content has not been purged (a purged share is no longer delivered).
    pub async fn pending_deliveries(
        &self,
        recipient: &str,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT share_id, alert_id, publisher, topic, payload FROM deliveries WHERE recipient = $1 AND acked_at_ms IS NULL AND payload IS NOT NULL ORDER BY created_at_ms, audit_idx LIMIT $2",
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

    /// The oldest `limit` unacknowledged, unpurged deliveries of
    /// `recipient` after `after`, in replay order.
    pub async fn replay_page(
        &self,
        recipient: &str,
        after: QueuePosition,
        limit: u32,
    ) -> Result<Vec<ReplayDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT share_id, topic, payload, created_at_ms, audit_idx FROM deliveries WHERE recipient = $1 AND acked_at_ms IS NULL AND payload IS NOT NULL AND (created_at_ms > $2 OR (created_at_ms = $3 AND audit_idx > $4)) ORDER BY created_at_ms, audit_idx LIMIT $5",
        )
        .bind(recipient.to_string())
        .bind(after.created_at_ms)
        .bind(after.created_at_ms)
        .bind(after.audit_idx)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReplayDelivery {
                    share_id: row.try_get("share_id")?,
                    topic: row.try_get("topic")?,
                    payload: row.try_get("payload")?,
                    position: QueuePosition {
                        created_at_ms: row.try_get("created_at_ms")?,
                        audit_idx: row.try_get("audit_idx")?,
                    },
                })
            })
            .collect()
    }

    /// How many unacknowledged, unpurged deliveries of `recipient` come after `after`.
    pub async fn replay_remaining(
        &self,
        recipient: &str,
        after: QueuePosition,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM deliveries WHERE recipient = $1 AND acked_at_ms IS NULL AND payload IS NOT NULL AND (created_at_ms > $2 OR (created_at_ms = $3 AND audit_idx > $4))",
        )
        .bind(recipient.to_string())
        .bind(after.created_at_ms)
        .bind(after.created_at_ms)
        .bind(after.audit_idx)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Whether the text of a policy version is archived.
    pub async fn policy_archived(&self, version: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM policy_versions WHERE version = $1")
            .bind(version.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
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

enum BindValue {
    Text(String),
    Int(i64),
}

fn decode_tree_hash(row: &AnyRow) -> Result<(u64, [u8; 32]), StoreError> {
    let idx: i64 = row.try_get("idx")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("tree hash {idx} is not 32 bytes")))?;
    Ok((u64::try_from(idx).unwrap_or(0), hash))
}

fn decode_checkpoint(row: &AnyRow) -> Result<StoredCheckpoint, StoreError> {
    let size: i64 = row.try_get("size")?;
    let root: Vec<u8> = row.try_get("root")?;
    Ok(StoredCheckpoint {
        size: u64::try_from(size).unwrap_or(0),
        root: root
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("checkpoint {size}: root is not 32 bytes")))?,
        at_ms: row.try_get("at_ms")?,
        note: row.try_get("note")?,
    })
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
        assert_eq!(
            placeholders(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Backend::Sqlite, 1, 2), "(?, ?)");
    }
}
