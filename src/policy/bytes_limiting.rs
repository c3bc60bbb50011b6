//! `bytes_limiting`: keeps traces while a bytes-per-second budget lasts.

use super::bucket::Limiting;
use super::spec::{check_rate, SpecError};
use super::TraceSummary;
use serde::{Deserialize, Serialize};

/// `bytes_limiting`: as `rate_limiting`, counting the traces' encoded bytes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BytesLimitingConfig {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// Most bytes the bucket holds; 0 or absent: `bytes_per_second`.
    #[serde(default)]
    pub burst_capacity: u64,
}

impl BytesLimitingConfig {
    /// Checks the block at `at` (`policies[0].bytes_limiting`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_rate(&format!("{at}.bytes_per_second"), self.bytes_per_second)
    }
}

/// The policy: a token per encoded byte of the trace (see [`Limiting`]).
pub fn new(c: &BytesLimitingConfig) -> Limiting {
    Limiting::new(c.bytes_per_second, c.burst_capacity, |t: &TraceSummary| {
        u64::from(t.span_bytes)
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
