//! Limits that keep one agency, or one address, from crowding out the
//! others (governor's GCRA rate limiters).
//!
//! * publish limits per agency, from the policy's `limits.toml`;
//! * connection attempts per source address, before any TLS work is done;
//! * concurrent connections per agency.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::policy::PolicySet;

/// Per-agency publish limits, built from a policy set.
pub struct PublishLimits {
    limiters: HashMap<String, DefaultDirectRateLimiter>,
}

impl PublishLimits {
    /// One limiter per agency of the policy, with that agency's quota.
    pub fn from_policy(policy: &PolicySet) -> Self {
        let limiters = policy
            .agencies()
            .keys()
            .map(|agency| {
                let limit = policy.limit_for(agency);
                let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
                (agency.clone(), RateLimiter::direct(quota))
            })
            .collect();
        Self { limiters }
    }

    /// One limiter per agency of the policy that never refuses: for a bulk
    /// fill of a log, which runs far faster than the clock it simulates.
    pub fn unlimited(policy: &PolicySet) -> Self {
        let limiters = policy
            .agencies()
            .keys()
            .map(|agency| {
                (
                    agency.clone(),
                    RateLimiter::direct(Quota::per_second(NonZeroU32::MAX)),
                )
            })
            .collect();
        Self { limiters }
    }

    /// `Ok` if `agency` may publish one more alert now, otherwise how long to wait.
    /// Agencies unknown to the policy are never allowed.
    pub fn check(&self, agency: &str) -> Result<(), Duration> {
        let Some(limiter) = self.limiters.get(agency) else {
            return Err(Duration::from_secs(60));
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Connection limits of the gateway.
pub struct ConnectionLimits {
    attempts: DefaultKeyedRateLimiter<IpAddr>,
    per_agency: usize,
    open: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// Holds one of an agency's connection slots; released on drop.
pub struct ConnectionSlot {
    count: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimits {
    /// `attempts_per_minute` TCP connections per source address (with the
    /// same burst), `per_agency` concurrent connections per agency.
    pub fn new(attempts_per_minute: NonZeroU32, per_agency: usize) -> Self {
        Self {
            attempts: RateLimiter::keyed(Quota::per_minute(attempts_per_minute)),
            per_agency,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `addr` may open another connection now.
    pub fn attempt(&self, addr: IpAddr) -> bool {
        self.attempts.check_key(&addr).is_ok()
    }

    /// Forgets addresses that have not connected recently (bounded memory).
    pub fn forget_idle(&self) {
        self.attempts.retain_recent();
        self.attempts.shrink_to_fit();
    }

    /// A connection slot for `agency`, if it has fewer than the limit open.
    pub fn slot(&self, agency: &str) -> Option<ConnectionSlot> {
        let count = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.entry(agency.to_string()).or_default().clone()
        };
        let mut current = count.load(Ordering::Acquire);
        loop {
            if current >= self.per_agency {
                return None;
            }
            match count.compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ConnectionSlot { count }),
                Err(now) => current = now,
            }
        }
    }

    /// Connections open per agency.
    pub fn open_connections(&self) -> HashMap<String, usize> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Acquire)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let limits = ConnectionLimits::new(NonZeroU32::new(10).unwrap(), 2);
        let a = limits.slot("polisen").unwrap();
        let _b = limits.slot("polisen").unwrap();
        assert!(limits.slot("polisen").is_none());
        assert!(limits.slot("skatteverket").is_some());
        drop(a);
        assert!(limits.slot("polisen").is_some());
    }

    #[test]
    fn attempts_are_limited_per_address() {
        let limits = ConnectionLimits::new(NonZeroU32::new(3).unwrap(), 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!((0..3).all(|_| limits.attempt(a)));
        assert!(!limits.attempt(a));
        assert!(limits.attempt(b));
    }
}
