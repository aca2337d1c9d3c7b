//! The node's side of delivery across nodes: claims the shares other nodes
//! handed off for agencies connected here and publishes them
//! (`store/handoffs.rs` has the queue). Woken by `LISTEN` on the handoff
//! channel (the payload names the recipient) and, because notifications
//! are lost while the listening connection is re-established (after a
//! failover, say), by a poll every [`POLL_EVERY`] as well.

use std::sync::Arc;
use std::time::Duration;

use samverkan_sdk::time::Clock;
use samverkan_sdk::topics;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::intake::Outbox;
use crate::cluster::Cluster;
use crate::inspect::Receivers;
use crate::store::{HANDOFF_CHANNEL, Store};

/// How often waiting handoffs are looked for without a notification.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Most shares claimed at once.
const CLAIM_AT_ONCE: u32 = 256;
/// Most claims in a row for one wake-up, so a long queue cannot hold the task.
const CLAIMS_PER_WAKE: usize = 16;

/// Claims and publishes handed-off shares for the agencies connected here.
pub struct HandoffWorker {
    pub(super) store: Store,
    pub(super) outbox: Outbox,
    pub(super) receivers: Arc<Receivers>,
    pub(super) cluster: Arc<Cluster>,
    pub(super) clock: Arc<dyn Clock>,
}

impl HandoffWorker {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut listener: Option<PgListener> = None;
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = poll.tick() => {
                    self.claim(&self.connected()).await;
                    match self.store.handoff_depths().await {
                        Ok(depths) => self.cluster.set_depths(depths),
                        Err(e) => debug!(error = %e, "handoff queue depth not read"),
                    }
                }
                woken = notification(&mut listener) => match woken {
                    Some(recipient) => {
                        if self.connected().contains(&recipient) {
                            self.claim(&[recipient]).await;
                        }
                    }
                    None => listener = None,
                },
            }
        }
    }

    /// A listener on the database written to, or none for now (the poll
    /// goes on; the next turn of the loop tries again).
    async fn listen(&self) -> Option<PgListener> {
        let attempt = async {
            let mut listener = PgListener::connect(&self.store.target_url()).await?;
            listener.listen(HANDOFF_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(e)) => {
                debug!(error = %e, "not listening for handoffs yet; polling");
                None
            }
            Err(_) => None,
        }
    }

    /// The agencies that receive shares on this node.
    fn connected(&self) -> Vec<String> {
        self.receivers.agencies()
    }

    /// Claims and publishes what waits for `recipients`.
    async fn claim(&self, recipients: &[String]) {
        if recipients.is_empty() {
            return;
        }
        for _ in 0..CLAIMS_PER_WAKE {
            let mut claim = match self.store.claim_handoffs(recipients, CLAIM_AT_ONCE).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "handed-off shares not claimed (they wait for the next try)");
                    return;
                }
            };
            let full = claim.rows() >= CLAIM_AT_ONCE as usize;
            let now = self.clock.now_ms();
            // Published before the rows go: a failure in between leaves
            // them to be claimed again (at least once; the SDK drops a copy).
            for h in std::mem::take(&mut claim.handoffs) {
                self.cluster
                    .claimed(u64::try_from(now - h.created_at_ms).unwrap_or(0));
                self.outbox
                    .send(topics::inbox(&h.recipient, &h.topic), h.payload)
                    .await;
            }
            if let Err(e) = self.store.finish_claim(claim).await {
                warn!(error = %e, "claimed shares were sent but their rows are kept (they may be sent twice; the SDK drops the copy)");
                return;
            }
            if !full {
                return;
            }
        }
    }
}

/// The recipient named by the next notification; `None` when the listener
/// failed (it is then made again). Never ready without a listener.
async fn notification(listener: &mut Option<PgListener>) -> Option<String> {
    match listener {
        Some(l) => match l.try_recv().await {
            Ok(Some(n)) => Some(n.payload().to_string()),
            _ => None,
        },
        None => std::future::pending().await,
    }
}
