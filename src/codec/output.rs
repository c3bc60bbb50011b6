//! The encoding of kept records: OTLP protobuf (as assembled by
//! [`encode_trace`](super::encode_trace), no further work) or OTLP/JSON for readers
//! that want text.
//!
//! OTLP/JSON follows the OTLP specification's JSON rules as the `opentelemetry-proto`
//! crate's serde mapping writes them: lowerCamelCase fields, trace and span ids in
//! hex, 64-bit integers as strings, enums as integers. It is what the Collector's
//! kafka receiver reads with `encoding: otlp_json`.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// How kept records are encoded (`kafka.output_encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// OTLP protobuf `ExportTraceServiceRequest` (default; what the Collector's kafka
    /// receiver, Jaeger v2 and Tempo read by default).
    #[default]
    OtlpProto,
    /// OTLP/JSON `ExportTraceServiceRequest`: larger (about 2-3x) and slower to write.
    OtlpJson,
}

impl OutputEncoding {
    /// `payloads` (OTLP protobuf requests of at most `max_bytes` each, unless one span
    /// alone is larger) in this encoding, split further where the encoding made a
    /// request larger than `max_bytes` and it holds more than one span.
    ///
    /// A payload that does not decode (cannot happen for what `encode_trace` wrote)
    /// is passed on unchanged rather than lost.
    pub fn encode(self, payloads: Vec<Vec<u8>>, max_bytes: usize) -> Vec<Vec<u8>> {
        match self {
            OutputEncoding::OtlpProto => payloads,
            OutputEncoding::OtlpJson => {
                let mut out = Vec::with_capacity(payloads.len());
                for p in payloads {
                    match ExportTraceServiceRequest::decode(&p[..]) {
                        Ok(request) => json_payloads(request, max_bytes, &mut out),
                        Err(_) => out.push(p),
                    }
                }
                out
            }
        }
    }
}

/// Appends `request` as OTLP/JSON to `out`, halved by spans until each part fits in
/// `max_bytes` (a single span goes whatever its size).
fn json_payloads(request: ExportTraceServiceRequest, max_bytes: usize, out: &mut Vec<Vec<u8>>) {
    let Ok(json) = serde_json::to_vec(&request) else {
        // The mapping has no failing case for decoded protobuf; keep the spans anyway.
        out.push(request.encode_to_vec());
        return;
    };
    let spans = span_count(&request);
    if json.len() <= max_bytes || spans <= 1 {
        out.push(json);
        return;
    }
    let (a, b) = split(request, spans / 2);
    json_payloads(a, max_bytes, out);
    json_payloads(b, max_bytes, out);
}

fn span_count(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// The first `n` spans and the rest, each under the resource and scope it had.
fn split(
    request: ExportTraceServiceRequest,
    n: usize,
) -> (ExportTraceServiceRequest, ExportTraceServiceRequest) {
    let mut first = ExportTraceServiceRequest::default();
    let mut rest = ExportTraceServiceRequest::default();
    let mut left = n;
    for rs in request.resource_spans {
        let mut head = ResourceSpans {
            resource: rs.resource,
            scope_spans: Vec::new(),
            schema_url: rs.schema_url,
        };
        let mut tail = head.clone();
        for mut ss in rs.scope_spans {
            let take = left.min(ss.spans.len());
            left -= take;
            let later = ss.spans.split_off(take);
            if !later.is_empty() {
                tail.scope_spans.push(ScopeSpans {
                    spans: later,
                    scope: ss.scope.clone(),
                    schema_url: ss.schema_url.clone(),
                });
            }
            if !ss.spans.is_empty() {
                head.scope_spans.push(ss);
            }
        }
        if !head.scope_spans.is_empty() {
            first.resource_spans.push(head);
        }
        if !tail.scope_spans.is_empty() {
            rest.resource_spans.push(tail);
        }
    }
    (first, rest)
}
