//! `string_attribute`: keeps traces with a string attribute matching values or regexes.

use regex::RegexSet;

use super::{Decision, Policy, TraceSummary};
use crate::codec::Matcher;
use crate::config::StringAttributeConfig;

/// Votes to keep traces where a span or its resource has the attribute with a matching
/// string value (exact, or unanchored regex as in OTel); inverted: where none does.
/// The values are tested while scanning (see [`StringAttribute::matcher`]); the
/// policy reads the resulting bit.
#[derive(Debug)]
pub struct StringAttribute {
    bit: u8,
    invert: bool,
}

impl StringAttribute {
    /// The predicate the codec tests on the attribute's values.
    ///
    /// # Errors
    /// A regex that does not compile.
    pub fn matcher(c: &StringAttributeConfig) -> Result<Matcher, regex::Error> {
        Ok(if c.enabled_regex_matching {
            Matcher::Regex(RegexSet::new(&c.values)?)
        } else {
            Matcher::Exact(c.values.iter().map(|v| v.as_bytes().into()).collect())
        })
    }

    /// The policy reading predicate `bit`.
    pub fn new(bit: u8, c: &StringAttributeConfig) -> Self {
        StringAttribute {
            bit,
            invert: c.invert_match,
        }
    }
}

impl Policy for StringAttribute {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::matched(t.attr_hit(self.bit), self.invert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{AttrValue, TraceId};

    fn config(values: &[&str], regex: bool, invert: bool) -> StringAttributeConfig {
        StringAttributeConfig {
            key: "http.route".into(),
            values: values.iter().map(|s| s.to_string()).collect(),
            enabled_regex_matching: regex,
            cache_max_size: None,
            invert_match: invert,
        }
    }

    /// The vote on a trace whose only value of the key is `value` (None: no value).
    fn vote(c: &StringAttributeConfig, value: Option<&str>) -> Decision {
        let matcher = StringAttribute::matcher(c).expect("valid");
        let mut t = TraceSummary::new(TraceId([1; 16]));
        if value.is_some_and(|v| matcher.matches(&AttrValue::Str(v.as_bytes()))) {
            t.attr_hits |= 1 << 3;
        }
        StringAttribute::new(3, c).evaluate(&t)
    }

    #[test]
    fn exact_values() {
        let c = config(&["/api/checkout", "/api/pay"], false, false);
        assert_eq!(vote(&c, Some("/api/pay")), Decision::Sampled);
        assert_eq!(vote(&c, Some("/api/payment")), Decision::NotSampled);
        assert_eq!(vote(&c, None), Decision::NotSampled);
    }

    #[test]
    fn regex_is_unanchored_unless_anchored() {
        assert_eq!(
            vote(&config(&["pay"], true, false), Some("/api/payment")),
            Decision::Sampled
        );
        assert_eq!(
            vote(&config(&["^pay"], true, false), Some("/api/payment")),
            Decision::NotSampled
        );
    }

    #[test]
    fn invert_vetoes_a_match_and_samples_the_rest() {
        let c = config(&["/health"], false, true);
        assert_eq!(vote(&c, Some("/health")), Decision::InvertNotSampled);
        assert_eq!(vote(&c, Some("/api/pay")), Decision::InvertSampled);
        assert_eq!(vote(&c, None), Decision::InvertSampled);
    }

    #[test]
    fn only_string_values_match() {
        let m = StringAttribute::matcher(&config(&["503"], false, false)).expect("valid");
        assert!(!m.matches(&AttrValue::Int(503)));
    }
}
