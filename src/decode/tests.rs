//! The scanner on tokio's paused clock, with no broker: how it deals a message's
//! spans to the shards, when a reload's predicates take effect, where undecodable
//! input goes, and that revokes and stream-time readings keep their place behind the
//! messages before them.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{shard_of_id, Input, ScanJob, Scanner};
use crate::budget::MemoryBudget;
use crate::clock::StreamClocks;
use crate::codec::{AttrMatchers, FrameInterner, Matcher, TraceId};
use crate::flow::{Publisher, ScanKeys, ShardMsg, SinkMsg};
use crate::gen::{GenConfig, Generator};
use crate::kafka::OffsetTracker;

const T0: u64 = 1_700_000_000_000;
const SHARDS: usize = 2;

/// A running scanner with two shards; the ends of its channels.
struct Parts {
    jobs: mpsc::Sender<ScanJob>,
    shards: Vec<mpsc::Receiver<ShardMsg>>,
    sink: mpsc::Receiver<SinkMsg>,
    tracker: Arc<Mutex<OffsetTracker>>,
    clocks: Arc<StreamClocks>,
    keys: Publisher<ScanKeys>,
    running: tokio::task::JoinHandle<()>,
}

fn start() -> Parts {
    let (jobs, rx) = mpsc::channel(16);
    let (shard_tx, shards): (Vec<_>, Vec<_>) = (0..SHARDS).map(|_| mpsc::channel(64)).unzip();
    let (sink_tx, sink) = mpsc::channel(16);
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let clocks = Arc::new(StreamClocks::new());
    let keys = Publisher::new(ScanKeys {
        number: 0,
        keys: AttrMatchers::default(),
    });
    let scanner = Scanner {
        rx,
        tracker: Arc::clone(&tracker),
        policies: keys.watch(),
        frames: FrameInterner::default(),
        shards: shard_tx,
        sink: sink_tx,
        clocks: Arc::clone(&clocks),
        budget: MemoryBudget::new(1 << 30, 0.9, 0.8),
        dealer: Default::default(),
    };
    Parts {
        jobs,
        shards,
        sink,
        tracker,
        clocks,
        keys,
        running: tokio::spawn(scanner.run()),
    }
}

/// One OTLP request holding every span of `n` generated traces (requests
/// concatenated are one request), and the traces' ids with their span counts.
fn request(n: usize, seed: u64) -> (Bytes, Vec<(TraceId, usize)>) {
    let mut g = Generator::new(GenConfig {
        seed,
        ..GenConfig::default()
    });
    let mut payload = Vec::new();
    let mut truth = Vec::new();
    for i in 0..n {
        let t = g.next_trace(T0 * 1_000_000 + i as u64);
        truth.push((t.truth.trace_id, t.truth.spans));
        for m in &t.messages {
            payload.extend_from_slice(m);
        }
    }
    (Bytes::from(payload), truth)
}

/// A message of partition 0 at `offset`, pinned in the tracker.
fn input(parts: &Parts, payload: Bytes, offset: i64, at: u64) -> Input {
    let pin = {
        let mut t = parts.tracker.lock().expect("tracker");
        if !t.is_assigned("spans", 0) {
            t.assign("spans", 0);
        }
        t.track("spans", 0, offset, 1).expect("assigned")
    };
    Input {
        payload,
        key: None,
        headers: None,
        pin,
        at,
        encoding: crate::codec::InputEncoding::OtlpProto,
        topic: Arc::from("spans"),
    }
}

/// Every span message each shard got, as (shard, trace ids of its spans,
/// generation); other messages as `None`.
type Got = Vec<(usize, Option<(Vec<TraceId>, u64, Vec<u64>)>)>;

fn drain(shards: &mut [mpsc::Receiver<ShardMsg>]) -> Got {
    let mut got = Vec::new();
    for (i, rx) in shards.iter_mut().enumerate() {
        while let Ok(m) = rx.try_recv() {
            got.push((
                i,
                match m {
                    ShardMsg::Spans {
                        spans, generation, ..
                    } => Some((
                        spans.iter().map(|s| s.trace_id).collect(),
                        generation,
                        spans.iter().map(|s| s.hits).collect(),
                    )),
                    _ => None,
                },
            ));
        }
    }
    got
}

/// Waits until the scanner has handled everything sent so far: it ends once the
/// job channel closes.
async fn finish(
    p: Parts,
) -> (
    Vec<mpsc::Receiver<ShardMsg>>,
    mpsc::Receiver<SinkMsg>,
    Arc<StreamClocks>,
) {
    drop(p.jobs);
    p.running.await.expect("scanner ends");
    (p.shards, p.sink, p.clocks)
}

