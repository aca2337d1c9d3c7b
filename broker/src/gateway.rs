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
//! 4. reads the MQTT CONNECT packet to learn the protocol level (3.1.1 or 5)
//!    and connects to rumqttd's matching loopback listener with an internal
//!    certificate for the same agency;
//! 5. relays bytes both ways until either side closes, the connection is
//!    revoked, or the broker shuts down. Both sockets run with `TCP_NODELAY`
//!    and `TCP_QUICKACK` ([`crate::quickack`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::identity::{PeerIdentity, peer_identity};
use crate::inspect::{self, FilterBudget, Session, Violation};
use crate::limits::ConnectionLimits;
use crate::mqtt::{Embedded, crypto_provider};
use crate::policy::PolicyHandle;
use crate::quickack::QuickAck;

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
            read_connect(&mut client, self.settings.max_connect_bytes),
        )
        .await
        .map_err(|_| ConnectionError::ConnectTimeout(timeout))?
        .map_err(ConnectionError::BadConnect)?;
        if let Err(violation) = inspect::check_connect(&connect, level) {
            refuse(&mut client, level, true, &violation).await;
            return Err(ConnectionError::Refused(violation));
        }
        let client_id =
            crate::client_ids::client_id(&connect, level).map_err(ConnectionError::BadConnect)?;
        let claim = self.client_ids.claim(&identity.agency, &client_id);
        let connect = match &claim.renamed {
            Some(unique) => crate::client_ids::with_client_id(&connect, level, unique),
            None => Ok(connect),
        };
        let (backend, connack) = match connect {
            Ok(connect) => match self.open_backend(&identity.agency, level, &connect).await {
                Ok(opened) => opened,
                Err(e) => {
                    self.client_ids.release(claim, false);
                    return Err(e);
                }
            },
            Err(e) => {
                self.client_ids.release(claim, true);
                return Err(ConnectionError::BadConnect(e));
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
            Session::new(&identity.agency, self.settings.packet_limits, &self.filters);
        let (client_rx, mut client_tx) = tokio::io::split(client);
        let (backend_rx, mut backend_tx) = tokio::io::split(backend);
        let mut backend_rx = BufReader::with_capacity(RELAY_BUFFER, backend_rx);
        let outcome = tokio::select! {
            r = relay_checked(client_rx, &mut backend_tx, level, &mut session, self.settings.max_packet_bytes) => r,
            r = tokio::io::copy_buf(&mut backend_rx, &mut client_tx) => match r {
                Ok(_) => Relay::Closed("the embedded broker closed the connection".into()),
                Err(e) => Relay::Closed(format!("ended: {e}")),
            },
            _ = close.notified() => Relay::Closed("closed by the broker (certificate revoked or shutdown)".into()),
            _ = shutdown.changed() => Relay::Closed("broker shutting down".into()),
        };
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Relay::Refused(violation) = &outcome {
            warn!(%peer, agency = %identity.agency, connection = id, reason = %violation, "connection closed: packet refused");
            if let Some(packet) = inspect::refusal(level, false, violation) {
                let _ = client_tx.write_all(&packet).await;
            }
        }
        let _ = client_tx.shutdown().await;
        let closed = close_backend(&mut backend_rx, &mut backend_tx).await;
        self.client_ids.release(claim, closed);
        let outcome = match outcome {
            Relay::Closed(how) => how,
            Relay::Refused(violation) => format!("refused: {violation}"),
        };
        debug!(%peer, agency = %identity.agency, connection = id, outcome, "disconnected");
        Ok(())
    }

    /// Connects to rumqttd's listener for `level` as `agency`, sends the
    /// CONNECT and returns the stream with rumqttd's CONNACK.
    async fn open_backend(
        &self,
        agency: &str,
        level: u8,
        connect: &[u8],
    ) -> Result<(TlsStream<QuickAck>, Vec<u8>), ConnectionError> {
        let backend_addr = if level == 5 {
            self.embedded.v5
        } else {
            self.embedded.v4
        };
        // rumqttd handshakes inline in its accept loop: never wait on it forever.
        let backend_timeout = self.settings.handshake_timeout;
        let backend = tokio::time::timeout(backend_timeout, TcpStream::connect(backend_addr))
            .await
            .map_err(|_| ConnectionError::Backend("connect timed out".into()))?
            .map_err(|e| ConnectionError::Backend(e.to_string()))?;
        let connector = TlsConnector::from(
            self.embedded
                .client_config(agency)
                .map_err(|e| ConnectionError::Backend(e.to_string()))?,
        );
        let server_name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut backend = tokio::time::timeout(
            backend_timeout,
            connector.connect(server_name, QuickAck::new(backend)),
        )
        .await
        .map_err(|_| ConnectionError::Backend("TLS handshake timed out".into()))?
        .map_err(|e| ConnectionError::Backend(e.to_string()))?;
        backend
            .write_all(connect)
            .await
            .map_err(|e| ConnectionError::Backend(e.to_string()))?;
        // rumqttd's answer must be a CONNACK; without one the client id is
        // never used again (see `client_ids`) and the client told nothing more.
        let timeout = self.settings.connect_timeout;
        match tokio::time::timeout(timeout, read_packet(&mut backend, 1024)).await {
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
enum Relay {
    /// Either side closed, or the broker closed it.
    Closed(String),
    /// The client sent a packet that is not allowed.
    Refused(Violation),
}

/// Largest packet other than PUBLISH accepted from a client: a SUBSCRIBE
/// within the subscription limits is far smaller.
const MAX_CONTROL_PACKET: usize = 64 * 1024;

/// Passes the client's packets to rumqttd one at a time, each checked by
/// `session` first. A PUBLISH's header is read and checked, its payload
/// streamed; everything else is read whole. Writes are flushed when no
/// more input is waiting, so a burst of small packets goes out together.
async fn relay_checked<R, W>(
    client: R,
    backend: &mut W,
    level: u8,
    session: &mut Session<'_>,
    max_packet_bytes: usize,
) -> Relay
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut client = BufReader::with_capacity(RELAY_BUFFER, client);
    let mut head = Vec::new();
    loop {
        let first = match client.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Relay::Closed("closed by the client".into());
            }
            Err(e) => return Relay::Closed(format!("ended: {e}")),
        };
        head.clear();
        head.push(first);
        let remaining = match read_remaining_length(&mut client, &mut head).await {
            Ok(n) => n,
            Err(Read::Io(e)) => return Relay::Closed(format!("ended: {e}")),
            Err(Read::Bad(v)) => return Relay::Refused(v),
        };
        let is_publish = first >> 4 == inspect::kind::PUBLISH;
        let limit = if is_publish {
            max_packet_bytes
        } else {
            MAX_CONTROL_PACKET
        };
        if remaining > limit {
            return Relay::Refused(Violation::TooLarge(remaining, limit));
        }
        let body_start = head.len();
        let read = if is_publish {
            read_publish_header(&mut client, &mut head, first, remaining, level).await
        } else {
            read_more(&mut client, &mut head, remaining, remaining).await
        };
        match read {
            Ok(()) => {}
            Err(Read::Io(e)) => return Relay::Closed(format!("ended: {e}")),
            Err(Read::Bad(v)) => return Relay::Refused(v),
        }
        let checked = inspect::parse(first, &head[body_start..], level)
            .and_then(|packet| session.check(&packet));
        if let Err(violation) = checked {
            return Relay::Refused(violation);
        }
        let payload = (remaining - (head.len() - body_start)) as u64;
        let sent = async {
            backend.write_all(&head).await?;
            if payload > 0 {
                let copied = tokio::io::copy_buf(&mut (&mut client).take(payload), backend).await?;
                if copied < payload {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            if client.buffer().is_empty() {
                backend.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        if let Err(e) = sent.await {
            return Relay::Closed(format!("ended: {e}"));
        }
    }
}

/// Why reading a packet stopped.
enum Read {
    Io(std::io::Error),
    Bad(Violation),
}

impl From<std::io::Error> for Read {
    fn from(e: std::io::Error) -> Self {
        Read::Io(e)
    }
}

/// Reads a remaining length (1 to 4 bytes, MQTT 3.1.1 section 2.2.3),
/// appending its bytes to `packet`.
async fn read_remaining_length<R: AsyncRead + Unpin>(
    r: &mut R,
    packet: &mut Vec<u8>,
) -> Result<usize, Read> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let b = r.read_u8().await?;
        packet.push(b);
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(remaining);
        }
    }
    Err(Read::Bad(Violation::Malformed(
        "malformed remaining length".into(),
    )))
}

/// Appends `n` bytes to `packet`, refusing to read past a packet body of
/// `body_len` bytes (the body starts after the fixed header).
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    packet: &mut Vec<u8>,
    n: usize,
    body_len: usize,
) -> Result<(), Read> {
    let header = packet
        .iter()
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .map_or(packet.len(), |i| i + 2);
    if packet.len() - header + n > body_len {
        return Err(Read::Bad(Violation::Malformed(
            "a length inside the packet exceeds the packet".into(),
        )));
    }
    let start = packet.len();
    packet.resize(start + n, 0);
    r.read_exact(&mut packet[start..]).await?;
    Ok(())
}

