//! Produces generated traces to a Kafka topic at a steady rate.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Generator, Truth};
use crate::clock::now_ns;

/// Options of [`feed`].
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Traces to send.
    pub traces: usize,
    /// Traces per second; 0: as fast as possible.
    pub rate: u64,
    /// librdkafka `compression.codec` of the input.
    pub compression: String,
    /// 0: one message per service per trace, keyed by its hex trace id (what the OTel
    /// Collector's kafka exporter sends with `partition_traces_by_id`). N > 0: the
    /// messages of many traces bound for the same partition are packed into one
    /// message of at least N spans, as a batching pipeline in front of Kafka sends;
    /// a trace still stays on one partition.
    pub batch_spans: usize,
}

/// Messages of many traces waiting to be sent to one partition.
#[derive(Default)]
struct Batch {
    payload: Vec<u8>,
    spans: usize,
}

/// Running totals, reported to the `progress` callback about every second.
#[derive(Debug, Clone, Default)]
pub struct FeedStats {
    /// Traces sent.
    pub traces: usize,
    /// Spans sent.
    pub spans: usize,
    /// Messages sent.
    pub messages: usize,
    /// Payload bytes sent.
    pub bytes: usize,
}

/// A producer suitable for feeding input: idempotent, as a well-configured span
/// exporter is (franz-go's default), so a retry after a leader change neither
/// duplicates nor reorders a partition's messages.
///
/// # Errors
/// When librdkafka refuses the settings.
pub fn producer(bootstrap: &str, compression: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.codec", compression)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536")
        // Batches as large as the Collector's batch processor sends (8192 spans,
        // ~4 MB) are the broker's to refuse, not the client's 1 MB default.
        .set("message.max.bytes", "33554432")
        .create()
}

/// Sends `opts.traces` traces from `generator` to `topic`, each message keyed by its
/// hex trace id, and returns their ground truth.
///
/// # Errors
/// When the producer fails for good.
pub async fn feed(
    bootstrap: &str,
    topic: &str,
    generator: &mut Generator,
    opts: &FeedOptions,
    mut progress: impl FnMut(&FeedStats),
) -> Result<(Vec<Truth>, FeedStats), KafkaError> {
    let producer = producer(bootstrap, &opts.compression)?;
    let partitions = if opts.batch_spans > 0 {
        partition_count(&producer, topic).await?
    } else {
        0
    };
    let mut batches: Vec<Batch> = (0..partitions).map(|_| Batch::default()).collect();
    let mut stats = FeedStats::default();
    let mut truths = Vec::with_capacity(opts.traces);
    let start = tokio::time::Instant::now();
    let mut last_report = start;
    for i in 0..opts.traces {
        if opts.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / opts.rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let t = generator.next_trace(now_ns());
        if partitions > 0 {
            let p = (t.truth.trace_id.shard_hash() % partitions as u64) as i32;
            let b = &mut batches[p as usize];
            // Concatenated protobuf messages merge: their resource_spans append.
            for m in &t.messages {
                b.payload.extend_from_slice(m);
            }
            b.spans += t.truth.spans;
            if b.spans >= opts.batch_spans {
                send_batch(&producer, topic, p, b, &mut stats).await?;
            }
        } else {
            let key = t.truth.trace_id.to_hex();
            for m in &t.messages {
                send(&producer, topic, key.as_bytes(), m).await?;
                stats.messages += 1;
                stats.bytes += m.len();
            }
        }
        stats.traces += 1;
        stats.spans += t.truth.spans;
        truths.push(t.truth);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = tokio::time::Instant::now();
            progress(&stats);
        }
    }
    for (p, b) in batches.iter_mut().enumerate() {
        send_batch(&producer, topic, p as i32, b, &mut stats).await?;
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
        .await
        .map_err(|_| KafkaError::Canceled)??;
    progress(&stats);
    Ok((truths, stats))
}

/// Sends a pending batch, if it holds anything, to its partition.
async fn send_batch(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    batch: &mut Batch,
    stats: &mut FeedStats,
) -> Result<(), KafkaError> {
    if batch.spans == 0 {
        return Ok(());
    }
    enqueue(producer, || {
        FutureRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(&batch.payload)
    })
    .await?;
    stats.messages += 1;
    stats.bytes += batch.payload.len();
    batch.payload.clear();
    batch.spans = 0;
    Ok(())
}

/// Partitions of `topic`, from the broker's metadata.
async fn partition_count(producer: &FutureProducer, topic: &str) -> Result<usize, KafkaError> {
    let p = producer.clone();
    let topic = topic.to_owned();
    let n = tokio::task::spawn_blocking(move || {
        p.client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    if n == 0 {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    Ok(n)
}

/// Enqueues one record, waiting while the producer queue is full. Delivery is
/// confirmed by the final flush.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<(), KafkaError> {
    enqueue(producer, || {
        FutureRecord::to(topic).key(key).payload(payload)
    })
    .await
}

/// Enqueues the record `make` builds, waiting while the producer queue is full.
async fn enqueue<'a, K: ToBytes + ?Sized + 'a>(
    producer: &FutureProducer,
    make: impl Fn() -> FutureRecord<'a, K, [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send_result(make()) {
            Ok(_delivery) => return Ok(()),
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
