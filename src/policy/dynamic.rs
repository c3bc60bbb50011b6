//! `dynamic`: keeps every trace of rare keys and thins common ones, toward a goal
//! throughput (Refinery's throughput-targeting dynamic sampler).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::spec::{check_rate, SpecError};
use super::{Decision, Policy, TraceSummary};
use crate::codec::TraceId;
use serde::{Deserialize, Serialize};

/// `dynamic`: per key (the values of `key_fields` on the root span), keep 1 trace in
/// a rate recomputed every `adjustment_interval` so that kept spans approach
/// `goal_spans_per_second`: rare keys are kept whole, common ones thinned. Per
/// instance; one `dynamic` policy per configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicConfig {
    /// The fields forming the key: `name`, `kind`, `status.code`, or an attribute key
    /// (looked up on the span, then its resource), e.g. `[http.route, status.code]`.
    pub key_fields: Vec<String>,
    /// Kept spans per second to aim at, per instance.
    pub goal_spans_per_second: u64,
    /// How often the rates are recomputed from the last interval's traffic.
    #[serde(default = "default_adjustment_interval")]
    pub adjustment_interval: crate::duration::ConfigDuration,
    /// Distinct keys tracked per interval; traces of further keys share one rate.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

impl DynamicConfig {
    /// Checks the block at `at` (`policies[0].dynamic`).
    pub(super) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if self.key_fields.is_empty() || self.key_fields.iter().any(|f| f.is_empty()) {
            return Err(SpecError::invalid(
                format!("{at}.key_fields"),
                format!("{:?}", self.key_fields),
                "one or more non-empty fields, e.g. [http.route, status.code]",
            ));
        }
        check_rate(
            &format!("{at}.goal_spans_per_second"),
            self.goal_spans_per_second,
        )?;
        if self.adjustment_interval.0 < Duration::from_millis(100) {
            return Err(SpecError::invalid(
                format!("{at}.adjustment_interval"),
                self.adjustment_interval,
                "at least 100ms",
            ));
        }
        Ok(())
    }
}
fn default_adjustment_interval() -> crate::duration::ConfigDuration {
    crate::duration::ConfigDuration::from_millis(15_000)
}
fn default_max_keys() -> usize {
    10_000
}

/// Votes to keep a trace with probability `1 / rate(key)`, where the key is the hash
/// of the configured fields' values on the trace's root span (e.g. route and status
/// code) and the rates are recomputed every interval from the spans each key brought
/// in the last one: the goal (spans per second times the interval) is shared equally
/// between keys, a key needing less than its share keeps everything and leaves the
/// rest to the others (water-filling), a key needing more is thinned to its share.
/// So rare keys (a new error, a seldom-used route) are always kept and the common
/// ones fill what is left of the goal. A key not seen in the last interval is kept
/// at rate 1 until the next adjustment. Per instance; the choice within a key is a
/// hash of the trace id, so re-reads decide alike under the same rates.
#[derive(Debug)]
pub struct Dynamic {
    goal_per_interval: f64,
    interval: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Spans per key since the last adjustment.
    counts: HashMap<u64, u64>,
    /// Sample rates (keep 1 in `rate`) from the last adjustment.
    rates: HashMap<u64, f64>,
    since: Instant,
}

/// Key for traces beyond `max_keys` distinct keys in one interval.
const OVERFLOW_KEY: u64 = u64::MAX;

