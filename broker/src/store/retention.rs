//! Retention: which content is past its period, and purging it.

use sqlx::Row;

use super::{Store, StoreError};

/// Content of one alert type stored before a cutoff, to be purged.
#[derive(Debug, Clone)]
pub struct Purge {
    /// The alert type.
    pub alert_type: String,
    /// Content received before this time is purged.
    pub cutoff_ms: i64,
}

impl Purge {
    /// Removes the content within the purge, in the commit's transaction.
    pub(super) async fn apply(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        // The field values are the only personal data: the signed
        // envelope, receipt, stamps and entries hold none, and a delivery
        // is rebuilt from the alert's field values, so it goes with them.
        sqlx::query(
            "UPDATE alerts SET disclosures = NULL WHERE alert_type = $1 AND received_at_ms < $2 AND disclosures IS NOT NULL",
        )
        .bind(self.alert_type.clone())
        .bind(self.cutoff_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl Store {
    /// The alert types of which content is still stored, including types
    /// no longer in the policy (their content is kept for the default
    /// retention period, never forever).
    pub async fn alert_types_with_content(&self) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT alert_type FROM alerts WHERE disclosures IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>("alert_type")
                    .map_err(StoreError::from)
            })
            .collect()
    }

    /// How much content of `alert_type` received before `cutoff_ms` is still
    /// stored: (alerts, deliveries whose message can no longer be rebuilt
    /// once they are purged).
    pub async fn purgeable(
        &self,
        alert_type: &str,
        cutoff_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql)
                .bind(alert_type.to_string())
                .bind(cutoff_ms)
                .fetch_one(&self.pool)
                .await?;
            let n: i64 = row.try_get("n")?;
            Ok::<u64, StoreError>(u64::try_from(n).unwrap_or(0))
        };
        Ok((
            count("SELECT COUNT(*) AS n FROM alerts WHERE alert_type = $1 AND received_at_ms < $2 AND disclosures IS NOT NULL").await?,
            // The deliveries of those alerts: the shares among their entries.
            count(
                "SELECT COUNT(*) AS n FROM alerts a JOIN deliveries d \
                 ON d.audit_idx >= a.first_idx AND d.audit_idx < a.first_idx + a.entries \
                 WHERE a.alert_type = $1 AND a.received_at_ms < $2 AND a.disclosures IS NOT NULL",
            )
            .await?,
        ))
    }
}
