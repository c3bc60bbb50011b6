//! Sampling policies: one type per file behind the [`Policy`] trait, built from the
//! OTel-shaped `policies:` config.
//!
//! A policy sees a [`TraceSummary`] (what the buffer accumulated from the trace's
//! spans), never the spans themselves, so evaluation is cheap and independent of trace
//! size. The rules that combine votes live in `decide`.

mod always_sample;
mod and;
mod boolean_attribute;
mod bucket;
mod bytes_limiting;
mod composite;
mod drop;
mod dynamic;
mod latency;
mod not;
mod numeric_attribute;
mod ottl_condition;
mod probabilistic;
mod rate_limiting;
mod span_count;
mod spec;
mod status_code;
mod string_attribute;
mod trace_flags;
mod trace_state;

use std::fmt;
use std::sync::Arc;

use crate::codec::{AttrMatchers, KeyField};

pub use crate::flow::TraceSummary;
pub use always_sample::AlwaysSample;
pub use and::{And, AndConfig};
pub use boolean_attribute::{BooleanAttribute, BooleanAttributeConfig};
pub use bucket::Limiting;
pub use bytes_limiting::BytesLimitingConfig;
pub use composite::{Composite, CompositeConfig, RateAllocationConfig};
pub use drop::{DropConfig, DropPolicy};
pub use dynamic::{Dynamic, DynamicConfig};
pub use latency::{Latency, LatencyConfig};
pub use not::{Not, NotConfig};
pub use numeric_attribute::{NumericAttribute, NumericAttributeConfig};
pub use ottl_condition::{OttlCondition, OttlConditionConfig};
pub use probabilistic::{Probabilistic, ProbabilisticConfig};
pub use rate_limiting::RateLimitingConfig;
pub use span_count::{SpanCount, SpanCountConfig};
pub use spec::{validate_all, PolicyConfig, PolicySpec, PolicyType, SpecError};
pub use status_code::{StatusCodeConfig, StatusCodeFilter};
pub use string_attribute::{StringAttribute, StringAttributeConfig};
pub use trace_flags::TraceFlags;
pub use trace_state::{TraceState, TraceStateConfig};

/// A policy's vote on one trace, with the OTel processor's five outcomes (the
/// decider combines them by the OTel precedence, see `decide::Decider::decide`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep the trace.
    Sampled,
    /// This policy does not ask for the trace.
    NotSampled,
    /// An `invert_match` policy found no match: keep the trace unless another policy
    /// voted `NotSampled` (OTel's "inverted sample").
    InvertSampled,
    /// An `invert_match` policy found a match: do not keep the trace, whatever the
    /// sampling policies vote (OTel's "inverted not sample", a veto).
    InvertNotSampled,
    /// Drop the trace, whatever the other policies vote (`drop` policies).
    Dropped,
}

impl Decision {
    /// `Sampled` when `hit`, else `NotSampled`.
    pub fn sampled_if(hit: bool) -> Decision {
        if hit {
            Decision::Sampled
        } else {
            Decision::NotSampled
        }
    }

    /// The vote of a match policy: plain when not `invert`, else the inverted pair
    /// (`InvertNotSampled` on a match, `InvertSampled` without one), as OTel's
    /// string, numeric and boolean attribute policies vote.
    pub fn matched(hit: bool, invert: bool) -> Decision {
        match (invert, hit) {
            (false, hit) => Decision::sampled_if(hit),
            (true, true) => Decision::InvertNotSampled,
            (true, false) => Decision::InvertSampled,
        }
    }

    /// Whether the vote asks to keep the trace: how `and`, `drop` and `composite`
    /// read their sub-policies (an inverted vote counts as its plain meaning there).
    pub fn samples(self) -> bool {
        matches!(self, Decision::Sampled | Decision::InvertSampled)
    }

