//! Jaeger spans (`jaeger.api_v2.Span` of jaeger-idl's `model.proto`, one per Kafka
//! message with its process, as Jaeger's and the Collector's kafka exporters write
//! them) converted to OTLP as the Collector's jaeger translator
//! (`pkg/translator/jaeger`, `ProtoToTraces`) does:
//! - the process is the resource (`service.name`, its tags; `hostname` becomes
//!   `host.name`, `jaeger.version` `opencensus.exporterversion`);
//! - tags `otel.scope.name`/`otel.scope.version` are the scope; `span.kind` the kind;
//!   `error` (bool), `otel.status_code`/`otel.status_description` or an HTTP status
//!   code the status; `w3c.tracestate` the trace state; the other tags attributes
//!   (`http.response.status_code` read as `http.status_code`, the translator's default);
//! - the first `CHILD_OF` reference in the same trace is the parent, the other
//!   references links (with `opentracing.ref_type`); logs are events, their `event`
//!   field the name; the sampled flag is kept.
//!
//! `jaeger_json` is the same message in protobuf's JSON mapping (jsonpb): ids in
//! base64, times as RFC 3339 and `"1.5s"`, enums by name, 64-bit integers as strings.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use serde_json::Value;

use super::formats::{get, put, put_str, take, Converted};

/// `google.protobuf.Timestamp` and `Duration` (same fields).
#[derive(Clone, PartialEq, prost::Message)]
struct Time {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

impl Time {
    fn ns(&self) -> i128 {
        i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos)
    }
}

/// `jaeger.api_v2.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
struct Tag {
    #[prost(string, tag = "1")]
    key: String,
    /// STRING 0, BOOL 1, INT64 2, FLOAT64 3, BINARY 4.
    #[prost(int32, tag = "2")]
    v_type: i32,
    #[prost(string, tag = "3")]
    v_str: String,
    #[prost(bool, tag = "4")]
    v_bool: bool,
    #[prost(int64, tag = "5")]
    v_int64: i64,
    #[prost(double, tag = "6")]
    v_float64: f64,
    #[prost(bytes = "vec", tag = "7")]
    v_binary: Vec<u8>,
}

/// `jaeger.api_v2.Log`.
#[derive(Clone, PartialEq, prost::Message)]
struct Log {
    #[prost(message, optional, tag = "1")]
    timestamp: Option<Time>,
    #[prost(message, repeated, tag = "2")]
    fields: Vec<Tag>,
}

/// `jaeger.api_v2.SpanRef`.
#[derive(Clone, PartialEq, prost::Message)]
struct SpanRef {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    /// CHILD_OF 0, FOLLOWS_FROM 1.
    #[prost(int32, tag = "3")]
    ref_type: i32,
}

/// `jaeger.api_v2.Process`.
#[derive(Clone, PartialEq, prost::Message)]
struct Process {
    #[prost(string, tag = "1")]
    service_name: String,
    #[prost(message, repeated, tag = "2")]
    tags: Vec<Tag>,
}

/// `jaeger.api_v2.Span`.
#[derive(Clone, PartialEq, prost::Message)]
struct JSpan {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    operation_name: String,
    #[prost(message, repeated, tag = "4")]
    references: Vec<SpanRef>,
    #[prost(uint32, tag = "5")]
    flags: u32,
    #[prost(message, optional, tag = "6")]
    start_time: Option<Time>,
    #[prost(message, optional, tag = "7")]
    duration: Option<Time>,
    #[prost(message, repeated, tag = "8")]
    tags: Vec<Tag>,
    #[prost(message, repeated, tag = "9")]
    logs: Vec<Log>,
    #[prost(message, optional, tag = "10")]
    process: Option<Process>,
    #[prost(string, tag = "11")]
    process_id: String,
    #[prost(string, repeated, tag = "12")]
    warnings: Vec<String>,
}

/// One `jaeger_proto` message.
pub(super) fn from_proto(payload: &[u8]) -> Converted {
    let span = JSpan::decode(payload).map_err(|e| format!("not a Jaeger span: {e}"))?;
    convert(span)
}

/// One `jaeger_json` message.
pub(super) fn from_json(payload: &[u8]) -> Converted {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    convert(json_span(&v)?)
}

