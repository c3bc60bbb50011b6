//! `numeric_attribute`: keeps traces with an integer attribute inside a range.

use super::{Decision, Policy, TraceSummary};
use crate::codec::AttrValue;
use crate::config::NumericAttributeConfig;

/// Votes to keep traces where a span or its resource has the integer attribute within
/// `[min, max]`; inverted: where none does. As in OTel, only `int_value` attributes
/// are compared (a double or string value never matches).
#[derive(Debug)]
pub struct NumericAttribute {
    key: u16,
    min: i64,
    max: i64,
    invert: bool,
}

impl NumericAttribute {
    /// From a validated config block; `key` is the codec index of `c.key`.
    pub fn new(key: u16, c: &NumericAttributeConfig) -> Self {
        NumericAttribute {
            key,
            min: c.min_value.unwrap_or(i64::MIN),
            max: c.max_value.unwrap_or(i64::MAX),
            invert: c.invert_match,
        }
    }
}

impl Policy for NumericAttribute {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        let hit = t
            .attr_values(self.key)
            .any(|v| matches!(v, AttrValue::Int(i) if (self.min..=self.max).contains(i)));
        Decision::sampled_if(hit != self.invert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;

    fn trace(values: &[AttrValue]) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.attrs = values.iter().map(|v| (0, v.clone())).collect();
        t
    }

    fn policy(min: Option<i64>, max: Option<i64>, invert: bool) -> NumericAttribute {
        NumericAttribute::new(
            0,
            &NumericAttributeConfig {
                key: "http.status_code".into(),
                min_value: min,
                max_value: max,
                invert_match: invert,
            },
        )
    }

    #[test]
    fn inclusive_range_on_int_values_only() {
        let p = policy(Some(500), Some(599), false);
        assert_eq!(
            p.evaluate(&trace(&[AttrValue::Int(200), AttrValue::Int(500)])),
            Decision::Sampled
        );
        assert_eq!(
            p.evaluate(&trace(&[AttrValue::Int(599)])),
            Decision::Sampled
        );
        assert_eq!(
            p.evaluate(&trace(&[AttrValue::Int(600)])),
            Decision::NotSampled
        );
        assert_eq!(
            p.evaluate(&trace(&[AttrValue::Double(550.0)])),
            Decision::NotSampled
        );
        assert_eq!(p.evaluate(&trace(&[])), Decision::NotSampled);
    }

    #[test]
    fn open_bounds_and_invert() {
        assert_eq!(
            policy(Some(400), None, false).evaluate(&trace(&[AttrValue::Int(i64::MAX)])),
            Decision::Sampled
        );
        let inv = policy(Some(500), Some(599), true);
        assert_eq!(
            inv.evaluate(&trace(&[AttrValue::Int(503)])),
            Decision::NotSampled
        );
        assert_eq!(
            inv.evaluate(&trace(&[AttrValue::Int(200)])),
            Decision::Sampled
        );
    }
}
