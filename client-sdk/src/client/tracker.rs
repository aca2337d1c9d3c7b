//! Pairing SUBSCRIBE requests with their SUBACKs.
//!
//! rumqttc assigns the packet id of a SUBSCRIBE only when the event loop
//! sends it, and reports just that id (`Outgoing::Subscribe(pkid)`). Requests
//! reach the wire in a known order, though: first the event loop's own
//! `pending` queue (where the connection task puts the re-subscription after
//! each CONNACK), then the request channel (where [`Client::subscribe`]
//! puts new subscriptions). So the tracker keeps one FIFO per queue and pairs
//! each `Outgoing::Subscribe(pkid)` with the oldest batch, own queue first.
//!
//! When a connection breaks, rumqttc moves the channel's queued requests into
//! `pending`, and the next CONNACK (clean session) discards all of `pending`.
//! The connection task then reports how many SUBSCRIBEs `pending` holds
//! ([`SubscribeTracker::connection_lost`]): those batches are lost, their
//! waiters become orphans, and the re-subscription after the next CONNACK
//! (which covers every registered filter) answers them.
//!
//! [`Client::subscribe`]: super::Client::subscribe

use std::collections::{HashMap, VecDeque};

use rumqttc::SubscribeReasonCode;
use tokio::sync::oneshot;

use super::error::ClientError;

/// Someone waiting for one topic filter to be subscribed.
pub(crate) struct SubWaiter {
    /// The MQTT topic filter awaited.
    pub(crate) topic: String,
    /// Gets the outcome.
    pub(crate) tx: oneshot::Sender<Result<(), ClientError>>,
}

impl SubWaiter {
    /// A waiter for `topic` and the receiver of its outcome.
    pub(crate) fn new(topic: String) -> (Self, oneshot::Receiver<Result<(), ClientError>>) {
        let (tx, rx) = oneshot::channel();
        (Self { topic, tx }, rx)
    }
}

/// What a SUBSCRIBE was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchKind {
    /// The re-subscription after a CONNACK: receipts first, then every filter.
    Session,
    /// One subscription added by the application.
    Added,
}

/// One SUBSCRIBE packet: its topic filters and who waits for them.
pub(crate) struct SubBatch {
    pub(crate) kind: BatchKind,
    pub(crate) topics: Vec<String>,
    pub(crate) waiters: Vec<SubWaiter>,
}

impl SubBatch {
    /// Whether the broker granted `topic` according to the SUBACK codes.
    pub(crate) fn granted(&self, codes: &[SubscribeReasonCode], topic: &str) -> bool {
        self.topics
            .iter()
            .position(|t| t == topic)
            .and_then(|i| codes.get(i))
            .is_some_and(|c| matches!(c, SubscribeReasonCode::Success(_)))
    }

    /// Answers every waiter from the SUBACK codes. A waiter whose topic is
    /// not in this batch (its subscription was dropped meanwhile) is dropped.
    pub(crate) fn resolve(self, codes: &[SubscribeReasonCode]) {
        let outcomes: Vec<Option<bool>> = self
            .waiters
            .iter()
            .map(|w| {
                self.topics
                    .contains(&w.topic)
                    .then(|| self.granted(codes, &w.topic))
            })
            .collect();
        for (waiter, outcome) in self.waiters.into_iter().zip(outcomes) {
            let Some(granted) = outcome else { continue };
            let result = if granted {
                Ok(())
            } else {
                Err(ClientError::SubscribeRefused {
                    topic: waiter.topic,
                })
            };
            let _ = waiter.tx.send(result);
        }
    }
}

/// The SUBSCRIBE batches between request and SUBACK.
#[derive(Default)]
pub(crate) struct SubscribeTracker {
    own: VecDeque<SubBatch>,
    channel: VecDeque<SubBatch>,
    sent: HashMap<u16, SubBatch>,
    orphans: Vec<SubWaiter>,
}

impl SubscribeTracker {
    /// The connection task put a SUBSCRIBE into the event loop's `pending` queue.
    pub(crate) fn queued_by_task(&mut self, batch: SubBatch) {
        self.own.push_back(batch);
    }

    /// A SUBSCRIBE is about to be put into the request channel. Must happen
    /// under the same lock as the (non-blocking) send, so that the order
    /// here is the order in the channel.
    pub(crate) fn queued_in_channel(&mut self, batch: SubBatch) {
        self.channel.push_back(batch);
    }

    /// Undoes [`Self::queued_in_channel`] when the send failed.
    pub(crate) fn unqueue_channel_back(&mut self) -> Option<SubBatch> {
        self.channel.pop_back()
    }

    /// The event loop sent a SUBSCRIBE with this packet id.
    pub(crate) fn sent(&mut self, pkid: u16) -> bool {
        match self.own.pop_front().or_else(|| self.channel.pop_front()) {
            Some(batch) => {
                self.sent.insert(pkid, batch);
                true
            }
            None => false,
        }
    }

