//! `boolean_attribute`: keeps traces with a boolean attribute of a given value.

use super::spec::{check_key, SpecError};
use super::{Decision, Policy, TraceSummary};
use crate::codec::Matcher;
use serde::{Deserialize, Serialize};

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

impl BooleanAttributeConfig {
    /// Checks the block at `at` (`policies[0].boolean_attribute`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_key(&format!("{at}.key"), &self.key)
    }
}

/// Votes to keep traces where a span or its resource has the boolean attribute with
/// the configured value; inverted: where none does. Only `bool_value` attributes are
/// compared (the string "true" is not a boolean). Tested while scanning (see
/// [`BooleanAttribute::matcher`]); the policy reads the resulting bit.
#[derive(Debug)]
pub struct BooleanAttribute {
    bit: u8,
    invert: bool,
}

impl BooleanAttribute {
    /// The predicate the codec tests on the attribute's values.
    pub fn matcher(c: &BooleanAttributeConfig) -> Matcher {
        Matcher::Bool(c.value)
    }

    /// The policy reading predicate `bit`.
    pub fn new(bit: u8, c: &BooleanAttributeConfig) -> Self {
        BooleanAttribute {
            bit,
            invert: c.invert_match,
        }
    }
}

impl Policy for BooleanAttribute {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::matched(t.attr_hit(self.bit), self.invert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{AttrValue, TraceId};

    fn config(value: bool, invert: bool) -> BooleanAttributeConfig {
        BooleanAttributeConfig {
            key: "retry".into(),
            value,
            invert_match: invert,
        }
    }

    /// The vote on a trace whose values of the key are `values`.
    fn vote(c: &BooleanAttributeConfig, values: &[AttrValue<'_>]) -> Decision {
        let matcher = BooleanAttribute::matcher(c);
        let mut t = TraceSummary::new(TraceId([1; 16]));
        if values.iter().any(|v| matcher.matches(v)) {
            t.attr_hits |= 1 << 3;
        }
        BooleanAttribute::new(3, c).evaluate(&t)
    }

    #[test]
    fn matches_bool_values_only() {
        let yes = config(true, false);
        assert_eq!(vote(&yes, &[AttrValue::Bool(true)]), Decision::Sampled);
        assert_eq!(vote(&yes, &[AttrValue::Bool(false)]), Decision::NotSampled);
        assert_eq!(vote(&yes, &[AttrValue::Str(b"true")]), Decision::NotSampled);
        assert_eq!(vote(&yes, &[AttrValue::Int(1)]), Decision::NotSampled);
        assert_eq!(vote(&yes, &[]), Decision::NotSampled);
        let no = config(false, false);
        assert_eq!(vote(&no, &[AttrValue::Bool(false)]), Decision::Sampled);
    }

    #[test]
    fn invert_vetoes_a_match_and_samples_the_rest() {
        let inv = config(true, true);
        assert_eq!(
            vote(&inv, &[AttrValue::Bool(true)]),
            Decision::InvertNotSampled
        );
        assert_eq!(
            vote(&inv, &[AttrValue::Bool(false)]),
            Decision::InvertSampled
        );
        assert_eq!(vote(&inv, &[]), Decision::InvertSampled);
    }
}
