//! The auditor console's reads: filtered, scoped, keyset-paginated searches
//! of the audit log and the aggregates of its overview.
//!
//! Every query takes a [`Scope`]: an agency's auditor sees only entries in
//! which the agency is publisher or recipient, and the scope is part of the
//! SQL, so no parameter (an entry index, a permalink, an alert id) can reach
//! an entry outside it.

use std::collections::BTreeMap;

use sqlx::{AssertSqlSafe, Row};

use super::{AUDIT_COLUMNS, BindValue, Store, StoreError, decode_audit, to_i64};
use crate::audit::AuditEntry;

/// Which entries a viewer may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every entry (the federation's supervisor).
    All,
    /// Entries whose publisher or recipient is this agency.
    Agency(String),
}

/// Filters of a console search; every set filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleFilter {
    /// The publishing agency.
    pub publisher: Option<String>,
    /// The receiving (or denied, or acknowledging) agency.
    pub recipient: Option<String>,
    /// The entry kind, as stored.
    pub kind: Option<String>,
    /// The legal basis.
    pub legal_basis: Option<String>,
    /// The rule.
    pub rule_id: Option<String>,
    /// The alert type.
    pub alert_type: Option<String>,
    /// The logical topic.
    pub topic: Option<String>,
    /// The alert id.
    pub alert_id: Option<String>,
    /// Entries at or after this time (ms).
    pub from_ms: Option<i64>,
    /// Entries before this time (ms).
    pub to_ms: Option<i64>,
    /// Exactly this entry index.
    pub index: Option<u64>,
}

/// Which page of a search, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest entries.
    Newest,
    /// Entries with a smaller index (older), newest first.
    Before(u64),
    /// Entries with a larger index (newer), newest first.
    After(u64),
}

/// One cell of the overview: entries of one kind between two agencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowCount {
    /// `share` or `denial`.
    pub kind: String,
    /// The publishing agency.
    pub publisher: String,
    /// The recipient (`None`: a denial of every recipient).
    pub recipient: Option<String>,
    /// The legal basis (shares).
    pub legal_basis: Option<String>,
    /// How many.
    pub count: i64,
}

/// Builds `WHERE` clauses with `$n` placeholders.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    binds: Vec<BindValue>,
}

impl Conditions {
    fn text(&mut self, clause: impl Fn(usize) -> String, value: &str) {
        self.binds.push(BindValue::Text(value.to_string()));
        self.clauses.push(clause(self.binds.len()));
    }
    fn int(&mut self, clause: impl Fn(usize) -> String, value: i64) {
        self.binds.push(BindValue::Int(value));
        self.clauses.push(clause(self.binds.len()));
    }
    fn scope(&mut self, scope: &Scope) {
        if let Scope::Agency(agency) = scope {
            self.text(
                |n| format!("(publisher = ${n} OR recipient = ${n})"),
                agency,
            );
        }
    }
    /// The scope as a condition no index serves: for reads that a time
    /// range bounds (an OR of the agency's two indexes would read every
    /// entry of the agency instead of the range's).
    fn scope_unindexed(&mut self, scope: &Scope) {
        if let Scope::Agency(agency) = scope {
            self.text(
                |n| format!("(COALESCE(publisher, '') = ${n} OR COALESCE(recipient, '') = ${n})"),
                agency,
            );
        }
    }
    fn filter(&mut self, f: &ConsoleFilter) {
        let text_filters = [
            ("publisher", &f.publisher),
            ("recipient", &f.recipient),
            ("kind", &f.kind),
            ("legal_basis", &f.legal_basis),
            ("rule_id", &f.rule_id),
            ("alert_type", &f.alert_type),
            ("topic", &f.topic),
            ("alert_id", &f.alert_id),
        ];
        for (column, value) in text_filters {
            if let Some(v) = value {
                self.text(|n| format!("{column} = ${n}"), v);
            }
        }
        if let Some(v) = f.from_ms {
            self.int(|n| format!("at_ms >= ${n}"), v);
        }
        if let Some(v) = f.to_ms {
            self.int(|n| format!("at_ms < ${n}"), v);
        }
        if let Some(v) = f.index {
            self.int(|n| format!("idx = ${n}"), to_i64(v));
        }
    }
    fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
    /// The statement with its parameters. Not a cached prepared statement:
    /// PostgreSQL would soon plan it once for any value (a generic plan),
    /// which for an equality on a column with a few common values is a scan
    /// of the whole log in index order, disastrous for a rare value. Planned
    /// with the values each time, it uses the value's own index range.
    fn query<'q>(self, sql: String) -> super::AnyQuery<'q> {
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for b in self.binds {
            q = b.bind_to(q);
        }
        q
    }
}

