//! The embedded MQTT broker (rumqttd) behind the gateway.
//!
//! rumqttd runs in-process with two listeners on loopback only, one for MQTT
//! 3.1.1 and one for MQTT 5 (a rumqttd listener speaks one protocol level).
//! Both use TLS with client certificates from an *internal* CA that is
//! created at every start, lives only in this process's memory, and is
//! trusted by nothing else: the gateway presents an internal certificate
//! whose O= is the agency it authenticated, so rumqttd's
//! `validate-tenant-prefix` still confines every packet to
//! `/tenants/{agency}/`.
//!
//! The router is a local link without a tenant: the only component that
//! crosses tenants. See `docs/DECISIONS.md` for what rumqttd does and does
//! not guarantee.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::{
    ConnectionSettings, LinkType, Notification, RouterConfig, Server, ServerSettings, TlsConfig,
};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::pki::{Ca, PkiError};

/// The id of the router's local link (no `.`: tenant client ids are `tenant.id`).
const ROUTER_LINK_ID: &str = "samverkan-router";

/// Why the embedded broker could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The internal PKI could not be made or written.
    #[error("internal PKI: {0}")]
    Pki(#[from] PkiError),
    /// A file for rumqttd could not be written.
    #[error("internal files: {0}")]
    Io(#[from] std::io::Error),
    /// rumqttd refused the router link.
    #[error("router link: {0}")]
    Link(String),
    /// A loopback listener did not come up.
    #[error("rumqttd listener did not start: {0}")]
    Listener(String),
    /// A TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Sizes and limits of the embedded broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Largest MQTT packet rumqttd accepts; a larger one closes the connection.
    pub max_packet_bytes: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Bytes per in-memory log segment of a topic filter.
    pub segment_bytes: usize,
    /// Segments kept per topic filter.
    pub segments: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            max_packet_bytes: 16 * 1024 * 1024,
            max_connections: 10_000,
            // The router and the inboxes are drained continuously and every
            // share is also in the database, so rumqttd's per-filter rings
            // can stay small (a larger message still fits: it opens a
            // segment). Every filter with traffic fills its ring: two
            // segments instead of four kept 30 MB less at 1,000 alerts/s
            // with the same throughput flat out.
            segment_bytes: 1024 * 1024,
            segments: 2,
        }
    }
}

/// The router's local link into rumqttd.
pub struct RouterLink {
    /// Publishes into rumqttd (QoS 0 from the link; subscribers get their own QoS).
    pub tx: LinkTx,
    /// Messages on the router's subscriptions.
    pub rx: LinkRx,
}

/// The running embedded broker.
pub struct Embedded {
    /// Loopback listener for MQTT 3.1.1.
    pub v4: SocketAddr,
    /// Loopback listener for MQTT 5.
    pub v5: SocketAddr,
    ca: Ca,
    client_configs: Mutex<HashMap<String, Arc<ClientConfig>>>,
    roots: Arc<rustls::RootCertStore>,
    servers: Vec<JoinHandle<()>>,
    // Keeps rumqttd's certificate files alive (rumqttd reads them per connection).
    _files: tempfile::TempDir,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// The process-wide rustls crypto provider: ring (see docs/DECISIONS.md).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Embedded {
    /// Starts rumqttd's router and loopback listeners, and the router's link
    /// subscribed to `filters` (waiting for the subscription to be confirmed
    /// before any listener opens, so nothing published is missed).
    pub async fn start(
        settings: &MqttSettings,
        filters: &[&str],
    ) -> Result<(Embedded, RouterLink), MqttError> {
        const DAYS: i64 = 3650;
        let ca = Ca::generate("Samverkan internal CA (this process only)", DAYS)?;
        let server = ca.issue_server(
            "samverkan internal rumqttd listener",
            &["localhost"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            DAYS,
        )?;
        remove_stale_internal_dirs(&std::env::temp_dir());
        let files = tempfile::Builder::new()
            .prefix(&format!("{INTERNAL_DIR_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        write_private(&files.path().join("ca.pem"), ca.cert_pem())?;
        write_private(&files.path().join("server.pem"), &server.cert_pem)?;
        write_private(&files.path().join("server.key"), &server.key_pem)?;
        let tls = TlsConfig::Rustls {
            capath: Some(path_string(&files.path().join("ca.pem"))),
            certpath: path_string(&files.path().join("server.pem")),
            keypath: path_string(&files.path().join("server.key")),
        };

        let router_config = RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: settings.segment_bytes.max(1024),
            max_segment_count: settings.segments.max(1),
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = rumqttd::Router::new(0, router_config).spawn();

        // Building a link blocks until the router answers.
        let link_tx = router_tx.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let link = tokio::task::spawn_blocking(move || -> Result<RouterLink, MqttError> {
            let (mut tx, mut rx, _ack) = LinkBuilder::new(ROUTER_LINK_ID, link_tx)
                .tenant_id(None)
                .clean_session(true)
                .build()
                .map_err(|e| MqttError::Link(e.to_string()))?;
            for f in &filters {
                tx.subscribe(f.clone())
                    .map_err(|e| MqttError::Link(e.to_string()))?;
            }
            let mut acked = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while acked < filters.len() {
                match rx.recv_deadline(deadline) {
                    // The only acks a fresh link gets after its ConnAck are
                    // SubAcks (rumqttd does not export the Ack type to match on).
                    Ok(Some(Notification::DeviceAck(ack)))
                        if format!("{ack:?}").starts_with("SubAck") =>
                    {
                        acked += 1
                    }
                    Ok(_) => {}
                    Err(e) => return Err(MqttError::Link(format!("no SubAck: {e}"))),
                }
            }
            Ok(RouterLink { tx, rx })
        })
        .await
        .map_err(|e| MqttError::Link(e.to_string()))??;

        let connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: settings.max_packet_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        };
        // rumqttd's router sender type is not nameable outside rumqttd, so
        // listeners are spawned through a closure that captures it.
        let spawn = |settings: ServerSettings, v5: bool| -> JoinHandle<()> {
            let tx = router_tx.clone();
            tokio::spawn(async move {
                let result = if v5 {
                    Server::new(settings, tx, V5).start(LinkType::Remote).await
                } else {
                    Server::new(settings, tx, V4).start(LinkType::Remote).await
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "embedded MQTT listener stopped");
                }
            })
        };
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for (name, v5) in [("loopback-v4", false), ("loopback-v5", true)] {
            let (addr, handle) = start_listener(name, v5, &tls, &connections, &spawn).await?;
            addrs.push(addr);
            servers.push(handle);
        }

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(cert.map_err(|e| MqttError::Listener(e.to_string()))?)?;
        }
        Ok((
            Embedded {
                v4: addrs[0],
                v5: addrs[1],
                ca,
                client_configs: Mutex::new(HashMap::new()),
                roots: Arc::new(roots),
                servers,
                _files: files,
            },
            link,
        ))
    }

