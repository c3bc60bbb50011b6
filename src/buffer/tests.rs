use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::codec::{EncodedSpan, ScopeFrame};

/// The message every test span comes from: 100 bytes of body, one frame.
fn message() -> Message {
    Message::new(
        Bytes::from_static(&[7u8; 100]),
        vec![Arc::new(ScopeFrame::new(Bytes::new()))],
    )
}

fn span(trace: u8, root: bool) -> Span {
    let mut s = message()
        .span_at(TraceId([trace; 16]), 0, 100, 0)
        .expect("in the message");
    s.is_root = root;
    s.end_ns = 10;
    s
}

fn pin(offset: i64) -> Pin {
    Pin {
        slot: 0,
        epoch: 1,
        offset,
        partition: 0,
    }
}

#[test]
fn traces_are_due_after_decision_wait_in_order() {
    let t0 = Instant::now();
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), t0);
    s.insert(
        TraceId([2; 16]),
        &message(),
        &[span(2, false)],
        pin(1),
        t0 + Duration::from_secs(1),
    );
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, true)],
        pin(2),
        t0 + Duration::from_secs(5),
    );
    assert_eq!((s.traces(), s.spans()), (2, 3));
    let mut out = Vec::new();
    s.take_due(t0 + Duration::from_millis(9_999), &mut out);
    assert!(out.is_empty());
    s.take_due(t0 + Duration::from_secs(10), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].summary.trace_id, TraceId([1; 16]));
    assert_eq!(out[0].spans().len(), 2);
    assert_eq!(out[0].pins(), vec![pin(0), pin(2)]);
    s.take_due(t0 + Duration::from_secs(11), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (s.traces(), s.spans(), s.held),
        (0, 0, 0),
        "only the table's allocation is left"
    );
}

#[test]
fn root_span_shortens_the_wait() {
    let t0 = Instant::now();
    let mut s = Shard::new(
        Duration::from_secs(30),
        Some(Duration::from_secs(2)),
        TraceLimits::default(),
    );
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), t0);
    s.insert(
        TraceId([2; 16]),
        &message(),
        &[span(2, true)],
        pin(1),
        t0 + Duration::from_secs(1),
    );
    let mut out = Vec::new();
    s.take_due(t0 + Duration::from_secs(3), &mut out);
    assert_eq!(out.len(), 1, "only the trace with a root is due");
    assert_eq!(out[0].summary.trace_id, TraceId([2; 16]));
    s.take_due(t0 + Duration::from_secs(30), &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn a_new_entry_for_a_decided_id_gets_its_own_deadline() {
    let t0 = Instant::now();
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), t0);
    let mut out = Vec::new();
    s.take_due(t0 + Duration::from_secs(10), &mut out);
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false)],
        pin(1),
        t0 + Duration::from_secs(12),
    );
    s.take_due(t0 + Duration::from_secs(13), &mut out);
    assert_eq!(out.len(), 1, "the second entry is not due yet");
    s.take_due(t0 + Duration::from_secs(22), &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn releasing_a_partition_forgets_only_its_traces() {
    let t0 = Instant::now();
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), t0);
    let other = Pin {
        slot: 1,
        epoch: 1,
        offset: 0,
        partition: 0,
    };
    s.insert(TraceId([2; 16]), &message(), &[span(2, false)], other, t0);
    assert_eq!(s.release_partition(0, 1), 1);
    assert!(s.contains(&TraceId([2; 16])));
    assert!(!s.contains(&TraceId([1; 16])));
}

#[test]
fn a_trace_reaching_a_limit_is_taken_at_once() {
    let t0 = Instant::now();
    let limits = TraceLimits {
        max_spans: 3,
        max_bytes: u64::MAX,
    };
    let mut s = Shard::new(Duration::from_secs(10), None, limits);
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false), span(1, false)],
        pin(0),
        t0,
    );
    let mut out = Vec::new();
    s.take_over_limit(&mut out);
    assert!(out.is_empty());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(1), t0);
    s.take_over_limit(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].spans().len(), 3);
    assert_eq!((s.traces(), s.held), (0, 0));
}

#[test]
fn oldest_traces_can_be_taken_early() {
    let t0 = Instant::now();
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    for i in 1..=5u8 {
        s.insert(
            TraceId([i; 16]),
            &message(),
            &[span(i, false)],
            pin(i.into()),
            t0 + Duration::from_millis(i.into()),
        );
    }
    let mut out = Vec::new();
    s.take_oldest(2, &mut out);
    let ids: Vec<_> = out.iter().map(|e| e.summary.trace_id).collect();
    assert_eq!(ids, vec![TraceId([1; 16]), TraceId([2; 16])]);
    assert_eq!(s.traces(), 3);
    assert!(s.bytes() > 3 * 100, "the spans' copies and book-keeping");
}

#[test]
fn spans_are_copied_out_of_their_message_exactly() {
    let t0 = Instant::now();
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    let spans = [span(1, false), span(1, true)];
    s.insert(TraceId([1; 16]), &message(), &spans, pin(0), t0);
    let held = s.bytes();
    let mut out = Vec::new();
    s.take_due(t0 + Duration::from_secs(10), &mut out);
    let got = out[0].spans();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|b| b.bytes() == [7u8; 100]));
    // The table's four buckets, the due queue's first four places, one chunk with
    // the two 100-byte bodies in one allocation, two 8-byte records in another and
    // the one frame reference in a third: nothing else.
    let table = 4 * TABLE_SLOT_BYTES + 4 * QUEUE_SLOT_BYTES;
    let chunk = size_of::<Chunk>() + (200 + 16) + (2 * 8 + 16) + (8 + 16);
    assert_eq!(held, table + chunk);
}
