//! Shared resource and scope framing.
//!
//! Every `ScopeSpans` block of every input message repeats its resource (often
//! hundreds of bytes of attributes) and scope. Keeping them as slices of the input would
//! keep whole messages alive for a few spans; copying them per block would cost as
//! much again. The interner copies each distinct framing once and hands out shared
//! references to it.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Arc;

use bytes::Bytes;

use super::{ByteRange, ScopeFrame};

/// Frames remembered before the interner forgets those no span uses any more.
const SWEEP_AT: usize = 4096;

/// The encoded parts of one framing, borrowed from the input.
#[derive(Clone, Copy)]
pub(super) struct FrameParts<'a> {
    pub(super) resource: Option<&'a [u8]>,
    pub(super) resource_schema_url: &'a [u8],
    pub(super) scope: Option<&'a [u8]>,
    pub(super) scope_schema_url: &'a [u8],
    pub(super) resource_hits: u64,
}

impl FrameParts<'_> {
    fn matches(&self, f: &ScopeFrame) -> bool {
        self.resource_hits == f.resource_hits
            && self.resource == f.resource()
            && self.scope == f.scope()
            && self.resource_schema_url == f.resource_schema_url()
            && self.scope_schema_url == f.scope_schema_url()
    }

    /// The four parts hashed as one byte string (copied together when they are
    /// short, as they nearly always are), with each part's length mixed in so parts
    /// cannot trade bytes. Hashing them one by one folded the lanes four times: for
    /// parts of tens of bytes, most of the cost.
    fn hash(&self) -> u64 {
        const JOINED: usize = 512;
        let parts = [
            self.resource.unwrap_or_default(),
            self.resource_schema_url,
            self.scope.unwrap_or_default(),
            self.scope_schema_url,
        ];
        let lengths = parts
            .iter()
            .fold(0x243F_6A88_85A3_08D3u64 ^ self.resource_hits, |h, p| {
                mix(h, p.len() as u64)
            });
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > JOINED {
            return parts.iter().fold(lengths, |h, p| mix(h, hash_bytes(p)));
        }
        let mut joined = [0u8; JOINED];
        let mut at = 0;
        for p in parts {
            joined[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        mix(lengths, hash_bytes(&joined[..total]))
    }
}

/// Hashes `bytes` (a resource is often hundreds of them) in four independent lanes of
/// eight bytes, so the multiplications overlap instead of waiting on each other.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut lanes = [
        0x243F_6A88_85A3_08D3u64 ^ bytes.len() as u64,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
        0x082E_FA98_EC4E_6C89,
    ];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(8)) {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            *lane = mix(*lane, u64::from_le_bytes(v));
        }
    }
    let rest = blocks.remainder();
    let mut words = rest.chunks(8);
    for lane in &mut lanes {
        let Some(w) = words.next() else { break };
        let mut v = [0u8; 8];
        v[..w.len()].copy_from_slice(w);
        *lane = mix(*lane, u64::from_le_bytes(v));
    }
    lanes.iter().fold(0, |h, &l| mix(h, l))
}

fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Allocates a frame's bytes; the pipeline charges them to the memory budget.
type Alloc = Box<dyn Fn(Vec<u8>) -> Bytes + Send + Sync>;

/// Hands out one shared, compact [`ScopeFrame`] per distinct framing. One per
/// scanner: no lock, and a framing seen by two scanners is stored twice at most.
pub struct FrameInterner {
    frames: HashMap<u64, Arc<ScopeFrame>>,
    sweep_at: usize,
    alloc: Alloc,
}

impl Default for FrameInterner {
    fn default() -> Self {
        FrameInterner::new(Bytes::from)
    }
}

impl FrameInterner {
    /// Bytes a frame costs besides its encoded framing: the struct in its `Arc` and
    /// the owner of its bytes.
    pub const FRAME_OVERHEAD: u64 = (size_of::<ScopeFrame>() + 16 + 64) as u64;

    /// An interner whose frames' bytes come from `alloc` (e.g. charged to a budget).
    pub fn new(alloc: impl Fn(Vec<u8>) -> Bytes + Send + Sync + 'static) -> Self {
        FrameInterner {
            frames: HashMap::new(),
            sweep_at: SWEEP_AT,
            alloc: Box::new(alloc),
        }
    }

    /// Frames currently remembered.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is remembered.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub(super) fn intern(&mut self, parts: FrameParts<'_>) -> Arc<ScopeFrame> {
        let h = parts.hash();
        if let Some(f) = self.frames.get(&h) {
            if parts.matches(f) {
                return Arc::clone(f);
            }
        }
        if self.frames.len() >= self.sweep_at {
            // Forget frames only the interner still holds; sweep again once the live
            // ones have doubled, so a flood of distinct framings stays linear.
            self.frames.retain(|_, f| Arc::strong_count(f) > 1);
            self.sweep_at = (self.frames.len() * 2).max(SWEEP_AT);
        }
        let frame = Arc::new(self.copy(parts));
        self.frames.insert(h, Arc::clone(&frame));
        frame
    }

    fn copy(&self, p: FrameParts<'_>) -> ScopeFrame {
        let len = p.resource.map_or(0, <[u8]>::len)
            + p.resource_schema_url.len()
            + p.scope.map_or(0, <[u8]>::len)
            + p.scope_schema_url.len();
        let mut data = Vec::with_capacity(len);
        let mut put = |part: &[u8]| {
            let r = ByteRange::new(data.len(), part.len()).unwrap_or_default();
            data.extend_from_slice(part);
            r
        };
        let resource = p.resource.map(&mut put);
        let resource_schema_url = put(p.resource_schema_url);
        let scope = p.scope.map(&mut put);
        let scope_schema_url = put(p.scope_schema_url);
        ScopeFrame::with_ranges(
            (self.alloc)(data),
            resource,
            resource_schema_url,
            scope,
            scope_schema_url,
            p.resource_hits,
        )
    }
}

impl std::fmt::Debug for FrameInterner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameInterner")
            .field("frames", &self.frames.len())
            .finish()
    }
}
