//! The embedded MQTT broker (rumqttd) behind the gateway.
//!
//! rumqttd runs in-process with two listeners on loopback only, one for MQTT
//! 3.1.1 and one for MQTT 5 (a rumqttd listener speaks one protocol level).
//! They speak plain TCP: the gateway has authenticated the agency, checks
//! every packet in both directions itself (`relay.rs`, `inspect.rs`) and
//! names each connection's client id `{agency}.{id}` (`client_ids.rs`), so
//! rumqttd needs no tenant of its own. A loopback port can be reached by any
//! process on the machine, so rumqttd accepts a CONNECT only with a user
//! name and password made at every start, kept only in this process's
//! memory ([`BackendLogin`]); the gateway writes them into every CONNECT it
//! forwards, in place of whatever the client sent.
//!
//! The router is a local link: the only component that crosses tenants.
//! See `docs/DECISIONS.md` for what rumqttd does and does not guarantee.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::{ConnectionSettings, LinkType, Notification, RouterConfig, Server, ServerSettings};
use thiserror::Error;
use tokio::task::JoinHandle;

/// The id of the router's local link (no `.`: agency client ids are `agency.id`).
const ROUTER_LINK_ID: &str = "samverkan-router";

/// Why the embedded broker could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MqttError {
    /// No random secret could be drawn.
    #[error("random secret: {0}")]
    Random(String),
    /// A socket operation failed.
    #[error("loopback: {0}")]
    Io(#[from] std::io::Error),
    /// rumqttd refused the router link.
    #[error("router link: {0}")]
    Link(String),
    /// A loopback listener did not come up.
    #[error("rumqttd listener did not start: {0}")]
    Listener(String),
}

/// The user name and password rumqttd's listeners require: made at every
/// start from the operating system's random source, never written anywhere,
/// so only this process can connect to rumqttd.
#[derive(Clone)]
pub struct BackendLogin {
    /// The user name.
    pub username: String,
    /// The password (64 hexadecimal digits: 256 random bits).
    pub password: String,
}

impl std::fmt::Debug for BackendLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLogin")
            .field("username", &self.username)
            .field("password", &"(secret)")
            .finish()
    }
}

impl BackendLogin {
    /// A fresh login with a random password.
    fn generate() -> Result<Self, MqttError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| MqttError::Random(e.to_string()))?;
        Ok(Self {
            username: "samverkan-gateway".into(),
            password: hex::encode(secret),
        })
    }
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
    login: BackendLogin,
    servers: Vec<JoinHandle<()>>,
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

impl Embedded {
    /// Starts rumqttd's router and loopback listeners, and the router's link
    /// subscribed to `filters` (waiting for the subscription to be confirmed
    /// before any listener opens, so nothing published is missed).
    pub async fn start(
        settings: &MqttSettings,
        filters: &[&str],
    ) -> Result<(Embedded, RouterLink), MqttError> {
        let login = BackendLogin::generate()?;
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
            // rumqttd compares the password in constant time.
            auth: Some(HashMap::from([(
                login.username.clone(),
                login.password.clone(),
            )])),
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
            let (addr, handle) = start_listener(name, v5, &connections, &spawn).await?;
            addrs.push(addr);
            servers.push(handle);
        }
        Ok((
            Embedded {
                v4: addrs[0],
                v5: addrs[1],
                login,
                servers,
            },
            link,
        ))
    }

    /// The user name and password rumqttd requires, which the gateway
    /// writes into every CONNECT it forwards.
    pub fn login(&self) -> &BackendLogin {
        &self.login
    }
}

/// Starts one rumqttd listener on a free loopback port. rumqttd binds the
/// port itself, so a port is picked first and the bind is retried on the
/// rare chance another process took it in between.
async fn start_listener(
    name: &str,
    v5: bool,
    connections: &ConnectionSettings,
    spawn: &impl Fn(ServerSettings, bool) -> JoinHandle<()>,
) -> Result<(SocketAddr, JoinHandle<()>), MqttError> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let addr = free_loopback_port()?;
        let settings = ServerSettings {
            name: name.to_string(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let handle = spawn(settings, v5);
        // The listener is up once its port is taken while the task still
        // runs. Probing by binding (not connecting) keeps rumqttd from
        // logging a connection without CONNECT for the probe.
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What rumqttd answers to `connect`: its first packet, or `None` if it
    /// closed the connection without one.
    async fn answer(addr: SocketAddr, connect: &[u8]) -> Option<Vec<u8>> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(connect).await.unwrap();
        let read = crate::relay::read_packet(&mut stream, 1024);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(packet)) => Some(packet),
            Ok(Err(_)) => None,
            Err(_) => panic!("rumqttd neither answered nor closed"),
        }
    }

    /// A CONNECT of `level` for client id `id` with the given login, if any.
    fn connect(level: u8, id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level];
        body.push(0x02 | if login.is_some() { 0xC0 } else { 0 });
        body.extend_from_slice(&[0, 30]);
        if level == 5 {
            body.push(0);
        }
        let mut field = |bytes: &[u8]| {
            body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            body.extend_from_slice(bytes);
        };
        field(id.as_bytes());
        if let Some((user, password)) = login {
            field(user.as_bytes());
            field(password.as_bytes());
        }
        let mut packet = vec![0x10];
        crate::inspect::push_varint(&mut packet, body.len());
        packet.extend_from_slice(&body);
        packet
    }

    #[tokio::test]
    async fn rumqttd_refuses_connections_without_the_gateways_secret() {
        let (embedded, _link) = Embedded::start(&MqttSettings::default(), &[])
            .await
            .unwrap();
        let login = embedded.login().clone();
        assert_eq!(login.password.len(), 64);
        for (level, addr) in [(4, embedded.v4), (5, embedded.v5)] {
            // Another local process: no login, a guessed one, the right
            // user name with another password.
            for attempt in [
                None,
                Some(("admin", "admin")),
                Some((login.username.as_str(), "0".repeat(64).as_str())),
            ] {
                assert_eq!(
                    answer(addr, &connect(level, "polisen.x", attempt)).await,
                    None,
                    "level {level}, login {attempt:?}"
                );
            }
            // The gateway's CONNECT is accepted (CONNACK, return code 0).
            let connack = answer(
                addr,
                &connect(level, "polisen.x", Some((&login.username, &login.password))),
            )
            .await
            .expect("a CONNACK");
            assert_eq!(connack[0], 0x20);
            assert_eq!(connack[3], 0, "level {level}: {connack:?}");
        }
        // Two logins of two starts differ.
        let (other, _other_link) = Embedded::start(&MqttSettings::default(), &[])
            .await
            .unwrap();
        assert_ne!(other.login().password, login.password);
    }
}
