//! Shared harness: an embedded broker per test, tailsift instances in-process, and
//! readers of the output topic. Everything goes through TCP to the broker.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tailsift::app::{self, Running};
use tailsift::codec::TraceId;
use tailsift::config::Config;
use tailsift::demo::{Collector, EmbeddedBroker, OutputTrace};
use tailsift::gen::{self, Truth};
use tailsift::shutdown::ShutdownTrigger;

pub const INPUT: &str = "spans";
pub const OUTPUT: &str = "sampled";
pub const DLQ: &str = "dead-letters";

pub struct Harness {
    pub broker: EmbeddedBroker,
    pub bootstrap: String,
    pub input_partitions: i32,
    pub output_partitions: i32,
}

impl Harness {
    pub fn new(input_partitions: i32, output_partitions: i32) -> Harness {
        let broker = EmbeddedBroker::start(1).expect("embedded broker starts");
        broker
            .create_topic(INPUT, input_partitions)
            .expect("input topic");
        broker
            .create_topic(OUTPUT, output_partitions)
            .expect("output topic");
        broker.create_topic(DLQ, 1).expect("dead-letter topic");
        let bootstrap = broker.bootstrap_servers();
        Harness {
            broker,
            bootstrap,
            input_partitions,
            output_partitions,
        }
    }

    /// A config for this broker with the given `policies:` YAML block and waits.
    pub fn config(&self, policies: &str, decision_wait: &str, after_root: Option<&str>) -> Config {
        let yaml = self.config_yaml(policies, decision_wait, after_root);
        Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"))
    }

    /// [`Harness::config`] as the YAML text a `tailsift run -c` child process reads.
    pub fn config_yaml(
        &self,
        policies: &str,
        decision_wait: &str,
        after_root: Option<&str>,
    ) -> String {
        let after_root = after_root.map_or(String::new(), |d| {
            format!("  decision_wait_after_root_received: {d}\n")
        });
        format!(
            "kafka:\n  brokers: \"{}\"\n  group_id: test-group\n  input_topics: [{INPUT}]\n  output_topic: {OUTPUT}\n  dead_letter_topic: {DLQ}\n  commit_interval: 200ms\n  consumer: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}\nbuffer:\n  decision_wait: {decision_wait}\n{after_root}  shards: 2\ntelemetry:\n  listen: \"127.0.0.1:0\"\npolicies:\n{policies}",
            self.bootstrap
        )
    }

    pub fn collector(&self) -> Collector {
        Collector::start(&self.bootstrap, OUTPUT, self.output_partitions).expect("collector")
    }

    pub fn dead_letters(&self) -> Collector {
        Collector::start(&self.bootstrap, DLQ, 1).expect("collector")
    }

    pub fn producer(&self, compression: &str) -> FutureProducer {
        gen::producer(&self.bootstrap, compression).expect("producer")
    }

    /// Fails the test if the broker deleted input (its per-partition retention), which
    /// would look like a loss of ours.
    pub fn assert_no_broker_truncation(&self) {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("consumer");
        for p in 0..self.input_partitions {
            let (low, _high) = c
                .fetch_watermarks(INPUT, p, Duration::from_secs(5))
                .expect("watermarks");
            assert_eq!(
                low, 0,
                "the broker truncated partition {p}: test too large for its retention"
            );
        }
    }
}

/// A running tailsift instance.
pub struct Instance {
    pub trigger: ShutdownTrigger,
    pub running: Running,
}

impl Instance {
    pub async fn start(cfg: &Config) -> Instance {
        let trigger = ShutdownTrigger::new();
        let running = app::start(cfg, trigger.subscribe())
            .await
            .expect("tailsift starts");
        Instance { trigger, running }
    }

    pub async fn wait_assigned(&self) {
        let ok = wait_until(Duration::from_secs(30), || {
            self.running.health.assigned() > 0
        })
        .await;
        assert!(ok, "no partitions assigned within 30 s");
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.running.wait())
            .await
            .expect("tailsift stops within 60 s");
    }
}

/// GET `path` from a telemetry server: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path)
}

/// An HTTP/1.1 request with `method`: its status (0 if nothing answered) and body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    if s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return (0, String::new());
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The error and slow traces of `truths` that are not in `got` with every span.
pub fn missing_kept(truths: &[Truth], got: &HashMap<TraceId, OutputTrace>) -> Vec<TraceId> {
    truths
        .iter()
        .filter(|t| t.error || t.slow)
        .filter(|t| {
            got.get(&t.trace_id)
                .is_none_or(|o| o.distinct_spans != t.spans)
        })
        .map(|t| t.trace_id)
        .collect()
}

