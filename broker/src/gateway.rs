//! The public listener: terminates mutual TLS, decides who the peer is, and
//! hands the connection to the embedded rumqttd under that identity.
//!
//! rumqttd's own TLS accept loop handshakes inline without a timeout, has no
//! revocation checks and accepts look-alike tenant names, so it is never
//! exposed. Per connection the gateway:
//!
//! 1. limits connection attempts per source address (before any TLS work);
//! 2. completes the TLS 1.3 handshake within a timeout, requiring a client
//!    certificate from the federation CA (and not on its CRL);
//! 3. reads the agency from the certificate ([`crate::identity`]) and checks
//!    it against the policy and the per-agency connection limit;
//! 4. reads and checks the MQTT CONNECT packet, and forwards it to
//!    rumqttd's loopback listener for its protocol level (3.1.1 or 5) over
//!    plain TCP, with the client id `{agency}.{id}` ([`crate::client_ids`])
//!    and the login only this process knows ([`crate::mqtt::BackendLogin`]);
//! 5. relays packets both ways, each checked for the agency
//!    ([`crate::relay`]), until either side closes, a packet is refused, the
//!    connection is revoked, or the broker shuts down. Both sockets run
//!    with `TCP_NODELAY` and `TCP_QUICKACK` ([`crate::quickack`]).
//!
//! rumqttd itself confines nothing to a tenant: the gateway's checks are
//! the boundary between agencies (see `docs/DECISIONS.md`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::identity::{PeerIdentity, peer_identity};
use crate::inspect::{self, FilterBudget, Receivers, Session, Violation};
use crate::limits::ConnectionLimits;
use crate::mqtt::Embedded;
use crate::policy::PolicyHandle;
use crate::quickack::QuickAck;
use crate::relay::{self, Ended};

/// Bytes buffered per direction of a relayed connection. An alert of a few
/// kilobytes still passes in one read; tokio's default of 8 KiB cost 8 MB
/// more per 1,000 mostly idle connections.
const RELAY_BUFFER: usize = 4096;

/// Why the gateway's TLS set-up failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A certificate, key or CRL file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The files of the public TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The federation CA (PEM); client certificates must chain to it.
    pub ca: std::path::PathBuf,
    /// The broker's server certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// The broker's server key (PEM).
    pub key: std::path::PathBuf,
    /// Certificate revocation lists (PEM), if any.
    pub crl: Option<std::path::PathBuf>,
}

/// The process-wide rustls crypto provider: ring (see docs/DECISIONS.md).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|e| GatewayError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Builds the server TLS configuration: TLS 1.3 only, client certificate
/// required from the federation CA, revocation checked against the CRLs.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, GatewayError> {
    let bad = |path: &std::path::Path, reason: String| GatewayError::File {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = read(&files.ca)?;
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|e| bad(&files.ca, format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(&files.ca, "contains no certificate".into()));
    }
    let mut crls = Vec::new();
    if let Some(path) = &files.crl {
        let pem = read(path)?;
        for crl in CertificateRevocationListDer::pem_slice_iter(&pem) {
            crls.push(crl.map_err(|e| bad(path, format!("not a PEM CRL: {e}")))?);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .with_crls(crls)
        .build()
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
    let config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Timeouts and sizes of the gateway.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed, after TLS, for the MQTT CONNECT packet.
    pub connect_timeout: Duration,
    /// Largest CONNECT packet accepted.
    pub max_connect_bytes: usize,
    /// Largest PUBLISH accepted (rumqttd's own limit is the same).
    pub max_packet_bytes: usize,
    /// Subscriptions per connection and distinct filters per agency.
    pub packet_limits: inspect::Limits,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connect_bytes: 64 * 1024,
            max_packet_bytes: 16 * 1024 * 1024,
            packet_limits: inspect::Limits::default(),
        }
    }
}

/// A connection being relayed.
struct LiveConnection {
    identity: PeerIdentity,
    close: Arc<Notify>,
}

/// The gateway: shared by the accept loop and every connection task.
pub struct Gateway {
    tls: RwLock<Arc<ServerConfig>>,
    embedded: Arc<Embedded>,
    policy: Arc<PolicyHandle>,
    limits: ConnectionLimits,
    settings: GatewaySettings,
    live: Mutex<HashMap<u64, LiveConnection>>,
    next_id: AtomicU64,
    client_ids: crate::client_ids::ClientIds,
    filters: FilterBudget,
    /// The agencies with a connection here that receives shares.
    receivers: Arc<Receivers>,
}

/// Why one connection was refused or ended (for logs).
#[derive(Debug, Error)]
enum ConnectionError {
    #[error("TLS handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("agency `{0}` is not in the policy")]
    UnknownAgency(String),
    #[error("agency `{0}` has reached its connection limit")]
    TooManyConnections(String),
    #[error("no MQTT CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("not an MQTT 3.1.1 or 5 CONNECT: {0}")]
    BadConnect(String),
    #[error("embedded broker unreachable: {0}")]
    Backend(String),
    #[error("CONNECT refused: {0}")]
    Refused(Violation),
}

