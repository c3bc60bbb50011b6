//! Reading decisions back from the decisions topic when partitions are assigned.
//!
//! A partition's new owner (after a crash, restart or rebalance) must decide the late
//! spans of traces decided before the same way. With `kafka.decisions_topic` set, the
//! source pauses each newly assigned partition, reads the decisions partition
//! numbered like it, hands the decisions to the shards' caches, and only then
//! resumes the partition.
//!
//! Only a window of the topic matters, so only a window is read: decisions made
//! since the input record at the partition's committed offset was written (every
//! trace the new owner re-reads was decided after that), and those of the last
//! `kafka.decisions_window` (late spans). The read starts at the earlier of the two,
//! less [`SKEW_MARGIN_MS`], found by time ([`Consumer::offsets_for_times`]); a
//! partition with no committed offset is read from its start. At most `limit`
//! decisions are kept, the newest: the shards' caches hold no more. A compacted
//! topic keyed by unique trace ids never shrinks; reading it from its start made a
//! new owner's wait and memory grow with all traffic ever (4 partitions of 1M
//! decisions: 21.9 s and 480 MB).
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

use crate::clock::wall_ms;
use crate::flow::DecisionRecord;

/// Clock skew allowed between the hosts that stamped the input and the decisions.
pub(super) const SKEW_MARGIN_MS: i64 = 60_000;

/// How long finding the time of the record at a committed offset may take.
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The sampler's group, whose committed input offsets say what will be re-read.
    pub(super) input_group: String,
    /// How far back decisions matter for late spans (`kafka.decisions_window`).
    pub(super) window: Duration,
    /// Most decisions a load keeps (the newest).
    pub(super) limit: usize,
}

use crate::flow::Restored;

