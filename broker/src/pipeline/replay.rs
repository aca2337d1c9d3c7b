//! Pacing of replays.
//!
//! rumqttd keeps only a small ring per topic filter (`mqtt.rs`), and a
//! subscriber that falls further behind than the ring loses messages. A
//! replay written into rumqttd all at once overflowed the recipient's ring,
//! and most of a large backlog was lost on the way. So each agency's replay
//! keeps a *window*: at most [`WINDOW_SHARES`] shares and about
//! [`WINDOW_BYTES`] sent and not yet acknowledged. The recipient's
//! acknowledgements open the window again; a share that stays
//! unacknowledged (its topic has no subscriber, or the recipient does not
//! acknowledge) leaves the window after [`RELEASE_AFTER`], or as soon as a
//! share sent after it is acknowledged (the recipient has read past it).
//!
//! [`Replays`] reads the store and sends; [`Pacer`] is the bookkeeping. Memory is bounded per agency: one replay at a time, each holding
//! at most one window of share ids.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use samverkan_sdk::messages::{self, ReplayRequest, ReplayStatus};
use samverkan_sdk::time::Clock;
use samverkan_sdk::topics;
use tracing::{debug, error, info, warn};

use super::intake::Outbox;
use crate::signer::BrokerSigner;
use crate::store::{QueuePosition, Store};

/// The replays in progress and what they need: the store to read the
/// queue, the outbox to send, the broker's key to sign each replay's status.
pub(super) struct Replays {
    pacer: Pacer,
    /// At most one request per second and agency, burst 3.
    requests: DefaultKeyedRateLimiter<String>,
    store: Store,
    outbox: Outbox,
    signer: Arc<BrokerSigner>,
    clock: Arc<dyn Clock>,
}

impl Replays {
    /// No replays yet; each request sends at most `limit` shares.
    pub(super) fn new(
        limit: u32,
        store: Store,
        outbox: Outbox,
        signer: Arc<BrokerSigner>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let quota = Quota::per_second(NonZeroU32::MIN)
            .allow_burst(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN));
        Self {
            pacer: Pacer::new(limit),
            requests: RateLimiter::keyed(quota),
            store,
            outbox,
            signer,
            clock,
        }
    }

    /// Whether any replay is in progress.
    pub(super) fn active(&self) -> bool {
        self.pacer.active()
    }

    /// `agency` acknowledged `share_ids`: its replay's window opens.
    pub(super) fn acked(&mut self, agency: &str, share_ids: &[String]) {
        self.pacer.acked(agency, share_ids);
    }

    /// Starts replaying `tenant`'s unacknowledged shares (at most one
    /// request per second, burst 3); [`Self::pace`] sends them.
    pub(super) fn start(&mut self, tenant: &str, payload: &[u8]) {
        let request = ReplayRequest::from_json(payload)
            .map(|r| r.request_id)
            .ok()
            .filter(|id| id.len() <= messages::MAX_REQUEST_ID_LEN)
            .unwrap_or_else(|| "-".into());
        if self.requests.check_key(&tenant.to_string()).is_err() {
            warn!(
                agency = tenant,
                request, "replay request refused: too frequent"
            );
            return;
        }
        debug!(agency = tenant, request, "replay started");
        self.pacer.start(tenant, request);
    }

    /// Sends what the replays' windows allow, after releasing the shares
    /// that have waited too long for an acknowledgement. Each call sends at
    /// most one window per agency, so a large replay cannot hold up the
    /// pipeline, and other agencies' traffic goes on between windows.
    pub(super) async fn pace(&mut self) {
        self.pacer.expire(Instant::now());
        for tenant in self.pacer.agencies() {
            self.refill(&tenant).await;
        }
        for (tenant, done) in self.pacer.take_finished() {
            self.finish(&tenant, done).await;
        }
    }

    /// Sends the next shares of `tenant`'s replay that fit in its window,
    /// and marks the replay as sent in full at the end of the queue or at
    /// its limit.
    async fn refill(&mut self, tenant: &str) {
        let Some(room) = self.pacer.room(tenant) else {
            return;
        };
        let page = match self
            .store
            .replay_page(tenant, room.after, room.shares)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let request = self.pacer.abandon(tenant).unwrap_or_default();
                error!(agency = tenant, request, error = %e, "replay stopped: database unavailable");
                return;
            }
        };
        let exhausted = page.len() < room.shares as usize;
        let mut all_sent = true;
        for share in page {
            if !self.pacer.fits(tenant) {
                all_sent = false;
                break;
            }
            let bytes = share.payload.len();
            self.pacer.sent(
                tenant,
                share.share_id,
                share.position,
                bytes,
                Instant::now(),
            );
            self.outbox
                .send(topics::inbox(tenant, &share.topic), share.payload)
                .await;
        }
        self.pacer.end_if_done(tenant, exhausted && all_sent);
    }

    /// Says, signed, that `tenant`'s replay has ended (sent in full, and
    /// every share acknowledged or released) and how many shares it left.
    async fn finish(&mut self, tenant: &str, done: Finished) {
        let remaining = if done.at_limit {
            match self.store.replay_remaining(tenant, done.after).await {
                Ok(n) => n,
                Err(e) => {
                    // Unknown: say that some remain, so the client asks again.
                    warn!(agency = tenant, error = %e, "could not count the shares a replay left");
                    1
                }
            }
        } else {
            0
        };
        info!(
            agency = tenant,
            request = done.request,
            count = done.sent,
            remaining,
            "replayed unacknowledged shares"
        );
        let status = ReplayStatus {
            agency: tenant.to_string(),
            request_id: done.request,
            sent: done.sent,
            remaining,
            signed_at_ms: self.clock.now_ms(),
        };
        let signed = self.signer.sign(messages::TAG_REPLAY_STATUS, &status);
        match serde_json::to_vec(&signed) {
            Ok(payload) => {
                self.outbox
                    .send(topics::replay_status(tenant), payload)
                    .await
            }
            Err(e) => error!(agency = tenant, error = %e, "could not encode a replay status"),
        }
    }
}