/// Reads a PUBLISH's variable header (topic, packet identifier, MQTT 5
/// properties) after its fixed header, leaving the payload unread.
async fn read_publish_header<R: AsyncRead + Unpin>(
    r: &mut R,
    packet: &mut Vec<u8>,
    first: u8,
    body_len: usize,
    level: u8,
) -> Result<(), Read> {
    read_more(r, packet, 2, body_len).await?;
    let topic_len = usize::from(u16::from_be_bytes([
        packet[packet.len() - 2],
        packet[packet.len() - 1],
    ]));
    let packet_id = if (first >> 1) & 0b11 > 0 { 2 } else { 0 };
    read_more(r, packet, topic_len + packet_id, body_len).await?;
    if level == 5 {
        let mut props_len = 0usize;
        for i in 0..4 {
            read_more(r, packet, 1, body_len).await?;
            let b = packet[packet.len() - 1];
            props_len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
            if i == 3 {
                return Err(Read::Bad(Violation::Malformed(
                    "malformed properties length".into(),
                )));
            }
        }
        read_more(r, packet, props_len, body_len).await?;
    }
    Ok(())
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

/// Reads one MQTT packet (fixed header, remaining length, body), at most
/// `max_bytes` long.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R, max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    read_packet_after(first[0], r, max_bytes).await
}

