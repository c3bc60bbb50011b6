//! The route stage: input not keyed by trace id, split by trace and written keyed.
//!
//! ```text
//! unkeyed topic --(route group)--> split by trace id --> <topic>-by-trace --> sampler
//!   (many traces per message)        (codec)              (keyed, same partitions)
//! ```
//!
//! The OTel Collector's kafka exporter writes batches of many traces per message with
//! no key by default, and Zipkin's transport writes unkeyed lists of spans: with more
//! than one sampler instance such input splits traces between them. The route stage
//! reads those topics in a consumer group of its own, converts each message to OTLP
//! (the input encoding of its topic), groups its spans by trace id and produces one
//! OTLP record per trace, keyed by its hex trace id and stamped with the input
//! message's timestamp (the sampler's stream time stays the input's), to the routed
//! topic, which the sampler reads instead. A message that cannot be read, and spans
//! without a trace id, go to the dead-letter topic with the reason, as in the sampler.
//!
//! Delivery, per mode:
//! - at-least-once (default): an input offset is committed only once every record
//!   made from it (or its dead letter) is acknowledged by the broker; before a
//!   partition is revoked the producer is flushed and its offset committed. A crash
//!   re-routes what was not committed: the sampler then sees some spans twice (the
//!   decisions topic turns most of those into `already_output` late spans).
//! - exactly-once (`kafka.exactly_once`): a transactional producer of its own; every
//!   `kafka.commit_interval`, on every revoke and at shutdown the records produced
//!   since are committed in one transaction with the input offsets they cover. A
//!   transaction that fails is aborted and the stage stops with an error (the caller
//!   starts it again from what was committed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metrics::counter;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::codec::{
    encode_trace, scan_partial, AttrMatchers, FrameInterner, InputEncoding, SpanRef,
};
use crate::config::{KafkaConfig, RouteConfig};
use crate::flow::kept::Kept;
use crate::flow::Pin;
use crate::kafka::clients::RECORD_OVERHEAD_BYTES;
use crate::kafka::headers::dead_letter_headers;
use crate::kafka::offsets::{lock, OffsetTracker};
use crate::shutdown::Shutdown;
use crate::telemetry::{names, Health};

/// How long one transactional call, a flush or a commit may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The route stage's producer queue, in KiB: what it holds besides `memory.limit`
/// (with its consumer's prefetch, [`ROUTE_CONSUMER_QUEUE_KB`]).
const ROUTE_PRODUCER_QUEUE_KB: usize = 32768;
/// The route stage's consumer prefetch, in KiB.
const ROUTE_CONSUMER_QUEUE_KB: usize = 16384;
/// Pause before trying a produce again when librdkafka's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Why the route stage could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// librdkafka refused the client properties or the subscription.
    #[error("route stage: cannot create its Kafka clients: {0}")]
    Create(#[from] KafkaError),
    /// A transaction could not be committed (exactly-once mode): it was aborted, and
    /// the input it covered is re-routed from the last committed offsets.
    #[error("route stage: transaction {step} failed: {error}")]
    Transaction {
        /// The call that failed.
        step: &'static str,
        /// librdkafka's error.
        error: String,
    },
}

/// What a produced record stands for, handed back by its delivery report.
#[derive(Debug, Clone)]
struct Ticket {
    /// The input topic (the pin names its partition and offset).
    topic: Arc<str>,
    /// The input message's pin in the offset tracker.
    pin: Pin,
    /// A dead letter: if it fails too, the offset stays pending (nothing is lost).
    dead_letter: bool,
}

