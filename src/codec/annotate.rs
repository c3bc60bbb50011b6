//! Annotation of kept spans: which policy kept them and with what probability, so
//! backends can tell why a trace is there and extrapolate counts.
//!
//! Each span gets two attributes, `tailsampling.policy` (the name the OTel
//! processor's policy recording uses) and, when the probability is known,
//! `tailsampling.probability`; and its W3C `tracestate` gets the OpenTelemetry
//! `ot=th:` rejection threshold of the combined probability (any head-sampling
//! threshold already there times the policy's), per the OpenTelemetry probability
//! sampling specification. Fields are appended to the encoded span: a repeated
//! field (attributes) gains entries and a singular one (`trace_state`) is replaced,
//! since protobuf readers take the last value of a singular field.

use super::wire::{put_len_field, put_len_header, Reader, LEN};
use super::EncodedSpan;
use super::{ScopeFrame, SpanRef};

/// The attribute naming the deciding policy.
pub const POLICY_ATTRIBUTE: &str = "tailsampling.policy";
/// The attribute holding the probability the trace was kept with.
pub const PROBABILITY_ATTRIBUTE: &str = "tailsampling.probability";
/// 2^56: thresholds are 56-bit.
const MAX_THRESHOLD: f64 = 72_057_594_037_927_936.0;

/// What is written into every span of a kept trace.
#[derive(Debug, Clone, Copy)]
pub struct Annotation<'a> {
    /// The deciding policy's name.
    pub policy: &'a str,
    /// The probability the policy keeps such a trace with; `None` when it is not a
    /// fixed probability (rate limits): no threshold is written then, and a head
    /// sampler's threshold is left as it is.
    pub probability: Option<f64>,
}

/// The `th` value for keeping with probability `p`: the rejection threshold
/// `(1 - p) * 2^56` in hexadecimal, 14 digits with trailing zeros removed (`0` for
/// `p = 1`). `None` for a probability outside `(0, 1]`.
pub fn threshold(p: f64) -> Option<String> {
    if !(p > 0.0 && p <= 1.0) {
        return None;
    }
    // The kept share in 56-bit units, then the rejected rest in integers (exact).
    let kept = ((p * MAX_THRESHOLD).round() as u64).clamp(1, 1 << 56);
    let t = (1u64 << 56) - kept;
    if t == 0 {
        return Some("0".into());
    }
    let hex = format!("{t:014x}");
    Some(hex.trim_end_matches('0').to_string())
}

/// The probability a `th` value stands for (the inverse of [`threshold`]); `None`
/// if it is not 1 to 14 hex digits.
pub fn probability_of(th: &str) -> Option<f64> {
    if th.is_empty() || th.len() > 14 || !th.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = u64::from_str_radix(&format!("{th:0<14}"), 16).ok()?;
    Some(((1u64 << 56) - t) as f64 / MAX_THRESHOLD)
}

/// `tracestate` with the `ot` entry's `th` set for probability `p` times the one
/// already there (if any), moved to the front as W3C asks of a modified entry;
/// other entries and `ot` sub-keys are kept.
pub fn merge_trace_state(existing: &str, p: f64) -> Option<String> {
    let mut others = Vec::new();
    let mut ot_rest = Vec::new();
    let mut upstream = 1.0;
    for entry in existing.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.strip_prefix("ot=") {
            Some(ot) => {
                for sub in ot.split(';').filter(|s| !s.is_empty()) {
                    match sub.strip_prefix("th:") {
                        Some(th) => upstream = probability_of(th).unwrap_or(1.0),
                        None => ot_rest.push(sub),
                    }
                }
            }
            None => others.push(entry),
        }
    }
    let th = threshold(upstream * p)?;
    let mut ot = format!("ot=th:{th}");
    for sub in ot_rest {
        ot.push(';');
        ot.push_str(sub);
    }
    let mut out = ot;
    for e in others {
        out.push(',');
        out.push_str(e);
    }
    Some(out)
}

/// Kept spans with their annotation, held in one buffer.
pub struct Annotated<'a> {
    bytes: Vec<u8>,
    spans: Vec<(&'a ScopeFrame, usize, usize)>,
}

