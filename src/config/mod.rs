//! Configuration: the YAML schema, its defaults and the checks run before anything
//! starts.
//!
//! Every struct is strict (`deny_unknown_fields`): a misspelt key is an error, not a
//! silently ignored setting. Cross-field rules live in [`Config::validate`], which
//! names the field, the value and what was expected. `tailsift.example.yaml` at the
//! repository root is the annotated reference; a test loads it against these structs.

mod duration;
mod kafka;
mod memory;
mod policy;

use std::path::Path;

use serde::Deserialize;

pub use duration::{parse_duration, ConfigDuration};
pub use kafka::{Compression, KafkaConfig};
pub use memory::{parse_bytes, ByteSize, MemoryConfig, MemorySplit, TraceConfig};
pub use policy::{
    AndConfig, BooleanAttributeConfig, BytesLimitingConfig, DropConfig, LatencyConfig, NotConfig,
    NumericAttributeConfig, PolicyConfig, PolicyType, ProbabilisticConfig, RateLimitingConfig,
    SpanCountConfig, StatusCodeConfig, StringAttributeConfig, TraceStateConfig,
};

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (unknown field, wrong type, ...).
    #[error("config {path}: {source}")]
    Parse {
        /// The path given.
        path: String,
        /// What serde found, with the field path and line.
        source: serde_yaml::Error,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config field `{field}` = {value}: expected {expected}")]
    Invalid {
        /// Dotted path of the field, e.g. `policies[1].probabilistic.sampling_percentage`.
        field: String,
        /// The value found, as written.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// The whole tailsift configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Brokers, topics, consumer group and librdkafka pass-through properties.
    pub kafka: KafkaConfig,
    /// How long traces are held before they are decided, and how the buffer is split.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The memory budget and its watermarks.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Limits on a single trace.
    #[serde(default)]
    pub trace: TraceConfig,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The sampling policies, in the OpenTelemetry Collector `tail_sampling` shape.
    /// A trace is kept when any policy votes to sample it.
    pub policies: Vec<PolicyConfig>,
}

/// The trace buffer: when a trace is decided.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Time from a trace's first span to its decision. Spans arriving later follow the
    /// decision already made (see `decision_cache_traces`). Same meaning as the OTel
    /// processor's `decision_wait`.
    #[serde(default = "default_decision_wait")]
    pub decision_wait: ConfigDuration,
    /// If set, a trace is decided this long after its root span arrives, when that is
    /// earlier than `decision_wait`: root spans end last, so most traces are complete
    /// soon after. Unset: only `decision_wait` applies.
    #[serde(default)]
    pub decision_wait_after_root_received: Option<ConfigDuration>,
    /// Number of buffer shards, each owned by one worker task. `0`: one per CPU core.
    #[serde(default)]
    pub shards: usize,
    /// How many decided trace ids each shard remembers so late spans follow their
    /// trace's decision (kept: forwarded; dropped: dropped).
    #[serde(default = "default_decision_cache")]
    pub decision_cache_traces: usize,
}

fn default_decision_wait() -> ConfigDuration {
    ConfigDuration::from_millis(30_000)
}

fn default_decision_cache() -> usize {
    100_000
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            decision_wait: default_decision_wait(),
            decision_wait_after_root_received: None,
            shards: 0,
            decision_cache_traces: default_decision_cache(),
        }
    }
}

/// Metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`; empty
    /// string: no server.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "0.0.0.0:9464".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: default_listen(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field, the value and the expectation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field, the value and the expectation.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<text>".into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and cross-field rules that the types alone cannot express.
    ///
    /// # Errors
    /// The first [`ConfigError::Invalid`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        let b = &self.buffer;
        if b.decision_wait.0.is_zero() {
            return Err(ConfigError::invalid(
                "buffer.decision_wait",
                b.decision_wait,
                "a duration of at least 1ms",
            ));
        }
        if let Some(after_root) = b.decision_wait_after_root_received {
            if after_root > b.decision_wait {
                return Err(ConfigError::invalid(
                    "buffer.decision_wait_after_root_received",
                    after_root,
                    format!("at most buffer.decision_wait ({})", b.decision_wait),
                ));
            }
        }
        if b.shards > 1024 {
            return Err(ConfigError::invalid(
                "buffer.shards",
                b.shards,
                "0 (one per core) to 1024",
            ));
        }
        if !self.telemetry.listen.is_empty()
            && self
                .telemetry
                .listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError::invalid(
                "telemetry.listen",
                format!("{:?}", self.telemetry.listen),
                "an address such as `0.0.0.0:9464`, or \"\" to disable",
            ));
        }
        self.memory.validate()?;
        self.trace.validate(&self.memory)?;
        policy::validate_all(&self.policies)
    }

    /// The number of buffer shards to run.
    pub fn shard_count(&self) -> usize {
        if self.buffer.shards == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.buffer.shards
        }
    }
}

#[cfg(test)]
mod tests;
