//! The `kafka:` section.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigDuration, ConfigError};

/// librdkafka properties, every value a string as librdkafka takes them: numbers
/// and booleans written unquoted (`session.timeout.ms: 45000`, `enable.ssl.certificate.verification: false`)
/// are taken as their text, whether the file holds `${...}` references or not.
fn properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Unsigned(u64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Unsigned(u) => u.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}
use crate::codec::{InputEncoding, OutputEncoding};

/// Compression of produced records. Input in any codec is read regardless: the
/// consumer decompresses whatever the producer used.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4: cheap on CPU, a good default for span data.
    #[default]
    Lz4,
    /// zstd: the best ratio.
    Zstd,
}

/// How the producers of the input pick a keyed record's partition, so `tailsift
/// explain` and `promote` can search only the partition a trace id's key hashes to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// Not known: every partition is searched.
    #[default]
    Unknown,
    /// Kafka's murmur2 of the key, as the Java client, franz-go and so the OTel
    /// Collector's kafka exporter use.
    Murmur2,
    /// CRC-32 of the key, as librdkafka's `consistent` and `consistent_random`
    /// (its default, for keyed records) partitioners.
    Crc32,
}

impl Partitioner {
    /// The partition of `partitions` a record keyed `key` goes to, if known.
    pub fn partition(self, key: &[u8], partitions: i32) -> Option<i32> {
        if partitions <= 0 {
            return None;
        }
        let hash = match self {
            Partitioner::Unknown => return None,
            // Kafka's `Utils.toPositive(Utils.murmur2(key)) % partitions`.
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
            // librdkafka's `rd_crc32(key) % partitions`.
            Partitioner::Crc32 => crc32fast::hash(key),
        };
        i32::try_from(hash % partitions.unsigned_abs()).ok()
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

impl Compression {
    /// The librdkafka `compression.codec` value.
    pub fn to_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Brokers, topics and client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers: `host:port[,host:port...]` or a list of `host:port`.
    /// Overridden by `--brokers` or `TAILSIFT_BROKERS`.
    #[serde(deserialize_with = "string_or_list")]
    pub brokers: String,
    /// Consumer group id. Every instance with the same id shares the input partitions.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topics carrying spans, in `input_encoding` (or the topic's entry in
    /// `input_encodings`), keyed by trace id so a trace stays on one partition (the
    /// Collector's kafka exporter with `partition_traces_by_id: true`; Jaeger keys by
    /// trace id itself).
    pub input_topics: Vec<String>,
    /// How input messages are encoded: `otlp_proto` (default), `otlp_json`,
    /// `jaeger_proto`, `jaeger_json`, `zipkin_json` or `zipkin_proto` (the encodings of
    /// the Collector's kafka exporter). Kept traces are written as OTLP protobuf.
    #[serde(default)]
    pub input_encoding: InputEncoding,
    /// Per input topic, an encoding other than `input_encoding`.
    #[serde(default)]
    pub input_encodings: BTreeMap<String, InputEncoding>,
    /// Topic that receives kept traces, one record per trace keyed by its hex trace id.
    pub output_topic: String,
    /// Encoding of kept records: `otlp_proto` (default) or `otlp_json` (OTLP/JSON, about
    /// 2-3x larger; a trace is split into more records to stay within
    /// `max_message_bytes`). Spans set aside to the dead-letter topic stay protobuf.
    #[serde(default)]
    pub output_encoding: OutputEncoding,
    /// Topic that receives input messages that cannot be decoded, unchanged, with
    /// headers saying why and where they came from.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Compacted topic recording every decision (`proto/tailsift/v1/decision.proto`),
    /// with at least as many partitions as the input topics. Whoever owns an input
    /// partition next (after a crash, restart or rebalance) reads its decisions back
    /// before reading the partition, so late spans follow the decision made before
    /// and no trace comes out half kept. Unset: decisions live only in memory.
    #[serde(default)]
    pub decisions_topic: Option<String>,
    /// How far back a partition's next owner reads the decisions topic for late
    /// spans: it reads from the earlier of now less this window and the time of the
    /// input record at the partition's committed offset (less a minute for clock
    /// skew), never from the topic's start, so the read does not grow with the
    /// topic's history. Late spans of traces decided longer ago are decided afresh.
    /// A compacted topic keyed by unique trace ids never shrinks: give it
    /// `cleanup.policy=compact,delete` and a `retention.ms` above this window plus
    /// the longest consumer lag.
    #[serde(default = "default_decisions_window")]
    pub decisions_window: ConfigDuration,
    /// How the input's producers partition records keyed by trace id: `murmur2`
    /// (Java clients, franz-go, the OTel Collector's kafka exporter), `crc32`
    /// (librdkafka's default) or `unknown`. Known, `tailsift explain` and `promote`
    /// search only the partition a trace's key goes to.
    #[serde(default)]
    pub input_partitioner: Partitioner,
    /// Largest record tailsift produces; a bigger kept trace is split into several
    /// records (each a valid OTLP request). Keep it at or below the broker's
    /// `message.max.bytes`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Compression of produced records.
    #[serde(default)]
    pub compression: Compression,
    /// How often safe offsets are committed.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: ConfigDuration,
    /// librdkafka properties for every client tailsift makes (consumer, producer,
    /// admin client, decisions reader): where security settings (`security.protocol`,
    /// `sasl.*`, `ssl.*`) go once. `consumer` and `producer` override them per key.
    #[serde(default, deserialize_with = "properties")]
    pub client: BTreeMap<String, String>,
    /// Extra librdkafka consumer properties (e.g. `session.timeout.ms`), over
    /// `client` and tailsift's own.
    #[serde(default, deserialize_with = "properties")]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties (also the admin client's), over
    /// `client` and tailsift's own.
    #[serde(default, deserialize_with = "properties")]
    pub producer: BTreeMap<String, String>,
    /// Create the topics tailsift writes (output, dead-letter, decisions, policies'
    /// `topic:`) at start when the broker does not have them, through the admin API,
    /// for brokers that do not create topics on first use. Each gets as many
    /// partitions as the first input topic; the decisions topic is compacted.
    #[serde(default)]
    pub create_missing_topics: bool,
    /// Replication factor of topics tailsift creates; -1: the broker's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Exactly-once output: kept traces, their decision records and dead letters are
    /// produced in Kafka transactions that also commit the input offsets they cover,
    /// so `read_committed` readers see each kept trace once. Needs
    /// `decisions_topic` (a re-read trace whose decision committed is not output
    /// again) and a broker with transactions (Kafka 2.5+). Off: at-least-once.
    #[serde(default)]
    pub exactly_once: bool,
}

/// A string, or a list of strings joined by commas (`brokers: [a:9092, b:9092]`).
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a string `host:port,host:port` or a list of `host:port`"
    )]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    })
}

