//! `probabilistic`: keeps a fixed share of traces, the same share on every instance.

use super::spec::SpecError;
use super::{Decision, Policy, TraceSummary};
use crate::codec::{fnv1a, TraceId, FNV1A_OFFSET};
use serde::{Deserialize, Serialize};

/// `probabilistic`: keep `sampling_percentage` percent of traces, chosen by a hash
/// of the trace id, so every instance (and the OTel processor, with the same salt)
/// makes the same choice.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    /// 0 to 100.
    pub sampling_percentage: f64,
    /// Salt mixed into the hash; defaults to the OTel processor's default.
    #[serde(default)]
    pub hash_salt: Option<String>,
}

impl ProbabilisticConfig {
    /// Checks the block at `at` (`policies[0].probabilistic`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if !(0.0..=100.0).contains(&self.sampling_percentage) {
            return Err(SpecError::invalid(
                format!("{at}.sampling_percentage"),
                self.sampling_percentage,
                "a percentage from 0 to 100",
            ));
        }
        Ok(())
    }
}

/// The OTel processor's default salt, so tailsift and the Collector pick the same
/// traces for the same percentage.
const DEFAULT_HASH_SALT: &str = "default-hash-seed";

/// Votes to keep a trace when FNV-1a(salt ‖ trace id) falls under a threshold
/// proportional to `sampling_percentage`: deterministic per trace id, so every
/// instance and every re-read decides the same.
#[derive(Debug)]
pub struct Probabilistic {
    salt: Vec<u8>,
    threshold: u64,
    ratio: f64,
}

impl Probabilistic {
    /// From a validated config block.
    pub fn new(c: &ProbabilisticConfig) -> Self {
        let ratio = c.sampling_percentage / 100.0;
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio <= 0.0 {
            0
        } else {
            (ratio * u64::MAX as f64) as u64
        };
        let salt = match &c.hash_salt {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => DEFAULT_HASH_SALT.as_bytes().to_vec(),
        };
        Probabilistic {
            salt,
            threshold,
            ratio: ratio.clamp(0.0, 1.0),
        }
    }

    fn hash(&self, id: &TraceId) -> u64 {
        fnv1a(fnv1a(FNV1A_OFFSET, &self.salt), &id.0)
    }
}

impl Policy for Probabilistic {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        // As in OTel, 0% samples nothing (hash <= 0 is astronomically rare but possible).
        Decision::sampled_if(self.threshold > 0 && self.hash(&t.trace_id) <= self.threshold)
    }

    fn probability(&self, _t: &TraceSummary) -> Option<f64> {
        Some(self.ratio)
    }

    /// Chance or traffic decides: never revises a drop.
    fn settled(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pct: f64) -> Probabilistic {
        Probabilistic::new(&ProbabilisticConfig {
            sampling_percentage: pct,
            hash_salt: None,
        })
    }

    fn id(i: u64) -> TraceSummary {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&i.to_le_bytes());
        b[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        TraceSummary::new(TraceId(b))
    }

    #[test]
    fn rate_is_close_to_the_percentage() {
        for pct in [1.0, 10.0, 50.0] {
            let p = policy(pct);
            let n = 100_000;
            let kept = (0..n)
                .filter(|&i| p.evaluate(&id(i)) == Decision::Sampled)
                .count();
            let rate = kept as f64 * 100.0 / n as f64;
            assert!((rate - pct).abs() < pct * 0.1 + 0.1, "{pct}%: kept {rate}%");
        }
        assert!((0..1000).all(|i| policy(100.0).evaluate(&id(i)) == Decision::Sampled));
        assert!((0..1000).all(|i| policy(0.0).evaluate(&id(i)) == Decision::NotSampled));
    }

    #[test]
    fn matches_otel_fnv1a_with_default_salt() {
        // FNV-1a 64 of b"default-hash-seed" ++ [1; 16], computed outside this code
        // (Python: h=0xcbf29ce484222325; h=((h^b)*0x100000001b3)%2**64 per byte), as
        // Go's fnv.New64a in the OTel processor computes it.
        let p = policy(50.0);
        assert_eq!(p.hash(&TraceId([1; 16])), 0x3852_e520_beb1_c84d);
        let q = Probabilistic::new(&ProbabilisticConfig {
            sampling_percentage: 50.0,
            hash_salt: Some("other".into()),
        });
        assert_ne!(
            q.hash(&TraceId([1; 16])),
            0x3852_e520_beb1_c84d,
            "the salt changes the hash"
        );
    }
}
