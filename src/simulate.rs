//! `tailsift simulate`: the configured policies over recorded OTLP, offline.
//!
//! Reads files of OTLP `ExportTraceServiceRequest`s: protobuf, either one request per
//! file or records of a 4-byte big-endian length followed by that many bytes (the
//! format of the OTel SDK test data), or OTLP/JSON (a document, or one per line), groups their spans by trace, decides every trace
//! once with all its spans, and reports what would be kept: a way to try a policy set
//! on real traffic before deploying it. Rate and bytes limits see every trace at the
//! same instant, so they keep only their burst.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{json_to_protobuf, scan, FrameInterner, Span, TraceId};
use crate::config::Config;
use crate::decide::Decider;
use crate::policy::{PolicyError, PolicySet, TraceSummary};

/// What a simulation found.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests read.
    pub messages: usize,
    /// Requests that did not decode (they would go to the dead-letter topic).
    pub undecodable: usize,
    /// Traces seen.
    pub traces: usize,
    /// Spans seen.
    pub spans: u64,
    /// Encoded span bytes seen.
    pub bytes: u64,
    /// Traces kept.
    pub kept_traces: usize,
    /// Spans kept.
    pub kept_spans: u64,
    /// Encoded span bytes kept.
    pub kept_bytes: u64,
    /// Traces kept per deciding policy (the first that sampled), in config order.
    pub per_policy: Vec<(Arc<str>, usize)>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policies could not be built.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Per resource of a trace: (its encoded resource, earliest start, latest end).
type HostWindows = Vec<(Vec<u8>, u64, u64)>;

/// Runs `cfg`'s policies over the requests in `inputs`.
///
/// # Errors
/// [`SimulateError`] when a file cannot be read or the policies cannot be built.
pub fn run(cfg: &Config, inputs: &[PathBuf]) -> Result<Report, SimulateError> {
    let set = PolicySet::build(&cfg.policies)?;
    let keys = set.keys.clone();
    let decider = Decider::new(set, cfg.sample_on_first_match);
    let mut frames = FrameInterner::default();
    let mut traces: HashMap<TraceId, TraceSummary> = HashMap::new();
    let mut hosts: HashMap<TraceId, HostWindows> = HashMap::new();
    let mut report = Report::default();
    let mut spans: Vec<Span> = Vec::new();
    for path in inputs {
        for payload in requests(path)? {
            report.messages += 1;
            spans.clear();
            let Some(payload) = payload else {
                report.undecodable += 1;
                continue;
            };
            let Ok(message) = scan(&payload, &keys, &mut frames, &mut spans) else {
                report.undecodable += 1;
                continue;
            };
            for s in &spans {
                traces
                    .entry(s.trace_id)
                    .or_insert_with(|| TraceSummary::new(s.trace_id))
                    .add(s);
                // Per host (resource) windows, for traces without a root span, when a
                // latency policy reads them.
                if !decider.reads_duration() {
                    continue;
                }
                let resource = message.frame(s).resource().unwrap_or_default();
                let windows = hosts.entry(s.trace_id).or_default();
                match windows.iter_mut().find(|w| w.0 == resource) {
                    Some(w) => {
                        w.1 = w.1.min(s.start_ns);
                        w.2 = w.2.max(s.end_ns);
                    }
                    None => windows.push((resource.to_vec(), s.start_ns, s.end_ns)),
                }
            }
        }
    }
    for (id, t) in traces.iter_mut() {
        if t.one_clock_ns.is_none() {
            t.one_clock_ns = hosts
                .get(id)
                .and_then(|w| w.iter().map(|(_, a, b)| b.saturating_sub(*a)).max());
        }
    }
    let mut kept: HashMap<u16, usize> = HashMap::new();
    for t in traces.values() {
        report.traces += 1;
        report.spans += u64::from(t.span_count);
        report.bytes += t.span_bytes;
        if let Some(p) = decider.decide(t).policy() {
            report.kept_traces += 1;
            report.kept_spans += u64::from(t.span_count);
            report.kept_bytes += t.span_bytes;
            *kept.entry(p).or_default() += 1;
        }
    }
    let mut per_policy: Vec<(u16, usize)> = kept.into_iter().collect();
    per_policy.sort_unstable();
    report.per_policy = per_policy
        .into_iter()
        .map(|(p, n)| (decider.policy_name(p), n))
        .collect();
    Ok(report)
}

/// The requests in one file (`None` for one that is not OTLP): OTLP/JSON when it
/// starts with `{` (one document, or one per line as the Collector's file exporter
/// writes), length-prefixed protobuf records when it starts like them (a protobuf
/// request never starts with a zero byte), else one protobuf request.
fn requests(path: &Path) -> Result<Vec<Option<Bytes>>, SimulateError> {
    let data = std::fs::read(path).map_err(|source| SimulateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if data.trim_ascii_start().first() == Some(&b'{') {
        let text = String::from_utf8_lossy(&data);
        let one = |doc: &str| json_to_protobuf(doc).ok().map(Bytes::from);
        if let Some(whole) = one(&text) {
            return Ok(vec![Some(whole)]);
        }
        return Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(one)
            .collect());
    }
    let data = Bytes::from(data);
    if data.first() == Some(&0) {
        if let Some(records) = length_prefixed(&data) {
            return Ok(records.into_iter().map(Some).collect());
        }
    }
    Ok(vec![Some(data)])
}

/// Splits `data` into 4-byte big-endian length-prefixed records; `None` if it is not
/// exactly a sequence of them.
fn length_prefixed(data: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        let len = u32::from_be_bytes(len) as usize;
        let end = (at + 4).checked_add(len)?;
        if end > data.len() {
            return None;
        }
        out.push(data.slice(at + 4..end));
        at = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_records_split_exactly() {
        let data = Bytes::from_static(&[0, 0, 0, 2, 7, 7, 0, 0, 0, 0, 0, 0, 0, 1, 9]);
        let r = length_prefixed(&data).expect("records");
        assert_eq!(r, vec![&[7u8, 7][..], &[][..], &[9][..]]);
        assert!(length_prefixed(&Bytes::from_static(&[0, 0, 0, 5, 1])).is_none());
        assert!(length_prefixed(&Bytes::from_static(&[0, 0])).is_none());
    }
}
