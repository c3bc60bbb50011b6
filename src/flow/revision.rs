//! What revising a drop needs: what a dropped trace was judged on ([`Evidence`]),
//! where its input lies ([`Pieces`]), and the re-read of those pieces that a
//! promotion asks of the source ([`Reread`], answered by [`Reread::reply`]).
//!
//! A drop is a guess that the trace was complete. When spans of a dropped trace
//! come later, its shard judges the merged evidence again with the policies'
//! settled votes (`decide::Decider::revise`); if a policy would now keep it, the
//! trace's earlier pieces are read again from the input partition by offset and the
//! whole trace goes out, promoted.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::summary::TraceSummary;
use crate::codec::{Message, Span, TraceId};

const ERROR: u8 = 1;
const OK: u8 = 2;
const UNSET: u8 = 4;
const SAMPLED_FLAG: u8 = 8;

/// The part of a [`TraceSummary`] that settled policies read (span count, duration
/// on one clock, attribute hits, status and sampled flags), kept for a dropped
/// trace so its late spans are judged with it: 24 bytes instead of a summary's 56.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Spans seen.
    pub span_count: u32,
    /// Duration on one clock in ms (`u32::MAX`: unknown).
    pub one_clock_ms: u32,
    /// Attribute predicate bits hit.
    pub attr_hits: u64,
    /// Status and sampled flags (bits: error 1, ok 2, unset 4, sampled 8).
    pub flags: u8,
}

impl Evidence {
    /// What `summary` holds that settled policies read.
    pub fn of(summary: &TraceSummary) -> Self {
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        Evidence {
            span_count: summary.span_count,
            one_clock_ms: summary.one_clock_ms().unwrap_or(u32::MAX),
            attr_hits: summary.attr_hits,
            flags: flag(summary.has_error, ERROR)
                | flag(summary.has_ok, OK)
                | flag(summary.has_unset, UNSET)
                | flag(summary.sampled_flag, SAMPLED_FLAG),
        }
    }

    /// Adds what later spans showed: counts add up, hits and flags accumulate, the
    /// longer duration wins (a late root span's own, or a longer window; windows of
    /// one host split over the pieces are not joined, so a duration may be
    /// underestimated, never over).
    pub fn merge(&mut self, late: &Evidence) {
        self.span_count = self.span_count.saturating_add(late.span_count);
        self.one_clock_ms = match (self.one_clock_ms, late.one_clock_ms) {
            (u32::MAX, b) => b,
            (a, u32::MAX) => a,
            (a, b) => a.max(b),
        };
        self.attr_hits |= late.attr_hits;
        self.flags |= late.flags;
    }

    /// A summary of trace `id` with this evidence, for the policies.
    pub fn summary(&self, id: TraceId) -> TraceSummary {
        let mut s = TraceSummary::new(id);
        s.span_count = self.span_count;
        if self.one_clock_ms != u32::MAX {
            s.set_one_clock_ns(u64::from(self.one_clock_ms) * 1_000_000);
        }
        s.attr_hits = self.attr_hits;
        s.has_error = self.flags & ERROR != 0;
        s.has_ok = self.flags & OK != 0;
        s.has_unset = self.flags & UNSET != 0;
        s.sampled_flag = self.flags & SAMPLED_FLAG != 0;
        s
    }
}

/// Where a trace's input lies: the offsets of the first and last input messages
/// holding its spans in one partition (the partition of its first message; traces
/// keyed by id have all their spans there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pieces {
    /// The input topic.
    pub topic: Arc<str>,
    /// The input partition.
    pub partition: i32,
    /// Offset of the first message with spans of the trace.
    pub first: i64,
    /// Offset of the last message with spans of the trace (inclusive).
    pub last: i64,
}

impl Pieces {
    /// Where the spans pinned by `pins` lie in `topic`: the range of their offsets
    /// in the first pin's partition. `None` without pins.
    pub fn of(topic: &Arc<str>, pins: &[super::Pin]) -> Option<Pieces> {
        let first = pins.first()?;
        let mut pieces = Pieces {
            topic: Arc::clone(topic),
            partition: first.partition,
            first: first.offset,
            last: first.offset,
        };
        for p in pins {
            pieces.extend(p.partition, p.offset);
        }
        Some(pieces)
    }

    /// Extends the range to a later message of the same partition holding spans of
    /// the trace (a message elsewhere is not covered).
    pub fn extend(&mut self, partition: i32, offset: i64) {
        if partition == self.partition {
            self.first = self.first.min(offset);
            self.last = self.last.max(offset);
        }
    }
}

/// A request to read a dropped trace's earlier pieces again, for its promotion.
#[derive(Debug)]
pub struct Reread {
    /// The trace.
    pub trace_id: TraceId,
    /// Where its earlier pieces lie.
    pub pieces: Pieces,
    /// Where the answer goes (the asking shard worker).
    pub reply: mpsc::UnboundedSender<Found>,
}

/// The answer to a [`Reread`]: the trace's spans found in its range.
#[derive(Debug)]
pub struct Found {
    /// The trace.
    pub trace_id: TraceId,
    /// Messages holding its spans, by offset, each with those spans (in offset
    /// order).
    pub found: Vec<(i64, Message, Vec<Span>)>,
    /// Why some pieces could not be read, if so: the trace goes out with what was
    /// found, saying so.
    pub incomplete: Option<Incomplete>,
    /// Bytes of the messages kept in `found`, charged to the memory budget until
    /// the trace is encoded.
    pub charge: crate::budget::Charge,
}

/// Why a promoted trace's earlier pieces could not all be read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// The `reason` label of `tailsift_promotions_incomplete_total`: `retention`,
    /// `too_large` or `unreadable`.
    pub reason: &'static str,
    /// What happened, for the `tailsift.incomplete` header and the log.
    pub detail: String,
}

/// Where re-reads are asked for.
pub type Rereads = mpsc::UnboundedSender<Reread>;
