//! A highly available PostgreSQL on this machine, for tests of brokers that
//! share one database: a primary and a synchronous streaming standby, both
//! listening on free ports of 127.0.0.1 only, in a temporary directory that
//! is removed afterwards.
//!
//! The servers are Debian's PostgreSQL 15 binaries
//! ([`DEFAULT_PG_BIN`], or the directory named by [`PG_BIN_ENV`]), run as
//! the `postgres` user when the tests run as root (as CI does), as the
//! current user otherwise. Authentication is `trust`, for local and
//! 127.0.0.1 connections and for replication: the URLs carry no password.
//!
//! The primary commits a transaction only once the standby has written it
//! to disk (`synchronous_commit = on` with the standby as the one named in
//! `synchronous_standby_names`), so a committed row is on the standby when
//! the primary dies. That setting is given to the primary alone, on its
//! command line: a promoted standby has no standby of its own and commits
//! without waiting for one.
//!
//! Every wait is bounded (a few seconds each) and panics with both servers'
//! logs. Dropping a [`PgCluster`] stops both servers at once (`pg_ctl stop
//! -m immediate`, SIGKILL if that fails) and removes the directory.
//!
//! ```no_run
//! use samverkan_e2e::pg_cluster::PgCluster;
//!
//! let cluster = PgCluster::start();
//! cluster.create_database("samverkan");
//! let url = cluster.multi_host_url("samverkan"); // postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/samverkan
//! // … brokers write through `url` …
//! cluster.kill_primary();
//! cluster.promote_standby();
//! assert_eq!(cluster.standby().in_recovery(), Some(false));
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::free_port;

/// Where Debian installs the PostgreSQL 15 server programs.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// An environment variable naming another directory with `initdb`,
/// `pg_ctl`, `pg_basebackup` and `psql`.
pub const PG_BIN_ENV: &str = "SAMVERKAN_PG_BIN";
/// The standby's `application_name`, as `synchronous_standby_names` names it.
pub const STANDBY_NAME: &str = "standby1";

/// Longest wait for one server to start, stop or be promoted.
const SERVER_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the standby to become the synchronous one, or to
/// replay what the primary wrote.
const REPLICATION_WAIT: Duration = Duration::from_secs(10);
/// Longest time any one program of PostgreSQL's may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);
/// Attempts at a free port (another process may take the one chosen).
const PORT_ATTEMPTS: usize = 3;

/// How the PostgreSQL programs are run.
#[derive(Debug, Clone)]
struct Tools {
    bin: PathBuf,
    /// Through `runuser -u postgres`: the tests run as root, which
    /// PostgreSQL refuses.
    as_postgres: bool,
}

