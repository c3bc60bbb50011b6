//! Zero-copy scan of OTLP `ExportTraceServiceRequest` protobuf.

use std::sync::Arc;

use bytes::Bytes;

use super::attrs::hits_of;
use super::frames::FrameParts;
use super::wire::{Reader, FIXED32, FIXED64, LEN, VARINT};
use super::{
    AttrMatchers, AttrValue, ByteRange, CodecError, FrameInterner, KeyField, Message, ScopeFrame,
    Span, SpanRef, StatusCode, TraceId,
};
use crate::ottl::{Path, Record, Value};

/// Scans one OTLP `ExportTraceServiceRequest`, appends its spans to `out` and returns
/// the [`Message`] they refer to; framing is shared through `frames`.
///
/// # Errors
/// Any malformed field, or a span without a valid trace id, fails the whole payload
/// and leaves `out` as it was. The pipeline uses [`scan_partial`], which sets aside
/// spans without a valid trace id instead.
pub fn scan(
    payload: &Bytes,
    keys: &AttrMatchers,
    frames: &mut FrameInterner,
    out: &mut Vec<Span>,
) -> Result<Message, CodecError> {
    let before = out.len();
    let mut rejected = Vec::new();
    let message = scan_partial(payload, keys, frames, out, &mut rejected)?;
    match rejected.into_iter().next() {
        None => Ok(message),
        Some(r) => {
            out.truncate(before);
            Err(r.error)
        }
    }
}

/// A span the scan set aside: it parsed, but has no valid trace id, so it cannot be
/// grouped. Its bytes stay in the message, for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct RejectedSpan {
    /// The span, its trace id zero.
    pub span: Span,
    /// Why it was set aside.
    pub error: CodecError,
}

/// Like [`scan`], but a span whose framing is intact and whose trace id is missing,
/// not 16 bytes or all zero is appended to `rejected` instead of failing the payload:
/// the valid spans beside it are still sampled.
///
/// # Errors
/// Any malformed field fails the whole payload and leaves `out` and `rejected` as
/// they were: a message's framing is either read completely or the message goes to
/// the dead-letter topic, never half-read.
pub fn scan_partial(
    payload: &Bytes,
    keys: &AttrMatchers,
    frames: &mut FrameInterner,
    out: &mut Vec<Span>,
    rejected: &mut Vec<RejectedSpan>,
) -> Result<Message, CodecError> {
    if u32::try_from(payload.len()).is_err() {
        return Err(CodecError::TooLarge(payload.len()));
    }
    let before = out.len();
    let mut cx = Cx {
        keys,
        interner: frames,
        frames: Vec::new(),
        rejected: Vec::new(),
        scopes: Vec::new(),
    };
    match scan_request(payload, &mut cx, out) {
        Ok(()) => {
            rejected.append(&mut cx.rejected);
            Ok(Message::new(payload.clone(), cx.frames))
        }
        Err(e) => {
            out.truncate(before);
            Err(e)
        }
    }
}

/// A length-delimited sub-message: its bytes and where they start in the payload, so
/// fields inside can be sliced out of the payload without copying.
#[derive(Clone, Copy)]
struct Msg<'a> {
    payload: &'a Bytes,
    base: usize,
    body: &'a [u8],
}

impl<'a> Msg<'a> {
    /// Where the message lies in the payload (which is under 4 GiB, checked by `scan`).
    fn range(&self) -> ByteRange {
        ByteRange::new(self.base, self.body.len()).unwrap_or_default()
    }

