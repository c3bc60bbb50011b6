//! Re-reads: the earlier pieces of dropped traces that late spans promoted, read
//! again from their input partition by offset (the shard workers ask, through
//! [`Reread`]).
//!
//! Never a replay into the buffer: each re-read is a bounded fetch of one
//! partition's range, from the first to the last message holding spans of the
//! traces asked for, filtered by trace id (a byte search for the ids, then the
//! zero-copy scan of the messages that hold one). Requests for one partition that
//! queue while the readers are busy are served by one pass over the union of their
//! ranges: after a leader election, the traces promoted together lie together.
//! Each pass has a client of its own. Bounded in concurrency, in bytes per second over all readers, and in bytes per
//! range; the spans found are charged to the memory budget until their trace is
//! encoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::counter;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tracing::warn;

use crate::budget::{Charge, MemoryBudget};
use crate::codec::{InputEncoding, Message, Span, TraceFinder, TraceId};
use crate::config::{KafkaConfig, PromotionConfig};
use crate::flow::{Found, Incomplete, Reread};
use crate::telemetry::{names, LogLimiter};

/// How long one re-read may take before what it found goes out, incomplete.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves [`Reread`] requests until every requester is gone.
pub(crate) struct Rereader {
    rx: mpsc::UnboundedReceiver<Reread>,
    client: ClientConfig,
    encodings: Arc<KafkaConfig>,
    budget: MemoryBudget,
    concurrency: usize,
    pace: Arc<Pace>,
    max_range: u64,
}

