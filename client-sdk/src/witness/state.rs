//! The witness's state, in one SQLite file: its key, the log it witnesses,
//! every checkpoint it cosigned, the cosigned checkpoints the broker
//! published that it has seen, and the conflicts it found.
//!
//! The key lives in the same file as the state on purpose: a witness that
//! lost its state could otherwise cosign, with the same key, a log that
//! contradicts what it cosigned before. Losing the file loses the key, and
//! a new state comes only with a new key (`samverkan-client witness init`),
//! which the federation must put into `witnesses.toml` before it counts.
//!
//! The size check and the store of a new checkpoint happen in one
//! statement, so no request, and no second process on the same file, can
//! roll the state back; `--evidence` reads the file while the witness runs.

use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use thiserror::Error;

use crate::audit::proof::NodeHash;

/// Why the state cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// There is no state file.
    #[error(
        "{0}: there is no witness state. If this witness ran before, its state is lost: it must not cosign again with its old key. Run `samverkan-client witness init` to make a new state with a new key, and have the federation replace the witness's key in policies/witnesses.toml"
    )]
    Missing(String),
    /// The state file exists already (init refuses to overwrite it).
    #[error("{0}: a witness state exists already; it is never overwritten")]
    Exists(String),
    /// SQLite failed.
    #[error("witness state: {0}")]
    Database(#[from] sqlx::Error),
    /// The file could not be created.
    #[error("witness state: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not hold what a witness state holds.
    #[error("witness state is damaged: {0}")]
    Corrupt(String),
}

/// Who the witness is.
pub struct Identity {
    /// Its key name.
    pub key_name: String,
    /// Its cosigning key.
    pub key: SigningKey,
    /// The origin of the log it witnesses.
    pub origin: String,
}

/// A checkpoint the witness holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: NodeHash,
    /// The broker's signing time (ms).
    pub time_ms: i64,
    /// The signed note as received.
    pub note: String,
}

/// Misbehaviour of the log found by the witness, with both signed notes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    /// When it was found (ms since the epoch).
    pub found_ms: i64,
    /// `split_view`, `rollback` or `inconsistent`.
    pub kind: String,
    /// What contradicts what.
    pub reason: String,
    /// The checkpoint the witness held.
    pub held: String,
    /// The checkpoint that contradicts it.
    pub offered: String,
}

