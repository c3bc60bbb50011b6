//! The `policies:` list, in the OpenTelemetry Collector `tail_sampling` processor's
//! shape: `name`, `type`, and a block named after the type.
//!
//! The YAML is read into a private raw struct (the OTel shape: one optional block per
//! type) and turned at load, by serde's `try_from`, into a [`PolicyConfig`] whose
//! [`PolicySpec`] has one variant per type holding that type's block. "Exactly the
//! block named by `type`" is checked once, here, and is a type everywhere after. Each
//! block's own checks (`validate`) sit next to its policy type, in its file.
//!
//! Adding a policy type touches three files: its own in `policy/` (block, checks,
//! evaluator), this one (a [`PolicyType`], a raw block and a [`PolicySpec`] variant),
//! and `policy/mod.rs` (the module and its `build` arm).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    AndConfig, BooleanAttributeConfig, BytesLimitingConfig, CompositeConfig, DropConfig,
    DynamicConfig, LatencyConfig, NotConfig, NumericAttributeConfig, OttlConditionConfig,
    ProbabilisticConfig, RateLimitingConfig, SpanCountConfig, StatusCodeConfig,
    StringAttributeConfig, TraceStateConfig,
};

/// A policy setting that is out of range or inconsistent: the config layer reports it
/// as an invalid field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` = {value}: expected {expected}")]
pub struct SpecError {
    /// Dotted path of the field, e.g. `policies[1].probabilistic.sampling_percentage`.
    pub field: String,
    /// The value found, as written.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl SpecError {
    /// A field, the value found and what was expected.
    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> SpecError {
        SpecError {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// The policy types tailsift implements (the `type:` key).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    /// Keep every trace.
    AlwaysSample,
    /// Keep traces slower than a threshold.
    Latency,
    /// Keep traces with a span of the given status codes.
    StatusCode,
    /// Keep a fixed share of traces, chosen by a hash of the trace id.
    Probabilistic,
    /// Keep traces with a string attribute matching values or regexes.
    StringAttribute,
    /// Keep traces with an integer attribute inside a range.
    NumericAttribute,
    /// Keep traces with a boolean attribute of a given value.
    BooleanAttribute,
    /// Keep traces whose span count is within bounds.
    SpanCount,
    /// Keep traces with a W3C tracestate entry of given values.
    TraceState,
    /// Keep traces every sub-policy keeps.
    And,
    /// Drop traces every sub-policy keeps, whatever the other policies vote.
    Drop,
    /// Keep traces while a spans-per-second budget lasts.
    RateLimiting,
    /// Keep traces while a bytes-per-second budget lasts.
    BytesLimiting,
    /// Keep traces its sub-policy does not keep.
    Not,
    /// Keep traces with a span carrying the W3C sampled flag.
    TraceFlags,
    /// Sub-policies in priority order, each with a share of a spans-per-second budget.
    Composite,
    /// Keep traces with a span or span event satisfying an OTTL condition.
    OttlCondition,
    /// Keep rare keys whole and thin common ones toward a goal throughput.
    Dynamic,
}

impl PolicyType {
    /// The `type:` string, which is also the name of the type's block.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::AlwaysSample => "always_sample",
            PolicyType::Latency => "latency",
            PolicyType::StatusCode => "status_code",
            PolicyType::Probabilistic => "probabilistic",
            PolicyType::StringAttribute => "string_attribute",
            PolicyType::NumericAttribute => "numeric_attribute",
            PolicyType::BooleanAttribute => "boolean_attribute",
            PolicyType::SpanCount => "span_count",
            PolicyType::TraceState => "trace_state",
            PolicyType::And => "and",
            PolicyType::Drop => "drop",
            PolicyType::RateLimiting => "rate_limiting",
            PolicyType::BytesLimiting => "bytes_limiting",
            PolicyType::Not => "not",
            PolicyType::TraceFlags => "trace_flags",
            PolicyType::Composite => "composite",
            PolicyType::OttlCondition => "ottl_condition",
            PolicyType::Dynamic => "dynamic",
        }
    }
}

