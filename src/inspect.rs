//! `tailsift explain` and `tailsift promote`: one trace, by id, from the decisions
//! topic and the retained input ("a log line gave me a trace id: show me that
//! trace").
//!
//! Finding a trace never reads all history. Its decision records are looked up in
//! a time window of the decisions topic, and its input either where a record says
//! it lies (topic, partition, first and last offset) or, without one, in the same
//! window of the input (located with offsets for times): only the partition its
//! key goes to when the producers' partitioner is known
//! (`kafka.input_partitioner`), else every partition, read in parallel by one
//! client. Messages are matched by a byte search for the id before any is scanned.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{encode_trace, Message, Span, TraceFinder, TraceId};
use crate::config::KafkaConfig;
use crate::flow::{DecisionRecord, Evidence};
use crate::kafka::headers::{HEADER_POLICY, HEADER_PROMOTED};
use crate::policy::PolicySet;

/// How long any one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a trace could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The broker refused or did not answer.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Nothing of the trace was found in the window.
    #[error(
        "no input of trace {0} found in the window searched; widen it with --around and --window"
    )]
    NotFound(TraceId),
    /// The trace is longer than a record can carry.
    #[error("the trace's {0} spans do not fit kafka.max_message_bytes")]
    TooLarge(usize),
}

fn kafka(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> InspectError {
    let what = what.into();
    move |source| InspectError::Kafka { what, source }
}

/// Where and when to look.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// From this time, ms since the epoch.
    pub from_ms: i64,
    /// Up to this time, ms since the epoch.
    pub to_ms: i64,
}

/// One input message holding spans of the trace.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp, ms since the epoch, if it has one.
    pub timestamp_ms: Option<i64>,
    /// Spans of the trace in it.
    pub spans: usize,
}

/// What is known of one trace.
#[derive(Debug)]
pub struct Explained {
    /// The trace.
    pub trace_id: TraceId,
    /// Its decision records, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// The input messages holding its spans, in partition and offset order.
    pub pieces: Vec<Piece>,
    /// The input partitions searched and how (`from record`, `from key`, `all`).
    pub searched: Vec<String>,
    /// Input bytes read.
    pub bytes_read: u64,
    /// Its spans, with the messages they refer to.
    found: Vec<(Message, Vec<Span>)>,
}

/// The partitions of one input topic to search, and why those.
#[derive(Debug)]
struct Search {
    topic: String,
    partitions: Vec<i32>,
    /// `from its key` or `every partition`.
    how: &'static str,
}

/// Offsets `from..to` of `topic[partition]`.
#[derive(Debug)]
struct Range {
    topic: String,
    partition: i32,
    from: i64,
    to: i64,
}

/// Reads the trace's decision records and finds its input. `progress` is told
/// what is being read every few seconds on long reads.
///
/// # Errors
/// [`InspectError`] when the broker cannot be read.
pub fn explain(
    kafka: &KafkaConfig,
    id: TraceId,
    window: Window,
    progress: &mut dyn FnMut(&str),
) -> Result<Explained, InspectError> {
    let client = client(kafka);
    let key = id.to_hex();
    // One client for every metadata and offset lookup.
    let meta: BaseConsumer = client
        .create()
        .map_err(self::kafka("cannot create a client"))?;
    let home = home_partitions(&meta, kafka, key.as_bytes())?;
    let decisions = match &kafka.decisions_topic {
        Some(topic) => {
            let parts = decision_partitions(&meta, topic, &home)?;
            read_decisions(&client, &meta, topic, &parts, id, window, progress)?
        }
        None => Vec::new(),
    };
    // Where the input lies: from the newest record that says, else by search.
    let mut ranges: Vec<Range> = Vec::new();
    let mut searched = Vec::new();
    if let Some(r) = decisions.iter().rev().find(|r| !r.input_topic.is_empty()) {
        ranges.push(Range {
            topic: r.input_topic.clone(),
            partition: r.input_partition,
            from: r.first_offset,
            to: r.last_offset.max(r.first_offset) + 1,
        });
        searched.push(format!(
            "{}[{}] offsets {}..={} (from its decision record)",
            r.input_topic, r.input_partition, r.first_offset, r.last_offset
        ));
    } else {
        for s in &home {
            for &p in &s.partitions {
                let Some((from, to)) = offsets_between(&meta, &s.topic, p, window)? else {
                    continue;
                };
                ranges.push(Range {
                    topic: s.topic.clone(),
                    partition: p,
                    from,
                    to,
                });
            }
            searched.push(format!(
                "{} partitions {:?} ({})",
                s.topic, s.partitions, s.how
            ));
        }
    }
    let (pieces, found, bytes_read) = read_input(&client, kafka, &ranges, id, progress)?;
    Ok(Explained {
        trace_id: id,
        decisions,
        pieces,
        searched,
        bytes_read,
        found,
    })
}

