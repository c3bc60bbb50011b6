//! Configuration: the YAML schema, its defaults and the checks run before anything
//! starts.
//!
//! Every struct is strict (`deny_unknown_fields`): a misspelt key is an error, not a
//! silently ignored setting. Cross-field rules live in [`Config::validate`], which
//! names the field, the value and what was expected. `tailsift.example.yaml` at the
//! repository root is the annotated reference; a test loads it against these structs.

mod collector;
mod kafka;
mod memory;
mod promotion;
mod route;
mod subst;

use std::path::Path;

use serde::Deserialize;

pub use crate::duration::{parse_duration, ConfigDuration};
pub use crate::policy::PolicyConfig;
pub use kafka::{Compression, KafkaConfig, Partitioner, INPUT_FETCH_WAIT_MS};
pub use memory::{parse_bytes, ByteSize, MemoryConfig, MemorySplit, TraceConfig};
pub use promotion::PromotionConfig;
pub use route::RouteConfig;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    // The causes are part of the message, not `#[source]`s: an error chain printed
    // whole (`{:#}`) would repeat them.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The YAML does not match the schema (unknown field, wrong type, ...).
    #[error("config {path}: {error}")]
    Parse {
        /// The path given.
        path: String,
        /// What serde found, with the field path and line.
        error: serde_yaml_ng::Error,
    },
    /// The YAML, its `${...}` references resolved, does not match the schema: the
    /// field and what serde found (a resolved value shown as written).
    #[error("config field `{field}`: {message}")]
    Schema {
        /// Dotted path of the field, e.g. `kafka.consumer`.
        field: String,
        /// What serde found.
        message: String,
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

impl From<crate::policy::SpecError> for ConfigError {
    fn from(e: crate::policy::SpecError) -> Self {
        ConfigError::Invalid {
            field: e.field,
            value: e.value,
            expected: e.expected,
        }
    }
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
    /// Whether and how late spans promote a dropped trace.
    #[serde(default)]
    pub promotion: PromotionConfig,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Input topics not keyed by trace id, split by trace and written keyed by the
    /// route stage before the sampler reads them (README: Unkeyed input).
    #[serde(default)]
    pub route: Option<RouteConfig>,
    /// The sampling policies, in the OpenTelemetry Collector `tail_sampling` shape.
    /// A trace is kept when a policy votes to sample it and no `drop` policy drops it
    /// nor an `invert_match` policy vetoes it (the Collector's precedence; README).
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Decide as soon as a policy votes to sample, skipping the policies after it
    /// (OTel's `sample_on_first_match`): cheaper, but a `drop` policy then only
    /// vetoes when it comes before the sampling policy in the list, and later
    /// policies' metrics do not count the trace.
    #[serde(default)]
    pub sample_on_first_match: bool,
    /// Annotate kept spans with the deciding policy (`tailsampling.policy`) and, when
    /// known, the probability it keeps with (`tailsampling.probability` and the W3C
    /// `tracestate` entry `ot=th:...`), so backends can extrapolate counts.
    #[serde(default = "yes")]
    pub annotate: bool,
    /// An OTel Collector `tail_sampling` processor block, pasted as is, instead of
    /// `policies:` (its `decision_wait` sets `buffer.decision_wait`).
    #[serde(default)]
    pub tail_sampling: Option<OtelTailSampling>,
    /// An OTel Collector `processors:` section holding `tail_sampling`, pasted as is.
    #[serde(default)]
    pub processors: Option<OtelProcessors>,
    /// What loading noticed but accepted (Collector keys tailsift has other settings
    /// for): `run` logs each once, `check` prints them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The OTel Collector `processors:` section; only `tail_sampling` is read.
#[derive(Debug, Clone, Deserialize)]
pub struct OtelProcessors {
    /// The tail sampling processor's block.
    pub tail_sampling: Option<OtelTailSampling>,
}

/// The OTel Collector `tail_sampling` processor's block. Its processor-level keys
/// are mapped to tailsift's or refused with what to use instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelTailSampling {
    /// Mapped to `buffer.decision_wait`.
    #[serde(default)]
    pub decision_wait: Option<ConfigDuration>,
    /// Accepted with a warning: tailsift bounds memory in bytes (`memory.limit`).
    #[serde(default)]
    pub num_traces: Option<u64>,
    /// Accepted with a warning: a sizing hint tailsift does not need.
    #[serde(default)]
    pub expected_new_traces_per_sec: Option<u64>,
    /// Mapped to `buffer.decision_cache_traces` (the sum of the two sizes: tailsift
    /// keeps kept and dropped decisions in one cache).
    #[serde(default)]
    pub decision_cache: Option<OtelDecisionCache>,
    /// Mapped to `sample_on_first_match`.
    #[serde(default)]
    pub sample_on_first_match: Option<bool>,
    /// Accepted with a warning: tailsift always pushes back into Kafka instead.
    #[serde(default)]
    pub block_on_overflow: Option<bool>,
    /// Mapped to `buffer.decision_wait_after_root_received`.
    #[serde(default)]
    pub decision_wait_after_root_received: Option<ConfigDuration>,
    /// Mapped to `buffer.shards`.
    #[serde(default)]
    pub num_shards: Option<usize>,
    /// Mapped to `trace.max_bytes`, with a warning: tailsift decides a trace that
    /// reaches it at once instead of dropping it.
    #[serde(default)]
    pub maximum_trace_size_bytes: Option<u64>,
    /// Accepted with a warning: tailsift neither drops nor decides pending traces at
    /// shutdown; their input stays uncommitted and the next owner decides them whole.
    #[serde(default)]
    pub drop_pending_traces_on_shutdown: Option<bool>,
    /// Accepted with a warning: tailsift decides each trace once, on its spans in
    /// stream time.
    #[serde(default)]
    pub sampling_strategy: Option<serde_yaml_ng::Value>,
    /// The policies.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
}

fn yes() -> bool {
    true
}

/// The OTel processor's `decision_cache` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelDecisionCache {
    /// Kept decisions to remember.
    #[serde(default, deserialize_with = "otel_count")]
    pub sampled_cache_size: u64,
    /// Dropped decisions to remember.
    #[serde(default, deserialize_with = "otel_count")]
    pub non_sampled_cache_size: u64,
}

