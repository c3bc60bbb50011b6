//! Zipkin v2 spans (`zipkin_json`: a JSON list of spans; `zipkin_proto`: a
//! `zipkin.proto3.ListOfSpans`, both as Zipkin's Kafka sender and the Collector's
//! kafka exporter write them) converted to OTLP as the Collector's zipkinv2
//! translator (`pkg/translator/zipkin/zipkinv2`, `ToTraces`, string tags kept as
//! strings) does:
//! - the local endpoint's service name is the resource's `service.name` (or the key
//!   named by `otlp.service.name.source`), and tags with resource semantic-convention
//!   names go to the resource; `otel.scope.name`/`otel.library.name` and their
//!   versions are the scope;
//! - `otel.status_code`/`otel.status_description` and `error` the status,
//!   `w3c.tracestate` the trace state, `otlp.link.N` the links, the kind from
//!   `kind` (or a `span.kind: internal` tag), other tags string attributes;
//!   endpoints' addresses and ports attributes (`network.local.address`,
//!   `net.host.port`, `service.peer.name`, `network.peer.address`, `net.peer.port`);
//! - annotations are events (`name|{json attributes}|dropped`); times are in
//!   microseconds; a span without a timestamp starts at 0 with
//!   `otel.zipkin.absentField.startTime`.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use serde_json::Value;

use super::formats::{put, put_str, unhex, Converted};

/// `zipkin.proto3.Endpoint`.
#[derive(Clone, PartialEq, prost::Message)]
struct Endpoint {
    #[prost(string, tag = "1")]
    service_name: String,
    #[prost(bytes = "vec", tag = "2")]
    ipv4: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    ipv6: Vec<u8>,
    #[prost(int32, tag = "4")]
    port: i32,
}

/// `zipkin.proto3.Annotation`.
#[derive(Clone, PartialEq, prost::Message)]
struct Annotation {
    #[prost(fixed64, tag = "1")]
    timestamp: u64,
    #[prost(string, tag = "2")]
    value: String,
}

/// `zipkin.proto3.Span`.
#[derive(Clone, PartialEq, prost::Message)]
struct ZSpan {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    parent_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    id: Vec<u8>,
    /// SPAN_KIND_UNSPECIFIED 0, CLIENT 1, SERVER 2, PRODUCER 3, CONSUMER 4.
    #[prost(int32, tag = "4")]
    kind: i32,
    #[prost(string, tag = "5")]
    name: String,
    /// Microseconds since the epoch; 0: absent.
    #[prost(fixed64, tag = "6")]
    timestamp: u64,
    /// Microseconds.
    #[prost(uint64, tag = "7")]
    duration: u64,
    #[prost(message, optional, tag = "8")]
    local_endpoint: Option<Endpoint>,
    #[prost(message, optional, tag = "9")]
    remote_endpoint: Option<Endpoint>,
    #[prost(message, repeated, tag = "10")]
    annotations: Vec<Annotation>,
    #[prost(btree_map = "string, string", tag = "11")]
    tags: BTreeMap<String, String>,
    #[prost(bool, tag = "12")]
    debug: bool,
    #[prost(bool, tag = "13")]
    shared: bool,
}

/// `zipkin.proto3.ListOfSpans`.
#[derive(Clone, PartialEq, prost::Message)]
struct ListOfSpans {
    #[prost(message, repeated, tag = "1")]
    spans: Vec<ZSpan>,
}

/// One `zipkin_proto` message.
pub(super) fn from_proto(payload: &[u8]) -> Converted {
    let list =
        ListOfSpans::decode(payload).map_err(|e| format!("not a Zipkin ListOfSpans: {e}"))?;
    for (i, s) in list.spans.iter().enumerate() {
        if s.trace_id.len() != 16 {
            return Err(format!(
                "spans[{i}]: trace id of {} bytes, expected 16",
                s.trace_id.len()
            ));
        }
        for (what, id) in [("parent id", &s.parent_id), ("span id", &s.id)] {
            if !id.is_empty() && id.len() != 8 {
                return Err(format!(
                    "spans[{i}]: {what} of {} bytes, expected 8",
                    id.len()
                ));
            }
        }
        if s.id.is_empty() {
            return Err(format!("spans[{i}]: no span id"));
        }
    }
    convert(list.spans)
}

