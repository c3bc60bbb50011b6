//! `ottl_condition`: keeps traces with a span or span event satisfying an OTTL
//! condition (the subset in `ottl::Condition`).

use super::spec::SpecError;
use super::{Decision, Policy, TraceSummary};
use crate::ottl::{Condition, OttlContext, OttlError};
use serde::{Deserialize, Serialize};

/// `ottl_condition`: keep traces where a span satisfies one of `span` or a span event
/// one of `spanevent` (OTTL conditions; the supported subset is in docs/configuration.md).
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

impl OttlConditionConfig {
    /// Checks the block at `at` (`policies[0].ottl_condition`): every condition
    /// parses.
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if let Some(m) = &self.error_mode {
            if !matches!(m.as_str(), "ignore" | "silent" | "propagate") {
                return Err(SpecError::invalid(
                    format!("{at}.error_mode"),
                    m,
                    "ignore, silent or propagate",
                ));
            }
        }
        if self.span.is_empty() && self.spanevent.is_empty() {
            return Err(SpecError::invalid(
                at,
                "no conditions",
                "at least one condition under `span` or `spanevent`",
            ));
        }
        OttlCondition::conditions(self)
            .map(drop)
            .map_err(|(field, i, e)| {
                let list = if field == "span" {
                    &self.span
                } else {
                    &self.spanevent
                };
                SpecError::invalid(
                    format!("{at}.{field}[{i}]"),
                    format!("{:?}", list[i]),
                    format!("an OTTL condition in the supported subset ({e})"),
                )
            })
    }
}

/// A condition that does not parse: (`span` or `spanevent`, its index, the error).
pub type BadCondition = (&'static str, usize, OttlError);

/// Votes to keep traces where a span satisfies one of the `span` conditions or a span
/// event one of the `spanevent` conditions, as OTel's `ottl_condition`. The
/// conditions are evaluated on each span while scanning; the policy reads the bit.
#[derive(Debug)]
pub struct OttlCondition {
    bit: u8,
}

impl OttlCondition {
    /// Parses the block's conditions: (span conditions, span-event conditions).
    ///
    /// # Errors
    /// The first condition that does not parse: (`span` or `spanevent`, index, error).
    pub fn conditions(
        c: &OttlConditionConfig,
    ) -> Result<(Vec<Condition>, Vec<Condition>), BadCondition> {
        let parse = |list: &[String], ctx: OttlContext, field: &'static str| {
            list.iter()
                .enumerate()
                .map(|(i, s)| Condition::parse(s, ctx).map_err(|e| (field, i, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((
            parse(&c.span, OttlContext::Span, "span")?,
            parse(&c.spanevent, OttlContext::SpanEvent, "spanevent")?,
        ))
    }

    /// The policy reading bit `bit`.
    pub fn new(bit: u8) -> Self {
        OttlCondition { bit }
    }
}

impl Policy for OttlCondition {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::sampled_if(t.attr_hit(self.bit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{scan, FrameInterner};
    use crate::config::Config;
    use crate::policy::PolicySet;
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    /// The vote of the one `ottl_condition` policy with `block` on a trace of one
    /// span with `attrs` and events named `events`, under resource `env`.
    fn vote(block: &str, attrs: Vec<KeyValue>, events: &[&str], env: &str) -> Decision {
        let yaml = format!("kafka: {{brokers: x, input_topics: [i], output_topic: o}}\npolicies:\n  - name: cond\n    type: ottl_condition\n    ottl_condition:\n{block}");
        let cfg = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let set = PolicySet::build(&cfg.policies).expect("builds");
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "deployment.environment",
                        any_value::Value::StringValue(env.into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![7; 16],
                        span_id: vec![1; 8],
                        name: "GET /api/pay".into(),
                        kind: span::SpanKind::Server as i32,
                        attributes: attrs,
                        events: events
                            .iter()
                            .map(|n| span::Event {
                                name: (*n).into(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let payload = Bytes::from(request.encode_to_vec());
        let mut out = Vec::new();
        scan(&payload, &set.keys, &mut FrameInterner::default(), &mut out).expect("scans");
        let mut t = TraceSummary::new(out[0].trace_id);
        out.iter().for_each(|s| t.add(s));
        set.policies[0].policy.evaluate(&t)
    }

    #[test]
    fn span_conditions_read_attributes_resource_and_fields() {
        let block = "      span:\n        - 'attributes[\"http.status_code\"] >= 500 and resource.attributes[\"deployment.environment\"] == \"prod\"'\n        - 'kind == SPAN_KIND_CLIENT'\n";
        let code = |c| vec![kv("http.status_code", any_value::Value::IntValue(c))];
        assert_eq!(vote(block, code(503), &[], "prod"), Decision::Sampled);
        assert_eq!(vote(block, code(503), &[], "dev"), Decision::NotSampled);
        assert_eq!(vote(block, code(200), &[], "prod"), Decision::NotSampled);
        let by_name = "      span: ['IsMatch(name, \"^GET \")']\n";
        assert_eq!(vote(by_name, vec![], &[], "dev"), Decision::Sampled);
    }

    #[test]
    fn span_event_conditions_read_each_event() {
        let block = "      error_mode: ignore\n      spanevent: ['name == \"exception\"']\n";
        assert_eq!(
            vote(block, vec![], &["log", "exception"], "x"),
            Decision::Sampled
        );
        assert_eq!(vote(block, vec![], &["log"], "x"), Decision::NotSampled);
        assert_eq!(vote(block, vec![], &[], "x"), Decision::NotSampled);
    }

    #[test]
    fn a_bad_condition_names_its_field() {
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: c, type: ottl_condition, ottl_condition: {span: ['name == \"a\"', 'duration > 3']}}\n";
        let e = Config::from_yaml(yaml).expect_err("bad path").to_string();
        assert!(e.contains("policies[0].ottl_condition.span[1]"), "{e}");
        assert!(e.contains("unsupported path `duration`"), "{e}");
        let yaml = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: c, type: ottl_condition, ottl_condition: {error_mode: loud, span: ['true']}}\n";
        let e = Config::from_yaml(yaml).expect_err("mode").to_string();
        assert!(e.contains("ignore, silent or propagate"), "{e}");
    }
}
