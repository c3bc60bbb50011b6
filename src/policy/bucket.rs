//! The token bucket behind `rate_limiting` and `bytes_limiting`.

use std::sync::Mutex;
use std::time::Instant;

use super::{Decision, Policy, TraceSummary};

/// A policy that keeps a trace when a token bucket holds what the trace costs, and
/// takes it: `rate_limiting` (a span per token) and `bytes_limiting` (a byte per token)
/// are this with their cost. Every policy votes on every trace, so it spends its
/// budget on traces other policies keep too (as in OTel).
#[derive(Debug)]
pub struct Limiting {
    bucket: TokenBucket,
    cost: fn(&TraceSummary) -> u64,
}

impl Limiting {
    /// A bucket refilling `per_second` tokens, holding `burst` (0: one second's worth),
    /// charging `cost` per trace.
    pub(super) fn new(per_second: u64, burst: u64, cost: fn(&TraceSummary) -> u64) -> Self {
        Limiting {
            bucket: TokenBucket::new(per_second, burst),
            cost,
        }
    }

    pub(super) fn evaluate_at(&self, t: &TraceSummary, now: Instant) -> Decision {
        Decision::sampled_if(self.bucket.take_at((self.cost)(t), now))
    }
}

impl Policy for Limiting {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        self.evaluate_at(t, Instant::now())
    }

    /// Depends on the traffic: unknown.
    fn probability(&self, _t: &TraceSummary) -> Option<f64> {
        None
    }

    /// Chance or traffic decides: never revises a drop.
    fn settled(&self) -> bool {
        false
    }
}

/// Tokens refilled at a fixed rate up to a capacity; shared by every shard worker
/// (a lock held for a few arithmetic operations per trace).
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// Full, refilling `per_second`, holding at most `burst` (0: one second's worth).
    pub(super) fn new(per_second: u64, burst: u64) -> Self {
        let capacity = if burst == 0 { per_second } else { burst } as f64;
        TokenBucket {
            rate: per_second as f64,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes `cost` tokens if there are that many at `now`; whether it did.
    pub(super) fn take_at(&self, cost: u64, now: Instant) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = &mut *s;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.capacity);
        *last = (*last).max(now);
        if *tokens >= cost as f64 {
            *tokens -= cost as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn spends_the_burst_then_refills_at_the_rate() {
        let b = TokenBucket::new(100, 0);
        let t0 = Instant::now();
        assert!(b.take_at(60, t0));
        assert!(b.take_at(40, t0));
        assert!(!b.take_at(1, t0), "the burst is spent");
        assert!(
            !b.take_at(20, t0 + Duration::from_millis(100)),
            "10 refilled"
        );
        assert!(
            b.take_at(20, t0 + Duration::from_millis(300)),
            "30 refilled"
        );
        assert!(
            !b.take_at(101, t0 + Duration::from_secs(60)),
            "never more than the capacity"
        );
        let burst = TokenBucket::new(10, 1000);
        assert!(burst.take_at(1000, t0));
    }
}
