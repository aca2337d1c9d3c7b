//! Fills a fresh store with the generated log of `tests/fill.rs` and prints
//! what it costs (docs/ARCHITECTURE.md section 7.4):
//! bytes and rows per accepted alert. `store_size URL ENTRIES [DAYS]`.
use std::path::Path;

use samverkan_broker::pki::DevPkiLayout;
use samverkan_broker::store::Store;
use samverkan_e2e::fill::{self, FillOptions};
use sqlx::Row;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let entries: u64 = args[2].parse()?;
    let days: u32 = args.get(3).map(|d| d.parse()).transpose()?.unwrap_or(365);
    let store = Store::open(url).await?;
    let pool = sqlx::AnyPool::connect(url).await?;
    let pg = url.starts_with("postgres");
    let size = |pool: sqlx::AnyPool| async move {
        if pg {
            let r = sqlx::query("SELECT CAST(pg_database_size(current_database()) AS BIGINT) AS n")
                .fetch_one(&pool)
                .await
                .unwrap();
            r.get::<i64, _>("n")
        } else {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await
                .unwrap();
            let path = url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap()
                .to_string();
            std::fs::metadata(path).unwrap().len() as i64
        }
    };
    let before = size(pool.clone()).await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pki = DevPkiLayout::new(repo.join("certs-dev"));
    let report = fill::fill(
        &store,
        &repo.join("policies"),
        &pki,
        "samverkan-dev/audit",
        &FillOptions {
            days,
            ..FillOptions::year(entries)
        },
    )
    .await?;
    store.checkpoint_wal().await?;
    if pg {
        sqlx::query("CHECKPOINT").execute(&pool).await?;
    }
    let after = size(pool.clone()).await;
    let alerts: i64 = sqlx::query("SELECT COUNT(*) AS n FROM alerts")
        .fetch_one(&pool)
        .await?
        .get("n");
    let tables: Vec<String> = if pg {
        sqlx::query(
            "SELECT CAST(tablename AS TEXT) AS t FROM pg_tables WHERE schemaname = 'public'",
        )
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|r| r.get::<String, _>("t"))
        .collect()
    } else {
        sqlx::query(
            "SELECT name AS t FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|r| r.get::<String, _>("t"))
        .collect()
    };
    let mut rows = 0i64;
    for t in &tables {
        let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM {t}"
        )))
        .fetch_one(&pool)
        .await?
        .get("n");
        println!("  {t}: {n} rows");
        rows += n;
    }
    println!("{report:?}");
    println!(
        "entries {} accepted alerts {alerts}: {} bytes, {:.0} bytes/alert, {:.1} rows/alert",
        report.entries,
        after - before,
        (after - before) as f64 / alerts as f64,
        rows as f64 / alerts as f64
    );
    Ok(())
}
