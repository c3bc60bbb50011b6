//! The shard worker on tokio's paused clock: what it decides, and when, from the
//! messages and stream-time readings it is given, with no broker and no wall clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ShardWorker, WorkerConfig};
use crate::budget::MemoryBudget;
use crate::buffer::TraceLimits;
use crate::clock::StreamClocks;
use crate::codec::StatusCode;
use crate::codec::{Message, ScopeFrame, Span, TraceId};
use crate::config::Config;
use crate::decide::{Generation, LivePolicies};
use crate::flow::{Evidence, Found, Pieces, Pin, Releases, Reread, Restored, ShardMsg, SinkMsg};

/// A stream time well after the epoch.
const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(2);

/// A worker keeping every trace, `decision_wait` 2 s, one shard, exactly-once style
/// revokes; the ends of its channels and its clock table.
struct Parts {
    worker: ShardWorker,
    tx: mpsc::Sender<ShardMsg>,
    out: mpsc::Receiver<SinkMsg>,
    clocks: Arc<StreamClocks>,
    released: mpsc::UnboundedReceiver<Vec<Pin>>,
    /// Where a test reloads the policies.
    live: LivePolicies,
    /// The re-reads the worker asks for (when promotion is on).
    rereads: mpsc::UnboundedReceiver<Reread>,
}

const ALL: &str = "  - {name: all, type: always_sample}\n";

fn config(policies: &str) -> Config {
    Config::from_yaml(&format!(
        "kafka: {{brokers: x, input_topics: [i], output_topic: o}}\npolicies:\n{policies}"
    ))
    .expect("valid")
}

fn parts() -> Parts {
    parts_with(
        ALL,
        TraceLimits::default(),
        MemoryBudget::new(1 << 30, 0.9, 0.8),
    )
}

/// A worker with the policies `policies` (YAML list entries), per-trace `limits` and
/// the memory `budget`.
fn parts_with(policies: &str, limits: TraceLimits, budget: MemoryBudget) -> Parts {
    parts_caching(policies, limits, budget, 1000)
}

/// [`parts_with`], remembering `cache_capacity` decisions.
fn parts_caching(
    policies: &str,
    limits: TraceLimits,
    budget: MemoryBudget,
    cache_capacity: usize,
) -> Parts {
    parts_full(policies, limits, budget, cache_capacity, false)
}

/// [`parts_with`] with promotion on: late spans of a dropped trace are judged again.
fn parts_promoting(policies: &str) -> Parts {
    let budget = MemoryBudget::new(1 << 30, 0.9, 0.8);
    parts_full(policies, TraceLimits::default(), budget, 1000, true)
}

fn parts_full(
    policies: &str,
    limits: TraceLimits,
    budget: MemoryBudget,
    cache_capacity: usize,
    promote: bool,
) -> Parts {
    let live = LivePolicies::new(Generation::build(&config(policies), None).expect("builds"));
    let clocks = Arc::new(StreamClocks::new());
    let wc = WorkerConfig {
        decision_wait: WAIT,
        after_root: None,
        limits,
        cache_capacity,
        max_message_bytes: 1 << 20,
        output_encoding: Default::default(),
        shards: 1,
        record_decisions: false,
        annotate: false,
        skip_reread: false,
        remember_output: false,
        forget_on_revoke: true,
        clocks: Arc::clone(&clocks),
        rereads: None,
    };
    let (reread_tx, rereads) = mpsc::unbounded_channel();
    let wc = WorkerConfig {
        rereads: promote.then_some(reread_tx),
        ..wc
    };
    let (tx, rx) = mpsc::channel(64);
    let (sink, out) = mpsc::channel(256);
    let (releases, released) = Releases::channel();
    let worker = ShardWorker::new(&wc, live.watch(), budget, rx, sink, releases);
    Parts {
        worker,
        tx,
        out,
        clocks,
        released,
        live,
        rereads,
    }
}

/// Every kept trace's id, span count, policy and forced reason, in the order the
/// worker sent them.
fn kept_full(
    out: &mut mpsc::Receiver<SinkMsg>,
) -> Vec<(TraceId, usize, String, Option<&'static str>)> {
    let mut kept = Vec::new();
    while let Ok(m) = out.try_recv() {
        if let SinkMsg::Kept(k) = m {
            kept.push((k.trace_id, k.spans, k.policy.to_string(), k.forced));
        }
    }
    kept
}

