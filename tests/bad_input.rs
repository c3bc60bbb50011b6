//! Malformed input goes to the dead-letter topic, unchanged and explained, and the
//! pipeline carries on and commits past it.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic as otlp;
use otlp::collector::trace::v1::ExportTraceServiceRequest as Request;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tailsift::demo::{Collector, Record};
use tailsift::gen;
use tailsift::sink::{
    HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dead_letter_topic_and_the_rest_flows() {
    let h = Harness::new(2, 2);
    let cfg = h.config("  - {name: all, type: always_sample}\n", "500ms", None);
    let (out, dlq, sampler, good) = start_with_a_trace(&h, &cfg).await;
    let truncated = good.messages[0][..good.messages[0].len() / 2].to_vec();
    let mut zero_trace_id = good.messages[0].clone();
    // Overwrite every span's trace id with zeros: no span of it can be grouped, so the
    // message goes as it came.
    let id = good.truth.trace_id.0;
    while let Some(at) = zero_trace_id.windows(16).position(|w| w == id) {
        zero_trace_id[at..at + 16].fill(0);
    }
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
        let why = dead_letter_as_sent(&letters, key, payload);
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

/// The route stage (unkeyed input) sends what it cannot decode to the dead-letter
/// topic as it came, with its key, where it came from and why, and routes the rest:
/// the trace sent unkeyed beside the bad messages comes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_stage_dead_letters_what_it_cannot_decode_and_routes_the_rest() {
    let h = Harness::new(2, 2);
    h.broker
        .create_topic("spans-by-trace", 2)
        .expect("routed topic");
    let mut yaml = h.config_yaml("  - {name: all, type: always_sample}\n", "500ms", None);
    yaml.push_str("route:\n  topics: [spans]\n");
    let cfg = tailsift::config::Config::from_yaml(&yaml).expect("valid config");
    let (out, dlq, sampler, good) = start_with_a_trace(&h, &cfg).await;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"\xff\xfe this is not protobuf \x00\x01".to_vec(),
        ),
        (
            "truncated",
            good.messages[0][..good.messages[0].len() / 2].to_vec(),
        ),
    ];
    // Both compressions: an uncompressed payload is read where librdkafka fetched it,
    // an lz4 one where it was decompressed. (The producers live to the end: `send`
    // only enqueues.)
    let producers = [h.producer("none"), h.producer("lz4")];
    for (p, (key, payload)) in producers.iter().zip(&bad) {
        gen::send(p, INPUT, key.as_bytes(), payload)
            .await
            .expect("send");
    }
    for m in &good.messages {
        gen::send(&producers[1], INPUT, &[], m).await.expect("send");
    }
    let ok = wait_until(Duration::from_secs(30), || {
        dlq.len() >= bad.len() && out.traces().contains_key(&good.truth.trace_id)
    })
    .await;
    sampler.stop().await;
    assert!(
        ok,
        "dead letters: {}, output traces: {}",
        dlq.len(),
        out.traces().len()
    );
    let letters = dlq.records();
    assert_eq!(letters.len(), bad.len());
    for (key, payload) in &bad {
        let why = dead_letter_as_sent(&letters, key, payload);
        assert!(
            why.starts_with("invalid_protobuf") || why.starts_with("truncated"),
            "{key}: reason {why:?}"
        );
    }
    let got = out.traces();
    assert_eq!(got[&good.truth.trace_id].distinct_spans, good.truth.spans);
    assert_eq!(got.len(), 1);
}

/// The output and dead-letter collectors, an instance on `cfg` with its partitions
/// assigned, and a good trace to send beside the bad input.
async fn start_with_a_trace(
    h: &Harness,
    cfg: &tailsift::config::Config,
) -> (Collector, Collector, Instance, gen::GeneratedTrace) {
    let out = h.collector();
    let dlq = h.dead_letters();
    let sampler = Instance::start(cfg).await;
    sampler.wait_assigned().await;
    let mut g = gen::Generator::new(gen::GenConfig::default());
    (out, dlq, sampler, g.next_trace(gen::now_ns()))
}

/// The dead letter of the input message sent with `key`: it carries the message's
/// bytes as sent, its key, and where it came from (the input topic, one of its two
/// partitions, an offset). Returns its reason.
fn dead_letter_as_sent(letters: &[Record], key: &str, payload: &[u8]) -> String {
    let r = letters
        .iter()
        .find(|r| r.key.as_deref() == Some(key.as_bytes()))
        .unwrap_or_else(|| panic!("{key} not dead-lettered with its key"));
    assert_eq!(
        r.payload, payload,
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
        .is_some_and(|o| o >= 0));
    r.header(HEADER_ERROR).expect("reason header")
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

/// A trace of at least `n` spans, its messages decoded.
fn trace_of_at_least(g: &mut gen::Generator, n: usize) -> (gen::Truth, Vec<Request>) {
    loop {
        let t = g.next_trace(gen::now_ns());
        if t.truth.spans >= n {
            let requests = t
                .messages
                .iter()
                .map(|m| Request::decode(&m[..]).expect("generated OTLP"))
                .collect();
            return (t.truth, requests);
        }
    }
}

/// The spans of `requests` in order, mutable.
fn spans_mut(requests: &mut [Request]) -> Vec<&mut otlp::trace::v1::Span> {
    requests
        .iter_mut()
        .flat_map(|r| &mut r.resource_spans)
        .flat_map(|rs| &mut rs.scope_spans)
        .flat_map(|ss| &mut ss.spans)
        .collect()
}

/// An attribute whose value is `levels` any values nested in arrays.
fn nested(levels: usize) -> otlp::common::v1::KeyValue {
    use otlp::common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue};
    let mut v = AnyValue {
        value: Some(Value::StringValue("leaf".into())),
    };
    for _ in 1..levels {
        v = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue { values: vec![v] })),
        };
    }
    KeyValue {
        key: "deep".into(),
        value: Some(v),
        ..Default::default()
    }
}

