//! What the buffer knows about a trace and policies read.

use crate::codec::{Span, StatusCode, TraceId};

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
    /// Earliest span start (ns since epoch).
    pub min_start_ns: u64,
    /// Latest span end (ns since epoch).
    pub max_end_ns: u64,
    /// The trace's duration on one clock (see [`TraceSummary::one_clock_ns`]);
    /// `u64::MAX` while unknown: 8 bytes in every buffered trace, not an `Option`'s 16.
    one_clock_ns: u64,
    /// Spans with status ERROR.
    pub error_spans: u32,
    /// Spans with status OK.
    pub ok_spans: u32,
    /// Spans with status UNSET.
    pub unset_spans: u32,
    /// Whether some span carries the W3C sampled flag.
    pub sampled_flag: bool,
    /// The `dynamic` policy's key: the root span's, else the first span's (0: none).
    pub key_hash: u64,
    /// Bits of the attribute predicates (see `codec::AttrMatchers`) that some span or
    /// its resource satisfied.
    pub attr_hits: u64,
}

impl TraceSummary {
    /// An empty summary for `trace_id`.
    pub fn new(trace_id: TraceId) -> Self {
        TraceSummary {
            trace_id,
            span_count: 0,
            span_bytes: 0,
            min_start_ns: u64::MAX,
            max_end_ns: 0,
            one_clock_ns: u64::MAX,
            error_spans: 0,
            ok_spans: 0,
            unset_spans: 0,
            sampled_flag: false,
            key_hash: 0,
            attr_hits: 0,
        }
    }

    /// Folds one span in.
    pub fn add(&mut self, span: &Span) {
        self.span_count = self.span_count.saturating_add(1);
        self.span_bytes = self
            .span_bytes
            .saturating_add(u32::try_from(span.len()).unwrap_or(u32::MAX));
        self.min_start_ns = self.min_start_ns.min(span.start_ns);
        self.max_end_ns = self.max_end_ns.max(span.end_ns);
        if span.is_root {
            self.set_one_clock_ns(span.end_ns.saturating_sub(span.start_ns));
        }
        match span.status {
            StatusCode::Error => self.error_spans += 1,
            StatusCode::Ok => self.ok_spans += 1,
            StatusCode::Unset => self.unset_spans += 1,
        }
        self.sampled_flag |= span.sampled_flag;
        if span.key_hash != 0 && (span.is_root || self.key_hash == 0) {
            self.key_hash = span.key_hash;
        }
        self.attr_hits |= span.hits;
    }

    /// The trace's duration as latency policies see it, robust to clock skew between
    /// hosts: the root span's own duration when the root has arrived; otherwise the
    /// longest window a single host saw (`max(end) - min(start)` over the spans of one
    /// resource); otherwise (not computed) the span window over all spans, as the
    /// OTel processor uses.
    pub fn duration_ns(&self) -> u64 {
        self.one_clock_ns()
            .unwrap_or_else(|| self.max_end_ns.saturating_sub(self.min_start_ns))
    }

    /// The trace's duration on one clock: the root span's own duration once the root
    /// has arrived; at decision, without a root, the longest window one host saw (see
    /// `buffer::TraceEntry::longest_host_window_ns`). `None` until one is known.
    pub fn one_clock_ns(&self) -> Option<u64> {
        (self.one_clock_ns != u64::MAX).then_some(self.one_clock_ns)
    }

    /// Sets the duration on one clock (a duration of `u64::MAX` ns, 584 years, is
    /// kept as one nanosecond less).
    pub fn set_one_clock_ns(&mut self, ns: u64) {
        self.one_clock_ns = ns.min(u64::MAX - 1);
    }

    /// Whether some span or resource satisfied the attribute predicate `bit`.
    pub fn attr_hit(&self, bit: u8) -> bool {
        self.attr_hits & (1u64 << bit) != 0
    }
}
