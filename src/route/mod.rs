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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use metrics::counter;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::codec::{
    encode_trace, scan_partial, AttrMatchers, FrameInterner, InputEncoding, SpanRef,
};
use crate::config::{KafkaConfig, RouteConfig, INPUT_FETCH_WAIT_MS};
use crate::flow::headers::{
    HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};
use crate::flow::kept::Kept;
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

/// Per input partition: the offsets whose records are not all acknowledged yet.
#[derive(Debug, Default)]
struct Part {
    epoch: u32,
    assigned: bool,
    /// Offset -> records (or dead letters) not yet acknowledged.
    pending: std::collections::BTreeMap<i64, u32>,
    /// One past the last message read.
    next: Option<i64>,
    /// Last offset committed.
    committed: Option<i64>,
}

impl Part {
    fn safe(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }
}

/// Which input offsets are routed: shared by the stage (which reads), the producer's
/// delivery callback (which acknowledges) and the rebalance callback (which commits).
#[derive(Debug, Default)]
struct Acks {
    parts: HashMap<(Arc<str>, i32), Part>,
}

/// What a produced record stands for, handed back by its delivery report.
#[derive(Debug, Clone)]
struct Ticket {
    topic: Arc<str>,
    partition: i32,
    epoch: u32,
    offset: i64,
    /// A dead letter: if it fails too, the offset stays pending (nothing is lost).
    dead_letter: bool,
}

impl Acks {
    fn assign(&mut self, topic: &str, partition: i32) {
        let p = self.parts.entry((Arc::from(topic), partition)).or_default();
        p.epoch += 1;
        p.assigned = true;
        p.pending.clear();
        p.next = None;
        p.committed = None;
    }

    fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self.parts.get_mut(&(Arc::from(topic), partition)) {
            p.assigned = false;
            p.pending.clear();
            p.next = None;
        }
    }

    /// Records a message read, with `records` deliveries outstanding for it. `None`:
    /// its partition is not assigned (revoked meanwhile), skip it.
    fn track(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        records: u32,
    ) -> Option<u32> {
        let p = self.parts.get_mut(&(Arc::clone(topic), partition))?;
        if !p.assigned {
            return None;
        }
        if records > 0 {
            *p.pending.entry(offset).or_insert(0) += records;
        }
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(p.epoch)
    }

    /// One delivery of `t` is acknowledged.
    fn done(&mut self, t: &Ticket) {
        let Some(p) = self.parts.get_mut(&(Arc::clone(&t.topic), t.partition)) else {
            return;
        };
        if !p.assigned || p.epoch != t.epoch {
            return;
        }
        if let Some(n) = p.pending.get_mut(&t.offset) {
            *n -= 1;
            if *n == 0 {
                p.pending.remove(&t.offset);
            }
        }
    }

    /// Safe offsets of `only` (every assigned partition when empty) that moved since
    /// their last commit (every one with `all`: a transaction carries them all, so
    /// the coordinator checks this member's generation), marked committed.
    fn offsets_to_commit(&mut self, only: &[(String, i32)], all: bool) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), p) in &mut self.parts {
            if !p.assigned
                || (!only.is_empty() && !only.iter().any(|(t, n)| **t == **topic && n == partition))
            {
                continue;
            }
            let Some(safe) = p.safe() else { continue };
            if (all || p.committed != Some(safe))
                && tpl
                    .add_partition_offset(topic, *partition, Offset::Offset(safe))
                    .is_ok()
            {
                p.committed = Some(safe);
            }
        }
        tpl
    }

    fn forget_committed(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let Some(p) = self.parts.get_mut(&(Arc::from(e.topic()), e.partition())) {
                p.committed = None;
            }
        }
    }
}

fn lock(a: &Mutex<Acks>) -> MutexGuard<'_, Acks> {
    a.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    acks: Arc<Mutex<Acks>>,
    refused: std::sync::mpsc::Sender<Refused>,
}

impl ClientContext for RouteProducerContext {}

impl ProducerContext for RouteProducerContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Self::DeliveryOpaque) {
        match result {
            Ok(_) => lock(&self.acks).done(&ticket),
            Err((e, m)) if !ticket.dead_letter => {
                let _ = self.refused.send(Refused {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    error: e.to_string(),
                    ticket: *ticket,
                });
            }
            Err((e, _)) => {
                error!(message = "Route stage: a dead letter was refused too; its input offset stays uncommitted (re-read on restart).", topic = %ticket.topic, partition = ticket.partition, offset = ticket.offset, error = %e);
            }
        }
    }
}

/// The consumer's callbacks: a revoked partition's routed records are flushed and
/// its offset committed (in exactly-once mode: the transaction) before it moves.
struct RouteConsumerContext {
    acks: Arc<Mutex<Acks>>,
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
            let offsets = lock(&self.acks).offsets_to_commit(&parts, true);
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
        let assigned = a.parts.values().filter(|p| p.assigned).count();
        self.health.set_assigned(assigned);
        info!(message = "Route stage: partitions revoked.", partitions = ?parts.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut a = lock(&self.acks);
            for e in tpl.elements() {
                a.assign(e.topic(), e.partition());
            }
            let assigned = a.parts.values().filter(|p| p.assigned).count();
            self.health.set_joined();
            self.health.set_assigned(assigned);
            info!(message = "Route stage: partitions assigned.", partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>());
        }
    }
}

