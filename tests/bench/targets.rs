//! The servers under test, each a separate process so its CPU and memory
//! can be measured: the Samverkan broker, plain rumqttd with the same TLS
//! set-up, and Mosquitto with TLS and client certificates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use samverkan_e2e::{Backend, TestDatabase, free_port, prepare_dir};

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Target {
    /// The full Samverkan pipeline.
    Samverkan,
    /// rumqttd alone, same TLS settings, plain publish→subscribe.
    Rumqttd,
    /// Mosquitto (Debian package) with TLS and client certificates.
    Mosquitto,
}

/// A running server.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where clients connect.
    pub port: u16,
    /// Certificates (and, for Samverkan, the policy set).
    pub dir: tempfile::TempDir,
    /// Keeps a PostgreSQL test database alive.
    _database: Option<TestDatabase>,
    /// Samverkan's admin endpoint.
    pub admin_port: Option<u16>,
    /// Samverkan's database.
    database_url: Option<String>,
}

impl Server {
    /// Fails with the server's log if the process has ended (a benchmark
    /// of a server that died would measure nothing but errors).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the server exited during the run ({status}): {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The size of Samverkan's data: the pages the SQLite database uses
    /// (page count less free pages, as a reader sees it, whatever part
    /// of it is still in the write-ahead log), or `pg_database_size` on
    /// PostgreSQL.
    pub async fn database_bytes(&self) -> Option<u64> {
        use sqlx::Connection;
        let url = self.database_url.as_deref()?;
        if url.starts_with("sqlite:") {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().ok()?;
            let mut db = sqlx::SqliteConnection::connect_with(&options.read_only(true))
                .await
                .ok()?;
            let pragma = |name: &'static str| sqlx::query_scalar::<_, i64>(name);
            let pages = pragma("PRAGMA page_count").fetch_one(&mut db).await.ok()?;
            let free = pragma("PRAGMA freelist_count")
                .fetch_one(&mut db)
                .await
                .ok()?;
            let size = pragma("PRAGMA page_size").fetch_one(&mut db).await.ok()?;
            return u64::try_from((pages - free) * size).ok();
        }
        let mut db = sqlx::PgConnection::connect(url).await.ok()?;
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut db)
            .await
            .ok()?;
        u64::try_from(size).ok()
    }

    /// The development PKI of this run.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs-dev")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("SAMVERKAN_BENCH_KEEP").is_some() {
            eprintln!(
                "server log kept in {}",
                self.dir.path().join("server.log").display()
            );
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}

pub(crate) fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no executable directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it in the same profile (cargo build --release -p samverkan-broker)",
            path.display()
        );
    }
    Ok(path)
}

pub(crate) async fn wait_for_port(port: u16, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the server did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a server of `target`.
pub async fn start(target: Target, backend: Backend, witnesses: usize) -> Result<Server> {
    let dir = prepare_dir();
    let port = free_port();
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log)?;
    let mut database = None;
    let mut database_url = None;
    let mut admin_port = None;
    let mut child = match target {
        Target::Samverkan => {
            // The benchmark measures throughput, not the publish limits.
            std::fs::write(
                dir.path().join("policies/limits.toml"),
                "[default]\npublish_per_second = 1000000\npublish_burst = 1000000\n",
            )?;
            if witnesses > 0 {
                write_witness_policy(dir.path(), witnesses).await?;
            }
            let db = TestDatabase::new(backend, dir.path()).await;
            let admin = free_port();
            admin_port = Some(admin);
            let config = format!(
                "[gateway]\nlisten = \"127.0.0.1:{port}\"\nmax_connections_per_agency = 2000\nconnection_attempts_per_minute = 100000\n\n[store]\nurl = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[console]\nlisten = \"off\"\n\n[router]\nbatch_max = 2048\n",
                db.url
            );
            database_url = Some(db.url.clone());
            database = Some(db);
            std::fs::write(dir.path().join("samverkan.toml"), config)?;
            Command::new(sibling("samverkan")?)
                .args(["serve", "--config", "samverkan.toml"])
                .current_dir(dir.path())
                .env(
                    "RUST_LOG",
                    std::env::var("SAMVERKAN_BENCH_LOG").unwrap_or_else(|_| {
                        "warn,rumqttd=error,rumqttd::server::broker=off".into()
                    }),
                )
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()?
        }
        Target::Rumqttd => Command::new(std::env::current_exe()?)
            .args(["serve-rumqttd", "--port", &port.to_string(), "--certs"])
            .arg(dir.path().join("certs-dev"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?,
        Target::Mosquitto => {
            let certs = dir.path().join("certs-dev");
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous true\npersistence false\nuser root\nlog_dest stderr\nlog_type error\nmax_queued_messages 100000\nset_tcp_nodelay true\n",
                    certs.join("ca.pem").display(),
                    certs.join("broker.pem").display(),
                    certs.join("broker.key").display(),
                ),
            )?;
            let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .context("mosquitto is not installed (apt-get install mosquitto)")?;
            Command::new(binary)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()?
        }
    };
    wait_for_port(port, &mut child, &log).await?;
    if let Some(admin) = admin_port {
        wait_for_port(admin, &mut child, &log).await?;
    }
    Ok(Server {
        child,
        port,
        dir,
        _database: database,
        admin_port,
        database_url,
    })
}

