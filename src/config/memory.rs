//! The `memory:` and `trace:` sections, and byte sizes written as `512MiB`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::ConfigError;

/// A number of bytes, written `512MiB`, `2GiB`, `64MB`, `4096` or `4096B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= size && b % size == 0 {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}B")
    }
}

/// Parses `512MiB`, `2GiB`, `64MB`, `1.5GiB`, `4096`; `KB`/`MB`/`GB`/`TB` are powers
/// of 1000, `KiB`/`MiB`/`GiB`/`TiB` (and Kubernetes' `Ki`/`Mi`/`Gi`/`Ti`) of 1024.
pub fn parse_bytes(s: &str) -> Option<u64> {
    parse_bytes_explained(s).ok()
}

/// [`parse_bytes`], saying why a text is refused.
fn parse_bytes_explained(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        format!("{s:?}: expected a size such as `512MiB`, `2Gi` or a number of bytes")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        "TB" | "T" => 1_000_000_000_000,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "unsupported unit {other:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (or Ki, Mi, Gi, Ti)"
            ))
        }
    };
    let v = num * scale as f64;
    if !(0.0..1e18).contains(&v) {
        return Err(format!("{s} is too large (at most 1e18 bytes)"));
    }
    Ok(v as u64)
}

/// The memory this process may use: the cgroup's limit if one is set, else the
/// machine's (Linux; `None` elsewhere or when unreadable).
pub fn machine_memory() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as `512MiB`, `2GiB` or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes_explained(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// The memory budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Everything tailsift buffers, in bytes: input held by undecided traces, their
    /// book-keeping, kept traces awaiting acknowledgement, the decision cache, and
    /// librdkafka's consumer queue (1/8 of this) and producer queue (1/16), each
    /// 1-64 MiB.
    /// Process RSS stays below this plus a fixed overhead (see README).
    #[serde(default = "default_limit")]
    pub limit: ByteSize,
    /// Share of the buffer budget above which input is paused and the oldest traces
    /// are decided early.
    #[serde(default = "default_high")]
    pub high_watermark: f64,
    /// Share of the buffer budget below which paused input resumes.
    #[serde(default = "default_low")]
    pub low_watermark: f64,
}

fn default_limit() -> ByteSize {
    ByteSize(512 << 20)
}

fn default_high() -> f64 {
    0.9
}

fn default_low() -> f64 {
    0.75
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limit: default_limit(),
            high_watermark: default_high(),
            low_watermark: default_low(),
        }
    }
}

/// How the limit is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySplit {
    /// librdkafka `queued.max.messages.kbytes` (consumer prefetch), bytes.
    pub consumer_queue: u64,
    /// librdkafka `queue.buffering.max.kbytes` (producer), bytes.
    pub producer_queue: u64,
    /// What the buffer may hold, bytes.
    pub buffer: u64,
}

impl MemoryConfig {
    /// Splits the limit between librdkafka's queues and the buffer.
    pub fn split(&self) -> MemorySplit {
        // The consumer's prefetch gets the larger share: on a fast broker, fetches of
        // less than librdkafka's defaults (64 MiB queue, 50 MiB per fetch) cost
        // throughput (a third at 32 MiB in the end-to-end bench).
        let consumer_queue = (self.limit.0 / 8).clamp(1 << 20, 64 << 20);
        let producer_queue = (self.limit.0 / 16).clamp(1 << 20, 64 << 20);
        MemorySplit {
            consumer_queue,
            producer_queue,
            buffer: self.limit.0.saturating_sub(consumer_queue + producer_queue),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.limit.0 < 16 << 20 {
            return Err(ConfigError::invalid(
                "memory.limit",
                self.limit,
                "at least 16MiB",
            ));
        }
        if !(self.high_watermark > 0.0 && self.high_watermark <= 1.0) {
            return Err(ConfigError::invalid(
                "memory.high_watermark",
                self.high_watermark,
                "a share of the buffer budget in (0, 1]",
            ));
        }
        if !(self.low_watermark > 0.0 && self.low_watermark < self.high_watermark) {
            return Err(ConfigError::invalid(
                "memory.low_watermark",
                self.low_watermark,
                format!(
                    "a share above 0 and below high_watermark ({})",
                    self.high_watermark
                ),
            ));
        }
        Ok(())
    }
}

/// Limits on a single trace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// A trace reaching this many spans is decided at once; its later spans follow
    /// that decision.
    #[serde(default = "default_max_spans")]
    pub max_spans: u32,
    /// A trace reaching this many buffered bytes is decided at once. Default: 1/8 of
    /// the buffer budget.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

fn default_max_spans() -> u32 {
    20_000
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            max_spans: default_max_spans(),
            max_bytes: None,
        }
    }
}

impl TraceConfig {
    /// The effective byte limit for one trace.
    pub fn max_bytes(&self, memory: &MemoryConfig) -> u64 {
        self.max_bytes.map_or(memory.split().buffer / 8, |b| b.0)
    }

    pub(super) fn validate(&self, memory: &MemoryConfig) -> Result<(), ConfigError> {
        if self.max_spans == 0 {
            return Err(ConfigError::invalid("trace.max_spans", 0, "at least 1"));
        }
        if let Some(b) = self.max_bytes {
            let half = memory.split().buffer / 2;
            if b.0 == 0 || b.0 > half {
                return Err(ConfigError::invalid(
                    "trace.max_bytes",
                    b,
                    format!(
                        "between 1 byte and half the buffer budget ({})",
                        ByteSize(half)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("64MB"), Some(64_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Some(1536));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12 parsecs"), None);
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }

    #[test]
    fn split_keeps_most_for_the_buffer() {
        let m = MemoryConfig {
            limit: ByteSize(64 << 20),
            ..MemoryConfig::default()
        };
        let s = m.split();
        assert_eq!(s.consumer_queue, 8 << 20);
        assert_eq!(s.producer_queue, 4 << 20);
        assert_eq!(s.buffer, 52 << 20);
    }
}