    /// Calls `f(field, sub)` for every length-delimited field numbered in `wanted`;
    /// skips other fields. A wanted field with another wire type is invalid.
    fn each(
        &self,
        wanted: &[u32],
        mut f: impl FnMut(u32, Msg<'a>) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        let mut r = Reader::new(self.body, self.base);
        while !r.at_end() {
            let (field, wt) = r.key()?;
            if wanted.contains(&field) {
                f(field, self.len_field(&mut r, wt)?)?;
            } else {
                r.skip(field, wt)?;
            }
        }
        Ok(())
    }

    /// Reads a length-delimited field at the cursor as a sub-message.
    fn len_field(&self, r: &mut Reader<'a>, wt: u8) -> Result<Msg<'a>, CodecError> {
        r.expect(wt, LEN)?;
        let (start, body) = r.len_delimited()?;
        Ok(Msg {
            payload: self.payload,
            base: self.base + start,
            body,
        })
    }
}

/// What every level of the scan needs besides the bytes.
struct Cx<'a> {
    keys: &'a AttrMatchers,
    interner: &'a mut FrameInterner,
    /// The message's framings so far; spans index them.
    frames: Vec<Arc<ScopeFrame>>,
    /// Spans set aside for their trace id.
    rejected: Vec<RejectedSpan>,
    /// The scope and scope schema url of each `ScopeSpans` of the resource being
    /// read in one pass, interned once the resource's schema url (its last field)
    /// is known.
    scopes: Vec<(Option<&'a [u8]>, &'a [u8])>,
}

fn scan_request<'a>(
    payload: &'a Bytes,
    cx: &mut Cx<'a>,
    out: &mut Vec<Span>,
) -> Result<(), CodecError> {
    let request = Msg {
        payload,
        base: 0,
        body: payload,
    };
    // ExportTraceServiceRequest.resource_spans = 1
    request.each(&[1], |_, rs| scan_resource_spans(rs, cx, out))
}

/// Reads one `ResourceSpans` in a single pass over its bytes when its resource comes
/// before its spans, as every known encoder writes it (fields in number order);
/// otherwise in two passes, the resource first. A single pass touches each byte
/// once, in order: the two-pass reading jumped over every span to find fields
/// after it, a cache miss per span on input that is not in cache.
fn scan_resource_spans<'a>(
    rs: Msg<'a>,
    cx: &mut Cx<'a>,
    out: &mut Vec<Span>,
) -> Result<(), CodecError> {
    let before = (out.len(), cx.rejected.len(), cx.frames.len());
    if scan_resource_spans_in_order(rs, cx, out)? {
        return Ok(());
    }
    out.truncate(before.0);
    cx.rejected.truncate(before.1);
    cx.frames.truncate(before.2);
    scan_resource_spans_two_pass(rs, cx, out)
}

/// The single pass: `Ok(false)` (and whatever it appended to be dropped) when a
/// resource comes after spans or twice, which only the two-pass reading handles.
fn scan_resource_spans_in_order<'a>(
    rs: Msg<'a>,
    cx: &mut Cx<'a>,
    out: &mut Vec<Span>,
) -> Result<bool, CodecError> {
    let keys = cx.keys;
    let full = keys.reads_fields();
    let mut resource = None;
    let mut schema_url: &[u8] = &[];
    let mut res = ResourceCx::default();
    let mut spans_seen = false;
    cx.scopes.clear();
    let first_frame = cx.frames.len();
    let mut r = Reader::new(rs.body, rs.base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                if spans_seen || resource.is_some() {
                    return Ok(false);
                }
                let m = rs.len_field(&mut r, wt)?;
                resource = Some(m.body);
                res = ResourceCx::scan(m, keys)?;
            }
            2 => {
                spans_seen = true;
                let ss = rs.len_field(&mut r, wt)?;
                let index = u32::try_from(first_frame + cx.scopes.len())
                    .map_err(|_| CodecError::TooLarge(0))?;
                // ScopeSpans: scope = 1, spans = 2, schema_url = 3.
                let mut scope = None;
                let mut scope_schema_url: &[u8] = &[];
                let mut sr = Reader::new(ss.body, ss.base);
                while !sr.at_end() {
                    let (field, wt) = sr.key()?;
                    match field {
                        1 => scope = Some(ss.len_field(&mut sr, wt)?.body),
                        2 => {
                            let span = ss.len_field(&mut sr, wt)?;
                            push_span(span, index, &res, keys, full, &mut cx.rejected, out)?;
                        }
                        3 => scope_schema_url = ss.len_field(&mut sr, wt)?.body,
                        _ => sr.skip(field, wt)?,
                    }
                }
                cx.scopes.push((scope, scope_schema_url));
            }
            3 => schema_url = rs.len_field(&mut r, wt)?.body,
            _ => r.skip(field, wt)?,
        }
    }
    for &(scope, scope_schema_url) in &cx.scopes {
        let frame = cx.interner.intern(FrameParts {
            resource,
            resource_schema_url: schema_url,
            scope,
            scope_schema_url,
            resource_hits: res.hits,
        });
        cx.frames.push(frame);
    }
    Ok(true)
}

