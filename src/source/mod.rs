//! Source: the Kafka consumer group that feeds the buffer, and the owner of input
//! offsets.
//!
//! The source reads messages in partition order, pins each, and deals them to its
//! `scanner` tasks, which decode them (codec) in parallel and send each shard its
//! spans; undecodable messages go to the sink as dead letters. It tracks one pin per
//! (message, trace) and commits, per partition, only below the lowest pinned offset
//! ([`OffsetTracker`]); workers and the sink send releases back through
//! [`crate::flow::Releases`], the one path that flows upstream.

mod context;
mod decisions;
mod inflight;
mod replicas;
mod reread;
mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, gauge, Counter};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::budget::{Charge, MemoryBudget};
use crate::clock::{wall_ms, IdleTracker, PartitionTime, StreamClocks};
use crate::codec::{FrameInterner, InputEncoding};
use crate::config::{KafkaConfig, MemorySplit, PromotionConfig};
use crate::flow::kept::Kept;
use crate::flow::{Pin, Publisher, Reread, Restored, ScanKeys, ShardMsg, SinkMsg, TxnCommit};
use crate::shutdown::Shutdown;
use crate::telemetry::{names, Health};

use crate::decode::{shard_of_id, unkeyed_reason, Input, ScanJob, Scanner};
use crate::kafka::offsets::{self, lock, OffsetTracker};
pub use context::SourceContext;
use decisions::DecisionsTopic;
use inflight::InputGate;
use replicas::{BrokerStates, PartitionReplicas, Replicas};
use watchdog::{Change, Watchdog};

/// How long a shutdown waits for workers and the sink to hand back their pins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(35);
/// How often memory pressure is re-checked while input is paused.
const PRESSURE_CHECK: Duration = Duration::from_millis(50);
/// Capacity of each scanner's input channel, in messages.
const SCAN_CHANNEL: usize = 16;
/// How long an idle probe waits for the broker's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the source keeps each partition's stream time (see [`crate::clock`]).
#[derive(Debug, Clone)]
pub struct StreamTime {
    /// The table the scanners publish to and the shard workers read.
    pub clocks: Arc<StreamClocks>,
    /// Record timestamps further ahead of the wall clock are ignored.
    pub max_skew: Duration,
    /// How long a partition must be confirmed caught up before its stream time
    /// follows the wall clock (and how far behind it stays).
    pub idle_delay: Duration,
    /// The same after a failed probe (the broker unreachable).
    pub idle_delay_after_outage: Duration,
    /// How often caught-up partitions are probed.
    pub probe_interval: Duration,
    /// The pipeline was started again after it stopped itself (an aborted
    /// transaction, typically in a broker outage): each partition's first assignment
    /// waits `idle_delay_after_outage` before its stream time follows the wall clock,
    /// as after a failed probe. Producers cut off by the same outage may still hold
    /// records of the traces re-read from the committed offsets.
    pub restarted: bool,
    /// How long a partition holding undecided input may go without its stream time
    /// or lowest pinned offset moving before the progress watchdog calls it stalled.
    pub stall_after: Duration,
}

/// The consumer could not be created or subscribed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// librdkafka refused the configuration or subscription.
    #[error("cannot create Kafka consumer: {0}")]
    Create(#[from] KafkaError),
}

/// The source task.
pub struct Source {
    /// Shared with the blocking thread a commit runs on.
    consumer: Arc<StreamConsumer<SourceContext>>,
    /// Asks the brokers for end offsets in idle probes. A client of its own: on the
    /// consumer's connection a ListOffsets request waits behind a fetch the broker
    /// holds open for `fetch.wait.max.ms` when there is no data (measured: 445 ms per
    /// probe on an idle partition), which made each idle partition's last traces wait
    /// a second or more instead of `idle_delay`.
    prober: Arc<BaseConsumer<ProbeContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    /// Set while a commit is running; one at a time.
    committing: Arc<AtomicBool>,
    /// Scanners not yet started (`run` spawns them).
    idle: Vec<Scanner>,
    /// The re-reader, not yet started (`run` spawns it).
    rereader: Option<reread::Rereader>,
    /// One channel per scanner; each partition's messages go to one of them.
    scanners: Vec<mpsc::Sender<ScanJob>>,
    /// The shards, for decisions read back from the decisions topic.
    shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Where decisions are read back from, if they are recorded.
    decisions: Option<DecisionsTopic>,
    /// Partitions paused until their decisions are read back.
    loading: Vec<(String, i32)>,
    /// Finished loads come back here.
    loaded: (
        mpsc::UnboundedSender<Loaded>,
        mpsc::UnboundedReceiver<Loaded>,
    ),
    releases: mpsc::UnboundedReceiver<Vec<Pin>>,
    /// Exactly-once mode: commits go through the sink's transactions.
    txn: Option<Arc<dyn TxnCommit>>,
    /// Each input topic's encoding.
    encodings: Vec<(Arc<str>, InputEncoding)>,
    /// Input messages not keyed by trace id, for the consumer's periodic check.
    unkeyed: Arc<AtomicU64>,
    commit_interval: Duration,
    /// A static group member (`group.instance.id`): it does not leave its group.
    static_member: bool,
    budget: MemoryBudget,
    /// Input handed on and not yet buffered, against a cap in bytes.
    gate: Arc<InputGate>,
    paused: bool,
    /// Messages and bytes received (handles registered once).
    received: [Counter; 2],
    /// Stream time per partition slot.
    times: Vec<PartitionTime>,
    stream: StreamTime,
    /// Finished idle probes come back here; `probing` while one runs.
    probed: (mpsc::UnboundedSender<Probe>, mpsc::UnboundedReceiver<Probe>),
    probing: bool,
    /// [`Health::outages`] when the last probe was applied.
    outages_seen: u64,
    /// Which brokers the prober has lost (its statistics), and what the last probe
    /// saw of each partition slot's replicas: an outage of one partition.
    brokers: Arc<BrokerStates>,
    replicas: HashMap<u32, PartitionReplicas>,
    /// Whether each partition slot moves; what its last idle probe found (why it
    /// may be stalled); the stalled ones, by slot.
    watchdog: Watchdog,
    probe_notes: HashMap<u32, &'static str>,
    stalled: std::collections::BTreeMap<u32, String>,
    future_timestamps: Counter,
    health: Arc<Health>,
}

