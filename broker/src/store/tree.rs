//! The audit log's Merkle tree as stored: hashes by stored-hash index.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::dialect::{placeholders, to_i64};
use super::{Store, StoreError};

impl Store {
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
}

fn decode_tree_hash(row: &AnyRow) -> Result<(u64, [u8; 32]), StoreError> {
    let idx: i64 = row.try_get("idx")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("tree hash {idx} is not 32 bytes")))?;
    Ok((u64::try_from(idx).unwrap_or(0), hash))
}
