//! Sink: produces kept traces to the output topic and undecodable input to the
//! dead-letter topic, and releases the input pins once the broker has acknowledged.
//!
//! Retriable produce errors (broker down, timeouts, leader changes) are retried with
//! backoff, forever: a kept trace is never given up while the broker may come back,
//! and its input stays uncommitted meanwhile. Records the broker refuses for good
//! (too large, not authorised) are sent to the dead-letter topic with the reason.

mod topics;
mod txn;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use metrics::counter;
use prost::Message as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::clock::now_ns;
use crate::codec::TraceId;
use crate::config::{KafkaConfig, MemorySplit};
use crate::flow::{DeadLetter, DecisionRecord, KeptTrace, Pin, Releases, SinkMsg};
use crate::telemetry::{names, Health};

use crate::flow::{TxnCommit, TxnError};
pub use topics::{create_missing, decisions_retention_problems, missing, TopicError};
pub use txn::Transactions;

pub use crate::kafka::headers::*;

/// Largest record the producer sends, whatever `max_message_bytes` says: room for a
/// span that alone exceeds it (input messages are rarely allowed more than this).
const MAX_RECORD_BYTES: usize = 64 << 20;
/// Most deliveries (kept traces or dead letters) awaiting acknowledgement at once.
const MAX_IN_FLIGHT: usize = 20_000;
/// How long a shutdown waits for outstanding deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A delivery pending longer than this means output is stalled (`/readyz` 503).
const STALL_AFTER: Duration = Duration::from_secs(10);

/// The producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// librdkafka refused the configuration.
    #[error("cannot create Kafka producer: {0}")]
    Create(#[from] KafkaError),
    /// Exactly-once mode could not start its transactional producer.
    #[error("cannot start transactions (kafka.exactly_once): {0}")]
    Transactions(#[source] TxnError),
    /// The decisions topic is missing or unusable (create it compacted and partitioned
    /// like the input, or let `kafka.create_missing_topics` do so).
    #[error("decisions topic `{topic}` cannot be used: {why}")]
    DecisionsTopic {
        /// The topic.
        topic: String,
        /// What is wrong.
        why: String,
    },
}

/// Where the sink writes, and the gate in front of librdkafka's queue.
#[derive(Debug)]
struct Topics {
    output: Arc<str>,
    dead_letter: Arc<str>,
    /// The decisions topic and its partition count.
    decisions: Option<(Arc<str>, i32)>,
    /// KiB of records handed to librdkafka and not yet acknowledged, bounded by the
    /// producer's share of the memory limit. librdkafka's own queue is sized for the
    /// largest record, or a record bigger than the share would be refused with
    /// `QueueFull` forever; this gate keeps the share the bound for everything else
    /// (a record bigger than the share takes the whole gate and goes alone).
    gate: tokio::sync::Semaphore,
    gate_kib: u32,
    /// Exactly-once mode: the transaction records go into.
    txn: Option<Arc<Transactions>>,
    /// Exactly-once mode: records larger than this are refused locally.
    local_limit: Option<usize>,
}

impl Topics {
    /// Exactly-once mode after a transaction was aborted: nothing more counts.
    fn aborted(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.failed().is_some())
    }
}

/// Logs producer errors and feeds the health flag.
pub struct ProducerContext {
    health: Arc<Health>,
}

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.health
            .note_error(&error, &format!("producer: {reason}"));
        static LOG: crate::telemetry::LogLimiter =
            crate::telemetry::LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            warn!(message = "Kafka producer error.", error = %error, reason, suppressed_since_last = suppressed);
        }
    }
}

/// The sink task.
pub struct Sink {
    producer: FutureProducer<ProducerContext>,
    topics: Arc<Topics>,
    rx: mpsc::Receiver<SinkMsg>,
    releases: Releases,
    health: Arc<Health>,
}