/// Writes the trace, whole, from its retained input to `topic` (one record, or
/// several if it exceeds `kafka.max_message_bytes`), headers `tailsift.promoted:
/// request`, and records it as kept on the decisions topic, so its late spans follow.
/// Returns the spans written.
///
/// # Errors
/// [`InspectError::NotFound`] when no input of the trace is in the window.
pub fn promote(
    kafka: &KafkaConfig,
    explained: &Explained,
    topic: &str,
) -> Result<usize, InspectError> {
    let spans: Vec<_> = explained
        .found
        .iter()
        .flat_map(|(m, spans)| spans.iter().map(|s| m.span_ref(s)))
        .collect();
    if spans.is_empty() {
        return Err(InspectError::NotFound(explained.trace_id));
    }
    let payloads = kafka.output_encoding.encode(
        encode_trace(&spans, kafka.max_message_bytes),
        kafka.max_message_bytes,
    );
    if payloads.is_empty() {
        return Err(InspectError::TooLarge(spans.len()));
    }
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true");
    for (k, v) in &kafka.producer {
        c.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = c
        .create()
        .map_err(self::kafka("cannot create the producer"))?;
    let key = explained.trace_id.to_hex();
    let header = |k, v: &'static str| Header {
        key: k,
        value: Some(v.as_bytes()),
    };
    let headers = OwnedHeaders::new()
        .insert(header(HEADER_POLICY, ""))
        .insert(header(HEADER_PROMOTED, "request"));
    for p in &payloads {
        let record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(p)
            .headers(headers.clone());
        producer
            .send(record)
            .map_err(|(e, _)| self::kafka(format!("cannot write to {topic}"))(e))?;
    }
    if let (Some(decisions), Some(first)) = (&kafka.decisions_topic, explained.pieces.first()) {
        let last = explained
            .pieces
            .iter()
            .filter(|p| p.partition == first.partition);
        let record = DecisionRecord {
            trace_id: explained.trace_id.0.to_vec(),
            kept: true,
            decided_unix_nano: crate::clock::now_ns(),
            input_partition: first.partition,
            input_topic: first.topic.clone(),
            first_offset: first.offset,
            last_offset: last.map(|p| p.offset).max().unwrap_or(first.offset),
            output_below_offset: 0,
            ..DecisionRecord::default()
        }
        .with(None, &Evidence::default(), Some("request"));
        let partitions = partitions_via(producer.client(), decisions)?.max(1);
        let payload = record.encode_to_vec();
        let r = BaseRecord::to(decisions)
            .key(&explained.trace_id.0[..])
            .payload(&payload)
            .partition(record.partition_for(partitions));
        producer
            .send(r)
            .map_err(|(e, _)| self::kafka(format!("cannot write to {decisions}"))(e))?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(self::kafka("the broker did not acknowledge the records"))?;
    Ok(spans.len())
}

fn client(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.consumer {
        if !k.starts_with("group.") && !k.starts_with("session.") && !k.starts_with("heartbeat.") {
            c.set(k, v);
        }
    }
    c.set("group.id", format!("{}.explain", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    c
}

/// Per input topic, the partitions to search: the key's, if the partitioner is
/// known, else all.
fn home_partitions(
    c: &BaseConsumer,
    kafka: &KafkaConfig,
    key: &[u8],
) -> Result<Vec<Search>, InspectError> {
    let mut out = Vec::new();
    for topic in &kafka.input_topics {
        let n = partitions_of(c, topic)?;
        let (partitions, how) = match kafka.input_partitioner.partition(key, n) {
            Some(p) => (vec![p], "from its key"),
            None => ((0..n).collect(), "every partition"),
        };
        out.push(Search {
            topic: topic.clone(),
            partitions,
            how,
        });
    }
    Ok(out)
}

fn partitions_of(c: &BaseConsumer, topic: &str) -> Result<i32, InspectError> {
    partitions_via(c.client(), topic)
}

/// Partitions of `topic` by the metadata `client` reads (0 if it does not exist).
fn partitions_via<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32, InspectError> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(self::kafka(format!("cannot read the metadata of {topic}")))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32))
}

