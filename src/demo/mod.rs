//! `tailsift demo`: the whole pipeline on an embedded broker with synthetic traffic,
//! checked against the generator's ground truth. Zero setup.

mod broker;
mod collect;

use std::collections::HashMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::app;
use crate::codec::TraceId;
use crate::config::{Config, ConfigError};
use crate::gen::{feed, FeedOptions, GenConfig, Generator, Truth};
use crate::shutdown::ShutdownTrigger;
use crate::telemetry::{self, names};

pub use broker::{BrokerError, EmbeddedBroker};
pub use collect::{traces_of, Collector, OutputTrace, Record};

/// Input topic of the demo.
pub const INPUT_TOPIC: &str = "otlp_spans";
/// Output topic of the demo.
pub const OUTPUT_TOPIC: &str = "otlp_spans_sampled";
const INPUT_PARTITIONS: i32 = 16;
const OUTPUT_PARTITIONS: i32 = 8;
/// The probabilistic share in the demo policy set.
pub const BASELINE_PERCENT: f64 = 5.0;

/// The demo's configuration: the same YAML a user would write.
pub fn demo_config(bootstrap: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!(
        r#"
kafka:
  brokers: "{bootstrap}"
  group_id: tailsift-demo
  input_topics: [{INPUT_TOPIC}]
  output_topic: {OUTPUT_TOPIC}
  commit_interval: 500ms
buffer:
  decision_wait: 3s
  decision_wait_after_root_received: 1s
telemetry:
  listen: "127.0.0.1:0"
policies:
  - name: errors
    type: status_code
    status_code: {{status_codes: [ERROR]}}
  - name: slow
    type: latency
    latency: {{threshold_ms: 1000}}
  - name: baseline
    type: probabilistic
    probabilistic: {{sampling_percentage: {BASELINE_PERCENT}}}
"#
    ))
}

/// Demo size and speed.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Traces to generate.
    pub traces: usize,
    /// Traces per second.
    pub rate: u64,
    /// Generator seed.
    pub seed: u64,
}

/// The demo failed to run (not: found a wrong result; that is in the report).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The demo config is invalid (a bug).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pipeline could not start.
    #[error(transparent)]
    App(#[from] app::AppError),
    /// Kafka client error in the generator or collector.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What the demo found.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Lines to print.
    pub lines: Vec<String>,
    /// Whether every ground-truth check passed.
    pub passed: bool,
}

/// Sums every series of a metric in Prometheus text output.
pub fn metric(text: &str, name: &str) -> f64 {
    metric_values(text, name).fold(0.0, |a, b| a + b)
}

/// Every sample of metric `name` in Prometheus text `text`, one per label set.
pub fn metric_values<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    labelled_values(text, name, &[])
}

/// The samples of metric `name` whose label set holds every one of `labels`
/// (each written as in the exposition, e.g. `decision="sampled"`).
pub fn labelled_values<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [&'a str],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(move |l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// The Apache Kafka the opt-in real-broker tests run against: `TAILSIFT_KAFKA`, or
/// `None` (with the reason printed) when it is not given. With
/// `TAILSIFT_KAFKA_REQUIRED` set (`.ci/run`), a missing broker is a failure instead
/// of a skip.
///
/// # Panics
///
/// When `TAILSIFT_KAFKA_REQUIRED` is set and `TAILSIFT_KAFKA` is not.
pub fn real_kafka_from_env() -> Option<String> {
    match std::env::var("TAILSIFT_KAFKA") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            assert!(
                std::env::var_os("TAILSIFT_KAFKA_REQUIRED").is_none(),
                "TAILSIFT_KAFKA_REQUIRED is set but TAILSIFT_KAFKA is not: start Apache Kafka with scripts/kafka.sh start"
            );
            eprintln!(
                "skipped: no Apache Kafka given (export TAILSIFT_KAFKA=$(scripts/kafka.sh start))"
            );
            None
        }
    }
}

