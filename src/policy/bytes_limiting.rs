//! `bytes_limiting`: keeps traces while a bytes-per-second budget lasts.

use std::time::Instant;

use super::bucket::TokenBucket;
use super::{Decision, Policy, TraceSummary};
use crate::config::BytesLimitingConfig;

/// Votes to keep a trace when the bucket holds as many tokens as the trace has encoded
/// bytes, and takes them.
#[derive(Debug)]
pub struct BytesLimiting {
    bucket: TokenBucket,
}

impl BytesLimiting {
    /// From its config block.
    pub fn new(c: &BytesLimitingConfig) -> Self {
        BytesLimiting {
            bucket: TokenBucket::new(c.bytes_per_second, c.burst_capacity),
        }
    }

    fn evaluate_at(&self, t: &TraceSummary, now: Instant) -> Decision {
        Decision::sampled_if(self.bucket.take_at(t.span_bytes, now))
    }
}

impl Policy for BytesLimiting {
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
    use super::*;
    use crate::codec::TraceId;

    #[test]
    fn a_trace_larger_than_the_burst_is_never_kept() {
        let p = BytesLimiting::new(&BytesLimitingConfig {
            bytes_per_second: 1000,
            burst_capacity: 5000,
        });
        let mut t = TraceSummary::new(TraceId([1; 16]));
        let t0 = Instant::now();
        t.span_bytes = 6000;
        assert_eq!(p.evaluate_at(&t, t0), Decision::NotSampled);
        t.span_bytes = 3000;
        assert_eq!(p.evaluate_at(&t, t0), Decision::Sampled);
        assert_eq!(p.evaluate_at(&t, t0), Decision::NotSampled, "2000 left");
    }
}
