//! Delivery across nodes. A share whose recipient has no connection on the
//! node that recorded it gets a row in `delivery_handoffs`, in the batch's
//! transaction; the node that holds the recipient claims such rows with
//! `FOR UPDATE SKIP LOCKED` (two nodes never claim the same row, and
//! neither waits for the other), deletes them and publishes the shares
//! rebuilt from the queue. Nodes are woken by `NOTIFY` with only the
//! recipient's name as payload, sent after the commit, and poll as well,
//! since notifications sent while a listener reconnects are lost.

use sqlx::{AssertSqlSafe, Row};

use super::deliveries::{JOINED, decode_joined, joined_columns};
use super::dialect::placeholders;
use super::{Backend, Store, StoreError};

/// The channel nodes listen on for new handoffs.
pub const HANDOFF_CHANNEL: &str = "samverkan_handoff";

/// A claimed share, ready to publish.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The recipient.
    pub recipient: String,
    /// The alert's logical topic.
    pub topic: String,
    /// The delivery message, exactly as first sent.
    pub payload: Vec<u8>,
    /// When the share was recorded (for the lag).
    pub created_at_ms: i64,
}

impl Store {
    /// Claims up to `limit` handed-off shares of `recipients` and returns
    /// those still to deliver (not acknowledged, not purged). Claimed rows
    /// are deleted: a share lost after this point is still unacknowledged,
    /// and its recipient's next replay sends it.
    pub async fn claim_handoffs(
        &self,
        recipients: &[String],
        limit: u32,
    ) -> Result<Vec<Handoff>, StoreError> {
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let n = recipients.len();
        let sql = format!(
            "DELETE FROM delivery_handoffs WHERE audit_idx IN (SELECT audit_idx FROM delivery_handoffs \
             WHERE recipient IN {} ORDER BY audit_idx LIMIT {limit} {lock}) RETURNING audit_idx",
            placeholders(self.backend, 1, n)
        );
        let mut tx = self.pool.begin().await?;
        let mut claim = sqlx::query(AssertSqlSafe(sql));
        for r in recipients {
            claim = claim.bind(r.clone());
        }
        let claimed: Vec<i64> = claim
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get("audit_idx"))
            .collect::<Result<_, _>>()?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} {JOINED} WHERE d.audit_idx IN {} AND d.acked_at_ms IS NULL \
             AND a.disclosures IS NOT NULL AND d.stamp_signature IS NOT NULL ORDER BY d.audit_idx",
            joined_columns(),
            placeholders(self.backend, 1, claimed.len())
        );
        let mut read = sqlx::query(AssertSqlSafe(sql));
        for idx in &claimed {
            read = read.bind(*idx);
        }
        let rows = read.fetch_all(&mut *tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let d = decode_joined(row)?;
            if let Some(payload) = d.payload {
                out.push(Handoff {
                    recipient: d.recipient,
                    topic: d.entry.topic.unwrap_or_default(),
                    payload,
                    created_at_ms: d.created_at_ms,
                });
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Forgets the handed-off shares of `recipient`: a replay starting for
    /// it reads every share still unacknowledged from the queue itself.
    pub async fn drop_handoffs(&self, recipient: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM delivery_handoffs WHERE recipient = $1")
            .bind(recipient.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Handed-off shares waiting, per recipient.
    pub async fn handoff_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT recipient, COUNT(*) AS n FROM delivery_handoffs GROUP BY recipient ORDER BY recipient",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get("n")?;
                Ok((r.try_get("recipient")?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    /// Wakes the nodes holding `recipients` (PostgreSQL `NOTIFY`, outside
    /// any append: a notifying commit takes a lock of its own). A no-op on
    /// SQLite.
    pub async fn notify_handoffs(&self, recipients: &[String]) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        for recipient in recipients {
            sqlx::query("SELECT 1 AS sent FROM pg_notify($1, $2)")
                .bind(HANDOFF_CHANNEL)
                .bind(recipient.clone())
                .fetch_one(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The URL of the database written to (for a `LISTEN` connection of its own).
    pub fn target_url(&self) -> String {
        self.target.read().map(|u| u.clone()).unwrap_or_default()
    }
}
