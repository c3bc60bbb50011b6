//! `rate_limiting`: keeps traces while a spans-per-second budget lasts.

use std::time::Instant;

use super::bucket::TokenBucket;
use super::{Decision, Policy, TraceSummary};
use crate::config::RateLimitingConfig;

/// Votes to keep a trace when the bucket holds as many tokens as the trace has spans,
/// and takes them. Every policy votes on every trace, so this spends its budget on
/// traces other policies keep too (as in OTel).
#[derive(Debug)]
pub struct RateLimiting {
    bucket: TokenBucket,
}

impl RateLimiting {
    /// From its config block.
    pub fn new(c: &RateLimitingConfig) -> Self {
        RateLimiting {
            bucket: TokenBucket::new(c.spans_per_second, c.burst_capacity),
        }
    }

    fn evaluate_at(&self, t: &TraceSummary, now: Instant) -> Decision {
        Decision::sampled_if(self.bucket.take_at(u64::from(t.span_count), now))
    }
}

impl Policy for RateLimiting {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        self.evaluate_at(t, Instant::now())
    }

    /// Depends on the traffic: unknown.
    fn probability(&self, _t: &TraceSummary) -> Option<f64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::codec::TraceId;

    #[test]
    fn keeps_traces_while_the_spans_last() {
        let p = RateLimiting::new(&RateLimitingConfig {
            spans_per_second: 50,
            burst_capacity: 0,
        });
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.span_count = 20;
        let t0 = Instant::now();
        assert_eq!(p.evaluate_at(&t, t0), Decision::Sampled);
        assert_eq!(p.evaluate_at(&t, t0), Decision::Sampled);
        assert_eq!(p.evaluate_at(&t, t0), Decision::NotSampled, "10 spans left");
        assert_eq!(
            p.evaluate_at(&t, t0 + Duration::from_millis(200)),
            Decision::Sampled,
            "10 more refilled: 20"
        );
    }
}
