//! The decode stage, between the source and the buffer: scanner tasks that decode
//! input messages in parallel and deal their spans to the buffer shards.
//!
//! The source reads messages in order and pins each with one *guard* pin; a scanner
//! scans it (codec), swaps the guard for one pin per trace the message feeds (under
//! the tracker's lock, before any span is handed on, so no release can overtake it),
//! and sends each shard its spans. Undecodable messages keep the guard as their one
//! pin and go to the sink as dead letters. Scanning is the costliest step per span,
//! so it runs on as many tasks as there are shards instead of on the source's one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::HashTable;
use metrics::{counter, Counter};
use tokio::sync::mpsc;
use tracing::warn;

use crate::budget::MemoryBudget;
use crate::clock::StreamClocks;
use crate::codec::{
    encode_trace, scan_partial, CodecError, FrameInterner, InputEncoding, Message, RejectedSpan,
    Span, TraceId,
};
use crate::flow::Pin;
use crate::flow::{DeadLetter, ScanKeys, ShardMsg, SinkMsg, Watch};
use crate::kafka::offsets::{lock, OffsetTracker};
use crate::telemetry::{names, LogLimiter};

/// One input message, pinned once (the guard).
#[derive(Debug)]
pub(crate) struct Input {
    /// The payload, charged to the memory budget.
    pub(crate) payload: Bytes,
    /// The message key, kept for the dead-letter topic.
    pub(crate) key: Option<Bytes>,
    /// The message headers, kept for the dead-letter topic.
    pub(crate) headers: Option<rdkafka::message::OwnedHeaders>,
    /// The guard pin.
    pub(crate) pin: Pin,
    /// Its partition's stream time (ms) once it was read.
    pub(crate) at: u64,
    /// Its topic's encoding: anything but OTLP protobuf is converted before the scan.
    pub(crate) encoding: InputEncoding,
    /// Its topic (for the unkeyed-input metric, without the tracker's lock).
    pub(crate) topic: Arc<str>,
}

/// Work for a scanner.
#[derive(Debug)]
pub(crate) enum ScanJob {
    /// A message to scan.
    Message(Input),
    /// A partition was revoked; passed on to every shard after the messages before
    /// it, so a shard never sees spans of a revoked assignment after the last copy.
    Revoked {
        /// Tracker slot.
        slot: u32,
        /// Assignment epoch.
        epoch: u32,
    },
    /// An idle partition's stream time moved on: published after the messages before
    /// it, like a message's.
    Clock {
        /// Tracker slot.
        slot: u32,
        /// Assignment epoch.
        epoch: u32,
        /// Stream time, ms since the epoch.
        at: u64,
    },
}

/// One scanner task's state.
pub(crate) struct Scanner {
    pub(crate) rx: mpsc::Receiver<ScanJob>,
    pub(crate) tracker: Arc<Mutex<OffsetTracker>>,
    /// The policy set in force: its attribute predicates are tested while scanning.
    pub(crate) policies: Watch<ScanKeys>,
    /// Its own frame interner: no lock between scanners.
    pub(crate) frames: FrameInterner,
    pub(crate) shards: Vec<mpsc::Sender<ShardMsg>>,
    pub(crate) sink: mpsc::Sender<SinkMsg>,
    /// Where partitions' stream time is published once their spans are handed on.
    pub(crate) clocks: Arc<StreamClocks>,
    /// Charges the dead letters of spans set aside until they are delivered.
    pub(crate) budget: MemoryBudget,
    /// Scratch space for dealing a message's spans, kept between messages.
    pub(crate) dealer: Dealer,
}

impl Scanner {
    /// Scans until the source closes the channel or a downstream stage is gone.
    pub(crate) async fn run(mut self) {
        let spans_received = counter!(names::SPANS_RECEIVED);
        let mut spans: Vec<Span> = Vec::new();
        while let Some(job) = self.rx.recv().await {
            let step = match job {
                ScanJob::Message(input) => self.message(input, &mut spans, &spans_received).await,
                ScanJob::Revoked { slot, epoch } => self.revoked(slot, epoch).await,
                ScanJob::Clock { slot, epoch, at } => {
                    if lock(&self.tracker).is_current(slot, epoch) {
                        self.clocks.publish(slot, epoch, at);
                    }
                    Ok(())
                }
            };
            if step.is_err() {
                break;
            }
        }
    }

