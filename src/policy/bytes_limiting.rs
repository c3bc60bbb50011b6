//! `bytes_limiting`: keeps traces while a bytes-per-second budget lasts.

use super::bucket::Limiting;
use super::TraceSummary;
use crate::config::BytesLimitingConfig;

/// The policy: a token per encoded byte of the trace (see [`Limiting`]).
pub fn new(c: &BytesLimitingConfig) -> Limiting {
    Limiting::new(c.bytes_per_second, c.burst_capacity, |t: &TraceSummary| {
        t.span_bytes
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::codec::TraceId;
    use crate::policy::Decision;

    #[test]
    fn a_trace_larger_than_the_burst_is_never_kept() {
        let p = new(&BytesLimitingConfig {
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
