//! `composite`: sub-policies in priority order, each with a share of a spans-per-second
//! budget.

use std::sync::Mutex;
use std::time::Instant;

use super::spec::{check_rate, validate_subs, SpecError};
use super::{Decision, Policy, TraceSummary};
use super::{PolicyConfig, PolicyType};
use serde::{Deserialize, Serialize};

/// `composite`: the first sub-policy (in `policy_order`) that samples a trace keeps
/// it if its share of `max_total_spans_per_second` has room this second. Per
/// instance.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig {
    /// The budget all sub-policies share, spans per second.
    pub max_total_spans_per_second: u64,
    /// Sub-policy names in evaluation order; sub-policies not named follow in list
    /// order. Empty: list order.
    #[serde(default)]
    pub policy_order: Vec<String>,
    /// The sub-policies (may be `and` or `not`, not `composite` or `drop`).
    pub composite_sub_policy: Vec<PolicyConfig>,
    /// Shares of the budget, in percent; sub-policies not listed share the rest.
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocationConfig>,
}

impl CompositeConfig {
    /// Checks the block at `at` (`policies[0].composite`): its budget, its
    /// sub-policies (no `composite` or `drop`), and that `policy_order` and
    /// `rate_allocation` name them.
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_rate(
            &format!("{at}.max_total_spans_per_second"),
            self.max_total_spans_per_second,
        )?;
        validate_subs(
            &format!("{at}.composite_sub_policy"),
            &self.composite_sub_policy,
            &[PolicyType::Composite, PolicyType::Drop],
        )?;
        let names: Vec<&str> = self
            .composite_sub_policy
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let known = |field: String, name: &str| {
            if names.contains(&name) {
                Ok(())
            } else {
                Err(SpecError::invalid(
                    field,
                    name,
                    format!("the name of a composite_sub_policy ({})", names.join(", ")),
                ))
            }
        };
        for (j, n) in self.policy_order.iter().enumerate() {
            known(format!("{at}.policy_order[{j}]"), n)?;
            if self.policy_order[..j].contains(n) {
                return Err(SpecError::invalid(
                    format!("{at}.policy_order[{j}]"),
                    n,
                    "each sub-policy named once",
                ));
            }
        }
        let mut total = 0u64;
        for (j, a) in self.rate_allocation.iter().enumerate() {
            known(format!("{at}.rate_allocation[{j}].policy"), &a.policy)?;
            total += u64::from(a.percent);
        }
        if total > 100 {
            return Err(SpecError::invalid(
                format!("{at}.rate_allocation"),
                format!("{total}% in all"),
                "percentages adding up to at most 100",
            ));
        }
        Ok(())
    }
}
/// One sub-policy's share of a `composite` budget.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocationConfig {
    /// The sub-policy's name.
    pub policy: String,
    /// Percent of `max_total_spans_per_second`; 0: an equal share.
    pub percent: u32,
}
impl CompositeConfig {
    /// The sub-policies in evaluation order, each with its spans-per-second share.
    pub fn with_shares(&self) -> Vec<(&PolicyConfig, u64)> {
        let ordered = self.ordered();
        let names: Vec<&str> = ordered.iter().map(|p| p.name.as_str()).collect();
        let allocation: Vec<(&str, u32)> = self
            .rate_allocation
            .iter()
            .map(|a| (a.policy.as_str(), a.percent))
            .collect();
        let shares = shares(&names, &allocation, self.max_total_spans_per_second);
        ordered.into_iter().zip(shares).collect()
    }

    /// The sub-policies in evaluation order.
    pub fn ordered(&self) -> Vec<&PolicyConfig> {
        let mut out: Vec<&PolicyConfig> = self
            .policy_order
            .iter()
            .filter_map(|n| self.composite_sub_policy.iter().find(|p| &p.name == n))
            .collect();
        for p in &self.composite_sub_policy {
            if !self.policy_order.contains(&p.name) {
                out.push(p);
            }
        }
        out
    }
}

/// Votes to keep a trace when the first sub-policy (in `policy_order`) that samples it
/// still has room in its share of this second's budget, and the whole budget has room
/// too; the trace's spans are then counted against both. When that first sub-policy
/// is out of budget the vote is `NotSampled`: later sub-policies are not asked (as
/// in OTel), so a low-priority policy never takes a trace a higher one claimed.
/// Budgets restart every second; per instance, shared by the shard workers.
#[derive(Debug)]
pub struct Composite {
    /// Sub-policies in evaluation order, each with its spans-per-second share.
    subs: Vec<(Box<dyn Policy>, u64)>,
    max_total: u64,
    /// (second the counters are for, spans kept per sub-policy, spans kept in all).
    window: Mutex<(u64, Vec<u64>, u64)>,
    epoch: Instant,
}

impl Composite {
    /// Over built sub-policies in evaluation order with their spans-per-second shares.
    pub fn new(subs: Vec<(Box<dyn Policy>, u64)>, max_total: u64) -> Self {
        let n = subs.len();
        Composite {
            subs,
            max_total,
            window: Mutex::new((0, vec![0; n], 0)),
            epoch: Instant::now(),
        }
    }

    fn evaluate_at(&self, t: &TraceSummary, now: Instant) -> Decision {
        let Some(i) = self.subs.iter().position(|(p, _)| p.evaluate(t).samples()) else {
            return Decision::NotSampled;
        };
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, per_sub, total) = &mut *w;
        if *at != second {
            *at = second;
            per_sub.iter_mut().for_each(|c| *c = 0);
            *total = 0;
        }
        let spans = u64::from(t.span_count);
        let (sub, all) = (per_sub[i] + spans, *total + spans);
        if sub <= self.subs[i].1 && all <= self.max_total {
            per_sub[i] = sub;
            *total = all;
            Decision::Sampled
        } else {
            Decision::NotSampled
        }
    }
}