/// At-least-once output: every trace out was asked for by a policy (error or slow),
/// and each of its records is the whole trace, never a fragment (a trace may come
/// out twice across a handover).
pub fn assert_whole_records(truths: &[Truth], got: &HashMap<TraceId, OutputTrace>) {
    let by_id: HashMap<TraceId, &Truth> = truths.iter().map(|t| (t.trace_id, t)).collect();
    for (id, o) in got {
        let t = by_id
            .get(id)
            .unwrap_or_else(|| panic!("unknown trace {id}"));
        assert!(t.error || t.slow, "trace {id} kept without a policy asking");
        assert_eq!(
            o.spans,
            o.records * t.spans,
            "trace {id}: a record holds a fragment"
        );
    }
}

pub async fn wait_until(max: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= max {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends generated traces, as fast as possible or at `rate` traces/s.
pub async fn feed(
    h: &Harness,
    traces: usize,
    rate: u64,
    seed: u64,
    compression: &str,
) -> Vec<Truth> {
    feed_to(&h.bootstrap, INPUT, traces, rate, seed, compression).await
}

/// Feeds generated traces (lz4) in the background at `rate` traces/s; the handle
/// yields their ground truth.
pub fn traffic(
    h: &Harness,
    traces: usize,
    rate: u64,
    seed: u64,
) -> tokio::task::JoinHandle<Vec<Truth>> {
    traffic_to(&h.bootstrap, INPUT, traces, rate, seed)
}

/// [`traffic`] to `topic` of the broker at `bootstrap`.
pub fn traffic_to(
    bootstrap: &str,
    topic: &str,
    traces: usize,
    rate: u64,
    seed: u64,
) -> tokio::task::JoinHandle<Vec<Truth>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::spawn(async move { feed_to(&bootstrap, &topic, traces, rate, seed, "lz4").await })
}

async fn feed_to(
    bootstrap: &str,
    topic: &str,
    traces: usize,
    rate: u64,
    seed: u64,
    compression: &str,
) -> Vec<Truth> {
    let mut g = gen::Generator::new(gen::GenConfig {
        seed,
        ..gen::GenConfig::default()
    });
    let opts = gen::FeedOptions {
        traces,
        rate,
        compression: compression.into(),
        batch_spans: 0,
    };
    gen::feed(bootstrap, topic, &mut g, &opts, |_| {})
        .await
        .expect("feed")
        .0
}

/// Feeds generated traces in the background at `rate` traces/s, each trace's messages
/// spread evenly over `spread` with its root's message last (so the root span, which
/// the latency policy reads, and an error span anywhere in the trace can both come
/// late), each stamped (CreateTime) when sent. The handle yields the ground truth.
pub fn spread_traffic(
    bootstrap: &str,
    traces: usize,
    rate: u64,
    seed: u64,
    spread: Duration,
) -> tokio::task::JoinHandle<Vec<Truth>> {
    spread_traffic_to(bootstrap, INPUT, traces, rate, seed, spread)
}

/// [`spread_traffic`] to `topic`.
pub fn spread_traffic_to(
    bootstrap: &str,
    topic: &str,
    traces: usize,
    rate: u64,
    seed: u64,
    spread: Duration,
) -> tokio::task::JoinHandle<Vec<Truth>> {
    use std::cmp::Reverse;
    let topic = topic.to_string();
    use std::collections::BinaryHeap;
    let bootstrap = bootstrap.to_string();
    tokio::spawn(async move {
        let producer = gen::producer(&bootstrap, "lz4").expect("producer");
        let mut g = gen::Generator::new(gen::GenConfig {
            seed,
            ..gen::GenConfig::default()
        });
        let start = tokio::time::Instant::now();
        let mut truths = Vec::with_capacity(traces);
        let mut deliveries = Vec::new();
        // (when, sequence) -> (key, payload)
        let mut pending: BinaryHeap<Reverse<(tokio::time::Instant, u64)>> = BinaryHeap::new();
        let mut payloads: HashMap<u64, (String, Vec<u8>)> = HashMap::new();
        let mut seq = 0u64;
        let mut next_trace = 0usize;
        loop {
            let trace_due = (next_trace < traces)
                .then(|| start + Duration::from_secs_f64(next_trace as f64 / rate as f64));
            let send_due = pending.peek().map(|Reverse((at, _))| *at);
            let wake = match (trace_due, send_due) {
                (None, None) => break,
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
            };
            tokio::time::sleep_until(wake).await;
            if trace_due.is_some_and(|t| t <= tokio::time::Instant::now()) {
                let t = g.next_trace(gen::now_ns());
                let key = t.truth.trace_id.to_hex();
                let n = t.messages.len();
                let now = tokio::time::Instant::now();
                for (k, m) in t.messages.into_iter().rev().enumerate() {
                    let at = if n > 1 {
                        now + spread.mul_f64(k as f64 / (n - 1) as f64)
                    } else {
                        now
                    };
                    pending.push(Reverse((at, seq)));
                    payloads.insert(seq, (key.clone(), m));
                    seq += 1;
                }
                truths.push(t.truth);
                next_trace += 1;
            }
            while let Some(Reverse((at, s))) = pending.peek().copied() {
                if at > tokio::time::Instant::now() {
                    break;
                }
                pending.pop();
                let (key, m) = payloads.remove(&s).expect("scheduled payload");
                // Each delivery is checked: input the producer failed to deliver must
                // not pass for the sampler's loss.
                loop {
                    let record = rdkafka::producer::FutureRecord::to(&topic)
                        .key(key.as_bytes())
                        .payload(&m[..]);
                    match producer.send_result(record) {
                        Ok(d) => {
                            deliveries.push(d);
                            break;
                        }
                        Err((e, _))
                            if e.rdkafka_error_code()
                                == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                        {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err((e, _)) => panic!("the feeder cannot enqueue: {e}"),
                    }
                }
            }
        }
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            p.flush(Duration::from_secs(60))
        })
        .await
        .expect("flush task")
        .expect("flushed");
        let total = deliveries.len();
        let mut failed = Vec::new();
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failed.push(e.to_string()),
                Err(_) => failed.push("delivery cancelled".into()),
            }
        }
        assert!(
            failed.is_empty(),
            "the feeder's producer failed to deliver {} of {total} input messages (first: {:?}): the input is short, not the sampler's output",
            failed.len(),
            failed.first()
        );
        truths
    })
}