/// Most replayed shares of one agency sent and not yet acknowledged.
pub(super) const WINDOW_SHARES: usize = 256;
/// Bytes of replayed shares of one agency sent and not yet acknowledged
/// before the replay waits (a quarter of rumqttd's ring; the last share
/// sent may go over it).
pub(super) const WINDOW_BYTES: usize = 512 * 1024;
/// How long an unacknowledged replayed share holds its place in the window.
pub(super) const RELEASE_AFTER: Duration = Duration::from_secs(3);

/// A share sent and not yet acknowledged.
struct Outstanding {
    share_id: String,
    bytes: usize,
    sent_at: Instant,
}

/// One agency's replay in progress.
struct Session {
    /// The request it answers, for logs and the status.
    request: String,
    /// The last share sent.
    after: QueuePosition,
    /// Shares sent so far.
    sent: u64,
    /// Sent and not acknowledged, by send order.
    outstanding: BTreeMap<u64, Outstanding>,
    /// Send order of each outstanding share.
    order: HashMap<String, u64>,
    /// Bytes of the outstanding shares.
    bytes: usize,
    next_seq: u64,
    /// Everything is sent (`Some(at_limit)`); the replay ends once the
    /// window is empty, so that its status follows the recipient's
    /// acknowledgements and a new request does not send those shares again.
    ended: Option<bool>,
}

impl Session {
    /// Takes every outstanding share up to and including `seq` out of the window.
    fn release_through(&mut self, seq: u64) {
        let kept = self.outstanding.split_off(&(seq + 1));
        for (_, o) in std::mem::replace(&mut self.outstanding, kept) {
            self.order.remove(&o.share_id);
            self.bytes = self.bytes.saturating_sub(o.bytes);
        }
    }
}

/// What the pipeline should fetch next for an agency's replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Room {
    /// Fetch shares after this position.
    pub(super) after: QueuePosition,
    /// At most this many.
    pub(super) shares: u32,
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Finished {
    /// The request it answered.
    pub(super) request: String,
    /// Shares it sent.
    pub(super) sent: u64,
    /// Where it stopped (to count what is left).
    pub(super) after: QueuePosition,
    /// Whether it stopped at the per-request limit rather than at the end
    /// of the queue.
    pub(super) at_limit: bool,
}

/// The replays in progress, one per agency at most.
pub(super) struct Pacer {
    sessions: HashMap<String, Session>,
    /// Most shares one request sends.
    limit: u64,
}

impl Pacer {
    /// No replays yet; each request sends at most `limit` shares.
    pub(super) fn new(limit: u32) -> Self {
        Self {
            sessions: HashMap::new(),
            limit: u64::from(limit),
        }
    }

