//! The `policies:` list, in the OpenTelemetry Collector `tail_sampling` processor's
//! shape: `name`, `type`, and a block named after the type.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The policy types tailsift implements.
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
    /// The `type:` string.
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

/// One entry of `policies:`. Exactly the block named by `type` must be present
/// (none for `always_sample`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name; reported in metrics and in the `tailsift.policy` header of kept
    /// traces.
    pub name: String,
    /// Which policy this is.
    #[serde(rename = "type")]
    pub kind: PolicyType,
    /// The topic traces this policy keeps go to, instead of `kafka.output_topic`
    /// (a trace several policies keep goes to the first one's). Top-level policies
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Block for `type: latency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyConfig>,
    /// Block for `type: status_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<StatusCodeConfig>,
    /// Block for `type: probabilistic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilistic: Option<ProbabilisticConfig>,
    /// Block for `type: string_attribute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_attribute: Option<StringAttributeConfig>,
    /// Block for `type: numeric_attribute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_attribute: Option<NumericAttributeConfig>,
    /// Block for `type: boolean_attribute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    /// Block for `type: span_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_count: Option<SpanCountConfig>,
    /// Block for `type: trace_state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_state: Option<TraceStateConfig>,
    /// Block for `type: and`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and: Option<AndConfig>,
    /// Block for `type: drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropConfig>,
    /// Block for `type: rate_limiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiting: Option<RateLimitingConfig>,
    /// Block for `type: bytes_limiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_limiting: Option<BytesLimitingConfig>,
    /// Block for `type: not`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<NotConfig>,
    /// Block for `type: composite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<CompositeConfig>,
    /// Block for `type: ottl_condition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ottl_condition: Option<OttlConditionConfig>,
    /// Block for `type: dynamic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicConfig>,
}

/// `dynamic`: per key (the values of `key_fields` on the root span), keep 1 trace in
/// a rate recomputed every `adjustment_interval` so that kept spans approach
/// `goal_spans_per_second`: rare keys are kept whole, common ones thinned. Per
/// instance; one `dynamic` policy per configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicConfig {
    /// The fields forming the key: `name`, `kind`, `status.code`, or an attribute key
    /// (looked up on the span, then its resource), e.g. `[http.route, status.code]`.
    pub key_fields: Vec<String>,
    /// Kept spans per second to aim at, per instance.
    pub goal_spans_per_second: u64,
    /// How often the rates are recomputed from the last interval's traffic.
    #[serde(default = "default_adjustment_interval")]
    pub adjustment_interval: super::ConfigDuration,
    /// Distinct keys tracked per interval; traces of further keys share one rate.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_adjustment_interval() -> super::ConfigDuration {
    super::ConfigDuration::from_millis(15_000)
}

fn default_max_keys() -> usize {
    10_000
}

/// `ottl_condition`: keep traces where a span satisfies one of `span` or a span event
/// one of `spanevent` (OTTL conditions; the supported subset is in the README).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OttlConditionConfig {
    /// `ignore`, `silent` or `propagate`; accepted for OTel compatibility (the subset
    /// cannot fail at evaluation, so there is no error to handle).
    #[serde(default)]
    pub error_mode: Option<String>,
    /// Conditions on spans.
    #[serde(default)]
    pub span: Vec<String>,
    /// Conditions on span events.
    #[serde(default)]
    pub spanevent: Vec<String>,
}

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
        let shares =
            crate::policy::composite_shares(&names, &allocation, self.max_total_spans_per_second);
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

/// `not`: keep traces that its one sub-policy does not keep (e.g. everything but the
/// health checks, inside an `and`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    /// The sub-policy (not `and`, `drop` or `not`).
    pub not_sub_policy: Box<PolicyConfig>,
}

/// `rate_limiting`: keep traces while a token bucket of spans allows: it refills at
/// `spans_per_second` and holds at most `burst_capacity` (default: one second's
/// worth). Per instance: N instances keep up to N times the rate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// Spans per second.
    pub spans_per_second: u64,
    /// Most spans the bucket holds; 0 or absent: `spans_per_second`.
    #[serde(default)]
    pub burst_capacity: u64,
}

