//! A whole OpenTelemetry Collector config file, read as a tailsift config.
//!
//! Someone moving from the Collector's tail sampler has a file with `receivers:`,
//! `processors:`, `exporters:` and `service:`. tailsift reads what it means in such
//! a file: the `tail_sampling` processor (the first one, plain or named
//! `tail_sampling/...`), the brokers, topic and encoding of its kafka receiver (the
//! input), and the topic of its kafka exporter (the output), each unless the file's
//! own `kafka:` section sets it. Everything else is left out, and one warning says
//! what was read from where.

use serde_yaml_ng::{Mapping, Value};

use super::ConfigError;

/// Top-level sections only a Collector config has.
const COLLECTOR_SECTIONS: &[&str] = &[
    "receivers",
    "exporters",
    "service",
    "extensions",
    "connectors",
];

/// Whether `text` may be a Collector config (a cheap look before parsing).
pub(super) fn may_be(text: &str) -> bool {
    COLLECTOR_SECTIONS.iter().any(|s| {
        text.lines()
            .any(|l| l.starts_with(s) && l[s.len()..].starts_with(':'))
    })
}

/// Whether the parsed document is a Collector config.
pub(super) fn is(doc: &Value) -> bool {
    doc.as_mapping()
        .is_some_and(|m| COLLECTOR_SECTIONS.iter().any(|s| m.contains_key(*s)))
}

/// Turns a Collector config into tailsift's shape, in place, and returns the warning
/// that says what was read.
///
/// # Errors
/// [`ConfigError::Invalid`] when it holds no `tail_sampling` processor.
pub(super) fn adopt(doc: &mut Value) -> Result<String, ConfigError> {
    let Some(m) = doc.as_mapping_mut() else {
        return Ok(String::new());
    };
    let mut read = Vec::new();
    let processors = m.remove("processors");
    let named = processors
        .as_ref()
        .and_then(Value::as_mapping)
        .and_then(|p| first_named(p, "tail_sampling"));
    let Some((name, block)) = named else {
        return Err(ConfigError::invalid(
            "processors",
            "no tail_sampling processor",
            "a Collector config with a `tail_sampling` (or `tail_sampling/NAME`) processor, or tailsift's own `policies:`",
        ));
    };
    if !m.contains_key("tail_sampling") {
        m.insert(Value::from("tail_sampling"), block);
        read.push(format!("the policies from processors.{name}"));
    }
    let receivers = m.remove("receivers");
    let exporters = m.remove("exporters");
    for s in COLLECTOR_SECTIONS {
        m.remove(*s);
    }
    let kafka = m
        .entry(Value::from("kafka"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let Some(kafka) = kafka.as_mapping_mut() else {
        return Ok(summary(&read));
    };
    if let Some((name, r)) = receivers
        .as_ref()
        .and_then(Value::as_mapping)
        .and_then(|r| first_named(r, "kafka"))
    {
        let mut from = Vec::new();
        if let Some(b) = r.get("brokers") {
            if set_missing(kafka, "brokers", b.clone()) {
                from.push("brokers");
            }
        }
        if let Some(t) = signal(&r, "topic") {
            if set_missing(kafka, "input_topics", Value::Sequence(vec![t])) {
                from.push("topic");
            }
        }
        if let Some(e) = signal(&r, "encoding") {
            if set_missing(kafka, "input_encoding", e) {
                from.push("encoding");
            }
        }
        if !from.is_empty() {
            read.push(format!("the {} of receivers.{name}", from.join(", ")));
        }
    }
    if let Some((name, e)) = exporters
        .as_ref()
        .and_then(Value::as_mapping)
        .and_then(|e| first_named(e, "kafka"))
    {
        if let Some(t) = signal(&e, "topic") {
            if set_missing(kafka, "output_topic", t) {
                read.push(format!("the output topic of exporters.{name}"));
            }
        }
    }
    Ok(summary(&read))
}

/// The first entry named `kind` or `kind/...`, in the file's order.
fn first_named(m: &Mapping, kind: &str) -> Option<(String, Value)> {
    m.iter().find_map(|(k, v)| {
        let k = k.as_str()?;
        (k == kind || k.strip_prefix(kind).is_some_and(|r| r.starts_with('/')))
            .then(|| (k.to_string(), v.clone()))
    })
}

/// A kafka component's `key` for traces: under `traces:` (newer Collectors) or at
/// its top (older ones).
fn signal(component: &Value, key: &str) -> Option<Value> {
    component
        .get("traces")
        .and_then(|t| t.get(key))
        .or_else(|| component.get(key))
        .cloned()
}

/// Sets `key` unless the section has it; whether it did.
fn set_missing(section: &mut Mapping, key: &str, value: Value) -> bool {
    if section.contains_key(key) {
        return false;
    }
    section.insert(Value::from(key), value);
    true
}

fn summary(read: &[String]) -> String {
    format!(
        "read as an OpenTelemetry Collector config: {}; its receivers, exporters, other processors and service are not used (tailsift reads Kafka and writes Kafka itself)",
        if read.is_empty() {
            "nothing but the tail_sampling processor".to_string()
        } else {
            read.join("; ")
        }
    )
}
