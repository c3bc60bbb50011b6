//! The task that owns one buffer shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use tokio::sync::mpsc;

use crate::budget::{Charge, MemoryBudget};
use crate::buffer::{longest_host_window_ns, Shard, TraceEntry, TraceLimits};
use crate::clock::{ClockReading, StreamClocks};
use crate::codec::{
    check_span, encode_trace, rescan, Annotated, Annotation, EncodedSpan, Message, OutputEncoding,
    Span, SpanDefect, SpanRef, TraceId,
};
use crate::flow::{
    output_reach, DroppedTrace, Evidence, Found, KeptTrace, Pieces, Pin, Promotion, Rejected,
    Releases, Reread, Rereads, Restored, ShardMsg, SinkMsg, TraceSummary,
};
use crate::telemetry::names;

use super::cache::RESTORED;
use super::{Decider, DecisionCache, PolicyWatch, Verdict};

/// Policy index of a restored kept decision whose policy is not in the set any more.
const RESTORED_POLICY: u16 = u16::MAX - 1;

/// The index of policy `name` in `decider`'s set, or [`RESTORED_POLICY`] if it is
/// not there (any more).
fn index_or_restored(decider: &Decider, name: &str) -> u16 {
    decider.policy_index(name).unwrap_or(RESTORED_POLICY)
}

/// Traces decided early per round under memory pressure, between yields.
const EVICTION_BATCH: usize = 64;

/// Why a trace was decided before its wait was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forced {
    /// Memory pressure: it was among the oldest traces buffered.
    Memory,
    /// It reached `trace.max_spans` or `trace.max_bytes`.
    TraceLimit,
}

impl Forced {
    /// Label for metrics and the `tailsift.forced` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Forced::Memory => "memory",
            Forced::TraceLimit => "trace_limit",
        }
    }
}

/// Metric handles, registered once: a registry lookup per message or decision would
/// cost more than the work it measures.
struct Metrics {
    traces: Gauge,
    spans: Gauge,
    bytes: Gauge,
    cache: Gauge,
    latency: Histogram,
    forced_memory: Counter,
    forced_limit: Counter,
    late_kept: Counter,
    late_dropped: Counter,
    late_output: Counter,
    promoted_late: Counter,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            traces: gauge!(names::BUFFER_TRACES),
            spans: gauge!(names::BUFFER_SPANS),
            bytes: gauge!(names::BUFFER_BYTES),
            cache: gauge!(names::DECISION_CACHE_ENTRIES),
            latency: histogram!(names::DECISION_LATENCY),
            forced_memory: counter!(names::FORCED_DECISIONS, "reason" => Forced::Memory.as_str()),
            forced_limit: counter!(names::FORCED_DECISIONS, "reason" => Forced::TraceLimit.as_str()),
            late_kept: counter!(names::LATE_SPANS, "decision" => "sampled"),
            late_dropped: counter!(names::LATE_SPANS, "decision" => "not_sampled"),
            late_output: counter!(names::LATE_SPANS, "decision" => "already_output"),
            promoted_late: counter!(names::PROMOTIONS, "reason" => "late"),
        }
    }
}

/// Settings of a shard worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Time from first span to decision.
    pub decision_wait: Duration,
    /// Time from root span to decision, if earlier.
    pub after_root: Option<Duration>,
    /// Per-trace limits.
    pub limits: TraceLimits,
    /// Decisions remembered for late spans.
    pub cache_capacity: usize,
    /// Largest output record.
    pub max_message_bytes: usize,
    /// How kept records are encoded.
    pub output_encoding: OutputEncoding,
    /// Shards in the buffer: under pressure a worker evicts no further than its share
    /// of the low watermark.
    pub shards: usize,
    /// Whether decisions go to the decisions topic (through the sink) before the
    /// input they pin is released.
    pub record_decisions: bool,
    /// Whether kept spans are annotated with the deciding policy and probability.
    pub annotate: bool,
    /// Whether spans re-read below a restored decision's output offset are dropped as
    /// already output (decisions topic, one input topic: offsets name one partition).
    pub skip_reread: bool,
    /// Whether this worker remembers where its own kept traces' output ends in their
    /// input partition, so a partition it is given back after a rebalance (a session
    /// lost in a broker outage, say) is not written out twice (one input topic).
    pub remember_output: bool,
    /// Exactly-once mode: a revoke forgets the decisions made here for the partition,
    /// as the sink refuses their records once it is revoked (the decisions that did
    /// commit are read back if the partition comes back).
    pub forget_on_revoke: bool,
    /// Each input partition's stream time, by which traces are due.
    pub clocks: Arc<StreamClocks>,
    /// Where to ask for a dropped trace's earlier pieces when late spans promote
    /// it; `None`: late spans of a dropped trace are dropped.
    pub rereads: Option<Rereads>,
}