/// The SQL of a search page and its parameters.
///
/// An agency's scope is a union of two searches, entries the agency
/// published and entries it received (published by another), each newest
/// first from its own index on (column, idx) and cut at the page size:
/// written as one `OR`, the database would read every entry of the agency
/// and sort them to find the newest page.
fn search_sql(
    scope: &Scope,
    filter: &ConsoleFilter,
    cursor: Cursor,
    limit: u32,
) -> (Conditions, String) {
    let mut c = Conditions::default();
    let agency = match scope {
        Scope::All => None,
        Scope::Agency(a) => {
            c.binds.push(BindValue::Text(a.clone()));
            Some(c.binds.len())
        }
    };
    c.filter(filter);
    let order = match cursor {
        Cursor::Newest => "DESC",
        Cursor::Before(i) => {
            c.int(|n| format!("idx < ${n}"), to_i64(i));
            "DESC"
        }
        Cursor::After(i) => {
            c.int(|n| format!("idx > ${n}"), to_i64(i));
            "ASC"
        }
    };
    let select = |party: Option<String>| {
        let clauses: Vec<&str> = party
            .as_deref()
            .into_iter()
            .chain(c.clauses.iter().map(String::as_str))
            .collect();
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_entries{filter} ORDER BY idx {order} LIMIT {limit}"
        )
    };
    let sql = match agency {
        None => select(None),
        Some(a) => format!(
            "SELECT * FROM ({}) AS published UNION ALL SELECT * FROM ({}) AS received \
             ORDER BY idx {order} LIMIT {limit}",
            select(Some(format!("publisher = ${a}"))),
            select(Some(format!(
                "recipient = ${a} AND (publisher IS NULL OR publisher <> ${a})"
            ))),
        ),
    };
    (c, sql)
}

/// The overview counts days of Swedish winter time: UTC+1.
pub const DAY_OFFSET_MS: i64 = 3_600_000;
/// A day.
pub const DAY_MS: i64 = 86_400_000;

/// The day (of [`DAY_OFFSET_MS`]) an entry time falls on.
pub fn day_of(at_ms: i64) -> i64 {
    at_ms.saturating_add(DAY_OFFSET_MS).div_euclid(DAY_MS)
}

/// When day `day` starts (ms).
fn day_start(day: i64) -> i64 {
    day.saturating_mul(DAY_MS).saturating_sub(DAY_OFFSET_MS)
}

/// A row of `audit_day_counts`; `''` stands for an empty column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayKey {
    /// See [`day_of`].
    pub day: i64,
    /// The entry kind.
    pub kind: String,
    /// The publisher, or `''`.
    pub publisher: String,
    /// The recipient, or `''`.
    pub recipient: String,
    /// The legal basis, or `''`.
    pub legal_basis: String,
}

/// What `entries` add to `audit_day_counts`, one row per key.
pub fn day_counts<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Vec<(DayKey, i64)> {
    let mut counts: BTreeMap<DayKey, i64> = BTreeMap::new();
    for e in entries {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        *counts
            .entry(DayKey {
                day: day_of(e.at_ms),
                kind: e.kind.as_str().to_string(),
                publisher: text(&e.publisher),
                recipient: text(&e.recipient),
                legal_basis: text(&e.legal_basis),
            })
            .or_default() += 1;
    }
    counts.into_iter().collect()
}

/// `[from, to)` split into the whole days in it, read from the day counts,
/// and the parts before and after them, counted from the entries.
struct Split {
    /// Whole days `[first, end)`, if any.
    days: Option<(i64, i64)>,
    /// Time ranges read from the entries themselves.
    edges: Vec<(i64, i64)>,
}

fn split(from_ms: i64, to_ms: i64) -> Split {
    let first = from_ms
        .saturating_add(DAY_OFFSET_MS + DAY_MS - 1)
        .div_euclid(DAY_MS);
    let end = day_of(to_ms);
    if first >= end {
        return Split {
            days: None,
            edges: vec![(from_ms, to_ms)],
        };
    }
    let mut edges = Vec::new();
    if from_ms < day_start(first) {
        edges.push((from_ms, day_start(first)));
    }
    if day_start(end) < to_ms {
        edges.push((day_start(end), to_ms));
    }
    Split {
        days: Some((first, end)),
        edges,
    }
}