/// One `zipkin_json` message.
pub(super) fn from_json(payload: &[u8]) -> Converted {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(list) = v else {
        return Err("expected a JSON list of Zipkin v2 spans".to_string());
    };
    let spans = list
        .iter()
        .enumerate()
        .map(|(i, s)| json_span(s).map_err(|e| format!("[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    convert(spans)
}

fn json_span(v: &Value) -> Result<ZSpan, String> {
    let text = |key: &str| -> Result<&str, String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(format!("`{key}`: expected a string")),
        }
    };
    let micros = |key: &str| -> Result<u64, String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| format!("`{key}`: expected microseconds >= 0")),
            Some(_) => Err(format!("`{key}`: expected a number of microseconds")),
        }
    };
    let trace_hex = text("traceId")?;
    // 16 or 32 hex digits; the 64-bit form is the low half.
    let trace_id = match trace_hex.len() {
        16 => unhex(trace_hex, 8).map(|low| [vec![0; 8], low].concat()),
        32 => unhex(trace_hex, 16),
        _ => None,
    }
    .ok_or_else(|| format!("`traceId`: {trace_hex:?} is not 16 or 32 hex digits"))?;
    let span_id = |key: &str| -> Result<Vec<u8>, String> {
        let s = text(key)?;
        if s.is_empty() {
            return Ok(Vec::new());
        }
        let n = u64::from_str_radix(s, 16)
            .map_err(|_| format!("`{key}`: {s:?} is not up to 16 hex digits"))?;
        Ok(n.to_be_bytes().to_vec())
    };
    let id = span_id("id")?;
    if id.iter().all(|b| *b == 0) {
        return Err("`id`: a valid span id is required".to_string());
    }
    let endpoint = |key: &str| -> Result<Option<Endpoint>, String> {
        let Some(e) = v.get(key).filter(|e| !e.is_null()) else {
            return Ok(None);
        };
        let ip = |k: &str, parse: fn(&str) -> Option<Vec<u8>>| -> Result<Vec<u8>, String> {
            match e.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(s)) => {
                    parse(s).ok_or_else(|| format!("`{key}.{k}`: not an address"))
                }
                Some(_) => Err(format!("`{key}.{k}`: expected a string")),
            }
        };
        let endpoint = Endpoint {
            service_name: e
                .get("serviceName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ipv4: ip("ipv4", |s| {
                s.parse::<std::net::Ipv4Addr>()
                    .ok()
                    .map(|a| a.octets().to_vec())
            })?,
            ipv6: ip("ipv6", |s| {
                s.parse::<std::net::Ipv6Addr>()
                    .ok()
                    .map(|a| a.octets().to_vec())
            })?,
            port: e
                .get("port")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0),
        };
        // An empty endpoint is no endpoint (zipkin-go).
        Ok((endpoint != Endpoint::default()).then_some(endpoint))
    };
    let annotations = match v.get("annotations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|a| {
                Ok(Annotation {
                    timestamp: a.get("timestamp").and_then(Value::as_u64).unwrap_or(0),
                    value: a
                        .get("value")
                        .and_then(Value::as_str)
                        .ok_or("`annotations`: a value is required")?
                        .to_string(),
                })
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("`annotations`: expected a list".to_string()),
    };
    let tags = match v.get("tags") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("`tags.{k}`: expected a string")),
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("`tags`: expected an object".to_string()),
    };
    Ok(ZSpan {
        trace_id,
        parent_id: span_id("parentId")?,
        id,
        kind: match text("kind")? {
            "CLIENT" => 1,
            "SERVER" => 2,
            "PRODUCER" => 3,
            "CONSUMER" => 4,
            _ => 0,
        },
        name: text("name")?.to_string(),
        timestamp: micros("timestamp")?,
        duration: micros("duration")?,
        local_endpoint: endpoint("localEndpoint")?,
        remote_endpoint: endpoint("remoteEndpoint")?,
        annotations,
        tags,
        debug: v.get("debug").and_then(Value::as_bool).unwrap_or(false),
        shared: v.get("shared").and_then(Value::as_bool).unwrap_or(false),
    })
}

const NO_SERVICE: &str = "OTLPResourceNoServiceName";

