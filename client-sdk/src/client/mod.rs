//! The agency client: publish signed alerts and receive verified shares
//! through the Samverkan broker.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use samverkan_sdk::client::{AgencyConfig, Client};
//!
//! let config = AgencyConfig::from_dev_pki(
//!     Path::new("certs-dev"),
//!     Path::new("policies/keys.toml"),
//!     "linkoping",
//!     "localhost",
//!     8883,
//! )?;
//! let client = Client::connect(config).await?;
//! let mut inbox = client.subscribe("welfare/#").await?;
//! while let Some(item) = inbox.next().await {
//!     match item {
//!         Ok(share) => {
//!             // ... handle share.fields() ...
//!             share.ack().await?;
//!         }
//!         Err(refused) => eprintln!("{}: {}", refused.code(), refused),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! How it works:
//!
//! * **Connection.** MQTT 3.1.1 (rumqttc) over TLS 1.3 with the agency's
//!   client certificate, `TCP_NODELAY`, clean sessions. A background task
//!   polls the connection for the life of the client,
//!   reconnects with backoff, and after every CONNACK re-subscribes the
//!   receipts topic and every subscription, then (if anything is subscribed)
//!   asks the broker to replay unacknowledged shares, and asks again while
//!   the broker's replay status says shares remain.
//! * **Several broker nodes.** A configuration may list several broker
//!   addresses ([`AgencyConfig::with_fallback_brokers`]). The client tries
//!   them in order; whenever a connection attempt fails or a connection
//!   drops it moves on to the next address (after the last, the first
//!   again), with the same backoff. A new node is just another reconnect:
//!   everything above happens again there, and publishes still waiting for
//!   their receipt send the same envelope to it. A node that shares the
//!   database answers an alert it already accepted with the stored receipt,
//!   and replays what is unacknowledged with the same share ids, which the
//!   duplicate suppression below recognises.
//! * **Publishing.** [`Client::publish`] signs the alert with a fresh alert
//!   id and sends it at QoS 1, then waits for the broker's signed receipt.
//!   The broker keeps no session across reconnects, so a PUBACK is not
//!   enough: without a verified receipt within `receipt_timeout` (or after
//!   a reconnect) the *same* envelope bytes are sent again, until
//!   `publish_deadline`. Receipts that do not verify never complete a publish.
//! * **Receiving.** [`Client::subscribe`] yields verified shares (and
//!   refused deliveries as errors). Duplicates are suppressed by share id
//!   (a share in hand or acknowledged is not handed out again);
//!   [`ReceivedShare::ack`] sends a signed acknowledgement.

pub(crate) mod brokers;
mod config;
mod connection;
mod dedup;
mod error;
mod receipts;
mod subscription;
pub(crate) mod tls;
mod tracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};

pub use brokers::{BrokerAddress, BrokerAddressError};
pub use config::{AgencyConfig, TlsMaterial};
pub use error::{ClientError, DeliveryError, PublishError};
pub use subscription::{ReceivedShare, Subscription, SubscriptionItem};

use crate::alerts::Alert;
use crate::envelope::{Envelope, EnvelopeError};
use crate::messages::{Receipt, ReceiptStatus, envelope_hash};
use crate::names;
use crate::time::now_ms;
use crate::topics;
use brokers::Rotation;
use connection::{ConnState, Shared, lock};
use dedup::ShareDedup;
use receipts::ReceiptBook;
use subscription::Routes;
use tracker::{BatchKind, SubBatch, SubWaiter, SubscribeTracker};

/// Capacity of rumqttc's request channel (publishes, acknowledgements,
/// subscribes queued by the application).
const REQUEST_QUEUE: usize = 256;
/// MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long [`Client::close`] waits for the DISCONNECT to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before retrying to queue a SUBSCRIBE when the request channel is full.
const QUEUE_RETRY: Duration = Duration::from_millis(10);

/// A connected agency. Cheap to share behind an `Arc`; dropping it stops the
/// connection (prefer [`Client::close`], which disconnects cleanly).
pub struct Client {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    receipt_timeout: Duration,
    publish_deadline: Duration,
    wait_when_rate_limited: bool,
    connect_timeout: Duration,
    max_packet_size: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("agency", &self.shared.agency)
            .field("broker", &self.shared.address)
            .finish_non_exhaustive()
    }
}

/// A publish ready to go: what is sent, and what its receipt must match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prepared {
    topic: String,
    payload: Vec<u8>,
    alert_id: String,
    envelope_hash: String,
}

