//! The sink on tokio's paused clock: when it releases pins (only after the
//! broker acknowledged what covers them, and a re-read's pin only after the trace's
//! output), when it reports output stalled, and that a shutdown with deliveries
//! outstanding releases nothing. A broker that never answers (a closed port) and
//! librdkafka's mock cluster stand in for Kafka; no delivery outcome is faked.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Sink, STALL_AFTER};
use crate::budget::{Charge, MemoryBudget};
use crate::codec::TraceId;
use crate::config::Config;
use crate::demo::EmbeddedBroker;
use crate::flow::{DroppedTrace, KeptTrace, Pin, Releases, SinkMsg};
use crate::telemetry::Health;

fn pin(offset: i64) -> Pin {
    Pin {
        slot: 0,
        epoch: 1,
        offset,
        partition: 0,
    }
}

struct Parts {
    tx: mpsc::Sender<SinkMsg>,
    released: mpsc::UnboundedReceiver<Vec<Pin>>,
    health: Arc<Health>,
    budget: MemoryBudget,
    running: tokio::task::JoinHandle<()>,
}

fn start(brokers: &str) -> Parts {
    let cfg = Config::from_yaml(&format!(
        "kafka: {{brokers: '{brokers}', input_topics: [spans], output_topic: sampled}}\npolicies:\n  - {{name: all, type: always_sample}}\n"
    ))
    .expect("valid");
    let health = Health::new();
    let (tx, rx) = mpsc::channel(16);
    let (releases, released) = Releases::channel();
    let sink = Sink::new(
        &cfg.kafka,
        &cfg.memory.split(),
        Arc::clone(&health),
        rx,
        releases,
    )
    .expect("producer");
    Parts {
        tx,
        released,
        health,
        budget: MemoryBudget::new(1 << 30, 0.9, 0.8),
        running: tokio::spawn(sink.run()),
    }
}

fn kept(p: &Parts, t: u8, pins: Vec<Pin>) -> SinkMsg {
    SinkMsg::Kept(KeptTrace {
        trace_id: TraceId([t; 16]),
        payloads: vec![vec![0x0a, 0x00]],
        pins,
        policy: Arc::from("all"),
        topic: None,
        forced: None,
        spans: 1,
        rejected: None,
        charge: Charge::new(&p.budget, 2),
        record_decision: false,
        pieces: None,
        evidence: Default::default(),
        promoted: None,
    })
}

/// Pins released so far, by offset, in release order.
fn released(rx: &mut mpsc::UnboundedReceiver<Vec<Pin>>) -> Vec<i64> {
    let mut out = Vec::new();
    while let Ok(pins) = rx.try_recv() {
        out.extend(pins.iter().map(|p| p.offset));
    }
    out
}