    /// Whether any replay is in progress.
    pub(super) fn active(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// The agencies with a replay in progress.
    pub(super) fn agencies(&self) -> Vec<String> {
        self.sessions.keys().cloned().collect()
    }

    /// Starts a replay for `agency` from its oldest pending share. A replay
    /// already running for it is replaced: the new request may come from a
    /// client that missed what the old one sent.
    pub(super) fn start(&mut self, agency: &str, request: String) {
        self.sessions.insert(
            agency.to_string(),
            Session {
                request,
                after: QueuePosition::START,
                sent: 0,
                outstanding: BTreeMap::new(),
                order: HashMap::new(),
                bytes: 0,
                next_seq: 0,
                ended: None,
            },
        );
    }

    /// `agency` acknowledged `share_ids`: each, and every share sent before
    /// it, leaves the window.
    pub(super) fn acked(&mut self, agency: &str, share_ids: &[String]) {
        let Some(session) = self.sessions.get_mut(agency) else {
            return;
        };
        let latest = share_ids
            .iter()
            .filter_map(|id| session.order.get(id).copied())
            .max();
        if let Some(seq) = latest {
            session.release_through(seq);
        }
    }

    /// Shares sent before `now - RELEASE_AFTER` and still unacknowledged
    /// leave the window.
    pub(super) fn expire(&mut self, now: Instant) {
        for session in self.sessions.values_mut() {
            let expired = session
                .outstanding
                .iter()
                .take_while(|(_, o)| now.saturating_duration_since(o.sent_at) >= RELEASE_AFTER)
                .map(|(seq, _)| *seq)
                .last();
            if let Some(seq) = expired {
                session.release_through(seq);
            }
        }
    }

    /// What may be sent now for `agency`'s replay; `None` if the window is
    /// full or there is no replay.
    pub(super) fn room(&self, agency: &str) -> Option<Room> {
        let session = self.sessions.get(agency)?;
        if session.ended.is_some() {
            return None;
        }
        let free = WINDOW_SHARES.saturating_sub(session.outstanding.len());
        let allowed = self.limit.saturating_sub(session.sent);
        let shares = u64::try_from(free).unwrap_or(0).min(allowed);
        if shares == 0 || session.bytes >= WINDOW_BYTES {
            return None;
        }
        Some(Room {
            after: session.after,
            shares: u32::try_from(shares).unwrap_or(u32::MAX),
        })
    }

    /// Whether one more share may be sent now for `agency`.
    pub(super) fn fits(&self, agency: &str) -> bool {
        self.sessions.get(agency).is_some_and(|s| {
            s.outstanding.len() < WINDOW_SHARES && s.bytes < WINDOW_BYTES && s.sent < self.limit
        })
    }

    /// Records that `share_id` (at `position`, `bytes` long) was sent.
    pub(super) fn sent(
        &mut self,
        agency: &str,
        share_id: String,
        position: QueuePosition,
        bytes: usize,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(agency) else {
            return;
        };
        let seq = session.next_seq;
        session.next_seq += 1;
        session.order.insert(share_id.clone(), seq);
        session.outstanding.insert(
            seq,
            Outstanding {
                share_id,
                bytes,
                sent_at: now,
            },
        );
        session.bytes += bytes;
        session.sent += 1;
        session.after = position;
    }

    /// Marks `agency`'s replay as sent in full if it reached the end of the
    /// queue (`exhausted`) or its limit.
    pub(super) fn end_if_done(&mut self, agency: &str, exhausted: bool) {
        let limit = self.limit;
        if let Some(session) = self.sessions.get_mut(agency)
            && session.ended.is_none()
            && (exhausted || session.sent >= limit)
        {
            session.ended = Some(!exhausted);
        }
    }

    /// Removes and returns the replays sent in full whose window is empty.
    pub(super) fn take_finished(&mut self) -> Vec<(String, Finished)> {
        let done: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ended.is_some() && s.outstanding.is_empty())
            .map(|(agency, _)| agency.clone())
            .collect();
        done.into_iter()
            .filter_map(|agency| {
                let session = self.sessions.remove(&agency)?;
                let finished = Finished {
                    request: session.request,
                    sent: session.sent,
                    after: session.after,
                    at_limit: session.ended.unwrap_or(false),
                };
                Some((agency, finished))
            })
            .collect()
    }