/// Tag keys that are resource attributes, not span attributes (the translator's
/// resource semantic conventions).
const RESOURCE_KEYS: &[&str] = &[
    "cloud.provider",
    "cloud.account.id",
    "cloud.region",
    "cloud.availability_zone",
    "cloud.platform",
    "aws.ecs.container.arn",
    "aws.ecs.cluster.arn",
    "aws.ecs.launchtype",
    "aws.ecs.task.arn",
    "aws.ecs.task.family",
    "aws.ecs.task.revision",
    "aws.eks.cluster.arn",
    "aws.log.group.names",
    "aws.log.group.arns",
    "aws.log.stream.names",
    "aws.log.stream.arns",
    "container.name",
    "container.id",
    "container.runtime",
    "container.image.name",
    "container.image.tag",
    "deployment.environment",
    "device.id",
    "device.model.identifier",
    "device.model.name",
    "device.manufacturer",
    "faas.name",
    "faas.id",
    "cloud.resource_id",
    "faas.version",
    "faas.instance",
    "faas.max_memory",
    "host.id",
    "host.name",
    "host.type",
    "host.arch",
    "host.image.name",
    "host.image.id",
    "host.image.version",
    "k8s.cluster.name",
    "k8s.node.name",
    "k8s.node.uid",
    "k8s.namespace.name",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.container.name",
    "k8s.container.restart_count",
    "k8s.replicaset.uid",
    "k8s.replicaset.name",
    "k8s.deployment.uid",
    "k8s.deployment.name",
    "k8s.statefulset.uid",
    "k8s.statefulset.name",
    "k8s.daemonset.uid",
    "k8s.daemonset.name",
    "k8s.job.uid",
    "k8s.job.name",
    "k8s.cronjob.uid",
    "k8s.cronjob.name",
    "os.type",
    "os.description",
    "os.name",
    "os.version",
    "process.pid",
    "process.executable.name",
    "process.executable.path",
    "process.command",
    "process.command_line",
    "process.command_args",
    "process.owner",
    "process.runtime.name",
    "process.runtime.version",
    "process.runtime.description",
    "service.name",
    "service.namespace",
    "service.instance.id",
    "service.version",
    "telemetry.sdk.name",
    "telemetry.sdk.language",
    "telemetry.sdk.version",
    "telemetry.auto.version",
    "webengine.name",
    "webengine.version",
    "webengine.description",
    "opencensus.starttime",
    "opencensus.exporterversion",
    "opencensus.resourcetype",
];

/// Tags that are never span attributes: the resource's and the scope's.
const SCOPE_KEYS: &[&str] = &[
    "otel.library.name",
    "otel.library.version",
    "otel.scope.name",
    "otel.scope.version",
    "otlp.service.name.source",
];

fn convert(spans: Vec<ZSpan>) -> Converted {
    // One resource per local service (its attributes from the service's first span)
    // and one scope per library under it, as the translator groups them.
    let mut out: Vec<(String, Vec<String>, ResourceSpans)> = Vec::new();
    for z in spans {
        let service = z
            .local_endpoint
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(NO_SERVICE)
            .to_string();
        let library = z
            .tags
            .get("otel.scope.name")
            .or_else(|| z.tags.get("otel.library.name"))
            .cloned()
            .unwrap_or_default();
        let mut tags = z.tags.clone();
        let i = match out.iter().position(|(s, _, _)| *s == service) {
            Some(i) => i,
            None => {
                let resource = resource(&mut tags, &service);
                out.push((
                    service,
                    Vec::new(),
                    ResourceSpans {
                        resource: Some(resource),
                        ..ResourceSpans::default()
                    },
                ));
                out.len() - 1
            }
        };
        let (_, libraries, rs) = &mut out[i];
        let j = match libraries.iter().position(|l| *l == library) {
            Some(j) => j,
            None => {
                libraries.push(library.clone());
                rs.scope_spans.push(ScopeSpans {
                    scope: Some(scope(&mut tags, &library)),
                    spans: Vec::new(),
                    schema_url: String::new(),
                });
                rs.scope_spans.len() - 1
            }
        };
        rs.scope_spans[j].spans.push(span(&z, tags)?);
    }
    Ok(ExportTraceServiceRequest {
        resource_spans: out.into_iter().map(|(_, _, rs)| rs).collect(),
    })
}