    /// The metric label for the vote.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Sampled => "sampled",
            Decision::NotSampled => "not_sampled",
            Decision::InvertSampled => "inverted_sampled",
            Decision::InvertNotSampled => "inverted_not_sampled",
            Decision::Dropped => "dropped",
        }
    }

    /// Every vote, in the order of [`Decision::index`].
    pub const ALL: [Decision; 5] = [
        Decision::Sampled,
        Decision::NotSampled,
        Decision::InvertSampled,
        Decision::InvertNotSampled,
        Decision::Dropped,
    ];

    /// Position in [`Decision::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One sampling rule.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Votes on a trace. Must be cheap and must not panic on any summary.
    fn evaluate(&self, trace: &TraceSummary) -> Decision;

    /// The probability with which this policy keeps a trace like `trace` when it
    /// votes to: 1 for rules that keep every match, the share for probabilistic
    /// ones, `None` when it depends on traffic (rate limits). Written into kept
    /// spans so backends can extrapolate counts.
    fn probability(&self, _trace: &TraceSummary) -> Option<f64> {
        Some(1.0)
    }

    /// Whether its vote depends on the trace alone, not on chance, a budget or the
    /// traffic (probabilistic, rate and bytes limiting, dynamic, composite): only
    /// such votes may revise a decision when late spans come (`decide::Decider::revise`).
    fn settled(&self) -> bool {
        true
    }

    /// Its vote when a dropped trace is judged again with its late spans: as
    /// [`Policy::evaluate`] if [`Policy::settled`], else `NotSampled` without
    /// evaluating (a budget is not spent, and chance never turns a drop into a
    /// keep).
    fn revise(&self, trace: &TraceSummary) -> Decision {
        if self.settled() {
            self.evaluate(trace)
        } else {
            Decision::NotSampled
        }
    }
}

/// Why a policy set could not be built from a config that passed validation.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A regular expression does not compile.
    #[error("policy `{name}`: invalid regular expression: {source}")]
    Regex {
        /// Policy name.
        name: String,
        /// Compile error.
        source: regex::Error,
    },
    /// An OTTL condition does not parse (validation normally catches this first).
    #[error("policy `{name}`: {source}")]
    Ottl {
        /// Policy name.
        name: String,
        /// Parse error.
        source: crate::ottl::OttlError,
    },
    /// More policies, or attribute policies, than can be indexed.
    #[error("too many policies (at most 65534, of which at most 64 attribute policies)")]
    TooMany,
}

/// A configured policy with its name.
#[derive(Debug)]
pub struct NamedPolicy {
    /// The `name:` from the config.
    pub name: Arc<str>,
    /// The topic its traces go to instead of the output topic, if it has one.
    pub topic: Option<Arc<str>>,
    /// The evaluator.
    pub policy: Box<dyn Policy>,
}

/// The configured policies in order, and the attribute keys they read (which the codec
/// extracts from spans).
#[derive(Debug)]
pub struct PolicySet {
    /// Policies in config order.
    pub policies: Vec<NamedPolicy>,
    /// The attribute predicates of the attribute policies, tested by the codec.
    pub keys: AttrMatchers,
    /// Whether a `latency` policy reads the traces' durations (so a trace without a
    /// root span needs its per-host windows measured when decided).
    pub reads_duration: bool,
}

impl PolicySet {
    /// Builds evaluators from validated config.
    ///
    /// # Errors
    /// [`PolicyError`] if a block is missing or a regex does not compile.
    pub fn build(configs: &[PolicyConfig]) -> Result<PolicySet, PolicyError> {
        PolicySet::build_after(configs, None)
    }

    /// Builds evaluators to replace a set whose predicates were `previous`: a
    /// predicate both sets test keeps its bit (see `AttrMatchers::successor`).
    ///
    /// # Errors
    /// As [`PolicySet::build`].
    pub fn build_after(
        configs: &[PolicyConfig],
        previous: Option<&AttrMatchers>,
    ) -> Result<PolicySet, PolicyError> {
        if configs.len() >= usize::from(u16::MAX) - 1 {
            return Err(PolicyError::TooMany);
        }
        let mut keys = previous.map_or_else(AttrMatchers::default, AttrMatchers::successor);
        let mut policies = Vec::with_capacity(configs.len());
        for c in configs {
            policies.push(NamedPolicy {
                name: c.name.as_str().into(),
                topic: c.topic.as_deref().map(Arc::from),
                policy: build_one(c, &mut keys)?,
            });
        }
        Ok(PolicySet {
            policies,
            keys,
            reads_duration: configs.iter().any(|c| c.uses(PolicyType::Latency)),
        })
    }
}