/// One entry of `policies:`: its name, where its traces go, and what it is.
///
/// Read from (and written back to) the OTel shape, `name`, `type` and the block named
/// by `type` (none for `always_sample` and `trace_flags`); any other block is refused
/// when the config is parsed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawPolicy", into = "RawPolicy")]
pub struct PolicyConfig {
    /// Unique name; reported in metrics and in the `tailsift.policy` header of kept
    /// traces.
    pub name: String,
    /// The topic traces this policy keeps go to, instead of `kafka.output_topic`
    /// (a trace several policies keep goes to the first one's). Top-level policies
    /// only.
    pub topic: Option<String>,
    /// The type and its block.
    pub spec: PolicySpec,
}

/// A policy's type with its block: one variant per [`PolicyType`].
#[derive(Debug, Clone)]
pub enum PolicySpec {
    /// `always_sample` (no block).
    AlwaysSample,
    /// `latency`.
    Latency(LatencyConfig),
    /// `status_code`.
    StatusCode(StatusCodeConfig),
    /// `probabilistic`.
    Probabilistic(ProbabilisticConfig),
    /// `string_attribute`.
    StringAttribute(StringAttributeConfig),
    /// `numeric_attribute`.
    NumericAttribute(NumericAttributeConfig),
    /// `boolean_attribute`.
    BooleanAttribute(BooleanAttributeConfig),
    /// `span_count`.
    SpanCount(SpanCountConfig),
    /// `trace_state`.
    TraceState(TraceStateConfig),
    /// `and`.
    And(AndConfig),
    /// `drop`.
    Drop(DropConfig),
    /// `rate_limiting`.
    RateLimiting(RateLimitingConfig),
    /// `bytes_limiting`.
    BytesLimiting(BytesLimitingConfig),
    /// `not`.
    Not(NotConfig),
    /// `trace_flags` (no block).
    TraceFlags,
    /// `composite`.
    Composite(CompositeConfig),
    /// `ottl_condition`.
    OttlCondition(OttlConditionConfig),
    /// `dynamic`.
    Dynamic(DynamicConfig),
}

impl PolicySpec {
    /// The `type:` this is.
    pub fn kind(&self) -> PolicyType {
        match self {
            PolicySpec::AlwaysSample => PolicyType::AlwaysSample,
            PolicySpec::Latency(_) => PolicyType::Latency,
            PolicySpec::StatusCode(_) => PolicyType::StatusCode,
            PolicySpec::Probabilistic(_) => PolicyType::Probabilistic,
            PolicySpec::StringAttribute(_) => PolicyType::StringAttribute,
            PolicySpec::NumericAttribute(_) => PolicyType::NumericAttribute,
            PolicySpec::BooleanAttribute(_) => PolicyType::BooleanAttribute,
            PolicySpec::SpanCount(_) => PolicyType::SpanCount,
            PolicySpec::TraceState(_) => PolicyType::TraceState,
            PolicySpec::And(_) => PolicyType::And,
            PolicySpec::Drop(_) => PolicyType::Drop,
            PolicySpec::RateLimiting(_) => PolicyType::RateLimiting,
            PolicySpec::BytesLimiting(_) => PolicyType::BytesLimiting,
            PolicySpec::Not(_) => PolicyType::Not,
            PolicySpec::TraceFlags => PolicyType::TraceFlags,
            PolicySpec::Composite(_) => PolicyType::Composite,
            PolicySpec::OttlCondition(_) => PolicyType::OttlCondition,
            PolicySpec::Dynamic(_) => PolicyType::Dynamic,
        }
    }

    /// Checks the block; `at` is the policy's path (`policies[0]`).
    fn validate(&self, at: &str) -> Result<(), SpecError> {
        let block = format!("{at}.{}", self.kind().as_str());
        match self {
            PolicySpec::AlwaysSample | PolicySpec::TraceFlags => Ok(()),
            PolicySpec::Latency(c) => c.validate(&block),
            PolicySpec::StatusCode(c) => c.validate(&block),
            PolicySpec::Probabilistic(c) => c.validate(&block),
            PolicySpec::StringAttribute(c) => c.validate(&block),
            PolicySpec::NumericAttribute(c) => c.validate(&block),
            PolicySpec::BooleanAttribute(c) => c.validate(&block),
            PolicySpec::SpanCount(c) => c.validate(&block),
            PolicySpec::TraceState(c) => c.validate(&block),
            PolicySpec::And(c) => c.validate(&block),
            PolicySpec::Drop(c) => c.validate(&block),
            PolicySpec::RateLimiting(c) => c.validate(&block),
            PolicySpec::BytesLimiting(c) => c.validate(&block),
            PolicySpec::Not(c) => c.validate(&block),
            PolicySpec::Composite(c) => c.validate(&block),
            PolicySpec::OttlCondition(c) => c.validate(&block),
            PolicySpec::Dynamic(c) => c.validate(&block),
        }
    }