impl Tools {
    fn find() -> Self {
        let bin = std::env::var_os(PG_BIN_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        for tool in ["initdb", "pg_ctl", "pg_basebackup", "psql"] {
            assert!(
                bin.join(tool).exists(),
                "{} is missing: the PostgreSQL cluster tests need the PostgreSQL 15 server \
                 programs (Debian: apt-get install postgresql-15), or {PG_BIN_ENV} naming \
                 the directory that has them",
                bin.join(tool).display()
            );
        }
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        Self { bin, as_postgres }
    }

    /// `tool` with `args`, killed after `limit` (coreutils `timeout`), as
    /// the postgres user when running as root, without the caller's `PG…`
    /// environment (a PGHOST or PGSSLMODE of the test run would redirect it).
    fn run(&self, tool: &str, args: &[&str], limit: Duration) -> Output {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "timeout"]);
            c
        } else {
            Command::new("timeout")
        };
        command
            .args(["-k", "2", &limit.as_secs().to_string()])
            .arg(self.bin.join(tool))
            .args(args)
            // A working directory the postgres user can always enter.
            .current_dir("/");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
    }

    /// Makes `dir` the postgres user's (the tests run as root).
    fn hand_over(&self, dir: &Path) {
        if !self.as_postgres {
            return;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id");
            assert!(
                out.status.success(),
                "there is no `postgres` user: the PostgreSQL cluster tests run the servers as \
                 that user when run as root (Debian's postgresql package makes it)"
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        std::os::unix::fs::chown(dir, Some(id("-u")), Some(id("-g"))).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let writable = Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-w"])
            .arg(dir)
            .status()
            .expect("run test");
        assert!(
            writable.success(),
            "the postgres user cannot reach {}: every directory above it must be \
             traversable by others (set TMPDIR to one that is, e.g. /tmp)",
            dir.display()
        );
    }
}

/// Output of a program as one text, for messages.
fn shown(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One server of the pair.
#[derive(Debug)]
pub struct PgServer {
    role: &'static str,
    port: u16,
    data: PathBuf,
    log: PathBuf,
    tools: Tools,
}

impl PgServer {
    /// "primary" or "standby": the role the server started in (after a
    /// failover see [`Self::in_recovery`]).
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of `database` on this server.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The postmaster's process id while its pid file is there.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Whether its postmaster is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(alive)
    }

    /// Runs `sql` in `database` with psql (bounded); the rows, unaligned,
    /// `|` between columns, or psql's message.
    pub fn sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let output = self.tools.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &format!(
                    "host=127.0.0.1 port={port} user=postgres dbname={database} connect_timeout=3"
                ),
                "-c",
                sql,
            ],
            COMMAND_LIMIT,
        );
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(shown(&output))
        }
    }

    /// `Some(true)` while it replays a primary's log, `Some(false)` when it
    /// accepts writes, `None` when it cannot be asked (not running).
    pub fn in_recovery(&self) -> Option<bool> {
        match self
            .sql("postgres", "SELECT pg_is_in_recovery()")
            .ok()?
            .as_str()
        {
            "t" => Some(true),
            "f" => Some(false),
            _ => None,
        }
    }

    /// Starts it; `options` go to the postmaster. A port that another
    /// process took in the meantime is replaced by a new free one.
    fn start(&mut self, options: &str) -> Result<(), String> {
        let data = self.data.display().to_string();
        let log = self.log.display().to_string();
        let wait = SERVER_WAIT.as_secs().to_string();
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let postmaster = format!("-p {} {options}", self.port);
            let output = self.tools.run(
                "pg_ctl",
                &[
                    "-D",
                    &data,
                    "-l",
                    &log,
                    "-w",
                    "-t",
                    &wait,
                    "-o",
                    &postmaster,
                    "start",
                ],
                COMMAND_LIMIT,
            );
            if output.status.success() {
                return Ok(());
            }
            last = shown(&output);
            if !self.log_text().contains("Address already in use") {
                break;
            }
            self.port = free_port();
        }
        Err(last)
    }

    /// Stops it at once, as a crash would (no shutdown checkpoint); then,
    /// if it is still running, kills it.
    pub fn stop_immediate(&self) {
        if !self.is_running() {
            return;
        }
        let data = self.data.display().to_string();
        let wait = SERVER_WAIT.as_secs().to_string();
        let _ = self.tools.run(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "-t", &wait, "stop"],
            COMMAND_LIMIT,
        );
        if self.is_running() {
            self.kill_and_wait();
        }
    }

    /// Kills the postmaster and every process it started with SIGKILL at
    /// once (the machine died), and waits until they are gone.
    pub fn kill(&self) {
        assert!(
            self.kill_and_wait(),
            "the {} outlived SIGKILL for {SERVER_WAIT:?}",
            self.role
        );
    }

    /// [`Self::kill`]; whether every process ended in time (no panic: also
    /// used when dropped).
    fn kill_and_wait(&self) -> bool {
        let Some(postmaster) = self.postmaster_pid() else {
            return true;
        };
        let mut pids = children_of(postmaster);
        pids.push(postmaster);
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .output();
        let deadline = Instant::now() + SERVER_WAIT;
        while pids.iter().copied().any(alive) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its small System V segment outlives it; nothing else would remove it.
        if let Some(id) = self.shared_memory_id() {
            let _ = Command::new("ipcrm").args(["-m", &id]).output();
        }
        true
    }

    /// The System V shared memory id in the pid file (line 7: key, id).
    fn shared_memory_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let line = text.lines().nth(6)?;
        let id = line.split_whitespace().nth(1)?;
        Some(id.to_string())
    }
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A primary and its synchronous streaming standby.
pub struct PgCluster {
    primary: PgServer,
    standby: PgServer,
    // Declared last: dropped after `Drop::drop` stopped the servers.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// Makes and starts the primary, copies it with `pg_basebackup -R` into
    /// the standby, starts that and waits until the primary names it as
    /// its synchronous standby. Panics, with both logs, if any step fails.
    pub fn start() -> Self {
        let tools = Tools::find();
        let dir = tempfile::Builder::new()
            .prefix("samverkan-pg-")
            .tempdir()
            .unwrap();
        tools.hand_over(dir.path());
        let server = |role| PgServer {
            role,
            port: free_port(),
            data: dir.path().join(role),
            log: dir.path().join(format!("{role}.log")),
            tools: tools.clone(),
        };
        let mut cluster = Self {
            primary: server("primary"),
            standby: server("standby"),
            dir,
        };
        cluster.init_primary();
        let synchronous = format!("-c \"synchronous_standby_names=FIRST 1 ({STANDBY_NAME})\"");
        if let Err(e) = cluster.primary.start(&synchronous) {
            cluster.fail(&format!("the primary did not start: {e}"));
        }
        cluster.copy_primary();
        if let Err(e) = cluster.standby.start("") {
            cluster.fail(&format!("the standby did not start: {e}"));
        }
        cluster.wait_for_sync_standby();
        cluster
    }

