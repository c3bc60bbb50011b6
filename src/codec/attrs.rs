//! Attribute predicates evaluated while scanning.
//!
//! Policies that read attributes (`string_attribute`, `numeric_attribute`,
//! `boolean_attribute`) register a
//! [`Matcher`] on a key and get a bit. The scan tests each span's and resource's
//! attribute of that key once and sets the bit on a hit, so a buffered trace carries
//! one `u64` of hits instead of attribute values, and a policy set that reads no
//! attributes pays nothing for them.

use regex::RegexSet;

use super::AttrValue;

/// Most attribute predicates a policy set may have (bits of a `u64`).
pub const MAX_MATCHERS: usize = 64;

/// A predicate on one attribute value.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A string value equal to one of these.
    Exact(Vec<Box<[u8]>>),
    /// A string value matching one of these (unanchored) regular expressions.
    Regex(RegexSet),
    /// An integer value within `[min, max]`. As in OTel, other value types never match.
    IntRange(i64, i64),
    /// A boolean value equal to this one.
    Bool(bool),
}

impl Matcher {
    /// Whether `v` satisfies the predicate.
    pub fn matches(&self, v: &AttrValue<'_>) -> bool {
        match (self, v) {
            (Matcher::Exact(values), AttrValue::Str(s)) => values.iter().any(|x| &x[..] == *s),
            // Attribute strings are UTF-8 per OTLP; invalid bytes simply do not match.
            (Matcher::Regex(set), AttrValue::Str(s)) => {
                std::str::from_utf8(s).is_ok_and(|s| set.is_match(s))
            }
            (Matcher::IntRange(lo, hi), AttrValue::Int(i)) => (*lo..=*hi).contains(i),
            (Matcher::Bool(want), AttrValue::Bool(b)) => want == b,
            _ => false,
        }
    }
}

/// The predicates on one key, each with its bit.
type KeyMatchers = (Box<[u8]>, Vec<(u8, Matcher)>);

fn register(keys: &mut Vec<KeyMatchers>, key: &str, bit: u8, matcher: Matcher) {
    let key = key.as_bytes();
    match keys.iter_mut().find(|(k, _)| &k[..] == key) {
        Some((_, list)) => list.push((bit, matcher)),
        None => keys.push((key.into(), vec![(bit, matcher)])),
    }
}

/// The attribute predicates of a policy set, grouped by key; and the predicates on
/// W3C `tracestate` entries (`trace_state` policies), which share the bits.
#[derive(Debug, Default, Clone)]
pub struct AttrMatchers {
    keys: Vec<KeyMatchers>,
    trace_state: Vec<KeyMatchers>,
    count: usize,
}

impl AttrMatchers {
    /// Registers a predicate on `key` and returns its bit, or `None` when
    /// [`MAX_MATCHERS`] are registered already.
    pub fn add(&mut self, key: &str, matcher: Matcher) -> Option<u8> {
        let bit = self.next_bit()?;
        register(&mut self.keys, key, bit, matcher);
        Some(bit)
    }

    /// Registers a predicate on the value of `key` in spans' W3C `tracestate` and
    /// returns its bit, or `None` when [`MAX_MATCHERS`] are registered already.
    pub fn add_trace_state(&mut self, key: &str, matcher: Matcher) -> Option<u8> {
        let bit = self.next_bit()?;
        register(&mut self.trace_state, key, bit, matcher);
        Some(bit)
    }

    fn next_bit(&mut self) -> Option<u8> {
        if self.count >= MAX_MATCHERS {
            return None;
        }
        self.count += 1;
        Some((self.count - 1) as u8)
    }

    /// Whether some predicate reads `tracestate`.
    pub(super) fn reads_trace_state(&self) -> bool {
        !self.trace_state.is_empty()
    }

    /// Bits of the `tracestate` predicates that `trace_state` (a W3C `tracestate`
    /// header value: `key=value` entries separated by commas) satisfies.
    pub(crate) fn trace_state_hits(&self, trace_state: &[u8]) -> u64 {
        let mut hits = 0;
        for entry in trace_state.split(|&b| b == b',') {
            let entry = entry.trim_ascii();
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (&entry[..eq], &entry[eq + 1..]);
            if let Some((_, list)) = self.trace_state.iter().find(|(k, _)| &k[..] == key) {
                for (bit, m) in list {
                    if m.matches(&AttrValue::Str(value)) {
                        hits |= 1 << bit;
                    }
                }
            }
        }
        hits
    }

    /// Predicates registered (attribute and tracestate).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no predicate is registered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The predicates on `key`, if any.
    pub(super) fn for_key(&self, key: &[u8]) -> Option<&[(u8, Matcher)]> {
        self.keys
            .iter()
            .find(|(k, _)| &k[..] == key)
            .map(|(_, l)| &l[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_test_their_value_type_only() {
        let exact = Matcher::Exact(vec![b"/pay"[..].into()]);
        assert!(exact.matches(&AttrValue::Str(b"/pay")));
        assert!(!exact.matches(&AttrValue::Str(b"/payment")));
        let re = Matcher::Regex(RegexSet::new(["pay"]).expect("valid"));
        assert!(re.matches(&AttrValue::Str(b"/api/payment")));
        assert!(!re.matches(&AttrValue::Int(1)));
        let range = Matcher::IntRange(500, 599);
        assert!(range.matches(&AttrValue::Int(503)));
        assert!(!range.matches(&AttrValue::Int(600)));
        assert!(!range.matches(&AttrValue::Double(550.0)));
    }

    #[test]
    fn bits_are_handed_out_in_order_up_to_the_limit() {
        let mut m = AttrMatchers::default();
        assert_eq!(m.add("a", Matcher::IntRange(0, 1)), Some(0));
        assert_eq!(m.add("b", Matcher::IntRange(0, 1)), Some(1));
        assert_eq!(m.add("a", Matcher::IntRange(2, 3)), Some(2));
        assert_eq!(m.for_key(b"a").map(<[_]>::len), Some(2));
        for _ in 3..MAX_MATCHERS {
            assert!(m.add("c", Matcher::IntRange(0, 0)).is_some());
        }
        assert_eq!(m.add("d", Matcher::IntRange(0, 0)), None);
    }
}
