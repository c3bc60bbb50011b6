//! The trace buffer: spans grouped by trace id until their trace is due for a decision.
//!
//! Each [`Shard`] is owned by exactly one decide worker; traces are assigned to shards
//! by a hash of their id, so no lock is shared on the hot path. A trace is due
//! `decision_wait` after its first span, or `decision_wait_after_root_received` after
//! its root span when that is earlier, both in the *stream time* of the input
//! partition its first span came from (see [`crate::clock`]): the deadline is that
//! partition's stream time when the span was read, plus the wait. A partition's stream
//! time only grows, so per partition two FIFO queues give the due traces in O(1) each.
//! The first-span queue holds each trace's 4-byte store position, and each record its
//! place in that queue, so a record the store moves is moved there too.
//! A trace reaching the per-trace limits is due at once; under memory pressure the
//! traces closest to their deadline are taken early.
//!
//! A buffered trace owns compact copies of its spans: per input message, one
//! exact-size allocation holding a 6-byte record per span (its end among the bodies
//! and which shared framing it goes under) and the encoded span bodies. The input
//! message itself is freed as soon as its
//! spans are buffered, so what a trace holds is its spans' encoded size plus a few
//! bytes each, whatever the batching of the input.
//!
//! The traces' records live in a store of dense pages behind a table of 4-byte
//! positions (`store.rs`), not in a hash map of whole records.
//!
//! [`crate::budget::MemoryBudget`] counts what all of this holds.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::monotonic_ms;
use crate::codec::{span_times, Message, ScopeFrame, Span, SpanRef, TraceId};
use crate::flow::{Pin, TraceSummary};
use store::Store;
use thin_vec::ThinVec;

/// One place in a root-span due queue: the trace, and the low 32 bits of the
/// deadline it was queued with, to tell a current place from one left by an earlier
/// trace of the same id (the deadline itself is read from the record).
type RootPlace = (TraceId, u32);
/// A place in a first-span due queue left by a trace decided early.
const VACANT: u32 = u32::MAX;
/// Book-keeping bytes of one buffered span besides its encoded bytes: its record.
pub const SPAN_OVERHEAD_BYTES: usize = RECORD_BYTES;
/// What the allocator adds to each allocation (glibc: an 8-byte header, 16-byte
/// granularity).
const ALLOCATION_OVERHEAD: usize = 16;

/// Bytes of one span's record in its chunk: where its body ends among the chunk's
/// bodies (`u32`) and which of the chunk's framings it goes under (`u16`), packed.
const RECORD_BYTES: usize = 6;
/// Bytes of a `ThinVec`'s length and capacity, at the start of its allocation.
const THIN_VEC_HEADER: usize = 2 * size_of::<usize>();

/// The spans of one trace from one input message, copied out of it: one allocation
/// holds their count, their records and their encoded bodies, back to back, at its
/// exact size; the framing comes along by reference (the first one inline: spans of
/// one message and trace nearly always share one).
#[derive(Debug)]
struct Chunk {
    /// The input message's pin for this trace, but for its partition: the shard
    /// knows each slot's (8 bytes less in every chunk).
    slot: u32,
    /// The pin's assignment generation.
    epoch: u32,
    /// The pin's offset.
    offset: i64,
    /// The framing of the spans whose record says 0.
    frame: Arc<ScopeFrame>,
    /// Framings 1.. when the spans came under several (a trace's spans from several
    /// services in one Collector batch): a thin vector, 8 bytes in every chunk, no
    /// allocation when empty, and one (growing) otherwise.
    more_frames: ThinVec<Arc<ScopeFrame>>,
    /// The records, then the bodies. The count is not stored: it is the first `n`
    /// for which `n` records and the bodies up to the end of record `n` fill the
    /// whole (4 bytes less in every chunk; see [`Chunk::count`]).
    data: Box<[u8]>,
}