/// Kept spans that standard decoders would refuse (defect 11 of the hostile-testing
/// issue) leave for the dead-letter topic with the reason; the rest of their trace is
/// output in records prost decodes. A span without a valid trace id is set aside alone
/// and the valid trace beside it in the same message is sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_decoders_would_refuse_are_dead_lettered_and_the_rest_of_the_trace_flows() {
    let h = Harness::new(2, 2);
    let cfg = h.config("  - {name: all, type: always_sample}\n", "500ms", None);
    let out = h.collector();
    let dlq = h.dead_letters();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let mut g = gen::Generator::new(gen::GenConfig::default());

    // Trace t: three of its spans are refused by decoders, each for another reason.
    let (t, mut t_msgs) = trace_of_at_least(&mut g, 5);
    {
        let mut spans = spans_mut(&mut t_msgs);
        spans[0].name = "\u{1}NOTUTF8\u{1}".into(); // turned into invalid UTF-8 below
        spans[1].span_id = vec![1, 2, 3];
        spans[2].attributes.push(nested(60));
    }
    let t_payloads: Vec<Vec<u8>> = t_msgs
        .iter()
        .map(|r| {
            let mut b = r.encode_to_vec();
            if let Some(at) = b.windows(9).position(|w| w == b"\x01NOTUTF8\x01") {
                b[at..at + 9].copy_from_slice(b"caf\xc3\x28\xff\xfe!!");
            }
            b
        })
        .collect();

    // Trace u: its first message also carries a span whose trace id is all zero.
    let (u, mut u_msgs) = trace_of_at_least(&mut g, 2);
    let mut orphan = spans_mut(&mut u_msgs)[0].clone();
    orphan.trace_id = vec![0; 16];
    orphan.span_id = vec![9; 8];
    u_msgs[0].resource_spans[0].scope_spans[0]
        .spans
        .push(orphan);

    let p = h.producer("none");
    for (truth, payloads) in [
        (&t, t_payloads),
        (&u, u_msgs.iter().map(|r| r.encode_to_vec()).collect()),
    ] {
        let key = truth.trace_id.to_hex();
        for m in &payloads {
            gen::send(&p, INPUT, key.as_bytes(), m).await.expect("send");
        }
    }
    let ok = wait_until(Duration::from_secs(30), || {
        let got = out.traces();
        dlq.len() >= 2
            && got
                .get(&t.trace_id)
                .is_some_and(|o| o.distinct_spans == t.spans - 3)
            && got
                .get(&u.trace_id)
                .is_some_and(|o| o.distinct_spans == u.spans)
    })
    .await;
    let got = out.traces();
    let state = |id| {
        got.get(id)
            .map(|o: &tailsift::demo::OutputTrace| o.distinct_spans)
    };
    assert!(
        ok,
        "t: {:?} of {} - 3 spans, u: {:?} of {}, dead letters {}, undecodable output records {:?}",
        state(&t.trace_id),
        t.spans,
        state(&u.trace_id),
        u.spans,
        dlq.len(),
        got.get(&tailsift::codec::TraceId([0; 16]))
            .map(|o| o.misplaced)
    );
    let committed = wait_until(Duration::from_secs(20), || {
        committed_total(&h.bootstrap) == (t_msgs.len() + u_msgs.len()) as i64
    })
    .await;
    assert!(committed, "every input message is committed");
    sampler.stop().await;

    for r in out.records() {
        assert!(
            Request::decode(&r.payload[..]).is_ok(),
            "every output record decodes with prost's default limits"
        );
    }
    assert_eq!(
        got.len(),
        2,
        "no undecodable output record: {:?}",
        got.keys()
    );
    let letters = dlq.records();
    assert_eq!(letters.len(), 2);
    let set_aside = |r: &tailsift::demo::Record| {
        let (mut spans, mut rejected) = (Vec::new(), Vec::new());
        tailsift::codec::scan_partial(
            &bytes::Bytes::from(r.payload.clone()),
            &Default::default(),
            &mut Default::default(),
            &mut spans,
            &mut rejected,
        )
        .expect("a dead letter of spans is OTLP framing");
        (spans, rejected)
    };
    let t_key = t.trace_id.to_hex();
    let refused = letters
        .iter()
        .find(|r| r.key.as_deref() == Some(t_key.as_bytes()))
        .expect("t's refused spans dead-lettered under its key");
    let (spans, _) = set_aside(refused);
    assert_eq!(spans.len(), 3, "exactly the three refused spans");
    assert!(spans.iter().all(|s| s.trace_id == t.trace_id));
    let why = refused.header(HEADER_ERROR).expect("reason");
    assert!(
        why.contains("3 of") && why.contains("refused by OTLP decoders"),
        "{why}"
    );
    assert_eq!(refused.header("tailsift.policy").as_deref(), Some("all"));
    let u_key = u.trace_id.to_hex();
    let orphan = letters
        .iter()
        .find(|r| r.key.as_deref() == Some(u_key.as_bytes()))
        .expect("the zero-id span dead-lettered under its message's key");
    let (spans, rejected) = set_aside(orphan);
    assert!(spans.is_empty());
    assert_eq!(rejected.len(), 1, "only the span without a trace id");
    let why = orphan.header(HEADER_ERROR).expect("reason");
    assert!(why.starts_with("bad_trace_id: 1 of"), "{why}");
    assert_eq!(orphan.header(HEADER_SOURCE_TOPIC).as_deref(), Some(INPUT));
}