/// Reads the rest of a packet whose first byte was `first`.
async fn read_packet_after<R: AsyncRead + Unpin>(
    first: u8,
    r: &mut R,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let mut packet = vec![first];
    let remaining = match read_remaining_length(r, &mut packet).await {
        Ok(n) => n,
        Err(Read::Io(e)) => return Err(e.to_string()),
        Err(Read::Bad(v)) => return Err(v.to_string()),
    };
    if remaining > max_bytes {
        return Err(format!(
            "packet of {remaining} bytes is larger than {max_bytes}"
        ));
    }
    let start = packet.len();
    packet.resize(start + remaining, 0);
    r.read_exact(&mut packet[start..])
        .await
        .map_err(|e| e.to_string())?;
    Ok(packet)
}

/// Reads one MQTT CONNECT packet and returns its protocol level (4 or 5)
/// with the packet's bytes. Anything else is refused at its first byte.
async fn read_connect<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<(u8, Vec<u8>), String> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    if first[0] != 0x10 {
        return Err(format!(
            "first packet type is 0x{:02x}, not CONNECT",
            first[0] >> 4
        ));
    }
    let packet = read_packet_after(first[0], r, max_bytes).await?;
    // The variable header starts after the fixed header's 2 to 5 bytes.
    let header = packet
        .iter()
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .map_or(packet.len(), |i| i + 2);
    let body = &packet[header..];
    if body.len() < 7 {
        return Err("CONNECT too short".into());
    }
    if body[0..6] != [0, 4, b'M', b'Q', b'T', b'T'] {
        return Err("protocol name is not MQTT".into());
    }
    match body[6] {
        level @ (4 | 5) => Ok((level, packet)),
        other => Err(format!(
            "protocol level {other} (only 4 = 3.1.1 and 5 are served)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_connect_levels() {
        // A minimal 3.1.1 CONNECT: name, level 4, flags, keep-alive, client id "a".
        let v4 = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'a',
        ];
        let (level, bytes) = read_connect(&mut &v4[..], 1024).await.unwrap();
        assert_eq!((level, bytes.as_slice()), (4, &v4[..]));
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(read_connect(&mut &v5[..], 1024).await.unwrap().0, 5);
        let mut v3 = v4;
        v3[8] = 3;
        assert!(read_connect(&mut &v3[..], 1024).await.is_err());
        assert!(read_connect(&mut &[0x30u8, 0][..], 1024).await.is_err());
        assert!(read_connect(&mut &v4[..], 5).await.is_err());
        assert!(
            read_connect(&mut &[0x10u8, 0xff, 0xff, 0xff, 0xff][..], 1024)
                .await
                .is_err()
        );
    }
}
