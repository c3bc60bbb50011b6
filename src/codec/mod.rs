//! Codec: turns Kafka message payloads into spans the buffer can group, and kept
//! traces back into payloads.
//!
//! The hot path never builds an object tree: [`scan`] walks the OTLP protobuf wire
//! format once, pulls out only what the buffer and the configured policies read (trace
//! id, parent, timestamps, status, the attributes some policy names) and hands on each
//! span's encoded bytes as a zero-copy slice of the input. Resource and scope framing
//! is copied out once and shared ([`FrameInterner`]), so a buffered span holds neither
//! its message nor a copy of its framing. [`encode_trace`] concatenates encoded spans
//! back into one `ExportTraceServiceRequest` per trace, under their original resource
//! and scope.

mod annotate;
mod attrs;
mod encode;
mod find;
mod formats;
mod frames;
mod jaeger;
mod json;
mod output;
mod scan;
mod validate;
mod wire;
mod zipkin;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use annotate::{
    merge_trace_state, probability_of, threshold, Annotated, Annotation, POLICY_ATTRIBUTE,
    PROBABILITY_ATTRIBUTE,
};
pub use attrs::{AttrMatchers, KeyField, Matcher, MAX_MATCHERS};
pub use encode::{encode_trace, EncodedSpan};
pub use find::TraceFinder;
pub use formats::{FormatError, InputEncoding};
pub use frames::FrameInterner;
pub use json::{json_to_protobuf, JsonError};
pub use output::OutputEncoding;
pub use scan::{rescan, scan, scan_partial, span_times, RejectedSpan};
pub use validate::{check_span, SpanDefect, MAX_DEPTH};

/// The FNV-1a (64-bit) offset basis: the hash of no bytes.
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64-bit) of `hash` followed by `bytes`: start from [`FNV1A_OFFSET`] and
/// feed several pieces in turn. The probabilistic policy's hash (the OTel
/// processor's), the dynamic policy's key hash and the policy fingerprint use it.
#[inline]
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A W3C / OTLP trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// Lower-case hex, the form used as the Kafka record key and in logs.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 0xf) as usize]));
        }
        s
    }

    /// Parses the 32-character hex form (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, chunk) in b.chunks_exact(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(TraceId(out))
    }

    /// A well-mixed 64-bit value of the id, used to pick a shard.
    pub fn shard_hash(&self) -> u64 {
        // Trace ids are random by spec (W3C level 2), but some SDKs fill the high half
        // with zeros or a timestamp, so mix both halves.
        let hi = u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default());
        let lo = u64::from_le_bytes(self.0[8..].try_into().unwrap_or_default());
        (hi ^ lo.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// OTLP span status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StatusCode {
    /// The default: the instrumentation did not set a status.
    #[default]
    Unset,
    /// Explicitly marked successful.
    Ok,
    /// The operation failed.
    Error,
}

/// The value of an attribute, as the scan hands it to a [`Matcher`]: borrowed from the
/// input, never stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// `string_value`.
    Str(&'a [u8]),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bool_value`.
    Bool(bool),
}

impl<'a> From<AttrValue<'a>> for crate::ottl::Value<'a> {
    fn from(v: AttrValue<'a>) -> Self {
        use crate::ottl::Value;
        match v {
            AttrValue::Str(s) => Value::Str(s),
            AttrValue::Int(i) => Value::Int(i),
            AttrValue::Double(d) => Value::Float(d),
            AttrValue::Bool(b) => Value::Bool(b),
        }
    }
}

/// Where a field lies in a payload: 8 bytes instead of a 32-byte `Bytes`, and no
/// reference count per scanned span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ByteRange {
    start: u32,
    len: u32,
}

impl ByteRange {
    /// `None` when the range does not fit in `u32` (payloads are checked to be
    /// smaller before scanning, so this does not happen).
    pub(crate) fn new(start: usize, len: usize) -> Option<Self> {
        Some(ByteRange {
            start: u32::try_from(start).ok()?,
            len: u32::try_from(len).ok()?,
        })
    }
}

