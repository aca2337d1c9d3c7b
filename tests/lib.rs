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

/// A broker running in this process on `127.0.0.1:<ephemeral>`.
pub struct TestBroker {
    /// Holds policies, certificates and the database.
    pub dir: tempfile::TempDir,
    /// The running broker.
    pub broker: Option<Broker>,
    /// The broker's configuration.
    pub config: BrokerConfig,
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
        init_logging();
        let mut config = BrokerConfig::development(dir.path());
        config.store_url = format!("sqlite://{}", dir.path().join("samverkan.db").display());
        config.gateway.handshake_timeout = Duration::from_secs(2);
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = Broker::start(config.clone(), listener).await.unwrap();
        Self {
            dir,
            broker: Some(broker),
            config,
        }
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