impl Dynamic {
    /// Aims at `goal_spans_per_second`, adjusting every `interval`, tracking at most
    /// `max_keys` keys per interval (more share one rate).
    pub fn new(goal_spans_per_second: u64, interval: Duration, max_keys: usize) -> Self {
        Dynamic {
            goal_per_interval: goal_spans_per_second as f64 * interval.as_secs_f64(),
            interval,
            max_keys: max_keys.max(1),
            state: Mutex::new(State {
                counts: HashMap::new(),
                rates: HashMap::new(),
                since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rate for `key` at `now`, counting `spans` for it (and adjusting the rates
    /// when an interval is over).
    fn rate_at(&self, key: u64, spans: u64, now: Instant) -> f64 {
        let mut s = self.lock();
        if now.saturating_duration_since(s.since) >= self.interval {
            s.rates = rates(&s.counts, self.goal_per_interval);
            s.counts.clear();
            s.since = now;
        }
        let key = if s.counts.len() >= self.max_keys && !s.counts.contains_key(&key) {
            OVERFLOW_KEY
        } else {
            key
        };
        *s.counts.entry(key).or_insert(0) += spans;
        s.rates.get(&key).copied().unwrap_or(1.0)
    }

    fn evaluate_at(&self, t: &TraceSummary, now: Instant) -> Decision {
        let rate = self.rate_at(t.key_hash, u64::from(t.span_count), now);
        Decision::sampled_if(chosen(&t.trace_id, 1.0 / rate))
    }
}

impl Policy for Dynamic {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        self.evaluate_at(t, Instant::now())
    }

    /// `1 / rate` of the trace's key, as last adjusted.
    fn probability(&self, t: &TraceSummary) -> Option<f64> {
        let s = self.lock();
        Some(1.0 / s.rates.get(&t.key_hash).copied().unwrap_or(1.0))
    }

    /// Chance or traffic decides: never revises a drop.
    fn settled(&self) -> bool {
        false
    }
}

/// Whether the trace falls in the kept share `p`, by a hash of its id.
fn chosen(id: &TraceId, p: f64) -> bool {
    let mut h = id.shard_hash() ^ 0xD1B5_4A32_D192_ED03;
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64 <= p
}

/// Sample rates (>= 1) per key from the spans each brought, sharing `goal` equally
/// and handing what small keys leave to the larger ones.
fn rates(counts: &HashMap<u64, u64>, goal: f64) -> HashMap<u64, f64> {
    let mut by_size: Vec<(u64, u64)> = counts.iter().map(|(k, c)| (*k, *c)).collect();
    by_size.sort_unstable_by_key(|&(_, c)| c);
    let mut left = goal;
    let mut out = HashMap::with_capacity(by_size.len());
    for (i, &(key, count)) in by_size.iter().enumerate() {
        let share = left / (by_size.len() - i) as f64;
        let count = count as f64;
        let rate = if count <= share {
            1.0
        } else if share > 0.0 {
            count / share
        } else {
            count.max(1.0)
        };
        left -= count / rate;
        out.insert(key, rate.max(1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(i: u64, key: u64, spans: u32) -> TraceSummary {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        id[8..].copy_from_slice(&(i * 7919).to_le_bytes());
        let mut t = TraceSummary::new(TraceId(id));
        t.key_hash = key;
        t.span_count = spans;
        t
    }

    #[test]
    fn water_filling_keeps_small_keys_whole_and_thins_big_ones_to_the_goal() {
        let counts = HashMap::from([(1, 10), (2, 40), (3, 10_000)]);
        let r = rates(&counts, 1000.0);
        assert_eq!((r[&1], r[&2]), (1.0, 1.0));
        // 950 spans are left for key 3: 1 in 10000/950.
        assert!((r[&3] - 10_000.0 / 950.0).abs() < 1e-9, "{}", r[&3]);
        let r = rates(&HashMap::from([(1, 600), (2, 600)]), 1000.0);
        assert!((r[&1] - 1.2).abs() < 1e-9 && (r[&2] - 1.2).abs() < 1e-9);
    }

    #[test]
    fn after_an_interval_rare_keys_are_kept_and_the_common_one_meets_the_goal() {
        let p = Dynamic::new(100, Duration::from_secs(10), 1000);
        let t0 = p.lock().since;
        // First interval: 20k spans of key 1 (2000 traces of 10), 30 of key 2.
        for i in 0..2000 {
            p.evaluate_at(&trace(i, 1, 10), t0);
        }
        for i in 0..3 {
            p.evaluate_at(&trace(100_000 + i, 2, 10), t0);
        }
        // Second interval, same traffic: the goal is 1000 spans per 10 s.
        let t1 = t0 + Duration::from_secs(10);
        let mut kept = (0, 0);
        for i in 0..2000 {
            if p.evaluate_at(&trace(10_000 + i, 1, 10), t1).samples() {
                kept.0 += 10;
            }
        }
        for i in 0..3 {
            if p.evaluate_at(&trace(200_000 + i, 2, 10), t1).samples() {
                kept.1 += 10;
            }
        }
        assert_eq!(kept.1, 30, "the rare key is kept whole");
        assert!(
            (700..=1250).contains(&kept.0),
            "common key kept {} spans, goal ~970",
            kept.0
        );
        let prob = p.probability(&trace(0, 1, 10)).expect("known");
        assert!((prob - 970.0 / 20_000.0).abs() < 1e-3, "{prob}");
        assert_eq!(p.probability(&trace(0, 2, 10)), Some(1.0));
    }

    #[test]
    fn config_is_checked_and_one_dynamic_policy_is_allowed() {
        use crate::config::Config;
        let base = "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n";
        let dynamic = "  - {name: d, type: dynamic, dynamic: {key_fields: [http.route, status.code], goal_spans_per_second: 500}}\n";
        let cfg = Config::from_yaml(&format!("{base}{dynamic}")).expect("valid");
        let set = crate::policy::PolicySet::build(&cfg.policies).expect("builds");
        assert_eq!(set.keys.key_fields().len(), 2);
        let twice = format!(
            "{base}{dynamic}  - {{name: e, type: and, and: {{and_sub_policy: [{{name: f, type: dynamic, dynamic: {{key_fields: [x], goal_spans_per_second: 1}}}}]}}}}\n"
        );
        let e = Config::from_yaml(&twice).expect_err("two").to_string();
        assert!(e.contains("policies[1].and.and_sub_policy[0].type"), "{e}");
        let e = Config::from_yaml(&format!("{base}  - {{name: d, type: dynamic, dynamic: {{key_fields: [], goal_spans_per_second: 5}}}}\n"))
            .expect_err("no key")
            .to_string();
        assert!(e.contains("key_fields"), "{e}");
    }

    #[test]
    fn keys_beyond_the_limit_share_one_rate() {
        let p = Dynamic::new(10, Duration::from_secs(1), 2);
        let t0 = p.lock().since;
        for k in 1..=5 {
            p.evaluate_at(&trace(k, k, 1), t0);
        }
        assert_eq!(p.lock().counts.len(), 3, "two keys and the overflow");
    }
}
