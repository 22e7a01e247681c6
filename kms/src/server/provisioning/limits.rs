//! Overload behaviour: answer at once rather than queue without bound.
//! Each principal has a token bucket (a runaway or compromised provisioner
//! cannot starve the others: 429), and the node has a bound on requests in
//! flight (past it, 503 at once, so latency stays bounded and a load
//! balancer can move the caller to another node).

use crate::config::ProvisioningLimits;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub(crate) struct Limits {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    in_flight: Arc<Semaphore>,
    pub(crate) window_seconds: i64,
}

impl Limits {
    pub(crate) fn new(l: &ProvisioningLimits) -> Self {
        Limits {
            rate: f64::from(l.rate_per_principal),
            burst: f64::from(l.burst_per_principal),
            buckets: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(l.max_in_flight as usize)),
            window_seconds: i64::from(l.replay_window_seconds),
        }
    }

    /// Take one request from the principal's bucket; false when empty.
    pub(crate) fn allow(&self, principal: &str) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // Principals come from the policy file, so the map is bounded by it.
        let bucket = b.entry(principal.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A slot for one request in flight, or None at capacity.
    pub(crate) fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, in_flight: u32) -> Limits {
        Limits::new(&ProvisioningLimits {
            rate_per_principal: rate,
            burst_per_principal: burst,
            max_in_flight: in_flight,
            replay_window_seconds: 300,
        })
    }

    #[test]
    fn a_principal_gets_its_burst_then_is_limited_and_others_are_not() {
        let l = limits(1, 3, 10);
        assert!(l.allow("a") && l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
    }

    #[test]
    fn past_the_in_flight_bound_requests_are_refused_at_once() {
        let l = limits(1, 1, 2);
        let a = l.slot();
        let b = l.slot();
        assert!(a.is_some() && b.is_some());
        assert!(l.slot().is_none());
        drop(a);
        assert!(l.slot().is_some());
    }
}
