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
        sqlx::query(
                "UPDATE alerts SET content = NULL WHERE alert_type = $1 AND received_at_ms < $2 AND content IS NOT NULL",
            )
            .bind(self.alert_type.clone())
            .bind(self.cutoff_ms)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
                "UPDATE deliveries SET payload = NULL WHERE alert_type = $1 AND created_at_ms < $2 AND payload IS NOT NULL",
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
        let rows = sqlx::query(
            "SELECT DISTINCT alert_type FROM alerts WHERE content IS NOT NULL \
             UNION SELECT DISTINCT alert_type FROM deliveries WHERE payload IS NOT NULL",
        )
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
    /// stored: (alerts, deliveries).
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
            count("SELECT COUNT(*) AS n FROM alerts WHERE alert_type = $1 AND received_at_ms < $2 AND content IS NOT NULL").await?,
            count("SELECT COUNT(*) AS n FROM deliveries WHERE alert_type = $1 AND created_at_ms < $2 AND payload IS NOT NULL").await?,
        ))
    }
}