/// Size of the MQTT PUBLISH packet (QoS 1) carrying `payload` on `topic`.
fn publish_packet_size(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Checks an envelope for publishing by `me` and encodes it, before
/// anything is sent: an oversized packet would otherwise break the connection.
fn prepare(
    me: &str,
    max_packet_size: usize,
    envelope: &Envelope,
) -> Result<Prepared, PublishError> {
    envelope.header.validate()?;
    if envelope.header.publisher != me {
        return Err(PublishError::InvalidAlert(EnvelopeError::InvalidHeader {
            field: "publisher",
            reason: format!("this client publishes as `{me}`"),
        }));
    }
    let topic = topics::outbox(me, &envelope.header.topic);
    let payload = envelope.to_json();
    let size = publish_packet_size(&topic, payload.len());
    if size > max_packet_size {
        return Err(PublishError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Prepared {
        topic,
        payload,
        alert_id: envelope.header.alert_id.clone(),
        envelope_hash: envelope_hash(envelope),
    })
}

/// Removes a publish's receipt registration however the publish ends.
struct ReceiptRegistration<'a> {
    shared: &'a Shared,
    alert_id: &'a str,
    token: u64,
}

impl Drop for ReceiptRegistration<'_> {
    fn drop(&mut self) {
        lock(&self.shared.receipts).forget(self.alert_id, self.token);
    }
}

/// What waiting for a ready connection ended with.
enum Readiness {
    Ready { generation: u64 },
    Closed,
    Deadline,
}

async fn wait_ready(state: &mut watch::Receiver<ConnState>, deadline: Instant) -> Readiness {
    loop {
        let s = *state.borrow_and_update();
        if s.closed {
            return Readiness::Closed;
        }
        if s.ready {
            return Readiness::Ready {
                generation: s.generation,
            };
        }
        match tokio::time::timeout_at(deadline, state.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Readiness::Closed,
            Err(_) => return Readiness::Deadline,
        }
    }
}

