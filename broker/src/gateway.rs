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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::identity::{PeerIdentity, peer_identity};
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
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connect_bytes: 64 * 1024,
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
        let client_id =
            crate::client_ids::client_id(&connect, level).map_err(ConnectionError::BadConnect)?;
        let claim = self.client_ids.claim(&identity.agency, &client_id, id);
        let connect = match &claim.renamed {
            Some(unique) => crate::client_ids::with_client_id(&connect, level, unique)
                .map_err(ConnectionError::BadConnect)?,
            None => connect,
        };

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
                .client_config(&identity.agency)
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
            .write_all(&connect)
            .await
            .map_err(|e| ConnectionError::Backend(e.to_string()))?;
        // rumqttd's answer must be a CONNACK; without one the client id is
        // marked (see `client_ids`) and the client told nothing more.
        let connack = tokio::time::timeout(timeout, read_packet(&mut backend, 1024)).await;
        let connack = match connack {
            Ok(Ok(packet)) if packet.first().is_some_and(|b| b >> 4 == 2) => packet,
            other => {
                self.client_ids.release(claim, false);
                let reason = match other {
                    Ok(Ok(_)) => "rumqttd answered CONNECT with another packet".to_string(),
                    Ok(Err(e)) => e,
                    Err(_) => "no CONNACK from rumqttd".to_string(),
                };
                return Err(ConnectionError::Backend(reason));
            }
        };
        self.client_ids.release(claim, true);
        client
            .write_all(&connack)
            .await
            .map_err(|e| ConnectionError::Backend(e.to_string()))?;

        let close = Arc::new(Notify::new());
        info!(%peer, agency = %identity.agency, mqtt = level, connection = id, "connected");
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            LiveConnection {
                identity: identity.clone(),
                close: close.clone(),
            },
        );
        let outcome = tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, RELAY_BUFFER, RELAY_BUFFER) => match r {
                Ok(_) => "closed".to_string(),
                Err(e) => format!("ended: {e}"),
            },
            _ = close.notified() => "closed by the broker (certificate revoked or shutdown)".to_string(),
            _ = shutdown.changed() => "broker shutting down".to_string(),
        };
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let _ = client.shutdown().await;
        let _ = backend.shutdown().await;
        debug!(%peer, agency = %identity.agency, connection = id, outcome, "disconnected");
        Ok(())
    }
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
    // Remaining length: 1 to 4 bytes, 7 bits each (MQTT 3.1.1 section 2.2.3).
    let mut remaining: usize = 0;
    for i in 0..4 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        packet.push(b[0]);
        remaining |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err("malformed remaining length".into());
        }
    }
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
