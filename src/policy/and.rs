//! `and`: keeps traces that every sub-policy keeps.

use super::spec::{validate_subs, SpecError, COMBINING};
use super::PolicyConfig;
use super::{Decision, Policy, TraceSummary};
use serde::{Deserialize, Serialize};

/// `and`: keep traces that every sub-policy keeps. Sub-policies have the same shape
/// as top-level ones but may not be `and` themselves (as in OTel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    /// The sub-policies, all of which must vote to sample.
    pub and_sub_policy: Vec<PolicyConfig>,
}

impl AndConfig {
    /// Checks the block at `at` (`policies[0].and`): no `and`, `drop` or `composite`
    /// below it.
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        validate_subs(
            &format!("{at}.and_sub_policy"),
            &self.and_sub_policy,
            COMBINING,
        )
    }
}

/// Votes to keep a trace when all its sub-policies do (e.g. errors *and* on the
/// checkout route). Evaluation stops at the first sub-policy that does not.
#[derive(Debug)]
pub struct And {
    subs: Vec<Box<dyn Policy>>,
}

impl And {
    /// Over built sub-policies (validation guarantees at least one).
    pub fn new(subs: Vec<Box<dyn Policy>>) -> Self {
        And { subs }
    }
}

impl Policy for And {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::sampled_if(
            !self.subs.is_empty() && self.subs.iter().all(|p| p.evaluate(t).samples()),
        )
    }

    /// Every sub-policy had to keep it: the product.
    fn probability(&self, t: &TraceSummary) -> Option<f64> {
        self.subs
            .iter()
            .try_fold(1.0, |acc, p| Some(acc * p.probability(t)?))
    }

    fn settled(&self) -> bool {
        self.subs.iter().all(|p| p.settled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;
    use crate::config::Config;
    use crate::policy::PolicySet;

    /// The vote of the one `and` policy in `yaml`'s policy list on `t`.
    fn vote(subs: &str, t: &TraceSummary) -> Decision {
        let yaml = format!(
            "kafka: {{brokers: x, input_topics: [i], output_topic: o}}\npolicies:\n  - name: both\n    type: and\n    and:\n      and_sub_policy:\n{subs}"
        );
        let cfg = Config::from_yaml(&yaml).expect("valid");
        let set = PolicySet::build(&cfg.policies).expect("builds");
        set.policies[0].policy.evaluate(t)
    }

    const ERRORS_AND_LONG: &str = "        - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n        - {name: long, type: span_count, span_count: {min_spans: 10}}\n";

    fn trace(spans: u32, errors: u32) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.span_count = spans;
        t.has_error = errors > 0;
        t
    }

    #[test]
    fn every_sub_policy_must_sample() {
        assert_eq!(vote(ERRORS_AND_LONG, &trace(12, 1)), Decision::Sampled);
        assert_eq!(vote(ERRORS_AND_LONG, &trace(12, 0)), Decision::NotSampled);
        assert_eq!(vote(ERRORS_AND_LONG, &trace(3, 1)), Decision::NotSampled);
    }

    #[test]
    fn sub_policies_reading_attributes_get_their_own_bits() {
        let subs = "        - {name: a, type: boolean_attribute, boolean_attribute: {key: retry, value: true}}\n        - {name: b, type: numeric_attribute, numeric_attribute: {key: http.status_code, min_value: 500}}\n";
        let mut t = trace(1, 0);
        t.attr_hits = 0b01;
        assert_eq!(vote(subs, &t), Decision::NotSampled);
        t.attr_hits = 0b11;
        assert_eq!(vote(subs, &t), Decision::Sampled);
    }

    #[test]
    fn nesting_and_empty_lists_are_rejected() {
        let base = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - name: both\n    type: and\n    and:\n      and_sub_policy:";
        let e = Config::from_yaml(&format!("{base} []\n")).expect_err("empty");
        assert!(
            e.to_string().contains("policies[0].and.and_sub_policy"),
            "{e}"
        );
        let nested = format!(
            "{base}\n        - {{name: inner, type: and, and: {{and_sub_policy: [{{name: x, type: always_sample}}]}}}}\n"
        );
        let e = Config::from_yaml(&nested).expect_err("nested");
        assert!(
            e.to_string()
                .contains("policies[0].and.and_sub_policy[0].type"),
            "{e}"
        );
    }
}
