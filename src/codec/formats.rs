//! Input encodings besides OTLP protobuf: each message is converted to one OTLP
//! `ExportTraceServiceRequest` (protobuf) before the scan, following the
//! OpenTelemetry Collector's translations, so everything after the codec sees OTLP
//! only. OTLP protobuf input is not touched (the hot path stays as it is).
//!
//! | encoding | one Kafka message holds | as written by |
//! |---|---|---|
//! | `otlp_proto` | an `ExportTraceServiceRequest` | the Collector's kafka exporter (default) |
//! | `otlp_json` | the same, in OTLP/JSON | the kafka exporter, `encoding: otlp_json` |
//! | `jaeger_proto` | one `jaeger.api_v2.Span`, with its process | Jaeger's and the Collector's kafka exporters |
//! | `jaeger_json` | the same, in protobuf's JSON mapping | the same, JSON |
//! | `zipkin_json` | a Zipkin v2 JSON list of spans | Zipkin's Kafka sender, the kafka exporter |
//! | `zipkin_proto` | a `zipkin.proto3.ListOfSpans` | the same, protobuf |

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// How the messages of an input topic are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputEncoding {
    /// OTLP protobuf `ExportTraceServiceRequest` (the Collector's default).
    #[default]
    OtlpProto,
    /// OTLP/JSON `ExportTraceServiceRequest`.
    OtlpJson,
    /// One Jaeger `model.proto` span per message.
    JaegerProto,
    /// One Jaeger span per message, in protobuf's JSON mapping.
    JaegerJson,
    /// A Zipkin v2 JSON list of spans.
    ZipkinJson,
    /// A Zipkin proto3 `ListOfSpans`.
    ZipkinProto,
}

impl InputEncoding {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            InputEncoding::OtlpProto => "otlp_proto",
            InputEncoding::OtlpJson => "otlp_json",
            InputEncoding::JaegerProto => "jaeger_proto",
            InputEncoding::JaegerJson => "jaeger_json",
            InputEncoding::ZipkinJson => "zipkin_json",
            InputEncoding::ZipkinProto => "zipkin_proto",
        }
    }

    /// The message as OTLP protobuf, or `None` when it is OTLP protobuf already.
    ///
    /// # Errors
    /// [`FormatError`] saying why the message is not of this encoding.
    pub fn to_otlp(self, payload: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
        let request = match self {
            InputEncoding::OtlpProto => return Ok(None),
            InputEncoding::OtlpJson => {
                let text = std::str::from_utf8(payload)
                    .map_err(|_| FormatError::new(self, "not UTF-8 text"))?;
                return super::json_to_protobuf(text)
                    .map(Some)
                    .map_err(|e| FormatError::new(self, e.to_string()));
            }
            InputEncoding::JaegerProto => super::jaeger::from_proto(payload),
            InputEncoding::JaegerJson => super::jaeger::from_json(payload),
            InputEncoding::ZipkinJson => super::zipkin::from_json(payload),
            InputEncoding::ZipkinProto => super::zipkin::from_proto(payload),
        }
        .map_err(|why| FormatError::new(self, why))?;
        Ok(Some(request.encode_to_vec()))
    }
}

/// A message that is not of its topic's encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not {encoding}: {why}")]
pub struct FormatError {
    /// The encoding expected.
    pub encoding: &'static str,
    /// What does not fit.
    pub why: String,
}

impl FormatError {
    fn new(encoding: InputEncoding, why: impl Into<String>) -> Self {
        FormatError {
            encoding: encoding.as_str(),
            why: why.into(),
        }
    }
}

/// What a converter returns: the request, or why the input does not fit.
pub(super) type Converted = Result<ExportTraceServiceRequest, String>;

/// Sets `key` to `value` in `attrs`, replacing an earlier value (as pdata's `Put*`).
pub(super) fn put(attrs: &mut Vec<KeyValue>, key: &str, value: any_value::Value) {
    let value = Some(AnyValue { value: Some(value) });
    match attrs.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = value,
        None => attrs.push(KeyValue {
            key: key.to_string(),
            value,
            ..KeyValue::default()
        }),
    }
}

/// Sets a string attribute.
pub(super) fn put_str(attrs: &mut Vec<KeyValue>, key: &str, value: &str) {
    put(attrs, key, any_value::Value::StringValue(value.to_string()));
}

/// Removes `key` from `attrs`, returning its value.
pub(super) fn take(attrs: &mut Vec<KeyValue>, key: &str) -> Option<any_value::Value> {
    let i = attrs.iter().position(|kv| kv.key == key)?;
    attrs.remove(i).value.and_then(|v| v.value)
}

