//! Scan and encode checked against prost's full decode of the same bytes.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    status, ResourceSpans, ScopeSpans, Span as PbSpan, Status,
};
use prost::Message;

use super::*;

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn pb_span(trace: u8, span: u8, parent: u8, code: status::StatusCode) -> PbSpan {
    PbSpan {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: format!("span-{span}"),
        start_time_unix_nano: 1_000 + u64::from(span),
        end_time_unix_nano: 5_000 + u64::from(span),
        attributes: vec![
            kv(
                "http.route",
                any_value::Value::StringValue("/checkout".into()),
            ),
            kv("http.status_code", any_value::Value::IntValue(503)),
            kv("ignored", any_value::Value::BoolValue(true)),
        ],
        status: Some(Status {
            message: String::new(),
            code: code as i32,
        }),
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    let resource = |svc: &str| Resource {
        attributes: vec![kv(
            "service.name",
            any_value::Value::StringValue(svc.into()),
        )],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "lib".into(),
        version: "1.0".into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("frontend")),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: vec![
                        pb_span(1, 1, 0, status::StatusCode::Unset),
                        pb_span(2, 2, 0, status::StatusCode::Ok),
                    ],
                    schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                }],
                schema_url: "res-schema".into(),
            },
            ResourceSpans {
                resource: Some(resource("backend")),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans: vec![pb_span(1, 3, 1, status::StatusCode::Error)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ],
    }
}

/// Predicates: bit 0 route is /checkout, bit 1 status code 5xx, bit 2 service backend.
fn keys() -> AttrMatchers {
    let mut m = AttrMatchers::default();
    m.add("http.route", Matcher::Exact(vec![b"/checkout"[..].into()]));
    m.add("http.status_code", Matcher::IntRange(500, 599));
    m.add("service.name", Matcher::Exact(vec![b"backend"[..].into()]));
    m
}

#[test]
fn scan_extracts_what_policies_need() {
    let payload = Bytes::from(request().encode_to_vec());
    let mut spans = Vec::new();
    let msg =
        scan(&payload, &keys(), &mut FrameInterner::default(), &mut spans).expect("valid payload");
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0].trace_id, TraceId([1; 16]));
    assert!(spans[0].is_root);
    assert!(!spans[2].is_root);
    assert_eq!(spans[2].status, StatusCode::Error);
    assert_eq!(spans[1].status, StatusCode::Ok);
    assert_eq!((spans[0].start_ns, spans[0].end_ns), (1_001, 5_001));
    assert_eq!(spans[0].hits, 0b011, "route and status code predicates hit");
    assert_eq!(
        msg.frame(&spans[0]).resource_hits,
        0,
        "frontend is not backend"
    );
    assert_eq!(
        msg.frame(&spans[2]).resource_hits,
        0b100,
        "resource attributes are tested too"
    );
    assert_eq!(spans[2].hits & 0b100, 0b100, "and count as the span's hits");
    let mut none = Vec::new();
    scan(
        &payload,
        &AttrMatchers::default(),
        &mut FrameInterner::default(),
        &mut none,
    )
    .expect("valid payload");
    assert!(none.iter().all(|s| s.hits == 0));
}

#[test]
fn encode_round_trips_through_prost() {
    let req = request();
    let payload = Bytes::from(req.encode_to_vec());
    let mut spans = Vec::new();
    let mut frames = FrameInterner::default();
    let msg =
        scan(&payload, &AttrMatchers::default(), &mut frames, &mut spans).expect("valid payload");
    let trace1: Vec<SpanRef> = spans
        .iter()
        .filter(|s| s.trace_id == TraceId([1; 16]))
        .map(|s| msg.span_ref(s))
        .collect();
    let out = encode_trace(&trace1, 1 << 20);
    assert_eq!(out.len(), 1);
    let decoded = ExportTraceServiceRequest::decode(&out[0][..]).expect("valid OTLP");
    assert_eq!(decoded.resource_spans.len(), 2, "both resources preserved");
    let rs0 = &decoded.resource_spans[0];
    assert_eq!(rs0.resource, req.resource_spans[0].resource);
    assert_eq!(rs0.schema_url, "res-schema");
    assert_eq!(
        rs0.scope_spans[0].scope,
        req.resource_spans[0].scope_spans[0].scope
    );
    assert_eq!(
        rs0.scope_spans[0].schema_url,
        req.resource_spans[0].scope_spans[0].schema_url
    );
    assert_eq!(
        rs0.scope_spans[0].spans,
        vec![req.resource_spans[0].scope_spans[0].spans[0].clone()]
    );
    assert_eq!(
        decoded.resource_spans[1].scope_spans[0].spans,
        req.resource_spans[1].scope_spans[0].spans
    );
}

