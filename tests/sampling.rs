//! End to end over TCP: which traces come out, complete, on which topic.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tailsift::codec::TraceId;
use tailsift::gen;
use tailsift::telemetry::names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_error_and_slow_traces_and_thins_the_rest() {
    let h = Harness::new(16, 4);
    let policies = format!("{ERRORS_SLOW_AND}  - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: 10}}}}\n");
    let cfg = h.config(&policies, "1s", Some("300ms"));
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let truths = feed(&h, 3000, 0, 7, "lz4").await;
    let errors = truths.iter().filter(|t| t.error).count();
    let slow = truths.iter().filter(|t| t.slow).count();
    let must_keep = truths.iter().filter(|t| t.error || t.slow).count();
    let ok = wait_until(Duration::from_secs(60), || out.traces().len() >= must_keep).await;
    assert!(ok, "only {} traces came out", out.traces().len());
    out.settle(Duration::from_secs(3), Duration::from_secs(30))
        .await;
    sampler.stop().await;
    h.assert_no_broker_truncation();

    let got = out.traces();
    let by_id: HashMap<TraceId, &gen::Truth> = truths.iter().map(|t| (t.trace_id, t)).collect();
    for t in truths.iter().filter(|t| t.error || t.slow) {
        let o = got.get(&t.trace_id).unwrap_or_else(|| {
            panic!(
                "trace {} (error={}, slow={}) was not kept",
                t.trace_id, t.error, t.slow
            )
        });
        let want = if t.error { "errors" } else { "slow" };
        assert_eq!(
            o.policy, want,
            "trace {} kept by the wrong policy",
            t.trace_id
        );
    }
    for (id, o) in &got {
        let t = by_id
            .get(id)
            .unwrap_or_else(|| panic!("trace {id} came out but was never sent"));
        assert_eq!(
            (o.spans, o.distinct_spans, o.records, o.misplaced),
            (t.spans, t.spans, 1, 0),
            "trace {id} incomplete or split"
        );
    }
    let ordinary: Vec<_> = truths.iter().filter(|t| !t.error && !t.slow).collect();
    let kept = ordinary
        .iter()
        .filter(|t| got.contains_key(&t.trace_id))
        .count();
    let rate = kept as f64 / ordinary.len() as f64;
    let sigma = (0.1 * 0.9 / ordinary.len() as f64).sqrt();
    assert!(
        (rate - 0.1).abs() < 4.0 * sigma,
        "ordinary traces kept at {rate:.4}, policy says 0.10 (sigma {sigma:.4})"
    );
    assert!(
        errors > 0 && slow > 0,
        "the generator made {errors} error and {slow} slow traces"
    );
}

fn span(
    trace: TraceId,
    id: u8,
    parent: Option<u8>,
    error: bool,
    start_ms: u64,
    end_ms: u64,
) -> Span {
    Span {
        trace_id: trace.0.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("op-{id}"),
        start_time_unix_nano: 1_700_000_000_000_000_000 + start_ms * 1_000_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + end_ms * 1_000_000,
        status: Some(Status {
            message: String::new(),
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Ok as i32
            },
        }),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: service.into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

/// Spans spread over the decision wait follow one decision; late spans of a kept
/// trace are forwarded under it; a late ERROR span of a dropped trace promotes it:
/// it comes out whole (its earlier spans read again from the input), once, marked
/// `tailsift.promoted: late`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arriving_across_decision_wait_boundaries_follow_one_decision() {
    late_spans_after_the_decision("errors-across-waits", true).await;
}

/// With `promotion.enabled: false`, a dropped trace's late spans are dropped with
/// it, as the Collector does (and as every drop was final before promotion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_promotion_a_late_error_span_of_a_dropped_trace_is_dropped() {
    late_spans_after_the_decision("errors-no-promotion", false).await;
}