/// The value of `key` in `attrs`.
pub(super) fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// Decodes hex (either case) into exactly `n` bytes.
pub(super) fn unhex(s: &str, n: usize) -> Option<Vec<u8>> {
    if s.len() != 2 * n || !s.is_ascii() {
        return None;
    }
    (0..n)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    /// Written by the Collector's own translators: `scripts/testdata/formats`.
    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/formats");

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{DATA}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// 4-byte big-endian length-prefixed records.
    fn records(data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
            out.push(&data[at + 4..at + 4 + n]);
            at += 4 + n;
        }
        out
    }

    type Flat = Vec<(Vec<KeyValue>, InstrumentationScope, Span)>;

    /// Every span with its resource's attributes and its scope, attributes sorted by
    /// key, spans by (trace id, span id): grouping and order are not meaning.
    fn flatten(requests: &[ExportTraceServiceRequest]) -> Flat {
        let sorted = |mut a: Vec<KeyValue>| {
            a.sort_by(|x, y| x.key.cmp(&y.key));
            a
        };
        let mut out = Vec::new();
        for r in requests {
            for rs in &r.resource_spans {
                let resource = sorted(rs.resource.clone().unwrap_or_default().attributes);
                for ss in &rs.scope_spans {
                    let scope = ss.scope.clone().unwrap_or_default();
                    for s in &ss.spans {
                        let mut s = s.clone();
                        s.attributes = sorted(s.attributes);
                        for e in &mut s.events {
                            e.attributes = sorted(std::mem::take(&mut e.attributes));
                        }
                        for l in &mut s.links {
                            l.attributes = sorted(std::mem::take(&mut l.attributes));
                        }
                        if s.status == Some(Default::default()) {
                            s.status = None;
                        }
                        out.push((resource.clone(), scope.clone(), s));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.2.trace_id, &a.2.span_id).cmp(&(&b.2.trace_id, &b.2.span_id)));
        out
    }

    fn decode(otlp: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(otlp).expect("OTLP")
    }

    fn ours(encoding: InputEncoding, messages: &[&[u8]]) -> Flat {
        let requests: Vec<_> = messages
            .iter()
            .map(|m| match encoding.to_otlp(m).expect("converts") {
                Some(otlp) => decode(&otlp),
                None => decode(m),
            })
            .collect();
        flatten(&requests)
    }

    fn expected(encoding: InputEncoding) -> Flat {
        let json = read(&format!("expected_{}.json", encoding.as_str()));
        let otlp = crate::codec::json_to_protobuf(std::str::from_utf8(&json).expect("UTF-8"))
            .expect("OTLP/JSON");
        flatten(&[decode(&otlp)])
    }

    /// Each encoding, as the Collector's kafka exporter wrote it, reads as the
    /// Collector's receiver-side translator reads it: the same spans, resources,
    /// scopes, kinds, statuses, attributes, events and links.
    #[test]
    fn every_encoding_reads_as_the_collector_reads_it() {
        let cases: [(InputEncoding, Vec<u8>, bool); 6] = [
            (InputEncoding::OtlpProto, read("otlp_proto.bin"), false),
            (InputEncoding::OtlpJson, read("otlp_json.json"), false),
            (InputEncoding::JaegerProto, read("jaeger_proto.bin"), true),
            (InputEncoding::JaegerJson, read("jaeger_json.bin"), true),
            (InputEncoding::ZipkinJson, read("zipkin_json.bin"), false),
            (InputEncoding::ZipkinProto, read("zipkin_proto.bin"), false),
        ];
        for (encoding, data, per_span) in &cases {
            let messages = if *per_span {
                records(data)
            } else {
                vec![&data[..]]
            };
            let got = ours(*encoding, &messages);
            let want = expected(*encoding);
            assert_eq!(got.len(), 8, "{encoding:?}: spans");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "{encoding:?}");
            }
        }
    }

    #[test]
    fn a_message_of_another_encoding_is_refused_naming_the_expected_one() {
        let zipkin = read("zipkin_json.bin");
        for encoding in [
            InputEncoding::OtlpJson,
            InputEncoding::JaegerProto,
            InputEncoding::JaegerJson,
            InputEncoding::ZipkinProto,
        ] {
            let e = encoding.to_otlp(&zipkin).expect_err("not this encoding");
            assert_eq!(e.encoding, encoding.as_str());
            assert!(e.to_string().starts_with("not "), "{e}");
        }
        let e = InputEncoding::ZipkinJson
            .to_otlp(&read("otlp_proto.bin"))
            .expect_err("protobuf is not JSON");
        assert!(e.to_string().contains("not zipkin_json"), "{e}");
    }
}
