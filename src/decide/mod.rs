//! Decide: runs the policies on due traces and routes the outcome.
//!
//! [`Decider`] combines the policies' votes by the OTel processor's precedence (drop,
//! then inverted vetoes, then any sample; the first policy that sampled is recorded
//! as the deciding policy). [`ShardWorker`] is the task
//! that owns one buffer shard: it inserts incoming spans, decides due traces, sends
//! kept ones to the sink and releases the input pins of dropped ones. Its
//! [`DecisionCache`] makes spans that arrive after their trace was decided follow
//! that decision.

mod cache;
mod live;
mod worker;

use std::sync::Arc;

use metrics::Counter;

use crate::buffer::TraceEntry;
use crate::policy::{Decision, PolicySet, TraceSummary};
use crate::telemetry::names;

pub use cache::DecisionCache;
pub use live::{Generation, LivePolicies, PolicyWatch};
pub use worker::{Forced, ShardWorker, WorkerConfig};

/// The outcome for one trace: kept by a policy (its index in the set), or dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    policy: Option<u16>,
}

impl Verdict {
    /// Kept by policy `policy` (index in the set), or dropped (`None`).
    pub fn new(policy: Option<u16>) -> Self {
        Verdict { policy }
    }

    /// Whether the trace is kept.
    pub fn keep(&self) -> bool {
        self.policy.is_some()
    }

    /// Index of the first policy that voted to keep it.
    pub fn policy(&self) -> Option<u16> {
        self.policy
    }
}

/// Combines the configured policies' votes into a [`Verdict`].
#[derive(Debug)]
pub struct Decider {
    set: PolicySet,
    /// Stop at the first policy that votes `Sampled` (OTel's `sample_on_first_match`).
    first_match: bool,
    /// Per policy, per [`Decision::index`]: vote counters, registered once.
    votes: Vec<[Counter; 5]>,
    /// Per policy: traces kept by it.
    decided: Vec<Counter>,
    /// Per policy: traces it dropped (`drop` policies).
    dropped_by: Vec<Counter>,
    /// Traces no policy kept (or an inverted match vetoed).
    not_sampled: Counter,
}

