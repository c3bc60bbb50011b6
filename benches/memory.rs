//! Bytes of process memory per buffered span and per live trace, measured with a
//! counting allocator: what the buffer really allocates (span copies, shared framing,
//! book-keeping, vector slack), against the spans' encoded size.
//!
//! Two runs over the same input solve for the two unknowns: realistic traces (10-30
//! spans), and the same spans each as its own one-span trace.
//!
//! `cargo bench --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tailsift::budget::MemoryBudget;
use tailsift::buffer::{Shard, TraceLimits};
use tailsift::codec::{scan, AttrMatchers, FrameInterner, Matcher, Span, TraceId};
use tailsift::flow::Pin;
use tailsift::gen::{GenConfig, Generator};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

struct Held {
    spans: usize,
    traces: usize,
    encoded: usize,
    bytes: isize,
}

/// Buffers every message the way the source and a worker do, and returns what is
/// held once everything is in the shard.
fn buffer(messages: &[Vec<u8>], keys: &AttrMatchers, one_span_traces: bool) -> Held {
    let budget = MemoryBudget::new(u64::MAX / 2, 0.9, 0.8);
    let now = 1_700_000_000_000u64;
    let before = allocated();
    let mut shard = Shard::new(Duration::from_secs(3600), None, TraceLimits::default());
    let mut frames = FrameInterner::default();
    let (mut spans_n, mut encoded, mut next_id) = (0usize, 0usize, 0u64);
    for (offset, m) in messages.iter().enumerate() {
        // The source copies the payload out of librdkafka's buffer once.
        let payload: Bytes = budget.charged_bytes(m.clone());
        let mut spans: Vec<Span> = Vec::new();
        let msg = scan(&payload, keys, &mut frames, &mut spans).expect("valid");
        spans.sort_unstable_by_key(|s| s.trace_id);
        let pin = Pin {
            slot: 0,
            epoch: 1,
            offset: offset as i64,
            partition: 0,
        };
        spans_n += spans.len();
        encoded += spans.iter().map(Span::len).sum::<usize>();
        if one_span_traces {
            for s in spans {
                next_id += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&next_id.to_le_bytes());
                id[8..].copy_from_slice(&next_id.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
                shard.insert(TraceId(id), &msg, std::slice::from_ref(&s), pin, now);
            }
        } else {
            for group in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
                shard.insert(group[0].trace_id, &msg, group, pin, now);
            }
        }
    }
    let held = allocated() - before;
    let traces = shard.traces();
    drop(shard);
    drop(frames);
    Held {
        spans: spans_n,
        traces,
        encoded,
        bytes: held,
    }
}

fn main() {
    let mut g = Generator::new(GenConfig::default());
    let messages: Vec<Vec<u8>> = (0..5000)
        .flat_map(|_| g.next_trace(1_700_000_000_000_000_000).messages)
        .collect();
    let input: usize = messages.iter().map(Vec::len).sum();
    let mut keys = AttrMatchers::default();
    keys.add("http.status_code", Matcher::IntRange(500, 599));
    keys.add(
        "http.route",
        Matcher::Exact(vec![b"/api/checkout"[..].into()]),
    );
    let a = buffer(&messages, &keys, false);
    let b = buffer(&messages, &keys, true);
    // held - encoded = spans * per_span + traces * per_trace, for both runs.
    let (ya, yb) = (
        (a.bytes - a.encoded as isize) as f64,
        (b.bytes - b.encoded as isize) as f64,
    );
    let per_trace = (yb - ya) / (b.traces as f64 - a.traces as f64);
    let per_span = (ya - a.traces as f64 * per_trace) / a.spans as f64;
    println!(
        "memory per buffered span and trace ({} messages, {:.1} MiB of input):",
        messages.len(),
        input as f64 / 1048576.0
    );
    println!(
        "  traces of 10-30 spans: {} spans in {} traces, encoded {:.0} B/span, held {:.0} B/span",
        a.spans,
        a.traces,
        a.encoded as f64 / a.spans as f64,
        a.bytes as f64 / a.spans as f64
    );
    println!(
        "  one-span traces:       {} spans in {} traces, held {:.0} B/span",
        b.spans,
        b.traces,
        b.bytes as f64 / b.spans as f64
    );
    println!("  => per span: encoded size + {per_span:.0} B (input framing, slices, book-keeping, slack)");
    println!("  => per live trace: {per_trace:.0} B");
}
