//! The trace buffer: spans grouped by trace id until their trace is due for a decision.
//!
//! Each [`Shard`] is owned by exactly one decide worker; traces are assigned to shards
//! by a hash of their id, so no lock is shared on the hot path. A trace is due
//! `decision_wait` after its first span, or `decision_wait_after_root_received` after
//! its root span when that is earlier. Both deadlines grow in arrival order, so two
//! FIFO queues give the due traces in O(1) each. A trace reaching the per-trace limits
//! is due at once; under memory pressure the oldest traces are taken early.
//!
//! [`MemoryBudget`] counts what all of this holds; see [`memory`].

pub mod memory;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::{RawSpan, Span, TraceId};
use crate::policy::TraceSummary;
use crate::source::Pin;

pub use memory::{Charge, MemoryBudget};

/// Book-keeping bytes of one buffered trace besides its vectors: the entry, its hash
/// map slot (with the control byte and the map's 7/8 load factor) and its places in
/// the due queues.
pub const TRACE_OVERHEAD_BYTES: usize =
    (size_of::<(TraceId, TraceEntry)>() + 1) * 8 / 7 + 2 * size_of::<(Instant, TraceId)>();
/// Book-keeping bytes of one buffered span besides its encoded bytes.
pub const SPAN_OVERHEAD_BYTES: usize = size_of::<RawSpan>();

/// When a single trace is decided regardless of its wait.
#[derive(Debug, Clone, Copy)]
pub struct TraceLimits {
    /// Spans.
    pub max_spans: u32,
    /// Encoded bytes of its spans.
    pub max_bytes: u64,
}

impl Default for TraceLimits {
    fn default() -> Self {
        TraceLimits {
            max_spans: u32::MAX,
            max_bytes: u64::MAX,
        }
    }
}

/// A trace waiting for its decision.
#[derive(Debug)]
pub struct TraceEntry {
    /// What the policies will read.
    pub summary: TraceSummary,
    /// The encoded spans, re-emitted if the trace is kept.
    pub spans: Vec<RawSpan>,
    /// Input messages this trace pins (one pin per message it got spans from).
    pub pins: Vec<Pin>,
    /// When its first span arrived.
    pub first_seen: Instant,
    root_deadline: Option<Instant>,
}

impl TraceEntry {
    /// Book-keeping bytes, counted from the vectors' capacities (what is allocated).
    pub fn overhead_bytes(&self) -> usize {
        TRACE_OVERHEAD_BYTES
            + self.spans.capacity() * SPAN_OVERHEAD_BYTES
            + self.pins.capacity() * size_of::<Pin>()
    }
}

/// One shard of the buffer.
#[derive(Debug)]
pub struct Shard {
    traces: HashMap<TraceId, TraceEntry, BuildHasherDefault<TraceIdHasher>>,
    by_first_span: VecDeque<(Instant, TraceId)>,
    by_root_span: VecDeque<(Instant, TraceId)>,
    decision_wait: Duration,
    after_root: Option<Duration>,
    limits: TraceLimits,
    /// Traces that reached a limit, to be decided now.
    over_limit: Vec<TraceId>,
    spans: usize,
    overhead: usize,
    span_bytes: usize,
}

impl Shard {
    /// An empty shard with the configured waits and per-trace limits.
    pub fn new(decision_wait: Duration, after_root: Option<Duration>, limits: TraceLimits) -> Self {
        Shard {
            traces: HashMap::default(),
            by_first_span: VecDeque::new(),
            by_root_span: VecDeque::new(),
            decision_wait,
            after_root: after_root.filter(|d| *d < decision_wait),
            limits,
            over_limit: Vec::new(),
            spans: 0,
            overhead: 0,
            span_bytes: 0,
        }
    }