/// Every input partition's committed offset for the test group, against its end:
/// `(partition, committed, end)` of those not committed to their end.
pub fn uncommitted(h: &Harness) -> Vec<(i32, i64, i64)> {
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &h.bootstrap)
        .set("group.id", "test-group")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..h.input_partitions {
        tpl.add_partition(INPUT, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(10)) else {
        return vec![(-1, -1, -1)];
    };
    (0..h.input_partitions)
        .filter_map(|p| {
            let (_, high) = c
                .fetch_watermarks(INPUT, p, Duration::from_secs(5))
                .unwrap_or((0, -1));
            let at = match committed.find_partition(INPUT, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            (at != high).then_some((p, at, high))
        })
        .collect()
}

/// Exactly-once output of whole traces: every error and slow trace out with all its
/// spans, in one record, once; nothing else out but what a policy asked for.
pub fn assert_kept_whole_once(truths: &[Truth], got: &HashMap<TraceId, OutputTrace>, what: &str) {
    let missing = missing_kept(truths, got);
    assert!(
        missing.is_empty(),
        "{what}: {} of {} error/slow traces lost or incomplete: {missing:?}",
        missing.len(),
        truths.iter().filter(|t| t.error || t.slow).count()
    );
    assert_whole_records(truths, got);
    let twice: Vec<_> = got
        .iter()
        .filter(|(_, o)| o.records != 1 || o.spans != o.distinct_spans)
        .map(|(id, o)| (*id, o.records))
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: {} traces written out more than once (or in pieces): {twice:?}",
        twice.len()
    );
}

/// Sends a signal to a child process with `kill`.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    let ok = Command::new("kill").args([sig, &pid]).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
}

/// The sum of the series of metric `name` carrying every one of `labels`, from the
/// `/metrics` served at `addr` (0 if it does not answer).
pub fn labelled_metric_at(addr: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (code, text) = http_get(addr, "/metrics");
    if code != 200 {
        return 0.0;
    }
    tailsift::demo::labelled_values(&text, name, labels).sum()
}

/// The largest value of a (labelled) gauge in a sampler's `/metrics`.
pub fn max_metric_of(s: &Sampler, name: &str) -> f64 {
    let (code, text) = http_get(s.telemetry, "/metrics");
    if code != 200 {
        return 0.0;
    }
    tailsift::demo::metric_values(&text, name).fold(0.0, f64::max)
}

