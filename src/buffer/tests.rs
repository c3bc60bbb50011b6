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

/// A stream time well after the epoch.
const T0: u64 = 1_700_000_000_000;

/// A clock at `ms` for every partition.
fn now(ms: u64) -> impl Fn(u32) -> Option<u64> {
    move |_| Some(ms)
}

fn pin(offset: i64) -> Pin {
    Pin {
        slot: 0,
        epoch: 1,
        offset,
        partition: 0,
    }
}

/// Buffers one span of trace `trace` (the root when `root`) from the message at
/// `offset` of partition 0, read at stream time `at`.
fn insert_one(s: &mut Shard, trace: u8, root: bool, offset: i64, at: u64) {
    s.insert(
        TraceId([trace; 16]),
        &message(),
        &[span(trace, root)],
        pin(offset),
        at,
    );
}

#[test]
fn traces_are_due_after_decision_wait_in_order() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    insert_one(&mut s, 1, false, 0, T0);
    insert_one(&mut s, 2, false, 1, T0 + 1000);
    insert_one(&mut s, 1, true, 2, T0 + 5000);
    assert_eq!((s.traces(), s.spans()), (2, 3));
    let mut out = Vec::new();
    s.take_due(now(T0 + 9_999), &mut out);
    assert!(out.is_empty());
    s.take_due(now(T0 + 10000), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].summary.trace_id, TraceId([1; 16]));
    assert_eq!(out[0].spans().len(), 2);
    assert_eq!(s.pins(&out[0]), vec![pin(0), pin(2)]);
    s.take_due(now(T0 + 11000), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (s.traces(), s.spans(), s.held),
        (0, 0, 0),
        "only the table's allocation is left"
    );
}

#[test]
fn root_span_shortens_the_wait() {
    let mut s = Shard::new(
        Duration::from_secs(30),
        Some(Duration::from_secs(2)),
        TraceLimits::default(),
    );
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), T0);
    s.insert(
        TraceId([2; 16]),
        &message(),
        &[span(2, true)],
        pin(1),
        T0 + 1000,
    );
    let mut out = Vec::new();
    s.take_due(now(T0 + 3000), &mut out);
    assert_eq!(out.len(), 1, "only the trace with a root is due");
    assert_eq!(out[0].summary.trace_id, TraceId([2; 16]));
    s.take_due(now(T0 + 30000), &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn a_new_entry_for_a_decided_id_gets_its_own_deadline() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), T0);
    let mut out = Vec::new();
    s.take_due(now(T0 + 10000), &mut out);
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false)],
        pin(1),
        T0 + 12000,
    );
    s.take_due(now(T0 + 13000), &mut out);
    assert_eq!(out.len(), 1, "the second entry is not due yet");
    s.take_due(now(T0 + 22000), &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn releasing_a_partition_forgets_only_its_traces() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(0), T0);
    let other = Pin {
        slot: 1,
        epoch: 1,
        offset: 0,
        partition: 0,
    };
    s.insert(TraceId([2; 16]), &message(), &[span(2, false)], other, T0);
    assert_eq!(s.release_partition(0, 1, now(T0)), 1);
    assert!(s.contains(&TraceId([2; 16])));
    assert!(!s.contains(&TraceId([1; 16])));
}

#[test]
fn a_trace_reaching_a_limit_is_taken_at_once() {
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
        T0,
    );
    let mut out = Vec::new();
    s.take_over_limit(&mut out);
    assert!(out.is_empty());
    s.insert(TraceId([1; 16]), &message(), &[span(1, false)], pin(1), T0);
    s.take_over_limit(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].spans().len(), 3);
    assert_eq!((s.traces(), s.held), (0, 0));
}

#[test]
fn a_place_left_by_a_trace_decided_early_neither_decides_nor_holds_up_others() {
    let limits = TraceLimits {
        max_spans: 2,
        max_bytes: u64::MAX,
    };
    let mut s = Shard::new(Duration::from_secs(10), None, limits);
    let two = [span(1, false), span(1, false)];
    s.insert(TraceId([1; 16]), &message(), &two, pin(0), T0);
    let mut out = Vec::new();
    s.take_over_limit(&mut out);
    assert_eq!(out.len(), 1, "decided early; its place in the queue stays");
    insert_one(&mut s, 2, false, 1, T0 + 1000);
    // The same id again: a new trace, due at T0 + 15 s, behind trace 2 in the queue.
    insert_one(&mut s, 1, false, 2, T0 + 5000);
    s.take_due(now(T0 + 11_000), &mut out);
    let ids: Vec<_> = out.iter().map(|e| e.summary.trace_id).collect();
    assert_eq!(ids, vec![TraceId([1; 16]), TraceId([2; 16])]);
    s.take_due(now(T0 + 14_999), &mut out);
    assert_eq!(out.len(), 2);
    s.take_due(now(T0 + 15_000), &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].spans().len(), 1);
}

