//! End-to-end throughput on the embedded broker, in one run:
//!
//! (a) a plain copier: consumes the input topic and produces the same number of bytes
//!     tailsift produced, without decoding anything: the Kafka floor;
//! (b) tailsift with a realistic policy set, on the same pre-produced input.
//!
//! (c) the route stage (`route:`, for input not keyed by trace id) splitting the same
//!     input by trace id into `<input>-by-trace`, against the copier copying all of it
//!     (the same bytes in and about the same out).
//!
//! (d) two tailsift instances in one consumer group on the same input and broker
//!     (each on a runtime of its own, as separate processes), against one: how
//!     throughput scales with instances on one machine.
//!
//! Prints spans/s for each, the ratios, process CPU per span and peak RSS during each
//! run. The input is sized within the embedded broker's per-partition retention
//! (~5 MiB/partition), so nothing is truncated: the bench checks the low watermarks.
//!
//! `cargo bench --bench e2e` (env `E2E_SPANS` to change the input size, `E2E_BATCH` the
//! spans per message: 500 by default, 8192 as the Collector's batch processor). The last
//! line, `summary e2e: ...`, is one line to compare across commits. Its ratio is of the
//! whole runs, tailsift's including its last decision wait (~0.3 s, as long for any
//! input size); "reading only" leaves that wait out: the rate a sampler that never
//! stops reading sustains.
//!
//! On Apache Kafka instead (no retention limit; the broker is another process, so
//! CPU and RSS are tailsift's and the copier's alone):
//! `E2E_KAFKA=$(scripts/kafka.sh start) cargo bench --bench e2e`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use tailsift::app;
use tailsift::config::Config;
use tailsift::demo::{metric, EmbeddedBroker};
use tailsift::gen::{self, GenConfig, Generator};
use tailsift::shutdown::ShutdownTrigger;
use tailsift::telemetry::{self, names};

const PARTITIONS: i32 = 256;

/// The broker the bench runs on and the topics it made there.
struct Bench {
    bootstrap: String,
    /// The embedded broker, kept alive; `None` on a real broker.
    _embedded: Option<EmbeddedBroker>,
    input: String,
    output: String,
    copy_output: String,
    copy_all_output: String,
    group: String,
}

impl Bench {
    async fn start() -> Bench {
        if let Ok(bootstrap) = std::env::var("E2E_KAFKA") {
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let run = std::process::id();
            let b = Bench {
                bootstrap: bootstrap.clone(),
                _embedded: None,
                input: format!("bench-in-{run}"),
                output: format!("bench-out-{run}"),
                copy_output: format!("bench-copy-out-{run}"),
                copy_all_output: format!("bench-copy-all-{run}"),
                group: format!("bench-{run}"),
            };
            let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("admin");
            let routed = format!("{}-by-trace", b.input);
            let topics = [
                // Collector-sized batches (E2E_BATCH=8192) are ~4 MB a message.
                NewTopic::new(&b.input, PARTITIONS, TopicReplication::Fixed(-1))
                    .set("max.message.bytes", "33554432"),
                NewTopic::new(&b.output, 16, TopicReplication::Fixed(-1)),
                NewTopic::new(&b.copy_output, 16, TopicReplication::Fixed(-1)),
                NewTopic::new(&b.copy_all_output, PARTITIONS, TopicReplication::Fixed(-1)),
                NewTopic::new(&routed, PARTITIONS, TopicReplication::Fixed(-1)),
            ];
            for r in admin
                .create_topics(topics.iter(), &AdminOptions::new())
                .await
                .expect("create topics")
            {
                r.expect("topic created");
            }
            return b;
        }
        let broker = EmbeddedBroker::start(1).expect("broker");
        broker.create_topic("bench-in", PARTITIONS).expect("topic");
        broker.create_topic("bench-out", 16).expect("topic");
        broker.create_topic("bench-copy-out", 16).expect("topic");
        broker
            .create_topic("bench-copy-all", PARTITIONS)
            .expect("topic");
        broker
            .create_topic("bench-in-by-trace", PARTITIONS)
            .expect("topic");
        Bench {
            bootstrap: broker.bootstrap_servers(),
            _embedded: Some(broker),
            input: "bench-in".into(),
            output: "bench-out".into(),
            copy_output: "bench-copy-out".into(),
            copy_all_output: "bench-copy-all".into(),
            group: "bench".into(),
        }
    }

    fn embedded(&self) -> bool {
        self._embedded.is_some()
    }
}

/// CPU seconds (user + system) of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size now, bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