/// A count as the Collector's YAML reads it: a number, also written with `_`
/// separators (`100_000`, which YAML 1.2 parsers take for a string).
fn otel_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(u64),
        Text(String),
    }
    match Count::deserialize(d)? {
        Count::Number(n) => Ok(n),
        Count::Text(t) => t.replace('_', "").parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a count such as 100000 or 100_000, found {t:?}"
            ))
        }),
    }
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
    /// Record timestamps further ahead of the wall clock than this do not move a
    /// partition's stream time at all; nearer ones move it only up to the wall clock
    /// (a producer with a broken clock must not make buffered traces due early);
    /// both counted in `tailsift_future_timestamps_total`.
    #[serde(default = "default_max_timestamp_skew")]
    pub max_timestamp_skew: ConfigDuration,
    /// How long a caught-up partition must have had no new record, confirmed by the
    /// broker, before its stream time follows the wall clock, and how far behind the
    /// wall clock it then stays: the last traces of a quiet partition are decided
    /// this much after their wait, and producers cut off by the same outage get this
    /// long to deliver what they held.
    #[serde(default = "default_idle_delay")]
    pub idle_delay: ConfigDuration,
    /// `idle_delay` after the broker was unreachable (a failed probe, a start while
    /// every broker is down, or the first assignment after the pipeline restarted
    /// itself following an aborted transaction): producers cut
    /// off by the same outage reconnect with a backoff of their own (librdkafka's
    /// `reconnect.backoff.max.ms`, 10 s by default) before they deliver what they
    /// held, stamped with its time of production. Only how long the confirmation
    /// lasts; stream time then stays `idle_delay` behind. Raised to `idle_delay` if
    /// lower.
    #[serde(default = "default_idle_delay_after_outage")]
    pub idle_delay_after_outage: ConfigDuration,
}

fn default_max_timestamp_skew() -> ConfigDuration {
    ConfigDuration::from_millis(60_000)
}