    /// `initdb` with trust authentication and the settings both servers share.
    fn init_primary(&self) {
        let data = self.primary.data.display().to_string();
        let output = self.primary.tools.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                // The test's data dies with the test; the servers fsync.
                "--no-sync",
            ],
            COMMAND_LIMIT,
        );
        if !output.status.success() {
            self.fail(&format!("initdb failed: {}", shown(&output)));
        }
        // Written over initdb's files, which stay the postgres user's.
        std::fs::write(
            self.primary.data.join("pg_hba.conf"),
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let settings = format!(
            "\n# samverkan-e2e pg_cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             wal_level = replica\n\
             max_wal_senders = 4\n\
             hot_standby = on\n\
             synchronous_commit = on\n\
             fsync = on\n",
            self.dir.path().display()
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.primary.data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut conf, settings.as_bytes()).unwrap();
    }

    /// `pg_basebackup -R` of the primary into the standby's directory; the
    /// connection's application_name makes it the synchronous standby.
    fn copy_primary(&self) {
        let data = self.standby.data.display().to_string();
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}",
            self.primary.port
        );
        let output = self.primary.tools.run(
            "pg_basebackup",
            &[
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
                "-d",
                &conninfo,
            ],
            COMMAND_LIMIT,
        );
        if !output.status.success() {
            self.fail(&format!("pg_basebackup failed: {}", shown(&output)));
        }
    }

    /// The server started as the primary.
    pub fn primary(&self) -> &PgServer {
        &self.primary
    }

    /// The server started as the standby.
    pub fn standby(&self) -> &PgServer {
        &self.standby
    }

    /// The running server that accepts writes, if one does.
    pub fn current_primary(&self) -> Option<&PgServer> {
        [&self.primary, &self.standby]
            .into_iter()
            .find(|s| s.in_recovery() == Some(false))
    }

    /// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/{database}`: both
    /// servers, the primary first.
    pub fn multi_host_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}",
            self.primary.port, self.standby.port
        )
    }

    /// Creates `database` on the primary and waits until the standby has
    /// replayed it. `database` is letters, digits and `_`.
    pub fn create_database(&self, database: &str) {
        assert!(
            !database.is_empty()
                && database
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {database:?}: letters, digits and _ only"
        );
        if let Err(e) = self
            .primary
            .sql("postgres", &format!("CREATE DATABASE {database}"))
        {
            self.fail(&format!("CREATE DATABASE {database} failed: {e}"));
        }
        self.wait_for_replay();
    }

    /// Waits until the primary names the standby, streaming, as its
    /// synchronous standby (`pg_stat_replication.sync_state = 'sync'`).
    pub fn wait_for_sync_standby(&self) {
        let query = format!(
            "SELECT sync_state FROM pg_stat_replication \
             WHERE application_name = '{STANDBY_NAME}' AND state = 'streaming'"
        );
        let deadline = Instant::now() + REPLICATION_WAIT;
        let mut last;
        loop {
            last = self.primary.sql("postgres", &query);
            if last.as_deref() == Ok("sync") {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail(&format!(
            "the standby did not become the primary's synchronous standby within \
             {REPLICATION_WAIT:?} (last answer: {last:?})"
        ));
    }

    /// Waits until the standby has replayed everything the primary wrote
    /// so far (so that what was committed can be read there).
    pub fn wait_for_replay(&self) {
        let lsn = match self.primary.sql("postgres", "SELECT pg_current_wal_lsn()") {
            Ok(lsn) => lsn,
            Err(e) => self.fail(&format!("cannot ask the primary's position: {e}")),
        };
        let query = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let deadline = Instant::now() + REPLICATION_WAIT;
        while self.standby.sql("postgres", &query).as_deref() != Ok("t") {
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the standby did not replay up to {lsn} within {REPLICATION_WAIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL of the primary's postmaster and of every process it started.
    pub fn kill_primary(&self) {
        self.primary.kill();
    }

    /// `pg_ctl promote -w`: the standby ends recovery and accepts writes.
    pub fn promote_standby(&self) {
        let data = self.standby.data.display().to_string();
        let wait = SERVER_WAIT.as_secs().to_string();
        let output = self.standby.tools.run(
            "pg_ctl",
            &["-D", &data, "-w", "-t", &wait, "promote"],
            COMMAND_LIMIT,
        );
        if !output.status.success() {
            self.fail(&format!("promotion failed: {}", shown(&output)));
        }
    }

    /// Both servers' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- primary log (port {}) ---\n{}\n--- standby log (port {}) ---\n{}",
            self.primary.port,
            self.primary.log_text(),
            self.standby.port,
            self.standby.log_text()
        )
    }

    /// Panics with `message` and both logs.
    fn fail(&self, message: &str) -> ! {
        panic!("PostgreSQL cluster: {message}\n{}", self.logs())
    }

    /// The temporary directory with both servers' data and logs.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.standby.stop_immediate();
        self.primary.stop_immediate();
    }
}