impl Sink {
    /// Creates the producer (idempotent, so retries never duplicate or reorder).
    ///
    /// # Errors
    /// [`SinkError::Create`] when librdkafka rejects the properties.
    pub fn new(
        cfg: &KafkaConfig,
        memory: &MemorySplit,
        health: Arc<Health>,
        rx: mpsc::Receiver<SinkMsg>,
        releases: Releases,
    ) -> Result<Self, SinkError> {
        // Records are split to `max_message_bytes`, but a single span larger than
        // that goes alone in a bigger record: the broker took it as input, so it
        // likely takes it as output. librdkafka must not refuse it locally first
        // (its dead letter would be refused the same way and the span lost). The
        // producer queue is part of the memory limit; the sink's gate holds it to its
        // share, and librdkafka's own limit must admit the largest record. librdkafka
        // gives up on a message after 60 s; the sink then retries it itself, so a
        // long outage never loses a kept trace.
        let limits = crate::kafka::clients::ProducerLimits {
            max_record_bytes: (cfg.max_message_bytes
                + crate::kafka::clients::RECORD_OVERHEAD_BYTES)
                .max(MAX_RECORD_BYTES),
            queue_kbytes: usize::try_from(
                memory.producer_queue.max(MAX_RECORD_BYTES as u64) / 1024,
            )
            .unwrap_or(usize::MAX)
                + 1024,
            message_timeout_ms: "60000",
            transactional_group: cfg.exactly_once.then_some(cfg.group_id.as_str()),
        };
        // In a transaction a kept trace's records are enqueued together or not at
        // all: the queue's count must never be what refuses one (bytes are gated).
        let extra: &[(&str, &str)] = if cfg.exactly_once {
            &[("queue.buffering.max.messages", "2000000")]
        } else {
            &[]
        };
        let c = crate::kafka::clients::producer(cfg, limits, extra);
        let producer: FutureProducer<ProducerContext> = c.create_with_context(ProducerContext {
            health: Arc::clone(&health),
        })?;
        let txn = if cfg.exactly_once {
            Some(Arc::new(
                Transactions::start(producer.clone()).map_err(SinkError::Transactions)?,
            ))
        } else {
            None
        };
        let gate_kib =
            u32::try_from((memory.producer_queue / 1024).max(1)).unwrap_or(u32::MAX >> 4);
        let decisions = match &cfg.decisions_topic {
            Some(topic) => {
                let partitions =
                    partition_count(&producer, topic).map_err(|why| SinkError::DecisionsTopic {
                        topic: topic.clone(),
                        why,
                    })?;
                Some((Arc::from(topic.as_str()), partitions))
            }
            None => None,
        };
        Ok(Sink {
            producer,
            topics: Arc::new(Topics {
                output: cfg.output_topic.as_str().into(),
                dead_letter: cfg.dead_letter_topic.as_str().into(),
                decisions,
                gate: tokio::sync::Semaphore::new(gate_kib as usize),
                gate_kib,
                // A refused record would abort the whole transaction: refuse what
                // is too large before the broker can.
                local_limit: txn
                    .as_ref()
                    .map(|_| cfg.max_message_bytes + crate::kafka::clients::RECORD_OVERHEAD_BYTES),
                txn,
            }),
            rx,
            releases,
            health,
        })
    }

    /// Exactly-once mode: the transactions the source commits the input offsets in.
    pub fn transactions(&self) -> Option<Arc<Transactions>> {
        self.topics.txn.clone()
    }