/// A dropped trace being promoted: its earlier pieces are being read again.
#[derive(Debug)]
struct Promoting {
    /// The revised verdict.
    verdict: Verdict,
    /// Everything the policies judged it on.
    evidence: Evidence,
    /// Where its earlier pieces lie (what was asked for again), restored to the
    /// cache if the promotion is given up.
    earlier: Pieces,
    /// The late messages with its spans, and their pins, held until it goes out.
    held: Vec<(Message, Vec<Span>, Pin)>,
    /// The partition slot of the late spans that promoted it: a revoke there gives
    /// the promotion up (the partition's next owner re-reads them and promotes).
    slot: u32,
}

/// Owns one [`Shard`]: inserts spans, decides due traces, forwards outcomes.
pub struct ShardWorker {
    shard: Shard,
    cache: DecisionCache,
    policies: PolicyWatch,
    budget: MemoryBudget,
    rx: mpsc::Receiver<ShardMsg>,
    sink: mpsc::Sender<SinkMsg>,
    releases: Releases,
    max_message_bytes: usize,
    output_encoding: OutputEncoding,
    annotate: bool,
    skip_reread: bool,
    remember_output: bool,
    forget_on_revoke: bool,
    /// The latest assignment epoch revoked per partition slot, to act on each revoke
    /// once.
    revoked_epochs: Vec<Option<u32>>,
    clocks: Arc<StreamClocks>,
    /// This shard's share of the low watermark, in bytes.
    fair_share: usize,
    record_decisions: bool,
    tick: Duration,
    /// Last values published to the buffer gauges, to publish deltas.
    published: (usize, usize, usize, usize),
    /// Bytes of book-keeping and cache charged to the budget.
    charged: u64,
    due: Vec<TraceEntry>,
    metrics: Metrics,
    rereads: Option<Rereads>,
    /// Answers to this worker's re-reads.
    found: (mpsc::UnboundedSender<Found>, mpsc::UnboundedReceiver<Found>),
    /// Promotions awaiting their earlier pieces.
    promoting: HashMap<TraceId, Promoting>,
    /// The input topic of each partition slot seen.
    slot_topics: Vec<Option<Arc<str>>>,
}

impl ShardWorker {
    /// A worker reading `rx`, sending kept traces to `sink` and releasing pins of
    /// dropped ones through `releases`.
    pub fn new(
        cfg: &WorkerConfig,
        policies: PolicyWatch,
        budget: MemoryBudget,
        rx: mpsc::Receiver<ShardMsg>,
        sink: mpsc::Sender<SinkMsg>,
        releases: Releases,
    ) -> Self {
        let shortest = cfg
            .after_root
            .unwrap_or(cfg.decision_wait)
            .min(cfg.decision_wait);
        let fair_share = (budget.low_watermark() / cfg.shards.max(1) as u64) as usize;
        ShardWorker {
            shard: Shard::new(cfg.decision_wait, cfg.after_root, cfg.limits),
            cache: DecisionCache::new(cfg.cache_capacity),
            policies,
            budget,
            rx,
            sink,
            releases,
            max_message_bytes: cfg.max_message_bytes,
            output_encoding: cfg.output_encoding,
            annotate: cfg.annotate,
            skip_reread: cfg.skip_reread,
            remember_output: cfg.remember_output,
            forget_on_revoke: cfg.forget_on_revoke,
            revoked_epochs: Vec::new(),
            clocks: Arc::clone(&cfg.clocks),
            fair_share,
            record_decisions: cfg.record_decisions,
            // Decide within ~10% of the wait, but never spin.
            tick: (shortest / 10).clamp(Duration::from_millis(5), Duration::from_millis(100)),
            published: (0, 0, 0, 0),
            charged: 0,
            due: Vec::new(),
            metrics: Metrics::new(),
            rereads: cfg.rereads.clone(),
            found: mpsc::unbounded_channel(),
            promoting: HashMap::new(),
            slot_topics: Vec::new(),
        }
    }

