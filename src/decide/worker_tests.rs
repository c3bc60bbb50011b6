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
use crate::codec::{Message, ScopeFrame, Span, TraceId};
use crate::config::Config;
use crate::decide::{Generation, LivePolicies};
use crate::flow::{Pin, Releases, ShardMsg, SinkMsg};

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
}

fn parts() -> Parts {
    let cfg = Config::from_yaml(
        "kafka: {brokers: x, input_topics: [i], output_topic: o}\npolicies:\n  - {name: all, type: always_sample}\n",
    )
    .expect("valid");
    let live = LivePolicies::new(Generation::build(&cfg, None).expect("builds"));
    let clocks = Arc::new(StreamClocks::new());
    let wc = WorkerConfig {
        decision_wait: WAIT,
        after_root: None,
        limits: TraceLimits::default(),
        cache_capacity: 1000,
        max_message_bytes: 1 << 20,
        shards: 1,
        record_decisions: false,
        annotate: false,
        skip_reread: false,
        remember_output: false,
        forget_on_revoke: true,
        clocks: Arc::clone(&clocks),
    };
    let (tx, rx) = mpsc::channel(64);
    let (sink, out) = mpsc::channel(64);
    let (releases, released) = Releases::channel();
    let worker = ShardWorker::new(
        &wc,
        live.watch(),
        MemoryBudget::new(1 << 30, 0.9, 0.8),
        rx,
        sink,
        releases,
    );
    Parts {
        worker,
        tx,
        out,
        clocks,
        released,
    }
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
    let mut body = vec![0x0a, 16];
    body.extend_from_slice(&[t; 16]);
    let len = body.len();
    let message = Message::new(
        Bytes::from(body),
        vec![Arc::new(ScopeFrame::new(Bytes::new()))],
    );
    let mut span: Span = message
        .span_at(TraceId([t; 16]), 0, len, 0)
        .expect("in the message");
    span.end_ns = 10;
    ShardMsg::Spans {
        pin: Pin {
            slot,
            epoch,
            offset,
            partition: 0,
        },
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
        released: _released,
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
        released: _released,
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