    /// Delivers until the channel closes, then waits (bounded) for outstanding
    /// deliveries and flushes the producer.
    pub async fn run(mut self) {
        let mut in_flight = FuturesUnordered::new();
        // When each delivery still in flight started, by sequence number: the oldest
        // tells whether output is progressing.
        let mut pending: std::collections::BTreeMap<u64, tokio::time::Instant> =
            std::collections::BTreeMap::new();
        let mut seq = 0u64;
        let mut stall_tick = tokio::time::interval(Duration::from_secs(1));
        stall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        // Kept traces with deliveries in flight: how many, and pins waiting for them.
        let mut delivering: HashMap<TraceId, (u32, Vec<Pin>)> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                Some((n, trace, pins)) = in_flight.next(), if !in_flight.is_empty() => {
                    pending.remove(&n);
                    self.releases.release(pins);
                    if let Some(id) = trace {
                        if let Some((count, waiting)) = delivering.get_mut(&id) {
                            *count -= 1;
                            if *count == 0 {
                                let waiting = std::mem::take(waiting);
                                delivering.remove(&id);
                                self.releases.release(waiting);
                            }
                        }
                    }
                }
                _ = stall_tick.tick() => {
                    let age = pending.values().next().map_or(Duration::ZERO, |t| t.elapsed());
                    metrics::gauge!(names::PRODUCE_OLDEST_PENDING).set(age.as_secs_f64());
                    let now_stalled = age > STALL_AFTER;
                    if now_stalled != stalled {
                        stalled = now_stalled;
                        if stalled {
                            let why = format!("a delivery has waited {} s for its acknowledgement ({} pending); see the produce errors", age.as_secs(), pending.len());
                            error!(message = "Output stalled: input is not committed past it.", pending = pending.len(), oldest_s = age.as_secs());
                            self.health.set_produce_stalled(Some(why));
                        } else {
                            info!(message = "Output progressing again.");
                            self.health.set_produce_stalled(None);
                        }
                    }
                }
                msg = self.rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => match msg {
                    Some(SinkMsg::AfterOutput { trace_id, pin }) => match delivering.get_mut(&trace_id) {
                        Some((_, waiting)) => waiting.push(pin),
                        None => self.releases.release(vec![pin]),
                    },
                    Some(m) => {
                        let trace = match &m {
                            SinkMsg::Kept(k) => {
                                delivering.entry(k.trace_id).or_default().0 += 1;
                                Some(k.trace_id)
                            }
                            _ => None,
                        };
                        seq += 1;
                        pending.insert(seq, tokio::time::Instant::now());
                        let (producer, topics, n) = (self.producer.clone(), Arc::clone(&self.topics), seq);
                        in_flight.push(async move { (n, trace, deliver(producer, topics, m, n).await) });
                    }
                    None => break,
                },
            }
        }
        let drain = async {
            while let Some((_, trace, pins)) = in_flight.next().await {
                self.releases.release(pins);
                let done = trace.and_then(|id| {
                    let (count, waiting) = delivering.get_mut(&id)?;
                    *count -= 1;
                    (*count == 0).then(|| std::mem::take(waiting))
                });
                if let Some(waiting) = done {
                    self.releases.release(waiting);
                }
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            warn!(message = "Shutdown before all kept traces were acknowledged; their input is not committed and will be re-read.");
            self.health.set_produce_stalled(Some(
                "shutdown before every delivery was acknowledged".to_string(),
            ));
            // The exit status says so (3), as when the source gives up waiting.
            self.health.set_drain_incomplete();
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }
}

/// Delivers one message, the `n`th the sink received (from 1), and returns the pins
/// to release.
async fn deliver(
    producer: FutureProducer<ProducerContext>,
    topics: Arc<Topics>,
    msg: SinkMsg,
    n: u64,
) -> Vec<Pin> {
    let (output, dlq) = (&*topics.output, &*topics.dead_letter);
    if let Some(txn) = &topics.txn {
        // Its place in the enqueue order, taken first: its drop ends it on any path.
        let turn = txn.turn(n);
        if txn.failed().is_some() {
            // Aborted: nothing of this transaction is visible and its input stays
            // uncommitted; the pipeline is stopping.
            return Vec::new();
        }
        return txn::deliver(&producer, &topics, txn, msg, turn).await;
    }
    match msg {
        SinkMsg::AfterOutput { pin, .. } => vec![pin],
        SinkMsg::Dropped(d) => {
            record_decision(&producer, &topics, DecisionRecord::of_dropped(&d, now_ns())).await;
            d.pins
        }
        SinkMsg::Kept(kept) => {
            let key = kept.trace_id.to_hex();
            let headers = kept_headers(&kept);
            let output = kept.topic.as_deref().unwrap_or(output);
            let results = futures_util::future::join_all(kept.payloads.iter().map(|p| {
                produce(
                    &producer,
                    &topics,
                    output,
                    None,
                    Some(key.as_bytes()),
                    p,
                    &headers,
                )
            }))
            .await;
            let bytes: usize = kept.payloads.iter().map(Vec::len).sum();
            let mut failed = false;
            for (payload, result) in kept.payloads.iter().zip(results) {
                if topics.aborted() {
                    return Vec::new();
                }
                if let Err(e) = result {
                    failed = true;
                    static LOG: crate::telemetry::LogLimiter =
                        crate::telemetry::LogLimiter::new(Duration::from_secs(10));
                    if let Some(suppressed) = LOG.allow() {
                        error!(message = "Kept trace refused by the broker; sending it to the dead-letter topic.", topic = output, trace_id = %kept.trace_id, error = %e, suppressed_since_last = suppressed);
                    }
                    let headers = refused_headers(
                        &format!("produce to {output} failed: {e}"),
                        &kept.policy,
                        &kept.pins,
                    );
                    dead_letter(
                        &producer,
                        &topics,
                        dlq,
                        Some(key.as_bytes()),
                        payload,
                        &headers,
                        "produce_refused",
                    )
                    .await;
                }
            }
            for payload in kept.rejected.iter().flat_map(|r| &r.payloads) {
                let reason = kept.rejected.as_ref().map_or("", |r| &r.reason);
                let headers = refused_headers(reason, &kept.policy, &kept.pins);
                dead_letter(
                    &producer,
                    &topics,
                    dlq,
                    Some(key.as_bytes()),
                    payload,
                    &headers,
                    "invalid_spans",
                )
                .await;
            }
            if !failed {
                counter!(names::RECORDS_PRODUCED).increment(kept.payloads.len() as u64);
                counter!(names::SPANS_PRODUCED).increment(kept.spans as u64);
                counter!(names::BYTES_PRODUCED).increment(bytes as u64);
            }
            if kept.record_decision {
                record_decision(&producer, &topics, DecisionRecord::of_kept(&kept, now_ns())).await;
            }
            kept.pins
        }
        SinkMsg::DeadLetter(d) => {
            let headers = dead_letter_headers(&d);
            dead_letter(
                &producer,
                &topics,
                dlq,
                d.key.as_deref(),
                &d.payload,
                &headers,
                d.label,
            )
            .await;
            vec![d.pin]
        }
    }
}

