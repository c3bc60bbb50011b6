//! Decisions on the input's own clock: a trace is due when its partition's records
//! have moved `decision_wait` past its first span, whatever the wall clock did in
//! between. Each test runs `tailsift run` as a child process against the embedded
//! broker, with traces whose pieces are sent over 1.5 s, root last, and checks the
//! output against the generator's ground truth: every error and slow trace out,
//! complete, in one record, exactly once (no sampler process dies in these tests, so
//! nothing may come out twice).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tailsift::gen;
use tailsift::telemetry::names;

/// How long each trace's pieces take to arrive.
const SPREAD: Duration = Duration::from_millis(1500);

fn workdir(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tailsift-st-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("tailsift.log");
    (dir, log)
}

async fn wait_ready(s: &Sampler, log: &std::path::Path) {
    let ready = wait_until(Duration::from_secs(40), || {
        // Ready, and holding partitions (a member with none is ready too).
        http_get(s.telemetry, "/readyz").0 == 200
            && max_metric_of(s, "tailsift_assigned_partitions") > 0.0
    })
    .await;
    assert!(ready, "sampler not ready; log: {}", log.display());
}

/// Records in the output topic, summed over partitions.
fn output_end(h: &Harness) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &h.bootstrap)
        .create()
        .expect("consumer");
    (0..h.output_partitions)
        .map(|p| {
            c.fetch_watermarks(OUTPUT, p, Duration::from_secs(5))
                .map_or(0, |(low, high)| (high - low) as usize)
        })
        .sum()
}

/// Waits until the sampler has committed all its input (so every decision is made
/// and every kept trace acknowledged by the broker) and the collector has read the
/// whole output; then stops the sampler with SIGTERM.
async fn settle(
    h: &Harness,
    out: &tailsift::demo::Collector,
    mut s: Sampler,
    log: &std::path::Path,
) {
    let committed = wait_until(Duration::from_secs(120), || uncommitted(h).is_empty()).await;
    let read = wait_until(Duration::from_secs(30), || out.len() >= output_end(h)).await;
    signal(&s.child, "-TERM");
    let _ = tokio::task::spawn_blocking(move || s.child.wait()).await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        committed,
        "input never fully committed: {:?}; log:\n{text}",
        uncommitted(h)
    );
    assert!(read, "collector did not read the whole output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_longer_than_the_wait_loses_nothing_and_writes_nothing_twice() {
    let h = Harness::new(8, 4);
    let (dir, log) = workdir("outage");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    let feed = spread_traffic(&h.bootstrap, 400, 40, 71, SPREAD);
    // Mid-stream, the broker goes away for 2.5x decision_wait: traces whose first
    // pieces were read before it must wait for the rest, read after it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.broker.cluster().broker_down(-1).expect("broker down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.broker.cluster().broker_up(-1).expect("broker up");
    let truths = feed.await.expect("traffic");
    settle(&h, &out, sampler, &log).await;
    assert_kept_whole_once(&truths, &out.traces(), "broker outage");
    h.assert_no_broker_truncation();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A producer cut off by the same outage as tailsift, and slower to come back: the
/// rest of each trace, stamped before the outage, is delivered 6 s after tailsift
/// reconnected, past `idle_delay` (1 s) but within `idle_delay_after_outage` (10 s). With
/// `idle_delay_after_outage: 1s` (a confirmation of `idle_delay` once the broker
/// answers again, as before it existed) the traces are decided on their first
/// pieces and this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_back_later_than_tailsift_after_an_outage_loses_nothing() {
    late_producer_after_outage(None).await;
}

