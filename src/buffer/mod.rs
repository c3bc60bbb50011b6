//! The trace buffer: spans grouped by trace id until their trace is due for a decision.
//!
//! Each [`Shard`] is owned by exactly one decide worker; traces are assigned to shards
//! by a hash of their id, so no lock is shared on the hot path. A trace is due
//! `decision_wait` after its first span, or `decision_wait_after_root_received` after
//! its root span when that is earlier. Both deadlines grow in arrival order, so two
//! FIFO queues give the due traces in O(1) each. A trace reaching the per-trace limits
//! is due at once; under memory pressure the oldest traces are taken early.
//!
//! A buffered trace owns compact copies of its spans: per input message, one
//! exact-size block of encoded span bodies and one record per span (its end in the
//! block and its shared framing). The input message itself is freed as soon as its
//! spans are buffered, so what a trace holds is its spans' encoded size plus a few
//! bytes each, whatever the batching of the input.
//!
//! [`MemoryBudget`] counts what all of this holds; see [`memory`].

pub mod memory;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::{span_times, Message, ScopeFrame, Span, SpanRef, TraceId};
use crate::policy::TraceSummary;
use crate::source::Pin;

pub use memory::{Charge, MemoryBudget};

/// Bytes of one slot of the trace table: the entry and its control byte.
const TABLE_SLOT_BYTES: usize = size_of::<(TraceId, TraceEntry)>() + 1;
/// Bytes of one place in a due queue.
const QUEUE_SLOT_BYTES: usize = size_of::<(Instant, TraceId)>();
/// Book-keeping bytes of one buffered span besides its encoded bytes.
pub const SPAN_OVERHEAD_BYTES: usize = size_of::<SpanRecord>();
/// What the allocator adds to each allocation (glibc: an 8-byte header, 16-byte
/// granularity).
const ALLOCATION_OVERHEAD: usize = 16;

/// Where a buffered span ends in its chunk's bytes, and which of the chunk's framings
/// it goes under.
type SpanRecord = (u32, u16);

/// The spans of one trace from one input message, copied out of it.
#[derive(Debug)]
struct Chunk {
    /// The input message's pin for this trace.
    pin: Pin,
    /// The spans' encoded bodies, back to back, allocated at their exact size.
    bytes: Box<[u8]>,
    /// One record per span.
    spans: Box<[SpanRecord]>,
    /// The distinct framings of these spans (usually one).
    frames: Box<[Arc<ScopeFrame>]>,
}

impl Chunk {
    fn new(message: &Message, spans: &[Span], pin: Pin) -> Self {
        let total = spans.iter().map(Span::len).sum();
        let mut bytes = Vec::with_capacity(total);
        let mut frames: Vec<Arc<ScopeFrame>> = Vec::new();
        let records = spans
            .iter()
            .map(|s| {
                bytes.extend_from_slice(message.bytes(s));
                let end = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                let frame = message.frame(s);
                let local = match frames.iter().position(|f| Arc::ptr_eq(f, frame)) {
                    Some(i) => i,
                    None => {
                        frames.push(Arc::clone(frame));
                        frames.len() - 1
                    }
                };
                (end, u16::try_from(local).unwrap_or(u16::MAX))
            })
            .collect();
        Chunk {
            pin,
            bytes: bytes.into_boxed_slice(),
            spans: records,
            frames: frames.into_boxed_slice(),
        }
    }

    /// Heap bytes it holds (its own struct is counted in the trace's vector).
    fn heap_bytes(&self) -> usize {
        let alloc = |n: usize| if n == 0 { 0 } else { n + ALLOCATION_OVERHEAD };
        alloc(self.bytes.len())
            + alloc(self.spans.len() * SPAN_OVERHEAD_BYTES)
            + alloc(self.frames.len() * size_of::<Arc<ScopeFrame>>())
    }
}

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
    /// Its spans, one chunk per input message they came in.
    chunks: Vec<Chunk>,
    /// Heap bytes of the chunks.
    chunk_bytes: usize,
    /// When its first span arrived.
    pub first_seen: Instant,
    root_deadline: Option<Instant>,
}

impl TraceEntry {
    /// Heap bytes held besides its table slot: the chunk vector (by capacity, what
    /// is allocated) and the spans' copies.
    pub fn held_bytes(&self) -> usize {
        self.chunks.capacity() * size_of::<Chunk>() + self.chunk_bytes
    }

