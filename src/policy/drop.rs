//! `drop`: drops traces that every sub-policy would keep, whatever else votes.

use super::spec::{validate_subs, SpecError, COMBINING};
use super::PolicyConfig;
use super::{Decision, Policy, TraceSummary};
use serde::{Deserialize, Serialize};

/// `drop`: drop traces that every sub-policy would keep, first and finally: a trace
/// this policy drops is dropped whatever any other policy votes (as in OTel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    /// The sub-policies, all of which must vote to sample for the trace to be dropped.
    pub drop_sub_policy: Vec<PolicyConfig>,
}

impl DropConfig {
    /// Checks the block at `at` (`policies[0].drop`): no `and`, `drop` or `composite`
    /// below it.
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        validate_subs(
            &format!("{at}.drop_sub_policy"),
            &self.drop_sub_policy,
            COMBINING,
        )
    }
}

/// Votes `Dropped` when all its sub-policies vote to sample (e.g. health checks:
/// `http.route` is `/healthz`), which the decider applies before any other vote: a
/// trace it drops is dropped even if an error policy would keep it.
#[derive(Debug)]
pub struct DropPolicy {
    subs: Vec<Box<dyn Policy>>,
}

impl DropPolicy {
    /// Over built sub-policies (validation guarantees at least one).
    pub fn new(subs: Vec<Box<dyn Policy>>) -> Self {
        DropPolicy { subs }
    }
}

impl Policy for DropPolicy {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        if !self.subs.is_empty() && self.subs.iter().all(|p| p.evaluate(t).samples()) {
            Decision::Dropped
        } else {
            Decision::NotSampled
        }
    }

    fn settled(&self) -> bool {
        self.subs.iter().all(|p| p.settled())
    }

    /// With a sub-policy that chance decides, still drops when every settled
    /// sub-policy would keep the trace: a late span never escapes a drop that
    /// might have applied.
    fn revise(&self, t: &TraceSummary) -> Decision {
        let mut settled = self.subs.iter().filter(|p| p.settled());
        if !self.subs.is_empty() && settled.all(|p| p.evaluate(t).samples()) {
            Decision::Dropped
        } else {
            Decision::NotSampled
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::codec::TraceId;
    use crate::config::Config;
    use crate::decide::Decider;
    use crate::policy::{PolicySet, TraceSummary};

    /// The decider over: keep errors; drop traces of at most 2 spans that have an
    /// error (a deliberately overlapping pair to show precedence).
    fn decider() -> Decider {
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n  - name: tiny-errors\n    type: drop\n    drop:\n      drop_sub_policy:\n        - {name: tiny, type: span_count, span_count: {min_spans: 1, max_spans: 2}}\n        - {name: err, type: status_code, status_code: {status_codes: [ERROR]}}\n";
        let cfg = Config::from_yaml(yaml).expect("valid");
        Decider::new(PolicySet::build(&cfg.policies).expect("builds"), false)
    }

    fn trace(spans: u32, errors: u32) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.span_count = spans;
        t.has_error = errors > 0;
        t
    }

    #[test]
    fn drop_beats_sample() {
        let d = decider();
        assert!(d.decide(&trace(10, 1)).keep(), "an error trace is kept");
        assert!(
            !d.decide(&trace(2, 1)).keep(),
            "a tiny error trace is dropped though `errors` samples it"
        );
        assert!(!d.decide(&trace(2, 0)).keep(), "nothing keeps it anyway");
    }

    #[test]
    fn nested_drop_is_rejected() {
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: d, type: drop, drop: {drop_sub_policy: [{name: e, type: drop, drop: {drop_sub_policy: [{name: a, type: always_sample}]}}]}}\n";
        let e = Config::from_yaml(yaml).expect_err("nested");
        assert!(
            e.to_string()
                .contains("policies[0].drop.drop_sub_policy[0].type"),
            "{e}"
        );
    }
}