    /// The sub-policies of a combining type, in list order, with the field holding
    /// them (relative to the policy).
    pub fn subs(&self) -> Option<(&'static str, &[PolicyConfig])> {
        match self {
            PolicySpec::And(a) => Some(("and.and_sub_policy", &a.and_sub_policy)),
            PolicySpec::Drop(d) => Some(("drop.drop_sub_policy", &d.drop_sub_policy)),
            PolicySpec::Not(n) => Some((
                "not.not_sub_policy",
                std::slice::from_ref(&*n.not_sub_policy),
            )),
            PolicySpec::Composite(c) => {
                Some(("composite.composite_sub_policy", &c.composite_sub_policy))
            }
            _ => None,
        }
    }
}

impl PolicyConfig {
    /// The `type:` of this policy.
    pub fn kind(&self) -> PolicyType {
        self.spec.kind()
    }

    /// Calls `f(field path, policy)` for this policy (at `at`) and every sub-policy
    /// under it.
    fn walk(&self, at: &str, f: &mut dyn FnMut(&str, &PolicyConfig)) {
        f(at, self);
        if let Some((field, list)) = self.spec.subs() {
            for (j, s) in list.iter().enumerate() {
                s.walk(&format!("{at}.{field}[{j}]"), f);
            }
        }
    }

    /// Whether this policy or one of its sub-policies is of type `kind`.
    pub fn uses(&self, kind: PolicyType) -> bool {
        let mut found = false;
        self.walk("", &mut |_, p| found |= p.kind() == kind);
        found
    }
}

/// Validates every policy and the rules between them.
///
/// # Errors
/// The first field out of range, with its path, value and what was expected.
pub fn validate_all(policies: &[PolicyConfig]) -> Result<(), SpecError> {
    if policies.is_empty() {
        return Err(SpecError::invalid(
            "policies",
            "[]",
            "at least one policy (e.g. `- {name: everything, type: always_sample}`)",
        ));
    }
    let attribute_policies = policies
        .iter()
        .filter(|p| {
            matches!(
                p.spec,
                PolicySpec::StringAttribute(_)
                    | PolicySpec::NumericAttribute(_)
                    | PolicySpec::BooleanAttribute(_)
                    | PolicySpec::TraceState(_)
                    | PolicySpec::OttlCondition(_)
            )
        })
        .count();
    if attribute_policies > crate::codec::MAX_MATCHERS {
        return Err(SpecError::invalid(
            "policies",
            format!("{attribute_policies} attribute policies"),
            format!("at most {}", crate::codec::MAX_MATCHERS),
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if p.name.trim().is_empty() {
            return Err(SpecError::invalid(
                format!("{at}.name"),
                "\"\"",
                "a non-empty, unique name",
            ));
        }
        if let Some(j) = policies[..i].iter().position(|q| q.name == p.name) {
            return Err(SpecError::invalid(
                format!("{at}.name"),
                &p.name,
                format!("a unique name (policies[{j}] has it too)"),
            ));
        }
        if p.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(SpecError::invalid(
                format!("{at}.topic"),
                "\"\"",
                "a topic name, or no `topic:` for the output topic",
            ));
        }
        p.spec.validate(&at)?;
    }
    let mut dynamic = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        p.walk(&format!("policies[{i}]"), &mut |at, q| {
            if q.kind() == PolicyType::Dynamic {
                dynamic.push(at.to_string());
            }
        });
    }
    if let Some(second) = dynamic.get(1) {
        return Err(SpecError::invalid(
            format!("{second}.type"),
            "dynamic",
            format!(
                "one `dynamic` policy per configuration ({} is one)",
                dynamic[0]
            ),
        ));
    }
    Ok(())
}

/// Policy types that hold sub-policies of their own (which `and` and `drop` may not
/// hold).
pub(super) const COMBINING: &[PolicyType] =
    &[PolicyType::And, PolicyType::Drop, PolicyType::Composite];