/// The answer to one idle probe.
struct Probe {
    /// Wall time before the broker was asked.
    started_ms: u64,
    parts: Vec<ProbeAnswer>,
}

/// What one idle probe found of one partition.
struct ProbeAnswer {
    partition: i32,
    slot: u32,
    epoch: u32,
    /// Records read in the assignment when the probe started.
    seq: u64,
    /// Read to its end (`None`: the broker could not be asked).
    caught_up: Option<bool>,
    /// Its end offset, if the broker said.
    end: Option<i64>,
    /// Its leader and in-sync replicas (`None`: the metadata read did not say).
    replicas: Option<Replicas>,
}

/// Decisions read back for some newly assigned partitions.
struct Loaded {
    parts: Vec<(String, i32)>,
    /// The assignment epoch each part was loaded for: a load finishing after its
    /// partition was revoked and assigned again must not resume it (the newer load,
    /// with decisions committed since, has not reached the caches yet).
    epochs: Vec<Option<u32>>,
    decisions: Vec<Restored>,
    /// The decisions' memory, charged until they are handed to the shards (whose
    /// caches then charge what they keep).
    _charge: Charge,
}

/// Where the source sends what it reads.
pub struct Outputs {
    /// One channel per buffer shard.
    pub shards: Vec<mpsc::Sender<ShardMsg>>,
    /// The sink, for dead letters.
    pub sink: mpsc::Sender<SinkMsg>,
    /// Pins coming back from workers and the sink.
    pub releases: mpsc::UnboundedReceiver<Vec<Pin>>,
    /// Exactly-once mode: the sink's transactions, which commit the input offsets.
    pub txn: Option<Arc<dyn TxnCommit>>,
    /// Requests from the workers to read a promoted trace's earlier pieces again,
    /// with the limits re-reads keep to (`None`: promotion is off).
    pub rereads: Option<(mpsc::UnboundedReceiver<Reread>, PromotionConfig)>,
}