impl Gateway {
    /// A gateway that hands connections to `embedded`.
    pub fn new(
        tls: Arc<ServerConfig>,
        embedded: Arc<Embedded>,
        policy: Arc<PolicyHandle>,
        limits: ConnectionLimits,
        receivers: Arc<Receivers>,
        settings: GatewaySettings,
    ) -> Self {
        Self {
            tls: RwLock::new(tls),
            embedded,
            policy,
            limits,
            settings,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            client_ids: crate::client_ids::ClientIds::default(),
            filters: FilterBudget::default(),
            receivers,
        }
    }

    /// Replaces the TLS configuration (new CA or CRL) for new connections.
    pub fn set_tls(&self, tls: Arc<ServerConfig>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// Closes every live connection whose certificate serial `revoked`
    /// accepts; returns how many were closed.
    pub fn close_where(&self, revoked: impl Fn(&PeerIdentity) -> bool) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for conn in live.values().filter(|c| revoked(&c.identity)) {
            conn.close.notify_one();
            closed += 1;
        }
        closed
    }

    /// The embedded broker behind the gateway. Only tests use it, to play a
    /// client that got past the gateway and check the defences behind it.
    pub fn embedded(&self) -> &Arc<Embedded> {
        &self.embedded
    }

    /// Connections open per agency.
    pub fn open_connections(&self) -> HashMap<String, usize> {
        self.limits.open_connections()
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = housekeeping.tick() => self.limits.forget_idle(),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let gateway = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            match gateway.handle(stream, peer, shutdown).await {
                                Ok(()) => {}
                                // A peer that never finishes TLS is routine noise.
                                Err(e @ (ConnectionError::HandshakeTimeout(_) | ConnectionError::Handshake(_))) => {
                                    info!(%peer, reason = %e, "connection refused")
                                }
                                Err(e) => warn!(%peer, reason = %e, "connection refused"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors or similar: do not spin.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        // Stop relaying: every live connection is told to close.
        self.close_where(|_| true);
    }

    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        if !self.limits.attempt(peer.ip()) {
            warn!(%peer, "connection attempts from this address exceed the limit; refused before TLS");
            return Ok(());
        }
        let _ = stream.set_nodelay(true);
        let acceptor =
            TlsAcceptor::from(self.tls.read().unwrap_or_else(|p| p.into_inner()).clone());
        let timeout = self.settings.handshake_timeout;
        let mut client = tokio::time::timeout(timeout, acceptor.accept(QuickAck::new(stream)))
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(timeout))?
            .map_err(ConnectionError::Handshake)?;

        let cert = client
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(crate::identity::IdentityError::NoCertificate)?;
        let identity = peer_identity(cert)?;
        if self.policy.current().agency(&identity.agency).is_none() {
            return Err(ConnectionError::UnknownAgency(identity.agency));
        }
        let _slot = self
            .limits
            .slot(&identity.agency)
            .ok_or_else(|| ConnectionError::TooManyConnections(identity.agency.clone()))?;

        let timeout = self.settings.connect_timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (level, connect) = tokio::time::timeout(
            timeout,
            relay::read_connect(&mut client, self.settings.max_connect_bytes),
        )
        .await
        .map_err(|_| ConnectionError::ConnectTimeout(timeout))?
        .map_err(ConnectionError::BadConnect)?;
        let connect = match inspect::parse_connect(&connect) {
            Ok(parsed) => parsed,
            Err(violation) => {
                refuse(&mut client, level, true, &violation).await;
                return Err(ConnectionError::Refused(violation));
            }
        };
        let claim = self.client_ids.claim(&identity.agency, connect.client_id);
        let login = self.embedded.login();
        let connect = connect.for_backend(
            claim.backend_id(),
            &login.username,
            login.password.as_bytes(),
        );
        let (backend, connack) = match connect {
            Ok(connect) => match self.open_backend(level, &connect).await {
                Ok(opened) => opened,
                Err(e) => {
                    self.client_ids.release(claim, false);
                    return Err(e);
                }
            },
            Err(violation) => {
                self.client_ids.release(claim, true);
                refuse(&mut client, level, true, &violation).await;
                return Err(ConnectionError::Refused(violation));
            }
        };
        if let Err(e) = client.write_all(&connack).await {
            let (mut rx, mut tx) = tokio::io::split(backend);
            let closed = close_backend(&mut rx, &mut tx).await;
            self.client_ids.release(claim, closed);
            return Err(ConnectionError::Backend(e.to_string()));
        }

        let close = Arc::new(Notify::new());
        info!(%peer, agency = %identity.agency, mqtt = level, connection = id, "connected");
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            LiveConnection {
                identity: identity.clone(),
                close: close.clone(),
            },
        );
        let mut session =
            Session::new(&identity.agency, self.settings.packet_limits, &self.filters)
                .reporting_to(&self.receivers);
        let (client_rx, mut client_tx) = tokio::io::split(client);
        let (backend_rx, mut backend_tx) = tokio::io::split(backend);
        let mut client_rx = BufReader::with_capacity(RELAY_BUFFER, client_rx);
        let mut backend_rx = BufReader::with_capacity(RELAY_BUFFER, backend_rx);
        let max_publish = self.settings.max_packet_bytes;
        let outcome = tokio::select! {
            ended = relay::client_to_broker(&mut client_rx, &mut backend_tx, level, &mut session, max_publish) => match ended {
                Ended::Closed(how) => Outcome::Closed(format!("client side {how}")),
                Ended::Refused(violation) => Outcome::Refused(violation),
            },
            ended = relay::broker_to_client(&mut backend_rx, &mut client_tx, level, &identity.agency, max_publish) => match ended {
                Ended::Closed(how) => Outcome::Closed(format!("rumqttd side {how}")),
                Ended::Refused(violation) => Outcome::BrokerRefused(violation),
            },
            _ = close.notified() => Outcome::Closed("closed by the broker (certificate revoked or shutdown)".into()),
            _ = shutdown.changed() => Outcome::Closed("broker shutting down".into()),
        };
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match &outcome {
            Outcome::Refused(violation) => {
                warn!(%peer, agency = %identity.agency, connection = id, reason = %violation, "connection closed: packet refused");
                if let Some(packet) = inspect::refusal(level, false, violation) {
                    let _ = client_tx.write_all(&packet).await;
                }
            }
            // A defect behind the gateway: the client is told nothing of it.
            Outcome::BrokerRefused(violation) => {
                error!(%peer, agency = %identity.agency, connection = id, reason = %violation, "connection closed: rumqttd sent a packet the gateway does not pass on")
            }
            Outcome::Closed(_) => {}
        }
        let _ = client_tx.shutdown().await;
        let closed = close_backend(&mut backend_rx, &mut backend_tx).await;
        self.client_ids.release(claim, closed);
        let outcome = match outcome {
            Outcome::Closed(how) => how,
            Outcome::Refused(violation) => format!("refused: {violation}"),
            Outcome::BrokerRefused(violation) => format!("rumqttd's packet refused: {violation}"),
        };
        debug!(%peer, agency = %identity.agency, connection = id, outcome, "disconnected");
        Ok(())
    }

    /// Connects to rumqttd's loopback listener for `level` (plain TCP), sends
    /// the CONNECT and returns the stream with rumqttd's CONNACK.
    async fn open_backend(
        &self,
        level: u8,
        connect: &[u8],
    ) -> Result<(QuickAck, Vec<u8>), ConnectionError> {
        let backend_addr = if level == 5 {
            self.embedded.v5
        } else {
            self.embedded.v4
        };
        let backend_timeout = self.settings.handshake_timeout;
        let backend = tokio::time::timeout(backend_timeout, TcpStream::connect(backend_addr))
            .await
            .map_err(|_| ConnectionError::Backend("connect timed out".into()))?
            .map_err(|e| ConnectionError::Backend(e.to_string()))?;
        let mut backend = QuickAck::new(backend);
        backend
            .write_all(connect)
            .await
            .map_err(|e| ConnectionError::Backend(e.to_string()))?;
        // rumqttd's answer must be a CONNACK; without one the client id is
        // never used again (see `client_ids`) and the client told nothing more.
        let timeout = self.settings.connect_timeout;
        match tokio::time::timeout(timeout, relay::read_packet(&mut backend, 1024)).await {
            Ok(Ok(packet))
                if packet
                    .first()
                    .is_some_and(|b| b >> 4 == inspect::kind::CONNACK) =>
            {
                Ok((backend, packet))
            }
            Ok(Ok(_)) => Err(ConnectionError::Backend(
                "rumqttd answered CONNECT with another packet".into(),
            )),
            Ok(Err(e)) => Err(ConnectionError::Backend(e)),
            Err(_) => Err(ConnectionError::Backend("no CONNACK from rumqttd".into())),
        }
    }
}

