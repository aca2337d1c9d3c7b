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
use super::dialect::{BindValue, placeholders};
use super::{Backend, Store, StoreError};

/// The channel nodes listen on for new handoffs.
pub const HANDOFF_CHANNEL: &str = "samverkan_handoff";

/// A share to publish, rebuilt from the queue.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The share's audit entry.
    pub audit_idx: u64,
    /// The recipient.
    pub recipient: String,
    /// The alert's logical topic.
    pub topic: String,
    /// The delivery message, exactly as first sent.
    pub payload: Vec<u8>,
    /// When the share was recorded (for the lag).
    pub created_at_ms: i64,
}

/// Handed-off shares claimed by this node: their rows stay locked (other
/// nodes skip them) until [`Store::finish_claim`] deletes them, which the
/// node does after publishing. If it dies or the database fails first, the
/// rows are there again for the next claim: at least once, never lost.
pub struct Claim {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    claimed: Vec<i64>,
    /// The shares still to deliver (not acknowledged, not purged).
    pub handoffs: Vec<Handoff>,
}

impl Claim {
    /// How many rows were claimed (some may need no delivery any more).
    pub fn rows(&self) -> usize {
        self.claimed.len()
    }
}

impl Store {
    /// Claims up to `limit` handed-off shares of `recipients`, skipping rows
    /// another node has claimed.
    pub async fn claim_handoffs(
        &self,
        recipients: &[String],
        limit: u32,
    ) -> Result<Claim, StoreError> {
        let mut tx = self.pool.begin().await?;
        if recipients.is_empty() {
            return Ok(Claim {
                tx,
                claimed: Vec::new(),
                handoffs: Vec::new(),
            });
        }
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT audit_idx FROM delivery_handoffs WHERE recipient IN {} \
             ORDER BY audit_idx LIMIT {limit} {lock}",
            placeholders(self.backend, 1, recipients.len())
        );
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
        let handoffs = if claimed.is_empty() {
            Vec::new()
        } else {
            self.deliveries_where(
                &mut tx,
                &format!(
                    "d.audit_idx IN {}",
                    placeholders(self.backend, 1, claimed.len())
                ),
                claimed.iter().map(|i| BindValue::Int(*i)).collect(),
            )
            .await?
        };
        Ok(Claim {
            tx,
            claimed,
            handoffs,
        })
    }

    /// Deletes the rows of a claim whose shares have been published.
    pub async fn finish_claim(&self, claim: Claim) -> Result<(), StoreError> {
        let Claim {
            mut tx, claimed, ..
        } = claim;
        if !claimed.is_empty() {
            let sql = format!(
                "DELETE FROM delivery_handoffs WHERE audit_idx IN {}",
                placeholders(self.backend, 1, claimed.len())
            );
            let mut delete = sqlx::query(AssertSqlSafe(sql));
            for idx in &claimed {
                delete = delete.bind(*idx);
            }
            delete.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The shares of the alerts `keys` (publisher, alert id) that are still
    /// to deliver: a resent alert whose first commit the node could not
    /// confirm (the database failed at that moment) may have committed
    /// without its deliveries ever being sent.
    pub async fn undelivered_of(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<Handoff>, StoreError> {
        let mut out = Vec::new();
        let mut tx = self.pool.begin().await?;
        for chunk in keys.chunks(200) {
            let condition = format!(
                "(e.publisher, e.alert_id) IN ({})",
                placeholders(self.backend, chunk.len(), 2)
            );
            let binds = chunk
                .iter()
                .flat_map(|(p, a)| [BindValue::Text(p.clone()), BindValue::Text(a.clone())])
                .collect();
            out.extend(self.deliveries_where(&mut tx, &condition, binds).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The deliveries matching `condition` (over the joined rows `d`, `e`,
    /// `a`) that are still to deliver, in queue order.
    async fn deliveries_where(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        condition: &str,
        binds: Vec<BindValue>,
    ) -> Result<Vec<Handoff>, StoreError> {
        let sql = format!(
            "SELECT {} {JOINED} WHERE {condition} AND d.acked_at_ms IS NULL \
             AND a.disclosures IS NOT NULL AND d.stamp_signature IS NOT NULL ORDER BY d.audit_idx",
            joined_columns(),
        );
        let mut read = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            read = b.bind_to(read);
        }
        let rows = read.fetch_all(&mut **tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let d = decode_joined(row)?;
            if let Some(payload) = d.payload {
                out.push(Handoff {
                    audit_idx: u64::try_from(d.audit_idx)
                        .map_err(|_| StoreError::Corrupt("negative audit_idx".into()))?,
                    recipient: d.recipient,
                    topic: d.entry.topic.unwrap_or_default(),
                    payload,
                    created_at_ms: d.created_at_ms,
                });
            }
        }
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
}
