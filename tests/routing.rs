//! Per-policy output topics and the annotation of kept spans, end to end over TCP.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tailsift::codec::probability_of;
use tailsift::demo::Collector;

const ERRORS_TOPIC: &str = "errors-out";

/// For every span of every record: (policy attribute, probability attribute, the
/// probability its tracestate's `ot=th:` stands for).
fn annotations(records: &[tailsift::demo::Record]) -> Vec<(String, Option<f64>, Option<f64>)> {
    let mut out = Vec::new();
    for r in records {
        let req = ExportTraceServiceRequest::decode(&r.payload[..]).expect("OTLP out");
        for span in req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let attr = |key: &str| {
                span.attributes
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
            };
            let policy = match attr("tailsampling.policy") {
                Some(Value::StringValue(s)) => s,
                other => panic!("span without a policy attribute: {other:?}"),
            };
            let probability = match attr("tailsampling.probability") {
                Some(Value::DoubleValue(p)) => Some(p),
                _ => None,
            };
            let th = span
                .trace_state
                .split(',')
                .find_map(|e| e.trim().strip_prefix("ot="))
                .and_then(|ot| ot.split(';').find_map(|s| s.strip_prefix("th:")))
                .and_then(probability_of);
            out.push((policy, probability, th));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_route_to_their_topics_and_annotate_kept_spans() {
    let h = Harness::new(8, 2);
    h.broker
        .create_topic(ERRORS_TOPIC, 2)
        .expect("errors topic");
    let policies = format!(
        "  - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}, topic: {ERRORS_TOPIC}}}\n  - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: 25}}}}\n"
    );
    let cfg = h.config(&policies, "1s", Some("200ms"));
    let out = h.collector();
    let errors_out = Collector::start(&h.bootstrap, ERRORS_TOPIC, 2).expect("collector");
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let truths = feed(&h, 600, 0, 11, "lz4").await;
    let errors = truths.iter().filter(|t| t.error).count();
    let ok = wait_until(Duration::from_secs(30), || {
        errors_out.traces().len() >= errors
    })
    .await;
    out.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    sampler.stop().await;
    assert!(
        ok && errors > 0,
        "{} of {errors} error traces came out",
        errors_out.traces().len()
    );

    let (routed, rest) = (errors_out.traces(), out.traces());
    for t in &truths {
        if t.error {
            let o = routed
                .get(&t.trace_id)
                .unwrap_or_else(|| panic!("error trace {} not on {ERRORS_TOPIC}", t.trace_id));
            assert_eq!(
                (o.distinct_spans, o.records, o.policy.as_str()),
                (t.spans, 1, "errors")
            );
            assert!(
                !rest.contains_key(&t.trace_id),
                "error trace {} also on the output",
                t.trace_id
            );
        } else {
            assert!(
                !routed.contains_key(&t.trace_id),
                "trace {} routed without an error",
                t.trace_id
            );
            if let Some(o) = rest.get(&t.trace_id) {
                assert_eq!((o.distinct_spans, o.policy.as_str()), (t.spans, "baseline"));
            }
        }
    }
    assert!(!rest.is_empty(), "the baseline kept nothing");

    // Errors are kept with certainty: threshold 0. The baseline keeps a quarter: the
    // threshold parses back to 0.25 and the attribute says so.
    for (policy, p, th) in annotations(&errors_out.records()) {
        assert_eq!((policy.as_str(), p, th), ("errors", Some(1.0), Some(1.0)));
    }
    for (policy, p, th) in annotations(&out.records()) {
        assert_eq!(
            (policy.as_str(), p, th),
            ("baseline", Some(0.25), Some(0.25))
        );
    }
}
