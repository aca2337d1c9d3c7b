//! The pipeline's link into rumqttd, both ways: the intake reads what
//! agencies publish to the broker's topics and hands it over in batches;
//! the [`Outbox`] hands the pipeline's answers back to rumqttd.

use bytes::Bytes;
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use samverkan_sdk::topics::BrokerTopic;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::witness::WitnessAnswer;

/// A message taken from rumqttd.
pub enum Inbound {
    /// An alert from a publisher's outbox.
    Alert {
        /// The publishing agency.
        tenant: String,
        /// The logical topic.
        logical: String,
        /// The bytes as published.
        payload: Bytes,
    },
    /// An acknowledgement.
    Ack {
        /// The acknowledging agency.
        tenant: String,
        /// The bytes as published.
        payload: Bytes,
    },
    /// A replay request.
    Replay {
        /// The asking agency.
        tenant: String,
        /// The bytes as published.
        payload: Bytes,
    },
}

/// Hands messages to rumqttd from a thread of its own: rumqttd's `LinkTx`
/// blocks while rumqttd's router is busy, which must not stall the async
/// runtime. Order is kept; a full queue makes the pipeline wait (back-pressure).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl Outbox {
    /// Starts the thread that writes into `link`.
    pub fn spawn(mut link: rumqttd::local::LinkTx) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(4096);
        let spawned = std::thread::Builder::new()
            .name("samverkan-outbox".into())
            .spawn(move || {
                while let Some((topic, payload)) = rx.blocking_recv() {
                    if let Err(e) = link.publish(topic.clone(), payload) {
                        error!(topic, error = %e, "could not hand a message to the embedded broker");
                    }
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "could not start the outbox thread; nothing will be delivered");
        }
        Self { tx }
    }

    /// Queues `payload` for `topic`.
    pub async fn send(&self, topic: String, payload: Vec<u8>) {
        if self.tx.send((topic, payload)).await.is_err() {
            error!("the outbox thread has stopped; a message was not delivered");
        }
    }

    /// The queue itself, for the witness coordinator.
    pub fn sender(&self) -> mpsc::Sender<(String, Vec<u8>)> {
        self.tx.clone()
    }
}

/// Witness answers queued for the coordinator; more are dropped (the
/// coordinator asks again).
pub const WITNESS_ANSWERS: usize = 1024;

/// Batches the intake may read ahead of the pipeline. rumqttd keeps only a
/// small ring per topic filter (see `mqtt.rs`), and a reader that falls
/// further behind than the ring loses messages; reading ahead into this
/// queue means a burst waits in memory only while there is a backlog.
pub const INTAKE_BATCHES: usize = 4;

/// Sorts one notification from rumqttd into `batch`; witness answers go to
/// the witness coordinator.
fn classify(
    rx: &LinkRx,
    notification: Notification,
    batch: &mut Vec<Inbound>,
    answers: &mpsc::Sender<WitnessAnswer>,
) {
    match notification {
        Notification::Forward(forward) => {
            let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else {
                warn!("dropped a message whose topic is not UTF-8");
                return;
            };
            let payload = forward.publish.payload;
            match BrokerTopic::parse(topic) {
                Some(BrokerTopic::Outbox { agency, logical }) => batch.push(Inbound::Alert {
                    tenant: agency.to_string(),
                    logical: logical.to_string(),
                    payload,
                }),
                Some(BrokerTopic::Acks { agency }) => batch.push(Inbound::Ack {
                    tenant: agency.to_string(),
                    payload,
                }),
                Some(BrokerTopic::Replay { agency }) => batch.push(Inbound::Replay {
                    tenant: agency.to_string(),
                    payload,
                }),
                Some(BrokerTopic::WitnessAnswer { agency, id, status }) => {
                    let answer = WitnessAnswer {
                        agency: agency.to_string(),
                        id: id.to_string(),
                        status,
                        body: payload,
                    };
                    if answers.try_send(answer).is_err() {
                        warn!(agency, "a witness answer was dropped (queue full)");
                    }
                }
                None => debug!(topic, "ignored a message outside the pipeline's topics"),
            }
        }
        Notification::Unschedule => {
            // rumqttd pauses a link with many buffered notifications until
            // it says it is ready again.
            if let Err(e) = rx.ready() {
                error!(error = %e, "could not resume the pipeline's link");
            }
        }
        _ => {}
    }
}

/// Reads rumqttd's link without pause into a queue of `capacity` messages,
/// so that the pipeline's own pace (deciding, committing) never leaves
/// messages in rumqttd's ring. When the queue is full the reader waits,
/// and rumqttd's ring is the last buffer.
pub fn spawn(
    mut rx: LinkRx,
    capacity: usize,
    answers: mpsc::Sender<WitnessAnswer>,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<Inbound>) {
    let (tx, queue) = mpsc::channel(capacity.max(1));
    let task = tokio::spawn(async move {
        let mut taken = Vec::new();
        loop {
            match rx.next().await {
                Ok(Some(n)) => classify(&rx, n, &mut taken, &answers),
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "the pipeline's link failed");
                    return;
                }
            }
            for message in taken.drain(..) {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        }
    });
    (task, queue)
}

/// Waits for at least one message, then takes whatever else has already
/// arrived, up to `max`: under load, batches grow and commits get fewer.
/// `None` once the intake has ended.
pub async fn next_batch(queue: &mut mpsc::Receiver<Inbound>, max: usize) -> Option<Vec<Inbound>> {
    let mut batch = Vec::with_capacity(max.min(64));
    if queue.recv_many(&mut batch, max).await == 0 {
        return None;
    }
    Some(batch)
}