#[test]
fn oldest_traces_can_be_taken_early() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    for i in 1..=5u8 {
        s.insert(
            TraceId([i; 16]),
            &message(),
            &[span(i, false)],
            pin(i.into()),
            T0 + u64::from(i),
        );
    }
    let mut out = Vec::new();
    s.take_oldest(2, now(T0), &mut out);
    let ids: Vec<_> = out.iter().map(|e| e.summary.trace_id).collect();
    assert_eq!(ids, vec![TraceId([1; 16]), TraceId([2; 16])]);
    assert_eq!(s.traces(), 3);
    assert!(s.bytes() > 3 * 100, "the spans' copies and book-keeping");
}

#[test]
fn spans_are_copied_out_of_their_message_exactly() {
    // The record's layout, which `cargo bench --bench memory` measures: the summary
    // 48 bytes, the first chunk 48, the later chunks' pointer 8, first arrival,
    // home, queue place and root lead 16, the deadline 8.
    assert_eq!(size_of::<TraceSummary>(), 48);
    assert_eq!(size_of::<Chunk>(), 48);
    assert_eq!(size_of::<TraceEntry>(), 128);
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    let spans = [span(1, false), span(1, true)];
    s.insert(TraceId([1; 16]), &message(), &spans, pin(0), T0);
    let held = s.bytes();
    let mut out = Vec::new();
    s.take_due(now(T0 + 10000), &mut out);
    let got = out[0].spans();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|b| b.bytes() == [7u8; 100]));
    // The index's four buckets of a position and a control byte, the first page's
    // first four records, the page list, the due queue's first four places, the
    // slots' partitions, and the one allocation of the chunk (inline in the record)
    // holding two 6-byte records and the two 100-byte bodies (its frame is
    // referenced inline): nothing else.
    let table = 4 * 5
        + 4 * size_of::<TraceEntry>()
        + 4 * size_of::<Vec<TraceEntry>>()
        + 4 * size_of::<u32>()
        + s.queues.capacity() * size_of::<Queues>()
        + 4 * size_of::<i32>();
    let chunk = 2 * 6 + 200 + 16;
    assert_eq!(held, table + chunk);
}

fn pin_on(slot: u32, offset: i64) -> Pin {
    Pin {
        slot,
        epoch: 1,
        offset,
        partition: slot as i32,
    }
}

#[test]
fn each_trace_is_due_by_its_own_partitions_stream_time() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false)],
        pin_on(0, 0),
        T0,
    );
    s.insert(
        TraceId([2; 16]),
        &message(),
        &[span(2, false)],
        pin_on(1, 0),
        T0,
    );
    let mut out = Vec::new();
    // Partition 0 has read 20 s further; partition 1 stands still (its broker is
    // down, say), and partition 2 has no clock yet.
    let clock = |slot: u32| match slot {
        0 => Some(T0 + 20_000),
        1 => Some(T0 + 9_999),
        _ => None,
    };
    s.take_due(clock, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].summary.trace_id, TraceId([1; 16]));
    s.take_due(now(T0 + 10_000), &mut out);
    assert_eq!(out.len(), 2, "partition 1 caught up");
}

