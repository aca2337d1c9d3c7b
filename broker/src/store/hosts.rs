//! A PostgreSQL URL may list several hosts, as libpq allows
//! (`postgres://user@db1:5432,db2:5432/samverkan`): a primary and its
//! standbys. The store writes to whichever of them is not in recovery and
//! moves to the new primary when the old one stops being writable (a
//! failover). sqlx connects to one host per URL, so the list is split here
//! and each host is asked `pg_is_in_recovery()`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection, Row};

use super::StoreError;

/// How long one host may take to answer whether it is writable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The single-host URLs of `url`, in its order: `postgres://u@h1:1,h2:2/db?x`
/// gives `postgres://u@h1:1/db?x` and `postgres://u@h2:2/db?x`. A URL with
/// one host is returned as it is.
pub fn hosts_of(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_string()];
    }
    hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{user}{host}{path}"))
        .collect()
}

/// `host:port` of a single-host URL, without user or password (for logs
/// and `/health`).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_string()
}

/// Whether the server at `url` accepts writes (answers and is not in recovery).
async fn writable(url: &str) -> Result<bool, String> {
    let probe = async {
        let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        let mut conn = AnyConnection::connect_with(&options).await?;
        let row = sqlx::query("SELECT CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS r")
            .fetch_one(&mut conn)
            .await?;
        let in_recovery: i32 = row.try_get("r")?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(in_recovery == 0)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(w)) => Ok(w),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
    }
}

/// The first of `hosts` that accepts writes; every host's state in the
/// error when none does.
pub async fn find_primary(hosts: &[String]) -> Result<String, StoreError> {
    let mut seen = Vec::new();
    for url in hosts {
        match writable(url).await {
            Ok(true) => return Ok(url.clone()),
            Ok(false) => seen.push(format!("{} is in recovery", host_of(url))),
            Err(e) => seen.push(format!("{}: {e}", host_of(url))),
        }
    }
    Err(StoreError::NoPrimary(seen.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_is_split_per_host() {
        assert_eq!(
            hosts_of("postgres://u:p@db1:5432,db2:6543/samverkan?sslmode=disable"),
            [
                "postgres://u:p@db1:5432/samverkan?sslmode=disable",
                "postgres://u:p@db2:6543/samverkan?sslmode=disable"
            ]
        );
        assert_eq!(
            hosts_of("postgresql://a,b/db"),
            ["postgresql://a/db", "postgresql://b/db"]
        );
        assert_eq!(
            hosts_of("postgres://u@db1:5432/x"),
            ["postgres://u@db1:5432/x"]
        );
        assert_eq!(hosts_of("sqlite://s.db"), ["sqlite://s.db"]);
        assert_eq!(host_of("postgres://u:secret@db2:6543/x?y=1"), "db2:6543");
    }
}
