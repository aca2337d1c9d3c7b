//! Subscriptions and the shares they hand to the application.
//!
//! A [`Subscription`] is a logical topic filter and a queue. The connection
//! task verifies each delivery once and queues it for every subscription
//! whose filter matches its logical topic, as a [`ReceivedShare`] (verified
//! data) or a [`DeliveryError`] (refused data, reported, never usable). The
//! application acknowledges a share with [`ReceivedShare::ack`]; a share
//! dropped without acknowledgement is handed out again when the broker
//! redelivers it (see [`super::dedup`]).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::connection::{Shared, lock};
use super::error::{ClientError, DeliveryError};
use crate::envelope::VerifiedAlert;
use crate::messages::{ShareStamp, VerifiedDelivery};
use crate::names;
use crate::topics;

/// What a subscription yields: a verified share, or a refused delivery.
pub type SubscriptionItem = Result<ReceivedShare, DeliveryError>;

/// How many items a subscription queues before further deliveries for it
/// are dropped (unacknowledged, so the broker's next replay brings them back).
pub(crate) const QUEUE_CAPACITY: usize = 1024;

struct Route {
    id: u64,
    filter: String,
    tx: mpsc::Sender<SubscriptionItem>,
}

/// The live subscriptions, for routing deliveries and re-subscribing.
#[derive(Default)]
pub(crate) struct Routes {
    next_id: u64,
    routes: Vec<Route>,
}

impl Routes {
    /// Registers a subscription to the logical `filter`; returns its id.
    pub(crate) fn add(&mut self, filter: &str, tx: mpsc::Sender<SubscriptionItem>) -> u64 {
        self.next_id += 1;
        self.routes.push(Route {
            id: self.next_id,
            filter: filter.to_string(),
            tx,
        });
        self.next_id
    }

    /// Removes a subscription; returns its filter if no other subscription
    /// uses the same filter (so the MQTT subscription can be dropped).
    pub(crate) fn remove(&mut self, id: u64) -> Option<String> {
        let index = self.routes.iter().position(|r| r.id == id)?;
        let route = self.routes.remove(index);
        (!self.routes.iter().any(|r| r.filter == route.filter)).then_some(route.filter)
    }

    /// The subscriptions whose filter matches the logical `topic`.
    pub(crate) fn matching(&self, topic: &str) -> Vec<(u64, mpsc::Sender<SubscriptionItem>)> {
        self.routes
            .iter()
            .filter(|r| names::topic_matches(&r.filter, topic))
            .map(|r| (r.id, r.tx.clone()))
            .collect()
    }

    /// The distinct logical filters subscribed.
    pub(crate) fn filters(&self) -> BTreeSet<String> {
        self.routes.iter().map(|r| r.filter.clone()).collect()
    }

    /// Drops every queue sender, so that every [`Subscription::next`] ends.
    pub(crate) fn clear(&mut self) {
        self.routes.clear();
    }
}

/// A stream of the shares delivered to this agency on a logical topic filter.
///
/// Dropping it ends the MQTT subscription (unless another subscription uses
/// the same filter); shares still queued are dropped unacknowledged.
pub struct Subscription {
    id: u64,
    filter: String,
    rx: mpsc::Receiver<SubscriptionItem>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        id: u64,
        filter: String,
        rx: mpsc::Receiver<SubscriptionItem>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            id,
            filter,
            rx,
            shared,
        }
    }

    /// The next verified share or refused delivery; `None` once the client
    /// is closed or dropped. Refused deliveries are errors so that forged or
    /// corrupted traffic is noticed, but the subscription goes on after them.
    pub async fn next(&mut self) -> Option<SubscriptionItem> {
        self.rx.recv().await
    }

    /// The logical topic filter.
    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let unused = lock(&self.shared.routes).remove(self.id);
        if let Some(filter) = unused {
            // Best effort: if the request queue is full the broker keeps
            // sending, and deliveries that match no subscription are dropped.
            let topic = topics::inbox(&self.shared.agency, &filter);
            if self.shared.mqtt.try_unsubscribe(topic).is_err() {
                tracing::debug!(filter = %filter, "could not queue the unsubscribe");
            }
        }
    }
}

