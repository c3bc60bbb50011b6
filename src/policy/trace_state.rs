//! `trace_state`: keeps traces with a W3C tracestate entry of given values.

use super::{Decision, Policy, TraceSummary};
use crate::codec::Matcher;
use crate::config::TraceStateConfig;

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
