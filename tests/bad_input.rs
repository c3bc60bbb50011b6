//! Malformed input goes to the dead-letter topic, unchanged and explained, and the
//! pipeline carries on and commits past it.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tailsift::gen;
use tailsift::sink::{
    HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dead_letter_topic_and_the_rest_flows() {
    let h = Harness::new(2, 2);
    let cfg = h.config("  - {name: all, type: always_sample}\n", "500ms", None);
    let out = h.collector();
    let dlq = h.dead_letters();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let mut g = gen::Generator::new(gen::GenConfig::default());
    let good = g.next_trace(gen::now_ns());
    let truncated = good.messages[0][..good.messages[0].len() / 2].to_vec();
    let mut zero_trace_id = good.messages[0].clone();
    // Overwrite the first span's trace id (16 bytes after its 0x0a 0x10 key) with zeros.
    let id = good.truth.trace_id.0;
    let at = zero_trace_id
        .windows(16)
        .position(|w| w == id)
        .expect("trace id in payload");
    zero_trace_id[at..at + 16].fill(0);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"\xff\xfe this is not protobuf \x00\x01".to_vec(),
        ),
        ("truncated", truncated),
        ("bad_trace_id", zero_trace_id),
    ];
    let p = h.producer("none");
    for (key, payload) in &bad {
        gen::send(&p, INPUT, key.as_bytes(), payload)
            .await
            .expect("send");
    }
    let key = good.truth.trace_id.to_hex();
    for m in &good.messages {
        gen::send(&p, INPUT, key.as_bytes(), m).await.expect("send");
    }
    let ok = wait_until(Duration::from_secs(30), || {
        dlq.len() >= 3 && out.traces().contains_key(&good.truth.trace_id)
    })
    .await;
    assert!(
        ok,
        "dead letters: {}, output traces: {}",
        dlq.len(),
        out.traces().len()
    );
    // Every input message, good and bad, is eventually committed.
    let total = (bad.len() + good.messages.len()) as i64;
    let committed = wait_until(Duration::from_secs(20), || {
        committed_total(&h.bootstrap) == total
    })
    .await;
    assert!(
        committed,
        "committed {} of {total} messages",
        committed_total(&h.bootstrap)
    );
    sampler.stop().await;

    let letters = dlq.records();
    assert_eq!(letters.len(), 3);
    for (key, payload) in &bad {
        let r = letters
            .iter()
            .find(|r| r.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} not dead-lettered"));
        assert_eq!(
            &r.payload, payload,
            "{key}: dead letter must carry the original bytes"
        );
        assert_eq!(r.header(HEADER_SOURCE_TOPIC).as_deref(), Some(INPUT));
        let partition: i32 = r
            .header(HEADER_SOURCE_PARTITION)
            .and_then(|p| p.parse().ok())
            .expect("partition header");
        assert!((0..2).contains(&partition));
        assert!(r
            .header(HEADER_SOURCE_OFFSET)
            .and_then(|o| o.parse::<i64>().ok())
            .is_some());
        let why = r.header(HEADER_ERROR).expect("reason header");
        let code = match *key {
            "garbage" => "invalid_protobuf",
            "truncated" => "truncated",
            _ => "bad_trace_id",
        };
        assert!(
            why.starts_with(code) || (*key == "garbage" && why.starts_with("truncated")),
            "{key}: reason {why:?}"
        );
    }
    let got = out.traces();
    assert_eq!(got[&good.truth.trace_id].distinct_spans, good.truth.spans);
    assert_eq!(got.len(), 1);
}

/// Sum of the committed offsets of the test group over the input partitions.
fn committed_total(bootstrap: &str) -> i64 {
    let c: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-group")
        .create()
    {
        Ok(c) => c,
        Err(_) => return -1,
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        let _ = tpl.add_partition(INPUT, p);
    }
    match c.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(list) => list
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum(),
        Err(_) => -1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_trace_with_a_span_over_the_record_limit_still_comes_out_whole() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use prost::Message as _;
    let h = Harness::new(2, 2);
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "500ms", None).replace(
        "  commit_interval: 200ms\n",
        "  commit_interval: 200ms\n  max_message_bytes: 100000\n",
    );
    let cfg = tailsift::config::Config::from_yaml(&yaml).expect("config");
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    // An error trace one of whose spans carries a 300 kB attribute: three times the
    // record limit, so it goes alone in a record over the limit.
    let mut g = gen::Generator::new(gen::GenConfig {
        error_rate: 1.0,
        ..Default::default()
    });
    let t = g.next_trace(gen::now_ns());
    let mut first = ExportTraceServiceRequest::decode(&t.messages[0][..]).expect("valid");
    first.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "big".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(300_000))),
            }),
            ..Default::default()
        });
    let p = h.producer("lz4");
    let key = t.truth.trace_id.to_hex();
    gen::send(&p, INPUT, key.as_bytes(), &first.encode_to_vec())
        .await
        .expect("send");
    for m in &t.messages[1..] {
        gen::send(&p, INPUT, key.as_bytes(), m).await.expect("send");
    }
    let whole = wait_until(Duration::from_secs(30), || {
        out.traces()
            .get(&t.truth.trace_id)
            .is_some_and(|o| o.distinct_spans == t.truth.spans)
    })
    .await;
    sampler.stop().await;
    let got = out.traces();
    let o = got.get(&t.truth.trace_id);
    assert!(
        whole,
        "trace of {} spans came out as {:?}",
        t.truth.spans,
        o.map(|o| (o.records, o.distinct_spans))
    );
    assert!(
        o.is_some_and(|o| o.records >= 2),
        "the big span went alone, the rest within the limit"
    );
}