    /// A SUBACK arrived: the batch it answers, if known.
    pub(crate) fn acked(&mut self, pkid: u16) -> Option<SubBatch> {
        self.sent.remove(&pkid)
    }

    /// The connection broke and rumqttc's `pending` queue now holds
    /// `subscribes_in_pending` SUBSCRIBEs, all of which the next CONNACK
    /// discards: the own unsent batches and the oldest channel batches.
    /// Their waiters, and those of batches sent but not acknowledged, become
    /// orphans.
    pub(crate) fn connection_lost(&mut self, subscribes_in_pending: usize) {
        let drained = subscribes_in_pending
            .saturating_sub(self.own.len())
            .min(self.channel.len());
        let lost = self
            .own
            .drain(..)
            .chain(self.channel.drain(..drained))
            .chain(self.sent.drain().map(|(_, b)| b));
        for batch in lost {
            self.orphans.extend(batch.waiters);
        }
    }

    /// Takes the waiters of lost batches, to be answered by the next
    /// re-subscription.
    pub(crate) fn take_orphans(&mut self) -> Vec<SubWaiter> {
        std::mem::take(&mut self.orphans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    fn batch(
        kind: BatchKind,
        topic: &str,
    ) -> (SubBatch, oneshot::Receiver<Result<(), ClientError>>) {
        let (w, rx) = SubWaiter::new(topic.to_string());
        (
            SubBatch {
                kind,
                topics: vec![topic.to_string()],
                waiters: vec![w],
            },
            rx,
        )
    }

    const OK: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);

    #[test]
    fn pairs_own_batches_before_channel_batches() {
        let mut t = SubscribeTracker::default();
        let (c1, mut rx_c1) = batch(BatchKind::Added, "c1");
        t.queued_in_channel(c1);
        let (own, mut rx_own) = batch(BatchKind::Session, "own");
        t.queued_by_task(own);
        assert!(t.sent(7));
        assert!(t.sent(8));
        assert!(!t.sent(9));
        let b = t.acked(7).unwrap();
        assert_eq!(b.kind, BatchKind::Session);
        b.resolve(&[OK]);
        assert!(matches!(rx_own.try_recv(), Ok(Ok(()))));
        let b = t.acked(8).unwrap();
        assert_eq!(b.topics, vec!["c1".to_string()]);
        b.resolve(&[SubscribeReasonCode::Failure]);
        assert!(matches!(
            rx_c1.try_recv(),
            Ok(Err(ClientError::SubscribeRefused { .. }))
        ));
        assert!(t.acked(8).is_none());
    }

    #[test]
    fn lost_batches_become_orphans_and_later_ones_still_pair() {
        let mut t = SubscribeTracker::default();
        let (own, _r0) = batch(BatchKind::Session, "own");
        t.queued_by_task(own);
        let (c1, _r1) = batch(BatchKind::Added, "c1");
        t.queued_in_channel(c1);
        let (c2, _r2) = batch(BatchKind::Added, "c2");
        t.queued_in_channel(c2);
        let (c3, _r3) = batch(BatchKind::Added, "c3");
        t.queued_in_channel(c3);
        // `own` was sent and awaits its SUBACK; then the connection broke
        // with c1 and c2 drained into `pending`; c3 was queued later and is
        // still in the channel.
        assert!(t.sent(1));
        t.connection_lost(2);
        let orphans: Vec<String> = t.take_orphans().into_iter().map(|w| w.topic).collect();
        assert_eq!(orphans.len(), 3);
        for topic in ["own", "c1", "c2"] {
            assert!(orphans.contains(&topic.to_string()), "{topic}");
        }
        assert!(t.acked(1).is_none());
        // After the reconnect the session batch goes first, then c3.
        let (session, _rs) = batch(BatchKind::Session, "session");
        t.queued_by_task(session);
        assert!(t.sent(5));
        assert!(t.sent(6));
        assert_eq!(t.acked(5).unwrap().kind, BatchKind::Session);
        assert_eq!(t.acked(6).unwrap().topics, vec!["c3".to_string()]);
    }

    #[test]
    fn own_unsent_batches_count_against_pending() {
        let mut t = SubscribeTracker::default();
        let (own, _r0) = batch(BatchKind::Session, "own");
        t.queued_by_task(own);
        let (c1, _r1) = batch(BatchKind::Added, "c1");
        t.queued_in_channel(c1);
        // Only the own batch was in `pending`; c1 is still in the channel.
        t.connection_lost(1);
        assert_eq!(t.take_orphans().len(), 1);
        assert!(t.sent(3));
        assert_eq!(t.acked(3).unwrap().topics, vec!["c1".to_string()]);
    }

    #[test]
    fn waiters_of_dropped_subscriptions_are_not_answered() {
        let (w, mut rx) = SubWaiter::new("gone".into());
        let b = SubBatch {
            kind: BatchKind::Session,
            topics: vec!["receipts".into()],
            waiters: vec![w],
        };
        b.resolve(&[OK]);
        assert!(rx.try_recv().is_err());
    }
}
