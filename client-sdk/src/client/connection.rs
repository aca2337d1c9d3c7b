//! The connection task: the one place that polls rumqttc's event loop.
//!
//! It runs for the life of the [`Client`](super::Client) and
//!
//! * reconnects with exponential backoff (with jitter) after any error,
//!   each time to the next of the configured broker addresses (after the
//!   last, the first again; with one address, always to it);
//! * after every CONNACK re-subscribes the receipts topic and every live
//!   subscription's inbox filter in one SUBSCRIBE, and once that is
//!   acknowledged marks the connection *ready* (publishes wait for that, so
//!   no receipt can be missed) and asks the broker to replay unacknowledged
//!   shares (also after each new subscription; not while no inbox filter is
//!   subscribed, when the replay could reach nobody), and asks again when
//!   the broker's replay status says shares remain (or some were dropped
//!   here) and this client acknowledged shares since it asked;
//! * verifies receipts and hands them to the waiting publishes;
//! * verifies deliveries and queues them for the matching subscriptions,
//!   suppressing duplicates and acknowledging again shares that were
//!   acknowledged already.
//!
//! The event loop's `poll` is never cancelled (rumqttc may lose a packet
//! when it is dropped half-way), so the task does not select on anything
//! else: application requests reach the broker through rumqttc's request
//! channel, and the task itself puts its requests into the event loop's
//! `pending` queue, which rumqttc sends first (replay requests, which wait a
//! moment so that subscriptions made together share one, go through the
//! channel from a timer task).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    Request, SubAck, Subscribe, SubscribeFilter,
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::brokers::{BrokerAddress, Rotation};
use super::dedup::{Admission, ShareDedup};
use super::error::{ClientError, DeliveryError};
use super::receipts::ReceiptBook;
use super::subscription::{ReceivedShare, Routes};
use super::tls::find_tls_error;
use super::tracker::{BatchKind, SubBatch, SubscribeTracker};
use crate::keys::KeyRegistry;
use crate::messages::{
    Ack, BROKER_KEY_OWNER, Delivery, Receipt, ReplayRequest, ReplayStatus, Signed, TAG_ACK,
    TAG_RECEIPT, TAG_REPLAY_STATUS,
};
use crate::time::now_ms;
use crate::topics;

/// How long after a SUBACK the replay request goes out, so that several
/// subscriptions made together share one.
const REPLAY_DEBOUNCE: Duration = Duration::from_millis(100);

/// How long after a replay status the client asks again: the broker takes
/// one request per second per agency.
const REPLAY_AGAIN_AFTER: Duration = Duration::from_millis(1100);

/// Most share ids in one acknowledgement the task sends.
const MAX_SHARES_PER_ACK: usize = 500;

/// Locks a mutex; a panic elsewhere while it was held does not make the
/// client unusable (every critical section here leaves consistent state).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection's state as publishes and subscribes see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnState {
    /// Incremented at every CONNACK.
    pub(crate) generation: u64,
    /// The receipts topic is subscribed on the current connection.
    pub(crate) ready: bool,
    /// The connection task has stopped for good.
    pub(crate) closed: bool,
}

/// State shared by the application side ([`Client`](super::Client),
/// subscriptions, shares) and the connection task.
pub(crate) struct Shared {
    pub(crate) agency: String,
    /// Every broker address, for messages.
    pub(crate) address: String,
    /// The broker node of the current connection (from its CONNACK on).
    pub(crate) connected_to: Mutex<Option<BrokerAddress>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) signing_key: SigningKey,
    pub(crate) signing_key_id: String,
    pub(crate) broker_keys: KeyRegistry,
    pub(crate) agency_keys: KeyRegistry,
    pub(crate) mqtt: AsyncClient,
    pub(crate) receipts: Mutex<ReceiptBook>,
    pub(crate) dedup: Mutex<ShareDedup>,
    pub(crate) routes: Mutex<Routes>,
    pub(crate) tracker: Mutex<SubscribeTracker>,
    pub(crate) state: watch::Sender<ConnState>,
    pub(crate) closing: AtomicBool,
    /// A replay request is about to be sent.
    pub(crate) replay_scheduled: AtomicBool,
    /// The id of the last replay request sent, to recognise its status.
    pub(crate) replay_request: Mutex<Option<String>>,
    /// A share was acknowledged since the last replay request: asking again
    /// makes progress (a client that never acknowledges would otherwise get
    /// the same shares again and again).
    pub(crate) acked_since_replay: AtomicBool,
    /// A delivery was dropped here (queue full) since the last replay
    /// request; it is still pending at the broker.
    pub(crate) dropped_since_replay: AtomicBool,
}

