//! Zero-copy scan of OTLP `ExportTraceServiceRequest` protobuf.

use std::sync::Arc;

use bytes::Bytes;

use super::wire::{Reader, FIXED64, LEN, VARINT};
use super::{Attr, AttrValue, CodecError, RawSpan, ScopeFrame, Span, StatusCode, TraceId};

/// The attribute keys some configured policy reads. The scan extracts only these, so a
/// policy set that reads no attributes pays nothing for them.
#[derive(Debug, Default, Clone)]
pub struct AttrKeys {
    keys: Vec<Box<[u8]>>,
}

impl AttrKeys {
    /// Builds the key set; duplicates are merged.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        let mut out: Vec<Box<[u8]>> = Vec::new();
        for k in keys {
            let k = k.as_ref().as_bytes();
            if !out.iter().any(|e| &e[..] == k) {
                out.push(k.into());
            }
        }
        AttrKeys { keys: out }
    }

    /// The index of `key`, as stored in [`Attr`].
    pub fn index(&self, key: &str) -> Option<u16> {
        self.find(key.as_bytes())
    }

    fn find(&self, key: &[u8]) -> Option<u16> {
        self.keys
            .iter()
            .position(|k| &k[..] == key)
            .and_then(|i| u16::try_from(i).ok())
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Scans one OTLP `ExportTraceServiceRequest` and appends its spans to `out`.
///
/// # Errors
/// Any malformed field fails the whole payload and leaves `out` as it was: a message
/// is either read completely or sent to the dead-letter topic, never half-read.
pub fn scan(payload: &Bytes, keys: &AttrKeys, out: &mut Vec<Span>) -> Result<(), CodecError> {
    let before = out.len();
    let result = scan_request(payload, keys, out);
    if result.is_err() {
        out.truncate(before);
    }
    result
}

fn scan_request(payload: &Bytes, keys: &AttrKeys, out: &mut Vec<Span>) -> Result<(), CodecError> {
    let mut r = Reader::new(payload, 0);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        if field == 1 {
            r.expect(wt, LEN)?;
            let (start, body) = r.len_delimited()?;
            scan_resource_spans(payload, start, body, keys, out)?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

fn scan_resource_spans(
    payload: &Bytes,
    base: usize,
    body: &[u8],
    keys: &AttrKeys,
    out: &mut Vec<Span>,
) -> Result<(), CodecError> {
    // Pass 1: the resource and schema url may come after the scope spans on the wire.
    let mut resource = None;
    let mut schema_url = Bytes::new();
    let mut resource_attrs = Vec::new();
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                r.expect(wt, LEN)?;
                let (s, b) = r.len_delimited()?;
                resource = Some(payload.slice(base + s..base + s + b.len()));
                if !keys.is_empty() {
                    scan_resource_attrs(payload, base + s, b, keys, &mut resource_attrs)?;
                }
            }
            3 => {
                r.expect(wt, LEN)?;
                let (s, b) = r.len_delimited()?;
                schema_url = payload.slice(base + s..base + s + b.len());
            }
            _ => r.skip(wt)?,
        }
    }
    // Pass 2: the scope spans.
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        if field == 2 {
            r.expect(wt, LEN)?;
            let (s, b) = r.len_delimited()?;
            let frame = ScopeFrame {
                resource: resource.clone(),
                resource_schema_url: schema_url.clone(),
                scope: None,
                scope_schema_url: Bytes::new(),
                resource_attrs: resource_attrs.clone(),
            };
            scan_scope_spans(payload, base + s, b, frame, keys, out)?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

fn scan_resource_attrs(
    payload: &Bytes,
    base: usize,
    body: &[u8],
    keys: &AttrKeys,
    attrs: &mut Vec<Attr>,
) -> Result<(), CodecError> {
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        if field == 1 {
            r.expect(wt, LEN)?;
            let (s, b) = r.len_delimited()?;
            scan_key_value(payload, base + s, b, keys, attrs)?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

fn scan_scope_spans(
    payload: &Bytes,
    base: usize,
    body: &[u8],
    mut frame: ScopeFrame,
    keys: &AttrKeys,
    out: &mut Vec<Span>,
) -> Result<(), CodecError> {
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                r.expect(wt, LEN)?;
                let (s, b) = r.len_delimited()?;
                frame.scope = Some(payload.slice(base + s..base + s + b.len()));
            }
            3 => {
                r.expect(wt, LEN)?;
                let (s, b) = r.len_delimited()?;
                frame.scope_schema_url = payload.slice(base + s..base + s + b.len());
            }
            _ => r.skip(wt)?,
        }
    }
    let frame = Arc::new(frame);
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        if field == 2 {
            r.expect(wt, LEN)?;
            let (s, b) = r.len_delimited()?;
            out.push(scan_span(payload, base + s, b, &frame, keys)?);
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

fn scan_span(
    payload: &Bytes,
    base: usize,
    body: &[u8],
    frame: &Arc<ScopeFrame>,
    keys: &AttrKeys,
) -> Result<Span, CodecError> {
    let mut trace_id: Option<&[u8]> = None;
    let mut is_root = true;
    let mut start_ns = 0;
    let mut end_ns = 0;
    let mut status = StatusCode::Unset;
    let mut attrs = Vec::new();
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                r.expect(wt, LEN)?;
                trace_id = Some(r.len_delimited()?.1);
            }
            4 => {
                r.expect(wt, LEN)?;
                let parent = r.len_delimited()?.1;
                is_root = parent.iter().all(|&b| b == 0);
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
                r.expect(wt, LEN)?;
                let (s, b) = r.len_delimited()?;
                scan_key_value(payload, base + s, b, keys, &mut attrs)?;
            }
            15 => {
                r.expect(wt, LEN)?;
                let (s, b) = r.len_delimited()?;
                status = scan_status(b, base + s)?;
            }
            _ => r.skip(wt)?,
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
        attrs,
        raw: RawSpan {
            bytes: payload.slice(base..base + body.len()),
            frame: Arc::clone(frame),
        },
    })
}