/// Reads a length-prefixed record file from tests/data (made by tests/data/make_otel_sdk_traces.py).
pub fn testdata(name: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        out.push(bytes[i + 4..i + 4 + len].to_vec());
        i += 4 + len;
    }
    out
}

/// The OTel SDK ground truth: trace id -> (spans, error, root_ms).
pub fn testdata_truth() -> HashMap<TraceId, (usize, bool, u64)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/otel-sdk-truth.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("truth is JSON");
    v.as_object()
        .expect("truth is an object")
        .iter()
        .map(|(id, t)| {
            (
                TraceId::from_hex(id).expect("hex trace id"),
                (
                    t["spans"].as_u64().expect("spans") as usize,
                    t["error"].as_bool().expect("error"),
                    t["root_ms"].as_u64().expect("root_ms"),
                ),
            )
        })
        .collect()
}

pub const ERRORS_SLOW_AND: &str = "  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n  - {name: slow, type: latency, latency: {threshold_ms: 1000}}\n";

/// A child process and where it serves `/readyz`.
pub struct Sampler {
    pub child: Child,
    pub telemetry: SocketAddr,
}

/// `tailsift run -c` as a child process with config `yaml`, its log appended to `log`.
pub fn spawn(dir: &Path, yaml: &str, log: &Path) -> Sampler {
    spawn_command(dir, yaml, log, "run")
}

/// `tailsift <command> -c` (`run` or `route`) as a child process with config `yaml`,
/// its log appended to `log`.
#[allow(dead_code)]
pub fn spawn_command(dir: &Path, yaml: &str, log: &Path, command: &str) -> Sampler {
    // A free port for its telemetry, so the test can see when it is ready.
    let telemetry = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let config = dir.join(format!("tailsift-{}.yaml", telemetry.port()));
    let yaml = yaml.replace("127.0.0.1:0", &telemetry.to_string());
    std::fs::write(&config, yaml).expect("config written");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args([command, "-c"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("TAILSIFT_TEST_LOG")
                // Exactly-once mode logs each kept trace's delivery at trace level,
                // and reads of the decisions topic at debug: what a failed run's
                // report quotes about the traces it lost or wrote twice.
                .unwrap_or_else(|_| {
                    "info,librdkafka=off,rdkafka::client=off,tailsift::sink::txn=trace,tailsift::source::decisions=debug".into()
                }),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tailsift starts");
    Sampler { child, telemetry }
}

/// The counter `name` from the sampler's `/metrics`, 0 if it is not up.
pub fn metric_of(s: &Sampler, name: &str) -> f64 {
    let (code, text) = http_get(s.telemetry, "/metrics");
    if code == 200 {
        tailsift::demo::metric(&text, name)
    } else {
        0.0
    }
}

/// Sends `traces` generated traces at `rate` per second as unkeyed batches: the
/// n-th service message of the whole stream goes into the batch of partition
/// `n % partitions`, sent once it holds 8 messages. So a trace's services land in
/// several partitions, as with the Collector's batch processor and kafka exporter.
pub async fn feed_unkeyed(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    traces: usize,
    rate: u64,
    seed: u64,
) -> Vec<Truth> {
    let producer: FutureProducer = gen::producer(bootstrap, "lz4").expect("producer");
    let mut g = gen::Generator::new(gen::GenConfig {
        seed,
        ..gen::GenConfig::default()
    });
    let mut batches: Vec<(Vec<u8>, usize)> = (0..partitions).map(|_| (Vec::new(), 0)).collect();
    let mut truths = Vec::with_capacity(traces);
    let start = tokio::time::Instant::now();
    let mut n = 0usize;
    for i in 0..traces {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        let t = g.next_trace(gen::now_ns());
        for m in &t.messages {
            let p = (n % partitions as usize) as i32;
            n += 1;
            let b = &mut batches[p as usize];
            // Concatenated protobuf messages merge: their resource_spans append.
            b.0.extend_from_slice(m);
            b.1 += 1;
            if b.1 >= 8 {
                send_to_partition(&producer, topic, p, &b.0).await;
                b.0.clear();
                b.1 = 0;
            }
        }
        truths.push(t.truth);
    }
    for (p, b) in batches.iter().enumerate() {
        if b.1 > 0 {
            send_to_partition(&producer, topic, p as i32, &b.0).await;
        }
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
        .await
        .expect("flush task")
        .expect("flushed");
    truths
}

async fn send_to_partition(producer: &FutureProducer, topic: &str, partition: i32, payload: &[u8]) {
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("input sent");
}