/// `bytes_limiting`: as `rate_limiting`, counting the traces' encoded bytes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BytesLimitingConfig {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// Most bytes the bucket holds; 0 or absent: `bytes_per_second`.
    #[serde(default)]
    pub burst_capacity: u64,
}

/// `drop`: drop traces that every sub-policy would keep, first and finally: a trace
/// this policy drops is dropped whatever any other policy votes (as in OTel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    /// The sub-policies, all of which must vote to sample for the trace to be dropped.
    pub drop_sub_policy: Vec<PolicyConfig>,
}

/// `and`: keep traces that every sub-policy keeps. Sub-policies have the same shape
/// as top-level ones but may not be `and` themselves (as in OTel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    /// The sub-policies, all of which must vote to sample.
    pub and_sub_policy: Vec<PolicyConfig>,
}

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

/// `status_code`: keep traces with at least one span whose status is listed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// Any of `OK`, `ERROR`, `UNSET`.
    pub status_codes: Vec<String>,
}

/// `probabilistic`: keep `sampling_percentage` percent of traces, chosen by a hash
/// of the trace id, so every instance (and the OTel processor, with the same salt)
/// makes the same choice.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    /// 0 to 100.
    pub sampling_percentage: f64,
    /// Salt mixed into the hash; defaults to the OTel processor's default.
    #[serde(default)]
    pub hash_salt: Option<String>,
}

/// `string_attribute`: keep traces where a span or its resource has attribute `key`
/// with one of `values`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StringAttributeConfig {
    /// Attribute key, looked up on spans and on their resource.
    pub key: String,
    /// Exact values, or regular expressions when `enabled_regex_matching` is true.
    pub values: Vec<String>,
    /// Treat `values` as regular expressions (unanchored, as in OTel).
    #[serde(default)]
    pub enabled_regex_matching: bool,
    /// Accepted for OTel compatibility; tailsift's regexes need no result cache.
    #[serde(default)]
    pub cache_max_size: Option<usize>,
    /// Keep traces where no span or resource matches instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `numeric_attribute`: keep traces where a span or its resource has integer
/// attribute `key` within `[min_value, max_value]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NumericAttributeConfig {
    /// Attribute key, looked up on spans and on their resource.
    pub key: String,
    /// Inclusive lower bound; absent: none.
    #[serde(default)]
    pub min_value: Option<i64>,
    /// Inclusive upper bound; absent: none.
    #[serde(default)]
    pub max_value: Option<i64>,
    /// Keep traces where no span or resource has a value in range instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `boolean_attribute`: keep traces where a span or its resource has boolean
/// attribute `key` equal to `value`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    /// Attribute key, looked up on spans and on their resource.
    pub key: String,
    /// The value to match.
    pub value: bool,
    /// Keep traces where no span or resource has it instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `span_count`: keep traces with at least `min_spans` spans and, when `max_spans` is
/// set (non-zero), at most that many (both inclusive, as in OTel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpanCountConfig {
    /// Inclusive lower bound.
    pub min_spans: u32,
    /// Inclusive upper bound; `0` or absent: none.
    #[serde(default)]
    pub max_spans: u32,
}

/// `trace_state`: keep traces where a span's W3C `tracestate` has entry `key` with
/// one of `values`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStateConfig {
    /// The tracestate entry's key (e.g. a vendor key).
    pub key: String,
    /// Exact values.
    pub values: Vec<String>,
}

