//! `string_attribute`: keeps traces with a string attribute matching values or regexes.

use regex::RegexSet;

use super::spec::{check_key, check_values, SpecError};
use super::{Decision, Policy, TraceSummary};
use crate::codec::Matcher;
use serde::{Deserialize, Serialize};

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

impl StringAttributeConfig {
    /// Checks the block at `at` (`policies[0].string_attribute`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_key(&format!("{at}.key"), &self.key)?;
        check_values(&format!("{at}.values"), &self.values)?;
        if self.enabled_regex_matching {
            for (j, v) in self.values.iter().enumerate() {
                if let Err(e) = regex::Regex::new(v) {
                    return Err(SpecError::invalid(
                        format!("{at}.values[{j}]"),
                        format!("{v:?}"),
                        format!("a valid regular expression ({e})"),
                    ));
                }
            }
        }
        Ok(())
    }
}

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
