//! Duplicate suppression of shares by share id.
//!
//! The broker delivers a share again after a reconnect, on a replay request,
//! or when QoS 1 resends it; the application should see each share once
//! while it is being handled. A share id is *in hand* for a subscription
//! from the moment it is queued for it until the application acknowledges
//! or drops it; a share id is *acked* once its acknowledgement was sent.
//! A delivery is handed to a subscription only if the share is neither acked
//! nor in hand there, so a share dropped without acknowledgement is handed
//! out again when the broker redelivers it. The acked ids are bounded (the
//! oldest are forgotten first); a forgotten id that comes back is simply
//! handed out again, which is safe because acknowledging is idempotent.

use std::collections::{HashSet, VecDeque};

/// What to do with a delivered share for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Hand it to the subscription (it is now in hand there).
    Admit,
    /// It was acknowledged already: do not hand it out, acknowledge it again
    /// (the earlier acknowledgement may have been lost with a connection).
    AlreadyAcked,
    /// The subscription holds it already.
    InHand,
}

/// Share ids acknowledged or handed out, per client.
pub(crate) struct ShareDedup {
    capacity: usize,
    acked: HashSet<String>,
    acked_order: VecDeque<String>,
    in_hand: HashSet<(u64, String)>,
}

impl ShareDedup {
    /// How many acknowledged share ids are remembered by default.
    pub(crate) const DEFAULT_CAPACITY: usize = 100_000;

    /// Remembers at most `capacity` acknowledged ids.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            acked: HashSet::new(),
            acked_order: VecDeque::new(),
            in_hand: HashSet::new(),
        }
    }

    /// Decides about `share_id` arriving for subscription `sub`; on
    /// [`Admission::Admit`] the share is in hand for `sub` until [`Self::release`].
    pub(crate) fn admit(&mut self, sub: u64, share_id: &str) -> Admission {
        if self.acked.contains(share_id) {
            return Admission::AlreadyAcked;
        }
        if self.in_hand.insert((sub, share_id.to_string())) {
            Admission::Admit
        } else {
            Admission::InHand
        }
    }

    /// The application let go of the share (acknowledged or dropped it).
    pub(crate) fn release(&mut self, sub: u64, share_id: &str) {
        self.in_hand.remove(&(sub, share_id.to_string()));
    }

    /// The share's acknowledgement was sent: never hand it out again.
    pub(crate) fn mark_acked(&mut self, share_id: &str) {
        if !self.acked.insert(share_id.to_string()) {
            return;
        }
        self.acked_order.push_back(share_id.to_string());
        while self.acked_order.len() > self.capacity {
            if let Some(oldest) = self.acked_order.pop_front() {
                self.acked.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_hand_shares_are_not_handed_out_twice() {
        let mut d = ShareDedup::new(10);
        assert_eq!(d.admit(1, "s1"), Admission::Admit);
        assert_eq!(d.admit(1, "s1"), Admission::InHand);
        // Another subscription gets its own copy.
        assert_eq!(d.admit(2, "s1"), Admission::Admit);
        // Dropped without ack: a redelivery is handed out again.
        d.release(1, "s1");
        assert_eq!(d.admit(1, "s1"), Admission::Admit);
    }

    #[test]
    fn acked_shares_are_never_handed_out_again() {
        let mut d = ShareDedup::new(10);
        assert_eq!(d.admit(1, "s1"), Admission::Admit);
        d.mark_acked("s1");
        d.release(1, "s1");
        assert_eq!(d.admit(1, "s1"), Admission::AlreadyAcked);
        assert_eq!(d.admit(2, "s1"), Admission::AlreadyAcked);
        d.mark_acked("s1");
        assert_eq!(d.acked_order.len(), 1);
    }

    #[test]
    fn acked_ids_are_bounded_oldest_first() {
        let mut d = ShareDedup::new(3);
        for id in ["a", "b", "c", "d"] {
            d.mark_acked(id);
        }
        assert_eq!(d.acked.len(), 3);
        assert_eq!(d.admit(1, "a"), Admission::Admit);
        for id in ["b", "c", "d"] {
            assert_eq!(d.admit(1, id), Admission::AlreadyAcked);
        }
    }
}