const ROOT_SERVICE_NONE: &str = "OTLPResourceNoServiceName";

fn convert(mut s: JSpan) -> Converted {
    let trace_id: [u8; 16] = s
        .trace_id
        .as_slice()
        .try_into()
        .map_err(|_| format!("trace id of {} bytes, expected 16", s.trace_id.len()))?;
    if s.span_id.len() != 8 {
        return Err(format!("span id of {} bytes, expected 8", s.span_id.len()));
    }
    // Scope first: its tags are not attributes.
    let mut scope = InstrumentationScope::default();
    if let Some(name) = take_tag(&mut s.tags, "otel.scope.name") {
        scope.name = name;
        if let Some(version) = take_tag(&mut s.tags, "otel.scope.version") {
            scope.version = version;
        }
    }
    let start = s.start_time.as_ref().map_or(0, Time::ns);
    let end = start + s.duration.as_ref().map_or(0, Time::ns);
    let parent = s
        .references
        .iter()
        .find(|r| r.trace_id == trace_id && r.ref_type == 0)
        .map(|r| r.span_id.clone())
        .filter(|id| id.iter().any(|b| *b != 0));
    let mut out = Span {
        trace_id: trace_id.to_vec(),
        span_id: s.span_id.clone(),
        parent_span_id: parent.clone().unwrap_or_default(),
        name: s.operation_name.clone(),
        start_time_unix_nano: clamp_ns(start),
        end_time_unix_nano: clamp_ns(end),
        flags: u32::from(s.flags & 1 == 1),
        ..Span::default()
    };
    let mut attrs = Vec::with_capacity(s.tags.len());
    tags_to_attributes(&s.tags, &mut attrs);
    if let Some(any_value::Value::StringValue(kind)) = take(&mut attrs, "span.kind") {
        out.kind = match kind.as_str() {
            "client" => span::SpanKind::Client,
            "server" => span::SpanKind::Server,
            "producer" => span::SpanKind::Producer,
            "consumer" => span::SpanKind::Consumer,
            "internal" => span::SpanKind::Internal,
            _ => span::SpanKind::Unspecified,
        } as i32;
    }
    out.status = status(&mut attrs, out.kind);
    if let Some(any_value::Value::StringValue(ts)) = take(&mut attrs, "w3c.tracestate") {
        out.trace_state = ts;
    }
    out.attributes = attrs;
    out.events = s
        .logs
        .iter()
        .map(|log| {
            let mut event = span::Event {
                time_unix_nano: clamp_ns(log.timestamp.as_ref().map_or(0, Time::ns)),
                ..span::Event::default()
            };
            tags_to_attributes(&log.fields, &mut event.attributes);
            if let Some(name) = take(&mut event.attributes, "event") {
                event.name = match name {
                    any_value::Value::StringValue(s) => s,
                    _ => String::new(),
                };
            }
            event
        })
        .collect();
    let parent_id = parent.unwrap_or_else(|| vec![0; 8]);
    out.links = s
        .references
        .iter()
        .filter(|r| !(r.span_id == parent_id && r.ref_type == 0))
        .map(|r| {
            let mut attributes = Vec::new();
            let kind = if r.ref_type == 0 {
                "child_of"
            } else {
                "follows_from"
            };
            put_str(&mut attributes, "opentracing.ref_type", kind);
            span::Link {
                trace_id: r.trace_id.clone(),
                span_id: r.span_id.clone(),
                attributes,
                ..span::Link::default()
            }
        })
        .collect();
    let resource = s.process.as_ref().and_then(process_to_resource);
    Ok(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.unwrap_or_default()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: vec![out],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    })
}

fn clamp_ns(ns: i128) -> u64 {
    u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
}

/// Removes the tag `key`, returning its string value (empty for other types).
fn take_tag(tags: &mut Vec<Tag>, key: &str) -> Option<String> {
    let i = tags.iter().position(|t| t.key == key)?;
    Some(tags.remove(i).v_str)
}

