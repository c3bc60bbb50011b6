//! Checks that kept spans are what standard OTLP decoders accept.
//!
//! The scan reads only what sampling needs and skips the rest unread, so a span can
//! be kept that prost, the Python protobuf runtime or the Collector's pdata would
//! refuse: a string field that is not UTF-8, an id of the wrong length, a known field
//! sent with another wire type, or messages nested past the decoders' recursion limit
//! (100 in prost and in Python's). One such span makes its whole output record
//! undecodable downstream, and the kept trace with it. So before a kept trace is
//! encoded, its spans and their resource and scope are checked here, and the sink
//! sends those that fail to the dead-letter topic with the reason, apart from the
//! rest of the trace. Only kept spans are checked: the others never leave.

use std::str;

use super::encode::EncodedSpan;
use super::wire::{Reader, END_GROUP, FIXED32, FIXED64, LEN, START_GROUP, VARINT};
use super::ScopeFrame;

/// The deepest message nesting accepted, counting the `ExportTraceServiceRequest` as
/// level 0 (as prost does). Decoders refuse past 100; four levels are left for those
/// that count from 1 or include the request.
pub const MAX_DEPTH: u32 = 96;

/// Level of a `Span` body in the request (request, resource spans, scope spans).
const SPAN_LEVEL: u32 = 3;
/// Level of a `Resource` body.
const RESOURCE_LEVEL: u32 = 2;
/// Level of an `InstrumentationScope` body.
const SCOPE_LEVEL: u32 = 3;

/// Why standard decoders would refuse a span (or its resource or scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpanDefect {
    /// A `string` field whose bytes are not UTF-8 (protobuf requires it).
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A trace or span id of another length than 16 or 8 bytes (pdata refuses it).
    #[error("{field} is {len} bytes, expected {want} (or none)")]
    IdLength {
        /// Which id.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The length it must have.
        want: usize,
    },
    /// A known field sent with another wire type (prost refuses it).
    #[error("field {field} of {message} has wire type {wire_type}")]
    WireType {
        /// The message type.
        message: &'static str,
        /// The field number.
        field: u32,
        /// The wire type it came with.
        wire_type: u8,
    },
    /// Messages (or groups) nested deeper than [`MAX_DEPTH`].
    #[error("messages nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Bytes that do not parse as protobuf where a message is expected.
    #[error("malformed protobuf inside a {0}")]
    Malformed(&'static str),
}

impl SpanDefect {
    /// A short, bounded label for metrics and dead-letter reasons.
    pub fn code(&self) -> &'static str {
        match self {
            SpanDefect::NotUtf8(_) => "not_utf8",
            SpanDefect::IdLength { .. } => "bad_id_length",
            SpanDefect::WireType { .. } => "wrong_wire_type",
            SpanDefect::TooDeep => "too_deep",
            SpanDefect::Malformed(_) => "malformed",
        }
    }
}

/// Checks one span as standard decoders would read it inside its resource and scope.
/// A frame's result is computed once and kept with it.
///
/// # Errors
/// The first defect found.
pub fn check_span<S: EncodedSpan + ?Sized>(span: &S) -> Result<(), SpanDefect> {
    span.frame().checked(check_frame)?;
    check(Type::Span, span.bytes(), SPAN_LEVEL)
}

/// Checks a frame's resource, scope and schema urls.
fn check_frame(f: &ScopeFrame) -> Result<(), SpanDefect> {
    utf8(f.resource_schema_url(), "resource schema_url")?;
    utf8(f.scope_schema_url(), "scope schema_url")?;
    if let Some(r) = f.resource() {
        check(Type::Resource, r, RESOURCE_LEVEL)?;
    }
    if let Some(s) = f.scope() {
        check(Type::Scope, s, SCOPE_LEVEL)?;
    }
    Ok(())
}

fn utf8(b: &[u8], what: &'static str) -> Result<(), SpanDefect> {
    // Nearly every string in telemetry is ASCII: a word-at-a-time test first (the
    // full UTF-8 check went byte by byte over short strings, 30% of the check).
    if b.is_ascii() {
        return Ok(());
    }
    str::from_utf8(b)
        .map(drop)
        .map_err(|_| SpanDefect::NotUtf8(what))
}

/// The OTLP message types a span reaches.
#[derive(Clone, Copy)]
enum Type {
    Span,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    Event,
    Link,
    Status,
    Resource,
    Scope,
    EntityRef,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Span => "Span",
            Type::KeyValue => "KeyValue",
            Type::AnyValue => "AnyValue",
            Type::ArrayValue => "ArrayValue",
            Type::KeyValueList => "KeyValueList",
            Type::Event => "Span.Event",
            Type::Link => "Span.Link",
            Type::Status => "Status",
            Type::Resource => "Resource",
            Type::Scope => "InstrumentationScope",
            Type::EntityRef => "EntityRef",
        }
    }
}