const SCHEMA: &str = "
CREATE TABLE witness_identity (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    key_name   TEXT    NOT NULL,
    secret_key BLOB    NOT NULL,
    origin     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE cosigned (
    size        INTEGER PRIMARY KEY,
    root        BLOB    NOT NULL,
    time_ms     INTEGER NOT NULL,
    note        TEXT    NOT NULL,
    cosigned_ms INTEGER NOT NULL
);
CREATE TABLE seen (
    size INTEGER NOT NULL,
    root BLOB    NOT NULL,
    time_ms INTEGER NOT NULL,
    note TEXT    NOT NULL,
    PRIMARY KEY (size, root)
);
CREATE TABLE conflicts (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    found_ms INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    held     TEXT    NOT NULL,
    offered  TEXT    NOT NULL
);
";

/// Checkpoints published by the broker that are kept for the cross-check
/// beyond those cosigned (the newest ones).
const SEEN_KEPT: i64 = 10_000;

/// The open state.
#[derive(Clone)]
pub struct WitnessState {
    pool: SqlitePool,
}

async fn connect(path: &Path, create: bool) -> Result<SqlitePool, StateError> {
    let url = format!("sqlite://{}", path.display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(5));
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn held(row: &sqlx::sqlite::SqliteRow) -> Result<Held, StateError> {
    let size: i64 = row.try_get("size")?;
    let root: Vec<u8> = row.try_get("root")?;
    Ok(Held {
        size: u64::try_from(size).map_err(|_| StateError::Corrupt(format!("size {size}")))?,
        root: root
            .try_into()
            .map_err(|_| StateError::Corrupt(format!("root of size {size} is not 32 bytes")))?,
        time_ms: row.try_get("time_ms")?,
        note: row.try_get("note")?,
    })
}

impl WitnessState {
    /// Creates a new state at `path` with a new random key; refuses if a
    /// file is there.
    pub async fn create(path: &Path, key_name: &str, origin: &str) -> Result<Self, StateError> {
        let display = path.display().to_string();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(display));
            }
            Err(e) => return Err(e.into()),
        }
        let pool = connect(path, false).await?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| StateError::Corrupt(format!("no randomness: {e}")))?;
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO witness_identity (one, key_name, secret_key, origin, created_ms) VALUES (1, ?, ?, ?, ?)")
            .bind(key_name)
            .bind(seed.to_vec())
            .bind(origin)
            .bind(crate::time::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Self { pool })
    }

    /// Opens an existing state; a missing file is an error, never a new state.
    pub async fn open(path: &Path) -> Result<Self, StateError> {
        if !path.exists() {
            return Err(StateError::Missing(path.display().to_string()));
        }
        let pool = connect(path, false).await?;
        Ok(Self { pool })
    }

    /// The witness's key and log.
    pub async fn identity(&self) -> Result<Identity, StateError> {
        let row =
            sqlx::query("SELECT key_name, secret_key, origin FROM witness_identity WHERE one = 1")
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StateError::Corrupt("no witness identity".into()))?;
        let seed: Vec<u8> = row.try_get("secret_key")?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| StateError::Corrupt("the key is not 32 bytes".into()))?;
        Ok(Identity {
            key_name: row.try_get("key_name")?,
            key: SigningKey::from_bytes(&seed),
            origin: row.try_get("origin")?,
        })
    }

    /// The checkpoint cosigned last (the largest), if any.
    pub async fn latest(&self) -> Result<Option<Held>, StateError> {
        sqlx::query("SELECT size, root, time_ms, note FROM cosigned ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(held)
            .transpose()
    }

    /// The cosigned checkpoint of `size`, if the witness cosigned one.
    pub async fn cosigned_at(&self, size: u64) -> Result<Option<Held>, StateError> {
        sqlx::query("SELECT size, root, time_ms, note FROM cosigned WHERE size = ?")
            .bind(to_i64(size))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(held)
            .transpose()
    }

    /// A checkpoint of `size` seen published with another root than `root`.
    pub async fn seen_other(&self, size: u64, root: &NodeHash) -> Result<Option<Held>, StateError> {
        sqlx::query(
            "SELECT size, root, time_ms, note FROM seen WHERE size = ? AND root <> ? LIMIT 1",
        )
        .bind(to_i64(size))
        .bind(root.to_vec())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(held)
        .transpose()
    }

    /// Stores `checkpoint` as the newest cosigned one if the latest cosigned
    /// size is still `expected_old`, in one statement. False if it changed.
    pub async fn advance(&self, expected_old: u64, checkpoint: &Held) -> Result<bool, StateError> {
        let done = sqlx::query(
            "INSERT INTO cosigned (size, root, time_ms, note, cosigned_ms)
             SELECT ?, ?, ?, ?, ? WHERE (SELECT COALESCE(MAX(size), 0) FROM cosigned) = ?
             ON CONFLICT (size) DO NOTHING",
        )
        .bind(to_i64(checkpoint.size))
        .bind(checkpoint.root.to_vec())
        .bind(checkpoint.time_ms)
        .bind(&checkpoint.note)
        .bind(crate::time::now_ms())
        .bind(to_i64(expected_old))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Remembers a checkpoint the broker published, for later cross-checks
    /// (the oldest beyond the newest 10,000 are dropped now and then).
    pub async fn remember_seen(&self, checkpoint: &Held) -> Result<(), StateError> {
        sqlx::query("INSERT INTO seen (size, root, time_ms, note) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(to_i64(checkpoint.size))
            .bind(checkpoint.root.to_vec())
            .bind(checkpoint.time_ms)
            .bind(&checkpoint.note)
            .execute(&self.pool)
            .await?;
        if checkpoint.size.is_multiple_of(64) {
            sqlx::query("DELETE FROM seen WHERE size < (SELECT size FROM seen ORDER BY size DESC LIMIT 1 OFFSET ?)")
                .bind(SEEN_KEPT)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Records misbehaviour, unless the same pair of notes is recorded already.
    pub async fn record_conflict(&self, conflict: &Conflict) -> Result<bool, StateError> {
        let known: Option<i64> =
            sqlx::query_scalar("SELECT id FROM conflicts WHERE held = ? AND offered = ? LIMIT 1")
                .bind(&conflict.held)
                .bind(&conflict.offered)
                .fetch_optional(&self.pool)
                .await?;
        if known.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO conflicts (found_ms, kind, reason, held, offered) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(conflict.found_ms)
        .bind(&conflict.kind)
        .bind(&conflict.reason)
        .bind(&conflict.held)
        .bind(&conflict.offered)
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// Every conflict found, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, StateError> {
        let rows =
            sqlx::query("SELECT found_ms, kind, reason, held, offered FROM conflicts ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Conflict {
                    found_ms: r.try_get("found_ms")?,
                    kind: r.try_get("kind")?,
                    reason: r.try_get("reason")?,
                    held: r.try_get("held")?,
                    offered: r.try_get("offered")?,
                })
            })
            .collect()
    }

    /// Closes the file (and releases its lock).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