impl Shared {
    /// The JSON of a signed acknowledgement of `share_ids`.
    pub(crate) fn ack_payload(&self, share_ids: Vec<String>) -> Result<Vec<u8>, serde_json::Error> {
        let ack = Ack {
            agency: self.agency.clone(),
            share_ids,
            signed_at_ms: now_ms(),
        };
        serde_json::to_vec(&Signed::sign(
            TAG_ACK,
            &ack,
            &self.signing_key,
            &self.signing_key_id,
        ))
    }

    /// Publishes a signed acknowledgement of `share_ids` (QoS 1).
    pub(crate) async fn send_ack(&self, share_ids: Vec<String>) -> Result<(), ClientError> {
        let payload = self
            .ack_payload(share_ids)
            .map_err(|e| ClientError::Connection {
                address: self.address.clone(),
                reason: format!("cannot encode an acknowledgement: {e}"),
            })?;
        self.mqtt
            .publish(topics::acks(&self.agency), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Publishes a replay request (QoS 1): the broker then delivers again
    /// every share of this agency not yet acknowledged.
    pub(crate) async fn request_replay(&self) {
        let request = ReplayRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        let payload = match serde_json::to_vec(&request) {
            Ok(payload) => payload,
            Err(e) => {
                warn!(error = %e, "cannot encode a replay request");
                return;
            }
        };
        debug!(request_id = %request.request_id, "requesting a replay of unacknowledged shares");
        *lock(&self.replay_request) = Some(request.request_id.clone());
        self.acked_since_replay.store(false, Ordering::Release);
        self.dropped_since_replay.store(false, Ordering::Release);
        let topic = topics::replay(&self.agency);
        if self
            .mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            debug!("client closed; replay request not sent");
        }
    }

    /// Marks the task as stopped and ends every subscription.
    pub(crate) fn shut_down(&self) {
        self.state.send_modify(|s| {
            s.ready = false;
            s.closed = true;
        });
        lock(&self.routes).clear();
    }
}

/// Exponential backoff between reconnection attempts, with ±25 % jitter so
/// that agencies do not all reconnect at the same instant after a broker restart.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// After a successful connection.
    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        let jitter = getrandom::u32().unwrap_or(0) % 501; // 0..=500 ‰
        base.mul_f64(0.75 + f64::from(jitter) / 1000.0)
    }
}

/// Attempts at the first connection, per broker address, before
/// [`Client::connect`](super::Client::connect) gives up.
const FIRST_CONNECT_ATTEMPTS: u32 = 3;

/// Whether a failed first connection is tried again (at the next broker
/// address, if there are several), after `attempts` failed attempts at
/// `addresses` addresses. Every address is tried at least once. Beyond
/// that, a connection that the broker closed after accepting it, or that
/// broke off, is transient (the broker restarting, a load balancer) and is
/// tried again, up to [`FIRST_CONNECT_ATTEMPTS`] rounds; a refused TCP
/// connection, a TLS refusal or an MQTT refusal is an answer, reported at
/// once.
fn retry_first_connect(
    error: &ClientError,
    was_connected: bool,
    attempts: u32,
    addresses: usize,
) -> bool {
    let addresses = u32::try_from(addresses).unwrap_or(u32::MAX);
    attempts < addresses
        || (attempts < FIRST_CONNECT_ATTEMPTS.saturating_mul(addresses)
            && (was_connected || matches!(error, ClientError::Connection { .. })))
}

/// Of two errors of a first connection at different addresses, the one to
/// report when every address has failed: an answer that needs the
/// operator (a TLS or session refusal) rather than an unreachable node, and
/// otherwise the later one.
fn worth_reporting(kept: Option<ClientError>, new: ClientError) -> ClientError {
    match kept {
        Some(kept) if !kept.is_transient() && new.is_transient() => kept,
        _ => new,
    }
}