/// A share delivered to this agency whose broker stamp and publisher
/// signature have been verified. Acknowledge it with [`Self::ack`] once it
/// has been handled; until then the broker redelivers it after reconnects.
///
/// Holding one means the client has checked (see
/// [`Delivery::verify`](crate::messages::Delivery::verify)):
///
/// * the broker's [stamp](Self::stamp) is signed by a key of owner `broker`
///   in the configured broker keys, valid (not expired, not revoked) when the
///   broker signed it;
/// * the stamp names this agency as the recipient, the logical topic the
///   share arrived on, and exactly this alert: its id, publisher, type and
///   envelope hash; the share id belongs to that envelope and this agency;
/// * the publisher's ed25519 signature over the header and every field
///   digest verifies with the publisher's key in the configured agency keys,
///   valid at the alert's `issued_at`;
/// * every disclosed field matches a signed digest, and exactly the fields
///   the stamp lists were disclosed.
///
/// So the fields are the publisher's, unaltered, and the broker states under
/// which rule, legal basis, purpose and policy version it shared them, and
/// where in the audit log that is recorded (`audit_index`). Not checked here:
/// how old the alert is (the broker checked `issued_at` against its clock
/// when it accepted the alert); compare the header's
/// [`issued_at_ms`](crate::envelope::EnvelopeHeader::issued_at_ms) with your
/// own limits if that matters. Field values may be personal data: its `Debug` form prints
/// identifiers and field names only.
pub struct ReceivedShare {
    delivery: VerifiedDelivery,
    sub: u64,
    acked: AtomicBool,
    shared: Arc<Shared>,
}

impl fmt::Debug for ReceivedShare {
    // Field values may be personal data: print identifiers only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedShare")
            .field("share_id", &self.delivery.stamp.share_id)
            .field("alert_id", &self.delivery.stamp.alert_id)
            .field("topic", &self.delivery.stamp.topic)
            .field("fields", &self.delivery.stamp.fields)
            .finish_non_exhaustive()
    }
}

impl ReceivedShare {
    pub(crate) fn new(delivery: VerifiedDelivery, sub: u64, shared: Arc<Shared>) -> Self {
        Self {
            delivery,
            sub,
            acked: AtomicBool::new(false),
            shared,
        }
    }

    /// The share id (stable across redeliveries; the key of acknowledgements).
    pub fn share_id(&self) -> &str {
        &self.delivery.stamp.share_id
    }

    /// The broker's verified statement of what it shared with this agency,
    /// under which rule, legal basis and purpose.
    pub fn stamp(&self) -> &ShareStamp {
        &self.delivery.stamp
    }

    /// The publisher's verified alert, with only the fields disclosed to this agency.
    pub fn alert(&self) -> &VerifiedAlert {
        &self.delivery.alert
    }

    /// The disclosed fields as a JSON object: exactly the fields the stamp
    /// lists, each verified against the publisher's signed digest. Fields
    /// the policy withheld from this agency are absent.
    pub fn fields(&self) -> Map<String, Value> {
        self.delivery.alert.fields()
    }

    /// The logical topic.
    pub fn topic(&self) -> &str {
        &self.delivery.stamp.topic
    }

    /// Whether [`Self::ack`] has succeeded.
    pub fn is_acked(&self) -> bool {
        self.acked.load(Ordering::Acquire)
    }

    /// Acknowledges the share: publishes an acknowledgement signed with the
    /// agency's key (proof of receipt for the audit log) and never hands this
    /// share id to the application again. Calling it again sends it again.
    ///
    /// Success means the acknowledgement was queued for sending; if the
    /// connection breaks before the broker gets it, the broker redelivers the
    /// share, and the client acknowledges it again without handing it out.
    pub async fn ack(&self) -> Result<(), ClientError> {
        let share_id = self.share_id().to_string();
        self.shared.send_ack(vec![share_id.clone()]).await?;
        lock(&self.shared.dedup).mark_acked(&share_id);
        self.shared
            .acked_since_replay
            .store(true, Ordering::Release);
        self.acked.store(true, Ordering::Release);
        tracing::debug!(share_id = %share_id, "share acknowledged");
        Ok(())
    }
}

impl Drop for ReceivedShare {
    fn drop(&mut self) {
        lock(&self.shared.dedup).release(self.sub, &self.delivery.stamp.share_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_filters_and_report_unused_ones() {
        let mut routes = Routes::default();
        let (tx, _rx) = mpsc::channel(1);
        let a = routes.add("welfare/#", tx.clone());
        let b = routes.add("welfare/#", tx.clone());
        let c = routes.add("akrim/+/inspection", tx);
        let ids = |t: &str| {
            routes
                .matching(t)
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("welfare/incorrect-payment/ost"), vec![a, b]);
        assert_eq!(ids("akrim/ost/inspection"), vec![c]);
        assert!(ids("akrim/ost").is_empty());
        assert_eq!(routes.filters().len(), 2);
        assert_eq!(routes.remove(a), None);
        assert_eq!(routes.remove(b), Some("welfare/#".to_string()));
        assert_eq!(routes.remove(b), None);
        assert_eq!(
            routes.filters().into_iter().collect::<Vec<_>>(),
            vec!["akrim/+/inspection"]
        );
    }
}