fn scan_status(body: &[u8], base: usize) -> Result<StatusCode, CodecError> {
    let mut code = StatusCode::Unset;
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        if field == 3 && wt == VARINT {
            code = match r.varint()? {
                1 => StatusCode::Ok,
                2 => StatusCode::Error,
                _ => StatusCode::Unset,
            };
        } else {
            r.skip(wt)?;
        }
    }
    Ok(code)
}

fn scan_key_value(
    payload: &Bytes,
    base: usize,
    body: &[u8],
    keys: &AttrKeys,
    attrs: &mut Vec<Attr>,
) -> Result<(), CodecError> {
    let mut key: Option<&[u8]> = None;
    let mut value: Option<(usize, &[u8])> = None;
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                r.expect(wt, LEN)?;
                key = Some(r.len_delimited()?.1);
            }
            2 => {
                r.expect(wt, LEN)?;
                value = Some(r.len_delimited()?);
            }
            _ => r.skip(wt)?,
        }
    }
    let (Some(key), Some((vs, vb))) = (key, value) else {
        return Ok(());
    };
    let Some(idx) = keys.find(key) else {
        return Ok(());
    };
    if let Some(v) = scan_any_value(payload, base + vs, vb)? {
        attrs.push((idx, v));
    }
    Ok(())
}

fn scan_any_value(
    payload: &Bytes,
    base: usize,
    body: &[u8],
) -> Result<Option<AttrValue>, CodecError> {
    let mut out = None;
    let mut r = Reader::new(body, base);
    while !r.at_end() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, LEN) => {
                let (s, b) = r.len_delimited()?;
                out = Some(AttrValue::Str(payload.slice(base + s..base + s + b.len())));
            }
            (2, VARINT) => out = Some(AttrValue::Bool(r.varint()? != 0)),
            (3, VARINT) => out = Some(AttrValue::Int(r.varint()? as i64)),
            (4, FIXED64) => out = Some(AttrValue::Double(f64::from_bits(r.fixed64()?))),
            _ => r.skip(wt)?,
        }
    }
    Ok(out)
}
