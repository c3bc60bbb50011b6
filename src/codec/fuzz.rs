//! Property tests of the decoder against arbitrary and mutated input: no input makes
//! it panic, and whatever prost (a full decoder) accepts, the scan accepts and
//! re-encodes without losing or changing a span.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use proptest::prelude::*;
use prost::Message as _;

use super::*;
use crate::gen::{GenConfig, Generator};

/// One generated trace's messages, concatenated: a valid request of ~20 spans.
fn valid_payload(seed: u64) -> Vec<u8> {
    let mut g = Generator::new(GenConfig {
        seed,
        ..GenConfig::default()
    });
    g.next_trace(1_700_000_000_000_000_000).messages.concat()
}

/// The predicates of the hot-path bench: an int range and an exact string.
pub(super) fn keys() -> AttrMatchers {
    let mut k = AttrMatchers::default();
    k.add("http.status_code", Matcher::IntRange(500, 599));
    k.add(
        "http.route",
        Matcher::Exact(vec![b"/api/checkout"[..].into()]),
    );
    k
}

/// An edit of a payload.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Mostly single-byte changes, which often leave a request prost still accepts
    // (a changed length, field number, wire type or value), so the agreement with
    // prost below is exercised, not only the absence of panics.
    prop_oneof![
        6 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut p: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if p.is_empty() {
            break;
        }
        match *e {
            Edit::Set(i, b) => {
                let i = i % p.len();
                p[i] = b;
            }
            Edit::Insert(i, b) => p.insert(i % (p.len() + 1), b),
            Edit::Delete(i) => {
                p.remove(i % p.len());
            }
            Edit::Truncate(i) => p.truncate(i % p.len()),
        }
    }
    p
}

/// Scans `payload`; on success checks every span points inside it.
fn scan_checked(payload: &Bytes) -> Option<(Message, Vec<Span>)> {
    let mut spans = Vec::new();
    let mut frames = FrameInterner::default();
    match scan(payload, &keys(), &mut frames, &mut spans) {
        Ok(m) => {
            for s in &spans {
                assert_eq!(m.bytes(s).len(), s.len(), "span range inside the payload");
                assert!((s.frame as usize) < m.frames.len(), "frame index in range");
            }
            Some((m, spans))
        }
        Err(_) => {
            assert!(spans.is_empty(), "a failed scan adds no span");
            None
        }
    }
}

/// Every span of a decoded request, re-encoded by prost, sorted.
fn spans_of(r: &ExportTraceServiceRequest) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = r
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.encode_to_vec())
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        scan_checked(&Bytes::from(bytes));
    }

    #[test]
    fn mutated_requests_never_panic_and_agree_with_prost(
        seed in 0u64..1000,
        edits in proptest::collection::vec(edit(), 1..3),
    ) {
        let payload = Bytes::from(apply(valid_payload(seed), &edits));
        let scanned = scan_checked(&payload);
        let Ok(decoded) = ExportTraceServiceRequest::decode(&payload[..]) else {
            return Ok(()); // invalid for prost too: only "no panic" is asked
        };
        let all_ids_valid = decoded
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .all(|s| s.trace_id.len() == 16 && s.trace_id.iter().any(|&b| b != 0));
        if !all_ids_valid {
            return Ok(()); // the scan refuses those on purpose (dead letter)
        }
        let (msg, spans) = scanned.expect("prost accepts it, so must the scan");
        let refs: Vec<SpanRef> = spans.iter().map(|s| msg.span_ref(s)).collect();
        let out = encode_trace(&refs, usize::MAX);
        let mut got = Vec::new();
        for p in &out {
            let r = ExportTraceServiceRequest::decode(&p[..]).expect("re-encoded output is valid OTLP");
            got.extend(spans_of(&r));
        }
        got.sort();
        prop_assert_eq!(got, spans_of(&decoded), "every span out as it came in");
    }

    #[test]
    fn spans_that_pass_the_check_always_encode_to_what_prost_decodes(
        seed in 0u64..1000,
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let payload = Bytes::from(apply(valid_payload(seed), &edits));
        let Some((msg, spans)) = scan_checked(&payload) else {
            return Ok(());
        };
        let passed: Vec<SpanRef> = spans
            .iter()
            .map(|s| msg.span_ref(s))
            .filter(|r| check_span(r).is_ok())
            .collect();
        for p in encode_trace(&passed, usize::MAX) {
            prop_assert!(
                ExportTraceServiceRequest::decode(&p[..]).is_ok(),
                "a checked span made an output record prost refuses"
            );
        }
    }
}