/// Each span goes to its trace's shard, each trace's spans in one run; every span
/// of the message is dealt exactly once; the partition's stream time is published
/// once the spans are in the shards' channels.
#[tokio::test(start_paused = true)]
async fn spans_are_dealt_to_their_trace_shard_grouped_by_trace() {
    let p = start();
    let (payload, truth) = request(12, 7);
    let job = ScanJob::Message(input(&p, payload, 100, T0 + 5));
    p.jobs.send(job).await.expect("scanner up");
    let (mut shards, _sink, clocks) = finish(p).await;
    assert_eq!(clocks.get(0), Some(T0 + 5));
    let got = drain(&mut shards);
    let mut dealt: Vec<(TraceId, usize)> = Vec::new();
    for (shard, msg) in &got {
        let (ids, generation, _) = msg.as_ref().expect("spans only");
        assert_eq!(*generation, 0);
        let runs = ids.chunk_by(|a, b| a == b).count();
        let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
        assert_eq!(runs, distinct, "each trace's spans in one run");
        for id in ids {
            assert_eq!(shard_of_id(id, SHARDS), *shard, "on its trace's shard");
            match dealt.iter_mut().find(|(t, _)| t == id) {
                Some((_, n)) => *n += 1,
                None => dealt.push((*id, 1)),
            }
        }
    }
    dealt.sort_unstable();
    let mut want = truth;
    want.sort_unstable();
    assert_eq!(dealt, want, "every span, once");
    assert!(
        got.iter()
            .map(|(s, _)| *s)
            .collect::<std::collections::HashSet<_>>()
            .len()
            == SHARDS,
        "12 traces reach both shards"
    );
}

/// A reload's predicates apply from the next message on: spans scanned after the
/// new keys were published carry the new generation and their hits.
#[tokio::test(start_paused = true)]
async fn a_reload_takes_effect_at_the_next_message() {
    let mut p = start();
    let (payload, _) = request(3, 8);
    p.jobs
        .send(ScanJob::Message(input(&p, payload.clone(), 1, T0)))
        .await
        .expect("scanner up");
    // The scanner deals the first message, then waits for its next job.
    let mut first = Vec::new();
    for _ in 0..100 {
        tokio::task::yield_now().await;
        first = drain(&mut p.shards);
        if !first.is_empty() {
            break;
        }
    }
    assert!(!first.is_empty(), "the first message was never dealt");
    let mut keys = AttrMatchers::default();
    // Every generated span has an http.route, and every route starts with '/'.
    keys.add(
        "http.route",
        Matcher::Regex(regex::RegexSet::new(["^/"]).expect("regex")),
    )
    .expect("a bit");
    p.keys.publish(ScanKeys { number: 1, keys });
    p.jobs
        .send(ScanJob::Message(input(&p, payload, 2, T0)))
        .await
        .expect("scanner up");
    let (mut shards, _sink, _) = finish(p).await;
    let second = drain(&mut shards);
    for (_, m) in &first {
        let (_, generation, hits) = m.as_ref().expect("spans");
        assert_eq!(*generation, 0);
        assert!(
            hits.iter().all(|h| *h == 0),
            "no predicate before the reload"
        );
    }
    assert!(!second.is_empty());
    for (_, m) in &second {
        let (_, generation, hits) = m.as_ref().expect("spans");
        assert_eq!(*generation, 1);
        assert!(hits.iter().all(|h| *h == 1), "the new predicate hit");
    }
}