fn default_idle_delay() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}

fn default_idle_delay_after_outage() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
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
            max_timestamp_skew: default_max_timestamp_skew(),
            idle_delay: default_idle_delay(),
            idle_delay_after_outage: default_idle_delay_after_outage(),
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
    /// How `tailsift run` logs.
    #[serde(default)]
    pub logs: LogsConfig,
}

/// Log lines: their level and encoding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Which lines are written: a level (`info`) or an `EnvFilter` directive list
    /// (`info,tailsift::sink=debug`). `RUST_LOG`, when set, wins. Default
    /// `info,librdkafka=warn,rdkafka=warn`.
    #[serde(default)]
    pub level: Option<String>,
    /// `text` (default), `json` (one JSON object per line: `timestamp`, `level`,
    /// `target`, `message` and the fields) or `collector_json` (the same with the
    /// Collector's field names: `level` in lower case, `ts`, `caller`, `msg`), for
    /// log pipelines that parse fields.
    #[serde(default)]
    pub encoding: LogEncoding,
}

/// How log lines are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and fields).
    Json,
    /// One JSON object per line with the OpenTelemetry Collector's field names
    /// (`level` in lower case, `ts`, `caller`, `msg`, then the fields).
    #[serde(rename = "collector_json")]
    CollectorJson,
}

fn default_listen() -> String {
    "0.0.0.0:9464".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: default_listen(),
            logs: LogsConfig::default(),
        }
    }
}

