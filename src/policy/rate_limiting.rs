//! `rate_limiting`: keeps traces while a spans-per-second budget lasts.

use super::bucket::Limiting;
use super::TraceSummary;
use crate::config::RateLimitingConfig;

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