impl PolicyConfig {
    /// The policy as `tailsift check` prints it: name, type and its block with
    /// defaults filled in, one line each, sub-policies indented below their parent.
    pub fn describe(&self, indent: usize, out: &mut String) {
        use std::fmt::Write as _;
        let pad = " ".repeat(indent);
        let _ = write!(out, "{pad}- {} [{}]", self.name, self.kind.as_str());
        if let Some(t) = &self.topic {
            let _ = write!(out, " -> topic {t}");
        }
        let subs: Option<(Vec<&PolicyConfig>, String)> = match (&self.and, &self.drop, &self.not) {
            (Some(a), _, _) => Some((a.and_sub_policy.iter().collect(), "all of".into())),
            (_, Some(d), _) => Some((
                d.drop_sub_policy.iter().collect(),
                "drops a trace when all of".into(),
            )),
            (_, _, Some(n)) => Some((vec![&*n.not_sub_policy], "none of".into())),
            _ => self.composite.as_ref().map(|c| {
                let with_shares = c.with_shares();
                let each: Vec<String> = with_shares
                    .iter()
                    .map(|(p, s)| format!("{} {s}", p.name))
                    .collect();
                (
                    with_shares.into_iter().map(|(p, _)| p).collect(),
                    format!(
                        "the first of, within {} spans/s (spans/s each: {})",
                        c.max_total_spans_per_second,
                        each.join(", ")
                    ),
                )
            }),
        };
        if let Some((subs, what)) = subs {
            let _ = writeln!(out, " {what}:");
            for sub in subs {
                sub.describe(indent + 4, out);
            }
            return;
        }
        let block = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get(self.kind.as_str()).cloned());
        match block {
            Some(b) => {
                let _ = writeln!(out, " {b}");
            }
            None => out.push('\n'),
        }
    }
}