impl<'a> Annotated<'a> {
    /// Copies `spans` with `a` appended to each.
    pub fn new<S: EncodedSpan>(spans: &'a [S], a: &Annotation<'_>) -> Self {
        let mut tail = Vec::new();
        put_string_attribute(&mut tail, POLICY_ATTRIBUTE, a.policy);
        if let Some(p) = a.probability {
            put_double_attribute(&mut tail, PROBABILITY_ATTRIBUTE, p);
        }
        let total: usize = spans
            .iter()
            .map(|s| s.bytes().len() + tail.len() + 32)
            .sum();
        let mut bytes = Vec::with_capacity(total);
        let mut out = Vec::with_capacity(spans.len());
        // The spans of a trace nearly always share one tracestate (often none): the
        // merged value is worked out once per distinct input value, not per span.
        let mut merged: Option<(&[u8], Option<String>)> = None;
        for s in spans {
            let start = bytes.len();
            copy_without_annotation(s.bytes(), &mut bytes);
            bytes.extend_from_slice(&tail);
            if let Some(p) = a.probability {
                let existing = trace_state(s.bytes());
                if merged.as_ref().is_none_or(|(seen, _)| *seen != existing) {
                    let value = merge_trace_state(&String::from_utf8_lossy(existing), p);
                    merged = Some((existing, value));
                }
                if let Some((_, Some(ts))) = &merged {
                    put_len_field(&mut bytes, 3, ts.as_bytes()); // Span.trace_state = 3
                }
            }
            out.push((s.frame(), start, bytes.len()));
        }
        Annotated { bytes, spans: out }
    }

    /// The annotated spans, ready for `encode_trace`.
    pub fn spans(&self) -> Vec<SpanRef<'_>> {
        self.spans
            .iter()
            .map(|&(frame, start, end)| SpanRef {
                frame,
                bytes: &self.bytes[start..end],
            })
            .collect()
    }
}

/// Copies an encoded span, leaving out attributes named like the annotation's (a span
/// annotated by an earlier tail sampler would otherwise carry the key twice).
fn copy_without_annotation(span: &[u8], out: &mut Vec<u8>) {
    static PREFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"tailsampling."));
    if PREFIX.find(span).is_none() {
        out.extend_from_slice(span);
        return;
    }
    let before = out.len();
    let mut r = Reader::new(span, 0);
    while !r.at_end() {
        let at = r.offset();
        let Ok((field, wt)) = r.key() else { break };
        let ours = field == 9
            && wt == LEN
            && {
                let mut probe = Reader::new(&span[r.offset()..], 0);
                matches!(probe.len_delimited(), Ok((_, kv)) if attribute_key(kv)
                .is_some_and(|k| k == POLICY_ATTRIBUTE.as_bytes() || k == PROBABILITY_ATTRIBUTE.as_bytes()))
            };
        if r.skip(field, wt).is_err() {
            // Cannot happen for a span that scanned; keep it whole rather than cut it.
            out.truncate(before);
            out.extend_from_slice(span);
            return;
        }
        if !ours {
            out.extend_from_slice(&span[at..r.offset()]);
        }
    }
}

/// The key of an encoded `KeyValue`.
fn attribute_key(kv: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(kv, 0);
    while !r.at_end() {
        let (field, wt) = r.key().ok()?;
        if field == 1 && wt == LEN {
            return r.len_delimited().ok().map(|(_, k)| k);
        }
        r.skip(field, wt).ok()?;
    }
    None
}

/// The span's `trace_state` (last one wins, as for any singular field); empty if
/// absent or unreadable.
fn trace_state(span: &[u8]) -> &[u8] {
    let mut found: &[u8] = &[];
    let mut r = Reader::new(span, 0);
    while !r.at_end() {
        let Ok((field, wt)) = r.key() else { break };
        if field == 3 && wt == LEN {
            match r.len_delimited() {
                Ok((_, b)) => found = b,
                Err(_) => break,
            }
        } else if r.skip(field, wt).is_err() {
            break;
        }
    }
    found
}

/// A `Span.attributes` entry (field 9) with a string value.
fn put_string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    let mut any = Vec::new();
    put_len_field(&mut any, 1, value.as_bytes()); // AnyValue.string_value = 1
    put_key_value(out, key, &any);
}

