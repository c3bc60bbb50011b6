//! Decide: runs the policies on due traces and routes the outcome.
//!
//! [`Decider`] combines the policies' votes (any `Sampled` keeps the trace; the first
//! policy that sampled is recorded as the deciding policy). [`ShardWorker`] is the task
//! that owns one buffer shard: it inserts incoming spans, decides due traces, sends
//! kept ones to the sink and releases the input pins of dropped ones. Its
//! [`DecisionCache`] makes spans that arrive after their trace was decided follow
//! that decision.

mod cache;
mod record;
mod worker;

use std::sync::Arc;

use metrics::Counter;

use crate::policy::{Decision, PolicySet, TraceSummary};
use crate::telemetry::names;

pub use cache::DecisionCache;
pub use record::DecisionRecord;
pub use worker::{Forced, ShardMsg, ShardWorker, WorkerConfig};

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
    /// Per policy: (sampled, not_sampled) vote counters, registered once.
    votes: Vec<(Counter, Counter)>,
    /// Per policy: traces decided as kept by it; plus one for "dropped".
    decided: Vec<Counter>,
    dropped: Counter,
}

impl Decider {
    /// Wraps a policy set and registers its metrics.
    pub fn new(set: PolicySet) -> Self {
        let votes = set
            .policies
            .iter()
            .map(|p| {
                let name = p.name.to_string();
                (
                    metrics::counter!(names::POLICY_EVALUATIONS, "policy" => name.clone(), "decision" => "sampled"),
                    metrics::counter!(names::POLICY_EVALUATIONS, "policy" => name, "decision" => "not_sampled"),
                )
            })
            .collect();
        let decided = set
            .policies
            .iter()
            .map(|p| metrics::counter!(names::TRACES_DECIDED, "policy" => p.name.to_string(), "decision" => "sampled"))
            .collect();
        let dropped = metrics::counter!(names::TRACES_DECIDED, "policy" => "none", "decision" => "not_sampled");
        Decider {
            set,
            votes,
            decided,
            dropped,
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

    /// The name of policy `i` (empty for an index not in the set).
    pub fn policy_name(&self, i: u16) -> Arc<str> {
        self.set
            .policies
            .get(usize::from(i))
            .map_or_else(|| Arc::from(""), |p| Arc::clone(&p.name))
    }

    /// Runs every policy on the trace. Every policy votes (so per-policy metrics show
    /// what each would keep); a `Dropped` vote (a `drop` policy) drops the trace,
    /// first and finally; otherwise any `Sampled` vote keeps it.
    pub fn decide(&self, trace: &TraceSummary) -> Verdict {
        let mut first: Option<usize> = None;
        let mut vetoed = false;
        for (i, p) in self.set.policies.iter().enumerate() {
            match p.policy.evaluate(trace) {
                Decision::Sampled => {
                    self.votes[i].0.increment(1);
                    first.get_or_insert(i);
                }
                Decision::NotSampled => self.votes[i].1.increment(1),
                Decision::Dropped => {
                    self.votes[i].0.increment(1);
                    vetoed = true;
                }
            }
        }
        if vetoed {
            first = None;
        }
        match first {
            Some(i) => self.decided[i].increment(1),
            None => self.dropped.increment(1),
        }
        // The set holds at most u16::MAX - 1 policies (checked when built).
        Verdict::new(first.and_then(|i| u16::try_from(i).ok()))
    }
}
