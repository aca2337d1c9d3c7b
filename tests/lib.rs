//! The end-to-end test harness: a real broker (gateway, rumqttd, router,
//! SQLite) on an ephemeral loopback port with a fresh development PKI, and
//! real clients over mutual TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use samverkan_broker::config::BrokerConfig;
use samverkan_broker::pki::{self, DevPkiLayout};
use samverkan_broker::server::Broker;
use tokio::net::TcpListener;

pub mod fill;
pub mod nodes;
pub mod pg_cluster;

/// The repository's policy set.
pub fn shipped_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, a file in the test's directory.
    Sqlite,
    /// PostgreSQL, a fresh database on the server named by `SAMVERKAN_TEST_POSTGRES`.
    Postgres,
}

/// The environment variable with the PostgreSQL URL the tests use.
pub const POSTGRES_ENV: &str = "SAMVERKAN_TEST_POSTGRES";

/// A database for one test, dropped afterwards (PostgreSQL) or removed with
/// the test's directory (SQLite).
pub struct TestDatabase {
    /// The URL to give the broker.
    pub url: String,
    /// For PostgreSQL: the server URL and the database to drop.
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh database of `backend`; SQLite files go into `dir`.
    pub async fn new(backend: Backend, dir: &Path) -> Self {
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.join("samverkan.db").display()),
                postgres: None,
            },
            Backend::Postgres => {
                use sqlx::Connection;
                let server = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
                    panic!(
                        "{POSTGRES_ENV} must name a PostgreSQL database for the tests, e.g. \
                         postgres://postgres@127.0.0.1:5432/test (.ci/run sets it)"
                    )
                });
                let name = format!("samverkan_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_ENV}={server}: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let (base, query) = match server.split_once('?') {
                    Some((b, q)) => (b.to_string(), format!("?{q}")),
                    None => (server.clone(), String::new()),
                };
                let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(&base);
                Self {
                    url: format!("{prefix}/{name}{query}"),
                    postgres: Some((server, name)),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((server, name)) = self.postgres.take() {
            // Drop runs outside async code; use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A broker running in this process on `127.0.0.1:<ephemeral>`.
pub struct TestBroker {
    /// Holds policies, certificates and the database.
    pub dir: tempfile::TempDir,
    /// The running broker.
    pub broker: Option<Broker>,
    /// The broker's configuration.
    pub config: BrokerConfig,
    /// The database (kept until the test ends).
    pub database: Option<TestDatabase>,
}

/// Prepares a working directory: a copy of the policy set and a fresh
/// development PKI whose public keys are written into that copy.
pub fn prepare_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_policies(), &dir.path().join("policies"));
    pki::generate_dev(&dir.path().join("certs-dev"), &dir.path().join("policies")).unwrap();
    dir
}

impl TestBroker {
    /// A broker with the shipped policy and a fresh PKI.
    pub async fn start() -> Self {
        Self::start_in(prepare_dir(), |_| {}).await
    }

