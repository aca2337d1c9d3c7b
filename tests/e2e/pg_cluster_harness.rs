//! The highly available PostgreSQL of the cluster tests
//! (`samverkan_e2e::pg_cluster`) does what they rely on: a row committed on
//! the primary is on the standby when the primary dies, the promoted
//! standby accepts writes at once, and each server says truthfully whether
//! it is in recovery.

use std::time::Duration;

use samverkan_e2e::pg_cluster::{PgCluster, STANDBY_NAME};
use sqlx::{Connection, PgConnection};

/// Longest wait for one statement over the driver.
const STATEMENT_LIMIT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> PgConnection {
    tokio::time::timeout(STATEMENT_LIMIT, PgConnection::connect(url))
        .await
        .unwrap_or_else(|_| panic!("no connection to {url} within {STATEMENT_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn execute(conn: &mut PgConnection, sql: &'static str) {
    tokio::time::timeout(STATEMENT_LIMIT, sqlx::query(sql).execute(&mut *conn))
        .await
        .unwrap_or_else(|_| panic!("`{sql}` did not return within {STATEMENT_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
}

#[tokio::test]
async fn a_row_committed_on_the_primary_is_on_the_promoted_standby_after_the_primary_died() {
    let cluster = PgCluster::start();
    assert_eq!(
        cluster.primary().in_recovery(),
        Some(false),
        "{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.standby().in_recovery(),
        Some(true),
        "{}",
        cluster.logs()
    );
    cluster.create_database("harness");
    let url = cluster.multi_host_url("harness");
    assert_eq!(
        url,
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/harness",
            cluster.primary().port(),
            cluster.standby().port()
        )
    );

    // Written through the driver the broker uses, with the primary's
    // settings: the commit returns once the standby has flushed it.
    let mut primary = connect(&cluster.primary().url_for("harness")).await;
    let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(names, format!("FIRST 1 ({STANDBY_NAME})"));
    let commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(commit, "on");
    execute(
        &mut primary,
        "CREATE TABLE alerts (id text PRIMARY KEY, body text NOT NULL)",
    )
    .await;
    let id = uuid::Uuid::new_v4().to_string();
    tokio::time::timeout(
        STATEMENT_LIMIT,
        sqlx::query("INSERT INTO alerts (id, body) VALUES ($1, 'committed before the crash')")
            .bind(&id)
            .execute(&mut primary),
    )
    .await
    .expect("the insert waited too long for the standby")
    .unwrap();

    cluster.kill_primary();
    assert!(!cluster.primary().is_running());
    assert_eq!(
        cluster.primary().in_recovery(),
        None,
        "the killed primary still answers"
    );
    // The standby is still in recovery until promoted: nothing accepts writes.
    assert_eq!(cluster.standby().in_recovery(), Some(true));
    assert!(cluster.current_primary().is_none());

    cluster.promote_standby();
    assert_eq!(
        cluster.standby().in_recovery(),
        Some(false),
        "{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.current_primary().map(|s| s.port()),
        Some(cluster.standby().port())
    );

    let mut promoted = connect(&cluster.standby().url_for("harness")).await;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut promoted)
        .await
        .unwrap();
    assert!(!in_recovery);
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM alerts WHERE id = $1")
        .bind(&id)
        .fetch_optional(&mut promoted)
        .await
        .unwrap();
    assert_eq!(
        body.as_deref(),
        Some("committed before the crash"),
        "the committed row is missing on the promoted standby\n{}",
        cluster.logs()
    );
    // It has no standby of its own and commits without waiting for one.
    execute(
        &mut promoted,
        "INSERT INTO alerts (id, body) VALUES ('after', 'written after the failover')",
    )
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts")
        .fetch_one(&mut promoted)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}