/// A kept trace's record headers: the deciding policy; if forced, why; if
/// promoted, why, and what is missing if something is.
fn kept_headers(kept: &KeptTrace) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new().insert(header(HEADER_POLICY, &kept.policy));
    if let Some(reason) = kept.forced {
        headers = headers.insert(header(HEADER_FORCED, reason));
    }
    if let Some(p) = &kept.promoted {
        headers = headers.insert(header(HEADER_PROMOTED, p.reason));
        if let Some(why) = &p.incomplete {
            headers = headers.insert(header(HEADER_INCOMPLETE, &why.detail));
        }
    }
    headers
}

/// Headers of a kept record (or spans) sent to the dead-letter topic instead: why,
/// the policy, and where its input starts.
fn refused_headers(reason: &str, policy: &str, pins: &[Pin]) -> OwnedHeaders {
    with_source(
        OwnedHeaders::new()
            .insert(header(HEADER_ERROR, reason))
            .insert(header(HEADER_POLICY, policy)),
        pins,
    )
}

/// `headers` with where a kept trace's input starts: the partition and lowest
/// offset of its pins (its input messages there are keyed by its id, the record's
/// key). A dead letter sent without its payload (too large for the dead-letter
/// topic too) is found again from them.
pub(super) fn with_source(headers: OwnedHeaders, pins: &[Pin]) -> OwnedHeaders {
    match pins.iter().map(|p| (p.partition, p.offset)).min() {
        Some((partition, offset)) => headers
            .insert(header(HEADER_SOURCE_PARTITION, &partition.to_string()))
            .insert(header(HEADER_SOURCE_OFFSET, &offset.to_string())),
        None => headers,
    }
}

/// An undecodable input's headers: its own, then why and where it came from.
fn dead_letter_headers(d: &DeadLetter) -> OwnedHeaders {
    crate::kafka::headers::dead_letter_headers(
        d.headers.clone().unwrap_or_default(),
        &d.reason,
        &d.topic,
        d.partition,
        d.offset,
    )
}

async fn dead_letter(
    producer: &FutureProducer<ProducerContext>,
    topics: &Topics,
    dlq: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &OwnedHeaders,
    reason: &'static str,
) {
    let e = match produce(producer, topics, dlq, None, key, payload, headers).await {
        Ok(()) => {
            counter!(names::MESSAGES_DEAD_LETTERED, "reason" => reason).increment(1);
            return;
        }
        Err(e) => e,
    };
    if matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    ) {
        // Too large for the dead-letter topic too: the headers go without the
        // payload, which stays in the input topic at the coordinates they name.
        let size = payload.len().to_string();
        let headers = headers
            .clone()
            .insert(header(HEADER_PAYLOAD_OMITTED, &size));
        if produce(producer, topics, dlq, None, key, &[], &headers)
            .await
            .is_ok()
        {
            counter!(names::MESSAGES_DEAD_LETTERED, "reason" => reason).increment(1);
            warn!(
                message = "Dead letter too large for its topic; sent without its payload.",
                topic = dlq,
                bytes = payload.len()
            );
            return;
        }
    }
    if topics.aborted() {
        return; // invisible with the rest of the aborted transaction
    }
    // Nothing more can be done with it; say so loudly.
    counter!(names::MESSAGES_DEAD_LETTERED, "reason" => "dead_letter_refused").increment(1);
    error!(message = "The dead-letter topic refused a message; it is lost.", topic = dlq, error = %e);
}