#[test]
fn a_trace_left_on_a_revoked_partition_follows_its_other_partition() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false)],
        pin_on(0, 0),
        T0,
    );
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false)],
        pin_on(1, 0),
        T0 + 500,
    );
    assert_eq!(
        s.release_partition(0, 1, now(T0 + 3_000)),
        0,
        "it has spans elsewhere"
    );
    let mut out = Vec::new();
    s.take_due(now(T0 + 12_999), &mut out);
    assert!(
        out.is_empty(),
        "due a full wait after the move, by partition 1"
    );
    s.take_due(|slot| (slot == 1).then_some(T0 + 13_000), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn memory_pressure_takes_the_traces_closest_to_their_deadline() {
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(
        TraceId([1; 16]),
        &message(),
        &[span(1, false)],
        pin_on(0, 0),
        T0,
    );
    s.insert(
        TraceId([2; 16]),
        &message(),
        &[span(2, false)],
        pin_on(1, 0),
        T0 + 5_000,
    );
    let mut out = Vec::new();
    // Partition 1 has read 9 s on since its trace arrived, partition 0 only 1 s.
    s.take_oldest(
        1,
        |slot| Some(if slot == 0 { T0 + 1_000 } else { T0 + 14_000 }),
        &mut out,
    );
    assert_eq!(out[0].summary.trace_id, TraceId([2; 16]));
}

/// Spans of one trace and message under several framings keep each its own, and
/// their bodies, in arrival order (the first framing is held inline, the others in
/// a list of their own).
#[test]
fn spans_under_several_framings_keep_their_own() {
    let frames: Vec<Arc<ScopeFrame>> = (0..3u8)
        .map(|i| Arc::new(ScopeFrame::new(Bytes::from(vec![i; 4]))))
        .collect();
    let body: Vec<u8> = (0..60u8).collect();
    let m = Message::new(Bytes::from(body.clone()), frames.clone());
    let id = TraceId([5; 16]);
    // (start, len, frame): bodies of different sizes, framings 1, 0, 2, 1.
    let layout = [(0, 10, 1u32), (10, 20, 0), (30, 5, 2), (35, 25, 1)];
    let spans: Vec<Span> = layout
        .iter()
        .map(|&(start, len, frame)| m.span_at(id, start, len, frame).expect("in the message"))
        .collect();
    let mut s = Shard::new(Duration::from_secs(10), None, TraceLimits::default());
    s.insert(id, &m, &spans, pin(0), T0);
    let mut out = Vec::new();
    s.take_due(now(T0 + 10_000), &mut out);
    let got = out[0].spans();
    assert_eq!(got.len(), layout.len());
    for (g, &(start, len, frame)) in got.iter().zip(&layout) {
        assert_eq!(g.bytes(), &body[start..start + len]);
        assert!(std::ptr::eq(g.frame(), &*frames[frame as usize]));
    }
}

/// What a shard must do, traced by a plain model: every trace due once its home
/// partition's stream time reaches its deadline (or its root deadline), exactly
/// once, whatever the order of inserts, early decisions, moves and revokes.
mod model {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const WAIT: u64 = 10_000;
    const AFTER_ROOT: u64 = 4_000;
    const MAX_SPANS: usize = 6;
    const SLOTS: u32 = 3;

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            id: u8,
            slot: u32,
            n: usize,
            root: bool,
        },
        Advance {
            slot: u32,
            ms: u64,
        },
        TakeDue,
        TakeOverLimit,
        TakeOldest {
            n: usize,
        },
        Release {
            slot: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..24, 0..SLOTS, 1usize..4, any::<bool>())
                .prop_map(|(id, slot, n, root)| Op::Insert { id, slot, n, root }),
            4 => (0..SLOTS, 0u64..6_000).prop_map(|(slot, ms)| Op::Advance { slot, ms }),
            2 => Just(Op::TakeDue),
            1 => Just(Op::TakeOverLimit),
            1 => (0usize..4).prop_map(|n| Op::TakeOldest { n }),
            1 => (0..SLOTS).prop_map(|slot| Op::Release { slot }),
        ]
    }

    #[derive(Debug)]
    struct Trace {
        home: u32,
        deadline: u64,
        root: u64,
        spans: usize,
        slots: Vec<u32>,
    }

    fn run(ops: &[Op]) {
        let limits = TraceLimits {
            max_spans: MAX_SPANS as u32,
            max_bytes: u64::MAX,
        };
        let mut s = Shard::new(
            Duration::from_millis(WAIT),
            Some(Duration::from_millis(AFTER_ROOT)),
            limits,
        );
        let mut model: HashMap<u8, Trace> = HashMap::new();
        let mut over: Vec<u8> = Vec::new();
        let mut t = [T0; SLOTS as usize];
        let mut offset = 0i64;
        let mut out = Vec::new();
        let id_of = |e: &TraceEntry| e.summary.trace_id.0[0];
        for op in ops {
            out.clear();
            match *op {
                Op::Insert { id, slot, n, root } => {
                    let at = t[slot as usize];
                    let spans: Vec<Span> = (0..n).map(|i| span(id, root && i == 0)).collect();
                    offset += 1;
                    s.insert(
                        TraceId([id; 16]),
                        &message(),
                        &spans,
                        pin_on(slot, offset),
                        at,
                    );
                    let m = model.entry(id).or_insert(Trace {
                        home: slot,
                        deadline: at + WAIT,
                        root: 0,
                        spans: 0,
                        slots: Vec::new(),
                    });
                    let before = m.spans;
                    m.spans += n;
                    m.slots.push(slot);
                    if root && m.root == 0 && slot == m.home && at + AFTER_ROOT < m.deadline {
                        m.root = at + AFTER_ROOT;
                    }
                    if before < MAX_SPANS && m.spans >= MAX_SPANS {
                        over.push(id);
                    }
                }
                Op::Advance { slot, ms } => t[slot as usize] += ms,
                Op::TakeDue => {
                    s.take_due(|slot| t.get(slot as usize).copied(), &mut out);
                    let mut want: Vec<u8> = model
                        .iter()
                        .filter(|(_, m)| {
                            let now = t[m.home as usize];
                            m.deadline <= now || (m.root != 0 && m.root <= now)
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    let mut got: Vec<u8> = out.iter().map(id_of).collect();
                    want.sort_unstable();
                    got.sort_unstable();
                    assert_eq!(got, want, "due after {op:?}");
                    for id in got {
                        model.remove(&id);
                    }
                }
                Op::TakeOverLimit => {
                    s.take_over_limit(&mut out);
                    let mut want: Vec<u8> = std::mem::take(&mut over)
                        .into_iter()
                        .filter(|id| model.remove(id).is_some())
                        .collect();
                    let mut got: Vec<u8> = out.iter().map(id_of).collect();
                    want.sort_unstable();
                    got.sort_unstable();
                    assert_eq!(got, want);
                }
                Op::TakeOldest { n } => {
                    s.take_oldest(n, |slot| t.get(slot as usize).copied(), &mut out);
                    let mut lefts: Vec<u64> = model
                        .values()
                        .map(|m| m.deadline.saturating_sub(t[m.home as usize]))
                        .collect();
                    lefts.sort_unstable();
                    lefts.truncate(n);
                    let mut got = Vec::new();
                    for e in &out {
                        let m = model.remove(&id_of(e)).expect("taken while buffered");
                        got.push(m.deadline.saturating_sub(t[m.home as usize]));
                    }
                    got.sort_unstable();
                    assert_eq!(got, lefts, "the closest to their deadlines");
                }
                Op::Release { slot } => {
                    let released = s.release_partition(slot, 1, |p| t.get(p as usize).copied());
                    let before = model.len();
                    model.retain(|_, m| m.slots.iter().any(|&c| c != slot));
                    assert_eq!(released, before - model.len());
                    for m in model.values_mut().filter(|m| m.home == slot) {
                        if let Some(&other) = m.slots.iter().find(|&&c| c != slot) {
                            m.home = other;
                            m.deadline = t[other as usize] + WAIT;
                            m.root = 0;
                        }
                    }
                }
            }
            assert_eq!(s.traces(), model.len(), "after {op:?}");
            assert_eq!(s.spans(), model.values().map(|m| m.spans).sum::<usize>());
            for id in model.keys() {
                assert!(
                    s.contains(&TraceId([*id; 16])),
                    "trace {id} lost after {op:?}"
                );
            }
        }
        // Everything left comes out once, and nothing is held after.
        out.clear();
        s.take_due(|_| Some(u64::MAX / 2), &mut out);
        let mut got: Vec<u8> = out.iter().map(id_of).collect();
        let mut want: Vec<u8> = model.keys().copied().collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "the rest, once each");
        assert_eq!((s.traces(), s.spans(), s.held), (0, 0, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_trace_is_due_once_at_its_deadline(ops in proptest::collection::vec(op(), 0..160)) {
            run(&ops);
        }
    }
}

/// A chunk stores no span count: it is found from the records and the bodies'
/// length, for any number of spans and any body lengths, empty ones included.
#[test]
fn a_chunk_finds_its_span_count_from_its_records() {
    let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let msg = Message::new(
        Bytes::from(payload.clone()),
        vec![Arc::new(ScopeFrame::new(Bytes::new()))],
    );
    let lengths = [0usize, 1, 5, 6, 7, 12, 0, 100, 255, 3];
    for n in 0..=lengths.len() {
        let mut at = 0;
        let spans: Vec<Span> = lengths[..n]
            .iter()
            .map(|&len| {
                let s = msg
                    .span_at(TraceId([1; 16]), at, len, 0)
                    .expect("in the message");
                at += len;
                s
            })
            .collect();
        let chunk = Chunk::new(&msg, &spans, pin(0));
        assert_eq!(chunk.count(), n);
        let bodies: Vec<&[u8]> = chunk.spans().map(|s| s.bytes).collect();
        let mut at = 0;
        let want: Vec<&[u8]> = lengths[..n]
            .iter()
            .map(|&len| {
                at += len;
                &payload[at - len..at]
            })
            .collect();
        assert_eq!(bodies, want, "{n} spans");
    }
}
