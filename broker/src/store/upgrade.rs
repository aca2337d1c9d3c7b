//! Converting the rows of a store written before migration 4.
//!
//! Migration 4 renames the tables whose layout changed (`v3_…`) and creates
//! the new ones; this step, run right after it by [`Store::open`](super::Store::open),
//! converts their rows and drops them, in one transaction (an interrupted
//! conversion is redone at the next start). Nothing is dropped that cannot
//! be given back exactly: every receipt, share stamp, delivery message and
//! envelope is rebuilt from the new rows and compared with the old bytes,
//! and a difference stops the conversion with the row named.

use samverkan_sdk::Envelope;
use samverkan_sdk::messages::{Delivery, Signed};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::audit::{AUDIT_COLUMNS, decode_audit};
use super::dialect::to_i64;
use super::write::tree_rows;
use super::{Backend, StoreError, records};
use crate::audit::AuditEntry;

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// The advisory lock under which one node at a time converts.
const UPGRADE_LOCK: i64 = 0x5341_4d56_0000_0002;

/// Rows converted per read.
const PAGE: i64 = 500;

/// Converts the rows left by migration 4 in `v3_…` tables, if any.
pub(super) async fn from_v3(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let exists = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let mut tx = pool.begin().await?;
    // Nodes starting together on one database convert it once: the others
    // wait here, then find nothing left to convert.
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
            .bind(UPGRADE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
    }
    let n: i64 = sqlx::query(exists)
        .bind("v3_alerts")
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
    if n == 0 {
        tx.commit().await?;
        return Ok(());
    }
    alerts(&mut tx).await?;
    deliveries(&mut tx).await?;
    tree(&mut tx).await?;
    for table in ["v3_alerts", "v3_deliveries", "v3_tree_hashes"] {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn differs(what: String) -> StoreError {
    StoreError::Corrupt(format!(
        "converting to the layout of migration 4: {what} cannot be rebuilt exactly; the old tables are kept"
    ))
}

async fn entries(tx: &mut Tx<'_>, from: u64, to: u64) -> Result<Vec<AuditEntry>, StoreError> {
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(decode_audit).collect()
}

async fn alerts(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let mut after = (String::new(), String::new());
    loop {
        let rows = sqlx::query(
            "SELECT publisher, alert_id, envelope_hash, alert_type, topic, issued_at_ms, received_at_ms, \
             policy_version, signed_envelope, content, receipt FROM v3_alerts \
             WHERE publisher > $1 OR (publisher = $2 AND alert_id > $3) \
             ORDER BY publisher, alert_id LIMIT $4",
        )
        .bind(after.0.clone())
        .bind(after.0.clone())
        .bind(after.1.clone())
        .bind(PAGE)
        .fetch_all(&mut **tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = (last.try_get("publisher")?, last.try_get("alert_id")?);
        for row in &rows {
            let publisher: String = row.try_get("publisher")?;
            let alert_id: String = row.try_get("alert_id")?;
            let signed_envelope: Vec<u8> = row.try_get("signed_envelope")?;
            let content: Option<Vec<u8>> = row.try_get("content")?;
            let receipt: Vec<u8> = row.try_get("receipt")?;
            let what = |part: &str| format!("the {part} of alert {alert_id} of {publisher}");

            // The field values apart from the signed envelope.
            let disclosures = match &content {
                Some(bytes) => {
                    let envelope =
                        Envelope::from_json(bytes).map_err(|_| differs(what("content")))?;
                    let stored = records::encode_disclosures(&envelope.disclosures);
                    let rebuilt = records::envelope(&signed_envelope, &stored)?.to_json();
                    if rebuilt != *bytes {
                        return Err(differs(what("content")));
                    }
                    Some(stored)
                }
                None => None,
            };
            // Its entries, and the receipt rebuilt from them.
            let span = sqlx::query(
                "SELECT MIN(idx) AS first, MAX(idx) AS last, COUNT(*) AS n FROM audit_entries \
                 WHERE alert_id = $1 AND publisher = $2 AND kind IN ('share', 'denial')",
            )
            .bind(alert_id.clone())
            .bind(publisher.clone())
            .fetch_one(&mut **tx)
            .await?;
            let n: i64 = span.try_get("n")?;
            let (first, count) = match n {
                0 => (0, 0),
                _ => {
                    let first: i64 = span.try_get("first")?;
                    let last: i64 = span.try_get("last")?;
                    if last - first + 1 != n {
                        return Err(differs(what("receipt (its entries are not consecutive)")));
                    }
                    (
                        u64::try_from(first).unwrap_or(0),
                        u64::try_from(n).unwrap_or(0),
                    )
                }
            };
            let signed = Signed::from_json(&receipt).map_err(|_| differs(what("receipt")))?;
            let envelope_hash: String = row.try_get("envelope_hash")?;
            let policy_version: String = row.try_get("policy_version")?;
            let received_at_ms: i64 = row.try_get("received_at_ms")?;
            let rebuilt = records::receipt(
                records::ReceiptFacts {
                    publisher: &publisher,
                    alert_id: &alert_id,
                    envelope_hash: &envelope_hash,
                    policy_version: &policy_version,
                    received_at_ms,
                    key_id: signed.key_id.clone(),
                    signature: signed.signature.0.clone(),
                },
                &entries(tx, first, first + count).await?,
            );
            if rebuilt != receipt {
                return Err(differs(what("receipt")));
            }
            sqlx::query(
                "INSERT INTO alerts (publisher, alert_id, envelope_hash, alert_type, topic, issued_at_ms, \
                 received_at_ms, policy_version, signed_envelope, disclosures, first_idx, entries, \
                 receipt_key_id, receipt_signature) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(publisher.clone())
            .bind(alert_id.clone())
            .bind(envelope_hash)
            .bind(row.try_get::<String, _>("alert_type")?)
            .bind(row.try_get::<String, _>("topic")?)
            .bind(row.try_get::<i64, _>("issued_at_ms")?)
            .bind(received_at_ms)
            .bind(policy_version)
            .bind(signed_envelope)
            .bind(disclosures)
            .bind(to_i64(first))
            .bind(to_i64(count))
            .bind(signed.key_id)
            .bind(signed.signature.0)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn deliveries(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let mut after = -1i64;
    loop {
        let rows = sqlx::query(
            "SELECT d.share_id, d.recipient, d.audit_idx, d.payload, d.created_at_ms, d.acked_at_ms, \
             a.content FROM v3_deliveries d \
             LEFT JOIN v3_alerts a ON a.publisher = d.publisher AND a.alert_id = d.alert_id \
             WHERE d.audit_idx > $1 ORDER BY d.audit_idx LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(&mut **tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("audit_idx")?;
        for row in &rows {
            let audit_idx: i64 = row.try_get("audit_idx")?;
            let what = format!("the delivery of entry {audit_idx}");
            let payload: Option<Vec<u8>> = row.try_get("payload")?;
            // A payload purged before: its stamp was not kept either.
            let stamp = match &payload {
                Some(bytes) => {
                    let delivery = Delivery::from_json(bytes).map_err(|_| differs(what.clone()))?;
                    let index = u64::try_from(audit_idx).unwrap_or(0);
                    let entry = entries(tx, index, index + 1)
                        .await?
                        .pop()
                        .ok_or_else(|| differs(what.clone()))?;
                    let stamp = records::stamp(
                        &entry,
                        delivery.stamp.key_id.clone(),
                        delivery.stamp.signature.0.clone(),
                    );
                    if stamp != delivery.stamp {
                        return Err(differs(format!("the share stamp of entry {audit_idx}")));
                    }
                    // The whole message, where the alert's content is still there.
                    if let Some(content) = row.try_get::<Option<Vec<u8>>, _>("content")? {
                        let envelope =
                            Envelope::from_json(&content).map_err(|_| differs(what.clone()))?;
                        if records::delivery(&envelope, &entry, stamp.clone()) != *bytes {
                            return Err(differs(what));
                        }
                    }
                    Some(stamp)
                }
                None => None,
            };
            sqlx::query(
                "INSERT INTO deliveries (audit_idx, recipient, share_id, created_at_ms, stamp_key_id, \
                 stamp_signature, acked_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(audit_idx)
            .bind(row.try_get::<String, _>("recipient")?)
            .bind(row.try_get::<String, _>("share_id")?)
            .bind(row.try_get::<i64, _>("created_at_ms")?)
            .bind(stamp.as_ref().map(|s| s.key_id.clone()))
            .bind(stamp.map(|s| s.signature.0))
            .bind(row.try_get::<Option<i64>, _>("acked_at_ms")?)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn tree(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    // Dense indexes from 0; pages of a multiple of the row size keep rows whole.
    const SPAN: i64 = 32 * 128;
    let end: i64 = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM v3_tree_hashes")
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    let mut from = 0i64;
    while from < end {
        let rows = sqlx::query(
            "SELECT idx, hash FROM v3_tree_hashes WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        )
        .bind(from)
        .bind(from + SPAN)
        .fetch_all(&mut **tx)
        .await?;
        let mut hashes = Vec::with_capacity(rows.len());
        for row in &rows {
            let idx: i64 = row.try_get("idx")?;
            let hash: Vec<u8> = row.try_get("hash")?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| differs(format!("tree hash {idx}")))?;
            hashes.push((u64::try_from(idx).unwrap_or(0), hash));
        }
        for (first, bytes) in tree_rows(&hashes) {
            sqlx::query("INSERT INTO tree_hashes (first_idx, hashes) VALUES ($1, $2)")
                .bind(to_i64(first))
                .bind(bytes)
                .execute(&mut **tx)
                .await?;
        }
        from += SPAN;
    }
    Ok(())
}
