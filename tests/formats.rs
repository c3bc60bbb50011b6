//! Every input encoding end to end through the embedded broker: the traces the
//! Collector's own translators wrote (tests/data/formats, made by
//! scripts/testdata/formats) go in as the Collector's kafka exporter sends them
//! (Jaeger one span per message keyed by trace id, Zipkin and OTLP a batch per
//! message), and the error traces come out whole, once, as OTLP; a message that is
//! not of its topic's encoding goes to the dead-letter topic saying so.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tailsift::codec::TraceId;
use tailsift::gen;
use tailsift::sink::HEADER_ERROR;
use tailsift::telemetry::names;

/// The error traces of the data set (trace 3 fails in `checkout`, trace 2 in
/// `payments`), two spans each; traces 1 and 4 have none.
fn errors() -> Vec<TraceId> {
    [0x20u8, 0x30]
        .iter()
        .map(|b| TraceId(std::array::from_fn(|i| b + i as u8)))
        .collect()
}

fn data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/formats")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sends `messages` (with their keys, `None`: unkeyed) to a topic of `encoding`,
/// plus one message that is not of it, and checks what comes out (OTLP protobuf).
async fn run(encoding: &str, messages: Vec<(Option<Vec<u8>>, Vec<u8>)>) {
    run_to(encoding, "otlp_proto", messages).await;
}

/// As [`run`], with kept records in `output` encoding.
async fn run_to(encoding: &str, output: &str, messages: Vec<(Option<Vec<u8>>, Vec<u8>)>) {
    let h = Harness::new(4, 2);
    let yaml = h
        .config_yaml(
            "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n",
            "1s",
            None,
        )
        .replace(
            "  input_topics: [spans]\n",
            &format!(
                "  input_topics: [spans]\n  input_encoding: {encoding}\n  output_encoding: {output}\n"
            ),
        );
    let cfg = tailsift::config::Config::from_yaml(&yaml).expect("valid");
    let out = h.collector();
    let dlq = h.dead_letters();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let p = h.producer("none");
    let unkeyed = messages.iter().filter(|(k, _)| k.is_none()).count();
    for (i, (key, m)) in messages.iter().enumerate() {
        // Unkeyed input spread by hand: one instance owns every partition.
        let spread = (i % 4).to_string().into_bytes();
        let key = key.as_deref().unwrap_or(&spread);
        gen::send(&p, INPUT, key, m).await.expect("send");
    }
    let not_it: &[u8] = if encoding.ends_with("json") {
        b"\x0a\x02\xff\xff"
    } else {
        b"{\"this is\": \"json\"}"
    };
    gen::send(&p, INPUT, b"bad", not_it).await.expect("send");
    let want = errors();
    let ok = wait_until(Duration::from_secs(60), || {
        out.traces().len() >= want.len() && !dlq.records().is_empty()
    })
    .await;
    out.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    let addr = sampler.running.telemetry_addr.expect("metrics served");
    let counted = labelled_metric_at(addr, names::INPUT_UNKEYED, &["reason=\"not_trace_id\""]);
    sampler.stop().await;
    assert!(
        ok,
        "{encoding}: {} traces out, {} dead letters",
        out.traces().len(),
        dlq.records().len()
    );
    let json = output == "otlp_json";
    for r in out.records() {
        assert_eq!(
            r.payload.first() == Some(&b'{'),
            json,
            "{encoding}: a kept record not in {output}"
        );
    }
    let got = out.traces();
    for id in &want {
        let t = got
            .get(id)
            .unwrap_or_else(|| panic!("{encoding}: error trace {id} not kept"));
        assert_eq!(
            (t.spans, t.distinct_spans, t.records, t.misplaced),
            (2, 2, 1, 0),
            "{encoding}: trace {id}"
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{encoding}: traces kept without an error"
    );
    let bad = dlq.records();
    assert_eq!(bad.len(), 1, "{encoding}: dead letters");
    assert_eq!(bad[0].payload, not_it, "{encoding}: the message as it came");
    let why = bad[0].header(HEADER_ERROR).expect("reason");
    assert!(
        why.starts_with(&format!("bad_encoding: not {encoding}")),
        "{encoding}: {why}"
    );
    // The keys given by hand to unkeyed input are not trace ids; the bad one neither.
    assert!(
        counted >= (unkeyed + 1) as f64,
        "{encoding}: {counted} counted as not keyed by trace id"
    );
}

fn one(name: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    vec![(None, data(name))]
}

/// Jaeger messages with the keys the kafka exporter gave them.
fn jaeger(name: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let keys = String::from_utf8(data("jaeger_keys.txt")).expect("UTF-8");
    testdata(&format!("formats/{name}"))
        .into_iter()
        .zip(keys.lines().map(|k| Some(k.as_bytes().to_vec())))
        .map(|(m, k)| (k, m))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_input() {
    run("otlp_json", one("otlp_json.json")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_proto_input() {
    run("jaeger_proto", jaeger("jaeger_proto.bin")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_json_input() {
    run("jaeger_json", jaeger("jaeger_json.bin")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_json_input() {
    run("zipkin_json", one("zipkin_json.bin")).await;
}

/// Kept records in OTLP/JSON: the same traces, whole, once (the collector reads
/// them with tailsift's OTLP/JSON input converter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_json_input_to_otlp_json_output() {
    run_to("zipkin_json", "otlp_json", one("zipkin_json.bin")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_proto_input() {
    run("zipkin_proto", one("zipkin_proto.bin")).await;
}