    /// A broker in a prepared directory, after `adjust` changed its configuration.
    pub async fn start_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut BrokerConfig)) -> Self {
        Self::start_with(Backend::Sqlite, dir, adjust).await
    }

    /// A broker on `backend` in a prepared directory.
    pub async fn start_with(
        backend: Backend,
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut BrokerConfig),
    ) -> Self {
        init_logging();
        let database = TestDatabase::new(backend, dir.path()).await;
        let mut config = BrokerConfig::development(dir.path());
        config.store_url = database.url.clone();
        config.gateway.handshake_timeout = Duration::from_secs(2);
        config.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.console_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.crl_check_interval = Duration::from_millis(200);
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = Broker::start(config.clone(), listener).await.unwrap();
        Self {
            dir,
            broker: Some(broker),
            config,
            database: Some(database),
        }
    }

    /// Runs the `samverkan` binary against this broker's store and keys.
    pub fn samverkan(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(samverkan_binary())
            .args(args)
            .arg("--store")
            .arg(&self.config.store_url)
            .arg("--broker-keys")
            .arg(self.pki().broker_keys())
            .current_dir(self.dir.path())
            .output()
            .expect("run samverkan")
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().unwrap()
    }

    /// The public address.
    pub fn addr(&self) -> SocketAddr {
        self.broker().local_addr()
    }

    /// The development PKI.
    pub fn pki(&self) -> DevPkiLayout {
        DevPkiLayout::new(self.dir.path().join("certs-dev"))
    }

    /// The policy directory.
    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// SDK configuration for an agency.
    pub fn agency_config(&self, agency: &str) -> samverkan_sdk::client::AgencyConfig {
        samverkan_sdk::client::AgencyConfig::from_dev_pki(
            &self.pki().dir,
            &self.policies().join("keys.toml"),
            agency,
            "localhost",
            self.addr().port(),
        )
        .unwrap()
    }

    /// An SDK client connected as `agency`.
    pub async fn agency(&self, agency: &str) -> samverkan_sdk::client::Client {
        samverkan_sdk::client::Client::connect(self.agency_config(agency))
            .await
            .unwrap()
    }

    /// Starts the broker again on the same directory and database (after [`Self::stop`]).
    pub async fn restart(&mut self) {
        assert!(self.broker.is_none(), "stop the broker first");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.broker = Some(Broker::start(self.config.clone(), listener).await.unwrap());
    }

    /// Runs SQL directly against the broker's database (to tamper with it).
    pub async fn execute_sql(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.config.store_url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
    }

    /// Rewrites one audit row with `entry`'s columns *and* its correct leaf
    /// hash, as a careful attacker with database access would.
    pub async fn rewrite_audit_row(&self, entry: &samverkan_broker::audit::AuditEntry) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.config.store_url)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_entries SET recipient = $1, leaf_hash = $2 WHERE idx = $3")
            .bind(entry.recipient.clone())
            .bind(entry.leaf_hash().to_vec())
            .bind(entry.index as i64)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Replaces the stored Merkle tree with one recomputed from the rows as
    /// they are now (an attacker covering up an edit).
    pub async fn rebuild_tree(&self) {
        use samverkan_broker::audit::tree::Frontier;
        use sqlx::Connection;
        let store = samverkan_broker::store::Store::open(&self.config.store_url)
            .await
            .unwrap();
        let (_, next) = store.audit_extent().await.unwrap();
        let mut frontier = Frontier::empty();
        let mut hashes = Vec::new();
        for (_, leaf) in store.audit_range_with_leaves(0, next).await.unwrap() {
            hashes.extend(frontier.append(leaf.try_into().unwrap()));
        }
        let mut conn = sqlx::AnyConnection::connect(&self.config.store_url)
            .await
            .unwrap();
        sqlx::query("DELETE FROM tree_hashes")
            .execute(&mut conn)
            .await
            .unwrap();
        // Written back as the broker writes them, whatever the layout.
        store
            .commit(&samverkan_broker::store::Commit {
                tree_hashes: hashes,
                ..Default::default()
            })
            .await
            .unwrap();
        store.close().await;
    }

    /// Stops the broker gracefully.
    pub async fn stop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }
}

/// A rustls client configuration presenting `cert`/`key` (PEM) and trusting `ca` (PEM).
pub fn tls_client(ca: &[u8], cert: &[u8], key: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap(),
    )
}

impl TestBroker {
    /// TLS configuration with an agency's development client certificate.
    pub fn agency_tls(&self, agency: &str) -> Arc<rustls::ClientConfig> {
        let pki = self.pki();
        tls_client(
            &std::fs::read(pki.ca_cert()).unwrap(),
            &std::fs::read(pki.client_cert(agency)).unwrap(),
            &std::fs::read(pki.client_key(agency)).unwrap(),
        )
    }