impl DecisionsTopic {
    pub(super) fn new(
        brokers: &str,
        group: &str,
        consumer: &[(String, String)],
        topic: &str,
        window: Duration,
        limit: usize,
    ) -> Self {
        DecisionsTopic {
            input_group: group.to_string(),
            window,
            limit,
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

    /// Reads the decisions that matter for `inputs` (input topic, partition), trying
    /// again after each failure while `wanted()` holds: until it succeeds when
    /// `exactly_once`, else for at most [`AT_LEAST_ONCE_PATIENCE`], after which what
    /// was read is returned. Blocking.
    pub(super) fn load_until(
        &self,
        inputs: &[(String, i32)],
        exactly_once: bool,
        wanted: impl Fn() -> bool,
    ) -> Vec<Restored> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(500);
        let mut best = Vec::new();
        loop {
            let e = match self.load(inputs) {
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
                warn!(message = "Cannot read decisions back yet; the partitions stay paused and the read is tried again.", error = %e, partitions = ?inputs.iter().map(|(_, p)| *p).collect::<Vec<_>>(), retry_in = ?backoff, suppressed_since_last = suppressed);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    /// Reads the decisions that matter for `inputs` from the decisions partitions
    /// numbered like them (blocking: run it on the blocking pool).
    fn load(&self, inputs: &[(String, i32)]) -> Result<Vec<Restored>, LoadError> {
        let since = self.since(inputs, wall_ms() as i64)?;
        let ranges = self.ranges(&since)?;
        tracing::debug!(message = "Reading decisions back.", since = ?since, ranges = ?ranges);
        self.read(ranges)
    }

    /// Per input partition number, the earliest decision time (ms) that can matter
    /// at `now_ms`: `None` to read from the start (nothing committed).
    fn since(
        &self,
        inputs: &[(String, i32)],
        now_ms: i64,
    ) -> Result<HashMap<i32, Option<i64>>, KafkaError> {
        let window_start = now_ms - self.window.as_millis() as i64;
        let committed: BaseConsumer = self.client().set("group.id", &self.input_group).create()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in inputs {
            tpl.add_partition(topic, *p);
        }
        let offsets = committed.committed_offsets(tpl, Duration::from_secs(10))?;
        let mut since: HashMap<i32, Option<i64>> = HashMap::new();
        for (topic, p) in inputs {
            let from = match offsets.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => {
                    let written = self.time_at(topic, *p, o)?.unwrap_or(now_ms);
                    Some(read_from(window_start, written))
                }
                _ => None,
            };
            let entry = since.entry(*p).or_insert(from);
            *entry = match (*entry, from) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        Ok(since)
    }

    /// When the record at `offset` of an input partition was written (`None`: there
    /// is none yet, nothing will be re-read).
    fn time_at(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<i64>, KafkaError> {
        let reader: BaseConsumer = self.client().create()?;
        let (_, high) = reader.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if offset >= high {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        reader.assign(&tpl)?;
        let start = Instant::now();
        while start.elapsed() < PEEK_TIMEOUT {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => return Ok(Some(m.timestamp().to_millis().unwrap_or(0))),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        // Records are there and could not be read: reading too few decisions would
        // write re-read traces out again, so the load is tried again.
        Err(KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ))
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

    /// Where to read each decisions partition matching the input partitions of
    /// `since`: from the first decision at or after its time (the partition's start
    /// when `None`) to the end.
    ///
    /// Ends are the high watermarks, of every record written, not the last stable
    /// offsets a read_committed client is told: the previous owner's last
    /// transaction (committed in its revoke callback, say) may not have its markers
    /// on this partition yet, and reading only to the stable offset would miss its
    /// decisions and write those traces out again.
    fn ranges(
        &self,
        since: &HashMap<i32, Option<i64>>,
    ) -> Result<HashMap<i32, (i64, i64)>, KafkaError> {
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
        let mut ranges = HashMap::new();
        if count == 0 {
            return Ok(ranges);
        }
        // The earliest time of the input partitions numbered onto each decisions
        // partition (several input topics share them).
        let mut from: HashMap<i32, Option<i64>> = HashMap::new();
        for (p, t) in since {
            let entry = from.entry(p.rem_euclid(count)).or_insert(*t);
            *entry = match (*entry, *t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        for (p, time) in from {
            let (low, high) = client.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            let start = match time {
                None => low,
                Some(ms) => match self.offset_for_time(&client, p, ms)? {
                    Some(o) => o.max(low),
                    // No decision that recent, if the broker can look offsets up by
                    // time at all (librdkafka's mock cluster cannot: it answers
                    // "none" for any time; then the whole partition is read).
                    None if self.offset_for_time(&client, p, 0)?.is_some() => high,
                    None => low,
                },
            };
            if high > start {
                ranges.insert(p, (start, high));
            }
        }
        Ok(ranges)
    }

    /// The first offset of decisions partition `p` written at or after `ms`, `None`
    /// when the broker knows none.
    fn offset_for_time(
        &self,
        client: &BaseConsumer,
        p: i32,
        ms: i64,
    ) -> Result<Option<i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(ms))?;
        let found = client.offsets_for_times(tpl, Duration::from_secs(10))?;
        Ok(
            match found.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) if o >= 0 => Some(o),
                _ => None,
            },
        )
    }

    /// Reads the decisions partitions from their start to their end, read_committed
    /// (decisions of aborted transactions went with their output): past a
    /// transaction still open it gets only once that is committed or aborted, by its
    /// producer or by the transaction timeout.
    fn read(&self, ranges: HashMap<i32, (i64, i64)>) -> Result<Vec<Restored>, LoadError> {
        let mut out = std::collections::VecDeque::new();
        if ranges.is_empty() {
            return Ok(Vec::new());
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
                return Err(LoadError::Incomplete(out.into()));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some(r) = m
                        .payload()
                        .and_then(|p| DecisionRecord::decode(p).ok())
                        .and_then(|r| r.restored())
                    {
                        // The newest `limit`: the caches would forget older ones.
                        if out.len() >= self.limit.max(1) {
                            out.pop_front();
                        }
                        out.push_back(r);
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
        Ok(out.into())
    }
}

/// The earliest decision time that matters for a partition whose committed input
/// record was written at `written_ms`, with late spans wanted from `window_start_ms`
/// on: the earlier, less [`SKEW_MARGIN_MS`].
fn read_from(window_start_ms: i64, written_ms: i64) -> i64 {
    window_start_ms.min(written_ms) - SKEW_MARGIN_MS
}

#[cfg(test)]
mod tests {
    use super::{read_from, SKEW_MARGIN_MS};

    #[test]
    fn the_read_starts_at_the_earlier_of_the_window_and_the_committed_input() {
        assert_eq!(read_from(100_000, 500_000), 100_000 - SKEW_MARGIN_MS);
        assert_eq!(read_from(500_000, 100_000), 100_000 - SKEW_MARGIN_MS);
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
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::DecisionsTopic;
    use crate::codec::TraceId;
    use crate::flow::{DecisionRecord, Pin};

    /// Creates topics of one partition each on the broker.
    fn create_topics(bootstrap: &str, names: &[&str]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin");
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
            .collect();
        let created = rt
            .block_on(admin.create_topics(&topics, &AdminOptions::new()))
            .expect("create topics");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
    }

    /// Enqueues the decision record the sink writes for `trace` kept from `pin`, in
    /// partition 0 of `topic`, stamped `at` (now when `None`).
    fn send_decision(
        producer: &BaseProducer,
        topic: &str,
        trace: TraceId,
        pin: Pin,
        at: Option<i64>,
    ) {
        let record = DecisionRecord::decided(trace, Some("errors"), &[pin], 1)
            .expect("a pin")
            .encode_to_vec();
        let mut r = BaseRecord::to(topic)
            .partition(0)
            .key(&trace.0[..])
            .payload(&record);
        if let Some(at) = at {
            r = r.timestamp(at);
        }
        producer.send(r).map_err(|(e, _)| e).expect("enqueue");
    }

    /// The previous owner's last transaction, still unresolved when the next owner
    /// reads the decisions back (its markers not yet written): the read's end covers
    /// its records, and the read returns them once the transaction commits. With
    /// ends taken at the last stable offset (read_committed watermarks), the end is
    /// before them and the next owner writes those traces out a second time.
    #[test]
    #[ignore = "Apache Kafka: cargo test --lib real_kafka_tests -- --ignored"]
    fn decisions_of_a_transaction_not_yet_marked_are_read_back() {
        let Some(bootstrap) = crate::demo::real_kafka_from_env() else {
            return;
        };
        let topic = format!("decisions-unmarked-{}", std::process::id());
        create_topics(&bootstrap, &[&topic]);

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
        send_decision(&producer, &topic, trace, pin, None);
        producer.flush(t).expect("flush");

        let reader = DecisionsTopic::new(
            &bootstrap,
            "decisions-unmarked",
            &[],
            &topic,
            Duration::from_secs(600),
            1000,
        );
        let ends = reader.ranges(&[(0, None)].into()).expect("ends");
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

    /// Only the window that matters is read back: decisions made since the input
    /// record at the committed offset was written, and those of the last
    /// `decisions_window`, the newest `limit` of them; older ones are not read.
    #[test]
    #[ignore = "Apache Kafka: cargo test --lib real_kafka_tests -- --ignored"]
    fn only_the_decisions_since_the_committed_input_or_the_window_are_read_back() {
        let Some(bootstrap) = crate::demo::real_kafka_from_env() else {
            return;
        };
        let id = std::process::id();
        let (input, topic) = (
            format!("window-input-{id}"),
            format!("window-decisions-{id}"),
        );
        create_topics(&bootstrap, &[&input, &topic]);
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("producer");
        let now = crate::clock::wall_ms() as i64;
        const HOUR: i64 = 3_600_000;
        // Input: offset 0 written 2.5 h ago, offset 1 10 s ago.
        for at in [now - 5 * HOUR / 2, now - 10_000] {
            producer
                .send(
                    BaseRecord::<(), _>::to(&input)
                        .partition(0)
                        .payload(&b"x"[..])
                        .timestamp(at),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
        }
        // Decisions made 3 h, 2 h and 1 s ago.
        let traces = [TraceId([1; 16]), TraceId([2; 16]), TraceId([3; 16])];
        let pin = Pin {
            slot: 0,
            epoch: 1,
            offset: 0,
            partition: 0,
        };
        for (trace, at) in traces
            .iter()
            .zip([now - 3 * HOUR, now - 2 * HOUR, now - 1_000])
        {
            send_decision(&producer, &topic, *trace, pin, Some(at));
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        let group = format!("window-group-{id}");
        let commit = |offset: i64| {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&input, 0, Offset::Offset(offset))
                .expect("offset");
            c.commit(&tpl, CommitMode::Sync).expect("commit");
        };
        let loaded = |group: &str, limit: usize| {
            let reader = DecisionsTopic::new(
                &bootstrap,
                group,
                &[],
                &topic,
                Duration::from_secs(600),
                limit,
            );
            let mut ids: Vec<u8> = reader
                .load(&[(input.clone(), 0)])
                .expect("load")
                .iter()
                .map(|r| r.trace_id.0[0])
                .collect();
            ids.sort_unstable();
            ids
        };
        commit(1);
        assert_eq!(loaded(&group, 1000), vec![3], "caught up: the window only");
        commit(0);
        assert_eq!(
            loaded(&group, 1000),
            vec![2, 3],
            "2.5 h to re-read: decisions since then"
        );
        assert_eq!(
            loaded(&format!("{group}-new"), 1000),
            vec![1, 2, 3],
            "nothing committed: from the start"
        );
        assert_eq!(
            loaded(&format!("{group}-new"), 2),
            vec![2, 3],
            "the newest within the limit"
        );
    }
}