async fn late_spans_after_the_decision(policy: &str, promotion: bool) {
    let h = Harness::new(4, 2);
    // A policy name of the test's own: its evaluation counter counts only this
    // instance's traces (the metrics registry is the test process's).
    let policies = format!(
        "  - {{name: {policy}, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n"
    );
    let mut cfg = h.config(&policies, "1500ms", None);
    cfg.promotion.enabled = promotion;
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let p = h.producer("none");
    let kept = TraceId([0xaa; 16]);
    let dropped = TraceId([0xbb; 16]);
    let send = |trace: TraceId, spans: Vec<Span>| {
        let p = p.clone();
        async move {
            gen::send(&p, INPUT, trace.to_hex().as_bytes(), &request("svc", spans))
                .await
                .expect("send");
        }
    };
    // Both traces arrive in five messages spread over the decision wait; the error is
    // in the middle of the first.
    for i in 0..5u8 {
        send(kept, vec![span(kept, 10 + i, Some(1), i == 2, 0, 5)]).await;
        send(dropped, vec![span(dropped, 10 + i, Some(1), false, 0, 5)]).await;
        // Input shaping, not synchronisation: the records' timestamps (stream time)
        // spread over the wait.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Wait past the decision; then late spans: the kept trace's are forwarded, and
    // an error span of the dropped one promotes it (unless promotion is off).
    let first = wait_until(Duration::from_secs(20), || out.traces().contains_key(&kept)).await;
    assert!(first, "the error trace was not kept");
    // Both traces are due at the same moment, perhaps in different shards: the late
    // spans go only once the dropped one is decided too.
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    let dropped_decided = wait_until(Duration::from_secs(20), || {
        labelled_metric_at(
            addr,
            names::POLICY_EVALUATIONS,
            &[&format!("policy=\"{policy}\""), "decision=\"not_sampled\""],
        ) >= 1.0
    })
    .await;
    assert!(dropped_decided, "the ordinary trace was never decided");
    send(
        kept,
        vec![
            span(kept, 1, None, false, 0, 20),
            span(kept, 20, Some(1), false, 1, 2),
        ],
    )
    .await;
    send(dropped, vec![span(dropped, 1, None, true, 0, 20)]).await;
    let late = wait_until(Duration::from_secs(20), || {
        let got = out.traces();
        got.get(&kept).is_some_and(|t| t.spans == 7)
            && (!promotion || got.get(&dropped).is_some_and(|t| t.spans == 6))
    })
    .await;
    out.settle(Duration::from_secs(3), Duration::from_secs(20))
        .await;
    sampler.stop().await;
    let got = out.traces();
    assert!(
        late,
        "late spans of the kept trace were not forwarded: {:?}",
        got.get(&kept)
    );
    let k = &got[&kept];
    assert_eq!((k.spans, k.distinct_spans), (7, 7), "kept trace: {k:?}");
    assert_eq!(k.records, 2, "decided once, then one late record");
    assert_eq!(k.policy, policy);
    assert_eq!(k.promoted, "", "kept at its first decision");
    if promotion {
        let d = got
            .get(&dropped)
            .expect("the dropped trace was not promoted");
        assert_eq!(
            (d.spans, d.distinct_spans, d.records),
            (6, 6, 1),
            "promoted whole, once, in one record: {d:?}"
        );
        assert_eq!((d.policy.as_str(), d.promoted.as_str()), (policy, "late"));
    } else {
        assert!(
            !got.contains_key(&dropped),
            "late spans of a dropped trace came out: {:?}",
            got.get(&dropped)
        );
    }
}

/// `spans` sent from host `host` (its resource's `host.name`).
fn request_on(host: &str, spans: Vec<Span>) -> Vec<u8> {
    let mut r = ExportTraceServiceRequest::decode(&request(host, spans)[..]).expect("ours");
    r.resource_spans[0].resource = Some(Resource {
        attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "host.name".into(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        host.into(),
                    ),
                ),
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    r.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_measured_on_one_hosts_clock() {
    let h = Harness::new(4, 2);
    let slow = "  - {name: slow, type: latency, latency: {threshold_ms: 1000}}\n";
    let cfg = h.config(slow, "1500ms", None);
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let p = h.producer("none");
    let send = |trace: TraceId, host: &'static str, spans: Vec<Span>| {
        let p = p.clone();
        async move {
            gen::send(
                &p,
                INPUT,
                trace.to_hex().as_bytes(),
                &request_on(host, spans),
            )
            .await
            .expect("send");
        }
    };
    // Host b's clock runs 5 s ahead of host a's.
    const SKEW: u64 = 5_000;
    let (rooted, rootless, slow_rootless, slow_rooted) = (
        TraceId([0xc1; 16]),
        TraceId([0xc2; 16]),
        TraceId([0xc3; 16]),
        TraceId([0xc4; 16]),
    );
    // A 50 ms request whose downstream call is stamped by host b: the root says 50 ms.
    send(rooted, "a", vec![span(rooted, 1, None, false, 0, 50)]).await;
    send(
        rooted,
        "b",
        vec![span(rooted, 2, Some(1), false, SKEW + 10, SKEW + 40)],
    )
    .await;
    // The same without its root span (its process died): each host saw <= 40 ms,
    // though the span window across hosts is 5 s.
    send(
        rootless,
        "a",
        vec![span(rootless, 3, Some(9), false, 0, 40)],
    )
    .await;
    send(
        rootless,
        "b",
        vec![span(rootless, 2, Some(3), false, SKEW + 10, SKEW + 40)],
    )
    .await;
    // Genuinely slow without a root: host a saw 1.5 s.
    send(
        slow_rootless,
        "a",
        vec![span(slow_rootless, 3, Some(9), false, 0, 1_500)],
    )
    .await;
    send(
        slow_rootless,
        "b",
        vec![span(slow_rootless, 2, Some(3), false, SKEW, SKEW + 10)],
    )
    .await;
    // Genuinely slow with a root.
    send(
        slow_rooted,
        "a",
        vec![span(slow_rooted, 1, None, false, 0, 1_200)],
    )
    .await;
    let ok = wait_until(Duration::from_secs(20), || out.traces().len() >= 2).await;
    out.settle(Duration::from_secs(3), Duration::from_secs(20))
        .await;
    sampler.stop().await;
    let got = out.traces();
    assert!(ok, "slow traces did not come out: {got:?}");
    assert!(
        got.contains_key(&slow_rooted) && got.contains_key(&slow_rootless),
        "{got:?}"
    );
    assert!(
        !got.contains_key(&rooted),
        "clock skew made a 50 ms request slow"
    );
    assert!(
        !got.contains_key(&rootless),
        "clock skew made a rootless 40 ms trace slow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_input_in_every_compression_codec() {
    let h = Harness::new(8, 2);
    let cfg = h.config(
        "  - {name: all, type: always_sample}\n",
        "1s",
        Some("200ms"),
    );
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let mut truths = Vec::new();
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"]
        .into_iter()
        .enumerate()
    {
        truths.extend(feed(&h, 40, 0, 100 + i as u64, codec).await);
    }
    let ok = wait_until(Duration::from_secs(60), || {
        out.traces().len() >= truths.len()
    })
    .await;
    sampler.stop().await;
    let got = out.traces();
    assert!(ok, "{} of {} traces came out", got.len(), truths.len());
    for t in &truths {
        let o = got
            .get(&t.trace_id)
            .unwrap_or_else(|| panic!("trace {} missing", t.trace_id));
        assert_eq!(o.distinct_spans, t.spans, "trace {} incomplete", t.trace_id);
    }
}

/// Runs `policies` over generated traffic and checks that exactly the traces `want`
/// picks come out, whole, named by the policy `policy_of` gives. Returns the traffic.
async fn keeps_exactly(
    policies: &str,
    seed: u64,
    want: impl Fn(&gen::Truth) -> bool,
    policy_of: impl Fn(&gen::Truth) -> &'static str,
) -> Vec<gen::Truth> {
    let h = Harness::new(8, 2);
    let cfg = h.config(policies, "1s", Some("200ms"));
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let truths = feed(&h, 600, 0, seed, "lz4").await;
    let n = truths.iter().filter(|t| want(t)).count();
    let ok = wait_until(Duration::from_secs(30), || out.traces().len() >= n).await;
    out.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    sampler.stop().await;
    let got = out.traces();
    assert!(ok && n > 0, "{} of {n} traces came out", got.len());
    for t in &truths {
        assert_eq!(
            got.contains_key(&t.trace_id),
            want(t),
            "trace {} (error={}, route={}, spans={})",
            t.trace_id,
            t.error,
            t.route,
            t.spans
        );
        if let Some(o) = got.get(&t.trace_id) {
            assert_eq!(
                (o.policy.as_str(), o.distinct_spans),
                (policy_of(t), t.spans)
            );
        }
    }
    truths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_policies_keep_exactly_the_matching_traces() {
    let policies = "  - {name: server-errors, type: numeric_attribute, numeric_attribute: {key: http.status_code, min_value: 500, max_value: 599}}\n  - {name: checkout, type: string_attribute, string_attribute: {key: http.route, values: ['^/api/check'], enabled_regex_matching: true}}\n";
    // The generator marks error traces with http.status_code 500.
    keeps_exactly(
        policies,
        31,
        |t| t.error || t.route == "/api/checkout",
        |t| if t.error { "server-errors" } else { "checkout" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_count_keeps_exactly_the_traces_within_bounds() {
    let policies =
        "  - {name: wide, type: span_count, span_count: {min_spans: 25, max_spans: 28}}\n";
    keeps_exactly(policies, 53, |t| (25..=28).contains(&t.spans), |_| "wide").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_beats_every_sampling_vote() {
    // Errors are kept, except on the checkout route, which a drop policy vetoes, and
    // so are slow checkouts, which an `and` policy would keep.
    let policies = "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n  - name: slow-checkouts\n    type: and\n    and:\n      and_sub_policy:\n        - {name: slow, type: latency, latency: {threshold_ms: 1000}}\n        - {name: checkout, type: string_attribute, string_attribute: {key: http.route, values: [/api/checkout]}}\n  - name: no-checkout\n    type: drop\n    drop:\n      drop_sub_policy:\n        - {name: checkout, type: string_attribute, string_attribute: {key: http.route, values: [/api/checkout]}}\n";
    let truths = keeps_exactly(
        policies,
        59,
        |t| t.error && t.route != "/api/checkout",
        |_| "errors",
    )
    .await;
    let vetoed = truths
        .iter()
        .filter(|t| (t.error || t.slow) && t.route == "/api/checkout")
        .count();
    assert!(
        vetoed > 0,
        "the traffic had no error or slow checkout to veto"
    );
}
