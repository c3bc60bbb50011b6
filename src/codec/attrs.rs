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
use crate::ottl::{Condition, Path};

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

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Matcher::Exact(a), Matcher::Exact(b)) => a == b,
            (Matcher::Regex(a), Matcher::Regex(b)) => a.patterns() == b.patterns(),
            (Matcher::IntRange(a, b), Matcher::IntRange(c, d)) => (a, b) == (c, d),
            (Matcher::Bool(a), Matcher::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// The bits of the predicates in `list` that `v` satisfies.
pub(super) fn hits_of(list: &[(u8, Matcher)], v: &AttrValue<'_>) -> u64 {
    list.iter()
        .filter(|(_, m)| m.matches(v))
        .fold(0, |hits, (bit, _)| hits | 1 << bit)
}

/// The predicates on one key, each with its bit.
type KeyMatchers = (Box<[u8]>, Vec<(u8, Matcher)>);

/// The first eight bytes of `b` (zero-padded) as one word.
#[inline]
fn head_word(b: &[u8]) -> u64 {
    match b.first_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w),
        None => {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        }
    }
}

/// Whether two keys of one length whose first eight bytes are equal are equal: up to
/// 16 bytes by their last eight (overlapping the first), in registers; longer ones
/// whole.
#[inline(always)]
fn rest_equal(a: &[u8], b: &[u8]) -> bool {
    match a.len() {
        0..=8 => true,
        9..=16 => a.last_chunk::<8>() == b.last_chunk::<8>(),
        _ => a == b,
    }
}

fn register(keys: &mut Vec<KeyMatchers>, key: &[u8], bit: u8, matcher: Matcher) {
    match keys.iter_mut().find(|(k, _)| &k[..] == key) {
        Some((_, list)) => list.push((bit, matcher)),
        None => keys.push((key.into(), vec![(bit, matcher)])),
    }
}

/// The bit of an identical predicate on `key` in `keys`, if there is one.
fn find(keys: &[KeyMatchers], key: &[u8], matcher: &Matcher) -> Option<u8> {
    keys.iter()
        .find(|(k, _)| &k[..] == key)?
        .1
        .iter()
        .find(|(_, m)| m == matcher)
        .map(|(bit, _)| *bit)
}

/// The conditions of one `ottl_condition` policy: the span sets its bit when it
/// satisfies a span condition or one of its events an event condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConditionSet {
    pub(crate) bit: u8,
    pub(crate) span: Vec<Condition>,
    pub(crate) events: Vec<Condition>,
}

/// A field of a span that forms the `dynamic` policy's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyField {
    /// The span's name.
    Name,
    /// The span's kind.
    Kind,
    /// The span's status code.
    StatusCode,
    /// An attribute, looked up on the span, then its resource.
    Attribute(Box<[u8]>),
}

impl KeyField {
    /// `name`, `kind` and `status.code` name span fields; anything else an attribute.
    pub fn parse(s: &str) -> KeyField {
        match s {
            "name" => KeyField::Name,
            "kind" => KeyField::Kind,
            "status.code" => KeyField::StatusCode,
            other => KeyField::Attribute(other.as_bytes().into()),
        }
    }
}

/// The attribute predicates of a policy set, grouped by key; and the predicates on
/// W3C `tracestate` entries (`trace_state` policies), which share the bits.
///
/// A set built to replace another (a configuration reload, see
/// [`AttrMatchers::successor`]) gives a predicate the old set had the same bit, and
/// a new predicate a bit the old set did not use: a trace buffered before the reload
/// keeps hits that mean the same, and the bits of predicates gone are cleared
/// ([`AttrMatchers::bits`] is the mask of bits in use).
#[derive(Debug, Default, Clone)]
pub struct AttrMatchers {
    keys: Vec<KeyMatchers>,
    trace_state: Vec<KeyMatchers>,
    /// `ottl_condition` policies' conditions.
    conditions: Vec<ConditionSet>,
    /// The fields whose values form a `dynamic` policy's key (hashed while scanning).
    key_fields: Vec<KeyField>,
    /// Bits in use.
    used: u64,
    /// Bit `len % 64` set for the length of each key in `keys`: most attribute keys
    /// are told apart by their length alone.
    key_lengths: u64,
    /// The set this one replaces: its bits are reused only for the same predicate.
    previous: Option<Box<AttrMatchers>>,
}

impl AttrMatchers {
    /// An empty set to replace this one, keeping bits stable (see the type's docs).
    pub fn successor(&self) -> AttrMatchers {
        let mut previous = self.clone();
        previous.previous = None;
        AttrMatchers {
            previous: Some(Box::new(previous)),
            ..AttrMatchers::default()
        }
    }

    /// Registers a predicate on `key` and returns its bit (the same bit for a
    /// predicate registered before), or `None` when [`MAX_MATCHERS`] are in use.
    pub fn add(&mut self, key: &str, matcher: Matcher) -> Option<u8> {
        self.add_to(false, key.as_bytes(), matcher)
    }

    /// Registers a predicate on the value of `key` in spans' W3C `tracestate` and
    /// returns its bit, or `None` when [`MAX_MATCHERS`] are in use.
    pub fn add_trace_state(&mut self, key: &str, matcher: Matcher) -> Option<u8> {
        self.add_to(true, key.as_bytes(), matcher)
    }