/// Offsets as librdkafka takes them.
fn offset_list(offsets: &[(Arc<str>, i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// A record whose delivery failed for good, to be dead-lettered by the stage.
struct Refused {
    ticket: Ticket,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    error: String,
}

/// The producer's callbacks: acknowledgements move the safe offsets.
struct RouteProducerContext {
    acks: Arc<Mutex<OffsetTracker>>,
    refused: std::sync::mpsc::Sender<Refused>,
}

impl ClientContext for RouteProducerContext {}

impl ProducerContext for RouteProducerContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Self::DeliveryOpaque) {
        match result {
            Ok(_) => lock(&self.acks).release(ticket.pin),
            Err((e, m)) if !ticket.dead_letter => {
                let _ = self.refused.send(Refused {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    error: e.to_string(),
                    ticket: *ticket,
                });
            }
            Err((e, _)) => {
                error!(message = "Route stage: a dead letter was refused too; its input offset stays uncommitted (re-read on restart).", topic = %ticket.topic, partition = ticket.pin.partition, offset = ticket.pin.offset, error = %e);
            }
        }
    }
}

/// The consumer's callbacks: a revoked partition's routed records are flushed and
/// its offset committed (in exactly-once mode: the transaction) before it moves.
struct RouteConsumerContext {
    acks: Arc<Mutex<OffsetTracker>>,
    producer: Arc<ThreadedProducer<RouteProducerContext>>,
    exactly_once: bool,
    health: Arc<Health>,
    /// Set when a commit in a callback failed in exactly-once mode.
    failed: Mutex<Option<RouteError>>,
}

impl ClientContext for RouteConsumerContext {}

impl ConsumerContext for RouteConsumerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if self.exactly_once {
            if let Err(e) = commit_transaction(consumer, &self.producer, &self.acks) {
                if let Ok(mut f) = self.failed.lock() {
                    *f = Some(e);
                }
            }
        } else {
            let _ = self.producer.flush(CALL_TIMEOUT);
            let offsets = offset_list(&lock(&self.acks).safe_offsets(&parts));
            if offsets.count() > 0 {
                if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                    warn!(message = "Route stage: commit on revoke failed; the next owner re-routes from the previous commit.", error = %e);
                }
            }
        }
        let mut a = lock(&self.acks);
        for (t, p) in &parts {
            a.revoke(t, *p);
        }
        // The route stage has no shards to tell: records of revoked assignments are
        // simply not counted (their pins are stale).
        let _ = a.take_revoked();
        self.health.set_assigned(a.assigned());
        info!(message = "Route stage: partitions revoked.", partitions = ?parts.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut a = lock(&self.acks);
            for e in tpl.elements() {
                a.assign(e.topic(), e.partition());
            }
            self.health.set_joined();
            self.health.set_assigned(a.assigned());
            info!(message = "Route stage: partitions assigned.", partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>());
        }
    }
}

/// Exactly-once: commits the records produced since the last commit with the next
/// offsets of every assigned partition, and begins the next transaction.
fn commit_transaction<C: Consumer<RouteConsumerContext>>(
    consumer: &C,
    producer: &ThreadedProducer<RouteProducerContext>,
    acks: &Mutex<OffsetTracker>,
) -> Result<(), RouteError> {
    let safe = lock(acks).all_safe();
    let offsets = offset_list(&safe);
    let step = |step: &'static str| {
        move |e: KafkaError| RouteError::Transaction {
            step,
            error: e.to_string(),
        }
    };
    let result = (|| {
        if offsets.count() > 0 {
            let group = consumer.group_metadata().ok_or(RouteError::Transaction {
                step: "send_offsets",
                error: "the consumer has no group metadata (not a member of its group)".into(),
            })?;
            producer
                .send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)
                .map_err(step("send_offsets"))?;
        }
        producer
            .commit_transaction(CALL_TIMEOUT)
            .map_err(step("commit"))?;
        producer.begin_transaction().map_err(step("begin"))
    })();
    match &result {
        Ok(()) => counter!(names::ROUTE_COMMITS, "result" => "ok").increment(1),
        Err(e) => {
            counter!(names::ROUTE_COMMITS, "result" => "error").increment(1);
            error!(message = "Route stage: transaction failed; aborting it (its records stay invisible, its input uncommitted).", error = %e);
            let _ = producer.abort_transaction(CALL_TIMEOUT);
            lock(acks).forget_committed(&safe);
        }
    }
    result
}

/// A record made from one input message.
struct Piece {
    topic: Arc<str>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    dead_letter: bool,
}

