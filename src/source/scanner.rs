//! Scanners: the tasks that decode input messages in parallel and deal their spans
//! to the buffer shards.
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
use metrics::{counter, Counter};
use tokio::sync::mpsc;
use tracing::warn;

use super::{lock, OffsetTracker, Pin};
use crate::budget::MemoryBudget;
use crate::clock::StreamClocks;
use crate::codec::{
    encode_trace, scan_partial, CodecError, FrameInterner, InputEncoding, Message, RejectedSpan,
    Span, TraceId,
};
use crate::flow::{DeadLetter, ScanKeys, ShardMsg, SinkMsg, Watch};
use crate::telemetry::{names, LogLimiter};

/// One input message, pinned once (the guard).
#[derive(Debug)]
pub(super) struct Input {
    /// The payload, charged to the memory budget.
    pub(super) payload: Bytes,
    /// The message key, kept for the dead-letter topic.
    pub(super) key: Option<Bytes>,
    /// The message headers, kept for the dead-letter topic.
    pub(super) headers: Option<rdkafka::message::OwnedHeaders>,
    /// The guard pin.
    pub(super) pin: Pin,
    /// Its partition's stream time (ms) once it was read.
    pub(super) at: u64,
    /// Its topic's encoding: anything but OTLP protobuf is converted before the scan.
    pub(super) encoding: InputEncoding,
    /// Its topic (for the unkeyed-input metric, without the tracker's lock).
    pub(super) topic: Arc<str>,
}

/// Work for a scanner.
#[derive(Debug)]
pub(super) enum ScanJob {
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
pub(super) struct Scanner {
    pub(super) rx: mpsc::Receiver<ScanJob>,
    pub(super) tracker: Arc<Mutex<OffsetTracker>>,
    /// The policy set in force: its attribute predicates are tested while scanning.
    pub(super) policies: Watch<ScanKeys>,
    /// Its own frame interner: no lock between scanners.
    pub(super) frames: FrameInterner,
    pub(super) shards: Vec<mpsc::Sender<ShardMsg>>,
    pub(super) sink: mpsc::Sender<SinkMsg>,
    /// Where partitions' stream time is published once their spans are handed on.
    pub(super) clocks: Arc<StreamClocks>,
    /// Charges the dead letters of spans set aside until they are delivered.
    pub(super) budget: MemoryBudget,
}

impl Scanner {
    /// Scans until the source closes the channel or a downstream stage is gone.
    pub(super) async fn run(mut self) {
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
        let Some(want) = super::key_trace_id(key) else {
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
                self.send_dead_letter(&input, input.payload.clone(), reason, "undecodable")
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
        let by_shard = deal(spans, self.shards.len());
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
        self.send_dead_letter(&input, input.payload.clone(), reason, "undecodable")
            .await
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

/// Moves a message's spans into one list per shard, each sorted so that a trace's
/// spans are adjacent. Each span's shard is worked out once (it hashes the trace
/// id), then each list is sorted by the id as one integer: sorting the whole
/// message by `(shard, id)` hashed two ids per comparison.
fn deal(spans: &mut Vec<Span>, shards: usize) -> Vec<Vec<Span>> {
    let shards = shards.max(1);
    let mut out: Vec<Vec<Span>> = if shards == 1 {
        vec![std::mem::take(spans)]
    } else {
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
    };
    for list in &mut out {
        // Input keyed by trace id mostly holds one trace a message, already grouped.
        if list.windows(2).any(|w| trace_key(&w[0]) > trace_key(&w[1])) {
            list.sort_unstable_by_key(trace_key);
        }
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
pub(super) fn shard_of_id(id: &TraceId, shards: usize) -> usize {
    ((id.shard_hash() >> 40) as usize) % shards.max(1)
}

#[cfg(test)]
#[path = "scanner_tests.rs"]
mod tests;