/// Scans `n` separately encoded copies of `req`, as `n` input messages.
fn scan_copies(req: &ExportTraceServiceRequest, n: usize) -> Vec<(super::Message, Vec<Span>)> {
    let mut frames = FrameInterner::default();
    (0..n)
        .map(|_| {
            let payload = Bytes::from(req.encode_to_vec());
            let mut spans = Vec::new();
            let msg = scan(&payload, &AttrMatchers::default(), &mut frames, &mut spans)
                .expect("valid payload");
            (msg, spans)
        })
        .collect()
}

/// Every span of the scanned messages, as the encoder takes them.
fn refs(scanned: &[(super::Message, Vec<Span>)]) -> Vec<SpanRef<'_>> {
    scanned
        .iter()
        .flat_map(|(m, spans)| spans.iter().map(move |s| m.span_ref(s)))
        .collect()
}

#[test]
fn spans_from_separate_messages_share_framing() {
    let req = request();
    let scanned = scan_copies(&req, 2);
    let out = encode_trace(&refs(&scanned), 1 << 20);
    let decoded = ExportTraceServiceRequest::decode(&out[0][..]).expect("valid OTLP");
    assert_eq!(decoded.resource_spans.len(), 2);
    assert_eq!(decoded.resource_spans[0].scope_spans.len(), 1);
    assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 4);
}

#[test]
fn oversized_trace_splits_into_valid_messages() {
    let req = request();
    let scanned = scan_copies(&req, 50);
    let raw = refs(&scanned);
    let out = encode_trace(&raw, 2_000);
    assert!(out.len() > 1);
    let mut n = 0;
    for p in &out {
        assert!(p.len() <= 2_000, "payload of {} bytes", p.len());
        let d = ExportTraceServiceRequest::decode(&p[..]).expect("valid OTLP");
        n += d
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
    }
    assert_eq!(n, 150);
    // Spans larger than the limit each go alone rather than being lost.
    let alone = encode_trace(&raw, 100);
    assert_eq!(alone.len(), 150);
}

#[test]
fn malformed_input_is_an_error_and_adds_nothing() {
    let good = request().encode_to_vec();
    let mut spans = Vec::new();
    for cut in 1..good.len() {
        let payload = Bytes::copy_from_slice(&good[..cut]);
        // Some prefixes are valid shorter messages; none may panic or half-fill.
        let before = spans.len();
        if scan(&payload, &keys(), &mut FrameInterner::default(), &mut spans).is_err() {
            assert_eq!(spans.len(), before);
        }
        spans.clear();
    }
    let garbage = Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff");
    assert!(scan(&garbage, &keys(), &mut FrameInterner::default(), &mut spans).is_err());
    let mut no_trace_id = request();
    no_trace_id.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
    let payload = Bytes::from(no_trace_id.encode_to_vec());
    assert_eq!(
        scan(&payload, &keys(), &mut FrameInterner::default(), &mut spans).err(),
        Some(CodecError::BadTraceId { len: 16 })
    );
    assert!(spans.is_empty());
}

