//! `trace_flags`: keeps traces that were head-sampled upstream.

use super::{Decision, Policy, TraceSummary};

/// Votes to keep traces where some span carries the W3C sampled flag (bit 0 of the
/// span's `flags`), as OTel's `trace_flags` policy: a head sampler upstream chose the
/// trace, so keep it whole.
#[derive(Debug)]
pub struct TraceFlags;

impl Policy for TraceFlags {
    fn evaluate(&self, t: &TraceSummary) -> Decision {
        Decision::sampled_if(t.sampled_flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{scan, FrameInterner};
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    /// The vote on one trace whose spans have the given `flags` values.
    fn vote(flags: &[u32]) -> Decision {
        let spans = flags
            .iter()
            .enumerate()
            .map(|(i, &flags)| Span {
                trace_id: vec![7; 16],
                span_id: vec![i as u8 + 1; 8],
                flags,
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let payload = Bytes::from(request.encode_to_vec());
        let mut out = Vec::new();
        scan(
            &payload,
            &Default::default(),
            &mut FrameInterner::default(),
            &mut out,
        )
        .expect("scans");
        let mut t = TraceSummary::new(out[0].trace_id);
        out.iter().for_each(|s| t.add(s));
        TraceFlags.evaluate(&t)
    }

    #[test]
    fn any_span_with_the_sampled_bit_keeps_the_trace() {
        assert_eq!(vote(&[0, 0]), Decision::NotSampled);
        // 0x100 is OTLP's "has remote parent known" bit, not the sampled flag.
        assert_eq!(vote(&[0x100, 0x300]), Decision::NotSampled);
        assert_eq!(vote(&[0, 0x101]), Decision::Sampled);
        assert_eq!(vote(&[1]), Decision::Sampled);
    }
}