impl Policy for Composite {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        self.evaluate_at(t, Instant::now())
    }

    /// Depends on the traffic: unknown.
    fn probability(&self, _t: &TraceSummary) -> Option<f64> {
        None
    }

    /// Chance or traffic decides: never revises a drop.
    fn settled(&self) -> bool {
        false
    }
}

/// The spans-per-second share of each sub-policy, in `names` order: a listed
/// `percent` of `max_total` (0 percent: an equal share, `max_total / n`, as OTel);
/// sub-policies not listed share what the listed ones leave, equally.
pub fn shares(names: &[&str], allocation: &[(&str, u32)], max_total: u64) -> Vec<u64> {
    let n = names.len().max(1) as u64;
    let listed = |name: &str| {
        allocation
            .iter()
            .find(|(p, _)| *p == name)
            .map(|(_, pc)| *pc)
    };
    let share = |pc: u32| {
        if pc == 0 {
            max_total / n
        } else {
            max_total.saturating_mul(u64::from(pc)) / 100
        }
    };
    let allocated: u64 = names.iter().filter_map(|n| listed(n)).map(share).sum();
    let unlisted = names.iter().filter(|n| listed(n).is_none()).count() as u64;
    let rest = max_total.saturating_sub(allocated) / unlisted.max(1);
    names
        .iter()
        .map(|n| listed(n).map_or(rest, share))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::codec::TraceId;
    use crate::config::Config;
    use crate::policy::PolicySet;

    #[test]
    fn shares_follow_the_allocation_and_unlisted_policies_get_the_rest() {
        assert_eq!(
            shares(&["a", "b", "c"], &[("a", 50), ("b", 25)], 1000),
            vec![500, 250, 250]
        );
        assert_eq!(shares(&["a", "b"], &[("a", 0)], 1000), vec![500, 500]);
        assert_eq!(shares(&["a", "b", "c"], &[], 900), vec![300, 300, 300]);
    }

    /// The OTel README's composite example, over traces of `spans` spans with (or
    /// without) `key1` in range (bit 0) and `key2` matching (bit 1).
    fn composite() -> PolicySet {
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - name: composite-policy-1\n    type: composite\n    composite:\n      max_total_spans_per_second: 1000\n      policy_order: [test-composite-policy-1, test-composite-policy-2, test-composite-policy-3]\n      composite_sub_policy:\n        - {name: test-composite-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50}}\n        - {name: test-composite-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}\n        - {name: test-composite-policy-3, type: always_sample}\n      rate_allocation:\n        - {policy: test-composite-policy-1, percent: 50}\n        - {policy: test-composite-policy-2, percent: 25}\n";
        PolicySet::build(&Config::from_yaml(yaml).expect("valid").policies).expect("builds")
    }

    fn trace(spans: u32, bits: u64) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.span_count = spans;
        t.attr_hits = bits;
        t
    }

    #[test]
    fn each_priority_spends_its_own_share_of_the_second() {
        let set = composite();
        let p = &set.policies[0].policy;
        // key1 traces: 500 spans/s. Five of 100 spans fit, the sixth does not.
        for _ in 0..5 {
            assert_eq!(p.evaluate(&trace(100, 0b01)), Decision::Sampled);
        }
        assert_eq!(p.evaluate(&trace(100, 0b01)), Decision::NotSampled);
        // A trace matching both goes to the first in order, out of budget: not kept,
        // and not handed to the second.
        assert_eq!(p.evaluate(&trace(10, 0b11)), Decision::NotSampled);
        // key2 traces have their own 250; the rest (always_sample) 250.
        assert_eq!(p.evaluate(&trace(250, 0b10)), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(1, 0b10)), Decision::NotSampled);
        assert_eq!(p.evaluate(&trace(250, 0)), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(1, 0)), Decision::NotSampled);
    }

    #[test]
    fn budgets_restart_each_second() {
        let c = Composite::new(vec![(Box::new(super::super::AlwaysSample), 10)], 10);
        let t0 = c.epoch;
        assert_eq!(c.evaluate_at(&trace(10, 0), t0), Decision::Sampled);
        assert_eq!(c.evaluate_at(&trace(1, 0), t0), Decision::NotSampled);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(c.evaluate_at(&trace(10, 0), t1), Decision::Sampled);
    }

    #[test]
    fn policy_order_must_name_each_sub_policy_once() {
        let base = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - name: c\n    type: composite\n    composite:\n      max_total_spans_per_second: 100\n      composite_sub_policy: [{name: a, type: always_sample}, {name: b, type: always_sample}]\n";
        let e = Config::from_yaml(&format!("{base}      policy_order: [a, x]\n"))
            .expect_err("unknown name");
        assert!(
            e.to_string()
                .contains("policies[0].composite.policy_order[1]"),
            "{e}"
        );
        let e = Config::from_yaml(&format!(
            "{base}      rate_allocation: [{{policy: a, percent: 80}}, {{policy: b, percent: 30}}]\n"
        ))
        .expect_err("over 100%");
        assert!(e.to_string().contains("rate_allocation"), "{e}");
        Config::from_yaml(base).expect("policy_order is optional");
    }
}
