//! The delivery queue: shares waiting for their recipient, acknowledgements,
//! and the pages a replay sends again.

use samverkan_sdk::messages::Signed;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::audit::{AUDIT_COLUMNS, decode_audit};
use super::dialect::{placeholders, to_i64};
use super::{Store, StoreError, records};
use crate::audit::AuditEntry;

/// Column list of `deliveries`, in bind order.
pub(super) const DELIVERY_COLUMNS: &str =
    "audit_idx, recipient, share_id, created_at_ms, stamp_key_id, stamp_signature";

/// A delivery joined with what rebuilds its message: the share's entry and
/// the alert's signed envelope and field values. Only a share with both its
/// field values and its stamp can be sent again.
pub(super) const JOINED: &str = "FROM deliveries d JOIN audit_entries e ON e.idx = d.audit_idx \
     LEFT JOIN alerts a ON a.publisher = e.publisher AND a.alert_id = e.alert_id";

/// The columns of [`JOINED`] that [`decode_joined`] reads.
pub(super) fn joined_columns() -> String {
    let entry: Vec<String> = AUDIT_COLUMNS
        .split(", ")
        .map(|c| format!("e.{c}"))
        .collect();
    format!(
        "d.audit_idx, d.recipient AS d_recipient, d.share_id AS d_share_id, d.created_at_ms, \
         d.stamp_key_id, d.stamp_signature, a.signed_envelope, a.disclosures, {}",
        entry.join(", ")
    )
}

/// A delivery as stored, with its stamp and message rebuilt.
pub(super) struct Joined {
    pub(super) entry: AuditEntry,
    pub(super) audit_idx: i64,
    pub(super) recipient: String,
    pub(super) share_id: String,
    pub(super) created_at_ms: i64,
    pub(super) stamp: Option<Signed>,
    pub(super) payload: Option<Vec<u8>>,
}

pub(super) fn decode_joined(row: &AnyRow) -> Result<Joined, StoreError> {
    let entry = decode_audit(row)?;
    let key_id: Option<String> = row.try_get("stamp_key_id")?;
    let signature: Option<Vec<u8>> = row.try_get("stamp_signature")?;
    let stamp = match (key_id, signature) {
        (Some(k), Some(s)) => Some(records::stamp(&entry, k, s)),
        _ => None,
    };
    let signed_envelope: Option<Vec<u8>> = row.try_get("signed_envelope")?;
    let disclosures: Option<Vec<u8>> = row.try_get("disclosures")?;
    let payload = match (&stamp, signed_envelope, disclosures) {
        (Some(stamp), Some(signed), Some(disclosures)) => Some(records::delivery(
            &records::envelope(&signed, &disclosures)?,
            &entry,
            stamp.clone(),
        )),
        _ => None,
    };
    Ok(Joined {
        audit_idx: row.try_get("audit_idx")?,
        recipient: row.try_get("d_recipient")?,
        share_id: row.try_get("d_share_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        entry,
        stamp,
        payload,
    })
}

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
    /// The broker-signed share stamp (JSON), rebuilt from the share's entry
    /// and the stored signature; `None` for a delivery purged before the
    /// store kept stamps apart.
    pub stamp: Option<Vec<u8>>,
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
                "SELECT d.share_id AS d_share_id, e.alert_id, e.publisher, e.topic \
                 FROM deliveries d JOIN audit_entries e ON e.idx = d.audit_idx \
                 WHERE d.recipient = {first} AND d.acked_at_ms IS NULL AND d.share_id IN ({rest})"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(recipient.to_string());
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(PendingDelivery {
                    share_id: row.try_get("d_share_id")?,
                    alert_id: row
                        .try_get::<Option<String>, _>("alert_id")?
                        .unwrap_or_default(),
                    publisher: row
                        .try_get::<Option<String>, _>("publisher")?
                        .unwrap_or_default(),
                    topic: row
                        .try_get::<Option<String>, _>("topic")?
                        .unwrap_or_default(),
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
        let sql = format!(
            "SELECT {} {JOINED} WHERE d.recipient = $1 AND d.acked_at_ms IS NULL AND a.disclosures IS NOT NULL \
             AND d.stamp_signature IS NOT NULL \
             ORDER BY d.created_at_ms, d.audit_idx LIMIT $2",
            joined_columns()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(recipient.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let d = decode_joined(row)?;
                Ok(PendingDelivery {
                    share_id: d.share_id,
                    alert_id: d.entry.alert_id.unwrap_or_default(),
                    publisher: d.entry.publisher.unwrap_or_default(),
                    topic: d.entry.topic.unwrap_or_default(),
                    payload: d.payload,
                })
            })
            .collect()
    }

    /// The oldest `limit` unacknowledged, unpurged deliveries of
    /// `recipient` after `after`, in replay order, each message rebuilt
    /// exactly as first sent.
    pub async fn replay_page(
        &self,
        recipient: &str,
        after: QueuePosition,
        limit: u32,
    ) -> Result<Vec<ReplayDelivery>, StoreError> {
        let sql = format!(
            "SELECT {} {JOINED} WHERE d.recipient = $1 AND d.acked_at_ms IS NULL AND a.disclosures IS NOT NULL \
             AND d.stamp_signature IS NOT NULL \
             AND (d.created_at_ms > $2 OR (d.created_at_ms = $3 AND d.audit_idx > $4)) \
             ORDER BY d.created_at_ms, d.audit_idx LIMIT $5",
            joined_columns()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(recipient.to_string())
            .bind(after.created_at_ms)
            .bind(after.created_at_ms)
            .bind(after.audit_idx)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let d = decode_joined(row)?;
                let payload = d.payload.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "the delivery of entry {} has no stamp to send",
                        d.audit_idx
                    ))
                })?;
                Ok(ReplayDelivery {
                    share_id: d.share_id,
                    topic: d.entry.topic.unwrap_or_default(),
                    payload,
                    position: QueuePosition {
                        created_at_ms: d.created_at_ms,
                        audit_idx: d.audit_idx,
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
        let sql = format!(
            "SELECT COUNT(*) AS n {JOINED} WHERE d.recipient = $1 AND d.acked_at_ms IS NULL AND a.disclosures IS NOT NULL \
             AND d.stamp_signature IS NOT NULL \
             AND (d.created_at_ms > $2 OR (d.created_at_ms = $3 AND d.audit_idx > $4))"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
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

    /// The deliveries of the entries with index in `[from, to)`, their
    /// stamps and messages rebuilt.
    pub async fn deliveries_of_entries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let sql = format!(
            "SELECT {} {JOINED} WHERE d.audit_idx >= $1 AND d.audit_idx < $2",
            joined_columns()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_i64(from))
            .bind(to_i64(to))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let d = decode_joined(r)?;
                Ok(StoredDelivery {
                    share_id: d.share_id,
                    recipient: d.recipient,
                    alert_id: d.entry.alert_id.clone().unwrap_or_default(),
                    publisher: d.entry.publisher.clone().unwrap_or_default(),
                    alert_type: d.entry.alert_type.clone().unwrap_or_default(),
                    topic: d.entry.topic.clone().unwrap_or_default(),
                    audit_idx: u64::try_from(d.audit_idx)
                        .map_err(|_| StoreError::Corrupt("negative audit_idx".into()))?,
                    payload: d.payload,
                    stamp: d.stamp.map(|s| serde_json::to_vec(&s).unwrap_or_default()),
                    created_at_ms: d.created_at_ms,
                })
            })
            .collect()
    }
}
