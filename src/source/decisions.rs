//! Reading decisions back from the decisions topic when partitions are assigned.
//!
//! A partition's new owner (after a crash, restart or rebalance) must decide the late
//! spans of traces decided before the same way. With `kafka.decisions_topic` set, the
//! source pauses each newly assigned partition, reads the decisions partition
//! numbered like it from the start to its end, hands the decisions to the shards'
//! caches, and only then resumes the partition.
//!
//! A read that fails (a broker down, a leader moving) is tried again. In exactly-once
//! mode it is tried until it succeeds: a partition read without its decisions would
//! write every kept trace re-read from the committed offset out a second time. In
//! at-least-once mode, where duplicates are allowed, it gives up after
//! [`AT_LEAST_ONCE_PATIENCE`] and reads the input with what was loaded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::flow::DecisionRecord;

/// Longest a load may take; after it the partition is read with what was loaded.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long at-least-once mode keeps trying to read decisions back.
const AT_LEAST_ONCE_PATIENCE: Duration = Duration::from_secs(60);

/// Why a read of the decisions did not complete.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    /// The broker refused or could not be reached.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Not every decision was read within the load timeout; what was read is kept.
    #[error("not every decision was read within {LOAD_TIMEOUT:?} ({} read)", .0.len())]
    Incomplete(Vec<Restored>),
}

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

