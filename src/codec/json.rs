//! OTLP/JSON traces (the JSON mapping of `ExportTraceServiceRequest` that OTLP/HTTP,
//! the Collector's file exporter and the SDKs' JSON exporters write) converted to
//! the protobuf encoding the rest of tailsift reads.
//!
//! Follows the OTLP specification's JSON rules: trace and span ids are hex strings
//! (not base64), enums may be integers or their names, 64-bit integers numbers or
//! strings, `bytesValue` base64; field names are lowerCamelCase, and the proto
//! names (snake_case) are accepted too. Unknown fields are ignored, as the
//! specification asks of receivers.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use serde_json::{Map, Value};

/// Why a JSON document is not OTLP traces.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    /// JSON, but a field has the wrong shape.
    #[error("field `{field}`: expected {expected}")]
    Shape {
        /// Dotted path of the field.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// Converts one OTLP/JSON `ExportTraceServiceRequest` to protobuf bytes.
///
/// # Errors
/// [`JsonError`] naming the first field that does not fit.
pub fn json_to_protobuf(text: &str) -> Result<Vec<u8>, JsonError> {
    let v: Value = serde_json::from_str(text)?;
    Ok(request(&v)?.encode_to_vec())
}

type R<T> = Result<T, JsonError>;

fn shape<T>(field: &str, expected: &'static str) -> R<T> {
    Err(JsonError::Shape {
        field: field.to_string(),
        expected,
    })
}

/// The field named `camel` (or its snake_case proto name).
fn get<'a>(o: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(&snake(camel)))
        .filter(|v| !v.is_null())
}

fn snake(camel: &str) -> String {
    let mut s = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn object<'a>(v: &'a Value, at: &str) -> R<&'a Map<String, Value>> {
    v.as_object().map_or_else(|| shape(at, "an object"), Ok)
}

/// The objects in array field `name` of `o` (absent: none).
fn list<'a>(
    o: &'a Map<String, Value>,
    name: &str,
    at: &str,
) -> R<Vec<(String, &'a Map<String, Value>)>> {
    match get(o, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let here = format!("{at}.{name}[{i}]");
                Ok((here.clone(), object(item, &here)?))
            })
            .collect(),
        Some(_) => shape(&format!("{at}.{name}"), "an array"),
    }
}

fn string(o: &Map<String, Value>, name: &str, at: &str) -> R<String> {
    match get(o, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => shape(&format!("{at}.{name}"), "a string"),
    }
}

/// A 64-bit unsigned integer: a number or a decimal string.
fn u64_field(o: &Map<String, Value>, name: &str, at: &str) -> R<u64> {
    match get(o, name) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .map_or_else(|| shape(&format!("{at}.{name}"), "an unsigned integer"), Ok),
        Some(Value::String(s)) => s
            .parse()
            .or_else(|_| shape(&format!("{at}.{name}"), "an unsigned integer")),
        Some(_) => shape(&format!("{at}.{name}"), "an unsigned integer"),
    }
}

fn i64_value(v: &Value, at: &str) -> R<i64> {
    match v {
        Value::Number(n) => n.as_i64().map_or_else(|| shape(at, "an integer"), Ok),
        Value::String(s) => s.parse().or_else(|_| shape(at, "an integer")),
        _ => shape(at, "an integer"),
    }
}