/// Turns a rumqttc connection error into the client's error.
pub(crate) fn classify(err: &ConnectionError, address: &str, timeout: Duration) -> ClientError {
    let address = address.to_string();
    if let Some(tls) = find_tls_error(err) {
        let reason = match tls {
            rustls::Error::AlertReceived(alert) => format!(
                "the broker sent the TLS alert {alert:?} (is this agency's client certificate issued by the federation CA and valid?)"
            ),
            other => other.to_string(),
        };
        return ClientError::Tls { address, reason };
    }
    match err {
        ConnectionError::Tls(e) => ClientError::Tls {
            address,
            reason: e.to_string(),
        },
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ClientError::ConnectionRefused {
                address,
                reason: e.to_string(),
            }
        }
        ConnectionError::ConnectionRefused(code) => ClientError::SessionRefused {
            address,
            code: format!("{code:?}"),
        },
        ConnectionError::NetworkTimeout => ClientError::Timeout {
            what: "connecting to the broker",
            after: timeout,
        },
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
            ClientError::Connection {
                address,
                reason: "the broker closed the connection".into(),
            }
        }
        other => ClientError::Connection {
            address,
            reason: other.to_string(),
        },
    }
}

/// Where a received MQTT message goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound<'a> {
    /// The agency's receipts topic.
    Receipt,
    /// The broker's status of a replay.
    ReplayStatus,
    /// Another broker message below `in/_` (checkpoints), not a delivery.
    Checkpoint,
    /// A delivery on this logical topic.
    Delivery(&'a str),
    /// Anything else (should not happen: nothing else is subscribed).
    Unexpected,
}

/// Classifies the MQTT topic of a message received by agency `me`.
pub(crate) fn inbound<'a>(me: &str, topic: &'a str) -> Inbound<'a> {
    if topic == topics::receipts(me) {
        return Inbound::Receipt;
    }
    match topics::logical_of_inbox(me, topic) {
        Some("_replay/status") => Inbound::ReplayStatus,
        Some(logical) if logical.starts_with('_') => Inbound::Checkpoint,
        Some(logical) => Inbound::Delivery(logical),
        None => Inbound::Unexpected,
    }
}

/// Whether the task goes on.
enum Flow {
    Continue,
    Stop,
}

/// The connection task's own state.
pub(crate) struct Task {
    eventloop: EventLoop,
    /// The broker addresses with their MQTT options; the current one is in
    /// `eventloop.mqtt_options`.
    brokers: Rotation<MqttOptions>,
    shared: Arc<Shared>,
    /// Answers [`Client::connect`](super::Client::connect) once.
    first: Option<oneshot::Sender<Result<(), ClientError>>>,
    backoff: Backoff,
    /// Failed attempts while [`Task::first`] is unanswered.
    first_attempts: u32,
    /// The error to report if the first connection fails at every address.
    first_error: Option<ClientError>,
    /// Redelivered shares that were acknowledged already, to acknowledge again.
    reack: Vec<String>,
}

/// Runs the connection until the client closes (or the first connection fails).
pub(crate) async fn run(
    eventloop: EventLoop,
    brokers: Rotation<MqttOptions>,
    shared: Arc<Shared>,
    first: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut task = Task {
        eventloop,
        brokers,
        shared,
        first: Some(first),
        backoff: Backoff::new(),
        first_attempts: 0,
        first_error: None,
        reack: Vec::new(),
    };
    loop {
        if task.shared.closing.load(Ordering::Acquire) && task.eventloop.network.is_none() {
            break;
        }
        let was_connected = task.eventloop.network.is_some();
        let flow = match task.eventloop.poll().await {
            Ok(event) => task.on_event(event),
            Err(err) => task.on_error(err, was_connected).await,
        };
        if let Flow::Stop = flow {
            break;
        }
    }
    task.shared.shut_down();
    debug!(agency = %task.shared.agency, "connection task stopped");
}

impl Task {
    fn me(&self) -> &str {
        &self.shared.agency
    }

