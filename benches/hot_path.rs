//! Micro benchmarks of the hot path: codec scan (beside a full prost decode of the same
//! bytes), the check of kept spans before output, buffer insert + decide, policy
//! evaluation, re-encode.
//!
//! `cargo bench --bench hot_path`

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailsift::buffer::{Shard, TraceLimits};
use tailsift::codec::{
    check_span, encode_trace, scan, AttrMatchers, FrameInterner, Message as Scanned, Span, SpanRef,
};
use tailsift::config::Config;
use tailsift::decide::Decider;
use tailsift::flow::Pin;
use tailsift::gen::{GenConfig, Generator};
use tailsift::policy::{PolicySet, TraceSummary};

const POLICIES: &str = r#"
kafka: {brokers: x, input_topics: [i], output_topic: o}
policies:
  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  - {name: slow, type: latency, latency: {threshold_ms: 1000}}
  - {name: server-errors, type: numeric_attribute, numeric_attribute: {key: http.status_code, min_value: 500, max_value: 599}}
  - {name: checkout, type: string_attribute, string_attribute: {key: http.route, values: ["/api/checkout"]}}
  - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 5}}
"#;

/// Batches of ~500 spans of many traces, as an exporter sends them.
fn batches() -> Vec<Bytes> {
    let mut g = Generator::new(GenConfig::default());
    let mut out = Vec::new();
    let mut cur = ExportTraceServiceRequest::default();
    let mut n = 0;
    for _ in 0..2000 {
        for m in g.next_trace(1_700_000_000_000_000_000).messages {
            let r = ExportTraceServiceRequest::decode(&m[..]).expect("valid");
            n += r.resource_spans[0].scope_spans[0].spans.len();
            cur.resource_spans.extend(r.resource_spans);
            if n >= 500 {
                out.push(Bytes::from(std::mem::take(&mut cur).encode_to_vec()));
                n = 0;
            }
        }
    }
    out
}

fn policy_set() -> PolicySet {
    let cfg = Config::from_yaml(POLICIES).expect("valid");
    PolicySet::build(&cfg.policies).expect("builds")
}

/// Each batch scanned: its message and its spans sorted by trace id.
fn scan_all(input: &[Bytes], keys: &AttrMatchers) -> Vec<(Scanned, Vec<Span>)> {
    let mut frames = FrameInterner::default();
    input
        .iter()
        .map(|b| {
            let mut spans = Vec::new();
            let msg = scan(b, keys, &mut frames, &mut spans).expect("valid");
            spans.sort_by_key(|s| s.trace_id);
            (msg, spans)
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let input = batches();
    let bytes: usize = input.iter().map(Bytes::len).sum();
    let keys = policy_set().keys;
    let scanned = scan_all(&input, &keys);
    let n_spans: usize = scanned.iter().map(|(_, s)| s.len()).sum();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("scan", |b| {
        // One interner for the run, as each scanner keeps one.
        let mut frames = FrameInterner::default();
        b.iter(|| {
            let mut spans: Vec<Span> = Vec::with_capacity(n_spans);
            for p in &input {
                scan(p, &keys, &mut frames, &mut spans).expect("valid");
            }
            black_box(spans.len())
        })
    });
    g.bench_function("prost_decode", |b| {
        b.iter(|| {
            let mut n = 0;
            for p in &input {
                let r = ExportTraceServiceRequest::decode(&p[..]).expect("valid");
                n += r.resource_spans.len();
            }
            black_box(n)
        })
    });
    g.finish();
    eprintln!(
        "codec input: {} batches, {bytes} bytes, {n_spans} spans ({} B/span)",
        input.len(),
        bytes / n_spans
    );

    // The check every kept span gets before it is encoded for output (what standard
    // decoders would refuse), here over every span: bytes of span bodies per second.
    let refs: Vec<SpanRef> = scanned
        .iter()
        .flat_map(|(m, spans)| spans.iter().map(move |s| m.span_ref(s)))
        .collect();
    let span_bytes: usize = refs.iter().map(|r| r.bytes.len()).sum();
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Bytes(span_bytes as u64));
    g.bench_function("kept_spans", |b| {
        b.iter(|| black_box(refs.iter().filter(|r| check_span(*r).is_ok()).count()))
    });
    g.finish();

    // Re-encode one trace of ~20 spans.
    let id = scanned[0].1[0].trace_id;
    let trace: Vec<SpanRef> = scanned
        .iter()
        .flat_map(|(m, spans)| {
            spans
                .iter()
                .filter(|s| s.trace_id == id)
                .map(move |s| m.span_ref(s))
        })
        .collect();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(trace.len() as u64));
    g.bench_function("trace", |b| {
        b.iter(|| black_box(encode_trace(&trace, 1_000_000)))
    });
    g.finish();
}

fn buffer_and_decide(c: &mut Criterion) {
    let input = batches();
    let set = policy_set();
    let keys = set.keys.clone();
    let decider = Decider::new(set, false);
    let scanned = scan_all(&input, &keys);
    let n: usize = scanned.iter().map(|(_, s)| s.len()).sum();
    let pin = Pin {
        slot: 0,
        epoch: 1,
        offset: 0,
        partition: 0,
    };
    let mut g = c.benchmark_group("buffer");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("insert_and_decide", |b| {
        b.iter(|| {
            let t0 = 1_700_000_000_000u64;
            let mut shard = Shard::new(Duration::from_secs(1), None, TraceLimits::default());
            for (msg, spans) in &scanned {
                for group in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
                    shard.insert(group[0].trace_id, msg, group, pin, t0);
                }
            }
            let mut due = Vec::new();
            shard.take_due(|_| Some(t0 + 2_000), &mut due);
            let kept = due
                .iter()
                .filter(|e| decider.decide(&e.summary).keep())
                .count();
            black_box(kept)
        })
    });
    g.finish();

    // Policy evaluation alone, per trace.
    let mut spans: Vec<&Span> = scanned.iter().flat_map(|(_, s)| s).collect();
    spans.sort_by_key(|s| s.trace_id);
    let mut summaries: Vec<TraceSummary> = Vec::new();
    for s in spans {
        if summaries.last().is_none_or(|t| t.trace_id != s.trace_id) {
            summaries.push(TraceSummary::new(s.trace_id));
        }
        if let Some(t) = summaries.last_mut() {
            t.add(s);
        }
    }
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(summaries.len() as u64));
    g.bench_function("five_policies_per_trace", |b| {
        b.iter(|| {
            black_box(
                summaries
                    .iter()
                    .filter(|t| decider.decide(t).keep())
                    .count(),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = codec, buffer_and_decide
}
criterion_main!(benches);