/// Scans one span under frame `index` into `out`, or into `rejected` when its trace
/// id is not valid.
fn push_span(
    span: Msg<'_>,
    index: u32,
    res: &ResourceCx<'_>,
    keys: &AttrMatchers,
    full: bool,
    rejected: &mut Vec<RejectedSpan>,
    out: &mut Vec<Span>,
) -> Result<(), CodecError> {
    let scanned = if full {
        scan_span::<true>(span, index, res, keys)
    } else {
        scan_span::<false>(span, index, res, keys)
    };
    match scanned {
        Ok(s) => out.push(s),
        Err(error @ CodecError::BadTraceId { .. }) => rejected.push(RejectedSpan {
            span: Span::bare(TraceId([0; 16]), span.range(), index),
            error,
        }),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The two-pass reading: the resource and schema url first, wherever they are,
/// then the spans.
fn scan_resource_spans_two_pass(
    rs: Msg<'_>,
    cx: &mut Cx<'_>,
    out: &mut Vec<Span>,
) -> Result<(), CodecError> {
    let keys = cx.keys;
    // Pass 1: the resource (1) and schema url (3) may come after the scope spans.
    let mut resource = None;
    let mut schema_url: &[u8] = &[];
    let mut res = ResourceCx::default();
    rs.each(&[1, 3], |field, m| {
        if field == 1 {
            resource = Some(m.body);
            res = ResourceCx::scan(m, keys)?;
        } else {
            schema_url = m.body;
        }
        Ok(())
    })?;
    let resource_hits = res.hits;
    let full = keys.reads_fields();
    // Pass 2: the scope spans (2).
    rs.each(&[2], |_, ss| {
        // ScopeSpans: scope = 1, spans = 2, schema_url = 3.
        let mut scope = None;
        let mut scope_schema_url: &[u8] = &[];
        ss.each(&[1, 3], |field, m| {
            if field == 1 {
                scope = Some(m.body);
            } else {
                scope_schema_url = m.body;
            }
            Ok(())
        })?;
        let frame = cx.interner.intern(FrameParts {
            resource,
            resource_schema_url: schema_url,
            scope,
            scope_schema_url,
            resource_hits,
        });
        let index = u32::try_from(cx.frames.len()).map_err(|_| CodecError::TooLarge(0))?;
        cx.frames.push(frame);
        ss.each(&[2], |_, span| {
            push_span(span, index, &res, keys, full, &mut cx.rejected, out)
        })
    })
}

/// What the spans of one resource share: the resource's attribute hits and, for
/// `ottl_condition` policies, the values of the resource attributes they read.
#[derive(Default)]
struct ResourceCx<'a> {
    hits: u64,
    attrs: Vec<(&'a [u8], AttrValue<'a>)>,
}

impl<'a> ResourceCx<'a> {
    fn scan(resource: Msg<'a>, keys: &AttrMatchers) -> Result<Self, CodecError> {
        let mut cx = ResourceCx::default();
        if keys.is_empty() {
            return Ok(cx);
        }
        let conditions = keys.reads_fields();
        // Resource.attributes = 1
        resource.each(&[1], |_, kv| {
            if conditions {
                let (key, value, hits) = scan_key_value_full(kv, keys)?;
                cx.hits |= hits;
                if let Some(v) = value.filter(|_| keys.reads_resource(key)) {
                    cx.attrs.push((key, v));
                }
            } else {
                cx.hits |= key_value_hits(kv, keys)?;
            }
            Ok(())
        })?;
        Ok(cx)
    }
}

/// A span's fields as `ottl_condition` policies read them.
struct SpanFields<'a, 'r> {
    name: &'a [u8],
    kind: i64,
    status: i64,
    attrs: Vec<(&'a [u8], AttrValue<'a>)>,
    resource: &'r [(&'a [u8], AttrValue<'a>)],
}

impl Record for SpanFields<'_, '_> {
    fn get(&self, path: &Path) -> Value<'_> {
        let find = |list: &[(&[u8], AttrValue<'_>)], key: &[u8]| -> Option<usize> {
            list.iter().position(|(k, _)| *k == key)
        };
        match path {
            Path::Name => Value::Str(self.name),
            Path::Kind => Value::Int(self.kind),
            Path::StatusCode => Value::Int(self.status),
            Path::Attribute(k) => {
                find(&self.attrs, k).map_or(Value::Nil, |i| self.attrs[i].1.into())
            }
            Path::ResourceAttribute(k) => {
                find(self.resource, k).map_or(Value::Nil, |i| self.resource[i].1.into())
            }
        }
    }
}

impl SpanFields<'_, '_> {
    /// FNV-1a over the key fields' values, each typed and separated: never 0.
    fn key_hash(&self, key: &[KeyField]) -> u64 {
        let mut h: u64 = super::FNV1A_OFFSET;
        let mut eat = |bytes: &[u8]| h = super::fnv1a(h, bytes);
        for f in key {
            let v = match f {
                KeyField::Name => Value::Str(self.name),
                KeyField::Kind => Value::Int(self.kind),
                KeyField::StatusCode => Value::Int(self.status),
                KeyField::Attribute(k) => match self.get(&Path::Attribute(k.clone())) {
                    Value::Nil => self.get(&Path::ResourceAttribute(k.clone())),
                    v => v,
                },
            };
            match v {
                Value::Str(s) => {
                    eat(b"s");
                    eat(s);
                }
                Value::Int(i) => {
                    eat(b"i");
                    eat(&i.to_le_bytes());
                }
                Value::Float(x) => {
                    eat(b"f");
                    eat(&x.to_bits().to_le_bytes());
                }
                Value::Bool(b) => eat(if b { b"t" } else { b"F" }),
                Value::Nil => eat(b"n"),
            }
            eat(&[0xff]);
        }
        h.max(1)
    }
}

/// A span event's fields (Event: name = 2, attributes = 3).
fn event_hits(event: Msg<'_>, keys: &AttrMatchers) -> Result<u64, CodecError> {
    let mut fields = SpanFields {
        name: &[],
        kind: 0,
        status: 0,
        attrs: Vec::new(),
        resource: &[],
    };
    event.each(&[2, 3], |field, m| {
        if field == 2 {
            fields.name = m.body;
        } else if let (key, Some(v), _) = scan_key_value_full(m, keys)? {
            fields.attrs.push((key, v));
        }
        Ok(())
    })?;
    Ok(keys
        .conditions()
        .iter()
        .filter(|c| c.events.iter().any(|e| e.eval(&fields)))
        .fold(0, |h, c| h | 1 << c.bit))
}

/// Scans one span. `FULL` (conditions or a key configured) also reads its name, kind,
/// attribute values and events; the common case compiles without those branches.
fn scan_span<const FULL: bool>(
    span: Msg<'_>,
    frame: u32,
    resource: &ResourceCx<'_>,
    keys: &AttrMatchers,
) -> Result<Span, CodecError> {
    let mut trace_id: Option<&[u8]> = None;
    let mut is_root = true;
    let mut start_ns = 0;
    let mut end_ns = 0;
    let mut status = StatusCode::Unset;
    let mut sampled_flag = false;
    let mut hits = resource.hits;
    let conditions = FULL;
    let mut fields = SpanFields {
        name: &[],
        kind: 0,
        status: 0,
        attrs: Vec::new(),
        resource: &resource.attrs,
    };
    let mut r = Reader::new(span.body, span.base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => trace_id = Some(span.len_field(&mut r, wt)?.body),
            3 if keys.reads_trace_state() => {
                hits |= keys.trace_state_hits(span.len_field(&mut r, wt)?.body);
            }
            4 => is_root = span.len_field(&mut r, wt)?.body.iter().all(|&b| b == 0),
            5 if conditions => fields.name = span.len_field(&mut r, wt)?.body,
            6 if conditions => {
                r.expect(wt, VARINT)?;
                fields.kind = r.varint()? as i64;
            }
            9 if conditions => {
                let (key, value, h) = scan_key_value_full(span.len_field(&mut r, wt)?, keys)?;
                hits |= h;
                if let Some(v) = value {
                    fields.attrs.push((key, v));
                }
            }
            11 if conditions && keys.reads_events() => {
                hits |= event_hits(span.len_field(&mut r, wt)?, keys)?;
            }
            7 => {
                r.expect(wt, FIXED64)?;
                start_ns = r.fixed64()?;
            }
            8 => {
                r.expect(wt, FIXED64)?;
                end_ns = r.fixed64()?;
            }
            9 if !keys.is_empty() => {
                hits |= key_value_hits(span.len_field(&mut r, wt)?, keys)?;
            }
            15 => status = scan_status(span.len_field(&mut r, wt)?)?,
            16 => {
                r.expect(wt, FIXED32)?;
                sampled_flag = r.fixed32()? & 1 == 1;
            }
            _ => r.skip(field, wt)?,
        }
    }
    let mut key_hash = 0;
    if conditions {
        fields.status = match status {
            StatusCode::Unset => 0,
            StatusCode::Ok => 1,
            StatusCode::Error => 2,
        };
        for c in keys.conditions() {
            if c.span.iter().any(|cond| cond.eval(&fields)) {
                hits |= 1 << c.bit;
            }
        }
        if !keys.key_fields().is_empty() {
            key_hash = fields.key_hash(keys.key_fields());
        }
    }
    let trace_id = match trace_id {
        Some(t) if t.len() == 16 && t.iter().any(|&b| b != 0) => {
            let mut id = [0u8; 16];
            id.copy_from_slice(t);
            TraceId(id)
        }
        other => {
            return Err(CodecError::BadTraceId {
                len: other.map_or(0, <[u8]>::len),
            })
        }
    };
    Ok(Span {
        trace_id,
        is_root,
        start_ns,
        end_ns,
        status,
        sampled_flag,
        key_hash,
        hits,
        range: span.range(),
        frame,
    })
}