impl Store {
    /// One page of entries matching `filter` within `scope`, newest first
    /// (by index, so the order is stable however the log grows).
    pub async fn console_search(
        &self,
        scope: &Scope,
        filter: &ConsoleFilter,
        cursor: Cursor,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (c, sql) = search_sql(scope, filter, cursor, limit);
        let rows = c.query(sql).fetch_all(&self.pool).await?;
        let mut entries = rows
            .iter()
            .map(decode_audit)
            .collect::<Result<Vec<_>, _>>()?;
        if matches!(cursor, Cursor::After(_)) {
            entries.reverse();
        }
        Ok(entries)
    }

    /// The database's plan for [`Self::console_search`] with these
    /// arguments (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL),
    /// one line per row: to check which indexes a search uses.
    pub async fn console_search_plan(
        &self,
        scope: &Scope,
        filter: &ConsoleFilter,
        cursor: Cursor,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let (c, sql) = search_sql(scope, filter, cursor, limit);
        let (prefix, column) = match self.backend {
            super::Backend::Sqlite => ("EXPLAIN QUERY PLAN ", "detail"),
            super::Backend::Postgres => ("EXPLAIN ", "QUERY PLAN"),
        };
        let rows = c
            .query(format!("{prefix}{sql}"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>(column)?))
            .collect()
    }

