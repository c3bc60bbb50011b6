//! `always_sample`: keeps every trace.

use super::{Decision, Policy, TraceSummary};

/// Votes to keep every trace.
#[derive(Debug, Default)]
pub struct AlwaysSample;

impl Policy for AlwaysSample {
    fn evaluate(&self, _trace: &TraceSummary) -> Decision {
        Decision::Sampled
    }
}
