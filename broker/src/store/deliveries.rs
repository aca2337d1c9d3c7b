//! The delivery queue: shares waiting for their recipient, acknowledgements,
//! and the pages a replay sends again.

use sqlx::{AssertSqlSafe, Row};

use super::dialect::{placeholders, to_i64};
use super::{Store, StoreError};

/// Column list of `deliveries`, in bind order.
pub(super) const DELIVERY_COLUMNS: &str = "share_id, recipient, alert_id, publisher, alert_type, topic, audit_idx, payload, created_at_ms";

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

impl Store {
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

    /// Number of deliveries stored for a recipient.
    pub async fn delivery_count(&self, recipient: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM deliveries WHERE recipient = $1")
            .bind(recipient.to_string())
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
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
}
