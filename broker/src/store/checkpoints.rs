//! Signed checkpoints of the audit log and the witnesses' cosignatures.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::to_i64;
use super::{Store, StoreError};

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

impl Store {
    /// Stores a signed checkpoint.
    pub async fn insert_checkpoint(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        insert_checkpoint(cp).execute(&self.writer).await?;
        Ok(())
    }

    /// Stores witnesses' cosignatures (each once per checkpoint and key), in
    /// one transaction.
    pub async fn insert_cosignatures(&self, rows: &[StoredCosignature]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
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

/// The statement that stores `cp` (once per size).
pub(super) fn insert_checkpoint(
    cp: &StoredCheckpoint,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query("INSERT INTO checkpoints (size, root, at_ms, note) VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING")
        .bind(to_i64(cp.size))
        .bind(cp.root.to_vec())
        .bind(cp.at_ms)
        .bind(cp.note.clone())
}
