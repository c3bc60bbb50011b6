//! `span_count`: keeps traces whose number of spans is within bounds.

use super::spec::SpecError;
use super::{Decision, Policy, TraceSummary};
use serde::{Deserialize, Serialize};

/// `span_count`: keep traces with at least `min_spans` spans and, when `max_spans` is
/// set (non-zero), at most that many (both inclusive, as in OTel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpanCountConfig {
    /// Inclusive lower bound.
    pub min_spans: u32,
    /// Inclusive upper bound; `0` or absent: none.
    #[serde(default)]
    pub max_spans: u32,
}

impl SpanCountConfig {
    /// Checks the block at `at` (`policies[0].span_count`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if self.max_spans != 0 && self.max_spans < self.min_spans {
            return Err(SpecError::invalid(
                format!("{at}.max_spans"),
                self.max_spans,
                format!(
                    "0 (no upper bound) or at least min_spans ({})",
                    self.min_spans
                ),
            ));
        }
        Ok(())
    }
}

/// Votes to keep traces with at least `min_spans` spans and at most `max_spans` (when
/// set), both inclusive, counting the spans received when the trace is decided.
#[derive(Debug)]
pub struct SpanCount {
    min: u32,
    max: u32,
}

impl SpanCount {
    /// From its config block (`max_spans: 0`: no upper bound).
    pub fn new(c: &SpanCountConfig) -> Self {
        SpanCount {
            min: c.min_spans,
            max: if c.max_spans == 0 {
                u32::MAX
            } else {
                c.max_spans
            },
        }
    }
}

impl Policy for SpanCount {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::sampled_if((self.min..=self.max).contains(&t.span_count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;

    fn vote(min: u32, max: u32, spans: u32) -> Decision {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.span_count = spans;
        SpanCount::new(&SpanCountConfig {
            min_spans: min,
            max_spans: max,
        })
        .evaluate(&t)
    }

    #[test]
    fn bounds_are_inclusive() {
        assert_eq!(vote(2, 20, 1), Decision::NotSampled);
        assert_eq!(vote(2, 20, 2), Decision::Sampled);
        assert_eq!(vote(2, 20, 20), Decision::Sampled);
        assert_eq!(vote(2, 20, 21), Decision::NotSampled);
    }

    #[test]
    fn zero_max_means_no_upper_bound() {
        assert_eq!(vote(100, 0, 99), Decision::NotSampled);
        assert_eq!(vote(100, 0, 100_000), Decision::Sampled);
        assert_eq!(
            vote(0, 0, 0),
            Decision::Sampled,
            "an empty trace has 0 spans"
        );
    }
}