    /// Its spans, in arrival order, to encode.
    pub fn spans(&self) -> Vec<SpanRef<'_>> {
        let mut out = Vec::with_capacity(self.summary.span_count as usize);
        for c in &self.chunks {
            let mut start = 0usize;
            for &(end, frame) in c.spans.iter() {
                let end = end as usize;
                let Some(frame) = c.frames.get(usize::from(frame)) else {
                    continue; // cannot happen: records index the chunk's own frames
                };
                out.push(SpanRef {
                    frame,
                    bytes: c.bytes.get(start..end).unwrap_or_default(),
                });
                start = end;
            }
        }
        out
    }

    /// The longest time any one host saw the trace take: per resource (a host, a
    /// process), `max(end) - min(start)` of its spans, and the largest of those.
    /// Intervals on one host's clock are immune to clock skew between hosts.
    pub fn longest_host_window_ns(&self) -> u64 {
        let mut windows: Vec<(&ScopeFrame, u64, u64)> = Vec::new();
        for s in self.spans() {
            let Some((start, end)) = span_times(s.bytes) else {
                continue;
            };
            match windows.iter_mut().find(|w| w.0.same_resource(s.frame)) {
                Some(w) => {
                    w.1 = w.1.min(start);
                    w.2 = w.2.max(end);
                }
                None => windows.push((s.frame, start, end)),
            }
        }
        windows
            .iter()
            .map(|(_, start, end)| end.saturating_sub(*start))
            .max()
            .unwrap_or(0)
    }

    /// The input pins it holds, one per message it got spans from.
    pub fn pins(&self) -> Vec<Pin> {
        self.chunks.iter().map(|c| c.pin).collect()
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
    held: usize,
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
            held: 0,
        }
    }

    /// Clears attribute hits outside `mask` in every buffered trace: the policy set
    /// was replaced and those predicates are gone.
    pub fn mask_hits(&mut self, mask: u64) {
        for entry in self.traces.values_mut() {
            entry.summary.attr_hits &= mask;
        }
    }

    /// Recomputes every buffered trace's attribute hits and key from its spans with
    /// `rescan`, giving a span's `(hits, key, is_root)` (a new policy set reading
    /// other attributes). The key is the root span's, else the first span's.
    pub fn recompute_hits(&mut self, rescan: impl Fn(&SpanRef<'_>) -> (u64, u64, bool)) {
        for entry in self.traces.values_mut() {
            let (mut hits, mut key) = (0, 0);
            for s in entry.spans() {
                let (h, k, root) = rescan(&s);
                hits |= h;
                if k != 0 && (root || key == 0) {
                    key = k;
                }
            }
            entry.summary.attr_hits = hits;
            entry.summary.key_hash = key;
        }
    }

    /// Adds the spans of one trace from one input message (copying them out of it),
    /// with that message's pin.
    pub fn insert(
        &mut self,
        trace_id: TraceId,
        message: &Message,
        spans: &[Span],
        pin: Pin,
        now: Instant,
    ) {
        let mut is_new = false;
        let entry = self.traces.entry(trace_id).or_insert_with(|| {
            is_new = true;
            self.by_first_span.push_back((now, trace_id));
            TraceEntry {
                summary: TraceSummary::new(trace_id),
                chunks: Vec::new(),
                chunk_bytes: 0,
                first_seen: now,
                root_deadline: None,
            }
        });
        let held_before = if is_new { 0 } else { entry.held_bytes() };
        let was_over = self.limits.reached(&entry.summary);
        let mut root = false;
        for span in spans {
            entry.summary.add(span);
            root |= span.is_root;
        }
        let chunk = Chunk::new(message, spans, pin);
        entry.chunk_bytes += chunk.heap_bytes();
        if entry.chunks.len() < 8 {
            // Most traces come in a few messages: grow one by one at first rather
            // than to the vector's default of four.
            entry.chunks.reserve_exact(1);
        }
        entry.chunks.push(chunk);
        if root && entry.root_deadline.is_none() {
            if let Some(after) = self.after_root {
                let deadline = now + after;
                if deadline < entry.first_seen + self.decision_wait {
                    entry.root_deadline = Some(deadline);
                    self.by_root_span.push_back((deadline, trace_id));
                }
            }
        }
        self.spans += spans.len();
        self.held += entry.held_bytes();
        self.held -= held_before;
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
        self.held = 0;
        self.traces.clear();
    }

    /// Forgets traces whose every pin is on a revoked partition assignment: the new
    /// owner of the partition re-reads them from the committed offset. Returns how
    /// many traces were released.
    pub fn release_partition(&mut self, slot: u32, epoch: u32) -> usize {
        let ids: Vec<TraceId> = self
            .traces
            .iter()
            .filter(|(_, e)| {
                e.chunks
                    .iter()
                    .all(|c| c.pin.slot == slot && c.pin.epoch == epoch)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }

    fn remove(&mut self, id: &TraceId) -> Option<TraceEntry> {
        let e = self.traces.remove(id)?;
        self.spans -= e.summary.span_count as usize;
        self.held -= e.held_bytes();
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

    /// Bytes held: the spans' copies plus book-keeping, the table and queues counted
    /// by their allocated capacity.
    pub fn bytes(&self) -> usize {
        // hashbrown allocates a power of two of buckets, at most 7/8 of them used.
        let cap = self.traces.capacity();
        let buckets = if cap == 0 {
            0
        } else {
            (cap * 8 / 7).next_power_of_two()
        };
        self.held
            + buckets * TABLE_SLOT_BYTES
            + (self.by_first_span.capacity() + self.by_root_span.capacity()) * QUEUE_SLOT_BYTES
            + self.over_limit.capacity() * size_of::<TraceId>()
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