impl Client {
    /// Connects to the broker as `config.agency`.
    ///
    /// Returns once the broker has accepted the session and the receipts
    /// topic is subscribed, so that no receipt can be missed; fails with
    /// [`ClientError::Tls`], [`ClientError::ConnectionRefused`],
    /// [`ClientError::SessionRefused`] or [`ClientError::Timeout`] (after
    /// `config.connect_timeout`) instead. Later connection losses are
    /// repaired in the background. Must be called inside a Tokio runtime.
    ///
    /// With several broker addresses ([`AgencyConfig::brokers`]) each is
    /// tried in turn until one accepts; the call fails only when every
    /// address has failed (with the error that most needs the operator: a
    /// TLS or session refusal before an unreachable node), or after
    /// `config.connect_timeout` times the number of addresses.
    pub async fn connect(config: AgencyConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let tls = tls::client_config(&config)?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let client_id = format!("{}-{}", config.agency, &suffix[..12]);
        let options_for = |broker: &BrokerAddress| {
            let mut options = MqttOptions::new(client_id.clone(), broker.host.clone(), broker.port);
            options
                .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                    tls.clone(),
                )))
                .set_keep_alive(KEEP_ALIVE)
                .set_clean_session(true)
                .set_max_packet_size(config.max_packet_size, config.max_packet_size)
                .set_request_channel_capacity(REQUEST_QUEUE);
            options
        };
        let addresses = config.brokers();
        let count = u32::try_from(addresses.len()).unwrap_or(u32::MAX);
        let Some(brokers) = Rotation::new(
            addresses
                .into_iter()
                .map(|broker| {
                    let options = options_for(&broker);
                    (broker, options)
                })
                .collect(),
        ) else {
            return Err(ClientError::Config("no broker address".into()));
        };
        let (mqtt, mut eventloop) = AsyncClient::new(brokers.value().clone(), REQUEST_QUEUE);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);

        let client = Self::with_parts(&config, mqtt);
        let (first_tx, first_rx) = oneshot::channel();
        let mut client = client;
        client.task = Some(tokio::spawn(connection::run(
            eventloop,
            brokers,
            client.shared.clone(),
            first_tx,
        )));
        debug!(agency = %config.agency, client_id = %client_id, brokers = %config.addresses(), "connecting");
        let limit = config.connect_timeout.saturating_mul(count);
        match tokio::time::timeout(limit, first_rx).await {
            Ok(Ok(Ok(()))) => {
                let broker = client
                    .connected_broker()
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| config.address());
                info!(agency = %config.agency, broker = %broker, "connected");
                Ok(client)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout {
                what: "connecting to the broker",
                after: limit,
            }),
        }
    }

    /// The client without a connection task (which [`Self::connect`] adds).
    fn with_parts(config: &AgencyConfig, mqtt: AsyncClient) -> Self {
        let (state, _) = watch::channel(ConnState::default());
        let shared = Arc::new(Shared {
            agency: config.agency.clone(),
            address: config.addresses(),
            connected_to: Mutex::new(None),
            connect_timeout: config.connect_timeout,
            signing_key: config.signing_key.clone(),
            signing_key_id: config.signing_key_id.clone(),
            broker_keys: config.broker_keys.clone(),
            agency_keys: config.agency_keys.clone(),
            mqtt,
            receipts: Mutex::new(ReceiptBook::default()),
            dedup: Mutex::new(ShareDedup::new(ShareDedup::DEFAULT_CAPACITY)),
            routes: Mutex::new(Routes::default()),
            tracker: Mutex::new(SubscribeTracker::default()),
            state,
            closing: AtomicBool::new(false),
            replay_scheduled: AtomicBool::new(false),
            replay_request: Mutex::new(None),
            acked_since_replay: AtomicBool::new(false),
            dropped_since_replay: AtomicBool::new(false),
        });
        Self {
            shared,
            task: None,
            receipt_timeout: config.receipt_timeout,
            publish_deadline: config.publish_deadline,
            wait_when_rate_limited: config.wait_when_rate_limited,
            connect_timeout: config.connect_timeout,
            max_packet_size: config.max_packet_size,
        }
    }

    /// The agency this client acts for.
    pub fn agency(&self) -> &str {
        &self.shared.agency
    }

    /// Whether the connection is up and the receipts topic subscribed right now.
    pub fn is_connected(&self) -> bool {
        self.shared.state.borrow().ready
    }

    /// The address of the broker node the client is connected to now (its
    /// CONNACK arrived), or `None` between connections. With several broker
    /// addresses this says which one is in use.
    pub fn connected_broker(&self) -> Option<BrokerAddress> {
        lock(&self.shared.connected_to).clone()
    }

    /// Signs `alert` for publishing on the logical topic, with a new UUID v7
    /// alert id (time-ordered, so the broker's indexes on alert ids grow at
    /// their end instead of being rewritten all over) and the current time. Useful to keep the envelope and
    /// publish it again later with [`Self::publish_envelope`] (same alert id,
    /// so the broker recognises it).
    pub fn sign(&self, logical_topic: &str, alert: &Alert) -> Result<Envelope, EnvelopeError> {
        let alert_id = uuid::Uuid::now_v7().to_string();
        let header = alert.header(
            logical_topic,
            &self.shared.agency,
            &self.shared.signing_key_id,
            &alert_id,
            now_ms(),
        );
        Envelope::sign(header, &alert.fields, &self.shared.signing_key)
    }

    /// Signs and publishes `alert` on the logical topic and returns the
    /// broker's verified receipt once it has accepted the alert.
    ///
    /// Resends the same envelope when no receipt arrives within
    /// `receipt_timeout` or after a reconnect, up to `publish_deadline`.
    /// Errors: [`PublishError::InvalidAlert`] (nothing sent),
    /// [`PublishError::Rejected`] (the broker's receipt says why),
    /// [`PublishError::Timeout`], [`PublishError::Closed`].
    pub async fn publish(
        &self,
        logical_topic: &str,
        alert: Alert,
    ) -> Result<Receipt, PublishError> {
        let envelope = self.sign(logical_topic, &alert)?;
        self.publish_envelope(envelope).await
    }

    /// Publishes an envelope signed elsewhere (its publisher must be this
    /// agency) with the same waiting and resending as [`Self::publish`].
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<Receipt, PublishError> {
        let prepared = prepare(&self.shared.agency, self.max_packet_size, &envelope)?;
        let alert_id = prepared.alert_id.as_str();
        let (token, mut receipt_rx) =
            lock(&self.shared.receipts).register(alert_id, &prepared.envelope_hash);
        let mut registration = ReceiptRegistration {
            shared: &self.shared,
            alert_id,
            token,
        };
        let timeout = || PublishError::Timeout {
            alert_id: alert_id.to_string(),
        };
        let deadline = Instant::now() + self.publish_deadline;
        let mut state = self.shared.state.subscribe();
        let mut attempt: u32 = 0;
        loop {
            let generation = match wait_ready(&mut state, deadline).await {
                Readiness::Ready { generation } => generation,
                Readiness::Closed => return Err(PublishError::Closed),
                Readiness::Deadline => return Err(timeout()),
            };
            attempt += 1;
            if attempt == 1 {
                debug!(alert_id, topic = %prepared.topic, "publishing alert");
            } else {
                info!(
                    alert_id,
                    attempt, "no receipt yet; sending the same alert again"
                );
            }
            let send = self.shared.mqtt.publish(
                prepared.topic.clone(),
                QoS::AtLeastOnce,
                false,
                prepared.payload.clone(),
            );
            match tokio::time::timeout_at(deadline, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(PublishError::Closed),
                Err(_) => return Err(timeout()),
            }
            let attempt_end = (Instant::now() + self.receipt_timeout).min(deadline);
            loop {
                tokio::select! {
                    outcome = &mut receipt_rx => {
                        let receipt = outcome.map_err(|_| PublishError::Closed)?;
                        return match receipt.status {
                            ReceiptStatus::Accepted => {
                                debug!(alert_id, shares = receipt.shares.len(), "alert accepted");
                                Ok(receipt)
                            }
                            ReceiptStatus::Rejected => {
                                // Over the publish limit: the broker says when to
                                // try again; do so while the deadline allows.
                                let retry = receipt
                                    .rejection
                                    .as_ref()
                                    .filter(|_| self.wait_when_rate_limited)
                                    .filter(|r| r.kind() == Some(crate::codes::RejectionCode::RateLimited))
                                    .and_then(|r| r.retry_after_ms)
                                    .map(|ms| Instant::now() + Duration::from_millis(ms.clamp(1, 60_000)))
                                    .filter(|at| *at < deadline);
                                if let Some(at) = retry {
                                    info!(alert_id, "over the publish limit; trying again when the broker allows");
                                    tokio::time::sleep_until(at).await;
                                    drop(registration);
                                    let (token, fresh) = lock(&self.shared.receipts)
                                        .register(alert_id, &prepared.envelope_hash);
                                    registration = ReceiptRegistration {
                                        shared: &self.shared,
                                        alert_id,
                                        token,
                                    };
                                    receipt_rx = fresh;
                                    break;
                                }
                                info!(
                                    alert_id,
                                    code = receipt.rejection.as_ref().map(|r| r.code.as_str()).unwrap_or("-"),
                                    "alert rejected"
                                );
                                Err(PublishError::Rejected(Box::new(receipt)))
                            }
                        };
                    }
                    _ = tokio::time::sleep_until(attempt_end) => break,
                    changed = state.changed() => {
                        if changed.is_err() {
                            return Err(PublishError::Closed);
                        }
                        let s = *state.borrow_and_update();
                        if s.closed {
                            return Err(PublishError::Closed);
                        }
                        if s.generation != generation {
                            // Reconnected: the earlier copy may be lost; resend now.
                            break;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
        }
    }

    /// Subscribes to the shares delivered to this agency on a logical topic
    /// filter (`welfare/#`, `akrim/+/inspection`, `#`) and returns once the
    /// broker has acknowledged the subscription. The broker is then asked to
    /// replay unacknowledged shares, so shares that arrived while nobody was
    /// subscribed come in too.
    pub async fn subscribe(&self, logical_filter: &str) -> Result<Subscription, ClientError> {
        names::validate_topic_filter(logical_filter)?;
        let (tx, rx) = mpsc::channel(subscription::QUEUE_CAPACITY);
        let id = lock(&self.shared.routes).add(logical_filter, tx);
        // From here on, dropping `subscription` undoes the registration.
        let subscription =
            Subscription::new(id, logical_filter.to_string(), rx, self.shared.clone());
        let topic = topics::inbox(&self.shared.agency, logical_filter);
        let deadline = Instant::now() + self.connect_timeout;
        let answer = loop {
            {
                let mut tracker = lock(&self.shared.tracker);
                let (waiter, answer) = SubWaiter::new(topic.clone());
                tracker.queued_in_channel(SubBatch {
                    kind: BatchKind::Added,
                    topics: vec![topic.clone()],
                    waiters: vec![waiter],
                });
                if self
                    .shared
                    .mqtt
                    .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                    .is_ok()
                {
                    break answer;
                }
                tracker.unqueue_channel_back();
            }
            if self.shared.state.borrow().closed {
                return Err(ClientError::Closed);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    what: "subscribing",
                    after: self.connect_timeout,
                });
            }
            tokio::time::sleep(QUEUE_RETRY).await;
        };
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(()))) => {
                info!(filter = logical_filter, "subscribed");
                Ok(subscription)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout {
                what: "subscribing",
                after: self.connect_timeout,
            }),
        }
    }

    /// Disconnects cleanly and stops the connection task. Subscriptions end;
    /// shares in hand can no longer be acknowledged.
    pub async fn close(mut self) {
        self.shared.closing.store(true, Ordering::Release);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.shared.mqtt.disconnect()).await;
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(CLOSE_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        self.shared.shut_down();
        info!(agency = %self.shared.agency, "disconnected");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shared.shut_down();
    }
}

#[cfg(test)]
mod tests;