    /// Counts a message keyed by a trace id whose spans belong to another trace
    /// (a missing or malformed key was counted by the source).
    fn check_key(&self, input: &Input, spans: &[Span]) {
        let Some(key) = input.key.as_deref() else {
            return;
        };
        let Some(want) = key_trace_id(key) else {
            return;
        };
        if spans.iter().any(|s| s.trace_id.0 != want) {
            counter!(names::INPUT_UNKEYED, "topic" => input.topic.to_string(), "reason" => "other_traces")
                .increment(1);
        }
    }

    async fn revoked(&self, slot: u32, epoch: u32) -> Result<(), ()> {
        for s in &self.shards {
            s.send(ShardMsg::Revoked { slot, epoch })
                .await
                .map_err(drop)?;
        }
        Ok(())
    }

    async fn message(
        &mut self,
        input: Input,
        spans: &mut Vec<Span>,
        spans_received: &Counter,
    ) -> Result<(), ()> {
        spans.clear();
        let pin = input.pin;
        // A reload takes effect here first: the shards switch before they see spans
        // scanned with the new predicates.
        self.policies.refresh();
        let keys = &self.policies.get().keys;
        let at = input.at;
        let mut rejected = Vec::new();
        // Other encodings become OTLP protobuf first (charged like the input).
        let converted = match input.encoding.to_otlp(&input.payload) {
            Ok(otlp) => otlp.map(|o| self.budget.charged_bytes(o)),
            Err(e) => {
                counter!(names::SPANS_REJECTED, "reason" => "bad_encoding").increment(1);
                let reason = format!("bad_encoding: {e}");
                self.send_dead_letter(&input, self.own_copy(&input.payload), reason, "undecodable")
                    .await?;
                self.clocks.publish(pin.slot, pin.epoch, at);
                return Ok(());
            }
        };
        let payload = converted.as_ref().unwrap_or(&input.payload);
        let scanned = scan_partial(payload, keys, &mut self.frames, spans, &mut rejected);
        let message = match scanned {
            Ok(_) if spans.is_empty() && !rejected.is_empty() => {
                // No span of it can be sampled: the message goes as it came.
                let e = rejected.swap_remove(0).error;
                counter!(names::SPANS_REJECTED, "reason" => e.code())
                    .increment(1 + rejected.len() as u64);
                self.dead_letter(input, e).await?;
                self.clocks.publish(pin.slot, pin.epoch, at);
                return Ok(());
            }
            Ok(m) => m,
            Err(e) => {
                self.dead_letter(input, e).await?;
                self.clocks.publish(pin.slot, pin.epoch, at);
                return Ok(());
            }
        };
        spans_received.increment(spans.len() as u64);
        self.check_key(&input, spans);
        let kept = spans.len();
        let by_shard = self.dealer.deal(spans, self.shards.len());
        let traces: usize = by_shard.iter().map(|s| trace_groups(s)).sum();
        // The spans set aside go to the dead-letter topic under one more pin.
        let aside = u32::from(!rejected.is_empty());
        if !lock(&self.tracker).repin(pin, traces as u32 + aside) {
            return Ok(()); // its partition was revoked meanwhile
        }
        if !rejected.is_empty() {
            self.set_aside(&input, &message, &rejected, kept).await?;
        }
        let generation = self.policies.get().number;
        // Before any span of a new assignment reaches a shard, the shards stop
        // trusting the old assignment's stream time for this partition.
        self.clocks.enter(pin.slot, pin.epoch);
        for (shard, chunk) in by_shard.into_iter().enumerate() {
            if chunk.is_empty() {
                continue;
            }
            self.shards[shard]
                .send(ShardMsg::Spans {
                    pin,
                    topic: Arc::clone(&input.topic),
                    message: message.clone(),
                    spans: chunk,
                    at,
                    generation,
                })
                .await
                .map_err(drop)?;
        }
        // Only now, with every span of the message in a shard's channel, may the
        // shards act on its stream time.
        self.clocks.publish(pin.slot, pin.epoch, at);
        Ok(())
    }