fn resource(tags: &mut BTreeMap<String, String>, service: &str) -> Resource {
    let mut attrs = Vec::new();
    if service != NO_SERVICE {
        let key = tags
            .remove("otlp.service.name.source")
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "service.name".to_string());
        put_str(&mut attrs, &key, service);
        for key in RESOURCE_KEYS {
            if let Some(v) = tags.remove(*key) {
                put_str(&mut attrs, key, &v);
            }
        }
    }
    Resource {
        attributes: attrs,
        ..Resource::default()
    }
}

fn scope(tags: &mut BTreeMap<String, String>, library: &str) -> InstrumentationScope {
    let mut scope = InstrumentationScope::default();
    if library.is_empty() {
        return scope;
    }
    for key in ["otel.library.name", "otel.scope.name"] {
        if let Some(v) = tags.remove(key) {
            scope.name = v;
        }
    }
    for key in ["otel.library.version", "otel.scope.version"] {
        if let Some(v) = tags.remove(key) {
            scope.version = v;
        }
    }
    scope
}

fn span(z: &ZSpan, mut tags: BTreeMap<String, String>) -> Result<Span, String> {
    let mut out = Span {
        trace_id: z.trace_id.clone(),
        span_id: z.id.clone(),
        name: z.name.clone(),
        ..Span::default()
    };
    if let Some(ts) = tags.remove("w3c.tracestate") {
        out.trace_state = ts;
    }
    if !z.parent_id.is_empty() && z.parent_id != z.id && z.parent_id.iter().any(|b| *b != 0) {
        out.parent_span_id = z.parent_id.clone();
    }
    out.kind = match z.kind {
        1 => span::SpanKind::Client,
        2 => span::SpanKind::Server,
        3 => span::SpanKind::Producer,
        4 => span::SpanKind::Consumer,
        _ => match tags.remove("span.kind").as_deref() {
            Some("internal") => span::SpanKind::Internal,
            _ => span::SpanKind::Unspecified,
        },
    } as i32;
    let mut status = None;
    if let Some(code) = tags.remove("otel.status_code") {
        let code = match code.as_str() {
            "STATUS_CODE_OK" | "Ok" => 1,
            "STATUS_CODE_ERROR" | "Error" => 2,
            _ => 0,
        };
        status = Some(Status {
            code,
            message: tags.remove("otel.status_description").unwrap_or_default(),
        });
    }
    if let Some(v) = tags.get("error") {
        let s = status.get_or_insert_with(Status::default);
        s.code = 2;
        if v == "true" {
            tags.remove("error");
        }
    }
    out.status = status;
    for i in 0..128 {
        let Some(v) = tags.remove(&format!("otlp.link.{i}")) else {
            break;
        };
        if let Some(link) = link(&v)? {
            out.links.push(link);
        }
    }
    let mut attrs = Vec::with_capacity(tags.len());
    for (k, v) in &tags {
        if !RESOURCE_KEYS.contains(&k.as_str()) && !SCOPE_KEYS.contains(&k.as_str()) {
            put_str(&mut attrs, k, v);
        }
    }
    let ip = |b: &[u8]| -> Option<String> {
        match b.len() {
            4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
            16 => <[u8; 16]>::try_from(b)
                .ok()
                .map(|a| std::net::Ipv6Addr::from(a).to_string()),
            _ => None,
        }
    };
    if let Some(e) = &z.local_endpoint {
        for addr in [ip(&e.ipv4), ip(&e.ipv6)].into_iter().flatten() {
            put_str(&mut attrs, "network.local.address", &addr);
        }
        if e.port > 0 {
            put(
                &mut attrs,
                "net.host.port",
                any_value::Value::IntValue(i64::from(e.port as u16)),
            );
        }
    }
    if let Some(e) = &z.remote_endpoint {
        if !e.service_name.is_empty() {
            put_str(&mut attrs, "service.peer.name", &e.service_name);
        }
        for addr in [ip(&e.ipv4), ip(&e.ipv6)].into_iter().flatten() {
            put_str(&mut attrs, "network.peer.address", &addr);
        }
        if e.port > 0 {
            put(
                &mut attrs,
                "net.peer.port",
                any_value::Value::IntValue(i64::from(e.port as u16)),
            );
        }
    }
    if z.timestamp == 0 {
        out.start_time_unix_nano = 0;
        out.end_time_unix_nano = z.duration.saturating_mul(1000);
        put(
            &mut attrs,
            "otel.zipkin.absentField.startTime",
            any_value::Value::BoolValue(true),
        );
    } else {
        out.start_time_unix_nano = z.timestamp.saturating_mul(1000);
        out.end_time_unix_nano = out
            .start_time_unix_nano
            .saturating_add(z.duration.saturating_mul(1000));
    }
    out.attributes = attrs;
    for a in &z.annotations {
        out.events.push(event(a)?);
    }
    Ok(out)
}