impl Source {
    /// Creates the consumer and subscribes to the input topics.
    ///
    /// # Errors
    /// [`SourceError::Create`] when librdkafka rejects the properties.
    pub fn new(
        cfg: &KafkaConfig,
        memory: &MemorySplit,
        budget: MemoryBudget,
        health: Arc<Health>,
        policies: &Publisher<ScanKeys>,
        stream: StreamTime,
        out: Outputs,
    ) -> Result<Self, SourceError> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        // The prefetch queue and fetch responses are part of the memory limit
        // (fetch.max.bytes must also cover one maximum-size message). Health, lag and
        // the idle clock read librdkafka's statistics.
        let queue = usize::try_from(memory.consumer_queue).unwrap_or(usize::MAX);
        let c = crate::kafka::clients::input_consumer(
            cfg,
            &cfg.group_id,
            queue,
            queue.max(1_000_000),
            &[("statistics.interval.ms", "1000")],
        );
        if let Some(txn) = &out.txn {
            let tracker = Arc::clone(&tracker);
            txn.set_pin_check(Box::new(move |pins: &[Pin]| {
                let t = lock(&tracker);
                pins.iter().any(|p| t.is_current(p.slot, p.epoch))
            }));
        }
        let unkeyed = Arc::new(AtomicU64::new(0));
        let brokers = Arc::new(BrokerStates::default());
        let ctx = SourceContext::new(
            Arc::clone(&tracker),
            Arc::clone(&health),
            cfg.decisions_topic.is_some(),
            out.txn.clone(),
            Arc::clone(&unkeyed),
        );
        let prober = probe_client(&c, &cfg.group_id, Arc::clone(&brokers))?;
        let rereader = out.rereads.map(|(rx, limits)| {
            reread::Rereader::new(rx, &c, cfg, &limits, budget.clone(), memory.consumer_queue)
        });
        let consumer: StreamConsumer<SourceContext> = c.create_with_context(ctx)?;
        let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        // As many scanners as shards: scanning is the costliest step per span.
        let (scanners, idle) = (0..out.shards.len().max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(SCAN_CHANNEL);
                let frames_budget = budget.clone();
                let scanner = Scanner {
                    rx,
                    tracker: Arc::clone(&tracker),
                    policies: policies.watch(),
                    frames: FrameInterner::new(move |v| {
                        frames_budget.charged_bytes_with(v, FrameInterner::FRAME_OVERHEAD)
                    }),
                    shards: out.shards.clone(),
                    sink: out.sink.clone(),
                    clocks: Arc::clone(&stream.clocks),
                    budget: budget.clone(),
                    dealer: Default::default(),
                };
                (tx, scanner)
            })
            .unzip();
        // Decisions read back are held until the shards take them: at most a
        // quarter of the buffer's share in them (the caches keep fewer anyway).
        let decisions_limit = (memory.buffer / 4) as usize / (std::mem::size_of::<Restored>() + 16);
        let consumer_props: Vec<(String, String)> = cfg
            .consumer
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Source {
            shards: out.shards,
            decisions: cfg.decisions_topic.as_deref().map(|t| {
                DecisionsTopic::new(
                    &cfg.brokers,
                    &cfg.group_id,
                    &consumer_props,
                    t,
                    cfg.decisions_window.0,
                    decisions_limit,
                )
            }),
            loading: Vec::new(),
            loaded: mpsc::unbounded_channel(),
            consumer: Arc::new(consumer),
            prober: Arc::new(prober),
            rereader,
            tracker,
            committing: Arc::new(AtomicBool::new(false)),
            idle,
            scanners,
            releases: out.releases,
            commit_interval: cfg.commit_interval.0,
            static_member: cfg.static_member(),
            budget,
            paused: false,
            received: [
                counter!(names::MESSAGES_RECEIVED),
                counter!(names::BYTES_RECEIVED),
            ],
            times: Vec::new(),
            watchdog: Watchdog::new(stream.stall_after),
            stream,
            probed: mpsc::unbounded_channel(),
            probing: false,
            outages_seen: 0,
            brokers,
            replicas: HashMap::new(),
            probe_notes: HashMap::new(),
            stalled: Default::default(),
            future_timestamps: counter!(names::FUTURE_TIMESTAMPS),
            health,
            txn: out.txn,
            encodings: cfg
                .input_topics
                .iter()
                .map(|t| (Arc::from(t.as_str()), cfg.encoding_of(t)))
                .collect(),
            unkeyed,
            // An eighth of the buffer's share: at the default 512 MiB, ~13 messages
            // of the Collector's 8192 spans, ~200 of 500 spans (more than the
            // channels hold).
            gate: InputGate::new(memory.buffer / 8),
        })
    }

    /// Consumes until `shutdown`; then stops reading, lets workers and the sink
    /// finish, commits what is safe and leaves the group.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pressure_tick = tokio::time::interval(PRESSURE_CHECK);
        pressure_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe_tick = tokio::time::interval(self.stream.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        gauge!(names::MEMORY_BUDGET).set(self.budget.capacity() as f64);
        if let Some(r) = self.rereader.take() {
            tokio::spawn(r.run());
        }
        for s in self.idle.drain(..) {
            tokio::spawn(s.run());
        }
        // A handle of its own: a message borrows the consumer while `self` changes.
        let consumer = Arc::clone(&self.consumer);
        loop {
            // Partitions assigned by the last poll wait, paused, for their decisions.
            self.start_loads();
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                Some(pins) = self.releases.recv() => self.release(pins),
                _ = commit_tick.tick() => {
                    self.forward_revocations().await;
                    if let Some(e) = self.txn.as_ref().and_then(|t| t.failed()) {
                        self.health.set_fatal(e.to_string());
                        break;
                    }
                    self.start_commit();
                }
                Some(done) = self.loaded.1.recv() => self.finish_load(done).await,
                Some(probe) = self.probed.1.recv() => {
                    if self.apply_probe(probe).await.is_err() {
                        break;
                    }
                }
                _ = pressure_tick.tick() => self.apply_backpressure(),
                _ = probe_tick.tick() => self.start_probe(),
                // Polled even while paused: rebalances and statistics arrive here.
                m = consumer.recv() => match m {
                    Ok(m) => {
                        self.forward_revocations().await;
                        if self.handle(m).await.is_err() {
                            break;
                        }
                        if !self.paused && self.budget.pressure() {
                            self.apply_backpressure();
                        }
                    }
                    Err(e) => {
                        // Already logged (rate-limited) by the context's error callback.
                        tracing::debug!(message = "Kafka consumer error.", error = %e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        info!(message = "Source stopping: draining workers and sink.");
        // Closing the channels stops the scanners, then the workers; they drop their
        // sink senders, the sink drains, and the release channel closes when the last
        // one is gone.
        self.scanners.clear();
        self.shards.clear();
        let releases = &mut self.releases;
        let tracker = &self.tracker;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(pins) = releases.recv().await {
                let mut t = lock(tracker);
                for p in pins {
                    t.release(p);
                }
            }
        })
        .await;
        if drained.is_err() {
            self.health.set_drain_incomplete();
            warn!(message = "Workers did not finish in time; committing what is safe.");
        }
        // The last commit: after any still running, with what is safe now.
        for _ in 0..300 {
            if !self.committing.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (consumer, tracker) = (Arc::clone(&self.consumer), Arc::clone(&self.tracker));
        match self.txn.clone() {
            Some(txn) => {
                let health = Arc::clone(&self.health);
                let _ = tokio::task::spawn_blocking(move || {
                    commit_transaction(&*consumer, &tracker, &*txn, &health, &[]);
                })
                .await;
            }
            None => {
                let offsets = self.offsets_to_commit();
                let _ = tokio::task::spawn_blocking(move || commit(&consumer, &tracker, &offsets))
                    .await;
            }
        }
        // The revoke runs now, not in the consumer's drop, where it can hang.
        crate::shutdown::leave_group(
            &self.consumer,
            self.static_member,
            crate::shutdown::LEAVE_TIMEOUT,
        )
        .await;
        info!(message = "Source stopped.");
    }

    /// Pauses every assigned partition while memory pressure is on (again after each
    /// rebalance, as new partitions arrive unpaused) and resumes them once usage is
    /// back under the low watermark. Data waits in Kafka, not in memory.
    fn apply_backpressure(&mut self) {
        let pressure = self.budget.pressure();
        gauge!(names::MEMORY_USED).set(self.budget.used() as f64);
        gauge!(names::MEMORY_PRESSURE).set(if pressure { 1.0 } else { 0.0 });
        if !pressure && !self.paused {
            return;
        }
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                warn!(message = "Cannot read the assignment for backpressure.", error = %e);
                return;
            }
        };
        let result = if pressure {
            self.consumer.pause(&assignment)
        } else {
            // Partitions still waiting for their decisions stay paused.
            let mut resume = TopicPartitionList::new();
            for e in assignment.elements() {
                let loading = self
                    .loading
                    .iter()
                    .any(|(t, p)| t == e.topic() && *p == e.partition());
                if !loading {
                    resume.add_partition(e.topic(), e.partition());
                }
            }
            self.consumer.resume(&resume)
        };
        match result {
            Ok(()) => {
                if pressure != self.paused {
                    info!(
                        message = if pressure {
                            "Memory pressure: input paused."
                        } else {
                            "Memory pressure over: input resumed."
                        },
                        used_bytes = self.budget.used(),
                        budget_bytes = self.budget.capacity()
                    );
                }
                self.paused = pressure;
                gauge!(names::PAUSED_PARTITIONS).set(if pressure {
                    assignment.count() as f64
                } else {
                    0.0
                });
            }
            Err(e) => warn!(message = "Cannot pause or resume input partitions.", error = %e),
        }
    }

    fn release(&mut self, pins: Vec<Pin>) {
        let mut t = lock(&self.tracker);
        for p in pins {
            t.release(p);
        }
        // Take whatever else is already queued under the same lock.
        while let Ok(more) = self.releases.try_recv() {
            for p in more {
                t.release(p);
            }
        }
    }

    async fn forward_revocations(&self) {
        let revoked = lock(&self.tracker).take_revoked();
        for (slot, epoch) in revoked {
            for s in &self.scanners {
                let _ = s.send(ScanJob::Revoked { slot, epoch }).await;
            }
        }
    }

    /// Starts reading back the decisions of partitions assigned since the last call.
    fn start_loads(&mut self) {
        let Some(topic) = &self.decisions else {
            return;
        };
        let (parts, epochs) = {
            let mut t = lock(&self.tracker);
            let parts = t.take_loading();
            let epochs: Vec<Option<u32>> = parts.iter().map(|(tp, p)| t.epoch_of(tp, *p)).collect();
            (parts, epochs)
        };
        if parts.is_empty() {
            return;
        }
        self.loading.extend(parts.iter().cloned());
        let topic = topic.clone();
        let done = self.loaded.0.clone();
        let budget = self.budget.clone();
        let (tracker, exactly_once) = (Arc::clone(&self.tracker), self.txn.is_some());
        tokio::task::spawn_blocking(move || {
            // Worth trying again while the source runs and some of the partitions
            // are still in the assignment they are loaded for.
            let wanted = || {
                let t = lock(&tracker);
                !done.is_closed()
                    && parts
                        .iter()
                        .zip(&epochs)
                        .any(|((topic, p), e)| e.is_some() && t.epoch_of(topic, *p) == *e)
            };
            let decisions = topic.load_until(&parts, exactly_once, wanted);
            let bytes = decisions.capacity() * std::mem::size_of::<Restored>()
                + decisions
                    .iter()
                    .filter_map(|d| d.policy.as_ref().map(|p| p.len() + 16))
                    .sum::<usize>();
            let _charge = Charge::new(&budget, bytes as u64);
            let _ = done.send(Loaded {
                parts,
                epochs,
                decisions,
                _charge,
            });
        });
    }

    /// Hands read-back decisions to the shards' caches, then resumes the partitions
    /// (unless memory pressure holds every partition paused).
    async fn finish_load(&mut self, done: Loaded) {
        counter!(names::DECISIONS_LOADED).increment(done.decisions.len() as u64);
        info!(
            message = "Decisions read back.",
            partitions = ?done.parts.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            decisions = done.decisions.len()
        );
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<Restored>> = vec![Vec::new(); n];
        for d in done.decisions {
            per_shard[shard_of_id(&d.trace_id, n)].push(d);
        }
        // The assignments loaded for: a shard first ends each one's predecessor
        // (whose revoke may still be on its way through the scanners), then restores.
        let assignments: Vec<(u32, u32)> = {
            let t = lock(&self.tracker);
            done.parts
                .iter()
                .zip(&done.epochs)
                .filter_map(|((topic, p), e)| Some((t.slot_of(topic, *p)?, (*e)?)))
                .collect()
        };
        for (shard, decisions) in self.shards.iter().zip(per_shard) {
            if !decisions.is_empty() {
                let assignments = assignments.clone();
                let msg = ShardMsg::Decisions {
                    decisions,
                    assignments,
                };
                let _ = shard.send(msg).await;
            }
        }
        // Only the parts still in the assignment they were loaded for are done.
        let current: Vec<&(String, i32)> = {
            let t = lock(&self.tracker);
            done.parts
                .iter()
                .zip(&done.epochs)
                .filter(|((topic, p), e)| e.is_some() && t.epoch_of(topic, *p) == **e)
                .map(|(part, _)| part)
                .collect()
        };
        self.loading
            .retain(|(t, p)| !current.iter().any(|(dt, dp)| dt == t && dp == p));
        if self.paused {
            return; // resumed with the rest when the pressure is over
        }
        let mut resume = TopicPartitionList::new();
        for (topic, p) in current {
            resume.add_partition(topic, *p);
        }
        if resume.count() > 0 {
            if let Err(e) = self.consumer.resume(&resume) {
                warn!(message = "Cannot resume partitions after reading their decisions.", error = %e);
            }
        }
    }

    /// Reads one message and hands it to the next scanner. `Err` only when the
    /// pipeline is shutting down.
    async fn handle(&mut self, m: BorrowedMessage<'_>) -> Result<(), ()> {
        self.received[0].increment(1);
        self.received[1].increment(m.payload_len() as u64);
        // The guard pin: held until a scanner knows how many traces the message feeds.
        let Some(pin) = lock(&self.tracker).track(m.topic(), m.partition(), m.offset(), 1) else {
            static LOG: crate::telemetry::LogLimiter =
                crate::telemetry::LogLimiter::new(Duration::from_secs(10));
            if let Some(suppressed) = LOG.allow() {
                tracing::debug!(
                    message = "Skipping a message of a partition not assigned (revoked meanwhile).",
                    partition = m.partition(),
                    offset = m.offset(),
                    suppressed_since_last = suppressed
                );
            }
            return Ok(()); // from a partition revoked meanwhile
        };
        let at = {
            let max_skew = self.stream.max_skew;
            let t = self.time_of(pin.slot, pin.epoch);
            let stamp = t.record(m.timestamp().to_millis(), max_skew);
            let at = t.stream_ms;
            if let Some(ahead_ms) = stamp.ahead_ms() {
                self.future_timestamps.increment(1);
                static LOG: crate::telemetry::LogLimiter =
                    crate::telemetry::LogLimiter::new(Duration::from_secs(60));
                if let Some(suppressed) = LOG.allow() {
                    warn!(
                        message = "Input record stamped ahead of the wall clock: it moves its partition's stream time no further than now (not at all past buffer.max_timestamp_skew). A producer's clock is wrong.",
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        ahead_ms,
                        ignored = matches!(stamp, crate::clock::Stamp::Ignored { .. }),
                        suppressed_since_last = suppressed
                    );
                }
            }
            at
        };
        let (topic, encoding) = self
            .encodings
            .iter()
            .find(|(t, _)| &**t == m.topic())
            .map_or(
                (Arc::from(m.topic()), InputEncoding::OtlpProto),
                |(t, e)| (Arc::clone(t), *e),
            );
        let key = m.key().map(Bytes::copy_from_slice);
        if let Some(reason) = unkeyed_reason(key.as_deref()) {
            self.unkeyed.fetch_add(1, Ordering::Relaxed);
            counter!(names::INPUT_UNKEYED, "topic" => m.topic().to_string(), "reason" => reason)
                .increment(1);
        }
        let headers = m.headers().map(rdkafka::message::BorrowedHeaders::detach);
        // Dealt by partition: a partition's messages (and so a trace's, as input is
        // keyed by trace id) reach the shards in the order they were read. Dealing
        // them by offset spread a trace over scanners that could be held up unequally
        // by full shard channels, so its last spans could come after its decision.
        let partition = m.partition();
        // Kept in librdkafka's memory, not copied (see `flow::kept`), and charged to the
        // budget until the shards have copied its spans out (or its dead letter is
        // delivered).
        let len = m.payload_len() as u64;
        let payload = if len == 0 {
            Bytes::new()
        } else {
            // SAFETY: `m` was read from `self.consumer`: `run` reads through a clone
            // of that `Arc`, and nothing else calls `handle`.
            let kept = unsafe { Kept::new(m, &self.consumer) };
            self.gate.hold(self.budget.charged(kept, len))
        };
        let job = ScanJob::Message(Input {
            payload,
            key,
            headers,
            pin,
            at,
            encoding,
            topic,
        });
        self.scanner_of(partition).send(job).await.map_err(drop)?;
        // Backpressure in bytes: the channels are bounded in messages only.
        self.gate.wait_below().await;
        Ok(())
    }

    /// The scanner a partition's messages (and its clock updates) go through: always
    /// the same one, so they reach the shards in the order they were read.
    fn scanner_of(&self, partition: i32) -> &mpsc::Sender<ScanJob> {
        &self.scanners[(partition.unsigned_abs() as usize) % self.scanners.len()]
    }

    /// The stream time of a partition slot in assignment `epoch` (a new assignment
    /// starts over).
    fn time_of(&mut self, slot: u32, epoch: u32) -> &mut PartitionTime {
        let i = slot as usize;
        if self.times.len() <= i {
            self.times.resize_with(i + 1, PartitionTime::default);
        }
        let t = &mut self.times[i];
        if t.epoch != epoch {
            // The offset tracker numbers a partition's assignments from 1.
            *t = PartitionTime::new(epoch, self.stream.restarted && epoch == 1);
        }
        t
    }

    /// Asks the broker, on the blocking pool, how far each assigned partition goes,
    /// to let caught-up idle partitions' stream time follow the wall clock. Not while
    /// input is paused (nothing is read, so nothing is caught up) or one still runs.
    fn start_probe(&mut self) {
        // Serves the prober's statistics (which brokers it is connected to), also
        // while no probe runs, so its reports never pile up.
        let _ = self.prober.poll(Duration::ZERO);
        self.publish_stream_lag();
        self.check_progress();
        if self.probing || self.paused {
            return;
        }
        let parts: Vec<_> = lock(&self.tracker)
            .assigned_partitions()
            .into_iter()
            .filter(|a| {
                !self
                    .loading
                    .iter()
                    .any(|(lt, lp)| *a.topic == **lt && *lp == a.partition)
            })
            .collect();
        if parts.is_empty() {
            return;
        }
        let seqs: Vec<u64> = parts
            .iter()
            .map(|a| {
                let t = self.time_of(a.slot, a.epoch);
                t.seq
            })
            .collect();
        self.probing = true;
        let consumer = Arc::clone(&self.consumer);
        let prober = Arc::clone(&self.prober);
        let done = self.probed.0.clone();
        tokio::task::spawn_blocking(move || {
            // Taken before the request: whatever was appended before this instant is
            // below the end offset the broker reports.
            let started_ms = wall_ms();
            let mut tpl = TopicPartitionList::new();
            for a in &parts {
                let _ = tpl.add_partition_offset(&a.topic, a.partition, Offset::End);
            }
            let ends = prober.offsets_for_times(tpl, PROBE_TIMEOUT).ok();
            let positions = consumer.position().ok();
            let replicas = replicas_of(&prober, &parts);
            // Each list read once into a map: `find_partition` searches its list
            // linearly, which made a probe quadratic in the partitions assigned
            // (256 partitions: ~130k topic comparisons, every probe interval).
            let ends = offsets_by_partition(ends.as_ref(), true);
            let positions = offsets_by_partition(positions.as_ref(), false);
            let answers = parts
                .iter()
                .zip(seqs)
                .map(|(a, seq)| {
                    let key = (a.topic.to_string(), a.partition);
                    let end = ends.get(&key).copied();
                    let position = positions.get(&key).copied();
                    ProbeAnswer {
                        partition: a.partition,
                        slot: a.slot,
                        epoch: a.epoch,
                        seq,
                        caught_up: end.map(|end| caught_up(end, a.next, position)),
                        end,
                        replicas: replicas.get(&key).cloned(),
                    }
                })
                .collect();
            let _ = done.send(Probe {
                started_ms,
                parts: answers,
            });
        });
    }

    /// Moves the stream time of partitions an idle probe found caught up long enough,
    /// through their scanner, after the messages already given to it.
    async fn apply_probe(&mut self, probe: Probe) -> Result<(), ()> {
        self.probing = false;
        if probe.parts.is_empty() {
            // Nothing assigned: an outage since the last probe stays for the
            // partitions a later probe finds.
            return Ok(());
        }
        // Kafka went down since the last probe (an outage shorter than a probe's
        // timeout can leave every probe answered): as if this one had failed.
        let outages = self.health.outages();
        let outage = outages != self.outages_seen;
        self.outages_seen = outages;
        // The probes have a client of their own, which can be back from an outage
        // seconds before the consumer (each backs off on its own): until the consumer
        // is connected again, no partition counts as caught up, so the wait after an
        // outage is counted from when tailsift can read again, not from when its
        // prober could.
        let reading = self.health.kafka_up();
        let idle = IdleTracker {
            delay: self.stream.idle_delay,
            after_outage: self.stream.idle_delay_after_outage,
        };
        let brokers = self.brokers.view();
        for answer in probe.parts {
            let ProbeAnswer {
                partition,
                slot,
                epoch,
                seq,
                caught_up,
                end,
                replicas,
            } = answer;
            if !lock(&self.tracker).is_current(slot, epoch) {
                continue;
            }
            // An outage of this partition alone: as if its probe had failed.
            let disturbed =
                self.replicas
                    .entry(slot)
                    .or_default()
                    .check(replicas.as_ref(), &brokers, end);
            if let Some(why) = disturbed {
                tracing::debug!(message = "Partition outage.", partition, reason = why.as_str(), replicas = ?replicas, brokers = ?brokers);
                counter!(names::PARTITION_OUTAGES, "reason" => why.as_str()).increment(1);
                static LOG: crate::telemetry::LogLimiter =
                    crate::telemetry::LogLimiter::new(Duration::from_secs(10));
                if let Some(suppressed) = LOG.allow() {
                    info!(
                        message = "Input partition in an outage of its own: its stream time waits, then follows the wall clock only after idle_delay_after_outage.",
                        partition,
                        reason = why.as_str(),
                        suppressed_since_last = suppressed
                    );
                }
            }
            let note = match (disturbed, caught_up) {
                (Some(why), _) => why.note(),
                (None, None) => "its end offset cannot be read (idle probes fail)",
                (None, Some(false)) => "records below its end offset do not arrive (fetch stalled)",
                (None, Some(true)) => {
                    "read to its end and idle, but its stream time does not follow the wall clock"
                }
            };
            self.probe_notes.insert(slot, note);
            let t = self.time_of(slot, epoch);
            let caught_up = match (outage || disturbed.is_some(), reading) {
                (true, _) => None,
                (false, false) => caught_up.map(|_| false),
                (false, true) => caught_up,
            };
            let Some(at) = idle.apply(t, seq, probe.started_ms, caught_up) else {
                continue;
            };
            // After the messages already given to the partition's scanner.
            self.scanner_of(partition)
                .send(ScanJob::Clock { slot, epoch, at })
                .await
                .map_err(drop)?;
        }
        Ok(())
    }

    /// The progress watchdog (see [`watchdog`]): checks that every assigned partition
    /// holding undecided input moves, and reports those that stopped in `/readyz`,
    /// a gauge, a counter and one log line per episode.
    fn check_progress(&mut self) {
        let now = wall_ms();
        let parts = lock(&self.tracker).assigned_partitions();
        let mut changed = false;
        for a in &parts {
            let held = self
                .loading
                .iter()
                .any(|(t, p)| **t == *a.topic && *p == a.partition);
            let stream_ms = self.time_of(a.slot, a.epoch).stream_ms;
            match self
                .watchdog
                .check(a.slot, a.epoch, stream_ms, a.lowest_pending, held, now)
            {
                Some(Change::Stalled(still_ms)) => {
                    let why = self.stall_reason(a.slot);
                    warn!(
                        message = "Input partition not progressing: it holds undecided traces and neither its stream time nor its committed offset has moved.",
                        topic = &*a.topic,
                        partition = a.partition,
                        still_s = still_ms / 1000,
                        reason = %why
                    );
                    counter!(names::PARTITION_STALLS).increment(1);
                    self.stalled
                        .insert(a.slot, format!("{}[{}]: {why}", a.topic, a.partition));
                    changed = true;
                }
                Some(Change::Recovered) => {
                    info!(
                        message = "Input partition progressing again.",
                        topic = &*a.topic,
                        partition = a.partition
                    );
                    self.stalled.remove(&a.slot);
                    changed = true;
                }
                None => {}
            }
        }
        let gone: Vec<u32> = self
            .watchdog
            .slots()
            .filter(|s| !parts.iter().any(|a| a.slot == *s))
            .collect();
        for slot in gone {
            self.watchdog.forget(slot);
            changed |= self.stalled.remove(&slot).is_some();
        }
        if changed {
            self.health
                .set_input_stalled(self.stalled.values().cloned().collect());
        }
    }

    /// Why a partition may have stopped moving, from what tailsift knows of it now.
    fn stall_reason(&self, slot: u32) -> String {
        if self.paused {
            format!(
                "input paused by memory pressure and not draining ({} of {} bytes charged; resumes at {})",
                self.budget.used(),
                self.budget.capacity(),
                self.budget.low_watermark()
            )
        } else if !self.health.kafka_up() {
            "no broker reachable".to_string()
        } else {
            self.probe_notes
                .get(&slot)
                .copied()
                .unwrap_or("no idle probe has answered")
                .to_string()
        }
    }

    /// Publishes each assigned partition's stream-time lag (wall clock minus stream
    /// time).
    fn publish_stream_lag(&mut self) {
        let now = wall_ms();
        let parts = lock(&self.tracker).assigned_partitions();
        for a in parts {
            let (topic, partition) = (a.topic, a.partition);
            let t = self.time_of(a.slot, a.epoch);
            if t.stream_ms == 0 {
                continue;
            }
            let lag = now.saturating_sub(t.stream_ms) as f64 / 1000.0;
            gauge!(names::STREAM_TIME_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
                .set(lag);
        }
    }

    /// Safe offsets that moved since they were last committed, marked as committed
    /// (a failed commit unmarks them).
    fn offsets_to_commit(&self) -> Vec<(Arc<str>, i32, i64)> {
        let mut t = lock(&self.tracker);
        gauge!(names::PINNED_MESSAGES).set(t.pending_messages() as f64);
        t.to_commit()
    }

    /// Commits what is safe on the blocking pool, unless a commit is still running.
    ///
    /// Synchronous commits, off the runtime, rather than librdkafka's asynchronous
    /// ones: rdkafka 0.39 never reports the result of a manual asynchronous commit
    /// (fede1024/rust-rdkafka#856), so one that failed would pass for done and its
    /// offsets would not be committed again until they moved.
    fn start_commit(&self) {
        if self.committing.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(txn) = &self.txn {
            let (consumer, tracker) = (Arc::clone(&self.consumer), Arc::clone(&self.tracker));
            let (txn, health) = (Arc::clone(txn), Arc::clone(&self.health));
            let committing = Arc::clone(&self.committing);
            tokio::task::spawn_blocking(move || {
                commit_transaction(&*consumer, &tracker, &*txn, &health, &[]);
                committing.store(false, Ordering::Release);
            });
            return;
        }
        let offsets = self.offsets_to_commit();
        if offsets.is_empty() {
            self.committing.store(false, Ordering::Release);
            return;
        }
        let (consumer, tracker) = (Arc::clone(&self.consumer), Arc::clone(&self.tracker));
        let committing = Arc::clone(&self.committing);
        tokio::task::spawn_blocking(move || {
            commit(&consumer, &tracker, &offsets);
            committing.store(false, Ordering::Release);
        });
    }
}

/// The idle probes' client: the consumer's properties (brokers, security, isolation
/// level, so it is told the same end offsets) under a group id of its own that it
/// never joins, without the consumer's static membership.
///
/// It keeps a connection to every broker of the cluster (librdkafka's hidden
/// `enable.sparse.connections=false`; by default a client connects only to the
/// brokers it needs), and its statistics say which it lost ([`BrokerStates`]): a
/// follower that dies is seen within a report, though no client of tailsift reads
/// from it.
fn probe_client(
    consumer: &ClientConfig,
    group: &str,
    brokers: Arc<BrokerStates>,
) -> Result<BaseConsumer<ProbeContext>, KafkaError> {
    let mut c = consumer.clone();
    c.remove("group.instance.id");
    c.set("group.id", format!("{group}.idle-probe"))
        .set("enable.sparse.connections", "false")
        .set("statistics.interval.ms", PROBE_STATS_MS);
    c.create_with_context(ProbeContext { brokers })
}

/// How often the prober reports its broker connections.
const PROBE_STATS_MS: &str = "500";

/// The prober's callbacks: its statistics feed [`BrokerStates`].
struct ProbeContext {
    brokers: Arc<BrokerStates>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        self.brokers.observe(&stats);
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// The leader and in-sync replicas of each probed partition, from one metadata
/// read per topic (which also refreshes the prober's view of leaders and
/// partitions, so its end-offset requests follow a moved leader or partitions added
/// since it started). Partitions the read did not cover are left out.
fn replicas_of(
    prober: &BaseConsumer<ProbeContext>,
    parts: &[offsets::Assigned],
) -> HashMap<(String, i32), Replicas> {
    let mut topics: Vec<&str> = parts.iter().map(|a| &*a.topic).collect();
    topics.sort_unstable();
    topics.dedup();
    let mut out = HashMap::new();
    for topic in topics {
        let Ok(md) = prober.fetch_metadata(Some(topic), PROBE_TIMEOUT) else {
            continue;
        };
        for t in md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
        {
            for p in t.partitions() {
                let mut isr = p.isr().to_vec();
                isr.sort_unstable();
                // -1 while the partition has no leader.
                let leader = p.leader();
                out.insert((topic.to_string(), p.id()), Replicas { leader, isr });
            }
        }
    }
    out
}

/// The offsets of a partition list by `(topic, partition)`, those that are offsets
/// (and, with `errors_out`, carry no error).
fn offsets_by_partition(
    list: Option<&TopicPartitionList>,
    errors_out: bool,
) -> HashMap<(String, i32), i64> {
    list.map(TopicPartitionList::elements)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !errors_out || e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Whether a partition whose end offset is `end` has been read to its end: `next`
/// (one past the last message read) reached it, or the consumer's `position` did.
/// The position is librdkafka's application position: one past the last message
/// handed to tailsift, moved also past the transaction markers it skips (several
/// of them can end a partition several transactional producers write, as the route
/// stage's instances do in exactly-once mode), never past a message not yet handed
/// over.
fn caught_up(end: i64, next: Option<i64>, position: Option<i64>) -> bool {
    next.is_some_and(|n| n >= end) || position.is_some_and(|p| p >= end)
}

/// Commits `offsets` and waits for the broker's answer; on failure they are unmarked,
/// so the next round commits them again.
fn commit(
    consumer: &StreamConsumer<SourceContext>,
    tracker: &Mutex<OffsetTracker>,
    offsets: &[(Arc<str>, i32, i64)],
) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            warn!(message = "Cannot build commit list.", error = %e);
            lock(tracker).forget_committed(offsets);
            return;
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => counter!(names::COMMITS, "result" => "ok").increment(1),
        Err(e) => {
            counter!(names::COMMITS, "result" => "error").increment(1);
            warn!(message = "Offset commit failed; retrying on the next round.", error = %e);
            lock(tracker).forget_committed(offsets);
        }
    }
}

/// Exactly-once mode: commits the transaction in progress with the safe offsets of
/// every assigned partition (those that did not move too, so the group coordinator
/// checks this member's generation on every commit). A failure stops the pipeline.
///
/// `revoking`: partitions being revoked. Their safe offsets are taken, then they are
/// marked revoked before the commit, so that no record of their traces enters the
/// transaction after it (the sink refuses records with stale pins).
pub(super) fn commit_transaction<C: Consumer<SourceContext>>(
    consumer: &C,
    tracker: &Mutex<OffsetTracker>,
    txn: &dyn TxnCommit,
    health: &Health,
    revoking: &[(String, i32)],
) {
    let offsets = {
        let mut t = lock(tracker);
        gauge!(names::PINNED_MESSAGES).set(t.pending_messages() as f64);
        let offsets = t.all_safe();
        tracing::debug!(message = "Committing the transaction.", offsets = ?offsets.iter().map(|(_, p, o)| (*p, *o)).collect::<Vec<_>>(), pending = ?t.lowest_pending());
        for (topic, partition) in revoking {
            t.revoke(topic, *partition);
        }
        offsets
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in &offsets {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            lock(tracker).forget_committed(&offsets);
            return;
        }
    }
    match txn.commit(&tpl, consumer.group_metadata().as_ref()) {
        Ok(()) => counter!(names::COMMITS, "result" => "ok").increment(1),
        Err(e) => {
            counter!(names::COMMITS, "result" => "error").increment(1);
            lock(tracker).forget_committed(&offsets);
            health.set_fatal(e.to_string());
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn a_probes_offsets_are_found_by_topic_and_partition() {
        let mut l = TopicPartitionList::new();
        for p in 0..300 {
            let _ = l.add_partition_offset("a", p, Offset::Offset(i64::from(p) * 10));
        }
        let _ = l.add_partition_offset("b", 7, Offset::Offset(3));
        let _ = l.add_partition_offset("b", 8, Offset::End);
        let m = offsets_by_partition(Some(&l), true);
        assert_eq!(m.len(), 301, "no entry for a partition without an offset");
        assert_eq!(m.get(&("a".to_string(), 299)), Some(&2990));
        assert_eq!(m.get(&("b".to_string(), 7)), Some(&3));
        assert_eq!(m.get(&("a".to_string(), 7)), Some(&70));
        assert_eq!(m.get(&("b".to_string(), 8)), None);
        assert!(offsets_by_partition(None, false).is_empty());
    }
}
