//! `latency`: keeps slow traces.

use super::{Decision, Policy, TraceSummary};
use crate::config::LatencyConfig;

/// Votes to keep traces whose duration ([`TraceSummary::duration_ns`]) is within
/// `[threshold, upper]`.
#[derive(Debug)]
pub struct Latency {
    threshold_ns: u64,
    upper_ns: Option<u64>,
}

impl Latency {
    /// From a validated config block.
    pub fn new(c: &LatencyConfig) -> Self {
        let ms_to_ns = |ms: i64| u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000);
        Latency {
            threshold_ns: ms_to_ns(c.threshold_ms),
            upper_ns: (c.upper_threshold_ms > 0).then(|| ms_to_ns(c.upper_threshold_ms)),
        }
    }
}

impl Policy for Latency {
    fn evaluate(&self, trace: &TraceSummary) -> Decision {
        let d = trace.duration_ns();
        Decision::sampled_if(d >= self.threshold_ns && self.upper_ns.is_none_or(|u| d <= u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;

    fn trace(root_ms: Option<u64>, window_ms: u64) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.min_start_ns = 1_000_000_000;
        t.max_end_ns = t.min_start_ns + window_ms * 1_000_000;
        t.one_clock_ns = root_ms.map(|ms| ms * 1_000_000);
        t
    }

    #[test]
    fn threshold_and_upper_bound_are_inclusive() {
        let p = Latency::new(&LatencyConfig {
            threshold_ms: 100,
            upper_threshold_ms: 200,
        });
        assert_eq!(p.evaluate(&trace(Some(99), 99)), Decision::NotSampled);
        assert_eq!(p.evaluate(&trace(Some(100), 100)), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(Some(200), 200)), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(Some(201), 201)), Decision::NotSampled);
    }

    #[test]
    fn root_duration_wins_over_a_skewed_span_window() {
        let p = Latency::new(&LatencyConfig {
            threshold_ms: 1000,
            upper_threshold_ms: 0,
        });
        // A child on a host whose clock is 5 s ahead stretches the window; the root
        // span says the request took 50 ms.
        assert_eq!(p.evaluate(&trace(Some(50), 5_050)), Decision::NotSampled);
        // Without a root the window is all there is.
        assert_eq!(p.evaluate(&trace(None, 5_050)), Decision::Sampled);
    }
}