/// `serve-rumqttd`: rumqttd alone with TLS and client certificates (tenant
/// prefixes on, as inside Samverkan), on one MQTT 3.1.1 listener.
pub fn serve_rumqttd(port: u16, certs: &Path) -> Result<()> {
    use std::collections::HashMap;
    let tls = rumqttd::TlsConfig::Rustls {
        capath: Some(certs.join("ca.pem").display().to_string()),
        certpath: certs.join("broker.pem").display().to_string(),
        keypath: certs.join("broker.key").display().to_string(),
    };
    let server = rumqttd::ServerSettings {
        name: "bench".into(),
        listen: ([127, 0, 0, 1], port).into(),
        tls: Some(tls),
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 16 * 1024 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("bench".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    broker.start().context("rumqttd stopped")?;
    bail!("rumqttd stopped")
}

/// The agencies whose witnesses the benchmark runs, in order.
pub const WITNESS_AGENCIES: [&str; 7] = [
    "polisen",
    "skatteverket",
    "kronofogden",
    "forsakringskassan",
    "linkoping",
    "norrkoping",
    "akrimost",
];

/// Makes a witness state for each of the first `n` agencies (in the
/// server's directory) and a policy whose quorum is a majority of them.
async fn write_witness_policy(dir: &Path, n: usize) -> Result<()> {
    use samverkan_sdk::witness::{WitnessState, default_key_name};
    let mut entries = Vec::new();
    for agency in WITNESS_AGENCIES.iter().take(n) {
        let state = WitnessState::create(
            &dir.join(format!("witness-{agency}.db")),
            &default_key_name(agency),
            "samverkan-dev/audit",
        )
        .await?;
        let key = samverkan_sdk::audit::cosignature::WitnessKey {
            name: default_key_name(agency),
            public_key: state.identity().await?.key.verifying_key(),
        };
        state.close().await;
        entries.push(format!(
            "[[witness]]\nagency = \"{agency}\"\nkey = \"{}\"\n",
            key.vkey()
        ));
    }
    let members: Vec<String> = WITNESS_AGENCIES
        .iter()
        .take(n)
        .map(|a| format!("\"{a}\""))
        .collect();
    std::fs::write(
        dir.join("policies/witnesses.toml"),
        format!(
            "quorum = \"agencies\"\n\n{}\n[[group]]\nname = \"agencies\"\nthreshold = {}\nmembers = [{}]\n",
            entries.join("\n"),
            n / 2 + 1,
            members.join(", ")
        ),
    )?;
    Ok(())
}

/// Runs the witnesses made by [`start`] in this process, over their own
/// MQTT connections, until `stop` is set.
pub async fn run_witnesses(
    dir: &Path,
    port: u16,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    use samverkan_sdk::witness::{Witness, WitnessState, service};
    let mut tasks = Vec::new();
    for agency in WITNESS_AGENCIES.iter().take(n) {
        let state = WitnessState::open(&dir.join(format!("witness-{agency}.db"))).await?;
        let config = samverkan_sdk::client::AgencyConfig::from_dev_pki(
            &dir.join("certs-dev"),
            &dir.join("policies/keys.toml"),
            agency,
            "localhost",
            port,
        )?;
        let witness = Witness::new(state, config.broker_keys.clone()).await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            };
            if let Err(e) = service::run(&witness, &config, stopped).await {
                eprintln!("witness: {e}");
            }
        }));
    }
    Ok(tasks)
}
