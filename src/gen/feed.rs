//! Produces generated traces to a Kafka topic at a steady rate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Generator, Truth};

/// Options of [`feed`].
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Traces to send.
    pub traces: usize,
    /// Traces per second; 0: as fast as possible.
    pub rate: u64,
    /// librdkafka `compression.codec` of the input.
    pub compression: String,
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

/// Now, in ns since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A producer suitable for feeding input.
///
/// # Errors
/// When librdkafka refuses the settings.
pub fn producer(bootstrap: &str, compression: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.codec", compression)
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536")
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
        let key = t.truth.trace_id.to_hex();
        for m in &t.messages {
            send(&producer, topic, key.as_bytes(), m).await?;
            stats.messages += 1;
            stats.bytes += m.len();
        }
        stats.traces += 1;
        stats.spans += t.truth.spans;
        truths.push(t.truth);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = tokio::time::Instant::now();
            progress(&stats);
        }
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
        .await
        .map_err(|_| KafkaError::Canceled)??;
    progress(&stats);
    Ok((truths, stats))
}

/// Enqueues one record, waiting while the producer queue is full. Delivery is
/// confirmed by the final flush.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<(), KafkaError> {
    loop {
        match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
            Ok(_delivery) => return Ok(()),
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