    /// Registers an `ottl_condition` policy's conditions and returns its bit, or
    /// `None` when [`MAX_MATCHERS`] are in use.
    pub fn add_conditions(&mut self, span: Vec<Condition>, events: Vec<Condition>) -> Option<u8> {
        let same = |c: &ConditionSet| c.span == span && c.events == events;
        if let Some(c) = self.conditions.iter().find(|c| same(c)) {
            return Some(c.bit);
        }
        let inherited = self
            .previous
            .as_deref()
            .and_then(|p| p.conditions.iter().find(|c| same(c)))
            .map(|c| c.bit)
            .filter(|bit| self.used & (1 << bit) == 0);
        let bit = match inherited {
            Some(bit) => bit,
            None => self.free_bit()?,
        };
        self.used |= 1 << bit;
        self.conditions.push(ConditionSet { bit, span, events });
        Some(bit)
    }

    fn free_bit(&self) -> Option<u8> {
        let reserved = self.previous.as_ref().map_or(0, |p| p.used);
        let free = !(self.used | reserved);
        (free != 0).then(|| free.trailing_zeros() as u8)
    }

    /// The `ottl_condition` policies' conditions.
    pub(crate) fn conditions(&self) -> &[ConditionSet] {
        &self.conditions
    }

    /// Sets the fields whose values key the `dynamic` policy (one per set).
    pub fn set_key_fields(&mut self, fields: Vec<KeyField>) {
        self.key_fields = fields;
    }

    /// The `dynamic` policy's key fields (empty: none).
    pub fn key_fields(&self) -> &[KeyField] {
        &self.key_fields
    }

    /// Whether spans are read whole (attribute values, name, kind): for conditions
    /// or a key.
    pub(crate) fn reads_fields(&self) -> bool {
        !self.conditions.is_empty() || !self.key_fields.is_empty()
    }

    /// Whether some condition reads span events.
    pub(crate) fn reads_events(&self) -> bool {
        self.conditions.iter().any(|c| !c.events.is_empty())
    }

    /// Whether a span condition or the key reads the resource's attribute `key`.
    pub(crate) fn reads_resource(&self, key: &[u8]) -> bool {
        self.key_fields
            .iter()
            .any(|f| matches!(f, KeyField::Attribute(k) if &k[..] == key))
            || self.conditions.iter().flat_map(|c| &c.span).any(|c| {
                c.paths()
                    .iter()
                    .any(|p| matches!(p, Path::ResourceAttribute(k) if &k[..] == key))
            })
    }

    fn add_to(&mut self, trace_state: bool, key: &[u8], matcher: Matcher) -> Option<u8> {
        let list = |m: &AttrMatchers| {
            if trace_state {
                m.trace_state.clone()
            } else {
                m.keys.clone()
            }
        };
        if let Some(bit) = find(&list(self), key, &matcher) {
            return Some(bit);
        }
        let inherited = self
            .previous
            .as_deref()
            .and_then(|p| find(&list(p), key, &matcher))
            .filter(|bit| self.used & (1 << bit) == 0);
        let bit = match inherited {
            Some(bit) => bit,
            None => self.free_bit()?,
        };
        self.used |= 1 << bit;
        let target = if trace_state {
            &mut self.trace_state
        } else {
            &mut self.keys
        };
        register(target, key, bit, matcher);
        if !trace_state {
            self.key_lengths |= 1 << (key.len() % 64);
        }
        Some(bit)
    }

    /// The bits in use: hits outside it are stale (from a replaced set).
    pub fn bits(&self) -> u64 {
        self.used
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
                hits |= hits_of(list, &AttrValue::Str(value));
            }
        }
        hits
    }

    /// Predicates registered (attribute and tracestate).
    pub fn len(&self) -> usize {
        self.used.count_ones() as usize
    }

    /// Whether nothing is read from attributes: no predicate, condition or key.
    pub fn is_empty(&self) -> bool {
        self.used == 0 && self.key_fields.is_empty()
    }

    /// The predicates on `key`, if any. Called for every attribute of every span:
    /// keys are told apart by length, then by their first eight bytes, before they
    /// are compared whole, so most attributes cost a bit test.
    #[inline(always)]
    pub(super) fn for_key(&self, key: &[u8]) -> Option<&[(u8, Matcher)]> {
        if self.key_lengths & (1 << (key.len() % 64)) == 0 {
            return None;
        }
        let head = head_word(key);
        self.keys
            .iter()
            .find(|(k, _)| k.len() == key.len() && head_word(k) == head && rest_equal(k, key))
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
        assert_eq!(
            m.add("b", Matcher::IntRange(0, 1)),
            Some(1),
            "same predicate"
        );
        for i in 3..MAX_MATCHERS {
            assert!(m.add("c", Matcher::IntRange(0, i as i64)).is_some());
        }
        assert_eq!(m.add("d", Matcher::IntRange(0, 0)), None);
    }

    #[test]
    fn a_successor_keeps_bits_of_kept_predicates_and_never_reuses_dropped_ones() {
        let mut old = AttrMatchers::default();
        assert_eq!(old.add("a", Matcher::Bool(true)), Some(0));
        assert_eq!(old.add("b", Matcher::Bool(true)), Some(1));
        assert_eq!(old.add_trace_state("c", Matcher::Bool(true)), Some(2));
        let mut new = old.successor();
        // A new predicate first: it must not take a bit the old set used.
        assert_eq!(new.add("x", Matcher::IntRange(1, 2)), Some(3));
        assert_eq!(new.add("b", Matcher::Bool(true)), Some(1));
        assert_eq!(new.add_trace_state("c", Matcher::Bool(true)), Some(2));
        // Same key, other value: a new predicate.
        assert_eq!(new.add("a", Matcher::Bool(false)), Some(4));
        assert_eq!(new.bits(), 0b11110);
        // The next reload may reuse bit 0, which no buffered trace can hold any more
        // once hits are masked with `bits()`.
        let mut third = new.successor();
        assert_eq!(third.add("z", Matcher::Bool(true)), Some(0));
    }
}