    /// Drops `agency`'s replay (the store failed).
    pub(super) fn abandon(&mut self, agency: &str) -> Option<String> {
        self.sessions.remove(agency).map(|s| s.request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(i: i64) -> QueuePosition {
        QueuePosition {
            created_at_ms: 1000,
            audit_idx: i,
        }
    }

    /// Sends shares `from..to` of 1 KB each.
    fn send(p: &mut Pacer, from: i64, to: i64, now: Instant) {
        for i in from..to {
            p.sent("a", format!("s{i}"), position(i), 1024, now);
        }
    }

    #[test]
    fn the_window_fills_and_acknowledgements_open_it() {
        let now = Instant::now();
        let mut p = Pacer::new(10_000);
        assert_eq!(p.room("a"), None);
        p.start("a", "r1".into());
        let room = p.room("a").unwrap();
        assert_eq!(room.after, QueuePosition::START);
        assert_eq!(room.shares as usize, WINDOW_SHARES);
        send(&mut p, 0, WINDOW_SHARES as i64, now);
        assert!(!p.fits("a"));
        assert_eq!(p.room("a"), None);
        // Another agency's acknowledgement changes nothing.
        p.acked("b", &["s0".into()]);
        assert_eq!(p.room("a"), None);
        p.acked("a", &["s0".into(), "s1".into()]);
        let room = p.room("a").unwrap();
        assert_eq!(room.shares, 2);
        assert_eq!(room.after, position(WINDOW_SHARES as i64 - 1));
    }

    #[test]
    fn an_acknowledgement_releases_the_shares_sent_before_it() {
        let now = Instant::now();
        let mut p = Pacer::new(10_000);
        p.start("a", "r1".into());
        send(&mut p, 0, 10, now);
        // s0..s4 were read past (no subscriber, or lost): they go too.
        p.acked("a", &["s5".into()]);
        assert_eq!(p.room("a").unwrap().shares as usize, WINDOW_SHARES - 4);
        // Unknown or already released ids change nothing.
        p.acked("a", &["s2".into(), "zz".into()]);
        assert_eq!(p.room("a").unwrap().shares as usize, WINDOW_SHARES - 4);
    }

    #[test]
    fn bytes_bound_the_window_too() {
        let now = Instant::now();
        let mut p = Pacer::new(10_000);
        p.start("a", "r1".into());
        p.sent("a", "big".into(), position(0), WINDOW_BYTES, now);
        assert!(!p.fits("a"));
        assert_eq!(p.room("a"), None);
        p.acked("a", &["big".into()]);
        assert!(p.fits("a"));
    }

    #[test]
    fn unacknowledged_shares_leave_the_window_after_a_while() {
        let now = Instant::now();
        let mut p = Pacer::new(10_000);
        p.start("a", "r1".into());
        send(&mut p, 0, 100, now);
        send(
            &mut p,
            100,
            WINDOW_SHARES as i64,
            now + Duration::from_secs(1),
        );
        p.expire(now + RELEASE_AFTER);
        assert_eq!(p.room("a").unwrap().shares, 100);
        p.expire(now + RELEASE_AFTER + Duration::from_secs(1));
        assert_eq!(p.room("a").unwrap().shares as usize, WINDOW_SHARES);
    }

    #[test]
    fn a_replay_ends_at_the_end_of_the_queue_or_at_its_limit_once_its_window_is_empty() {
        let now = Instant::now();
        let mut p = Pacer::new(300);
        p.start("a", "r1".into());
        send(&mut p, 0, 200, now);
        p.end_if_done("a", false);
        p.acked("a", &["s199".into()]);
        assert!(p.take_finished().is_empty());
        assert_eq!(p.room("a").unwrap().shares, 100, "the limit caps the room");
        send(&mut p, 200, 300, now);
        p.end_if_done("a", false);
        assert_eq!(p.room("a"), None);
        // Sent in full, but not yet acknowledged: not over yet.
        assert!(p.take_finished().is_empty());
        p.acked("a", &["s298".into()]);
        assert!(p.take_finished().is_empty());
        p.expire(now + RELEASE_AFTER);
        let done = p.take_finished();
        assert_eq!(done.len(), 1);
        let (agency, done) = &done[0];
        assert_eq!(agency, "a");
        assert_eq!(done.sent, 300);
        assert!(done.at_limit);
        assert_eq!(done.after, position(299));
        assert!(!p.active());

        p.start("a", "r2".into());
        send(&mut p, 0, 5, now);
        p.end_if_done("a", true);
        p.acked("a", &["s4".into()]);
        let (_, done) = p.take_finished().pop().unwrap();
        assert_eq!(
            (done.request.as_str(), done.sent, done.at_limit),
            ("r2", 5, false)
        );
    }

    #[test]
    fn a_new_request_starts_over() {
        let now = Instant::now();
        let mut p = Pacer::new(10_000);
        p.start("a", "r1".into());
        send(&mut p, 0, WINDOW_SHARES as i64, now);
        p.start("a", "r2".into());
        let room = p.room("a").unwrap();
        assert_eq!(room.after, QueuePosition::START);
        assert_eq!(room.shares as usize, WINDOW_SHARES);
        assert_eq!(p.agencies(), vec!["a".to_string()]);
        assert_eq!(p.abandon("a").as_deref(), Some("r2"));
        assert!(!p.active());
    }
}