#[test]
fn trace_id_hex_round_trips() {
    let id = TraceId([0xab; 16]);
    assert_eq!(id.to_hex(), "ab".repeat(16));
    assert_eq!(TraceId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(TraceId::from_hex("xyz"), None);
}

#[test]
fn boolean_predicates_match_bool_values_on_spans() {
    // Every test span carries `ignored: true` (a bool) and `http.route` (a string).
    let payload = Bytes::from(request().encode_to_vec());
    let mut m = AttrMatchers::default();
    let yes = m.add("ignored", Matcher::Bool(true)).expect("bit");
    let no = m.add("ignored", Matcher::Bool(false)).expect("bit");
    let not_a_bool = m.add("http.route", Matcher::Bool(true)).expect("bit");
    let mut spans = Vec::new();
    scan(&payload, &m, &mut FrameInterner::default(), &mut spans).expect("valid payload");
    assert!(spans.iter().all(|s| s.hits & (1 << yes) != 0));
    assert!(spans.iter().all(|s| s.hits & (1 << no) == 0));
    assert!(spans.iter().all(|s| s.hits & (1 << not_a_bool) == 0));
}

#[test]
fn trace_state_predicates_read_the_spans_tracestate() {
    let mut req = request();
    req.resource_spans[0].scope_spans[0].spans[0].trace_state = "rojo=1,congo=2".into();
    let payload = Bytes::from(req.encode_to_vec());
    let mut m = AttrMatchers::default();
    let rojo = m
        .add_trace_state("rojo", Matcher::Exact(vec![b"1"[..].into()]))
        .expect("bit");
    let congo3 = m
        .add_trace_state("congo", Matcher::Exact(vec![b"3"[..].into()]))
        .expect("bit");
    let mut spans = Vec::new();
    scan(&payload, &m, &mut FrameInterner::default(), &mut spans).expect("valid payload");
    assert_ne!(spans[0].hits & (1 << rojo), 0, "rojo=1 matches");
    assert_eq!(spans[0].hits & (1 << congo3), 0, "congo=2 is not 3");
    assert!(
        spans[1..].iter().all(|s| s.hits == 0),
        "no tracestate there"
    );
}

#[test]
fn the_dynamic_key_hashes_the_fields_values_and_reads_the_resource() {
    let payload = Bytes::from(request().encode_to_vec());
    let hashes = |fields: &[&str]| {
        let mut keys = keys();
        keys.set_key_fields(fields.iter().map(|f| KeyField::parse(f)).collect());
        let mut spans = Vec::new();
        scan(&payload, &keys, &mut FrameInterner::default(), &mut spans).expect("valid");
        // The predicates still hit with a key configured.
        assert_eq!(spans[0].hits, 0b011);
        spans.iter().map(|s| s.key_hash).collect::<Vec<_>>()
    };
    // Every span has the same route: one key.
    let h = hashes(&["http.route"]);
    assert!(h[0] != 0 && h[0] == h[1] && h[1] == h[2], "{h:?}");
    // With the status code the three spans differ (UNSET, OK, ERROR).
    let h = hashes(&["http.route", "status.code"]);
    assert!(h[0] != h[1] && h[1] != h[2] && h[0] != h[2], "{h:?}");
    // service.name is on the resource: frontend, frontend, backend.
    let h = hashes(&["service.name"]);
    assert!(h[0] == h[1] && h[1] != h[2], "{h:?}");
    // A missing field is a value too (nil), not an error.
    let h = hashes(&["no.such.attribute"]);
    assert!(h[0] != 0 && h[0] == h[2]);
}

/// OTLP/JSON output: the OTLP JSON rules (hex ids, 64-bit integers as strings, enums
/// as integers, camelCase), read back by the OTLP/JSON input converter as the same
/// request.
#[test]
fn json_output_follows_the_otlp_json_rules_and_reads_back_the_same() {
    let req = request();
    let out = OutputEncoding::OtlpJson.encode(vec![req.encode_to_vec()], 1 << 20);
    assert_eq!(out.len(), 1);
    let text = std::str::from_utf8(&out[0]).expect("UTF-8");
    let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "01010101010101010101010101010101");
    assert!(span["startTimeUnixNano"].is_string(), "{span}");
    assert!(span["kind"].is_number(), "{span}");
    let back = json_to_protobuf(text).expect("reads back");
    assert_eq!(
        ExportTraceServiceRequest::decode(&back[..]).expect("protobuf"),
        req
    );
    // Protobuf output is what encode_trace wrote, untouched.
    let proto = req.encode_to_vec();
    assert_eq!(
        OutputEncoding::OtlpProto.encode(vec![proto.clone()], 10),
        vec![proto]
    );
}

/// JSON larger than the record limit is split by spans, each part valid and under its
/// resource and scope; a single span goes alone whatever its size.
#[test]
fn json_output_over_the_limit_splits_into_valid_records() {
    let req = request();
    let scanned = scan_copies(&req, 20);
    let payloads = encode_trace(&refs(&scanned), 1 << 20);
    let whole = OutputEncoding::OtlpJson.encode(payloads.clone(), 1 << 20);
    assert_eq!(whole.len(), 1);
    let limit = whole[0].len() / 5;
    let out = OutputEncoding::OtlpJson.encode(payloads.clone(), limit);
    assert!(out.len() >= 5, "{} records", out.len());
    let mut spans = Vec::new();
    for p in &out {
        assert!(p.len() <= limit, "record of {} bytes over {limit}", p.len());
        let back = json_to_protobuf(std::str::from_utf8(p).expect("UTF-8")).expect("valid");
        let d = ExportTraceServiceRequest::decode(&back[..]).expect("protobuf");
        for rs in &d.resource_spans {
            assert!(rs.resource.is_some(), "resource kept");
            for ss in &rs.scope_spans {
                assert!(!ss.spans.is_empty());
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let d = ExportTraceServiceRequest::decode(&payloads[0][..]).expect("protobuf");
    let want: Vec<PbSpan> = d
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect();
    assert_eq!(spans, want, "every span once, in order");
    assert_eq!(
        OutputEncoding::OtlpJson.encode(payloads, 10).len(),
        want.len(),
        "one span per record when none fits"
    );
}