/// A message that does not decode goes whole to the dead-letter topic, with its
/// reason, origin and pin, in a copy of its own; no shard sees anything of it.
#[tokio::test(start_paused = true)]
async fn an_undecodable_message_goes_to_the_dead_letter_topic() {
    let p = start();
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
    let job = ScanJob::Message(input(&p, garbage.clone(), 42, T0));
    let pin = match &job {
        ScanJob::Message(i) => i.pin,
        _ => unreachable!(),
    };
    p.jobs.send(job).await.expect("scanner up");
    let (mut shards, mut sink, _) = finish(p).await;
    assert!(drain(&mut shards).is_empty());
    match sink.try_recv() {
        Ok(SinkMsg::DeadLetter(d)) => {
            assert_eq!(d.payload, garbage);
            // A dead letter may wait out a broker outage: it holds a copy, not the
            // input's memory (librdkafka's, with the fetch response around it).
            assert_ne!(d.payload.as_ptr(), garbage.as_ptr(), "a copy of its own");
            assert_eq!((&*d.topic, d.partition, d.offset), ("spans", 0, 42));
            assert_eq!(d.pin, pin);
            assert_eq!(d.label, "undecodable");
            assert!(
                !d.reason.is_empty() && d.reason.contains(':'),
                "{}",
                d.reason
            );
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

/// A revoke reaches every shard after the spans read before it; a stream-time
/// reading is published for the partition's current assignment only.
#[tokio::test(start_paused = true)]
async fn revokes_and_readings_keep_their_place() {
    let p = start();
    let (payload, _) = request(6, 9);
    let job = ScanJob::Message(input(&p, payload, 7, T0));
    let (slot, epoch) = match &job {
        ScanJob::Message(i) => (i.pin.slot, i.pin.epoch),
        _ => unreachable!(),
    };
    p.jobs.send(job).await.expect("scanner up");
    p.jobs
        .send(ScanJob::Clock {
            slot,
            epoch: epoch + 1,
            at: T0 + 60_000,
        })
        .await
        .expect("scanner up");
    p.jobs
        .send(ScanJob::Clock {
            slot,
            epoch,
            at: T0 + 1_000,
        })
        .await
        .expect("scanner up");
    p.jobs
        .send(ScanJob::Revoked { slot, epoch })
        .await
        .expect("scanner up");
    let (mut shards, _sink, clocks) = finish(p).await;
    assert_eq!(
        clocks.get(slot),
        Some(T0 + 1_000),
        "the stale reading was refused"
    );
    for (i, rx) in shards.iter_mut().enumerate() {
        let mut kinds = Vec::new();
        while let Ok(m) = rx.try_recv() {
            kinds.push(match m {
                ShardMsg::Spans { .. } => "spans",
                ShardMsg::Revoked { .. } => "revoked",
                ShardMsg::Decisions { .. } => "decisions",
            });
        }
        assert_eq!(kinds.last(), Some(&"revoked"), "shard {i}: {kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "revoked").count(), 1);
    }
}

/// Keys that are trace ids: 32 hex digits, or 16 (a 64-bit Jaeger id).
#[test]
fn a_key_is_a_trace_id_in_hex_of_128_or_64_bits() {
    use super::unkeyed_reason;
    assert_eq!(
        unkeyed_reason(Some(b"101112131415161718191a1b1c1d1e1f")),
        None
    );
    assert_eq!(unkeyed_reason(Some(b"0000000000000ABC")), None);
    assert_eq!(unkeyed_reason(None), Some("missing"));
    assert_eq!(unkeyed_reason(Some(b"")), Some("missing"));
    assert_eq!(unkeyed_reason(Some(b"3")), Some("not_trace_id"));
    assert_eq!(
        unkeyed_reason(Some(b"101112131415161718191a1b1c1d1e1g")),
        Some("not_trace_id")
    );
}

/// A Collector batch mixes traces: dealing groups each trace's spans, keeps their
/// order, and puts each on its trace's shard, exactly once; a message already
/// sorted by trace id keeps its order.
#[test]
fn mixed_traces_are_grouped_in_their_order() {
    use super::Dealer;
    use crate::codec::{ByteRange, Span};
    // Span i of the message: trace `i % 7` (ids spread over both shards), starting
    // at i ns, to tell the spans apart.
    let span = |i: usize, trace: u8| {
        let mut s = Span::bare(TraceId([trace; 16]), ByteRange::default(), 0);
        s.start_ns = i as u64;
        s
    };
    let mut dealer = Dealer::default();
    for round in 0..2 {
        // The same dealer twice: its scratch space is reset between messages.
        let mut spans: Vec<Span> = (0..200).map(|i| span(i, (i % 7) as u8 + round)).collect();
        let by_shard = dealer.deal(&mut spans, SHARDS);
        assert!(spans.is_empty(), "moved out");
        let mut seen = Vec::new();
        for (shard, list) in by_shard.iter().enumerate() {
            for run in list.chunk_by(|a, b| a.trace_id == b.trace_id) {
                let id = run[0].trace_id;
                assert_eq!(shard_of_id(&id, SHARDS), shard, "on its trace's shard");
                assert!(!seen.contains(&id), "one run per trace");
                seen.push(id);
                let starts: Vec<u64> = run.iter().map(|s| s.start_ns).collect();
                let want: Vec<u64> = (0..200)
                    .filter(|i| (i % 7) as u8 + round == id.0[0])
                    .collect();
                assert_eq!(starts, want, "every span of the trace, in order");
            }
        }
        assert_eq!(seen.len(), 7);
    }
    let mut sorted: Vec<Span> = (0..10).map(|i| span(i, (i / 4) as u8)).collect();
    let by_shard = dealer.deal(&mut sorted, 1);
    let starts: Vec<u64> = by_shard[0].iter().map(|s| s.start_ns).collect();
    assert_eq!(starts, (0..10).collect::<Vec<_>>());
}