/// What a known field holds.
#[derive(Clone, Copy)]
enum Kind {
    Str(&'static str),
    Bytes,
    Id(&'static str, usize),
    Varint,
    Fixed64,
    Fixed32,
    Msg(Type),
}

/// The known fields of each type, from opentelemetry-proto's `trace.proto`,
/// `common.proto` and `resource.proto`. Unknown fields are skipped, as decoders do.
fn field(t: Type, n: u32) -> Option<Kind> {
    use Kind::{Bytes, Fixed32, Fixed64, Id, Msg, Str, Varint};
    Some(match (t, n) {
        (Type::Span, 1) => Id("trace_id", 16),
        (Type::Span, 2) => Id("span_id", 8),
        (Type::Span, 3) => Str("span trace_state"),
        (Type::Span, 4) => Id("parent_span_id", 8),
        (Type::Span, 5) => Str("span name"),
        (Type::Span, 6 | 10 | 12 | 14) => Varint,
        (Type::Span, 7 | 8) => Fixed64,
        (Type::Span, 9) | (Type::Event, 3) | (Type::Link, 4) => Msg(Type::KeyValue),
        (Type::Span, 11) => Msg(Type::Event),
        (Type::Span, 13) => Msg(Type::Link),
        (Type::Span, 15) => Msg(Type::Status),
        (Type::Span, 16) | (Type::Link, 6) => Fixed32,
        (Type::KeyValue, 1) => Str("attribute key"),
        // key_strindex and string_value_strindex (int32, for profiles' string tables).
        (Type::KeyValue, 3) | (Type::AnyValue, 8) => Varint,
        (Type::KeyValue, 2) | (Type::ArrayValue, 1) => Msg(Type::AnyValue),
        (Type::AnyValue, 1) => Str("attribute string value"),
        (Type::AnyValue, 2 | 3) => Varint,
        (Type::AnyValue, 4) | (Type::Event, 1) => Fixed64,
        (Type::AnyValue, 5) => Msg(Type::ArrayValue),
        (Type::AnyValue, 6) => Msg(Type::KeyValueList),
        (Type::AnyValue, 7) => Bytes,
        (Type::KeyValueList, 1) | (Type::Resource, 1) | (Type::Scope, 3) => Msg(Type::KeyValue),
        (Type::Event, 2) => Str("event name"),
        (Type::Event, 4) | (Type::Link, 5) | (Type::Resource, 2) | (Type::Scope, 4) => Varint,
        (Type::Link, 1) => Id("link trace_id", 16),
        (Type::Link, 2) => Id("link span_id", 8),
        (Type::Link, 3) => Str("link trace_state"),
        (Type::Status, 2) => Str("status message"),
        (Type::Status, 3) => Varint,
        (Type::Resource, 3) => Msg(Type::EntityRef),
        (Type::EntityRef, 1) => Str("entity schema_url"),
        (Type::EntityRef, 2) => Str("entity type"),
        (Type::EntityRef, 3 | 4) => Str("entity key"),
        (Type::Scope, 1) => Str("scope name"),
        (Type::Scope, 2) => Str("scope version"),
        _ => return None,
    })
}

/// Checks one message body of type `t` at nesting `level`.
fn check(t: Type, body: &[u8], level: u32) -> Result<(), SpanDefect> {
    if level > MAX_DEPTH {
        return Err(SpanDefect::TooDeep);
    }
    let bad = |_| SpanDefect::Malformed(t.name());
    let mut r = Reader::new(body, 0);
    while !r.at_end() {
        let (n, wt) = r.key().map_err(bad)?;
        let Some(kind) = field(t, n) else {
            // Unknown fields are skipped here rather than through `Reader::skip`,
            // whose group arm takes the cursor by reference: the cursor then lived
            // in memory and every field paid for it. Only the rare group gets a
            // copy to skip through.
            match wt {
                START_GROUP => {
                    let mut g = r;
                    skip_group(&mut g, n, level + 1)
                        .map_err(|e| e.unwrap_or(SpanDefect::Malformed(t.name())))?;
                    r = g;
                }
                VARINT => r.varint().map(drop).map_err(bad)?,
                FIXED64 => r.fixed64().map(drop).map_err(bad)?,
                FIXED32 => r.fixed32().map(drop).map_err(bad)?,
                LEN => r.len_delimited().map(drop).map_err(bad)?,
                // An end of group without its start, or an unknown wire type.
                _ => return Err(SpanDefect::Malformed(t.name())),
            }
            continue;
        };
        let want = match kind {
            Kind::Varint => VARINT,
            Kind::Fixed64 => FIXED64,
            Kind::Fixed32 => FIXED32,
            _ => LEN,
        };
        if wt != want {
            return Err(SpanDefect::WireType {
                message: t.name(),
                field: n,
                wire_type: wt,
            });
        }
        match kind {
            Kind::Varint => r.varint().map(drop).map_err(bad)?,
            Kind::Fixed64 => r.fixed64().map(drop).map_err(bad)?,
            Kind::Fixed32 => r.fixed32().map(drop).map_err(bad)?,
            Kind::Bytes => r.len_delimited().map(drop).map_err(bad)?,
            Kind::Str(what) => utf8(r.len_delimited().map_err(bad)?.1, what)?,
            Kind::Id(what, len) => {
                let got = r.len_delimited().map_err(bad)?.1.len();
                if got != len && got != 0 {
                    return Err(SpanDefect::IdLength {
                        field: what,
                        len: got,
                        want: len,
                    });
                }
            }
            Kind::Msg(inner) => check(inner, r.len_delimited().map_err(bad)?.1, level + 1)?,
        }
    }
    Ok(())
}

/// Skips an unknown group to its end, counting its nesting as decoders do.
/// `Err(None)`: malformed.
fn skip_group(r: &mut Reader<'_>, field: u32, level: u32) -> Result<(), Option<SpanDefect>> {
    if level > MAX_DEPTH {
        return Err(Some(SpanDefect::TooDeep));
    }
    loop {
        if r.at_end() {
            return Err(None);
        }
        let (f, wt) = r.key().map_err(|_| None)?;
        match wt {
            END_GROUP if f == field => return Ok(()),
            END_GROUP => return Err(None),
            START_GROUP => skip_group(r, f, level + 1)?,
            _ => r.skip(f, wt).map_err(|_| None)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::wire::{put_len_field, put_varint};
    use crate::codec::SpanRef;
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    fn span_with(extra: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        put_len_field(&mut s, 1, &[7; 16]);
        put_len_field(&mut s, 2, &[8; 8]);
        put_len_field(&mut s, 5, b"GET /");
        s.extend_from_slice(extra);
        s
    }

    /// An attribute whose value is `levels` AnyValues nested in arrays.
    fn nested_attribute(levels: u32) -> Vec<u8> {
        let mut v = Vec::new();
        put_len_field(&mut v, 1, b"leaf");
        for _ in 1..levels {
            let mut array = Vec::new();
            put_len_field(&mut array, 1, &v); // ArrayValue.values
            v.clear();
            put_len_field(&mut v, 5, &array); // AnyValue.array_value
        }
        let mut kv = Vec::new();
        put_len_field(&mut kv, 1, b"deep");
        put_len_field(&mut kv, 2, &v);
        let mut out = Vec::new();
        put_len_field(&mut out, 9, &kv);
        out
    }

    fn check_body(body: &[u8]) -> Result<(), SpanDefect> {
        let frame = ScopeFrame::default();
        check_span(&SpanRef {
            frame: &frame,
            bytes: body,
        })
    }

    /// The span in a request under empty resource and scope, decoded by prost.
    fn prost_decodes(body: &[u8]) -> bool {
        let mut ss = Vec::new();
        put_len_field(&mut ss, 2, body);
        let mut rs = Vec::new();
        put_len_field(&mut rs, 2, &ss);
        let mut req = Vec::new();
        put_len_field(&mut req, 1, &rs);
        ExportTraceServiceRequest::decode(Bytes::from(req)).is_ok()
    }

    #[test]
    fn a_well_formed_span_passes_and_prost_agrees() {
        let body = span_with(&nested_attribute(3));
        assert_eq!(check_body(&body), Ok(()));
        assert!(prost_decodes(&body));
    }

    #[test]
    fn invalid_utf8_is_refused_where_prost_refuses_it() {
        let mut name = Vec::new();
        put_len_field(&mut name, 5, b"caf\xc3");
        let body = span_with(&name);
        assert_eq!(check_body(&body), Err(SpanDefect::NotUtf8("span name")));
        assert!(!prost_decodes(&body));
        // Bytes values are not strings.
        let mut any = Vec::new();
        put_len_field(&mut any, 7, b"\xff\xfe");
        let mut kv = Vec::new();
        put_len_field(&mut kv, 1, b"raw");
        put_len_field(&mut kv, 2, &any);
        let mut attr = Vec::new();
        put_len_field(&mut attr, 9, &kv);
        let body = span_with(&attr);
        assert_eq!(check_body(&body), Ok(()));
        assert!(prost_decodes(&body));
    }

    #[test]
    fn ids_of_the_wrong_length_are_refused() {
        let mut s = Vec::new();
        put_len_field(&mut s, 1, &[7; 16]);
        put_len_field(&mut s, 2, &[8; 3]);
        assert_eq!(
            check_body(&s),
            Err(SpanDefect::IdLength {
                field: "span_id",
                len: 3,
                want: 8
            })
        );
        let mut parentless = Vec::new();
        put_len_field(&mut parentless, 4, &[]);
        assert_eq!(check_body(&span_with(&parentless)), Ok(()));
    }

    #[test]
    fn a_known_field_with_another_wire_type_is_refused_as_prost_does() {
        let mut kind = Vec::new();
        put_len_field(&mut kind, 6, b"x"); // kind is a varint
        let body = span_with(&kind);
        assert!(matches!(
            check_body(&body),
            Err(SpanDefect::WireType { field: 6, .. })
        ));
        assert!(!prost_decodes(&body));
        let mut unknown = Vec::new();
        put_varint(&mut unknown, (99 << 3) | u64::from(LEN));
        put_varint(&mut unknown, 1);
        unknown.push(0);
        assert_eq!(check_body(&span_with(&unknown)), Ok(()));
    }

    /// Unknown fields of every wire type are skipped, a group with what it holds;
    /// one that cannot be skipped (a stray end of group, wire types 6 and 7, a
    /// truncated value) is malformed; prost agrees each time. Valid UTF-8 beyond
    /// ASCII passes the string check.
    #[test]
    fn unknown_fields_are_skipped_as_prost_skips_them() {
        let key = |field: u64, wt: u8| (field << 3) | u64::from(wt);
        let mut unknown = Vec::new();
        put_varint(&mut unknown, key(100, VARINT));
        put_varint(&mut unknown, 300); // two bytes
        put_varint(&mut unknown, key(101, FIXED64));
        unknown.extend_from_slice(&[1; 8]);
        put_varint(&mut unknown, key(102, FIXED32));
        unknown.extend_from_slice(&[2; 4]);
        put_varint(&mut unknown, key(103, LEN));
        put_varint(&mut unknown, 200); // a two-byte length, and not a string
        unknown.extend_from_slice(&[0xff; 200]);
        put_varint(&mut unknown, key(104, START_GROUP));
        put_varint(&mut unknown, key(1, VARINT));
        put_varint(&mut unknown, 7);
        put_varint(&mut unknown, key(104, END_GROUP));
        let mut name = Vec::new();
        put_len_field(&mut name, 5, "café ☕".as_bytes());
        let body = span_with(&[unknown, name].concat());
        assert_eq!(check_body(&body), Ok(()));
        assert!(prost_decodes(&body));
        for bad in [
            vec![key(105, END_GROUP)],
            vec![key(106, 6), 0],
            vec![key(107, 7), 0],
            vec![key(108, FIXED64), 1],
        ] {
            let mut extra = Vec::new();
            for v in bad {
                put_varint(&mut extra, v);
            }
            let body = span_with(&extra);
            assert_eq!(check_body(&body), Err(SpanDefect::Malformed("Span")));
            assert!(!prost_decodes(&body));
        }
    }

    #[test]
    fn nesting_is_bounded_below_the_decoders_limit() {
        // The innermost of n nested any values is at level 3 + 2n (span 3, key
        // value 4, any value 5, array 6, ...).
        let at_limit = span_with(&nested_attribute((MAX_DEPTH - 3) / 2));
        let past = span_with(&nested_attribute((MAX_DEPTH - 3) / 2 + 1));
        assert_eq!(check_body(&at_limit), Ok(()));
        assert!(prost_decodes(&at_limit));
        assert_eq!(check_body(&past), Err(SpanDefect::TooDeep));
        // prost's own limit, which the margin stays inside: level 99 decodes, 101 not.
        assert!(prost_decodes(&span_with(&nested_attribute(48))));
        assert!(!prost_decodes(&span_with(&nested_attribute(49))));
        let far_past = span_with(&nested_attribute(60));
        assert_eq!(check_body(&far_past), Err(SpanDefect::TooDeep));
        assert!(!prost_decodes(&far_past), "prost refuses what is refused");
    }

    #[test]
    fn a_bad_resource_fails_its_spans_once() {
        let mut kv = Vec::new();
        put_len_field(&mut kv, 1, b"service.\xff");
        let mut resource = Vec::new();
        put_len_field(&mut resource, 1, &kv);
        let mut payload = resource.clone();
        payload.extend_from_slice(&span_with(&[]));
        let frame = ScopeFrame::with_ranges(
            Bytes::from(payload),
            crate::codec::ByteRange::new(0, resource.len()),
            crate::codec::ByteRange::default(),
            None,
            crate::codec::ByteRange::default(),
            0,
        );
        let body = span_with(&[]);
        let span = SpanRef {
            frame: &frame,
            bytes: &body,
        };
        assert_eq!(check_span(&span), Err(SpanDefect::NotUtf8("attribute key")));
        assert_eq!(check_span(&span), Err(SpanDefect::NotUtf8("attribute key")));
    }
}