/// Sub-policies of `and`, `drop`, `not` and `composite` at `at`: at least one, no
/// topic, none of a type in `nested`, each valid.
pub(super) fn validate_subs(
    at: &str,
    subs: &[PolicyConfig],
    nested: &[PolicyType],
) -> Result<(), SpecError> {
    if subs.is_empty() {
        return Err(SpecError::invalid(at, "[]", "at least one sub-policy"));
    }
    for (j, sub) in subs.iter().enumerate() {
        let sub_at = format!("{at}[{j}]");
        if let Some(t) = &sub.topic {
            return Err(SpecError::invalid(
                format!("{sub_at}.topic"),
                t,
                "no topic on a sub-policy (put it on the top-level policy)",
            ));
        }
        if nested.contains(&sub.kind()) {
            let allowed: Vec<&str> = nested.iter().map(|k| k.as_str()).collect();
            return Err(SpecError::invalid(
                format!("{sub_at}.type"),
                sub.kind().as_str(),
                format!(
                    "a policy type other than {} (no deeper nesting)",
                    allowed.join(", ")
                ),
            ));
        }
        sub.spec.validate(&sub_at)?;
    }
    Ok(())
}

/// A rate (spans or bytes per second) must be above 0.
pub(super) fn check_rate(field: &str, rate: u64) -> Result<(), SpecError> {
    if rate == 0 {
        Err(SpecError::invalid(field, 0, "a rate above 0"))
    } else {
        Ok(())
    }
}

/// A list of values to match must not be empty.
pub(super) fn check_values(field: &str, values: &[String]) -> Result<(), SpecError> {
    if values.is_empty() {
        Err(SpecError::invalid(field, "[]", "at least one value"))
    } else {
        Ok(())
    }
}

/// An attribute key must not be empty.
pub(super) fn check_key(field: &str, key: &str) -> Result<(), SpecError> {
    if key.is_empty() {
        Err(SpecError::invalid(
            field,
            "\"\"",
            "a non-empty attribute key",
        ))
    } else {
        Ok(())
    }
}

/// One entry of `policies:` as written: `name`, `type` and every type's block, each
/// optional. Only [`PolicyConfig`]'s serde conversions use it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(rename = "type")]
    kind: PolicyType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency: Option<LatencyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status_code: Option<StatusCodeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probabilistic: Option<ProbabilisticConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    string_attribute: Option<StringAttributeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    numeric_attribute: Option<NumericAttributeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boolean_attribute: Option<BooleanAttributeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    span_count: Option<SpanCountConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_state: Option<TraceStateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    and: Option<AndConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drop: Option<DropConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limiting: Option<RateLimitingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes_limiting: Option<BytesLimitingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not: Option<NotConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    composite: Option<CompositeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ottl_condition: Option<OttlConditionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dynamic: Option<DynamicConfig>,
}