use crate::flow::Restored;

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

    /// Reads every decision of `input_partitions`, trying again after each failure
    /// while `wanted()` holds: until it succeeds when `exactly_once`, else for at most
    /// [`AT_LEAST_ONCE_PATIENCE`], after which what was read is returned. Blocking.
    pub(super) fn load_until(
        &self,
        input_partitions: &[i32],
        exactly_once: bool,
        wanted: impl Fn() -> bool,
    ) -> Vec<Restored> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(500);
        let mut best = Vec::new();
        loop {
            let e = match self.load(input_partitions) {
                Ok(d) => return d,
                Err(e) => {
                    let why = e.to_string();
                    if let LoadError::Incomplete(partial) = e {
                        if partial.len() >= best.len() {
                            best = partial;
                        }
                    }
                    why
                }
            };
            let give_up = !exactly_once && start.elapsed() >= AT_LEAST_ONCE_PATIENCE;
            if give_up || !wanted() {
                if give_up {
                    warn!(message = "Cannot read decisions back; late spans of earlier traces will be decided afresh (at-least-once: duplicates possible).", error = %e, loaded = best.len());
                }
                return best;
            }
            static LOG: crate::telemetry::LogLimiter =
                crate::telemetry::LogLimiter::new(Duration::from_secs(10));
            if let Some(suppressed) = LOG.allow() {
                warn!(message = "Cannot read decisions back yet; the partitions stay paused and the read is tried again.", error = %e, partitions = ?input_partitions, retry_in = ?backoff, suppressed_since_last = suppressed);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    /// Reads every decision in the decisions partitions matching `input_partitions`
    /// (blocking: run it on the blocking pool).
    fn load(&self, input_partitions: &[i32]) -> Result<Vec<Restored>, LoadError> {
        let ends = self.ends(input_partitions)?;
        tracing::debug!(message = "Reading decisions back.", ranges = ?ends);
        self.read(ends)
    }

    /// The client properties both readers share.
    fn client(&self) -> ClientConfig {
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
        c
    }

    /// Where each decisions partition matching `input_partitions` starts and ends.
    ///
    /// Ends are the high watermarks, of every record written, not the last stable
    /// offsets a read_committed client is told: the previous owner's last
    /// transaction (committed in its revoke callback, say) may not have its markers
    /// on this partition yet, and reading only to the stable offset would miss its
    /// decisions and write those traces out again.
    fn ends(&self, input_partitions: &[i32]) -> Result<HashMap<i32, (i64, i64)>, KafkaError> {
        let client: BaseConsumer = self
            .client()
            .set("isolation.level", "read_uncommitted")
            .create()?;
        let md = client.fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map_or(0, |t| t.partitions().len() as i32);
        let mut ends = HashMap::new();
        if count == 0 {
            return Ok(ends);
        }
        for p in input_partitions {
            let p = p.rem_euclid(count);
            if ends.contains_key(&p) {
                continue;
            }
            let (low, high) = client.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            if high > low {
                ends.insert(p, (low, high));
            }
        }
        Ok(ends)
    }

    /// Reads the decisions partitions from their start to their end, read_committed
    /// (decisions of aborted transactions went with their output): past a
    /// transaction still open it gets only once that is committed or aborted, by its
    /// producer or by the transaction timeout.
    fn read(&self, ranges: HashMap<i32, (i64, i64)>) -> Result<Vec<Restored>, LoadError> {
        let mut out = Vec::new();
        if ranges.is_empty() {
            return Ok(out);
        }
        let consumer: BaseConsumer = self
            .client()
            .set("isolation.level", "read_committed")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for (&p, &(low, high)) in &ranges {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
        consumer.assign(&tpl)?;
        let start = Instant::now();
        while !ends.is_empty() {
            if start.elapsed() > LOAD_TIMEOUT {
                return Err(LoadError::Incomplete(out));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some(r) = m
                        .payload()
                        .and_then(|p| DecisionRecord::decode(p).ok())
                        .and_then(|r| r.restored())
                    {
                        out.push(r);
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

/// Against Apache Kafka (`TAILSIFT_KAFKA`; skipped without it unless
/// `TAILSIFT_KAFKA_REQUIRED` is set): the librdkafka mock cluster does not keep
/// transactions from read_committed readers.
#[cfg(test)]
mod real_kafka_tests {
    use std::time::Duration;

    use prost::Message as _;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::DecisionsTopic;
    use crate::codec::TraceId;
    use crate::flow::{DecisionRecord, Pin};

    /// The previous owner's last transaction, still unresolved when the next owner
    /// reads the decisions back (its markers not yet written): the read's end covers
    /// its records, and the read returns them once the transaction commits. With
    /// ends taken at the last stable offset (read_committed watermarks), the end is
    /// before them and the next owner writes those traces out a second time.
    #[test]
    fn decisions_of_a_transaction_not_yet_marked_are_read_back() {
        let Some(bootstrap) = crate::demo::real_kafka_from_env() else {
            return;
        };
        let topic = format!("decisions-unmarked-{}", std::process::id());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin");
        let created = rt
            .block_on(admin.create_topics(
                &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            ))
            .expect("create topics");
        assert!(created.iter().all(Result::is_ok), "{created:?}");

        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", &topic)
            .create()
            .expect("producer");
        let t = Duration::from_secs(30);
        producer.init_transactions(t).expect("init");
        producer.begin_transaction().expect("begin");
        let trace = TraceId([0x5a; 16]);
        // What the sink writes for a trace kept from input partition 0, offset 6.
        let pin = Pin {
            slot: 0,
            epoch: 1,
            offset: 6,
            partition: 0,
        };
        let record = DecisionRecord::decided(trace, Some("errors"), &[pin], 1)
            .expect("a pin")
            .encode_to_vec();
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(0)
                    .key(&trace.0[..])
                    .payload(&record),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue");
        producer.flush(t).expect("flush");

        let reader = DecisionsTopic::new(&bootstrap, "decisions-unmarked", &[], &topic);
        let ends = reader.ends(&[0]).expect("ends");
        assert_eq!(
            ends.get(&0).map(|&(_, end)| end),
            Some(1),
            "the end must cover the open transaction's record"
        );
        producer.commit_transaction(t).expect("commit");
        let read = reader.read(ends).expect("read");
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0].trace_id, trace);
        assert_eq!(read[0].output_below, Some((0, 7)));
    }
}