/// Produces one record, retrying retriable errors with backoff until the broker
/// acknowledges it.
///
/// # Errors
/// Errors that no retry can fix (record too large, not authorised).
async fn produce(
    producer: &FutureProducer<ProducerContext>,
    gate: &Topics,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &OwnedHeaders,
) -> Result<(), KafkaError> {
    let mut backoff = Duration::from_millis(100);
    let kib = u32::try_from(payload.len() / 1024 + 1)
        .unwrap_or(u32::MAX)
        .min(gate.gate_kib);
    // Held until the broker answers: what librdkafka holds stays within its share.
    let _permit = gate
        .gate
        .acquire_many(kib)
        .await
        .map_err(|_| KafkaError::Canceled)?;
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers.clone());
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let sent = producer.send_result(record);
        let error = match sent {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err((e, _))) => e,
                Err(_canceled) => return Err(KafkaError::Canceled),
            },
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                // The producer's own queue is the backpressure; wait for it to drain.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Err((e, _)) => e,
        };
        counter!(names::PRODUCE_ERRORS, "error" => error_label(&error)).increment(1);
        if is_fatal(&error) {
            return Err(error);
        }
        warn!(message = "Produce failed; retrying.", topic, error = %error, backoff_ms = backoff.as_millis() as u64);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Writes a trace's decision (kept by `policy`, or dropped) to the decisions topic,
/// if there is one, in the partition numbered like its input partition.
async fn record_decision(
    producer: &FutureProducer<ProducerContext>,
    topics: &Topics,
    record: Option<DecisionRecord>,
) {
    let Some(d) = decision_record(topics, record) else {
        return;
    };
    let trace_id = d.trace_id;
    match produce(
        producer,
        topics,
        &d.topic,
        Some(d.partition),
        Some(&trace_id.0),
        &d.payload,
        &OwnedHeaders::new(),
    )
    .await
    {
        Ok(()) => counter!(names::DECISIONS_RECORDED, "decision" => d.label).increment(1),
        Err(_) if topics.aborted() => {}
        Err(e) => {
            error!(message = "The decisions topic refused a decision; late spans of this trace may be decided afresh by the partition's next owner.", trace_id = %trace_id, error = %e);
        }
    }
}

/// A decision record, encoded, and where it goes.
struct Decision {
    trace_id: TraceId,
    topic: Arc<str>,
    partition: i32,
    payload: Vec<u8>,
    /// `sampled` or `not_sampled`.
    label: &'static str,
}

/// `record`, encoded, if decisions are recorded: in the partition numbered like its
/// input partition.
fn decision_record(topics: &Topics, record: Option<DecisionRecord>) -> Option<Decision> {
    let (topic, partitions) = topics.decisions.as_ref()?;
    let record = record?;
    Some(Decision {
        trace_id: record.trace()?,
        topic: Arc::clone(topic),
        partition: record.partition_for(*partitions),
        payload: record.encode_to_vec(),
        label: if record.kept {
            "sampled"
        } else {
            "not_sampled"
        },
    })
}

/// Partitions of `topic`, from the broker's metadata (blocking, at startup).
fn partition_count(producer: &FutureProducer<ProducerContext>, topic: &str) -> Result<i32, String> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("cannot read its metadata: {e}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| "the broker does not know it; create it (compacted)".to_string())?;
    if let Some(e) = t.error() {
        return Err(format!("the broker reports {e:?}; create it (compacted)"));
    }
    match i32::try_from(t.partitions().len()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("it has no partitions".to_string()),
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

fn error_label(e: &KafkaError) -> &'static str {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => "timed_out",
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => "too_large",
        Some(RDKafkaErrorCode::AllBrokersDown) | Some(RDKafkaErrorCode::BrokerTransportFailure) => {
            "broker_down"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        | Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => "not_authorized",
        _ => "other",
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
