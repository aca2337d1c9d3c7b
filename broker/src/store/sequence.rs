//! One log, sequenced by the database. Several nodes append to the one
//! audit log; each append runs in a transaction that first takes a
//! transaction-scoped advisory lock, so appends from different nodes follow
//! one another, and reads the log's size under it. Entry indices therefore
//! never clash and never leave gaps: the primary key on `audit_entries.idx`
//! would refuse a clash anyway, and the appender refuses a draft that does
//! not start at the size read here. The lock ends with the transaction, so a
//! node that dies holding it releases it with its connection.
//!
//! This follows Tessera's sequencing on one database (a coordination lock
//! taken in the append transaction) rather than Trillian's elected
//! sequencer: there is nothing to elect, and any node can append.

use sqlx::{Any, Row, Transaction};

use super::{Backend, Commit, Store, StoreError, StoredCheckpoint};

/// The advisory lock under which appends to the log are serialised.
const SEQUENCE_LOCK: i64 = 0x5341_4d56_0000_0001;

/// An append in progress: the transaction holds the sequencing lock, and
/// `next` is the log's size under it.
pub struct Append {
    tx: Transaction<'static, Any>,
    next: u64,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").field("next", &self.next).finish()
    }
}

impl Append {
    /// The index the next entry gets.
    pub fn next(&self) -> u64 {
        self.next
    }
}

impl Store {
    /// Begins an append: waits for the sequencing lock and reads the log's
    /// size. (On SQLite, which one machine uses, the transaction takes the
    /// database's write lock at once instead.)
    pub async fn begin_append(&self) -> Result<Append, StoreError> {
        let mut tx = match self.backend {
            Backend::Postgres => {
                let mut tx = self.writer.begin().await?;
                sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
                    .bind(SEQUENCE_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                tx
            }
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
        };
        let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS next FROM audit_entries")
            .fetch_one(&mut *tx)
            .await?;
        let next: i64 = row.try_get("next")?;
        Ok(Append {
            tx,
            next: u64::try_from(next).unwrap_or(0),
        })
    }

    /// Writes `c` in the append's transaction and commits it, which
    /// releases the lock. Refused if `c` does not continue the log at the
    /// size read under the lock.
    pub async fn finish_append(&self, append: Append, c: &Commit) -> Result<(), StoreError> {
        let Append { mut tx, next } = append;
        if let Some(first) = c.audit.first()
            && first.index != next
        {
            return Err(StoreError::Corrupt(format!(
                "a draft starting at entry {} does not continue a log of {next} entries",
                first.index
            )));
        }
        self.write(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores `cp` in the append's transaction: a checkpoint signed under
    /// the lock covers the log exactly as it stands.
    pub async fn checkpoint_in(
        &self,
        append: &mut Append,
        cp: &StoredCheckpoint,
    ) -> Result<(), StoreError> {
        super::checkpoints::insert_checkpoint(cp)
            .execute(&mut *append.tx)
            .await?;
        Ok(())
    }
}