fn tags_to_attributes(tags: &[Tag], attrs: &mut Vec<KeyValue>) {
    for t in tags {
        let key = if t.key == "http.response.status_code" {
            "http.status_code"
        } else {
            &t.key
        };
        let value = match t.v_type {
            0 => any_value::Value::StringValue(t.v_str.clone()),
            1 => any_value::Value::BoolValue(t.v_bool),
            2 => any_value::Value::IntValue(t.v_int64),
            3 => any_value::Value::DoubleValue(t.v_float64),
            4 => any_value::Value::BytesValue(t.v_binary.clone()),
            other => any_value::Value::StringValue(format!("<Unknown Jaeger TagType \"{other}\">")),
        };
        put(attrs, key, value);
    }
}

fn process_to_resource(p: &Process) -> Option<Resource> {
    if p.service_name == ROOT_SERVICE_NONE || (p.service_name.is_empty() && p.tags.is_empty()) {
        return None;
    }
    let mut attrs = Vec::with_capacity(p.tags.len() + 1);
    if !p.service_name.is_empty() {
        put_str(&mut attrs, "service.name", &p.service_name);
    }
    tags_to_attributes(&p.tags, &mut attrs);
    if get(&attrs, "host.name").is_none() {
        if let Some(h) = take(&mut attrs, "hostname") {
            put(&mut attrs, "host.name", h);
        }
    }
    if get(&attrs, "opencensus.exporterversion").is_none() {
        if let Some(any_value::Value::StringValue(v)) = take(&mut attrs, "jaeger.version") {
            put_str(
                &mut attrs,
                "opencensus.exporterversion",
                &format!("Jaeger-{v}"),
            );
        }
    }
    Some(Resource {
        attributes: attrs,
        ..Resource::default()
    })
}

/// The span status from its tags, as the Collector's `setInternalSpanStatus`.
fn status(attrs: &mut Vec<KeyValue>, kind: i32) -> Option<Status> {
    const ERROR: i32 = 2;
    let mut code = 0;
    let mut message = String::new();
    let mut exists = false;
    if let Some(any_value::Value::BoolValue(true)) = get(attrs, "error") {
        code = ERROR;
        take(attrs, "error");
        exists = true;
        if let Some(any_value::Value::StringValue(d)) = take(attrs, "otel.status_description") {
            message = d;
        } else if let Some(any_value::Value::StringValue(m)) = get(attrs, "http.status_message") {
            message = m.clone();
        }
    }
    if let Some(c) = get(attrs, "otel.status_code").cloned() {
        if !exists {
            exists = true;
            let c = match c {
                any_value::Value::StringValue(s) => s.to_ascii_uppercase(),
                _ => String::new(),
            };
            code = match c.as_str() {
                "OK" => 1,
                "ERROR" => ERROR,
                _ => 0,
            };
            if let Some(any_value::Value::StringValue(d)) = take(attrs, "otel.status_description") {
                message = d;
            }
        }
        take(attrs, "otel.status_code");
    } else if !exists {
        if let Some(http) = get(attrs, "http.status_code") {
            let n = match http {
                any_value::Value::IntValue(i) => Some(*i),
                any_value::Value::StringValue(s) => s.parse().ok(),
                _ => None,
            };
            if let Some(n) = n {
                // 4xx: an error of the client, not of the server; otherwise
                // 100-398 are fine (the translator's bound) and the rest errors.
                let client_4xx = (400..500).contains(&n) && kind == span::SpanKind::Client as i32;
                let server_4xx = (400..500).contains(&n) && kind == span::SpanKind::Server as i32;
                let c = if !client_4xx && (server_4xx || (100..399).contains(&n)) {
                    0
                } else {
                    ERROR
                };
                if c != 0 {
                    exists = true;
                    code = c;
                }
                if let Some(any_value::Value::StringValue(m)) = get(attrs, "http.status_message") {
                    message = m.clone();
                }
            }
        }
    }
    exists.then_some(Status { message, code })
}

// ---- jsonpb -------------------------------------------------------------------

/// A field by its JSON name or its proto name.
fn field<'a>(v: &'a Value, json: &str, proto: &str) -> Option<&'a Value> {
    v.get(json).or_else(|| v.get(proto))
}

fn json_bytes(v: &Value, json: &str, proto: &str) -> Result<Vec<u8>, String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => {
            super::json::base64(s).ok_or_else(|| format!("`{json}`: not base64"))
        }
        Some(_) => Err(format!("`{json}`: expected a base64 string")),
    }
}