    /// Runs until the source closes the channel. Traces still buffered then are not
    /// decided: their input offsets were never committed, so whoever consumes the
    /// partitions next re-reads and decides them whole.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                _ = std::future::ready(()), if self.policies.has_news() => {
                    self.adopt_policies();
                    Ok(())
                }
                _ = tick.tick() => self.on_tick().await,
                Some(found) = self.found.1.recv() => self.promote(found).await,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
            };
            if step.is_err() {
                break;
            }
        }
        self.shard.clear();
        self.cache = DecisionCache::new(0);
        self.publish();
    }

    async fn handle(&mut self, msg: ShardMsg) -> Result<(), Closed> {
        match msg {
            ShardMsg::Spans {
                pin,
                topic,
                message,
                mut spans,
                at,
                generation,
            } => {
                if self.ended(pin.slot, pin.epoch) {
                    // Spans of an assignment already revoked, still in flight from
                    // another scanner: their pins are stale and the partition's next
                    // owner re-reads them. Buffered, they would join that owner's
                    // copies if the partition came back here (a trace with its spans
                    // twice) or be decided for nothing.
                    return Ok(());
                }
                self.retest(generation, &message, &mut spans);
                self.learn_topic(pin.slot, topic);
                self.insert(pin, message, spans, at).await
            }
            ShardMsg::Decisions {
                decisions,
                assignments,
            } => {
                // The decisions were read for new assignments, so each slot's previous
                // one has ended, though its revoke, which travels through the
                // scanners, may not have come yet. Acted on after the restore, it
                // would forget the decisions made here before the revoke, restored
                // just now, and the re-read spans of those traces would go out again.
                for (slot, epoch) in assignments {
                    if let Some(previous) = epoch.checked_sub(1).filter(|e| *e > 0) {
                        self.end_assignment(slot, previous);
                    }
                }
                self.restore(decisions);
                Ok(())
            }
            ShardMsg::Revoked { slot, epoch } => {
                self.end_assignment(slot, epoch);
                Ok(())
            }
        }
    }

    /// Whether assignment `epoch` of partition slot `slot` is known to have ended.
    fn ended(&self, slot: u32, epoch: u32) -> bool {
        self.revoked_epochs
            .get(slot as usize)
            .copied()
            .flatten()
            .is_some_and(|e| e >= epoch)
    }

    /// Forgets assignment `epoch` of `slot`: the traces pinned only to it and (in
    /// exactly-once mode) the decisions made for it here. Once per assignment.
    ///
    /// Every scanner passes each revoke on, and only the copy from the partition's
    /// own scanner is ordered before the new assignment's spans: act on the first
    /// copy, which comes no later than that one, and ignore the rest, which may come
    /// after new spans of the slot (acting on them wiped those traces' due entries:
    /// never decided).
    fn end_assignment(&mut self, slot: u32, epoch: u32) {
        if self.ended(slot, epoch) {
            return;
        }
        let seen = &mut self.revoked_epochs;
        if seen.len() <= slot as usize {
            seen.resize(slot as usize + 1, None);
        }
        seen[slot as usize] = Some(epoch);
        let clocks = &self.clocks;
        self.shard.release_partition(slot, epoch, |s| clocks.get(s));
        if self.forget_on_revoke {
            self.cache.forget_slot(slot);
        }
        self.give_up_promotions(slot);
        self.publish();
    }

    /// Gives up the promotions started by late spans of partition slot `slot`,
    /// revoked: their pins are stale, and the partition's next owner re-reads those
    /// spans and promotes the trace itself. The traces are remembered as dropped
    /// again (unless that decision was forgotten with the slot), and the pins of
    /// spans from other partitions released.
    fn give_up_promotions(&mut self, slot: u32) {
        let gone: Vec<TraceId> = self
            .promoting
            .iter()
            .filter(|(_, p)| p.slot == slot)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let Some(p) = self.promoting.remove(&id) else {
                continue;
            };
            if self.cache.get(&id).is_some() {
                self.cache.revise(&id, Verdict::new(None), slot);
                self.cache.set_dropped(&id, p.evidence, p.earlier);
            }
            let others = p.held.into_iter().map(|(_, _, pin)| pin);
            self.releases
                .release(others.filter(|pin| pin.slot != slot).collect());
        }
    }

    /// Remembers the input topic of partition slot `slot`.
    fn learn_topic(&mut self, slot: u32, topic: Arc<str>) {
        let i = slot as usize;
        if self.slot_topics.len() <= i {
            self.slot_topics.resize(i + 1, None);
        }
        if self.slot_topics[i].is_none() {
            self.slot_topics[i] = Some(topic);
        }
    }

    /// Where the spans pinned by `pins` lie (the first pin's topic and partition).
    fn pieces_of(&self, pins: &[Pin]) -> Option<Pieces> {
        let slot = pins.first()?.slot as usize;
        let topic = self.slot_topics.get(slot)?.as_ref()?;
        Pieces::of(topic, pins)
    }

    /// Switches to the newest policy set: remembered decisions are renumbered to
    /// the new set's policies (a policy no longer configured keeps its traces' late
    /// spans under an unnamed policy) and attribute hits of predicates gone are
    /// cleared. Buffered traces stay; they are decided by the new set.
    fn adopt_policies(&mut self) {
        let Some(old) = self.policies.refresh() else {
            return;
        };
        let new = &self.policies.get().decider;
        let renumber: Vec<u16> = (0..old.decider.len())
            .map(|i| index_or_restored(new, &old.decider.policy_name(i as u16)))
            .collect();
        self.cache.remap(|i| {
            renumber
                .get(usize::from(i))
                .copied()
                .unwrap_or(RESTORED_POLICY)
        });
        let keys = &self.policies.get().keys;
        if keys.bits() & !old.keys.bits() == 0 && keys.key_fields() == old.keys.key_fields() {
            // No new predicate: hits of the ones gone are cleared.
            self.shard.mask_hits(keys.bits());
        } else {
            // New predicates: test the buffered spans for them (a reload is rare; this
            // is the price of deciding buffered traces by the new set exactly).
            self.shard.recompute_hits(|s| rescan(s, keys));
        }
        self.publish();
    }

    /// Spans scanned with another policy generation's predicates (a scanner that had
    /// not seen a reload yet) are tested again with the current ones.
    fn retest(&self, generation: u64, message: &Message, spans: &mut [Span]) {
        let current = self.policies.get();
        if generation == current.number {
            return;
        }
        for s in spans.iter_mut() {
            (s.hits, s.key_hash, _) = rescan(&message.span_ref(s), &current.keys);
        }
    }

    /// Remembers decisions made before (by this or another instance) so late spans
    /// follow them. A kept trace whose policy is no longer configured keeps its
    /// spans under an unnamed policy.
    fn restore(&mut self, decisions: Vec<Restored>) {
        for Restored {
            trace_id: id,
            policy,
            output_below: output,
            dropped,
        } in decisions
        {
            if self.shard.contains(&id) {
                continue; // being buffered again: it will be decided whole
            }
            let verdict = Verdict::new(
                policy.map(|name| index_or_restored(&self.policies.get().decider, &name)),
            );
            if !verdict.keep() && self.cache.get(&id).is_some_and(|v| v.keep()) {
                // A kept decision is final (a drop can become a keep, never the
                // reverse), so a dropped record read after a kept one is the older
                // of the two, whatever their order in the topic.
                continue;
            }
            self.cache.insert(&id, verdict, RESTORED);
            if let Some(output) = output.filter(|_| self.skip_reread) {
                self.cache.set_output(&id, output);
            }
            if let Some((evidence, pieces)) = dropped.filter(|_| self.rereads.is_some()) {
                self.cache.set_dropped(&id, evidence, pieces);
            }
        }
        self.publish();
    }

    /// Decides the traces due by their partitions' stream time. The clocks are read
    /// first, then every message already queued for this shard is taken in: a
    /// partition's clock is published only after its spans were sent here, so each
    /// span the clock covers is buffered before its trace is judged.
    async fn on_tick(&mut self) -> Result<(), Closed> {
        let mut clocks: Vec<ClockReading> = (0..self.shard.partition_slots())
            .map(|s| self.clocks.read(s as u32))
            .collect();
        for _ in 0..self.rx.len() {
            match self.rx.try_recv() {
                Ok(msg) => {
                    if let ShardMsg::Spans { pin, .. } = &msg {
                        // Spans of an assignment newer than the reading (their
                        // partition came back since): the reading says nothing of them.
                        if let Some(c) = clocks.get_mut(pin.slot as usize) {
                            if !c.covers_epoch(pin.epoch) {
                                c.ms = None;
                            }
                        }
                    }
                    self.handle(msg).await?;
                }
                Err(_) => break,
            }
        }
        let mut due = std::mem::take(&mut self.due);
        self.shard
            .take_due(|s| clocks.get(s as usize).and_then(|c| c.ms), &mut due);
        for entry in due.drain(..) {
            self.decide(entry, None).await?;
        }
        self.due = due;
        self.publish();
        self.evict().await
    }

    /// Under memory pressure, decides the oldest traces early until usage is back
    /// under the low watermark (every worker does this for its own shard). A worker
    /// stops at its share of the low watermark, less what its decision cache holds:
    /// memory held elsewhere that drains by itself (input in flight, traces awaiting
    /// acknowledgement, another shard) is not a reason to decide its youngest
    /// traces, whose other spans are likely on their way; the cache does not drain,
    /// and counted outside the share it kept usage above the low watermark with
    /// every shard at its share, so the paused input never resumed.
    async fn evict(&mut self) -> Result<(), Closed> {
        if !self.budget.should_evict() {
            return Ok(());
        }
        let share = self.fair_share.saturating_sub(self.cache.allocated_bytes());
        let mut due = std::mem::take(&mut self.due);
        while !self.budget.below_low() && self.shard.bytes() > share {
            let clocks = &self.clocks;
            self.shard
                .take_oldest(EVICTION_BATCH, |s| clocks.get(s), &mut due);
            if due.is_empty() {
                break;
            }
            for entry in due.drain(..) {
                self.decide(entry, Some(Forced::Memory)).await?;
            }
            self.publish();
            tokio::task::yield_now().await;
        }
        self.due = due;
        Ok(())
    }

    async fn insert(
        &mut self,
        pin: Pin,
        message: Message,
        spans: Vec<Span>,
        at: u64,
    ) -> Result<(), Closed> {
        for group in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
            let id = group[0].trace_id;
            if let Some(p) = self.promoting.get_mut(&id) {
                // Its earlier pieces are being read again: these go out with them.
                p.held.push((message.clone(), group.to_vec(), pin));
                continue;
            }
            match self.cache.get(&id) {
                None => self.shard.insert(id, &message, group, pin, at),
                Some(verdict) => self.late(id, verdict, &message, group, pin).await?,
            }
        }
        // The input message is freed here (by the last shard), its spans copied out.
        drop(message);
        let mut over = std::mem::take(&mut self.due);
        self.shard.take_over_limit(&mut over);
        for entry in over.drain(..) {
            self.decide(entry, Some(Forced::TraceLimit)).await?;
        }
        self.due = over;
        self.publish();
        self.evict().await
    }

    /// Spans of a trace already decided: kept ones are forwarded; dropped ones are
    /// judged with what the trace was dropped on (see [`ShardWorker::late_dropped`]).
    async fn late(
        &mut self,
        id: TraceId,
        verdict: Verdict,
        message: &Message,
        group: &[Span],
        pin: Pin,
    ) -> Result<(), Closed> {
        if !verdict.keep() {
            return self.late_dropped(id, message, group, pin).await;
        }
        let late = &self.metrics.late_kept;
        if verdict.keep()
            && self
                .cache
                .output(&id)
                .is_some_and(|(partition, below)| partition == pin.partition && pin.offset < below)
        {
            // Re-read after a crash or a move: the last owner (or this worker) wrote
            // these out already, or is writing them: the sink releases the pin once
            // that output is acknowledged.
            self.metrics.late_output.increment(group.len() as u64);
            return self
                .sink
                .send(SinkMsg::AfterOutput { trace_id: id, pin })
                .await
                .map_err(|_| Closed);
        }
        late.increment(group.len() as u64);
        if verdict.keep() && self.remember_output {
            let below = match self.cache.output(&id) {
                Some((partition, below)) if partition == pin.partition => below.max(pin.offset + 1),
                Some(_) => 0,
                None => pin.offset + 1,
            };
            if below > 0 {
                self.cache.set_output(&id, (pin.partition, below));
            }
        }
        let spans: Vec<SpanRef<'_>> = group.iter().map(|s| message.span_ref(s)).collect();
        let summary = TraceSummary::new(id);
        let outcome = Outcome {
            verdict,
            forced: None,
            record: self.record_decisions,
            promoted: None,
            pieces: self.pieces_of(&[pin]),
        };
        self.send_kept(&summary, &spans, vec![pin], outcome).await
    }

    /// Late spans of a dropped trace: judged together with what it was dropped on,
    /// by the settled policies (`Decider::revise`). If one would now keep the
    /// trace, it is promoted: its earlier pieces are read again from the input and
    /// it goes out whole ([`ShardWorker::promote`]). Else the spans are dropped, and
    /// what they showed is added to the trace's evidence (and, with a decisions
    /// topic, recorded before their input is released, so the partition's next
    /// owner judges later spans with it too).
    async fn late_dropped(
        &mut self,
        id: TraceId,
        message: &Message,
        group: &[Span],
        pin: Pin,
    ) -> Result<(), Closed> {
        let revisable = self.rereads.is_some();
        let Some((evidence, pieces)) = self.cache.dropped_mut(&id).filter(|_| revisable) else {
            self.metrics.late_dropped.increment(group.len() as u64);
            self.releases.release(vec![pin]);
            return Ok(());
        };
        let mut late = TraceSummary::new(id);
        for s in group {
            late.add(s);
        }
        if late.one_clock_ms().is_none() {
            let spans: Vec<SpanRef<'_>> = group.iter().map(|s| message.span_ref(s)).collect();
            match longest_host_window_ns(&spans) {
                0 => {}
                window => late.set_one_clock_ns(window),
            }
        }
        let earlier = pieces.clone();
        evidence.merge(&Evidence::of(&late));
        pieces.extend(pin.partition, pin.offset);
        let (evidence, pieces) = (*evidence, pieces.clone());
        let verdict = self.policies.get().decider.revise(&evidence.summary(id));
        if !verdict.keep() {
            self.metrics.late_dropped.increment(group.len() as u64);
            if !self.record_decisions {
                self.releases.release(vec![pin]);
                return Ok(());
            }
            let dropped = DroppedTrace {
                trace_id: id,
                pins: vec![pin],
                pieces: Some(pieces),
                evidence,
            };
            return self
                .sink
                .send(SinkMsg::Dropped(dropped))
                .await
                .map_err(|_| Closed);
        }
        self.cache.revise(&id, verdict, pin.slot);
        self.promoting.insert(
            id,
            Promoting {
                verdict,
                evidence,
                earlier: earlier.clone(),
                held: vec![(message.clone(), group.to_vec(), pin)],
                slot: pin.slot,
            },
        );
        if let Some(rereads) = &self.rereads {
            // Refused only at shutdown: the held input is then not committed and
            // its next reader promotes the trace.
            let _ = rereads.send(Reread {
                trace_id: id,
                pieces: earlier,
                reply: self.found.0.clone(),
            });
        }
        Ok(())
    }

    /// A promoted trace's earlier pieces came back: it goes out whole, with the
    /// late spans that promoted it (and any that came meanwhile), marked promoted
    /// and recorded as kept.
    async fn promote(&mut self, found: Found) -> Result<(), Closed> {
        let Some(p) = self.promoting.remove(&found.trace_id) else {
            return Ok(()); // given up on a revoke meanwhile
        };
        let id = found.trace_id;
        let held_at = |offset: i64| {
            p.held
                .iter()
                .any(|(_, _, pin)| pin.partition == p.earlier.partition && pin.offset == offset)
        };
        let mut spans: Vec<SpanRef<'_>> = Vec::new();
        let mut seen: Vec<i64> = Vec::with_capacity(found.found.len());
        for (offset, message, found_spans) in &found.found {
            // Each input message once: held, or found (once).
            if !held_at(*offset) && !seen.contains(offset) {
                seen.push(*offset);
                spans.extend(found_spans.iter().map(|s| message.span_ref(s)));
            }
        }
        for (message, held_spans, _) in &p.held {
            spans.extend(held_spans.iter().map(|s| message.span_ref(s)));
        }
        let pins: Vec<Pin> = p.held.iter().map(|(_, _, pin)| *pin).collect();
        self.metrics.promoted_late.increment(1);
        if let Some(why) = &found.incomplete {
            counter!(names::PROMOTIONS_INCOMPLETE, "reason" => why.reason).increment(1);
        }
        static LOG: crate::telemetry::LogLimiter =
            crate::telemetry::LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            tracing::info!(message = "Late spans promoted a dropped trace; it goes out whole.", trace_id = %id, policy = %self.policies.get().decider.policy_name(p.verdict.policy().unwrap_or(RESTORED_POLICY)), spans = spans.len(), incomplete = ?found.incomplete.as_ref().map(|i| &i.detail), suppressed_since_last = suppressed);
        }
        if self.remember_output {
            if let Some(reach) = output_reach(&pins) {
                self.cache.set_output(&id, reach);
            }
        }
        let mut pieces = p.earlier.clone();
        for pin in &pins {
            pieces.extend(pin.partition, pin.offset);
        }
        let outcome = Outcome {
            verdict: p.verdict,
            forced: None,
            record: self.record_decisions,
            promoted: Some(Promotion {
                reason: "late",
                incomplete: found.incomplete.clone(),
            }),
            pieces: Some(pieces),
        };
        let summary = p.evidence.summary(id);
        self.send_kept(&summary, &spans, pins, outcome).await
    }

    async fn decide(
        &mut self,
        mut entry: TraceEntry,
        forced: Option<Forced>,
    ) -> Result<(), Closed> {
        self.metrics.latency.record(entry.waited().as_secs_f64());
        if let Some(f) = forced {
            match f {
                Forced::Memory => self.metrics.forced_memory.increment(1),
                Forced::TraceLimit => self.metrics.forced_limit.increment(1),
            }
        }
        // A forced decision still runs every policy on what has arrived.
        let verdict = self.policies.get().decider.decide_entry(&mut entry);
        let id = entry.summary.trace_id;
        // A trace dropped early for memory was judged on what had arrived; its later
        // spans (an error, say) are judged afresh rather than dropped unseen. Every
        // other decision binds the trace's late spans.
        let pins = self.shard.pins(&entry);
        // Where its input lies: for its record and for revising a drop; neither
        // without a decisions topic and with promotion off.
        let pieces = (self.record_decisions || self.rereads.is_some())
            .then(|| self.pieces_of(&pins))
            .flatten();
        if verdict.keep() || forced != Some(Forced::Memory) {
            let slot = entry.first_slot();
            self.cache.insert(&id, verdict, slot);
            let revisable = !verdict.keep() && self.rereads.is_some();
            if let Some(pieces) = pieces.clone().filter(|_| revisable) {
                self.cache
                    .set_dropped(&id, Evidence::of(&entry.summary), pieces);
            }
        }
        let record = self.record_decisions;
        if verdict.keep() {
            if self.remember_output {
                if let Some(reach) = output_reach(&pins) {
                    self.cache.set_output(&id, reach);
                }
            }
            let outcome = Outcome {
                verdict,
                forced,
                record,
                promoted: None,
                pieces,
            };
            self.send_kept(&entry.summary, &entry.spans(), pins, outcome)
                .await
        } else if record && forced != Some(Forced::Memory) {
            let dropped = DroppedTrace {
                trace_id: id,
                pins,
                pieces,
                evidence: Evidence::of(&entry.summary),
            };
            self.sink
                .send(SinkMsg::Dropped(dropped))
                .await
                .map_err(|_| Closed)
        } else {
            self.releases.release(pins);
            Ok(())
        }
    }

    /// Encodes a kept trace (annotated, unless turned off) and hands it to the sink.
    /// `summary` is what the policies saw (an empty one for late spans).
    async fn send_kept<S: EncodedSpan>(
        &mut self,
        summary: &TraceSummary,
        spans: &[S],
        pins: Vec<Pin>,
        outcome: Outcome,
    ) -> Result<(), Closed> {
        let Outcome {
            verdict,
            forced,
            record: record_decision,
            promoted,
            pieces,
        } = outcome;
        let trace_id = summary.trace_id;
        let policy = verdict.policy().map_or_else(
            || Arc::from(""),
            |i| self.policies.get().decider.policy_name(i),
        );
        let probability = verdict
            .policy()
            .and_then(|i| self.policies.get().decider.probability(i, summary));
        // Spans standard decoders would refuse leave apart, to the dead-letter topic:
        // in the record they would make the whole trace unreadable downstream.
        let defects: Vec<(usize, SpanDefect)> = spans
            .iter()
            .enumerate()
            .filter_map(|(i, s)| check_span(s).err().map(|d| (i, d)))
            .collect();
        let (payloads, rejected, kept_spans) = if defects.is_empty() {
            (self.encode(spans, &policy, probability), None, spans.len())
        } else {
            let mut bad = defects.iter().map(|&(i, _)| i).peekable();
            let mut good = Vec::with_capacity(spans.len() - defects.len());
            for (i, s) in spans.iter().enumerate() {
                if bad.peek() == Some(&i) {
                    bad.next();
                } else {
                    good.push(s);
                }
            }
            let aside: Vec<&S> = defects.iter().map(|&(i, _)| &spans[i]).collect();
            for (_, d) in &defects {
                counter!(names::SPANS_REJECTED, "reason" => d.code()).increment(1);
            }
            let first = defects[0].1;
            let rejected = Rejected {
                payloads: encode_trace(&aside, self.max_message_bytes),
                reason: format!(
                    "{}: {} of {} kept spans would be refused by OTLP decoders, the others sent to the output: {first}",
                    first.code(),
                    defects.len(),
                    spans.len()
                ),
            };
            (
                self.encode(&good, &policy, probability),
                Some(rejected),
                good.len(),
            )
        };
        let bytes = payloads
            .iter()
            .chain(rejected.iter().flat_map(|r| &r.payloads))
            .map(|p| p.capacity() as u64)
            .sum();
        let kept = KeptTrace {
            trace_id,
            payloads,
            pins,
            topic: verdict
                .policy()
                .and_then(|i| self.policies.get().decider.topic(i)),
            policy,
            forced: forced.map(Forced::as_str),
            spans: kept_spans,
            rejected,
            charge: Charge::new(&self.budget, bytes),
            record_decision,
            pieces,
            evidence: Evidence::of(summary),
            promoted,
        };
        self.sink
            .send(SinkMsg::Kept(kept))
            .await
            .map_err(|_| Closed)
    }

    /// The payloads of kept `spans`, annotated with `policy` and `probability` unless
    /// annotation is off, in the output encoding.
    fn encode<S: EncodedSpan>(
        &self,
        spans: &[S],
        policy: &str,
        probability: Option<f64>,
    ) -> Vec<Vec<u8>> {
        if spans.is_empty() {
            return Vec::new(); // every span went to the dead-letter topic
        }
        let payloads = if self.annotate && !policy.is_empty() {
            let annotation = Annotation {
                policy,
                probability,
            };
            let annotated = Annotated::new(spans, &annotation);
            encode_trace(&annotated.spans(), self.max_message_bytes)
        } else {
            encode_trace(spans, self.max_message_bytes)
        };
        self.output_encoding
            .encode(payloads, self.max_message_bytes)
    }

    /// Publishes gauge deltas and moves this worker's budget charge to what its
    /// book-keeping and cache hold now.
    fn publish(&mut self) {
        let now = (
            self.shard.traces(),
            self.shard.spans(),
            self.shard.bytes(),
            self.cache.len(),
        );
        let delta = |new: usize, old: usize| new as f64 - old as f64;
        let m = &self.metrics;
        m.traces.increment(delta(now.0, self.published.0));
        m.spans.increment(delta(now.1, self.published.1));
        m.bytes.increment(delta(now.2, self.published.2));
        m.cache.increment(delta(now.3, self.published.3));
        self.published = now;
        let charged = (self.shard.bytes() + self.cache.allocated_bytes()) as u64;
        self.budget.adjust(self.charged, charged);
        self.charged = charged;
    }
}

/// How a kept trace was decided, for [`ShardWorker::send_kept`].
struct Outcome {
    verdict: Verdict,
    forced: Option<Forced>,
    /// Whether its decision is recorded.
    record: bool,
    promoted: Option<Promotion>,
    /// Where its input lies, for the record.
    pieces: Option<Pieces>,
}

/// The sink is gone: the pipeline is shutting down.
#[derive(Debug)]
struct Closed;

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
