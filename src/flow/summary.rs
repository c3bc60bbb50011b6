//! What the buffer knows about a trace and policies read.

use crate::codec::{Span, StatusCode, TraceId};

const NS_PER_MS: u64 = 1_000_000;

/// The longest duration on one clock a summary holds, in milliseconds (49.7 days):
/// `u32::MAX` means none is known.
pub const MAX_ONE_CLOCK_MS: u32 = u32::MAX - 1;

/// The running summary of a trace's spans: everything the policies evaluate.
#[derive(Debug, Clone)]
pub struct TraceSummary {
    /// The trace.
    pub trace_id: TraceId,
    /// Spans received.
    pub span_count: u32,
    /// Encoded bytes of the spans received (saturating: a trace is never near 4 GiB,
    /// the memory budget decides it long before; 4 bytes in every buffered trace).
    pub span_bytes: u32,
    /// The `dynamic` policy's key: the root span's, else the first span's (0: none).
    pub key_hash: u64,
    /// Bits of the attribute predicates (see `codec::AttrMatchers`) that some span or
    /// its resource satisfied.
    pub attr_hits: u64,
    /// The trace's duration on one clock (see [`TraceSummary::one_clock_ms`]), in whole
    /// milliseconds, which is all latency policies compare; `u32::MAX` while unknown.
    /// 4 bytes in every buffered trace, not an `Option<u64>`'s 16.
    one_clock_ms: u32,
    /// Whether some span has status ERROR (policies ask whether, never how many: a
    /// flag, not a count, in every buffered trace).
    pub has_error: bool,
    /// Whether some span has status OK.
    pub has_ok: bool,
    /// Whether some span has status UNSET.
    pub has_unset: bool,
    /// Whether some span carries the W3C sampled flag.
    pub sampled_flag: bool,
}

impl TraceSummary {
    /// An empty summary for `trace_id`.
    pub fn new(trace_id: TraceId) -> Self {
        TraceSummary {
            trace_id,
            span_count: 0,
            span_bytes: 0,
            key_hash: 0,
            attr_hits: 0,
            one_clock_ms: u32::MAX,
            has_error: false,
            has_ok: false,
            has_unset: false,
            sampled_flag: false,
        }
    }

    /// Folds one span in.
    pub fn add(&mut self, span: &Span) {
        self.span_count = self.span_count.saturating_add(1);
        self.span_bytes = self
            .span_bytes
            .saturating_add(u32::try_from(span.len()).unwrap_or(u32::MAX));
        if span.is_root {
            self.set_one_clock_ns(span.end_ns.saturating_sub(span.start_ns));
        }
        match span.status {
            StatusCode::Error => self.has_error = true,
            StatusCode::Ok => self.has_ok = true,
            StatusCode::Unset => self.has_unset = true,
        }
        self.sampled_flag |= span.sampled_flag;
        if span.key_hash != 0 && (span.is_root || self.key_hash == 0) {
            self.key_hash = span.key_hash;
        }
        self.attr_hits |= span.hits;
    }

    /// The trace's duration as latency policies see it, in whole milliseconds, robust
    /// to clock skew between hosts: the root span's own duration when the root has
    /// arrived; otherwise the longest window a single host saw (`max(end) - min(start)`
    /// over the spans of one resource), which `decide::Decider::decide_entry` measures
    /// from the spans before any latency policy reads it; 0 while neither is known.
    /// (No span window across hosts is kept: 16 bytes in every buffered trace that
    /// no decision read.)
    pub fn duration_ms(&self) -> u64 {
        self.one_clock_ms().map_or(0, u64::from)
    }

    /// The trace's duration on one clock, in whole milliseconds: the root span's own
    /// duration once the root has arrived; at decision, without a root, the longest
    /// window one host saw (see `buffer::TraceEntry::longest_host_window_ns`). `None`
    /// until one is known.
    pub fn one_clock_ms(&self) -> Option<u32> {
        (self.one_clock_ms != u32::MAX).then_some(self.one_clock_ms)
    }

    /// Sets the duration on one clock from nanoseconds, kept in whole milliseconds (a
    /// duration of 49.7 days or more is kept as 49.7 days: latency thresholds are
    /// refused above that, see `policy::LatencyConfig`).
    pub fn set_one_clock_ns(&mut self, ns: u64) {
        self.one_clock_ms =
            u32::try_from(ns / NS_PER_MS).map_or(MAX_ONE_CLOCK_MS, |ms| ms.min(MAX_ONE_CLOCK_MS));
    }

    /// Whether some span or resource satisfied the attribute predicate `bit`.
    pub fn attr_hit(&self, bit: u8) -> bool {
        self.attr_hits & (1u64 << bit) != 0
    }
}