impl Rereader {
    /// A re-reader with the input consumer's client properties `consumer` (brokers,
    /// security, isolation level) under a group id it never joins.
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Reread>,
        consumer: &ClientConfig,
        kafka: &KafkaConfig,
        cfg: &PromotionConfig,
        budget: MemoryBudget,
        queue_bytes: u64,
    ) -> Self {
        let mut client = consumer.clone();
        client.remove("group.instance.id");
        client
            .set("group.id", format!("{}.reread", kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .remove("statistics.interval.ms");
        // Its prefetch lies outside the budget: a small share of the consumer's.
        let queue = (queue_bytes / 4).max(1 << 20);
        client
            .set("queued.max.messages.kbytes", (queue / 1024).to_string())
            .set("fetch.max.bytes", queue.max(1_000_000).to_string());
        Rereader {
            rx,
            client,
            encodings: Arc::new(kafka.clone()),
            budget,
            concurrency: cfg.max_concurrent_rereads.max(1),
            pace: Arc::new(Pace::new(cfg.max_reread_bytes_per_second.0)),
            max_range: cfg.max_range_bytes.0,
        }
    }

    /// Serves requests: each free reader takes every request queued and reads one
    /// partition's range for those of that partition.
    pub(crate) async fn run(mut self) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut queued: Vec<Reread> = Vec::new();
        loop {
            if queued.is_empty() {
                match self.rx.recv().await {
                    Some(r) => queued.push(r),
                    None => break,
                }
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            while let Ok(r) = self.rx.try_recv() {
                queued.push(r);
            }
            // The partition of the oldest request, and every request for it.
            let (topic, partition) = (
                Arc::clone(&queued[0].pieces.topic),
                queued[0].pieces.partition,
            );
            let (group, rest): (Vec<Reread>, Vec<Reread>) = queued
                .drain(..)
                .partition(|r| r.pieces.partition == partition && r.pieces.topic == topic);
            queued = rest;
            let job = Job {
                encoding: self.encodings.encoding_of(&topic),
                topic,
                partition,
                requests: group,
                pace: Arc::clone(&self.pace),
                max_range: self.max_range,
                budget: self.budget.clone(),
            };
            let client = self.client.clone();
            tokio::task::spawn_blocking(move || {
                // A client of its own for each pass: a reused one hands out what it
                // prefetched for its previous range, of the same partition too, and
                // a record past this range ends the pass before it read anything
                // (a promoted trace went out with its late spans only).
                match client.create::<BaseConsumer>() {
                    Ok(consumer) => job.run(&consumer),
                    Err(e) => job.fail(&format!("cannot create the re-read client: {e}")),
                }
                drop(permit);
            });
        }
    }
}

/// The value behind `m`, also if a reader panicked holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes per second over all readers: each read reserves its bytes' time ahead.
#[derive(Debug)]
struct Pace {
    per_second: u64,
    next_free: Mutex<Instant>,
}

impl Pace {
    fn new(per_second: u64) -> Self {
        Pace {
            per_second: per_second.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits (blocking) until `bytes` more fit the rate.
    fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.per_second as f64);
        let wait = {
            let mut next = lock(&self.next_free);
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// One pass over a partition's range for the requests of that partition.
struct Job {
    topic: Arc<str>,
    partition: i32,
    encoding: InputEncoding,
    requests: Vec<Reread>,
    pace: Arc<Pace>,
    max_range: u64,
    budget: MemoryBudget,
}

/// What one pass found for one trace.
#[derive(Default)]
struct Gathered {
    found: Vec<(i64, Message, Vec<Span>)>,
    bytes: u64,
}

impl Job {
    /// Answers every request with nothing found, saying why.
    fn fail(self, why: &str) {
        for r in self.requests {
            let _ = r.reply.send(Found {
                trace_id: r.trace_id,
                found: Vec::new(),
                incomplete: Some(Incomplete {
                    reason: "unreadable",
                    detail: why.to_string(),
                }),
                charge: Charge::new(&self.budget, 0),
            });
        }
    }

    fn run(self, consumer: &BaseConsumer) {
        let from = self
            .requests
            .iter()
            .map(|r| r.pieces.first)
            .min()
            .unwrap_or(0);
        let to = self
            .requests
            .iter()
            .map(|r| r.pieces.last)
            .max()
            .unwrap_or(0);
        let (low, high) =
            match consumer.fetch_watermarks(&self.topic, self.partition, Duration::from_secs(10)) {
                Ok(w) => w,
                Err(e) => return self.fail(&format!("cannot read the partition's offsets: {e}")),
            };
        let start = from.max(low);
        let end = (to + 1).min(high);
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl
            .add_partition_offset(&self.topic, self.partition, Offset::Offset(start))
            .and_then(|()| consumer.assign(&tpl))
        {
            return self.fail(&format!("cannot read the partition: {e}"));
        }
        let ids: Vec<TraceId> = self.requests.iter().map(|r| r.trace_id).collect();
        let mut finder = TraceFinder::new(&ids);
        let mut gathered: HashMap<TraceId, Gathered> = HashMap::new();
        let (mut next, mut read) = (start, 0u64);
        let began = Instant::now();
        let mut error = None;
        while next < end && read < self.max_range && began.elapsed() < READ_TIMEOUT {
            let m = match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    error = Some(e.to_string());
                    continue;
                }
                None => {
                    // Transaction markers and compaction leave offsets without a
                    // record: done once the position passed the end.
                    if let Ok(pos) = consumer.position() {
                        if let Some(Offset::Offset(o)) = pos
                            .find_partition(&self.topic, self.partition)
                            .map(|e| e.offset())
                        {
                            next = next.max(o);
                        }
                    }
                    continue;
                }
            };
            // A leader change can make the client fetch some offsets again: only
            // this partition's records, each offset once, in order.
            if m.topic() != &*self.topic || m.partition() != self.partition || m.offset() < next {
                continue;
            }
            next = m.offset() + 1;
            let Some(payload) = m.payload() else {
                continue;
            };
            read += payload.len() as u64;
            self.pace.take(payload.len() as u64);
            counter!(names::PROMOTION_REREAD_BYTES).increment(payload.len() as u64);
            let Some((message, spans)) = finder.find(payload, self.encoding) else {
                continue;
            };
            let bytes = message.payload_len() as u64;
            for group in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
                let g = gathered.entry(group[0].trace_id).or_default();
                g.bytes += bytes;
                match g.found.last_mut() {
                    Some((offset, _, mine)) if *offset == m.offset() => {
                        mine.extend_from_slice(group)
                    }
                    _ => g.found.push((m.offset(), message.clone(), group.to_vec())),
                }
            }
        }
        for r in self.requests {
            let incomplete = if low > r.pieces.first {
                Some(Incomplete {
                    reason: "retention",
                    detail: format!(
                        "input offsets {}..{} of {}[{}] were deleted by retention",
                        r.pieces.first, low, self.topic, self.partition
                    ),
                })
            } else if next <= r.pieces.last.min(end - 1) {
                let (reason, why) = if read >= self.max_range {
                    (
                        "too_large",
                        format!(
                            "the range exceeds promotion.max_range_bytes ({})",
                            self.max_range
                        ),
                    )
                } else {
                    (
                        "unreadable",
                        error
                            .clone()
                            .unwrap_or_else(|| "the broker did not serve it in time".into()),
                    )
                };
                Some(Incomplete {
                    reason,
                    detail: format!(
                        "input offsets {}..={} of {}[{}] read only up to {}: {why}",
                        r.pieces.first, r.pieces.last, self.topic, self.partition, next
                    ),
                })
            } else {
                None
            };
            if let Some(i) = &incomplete {
                static LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
                if let Some(suppressed) = LOG.allow() {
                    warn!(message = "A promoted trace's earlier spans could not all be read again; it goes out with what was found.", trace_id = %r.trace_id, detail = %i.detail, suppressed_since_last = suppressed);
                }
            }
            let g = gathered.remove(&r.trace_id).unwrap_or_default();
            let _ = r.reply.send(Found {
                trace_id: r.trace_id,
                found: g.found,
                incomplete,
                charge: Charge::new(&self.budget, g.bytes),
            });
        }
    }
}