impl Chunk {
    /// Copies `spans` (at least one) of `message` out.
    fn new(message: &Message, spans: &[Span], pin: Pin) -> Self {
        let bodies: usize = spans.iter().map(Span::len).sum();
        let head = spans.len() * RECORD_BYTES;
        let mut data = Vec::with_capacity(head + bodies);
        let first = spans.first().map(|s| message.frame(s));
        let mut more: ThinVec<Arc<ScopeFrame>> = ThinVec::new();
        let mut end = 0usize;
        for s in spans {
            // The bytes copied below, not the range: they are what the records index.
            end += message.bytes(s).len();
            let frame = message.frame(s);
            let local = if first.is_some_and(|f| Arc::ptr_eq(f, frame)) {
                0
            } else {
                match more.iter().position(|f| Arc::ptr_eq(f, frame)) {
                    Some(i) => i + 1,
                    None => {
                        more.push(Arc::clone(frame));
                        more.len()
                    }
                }
            };
            data.extend_from_slice(&u32::try_from(end).unwrap_or(u32::MAX).to_le_bytes());
            data.extend_from_slice(&u16::try_from(local).unwrap_or(u16::MAX).to_le_bytes());
        }
        for s in spans {
            data.extend_from_slice(message.bytes(s));
        }
        Chunk {
            slot: pin.slot,
            epoch: pin.epoch,
            offset: pin.offset,
            frame: first.map_or_else(|| Arc::new(ScopeFrame::default()), Arc::clone),
            more_frames: more,
            data: data.into_boxed_slice(),
        }
    }

    /// Its spans' framings and bodies, in arrival order.
    fn spans(&self) -> impl Iterator<Item = SpanRef<'_>> {
        let head = self.count() * RECORD_BYTES;
        let records = self.data.get(..head).unwrap_or_default();
        let bodies = self.data.get(head..).unwrap_or_default();
        let mut start = 0usize;
        records.chunks_exact(RECORD_BYTES).map(move |r| {
            let end = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
            let frame = usize::from(u16::from_le_bytes([r[4], r[5]]));
            let frame = match frame {
                0 => &self.frame,
                i => self.more_frames.get(i - 1).unwrap_or(&self.frame), // cannot happen: records index our frames
            };
            let bytes = bodies.get(start..end).unwrap_or_default();
            start = end;
            SpanRef { frame, bytes }
        })
    }

    /// Its spans: the first `n` whose `n` records and bodies, up to the end record
    /// `n - 1` gives, fill its data. Ends only grow, so `n * RECORD_BYTES + end` grows
    /// with `n` and only the true count fits; reading it walks the records, which
    /// every use of a chunk does anyway.
    fn count(&self) -> usize {
        let len = self.data.len();
        for (i, r) in self.data.chunks_exact(RECORD_BYTES).enumerate() {
            let end = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
            if (i + 1) * RECORD_BYTES + end == len {
                return i + 1;
            }
        }
        0
    }

    /// A chunk of no spans (for tests of the record store).
    #[cfg(test)]
    fn empty() -> Self {
        Chunk {
            slot: 0,
            epoch: 0,
            offset: 0,
            frame: Arc::new(ScopeFrame::default()),
            more_frames: ThinVec::new(),
            data: Box::default(),
        }
    }

    /// Heap bytes it holds (its own struct is counted where it is: the trace's
    /// record or the vector of its later chunks).
    fn heap_bytes(&self) -> usize {
        let alloc = |n: usize| if n == 0 { 0 } else { n + ALLOCATION_OVERHEAD };
        alloc(self.data.len())
            + match self.more_frames.capacity() {
                0 => 0,
                cap => alloc(THIN_VEC_HEADER + cap * size_of::<Arc<ScopeFrame>>()),
            }
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
    /// Its spans from the first input message they came in: in the record, as most
    /// traces come in one message (a Collector batch holds whole traces).
    first: Chunk,
    /// One chunk per later input message: a vector keeping its length and capacity
    /// in its allocation, 8 bytes in every record instead of 24, and no allocation
    /// while empty.
    more: ThinVec<Chunk>,
    /// When its first span arrived, for the decision latency metric: ms on the
    /// process's monotonic clock ([`crate::clock::monotonic_ms`]), wrapping; 4 bytes instead
    /// of an `Instant`'s 16, in every record.
    first_seen_ms: u32,
    /// The partition slot whose stream time it is due by (its first span's).
    home: u32,
    /// Its place in its home's first-span due queue, counted from the queue's
    /// first place ever (wrapping): the queue holds record positions, and a record
    /// that moves in the store has its place there updated.
    place: u32,
    /// How much earlier than `deadline` it is due once its root span arrived (ms;
    /// 0: not earlier).
    root_lead: u32,
    /// Due at this stream time (ms): its first span's stream time plus the wait.
    deadline: u64,
}

