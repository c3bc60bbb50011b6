//! Reading decisions back from the decisions topic when partitions are assigned.
//!
//! A partition's new owner (after a crash, restart or rebalance) must decide the late
//! spans of traces decided before the same way. With `kafka.decisions_topic` set, the
//! source pauses each newly assigned partition, reads the decisions partition
//! numbered like it from the start to its end, hands the decisions to the shards'
//! caches, and only then resumes the partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::decide::DecisionRecord;

/// Longest a load may take; after it the partition is read with what was loaded.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Consumer properties a group-less reader must not inherit from `kafka.consumer`.
const GROUP_KEYS: &[&str] = &["group.", "partition.assignment", "session.", "heartbeat."];

/// How to reach the decisions topic.
#[derive(Debug, Clone)]
pub(super) struct DecisionsTopic {
    pub(super) brokers: String,
    /// `kafka.consumer`, less group settings (TLS, SASL and the like).
    pub(super) properties: Vec<(String, String)>,
    pub(super) topic: String,
    /// A group id of its own: librdkafka assigns partitions only in a group, though
    /// this reader never joins or commits.
    pub(super) reader_group: String,
}

pub use crate::decide::Restored;

impl DecisionsTopic {
    pub(super) fn new(
        brokers: &str,
        group: &str,
        consumer: &[(String, String)],
        topic: &str,
    ) -> Self {
        DecisionsTopic {
            brokers: brokers.to_string(),
            properties: consumer
                .iter()
                .filter(|(k, _)| !GROUP_KEYS.iter().any(|g| k.starts_with(g)))
                .cloned()
                .collect(),
            topic: topic.to_string(),
            reader_group: format!("{group}.decisions-reader"),
        }
    }

    /// Reads every decision in the decisions partitions matching `input_partitions`
    /// (blocking: run it on the blocking pool).
    pub(super) fn load(&self, input_partitions: &[i32]) -> Result<Vec<Restored>, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.reader_group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // An "offset out of range" during a leader change must not skip
            // decisions (the default reset is to the end); reading some twice is
            // harmless.
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        let consumer: BaseConsumer = c.create()?;
        let md = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map_or(0, |t| t.partitions().len() as i32);
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in input_partitions {
            let p = p.rem_euclid(count);
            if ends.contains_key(&p) {
                continue;
            }
            let (low, high) = consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(low))?;
                ends.insert(p, high);
            }
        }
        let mut out = Vec::new();
        if ends.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        let start = Instant::now();
        while !ends.is_empty() {
            if start.elapsed() > LOAD_TIMEOUT {
                warn!(message = "Decisions not fully read in time; reading input with what was loaded.", topic = %self.topic, loaded = out.len());
                break;
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some(r) = m.payload().and_then(|p| DecisionRecord::decode(p).ok()) {
                        if let Some(id) = r.trace() {
                            let output = (r.kept && r.output_below_offset > 0)
                                .then_some((r.input_partition, r.output_below_offset));
                            out.push((id, r.kept.then(|| Arc::from(r.policy.as_str())), output));
                        }
                    }
                    if ends
                        .get(&m.partition())
                        .is_some_and(|&end| m.offset() + 1 >= end)
                    {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(e)) => warn!(message = "Error reading decisions.", error = %e),
                None => {
                    // Compaction can leave no record at the last offsets: done once
                    // the position reached the end.
                    if let Ok(pos) = consumer.position() {
                        ends.retain(|p, end| {
                            !matches!(
                                pos.find_partition(&self.topic, *p).map(|e| e.offset()),
                                Some(Offset::Offset(o)) if o >= *end
                            )
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