/// A `Span.attributes` entry (field 9) with a double value.
fn put_double_attribute(out: &mut Vec<u8>, key: &str, value: f64) {
    let mut any = vec![(4 << 3) | 1]; // AnyValue.double_value = 4, fixed64
    any.extend_from_slice(&value.to_le_bytes());
    put_key_value(out, key, &any);
}

fn put_key_value(out: &mut Vec<u8>, key: &str, any: &[u8]) {
    let mut kv = Vec::new();
    put_len_field(&mut kv, 1, key.as_bytes()); // KeyValue.key = 1
    put_len_field(&mut kv, 2, any); // KeyValue.value = 2
    put_len_header(out, 9, kv.len());
    out.extend_from_slice(&kv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_specification_examples() {
        assert_eq!(threshold(1.0).as_deref(), Some("0"));
        assert_eq!(threshold(0.5).as_deref(), Some("8"));
        assert_eq!(threshold(0.25).as_deref(), Some("c"));
        assert_eq!(threshold(0.1).as_deref(), Some("e6666666666666"));
        assert_eq!(threshold(0.0), None);
        assert_eq!(threshold(1.5), None);
    }

    #[test]
    fn a_threshold_parses_back_to_its_probability() {
        for p in [1.0, 0.5, 0.25, 0.1, 0.01, 1.0 / 3.0, 0.001, 1e-6] {
            let th = threshold(p).expect("in range");
            let back = probability_of(&th).expect("parses");
            assert!((back - p).abs() < 1e-12, "{p} -> {th} -> {back}");
        }
        assert_eq!(probability_of("xyz"), None);
        assert_eq!(probability_of("123456789abcdef"), None);
    }

    #[test]
    fn an_earlier_annotation_is_replaced_not_repeated() {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::trace::v1::Span;
        use prost::Message as _;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let span = Span {
            trace_id: vec![1; 16],
            name: "op".into(),
            attributes: vec![kv("a", "1"), kv(POLICY_ATTRIBUTE, "upstream"), kv("b", "2")],
            ..Default::default()
        };
        let frame = ScopeFrame::new(bytes::Bytes::new());
        let encoded = span.encode_to_vec();
        let input = [SpanRef {
            frame: &frame,
            bytes: &encoded,
        }];
        let a = Annotated::new(
            &input,
            &Annotation {
                policy: "errors",
                probability: None,
            },
        );
        let out = Span::decode(a.spans()[0].bytes).expect("valid span");
        let keys: Vec<&str> = out.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", POLICY_ATTRIBUTE]);
        assert_eq!(out.name, "op");
        assert_eq!(out.trace_id, vec![1; 16]);
    }

    /// The merged tracestate is worked out once per distinct input value: spans
    /// whose tracestates differ each get their own, in any order.
    #[test]
    fn each_span_gets_the_threshold_of_its_own_tracestate() {
        use opentelemetry_proto::tonic::trace::v1::Span;
        use prost::Message as _;
        let span = |ts: &str| {
            Span {
                trace_id: vec![1; 16],
                trace_state: ts.into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let encoded = [span(""), span(""), span("ot=th:8"), span(""), span("a=1")];
        let frame = ScopeFrame::new(bytes::Bytes::new());
        let input: Vec<SpanRef<'_>> = encoded
            .iter()
            .map(|b| SpanRef {
                frame: &frame,
                bytes: b,
            })
            .collect();
        let a = Annotated::new(
            &input,
            &Annotation {
                policy: "p",
                probability: Some(0.5),
            },
        );
        let states: Vec<String> = a
            .spans()
            .iter()
            .map(|s| Span::decode(s.bytes).expect("valid span").trace_state)
            .collect();
        assert_eq!(
            states,
            ["ot=th:8", "ot=th:8", "ot=th:c", "ot=th:8", "ot=th:8,a=1"]
        );
    }

    #[test]
    fn tracestate_keeps_other_entries_and_multiplies_a_head_threshold() {
        assert_eq!(merge_trace_state("", 0.5).as_deref(), Some("ot=th:8"));
        assert_eq!(
            merge_trace_state("vendor=x, ot=th:8;rv:abcdef01234567", 0.5).as_deref(),
            Some("ot=th:c;rv:abcdef01234567,vendor=x")
        );
        assert_eq!(
            merge_trace_state("a=1,b=2", 1.0).as_deref(),
            Some("ot=th:0,a=1,b=2")
        );
    }
}
