//! Reads a topic from the beginning, as a user checking the output would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::TraceId;
use crate::sink::{HEADER_POLICY, HEADER_PROMOTED};

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition it was in.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its timestamp (CreateTime or LogAppendTime), in ms since the epoch, if any.
    pub timestamp: Option<i64>,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of a header, as UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// What the output says about one trace.
#[derive(Debug, Clone, Default)]
pub struct OutputTrace {
    /// Records carrying spans of the trace.
    pub records: usize,
    /// Spans over all its records.
    pub spans: usize,
    /// Distinct span ids (duplicates mean the trace was produced twice).
    pub distinct_spans: usize,
    /// The `tailsift.policy` header of its first record.
    pub policy: String,
    /// Records whose key was not the trace's hex id, or holding other traces' spans.
    pub misplaced: usize,
    /// The `tailsift.promoted` header of its first record that has one (empty: none).
    pub promoted: String,
}

/// Collects every record of a topic in a background task.
pub struct Collector {
    records: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts reading all `partitions` of `topic` from the beginning.
    ///
    /// # Errors
    /// When the consumer cannot be created.
    pub fn start(bootstrap: &str, topic: &str, partitions: i32) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("tailsift-collector-{topic}"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // A leader change can answer a fetch with "offset out of range"; the
            // default reset (latest) would then skip records. Start over instead and
            // drop what was read already (by partition and offset, below).
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        let task = tokio::spawn(async move {
            let mut read: std::collections::HashSet<(i32, i64)> = Default::default();
            loop {
                match consumer.recv().await {
                    Ok(m) if !read.insert((m.partition(), m.offset())) => {}
                    Ok(m) => {
                        let headers = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|x| {
                                        (
                                            x.key.to_string(),
                                            x.value.map(<[u8]>::to_vec).unwrap_or_default(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let r = Record {
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp: m.timestamp().to_millis(),
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                            headers,
                        };
                        if let Ok(mut v) = sink.lock() {
                            v.push(r);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Ok(Collector { records, task })
    }

    /// Records read so far.
    pub fn len(&self) -> usize {
        self.records.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the records read so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until no new record arrived for `quiet`, or `max` passed.
    pub async fn settle(&self, quiet: Duration, max: Duration) {
        let start = tokio::time::Instant::now();
        let mut last = self.len();
        let mut since = tokio::time::Instant::now();
        while start.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.len();
            if n != last {
                last = n;
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// The records decoded as OTLP and grouped by trace id.
    pub fn traces(&self) -> HashMap<TraceId, OutputTrace> {
        traces_of(&self.records())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OTLP request in protobuf or, if it starts like a JSON object, OTLP/JSON.
fn decode_request(payload: &[u8]) -> Option<ExportTraceServiceRequest> {
    if payload.first() == Some(&b'{') {
        let proto = crate::codec::InputEncoding::OtlpJson
            .to_otlp(payload)
            .ok()??;
        return ExportTraceServiceRequest::decode(&proto[..]).ok();
    }
    ExportTraceServiceRequest::decode(payload).ok()
}

/// Decodes OTLP records (protobuf, or OTLP/JSON) and groups their spans by trace id.
/// A record that is not valid OTLP counts as misplaced under the all-zero id.
pub fn traces_of(records: &[Record]) -> HashMap<TraceId, OutputTrace> {
    let mut out: HashMap<TraceId, OutputTrace> = HashMap::new();
    let mut span_ids: HashMap<TraceId, std::collections::HashSet<Vec<u8>>> = HashMap::new();
    for r in records {
        let Some(req) = decode_request(&r.payload) else {
            out.entry(TraceId([0; 16])).or_default().misplaced += 1;
            continue;
        };
        let key = r
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(TraceId::from_hex);
        let mut seen_here: Vec<TraceId> = Vec::new();
        for span in req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let mut id = [0u8; 16];
            if span.trace_id.len() == 16 {
                id.copy_from_slice(&span.trace_id);
            }
            let id = TraceId(id);
            let t = out.entry(id).or_default();
            t.spans += 1;
            span_ids.entry(id).or_default().insert(span.span_id.clone());
            if !seen_here.contains(&id) {
                seen_here.push(id);
                t.records += 1;
                if t.policy.is_empty() {
                    t.policy = r.header(HEADER_POLICY).unwrap_or_default();
                }
                if t.promoted.is_empty() {
                    t.promoted = r.header(HEADER_PROMOTED).unwrap_or_default();
                }
                if key != Some(id) {
                    t.misplaced += 1;
                }
            }
        }
    }
    for (id, ids) in span_ids {
        if let Some(t) = out.get_mut(&id) {
            t.distinct_spans = ids.len();
        }
    }
    out
}
