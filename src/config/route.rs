//! The `route:` section: input topics not keyed by trace id, and where the route
//! stage writes them keyed.

use serde::Deserialize;

use super::{ConfigError, KafkaConfig};
use crate::codec::InputEncoding;

/// Input topics whose messages hold many traces each, or are not keyed by trace id
/// (the Collector's kafka exporter by default, Zipkin's Kafka transport). The route
/// stage splits every such message by trace and writes the pieces, keyed by trace id,
/// to the topic named by `target`, which the sampler reads instead, so that each
/// trace reaches one instance whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The input topics to route; each must be one of `kafka.input_topics`. Their
    /// encoding is read as for the sampler (`kafka.input_encoding[s]`); the routed
    /// topics hold OTLP protobuf.
    pub topics: Vec<String>,
    /// The routed topic of each, `{topic}` standing for the input topic's name. It
    /// must have as many partitions as the input topic (it is created so with
    /// `kafka.create_missing_topics`).
    #[serde(default = "default_target")]
    pub target: String,
    /// Run the route stage inside `tailsift run` (default). `false`: `run` only
    /// samples the routed topics, and `tailsift route -c FILE` runs the route stage
    /// as its own consumer group, scaled on its own.
    #[serde(default = "yes")]
    pub in_process: bool,
    /// The route stage's consumer group; default `<kafka.group_id>-route`.
    #[serde(default)]
    pub group_id: Option<String>,
}

fn default_target() -> String {
    "{topic}-by-trace".to_string()
}

fn yes() -> bool {
    true
}

impl RouteConfig {
    /// The routed topic of input topic `topic`.
    pub fn target_of(&self, topic: &str) -> String {
        self.target.replace("{topic}", topic)
    }

    /// The route stage's consumer group.
    pub fn group_of(&self, kafka: &KafkaConfig) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}-route", kafka.group_id))
    }

    /// The Kafka settings the sampler runs with: each routed input topic replaced by
    /// its routed topic, read as OTLP protobuf.
    pub fn sampler_kafka(&self, kafka: &KafkaConfig) -> KafkaConfig {
        let mut k = kafka.clone();
        for t in &mut k.input_topics {
            if self.topics.contains(t) {
                let routed = self.target_of(t);
                k.input_encodings
                    .insert(routed.clone(), InputEncoding::OtlpProto);
                *t = routed;
            }
        }
        k
    }

    /// Checks the section against the `kafka:` one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field, the value and what was expected.
    pub fn validate(&self, kafka: &KafkaConfig) -> Result<(), ConfigError> {
        if self.topics.is_empty() {
            return Err(ConfigError::invalid(
                "route.topics",
                "[]",
                "at least one of kafka.input_topics",
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !kafka.input_topics.contains(t) {
                return Err(ConfigError::invalid(
                    format!("route.topics[{i}]"),
                    t,
                    format!("one of kafka.input_topics ({:?})", kafka.input_topics),
                ));
            }
        }
        let targets: Vec<String> = self.topics.iter().map(|t| self.target_of(t)).collect();
        // Each name the target makes must be one Kafka accepts.
        for routed in &targets {
            super::kafka::check_topic("route.target", routed).map_err(|_| {
                ConfigError::invalid(
                    "route.target",
                    &self.target,
                    format!("a pattern naming valid Kafka topics: 1-249 characters of [a-zA-Z0-9._-], not `.` or `..` (it names {routed:?})"),
                )
            })?;
        }
        let clash = self.topics.iter().zip(&targets).find(|(t, routed)| {
            routed.trim().is_empty()
                || kafka.input_topics.contains(routed)
                || [
                    &kafka.output_topic,
                    &kafka.dead_letter_topic,
                    kafka.decisions_topic.as_ref().unwrap_or(&String::new()),
                ]
                .contains(routed)
                || targets.iter().filter(|o| o == routed).count() > 1
                || t.is_empty()
        });
        if let Some((t, routed)) = clash {
            return Err(ConfigError::invalid(
                "route.target",
                &self.target,
                format!(
                    "a topic name with `{{topic}}` naming a topic of its own for each routed topic (for `{t}` it names `{routed}`, which is empty or already an input, output, dead-letter or decisions topic, or another's target)"
                ),
            ));
        }
        if self.group_id.as_ref().is_some_and(|g| g.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "route.group_id",
                "\"\"",
                "a consumer group id, or no key for `<kafka.group_id>-route`",
            ));
        }
        if self.group_id.as_ref() == Some(&kafka.group_id) {
            return Err(ConfigError::invalid(
                "route.group_id",
                &kafka.group_id,
                "a group other than kafka.group_id (the sampler's)",
            ));
        }
        Ok(())
    }
}
