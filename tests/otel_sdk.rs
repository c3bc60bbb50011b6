//! OTLP written by the real OpenTelemetry SDK (tests/data, made by tests/data/make_otel_sdk_traces.py), with its ground truth.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailsift::codec::TraceId;
use tailsift::gen;

/// Errors and slow traces (root span >= 1 s) kept, nothing else, every one complete.
///
/// `decision_wait` must cover how far apart a trace's spans arrive: the by-trace file
/// is ordered by service, so a trace's first and last records are most of the file
/// apart, and its root (first service) arrives long before its children.
async fn run(records: Vec<Vec<u8>>, keyed: bool, decision_wait: &str, after_root: Option<&str>) {
    let truth = testdata_truth();
    let h = Harness::new(16, 4);
    let cfg = h.config(ERRORS_SLOW_AND, decision_wait, after_root);
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let p = h.producer("lz4");
    for (i, r) in records.iter().enumerate() {
        if keyed {
            let req = ExportTraceServiceRequest::decode(&r[..]).expect("testdata is OTLP");
            let id = &req.resource_spans[0].scope_spans[0].spans[0].trace_id;
            let id = TraceId(id[..].try_into().expect("16-byte trace id"));
            gen::send(&p, INPUT, id.to_hex().as_bytes(), r)
                .await
                .expect("send");
        } else {
            // Unkeyed batches, spread round-robin: one instance owns every partition,
            // so the buffer still joins each trace's spans.
            let key = (i % 16).to_string();
            gen::send(&p, INPUT, key.as_bytes(), r).await.expect("send");
        }
    }
    let want: Vec<(&TraceId, &(usize, bool, u64))> =
        truth.iter().filter(|(_, t)| t.1 || t.2 >= 1000).collect();
    let ok = wait_until(Duration::from_secs(90), || out.traces().len() >= want.len()).await;
    out.settle(Duration::from_secs(3), Duration::from_secs(30))
        .await;
    sampler.stop().await;
    h.assert_no_broker_truncation();
    let got = out.traces();
    assert!(ok, "{} of {} traces came out", got.len(), want.len());
    for (id, (spans, error, root_ms)) in &want {
        let o = got
            .get(id)
            .unwrap_or_else(|| panic!("trace {id} (error={error}, root {root_ms} ms) not kept"));
        assert_eq!(
            (o.spans, o.distinct_spans, o.records, o.misplaced),
            (*spans, *spans, 1, 0),
            "trace {id}"
        );
    }
    assert_eq!(got.len(), want.len(), "traces kept that no policy asks for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_traces_keyed_by_trace_id() {
    run(testdata("otel-sdk-by-trace.bin"), true, "10s", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_mixed_batches() {
    run(testdata("otel-sdk-batches.bin"), false, "2s", Some("500ms")).await;
}