impl TraceEntry {
    /// Due at this stream time (ms) after its root span arrived, when earlier (0: none).
    fn root_deadline(&self) -> u64 {
        match self.root_lead {
            0 => 0,
            lead => self.deadline - u64::from(lead),
        }
    }

    /// How long since its first span arrived (exact for traces buffered under 49
    /// days, which every trace is).
    pub fn waited(&self) -> Duration {
        Duration::from_millis(u64::from(monotonic_ms().wrapping_sub(self.first_seen_ms)))
    }

    /// Heap bytes held besides its record: the spans' copies and the vector of
    /// later chunks (by capacity, what is allocated).
    pub fn held_bytes(&self) -> usize {
        self.chunks().map(Chunk::heap_bytes).sum::<usize>() + self.more_bytes()
    }

    /// Bytes of the vector of later chunks: its length, capacity and chunks.
    fn more_bytes(&self) -> usize {
        match self.more.capacity() {
            0 => 0,
            cap => THIN_VEC_HEADER + cap * size_of::<Chunk>() + ALLOCATION_OVERHEAD,
        }
    }

    /// Adds the chunk of a later message; returns the bytes it added to
    /// [`TraceEntry::held_bytes`].
    fn push(&mut self, chunk: Chunk) -> usize {
        let before = self.more_bytes();
        let added = chunk.heap_bytes();
        if self.more.len() < 8 {
            // Most traces come in a few messages: grow one by one at first rather
            // than to the vector's default of four.
            self.more.reserve_exact(1);
        }
        self.more.push(chunk);
        added + self.more_bytes() - before
    }

    /// The partition slot of its first pin (the message its first spans came in).
    pub fn first_slot(&self) -> u32 {
        self.first.slot
    }

    /// Its chunks, in arrival order.
    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        std::iter::once(&self.first).chain(self.more.iter())
    }

    /// Its spans, in arrival order, to encode.
    pub fn spans(&self) -> Vec<SpanRef<'_>> {
        let mut out = Vec::with_capacity(self.summary.span_count as usize);
        for c in self.chunks() {
            out.extend(c.spans());
        }
        out
    }

    /// The longest time any one host saw the trace take: per resource (a host, a
    /// process), `max(end) - min(start)` of its spans, and the largest of those.
    /// Intervals on one host's clock are immune to clock skew between hosts.
    pub fn longest_host_window_ns(&self) -> u64 {
        longest_host_window_ns(&self.spans())
    }
}