    /// Adds the spans of one trace from one input message, with that message's pin.
    pub fn insert(
        &mut self,
        trace_id: TraceId,
        spans: impl Iterator<Item = Span>,
        pin: Pin,
        now: Instant,
    ) {
        let mut is_new = false;
        let entry = self.traces.entry(trace_id).or_insert_with(|| {
            is_new = true;
            self.by_first_span.push_back((now, trace_id));
            TraceEntry {
                summary: TraceSummary::new(trace_id),
                spans: Vec::new(),
                pins: Vec::new(),
                first_seen: now,
                root_deadline: None,
            }
        });
        let (overhead_before, bytes_before) = if is_new {
            (0, 0)
        } else {
            (entry.overhead_bytes(), entry.summary.span_bytes as usize)
        };
        let n_before = entry.spans.len();
        let was_over = self.limits.reached(&entry.summary);
        let mut root = false;
        for span in spans {
            entry.summary.add(&span);
            root |= span.is_root;
            entry.spans.push(span.raw);
        }
        entry.pins.push(pin);
        if root && entry.root_deadline.is_none() {
            if let Some(after) = self.after_root {
                let deadline = now + after;
                if deadline < entry.first_seen + self.decision_wait {
                    entry.root_deadline = Some(deadline);
                    self.by_root_span.push_back((deadline, trace_id));
                }
            }
        }
        self.spans += entry.spans.len() - n_before;
        self.overhead += entry.overhead_bytes();
        self.overhead -= overhead_before;
        self.span_bytes += entry.summary.span_bytes as usize - bytes_before;
        if !was_over && self.limits.reached(&entry.summary) {
            self.over_limit.push(trace_id);
        }
    }

    /// Moves traces that reached a per-trace limit into `out`.
    pub fn take_over_limit(&mut self, out: &mut Vec<TraceEntry>) {
        for id in std::mem::take(&mut self.over_limit) {
            out.extend(self.remove(&id));
        }
    }

    /// Moves up to `n` of the oldest traces into `out`, due or not (memory pressure).
    pub fn take_oldest(&mut self, n: usize, out: &mut Vec<TraceEntry>) {
        let mut taken = 0;
        while taken < n {
            let Some((seen, id)) = self.by_first_span.pop_front() else {
                break;
            };
            if self.traces.get(&id).is_some_and(|e| e.first_seen == seen) {
                out.extend(self.remove(&id));
                taken += 1;
            }
        }
    }

    /// Whether the trace is buffered here.
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.traces.contains_key(trace_id)
    }

    /// Moves every trace due at `now` into `out`, oldest first.
    pub fn take_due(&mut self, now: Instant, out: &mut Vec<TraceEntry>) {
        while let Some(&(deadline, id)) = self.by_root_span.front() {
            if deadline > now {
                break;
            }
            self.by_root_span.pop_front();
            if self
                .traces
                .get(&id)
                .is_some_and(|e| e.root_deadline == Some(deadline))
            {
                out.extend(self.remove(&id));
            }
        }
        while let Some(&(seen, id)) = self.by_first_span.front() {
            if seen + self.decision_wait > now {
                break;
            }
            self.by_first_span.pop_front();
            if self.traces.get(&id).is_some_and(|e| e.first_seen == seen) {
                out.extend(self.remove(&id));
            }
        }
    }

    /// Forgets every trace undecided, e.g. at shutdown (their input is not committed,
    /// so it is read again).
    pub fn clear(&mut self) {
        self.by_first_span.clear();
        self.by_root_span.clear();
        self.over_limit.clear();
        self.spans = 0;
        self.overhead = 0;
        self.span_bytes = 0;
        self.traces.clear();
    }

    /// Forgets traces whose every pin is on a revoked partition assignment: the new
    /// owner of the partition re-reads them from the committed offset. Returns how
    /// many traces were released.
    pub fn release_partition(&mut self, slot: u32, epoch: u32) -> usize {
        let ids: Vec<TraceId> = self
            .traces
            .iter()
            .filter(|(_, e)| e.pins.iter().all(|p| p.slot == slot && p.epoch == epoch))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }

    fn remove(&mut self, id: &TraceId) -> Option<TraceEntry> {
        let e = self.traces.remove(id)?;
        self.spans -= e.spans.len();
        self.overhead -= e.overhead_bytes();
        self.span_bytes -= e.summary.span_bytes as usize;
        Some(e)
    }

    /// Traces buffered.
    pub fn traces(&self) -> usize {
        self.traces.len()
    }

    /// Spans buffered.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Bytes held: encoded spans plus book-keeping.
    pub fn bytes(&self) -> usize {
        self.overhead + self.span_bytes
    }

    /// Book-keeping bytes alone (the encoded spans are charged with their input).
    pub fn overhead_bytes(&self) -> usize {
        self.overhead
    }
}

impl TraceLimits {
    fn reached(&self, t: &TraceSummary) -> bool {
        t.span_count >= self.max_spans || t.span_bytes >= self.max_bytes
    }
}

/// Hashes a [`TraceId`] by its own bits: trace ids are random, so SipHash buys nothing.
#[derive(Default)]
pub struct TraceIdHasher(u64);

impl Hasher for TraceIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

#[cfg(test)]
mod tests;
