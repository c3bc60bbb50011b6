//! `promotion:`: how late spans revise a drop.

use serde::Deserialize;

use super::{ByteSize, ConfigError};

/// Late evidence: when spans come for a trace already dropped and a policy whose
/// vote depends on the trace alone (not chance or a budget) would now keep it, the
/// trace's earlier pieces are read again from its input partition and the whole
/// trace goes out, marked `tailsift.promoted: late` (README: Guarantees).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    /// Whether late spans can promote a dropped trace. Off: they are dropped with
    /// it, as the OTel Collector does.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Re-reads running at once (each reads one input partition's range for every
    /// trace promoted there meanwhile).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_rereads: usize,
    /// Input bytes re-read per second, at most, over all re-reads: promotions never
    /// take the bandwidth the input needs.
    #[serde(default = "default_rate")]
    pub max_reread_bytes_per_second: ByteSize,
    /// Input bytes one re-read reads at most: a trace whose earlier pieces span more
    /// of its partition goes out with what was read, marked incomplete.
    #[serde(default = "default_range")]
    pub max_range_bytes: ByteSize,
}

fn yes() -> bool {
    true
}

fn default_concurrency() -> usize {
    2
}

fn default_rate() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_range() -> ByteSize {
    ByteSize(256 << 20)
}

impl Default for PromotionConfig {
    fn default() -> Self {
        PromotionConfig {
            enabled: true,
            max_concurrent_rereads: default_concurrency(),
            max_reread_bytes_per_second: default_rate(),
            max_range_bytes: default_range(),
        }
    }
}

impl PromotionConfig {
    /// Checks the limits are usable.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.max_concurrent_rereads) {
            return Err(ConfigError::invalid(
                "promotion.max_concurrent_rereads",
                self.max_concurrent_rereads,
                "1 to 64",
            ));
        }
        if self.max_reread_bytes_per_second.0 < 1 << 20 {
            return Err(ConfigError::invalid(
                "promotion.max_reread_bytes_per_second",
                self.max_reread_bytes_per_second,
                "at least 1MiB",
            ));
        }
        if self.max_range_bytes.0 < 1 << 20 {
            return Err(ConfigError::invalid(
                "promotion.max_range_bytes",
                self.max_range_bytes,
                "at least 1MiB",
            ));
        }
        Ok(())
    }
}