/// Where an input message came from: what its records and its dead letter carry,
/// taken before its payload is handed to a `Bytes`.
struct Origin {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

impl Origin {
    fn of(m: &BorrowedMessage<'_>) -> Self {
        Origin {
            topic: Arc::from(m.topic()),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(rdkafka::message::BorrowedHeaders::detach)
                .unwrap_or_default(),
        }
    }
}

/// The records made from one input message, and where it came from.
struct Batch {
    origin: Origin,
    pieces: Vec<Piece>,
}

/// The route stage: its consumer (own group), its producer and what it has routed.
pub struct Router {
    consumer: Arc<StreamConsumer<RouteConsumerContext>>,
    producer: Arc<ThreadedProducer<RouteProducerContext>>,
    acks: Arc<Mutex<OffsetTracker>>,
    /// Records the broker refused for good, from the delivery callback.
    refused: Mutex<std::sync::mpsc::Receiver<Refused>>,
    /// Per routed input topic: its routed topic and input encoding.
    topics: HashMap<String, (Arc<str>, InputEncoding)>,
    dead_letter: Arc<str>,
    max_message_bytes: usize,
    commit_interval: Duration,
    /// A static group member (`group.instance.id`): it does not leave its group.
    static_member: bool,
    exactly_once: bool,
    frames: FrameInterner,
    keys: AttrMatchers,
}

impl Router {
    /// Creates the stage's clients and subscribes to the routed input topics.
    /// Blocking in exactly-once mode (the transactional producer's initialisation).
    ///
    /// # Errors
    /// [`RouteError`] when librdkafka refuses the properties or the transactional
    /// producer cannot be initialised.
    pub fn new(
        kafka: &KafkaConfig,
        route: &RouteConfig,
        health: Arc<Health>,
    ) -> Result<Self, RouteError> {
        let acks = Arc::new(Mutex::new(OffsetTracker::default()));
        let (refused_tx, refused) = std::sync::mpsc::channel();
        let group = route.group_of(kafka);
        // Retriable errors are retried for as long as they last (`message.timeout.ms`
        // 0): input stays uncommitted meanwhile. The queue is bounded (librdkafka's
        // default is 1 GiB): a full queue holds the stage back, and the input waits
        // in Kafka; it must admit the largest record, or that record would wait
        // forever.
        let limits = crate::kafka::clients::ProducerLimits {
            max_record_bytes: kafka.max_message_bytes + RECORD_OVERHEAD_BYTES,
            queue_kbytes: ROUTE_PRODUCER_QUEUE_KB
                .max(2 * (kafka.max_message_bytes / 1024 + RECORD_OVERHEAD_BYTES / 1024)),
            message_timeout_ms: "0",
            transactional_group: kafka.exactly_once.then_some(group.as_str()),
        };
        let p = crate::kafka::clients::producer(kafka, limits, &[]);
        let producer: ThreadedProducer<RouteProducerContext> =
            p.create_with_context(RouteProducerContext {
                acks: Arc::clone(&acks),
                refused: refused_tx,
            })?;
        if kafka.exactly_once {
            let step = |step: &'static str| {
                move |e: KafkaError| RouteError::Transaction {
                    step,
                    error: e.to_string(),
                }
            };
            producer
                .init_transactions(CALL_TIMEOUT)
                .map_err(step("init"))?;
            producer.begin_transaction().map_err(step("begin"))?;
        }
        let producer = Arc::new(producer);
        // Prefetch bounded too (librdkafka's default is 64 MiB), with fetch responses
        // no larger (librdkafka's default is 50 MB) but large enough for one record.
        let queue = ROUTE_CONSUMER_QUEUE_KB * 1024;
        let c = crate::kafka::clients::input_consumer(
            kafka,
            &group,
            queue,
            queue.max(kafka.max_message_bytes + RECORD_OVERHEAD_BYTES),
            &[],
        );
        let consumer: StreamConsumer<RouteConsumerContext> =
            c.create_with_context(RouteConsumerContext {
                acks: Arc::clone(&acks),
                producer: Arc::clone(&producer),
                exactly_once: kafka.exactly_once,
                health,
                failed: Mutex::new(None),
            })?;
        let inputs: Vec<&str> = route.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&inputs)?;
        let topics = route
            .topics
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    (Arc::from(route.target_of(t)), kafka.encoding_of(t)),
                )
            })
            .collect();
        Ok(Router {
            consumer: Arc::new(consumer),
            producer,
            acks,
            refused: Mutex::new(refused),
            topics,
            dead_letter: Arc::from(kafka.dead_letter_topic.as_str()),
            max_message_bytes: kafka.max_message_bytes,
            commit_interval: kafka.commit_interval.0,
            static_member: kafka.static_member(),
            exactly_once: kafka.exactly_once,
            frames: FrameInterner::new(Bytes::from),
            keys: AttrMatchers::default(),
        })
    }

    /// Routes until `shutdown`; then flushes what was produced, commits and leaves
    /// the group.
    ///
    /// # Errors
    /// [`RouteError::Transaction`] when a transaction failed (exactly-once mode).
    pub async fn run(mut self, mut shutdown: Shutdown) -> Result<(), RouteError> {
        let mut tick = tokio::time::interval(self.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = Arc::clone(&self.consumer);
        let result = loop {
            if let Some(e) = self.failed() {
                break Err(e);
            }
            tokio::select! {
                biased;
                _ = shutdown.recv() => break Ok(()),
                _ = tick.tick() => {
                    if let Err(e) = self.commit().await {
                        break Err(e);
                    }
                }
                m = consumer.recv() => match m {
                    Ok(m) => {
                        if let Some(batch) = self.prepare(m) {
                            self.send(batch).await;
                        }
                    }
                    Err(e) => {
                        warn!(message = "Route stage: Kafka consumer error.", error = %e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            self.dead_letter_refused().await;
        };
        if result.is_ok() {
            let producer = Arc::clone(&self.producer);
            let _ = tokio::task::spawn_blocking(move || producer.flush(CALL_TIMEOUT)).await;
            self.dead_letter_refused().await;
            let _ = tokio::task::spawn_blocking({
                let producer = Arc::clone(&self.producer);
                move || producer.flush(CALL_TIMEOUT)
            })
            .await;
            if let Err(e) = self.commit().await {
                warn!(message = "Route stage: final commit failed; the next owner re-routes from the previous commit.", error = %e);
            }
        }
        // The revoke runs now, not in the consumer's drop, where it can hang.
        crate::shutdown::leave_group(
            &self.consumer,
            self.static_member,
            crate::shutdown::LEAVE_TIMEOUT,
        )
        .await;
        info!(message = "Route stage stopped.");
        result
    }

    fn failed(&self) -> Option<RouteError> {
        self.consumer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|mut f| f.take())
    }

    /// Commits what is routed, off the runtime: the transaction in exactly-once
    /// mode, else the safe offsets that moved.
    async fn commit(&self) -> Result<(), RouteError> {
        let (consumer, producer, acks) = (
            Arc::clone(&self.consumer),
            Arc::clone(&self.producer),
            Arc::clone(&self.acks),
        );
        let exactly_once = self.exactly_once;
        tokio::task::spawn_blocking(move || {
            if exactly_once {
                return commit_transaction(&*consumer, &producer, &acks);
            }
            let safe = lock(&acks).to_commit();
            if safe.is_empty() {
                return Ok(());
            }
            let offsets = offset_list(&safe);
            match consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => counter!(names::ROUTE_COMMITS, "result" => "ok").increment(1),
                Err(e) => {
                    counter!(names::ROUTE_COMMITS, "result" => "error").increment(1);
                    warn!(message = "Route stage: offset commit failed; retrying on the next round.", error = %e);
                    lock(&acks).forget_committed(&safe);
                }
            }
            Ok(())
        })
        .await
        .unwrap_or(Ok(()))
    }

    /// Splits one input message by trace (synchronously: a borrowed message must
    /// not be held across an await) into what [`Router::send`] produces.
    fn prepare(&mut self, m: BorrowedMessage<'_>) -> Option<Batch> {
        let (routed, encoding) = self
            .topics
            .get(m.topic())
            .map(|(t, e)| (Arc::clone(t), *e))?;
        counter!(names::ROUTE_MESSAGES, "topic" => m.topic().to_string()).increment(1);
        let origin = Origin::of(&m);
        // Read in librdkafka's memory, not copied out (see `flow::kept`): the message
        // is dropped once its records are encoded.
        let raw = if m.payload_len() == 0 {
            Bytes::new()
        } else {
            // SAFETY: `m` was read from `self.consumer`: `run` reads through a clone of
            // that `Arc`, and nothing else calls `prepare`.
            Bytes::from_owner(unsafe { Kept::new(m, &self.consumer) })
        };
        let pieces = self.split(&origin, &raw, &routed, encoding);
        Some(Batch { origin, pieces })
    }

    /// Produces the records of one input message, its offset pending until every
    /// one is acknowledged.
    async fn send(&self, b: Batch) {
        let o = &b.origin;
        let Some(pin) =
            lock(&self.acks).track(&o.topic, o.partition, o.offset, b.pieces.len() as u32)
        else {
            return; // revoked meanwhile
        };
        for piece in b.pieces {
            let ticket = Ticket {
                topic: Arc::clone(&o.topic),
                pin,
                dead_letter: piece.dead_letter,
            };
            if !piece.dead_letter {
                counter!(names::ROUTE_RECORDS, "topic" => piece.topic.to_string()).increment(1);
            }
            self.produce(piece, o.timestamp, ticket).await;
        }
    }

    /// The records the message from `origin` with payload `raw` becomes: one per trace
    /// (more for a trace over the record size), or a dead letter.
    fn split(
        &mut self,
        origin: &Origin,
        raw: &Bytes,
        routed: &Arc<str>,
        encoding: InputEncoding,
    ) -> Vec<Piece> {
        let otlp = match encoding.to_otlp(raw) {
            Ok(None) => raw.clone(),
            Ok(Some(o)) => Bytes::from(o),
            Err(e) => {
                return vec![self.dead_letter_of(
                    origin,
                    raw.to_vec(),
                    &format!("bad_encoding: {e}"),
                    "bad_encoding",
                )]
            }
        };
        let mut spans = Vec::new();
        let mut rejected = Vec::new();
        let message = match scan_partial(
            &otlp,
            &self.keys,
            &mut self.frames,
            &mut spans,
            &mut rejected,
        ) {
            Ok(msg) => msg,
            Err(e) => {
                return vec![self.dead_letter_of(
                    origin,
                    raw.to_vec(),
                    &format!("{}: {e}", e.code()),
                    "undecodable",
                )];
            }
        };
        if spans.is_empty() && !rejected.is_empty() {
            let e = &rejected[0].error;
            return vec![self.dead_letter_of(
                origin,
                raw.to_vec(),
                &format!("{}: {e}", e.code()),
                "undecodable",
            )];
        }
        let mut pieces = Vec::new();
        spans.sort_by_key(|s| s.trace_id);
        for group in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
            let refs: Vec<SpanRef<'_>> = group.iter().map(|s| message.span_ref(s)).collect();
            let key = group[0].trace_id.to_hex().into_bytes();
            for payload in encode_trace(&refs, self.max_message_bytes) {
                pieces.push(Piece {
                    topic: Arc::clone(routed),
                    key: Some(key.clone()),
                    payload,
                    headers: origin.headers.clone(),
                    dead_letter: false,
                });
            }
        }
        if !rejected.is_empty() {
            let refs: Vec<SpanRef<'_>> =
                rejected.iter().map(|r| message.span_ref(&r.span)).collect();
            let e = &rejected[0].error;
            let reason = format!(
                "{}: {} of {} spans set aside, the others routed: {e}",
                e.code(),
                rejected.len(),
                rejected.len() + spans.len()
            );
            let payload = encode_trace(&refs, usize::MAX).concat();
            pieces.push(self.dead_letter_of(origin, payload, &reason, "invalid_spans"));
        }
        pieces
    }

    fn dead_letter_of(
        &self,
        origin: &Origin,
        payload: Vec<u8>,
        reason: &str,
        label: &'static str,
    ) -> Piece {
        counter!(names::ROUTE_DEAD_LETTERED, "reason" => label).increment(1);
        static LOG: crate::telemetry::LogLimiter =
            crate::telemetry::LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            warn!(message = "Route stage: undecodable message; sending it to the dead-letter topic.", topic = %origin.topic, partition = origin.partition, offset = origin.offset, error = %reason, suppressed_since_last = suppressed);
        }
        Piece {
            topic: Arc::clone(&self.dead_letter),
            key: origin.key.clone(),
            payload,
            headers: dead_letter_headers(
                origin.headers.clone(),
                reason,
                &origin.topic,
                origin.partition,
                origin.offset,
            ),
            dead_letter: true,
        }
    }

    /// Enqueues one record, waiting while librdkafka's queue is full. A record
    /// librdkafka refuses outright is dead-lettered (or, if a dead letter, logged and
    /// left pending).
    async fn produce(&self, piece: Piece, timestamp: Option<i64>, ticket: Ticket) {
        let mut record = BaseRecord::with_opaque_to(&piece.topic, Box::new(ticket))
            .payload(&piece.payload)
            .headers(piece.headers.clone());
        if let Some(k) = &piece.key {
            record = record.key(k);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, r)) => {
                    let ticket = *r.delivery_opaque;
                    if ticket.dead_letter {
                        error!(message = "Route stage: a dead letter cannot be enqueued; its input offset stays uncommitted.", error = %e);
                        return;
                    }
                    let refused = Refused {
                        key: piece.key.clone(),
                        payload: piece.payload.clone(),
                        error: e.to_string(),
                        ticket,
                    };
                    Box::pin(self.dead_letter_one(refused)).await;
                    return;
                }
            }
        }
    }

    /// Dead-letters the records the broker refused for good (too large, not
    /// authorised), under the same input offsets.
    async fn dead_letter_refused(&self) {
        let refused: Vec<Refused> = match self.refused.lock() {
            Ok(rx) => rx.try_iter().collect(),
            Err(_) => Vec::new(),
        };
        for r in refused {
            self.dead_letter_one(r).await;
        }
    }

    async fn dead_letter_one(&self, r: Refused) {
        counter!(names::ROUTE_DEAD_LETTERED, "reason" => "produce_refused").increment(1);
        let reason = format!("route: produce failed: {}", r.error);
        static LOG: crate::telemetry::LogLimiter =
            crate::telemetry::LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            error!(message = "Route stage: a routed record was refused; sending it to the dead-letter topic.", error = %r.error, suppressed_since_last = suppressed);
        }
        let t = &r.ticket;
        let piece = Piece {
            topic: Arc::clone(&self.dead_letter),
            headers: dead_letter_headers(
                OwnedHeaders::new(),
                &reason,
                &t.topic,
                t.pin.partition,
                t.pin.offset,
            ),
            key: r.key,
            payload: r.payload,
            dead_letter: true,
        };
        let ticket = Ticket {
            dead_letter: true,
            ..r.ticket
        };
        self.produce(piece, None, ticket).await;
    }
}

/// Creates the routed topics the broker lacks, each with its input topic's
/// partition count (and the replication factor of `kafka.replication_factor`).
///
/// # Errors
/// When the broker cannot be asked or refuses.
pub async fn create_routed_topics(
    kafka: &KafkaConfig,
    route: &RouteConfig,
) -> Result<(), RouteError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = crate::kafka::clients::admin(kafka).create()?;
    let (admin, have) = tokio::task::spawn_blocking(move || {
        let md = admin.inner().fetch_metadata(None, Duration::from_secs(10));
        md.map(|md| {
            let have: HashMap<String, i32> = md
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                .collect();
            (admin, have)
        })
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))?;
    let wanted: Vec<(String, i32)> = route
        .topics
        .iter()
        .filter(|t| !have.contains_key(&route.target_of(t)))
        .map(|t| (route.target_of(t), have.get(t).copied().unwrap_or(1).max(1)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(kafka.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    for r in admin.create_topics(&new, &options).await? {
        match r {
            Ok(t) => info!(message = "Created routed topic.", topic = %t),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RouteError::Create(KafkaError::AdminOp(code))).inspect_err(
                    |_| error!(message = "Cannot create routed topic.", topic = %topic),
                );
            }
        }
    }
    Ok(())
}