impl RawPolicy {
    /// The blocks present.
    fn present(&self) -> impl Iterator<Item = &'static str> {
        [
            ("latency", self.latency.is_some()),
            ("status_code", self.status_code.is_some()),
            ("probabilistic", self.probabilistic.is_some()),
            ("string_attribute", self.string_attribute.is_some()),
            ("numeric_attribute", self.numeric_attribute.is_some()),
            ("boolean_attribute", self.boolean_attribute.is_some()),
            ("span_count", self.span_count.is_some()),
            ("trace_state", self.trace_state.is_some()),
            ("and", self.and.is_some()),
            ("drop", self.drop.is_some()),
            ("rate_limiting", self.rate_limiting.is_some()),
            ("bytes_limiting", self.bytes_limiting.is_some()),
            ("not", self.not.is_some()),
            ("composite", self.composite.is_some()),
            ("ottl_condition", self.ottl_condition.is_some()),
            ("dynamic", self.dynamic.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
    }
}

/// Why a `policies:` entry does not have the shape of its type, naming the policy;
/// serde adds the list's path and the entry's line.
#[derive(Debug)]
struct ShapeError(String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<RawPolicy> for PolicyConfig {
    type Error = ShapeError;

    fn try_from(mut raw: RawPolicy) -> Result<PolicyConfig, ShapeError> {
        let ty = raw.kind.as_str();
        let name = raw.name.clone();
        fn take<T>(b: &mut Option<T>, name: &str, ty: &str) -> Result<T, ShapeError> {
            b.take().ok_or_else(|| {
                ShapeError(format!(
                    "policy `{name}`, field `{ty}` = nothing: expected a `{ty}:` block for a policy of type `{ty}`"
                ))
            })
        }
        let spec = match raw.kind {
            PolicyType::AlwaysSample => PolicySpec::AlwaysSample,
            PolicyType::TraceFlags => PolicySpec::TraceFlags,
            PolicyType::Latency => PolicySpec::Latency(take(&mut raw.latency, &name, ty)?),
            PolicyType::StatusCode => {
                PolicySpec::StatusCode(take(&mut raw.status_code, &name, ty)?)
            }
            PolicyType::Probabilistic => {
                PolicySpec::Probabilistic(take(&mut raw.probabilistic, &name, ty)?)
            }
            PolicyType::StringAttribute => {
                PolicySpec::StringAttribute(take(&mut raw.string_attribute, &name, ty)?)
            }
            PolicyType::NumericAttribute => {
                PolicySpec::NumericAttribute(take(&mut raw.numeric_attribute, &name, ty)?)
            }
            PolicyType::BooleanAttribute => {
                PolicySpec::BooleanAttribute(take(&mut raw.boolean_attribute, &name, ty)?)
            }
            PolicyType::SpanCount => PolicySpec::SpanCount(take(&mut raw.span_count, &name, ty)?),
            PolicyType::TraceState => {
                PolicySpec::TraceState(take(&mut raw.trace_state, &name, ty)?)
            }
            PolicyType::And => PolicySpec::And(take(&mut raw.and, &name, ty)?),
            PolicyType::Drop => PolicySpec::Drop(take(&mut raw.drop, &name, ty)?),
            PolicyType::RateLimiting => {
                PolicySpec::RateLimiting(take(&mut raw.rate_limiting, &name, ty)?)
            }
            PolicyType::BytesLimiting => {
                PolicySpec::BytesLimiting(take(&mut raw.bytes_limiting, &name, ty)?)
            }
            PolicyType::Not => PolicySpec::Not(take(&mut raw.not, &name, ty)?),
            PolicyType::Composite => PolicySpec::Composite(take(&mut raw.composite, &name, ty)?),
            PolicyType::OttlCondition => {
                PolicySpec::OttlCondition(take(&mut raw.ottl_condition, &name, ty)?)
            }
            PolicyType::Dynamic => PolicySpec::Dynamic(take(&mut raw.dynamic, &name, ty)?),
        };
        if let Some(other) = raw.present().next() {
            return Err(ShapeError(format!(
                "policy `{name}`, field `{other}` = a block: expected no `{other}` block on a policy of type `{ty}`"
            )));
        }
        Ok(PolicyConfig {
            name: raw.name,
            topic: raw.topic,
            spec,
        })
    }
}

impl From<PolicyConfig> for RawPolicy {
    fn from(p: PolicyConfig) -> RawPolicy {
        let mut raw = RawPolicy {
            name: p.name,
            kind: p.spec.kind(),
            topic: p.topic,
            latency: None,
            status_code: None,
            probabilistic: None,
            string_attribute: None,
            numeric_attribute: None,
            boolean_attribute: None,
            span_count: None,
            trace_state: None,
            and: None,
            drop: None,
            rate_limiting: None,
            bytes_limiting: None,
            not: None,
            composite: None,
            ottl_condition: None,
            dynamic: None,
        };
        match p.spec {
            PolicySpec::AlwaysSample | PolicySpec::TraceFlags => {}
            PolicySpec::Latency(c) => raw.latency = Some(c),
            PolicySpec::StatusCode(c) => raw.status_code = Some(c),
            PolicySpec::Probabilistic(c) => raw.probabilistic = Some(c),
            PolicySpec::StringAttribute(c) => raw.string_attribute = Some(c),
            PolicySpec::NumericAttribute(c) => raw.numeric_attribute = Some(c),
            PolicySpec::BooleanAttribute(c) => raw.boolean_attribute = Some(c),
            PolicySpec::SpanCount(c) => raw.span_count = Some(c),
            PolicySpec::TraceState(c) => raw.trace_state = Some(c),
            PolicySpec::And(c) => raw.and = Some(c),
            PolicySpec::Drop(c) => raw.drop = Some(c),
            PolicySpec::RateLimiting(c) => raw.rate_limiting = Some(c),
            PolicySpec::BytesLimiting(c) => raw.bytes_limiting = Some(c),
            PolicySpec::Not(c) => raw.not = Some(c),
            PolicySpec::Composite(c) => raw.composite = Some(c),
            PolicySpec::OttlCondition(c) => raw.ottl_condition = Some(c),
            PolicySpec::Dynamic(c) => raw.dynamic = Some(c),
        }
        raw
    }
}