/// The decisions partitions numbered like the input partitions searched.
fn decision_partitions(
    c: &BaseConsumer,
    topic: &str,
    home: &[Search],
) -> Result<Vec<i32>, InspectError> {
    let n = partitions_of(c, topic)?.max(1);
    let mut parts: Vec<i32> = home
        .iter()
        .flat_map(|s| s.partitions.iter().map(|p| p.rem_euclid(n)))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    Ok(parts)
}

/// The offsets of `topic[partition]` between the window's times: the first record
/// at or after its start, to the first after its end (or the end). `None` when the
/// partition holds nothing in it.
fn offsets_between(
    c: &BaseConsumer,
    topic: &str,
    partition: i32,
    window: Window,
) -> Result<Option<(i64, i64)>, InspectError> {
    let (low, high) = c
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(self::kafka(format!(
            "cannot read the offsets of {topic}[{partition}]"
        )))?;
    let at = |ms: i64| -> Result<Option<i64>, InspectError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ms))
            .map_err(self::kafka("bad partition"))?;
        let r = c
            .offsets_for_times(tpl, Duration::from_secs(10))
            .map_err(self::kafka(format!(
                "cannot look up times in {topic}[{partition}]"
            )))?;
        Ok(
            match r.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) if o >= 0 => Some(o),
                _ => None,
            },
        )
    };
    let Some(from) = at(window.from_ms)? else {
        return Ok(None); // nothing written since the window's start
    };
    let to = at(window.to_ms)?.unwrap_or(high);
    Ok((to > from.max(low)).then_some((from.max(low), to)))
}

/// Reads `topic`'s `parts` over the window and keeps the records keyed `id`.
fn read_decisions(
    client: &ClientConfig,
    meta: &BaseConsumer,
    topic: &str,
    parts: &[i32],
    id: TraceId,
    window: Window,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<DecisionRecord>, InspectError> {
    let mut ranges = Vec::new();
    for &p in parts {
        // Decisions come up to a decision wait after the input: a minute of margin.
        let w = Window {
            from_ms: window.from_ms - 60_000,
            to_ms: window.to_ms.saturating_add(600_000),
        };
        if let Some((from, to)) = offsets_between(meta, topic, p, w)? {
            ranges.push(Range {
                topic: topic.to_string(),
                partition: p,
                from,
                to,
            });
        }
    }
    let mut out = Vec::new();
    scan(client, &ranges, progress, &mut |_, m| {
        if m.key() == Some(&id.0[..]) {
            if let Some(r) = m.payload().and_then(|p| DecisionRecord::decode(p).ok()) {
                out.push(r);
            }
        }
    })?;
    out.sort_by_key(|r| r.decided_unix_nano);
    Ok(out)
}

type Found = (Vec<Piece>, Vec<(Message, Vec<Span>)>, u64);

/// Reads the input `ranges` and keeps the messages holding spans of `id`.
fn read_input(
    client: &ClientConfig,
    kafka: &KafkaConfig,
    ranges: &[Range],
    id: TraceId,
    progress: &mut dyn FnMut(&str),
) -> Result<Found, InspectError> {
    let mut finder = TraceFinder::new(&[id]);
    let mut pieces = Vec::new();
    let mut found = Vec::new();
    let read = scan(client, ranges, progress, &mut |topic, m| {
        let Some(payload) = m.payload() else {
            return;
        };
        if let Some((message, spans)) = finder.find(payload, kafka.encoding_of(topic)) {
            pieces.push(Piece {
                topic: topic.to_string(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                spans: spans.len(),
            });
            found.push((message, spans));
        }
    })?;
    Ok((pieces, found, read))
}

/// Reads every range with one client,
/// in parallel, handing each record to `each`; reports progress every 2 s. Returns
/// the payload bytes read.
fn scan(
    client: &ClientConfig,
    ranges: &[Range],
    progress: &mut dyn FnMut(&str),
    each: &mut dyn FnMut(&str, &rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64, InspectError> {
    if ranges.is_empty() {
        return Ok(0);
    }
    let c: BaseConsumer = client
        .clone()
        .set("isolation.level", "read_committed")
        .create()
        .map_err(self::kafka("cannot create a client"))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut total = 0i64;
    for r in ranges {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.from))
            .map_err(self::kafka("bad partition"))?;
        ends.insert((r.topic.clone(), r.partition), r.to);
        total += r.to - r.from;
    }
    c.assign(&tpl)
        .map_err(self::kafka("cannot read the partitions"))?;
    let start = Instant::now();
    let mut last_report = Instant::now();
    let (mut bytes, mut records) = (0u64, 0i64);
    while !ends.is_empty() && start.elapsed() < READ_TIMEOUT {
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            let secs = start.elapsed().as_secs_f64().max(0.001);
            progress(&format!(
                "read {records} of {total} records, {:.1} MB ({:.1} MB/s)",
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs
            ));
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let k = (m.topic().to_string(), m.partition());
                let Some(&end) = ends.get(&k) else {
                    continue;
                };
                if m.offset() >= end {
                    ends.remove(&k);
                    continue;
                }
                records += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
                each(m.topic(), &m);
                if m.offset() + 1 >= end {
                    ends.remove(&k);
                }
            }
            Some(Err(e)) => progress(&format!("read error (retried): {e}")),
            None => {
                // Markers and compaction leave offsets without records.
                if let Ok(pos) = c.position() {
                    ends.retain(|(t, p), end| {
                        !matches!(
                            pos.find_partition(t, *p).map(|e| e.offset()),
                            Some(Offset::Offset(o)) if o >= *end
                        )
                    });
                }
            }
        }
    }
    Ok(bytes)
}

