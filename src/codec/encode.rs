//! Re-assembles a trace's encoded spans into OTLP `ExportTraceServiceRequest` payloads.

use super::wire::{len_field_size, put_len_field, put_len_header};
use super::ScopeFrame;

/// A span as the encoder needs it: its encoded `Span` body and the framing it was
/// sent under. Scanned spans and buffered spans both are.
pub trait EncodedSpan {
    /// The resource and scope the span goes under.
    fn frame(&self) -> &ScopeFrame;
    /// The encoded `Span` message body.
    fn bytes(&self) -> &[u8];
}

/// A borrowed span encodes as the span: a subset of a trace's spans can be encoded
/// without copying them.
impl<T: EncodedSpan + ?Sized> EncodedSpan for &T {
    fn frame(&self) -> &ScopeFrame {
        (**self).frame()
    }

    fn bytes(&self) -> &[u8] {
        (**self).bytes()
    }
}

/// Encodes `spans` as OTLP `ExportTraceServiceRequest` payloads of at most
/// `max_bytes` each: one payload unless the trace is larger than that.
///
/// Spans sent under the same resource and scope (compared by their encoded bytes,
/// across input messages) share one `ResourceSpans` / `ScopeSpans` block, so the output
/// is as compact as the input and every resource and scope is preserved as sent.
///
/// A span too large to fit in `max_bytes` with its framing goes alone in a payload of
/// its own (larger than `max_bytes`): the broker's own limit is usually higher, and
/// the sink dead-letters it if the broker refuses it. Nothing is silently dropped here.
pub fn encode_trace<S: EncodedSpan>(spans: &[S], max_bytes: usize) -> Vec<Vec<u8>> {
    let layout = Layout::new(spans);
    if layout.len() <= max_bytes {
        return vec![layout.write()];
    }
    // Split: every chunk repeats at most all of the trace's framing, so budget for it.
    let framing: usize = distinct_frames(spans)
        .iter()
        .map(|f| frame_overhead(f))
        .sum::<usize>()
        + 32;
    let budget = max_bytes.saturating_sub(framing);
    let mut payloads = Vec::new();
    let mut start = 0;
    let mut acc = 0;
    for (i, s) in spans.iter().enumerate() {
        let size = len_field_size(s.bytes().len());
        if acc + size > budget && i > start {
            payloads.push(encode_chunk(&spans[start..i]));
            start = i;
            acc = 0;
        }
        acc += size;
    }
    payloads.push(encode_chunk(&spans[start..]));
    payloads
}

fn encode_chunk<S: EncodedSpan>(spans: &[S]) -> Vec<u8> {
    Layout::new(spans).write()
}

/// Bytes of framing one scope adds around its spans: the resource and scope fields,
/// schema urls and the nested length prefixes.
fn frame_overhead(f: &ScopeFrame) -> usize {
    f.resource().map_or(0, |r| len_field_size(r.len()))
        + f.scope().map_or(0, |s| len_field_size(s.len()))
        + opt_len(f.resource_schema_url())
        + opt_len(f.scope_schema_url())
        + 24
}

fn opt_len(b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        len_field_size(b.len())
    }
}

fn distinct_frames<S: EncodedSpan>(spans: &[S]) -> Vec<&ScopeFrame> {
    let mut frames: Vec<&ScopeFrame> = Vec::new();
    for s in spans {
        let frame = s.frame();
        if !frames.iter().any(|f| f.same_scope(frame)) {
            frames.push(frame);
        }
    }
    frames
}

/// The trace's spans grouped as the output nests them: resource -> scope -> spans.
struct Layout<'a> {
    resources: Vec<ResourceGroup<'a>>,
}

struct ResourceGroup<'a> {
    frame: &'a ScopeFrame,
    scopes: Vec<ScopeGroup<'a>>,
    body_len: usize,
}

struct ScopeGroup<'a> {
    frame: &'a ScopeFrame,
    spans: Vec<&'a [u8]>,
    body_len: usize,
}

impl<'a> Layout<'a> {
    fn new<S: EncodedSpan>(spans: &'a [S]) -> Self {
        let mut resources: Vec<ResourceGroup<'a>> = Vec::new();
        for s in spans {
            let frame: &ScopeFrame = s.frame();
            let ri = match resources.iter().position(|r| r.frame.same_resource(frame)) {
                Some(i) => i,
                None => {
                    resources.push(ResourceGroup {
                        frame,
                        scopes: Vec::new(),
                        body_len: 0,
                    });
                    resources.len() - 1
                }
            };
            let scopes = &mut resources[ri].scopes;
            match scopes.iter_mut().find(|g| g.frame.same_scope(frame)) {
                Some(g) => g.spans.push(s.bytes()),
                None => scopes.push(ScopeGroup {
                    frame,
                    spans: vec![s.bytes()],
                    body_len: 0,
                }),
            }
        }
        for r in &mut resources {
            for g in &mut r.scopes {
                g.body_len = g.frame.scope().map_or(0, |s| len_field_size(s.len()))
                    + g.spans
                        .iter()
                        .map(|s| len_field_size(s.len()))
                        .sum::<usize>()
                    + opt_len(g.frame.scope_schema_url());
            }
            r.body_len = r.frame.resource().map_or(0, |x| len_field_size(x.len()))
                + r.scopes
                    .iter()
                    .map(|g| len_field_size(g.body_len))
                    .sum::<usize>()
                + opt_len(r.frame.resource_schema_url());
        }
        Layout { resources }
    }

    fn len(&self) -> usize {
        self.resources
            .iter()
            .map(|r| len_field_size(r.body_len))
            .sum()
    }
}

impl Layout<'_> {
    fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_into(&mut out);
        out
    }

    fn write_into(&self, out: &mut Vec<u8>) {
        for r in &self.resources {
            // ExportTraceServiceRequest.resource_spans = 1
            put_len_header(out, 1, r.body_len);
            if let Some(res) = r.frame.resource() {
                put_len_field(out, 1, res); // ResourceSpans.resource = 1
            }
            for g in &r.scopes {
                put_len_header(out, 2, g.body_len); // ResourceSpans.scope_spans = 2
                if let Some(scope) = g.frame.scope() {
                    put_len_field(out, 1, scope); // ScopeSpans.scope = 1
                }
                for span in &g.spans {
                    put_len_field(out, 2, span); // ScopeSpans.spans = 2
                }
                if !g.frame.scope_schema_url().is_empty() {
                    put_len_field(out, 3, g.frame.scope_schema_url()); // ScopeSpans.schema_url = 3
                }
            }
            if !r.frame.resource_schema_url().is_empty() {
                put_len_field(out, 3, r.frame.resource_schema_url()); // ResourceSpans.schema_url = 3
            }
        }
    }
}