fn json_str(v: &Value, json: &str, proto: &str) -> Result<String, String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{json}`: expected a string")),
    }
}

fn json_list<'a>(v: &'a Value, json: &str, proto: &str) -> Result<&'a [Value], String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("`{json}`: expected a list")),
    }
}

/// An enum by name (`names[i]` is value `i`) or number.
fn json_enum(v: &Value, json: &str, proto: &str, names: &[&str]) -> Result<i32, String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => names
            .iter()
            .position(|n| n == s)
            .map(|i| i as i32)
            .ok_or_else(|| format!("`{json}`: unknown value {s:?}")),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| format!("`{json}`: not an enum number")),
        Some(_) => Err(format!("`{json}`: expected an enum name")),
    }
}

fn json_i64(v: &Value, json: &str, proto: &str) -> Result<i64, String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s.parse().map_err(|_| format!("`{json}`: not an integer")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("`{json}`: not an integer")),
        Some(_) => Err(format!("`{json}`: expected an integer")),
    }
}

fn json_tags(v: &Value, json: &str, proto: &str) -> Result<Vec<Tag>, String> {
    json_list(v, json, proto)?
        .iter()
        .map(|t| {
            Ok(Tag {
                key: json_str(t, "key", "key")?,
                v_type: json_enum(
                    t,
                    "vType",
                    "v_type",
                    &["STRING", "BOOL", "INT64", "FLOAT64", "BINARY"],
                )?,
                v_str: json_str(t, "vStr", "v_str")?,
                v_bool: field(t, "vBool", "v_bool")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                v_int64: json_i64(t, "vInt64", "v_int64")?,
                v_float64: match field(t, "vFloat64", "v_float64") {
                    None | Some(Value::Null) => 0.0,
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
                    Some(Value::String(s)) => s.parse().map_err(|_| "`vFloat64`: not a number")?,
                    Some(_) => return Err("`vFloat64`: expected a number".to_string()),
                },
                v_binary: json_bytes(t, "vBinary", "v_binary")?,
            })
        })
        .collect()
}

fn json_time(v: &Value, json: &str, proto: &str) -> Result<Option<Time>, String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => rfc3339(s)
            .map(|ns| {
                Some(Time {
                    seconds: ns.div_euclid(1_000_000_000) as i64,
                    nanos: ns.rem_euclid(1_000_000_000) as i32,
                })
            })
            .ok_or_else(|| format!("`{json}`: not an RFC 3339 time")),
        Some(_) => Err(format!("`{json}`: expected an RFC 3339 string")),
    }
}

fn json_duration(v: &Value, json: &str, proto: &str) -> Result<Option<Time>, String> {
    match field(v, json, proto) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => duration(s)
            .map(|ns| {
                Some(Time {
                    seconds: (ns / 1_000_000_000) as i64,
                    nanos: (ns % 1_000_000_000) as i32,
                })
            })
            .ok_or_else(|| format!("`{json}`: not a duration like \"1.5s\"")),
        Some(_) => Err(format!("`{json}`: expected a duration string")),
    }
}

fn json_span(v: &Value) -> Result<JSpan, String> {
    if !v.is_object() {
        return Err("expected a JSON object (one Jaeger span)".to_string());
    }
    let references = json_list(v, "references", "references")?
        .iter()
        .map(|r| {
            Ok(SpanRef {
                trace_id: json_bytes(r, "traceId", "trace_id")?,
                span_id: json_bytes(r, "spanId", "span_id")?,
                ref_type: json_enum(r, "refType", "ref_type", &["CHILD_OF", "FOLLOWS_FROM"])?,
            })
        })
        .collect::<Result<_, String>>()?;
    let logs = json_list(v, "logs", "logs")?
        .iter()
        .map(|l| {
            Ok(Log {
                timestamp: json_time(l, "timestamp", "timestamp")?,
                fields: json_tags(l, "fields", "fields")?,
            })
        })
        .collect::<Result<_, String>>()?;
    let process = match field(v, "process", "process") {
        None | Some(Value::Null) => None,
        Some(p) => Some(Process {
            service_name: json_str(p, "serviceName", "service_name")?,
            tags: json_tags(p, "tags", "tags")?,
        }),
    };
    Ok(JSpan {
        trace_id: json_bytes(v, "traceId", "trace_id")?,
        span_id: json_bytes(v, "spanId", "span_id")?,
        operation_name: json_str(v, "operationName", "operation_name")?,
        references,
        flags: u32::try_from(json_i64(v, "flags", "flags")?)
            .map_err(|_| "`flags`: out of range")?,
        start_time: json_time(v, "startTime", "start_time")?,
        duration: json_duration(v, "duration", "duration")?,
        tags: json_tags(v, "tags", "tags")?,
        logs,
        process,
        process_id: json_str(v, "processId", "process_id")?,
        warnings: Vec::new(),
    })
}

/// `2023-11-14T22:13:20.5Z` or with an offset (`+01:00`) as nanoseconds since the
/// epoch.
fn rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut i = 19;
    let mut frac_ns: i128 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut padded: String = digits.chars().take(9).collect();
        while padded.len() < 9 {
            padded.push('0');
        }
        frac_ns = padded.parse().ok()?;
    }
    let offset_s: i64 = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(i128::from(secs) * 1_000_000_000 + frac_ns)
}

/// `"1.5s"` (protobuf's JSON duration) as nanoseconds; negative ones are refused.
fn duration(s: &str) -> Option<u128> {
    let s = s.strip_suffix('s')?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let mut padded = frac.to_string();
    while padded.len() < 9 {
        padded.push('0');
    }
    Some(whole.parse::<u128>().ok()? * 1_000_000_000 + padded.parse::<u128>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_durations_read_as_protobuf_writes_them() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339("2023-11-14T22:13:21Z"),
            Some(1_700_000_001_000_000_000)
        );
        assert_eq!(
            rfc3339("2023-11-14T22:13:21.000000123Z"),
            Some(1_700_000_001_000_000_123)
        );
        assert_eq!(
            rfc3339("2023-11-14T23:13:21.5+01:00"),
            Some(1_700_000_001_500_000_000)
        );
        assert_eq!(rfc3339("2023-13-14T22:13:21Z"), None);
        assert_eq!(rfc3339("yesterday"), None);
        assert_eq!(duration("0.250123456s"), Some(250_123_456));
        assert_eq!(duration("2s"), Some(2_000_000_000));
        assert_eq!(duration("-1s"), None);
        assert_eq!(duration("1.5"), None);
    }

    #[test]
    fn a_span_with_bad_ids_is_refused_with_the_reason() {
        let span = JSpan {
            trace_id: vec![1; 8],
            span_id: vec![1; 8],
            ..JSpan::default()
        };
        let e = from_proto(&span.encode_to_vec()).expect_err("8-byte trace id");
        assert!(e.contains("trace id of 8 bytes"), "{e}");
        assert!(from_json(b"[1, 2]").is_err());
        assert!(from_proto(b"\xff\xff").is_err());
    }

    #[test]
    fn an_http_status_code_gives_the_status_as_the_translator_reads_it() {
        let status_of = |code: i64, kind: &str| {
            let tag = |key: &str, v_type: i32| Tag {
                key: key.to_string(),
                v_type,
                ..Tag::default()
            };
            let span = JSpan {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                tags: vec![
                    Tag {
                        v_int64: code,
                        ..tag("http.response.status_code", 2)
                    },
                    Tag {
                        v_str: kind.to_string(),
                        ..tag("span.kind", 0)
                    },
                ],
                ..JSpan::default()
            };
            let r = from_proto(&span.encode_to_vec()).expect("valid");
            let s = &r.resource_spans[0].scope_spans[0].spans[0];
            assert!(get(&s.attributes, "http.status_code").is_some(), "renamed");
            s.status.as_ref().map(|st| st.code)
        };
        assert_eq!(status_of(404, "client"), Some(2));
        assert_eq!(status_of(404, "server"), None);
        assert_eq!(status_of(404, "internal"), Some(2));
        assert_eq!(status_of(503, "server"), Some(2));
        assert_eq!(status_of(200, "client"), None);
    }
}