impl Decider {
    /// Wraps a policy set and registers its metrics. With `sample_on_first_match`,
    /// evaluation stops at the first policy that votes `Sampled`, as in OTel (so a
    /// `drop` policy only vetoes when it comes before it in the list).
    pub fn new(set: PolicySet, sample_on_first_match: bool) -> Self {
        let votes = set
            .policies
            .iter()
            .map(|p| {
                Decision::ALL.map(|d| {
                    metrics::counter!(names::POLICY_EVALUATIONS, "policy" => p.name.to_string(), "decision" => d.label())
                })
            })
            .collect();
        let decided_as = |decision: &'static str| -> Vec<Counter> {
            set.policies
                .iter()
                .map(|p| metrics::counter!(names::TRACES_DECIDED, "policy" => p.name.to_string(), "decision" => decision))
                .collect()
        };
        let decided = decided_as("sampled");
        let dropped_by = decided_as("dropped");
        let not_sampled = metrics::counter!(names::TRACES_DECIDED, "policy" => "none", "decision" => "not_sampled");
        Decider {
            set,
            first_match: sample_on_first_match,
            votes,
            decided,
            dropped_by,
            not_sampled,
        }
    }

    /// The index of the policy named `name`, if it is in the set.
    pub fn policy_index(&self, name: &str) -> Option<u16> {
        self.set
            .policies
            .iter()
            .position(|p| &*p.name == name)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// The topic policy `i` routes its traces to, if it has one.
    pub fn topic(&self, i: u16) -> Option<Arc<str>> {
        self.set.policies.get(usize::from(i))?.topic.clone()
    }

    /// The probability policy `i` keeps a trace like `trace` with (see
    /// `Policy::probability`); `None` if unknown or not a policy of the set.
    pub fn probability(&self, i: u16, trace: &TraceSummary) -> Option<f64> {
        self.set
            .policies
            .get(usize::from(i))?
            .policy
            .probability(trace)
    }

    /// Whether a policy reads trace durations (see `PolicySet::reads_duration`).
    pub fn reads_duration(&self) -> bool {
        self.set.reads_duration
    }

    /// Policies in the set.
    pub fn len(&self) -> usize {
        self.set.policies.len()
    }

    /// Whether the set is empty (never, for a validated config).
    pub fn is_empty(&self) -> bool {
        self.set.policies.is_empty()
    }

    /// The name of policy `i` (empty for an index not in the set).
    pub fn policy_name(&self, i: u16) -> Arc<str> {
        self.set
            .policies
            .get(usize::from(i))
            .map_or_else(|| Arc::from(""), |p| Arc::clone(&p.name))
    }

    /// Decides a buffered trace, as `run` and `simulate` both do: when a latency
    /// policy reads the duration and no root span gave it, measures the trace's
    /// per-host windows first (it re-reads every span, so only then), then
    /// [`Decider::decide`]s its summary.
    pub fn decide_entry(&self, entry: &mut TraceEntry) -> Verdict {
        if entry.summary.one_clock_ms().is_none() && self.reads_duration() {
            let window = entry.longest_host_window_ns();
            entry.summary.set_one_clock_ns(window);
        }
        self.decide(&entry.summary)
    }

    /// Runs the policies on the trace in order and combines their votes as the OTel
    /// processor does:
    /// 1. a `Dropped` vote (a `drop` policy) drops the trace; evaluation stops there;
    /// 2. else an `InvertNotSampled` vote (an `invert_match` policy that matched)
    ///    does not keep it;
    /// 3. else a `Sampled` vote keeps it, named after the first policy that sampled;
    /// 4. else an `InvertSampled` vote keeps it if no policy voted `NotSampled`;
    /// 5. else it is not kept.
    ///
    /// Every evaluated policy's vote is counted, so per-policy metrics show what each
    /// would keep.
    pub fn decide(&self, trace: &TraceSummary) -> Verdict {
        self.judge(trace, false)
    }

    /// Judges a dropped trace again on everything known of it (what it was dropped
    /// on and its late spans), with the policies' [`Policy::revise`] votes: only
    /// votes that depend on the trace alone count, so chance and budgets never turn
    /// a drop into a keep. Not counted in the per-policy metrics.
    ///
    /// [`Policy::revise`]: crate::policy::Policy::revise
    pub fn revise(&self, trace: &TraceSummary) -> Verdict {
        self.judge(trace, true)
    }

    fn judge(&self, trace: &TraceSummary, revise: bool) -> Verdict {
        let mut first_sampled: Option<usize> = None;
        let mut first_inverted: Option<usize> = None;
        let mut any_not_sampled = false;
        let mut vetoed = false;
        let mut dropped: Option<usize> = None;
        for (i, p) in self.set.policies.iter().enumerate() {
            let d = if revise {
                p.policy.revise(trace)
            } else {
                let d = p.policy.evaluate(trace);
                self.votes[i][d.index()].increment(1);
                d
            };
            match d {
                Decision::Sampled => {
                    first_sampled.get_or_insert(i);
                    if self.first_match {
                        break;
                    }
                }
                Decision::NotSampled => any_not_sampled = true,
                Decision::InvertSampled => {
                    first_inverted.get_or_insert(i);
                }
                Decision::InvertNotSampled => vetoed = true,
                Decision::Dropped => {
                    dropped = Some(i);
                    break;
                }
            }
        }
        let kept = if dropped.is_some() || vetoed {
            None
        } else {
            first_sampled.or(first_inverted.filter(|_| !any_not_sampled))
        };
        if !revise {
            match (kept, dropped) {
                (Some(i), _) => self.decided[i].increment(1),
                (None, Some(i)) => self.dropped_by[i].increment(1),
                (None, None) => self.not_sampled.increment(1),
            }
        }
        // The set holds at most u16::MAX - 1 policies (checked when built).
        Verdict::new(kept.and_then(|i| u16::try_from(i).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;
    use crate::config::Config;

    fn decider(policies: &str, first_match: bool) -> Decider {
        let yaml = format!(
            "kafka: {{brokers: x, input_topics: [i], output_topic: o}}\npolicies:\n{policies}"
        );
        let cfg = Config::from_yaml(&yaml).expect("valid");
        Decider::new(
            PolicySet::build(&cfg.policies).expect("builds"),
            first_match,
        )
    }

    /// A trace with `errors` error spans whose attribute predicate bit 0 is `hit`.
    fn trace(errors: u32, hit: bool) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([3; 16]));
        t.span_count = 4;
        t.has_error = errors > 0;
        t.attr_hits = u64::from(hit);
        t
    }

    const NOT_HEALTH: &str = "  - {name: not-health, type: string_attribute, string_attribute: {key: http.route, values: [/health], invert_match: true}}\n";
    const ERRORS: &str =
        "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n";

    #[test]
    fn inverted_decisions_follow_the_otel_precedence() {
        let d = decider(&format!("{NOT_HEALTH}{ERRORS}"), false);
        // A sample wins over an inverted sample and names the trace.
        assert_eq!(d.decide(&trace(1, false)).policy(), Some(1));
        // An inverted match vetoes a sample.
        assert!(!d.decide(&trace(1, true)).keep());
        // An inverted sample does not keep a trace another policy voted not to.
        assert!(!d.decide(&trace(0, false)).keep());
        // Alone, it does.
        let d = decider(NOT_HEALTH, false);
        assert_eq!(d.decide(&trace(0, false)).policy(), Some(0));
        assert!(!d.decide(&trace(0, true)).keep());
    }

    #[test]
    fn inverted_votes_are_plain_inside_and() {
        let d = decider(
            &format!(
                "  - name: errors-not-health\n    type: and\n    and:\n      and_sub_policy:\n      {}      {}",
                NOT_HEALTH.trim_start(),
                ERRORS.trim_start()
            ),
            false,
        );
        assert!(d.decide(&trace(1, false)).keep());
        assert!(!d.decide(&trace(1, true)).keep());
        assert!(!d.decide(&trace(0, false)).keep());
    }

    #[test]
    fn sample_on_first_match_stops_before_a_later_drop() {
        let policies = "  - {name: all, type: always_sample}\n  - {name: no-errors, type: drop, drop: {drop_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}\n";
        assert!(!decider(policies, false).decide(&trace(1, false)).keep());
        assert!(decider(policies, true).decide(&trace(1, false)).keep());
        // A drop listed first vetoes either way.
        let first = "  - {name: no-errors, type: drop, drop: {drop_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}\n  - {name: all, type: always_sample}\n";
        assert!(!decider(first, true).decide(&trace(1, false)).keep());
        assert_eq!(
            decider(first, true).decide(&trace(0, false)).policy(),
            Some(1)
        );
    }

    #[test]
    fn a_revision_counts_settled_votes_only() {
        let prob =
            "  - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 100}}\n";
        let rate =
            "  - {name: few, type: rate_limiting, rate_limiting: {spans_per_second: 1000000}}\n";
        // Chance would keep a plain trace now; a revision never lets it.
        let d = decider(&format!("{prob}{rate}"), false);
        assert!(d.decide(&trace(0, false)).keep());
        assert!(!d.revise(&trace(0, false)).keep());
        // A settled policy that now sees an error keeps it.
        let d = decider(&format!("{prob}{ERRORS}"), false);
        assert_eq!(d.revise(&trace(1, false)).policy(), Some(1));
        assert!(!d.revise(&trace(0, false)).keep());
        // `not` over chance is chance too.
        let not_prob = "  - {name: not-some, type: not, not: {not_sub_policy: {name: p, type: probabilistic, probabilistic: {sampling_percentage: 0}}}}\n";
        let d = decider(not_prob, false);
        assert!(d.decide(&trace(0, false)).keep());
        assert!(!d.revise(&trace(0, false)).keep());
        // A drop whose settled part matches still drops on revision, whatever its
        // chance part would say.
        let drop = "  - {name: no-errors, type: drop, drop: {drop_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: p, type: probabilistic, probabilistic: {sampling_percentage: 0}}]}}\n";
        let d = decider(&format!("{drop}{ERRORS}"), false);
        assert!(
            d.decide(&trace(1, false)).keep(),
            "chance spared it at first"
        );
        assert!(!d.revise(&trace(1, false)).keep());
    }
}