/// Hands the worker one message per `(trace, offset)`, of assignment `epoch` of
/// partition slot 0, read at stream time `at`.
async fn read(p: &mut Parts, epoch: u32, spans: &[(u8, i64)], at: u64) {
    for &(t, off) in spans {
        p.worker
            .handle(spans_of(t, 0, epoch, off, at))
            .await
            .expect("sink open");
    }
}

/// Every pin released so far, by offset.
fn released_offsets(released: &mut mpsc::UnboundedReceiver<Vec<Pin>>) -> Vec<i64> {
    let mut out = Vec::new();
    while let Ok(pins) = released.try_recv() {
        out.extend(pins.iter().map(|p| p.offset));
    }
    out.sort_unstable();
    out
}

/// Every kept trace's id and span count, in the order the worker sent them.
fn kept_in(out: &mut mpsc::Receiver<SinkMsg>) -> Vec<(TraceId, usize)> {
    let mut kept = Vec::new();
    while let Ok(m) = out.try_recv() {
        if let SinkMsg::Kept(k) = m {
            kept.push((k.trace_id, k.spans));
        }
    }
    kept
}

/// One input message holding one span of trace `t` (an OTLP span body with just
/// its trace id).
fn spans_of(t: u8, slot: u32, epoch: u32, offset: i64, at: u64) -> ShardMsg {
    span_of_trace(TraceId([t; 16]), slot, epoch, offset, at)
}

/// [`spans_of`] for any trace id.
fn span_of_trace(id: TraceId, slot: u32, epoch: u32, offset: i64, at: u64) -> ShardMsg {
    let mut body = vec![0x0a, 16];
    body.extend_from_slice(&id.0);
    let len = body.len();
    let message = Message::new(
        Bytes::from(body),
        vec![Arc::new(ScopeFrame::new(Bytes::new()))],
    );
    let mut span: Span = message.span_at(id, 0, len, 0).expect("in the message");
    span.end_ns = 10;
    ShardMsg::Spans {
        pin: Pin {
            slot,
            epoch,
            offset,
            partition: 0,
        },
        topic: Arc::from("i"),
        message,
        spans: vec![span],
        at,
        generation: 0,
    }
}

/// A partition given back to this instance is re-read from its committed offset,
/// which lies before the stream time its previous assignment had reached. A trace
/// re-read there must wait for the new assignment's own stream time: judged by the
/// old one, it was due at its first message, and its later spans came out as a
/// second record (a 1 -> 3 -> 1 rescale wrote two traces out in two pieces).
#[tokio::test]
async fn a_partition_given_back_is_judged_by_its_new_stream_time() {
    let Parts {
        mut worker,
        tx,
        mut out,
        clocks,
        ..
    } = parts();
    // Assignment 1 of the partition reads up to T0 + 10 s.
    worker
        .handle(spans_of(9, 0, 1, 900, T0 + 10_000))
        .await
        .expect("sink open");
    clocks.publish(0, 1, T0 + 10_000);
    // Revoked and given back: the first message re-read in assignment 2 (stamped
    // T0 + 5 s) is queued as the worker's tick reads the clocks, which the scanner
    // of assignment 2 enters just after (the race of a real rebalance).
    tx.try_send(ShardMsg::Revoked { slot: 0, epoch: 1 })
        .expect("room");
    tx.try_send(spans_of(1, 0, 2, 500, T0 + 5_000))
        .expect("room");
    worker.on_tick().await.expect("sink open");
    clocks.enter(0, 2);
    clocks.publish(0, 2, T0 + 5_000);
    worker.on_tick().await.expect("sink open");
    worker
        .handle(spans_of(1, 0, 2, 501, T0 + 5_500))
        .await
        .expect("sink open");
    clocks.publish(0, 2, T0 + 5_500);
    worker.on_tick().await.expect("sink open");
    assert!(kept_in(&mut out).is_empty(), "decided before its time");
    // Stream time passes the trace's due time: it is decided, whole.
    worker
        .handle(spans_of(2, 0, 2, 502, T0 + 8_000))
        .await
        .expect("sink open");
    clocks.publish(0, 2, T0 + 8_000);
    worker.on_tick().await.expect("sink open");
    assert_eq!(kept_in(&mut out), vec![(TraceId([1; 16]), 2)]);
}