    /// Sends an undecodable message to the dead-letter topic, its guard pin with it.
    async fn dead_letter(&self, input: Input, e: CodecError) -> Result<(), ()> {
        let reason = format!("{}: {e}", e.code());
        self.send_dead_letter(&input, self.own_copy(&input.payload), reason, "undecodable")
            .await
    }

    /// A copy of an input payload in memory of tailsift's own, charged to the budget:
    /// a dead letter waits for the broker, through outages too, and the input payload
    /// lies in librdkafka's memory, where it keeps its whole fetch response (if not
    /// compressed) alive, far beyond the bytes the budget charges for it.
    fn own_copy(&self, payload: &Bytes) -> Bytes {
        self.budget.charged_bytes(payload.to_vec())
    }

    /// Sends the spans of `message` set aside for their trace id to the dead-letter
    /// topic, in one OTLP request under their own resource and scope; the message's
    /// other `kept` spans are sampled. Carries one pin of the message.
    async fn set_aside(
        &self,
        input: &Input,
        message: &Message,
        rejected: &[RejectedSpan],
        kept: usize,
    ) -> Result<(), ()> {
        let refs: Vec<_> = rejected.iter().map(|r| message.span_ref(&r.span)).collect();
        let payload = encode_trace(&refs, usize::MAX).concat();
        let e = &rejected[0].error;
        counter!(names::SPANS_REJECTED, "reason" => e.code()).increment(rejected.len() as u64);
        let reason = format!(
            "{}: {} of {} spans set aside, the others sampled: {e}",
            e.code(),
            rejected.len(),
            rejected.len() + kept
        );
        let payload = self.budget.charged_bytes(payload);
        self.send_dead_letter(input, payload, reason, "invalid_spans")
            .await
    }

    async fn send_dead_letter(
        &self,
        input: &Input,
        payload: Bytes,
        reason: String,
        label: &'static str,
    ) -> Result<(), ()> {
        let pin = input.pin;
        let Some((topic, partition)) = lock(&self.tracker).origin(pin) else {
            return Ok(()); // its partition was revoked meanwhile
        };
        static LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            warn!(message = "Undecodable message; sending it to the dead-letter topic.", topic = %topic, partition, offset = pin.offset, error = %reason, suppressed_since_last = suppressed);
        }
        let dl = DeadLetter {
            payload,
            key: input.key.clone(),
            headers: input.headers.clone(),
            reason,
            label,
            topic,
            partition,
            offset: pin.offset,
            pin,
        };
        self.sink.send(SinkMsg::DeadLetter(dl)).await.map_err(drop)
    }
}

/// Deals a message's spans to the shards: one list per shard in which each trace's
/// spans are adjacent, in the order they came. It keeps its scratch space between
/// messages.
#[derive(Debug, Default)]
pub(crate) struct Dealer {
    /// The message's traces: id and group number, found by the id's hash.
    traces: HashTable<(TraceId, u32)>,
    /// Per group (a trace, in order of first appearance): its shard, then where its
    /// next span goes in `order`.
    groups: Vec<(u32, u32)>,
    /// Per span: its group.
    group_of: Vec<u32>,
    /// Span indices, shard after shard, each trace's spans together.
    order: Vec<u32>,
}