impl Explained {
    /// The report `tailsift explain` prints. With the configured `policies`, each
    /// decision lists every policy's vote on what it was judged on (a vote that
    /// depends on chance or a budget is not cast again, and says so).
    pub fn report(&self, policies: Option<&PolicySet>) -> String {
        let mut out = format!("trace {}\n", self.trace_id);
        if self.decisions.is_empty() {
            out.push_str("decisions: none found (no decisions topic, or none in the window)\n");
        }
        for d in &self.decisions {
            let when = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_nanos(d.decided_unix_nano),
            );
            let what = match (d.kept, d.promoted.as_str()) {
                (true, "") => format!("kept by policy {:?}", d.policy),
                (true, why) => format!("kept by policy {:?}, promoted ({why})", d.policy),
                (false, _) => "dropped".to_string(),
            };
            let e = d.evidence();
            let duration = match e.one_clock_ms {
                u32::MAX => "unknown".to_string(),
                ms => format!("{ms} ms"),
            };
            out.push_str(&format!(
                "decision at {when}: {what}; judged on {} spans, duration {duration}, error {}, attribute hits {:#x}; input {}[{}] offsets {}..={}\n",
                e.span_count,
                e.flags & 1 != 0,
                e.attr_hits,
                if d.input_topic.is_empty() { "?" } else { &d.input_topic },
                d.input_partition,
                d.first_offset,
                d.last_offset,
            ));
            if let Some(set) = policies {
                let summary = e.summary(self.trace_id);
                for p in &set.policies {
                    let vote = if p.policy.settled() {
                        p.policy.evaluate(&summary).label()
                    } else {
                        "depends on chance or a budget (not cast again)"
                    };
                    out.push_str(&format!("  policy {:?}: {vote}\n", p.name));
                }
            }
        }
        for s in &self.searched {
            out.push_str(&format!("searched: {s}\n"));
        }
        let spans: usize = self.pieces.iter().map(|p| p.spans).sum();
        out.push_str(&format!(
            "input: {spans} spans in {} messages ({:.1} MB read)\n",
            self.pieces.len(),
            self.bytes_read as f64 / 1e6
        ));
        for p in &self.pieces {
            out.push_str(&format!(
                "  {}[{}] offset {}: {} spans{}\n",
                p.topic,
                p.partition,
                p.offset,
                p.spans,
                p.timestamp_ms.map_or_else(String::new, |t| format!(
                    ", written {}",
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + Duration::from_millis(t.max(0) as u64)
                    )
                )),
            ));
        }
        out
    }
}