/// An idle partition's reading moves its traces on time; a reading of another
/// assignment than their spans' never does.
#[tokio::test(start_paused = true)]
async fn traces_are_due_by_their_own_assignments_stream_time() {
    let Parts {
        worker,
        tx,
        mut out,
        clocks,
        ..
    } = parts();
    let running = tokio::spawn(worker.run());
    clocks.enter(0, 3);
    tx.send(spans_of(1, 0, 3, 10, T0)).await.expect("worker up");
    clocks.publish(0, 3, T0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A stale reading from an older assignment is refused by the table.
    clocks.publish(0, 2, T0 + 60_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(clocks.get(0), Some(T0));
    assert!(
        kept_in(&mut out).is_empty(),
        "decided by another assignment's time"
    );
    // The idle probe of assignment 3 moves it past the due time.
    clocks.publish(0, 3, T0 + 2_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(tx);
    running.await.expect("worker ends");
    assert_eq!(kept_in(&mut out), vec![(TraceId([1; 16]), 1)]);
}

/// Spans that come after their trace was decided follow the decision: a kept
/// trace's go out on their own under the same policy, a dropped trace's are released
/// without output.
#[tokio::test(start_paused = true)]
async fn late_spans_follow_the_decision() {
    let mut p = parts_with(
        "  - {name: big, type: span_count, span_count: {min_spans: 2}}\n",
        TraceLimits::default(),
        MemoryBudget::new(1 << 30, 0.9, 0.8),
    );
    p.clocks.enter(0, 1);
    read(&mut p, 1, &[(1, 10), (1, 11), (2, 12)], T0).await;
    p.clocks.publish(0, 1, T0 + 2_000);
    p.worker.on_tick().await.expect("sink open");
    assert_eq!(
        kept_full(&mut p.out),
        vec![(TraceId([1; 16]), 2, "big".to_string(), None)]
    );
    assert_eq!(
        released_offsets(&mut p.released),
        vec![12],
        "the dropped trace's pin"
    );
    // Late: one more span of each.
    p.worker
        .handle(spans_of(1, 0, 1, 13, T0 + 3_000))
        .await
        .expect("sink open");
    p.worker
        .handle(spans_of(2, 0, 1, 14, T0 + 3_000))
        .await
        .expect("sink open");
    assert_eq!(
        kept_full(&mut p.out),
        vec![(TraceId([1; 16]), 1, "big".to_string(), None)],
        "the kept trace's late span goes out alone, under its policy"
    );
    assert_eq!(
        released_offsets(&mut p.released),
        vec![14],
        "the dropped trace's late span"
    );
}

/// Decisions read back from the decisions topic bind the traces' spans read after
/// them: a restored kept trace's spans go out at once, a restored dropped trace's are
/// released, and a trace kept by a policy no longer configured keeps its spans under
/// an unnamed policy. A trace being buffered is left to be decided whole.
#[tokio::test(start_paused = true)]
async fn restored_decisions_bind_later_spans() {
    let mut p = parts_with(
        "  - {name: big, type: span_count, span_count: {min_spans: 5}}\n",
        TraceLimits::default(),
        MemoryBudget::new(1 << 30, 0.9, 0.8),
    );
    p.clocks.enter(0, 1);
    p.worker
        .handle(spans_of(4, 0, 1, 40, T0))
        .await
        .expect("sink open");
    let restored = |t: u8, policy: Option<&str>| Restored {
        trace_id: TraceId([t; 16]),
        policy: policy.map(Arc::from),
        output_below: None,
        dropped: None,
    };
    p.worker
        .handle(ShardMsg::Decisions {
            decisions: vec![
                restored(1, Some("big")),
                restored(2, None),
                restored(3, Some("removed-since")),
                restored(4, Some("big")),
            ],
            assignments: vec![(0, 1)],
        })
        .await
        .expect("sink open");
    read(&mut p, 1, &[(1, 50), (2, 51), (3, 52)], T0).await;
    assert_eq!(
        kept_full(&mut p.out),
        vec![
            (TraceId([1; 16]), 1, "big".to_string(), None),
            (TraceId([3; 16]), 1, String::new(), None),
        ]
    );
    assert_eq!(released_offsets(&mut p.released), vec![51]);
    // Trace 4 was buffered when its restored decision came: it is judged by the
    // policies (two spans, not big: dropped), not by the restored "kept".
    p.worker
        .handle(spans_of(4, 0, 1, 53, T0))
        .await
        .expect("sink open");
    p.clocks.publish(0, 1, T0 + 2_000);
    p.worker.on_tick().await.expect("sink open");
    assert!(kept_full(&mut p.out).is_empty());
    assert_eq!(released_offsets(&mut p.released), vec![40, 53]);
}

/// Exactly-once, the classic protocol's eager rebalance: a partition is revoked and
/// given straight back. A trace this instance kept before the revoke went out in the
/// transaction the revoke committed, but its pins were still held, so the committed
/// offset lies before it and it is re-read. Its decision is read back before the
/// partition resumes; the revoke's copy through the scanners can come after that
/// (the source forwards it on its next message or commit tick), and must not wipe
/// the restored decision: the re-read spans are already in the output. Spans of the
/// revoked assignment still in flight are not buffered either: they would join the
/// re-read copies of their trace. (A 1 -> 3 -> 1 rescale under the classic protocol
/// wrote traces out twice.)
#[tokio::test(start_paused = true)]
async fn a_revoke_arriving_after_the_read_back_keeps_the_restored_decisions() {
    let mut p = parts();
    p.worker.skip_reread = true;
    p.clocks.enter(0, 1);
    read(&mut p, 1, &[(1, 10), (2, 11)], T0).await;
    p.clocks.publish(0, 1, T0 + 2_000);
    p.worker.on_tick().await.expect("sink open");
    assert_eq!(kept_in(&mut p.out).len(), 2, "both kept in assignment 1");
    // Revoked and given back: both decisions committed, their offsets not.
    p.worker
        .handle(ShardMsg::Decisions {
            decisions: [1u8, 2]
                .iter()
                .map(|&t| Restored {
                    trace_id: TraceId([t; 16]),
                    policy: Some(Arc::from("all")),
                    output_below: Some((0, 12)),
                    dropped: None,
                })
                .collect(),
            assignments: vec![(0, 2)],
        })
        .await
        .expect("sink open");
    // Assignment 1's last message, dealt before the revoke, and then the revoke.
    read(&mut p, 1, &[(3, 12)], T0 + 100).await;
    p.worker
        .handle(ShardMsg::Revoked { slot: 0, epoch: 1 })
        .await
        .expect("sink open");
    // Assignment 2 re-reads from offset 10.
    p.clocks.enter(0, 2);
    read(&mut p, 2, &[(1, 10), (2, 11), (3, 12)], T0).await;
    p.clocks.publish(0, 2, T0 + 2_000);
    p.worker.on_tick().await.expect("sink open");
    assert_eq!(
        kept_in(&mut p.out),
        vec![(TraceId([3; 16]), 1)],
        "traces 1 and 2 are in the output already; trace 3 once, with one copy of its span"
    );
}

/// A reload renumbers the remembered decisions to the new set: late spans of a
/// trace kept by `first` still go out under `first` after the policies were
/// reordered, and under an unnamed policy once `first` is gone.
#[tokio::test(start_paused = true)]
async fn a_reload_renumbers_remembered_decisions() {
    let mut p = parts_with(
        "  - {name: first, type: always_sample}\n  - {name: second, type: always_sample}\n",
        TraceLimits::default(),
        MemoryBudget::new(1 << 30, 0.9, 0.8),
    );
    p.clocks.enter(0, 1);
    p.worker
        .handle(spans_of(1, 0, 1, 10, T0))
        .await
        .expect("sink open");
    p.clocks.publish(0, 1, T0 + 2_000);
    p.worker.on_tick().await.expect("sink open");
    assert_eq!(kept_full(&mut p.out)[0].2, "first");
    p.live
        .replace(&config(
            "  - {name: second, type: always_sample}\n  - {name: first, type: always_sample}\n",
        ))
        .expect("reloads");
    p.worker.adopt_policies();
    p.worker
        .handle(spans_of(1, 0, 1, 11, T0 + 2_000))
        .await
        .expect("sink open");
    assert_eq!(
        kept_full(&mut p.out),
        vec![(TraceId([1; 16]), 1, "first".to_string(), None)],
        "renumbered to first's new index"
    );
    p.live
        .replace(&config("  - {name: second, type: always_sample}\n"))
        .expect("reloads");
    p.worker.adopt_policies();
    p.worker
        .handle(spans_of(1, 0, 1, 12, T0 + 2_000))
        .await
        .expect("sink open");
    assert_eq!(
        kept_full(&mut p.out),
        vec![(TraceId([1; 16]), 1, String::new(), None)],
        "first is gone: kept, unnamed"
    );
}

/// A trace reaching its span limit is decided at once (forced `trace_limit`), with
/// every span it has; under memory pressure the oldest traces are decided early
/// (forced `memory`) until the budget is back under its low watermark.
#[tokio::test(start_paused = true)]
async fn limits_force_decisions_early() {
    let limits = TraceLimits {
        max_spans: 3,
        max_bytes: u64::MAX,
    };
    let mut p = parts_with(ALL, limits, MemoryBudget::new(1 << 30, 0.9, 0.8));
    p.clocks.enter(0, 1);
    for off in 0..3 {
        assert!(kept_full(&mut p.out).is_empty(), "decided before its limit");
        p.worker
            .handle(spans_of(1, 0, 1, off, T0))
            .await
            .expect("sink open");
    }
    assert_eq!(
        kept_full(&mut p.out),
        vec![(TraceId([1; 16]), 3, "all".to_string(), Some("trace_limit"))]
    );

    // Memory: 8 KiB, over its high watermark (7.2 KiB) with what other stages hold;
    // the shard's share of the low watermark is 2.4 KiB. (The traces that pass the
    // share stay under the high watermark alone even when the store's page doubles
    // with the last of them.)
    let pressed = |charge: u64| {
        let budget = MemoryBudget::new(8192, 0.9, 0.3);
        budget.charge(charge);
        let p = parts_with(ALL, TraceLimits::default(), budget);
        p.clocks.enter(0, 1);
        p
    };
    let mut p = pressed(7300);
    let mut t = 0u8;
    while p.out.is_empty() {
        t = t.checked_add(1).expect("forced before 255 traces");
        p.worker
            .handle(spans_of(t, 0, 1, i64::from(t), T0))
            .await
            .expect("sink open");
    }
    let forced = kept_full(&mut p.out);
    assert!(forced.iter().all(|k| k.3 == Some("memory")), "{forced:?}");
    let ids: Vec<TraceId> = forced.iter().map(|k| k.0).collect();
    let oldest: Vec<TraceId> = (1..=forced.len() as u8).map(|i| TraceId([i; 16])).collect();
    assert_eq!(ids, oldest, "the oldest traces go first");
    assert!(
        p.worker.shard.bytes() <= 8192 * 3 / 10,
        "down to the shard's share"
    );
    // The same traffic without the pressure: nothing is decided early.
    let mut p = pressed(0);
    for i in 1..=t {
        p.worker
            .handle(spans_of(i, 0, 1, i64::from(i), T0))
            .await
            .expect("sink open");
    }
    assert!(p.out.is_empty(), "decided early without pressure");
}

/// Memory pressure ends once the shards are at their share of the low watermark,
/// though the decision cache holds memory that never drains: the cache counts in
/// the shard's share. Before, a shard stopped evicting at its share with its cache
/// on top, usage stayed above the low watermark, and input stayed paused forever.
#[tokio::test(start_paused = true)]
async fn memory_pressure_ends_though_the_decision_cache_holds_memory() {
    const REMEMBERED: u32 = 20_000;
    let budget = MemoryBudget::new(4 << 20, 0.9, 0.5);
    let mut p = parts_caching(
        "  - {name: big, type: span_count, span_count: {min_spans: 1000}}\n",
        TraceLimits::default(),
        budget.clone(),
        REMEMBERED as usize,
    );
    p.clocks.enter(0, 1);
    // Decisions (all dropped) to remember.
    let trace = |n: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        TraceId(id)
    };
    let mut offset = 0;
    for n in 0..REMEMBERED {
        p.worker
            .handle(span_of_trace(trace(n), 0, 1, offset, T0))
            .await
            .expect("sink open");
        offset += 1;
    }
    p.clocks.publish(0, 1, T0 + 3_000);
    p.worker.on_tick().await.expect("sink open");
    assert_eq!(
        released_offsets(&mut p.released).len(),
        REMEMBERED as usize,
        "decided"
    );
    let cache = p.worker.cache.allocated_bytes() as u64;
    assert!(cache > 500_000, "the cache holds {cache} bytes");
    // New one-span traces until the worker has to decide some early.
    let mut n = REMEMBERED;
    while released_offsets(&mut p.released).is_empty() {
        assert!(n < 10 * REMEMBERED, "never under pressure");
        p.worker
            .handle(span_of_trace(trace(n), 0, 1, offset, T0 + 3_000))
            .await
            .expect("sink open");
        offset += 1;
        n += 1;
    }
    assert!(
        budget.below_low(),
        "still {} bytes used over the low watermark {} ({cache} in the cache): input would stay paused",
        budget.used(),
        budget.low_watermark()
    );
    assert!(!budget.pressure());
}

const ERRORS_OR_SOME: &str = "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n  - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 0}}\n";

/// One span of trace `t` in partition slot 0, assignment 1, at `offset`, with an
/// ERROR status when `error`.
fn span_with_status(t: u8, offset: i64, error: bool) -> ShardMsg {
    let mut msg = spans_of(t, 0, 1, offset, T0);
    if let ShardMsg::Spans { spans, .. } = &mut msg {
        spans[0].status = if error {
            StatusCode::Error
        } else {
            StatusCode::Ok
        };
    }
    msg
}

/// The answer to a re-read of trace `t`, finding `spans` (as sent to the worker).
fn found(t: u8, spans: Vec<ShardMsg>) -> Found {
    let found = spans
        .into_iter()
        .filter_map(|m| match m {
            ShardMsg::Spans {
                pin,
                message,
                spans,
                ..
            } => Some((pin.offset, message, spans)),
            _ => None,
        })
        .collect();
    Found {
        trace_id: TraceId([t; 16]),
        found,
        incomplete: None,
        charge: crate::budget::Charge::new(&MemoryBudget::new(1 << 20, 0.9, 0.8), 0),
    }
}

/// Every kept trace with its span count, pins' offsets and promotion reason.
fn promoted_in(
    out: &mut mpsc::Receiver<SinkMsg>,
) -> Vec<(TraceId, usize, Vec<i64>, Option<&'static str>)> {
    let mut kept = Vec::new();
    while let Ok(m) = out.try_recv() {
        if let SinkMsg::Kept(k) = m {
            let offsets = k.pins.iter().map(|p| p.offset).collect();
            kept.push((k.trace_id, k.spans, offsets, k.promoted.map(|p| p.reason)));
        }
    }
    kept
}

/// Hands the worker one span of trace 1 at `offset` (ERROR when `error`).
async fn late_span(p: &mut Parts, offset: i64, error: bool) {
    p.worker
        .handle(span_with_status(1, offset, error))
        .await
        .expect("sink open");
}

/// Decides trace 1 (one OK span at offset 10) dropped, with promotion on.
async fn dropped_at_10(policies: &str) -> Parts {
    let mut p = parts_promoting(policies);
    p.clocks.enter(0, 1);
    late_span(&mut p, 10, false).await;
    p.clocks.publish(0, 1, T0 + 2_000);
    p.worker.on_tick().await.expect("sink open");
    assert!(kept_in(&mut p.out).is_empty(), "dropped");
    assert_eq!(released_offsets(&mut p.released), vec![10]);
    p
}

/// A late ERROR span of a dropped trace promotes it: the worker asks for its
/// earlier pieces (offset 10 of input `i`, partition 0), then sends the whole
/// trace out, marked promoted, holding the late span's pin until it is delivered.
#[tokio::test(start_paused = true)]
async fn a_late_error_span_promotes_a_dropped_trace_whole() {
    let mut p = dropped_at_10(ERRORS_OR_SOME).await;
    late_span(&mut p, 20, true).await;
    let asked = p
        .rereads
        .try_recv()
        .expect("a re-read of the earlier pieces");
    assert_eq!(asked.trace_id, TraceId([1; 16]));
    assert_eq!(
        asked.pieces,
        Pieces {
            topic: Arc::from("i"),
            partition: 0,
            first: 10,
            last: 10
        }
    );
    assert!(
        promoted_in(&mut p.out).is_empty(),
        "not before its earlier pieces"
    );
    assert!(
        released_offsets(&mut p.released).is_empty(),
        "the late span is held"
    );
    p.worker
        .promote(found(1, vec![span_with_status(1, 10, false)]))
        .await
        .expect("sink open");
    assert_eq!(
        promoted_in(&mut p.out),
        vec![(TraceId([1; 16]), 2, vec![20], Some("late"))],
        "both spans, once, under the late span's pin"
    );
}

/// A late span that makes no settled policy keep the trace does not promote it:
/// no re-read, its pin released.
#[tokio::test(start_paused = true)]
async fn a_late_plain_span_does_not_promote() {
    let mut p = dropped_at_10(ERRORS_OR_SOME).await;
    late_span(&mut p, 20, false).await;
    assert!(p.rereads.try_recv().is_err(), "no re-read");
    assert!(promoted_in(&mut p.out).is_empty());
    assert_eq!(released_offsets(&mut p.released), vec![20]);
}

/// A trace dropped by chance stays dropped: after a reload to a 100 % sample, its
/// late span would be kept by a fresh decision, but chance never revises a drop.
#[tokio::test(start_paused = true)]
async fn a_probabilistic_drop_never_flips() {
    let mut p = dropped_at_10(ERRORS_OR_SOME).await;
    let all = "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n  - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 100}}\n";
    p.live.replace(&config(all)).expect("reloads");
    p.worker.adopt_policies();
    late_span(&mut p, 20, false).await;
    assert!(p.rereads.try_recv().is_err(), "no re-read");
    assert!(promoted_in(&mut p.out).is_empty());
    assert_eq!(released_offsets(&mut p.released), vec![20]);
}

/// Spans that come while a promotion reads the earlier pieces go out with it; spans
/// after it follow the new decision, kept.
#[tokio::test(start_paused = true)]
async fn a_promoted_traces_later_spans_follow_it() {
    let mut p = dropped_at_10(ERRORS_OR_SOME).await;
    late_span(&mut p, 20, true).await;
    late_span(&mut p, 21, false).await;
    let _ = p.rereads.try_recv().expect("a re-read");
    // The re-read found the earlier piece and, its range reaching it, the held one.
    p.worker
        .promote(found(
            1,
            vec![
                span_with_status(1, 10, false),
                span_with_status(1, 20, true),
            ],
        ))
        .await
        .expect("sink open");
    assert_eq!(
        promoted_in(&mut p.out),
        vec![(TraceId([1; 16]), 3, vec![20, 21], Some("late"))],
        "three spans, the held ones once"
    );
    late_span(&mut p, 22, false).await;
    assert_eq!(
        promoted_in(&mut p.out),
        vec![(TraceId([1; 16]), 1, vec![22], None)],
        "a later span goes out as a kept trace's late span"
    );
    assert!(p.rereads.try_recv().is_err(), "one re-read");
}

/// After a restart the partition's next owner promotes as the old one would: a
/// dropped decision read back from the decisions topic carries what the trace was
/// judged on and where its pieces lie.
#[tokio::test(start_paused = true)]
async fn a_restored_drop_is_promoted_by_late_evidence() {
    let mut p = parts_promoting(ERRORS_OR_SOME);
    let pieces = Pieces {
        topic: Arc::from("i"),
        partition: 0,
        first: 100,
        last: 140,
    };
    let evidence = Evidence {
        span_count: 3,
        one_clock_ms: 12,
        attr_hits: 0,
        flags: 2,
    };
    p.worker
        .handle(ShardMsg::Decisions {
            decisions: vec![Restored {
                trace_id: TraceId([1; 16]),
                policy: None,
                output_below: None,
                dropped: Some((evidence, pieces.clone())),
            }],
            assignments: vec![(0, 1)],
        })
        .await
        .expect("sink open");
    p.clocks.enter(0, 1);
    late_span(&mut p, 150, true).await;
    let asked = p.rereads.try_recv().expect("a re-read");
    assert_eq!(asked.pieces, pieces);
    p.worker
        .promote(found(1, vec![span_with_status(1, 100, false)]))
        .await
        .expect("sink open");
    let out = promoted_in(&mut p.out);
    assert_eq!(out, vec![(TraceId([1; 16]), 2, vec![150], Some("late"))]);
}

/// A promotion's kept record read back before the drop it revised (records of one
/// trace out of order in the decisions topic) still binds: the trace is kept, its
/// late spans go out as a kept trace's, and nothing is re-read or promoted again.
#[tokio::test(start_paused = true)]
async fn a_restored_keep_outranks_a_drop_read_after_it() {
    let mut p = parts_promoting(ERRORS_OR_SOME);
    let restored = |policy: Option<&str>| Restored {
        trace_id: TraceId([1; 16]),
        policy: policy.map(Arc::from),
        output_below: None,
        dropped: policy.is_none().then(|| {
            let pieces = Pieces {
                topic: Arc::from("i"),
                partition: 0,
                first: 100,
                last: 140,
            };
            (Evidence::default(), pieces)
        }),
    };
    p.worker
        .handle(ShardMsg::Decisions {
            decisions: vec![restored(Some("errors")), restored(None)],
            assignments: vec![(0, 1)],
        })
        .await
        .expect("sink open");
    p.clocks.enter(0, 1);
    late_span(&mut p, 150, true).await;
    assert!(p.rereads.try_recv().is_err(), "no re-read: it is kept");
    assert_eq!(
        promoted_in(&mut p.out),
        vec![(TraceId([1; 16]), 1, vec![150], None)],
        "the late span follows the kept decision"
    );
}

/// A revoke of the late spans' partition gives the promotion up: its pins are
/// stale (the next owner re-reads them and promotes), nothing goes out when the
/// re-read answers, and the trace is remembered as dropped again.
#[tokio::test(start_paused = true)]
async fn a_revoke_gives_a_promotion_up() {
    let mut p = dropped_at_10(ERRORS_OR_SOME).await;
    p.worker.forget_on_revoke = false;
    late_span(&mut p, 20, true).await;
    let _ = p.rereads.try_recv().expect("a re-read");
    p.worker
        .handle(ShardMsg::Revoked { slot: 0, epoch: 1 })
        .await
        .expect("sink open");
    p.worker
        .promote(found(1, vec![span_with_status(1, 10, false)]))
        .await
        .expect("sink open");
    assert!(promoted_in(&mut p.out).is_empty(), "given up");
    assert!(
        released_offsets(&mut p.released).is_empty(),
        "stale pins are not released"
    );
    assert_eq!(
        p.worker.cache.get(&TraceId([1; 16])).map(|v| v.keep()),
        Some(false)
    );
}

/// A re-read that hands the same input message over twice (a pooled client's
/// leftovers, a leader change) still puts each span in the promoted trace once.
#[tokio::test(start_paused = true)]
async fn a_message_found_twice_goes_out_once() {
    let mut p = dropped_at_10(ERRORS_OR_SOME).await;
    late_span(&mut p, 20, true).await;
    let _ = p.rereads.try_recv().expect("a re-read");
    p.worker
        .promote(found(
            1,
            vec![
                span_with_status(1, 10, false),
                span_with_status(1, 10, false),
            ],
        ))
        .await
        .expect("sink open");
    assert_eq!(
        promoted_in(&mut p.out),
        vec![(TraceId([1; 16]), 2, vec![20], Some("late"))]
    );
}