/// What `span` (an encoded span already scanned, with its framing) yields under
/// `keys`, as [`Span`]'s `(hits, key_hash, is_root)`: for traces buffered when the policy set
/// is replaced by one reading other attributes. A field that does not parse counts
/// as no hit (the span parsed when it was first scanned).
pub fn rescan(span: &SpanRef<'_>, keys: &AttrMatchers) -> (u64, u64, bool) {
    let resource = Bytes::copy_from_slice(span.frame.resource().unwrap_or_default());
    let res = ResourceCx::scan(
        Msg {
            payload: &resource,
            base: 0,
            body: &resource,
        },
        keys,
    )
    .unwrap_or_default();
    let body = Bytes::copy_from_slice(span.bytes);
    let m = Msg {
        payload: &body,
        base: 0,
        body: &body,
    };
    scan_span::<true>(m, 0, &res, keys)
        .map_or((res.hits, 0, false), |s| (s.hits, s.key_hash, s.is_root))
}

/// An encoded span's `(start_time_unix_nano, end_time_unix_nano)`; `None` if the
/// bytes do not parse (they did when first scanned).
pub fn span_times(span: &[u8]) -> Option<(u64, u64)> {
    let (mut start, mut end) = (0, 0);
    let mut r = Reader::new(span, 0);
    while !r.at_end() {
        let (field, wt) = r.key().ok()?;
        match (field, wt) {
            (7, FIXED64) => start = r.fixed64().ok()?,
            (8, FIXED64) => end = r.fixed64().ok()?,
            _ => r.skip(field, wt).ok()?,
        }
    }
    Some((start, end))
}