struct RunResult {
    name: &'static str,
    seconds: f64,
    cpu: f64,
    peak_rss: u64,
    out_bytes: u64,
}

/// Runs `fut`, sampling RSS every 20 ms, and measures time and CPU. `fut` returns the
/// bytes it produced and, if its work started later than the call (the copier joins its
/// consumer group inside), when it started.
async fn measured<F: std::future::Future<Output = (u64, Option<Instant>)>>(
    name: &'static str,
    fut: F,
) -> RunResult {
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let peak = Arc::new(AtomicU64::new(rss_bytes()));
    let probe = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (out_bytes, started) = fut.await;
    let seconds = started.unwrap_or(t0).elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    probe.abort();
    RunResult {
        name,
        seconds,
        cpu,
        peak_rss: peak.load(Ordering::Relaxed).max(rss_bytes()),
        out_bytes,
    }
}

/// Runs `instances` tailsift instances in consumer group `group` over the whole
/// input, timed from their first span read until every span was read and decided
/// (the last acknowledgements and commit are waited for outside the timing). Each
/// instance runs on a runtime of its own with two worker threads, as a process of
/// its own would. Returns the run, when all input had been read, and when the last
/// trace was decided.
async fn run_tailsift(
    bench: &Bench,
    prometheus: &metrics_exporter_prometheus::PrometheusHandle,
    total: f64,
    instances: usize,
    group: &str,
) -> (RunResult, Option<Instant>, Instant) {
    let cfg = Config::from_yaml(&format!(
        r#"
kafka: {{brokers: "{bootstrap}", group_id: {group}, input_topics: [{input}], output_topic: {output}}}
buffer: {{decision_wait: 1s, decision_wait_after_root_received: 200ms, idle_delay: 200ms}}
telemetry: {{listen: ""}}
policies:
  - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
  - {{name: slow, type: latency, latency: {{threshold_ms: 1000}}}}
  - {{name: server-errors, type: numeric_attribute, numeric_attribute: {{key: http.status_code, min_value: 500, max_value: 599}}}}
  - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: 5}}}}
