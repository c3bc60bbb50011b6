//! Finding given traces' spans in input messages by trace id, without scanning the
//! messages that cannot hold them: a byte search for the raw ids first (OTLP
//! protobuf carries them raw; other encodings are converted first), then the
//! zero-copy scan of the messages that hold one. Promotion's re-reads and
//! `tailsift explain` / `promote` read input this way.

use bytes::Bytes;
use memchr::memmem;

use super::{
    scan_partial, AttrMatchers, FrameInterner, InputEncoding, Message, RejectedSpan, Span, TraceId,
};

/// Finds the spans of a few traces in messages.
pub struct TraceFinder {
    ids: Vec<TraceId>,
    needles: Vec<memmem::Finder<'static>>,
    keys: AttrMatchers,
    frames: FrameInterner,
    spans: Vec<Span>,
    rejected: Vec<RejectedSpan>,
}

impl TraceFinder {
    /// A finder for the traces `ids`.
    pub fn new(ids: &[TraceId]) -> Self {
        TraceFinder {
            ids: ids.to_vec(),
            needles: ids
                .iter()
                .map(|id| memmem::Finder::new(&id.0[..]).into_owned())
                .collect(),
            keys: AttrMatchers::default(),
            frames: FrameInterner::default(),
            spans: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// The spans of the sought traces in `payload`, an input message of `encoding`,
    /// with the message (as OTLP protobuf) they refer to; `None` when it holds none
    /// (or is not of its encoding: such input went to the dead-letter topic when it
    /// was first read).
    pub fn find(
        &mut self,
        payload: &[u8],
        encoding: InputEncoding,
    ) -> Option<(Message, Vec<Span>)> {
        let otlp = match encoding.to_otlp(payload) {
            Ok(Some(converted)) => Bytes::from(converted),
            Ok(None) if self.holds_an_id(payload) => Bytes::copy_from_slice(payload),
            Ok(None) | Err(_) => return None,
        };
        if !self.holds_an_id(&otlp) {
            return None;
        }
        self.spans.clear();
        self.rejected.clear();
        let message = scan_partial(
            &otlp,
            &self.keys,
            &mut self.frames,
            &mut self.spans,
            &mut self.rejected,
        )
        .ok()?;
        let ids = &self.ids;
        let mine: Vec<Span> = self
            .spans
            .drain(..)
            .filter(|s| ids.contains(&s.trace_id))
            .collect();
        (!mine.is_empty()).then_some((message, mine))
    }

    fn holds_an_id(&self, bytes: &[u8]) -> bool {
        self.needles.iter().any(|n| n.find(bytes).is_some())
    }
}