fn scan_status(status: Msg<'_>) -> Result<StatusCode, CodecError> {
    let mut code = StatusCode::Unset;
    let mut r = Reader::new(status.body, status.base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        if field == 3 && wt == VARINT {
            code = match r.varint()? {
                1 => StatusCode::Ok,
                2 => StatusCode::Error,
                _ => StatusCode::Unset,
            };
        } else {
            r.skip(field, wt)?;
        }
    }
    Ok(code)
}

/// Reads one `KeyValue` whole: its key, its comparable value, and the bits of the
/// predicates on its key it hits (for `ottl_condition` policies, which read values).
fn scan_key_value_full<'a>(
    kv: Msg<'a>,
    keys: &AttrMatchers,
) -> Result<(&'a [u8], Option<AttrValue<'a>>, u64), CodecError> {
    let mut key: &[u8] = &[];
    let mut value = None;
    let mut r = Reader::new(kv.body, kv.base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => key = kv.len_field(&mut r, wt)?.body,
            2 => value = scan_any_value(&kv.len_field(&mut r, wt)?)?,
            _ => r.skip(field, wt)?,
        }
    }
    let hits = match (keys.for_key(key), &value) {
        (Some(m), Some(v)) => hits_of(m, v),
        _ => 0,
    };
    Ok((key, value, hits))
}

