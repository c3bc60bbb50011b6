//! `rate_limiting`: keeps traces while a spans-per-second budget lasts.

use super::bucket::Limiting;
use super::spec::{check_rate, SpecError};
use super::TraceSummary;
use serde::{Deserialize, Serialize};

/// `rate_limiting`: keep traces while a token bucket of spans allows: it refills at
/// `spans_per_second` and holds at most `burst_capacity` (default: one second's
/// worth). Per instance: N instances keep up to N times the rate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// Spans per second.
    pub spans_per_second: u64,
    /// Most spans the bucket holds; 0 or absent: `spans_per_second`.
    #[serde(default)]
    pub burst_capacity: u64,
}

impl RateLimitingConfig {
    /// Checks the block at `at` (`policies[0].rate_limiting`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_rate(&format!("{at}.spans_per_second"), self.spans_per_second)
    }
}

/// The policy: a token per span of the trace (see [`Limiting`]).
pub fn new(c: &RateLimitingConfig) -> Limiting {
    Limiting::new(c.spans_per_second, c.burst_capacity, |t: &TraceSummary| {
        u64::from(t.span_count)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::time::Instant;

    use super::*;
    use crate::codec::TraceId;
    use crate::policy::Decision;

    #[test]
    fn keeps_traces_while_the_spans_last() {
        let p = new(&RateLimitingConfig {
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
