//! `string_attribute`: keeps traces with a string attribute matching values or regexes.

use regex::RegexSet;

use super::{Decision, Policy, TraceSummary};
use crate::codec::AttrValue;
use crate::config::StringAttributeConfig;

/// Votes to keep traces where a span or its resource has the attribute with a matching
/// string value (exact, or unanchored regex as in OTel); inverted: where none does.
#[derive(Debug)]
pub struct StringAttribute {
    key: u16,
    matcher: Matcher,
    invert: bool,
}

#[derive(Debug)]
enum Matcher {
    Exact(Vec<Vec<u8>>),
    Regex(RegexSet),
}

impl StringAttribute {
    /// From a validated config block; `key` is the codec index of `c.key`.
    ///
    /// # Errors
    /// A regex that does not compile.
    pub fn new(key: u16, c: &StringAttributeConfig) -> Result<Self, regex::Error> {
        let matcher = if c.enabled_regex_matching {
            Matcher::Regex(RegexSet::new(&c.values)?)
        } else {
            Matcher::Exact(c.values.iter().map(|v| v.as_bytes().to_vec()).collect())
        };
        Ok(StringAttribute {
            key,
            matcher,
            invert: c.invert_match,
        })
    }

    fn matches(&self, v: &[u8]) -> bool {
        match &self.matcher {
            Matcher::Exact(values) => values.iter().any(|x| x == v),
            // Attribute strings are UTF-8 per OTLP; invalid bytes simply do not match.
            Matcher::Regex(set) => std::str::from_utf8(v).is_ok_and(|s| set.is_match(s)),
        }
    }
}

impl Policy for StringAttribute {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        let hit = t.attr_values(self.key).any(|v| match v {
            AttrValue::Str(s) => self.matches(s),
            _ => false,
        });
        Decision::sampled_if(hit != self.invert)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::TraceId;

    fn trace(values: &[&'static str]) -> TraceSummary {
        let mut t = TraceSummary::new(TraceId([1; 16]));
        for v in values {
            t.attrs
                .push((0, AttrValue::Str(Bytes::from_static(v.as_bytes()))));
        }
        t.attrs
            .push((1, AttrValue::Str(Bytes::from_static(b"/api/checkout"))));
        t
    }

    fn policy(values: &[&str], regex: bool, invert: bool) -> StringAttribute {
        StringAttribute::new(
            0,
            &StringAttributeConfig {
                key: "k".into(),
                values: values.iter().map(|s| s.to_string()).collect(),
                enabled_regex_matching: regex,
                cache_max_size: None,
                invert_match: invert,
            },
        )
        .expect("valid")
    }

    #[test]
    fn exact_values() {
        let p = policy(&["/api/checkout", "/api/pay"], false, false);
        assert_eq!(p.evaluate(&trace(&["/api/pay"])), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(&["/api/payment"])), Decision::NotSampled);
        // The same value under another key does not count.
        assert_eq!(p.evaluate(&trace(&[])), Decision::NotSampled);
    }

    #[test]
    fn regex_is_unanchored_unless_anchored() {
        assert_eq!(
            policy(&["pay"], true, false).evaluate(&trace(&["/api/payment"])),
            Decision::Sampled
        );
        assert_eq!(
            policy(&["^pay"], true, false).evaluate(&trace(&["/api/payment"])),
            Decision::NotSampled
        );
    }

    #[test]
    fn invert_keeps_traces_without_a_match() {
        let p = policy(&["/health"], false, true);
        assert_eq!(p.evaluate(&trace(&["/health"])), Decision::NotSampled);
        assert_eq!(p.evaluate(&trace(&["/api/pay"])), Decision::Sampled);
        assert_eq!(p.evaluate(&trace(&[])), Decision::Sampled);
    }
}