    /// The TLS client configuration the gateway uses to connect to rumqttd
    /// as `agency`: an internal certificate with O = agency.
    pub fn client_config(&self, agency: &str) -> Result<Arc<ClientConfig>, MqttError> {
        let mut cache = self
            .client_configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = cache.get(agency) {
            return Ok(config.clone());
        }
        let cert = self
            .ca
            .issue_client(&[agency], &format!("{agency} (internal)"), 3650)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| MqttError::Listener(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
            .map_err(|e| MqttError::Listener(e.to_string()))?;
        let config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(chain, key)?;
        let config = Arc::new(config);
        cache.insert(agency.to_string(), config.clone());
        Ok(config)
    }
}

/// Starts one rumqttd listener on a free loopback port. rumqttd binds the
/// port itself, so a port is picked first and the bind is retried on the
/// rare chance another process took it in between.
async fn start_listener(
    name: &str,
    v5: bool,
    tls: &TlsConfig,
    connections: &ConnectionSettings,
    spawn: &impl Fn(ServerSettings, bool) -> JoinHandle<()>,
) -> Result<(SocketAddr, JoinHandle<()>), MqttError> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let addr = free_loopback_port()?;
        let settings = ServerSettings {
            name: name.to_string(),
            listen: addr,
            tls: Some(tls.clone()),
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let handle = spawn(settings, v5);
        // The listener is up once its port is taken while the task still
        // runs. Probing by binding (not connecting) keeps rumqttd from
        // logging a failed TLS handshake for the probe.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if handle.is_finished() {
                last_error = format!("{name} on {addr} stopped (port taken?)");
                break;
            }
            let taken = matches!(
                StdListener::bind(addr),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
            );
            if taken {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if !handle.is_finished() {
                    return Ok((addr, handle));
                }
                continue;
            }
            if tokio::time::Instant::now() > deadline {
                handle.abort();
                last_error = format!("{name} on {addr} did not start listening");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Err(MqttError::Listener(last_error))
}

/// Start of the name of the directory with rumqttd's loopback certificate
/// and key; the owning process's id follows.
const INTERNAL_DIR_PREFIX: &str = "samverkan-internal-";

/// Removes the internal directories of broker processes that no longer run.
/// A process that is killed (SIGKILL, power loss) cannot remove its own,
/// and each holds a loopback server key. Liveness is read from `/proc`;
/// where there is none, nothing is removed.
pub fn remove_stale_internal_dirs(temp: &std::path::Path) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(INTERNAL_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed the internal files of a broker that stopped without cleaning up")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove stale internal files")
                }
            }
        }
    }
}

fn path_string(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_internal_dirs_are_removed_and_live_ones_kept() {
        let temp = tempfile::tempdir().unwrap();
        // No process has this id (Linux's pid_max is at most 2^22).
        let stale = temp
            .path()
            .join(format!("{INTERNAL_DIR_PREFIX}999999999-abc"));
        let live = temp
            .path()
            .join(format!("{INTERNAL_DIR_PREFIX}{}-def", std::process::id()));
        let other = temp.path().join("samverkan-internal-xyz");
        for dir in [&stale, &live, &other] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("server.key"), "key").unwrap();
        }
        remove_stale_internal_dirs(temp.path());
        assert!(!stale.exists());
        assert!(live.exists());
        assert!(other.exists(), "a name without a process id is not touched");
    }
}