/// Validates every policy and the rules between them.
pub(super) fn validate_all(policies: &[PolicyConfig]) -> Result<(), ConfigError> {
    if policies.is_empty() {
        return Err(ConfigError::invalid(
            "policies",
            "[]",
            "at least one policy (e.g. `- {name: everything, type: always_sample}`)",
        ));
    }
    let attribute_policies = policies
        .iter()
        .filter(|p| {
            matches!(
                p.kind,
                PolicyType::StringAttribute
                    | PolicyType::NumericAttribute
                    | PolicyType::BooleanAttribute
                    | PolicyType::TraceState
                    | PolicyType::OttlCondition
            )
        })
        .count();
    if attribute_policies > crate::codec::MAX_MATCHERS {
        return Err(ConfigError::invalid(
            "policies",
            format!("{attribute_policies} attribute policies"),
            format!("at most {}", crate::codec::MAX_MATCHERS),
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if p.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                "\"\"",
                "a non-empty, unique name",
            ));
        }
        if let Some(j) = policies[..i].iter().position(|q| q.name == p.name) {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                &p.name,
                format!("a unique name (policies[{j}] has it too)"),
            ));
        }
        if p.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid(
                format!("{at}.topic"),
                "\"\"",
                "a topic name, or no `topic:` for the output topic",
            ));
        }
        p.validate(&at)?;
    }
    let mut dynamic = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        p.walk(&format!("policies[{i}]"), &mut |at, q| {
            if q.kind == PolicyType::Dynamic {
                dynamic.push(at.to_string());
            }
        });
    }
    if let Some(second) = dynamic.get(1) {
        return Err(ConfigError::invalid(
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

impl PolicyConfig {
    fn blocks(&self) -> [(&'static str, bool); 16] {
        [
            ("dynamic", self.dynamic.is_some()),
            ("ottl_condition", self.ottl_condition.is_some()),
            ("composite", self.composite.is_some()),
            ("not", self.not.is_some()),
            ("rate_limiting", self.rate_limiting.is_some()),
            ("bytes_limiting", self.bytes_limiting.is_some()),
            ("drop", self.drop.is_some()),
            ("and", self.and.is_some()),
            ("trace_state", self.trace_state.is_some()),
            ("boolean_attribute", self.boolean_attribute.is_some()),
            ("span_count", self.span_count.is_some()),
            ("latency", self.latency.is_some()),
            ("status_code", self.status_code.is_some()),
            ("probabilistic", self.probabilistic.is_some()),
            ("string_attribute", self.string_attribute.is_some()),
            ("numeric_attribute", self.numeric_attribute.is_some()),
        ]
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let ty = self.kind.as_str();
        for (block, present) in self.blocks() {
            if present && block != ty {
                return Err(ConfigError::invalid(
                    format!("{at}.{block}"),
                    "a block",
                    format!("no `{block}` block on a policy of type `{ty}`"),
                ));
            }
        }
        let missing = || {
            ConfigError::invalid(
                format!("{at}.{ty}"),
                "nothing",
                format!("a `{ty}:` block for a policy of type `{ty}`"),
            )
        };
        match self.kind {
            PolicyType::AlwaysSample | PolicyType::TraceFlags => Ok(()),
            PolicyType::Latency => {
                let c = self.latency.as_ref().ok_or_else(missing)?;
                if c.threshold_ms < 0 {
                    return Err(ConfigError::invalid(
                        format!("{at}.latency.threshold_ms"),
                        c.threshold_ms,
                        "a number of milliseconds >= 0",
                    ));
                }
                if c.upper_threshold_ms != 0 && c.upper_threshold_ms <= c.threshold_ms {
                    return Err(ConfigError::invalid(
                        format!("{at}.latency.upper_threshold_ms"),
                        c.upper_threshold_ms,
                        format!(
                            "0 (no upper bound) or above threshold_ms ({}): the lower bound is exclusive then, so nothing would match",
                            c.threshold_ms
                        ),
                    ));
                }
                Ok(())
            }
            PolicyType::StatusCode => {
                let c = self.status_code.as_ref().ok_or_else(missing)?;
                if c.status_codes.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{at}.status_code.status_codes"),
                        "[]",
                        "one or more of OK, ERROR, UNSET",
                    ));
                }
                for (j, s) in c.status_codes.iter().enumerate() {
                    if !matches!(s.as_str(), "OK" | "ERROR" | "UNSET") {
                        return Err(ConfigError::invalid(
                            format!("{at}.status_code.status_codes[{j}]"),
                            s,
                            "one of OK, ERROR, UNSET",
                        ));
                    }
                }
                Ok(())
            }
            PolicyType::Probabilistic => {
                let c = self.probabilistic.as_ref().ok_or_else(missing)?;
                if !(0.0..=100.0).contains(&c.sampling_percentage) {
                    return Err(ConfigError::invalid(
                        format!("{at}.probabilistic.sampling_percentage"),
                        c.sampling_percentage,
                        "a percentage from 0 to 100",
                    ));
                }
                Ok(())
            }
            PolicyType::StringAttribute => {
                let c = self.string_attribute.as_ref().ok_or_else(missing)?;
                check_key(&format!("{at}.string_attribute.key"), &c.key)?;
                check_values(&format!("{at}.string_attribute.values"), &c.values)?;
                if c.enabled_regex_matching {
                    for (j, v) in c.values.iter().enumerate() {
                        if let Err(e) = regex::Regex::new(v) {
                            return Err(ConfigError::invalid(
                                format!("{at}.string_attribute.values[{j}]"),
                                format!("{v:?}"),
                                format!("a valid regular expression ({e})"),
                            ));
                        }
                    }
                }
                Ok(())
            }
            PolicyType::NumericAttribute => {
                let c = self.numeric_attribute.as_ref().ok_or_else(missing)?;
                check_key(&format!("{at}.numeric_attribute.key"), &c.key)?;
                match (c.min_value, c.max_value) {
                    (None, None) => Err(ConfigError::invalid(
                        format!("{at}.numeric_attribute"),
                        "no bounds",
                        "min_value, max_value or both",
                    )),
                    (Some(lo), Some(hi)) if lo > hi => Err(ConfigError::invalid(
                        format!("{at}.numeric_attribute.max_value"),
                        hi,
                        format!("at least min_value ({lo})"),
                    )),
                    _ => Ok(()),
                }
            }
            PolicyType::BooleanAttribute => {
                let c = self.boolean_attribute.as_ref().ok_or_else(missing)?;
                check_key(&format!("{at}.boolean_attribute.key"), &c.key)
            }
            PolicyType::And => {
                let c = self.and.as_ref().ok_or_else(missing)?;
                validate_subs(
                    &format!("{at}.and.and_sub_policy"),
                    &c.and_sub_policy,
                    COMBINING,
                )
            }
            PolicyType::RateLimiting => {
                let c = self.rate_limiting.as_ref().ok_or_else(missing)?;
                check_rate(
                    &format!("{at}.rate_limiting.spans_per_second"),
                    c.spans_per_second,
                )
            }
            PolicyType::BytesLimiting => {
                let c = self.bytes_limiting.as_ref().ok_or_else(missing)?;
                check_rate(
                    &format!("{at}.bytes_limiting.bytes_per_second"),
                    c.bytes_per_second,
                )
            }
            PolicyType::Not => {
                let c = self.not.as_ref().ok_or_else(missing)?;
                validate_subs(
                    &format!("{at}.not.not_sub_policy"),
                    std::slice::from_ref(&c.not_sub_policy),
                    &[PolicyType::And, PolicyType::Drop, PolicyType::Not],
                )
            }
            PolicyType::Drop => {
                let c = self.drop.as_ref().ok_or_else(missing)?;
                validate_subs(
                    &format!("{at}.drop.drop_sub_policy"),
                    &c.drop_sub_policy,
                    COMBINING,
                )
            }
            PolicyType::Composite => {
                let c = self.composite.as_ref().ok_or_else(missing)?;
                self.validate_composite(at, c)
            }
            PolicyType::Dynamic => {
                let c = self.dynamic.as_ref().ok_or_else(missing)?;
                if c.key_fields.is_empty() || c.key_fields.iter().any(|f| f.is_empty()) {
                    return Err(ConfigError::invalid(
                        format!("{at}.dynamic.key_fields"),
                        format!("{:?}", c.key_fields),
                        "one or more non-empty fields, e.g. [http.route, status.code]",
                    ));
                }
                check_rate(
                    &format!("{at}.dynamic.goal_spans_per_second"),
                    c.goal_spans_per_second,
                )?;
                if c.adjustment_interval.0 < std::time::Duration::from_millis(100) {
                    return Err(ConfigError::invalid(
                        format!("{at}.dynamic.adjustment_interval"),
                        c.adjustment_interval,
                        "at least 100ms",
                    ));
                }
                Ok(())
            }
            PolicyType::OttlCondition => {
                let c = self.ottl_condition.as_ref().ok_or_else(missing)?;
                let at = format!("{at}.ottl_condition");
                if let Some(m) = &c.error_mode {
                    if !matches!(m.as_str(), "ignore" | "silent" | "propagate") {
                        return Err(ConfigError::invalid(
                            format!("{at}.error_mode"),
                            m,
                            "ignore, silent or propagate",
                        ));
                    }
                }
                if c.span.is_empty() && c.spanevent.is_empty() {
                    return Err(ConfigError::invalid(
                        at,
                        "no conditions",
                        "at least one condition under `span` or `spanevent`",
                    ));
                }
                crate::policy::OttlCondition::conditions(c)
                    .map(drop)
                    .map_err(|(field, i, e)| {
                        let list = if field == "span" {
                            &c.span
                        } else {
                            &c.spanevent
                        };
                        ConfigError::invalid(
                            format!("{at}.{field}[{i}]"),
                            format!("{:?}", list[i]),
                            format!("an OTTL condition in the supported subset ({e})"),
                        )
                    })
            }
            PolicyType::TraceState => {
                let c = self.trace_state.as_ref().ok_or_else(missing)?;
                check_key(&format!("{at}.trace_state.key"), &c.key)?;
                check_values(&format!("{at}.trace_state.values"), &c.values)
            }
            PolicyType::SpanCount => {
                let c = self.span_count.as_ref().ok_or_else(missing)?;
                if c.max_spans != 0 && c.max_spans < c.min_spans {
                    return Err(ConfigError::invalid(
                        format!("{at}.span_count.max_spans"),
                        c.max_spans,
                        format!("0 (no upper bound) or at least min_spans ({})", c.min_spans),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl PolicyConfig {
    /// Calls `f(field path, policy)` for this policy (at `at`) and every sub-policy
    /// under it.
    fn walk(&self, at: &str, f: &mut dyn FnMut(&str, &PolicyConfig)) {
        f(at, self);
        let subs: Vec<(&str, &[PolicyConfig])> = [
            self.and
                .as_ref()
                .map(|a| ("and.and_sub_policy", &a.and_sub_policy[..])),
            self.drop
                .as_ref()
                .map(|d| ("drop.drop_sub_policy", &d.drop_sub_policy[..])),
            self.not.as_ref().map(|n| {
                (
                    "not.not_sub_policy",
                    std::slice::from_ref(&*n.not_sub_policy),
                )
            }),
            self.composite.as_ref().map(|c| {
                (
                    "composite.composite_sub_policy",
                    &c.composite_sub_policy[..],
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (field, list) in subs {
            for (j, s) in list.iter().enumerate() {
                s.walk(&format!("{at}.{field}[{j}]"), f);
            }
        }
    }

    /// Whether this policy or one of its sub-policies is of type `kind`.
    pub fn uses(&self, kind: PolicyType) -> bool {
        let mut found = false;
        self.walk("", &mut |_, p| found |= p.kind == kind);
        found
    }

    fn validate_composite(&self, at: &str, c: &CompositeConfig) -> Result<(), ConfigError> {
        let at = format!("{at}.composite");
        check_rate(
            &format!("{at}.max_total_spans_per_second"),
            c.max_total_spans_per_second,
        )?;
        validate_subs(
            &format!("{at}.composite_sub_policy"),
            &c.composite_sub_policy,
            &[PolicyType::Composite, PolicyType::Drop],
        )?;
        let names: Vec<&str> = c
            .composite_sub_policy
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let known = |field: String, name: &str| {
            if names.contains(&name) {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    field,
                    name,
                    format!("the name of a composite_sub_policy ({})", names.join(", ")),
                ))
            }
        };
        for (j, n) in c.policy_order.iter().enumerate() {
            known(format!("{at}.policy_order[{j}]"), n)?;
            if c.policy_order[..j].contains(n) {
                return Err(ConfigError::invalid(
                    format!("{at}.policy_order[{j}]"),
                    n,
                    "each sub-policy named once",
                ));
            }
        }
        let mut total = 0u64;
        for (j, a) in c.rate_allocation.iter().enumerate() {
            known(format!("{at}.rate_allocation[{j}].policy"), &a.policy)?;
            total += u64::from(a.percent);
        }
        if total > 100 {
            return Err(ConfigError::invalid(
                format!("{at}.rate_allocation"),
                format!("{total}% in all"),
                "percentages adding up to at most 100",
            ));
        }
        Ok(())
    }
}

/// Policy types that hold sub-policies of their own.
const COMBINING: &[PolicyType] = &[PolicyType::And, PolicyType::Drop, PolicyType::Composite];

/// Sub-policies of `and`, `drop` and `not`: at least one, none of a type in `nested`
/// (`and` and `drop` may hold a `not`; a `not` holds a plain policy).
fn validate_subs(
    at: &str,
    subs: &[PolicyConfig],
    nested: &[PolicyType],
) -> Result<(), ConfigError> {
    if subs.is_empty() {
        return Err(ConfigError::invalid(at, "[]", "at least one sub-policy"));
    }
    for (j, sub) in subs.iter().enumerate() {
        let sub_at = format!("{at}[{j}]");
        if let Some(t) = &sub.topic {
            return Err(ConfigError::invalid(
                format!("{sub_at}.topic"),
                t,
                "no topic on a sub-policy (put it on the top-level policy)",
            ));
        }
        if nested.contains(&sub.kind) {
            let allowed: Vec<&str> = nested.iter().map(|k| k.as_str()).collect();
            return Err(ConfigError::invalid(
                format!("{sub_at}.type"),
                sub.kind.as_str(),
                format!(
                    "a policy type other than {} (no deeper nesting)",
                    allowed.join(", ")
                ),
            ));
        }
        sub.validate(&sub_at)?;
    }
    Ok(())
}

fn check_rate(field: &str, rate: u64) -> Result<(), ConfigError> {
    if rate == 0 {
        Err(ConfigError::invalid(field, 0, "a rate above 0"))
    } else {
        Ok(())
    }
}

fn check_values(field: &str, values: &[String]) -> Result<(), ConfigError> {
    if values.is_empty() {
        Err(ConfigError::invalid(field, "[]", "at least one value"))
    } else {
        Ok(())
    }
}

fn check_key(field: &str, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        Err(ConfigError::invalid(
            field,
            "\"\"",
            "a non-empty attribute key",
        ))
    } else {
        Ok(())
    }
}