/// Runs the demo, printing progress through `out`.
///
/// # Errors
/// [`DemoError`] if the broker, pipeline or clients cannot run.
pub async fn run(opts: &DemoOptions, mut out: impl FnMut(&str)) -> Result<DemoReport, DemoError> {
    let broker = EmbeddedBroker::start(1)?;
    broker.create_topic(INPUT_TOPIC, INPUT_PARTITIONS)?;
    broker.create_topic(OUTPUT_TOPIC, OUTPUT_PARTITIONS)?;
    let bootstrap = broker.bootstrap_servers();
    let cfg = demo_config(&bootstrap)?;
    // Every topic the sampler writes exists, so it has nothing to warn about.
    broker.create_topic(&cfg.kafka.dead_letter_topic, 1)?;
    out(&format!("embedded Kafka-protocol broker at {bootstrap} (topics {INPUT_TOPIC} x{INPUT_PARTITIONS}, {OUTPUT_TOPIC} x{OUTPUT_PARTITIONS})"));
    out("policies: errors (status_code ERROR), slow (latency >= 1000 ms), baseline (probabilistic 5%)");
    let collector = Collector::start(&bootstrap, OUTPUT_TOPIC, OUTPUT_PARTITIONS)?;
    let trigger = ShutdownTrigger::new();
    let running = app::start(&cfg, trigger.subscribe()).await?;
    if let Some(addr) = running.telemetry_addr {
        out(&format!("metrics: http://{addr}/metrics"));
    }
    let prometheus = telemetry::install();
    // Let the consumer group form (the broker delays the first join by 3 s).
    wait_for(Duration::from_secs(30), || running.health.assigned() > 0).await;
    out(&format!(
        "generating {} traces at {} traces/s ...",
        opts.traces, opts.rate
    ));
    let started = tokio::time::Instant::now();
    let mut generator = Generator::new(GenConfig {
        seed: opts.seed,
        ..GenConfig::default()
    });
    let feed_opts = FeedOptions {
        traces: opts.traces,
        rate: opts.rate,
        compression: "lz4".into(),
        batch_spans: 0,
    };
    let mut last = (0.0, tokio::time::Instant::now());
    let (truths, fed) = feed(&bootstrap, INPUT_TOPIC, &mut generator, &feed_opts, |_| {
        out(&progress_line(&prometheus, started, &mut last));
    })
    .await?;
    // Everything is decided once the buffer is empty and no input is pinned.
    let total_spans = fed.spans as f64;
    wait_for(Duration::from_secs(60), || {
        let text = prometheus.render();
        metric(&text, names::SPANS_RECEIVED) >= total_spans
            && metric(&text, names::BUFFER_TRACES) == 0.0
            && metric(&text, names::PINNED_MESSAGES) == 0.0
    })
    .await;
    collector
        .settle(Duration::from_secs(2), Duration::from_secs(30))
        .await;
    out(&progress_line(&prometheus, started, &mut last));
    let elapsed = started.elapsed();
    trigger.trigger();
    running.wait().await;
    let report = report(&truths, &fed, &collector.records(), elapsed);
    // Clients before the broker, so they do not log its disappearance.
    drop(collector);
    drop(broker);
    Ok(report)
}