/// With a broker that never answers: a re-read pin of a trace in delivery waits for
/// that delivery, one of a trace not in delivery is released at once, and a dropped
/// trace (no decisions topic) releases its pins at once. After `STALL_AFTER`
/// the output is reported stalled; a shutdown then releases nothing unacknowledged.
#[tokio::test(start_paused = true)]
async fn nothing_unacknowledged_is_released() {
    // Nothing listens on port 1: every connection is refused.
    let mut p = start("127.0.0.1:1");
    p.tx.send(kept(&p, 1, vec![pin(10)]))
        .await
        .expect("sink up");
    let after = |t: u8, offset: i64| SinkMsg::AfterOutput {
        trace_id: TraceId([t; 16]),
        pin: pin(offset),
    };
    p.tx.send(after(1, 11)).await.expect("sink up");
    p.tx.send(after(2, 20)).await.expect("sink up");
    p.tx.send(SinkMsg::Dropped(DroppedTrace {
        trace_id: TraceId([3; 16]),
        pins: vec![pin(30)],
        pieces: None,
        evidence: Default::default(),
    }))
    .await
    .expect("sink up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(released(&mut p.released), vec![20, 30]);
    assert_eq!(p.health.produce_stalled(), None);
    tokio::time::sleep(STALL_AFTER + Duration::from_secs(2)).await;
    let why = p.health.produce_stalled().expect("stalled");
    assert!(why.contains("1 pending"), "{why}");
    drop(p.tx);
    p.running.await.expect("sink ends");
    assert!(
        released(&mut p.released).is_empty(),
        "released unacknowledged"
    );
    let why = p.health.produce_stalled().expect("still not acknowledged");
    assert!(why.contains("shutdown"), "{why}");
}

/// On the mock cluster (real time: librdkafka's is): a kept trace's pins are
/// released once its record is acknowledged, and a re-read pin waiting for that
/// output right after them.
#[tokio::test]
async fn pins_follow_the_acknowledgement() {
    let broker = EmbeddedBroker::start(1).expect("mock cluster");
    broker.create_topic("sampled", 1).expect("topic");
    let mut p = start(&broker.bootstrap_servers());
    p.tx.send(kept(&p, 1, vec![pin(10), pin(12)]))
        .await
        .expect("sink up");
    p.tx.send(SinkMsg::AfterOutput {
        trace_id: TraceId([1; 16]),
        pin: pin(11),
    })
    .await
    .expect("sink up");
    let mut got = Vec::new();
    while got.len() < 3 {
        let pins = tokio::time::timeout(Duration::from_secs(30), p.released.recv())
            .await
            .expect("acknowledged within 30 s")
            .expect("sink up");
        got.extend(pins.iter().map(|p| p.offset));
    }
    assert_eq!(
        got,
        vec![10, 12, 11],
        "the trace's pins, then the waiting one"
    );
    drop(p.tx);
    p.running.await.expect("sink ends");
}

/// Exactly-once, on the mock cluster: records enter the transaction in the order the
/// sink received their messages, however their deliveries wake after a commit held
/// the gate. Here a trace's dropped decision, then the kept decision of its
/// promotion, both wait out a commit, and the later one is polled first once it
/// ends (as when its retry timer fires first). Enqueued in wake order, the kept
/// record landed before the dropped one, and the partition's next owner, restoring
/// the last record, promoted the trace again (a chaos-test duplicate).
// The gate is held across awaits on purpose: it stands for a commit in progress
// while the two deliveries are polled by hand on this one thread.
#[allow(clippy::await_holding_lock)]
#[tokio::test(start_paused = true)]
async fn records_enter_the_transaction_in_the_order_received() {
    use futures_util::FutureExt;
    use prost::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message as _;

    let broker = EmbeddedBroker::start(1).expect("mock cluster");
    for topic in ["sampled", "decisions", "tailsift-dead-letter"] {
        broker.create_topic(topic, 1).expect("topic");
    }
    let bootstrap = broker.bootstrap_servers();
    let cfg = Config::from_yaml(&format!(
        "kafka: {{brokers: '{bootstrap}', input_topics: [spans], output_topic: sampled, decisions_topic: decisions, exactly_once: true}}\npolicies:\n  - {{name: all, type: always_sample}}\n"
    ))
    .expect("valid");
    let (_tx, rx) = mpsc::channel(1);
    let (releases, _released) = Releases::channel();
    let sink = Sink::new(&cfg.kafka, &cfg.memory.split(), Health::new(), rx, releases)
        .expect("transactional producer");
    let txn = sink.transactions().expect("exactly-once");
    let budget = MemoryBudget::new(1 << 30, 0.9, 0.8);
    let id = TraceId([7; 16]);
    let dropped = SinkMsg::Dropped(DroppedTrace {
        trace_id: id,
        pins: vec![pin(10)],
        pieces: None,
        evidence: Default::default(),
    });
    let promoted = SinkMsg::Kept(KeptTrace {
        trace_id: id,
        payloads: vec![vec![0x0a, 0x00]],
        pins: vec![pin(20)],
        policy: Arc::from("all"),
        topic: None,
        forced: None,
        spans: 1,
        rejected: None,
        charge: Charge::new(&budget, 2),
        record_decision: true,
        pieces: None,
        evidence: Default::default(),
        promoted: None,
    });
    let commit = txn.hold_gate();
    let deliver = |m, n| super::deliver(sink.producer.clone(), Arc::clone(&sink.topics), m, n);
    let mut first = Box::pin(deliver(dropped, 1));
    let mut second = Box::pin(deliver(promoted, 2));
    assert!(first.as_mut().now_or_never().is_none(), "gated");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(second.as_mut().now_or_never().is_none(), "gated");
    drop(commit);
    tokio::time::advance(Duration::from_millis(2)).await;
    let (kept_pins, dropped_pins) = tokio::join!(second, first);
    assert_eq!(
        (kept_pins.len(), dropped_pins.len()),
        (1, 1),
        "both delivered"
    );

    let read = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "order-check")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&["decisions"]).expect("subscribe");
        let mut kept = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while kept.len() < 2 && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let r = crate::flow::DecisionRecord::decode(m.payload().unwrap_or_default())
                    .expect("a decision record");
                kept.push(r.kept);
            }
        }
        kept
    });
    assert_eq!(
        read.await.expect("reader"),
        vec![false, true],
        "the drop, then the promotion that revised it"
    );
}