/// The longest time any one host saw `spans` take: per resource (a host, a
/// process), `max(end) - min(start)` of its spans, and the largest of those.
pub fn longest_host_window_ns(spans: &[SpanRef<'_>]) -> u64 {
    let mut windows: Vec<(&ScopeFrame, u64, u64)> = Vec::new();
    for s in spans {
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

/// One shard of the buffer.
#[derive(Debug)]
pub struct Shard {
    traces: Store,
    /// Due queues per partition slot, deadlines in stream time.
    queues: Vec<Queues>,
    decision_wait: Duration,
    after_root: Option<Duration>,
    limits: TraceLimits,
    /// Traces that reached a limit, to be decided now.
    over_limit: Vec<TraceId>,
    /// The partition of each slot seen here (a slot is one partition for the
    /// process's life), to give chunks' pins their partition back.
    partitions: Vec<i32>,
    spans: usize,
    held: usize,
}

/// One partition's due queues: traces in the order they were buffered, which is
/// deadline order as the partition's stream time only grows.
#[derive(Debug, Default)]
struct Queues {
    /// Store positions of the traces homed here (4 bytes a trace, where a trace id
    /// would be 16), [`VACANT`] where one was decided early. Each record knows its
    /// place, so a record moved in the store is moved here too.
    by_first_span: VecDeque<u32>,
    /// Places taken from the front of `by_first_span` so far (wrapping): a
    /// record's place minus this is its index.
    popped: u32,
    /// Traces whose root span made them due earlier (only with
    /// `decision_wait_after_root_received`).
    by_root_span: VecDeque<RootPlace>,
}

impl Queues {
    /// Puts `pos` at the back; returns its place.
    fn push(&mut self, pos: u32) -> u32 {
        let place = self.popped.wrapping_add(self.by_first_span.len() as u32);
        self.by_first_span.push_back(pos);
        place
    }

    /// The position at `place`, to change, while it is in the queue.
    fn at(&mut self, place: u32) -> Option<&mut u32> {
        self.by_first_span
            .get_mut(place.wrapping_sub(self.popped) as usize)
    }

    /// Takes the front place out.
    fn pop(&mut self) -> Option<u32> {
        let pos = self.by_first_span.pop_front()?;
        self.popped = self.popped.wrapping_add(1);
        Some(pos)
    }
}

impl Shard {
    /// An empty shard with the configured waits and per-trace limits.
    pub fn new(decision_wait: Duration, after_root: Option<Duration>, limits: TraceLimits) -> Self {
        Shard {
            traces: Store::default(),
            queues: Vec::new(),
            decision_wait,
            after_root: after_root.filter(|d| *d < decision_wait),
            limits,
            over_limit: Vec::new(),
            partitions: Vec::new(),
            spans: 0,
            held: 0,
        }
    }

    /// Clears attribute hits outside `mask` in every buffered trace: the policy set
    /// was replaced and those predicates are gone.
    pub fn mask_hits(&mut self, mask: u64) {
        for entry in self.traces.iter_mut() {
            entry.summary.attr_hits &= mask;
        }
    }

    /// Recomputes every buffered trace's attribute hits and key from its spans with
    /// `rescan`, giving a span's `(hits, key, is_root)` (a new policy set reading
    /// other attributes). The key is the root span's, else the first span's.
    pub fn recompute_hits(&mut self, rescan: impl Fn(&SpanRef<'_>) -> (u64, u64, bool)) {
        for entry in self.traces.iter_mut() {
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
    /// with that message's pin; `at` is the stream time (ms) of the message's
    /// partition once the message was read.
    pub fn insert(
        &mut self,
        trace_id: TraceId,
        message: &Message,
        spans: &[Span],
        pin: Pin,
        at: u64,
    ) {
        let wait = self.decision_wait.as_millis() as u64;
        self.learn_partition(pin.slot, pin.partition);
        let chunk = Chunk::new(message, spans, pin);
        let (pos, is_new, added) = match self.traces.position(&trace_id) {
            Some(pos) => {
                let added = self.traces.at_mut(pos).push(chunk);
                (pos, false, added)
            }
            None => {
                let added = chunk.heap_bytes();
                let pos = self.traces.insert(TraceEntry {
                    summary: TraceSummary::new(trace_id),
                    first: chunk,
                    more: ThinVec::new(),
                    first_seen_ms: monotonic_ms(),
                    home: pin.slot,
                    place: 0,
                    root_lead: 0,
                    deadline: at.saturating_add(wait),
                });
                (pos, true, added)
            }
        };
        let entry = self.traces.at_mut(pos);
        let (home, deadline) = (entry.home, entry.deadline);
        let was_over = self.limits.reached(&entry.summary);
        let mut root = false;
        for span in spans {
            entry.summary.add(span);
            root |= span.is_root;
        }
        let mut root_deadline = None;
        if root && entry.root_lead == 0 && pin.slot == home {
            if let Some(after) = self.after_root {
                let d = at.saturating_add(after.as_millis() as u64);
                // A lead past u32 (49.7 days) is not taken: the trace stays due at its
                // deadline, later, never earlier.
                if let Some(lead) = deadline.checked_sub(d).and_then(|l| u32::try_from(l).ok()) {
                    if lead > 0 {
                        entry.root_lead = lead;
                        root_deadline = Some(d);
                    }
                }
            }
        }
        let reached = !was_over && self.limits.reached(&entry.summary);
        self.spans += spans.len();
        self.held += added;
        if reached {
            self.over_limit.push(trace_id);
        }
        let q = self.queues_of(home);
        if let Some(d) = root_deadline {
            q.by_root_span.push_back((trace_id, d as u32));
        }
        if is_new {
            let place = q.push(pos);
            self.traces.at_mut(pos).place = place;
        }
    }

    /// Records `slot`'s partition.
    fn learn_partition(&mut self, slot: u32, partition: i32) {
        let i = slot as usize;
        if self.partitions.len() <= i {
            self.partitions.resize(i + 1, 0);
        }
        self.partitions[i] = partition;
    }

    /// The input pins `entry` holds, one per message it got spans from.
    pub fn pins(&self, entry: &TraceEntry) -> Vec<Pin> {
        entry
            .chunks()
            .map(|c| Pin {
                slot: c.slot,
                epoch: c.epoch,
                offset: c.offset,
                partition: self.partitions.get(c.slot as usize).copied().unwrap_or(0),
            })
            .collect()
    }

    fn queues_of(&mut self, slot: u32) -> &mut Queues {
        let i = slot as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, Queues::default);
        }
        &mut self.queues[i]
    }

    /// Moves traces that reached a per-trace limit into `out`.
    pub fn take_over_limit(&mut self, out: &mut Vec<TraceEntry>) {
        for id in std::mem::take(&mut self.over_limit) {
            out.extend(self.remove(&id));
        }
    }

    /// Moves up to `n` traces into `out`, due or not (memory pressure): those closest
    /// to their deadline in their partition's stream time (`clock`), the ones most
    /// likely complete.
    pub fn take_oldest(
        &mut self,
        n: usize,
        clock: impl Fn(u32) -> Option<u64>,
        out: &mut Vec<TraceEntry>,
    ) {
        let mut taken = 0;
        while taken < n {
            let mut best: Option<(u64, usize)> = None;
            for slot in 0..self.queues.len() {
                let Some(deadline) = self.first_front(slot) else {
                    continue;
                };
                let now = clock(slot as u32).unwrap_or(0);
                let left = deadline.saturating_sub(now);
                if best.is_none_or(|(b, _)| left < b) {
                    best = Some((left, slot));
                }
            }
            let Some((_, slot)) = best else {
                break;
            };
            if let Some(pos) = self.queues[slot].pop() {
                out.extend(self.remove_at(pos));
                taken += 1;
            }
        }
    }

    /// The deadline of the front trace of `slot`'s first-span queue, after dropping
    /// the vacant places before it.
    fn first_front(&mut self, slot: usize) -> Option<u64> {
        let q = self.queues.get_mut(slot)?;
        while let Some(&pos) = q.by_first_span.front() {
            if pos != VACANT {
                return Some(self.traces.at(pos).deadline);
            }
            q.pop();
        }
        None
    }

    /// The root deadline of the first current place in `slot`'s root-span queue,
    /// after dropping the places before it that traces decided since left (a place
    /// is current while its trace is buffered with home `slot` and the root deadline
    /// it was queued with).
    fn root_front(&mut self, slot: usize) -> Option<u64> {
        let q = &mut self.queues.get_mut(slot)?.by_root_span;
        while let Some(&(id, tag)) = q.front() {
            let current = self
                .traces
                .get(&id)
                .filter(|e| e.home as usize == slot)
                .map(TraceEntry::root_deadline)
                .filter(|&d| d != 0 && d as u32 == tag);
            if current.is_some() {
                return current;
            }
            q.pop_front();
        }
        None
    }

    /// Whether the trace is buffered here.
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.traces.get(trace_id).is_some()
    }

    /// Moves every trace due by its partition's stream time (`clock`, `None` while a
    /// partition has none yet) into `out`, oldest first per partition.
    pub fn take_due(&mut self, clock: impl Fn(u32) -> Option<u64>, out: &mut Vec<TraceEntry>) {
        for slot in 0..self.queues.len() {
            let Some(now) = clock(slot as u32) else {
                continue;
            };
            while self.root_front(slot).is_some_and(|d| d <= now) {
                if let Some((id, _)) = self.queues[slot].by_root_span.pop_front() {
                    out.extend(self.remove(&id));
                }
            }
            while self.first_front(slot).is_some_and(|d| d <= now) {
                if let Some(pos) = self.queues[slot].pop() {
                    out.extend(self.remove_at(pos));
                }
            }
        }
    }

    /// Forgets every trace undecided, e.g. at shutdown (their input is not committed,
    /// so it is read again).
    pub fn clear(&mut self) {
        self.queues.clear();
        self.over_limit.clear();
        self.spans = 0;
        self.held = 0;
        self.traces.clear();
    }

    /// Forgets traces whose every pin is on a revoked partition assignment: the new
    /// owner of the partition re-reads them from the committed offset. A trace that
    /// also has spans from another partition stays, due by that partition's stream
    /// time (`clock`) from now on. Returns how many traces were released.
    pub fn release_partition(
        &mut self,
        slot: u32,
        epoch: u32,
        clock: impl Fn(u32) -> Option<u64>,
    ) -> usize {
        let ids: Vec<TraceId> = self
            .traces
            .iter()
            .filter(|e| e.chunks().all(|c| c.slot == slot && c.epoch == epoch))
            .map(|e| e.summary.trace_id)
            .collect();
        for id in &ids {
            self.remove(id);
        }
        if let Some(q) = self.queues.get_mut(slot as usize) {
            *q = Queues::default();
        }
        let wait = self.decision_wait.as_millis() as u64;
        // Every trace still homed here gets a place again: in another partition's
        // queue when it has spans from one, else (spans of this partition from
        // another assignment, which a revoke releases first) back here.
        let mut requeued = Vec::new();
        for (pos, e) in self.traces.iter_mut_at().filter(|(_, e)| e.home == slot) {
            let other = e.chunks().map(|c| c.slot).find(|&c| c != slot);
            if let Some(other) = other {
                // The new home's stream time is at least every deadline already
                // queued there minus the wait, so its queue stays in deadline order.
                e.home = other;
                e.deadline = clock(e.home).unwrap_or(0).saturating_add(wait);
                e.root_lead = 0;
            }
            requeued.push((e.home != slot, e.deadline, pos));
        }
        // Those staying here first, in deadline order: the queue was emptied.
        requeued.sort_unstable();
        for (_, _, pos) in requeued {
            let home = self.traces.at(pos).home;
            let place = self.queues_of(home).push(pos);
            self.traces.at_mut(pos).place = place;
        }
        ids.len()
    }

    /// Takes the trace `id` out (decided early: its queue place is left vacant).
    fn remove(&mut self, id: &TraceId) -> Option<TraceEntry> {
        let taken = self.traces.remove(id)?;
        Some(self.account(taken))
    }

    /// Takes the trace at store position `pos` out.
    fn remove_at(&mut self, pos: u32) -> Option<TraceEntry> {
        let taken = self.traces.remove_at(pos)?;
        Some(self.account(taken))
    }

    /// Books a record's removal: its queue place, if it still has one, is left
    /// vacant; the record the store moved into its position (`moved`) gets that
    /// position in its own queue place; the counts go down.
    fn account(&mut self, (e, moved): (TraceEntry, Option<u32>)) -> TraceEntry {
        let gone = self.traces.len() as u32; // where the moved record was
        if let Some(p) = self
            .queues
            .get_mut(e.home as usize)
            .and_then(|q| q.at(e.place))
        {
            // A place already taken from the front is out of the queue's range;
            // one in range is this record's (each record has its own).
            *p = VACANT;
        }
        if let Some(pos) = moved {
            let m = self.traces.at(pos);
            let (home, place) = (m.home as usize, m.place);
            if let Some(p) = self.queues.get_mut(home).and_then(|q| q.at(place)) {
                debug_assert_eq!(*p, gone, "a queue place follows its record");
                *p = pos;
            }
        }
        self.spans -= e.summary.span_count as usize;
        self.held -= e.held_bytes();
        e
    }

    /// One more than the highest partition slot with a due queue here.
    pub fn partition_slots(&self) -> usize {
        self.queues.len()
    }

    /// Traces buffered.
    pub fn traces(&self) -> usize {
        self.traces.len()
    }

    /// Spans buffered.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Bytes held: the spans' copies plus book-keeping, the records, their index and
    /// the queues counted by their allocated capacity.
    pub fn bytes(&self) -> usize {
        // hashbrown allocates a power of two of buckets, at most 7/8 of them used.
        self.held
            + self.traces.bytes()
            + self
                .queues
                .iter()
                .map(|q| {
                    q.by_first_span.capacity() * size_of::<u32>()
                        + q.by_root_span.capacity() * size_of::<RootPlace>()
                })
                .sum::<usize>()
            + self.queues.capacity() * size_of::<Queues>()
            + self.over_limit.capacity() * size_of::<TraceId>()
            + self.partitions.capacity() * size_of::<i32>()
    }
}

impl TraceLimits {
    fn reached(&self, t: &TraceSummary) -> bool {
        t.span_count >= self.max_spans || u64::from(t.span_bytes) >= self.max_bytes
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

mod store;
#[cfg(test)]
mod tests;