/// The resource and instrumentation scope framing of a `ScopeSpans` block, kept
/// encoded so kept spans are re-emitted under it unchanged. Made by the
/// [`FrameInterner`] as a compact copy shared by every span sent under the same
/// framing.
#[derive(Debug, Default)]
pub struct ScopeFrame {
    payload: Bytes,
    resource: Option<ByteRange>,
    resource_schema_url: ByteRange,
    scope: Option<ByteRange>,
    scope_schema_url: ByteRange,
    /// Bits of the attribute predicates the resource's attributes satisfy (OTel looks
    /// at resource and span attributes).
    pub resource_hits: u64,
    /// Whether standard decoders accept the resource and scope: checked once, when
    /// the first kept span under the frame is.
    checked: std::sync::OnceLock<Result<(), SpanDefect>>,
}

impl ScopeFrame {
    /// A frame over `payload` with no resource and no scope (spans built by hand).
    pub fn new(payload: Bytes) -> Self {
        ScopeFrame {
            payload,
            ..ScopeFrame::default()
        }
    }

    pub(crate) fn with_ranges(
        payload: Bytes,
        resource: Option<ByteRange>,
        resource_schema_url: ByteRange,
        scope: Option<ByteRange>,
        scope_schema_url: ByteRange,
        resource_hits: u64,
    ) -> Self {
        ScopeFrame {
            payload,
            resource,
            resource_schema_url,
            scope,
            scope_schema_url,
            resource_hits,
            checked: std::sync::OnceLock::new(),
        }
    }

    /// `check(self)`, computed on the first call and remembered.
    pub(crate) fn checked(
        &self,
        check: impl FnOnce(&ScopeFrame) -> Result<(), SpanDefect>,
    ) -> Result<(), SpanDefect> {
        *self.checked.get_or_init(|| check(self))
    }

    fn get(&self, r: ByteRange) -> &[u8] {
        let start = r.start as usize;
        self.payload
            .get(start..start + r.len as usize)
            .unwrap_or_default()
    }

    /// Encoded `Resource` message body, `None` when the field was absent.
    pub fn resource(&self) -> Option<&[u8]> {
        self.resource.map(|r| self.get(r))
    }

    /// `ResourceSpans.schema_url`.
    pub fn resource_schema_url(&self) -> &[u8] {
        self.get(self.resource_schema_url)
    }

    /// Encoded `InstrumentationScope` body, `None` when absent.
    pub fn scope(&self) -> Option<&[u8]> {
        self.scope.map(|r| self.get(r))
    }

    /// `ScopeSpans.schema_url`.
    pub fn scope_schema_url(&self) -> &[u8] {
        self.get(self.scope_schema_url)
    }
    /// Whether two frames encode the same resource (so their spans can share one
    /// `ResourceSpans` in the output).
    pub fn same_resource(&self, other: &ScopeFrame) -> bool {
        std::ptr::eq(self, other)
            || (self.resource() == other.resource()
                && self.resource_schema_url() == other.resource_schema_url())
    }

    /// Whether two frames encode the same resource and scope.
    pub fn same_scope(&self, other: &ScopeFrame) -> bool {
        std::ptr::eq(self, other)
            || (self.same_resource(other)
                && self.scope() == other.scope()
                && self.scope_schema_url() == other.scope_schema_url())
    }
}

/// What the scan extracts from one span. Its encoded bytes and framing stay in its
/// [`Message`], which the span indexes (no reference count per span).
#[derive(Debug, Clone)]
pub struct Span {
    /// The trace this span belongs to.
    pub trace_id: TraceId,
    /// True when the span has no parent: the trace's root.
    pub is_root: bool,
    /// `start_time_unix_nano`.
    pub start_ns: u64,
    /// `end_time_unix_nano`.
    pub end_ns: u64,
    /// `status.code`.
    pub status: StatusCode,
    /// The W3C sampled flag (bit 0 of `flags`): the span was head-sampled upstream.
    pub sampled_flag: bool,
    /// Hash of the `dynamic` policy's key fields' values (0: no key configured).
    pub key_hash: u64,
    /// Bits of the attribute predicates the span's attributes or its resource's
    /// satisfy (OTel looks at both).
    pub hits: u64,
    /// Where its encoded body lies in the message payload.
    pub(crate) range: ByteRange,
    /// Index of its framing in the message's frames.
    pub(crate) frame: u32,
}

