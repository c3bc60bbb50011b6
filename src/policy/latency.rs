//! `latency`: keeps slow traces.

use super::spec::SpecError;
use super::{Decision, Policy, TraceSummary};
use crate::flow::MAX_ONE_CLOCK_MS;
use serde::{Deserialize, Serialize};

/// `latency`: keep traces whose duration is at least `threshold_ms`; with
/// `upper_threshold_ms` set, above `threshold_ms` and at most the upper bound (OTel's
/// comparisons, in whole milliseconds).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Lower bound, milliseconds: inclusive alone, exclusive with an upper bound (as OTel).
    pub threshold_ms: i64,
    /// Upper bound, milliseconds, inclusive; `0` or absent: none.
    #[serde(default)]
    pub upper_threshold_ms: i64,
}

impl LatencyConfig {
    /// Checks the block at `at` (`policies[0].latency`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if self.threshold_ms < 0 {
            return Err(SpecError::invalid(
                format!("{at}.threshold_ms"),
                self.threshold_ms,
                "a number of milliseconds >= 0",
            ));
        }
        // A buffered trace keeps its duration in whole milliseconds below 49.7 days;
        // bounds from there on could not be told apart.
        let longest = i64::from(MAX_ONE_CLOCK_MS) - 1;
        for (field, v) in [
            ("threshold_ms", self.threshold_ms),
            ("upper_threshold_ms", self.upper_threshold_ms),
        ] {
            if v > longest {
                return Err(SpecError::invalid(
                    format!("{at}.{field}"),
                    v,
                    format!("at most {longest} milliseconds (49.7 days)"),
                ));
            }
        }
        if self.upper_threshold_ms != 0 && self.upper_threshold_ms <= self.threshold_ms {
            return Err(SpecError::invalid(
                format!("{at}.upper_threshold_ms"),
                self.upper_threshold_ms,
                format!(
                    "0 (no upper bound) or above threshold_ms ({}): the lower bound is exclusive then, so nothing would match",
                    self.threshold_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Votes to keep traces whose duration ([`TraceSummary::duration_ms`]), in whole
/// milliseconds, is at least `threshold_ms`; with an upper bound, above `threshold_ms`
/// and at most `upper_threshold_ms` (OTel's comparisons, lower bound exclusive then).
#[derive(Debug)]
pub struct Latency {
    threshold_ms: u64,
    upper_ms: Option<u64>,
}

impl Latency {
    /// From a validated config block.
    pub fn new(c: &LatencyConfig) -> Self {
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        Latency {
            threshold_ms: ms(c.threshold_ms),
            upper_ms: (c.upper_threshold_ms > 0).then(|| ms(c.upper_threshold_ms)),
        }
    }
}

impl Policy for Latency {
    fn evaluate(&self, trace: &TraceSummary) -> Decision {
        let ms = trace.duration_ms();
        Decision::sampled_if(match self.upper_ms {
            None => ms >= self.threshold_ms,
            Some(upper) => self.threshold_ms < ms && ms <= upper,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;

    /// A trace whose duration on one clock is `ms` (`None`: not measured).
    fn trace(ms: Option<u64>) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        if let Some(ms) = ms {
            t.set_one_clock_ns(ms * 1_000_000);
        }
        t
    }

    #[test]
    fn durations_past_the_longest_bound_still_pass_every_bound() {
        let longest = i64::from(MAX_ONE_CLOCK_MS) - 1;
        let ok = LatencyConfig {
            threshold_ms: longest - 1,
            upper_threshold_ms: longest,
        };
        assert!(ok.validate("policies[0].latency").is_ok());
        let e = LatencyConfig {
            threshold_ms: longest + 1,
            upper_threshold_ms: 0,
        }
        .validate("policies[0].latency")
        .expect_err("past 49.7 days");
        assert!(
            e.to_string().contains("policies[0].latency.threshold_ms"),
            "{e}"
        );
        // A 60-day root span is above the lowest refused threshold and past the
        // highest accepted upper bound.
        let mut t = trace(None);
        t.set_one_clock_ns(60 * 86_400 * 1_000_000_000);
        let at_least = Latency::new(&LatencyConfig {
            threshold_ms: longest,
            upper_threshold_ms: 0,
        });
        assert_eq!(at_least.evaluate(&t), Decision::Sampled);
        assert_eq!(Latency::new(&ok).evaluate(&t), Decision::NotSampled);
    }

    #[test]
    fn bounds_compare_whole_milliseconds_as_otel_does() {
        let open = Latency::new(&LatencyConfig {
            threshold_ms: 100,
            upper_threshold_ms: 0,
        });
        assert_eq!(open.evaluate(&trace(Some(99))), Decision::NotSampled);
        assert_eq!(open.evaluate(&trace(Some(100))), Decision::Sampled);
        let mut t = trace(None);
        t.set_one_clock_ns(99_999_999); // 99.99 ms is 99 whole ms
        assert_eq!(open.evaluate(&t), Decision::NotSampled);
        // With an upper bound OTel's lower bound is exclusive.
        let p = Latency::new(&LatencyConfig {
            threshold_ms: 100,
            upper_threshold_ms: 200,
        });
        assert_eq!(p.evaluate(&trace(Some(100))), Decision::NotSampled);
        assert_eq!(p.evaluate(&trace(Some(101))), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(Some(200))), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(Some(201))), Decision::NotSampled);
    }

    #[test]
    fn the_duration_is_the_one_on_one_clock() {
        let p = Latency::new(&LatencyConfig {
            threshold_ms: 1000,
            upper_threshold_ms: 0,
        });
        // The root span says the request took 50 ms, whatever a child on a host with
        // a clock 5 s ahead says.
        assert_eq!(p.evaluate(&trace(Some(50))), Decision::NotSampled);
        // Not measured: 0. `Decider::decide_entry` measures the longest one-host
        // window before a latency policy reads a trace without a root.
        assert_eq!(p.evaluate(&trace(None)), Decision::NotSampled);
        assert_eq!(p.evaluate(&trace(Some(5_050))), Decision::Sampled);
    }
}