impl Dealer {
    /// Moves `spans` into one list per shard, each trace's spans adjacent and in
    /// their order in the message. Input keyed by trace id mostly holds one trace a
    /// message, already sorted: it is dealt as it is. Otherwise (a Collector batch
    /// mixes hundreds of traces) the spans are grouped through a small table of the
    /// message's traces and copied once into place; sorting the 64-byte span
    /// structs by trace id cost more than the rest of dealing.
    pub(crate) fn deal(&mut self, spans: &mut Vec<Span>, shards: usize) -> Vec<Vec<Span>> {
        let shards = shards.max(1);
        if spans
            .windows(2)
            .all(|w| trace_key(&w[0]) <= trace_key(&w[1]))
        {
            return deal_in_order(spans, shards);
        }
        self.traces.clear();
        self.groups.clear();
        self.group_of.clear();
        let mut sizes = vec![0u32; shards];
        for s in spans.iter() {
            let h = s.trace_id.shard_hash();
            let g = match self.traces.find(h, |(id, _)| *id == s.trace_id) {
                Some(&(_, g)) => g,
                None => {
                    let g = self.groups.len() as u32;
                    self.groups.push((shard_of_hash(h, shards) as u32, 0));
                    self.traces
                        .insert_unique(h, (s.trace_id, g), |(id, _)| id.shard_hash());
                    g
                }
            };
            let shard = self.groups[g as usize].0;
            self.groups[g as usize].1 += 1;
            sizes[shard as usize] += 1;
            self.group_of.push(g);
        }
        // Each group's first place in `order`: the shards' runs one after another,
        // within each its groups in order of first appearance.
        let mut next: Vec<u32> = Vec::with_capacity(shards);
        let mut at = 0u32;
        for &n in &sizes {
            next.push(at);
            at += n;
        }
        for g in &mut self.groups {
            let count = g.1;
            g.1 = next[g.0 as usize];
            next[g.0 as usize] += count;
        }
        self.order.clear();
        self.order.resize(spans.len(), 0);
        for (i, &g) in self.group_of.iter().enumerate() {
            let place = &mut self.groups[g as usize].1;
            self.order[*place as usize] = i as u32;
            *place += 1;
        }
        let mut order = self.order.iter();
        let out = sizes
            .iter()
            .map(|&n| {
                order
                    .by_ref()
                    .take(n as usize)
                    .filter_map(|&i| spans.get(i as usize).cloned())
                    .collect()
            })
            .collect();
        spans.clear();
        out
    }
}

/// Deals spans already sorted by trace id: each shard's list keeps their order.
fn deal_in_order(spans: &mut Vec<Span>, shards: usize) -> Vec<Vec<Span>> {
    if shards == 1 {
        return vec![std::mem::take(spans)];
    }
    // Each list allocated once at its size: growing them by doubling reallocated
    // and copied the spans several times per message.
    let of: Vec<usize> = spans
        .iter()
        .map(|s| shard_of_id(&s.trace_id, shards))
        .collect();
    let mut sizes = vec![0usize; shards];
    for &i in &of {
        sizes[i] += 1;
    }
    let mut out: Vec<Vec<Span>> = sizes.into_iter().map(Vec::with_capacity).collect();
    for (s, i) in spans.drain(..).zip(of) {
        out[i].push(s);
    }
    out
}

/// A trace id as one integer, cheap to compare, in the ids' byte order.
fn trace_key(s: &Span) -> u128 {
    u128::from_be_bytes(s.trace_id.0)
}

/// How many traces a list of spans grouped by trace holds.
fn trace_groups(spans: &[Span]) -> usize {
    spans.chunk_by(|a, b| a.trace_id == b.trace_id).count()
}

/// The shard of a trace: high bits of the trace id hash, so the shard's own hash map,
/// which uses the low bits, still spreads its keys.
pub(crate) fn shard_of_id(id: &TraceId, shards: usize) -> usize {
    shard_of_hash(id.shard_hash(), shards)
}

/// [`shard_of_id`] from the id's [`TraceId::shard_hash`].
fn shard_of_hash(hash: u64, shards: usize) -> usize {
    ((hash >> 40) as usize) % shards.max(1)
}

/// The trace id a message key names: 32 hex digits, or 16 (a 64-bit Jaeger trace id,
/// the high half zero, as Jaeger and the Collector's jaeger encodings key).
pub(crate) fn key_trace_id(key: &[u8]) -> Option<[u8; 16]> {
    let text = std::str::from_utf8(key).ok()?;
    if !matches!(text.len(), 16 | 32) || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(text, 16).ok()?;
    Some(id.to_be_bytes())
}

/// Why a message key is not a trace id (`None`: it is one, see [`key_trace_id`]).
pub(crate) fn unkeyed_reason(key: Option<&[u8]>) -> Option<&'static str> {
    match key {
        None | Some([]) => Some("missing"),
        Some(k) if key_trace_id(k).is_some() => None,
        Some(_) => Some("not_trace_id"),
    }
}

#[cfg(test)]
mod tests;
