//! `status_code`: keeps traces with a span of a given status.

use super::spec::SpecError;
use super::{Decision, Policy, TraceSummary};
use serde::{Deserialize, Serialize};

/// `status_code`: keep traces with at least one span whose status is listed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// Any of `OK`, `ERROR`, `UNSET`.
    pub status_codes: Vec<String>,
}

impl StatusCodeConfig {
    /// Checks the block at `at` (`policies[0].status_code`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if self.status_codes.is_empty() {
            return Err(SpecError::invalid(
                format!("{at}.status_codes"),
                "[]",
                "one or more of OK, ERROR, UNSET",
            ));
        }
        for (j, s) in self.status_codes.iter().enumerate() {
            if !matches!(s.as_str(), "OK" | "ERROR" | "UNSET") {
                return Err(SpecError::invalid(
                    format!("{at}.status_codes[{j}]"),
                    s,
                    "one of OK, ERROR, UNSET",
                ));
            }
        }
        Ok(())
    }
}

/// Votes to keep traces with at least one span whose status is listed.
#[derive(Debug)]
pub struct StatusCodeFilter {
    ok: bool,
    error: bool,
    unset: bool,
}

impl StatusCodeFilter {
    /// From a validated config block (codes already checked to be OK/ERROR/UNSET).
    pub fn new(c: &StatusCodeConfig) -> Self {
        let has = |s: &str| c.status_codes.iter().any(|x| x == s);
        StatusCodeFilter {
            ok: has("OK"),
            error: has("ERROR"),
            unset: has("UNSET"),
        }
    }
}

impl Policy for StatusCodeFilter {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        let hit =
            (self.error && t.has_error) || (self.ok && t.has_ok) || (self.unset && t.has_unset);
        Decision::sampled_if(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TraceId;

    #[test]
    fn any_listed_status_keeps_the_trace() {
        let p = StatusCodeFilter::new(&StatusCodeConfig {
            status_codes: vec!["ERROR".into()],
        });
        let mut t = TraceSummary::new(TraceId([1; 16]));
        t.has_ok = true;
        t.has_unset = true;
        assert_eq!(p.evaluate(&t), Decision::NotSampled);
        t.has_error = true;
        assert_eq!(p.evaluate(&t), Decision::Sampled);
        let unset = StatusCodeFilter::new(&StatusCodeConfig {
            status_codes: vec!["UNSET".into(), "OK".into()],
        });
        assert_eq!(
            unset.evaluate(&TraceSummary::new(TraceId([1; 16]))),
            Decision::NotSampled
        );
        assert_eq!(unset.evaluate(&t), Decision::Sampled);
    }
}
