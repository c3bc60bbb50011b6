//! `numeric_attribute`: keeps traces with an integer attribute inside a range.

use super::spec::{check_key, SpecError};
use super::{Decision, Policy, TraceSummary};
use crate::codec::Matcher;
use serde::{Deserialize, Serialize};

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

impl NumericAttributeConfig {
    /// Checks the block at `at` (`policies[0].numeric_attribute`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_key(&format!("{at}.key"), &self.key)?;
        match (self.min_value, self.max_value) {
            (None, None) => Err(SpecError::invalid(
                at,
                "no bounds",
                "min_value, max_value or both",
            )),
            (Some(lo), Some(hi)) if lo > hi => Err(SpecError::invalid(
                format!("{at}.max_value"),
                hi,
                format!("at least min_value ({lo})"),
            )),
            _ => Ok(()),
        }
    }
}

/// Votes to keep traces where a span or its resource has the integer attribute within
/// `[min, max]`; inverted: where none does. As in OTel, only `int_value` attributes
/// are compared (a double or string value never matches). The values are tested while
/// scanning (see [`NumericAttribute::matcher`]); the policy reads the resulting bit.
#[derive(Debug)]
pub struct NumericAttribute {
    bit: u8,
    invert: bool,
}

impl NumericAttribute {
    /// The predicate the codec tests on the attribute's values.
    pub fn matcher(c: &NumericAttributeConfig) -> Matcher {
        Matcher::IntRange(
            c.min_value.unwrap_or(i64::MIN),
            c.max_value.unwrap_or(i64::MAX),
        )
    }

    /// The policy reading predicate `bit`.
    pub fn new(bit: u8, c: &NumericAttributeConfig) -> Self {
        NumericAttribute {
            bit,
            invert: c.invert_match,
        }
    }
}

impl Policy for NumericAttribute {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::matched(t.attr_hit(self.bit), self.invert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{AttrValue, TraceId};

    fn config(min: Option<i64>, max: Option<i64>, invert: bool) -> NumericAttributeConfig {
        NumericAttributeConfig {
            key: "http.status_code".into(),
            min_value: min,
            max_value: max,
            invert_match: invert,
        }
    }

    /// The vote on a trace whose values of the key are `values`.
    fn vote(c: &NumericAttributeConfig, values: &[AttrValue<'_>]) -> Decision {
        let matcher = NumericAttribute::matcher(c);
        let mut t = TraceSummary::new(TraceId([1; 16]));
        if values.iter().any(|v| matcher.matches(v)) {
            t.attr_hits |= 1;
        }
        NumericAttribute::new(0, c).evaluate(&t)
    }

    #[test]
    fn inclusive_range_on_int_values_only() {
        let c = config(Some(500), Some(599), false);
        assert_eq!(
            vote(&c, &[AttrValue::Int(200), AttrValue::Int(500)]),
            Decision::Sampled
        );
        assert_eq!(vote(&c, &[AttrValue::Int(599)]), Decision::Sampled);
        assert_eq!(vote(&c, &[AttrValue::Int(600)]), Decision::NotSampled);
        assert_eq!(vote(&c, &[AttrValue::Double(550.0)]), Decision::NotSampled);
        assert_eq!(vote(&c, &[]), Decision::NotSampled);
    }

    #[test]
    fn open_bounds_and_invert() {
        assert_eq!(
            vote(&config(Some(400), None, false), &[AttrValue::Int(i64::MAX)]),
            Decision::Sampled
        );
        let inv = config(Some(500), Some(599), true);
        assert_eq!(
            vote(&inv, &[AttrValue::Int(503)]),
            Decision::InvertNotSampled
        );
        assert_eq!(vote(&inv, &[AttrValue::Int(200)]), Decision::InvertSampled);
    }
}