/// Builds sub-policies.
fn build_all(
    configs: &[PolicyConfig],
    keys: &mut AttrMatchers,
) -> Result<Vec<Box<dyn Policy>>, PolicyError> {
    configs.iter().map(|c| build_one(c, keys)).collect()
}

/// Builds one policy, registering the predicates it reads in `keys`.
fn build_one(c: &PolicyConfig, keys: &mut AttrMatchers) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(match &c.spec {
        PolicySpec::AlwaysSample => Box::new(AlwaysSample),
        PolicySpec::Latency(s) => Box::new(Latency::new(s)),
        PolicySpec::StatusCode(s) => Box::new(StatusCodeFilter::new(s)),
        PolicySpec::Probabilistic(s) => Box::new(Probabilistic::new(s)),
        PolicySpec::StringAttribute(s) => {
            let matcher = StringAttribute::matcher(s).map_err(|source| PolicyError::Regex {
                name: c.name.clone(),
                source,
            })?;
            let bit = keys.add(&s.key, matcher).ok_or(PolicyError::TooMany)?;
            Box::new(StringAttribute::new(bit, s))
        }
        PolicySpec::NumericAttribute(s) => {
            let bit = keys
                .add(&s.key, NumericAttribute::matcher(s))
                .ok_or(PolicyError::TooMany)?;
            Box::new(NumericAttribute::new(bit, s))
        }
        PolicySpec::BooleanAttribute(s) => {
            let bit = keys
                .add(&s.key, BooleanAttribute::matcher(s))
                .ok_or(PolicyError::TooMany)?;
            Box::new(BooleanAttribute::new(bit, s))
        }
        PolicySpec::TraceState(s) => {
            let bit = keys
                .add_trace_state(&s.key, TraceState::matcher(s))
                .ok_or(PolicyError::TooMany)?;
            Box::new(TraceState::new(bit))
        }
        PolicySpec::TraceFlags => Box::new(TraceFlags),
        PolicySpec::Dynamic(s) => {
            keys.set_key_fields(s.key_fields.iter().map(|f| KeyField::parse(f)).collect());
            Box::new(Dynamic::new(
                s.goal_spans_per_second,
                s.adjustment_interval.0,
                s.max_keys,
            ))
        }
        PolicySpec::OttlCondition(s) => {
            let (span, events) =
                OttlCondition::conditions(s).map_err(|(_, _, e)| PolicyError::Ottl {
                    name: c.name.clone(),
                    source: e,
                })?;
            let bit = keys
                .add_conditions(span, events)
                .ok_or(PolicyError::TooMany)?;
            Box::new(OttlCondition::new(bit))
        }
        PolicySpec::Composite(s) => {
            let subs = s
                .with_shares()
                .into_iter()
                .map(|(p, share)| Ok((build_one(p, keys)?, share)))
                .collect::<Result<Vec<_>, PolicyError>>()?;
            Box::new(Composite::new(subs, s.max_total_spans_per_second))
        }
        PolicySpec::SpanCount(s) => Box::new(SpanCount::new(s)),
        PolicySpec::And(s) => Box::new(And::new(build_all(&s.and_sub_policy, keys)?)),
        PolicySpec::RateLimiting(s) => Box::new(rate_limiting::new(s)),
        PolicySpec::BytesLimiting(s) => Box::new(bytes_limiting::new(s)),
        PolicySpec::Not(s) => Box::new(Not::new(build_one(&s.not_sub_policy, keys)?)),
        PolicySpec::Drop(s) => Box::new(DropPolicy::new(build_all(&s.drop_sub_policy, keys)?)),
    })
}
