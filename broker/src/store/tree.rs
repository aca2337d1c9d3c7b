//! The audit log's Merkle tree as stored: runs of consecutive hashes in the
//! tlog stored-hash numbering, a row per at most
//! [`TREE_ROW`](super::write::TREE_ROW) hashes. A commit's new hashes are
//! consecutive (each leaf's hashes follow the previous leaf's), so it
//! appends a few rows at the end of the key, and a hash is found in the row
//! with the largest first index not above it.

use std::collections::{BTreeSet, HashMap};

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::dialect::{placeholders_after, to_i64};
use super::{Backend, Store, StoreError};

/// Rows looked up per statement.
const LOOKUPS: usize = 64;

impl Store {
    /// Stored tree hashes by stored-hash index (missing ones are left out).
    pub async fn tree_hashes(&self, indexes: &[u64]) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
        let wanted: BTreeSet<u64> = indexes.iter().copied().collect();
        let wanted: Vec<u64> = wanted.into_iter().collect();
        let mut out = HashMap::new();
        for chunk in wanted.chunks(LOOKUPS) {
            // The row holding each index: the one with the largest first index not above it.
            let lookups: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(SELECT MAX(first_idx) FROM tree_hashes WHERE first_idx <= {})",
                        placeholder(self.backend, i)
                    )
                })
                .collect();
            let sql = format!(
                "SELECT first_idx, hashes FROM tree_hashes WHERE first_idx IN ({})",
                lookups.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for i in chunk {
                q = q.bind(to_i64(*i));
            }
            for row in q.fetch_all(&self.pool).await? {
                for (idx, hash) in decode_tree_row(&row)? {
                    if chunk.binary_search(&idx).is_ok() {
                        out.insert(idx, hash);
                    }
                }
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
            "SELECT first_idx, hashes FROM tree_hashes \
             WHERE first_idx >= COALESCE((SELECT MAX(first_idx) FROM tree_hashes WHERE first_idx <= $1), 0) \
             AND first_idx < $2 ORDER BY first_idx",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            out.extend(decode_tree_row(row)?.filter(|(idx, _)| *idx >= from && *idx < to));
        }
        Ok(out)
    }
}

/// The `i`-th (0-based) placeholder of a statement.
fn placeholder(backend: Backend, i: usize) -> String {
    placeholders_after(backend, i, 1)
        .trim_matches(|c| c == '(' || c == ')')
        .to_string()
}

/// The hashes of one row, with their indexes.
fn decode_tree_row(row: &AnyRow) -> Result<impl Iterator<Item = (u64, [u8; 32])>, StoreError> {
    let first: i64 = row.try_get("first_idx")?;
    let bytes: Vec<u8> = row.try_get("hashes")?;
    let first = u64::try_from(first)
        .map_err(|_| StoreError::Corrupt(format!("tree row {first}: negative index")))?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(32) {
        return Err(StoreError::Corrupt(format!(
            "tree row {first}: {} bytes is not a whole number of hashes",
            bytes.len()
        )));
    }
    let hashes: Vec<[u8; 32]> = bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(hashes
        .into_iter()
        .enumerate()
        .map(move |(i, h)| (first + i as u64, h)))
}