    /// MQTT 3.1.1 options for a raw (non-SDK) client with the given TLS set-up.
    pub fn raw_options(&self, client_id: &str, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
        let mut opts = MqttOptions::new(client_id, "localhost", self.addr().port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        opts
    }

    /// MQTT 3.1.1 options for a raw client that connects to the embedded
    /// rumqttd directly as `agency`, past the gateway and its packet checks:
    /// it stands in for a defect there, to test the defences behind it
    /// (signatures checked by the SDK). It connects as the gateway does:
    /// plain TCP on loopback, the gateway's login, the client id
    /// `{agency}.{client_id}`.
    pub fn raw_options_behind_gateway(&self, client_id: &str, agency: &str) -> MqttOptions {
        let embedded = self.broker().gateway().embedded();
        let login = embedded.login();
        let mut opts = MqttOptions::new(
            format!("{agency}.{client_id}"),
            "127.0.0.1",
            embedded.v4.port(),
        );
        opts.set_credentials(login.username.clone(), login.password.clone());
        opts.set_keep_alive(Duration::from_secs(10));
        opts
    }

    /// MQTT 5 options for a raw client.
    pub fn raw_options_v5(
        &self,
        client_id: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> rumqttc::v5::MqttOptions {
        let mut opts = rumqttc::v5::MqttOptions::new(client_id, "localhost", self.addr().port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        opts.set_keep_alive(Duration::from_secs(10));
        opts
    }
}

/// The `samverkan` binary of this build.
pub fn samverkan_binary() -> PathBuf {
    // Test binaries live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("samverkan");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p samverkan-broker; nextest and cargo test do)",
        path.display()
    );
    path
}

/// An example program of the SDK (`client-sdk/examples/{name}.rs`) of this
/// build. `cargo nextest run` and `cargo test` build the examples of the
/// packages they test into `target/<profile>/examples/`, next to the
/// binaries' directory, so no second build is needed.
pub fn sdk_example_binary(name: &str) -> PathBuf {
    let path = samverkan_binary().with_file_name("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p samverkan-sdk --examples; nextest and cargo test do)",
        path.display()
    );
    path
}

/// A TCP proxy in front of a server (PostgreSQL) that a test can cut and
/// restore, to make the database disappear and come back.
pub struct TcpProxy {
    /// The proxy's address.
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (up2, generation2) = (up.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = generation2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
            task,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host and port of a PostgreSQL URL.
pub fn postgres_address(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap()
}

/// A free TCP port on loopback (for processes that bind their own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker as a separate `samverkan serve` process.
pub struct BrokerProcess {
    /// The working directory (policies, certs-dev, database, configuration).
    pub dir: tempfile::TempDir,
    /// The public port.
    pub port: u16,
    /// The admin port.
    pub admin_port: u16,
    /// The database URL.
    pub store_url: String,
    child: Option<std::process::Child>,
    log: PathBuf,
    /// How many starts the log showed when the process was spawned.
    starts_before: usize,
}

/// The line a broker logs once it accepts connections.
const ACCEPTING: &str = "accepting MQTT over mutual TLS";

impl BrokerProcess {
    /// Prepares a directory and configuration on SQLite (not started yet).
    pub fn new() -> Self {
        let dir = prepare_dir();
        let port = free_port();
        let admin_port = free_port();
        let store_url = format!("sqlite://{}", dir.path().join("samverkan.db").display());
        let config = format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\nurl = \"{store_url}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[console]\nlisten = \"off\"\n\n[tls]\nca = \"certs-dev/ca.pem\"\ncert = \"certs-dev/broker.pem\"\nkey = \"certs-dev/broker.key\"\ncrl = \"certs-dev/crl.pem\"\ncrl_check_interval_ms = 200\n\n[audit]\ncheckpoint_interval_ms = 1000\n"
        );
        std::fs::write(dir.path().join("samverkan.toml"), config).unwrap();
        let log = dir.path().join("broker.log");
        Self {
            dir,
            port,
            admin_port,
            store_url,
            child: None,
            log,
            starts_before: 0,
        }
    }

    /// Starts the process and waits until its health endpoint answers.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts the process without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts_before = self.log_text().matches(ACCEPTING).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(samverkan_binary())
            .args(["serve", "--config", "samverkan.toml"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,rumqttd=warn,rumqttd::server::broker=off")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the started process listens on its ports.
    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut moves = 0;
        loop {
            // Ports that answer may be another process's, picked free by a
            // test running beside this one: ready is when this broker says
            // it accepts.
            if self.log_text().matches(ACCEPTING).count() > self.starts_before
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
                    .await
                    .is_ok()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log_text();
                if log.contains("Address already in use") && moves < 3 {
                    moves += 1;
                    self.move_ports();
                    self.spawn();
                    continue;
                }
                panic!("the broker exited at start ({status}):\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker did not start:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `config` (this broker's) with `port` and `admin_port` for its own.
    fn with_ports(&self, config: &str, port: u16, admin_port: u16) -> String {
        config
            .replace(
                &format!("127.0.0.1:{}", self.port),
                &format!("127.0.0.1:{port}"),
            )
            .replace(
                &format!("127.0.0.1:{}", self.admin_port),
                &format!("127.0.0.1:{admin_port}"),
            )
    }

    /// New free ports for the public and admin listeners, written into the
    /// configuration (after another process took one first), and a fresh log.
    fn move_ports(&mut self) {
        let (port, admin_port) = (free_port(), free_port());
        let path = self.dir.path().join("samverkan.toml");
        let config = self.with_ports(&std::fs::read_to_string(&path).unwrap(), port, admin_port);
        std::fs::write(&path, config).unwrap();
        let _ = std::fs::remove_file(&self.log);
        (self.port, self.admin_port) = (port, admin_port);
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal and waits up to `limit` for the process to exit; returns its status.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SDK configuration for an agency of this broker.
    pub fn agency_config(&self, agency: &str) -> samverkan_sdk::client::AgencyConfig {
        samverkan_sdk::client::AgencyConfig::from_dev_pki(
            &self.dir.path().join("certs-dev"),
            &self.dir.path().join("policies/keys.toml"),
            agency,
            "localhost",
            self.port,
        )
        .unwrap()
    }

    /// Runs the `samverkan` binary against this broker's store and keys.
    pub fn samverkan(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(samverkan_binary())
            .args(args)
            .arg("--store")
            .arg(&self.store_url)
            .arg("--broker-keys")
            .arg(self.dir.path().join("certs-dev/broker-keys.toml"))
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

impl Default for BrokerProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET or POST on an admin endpoint; returns (status, body).
pub async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// An answer of the auditor console.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header lines, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Who connects to the console: a certificate and key (PEM files), or none.
pub type ConsoleIdentity<'a> = Option<(&'a Path, &'a Path)>;

impl TestBroker {
    /// Sends one HTTP/1.1 request to the auditor console over TLS, with the
    /// given client certificate (or none), and reads the whole answer.
    pub async fn console_request(
        &self,
        identity: ConsoleIdentity<'_>,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
        body: &str,
    ) -> HttpAnswer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = self.pki();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&std::fs::read(pki.ca_cert()).unwrap()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&std::fs::read(cert).unwrap())
                        .collect::<Result<_, _>>()
                        .unwrap();
                let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).unwrap()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let addr = self.broker().console_addr().expect("console enabled");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            addr.port(),
            body.len()
        );
        for (n, v) in extra_headers {
            request.push_str(&format!("{n}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            let mut out = String::new();
            let mut rest = rest;
            for _ in 0..100_000 {
                let Some((size, tail)) = rest.split_once("\r\n") else {
                    break;
                };
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if size == 0 || tail.len() < size {
                    break;
                }
                out.push_str(&tail[..size]);
                rest = tail[size..].trim_start_matches("\r\n");
            }
            out
        } else {
            rest.to_string()
        };
        HttpAnswer {
            status,
            headers,
            body,
        }
    }

    /// `GET path` on the console as `identity`.
    pub async fn console_get(&self, identity: ConsoleIdentity<'_>, path: &str) -> HttpAnswer {
        self.console_request(identity, "GET", path, &[], "").await
    }

    /// An agency auditor's certificate and key.
    pub fn auditor(&self, agency: &str) -> (PathBuf, PathBuf) {
        let pki = self.pki();
        (pki.auditor_cert(agency), pki.auditor_key(agency))
    }

    /// The supervisor's certificate and key.
    pub fn supervisor(&self) -> (PathBuf, PathBuf) {
        let pki = self.pki();
        (pki.supervisor_cert(), pki.supervisor_key())
    }
}

/// The `samverkan-client` binary of this build.
pub fn client_binary() -> PathBuf {
    let path = samverkan_binary().with_file_name("samverkan-client");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p samverkan-sdk)",
        path.display()
    );
    path
}

impl BrokerProcess {
    /// The working directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A second broker with this one's PKI, keys and policy set (copied now)
    /// but its own ports and database: the same log key over a different
    /// history, as an operator forking the log would run it.
    pub fn sibling(&self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &self.dir.path().join("certs-dev"),
            &dir.path().join("certs-dev"),
        );
        copy_dir(
            &self.dir.path().join("policies"),
            &dir.path().join("policies"),
        );
        let port = free_port();
        let admin_port = free_port();
        let store_url = format!("sqlite://{}", dir.path().join("samverkan.db").display());
        let config = self
            .with_ports(
                &std::fs::read_to_string(self.dir.path().join("samverkan.toml")).unwrap(),
                port,
                admin_port,
            )
            .replace(&self.store_url, &store_url);
        std::fs::write(dir.path().join("samverkan.toml"), config).unwrap();
        let log = dir.path().join("broker.log");
        Self {
            dir,
            port,
            admin_port,
            store_url,
            child: None,
            log,
            starts_before: 0,
        }
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// `GET /health` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        let (_, body) = admin_request(self.admin_addr(), "GET", "/health").await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("health is not JSON ({e}): {body}"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        admin_request(self.admin_addr(), "GET", "/metrics").await.1
    }
}

/// An agency's `samverkan-client witness` process.
pub struct WitnessProcess {
    /// The agency.
    pub agency: String,
    /// Its state file.
    pub state: PathBuf,
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl WitnessProcess {
    /// Makes a new witness state for `agency` in `dir`; returns the process
    /// (not started) and its `[[witness]]` entry for witnesses.toml.
    pub fn init(dir: &Path, agency: &str) -> (Self, String) {
        let state = dir.join(format!(
            "witness-{agency}-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let entry = Self::init_state(dir, agency, &state);
        let log = dir.join(format!("witness-{agency}.log"));
        (
            Self {
                agency: agency.to_string(),
                state,
                child: None,
                log,
            },
            entry,
        )
    }

    /// Runs `witness --init` for an existing process's state path.
    pub fn init_state(dir: &Path, agency: &str, state: &Path) -> String {
        let output = std::process::Command::new(client_binary())
            .args(["witness", "--agency", agency, "--init", "--state"])
            .arg(state)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "witness --init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The command for this witness against a broker at `port` with the PKI in `dir`.
    fn command(&self, dir: &Path, port: u16) -> std::process::Command {
        let mut command = std::process::Command::new(client_binary());
        command
            .args(["witness", "--agency", &self.agency, "--broker"])
            .arg(format!("localhost:{port}"))
            .arg("--certs")
            .arg(dir.join("certs-dev"))
            .arg("--keys")
            .arg(dir.join("policies/keys.toml"))
            .arg("--state")
            .arg(&self.state)
            .current_dir(dir);
        command
    }

    /// Starts the witness against `broker`.
    pub fn start(&mut self, broker: &BrokerProcess) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command(broker.path(), broker.port)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Runs the witness in the foreground against `broker` and returns how it
    /// ended (for a witness that must refuse to start).
    pub fn run_to_end(&self, broker: &BrokerProcess) -> std::process::Output {
        self.command(broker.path(), broker.port).output().unwrap()
    }

    /// `--evidence`: (exit code, the conflicts as JSON).
    pub fn evidence(&self, dir: &Path) -> (i32, Vec<serde_json::Value>) {
        let output = std::process::Command::new(client_binary())
            .args(["witness", "--agency", &self.agency, "--evidence", "--state"])
            .arg(&self.state)
            .current_dir(dir)
            .output()
            .unwrap();
        let conflicts = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (output.status.code().unwrap_or(-1), conflicts)
    }

    /// Kills the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a witnesses.toml with `entries` and a quorum of `threshold` of them.
pub fn write_witnesses(policies: &Path, entries: &[String], threshold: &str) {
    let members: Vec<String> = entries
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("agency = ")))
        .map(str::to_string)
        .collect();
    let text = format!(
        "quorum = \"agencies\"\n\n{}\n[[group]]\nname = \"agencies\"\nthreshold = {threshold}\nmembers = [{}]\n",
        entries.join("\n"),
        members.join(", ")
    );
    std::fs::write(policies.join("witnesses.toml"), text).unwrap();
}