/// `otlp.link.N`: `traceid|spanid|tracestate|{json attributes}|dropped`.
fn link(v: &str) -> Result<Option<span::Link>, String> {
    let parts: Vec<&str> = v.split('|').collect();
    if parts.len() < 5 {
        return Ok(None);
    }
    let id = |s: &str, n: usize| -> Result<Vec<u8>, String> {
        let s = s.trim_matches('"');
        if s.is_empty() {
            return Ok(vec![0; n]);
        }
        unhex(s, n).ok_or_else(|| format!("link id {s:?}: invalid"))
    };
    let json = parts[3..parts.len() - 1].join("|");
    Ok(Some(span::Link {
        trace_id: id(parts[0], 16)?,
        span_id: id(parts[1], 8)?,
        trace_state: parts[2].to_string(),
        attributes: json_attributes(&json)?,
        dropped_attributes_count: parts[parts.len() - 1]
            .parse()
            .map_err(|_| "link: dropped count is not a number".to_string())?,
        flags: 0,
    }))
}

/// An annotation: `name`, or `name|{json attributes}|dropped`.
fn event(a: &Annotation) -> Result<span::Event, String> {
    let parts: Vec<&str> = a.value.split('|').collect();
    let mut e = span::Event {
        time_unix_nano: a.timestamp.saturating_mul(1000),
        name: parts[0].to_string(),
        ..span::Event::default()
    };
    if parts.len() >= 3 {
        let json = parts[1..parts.len() - 1].join("|");
        e.attributes = json_attributes(&json)?;
        e.dropped_attributes_count = parts[parts.len() - 1]
            .parse()
            .map_err(|_| "annotation: dropped count is not a number".to_string())?;
    }
    Ok(e)
}

/// A JSON object of attributes: strings, numbers (whole ones as integers) and
/// booleans; other values are left out, as the translator does.
fn json_attributes(json: &str) -> Result<Vec<KeyValue>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("attributes {json:?}: {e}"))?;
    let Value::Object(m) = v else {
        return Err(format!("attributes {json:?}: expected an object"));
    };
    let mut attrs = Vec::new();
    for (k, v) in m {
        let value = match v {
            Value::String(s) => any_value::Value::StringValue(s),
            Value::Bool(b) => any_value::Value::BoolValue(b),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => any_value::Value::IntValue(f as i64),
                Some(f) => any_value::Value::DoubleValue(f),
                None => continue,
            },
            _ => continue,
        };
        put(&mut attrs, &k, value);
    }
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lists_are_refused_with_the_reason() {
        let e = from_json(br#"{"traceId": "ab"}"#).expect_err("not a list");
        assert!(e.contains("list"), "{e}");
        let e = from_json(br#"[{"traceId": "abc", "id": "1"}]"#).expect_err("bad id");
        assert!(e.contains("traceId"), "{e}");
        let e = from_json(br#"[{"traceId": "0000000000000001", "id": "0"}]"#)
            .expect_err("zero span id");
        assert!(e.contains("span id"), "{e}");
        let short = ListOfSpans {
            spans: vec![ZSpan {
                trace_id: vec![1; 8],
                id: vec![1; 8],
                ..ZSpan::default()
            }],
        };
        let e = from_proto(&short.encode_to_vec()).expect_err("8-byte trace id");
        assert!(e.contains("expected 16"), "{e}");
    }

    #[test]
    fn a_64_bit_trace_id_is_the_low_half() {
        let r = from_json(br#"[{"traceId": "0000000000000abc", "id": "1", "timestamp": 5}]"#)
            .expect("valid");
        let s = &r.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.trace_id[..8], [0; 8]);
        assert_eq!(s.trace_id[14..], [0x0a, 0xbc]);
        assert_eq!(s.span_id, 1u64.to_be_bytes());
        assert_eq!(s.start_time_unix_nano, 5000);
    }
}
