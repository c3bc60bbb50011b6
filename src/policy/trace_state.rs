//! `trace_state`: keeps traces with a W3C tracestate entry of given values.

use super::spec::{check_key, check_values, SpecError};
use super::{Decision, Policy, TraceSummary};
use crate::codec::Matcher;
use serde::{Deserialize, Serialize};

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

impl TraceStateConfig {
    /// Checks the block at `at` (`policies[0].trace_state`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        check_key(&format!("{at}.key"), &self.key)?;
        check_values(&format!("{at}.values"), &self.values)
    }
}

/// Votes to keep traces where some span's `tracestate` has the entry `key` with one of
/// the configured values (exact match, as in OTel). The entries are tested while
/// scanning (see [`TraceState::matcher`]); the policy reads the resulting bit.
#[derive(Debug)]
pub struct TraceState {
    bit: u8,
}

impl TraceState {
    /// The predicate the codec tests on the entry's value.
    pub fn matcher(c: &TraceStateConfig) -> Matcher {
        Matcher::Exact(c.values.iter().map(|v| v.as_bytes().into()).collect())
    }

    /// The policy reading predicate `bit`.
    pub fn new(bit: u8) -> Self {
        TraceState { bit }
    }
}

impl Policy for TraceState {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::sampled_if(t.attr_hit(self.bit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{AttrMatchers, TraceId};

    /// The vote on a trace with one span whose tracestate is `state`.
    fn vote(key: &str, values: &[&str], state: &str) -> Decision {
        let c = TraceStateConfig {
            key: key.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let mut m = AttrMatchers::default();
        let _ = m.add("unrelated", Matcher::Bool(true));
        let bit = m
            .add_trace_state(&c.key, TraceState::matcher(&c))
            .expect("bit");
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.attr_hits = m.trace_state_hits(state.as_bytes());
        TraceState::new(bit).evaluate(&t)
    }

    #[test]
    fn exact_value_of_the_keyed_entry() {
        let state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,ot=th:8";
        assert_eq!(
            vote("rojo", &["00f067aa0ba902b7"], state),
            Decision::Sampled
        );
        assert_eq!(
            vote("congo", &["x", "t61rcWkgMzE"], state),
            Decision::Sampled
        );
        assert_eq!(vote("ot", &["th:8"], state), Decision::Sampled);
        assert_eq!(
            vote("rojo", &["00f067"], state),
            Decision::NotSampled,
            "no prefix match"
        );
        assert_eq!(
            vote("blue", &["00f067aa0ba902b7"], state),
            Decision::NotSampled
        );
    }

    #[test]
    fn empty_and_malformed_states_do_not_match() {
        assert_eq!(vote("rojo", &["1"], ""), Decision::NotSampled);
        assert_eq!(vote("rojo", &["1"], "rojo,=1,,rojo"), Decision::NotSampled);
        assert_eq!(
            vote("rojo", &["1"], " rojo=1 "),
            Decision::Sampled,
            "spaces around entries"
        );
    }
}