/// Exactly-once: commits the records produced since the last commit with the next
/// offsets of every assigned partition, and begins the next transaction.
fn commit_transaction<C: Consumer<RouteConsumerContext>>(
    consumer: &C,
    producer: &ThreadedProducer<RouteProducerContext>,
    acks: &Mutex<Acks>,
) -> Result<(), RouteError> {
    let offsets = lock(acks).offsets_to_commit(&[], true);
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
            lock(acks).forget_committed(&offsets);
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
    acks: Arc<Mutex<Acks>>,
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
        let acks = Arc::new(Mutex::new(Acks::default()));
        let (refused_tx, refused) = std::sync::mpsc::channel();
        let mut p = ClientConfig::new();
        p.set("bootstrap.servers", &kafka.brokers)
            .set("enable.idempotence", "true")
            .set("compression.codec", kafka.compression.to_librdkafka())
            .set("linger.ms", "5")
            .set(
                "message.max.bytes",
                (kafka.max_message_bytes + 64 * 1024).to_string(),
            )
            // Retriable errors are retried for as long as they last: input stays
            // uncommitted meanwhile.
            .set("message.timeout.ms", "0")
            // Bounded (librdkafka's default is 1 GiB): a full queue holds the stage
            // back, and the input waits in Kafka.
            // It must admit the largest record, or that record would wait forever.
            .set(
                "queue.buffering.max.kbytes",
                (ROUTE_PRODUCER_QUEUE_KB)
                    .max(2 * (kafka.max_message_bytes / 1024 + 64))
                    .to_string(),
            );
        let group = route.group_of(kafka);
        if kafka.exactly_once {
            let timeout = kafka
                .producer
                .get("transaction.timeout.ms")
                .map_or("10000", String::as_str);
            p.set("transactional.id", format!("{group}-{}", unique()))
                .set("transaction.timeout.ms", timeout)
                .set("message.timeout.ms", timeout);
        }
        for (k, v) in &kafka.producer {
            p.set(k, v);
        }
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
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Prefetch bounded too (librdkafka's default is 64 MiB), with fetch
            // responses no larger (librdkafka's default is 50 MB).
            .set(
                "queued.max.messages.kbytes",
                ROUTE_CONSUMER_QUEUE_KB.to_string(),
            )
            .set(
                "fetch.max.bytes",
                (ROUTE_CONSUMER_QUEUE_KB * 1024)
                    .max(kafka.max_message_bytes + 64 * 1024)
                    .to_string(),
            )
            // A full prefetch queue postpones the next fetch by this (default 1 s,
            // which left the stage idle most of the time: 5.4 s instead of 0.9 s for
            // the e2e bench's 170 MiB).
            .set("fetch.queue.backoff.ms", "10")
            // A fetch held open on partitions at their end holds up the rest.
            .set("fetch.wait.max.ms", INPUT_FETCH_WAIT_MS);
        if kafka
            .consumer
            .get("group.protocol")
            .is_none_or(|p| p != "consumer")
        {
            c.set(
                "partition.assignment.strategy",
                if kafka.exactly_once {
                    "range,roundrobin"
                } else {
                    "cooperative-sticky"
                },
            );
        }
        if kafka.exactly_once {
            c.set("isolation.level", "read_committed");
        }
        for (k, v) in &kafka.consumer {
            c.set(k, v);
        }
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
            let offsets = lock(&acks).offsets_to_commit(&[], false);
            if offsets.count() == 0 {
                return Ok(());
            }
            match consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => counter!(names::ROUTE_COMMITS, "result" => "ok").increment(1),
                Err(e) => {
                    counter!(names::ROUTE_COMMITS, "result" => "error").increment(1);
                    warn!(message = "Route stage: offset commit failed; retrying on the next round.", error = %e);
                    lock(&acks).forget_committed(&offsets);
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
        let Some(epoch) =
            lock(&self.acks).track(&o.topic, o.partition, o.offset, b.pieces.len() as u32)
        else {
            return; // revoked meanwhile
        };
        for piece in b.pieces {
            let ticket = Ticket {
                topic: Arc::clone(&o.topic),
                partition: o.partition,
                epoch,
                offset: o.offset,
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
            headers: source_headers(
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
            headers: source_headers(
                OwnedHeaders::new(),
                &reason,
                &t.topic,
                t.partition,
                t.offset,
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

/// A dead letter's headers: the message's own, then why and where it came from.
fn source_headers(
    headers: OwnedHeaders,
    reason: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
        Header {
            key,
            value: Some(value.as_bytes()),
        }
    }
    headers
        .insert(h(HEADER_ERROR, reason))
        .insert(h(HEADER_SOURCE_TOPIC, topic))
        .insert(h(HEADER_SOURCE_PARTITION, &partition.to_string()))
        .insert(h(HEADER_SOURCE_OFFSET, &offset.to_string()))
}

/// A part of a transactional id no other process shares.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
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
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.producer {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c.create()?;
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

#[cfg(test)]
mod tests;