    async fn on_error(&mut self, err: ConnectionError, was_connected: bool) -> Flow {
        if self.shared.closing.load(Ordering::Acquire) {
            return Flow::Stop;
        }
        if was_connected {
            // rumqttc has moved unsent requests into `pending`; the next
            // CONNACK (clean session) discards them.
            let subscribes = self
                .eventloop
                .pending
                .iter()
                .filter(|r| matches!(r, Request::Subscribe(_)))
                .count();
            lock(&self.shared.tracker).connection_lost(subscribes);
        }
        self.shared.state.send_modify(|s| s.ready = false);
        *lock(&self.shared.connected_to) = None;
        // The replay after the reconnect brings these shares again.
        self.reack.clear();
        let failed = self.brokers.address().to_string();
        let mut error = classify(&err, &failed, self.shared.connect_timeout);
        if self.first.is_some() {
            self.first_attempts += 1;
            if !retry_first_connect(
                &error,
                was_connected,
                self.first_attempts,
                self.brokers.len(),
            ) {
                if was_connected && let ClientError::Connection { reason, .. } = &mut error {
                    reason.push_str(&format!(
                        " right after accepting the connection, while the client subscribed to the topics of `{}` ({} attempts)",
                        self.shared.agency, self.first_attempts
                    ));
                }
                let error = worth_reporting(self.first_error.take(), error);
                if let Some(first) = self.first.take() {
                    let _ = first.send(Err(error));
                }
                return Flow::Stop;
            }
        }
        let delay = self.backoff.next_delay();
        let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        // Whatever went wrong, the next attempt goes to the next address.
        if self.brokers.advance() {
            self.eventloop.mqtt_options = self.brokers.value().clone();
        }
        let next = self.brokers.address().to_string();
        if was_connected {
            warn!(agency = %self.me(), error = %error, retry_in_ms, next = %next, "connection to the broker lost; reconnecting");
        } else {
            warn!(agency = %self.me(), error = %error, retry_in_ms, next = %next, "connecting to the broker failed; retrying");
        }
        if self.first.is_some() {
            self.first_error = Some(worth_reporting(self.first_error.take(), error));
        }
        tokio::time::sleep(delay).await;
        Flow::Continue
    }

