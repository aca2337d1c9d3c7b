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
//!
//! The modules follow the concerns: `dialect` (what differs between the
//! backends), `write` (the commit of a batch), `audit` (reads of the log),
//! `tree` (the Merkle tree's hashes), `deliveries` (queue, acknowledgements,
//! replay), `retention` (purges), `checkpoints` (signed tree heads and
//! cosignatures) and [`console`] (the auditor console's searches).

use std::sync::Once;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use thiserror::Error;

mod audit;
mod checkpoints;
pub mod console;
mod deliveries;
mod dialect;
mod records;
mod retention;
mod tree;
mod upgrade;
mod write;

pub use audit::{AuditFilter, StoredAlert};
pub use checkpoints::{StoredCheckpoint, StoredCosignature};
pub use deliveries::{PendingDelivery, QueuePosition, ReplayDelivery, StoredDelivery};
pub use dialect::Backend;
pub use retention::Purge;
pub use write::{AckUpdate, AlertRow, Commit, DeliveryRow, KnownAlert, PolicyArchive};

// Shared with the console's reads.
use audit::{AUDIT_COLUMNS, decode_audit};
use dialect::{AnyQuery, BindValue, to_i64};

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

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    /// Reads.
    pool: AnyPool,
    /// One connection for every write: the batch commits, checkpoints and
    /// cosignatures. A commit on a connection that has just written keeps
    /// SQLite's page cache (a connection drops its whole cache when another
    /// one has written) and its prepared statements; taking turns over the
    /// read pool's connections made every commit reread the indexes' pages,
    /// and so did each checkpoint stored from the read pool.
    writer: AnyPool,
    backend: Backend,
}

static DRIVERS: Once = Once::new();

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
            .after_connect(move |conn, _| Box::pin(async move { backend.prepare(conn).await }))
            .connect(&url)
            .await?;
        backend.migrator().run(&pool).await?;
        upgrade::from_v3(&pool, backend).await?;
        backend.after_migrations(&pool).await?;
        let writer = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move { backend.prepare_writer(conn).await })
            })
            .connect(&url)
            .await?;
        Ok(Self {
            pool,
            writer,
            backend,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes all connections.
    pub async fn close(&self) {
        self.writer.close().await;
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
}