async fn wait_for(max: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() && start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn progress_line(
    p: &PrometheusHandle,
    started: tokio::time::Instant,
    last: &mut (f64, tokio::time::Instant),
) -> String {
    let text = p.render();
    let spans_in = metric(&text, names::SPANS_RECEIVED);
    let rate = (spans_in - last.0) / last.1.elapsed().as_secs_f64().max(0.001);
    *last = (spans_in, tokio::time::Instant::now());
    let kept: f64 = text
        .lines()
        .filter(|l| l.starts_with(names::TRACES_DECIDED) && l.contains("decision=\"sampled\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);
    let decided = metric(&text, names::TRACES_DECIDED);
    format!(
        "[{:>5.1}s] in {:>9.0} spans/s | buffer {:>6.0} traces {:>6.1} MiB | decided {:>7.0} traces, kept {:>5.1}% | out {:>8.0} spans",
        started.elapsed().as_secs_f64(),
        rate,
        metric(&text, names::BUFFER_TRACES),
        metric(&text, names::BUFFER_BYTES) / 1048576.0,
        decided,
        if decided > 0.0 { kept * 100.0 / decided } else { 0.0 },
        metric(&text, names::SPANS_PRODUCED),
    )
}

fn report(
    truths: &[Truth],
    fed: &crate::gen::FeedStats,
    records: &[Record],
    elapsed: Duration,
) -> DemoReport {
    let out = traces_of(records);
    let truth: HashMap<TraceId, &Truth> = truths.iter().map(|t| (t.trace_id, t)).collect();
    let out_bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    let out_spans: usize = out.values().map(|t| t.spans).sum();
    let mut per_policy: HashMap<&str, usize> = HashMap::new();
    for t in out.values() {
        *per_policy.entry(t.policy.as_str()).or_default() += 1;
    }
    let errors: Vec<&Truth> = truths.iter().filter(|t| t.error).collect();
    let slow: Vec<&Truth> = truths.iter().filter(|t| t.slow).collect();
    let kept_errors = errors
        .iter()
        .filter(|t| out.contains_key(&t.trace_id))
        .count();
    let kept_slow = slow
        .iter()
        .filter(|t| out.contains_key(&t.trace_id))
        .count();
    let complete = out
        .iter()
        .filter(|(id, o)| {
            truth.get(id).is_some_and(|t| {
                o.spans == t.spans
                    && o.distinct_spans == t.spans
                    && o.records == 1
                    && o.misplaced == 0
            })
        })
        .count();
    let unknown = out.keys().filter(|id| !truth.contains_key(id)).count();
    let ordinary = truths.iter().filter(|t| !t.error && !t.slow).count();
    let ordinary_kept = truths
        .iter()
        .filter(|t| !t.error && !t.slow && out.contains_key(&t.trace_id))
        .count();
    let baseline = ordinary_kept as f64 * 100.0 / ordinary.max(1) as f64;
    // Binomial standard deviation of the baseline share; allow 4 sigma.
    let p = BASELINE_PERCENT / 100.0;
    let sigma = (p * (1.0 - p) / ordinary.max(1) as f64).sqrt() * 100.0;
    let baseline_ok = (baseline - BASELINE_PERCENT).abs() <= 4.0 * sigma + 0.1;
    let mut policies: Vec<_> = per_policy.into_iter().collect();
    policies.sort();
    let tick = |ok: bool| if ok { "ok" } else { "FAILED" };
    let checks = [
        kept_errors == errors.len(),
        kept_slow == slow.len(),
        complete == out.len(),
        unknown == 0,
        baseline_ok,
    ];
    let lines = vec![
        String::new(),
        "== tailsift demo summary ==".into(),
        format!(
            "in:  {} traces, {} spans, {} messages, {:.1} MiB in {:.1} s",
            truths.len(),
            fed.spans,
            fed.messages,
            fed.bytes as f64 / 1048576.0,
            elapsed.as_secs_f64()
        ),
        format!(
            "out: {} traces ({:.1}%), {} spans, {} records, {:.1} MiB -> volume reduced by {:.1}%",
            out.len(),
            out.len() as f64 * 100.0 / truths.len().max(1) as f64,
            out_spans,
            records.len(),
            out_bytes as f64 / 1048576.0,
            100.0 - out_bytes as f64 * 100.0 / fed.bytes.max(1) as f64
        ),
        format!(
            "kept per policy: {}",
            policies.iter().map(|(p, n)| format!("{p}={n}")).collect::<Vec<_>>().join(", ")
        ),
        "ground truth:".into(),
        format!("  error traces kept       {kept_errors}/{} {}", errors.len(), tick(checks[0])),
        format!("  slow traces kept        {kept_slow}/{} {}", slow.len(), tick(checks[1])),
        format!("  kept traces complete    {complete}/{} (all spans, one record, no duplicates) {}", out.len(), tick(checks[2])),
        format!("  traces not generated    {unknown} {}", tick(checks[3])),
        format!(
            "  ordinary traces kept    {baseline:.2}% (policy {BASELINE_PERCENT}%, tolerance +/-{:.2}) {}",
            4.0 * sigma + 0.1,
            tick(checks[4])
        ),
    ];
    DemoReport {
        lines,
        passed: checks.iter().all(|c| *c),
    }
}
