//! `not`: keeps traces that its sub-policy does not keep.

use super::spec::{validate_subs, SpecError};
use super::{Decision, Policy, TraceSummary};
use super::{PolicyConfig, PolicyType};
use serde::{Deserialize, Serialize};

/// `not`: keep traces that its one sub-policy does not keep (e.g. everything but the
/// health checks, inside an `and`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    /// The sub-policy (not `and`, `drop` or `not`).
    pub not_sub_policy: Box<PolicyConfig>,
}

impl NotConfig {
    /// Checks the block at `at` (`policies[0].not`): a plain policy below it.
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        validate_subs(
            &format!("{at}.not_sub_policy"),
            std::slice::from_ref(&self.not_sub_policy),
            &[PolicyType::And, PolicyType::Drop, PolicyType::Not],
        )
    }
}

/// Votes to keep a trace when its sub-policy does not (and not to when it does):
/// useful inside `and`, e.g. slow traces not on the health-check route.
#[derive(Debug)]
pub struct Not {
    sub: Box<dyn Policy>,
}

impl Not {
    /// Over a built sub-policy.
    pub fn new(sub: Box<dyn Policy>) -> Self {
        Not { sub }
    }
}

impl Policy for Not {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        // As OTel's `not`: the plain votes swap; inverted votes pass through.
        match self.sub.evaluate(t) {
            Decision::Sampled => Decision::NotSampled,
            Decision::NotSampled => Decision::Sampled,
            other => other,
        }
    }

    /// The share its sub-policy leaves.
    fn probability(&self, t: &TraceSummary) -> Option<f64> {
        self.sub
            .probability(t)
            .map(|p| if p >= 1.0 { 1.0 } else { 1.0 - p })
    }

    fn settled(&self) -> bool {
        self.sub.settled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;
    use crate::config::Config;
    use crate::policy::PolicySet;

    #[test]
    fn inverts_its_sub_policy_inside_and() {
        // Long traces without an error.
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - name: long-ok\n    type: and\n    and:\n      and_sub_policy:\n        - {name: long, type: span_count, span_count: {min_spans: 10}}\n        - {name: no-error, type: not, not: {not_sub_policy: {name: e, type: status_code, status_code: {status_codes: [ERROR]}}}}\n";
        let cfg = Config::from_yaml(yaml).expect("not inside and");
        let set = PolicySet::build(&cfg.policies).expect("builds");
        let mut long = TraceSummary::new(TraceId([1; 16]));
        long.span_count = 12;
        assert_eq!(set.policies[0].policy.evaluate(&long), Decision::Sampled);
        long.has_error = true;
        assert_eq!(set.policies[0].policy.evaluate(&long), Decision::NotSampled);
        let nested = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: n, type: not, not: {not_sub_policy: {name: m, type: not, not: {not_sub_policy: {name: a, type: always_sample}}}}}\n";
        let e = Config::from_yaml(nested).expect_err("not in not");
        assert!(e.to_string().contains("not.not_sub_policy[0].type"), "{e}");
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: no-error, type: not, not: {not_sub_policy: {name: e, type: status_code, status_code: {status_codes: [ERROR]}}}}\n";
        let cfg = Config::from_yaml(yaml).expect("valid");
        let set = PolicySet::build(&cfg.policies).expect("builds");
        let mut t = TraceSummary::new(TraceId([1; 16]));
        assert_eq!(set.policies[0].policy.evaluate(&t), Decision::Sampled);
        t.has_error = true;
        assert_eq!(set.policies[0].policy.evaluate(&t), Decision::NotSampled);
    }
}