    fn on_event(&mut self, event: Event) -> Flow {
        let flow = match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                self.on_connack();
                Flow::Continue
            }
            Event::Incoming(Incoming::SubAck(suback)) => self.on_suback(suback),
            Event::Incoming(Incoming::Publish(publish)) => {
                self.on_publish(publish);
                Flow::Continue
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                self.on_subscribe_sent(pkid);
                Flow::Continue
            }
            Event::Outgoing(Outgoing::Disconnect)
                if self.shared.closing.load(Ordering::Acquire) =>
            {
                Flow::Stop
            }
            _ => Flow::Continue,
        };
        // rumqttc reads up to ten packets at once and returns them one by
        // one; acknowledge the redelivered ones together once all are handled.
        if self.eventloop.state.events.is_empty() {
            self.flush_reacks();
        }
        flow
    }

    /// Queues one acknowledgement of every redelivered share that had been
    /// acknowledged already (the earlier acknowledgement may have been lost
    /// with a connection, which is why the broker delivered it again).
    fn flush_reacks(&mut self) {
        while !self.reack.is_empty() {
            let n = self.reack.len().min(MAX_SHARES_PER_ACK);
            let share_ids: Vec<String> = self.reack.drain(..n).collect();
            debug!(
                count = share_ids.len(),
                "acknowledging redelivered shares again"
            );
            match self.shared.ack_payload(share_ids) {
                Ok(payload) => self
                    .eventloop
                    .pending
                    .push_back(Request::Publish(Publish::new(
                        topics::acks(self.me()),
                        QoS::AtLeastOnce,
                        payload,
                    ))),
                Err(e) => warn!(error = %e, "cannot encode an acknowledgement"),
            }
        }
    }

    fn on_subscribe_sent(&mut self, pkid: u16) {
        if !lock(&self.shared.tracker).sent(pkid) {
            warn!(pkid, "a SUBSCRIBE was sent that the client did not track");
        }
    }

    /// Re-subscribes everything (receipts first) and adopts the waiters of
    /// subscriptions lost with the previous connection.
    fn on_connack(&mut self) {
        self.backoff.reset();
        *lock(&self.shared.connected_to) = Some(self.brokers.address().clone());
        let mut generation = 0;
        self.shared.state.send_modify(|s| {
            s.generation += 1;
            s.ready = false;
            generation = s.generation;
        });
        let me = self.me().to_string();
        let mut topics_list = vec![topics::receipts(&me), topics::replay_status(&me)];
        topics_list.extend(
            lock(&self.shared.routes)
                .filters()
                .iter()
                .map(|f| topics::inbox(&me, f)),
        );
        let subscribe = Subscribe::new_many(
            topics_list
                .iter()
                .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
        );
        let mut tracker = lock(&self.shared.tracker);
        let waiters = tracker.take_orphans();
        tracker.queued_by_task(SubBatch {
            kind: BatchKind::Session,
            topics: topics_list,
            waiters,
        });
        drop(tracker);
        self.eventloop
            .pending
            .push_back(Request::Subscribe(subscribe));
        info!(agency = %me, broker = %self.brokers.address(), generation, "connected to the broker; subscribing");
    }

    fn on_suback(&mut self, suback: SubAck) -> Flow {
        let Some(batch) = lock(&self.shared.tracker).acked(suback.pkid) else {
            debug!(pkid = suback.pkid, "SUBACK for an unknown SUBSCRIBE");
            return Flow::Continue;
        };
        for (topic, code) in batch.topics.iter().zip(&suback.return_codes) {
            if !matches!(code, rumqttc::SubscribeReasonCode::Success(_)) {
                warn!(topic = %topic, "the broker refused a subscription");
            }
        }
        if batch.kind == BatchKind::Session {
            let receipts = topics::receipts(self.me());
            if batch.granted(&suback.return_codes, &receipts) {
                self.shared.state.send_modify(|s| s.ready = true);
                if let Some(first) = self.first.take() {
                    let _ = first.send(Ok(()));
                }
            } else if let Some(first) = self.first.take() {
                let _ = first.send(Err(ClientError::SubscribeRefused { topic: receipts }));
                batch.resolve(&suback.return_codes);
                return Flow::Stop;
            }
        }
        // A replay only helps once an inbox filter is subscribed: before
        // that the broker would send every unacknowledged share into the void.
        let inbox_prefix = topics::inbox(self.me(), "");
        let status = topics::replay_status(self.me());
        let inbox_granted = batch
            .topics
            .iter()
            .filter(|t| t.starts_with(&inbox_prefix) && **t != status)
            .any(|t| batch.granted(&suback.return_codes, t));
        batch.resolve(&suback.return_codes);
        if inbox_granted {
            self.schedule_replay(REPLAY_DEBOUNCE);
        }
        Flow::Continue
    }

    /// Asks the broker, after `delay`, to deliver again every share not yet
    /// acknowledged. Called after a SUBACK, so the replay reaches the new
    /// subscriptions; subscriptions made in quick succession share one
    /// request (the broker limits how often an agency may ask).
    fn schedule_replay(&mut self, delay: Duration) {
        if self.shared.replay_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            shared.replay_scheduled.store(false, Ordering::Release);
            shared.request_replay().await;
        });
    }

    fn on_publish(&mut self, publish: Publish) {
        let topic = publish.topic.clone();
        match inbound(self.me(), &topic) {
            Inbound::Receipt => self.on_receipt(&publish.payload),
            Inbound::ReplayStatus => self.on_replay_status(&publish.payload),
            Inbound::Checkpoint => debug!(topic = %topic, "audit checkpoint ignored"),
            Inbound::Delivery(logical) => self.on_delivery(logical, &publish.payload),
            Inbound::Unexpected => warn!(topic = %topic, "message on an unexpected topic dropped"),
        }
    }

    fn on_receipt(&mut self, payload: &[u8]) {
        let receipt = Signed::from_json(payload).and_then(|signed| {
            signed.verify::<Receipt>(TAG_RECEIPT, &self.shared.broker_keys, BROKER_KEY_OWNER)
        });
        let receipt = match receipt {
            Ok(r) => r,
            Err(e) => {
                warn!(code = e.code(), "refused a receipt that does not verify");
                return;
            }
        };
        let matched = lock(&self.shared.receipts).complete(self.me(), &receipt);
        match matched {
            Ok(alert_id) => debug!(alert_id = %alert_id, status = ?receipt.status, "receipt"),
            Err(mismatch) => debug!(
                alert_id = receipt.alert_id.as_deref().unwrap_or("-"),
                reason = %mismatch,
                "verified receipt matches no waiting publish"
            ),
        }
    }

    /// A replay this client asked for has ended: ask again if the broker
    /// left shares for another request, or if deliveries were dropped here,
    /// provided this client acknowledged something meanwhile.
    fn on_replay_status(&mut self, payload: &[u8]) {
        let status = Signed::from_json(payload).and_then(|signed| {
            signed.verify::<ReplayStatus>(
                TAG_REPLAY_STATUS,
                &self.shared.broker_keys,
                BROKER_KEY_OWNER,
            )
        });
        let status = match status {
            Ok(s) if s.agency == self.shared.agency => s,
            Ok(_) => {
                warn!("refused a replay status for another agency");
                return;
            }
            Err(e) => {
                warn!(
                    code = e.code(),
                    "refused a replay status that does not verify"
                );
                return;
            }
        };
        let mine = lock(&self.shared.replay_request).as_deref() == Some(status.request_id.as_str());
        if !mine {
            debug!(request_id = %status.request_id, "status of another client's replay");
            return;
        }
        let dropped = self.shared.dropped_since_replay.load(Ordering::Acquire);
        let progress = self.shared.acked_since_replay.load(Ordering::Acquire);
        debug!(
            sent = status.sent,
            remaining = status.remaining,
            dropped,
            progress,
            "replay ended"
        );
        if (status.remaining > 0 || dropped) && progress {
            self.schedule_replay(REPLAY_AGAIN_AFTER);
        }
    }

    fn on_delivery(&mut self, logical: &str, payload: &[u8]) {
        let targets = lock(&self.shared.routes).matching(logical);
        if targets.is_empty() {
            debug!(topic = %logical, "delivery matches no subscription; dropped");
            return;
        }
        let verified = Delivery::from_json(payload).and_then(|d| {
            d.verify(
                self.me(),
                logical,
                &self.shared.broker_keys,
                &self.shared.agency_keys,
            )
        });
        let delivery = match verified {
            Ok(d) => d,
            Err(source) => {
                warn!(topic = %logical, code = source.code(), "refused a delivery that does not verify");
                let error = DeliveryError::Refused {
                    topic: logical.to_string(),
                    source,
                };
                for (_, tx) in targets {
                    if tx.try_send(Err(error.clone())).is_err() {
                        debug!(topic = %logical, "subscription queue full; refusal not reported");
                    }
                }
                return;
            }
        };
        let share_id = delivery.stamp.share_id.clone();
        let mut ack_again = false;
        for (sub, tx) in targets {
            let admission = lock(&self.shared.dedup).admit(sub, &share_id);
            match admission {
                Admission::Admit => {
                    let share = ReceivedShare::new(delivery.clone(), sub, self.shared.clone());
                    // On failure the share is dropped here, which releases it.
                    if tx.try_send(Ok(share)).is_err() {
                        self.shared
                            .dropped_since_replay
                            .store(true, Ordering::Release);
                        warn!(
                            share_id = %share_id,
                            topic = %logical,
                            "subscription queue full or closed; share dropped until the next replay"
                        );
                    }
                }
                Admission::InHand => debug!(share_id = %share_id, "duplicate of a share in hand"),
                Admission::AlreadyAcked => ack_again = true,
            }
        }
        if ack_again {
            debug!(share_id = %share_id, "redelivered share was acknowledged already");
            self.reack.push(share_id);
        }
    }
}

