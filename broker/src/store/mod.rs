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

use std::str::FromStr;
use std::sync::{Arc, Once, RwLock};
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use thiserror::Error;
use tracing::warn;

mod audit;
mod checkpoints;
pub mod console;
mod deliveries;
mod dialect;
mod handoffs;
pub mod hosts;
mod records;
mod retention;
mod sequence;
mod tree;
mod upgrade;
mod write;

pub use audit::{AuditFilter, StoredAlert};
pub use checkpoints::{StoredCheckpoint, StoredCosignature};
pub use deliveries::{PendingDelivery, QueuePosition, ReplayDelivery, StoredDelivery};
pub use dialect::Backend;
pub use handoffs::{Claim, HANDOFF_CHANNEL, Handoff};
pub use retention::Purge;
pub use sequence::Append;
pub use write::{AckUpdate, AlertRow, Commit, DeliveryRow, HandoffRow, KnownAlert, PolicyArchive};

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
    /// The no-fork guard stopped this node: the database does not contain
    /// the newest published checkpoint (`cluster.rs`).
    #[error("appends and signatures stopped by the no-fork guard: {0}")]
    Forked(String),
    /// None of the database's hosts accepts writes (a failover is under way).
    #[error("no writable PostgreSQL primary: {0}")]
    NoPrimary(String),
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
    /// The single-host URLs of the database (one, unless the URL lists a
    /// primary and its standbys).
    hosts: Arc<Vec<String>>,
    /// The one of `hosts` written to.
    target: Arc<RwLock<String>>,
}

static DRIVERS: Once = Once::new();

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::of_url(url)?;
        let hosts = hosts::hosts_of(url);
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            Backend::Postgres if hosts.len() > 1 => hosts::find_primary(&hosts).await?,
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
            hosts: Arc::new(hosts),
            target: Arc::new(RwLock::new(url)),
        })
    }

    /// `host:port` of the database written to.
    pub fn target_host(&self) -> String {
        hosts::host_of(&self.target_url())
    }

    /// The URL of the database written to (for a `LISTEN` connection of its own).
    pub fn target_url(&self) -> String {
        self.target.read().map(|u| u.clone()).unwrap_or_default()
    }

    /// Whether the URL lists several hosts (a primary and its standbys).
    pub fn has_standbys(&self) -> bool {
        self.hosts.len() > 1
    }

    /// Points every new connection at the host that now accepts writes, if
    /// that is no longer the one written to. Connections to the old one
    /// fail on their next use and are replaced.
    async fn follow_primary(&self) -> Result<(), StoreError> {
        let primary = hosts::find_primary(&self.hosts).await?;
        let changed = match self.target.write() {
            Ok(mut target) if *target != primary => {
                *target = primary.clone();
                true
            }
            _ => false,
        };
        if changed {
            let options = AnyConnectOptions::from_str(&primary)?;
            self.pool.set_connect_options(options.clone());
            self.writer.set_connect_options(options);
            warn!(primary = %hosts::host_of(&primary), "the database primary changed: writing to the new one");
        }
        Ok(())
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

    /// Whether the database answers and, when it has standbys, whether the
    /// host written to still accepts writes; if not, finds the one that
    /// does (a failover), or fails while none does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if !self.has_standbys() {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            return Ok(());
        }
        let in_recovery = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query("SELECT CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS r")
                .fetch_one(&self.pool),
        )
        .await;
        match in_recovery {
            Ok(Ok(row)) if sqlx::Row::try_get::<i32, _>(&row, "r").ok() == Some(0) => Ok(()),
            // Down, in recovery or not answering: look for the writable one.
            _ => self.follow_primary().await,
        }
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