impl KafkaConfig {
    /// The encoding of input topic `topic`.
    pub fn encoding_of(&self, topic: &str) -> InputEncoding {
        self.input_encodings
            .get(topic)
            .copied()
            .unwrap_or(self.input_encoding)
    }

    /// Applies `client` under `consumer` and `producer`: a key set in both keeps the
    /// specific section's value. Called once at load, before validation, so the
    /// checks see every property each client gets.
    pub(super) fn merge_client(&mut self) {
        for (k, v) in &self.client {
            self.consumer.entry(k.clone()).or_insert_with(|| v.clone());
            self.producer.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn default_decisions_window() -> ConfigDuration {
    ConfigDuration::from_millis(600_000)
}

fn default_replication_factor() -> i32 {
    -1
}

fn default_group_id() -> String {
    "tailsift".into()
}

fn default_dead_letter_topic() -> String {
    "tailsift-dead-letter".into()
}

fn default_max_message_bytes() -> usize {
    1_000_000
}

fn default_commit_interval() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}

/// Producer properties tailsift sets itself in exactly-once mode.
const RESERVED_TXN_KEYS: &[&str] = &["transactional.id", "enable.idempotence"];

/// Properties tailsift sets itself for its guarantees; overriding them is refused.
const RESERVED_CONSUMER_KEYS: &[&str] =
    &["enable.auto.commit", "enable.auto.offset.store", "group.id"];

impl KafkaConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // Each entry of the list, not only the whole: " , " names no broker.
        if self.brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                format!("{:?}", self.brokers),
                "host:port[,host:port...], no entry empty",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.group_id",
                "\"\"",
                "a non-empty consumer group id",
            ));
        }
        if self.input_topics.is_empty() {
            return Err(ConfigError::invalid(
                "kafka.input_topics",
                "[]",
                "at least one topic",
            ));
        }
        for (i, t) in self.input_topics.iter().enumerate() {
            check_topic(&format!("kafka.input_topics[{i}]"), t)?;
        }
        check_topic("kafka.output_topic", &self.output_topic)?;
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(ConfigError::invalid(
                "kafka.replication_factor",
                self.replication_factor,
                "-1 (the broker's default) or at least 1",
            ));
        }
        check_topic("kafka.dead_letter_topic", &self.dead_letter_topic)?;
        if let Some(t) = self
            .input_encodings
            .keys()
            .find(|t| !self.input_topics.contains(t))
        {
            return Err(ConfigError::invalid(
                format!("kafka.input_encodings.{t}"),
                t,
                format!(
                    "one of kafka.input_topics ({})",
                    self.input_topics.join(", ")
                ),
            ));
        }
        // A topic tailsift writes that it also reads would feed itself forever.
        if self.input_topics.contains(&self.dead_letter_topic) {
            return Err(ConfigError::invalid(
                "kafka.dead_letter_topic",
                &self.dead_letter_topic,
                "a topic that is not also an input topic (its dead letters would be read back and dead-lettered again, forever)",
            ));
        }
        if self.dead_letter_topic == self.output_topic {
            return Err(ConfigError::invalid(
                "kafka.dead_letter_topic",
                &self.dead_letter_topic,
                "a topic other than kafka.output_topic (readers of the output would get undecodable records)",
            ));
        }
        if let Some(d) = &self.decisions_topic {
            check_topic("kafka.decisions_topic", d)?;
            if self.input_topics.contains(d)
                || *d == self.output_topic
                || *d == self.dead_letter_topic
            {
                return Err(ConfigError::invalid(
                    "kafka.decisions_topic",
                    d,
                    "a topic of its own (not an input, output or dead-letter topic)",
                ));
            }
        }
        if self.input_topics.contains(&self.output_topic) {
            return Err(ConfigError::invalid(
                "kafka.output_topic",
                &self.output_topic,
                "a topic that is not also an input topic",
            ));
        }
        if !(1024..=1_000_000_000).contains(&self.max_message_bytes) {
            return Err(ConfigError::invalid(
                "kafka.max_message_bytes",
                self.max_message_bytes,
                "1024 to 1000000000 bytes",
            ));
        }
        if self.commit_interval.0.is_zero() {
            return Err(ConfigError::invalid(
                "kafka.commit_interval",
                self.commit_interval,
                "at least 1ms",
            ));
        }
        if self.decisions_window.0.is_zero() {
            return Err(ConfigError::invalid(
                "kafka.decisions_window",
                self.decisions_window,
                "at least 1s",
            ));
        }
        if self.exactly_once && self.decisions_topic.is_none() {
            return Err(ConfigError::invalid(
                "kafka.exactly_once",
                true,
                "kafka.decisions_topic set as well: a trace re-read after a crash or rebalance is known as output only through its committed decision record",
            ));
        }
        for k in self.producer.keys() {
            if self.exactly_once && RESERVED_TXN_KEYS.contains(&k.as_str()) {
                return Err(ConfigError::invalid(
                    format!("kafka.producer.{k}"),
                    VALUE_NOT_SHOWN,
                    "no value: with kafka.exactly_once tailsift makes each instance's transactional producer itself (a transactional.id shared by instances would fence them from each other)",
                ));
            }
        }
        for k in self.consumer.keys() {
            if RESERVED_CONSUMER_KEYS.contains(&k.as_str()) {
                return Err(ConfigError::invalid(
                    format!("kafka.consumer.{k}"),
                    VALUE_NOT_SHOWN,
                    "no value: tailsift manages this property for at-least-once delivery (use kafka.group_id for the group)",
                ));
            }
        }
        if let Some(v) = self
            .consumer
            .get("statistics.interval.ms")
            .filter(|v| v.trim() == "0")
        {
            return Err(ConfigError::invalid(
                "kafka.consumer.statistics.interval.ms",
                v,
                "a positive interval (ms): tailsift's health, lag metrics and idle-partition clock read librdkafka's statistics",
            ));
        }
        check_properties("kafka.consumer", &self.consumer)?;
        check_properties("kafka.producer", &self.producer)
    }
}