async fn late_producer_after_outage(after_outage: Option<&str>) {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let h = Harness::new(8, 4);
    let (dir, log) = workdir("late-producer");
    let mut yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None);
    if let Some(d) = after_outage {
        yaml = yaml.replace(
            "buffer:\n",
            &format!("buffer:\n  idle_delay_after_outage: {d}\n"),
        );
    }
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    let mut g = gen::Generator::new(gen::GenConfig {
        seed: 83,
        error_rate: 1.0,
        ..gen::GenConfig::default()
    });
    let traces: Vec<gen::GeneratedTrace> = (0..200)
        .map(|_| g.next_trace(gen::now_ns()))
        .filter(|t| t.messages.len() >= 2)
        .take(20)
        .collect();
    assert_eq!(traces.len(), 20, "traces of several messages");
    // First pieces, delivered before the outage. The rest is produced 0.5 s later
    // (well within decision_wait: that is the time it is stamped with) by a producer
    // that cannot deliver it until after the outage.
    let stamped = gen::now_ns() as i64 / 1_000_000 + 500;
    let first = h.producer("none");
    for t in &traces {
        gen::send(
            &first,
            INPUT,
            t.truth.trace_id.to_hex().as_bytes(),
            &t.messages[0],
        )
        .await
        .expect("send");
    }
    let flushed = tokio::task::spawn_blocking(move || first.flush(Duration::from_secs(10)))
        .await
        .expect("flush task");
    assert!(flushed.is_ok(), "first pieces not delivered: {flushed:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.broker.cluster().broker_down(-1).expect("broker down");
    let noticed = wait_until(Duration::from_secs(20), || {
        max_metric_of(&sampler, names::KAFKA_UP) == 0.0
    })
    .await;
    assert!(noticed, "tailsift never saw the broker down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.broker.cluster().broker_up(-1).expect("broker up");
    let back = wait_until(Duration::from_secs(30), || {
        max_metric_of(&sampler, names::KAFKA_UP) == 1.0
    })
    .await;
    assert!(back, "tailsift never reconnected");
    // The producer is back 6 s after tailsift: past idle_delay (and the backoff of
    // tailsift's consumer, up to ~3 s after a 2 s outage, which can reconnect after
    // the client that reported the broker up), within idle_delay_after_outage.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let late: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    // All at once, as a producer sends what it held when it reconnects.
    let keys: Vec<String> = traces.iter().map(|t| t.truth.trace_id.to_hex()).collect();
    let mut deliveries = Vec::new();
    for (t, key) in traces.iter().zip(&keys) {
        for m in &t.messages[1..] {
            let record = FutureRecord::to(INPUT)
                .key(key.as_bytes())
                .payload(m)
                .timestamp(stamped);
            deliveries.push(
                late.send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueued"),
            );
        }
    }
    for d in deliveries {
        assert!(matches!(d.await, Ok(Ok(_))), "a late piece not delivered");
    }
    settle(&h, &out, sampler, &log).await;
    let truths: Vec<_> = traces.iter().map(|t| t.truth.clone()).collect();
    let got = out.traces();
    assert_kept_whole_once(&truths, &got, "producer back late");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_frozen_for_twice_the_wait_loses_nothing() {
    let h = Harness::new(8, 4);
    let (dir, log) = workdir("sigstop");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    let feed = spread_traffic(&h.bootstrap, 600, 40, 73, SPREAD);
    // What a long GC or VM pause looks like: frozen for 2x decision_wait, twice,
    // while traffic goes on (inside the 6 s session timeout: no rebalance).
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal(&sampler.child, "-STOP");
        tokio::time::sleep(Duration::from_secs(4)).await;
        signal(&sampler.child, "-CONT");
    }
    let truths = feed.await.expect("traffic");
    settle(&h, &out, sampler, &log).await;
    assert_kept_whole_once(&truths, &out.traces(), "SIGSTOP");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_starved_three_waits_behind_catches_up_losing_nothing() {
    let h = Harness::new(8, 4);
    let (dir, log) = workdir("starved");
    // Fetches of one small batch per partition, each taking 300 ms: the consumer
    // reads far slower than the traffic comes in.
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None).replace(
        "consumer: {",
        "consumer: {fetch.max.bytes: \"1000\", message.max.bytes: \"1000\", max.partition.fetch.bytes: \"1000\", ",
    );
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    h.broker
        .cluster()
        .broker_round_trip_time(1, Duration::from_millis(300))
        .expect("slow broker");
    let feed = spread_traffic(&h.bootstrap, 400, 40, 79, SPREAD);
    let behind = wait_until(Duration::from_secs(30), || {
        max_metric_of(&sampler, names::STREAM_TIME_LAG) >= 6.0
    })
    .await;
    h.broker
        .cluster()
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("broker fast again");
    let truths = feed.await.expect("traffic");
    settle(&h, &out, sampler, &log).await;
    assert!(behind, "the consumer never fell 3x decision_wait behind");
    assert_kept_whole_once(&truths, &out.traces(), "starved consumer");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_backlog_of_ten_waits_decides_it_in_stream_time() {
    let h = Harness::new(8, 4);
    let (dir, log) = workdir("backlog");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "1s", None);
    let out = h.collector();
    // 10 s of traffic (10x decision_wait) waiting in Kafka before the sampler starts.
    let truths = spread_traffic(&h.bootstrap, 300, 30, 83, Duration::from_millis(700))
        .await
        .expect("traffic");
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    settle(&h, &out, sampler, &log).await;
    assert_kept_whole_once(&truths, &out.traces(), "backlog");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partitions_last_trace_is_decided_on_time() {
    let h = Harness::new(4, 1);
    let (dir, log) = workdir("idle");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    let mut g = gen::Generator::new(gen::GenConfig {
        seed: 89,
        error_rate: 1.0,
        ..gen::GenConfig::default()
    });
    let t = g.next_trace(gen::now_ns());
    let producer = h.producer("none");
    let key = t.truth.trace_id.to_hex();
    let sent = std::time::Instant::now();
    for m in &t.messages {
        gen::send(&producer, INPUT, key.as_bytes(), m)
            .await
            .expect("send");
    }
    // Then nothing more arrives: only the wall clock, confirmed by the broker, can
    // move the partition's stream time past the trace's deadline.
    let decided = wait_until(Duration::from_secs(15), || {
        out.traces().contains_key(&t.truth.trace_id)
    })
    .await;
    let took = sent.elapsed();
    settle(&h, &out, sampler, &log).await;
    assert!(
        decided,
        "the last trace of an idle partition was never decided"
    );
    assert!(
        took >= Duration::from_secs(2),
        "decided after {took:?}, before its decision_wait"
    );
    // decision_wait + idle_delay (1 s) + probe interval and delivery.
    assert!(
        took <= Duration::from_secs(5),
        "decided only after {took:?}: idle stream time did not follow the wall clock"
    );
    assert_kept_whole_once(&[t.truth], &out.traces(), "idle partition");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One producer's clock runs 45 s ahead (inside the default `max_timestamp_skew` of
/// 1 min). Its record must not move the partition's stream time past the wall clock:
/// an error trace whose first piece was read before it still waits its whole
/// `decision_wait` for the rest, sent 1 s later, and comes out whole. The skewed
/// trace itself is decided on time, not 45 s late. Before stream time was capped at
/// the wall clock, the skewed record made the first trace due at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_clock_ahead_shortens_no_other_traces_wait() {
    use rdkafka::producer::FutureRecord;
    let h = Harness::new(1, 1);
    let (dir, log) = workdir("clock-ahead");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "3s", None);
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    let mut g = gen::Generator::new(gen::GenConfig {
        seed: 97,
        error_rate: 1.0,
        ..gen::GenConfig::default()
    });
    let mut traces = (0..200)
        .map(|_| g.next_trace(gen::now_ns()))
        .filter(|t| t.messages.len() >= 2);
    let (early, skewed) = (
        traces.next().expect("a trace"),
        traces.next().expect("a trace"),
    );
    let producer = h.producer("none");
    let send = |t: &gen::GeneratedTrace, m: usize, ahead_ms: i64| {
        let key = t.truth.trace_id.to_hex();
        let record = FutureRecord::to(INPUT)
            .key(key.as_bytes())
            .payload(&t.messages[m])
            .timestamp(gen::now_ns() as i64 / 1_000_000 + ahead_ms)
            .partition(0);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueued");
        async move { assert!(matches!(delivery.await, Ok(Ok(_))), "not delivered") }
    };
    send(&early, 0, 0).await;
    // Read by the sampler before the skewed record comes.
    let read = wait_until(Duration::from_secs(10), || {
        metric_of(&sampler, names::MESSAGES_RECEIVED) >= 1.0
    })
    .await;
    assert!(read, "first piece never read");
    for m in 0..skewed.messages.len() {
        send(&skewed, m, 45_000).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in 1..early.messages.len() {
        send(&early, m, 0).await;
    }
    let sent = std::time::Instant::now();
    let both = wait_until(Duration::from_secs(30), || {
        let got = out.traces();
        got.contains_key(&early.truth.trace_id) && got.contains_key(&skewed.truth.trace_id)
    })
    .await;
    let took = sent.elapsed();
    let counted = metric_of(&sampler, names::FUTURE_TIMESTAMPS);
    settle(&h, &out, sampler, &log).await;
    assert!(both, "a trace was never decided");
    assert!(
        took < Duration::from_secs(15),
        "the skewed trace waited {took:?}: its timestamp, not the wall clock, set its wait"
    );
    assert_eq!(
        counted,
        skewed.messages.len() as f64,
        "each skewed record counted"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("stamped ahead of the wall clock"),
        "the skewed record was not logged"
    );
    assert_kept_whole_once(
        &[early.truth, skewed.truth],
        &out.traces(),
        "a producer clock ahead",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The progress watchdog. The idle probes of a quiet partition fail (the broker
/// refuses to list its offsets), so its last trace can never become due: once the
/// partition has held it without moving for 3 `decision_wait`s plus
/// `idle_delay_after_outage`, `/readyz` answers 503 naming the partition and why,
/// the stall is counted and logged once. When the probes answer again the trace is
/// decided, whole, and the instance is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_stops_moving_is_named_by_readyz_until_it_moves() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let h = Harness::new(1, 1);
    let (dir, log) = workdir("watchdog");
    // Stalled after 3 x 1 s + 3 s without a move.
    let yaml = h
        .config_yaml(ERRORS_SLOW_AND, "1s", None)
        .replace("buffer:\n", "buffer:\n  idle_delay_after_outage: 3s\n");
    let out = h.collector();
    let sampler = spawn(&dir, &yaml, &log);
    wait_ready(&sampler, &log).await;
    let mut g = gen::Generator::new(gen::GenConfig {
        seed: 101,
        error_rate: 1.0,
        ..gen::GenConfig::default()
    });
    // A first trace, read and decided: the consumer has its position.
    let warm = g.next_trace(gen::now_ns());
    let producer = h.producer("none");
    let warm_key = warm.truth.trace_id.to_hex();
    for m in &warm.messages {
        gen::send(&producer, INPUT, warm_key.as_bytes(), m)
            .await
            .expect("send");
    }
    let warmed = wait_until(Duration::from_secs(30), || {
        out.traces().contains_key(&warm.truth.trace_id)
    })
    .await;
    assert!(warmed, "the first trace was never decided");
    let t = g.next_trace(gen::now_ns());
    // From now on every ListOffsets request fails.
    let refused = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5_000];
    h.broker
        .cluster()
        .request_errors(RDKafkaApiKey::ListOffsets, &refused);
    let key = t.truth.trace_id.to_hex();
    for m in &t.messages {
        gen::send(&producer, INPUT, key.as_bytes(), m)
            .await
            .expect("send");
    }
    let stalled = wait_until(Duration::from_secs(40), || {
        http_get(sampler.telemetry, "/readyz").0 == 503
    })
    .await;
    let (_, why) = http_get(sampler.telemetry, "/readyz");
    let gauge = metric_of(&sampler, names::STALLED_PARTITIONS);
    let decided_meanwhile = out.traces().contains_key(&t.truth.trace_id);
    h.broker
        .cluster()
        .clear_request_errors(RDKafkaApiKey::ListOffsets);
    let recovered = wait_until(Duration::from_secs(30), || {
        http_get(sampler.telemetry, "/readyz").0 == 200
            && out.traces().contains_key(&t.truth.trace_id)
    })
    .await;
    let episodes = metric_of(&sampler, names::PARTITION_STALLS);
    let gauge_after = metric_of(&sampler, names::STALLED_PARTITIONS);
    settle(&h, &out, sampler, &log).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(stalled, "/readyz never reported the stuck partition");
    assert!(
        !decided_meanwhile,
        "the trace was decided though its partition was stuck"
    );
    assert!(
        why.contains(&format!("{INPUT}[0]")) && why.contains("idle probes fail"),
        "/readyz does not name the partition and why: {why}"
    );
    assert_eq!(gauge, 1.0, "tailsift_stalled_partitions while stuck");
    assert!(
        recovered,
        "not ready again, or the trace not decided, once probes answered"
    );
    assert_eq!(episodes, 1.0, "one episode counted");
    assert_eq!(gauge_after, 0.0);
    assert_eq!(
        text.matches("Input partition not progressing").count(),
        1,
        "logged once per episode"
    );
    assert_kept_whole_once(&[warm.truth, t.truth], &out.traces(), "stuck partition");
    let _ = std::fs::remove_dir_all(&dir);
}