/// An id: a hex string of `len` bytes, or empty.
fn id(o: &Map<String, Value>, name: &str, len: usize, at: &str) -> R<Vec<u8>> {
    let s = string(o, name, at)?;
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let bad = || JsonError::Shape {
        field: format!("{at}.{name}"),
        expected: "a hex string of the id's length",
    };
    if s.len() != len * 2 || !s.is_ascii() {
        return Err(bad());
    }
    (0..len)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// An enum: its number or its name (`names[i]` is value `i`).
fn enumeration(o: &Map<String, Value>, name: &str, names: &[&str], at: &str) -> R<i32> {
    match get(o, name) {
        None => Ok(0),
        Some(Value::String(s)) => names.iter().position(|n| n == s).map_or_else(
            || shape(&format!("{at}.{name}"), "a number or a known enum name"),
            |i| Ok(i as i32),
        ),
        Some(v) => i64_value(v, &format!("{at}.{name}")).map(|i| i as i32),
    }
}

fn request(v: &Value) -> R<ExportTraceServiceRequest> {
    let o = object(v, "request")?;
    let resource_spans = list(o, "resourceSpans", "request")?
        .into_iter()
        .map(|(at, rs)| resource_spans(rs, &at))
        .collect::<R<_>>()?;
    Ok(ExportTraceServiceRequest { resource_spans })
}

fn resource_spans(o: &Map<String, Value>, at: &str) -> R<ResourceSpans> {
    let resource = match get(o, "resource") {
        None => None,
        Some(r) => {
            let here = format!("{at}.resource");
            let r = object(r, &here)?;
            Some(Resource {
                attributes: attributes(r, &here)?,
                dropped_attributes_count: u64_field(r, "droppedAttributesCount", &here)? as u32,
                ..Default::default()
            })
        }
    };
    let scope_spans = list(o, "scopeSpans", at)?
        .into_iter()
        .map(|(at, ss)| scope_spans(ss, &at))
        .collect::<R<_>>()?;
    Ok(ResourceSpans {
        resource,
        scope_spans,
        schema_url: string(o, "schemaUrl", at)?,
    })
}

fn scope_spans(o: &Map<String, Value>, at: &str) -> R<ScopeSpans> {
    let scope = match get(o, "scope") {
        None => None,
        Some(s) => {
            let here = format!("{at}.scope");
            let s = object(s, &here)?;
            Some(InstrumentationScope {
                name: string(s, "name", &here)?,
                version: string(s, "version", &here)?,
                attributes: attributes(s, &here)?,
                dropped_attributes_count: u64_field(s, "droppedAttributesCount", &here)? as u32,
            })
        }
    };
    let spans = list(o, "spans", at)?
        .into_iter()
        .map(|(at, s)| one_span(s, &at))
        .collect::<R<_>>()?;
    Ok(ScopeSpans {
        scope,
        spans,
        schema_url: string(o, "schemaUrl", at)?,
    })
}

const KINDS: &[&str] = &[
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUS_CODES: &[&str] = &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

fn one_span(o: &Map<String, Value>, at: &str) -> R<Span> {
    let events = list(o, "events", at)?
        .into_iter()
        .map(|(at, e)| {
            Ok(span::Event {
                time_unix_nano: u64_field(e, "timeUnixNano", &at)?,
                name: string(e, "name", &at)?,
                attributes: attributes(e, &at)?,
                dropped_attributes_count: u64_field(e, "droppedAttributesCount", &at)? as u32,
            })
        })
        .collect::<R<_>>()?;
    let links = list(o, "links", at)?
        .into_iter()
        .map(|(at, l)| {
            Ok(span::Link {
                trace_id: id(l, "traceId", 16, &at)?,
                span_id: id(l, "spanId", 8, &at)?,
                trace_state: string(l, "traceState", &at)?,
                attributes: attributes(l, &at)?,
                dropped_attributes_count: u64_field(l, "droppedAttributesCount", &at)? as u32,
                flags: u64_field(l, "flags", &at)? as u32,
            })
        })
        .collect::<R<_>>()?;
    let status = match get(o, "status") {
        None => None,
        Some(s) => {
            let here = format!("{at}.status");
            let s = object(s, &here)?;
            Some(Status {
                message: string(s, "message", &here)?,
                code: enumeration(s, "code", STATUS_CODES, &here)?,
            })
        }
    };
    Ok(Span {
        trace_id: id(o, "traceId", 16, at)?,
        span_id: id(o, "spanId", 8, at)?,
        trace_state: string(o, "traceState", at)?,
        parent_span_id: id(o, "parentSpanId", 8, at)?,
        flags: u64_field(o, "flags", at)? as u32,
        name: string(o, "name", at)?,
        kind: enumeration(o, "kind", KINDS, at)?,
        start_time_unix_nano: u64_field(o, "startTimeUnixNano", at)?,
        end_time_unix_nano: u64_field(o, "endTimeUnixNano", at)?,
        attributes: attributes(o, at)?,
        dropped_attributes_count: u64_field(o, "droppedAttributesCount", at)? as u32,
        events,
        dropped_events_count: u64_field(o, "droppedEventsCount", at)? as u32,
        links,
        dropped_links_count: u64_field(o, "droppedLinksCount", at)? as u32,
        status,
    })
}

fn attributes(o: &Map<String, Value>, at: &str) -> R<Vec<KeyValue>> {
    key_values(o, "attributes", at)
}

fn key_values(o: &Map<String, Value>, name: &str, at: &str) -> R<Vec<KeyValue>> {
    list(o, name, at)?
        .into_iter()
        .map(|(at, kv)| {
            Ok(KeyValue {
                key: string(kv, "key", &at)?,
                value: match get(kv, "value") {
                    None => None,
                    Some(v) => Some(any_value(v, &format!("{at}.value"))?),
                },
                ..Default::default()
            })
        })
        .collect()
}

fn any_value(v: &Value, at: &str) -> R<AnyValue> {
    use any_value::Value as V;
    let o = object(v, at)?;
    let value = if let Some(s) = get(o, "stringValue") {
        Some(V::StringValue(s.as_str().map_or_else(
            || shape(at, "a string"),
            |s| Ok(s.to_string()),
        )?))
    } else if let Some(b) = get(o, "boolValue") {
        Some(V::BoolValue(
            b.as_bool().map_or_else(|| shape(at, "a boolean"), Ok)?,
        ))
    } else if let Some(i) = get(o, "intValue") {
        Some(V::IntValue(i64_value(i, &format!("{at}.intValue"))?))
    } else if let Some(d) = get(o, "doubleValue") {
        let d = match d {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        Some(V::DoubleValue(d.map_or_else(|| shape(at, "a number"), Ok)?))
    } else if let Some(a) = get(o, "arrayValue") {
        let here = format!("{at}.arrayValue");
        let values = list(object(a, &here)?, "values", &here)?
            .into_iter()
            .map(|(at, v)| any_value(&Value::Object(v.clone()), &at))
            .collect::<R<_>>()?;
        Some(V::ArrayValue(ArrayValue { values }))
    } else if let Some(kv) = get(o, "kvlistValue") {
        let here = format!("{at}.kvlistValue");
        Some(V::KvlistValue(KeyValueList {
            values: key_values(object(kv, &here)?, "values", &here)?,
        }))
    } else if let Some(b) = get(o, "bytesValue") {
        let decoded = b.as_str().and_then(base64);
        Some(V::BytesValue(
            decoded.map_or_else(|| shape(at, "base64 bytes"), Ok)?,
        ))
    } else {
        None
    };
    Ok(AnyValue { value })
}

/// Standard or URL-safe base64, padded or not.
pub(super) fn base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OTLP repository's `examples/trace.json`, with an error status, an event
    /// and typed attributes added.
    const EXAMPLE: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0"},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "parentSpanId": "EEE19B7EC3C1B173",
            "name": "I'm a server span",
            "startTimeUnixNano": 1544712660000000000,
            "endTimeUnixNano": "1544712661000000000",
            "kind": 2,
            "attributes": [
              {"key": "my.span.attr", "value": {"stringValue": "some value"}},
              {"key": "http.status_code", "value": {"intValue": "503"}},
              {"key": "retry", "value": {"boolValue": true}},
              {"key": "blob", "value": {"bytesValue": "aGk="}},
              {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "exception"}],
            "status": {"code": "STATUS_CODE_ERROR", "message": "boom"}
          }]
        }]
      }]
    }"#;

    #[test]
    fn the_otlp_example_converts_field_for_field() {
        let bytes = json_to_protobuf(EXAMPLE).expect("converts");
        let r = ExportTraceServiceRequest::decode(&bytes[..]).expect("protobuf");
        let s = &r.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.trace_id[..2], [0x5b, 0x8e]);
        assert_eq!(s.span_id.len(), 8);
        assert_eq!(
            (s.kind, s.end_time_unix_nano),
            (2, 1_544_712_661_000_000_000)
        );
        assert_eq!(s.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(s.events[0].name, "exception");
        assert_eq!(
            s.attributes[1].value.as_ref().and_then(|v| v.value.clone()),
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(
            s.attributes[3].value.as_ref().and_then(|v| v.value.clone()),
            Some(any_value::Value::BytesValue(b"hi".to_vec()))
        );
        // snake_case proto names are accepted too.
        let snake = EXAMPLE.replace("\"resourceSpans\"", "\"resource_spans\"");
        assert_eq!(json_to_protobuf(&snake).expect("snake"), bytes);
    }

    #[test]
    fn bad_shapes_name_the_field() {
        let e = json_to_protobuf(&EXAMPLE.replace("EEE19B7EC3C1B174", "xyz"))
            .expect_err("bad id")
            .to_string();
        assert!(
            e.contains("resourceSpans[0].scopeSpans[0].spans[0].spanId"),
            "{e}"
        );
        assert!(json_to_protobuf("{").is_err());
        assert!(json_to_protobuf("[]").is_err());
    }
}