impl KafkaConfig {
    /// Whether the input consumers are static group members (`group.instance.id` in
    /// `consumer`): they keep their partitions across a restart within their session,
    /// so they never leave their group.
    pub fn static_member(&self) -> bool {
        self.consumer.contains_key("group.instance.id")
    }

    /// Makes, and drops, a consumer and a producer with the passed-through
    /// properties and no bootstrap servers (so nothing is contacted), for what
    /// librdkafka checks only when a client is made: SASL mechanisms, certificate
    /// files, combinations. `check` and `run` call it, so `check` refuses what `run`
    /// would. The error names the section, never a value.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `kafka.consumer` or `kafka.producer`.
    pub fn check_clients(&self) -> Result<(), ConfigError> {
        use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::producer::BaseProducer;
        for (section, props) in [
            ("kafka.consumer", &self.consumer),
            ("kafka.producer", &self.producer),
        ] {
            let mut c = ClientConfig::new();
            // Only this check's own "no bootstrap servers" notice would be logged.
            c.set_log_level(RDKafkaLogLevel::Emerg);
            for (k, v) in props {
                c.set(k, v);
            }
            let made = if section == "kafka.consumer" {
                c.set("group.id", &self.group_id);
                c.create::<BaseConsumer>().map(drop)
            } else {
                c.create::<BaseProducer>().map(drop)
            };
            if let Err(e) = made {
                let mut why = e.to_string();
                for v in props.values().filter(|v| v.len() >= 3) {
                    why = why.replace(v.as_str(), VALUE_NOT_SHOWN);
                }
                return Err(ConfigError::invalid(
                    section,
                    VALUE_NOT_SHOWN,
                    format!("properties librdkafka accepts together; it says: {why}"),
                ));
            }
        }
        Ok(())
    }
}