impl Span {
    /// A span of `trace_id` whose body is at `range` under frame `frame`, every
    /// scanned field at its default.
    pub(crate) fn bare(trace_id: TraceId, range: ByteRange, frame: u32) -> Span {
        Span {
            trace_id,
            is_root: false,
            start_ns: 0,
            end_ns: 0,
            status: StatusCode::Unset,
            sampled_flag: false,
            key_hash: 0,
            hits: 0,
            range,
            frame,
        }
    }

    /// Its encoded size.
    pub fn len(&self) -> usize {
        self.range.len as usize
    }

    /// Whether the encoded span is empty (every field at its default).
    pub fn is_empty(&self) -> bool {
        self.range.len == 0
    }
}

/// One scanned input message: its payload and the framings its spans were sent
/// under. Cloning shares both; the shards that get its spans each hold a clone until
/// they have copied their spans out.
#[derive(Debug, Clone)]
pub struct Message {
    payload: Bytes,
    frames: Arc<[Arc<ScopeFrame>]>,
}

impl Message {
    /// A message over `payload` whose spans use `frames` (for spans built by hand).
    pub fn new(payload: Bytes, frames: Vec<Arc<ScopeFrame>>) -> Self {
        Message {
            payload,
            frames: frames.into(),
        }
    }

    /// A span built by hand: `trace_id`, the body at `start..start + len` of the
    /// payload, sent under frame `frame`; other fields at their defaults. `None` if
    /// the range or frame is out of the message.
    pub fn span_at(&self, trace_id: TraceId, start: usize, len: usize, frame: u32) -> Option<Span> {
        (start.checked_add(len)? <= self.payload.len() && (frame as usize) < self.frames.len())
            .then_some(())?;
        Some(Span::bare(trace_id, ByteRange::new(start, len)?, frame))
    }

    /// Bytes of its payload.
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// The encoded body of `span`, one of this message's spans.
    pub fn bytes(&self, span: &Span) -> &[u8] {
        let start = span.range.start as usize;
        self.payload
            .get(start..start + span.range.len as usize)
            .unwrap_or_default()
    }

    /// The framing of `span`, one of this message's spans.
    pub fn frame(&self, span: &Span) -> &Arc<ScopeFrame> {
        // Scanned spans index frames of their own message; a span of another message
        // gets the first frame rather than a panic.
        self.frames
            .get(span.frame as usize)
            .or_else(|| self.frames.first())
            .unwrap_or(&EMPTY_FRAME)
    }

    /// `span` as the encoder takes it.
    pub fn span_ref(&self, span: &Span) -> SpanRef<'_> {
        SpanRef {
            frame: self.frame(span),
            bytes: self.bytes(span),
        }
    }
}

static EMPTY_FRAME: std::sync::LazyLock<Arc<ScopeFrame>> =
    std::sync::LazyLock::new(|| Arc::new(ScopeFrame::default()));

/// A span's encoded body and framing, borrowed: what [`encode_trace`] takes.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef<'a> {
    /// The resource and scope the span goes under.
    pub frame: &'a ScopeFrame,
    /// The encoded `Span` body.
    pub bytes: &'a [u8],
}

impl EncodedSpan for SpanRef<'_> {
    fn frame(&self) -> &ScopeFrame {
        self.frame
    }

    fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// Why a payload could not be read. Carried to the dead-letter topic as its reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The payload ends inside a field: a cut-off message.
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    /// The bytes are not valid protobuf for the expected message.
    #[error("invalid protobuf at byte {at}: {what}")]
    Invalid {
        /// Byte offset in the payload.
        at: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// The payload is larger than 4 GiB (Kafka's own limit is 2 GiB).
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
    /// A span's trace id is not 16 bytes or is all zero.
    #[error("span has an invalid trace id ({len} bytes)")]
    BadTraceId {
        /// Length of the trace id field.
        len: usize,
    },
}

impl CodecError {
    /// A short, bounded label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::Truncated(_) => "truncated",
            CodecError::Invalid { .. } => "invalid_protobuf",
            CodecError::BadTraceId { .. } => "bad_trace_id",
            CodecError::TooLarge(_) => "too_large",
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
