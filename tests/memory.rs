//! The memory budget: pressure pauses input and decides the oldest traces early;
//! a huge trace is decided at its limit; nothing a policy keeps is lost.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tailsift::codec::TraceId;
use tailsift::gen::{self, Truth};
use tailsift::sink::HEADER_FORCED;

/// Samples the budget every 10 ms and keeps the highest usage seen.
fn watch(budget: tailsift::budget::MemoryBudget) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&peak);
    let task = tokio::spawn(async move {
        loop {
            p.fetch_max(budget.used(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (peak, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_decides_oldest_traces_early_and_keeps_every_error_trace() {
    let h = Harness::new(32, 4);
    let mut cfg = h.config(ERRORS_SLOW_AND, "60s", None);
    // 16 MiB: 2 + 1 MiB for librdkafka's queues, 13 MiB for the buffer, while the
    // input is ~25 MB and nothing would be due for a minute.
    cfg.memory.limit = tailsift::config::ByteSize(16 << 20);
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let budget = sampler.running.budget.clone();
    let (peak, watcher) = watch(budget.clone());
    let truths = feed(&h, 3000, 0, 5, "lz4").await;
    let want: Vec<&Truth> = truths.iter().filter(|t| t.error || t.slow).collect();
    // The input is ~1.8x the budget, so roughly half of it must be decided early
    // (well before the 60 s wait) to make room; the rest waits its turn. Partitions
    // are read in any order, so which traces are oldest is not the feed order:
    // count them instead.
    let early = wait_until(Duration::from_secs(40), || {
        let got = out.traces();
        want.iter()
            .filter(|t| got.contains_key(&t.trace_id))
            .count()
            * 10
            >= want.len() * 4
    })
    .await;
    assert!(early, "memory pressure did not decide traces early");
    // Eviction starts between the watermarks, so the budget filled past the low one
    // (pressure proper, at the high one, is only needed when eviction cannot keep up).
    let filled = peak.load(Ordering::Relaxed) as f64 / budget.capacity() as f64;
    assert!(
        filled > 0.75,
        "the budget never filled past the low watermark: {filled:.2}"
    );
    // Stop: the traces still buffered are re-read and decided by the next instance.
    sampler.stop().await;
    watcher.abort();
    let mut cfg2 = cfg.clone();
    cfg2.buffer.decision_wait = tailsift::config::ConfigDuration::from_millis(1000);
    let second = Instance::start(&cfg2).await;
    let all = wait_until(Duration::from_secs(60), || {
        let got = out.traces();
        want.iter().all(|t| got.contains_key(&t.trace_id))
    })
    .await;
    out.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    second.stop().await;
    h.assert_no_broker_truncation();

    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= budget.capacity(),
        "budget exceeded: peak {peak} bytes of {}",
        budget.capacity()
    );
    let got = out.traces();
    let by_id: HashMap<TraceId, &Truth> = truths.iter().map(|t| (t.trace_id, t)).collect();
    assert!(all, "error or slow traces lost");
    for (id, o) in &got {
        let t = by_id[id];
        assert!(t.error || t.slow, "trace {id} kept without a policy asking");
        assert_eq!(o.distinct_spans, t.spans, "trace {id} incomplete");
    }
    let forced = out
        .records()
        .iter()
        .filter(|r| r.header(HEADER_FORCED).as_deref() == Some("memory"))
        .count();
    assert!(
        forced > 0,
        "no kept record says it was decided early for memory"
    );
}

fn small_span(trace: TraceId, i: u32, root: bool, error: bool) -> Span {
    let mut id = [0u8; 8];
    id[..4].copy_from_slice(&(i + 1).to_le_bytes());
    Span {
        trace_id: trace.0.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: if root { vec![] } else { vec![0xff; 8] },
        name: "work".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_001_000_000,
        status: Some(Status {
            message: String::new(),
            code: if error {
                status::StatusCode::Error as i32
            } else {
                0
            },
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_trace_is_decided_at_its_span_limit_and_the_rest_follows() {
    let h = Harness::new(16, 4);
    let mut cfg = h.config(ERRORS_SLOW_AND, "30s", Some("500ms"));
    cfg.trace.max_spans = 5000;
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let huge = TraceId([0x5a; 16]);
    let p = h.producer("lz4");
    // 100k spans in 100 messages spread over the partitions (one instance owns them
    // all), with normal traffic in between. Every message has an error span (they
    // arrive in any order across partitions); the root comes last, so only the span
    // limit can decide the trace early.
    let mut normal: Vec<Truth> = Vec::new();
    let mut g = gen::Generator::new(gen::GenConfig {
        seed: 77,
        ..Default::default()
    });
    for m in 0..100u32 {
        let spans = (0..1000)
            .map(|j| {
                let i = m * 1000 + j;
                small_span(huge, i, m == 99 && j == 999, j == 0)
            })
            .collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        gen::send(
            &p,
            INPUT,
            format!("huge-{m}").as_bytes(),
            &req.encode_to_vec(),
        )
        .await
        .expect("send");
        for _ in 0..5 {
            let t = g.next_trace(gen::now_ns());
            let key = t.truth.trace_id.to_hex();
            for msg in &t.messages {
                gen::send(&p, INPUT, key.as_bytes(), msg)
                    .await
                    .expect("send");
            }
            normal.push(t.truth);
        }
    }
    let want: Vec<&Truth> = normal.iter().filter(|t| t.error || t.slow).collect();
    let ok = wait_until(Duration::from_secs(60), || {
        let got = out.traces();
        got.get(&huge).is_some_and(|o| o.distinct_spans == 100_000)
            && want.iter().all(|t| got.contains_key(&t.trace_id))
    })
    .await;
    out.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    sampler.stop().await;
    h.assert_no_broker_truncation();
    let got = out.traces();
    let o = got.get(&huge).expect("the huge error trace was kept");
    assert!(
        ok,
        "huge trace: {} of 100000 spans; normal kept {}/{}",
        o.distinct_spans,
        want.iter()
            .filter(|t| got.contains_key(&t.trace_id))
            .count(),
        want.len()
    );
    assert_eq!(o.spans, 100_000, "no span produced twice");
    assert_eq!(o.policy, "errors");
    let limit_records = out
        .records()
        .iter()
        .filter(|r| r.header(HEADER_FORCED).as_deref() == Some("trace_limit"))
        .count();
    assert_eq!(
        limit_records, 1,
        "the huge trace is decided once, at its limit"
    );
    for t in &want {
        assert_eq!(got[&t.trace_id].distinct_spans, t.spans);
    }
}
