//! `tailsift simulate`: the configured policies over recorded OTLP, offline.
//!
//! Reads files of OTLP `ExportTraceServiceRequest`s: protobuf, either one request per
//! file or records of a 4-byte big-endian length followed by that many bytes (the
//! format of the OTel SDK test data), or OTLP/JSON (a document, or one per line),
//! groups their spans by trace in a buffer shard, decides every trace once with all
//! its spans, through the same buffer and decider code as `run`
//! ([`Decider::decide_entry`]), and reports what would be kept: a way to try a policy
//! set on real traffic before deploying it. Rate and bytes limits see every trace at
//! the same instant, so they keep only their burst. The spans are held in memory
//! until the end, as the files are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::buffer::{Shard, TraceLimits};
use crate::codec::{json_to_protobuf, scan, FrameInterner, Span};
use crate::config::Config;
use crate::decide::Decider;
use crate::flow::Pin;
use crate::policy::{PolicyError, PolicySet};

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
    /// No span was found: nothing to simulate (the input is not OTLP, say).
    #[error("no span found in {messages} requests ({undecodable} not decodable as OTLP protobuf, length-prefixed protobuf or OTLP/JSON): nothing to simulate")]
    NoSpans {
        /// Requests read.
        messages: usize,
        /// Of which undecodable.
        undecodable: usize,
    },
}

/// Runs `cfg`'s policies over the requests in `inputs`.
///
/// # Errors
/// [`SimulateError`] when a file cannot be read, the policies cannot be built, or no
/// span is found.
pub fn run(cfg: &Config, inputs: &[PathBuf]) -> Result<Report, SimulateError> {
    let set = PolicySet::build(&cfg.policies)?;
    let keys = set.keys.clone();
    let decider = Decider::new(set, cfg.sample_on_first_match);
    let mut frames = FrameInterner::default();
    // Every trace stays until the end: nothing is due before all input is read.
    let mut shard = Shard::new(Duration::from_secs(3600), None, TraceLimits::default());
    let mut report = Report::default();
    let mut spans: Vec<Span> = Vec::new();
    let mut offset = 0i64;
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
            // As the scanner hands them to a shard: each trace's spans of the message
            // together, with the message's pin.
            spans.sort_by_key(|s| s.trace_id);
            let pin = Pin {
                slot: 0,
                epoch: 0,
                offset,
                partition: 0,
            };
            offset += 1;
            for run in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
                shard.insert(run[0].trace_id, &message, run, pin, 0);
            }
        }
    }
    let mut entries = Vec::with_capacity(shard.traces());
    shard.take_due(|_| Some(u64::MAX), &mut entries);
    let mut kept: HashMap<u16, usize> = HashMap::new();
    for mut entry in entries {
        let verdict = decider.decide_entry(&mut entry);
        let t = &entry.summary;
        report.traces += 1;
        report.spans += u64::from(t.span_count);
        report.bytes += u64::from(t.span_bytes);
        if let Some(p) = verdict.policy() {
            report.kept_traces += 1;
            report.kept_spans += u64::from(t.span_count);
            report.kept_bytes += u64::from(t.span_bytes);
            *kept.entry(p).or_default() += 1;
        }
    }
    if report.traces == 0 {
        return Err(SimulateError::NoSpans {
            messages: report.messages,
            undecodable: report.undecodable,
        });
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

    #[test]
    fn input_without_spans_is_an_error_not_a_100_percent_reduction() {
        let dir = std::env::temp_dir().join(format!("tailsift-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.bin");
        std::fs::write(&junk, b"\xff\xff\xff not a protobuf").expect("write");
        let cfg = Config::from_yaml(
            "kafka: {brokers: b, input_topics: [i], output_topic: o}\npolicies:\n  - {name: all, type: always_sample}\n",
        )
        .expect("valid");
        let e = run(&cfg, &[junk])
            .expect_err("nothing to simulate")
            .to_string();
        assert!(
            e.contains("no span found in 1 requests (1 not decodable"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