/// How a relayed connection ended.
#[derive(Debug)]
enum Outcome {
    /// Either side closed, or the broker closed it.
    Closed(String),
    /// The client sent a packet that is not allowed.
    Refused(Violation),
    /// rumqttd sent a packet that is not for this client.
    BrokerRefused(Violation),
}

/// Tells the client why it is refused, where MQTT allows it, and closes.
async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    level: u8,
    during_connect: bool,
    violation: &Violation,
) {
    if let Some(packet) = inspect::refusal(level, during_connect, violation) {
        let _ = client.write_all(&packet).await;
    }
    let _ = client.shutdown().await;
}

/// Time allowed for rumqttd to close a connection after the gateway did.
const BACKEND_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes the connection to rumqttd and waits until rumqttd has closed its
/// side: by then rumqttd has queued the connection's disconnect, and the
/// client id can be used again. False if rumqttd did not close in time.
async fn close_backend<R, W>(rx: &mut R, tx: &mut W) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let drain = async {
        let _ = tx.shutdown().await;
        let mut sink = [0u8; 1024];
        loop {
            match rx.read(&mut sink).await {
                Ok(0) => return true,
                Ok(_) => {}
                // A reset or a TLS stream cut without close_notify: closed too.
                Err(_) => return true,
            }
        }
    };
    tokio::time::timeout(BACKEND_CLOSE_TIMEOUT, drain)
        .await
        .unwrap_or(false)
}