#[cfg(test)]
impl Task {
    /// A task that has connected once already, with these broker addresses
    /// (at least one).
    pub(crate) fn for_test(shared: Arc<Shared>, brokers: Vec<BrokerAddress>) -> Self {
        let brokers = Rotation::new(
            brokers
                .into_iter()
                .map(|b| {
                    let options = MqttOptions::new("test", b.host.clone(), b.port);
                    (b, options)
                })
                .collect(),
        )
        .expect("at least one broker address");
        Self {
            eventloop: EventLoop::new(brokers.value().clone(), 10),
            brokers,
            shared,
            first: None,
            backoff: Backoff::new(),
            first_attempts: 0,
            first_error: None,
            reack: Vec::new(),
        }
    }

    /// The broker address the next connection attempt goes to, as the
    /// event loop has it.
    pub(crate) fn next_broker(&self) -> (String, u16) {
        self.eventloop.mqtt_options.broker_address()
    }

    /// Handles an event as if the event loop had returned it.
    pub(crate) fn event(&mut self, event: Event) {
        let _ = self.on_event(event);
    }

    /// Handles a connection loss as if the event loop had returned it.
    pub(crate) async fn lost(&mut self) {
        let err = ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted);
        let _ = self.on_error(err, true).await;
    }

    /// The requests the task queued for sending.
    pub(crate) fn pending(&mut self) -> &mut std::collections::VecDeque<Request> {
        &mut self.eventloop.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_topics() {
        assert_eq!(
            inbound("polisen", "/tenants/polisen/receipts"),
            Inbound::Receipt
        );
        assert_eq!(
            inbound("polisen", "/tenants/polisen/in/welfare/x"),
            Inbound::Delivery("welfare/x")
        );
        assert_eq!(
            inbound("polisen", "/tenants/polisen/in/_audit/checkpoint"),
            Inbound::Checkpoint
        );
        assert_eq!(
            inbound("polisen", "/tenants/polisenx/in/a"),
            Inbound::Unexpected
        );
        assert_eq!(
            inbound("polisen", "/tenants/polisen/acks"),
            Inbound::Unexpected
        );
        assert_eq!(
            inbound("polisen", "/tenants/polisen/in/_replay/status"),
            Inbound::ReplayStatus
        );
    }

    #[test]
    fn only_transient_first_connect_failures_are_retried() {
        let dropped = ClientError::Connection {
            address: "b:8883".into(),
            reason: "the broker closed the connection".into(),
        };
        let refused = ClientError::ConnectionRefused {
            address: "b:8883".into(),
            reason: "refused".into(),
        };
        let tls = ClientError::Tls {
            address: "b:8883".into(),
            reason: "unknown CA".into(),
        };
        // One address.
        assert!(retry_first_connect(&dropped, true, 1, 1));
        assert!(retry_first_connect(&dropped, false, 2, 1));
        assert!(!retry_first_connect(
            &dropped,
            true,
            FIRST_CONNECT_ATTEMPTS,
            1
        ));
        assert!(!retry_first_connect(&refused, false, 1, 1));
        assert!(!retry_first_connect(&tls, false, 1, 1));
        // Three addresses: every one is tried whatever the others answered,
        // then transient failures for as many rounds as with one.
        assert!(retry_first_connect(&refused, false, 1, 3));
        assert!(retry_first_connect(&tls, false, 2, 3));
        assert!(!retry_first_connect(&tls, false, 3, 3));
        assert!(!retry_first_connect(&refused, false, 3, 3));
        assert!(retry_first_connect(&dropped, true, 8, 3));
        assert!(!retry_first_connect(
            &dropped,
            true,
            3 * FIRST_CONNECT_ATTEMPTS,
            3
        ));
    }

    #[test]
    fn a_refusal_is_reported_rather_than_an_unreachable_node() {
        let refused = || ClientError::ConnectionRefused {
            address: "a:8883".into(),
            reason: "refused".into(),
        };
        let tls = || ClientError::Tls {
            address: "b:8883".into(),
            reason: "unknown CA".into(),
        };
        let err = worth_reporting(Some(tls()), refused());
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");
        let err = worth_reporting(Some(refused()), tls());
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");
        let err = worth_reporting(None, refused());
        assert!(
            matches!(err, ClientError::ConnectionRefused { .. }),
            "{err}"
        );
        let later = ClientError::ConnectionRefused {
            address: "c:8883".into(),
            reason: "refused".into(),
        };
        let err = worth_reporting(Some(refused()), later);
        assert!(err.to_string().contains("c:8883"), "{err}");
    }

    #[test]
    fn backoff_grows_to_a_bound_and_resets() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(187) && first <= Duration::from_millis(313));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_millis(37_500));
        }
        assert_eq!(b.next, Backoff::MAX);
        b.reset();
        assert_eq!(b.next, Backoff::FIRST);
    }

    #[test]
    fn connection_errors_are_classified() {
        let refused =
            ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            classify(&refused, "h:1", Duration::ZERO),
            ClientError::ConnectionRefused { .. }
        ));
        let tls = ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        ));
        let err = classify(&tls, "h:1", Duration::ZERO);
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("BadCertificate"));
        let session = ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert!(matches!(
            classify(&session, "h:1", Duration::ZERO),
            ClientError::SessionRefused { .. }
        ));
        let aborted = ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted);
        assert!(matches!(
            classify(&aborted, "h:1", Duration::ZERO),
            ClientError::Connection { .. }
        ));
    }
}
