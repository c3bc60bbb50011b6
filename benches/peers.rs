//! The peer bench: tailsift and the OpenTelemetry Collector's tail sampler (kafka
//! receiver -> tail_sampling -> kafka exporter, built from its Go modules by
//! `benches/peers/build-otelcol.sh`) on the same broker, the same input backlog and
//! the same machine, one after the other in one run, with the same policies
//! (status_code ERROR, latency 1000 ms, probabilistic 10 % with the same salt) and
//! the same decision wait.
//!
//! Each runs as a child process from the start of the backlog until every input span
//! was consumed and every trace decided. Printed per peer: spans/s (input spans over
//! the time to consume them all), CPU per span (the child's user + system time), peak
//! RSS (its VmHWM), output records and bytes, and how far the kept trace sets agree.
//! The Collector runs twice, with its default `num_shards` and with one shard per
//! core.
//!
//! `PEERS_KAFKA=$(scripts/kafka.sh start) cargo bench --bench peers` (`PEERS_TRACES`,
//! `PEERS_BATCH` size the input). Apache Kafka only: the Collector's Kafka client
//! (franz-go) refuses librdkafka's mock broker. Without a broker or the Collector
//! binary it says what is missing and exits 0, unless `PEERS_REQUIRED` is set.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tailsift::codec::TraceId;
use tailsift::demo::{self, Collector};
use tailsift::gen::{self, FeedOptions, GenConfig, Generator, Truth};

const PARTITIONS: i32 = 64;
const DECISION_WAIT: &str = "2s";
const SALT: &str = "peer-bench";

fn policies_yaml(indent: &str) -> String {
    [
        "- {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}".to_string(),
        "- {name: slow, type: latency, latency: {threshold_ms: 1000}}".to_string(),
        format!("- {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: 10, hash_salt: {SALT}}}}}"),
    ]
    .iter()
    .map(|l| format!("{indent}{l}\n"))
    .collect()
}

/// CPU seconds (user + system) and peak RSS bytes of process `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    ((ticks(11) + ticks(12)) / 100.0, hwm_kib * 1024)
}

/// The sum of every sample of the metric family `prefix` on a Prometheus page.
fn sum_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Run {
    name: String,
    consumed_s: f64,
    done_s: f64,
    cpu: f64,
    peak_rss: u64,
    records: usize,
    bytes: usize,
    kept: HashSet<TraceId>,
}

/// Runs `child` until `progress` (polled every 100 ms on its metrics port) says all
/// input is consumed (`.0`) and decided (`.1`), or 10 minutes pass; then stops it.
fn supervise(
    name: &str,
    mut child: Child,
    port: u16,
    path: &str,
    progress: impl Fn(&str) -> (bool, bool),
) -> (f64, f64, f64, u64) {
    let t0 = Instant::now();
    let mut consumed = None;
    let mut usage_at_end = (0.0, 0);
    while t0.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited early: {status}");
        }
        let page = scrape(port, path);
        let (all_in, all_decided) = progress(&page);
        if all_in && consumed.is_none() {
            consumed = Some(t0.elapsed().as_secs_f64());
        }
        if all_in && all_decided {
            usage_at_end = usage(child.id());
            break;
        }
    }
    let done = t0.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    (
        consumed.unwrap_or(done),
        done,
        usage_at_end.0,
        usage_at_end.1,
    )
}