/// The error for YAML whose resolved values do not fit the schema. Parsed as
/// written, the same text gives serde's own error with its line when that error is
/// on a line without a reference (an unknown key, a wrong type written out): that
/// one is reported, as for a file without references. Else the field the resolved
/// values failed at, with any resolved value in the message shown as written.
///
/// `written`: the text, when the parsed document is that text (not a Collector
/// config reshaped).
fn schema_error(
    written: Option<&str>,
    e: serde_path_to_error::Error<serde_yaml_ng::Error>,
    resolved: &subst::Resolved,
) -> ConfigError {
    if let Some(text) = written {
        if let Err(raw) = serde_yaml_ng::from_str::<Config>(text) {
            let on_plain_line = raw
                .location()
                .and_then(|l| text.lines().nth(l.line().saturating_sub(1)))
                .is_some_and(|line| !line.contains("${"));
            if on_plain_line {
                return ConfigError::Parse {
                    path: "<text>".into(),
                    error: raw,
                };
            }
        }
    }
    let field = e.path().to_string();
    let message = e.into_inner().to_string();
    resolved.redact(ConfigError::Schema { field, message })
}

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field, the value and the expectation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { error, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                error,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field, the value and the expectation.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let parse = |error| ConfigError::Parse {
            path: "<text>".into(),
            error,
        };
        let mut adopted = None;
        let (mut cfg, resolved): (Config, _) = if text.contains("${") || collector::may_be(text) {
            // References are resolved in the parsed values (a secret with `: ` in it
            // stays one string), and a Collector config is turned into tailsift's
            // shape; else the text is parsed directly.
            let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(parse)?;
            if collector::is(&doc) {
                adopted = Some(collector::adopt(&mut doc)?);
            }
            let resolved = subst::resolve(&mut doc, &subst::Process)?;
            match serde_path_to_error::deserialize(doc) {
                Ok(cfg) => (cfg, resolved),
                Err(e) => {
                    let written = adopted.is_none().then_some(text);
                    return Err(schema_error(written, e, &resolved));
                }
            }
        } else {
            (
                serde_yaml_ng::from_str(text).map_err(parse)?,
                subst::Resolved::default(),
            )
        };
        cfg.warnings.extend(adopted);
        cfg.kafka.merge_client();
        cfg.merge_tail_sampling().map_err(|e| resolved.redact(e))?;
        cfg.validate().map_err(|e| resolved.redact(e))?;
        cfg.lint_policies();
        Ok(cfg)
    }

    /// A short hash of the policies and `sample_on_first_match`: instances of one group
    /// that show different fingerprints decide by different rules (a rollout in
    /// progress, or a forgotten instance).
    pub fn policy_fingerprint(&self) -> String {
        let text = serde_json::to_string(&(&self.policies, self.sample_on_first_match))
            .unwrap_or_default();
        // FNV-1a: stable across builds and platforms, unlike the std hasher.
        let hash = crate::codec::fnv1a(crate::codec::FNV1A_OFFSET, text.as_bytes());
        format!("{hash:016x}")
    }

    /// Warns (what the Collector does not) about a policy that keeps every trace:
    /// the policies after it change nothing but the `drop` ones and the inverted
    /// matches, which can still veto. An `and` of such policies counts as one.
    fn lint_policies(&mut self) {
        use crate::policy::PolicySpec;
        fn always(spec: &PolicySpec) -> bool {
            match spec {
                PolicySpec::AlwaysSample => true,
                PolicySpec::And(a) => {
                    !a.and_sub_policy.is_empty() && a.and_sub_policy.iter().all(|p| always(&p.spec))
                }
                _ => false,
            }
        }
        fn can_veto(spec: &PolicySpec) -> bool {
            match spec {
                PolicySpec::Drop(_) => true,
                PolicySpec::StringAttribute(c) => c.invert_match,
                PolicySpec::NumericAttribute(c) => c.invert_match,
                PolicySpec::BooleanAttribute(c) => c.invert_match,
                _ => false,
            }
        }
        let Some(at) = self.policies.iter().position(|p| always(&p.spec)) else {
            return;
        };
        let moot: Vec<&str> = self.policies[at + 1..]
            .iter()
            .filter(|p| !can_veto(&p.spec))
            .map(|p| p.name.as_str())
            .collect();
        if !moot.is_empty() {
            self.warnings.push(format!(
                "policies[{at}] ({}) keeps every trace: the later policies {moot:?} change nothing (only `drop` policies and inverted matches after it can still veto a trace; move it last, or remove it)",
                self.policies[at].name
            ));
        }
    }

    /// Takes the policies (and decision wait) from a pasted OTel `tail_sampling`
    /// block, refusing the processor keys tailsift has other settings for.
    fn merge_tail_sampling(&mut self) -> Result<(), ConfigError> {
        let (at, ts) = match (
            self.tail_sampling.take(),
            self.processors.take().and_then(|p| p.tail_sampling),
        ) {
            (None, None) => return Ok(()),
            (Some(t), None) => ("tail_sampling", t),
            (None, Some(t)) => ("processors.tail_sampling", t),
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "tail_sampling",
                    "a block",
                    "one `tail_sampling` block (there is one under `processors:` too)",
                ))
            }
        };
        if !self.policies.is_empty() {
            return Err(ConfigError::invalid(
                "policies",
                format!("{} policies", self.policies.len()),
                format!("no `policies:` list beside `{at}` (keep one of them)"),
            ));
        }
        if let Some(n) = ts.num_traces {
            self.warnings.push(format!(
                "{at}.num_traces ({n}) is not used: tailsift bounds the buffer in bytes, by memory.limit ({}), pausing input at memory.high_watermark",
                self.memory.limit
            ));
        }
        if let Some(n) = ts.expected_new_traces_per_sec {
            self.warnings.push(format!(
                "{at}.expected_new_traces_per_sec ({n}) is not used: tailsift's trace table grows as needed within memory.limit"
            ));
        }
        if let Some(c) = ts.decision_cache {
            let total = c
                .sampled_cache_size
                .saturating_add(c.non_sampled_cache_size);
            if total > 0 {
                self.buffer.decision_cache_traces = usize::try_from(total).unwrap_or(usize::MAX);
            }
        }
        if let Some(first) = ts.sample_on_first_match {
            self.sample_on_first_match = first;
        }
        if let Some(b) = ts.block_on_overflow {
            self.warnings.push(format!(
                "{at}.block_on_overflow ({b}) is not used: tailsift always blocks, by pausing its Kafka input at memory.high_watermark (the data waits in Kafka)"
            ));
        }
        if let Some(d) = ts.decision_wait {
            self.buffer.decision_wait = d;
        }
        if let Some(d) = ts.decision_wait_after_root_received {
            self.buffer.decision_wait_after_root_received = Some(d);
        }
        if let Some(n) = ts.num_shards {
            self.buffer.shards = n;
        }
        if let Some(bytes) = ts.maximum_trace_size_bytes {
            self.trace.max_bytes = Some(ByteSize(bytes));
            self.warnings.push(format!(
                "{at}.maximum_trace_size_bytes ({bytes}) is taken as trace.max_bytes: a trace that reaches it is decided at once (its later spans follow the decision), not dropped"
            ));
        }
        if let Some(d) = ts.drop_pending_traces_on_shutdown {
            self.warnings.push(format!(
                "{at}.drop_pending_traces_on_shutdown ({d}) is not used: at shutdown tailsift neither drops nor decides buffered traces; their input stays uncommitted and the partition's next owner decides them whole"
            ));
        }
        if let Some(s) = &ts.sampling_strategy {
            let shown = serde_yaml_ng::to_string(s).unwrap_or_default();
            self.warnings.push(format!(
                "{at}.sampling_strategy ({}) is not used: tailsift decides each trace once, on all its spans, decision_wait after its first span in stream time; late spans of a dropped trace can still promote it (promotion.enabled)",
                shown.trim()
            ));
        }
        self.policies = ts.policies;
        Ok(())
    }

    /// The Kafka settings the sampler reads with: `kafka`, with each topic of
    /// `route.topics` replaced by its routed topic (OTLP protobuf, keyed by trace id).
    pub fn sampler_kafka(&self) -> KafkaConfig {
        match &self.route {
            Some(r) => r.sampler_kafka(&self.kafka),
            None => self.kafka.clone(),
        }
    }

    /// Checks ranges and cross-field rules that the types alone cannot express.
    ///
    /// # Errors
    /// The first [`ConfigError::Invalid`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.promotion.validate()?;
        if let Some(r) = &self.route {
            r.validate(&self.kafka)?;
        }
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
        if let Some(level) = &self.telemetry.logs.level {
            if tracing_subscriber::EnvFilter::try_new(level).is_err() || level.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "telemetry.logs.level",
                    format!("{level:?}"),
                    "a level (error, warn, info, debug, trace) or directives such as `info,tailsift::sink=debug`",
                ));
            }
        }
        self.memory.validate()?;
        self.trace.validate(&self.memory)?;
        crate::policy::validate_all(&self.policies)?;
        for (i, p) in self.policies.iter().enumerate() {
            let Some(t) = &p.topic else {
                continue;
            };
            let field = format!("policies[{i}].topic");
            kafka::check_topic(&field, t)?;
            // Topics tailsift reads: the inputs, and what the route stage writes for
            // the sampler to read (kept traces written there loop: 5 traces became
            // 11,500 records in 20 s).
            let routed = self
                .route
                .as_ref()
                .is_some_and(|r| r.topics.iter().any(|input| r.target_of(input) == *t));
            if self.kafka.input_topics.contains(t) || routed {
                return Err(ConfigError::invalid(
                    field,
                    t,
                    "a topic tailsift does not read (not an input topic nor a route.target): kept traces would be read back as input, forever",
                ));
            }
            if *t == self.kafka.dead_letter_topic || self.kafka.decisions_topic.as_ref() == Some(t)
            {
                return Err(ConfigError::invalid(
                    field,
                    t,
                    "a topic other than kafka.dead_letter_topic and kafka.decisions_topic (their readers expect dead letters and decision records, not traces)",
                ));
            }
        }
        Ok(())
    }

    /// Warns when `memory.limit` is above the memory this machine (or its cgroup)
    /// has: the limit could never hold, and the kernel would kill the process first.
    pub fn warn_if_memory_exceeds_machine(&self) {
        let Some(available) = memory::machine_memory() else {
            return;
        };
        if self.memory.limit.0 > available {
            tracing::warn!(
                message = "memory.limit is above this machine's memory; the kernel would end the process before the limit is reached.",
                limit = %self.memory.limit,
                machine = %memory::ByteSize(available)
            );
        }
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