"#,
        bootstrap = bench.bootstrap,
        input = bench.input,
        output = bench.output,
    ))
    .expect("bench config");
    // The metrics registry is the process's: count from what earlier runs left.
    let received0 = metric(&prometheus.render(), names::SPANS_RECEIVED);
    let mut running = Vec::new();
    for _ in 0..instances {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Its own thread name, to tell its threads from the copier's in `perf`.
            .thread_name("tailsift-rt")
            .enable_all()
            .build()
            .expect("runtime");
        let trigger = ShutdownTrigger::new();
        let shutdown = trigger.subscribe();
        let cfg = cfg.clone();
        let started = runtime
            .spawn(async move { app::start(&cfg, shutdown).await.expect("start") })
            .await
            .expect("join");
        running.push((runtime, trigger, started));
    }
    // Every partition assigned (the group's first rebalance settled).
    while running.iter().map(|r| r.2.health.assigned()).sum::<usize>() < PARTITIONS as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut read_all = None;
    let forced0 = metric(&prometheus.render(), names::FORCED_DECISIONS);
    let (mut polls, mut pressured) = (0u32, 0u32);
    let result = measured(
        if instances == 1 {
            "tailsift"
        } else {
            "tailsift x2"
        },
        async {
            let mut first = None;
            loop {
                let text = prometheus.render();
                let received = metric(&text, names::SPANS_RECEIVED) - received0;
                if received > 0.0 {
                    first.get_or_insert_with(Instant::now);
                }
                if received >= total {
                    read_all.get_or_insert_with(Instant::now);
                }
                polls += 1;
                if metric(&text, names::MEMORY_PRESSURE) > 0.0 {
                    pressured += 1;
                }
                if received >= total && metric(&text, names::BUFFER_TRACES) == 0.0 {
                    return (0, first);
                }
                // Rendering the metrics is not free: poll slowly enough not to compete.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    let decided_at = Instant::now();
    let forced = metric(&prometheus.render(), names::FORCED_DECISIONS) - forced0;
    println!(
        "{instances} instance(s): memory pressure in {pressured} of {polls} polls, {forced} decisions forced early"
    );
    while metric(&prometheus.render(), names::PINNED_MESSAGES) != 0.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (runtime, trigger, started) in running {
        trigger.trigger();
        runtime.spawn(started.wait()).await.expect("join");
        runtime.shutdown_background();
    }
    (result, read_all, decided_at)
}

/// Copies until every input message was read; returns the bytes produced and the time
/// of the first message (the 3 s group join before it is not copying).
async fn copier(
    bench: &Bench,
    output: &str,
    total_msgs: usize,
    ratio: f64,
) -> (u64, Option<Instant>) {
    let bootstrap = bench.bootstrap.as_str();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{}-copier-{output}", bench.group))
        .set("auto.offset.reset", "earliest")
        // The same prefetch tailsift gives its consumer at the default memory.limit
        // (512MiB / 8), so both read the broker the same way.
        .set("queued.max.messages.kbytes", "65536")
        .set("fetch.max.bytes", "67108864")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", tailsift::config::INPUT_FETCH_WAIT_MS)
        .set("enable.auto.commit", "true")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&bench.input]).expect("subscribe");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.codec", "lz4")
        .set("linger.ms", "5")
        .set("message.max.bytes", "33554432")
        .create()
        .expect("producer");
    let (mut seen, mut in_bytes, mut out_bytes) = (0usize, 0u64, 0u64);
    let mut first = None;
    while seen < total_msgs {
        let Ok(m) = consumer.recv().await else {
            continue;
        };
        first.get_or_insert_with(Instant::now);
        seen += 1;
        let payload = m.payload().unwrap_or(&[]);
        in_bytes += payload.len() as u64;
        // Forward whole messages until the output matches tailsift's byte ratio.
        if (out_bytes as f64) < ratio * in_bytes as f64 {
            gen::send(&producer, output, m.key().unwrap_or(&[]), payload)
                .await
                .expect("send");
            out_bytes += payload.len() as u64;
        }
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
        .await
        .ok();
    (out_bytes, first)
}

#[tokio::main]
async fn main() {
    let target_spans: usize = std::env::var("E2E_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_400_000);
    let batch_spans: usize = std::env::var("E2E_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let bench = Bench::start().await;
    let bootstrap = bench.bootstrap.clone();
    let input = bench.input.as_str();

    // Pre-produce the input: generated traces, ~20 spans each, one message per
    // service, keyed by trace id.
    let mut g = Generator::new(GenConfig::default());
    let opts = gen::FeedOptions {
        traces: target_spans / 20,
        rate: 0,
        compression: "lz4".into(),
        batch_spans,
    };
    let t = Instant::now();
    let (_truths, fed) = gen::feed(&bootstrap, input, &mut g, &opts, |_| {})
        .await
        .expect("feed");
    eprintln!(
        "input: {} traces, {} spans, {} messages, {:.1} MiB ({} B/span), produced in {:.1}s",
        fed.traces,
        fed.spans,
        fed.messages,
        fed.bytes as f64 / 1048576.0,
        fed.bytes / fed.spans.max(1),
        t.elapsed().as_secs_f64()
    );

    // (b) tailsift, one instance; then (d) two instances in one group on the same
    // input, each with its own runtime as a separate process would have.
    let prometheus = telemetry::install();
    let total = fed.spans as f64;
    let (mut sampled, read_all, decided_at) =
        run_tailsift(&bench, &prometheus, total, 1, &bench.group).await;
    sampled.out_bytes = metric(&prometheus.render(), names::BYTES_PRODUCED) as u64;
    let two_group = format!("{}-two", bench.group);
    let (mut two, _, _) = run_tailsift(&bench, &prometheus, total, 2, &two_group).await;
    two.out_bytes = metric(&prometheus.render(), names::BYTES_PRODUCED) as u64 - sampled.out_bytes;

    // (a) the copier, producing as many bytes as tailsift did.
    let ratio = sampled.out_bytes as f64 / fed.bytes as f64;
    let copy = measured(
        "copier",
        copier(&bench, &bench.copy_output, fed.messages, ratio),
    )
    .await;

    // (c) the route stage alone, timed from its first message until every input
    // message was read and its routed records acknowledged (the drain at shutdown
    // flushes them and commits), against the copier copying every message.
    let route_cfg = Config::from_yaml(&format!(
        r#"
kafka: {{brokers: "{bootstrap}", group_id: {group}, input_topics: [{input}], output_topic: {output}}}
route: {{topics: [{input}]}}
telemetry: {{listen: ""}}
policies:
  - {{name: all, type: always_sample}}
"#,
        group = bench.group,
        output = bench.output,
    ))
    .expect("route config");
    let route = route_cfg.route.clone().expect("route section");
    // A mark for profilers attaching to the route stage's run (`perf record -p`).
    eprintln!("route stage: starting");
    let routed = measured("route", async {
        let kafka = route_cfg.kafka.clone();
        let r = route.clone();
        let router = tokio::task::spawn_blocking(move || {
            tailsift::route::Router::new(&kafka, &r, telemetry::Health::new())
        })
        .await
        .expect("join")
        .expect("route stage");
        let trigger = ShutdownTrigger::new();
        let stage = tokio::spawn(router.run(trigger.subscribe()));
        let mut first = None;
        loop {
            let text = prometheus.render();
            let read = metric(&text, names::ROUTE_MESSAGES);
            if read > 0.0 {
                first.get_or_insert_with(Instant::now);
            }
            if read >= fed.messages as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        trigger.trigger();
        stage.await.expect("join").expect("route stage ran");
        let out = metric(&prometheus.render(), names::ROUTE_RECORDS);
        (out as u64, first)
    })
    .await;
    let routed_records = routed.out_bytes;
    let copy_all = measured(
        "copier",
        copier(&bench, &bench.copy_all_output, fed.messages, 1.0),
    )
    .await;

    let check: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("consumer");
    for p in 0..PARTITIONS {
        let (low, _) = check
            .fetch_watermarks(input, p, Duration::from_secs(5))
            .expect("watermarks");
        assert_eq!(
            low, 0,
            "broker truncated input partition {p}: lower E2E_SPANS"
        );
    }

    println!(
        "\nend-to-end on {}, {} spans ({:.1} MiB) of input:",
        if bench.embedded() {
            "the embedded broker".to_string()
        } else {
            format!("Apache Kafka at {bootstrap}")
        },
        fed.spans,
        fed.bytes as f64 / 1048576.0
    );
    println!(
        "{:<12} {:>12} {:>10} {:>14} {:>12} {:>12}",
        "run", "spans/s", "seconds", "CPU us/span", "peak RSS", "out MiB"
    );
    for r in [&copy, &sampled, &two] {
        println!(
            "{:<12} {:>12.0} {:>10.2} {:>14.2} {:>9.0} MiB {:>12.1}",
            r.name,
            total / r.seconds,
            r.seconds,
            r.cpu * 1e6 / total,
            r.peak_rss as f64 / 1048576.0,
            r.out_bytes as f64 / 1048576.0
        );
    }
    println!(
        "ratio tailsift/copier: {:.2}x (tailsift's time includes its last decision wait, 200 ms after the last root span; the copier's starts at its first message)",
        copy.seconds / sampled.seconds
    );
    println!(
        "two instances in one group on the same 2 cores: {:.2}x one instance's throughput",
        sampled.seconds / two.seconds
    );
    // The time to read everything, without the last decision wait: the throughput a
    // sampler that never stops reading sustains (the wait is latency, paid once).
    let tail = read_all.map_or(0.0, |r| {
        r.elapsed().as_secs_f64() - decided_at.elapsed().as_secs_f64()
    });
    let reading = copy.seconds / (sampled.seconds - tail).max(f64::MIN_POSITIVE);
    println!(
        "tailsift read all its input {tail:.2} s before its last decision (the wait for idle partitions' stream time); reading only, tailsift/copier: {reading:.2}x"
    );
    println!(
        "\nroute stage: {} input messages split into {routed_records} records keyed by trace id",
        fed.messages
    );
    println!(
        "{:<10} {:>12} {:>10} {:>14} {:>12}",
        "run", "spans/s", "seconds", "CPU us/span", "peak RSS"
    );
    for r in [&copy_all, &routed] {
        println!(
            "{:<10} {:>12.0} {:>10.2} {:>14.2} {:>9.0} MiB",
            r.name,
            total / r.seconds,
            r.seconds,
            r.cpu * 1e6 / total,
            r.peak_rss as f64 / 1048576.0,
        );
    }
    println!(
        "ratio route/copier (all bytes): {:.2}x",
        copy_all.seconds / routed.seconds
    );
    println!(
        "summary e2e: tailsift {:.0} spans/s = {:.2}x copier ({reading:.2}x reading only); 2 instances {:.2}x of 1; route {:.0} spans/s = {:.2}x copier",
        total / sampled.seconds,
        copy.seconds / sampled.seconds,
        sampled.seconds / two.seconds,
        total / routed.seconds,
        copy_all.seconds / routed.seconds
    );
    if bench.embedded() {
        println!("CPU and RSS are the whole process, embedded broker included, for both runs.");
    } else {
        println!(
            "CPU and RSS are this process's (tailsift or the copier), the broker being another."
        );
    }
}