impl Run {
    /// A finished peer's figures (`usage` from [`supervise`]) and what it wrote to
    /// `topic`.
    fn read(name: String, usage: (f64, f64, f64, u64), bootstrap: &str, topic: &str) -> Run {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (records, bytes, kept) = rt.block_on(async {
            let c = Collector::start(bootstrap, topic, 4).expect("collector");
            c.settle(Duration::from_secs(3), Duration::from_secs(60))
                .await;
            let records = c.records();
            let bytes = records.iter().map(|r| r.payload.len()).sum();
            let kept: HashSet<TraceId> = demo::traces_of(&records).into_keys().collect();
            (records.len(), bytes, kept)
        });
        let (consumed_s, done_s, cpu, peak_rss) = usage;
        Run {
            name,
            consumed_s,
            done_s,
            cpu,
            peak_rss,
            records,
            bytes,
            kept,
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test runners asking for names
    }
    let otelcol = std::env::var_os("PEERS_OTELCOL").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/tailsift/otelcol-peer")
        },
        PathBuf::from,
    );
    if !otelcol.exists() {
        let why = format!(
            "peer bench skipped: no Collector at {} (build it: benches/peers/build-otelcol.sh; needs Go)",
            otelcol.display()
        );
        assert!(std::env::var_os("PEERS_REQUIRED").is_none(), "{why}");
        println!("{why}");
        return;
    }
    let traces: usize = std::env::var("PEERS_TRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    let batch: usize = std::env::var("PEERS_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let run_id = std::process::id();
    let (input, ts_out, oc_out, oc_out2) = (
        format!("peers-in-{run_id}"),
        format!("peers-tailsift-{run_id}"),
        format!("peers-otelcol-{run_id}"),
        format!("peers-otelcol-shards-{run_id}"),
    );
    // The Collector's Kafka client (franz-go) cannot use librdkafka's mock broker
    // (it refuses the mock's ApiVersions answer): the comparison needs a real broker.
    let Ok(bootstrap) = std::env::var("PEERS_KAFKA") else {
        let why = "peer bench skipped: PEERS_KAFKA not set (the Collector's franz-go client refuses the embedded mock broker; start Apache Kafka with scripts/kafka.sh start)";
        assert!(std::env::var_os("PEERS_REQUIRED").is_none(), "{why}");
        println!("{why}");
        return;
    };
    rt.block_on(create_topics(
        &bootstrap,
        &[
            (&input, PARTITIONS),
            (&ts_out, 4),
            (&oc_out, 4),
            (&oc_out2, 4),
        ],
    ));
    rt.block_on(warm_up_group_coordinator(
        &bootstrap,
        &input,
        &format!("peers-warm-up-{run_id}"),
    ));
    let truths: Vec<Truth> = rt.block_on(async {
        let mut g = Generator::new(GenConfig {
            seed: 7,
            ..GenConfig::default()
        });
        let opts = FeedOptions {
            traces,
            rate: 0,
            compression: "lz4".into(),
            batch_spans: batch,
        };
        gen::feed(&bootstrap, &input, &mut g, &opts, |_| {})
            .await
            .expect("feed")
            .0
    });
    let spans: usize = truths.iter().map(|t| t.spans).sum();
    println!(
        "input: {traces} traces, {spans} spans in messages of >= {batch} spans, {PARTITIONS} partitions, on Apache Kafka at {bootstrap}"
    );
    let dir = std::env::temp_dir().join(format!("tailsift-peers-{run_id}"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut runs = Vec::new();

    // tailsift.
    let port = free_port();
    let yaml = format!(
        "kafka:\n  brokers: \"{bootstrap}\"\n  group_id: peers-tailsift-{run_id}\n  input_topics: [{input}]\n  output_topic: {ts_out}\n  dead_letter_topic: {ts_out}-dead\nbuffer:\n  decision_wait: {DECISION_WAIT}\ntelemetry:\n  listen: \"127.0.0.1:{port}\"\nannotate: false\npolicies:\n{}",
        policies_yaml("  ")
    );
    let cfg = dir.join("tailsift.yaml");
    std::fs::write(&cfg, yaml).expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "warn,librdkafka=off,rdkafka::client=off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tailsift starts");
    let total = spans as f64;
    let (consumed_s, done_s, cpu, peak_rss) = supervise("tailsift", child, port, "/metrics", |m| {
        let all_in = demo::metric(m, "tailsift_spans_received_total") >= total;
        (
            all_in,
            all_in && demo::metric(m, "tailsift_buffer_traces") == 0.0,
        )
    });
    runs.push(Run::read(
        "tailsift".into(),
        (consumed_s, done_s, cpu, peak_rss),
        &bootstrap,
        &ts_out,
    ));

    // The Collector, with its default shards and with one per core.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for (name, out, shards) in [
        ("otelcol".to_string(), &oc_out, None),
        (format!("otelcol num_shards={cores}"), &oc_out2, Some(cores)),
    ] {
        let port = free_port();
        let shards = shards.map_or(String::new(), |n| format!("    num_shards: {n}\n"));
        let yaml = format!(
            "receivers:\n  kafka:\n    brokers: [\"{bootstrap}\"]\n    group_id: peers-{}-{run_id}\n    initial_offset: earliest\n    traces: {{topics: [{input}], encoding: otlp_proto}}\nprocessors:\n  tail_sampling:\n    decision_wait: {DECISION_WAIT}\n    num_traces: 200000\n{shards}    policies:\n{}exporters:\n  kafka:\n    brokers: [\"{bootstrap}\"]\n    partition_traces_by_id: true\n    traces: {{topic: {out}, encoding: otlp_proto}}\nservice:\n  telemetry:\n    logs: {{level: warn}}\n    metrics:\n      level: detailed\n      readers:\n        - pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {port}}}}}}}\n  pipelines:\n    traces: {{receivers: [kafka], processors: [tail_sampling], exporters: [kafka]}}\n",
            out.replace(&format!("-{run_id}"), ""),
            policies_yaml("      ")
        );
        let cfg = dir.join(format!("{}.yaml", out));
        std::fs::write(&cfg, yaml).expect("config");
        let log = std::fs::File::create(dir.join(format!("{out}.log"))).expect("log");
        let child = Command::new(&otelcol)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the Collector starts");
        let (consumed_s, done_s, cpu, peak_rss) = supervise(&name, child, port, "/metrics", |m| {
            let all_in = sum_of(m, "otelcol_receiver_accepted_spans") >= total;
            // Decided traces stay "on memory" (its decision cache): count decisions.
            let decided = sum_of(
                m,
                "otelcol_processor_tail_sampling_global_count_traces_sampled",
            );
            (all_in, all_in && decided >= truths.len() as f64)
        });
        runs.push(Run::read(
            name,
            (consumed_s, done_s, cpu, peak_rss),
            &bootstrap,
            out,
        ));
    }

    let must: HashSet<TraceId> = truths
        .iter()
        .filter(|t| t.error || t.slow)
        .map(|t| t.trace_id)
        .collect();
    println!(
        "\n| peer | spans/s (consume) | s to consume / to decide all | CPU us/span | peak RSS MiB | records out | MiB out | kept traces | error+slow kept of {} |",
        must.len()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.2} / {:.2} | {:.2} | {:.0} | {} | {:.1} | {} | {} |",
            r.name,
            total / r.consumed_s.max(1e-9),
            r.consumed_s,
            r.done_s,
            r.cpu * 1e6 / total,
            r.peak_rss as f64 / (1 << 20) as f64,
            r.records,
            r.bytes as f64 / (1 << 20) as f64,
            r.kept.len(),
            r.kept.intersection(&must).count()
        );
    }
    let ts = &runs[0].kept;
    for oc in &runs[1..] {
        let both = ts.intersection(&oc.kept).count();
        println!(
            "agreement tailsift vs {}: {both} kept by both, {} by tailsift only, {} by the Collector only",
            oc.name,
            ts.len() - both,
            oc.kept.len() - both
        );
    }
    if std::env::var_os("PEERS_REQUIRED").is_some() {
        // CI: tailsift keeps every error and slow trace, and every trace the
        // Collector keeps (the same policies, the same probabilistic hash). The
        // Collector may keep fewer: it decides on the wall clock, so a trace whose
        // later spans it reads more than decision_wait after its first is judged on
        // part of its spans (README, Benchmarks).
        assert!(must.is_subset(ts), "tailsift lost error or slow traces");
        for r in &runs[1..] {
            assert!(
                r.kept.is_subset(ts),
                "{} kept {} traces tailsift did not",
                r.name,
                r.kept.difference(ts).count()
            );
        }
    }
    println!(
        "summary: tailsift {:.0} spans/s, otelcol {:.0} spans/s, ratio {:.2}x",
        total / runs[0].consumed_s.max(1e-9),
        total / runs[1].consumed_s.max(1e-9),
        runs[1].consumed_s / runs[0].consumed_s.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Joins a throwaway group on `topic` and waits (60 s at most) for its assignment, so
/// that the broker's `__consumer_offsets` exists before any timed run. On a freshly
/// started broker the first group to join waits for its creation (tailsift, run
/// first, took 3.9 s to consume instead of 0.8 s), and whichever peer ran first paid
/// for it. It leaves as tailsift's stages do (`shutdown::leave_group`).
async fn warm_up_group_coordinator(bootstrap: &str, topic: &str, group: &str) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("warm-up consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let assigned = tokio::time::timeout(Duration::from_secs(60), async {
        while consumer.assignment().map_or(0, |a| a.count()) == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
    })
    .await;
    assert!(
        assigned.is_ok(),
        "the warm-up group got no partitions within 60 s"
    );
    tailsift::shutdown::leave_group(&consumer, false, tailsift::shutdown::LEAVE_TIMEOUT).await;
}

async fn create_topics(bootstrap: &str, topics: &[(&String, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(-1)))
        .collect();
    for r in admin
        .create_topics(new.iter(), &AdminOptions::new())
        .await
        .expect("create topics")
    {
        r.expect("topic created");
    }
}