/// The bits an encoded `KeyValue` hits. Called for every attribute of every span and
/// resource, so the layout every known encoder writes (the key, then a value holding
/// one scalar, each with a one-byte length) is read in place: most keys are no
/// predicate's and cost a bit test. Anything else goes through [`scan_key_value`],
/// which gives the same answer for these.
#[inline(always)]
fn key_value_hits(kv: Msg<'_>, keys: &AttrMatchers) -> Result<u64, CodecError> {
    if let [0x0a, len @ 0..0x80, rest @ ..] = kv.body {
        if let Some((key, value)) = rest.split_at_checked(usize::from(*len)) {
            let Some(matchers) = keys.for_key(key) else {
                return Ok(0);
            };
            if let Some(v) = plain_value(value) {
                return Ok(hits_of(matchers, &v));
            }
        }
    }
    scan_key_value(kv, keys)
}

/// The scalar in `bytes` when they are exactly a `KeyValue.value` field holding an
/// `AnyValue` with one string (under 128 bytes), bool, int or double; else `None`.
#[inline(always)]
fn plain_value(bytes: &[u8]) -> Option<AttrValue<'_>> {
    let [0x12, len, any @ ..] = bytes else {
        return None;
    };
    if *len >= 0x80 || usize::from(*len) != any.len() {
        return None;
    }
    match any {
        [0x0a, n, s @ ..] if *n < 0x80 && usize::from(*n) == s.len() => Some(AttrValue::Str(s)),
        [0x18, int @ ..] => {
            let mut r = Reader::new(int, 0);
            let v = r.varint().ok()?;
            r.at_end().then_some(AttrValue::Int(v as i64))
        }
        [0x10, b] if *b < 0x80 => Some(AttrValue::Bool(*b != 0)),
        [0x21, d @ ..] => Some(AttrValue::Double(f64::from_bits(u64::from_le_bytes(
            d.try_into().ok()?,
        )))),
        _ => None,
    }
}

/// Tests one `KeyValue` against the predicates on its key; returns the bits it hits.
/// Most attributes have no predicate: their key is compared and the rest skipped.
fn scan_key_value(kv: Msg<'_>, keys: &AttrMatchers) -> Result<u64, CodecError> {
    // KeyValue: key = 1, value = 2 (in that order from every known encoder, but the
    // wire format allows any order).
    let mut matchers = None;
    let mut value: Option<Msg<'_>> = None;
    let mut r = Reader::new(kv.body, kv.base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => match keys.for_key(kv.len_field(&mut r, wt)?.body) {
                Some(m) => matchers = Some(m),
                None => return Ok(0),
            },
            2 => value = Some(kv.len_field(&mut r, wt)?),
            _ => r.skip(field, wt)?,
        }
    }
    let (Some(matchers), Some(value)) = (matchers, value) else {
        return Ok(0);
    };
    let Some(v) = scan_any_value(&value)? else {
        return Ok(0);
    };
    Ok(hits_of(matchers, &v))
}

