//! What differs between SQLite and PostgreSQL, and the statement helpers
//! shared by the store's modules: migrations, connection pragmas,
//! placeholders and multi-row inserts.

use sqlx::any::AnyArguments;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyConnection, AnyPool, Arguments, AssertSqlSafe, Encode, Executor, Type};

use super::StoreError;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    pub(super) fn of_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    /// Sets up a new connection: for SQLite, the journal and durability.
    pub(super) async fn prepare(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        if self == Backend::Sqlite {
            // WAL lets readers run beside the single writer; FULL makes
            // every commit durable across power loss (group commit keeps
            // that affordable).
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.execute("PRAGMA synchronous = FULL").await?;
            // The log is copied into the database file by `checkpoint_wal`,
            // off the commit path; a commit does it itself only if that
            // falls 64 MiB behind.
            conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
            conn.execute("PRAGMA journal_size_limit = 67108864").await?;
            conn.execute("PRAGMA busy_timeout = 5000").await?;
            conn.execute("PRAGMA foreign_keys = ON").await?;
        }
        Ok(())
    }

    /// Sets up the connection that commits batches: for SQLite, statement
    /// journals in memory. A multi-row insert keeps one to undo itself
    /// alone; as a temporary file it cost a write per page it touched (it is
    /// discarded when the statement ends, so a crash loses nothing durable).
    /// Only the writer: the readers' sorts stay spilled to disk.
    pub(super) async fn prepare_writer(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        self.prepare(conn).await?;
        match self {
            Backend::Sqlite => {
                conn.execute("PRAGMA temp_store = MEMORY").await?;
            }
            // A node waits at most this long for the log's sequencing lock
            // (several nodes): one whose holder hangs fails its batch, and
            // its clients resend, rather than waiting without end.
            Backend::Postgres => {
                conn.execute("SET lock_timeout = '5s'").await?;
            }
        }
        Ok(())
    }

    /// Work after the migrations: for SQLite, statistics for the planner
    /// (which of the console's indexes narrows a search most), gathered
    /// when the tables have grown since the last time, on a sample: quick
    /// even on a large log. PostgreSQL's autovacuum keeps its own.
    pub(super) async fn after_migrations(self, pool: &AnyPool) -> Result<(), sqlx::Error> {
        if self == Backend::Sqlite {
            sqlx::query("PRAGMA optimize = 0x10002")
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// The migrations, in order; a database created by an older broker gets
    /// the ones it lacks at the next start.
    pub(super) fn migrator(self) -> Migrator {
        let files: [(&'static str, &'static str); 5] = match self {
            Backend::Sqlite => [
                (
                    "init",
                    include_str!("../../migrations/sqlite/0001_init.sql"),
                ),
                (
                    "cosignatures",
                    include_str!("../../migrations/sqlite/0002_cosignatures.sql"),
                ),
                (
                    "console",
                    include_str!("../../migrations/sqlite/0003_console.sql"),
                ),
                (
                    "compact",
                    include_str!("../../migrations/sqlite/0004_compact.sql"),
                ),
                (
                    "cluster",
                    include_str!("../../migrations/sqlite/0005_cluster.sql"),
                ),
            ],
            Backend::Postgres => [
                (
                    "init",
                    include_str!("../../migrations/postgres/0001_init.sql"),
                ),
                (
                    "cosignatures",
                    include_str!("../../migrations/postgres/0002_cosignatures.sql"),
                ),
                (
                    "console",
                    include_str!("../../migrations/postgres/0003_console.sql"),
                ),
                (
                    "compact",
                    include_str!("../../migrations/postgres/0004_compact.sql"),
                ),
                (
                    "cluster",
                    include_str!("../../migrations/postgres/0005_cluster.sql"),
                ),
            ],
        };
        Migrator::with_migrations(
            files
                .into_iter()
                .zip(1..)
                .map(|((name, sql), version)| {
                    Migration::new(
                        version,
                        name.into(),
                        MigrationType::Simple,
                        sqlx::SqlStr::from_static(sql),
                        false,
                    )
                })
                .collect(),
        )
    }
}

/// `($1, …, $k), ($k+1, …)` for `rows` rows of `cols` columns.
///
/// SQLite gets anonymous `?` placeholders: sqlx looks every parameter up by
/// name, and SQLite's name lookup is linear, so numbered placeholders make
/// a statement's binding quadratic in its size (it was a tenth of the
/// broker's CPU time under load).
pub(super) fn placeholders(backend: Backend, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match backend {
                Backend::Sqlite => s.push('?'),
                Backend::Postgres => {
                    s.push('$');
                    s.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        s.push(')');
    }
    s
}

/// `(…)` with `n` placeholders numbered from `after + 1` (PostgreSQL) or anonymous (SQLite).
pub(super) fn placeholders_after(backend: Backend, after: usize, n: usize) -> String {
    let mut s = String::from("(");
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        match backend {
            Backend::Sqlite => s.push('?'),
            Backend::Postgres => {
                s.push('$');
                s.push_str(&(after + i + 1).to_string());
            }
        }
    }
    s.push(')');
    s
}

/// Rows per multi-row INSERT. Only these few sizes are used (a batch of 300
/// rows is written as 256 + 32 + 8 + 4), so every statement comes from
/// sqlx's prepared-statement cache instead of being parsed anew per batch.
const CHUNKS: [usize; 6] = [256, 64, 32, 8, 4, 1];

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Values bound, in order, to the placeholders of a statement or a script.
#[derive(Default)]
pub(super) struct Binds {
    args: AnyArguments,
    /// The first value that could not be encoded; the statement then fails.
    error: Option<BoxDynError>,
}

impl Binds {
    /// Binds `value` to the next placeholder.
    pub(super) fn bind<'t, T: Encode<'t, Any> + Type<Any>>(mut self, value: T) -> Self {
        if self.error.is_none()
            && let Err(e) = self.args.add(value)
        {
            self.error = Some(e);
        }
        self
    }
}

/// Statements most gathered into one SQLite script.
const SCRIPT_STATEMENTS: usize = 64;

/// The statements of one transaction, in order. On SQLite they go to the
/// database as scripts (`;`-separated, anonymous placeholders bound in
/// order across them): sqlx runs SQLite on a thread of its own and every
/// query is a round trip to it, two thread switches each, which at
/// moderate rates was a third of the broker's switches. PostgreSQL takes
/// one statement per query with parameters, so there each statement runs
/// as it is added.
pub(super) struct Script {
    backend: Backend,
    sql: String,
    binds: Binds,
    statements: usize,
}

impl Script {
    pub(super) fn new(backend: Backend) -> Self {
        Self {
            backend,
            sql: String::new(),
            binds: Binds::default(),
            statements: 0,
        }
    }

    /// Adds `sql`, whose placeholders `bind` binds.
    pub(super) async fn add(
        &mut self,
        tx: &mut sqlx::Transaction<'_, Any>,
        sql: &str,
        bind: impl FnOnce(Binds) -> Binds,
    ) -> Result<(), StoreError> {
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        self.sql.push_str(sql);
        self.binds = bind(std::mem::take(&mut self.binds));
        self.statements += 1;
        if self.backend == Backend::Postgres || self.statements >= SCRIPT_STATEMENTS {
            self.run(tx).await?;
        }
        Ok(())
    }

    /// Runs what has been added and not yet run.
    pub(super) async fn run(
        &mut self,
        tx: &mut sqlx::Transaction<'_, Any>,
    ) -> Result<(), StoreError> {
        if self.sql.is_empty() {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.sql);
        let Binds { args, error } = std::mem::take(&mut self.binds);
        self.statements = 0;
        if let Some(e) = error {
            return Err(StoreError::Database(sqlx::Error::Encode(e)));
        }
        // SQLite's scripts are not kept in sqlx's statement cache: they
        // rarely repeat, and a cache of 100 scripts of large inserts held
        // hundreds of megabytes. PostgreSQL's single statements come in
        // the few sizes of `CHUNKS` and stay prepared.
        sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(self.backend == Backend::Postgres)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Adds inserts of `rows` to `script` with `insert` (`INSERT INTO t
/// (cols)`), `cols` values per row. `insert` may end with `…ON CONFLICT DO
/// NOTHING` after a `|`.
pub(super) async fn insert_rows<T>(
    script: &mut Script,
    tx: &mut sqlx::Transaction<'_, Any>,
    insert: &str,
    cols: usize,
    rows: &[T],
    bind: impl Fn(Binds, &T) -> Binds,
) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let size = CHUNKS
            .iter()
            .copied()
            .find(|&c| c <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        let (head, tail_sql) = insert.split_once('|').unwrap_or((insert, ""));
        let sql = format!(
            "{head} VALUES {}{tail_sql}",
            placeholders(script.backend, size, cols)
        );
        script
            .add(tx, &sql, |mut binds| {
                for row in chunk {
                    binds = bind(binds, row);
                }
                binds
            })
            .await?;
        rest = tail;
    }
    Ok(())
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// A value bound to a statement built at run time.
pub(super) enum BindValue {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
}

impl BindValue {
    /// Binds the value as the next parameter of `q`.
    pub(super) fn bind_to(self, q: AnyQuery<'_>) -> AnyQuery<'_> {
        match self {
            BindValue::Text(t) => q.bind(t),
            BindValue::Int(i) => q.bind(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_row_major() {
        assert_eq!(
            placeholders(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Backend::Sqlite, 1, 2), "(?, ?)");
    }
}