    /// Entry `index`, if it exists within `scope` (an entry outside the
    /// scope is indistinguishable from a missing one).
    pub async fn console_entry(
        &self,
        scope: &Scope,
        index: u64,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let filter = ConsoleFilter {
            index: Some(index),
            ..ConsoleFilter::default()
        };
        Ok(self
            .console_search(scope, &filter, Cursor::Newest, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Entries of one alert within `scope`, oldest first.
    pub async fn console_alert(
        &self,
        scope: &Scope,
        alert_id: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut c = Conditions::default();
        c.scope(scope);
        c.text(|n| format!("alert_id = ${n}"), alert_id);
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_entries{} ORDER BY idx LIMIT 1000",
            c.where_sql()
        );
        let rows = c.query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode_audit).collect()
    }

    /// Entries about one subject (keyed hash) within `scope`, newest first,
    /// at most `limit`.
    pub async fn console_subject(
        &self,
        scope: &Scope,
        subject_hash: &str,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut c = Conditions::default();
        c.scope(scope);
        c.text(
            |n| format!("idx IN (SELECT idx FROM audit_subjects WHERE subject_hash = ${n})"),
            subject_hash,
        );
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_entries{} ORDER BY idx DESC LIMIT {limit}",
            c.where_sql()
        );
        let rows = c.query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode_audit).collect()
    }

    /// When each of the given shares (by the index of its entry) was
    /// stored for delivery and when it was acknowledged:
    /// `(share_id, created_at_ms, acked_at_ms)`.
    pub async fn console_deliveries(
        &self,
        share_entries: &[u64],
    ) -> Result<Vec<(String, i64, Option<i64>)>, StoreError> {
        let mut out = Vec::new();
        for idx in share_entries.iter().take(1000) {
            let row = sqlx::query(
                "SELECT share_id, created_at_ms, acked_at_ms FROM deliveries WHERE audit_idx = $1",
            )
            .bind(to_i64(*idx))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                out.push((
                    row.try_get("share_id")?,
                    row.try_get("created_at_ms")?,
                    row.try_get("acked_at_ms")?,
                ));
            }
        }
        Ok(out)
    }

    /// Shares (per legal basis) and denials between each pair of agencies
    /// in `[from_ms, to_ms)`, within `scope`: whole days from the day
    /// counts, the rest from the entries.
    pub async fn console_flows(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<FlowCount>, StoreError> {
        type Key = (String, String, Option<String>, Option<String>);
        let mut total: BTreeMap<Key, i64> = BTreeMap::new();
        let parts = split(from_ms, to_ms);
        let mut add = |flows: Vec<FlowCount>| {
            for f in flows {
                *total
                    .entry((f.kind, f.publisher, f.recipient, f.legal_basis))
                    .or_default() += f.count;
            }
        };
        if let Some((first, end)) = parts.days {
            let mut c = Conditions::default();
            c.int(|n| format!("day >= ${n}"), first);
            c.int(|n| format!("day < ${n}"), end);
            c.clauses.push("kind IN ('share', 'denial')".into());
            c.scope(scope);
            let sql = format!(
                "SELECT kind, publisher, NULLIF(recipient, '') AS recipient, \
                 NULLIF(legal_basis, '') AS legal_basis, CAST(SUM(n) AS BIGINT) AS n \
                 FROM audit_day_counts{} GROUP BY kind, publisher, recipient, legal_basis",
                c.where_sql()
            );
            add(decode_flows(c.query(sql).fetch_all(&self.pool).await?)?);
        }
        for (from, to) in parts.edges {
            add(self.entry_flows(scope, from, to).await?);
        }
        Ok(total
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(
                |((kind, publisher, recipient, legal_basis), count)| FlowCount {
                    kind,
                    publisher,
                    recipient,
                    legal_basis,
                    count,
                },
            )
            .collect())
    }

    /// [`Self::console_flows`] counted from the entries alone.
    pub async fn entry_flows(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<FlowCount>, StoreError> {
        let mut c = Conditions::default();
        c.int(|n| format!("at_ms >= ${n}"), from_ms);
        c.int(|n| format!("at_ms < ${n}"), to_ms);
        c.clauses.push("kind IN ('share', 'denial')".into());
        c.scope_unindexed(scope);
        let sql = format!(
            "SELECT kind, publisher, recipient, legal_basis, COUNT(*) AS n FROM audit_entries{} \
             GROUP BY kind, publisher, recipient, legal_basis",
            c.where_sql()
        );
        decode_flows(c.query(sql).fetch_all(&self.pool).await?)
    }

    /// Every row of `audit_day_counts` (for `audit verify`, which recounts
    /// them from the log).
    pub async fn day_count_rows(&self) -> Result<Vec<(DayKey, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT day, kind, publisher, recipient, legal_basis, n FROM audit_day_counts",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    DayKey {
                        day: row.try_get("day")?,
                        kind: row.try_get("kind")?,
                        publisher: row.try_get("publisher")?,
                        recipient: row.try_get("recipient")?,
                        legal_basis: row.try_get("legal_basis")?,
                    },
                    row.try_get("n")?,
                ))
            })
            .collect()
    }

    /// Entries per kind per day (of [`DAY_OFFSET_MS`]) in `[from_ms,
    /// to_ms)`, within `scope`: `(day start ms, kind, count)`, by day and
    /// kind. Whole days come from the day counts, the rest from the entries.
    pub async fn console_kind_counts(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let mut total: BTreeMap<(i64, String), i64> = BTreeMap::new();
        let parts = split(from_ms, to_ms);
        if let Some((first, end)) = parts.days {
            let mut c = Conditions::default();
            c.int(|n| format!("day >= ${n}"), first);
            c.int(|n| format!("day < ${n}"), end);
            c.scope(scope);
            let sql = format!(
                "SELECT day, kind, CAST(SUM(n) AS BIGINT) AS n FROM audit_day_counts{} \
                 GROUP BY day, kind",
                c.where_sql()
            );
            for row in c.query(sql).fetch_all(&self.pool).await? {
                let day: i64 = row.try_get("day")?;
                *total
                    .entry((day_start(day), row.try_get("kind")?))
                    .or_default() += row.try_get::<i64, _>("n")?;
            }
        }
        for (from, to) in parts.edges {
            for (day, kind, n) in self.entry_kind_counts(scope, from, to).await? {
                *total.entry((day, kind)).or_default() += n;
            }
        }
        Ok(total
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((day, kind), n)| (day, kind, n))
            .collect())
    }

    /// [`Self::console_kind_counts`] counted from the entries alone.
    pub async fn entry_kind_counts(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let mut c = Conditions::default();
        c.int(|n| format!("at_ms >= ${n}"), from_ms);
        c.int(|n| format!("at_ms < ${n}"), to_ms);
        c.scope_unindexed(scope);
        // Constants are written into the SQL (integers only): PostgreSQL
        // cannot infer a parameter's type inside the arithmetic.
        let sql = format!(
            "SELECT (at_ms + {DAY_OFFSET_MS}) / {DAY_MS} AS bucket, kind, COUNT(*) AS n FROM audit_entries{} \
             GROUP BY bucket, kind ORDER BY bucket, kind",
            c.where_sql()
        );
        let rows = c.query(sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let bucket: i64 = row.try_get("bucket")?;
                Ok((day_start(bucket), row.try_get("kind")?, row.try_get("n")?))
            })
            .collect()
    }
}

fn decode_flows(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<FlowCount>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(FlowCount {
                kind: row.try_get("kind")?,
                publisher: row
                    .try_get::<Option<String>, _>("publisher")?
                    .unwrap_or_default(),
                recipient: row.try_get("recipient")?,
                legal_basis: row.try_get("legal_basis")?,
                count: row.try_get("n")?,
            })
        })
        .collect()
}