fn scan_any_value<'a>(v: &Msg<'a>) -> Result<Option<AttrValue<'a>>, CodecError> {
    // AnyValue: string = 1, bool = 2, int = 3, double = 4; others are not compared.
    let mut out = None;
    let mut r = Reader::new(v.body, v.base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, LEN) => out = Some(AttrValue::Str(v.len_field(&mut r, wt)?.body)),
            (2, VARINT) => out = Some(AttrValue::Bool(r.varint()? != 0)),
            (3, VARINT) => out = Some(AttrValue::Int(r.varint()? as i64)),
            (4, FIXED64) => out = Some(AttrValue::Double(f64::from_bits(r.fixed64()?))),
            _ => r.skip(field, wt)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
    use prost::Message as _;

    use super::{key_value_hits, scan_key_value, Msg};
    use crate::codec::{AttrMatchers, Matcher};

    const LONG_KEY: &str = "a.very.long.attribute.key.over.sixteen";

    fn keys() -> AttrMatchers {
        let mut k = crate::codec::fuzz::keys();
        k.add("k", Matcher::Bool(true));
        k.add(LONG_KEY, Matcher::Exact(vec![b"x"[..].into()]));
        k
    }

    fn hits(bytes: &[u8], keys: &AttrMatchers) -> (Option<u64>, Option<u64>) {
        let payload = Bytes::copy_from_slice(bytes);
        let msg = || Msg {
            payload: &payload,
            base: 0,
            body: &payload,
        };
        (
            key_value_hits(msg(), keys).ok(),
            scan_key_value(msg(), keys).ok(),
        )
    }

    /// The in-place reading of an attribute agrees with the field-by-field one on
    /// every layout, the ones it reads and the ones it hands on.
    #[test]
    fn attributes_read_in_place_hit_what_the_full_reading_hits() {
        use any_value::Value as V;
        let keys = keys();
        let values = [
            None,
            Some(V::StringValue("/api/checkout".into())),
            Some(V::StringValue("/api/cart".into())),
            Some(V::StringValue("x".into())),
            Some(V::StringValue("y".repeat(200))),
            Some(V::IntValue(503)),
            Some(V::IntValue(42)),
            Some(V::IntValue(-1)),
            Some(V::BoolValue(true)),
            Some(V::BoolValue(false)),
            Some(V::DoubleValue(503.0)),
            Some(V::ArrayValue(ArrayValue::default())),
        ];
        let names = [
            "http.status_code",
            "http.route",
            "k",
            LONG_KEY,
            "other",
            "http.status_cod3",
            "",
        ];
        let mut seen = 0u64;
        for key in names {
            for value in &values {
                let kv = KeyValue {
                    key: key.to_string(),
                    value: value.clone().map(|v| AnyValue { value: Some(v) }),
                    ..KeyValue::default()
                };
                let bytes = kv.encode_to_vec();
                let (fast, full) = hits(&bytes, &keys);
                assert_eq!(fast, full, "{kv:?}");
                seen |= full.unwrap_or(0);
                // Value first, a field after, the key twice, cut short.
                // proto3 leaves an empty key out.
                let value_at = if key.is_empty() { 0 } else { 2 + key.len() };
                let swapped = [&bytes[value_at..], &bytes[..value_at]].concat();
                let trailing = [&bytes[..], &[0x18, 0x01]].concat();
                let twice = [&bytes[..value_at], &bytes[..]].concat();
                for other in [swapped, trailing, twice] {
                    let (fast, full) = hits(&other, &keys);
                    assert_eq!(fast, full, "{kv:?} as {other:?}");
                }
                for cut in 1..bytes.len() {
                    let (fast, full) = hits(&bytes[..cut], &keys);
                    assert_eq!(fast, full, "{kv:?} cut at {cut}");
                }
            }
        }
        assert_eq!(seen, 0b1111, "every predicate was hit by some attribute");
    }
}