/// librdkafka `fetch.wait.max.ms` of the input consumers (the source's and the route
/// stage's), unless `kafka.consumer` sets it: how long a broker may hold a fetch open
/// while none of its partitions has data (librdkafka's default is 500 ms).
///
/// One fetch is outstanding per broker. When the prefetch queue is full, the
/// partitions that still have data are backed off for `fetch.queue.backoff.ms`, and
/// the fetch sent meanwhile holds only partitions at their end: the broker keeps it
/// open for this long, and no partition of that broker is fetched until it returns.
/// With the default, a backlog read stalled for ~300 ms each time the queue filled
/// (the e2e bench on Collector-sized messages: 2.15 s -> 1.64 s with 50 ms). An idle
/// consumer then sends ~20 empty fetches a second per broker instead of 2.
pub const INPUT_FETCH_WAIT_MS: &str = "50";

/// What an error shows instead of a librdkafka property's value: any of them may be
/// a secret (`sasl.password`, `ssl.key.password`, or a value under a misspelt key).
pub const VALUE_NOT_SHOWN: &str = "(value not shown)";

/// Checks each passed-through librdkafka property the way librdkafka itself will when
/// the client is created (name known, value of the right form), without connecting,
/// so `check` refuses what `run` would. The error names the property, never its value.
fn check_properties(section: &str, props: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    use rdkafka::config::ClientConfig;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaConfRes;
    for (k, v) in props {
        let mut c = ClientConfig::new();
        c.set(k, v);
        // librdkafka logs nothing here: only `rd_kafka_conf_set` runs.
        match c.create_native_config() {
            Ok(_) => {}
            Err(KafkaError::ClientConfig(res, ..)) => {
                let expected = match res {
                    RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => {
                        "a librdkafka property name (see librdkafka's CONFIGURATION.md): this one is unknown"
                    }
                    _ => "a value librdkafka accepts for this property (see librdkafka's CONFIGURATION.md)",
                };
                return Err(ConfigError::invalid(
                    format!("{section}.{k}"),
                    VALUE_NOT_SHOWN,
                    expected,
                ));
            }
            Err(_) => {
                return Err(ConfigError::invalid(
                    format!("{section}.{k}"),
                    VALUE_NOT_SHOWN,
                    "a property librdkafka accepts",
                ))
            }
        }
    }
    Ok(())
}

pub(super) fn check_topic(field: &str, t: &str) -> Result<(), ConfigError> {
    // Kafka refuses `.` and `..` (they name directories) besides the length and
    // character rules.
    let ok = !t.is_empty()
        && t != "."
        && t != ".."
        && t.len() <= 249
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{t:?}"),
            "a Kafka topic name: 1-249 characters of [a-zA-Z0-9._-], not `.` or `..`",
        ))
    }
}

#[cfg(test)]
mod partitioner_tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas() {
        // Values of Kafka's Utils.murmur2 (its UtilsTest), as signed ints.
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn a_key_goes_to_one_known_partition() {
        let key = b"0af7651916cd43dd8448eb211c80319c";
        assert_eq!(Partitioner::Unknown.partition(key, 6), None);
        let m = Partitioner::Murmur2.partition(key, 6).expect("known");
        assert!((0..6).contains(&m));
        // librdkafka: rd_crc32 is the IEEE CRC-32 ("123456789" -> 0xcbf43926).
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            Partitioner::Crc32.partition(b"123456789", 7),
            Some((0xcbf4_3926u32 % 7) as i32)
        );
    }
}
