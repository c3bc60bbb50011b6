//! Read-back: how long a partition's new owner waits, and how much memory it takes,
//! to read its decisions back, as the decisions topic's history grows.
//!
//! Needs Apache Kafka (offsets for times; the embedded broker cannot look offsets up
//! by time and reads whole partitions): `READBACK_KAFKA=$(scripts/kafka.sh start)
//! cargo bench --bench readback` (env `READBACK_RECORDS`, default
//! `100000,1000000`: decisions in the partition, written over the last 24 hours;
//! skipped without `READBACK_KAFKA`). For each size, the sampler runs as its own
//! process on a one-partition input with `kafka.decisions_window` 10 minutes (the
//! default: what is read is the last 10 minutes and a minute of margin) and then
//! 48 hours (the whole history, as before the read-back was bounded by time), and the
//! bench reports the time from its start to its log line "Decisions read back", how
//! many it read, and its peak RSS (VmHWM).

mod proc;
use proc::status_kib;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tailsift::flow::DecisionRecord;

const BIN: &str = env!("CARGO_BIN_EXE_tailsift");
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Creates the topics and fills the decisions partition with `n` dropped-trace
/// records stamped evenly over the last day, and the input with one record.
fn prepare(bootstrap: &str, name: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let names: Vec<String> = ["in", "out", "dlq", "decisions"]
        .iter()
        .map(|t| format!("{name}-{t}"))
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| {
            let topic = NewTopic::new(t, 1, TopicReplication::Fixed(1));
            if t.ends_with("-decisions") {
                topic
                    .set("cleanup.policy", "compact,delete")
                    .set("retention.ms", "172800000")
            } else {
                topic
            }
        })
        .collect();
    for r in rt
        .block_on(admin.create_topics(topics.iter(), &AdminOptions::new()))
        .expect("topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("topic {t}: {e}"));
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("compression.codec", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let topic = format!("{name}-decisions");
    let start = now_ms() - DAY_MS;
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
        let at = start + (DAY_MS as f64 * i as f64 / n as f64) as i64;
        let record = DecisionRecord {
            trace_id: id.to_vec(),
            decided_unix_nano: at as u64 * 1_000_000,
            input_topic: format!("{name}-in"),
            first_offset: i as i64,
            last_offset: i as i64,
            span_count: 12,
            ..DecisionRecord::default()
        }
        .encode_to_vec();
        loop {
            let r = BaseRecord::to(&topic)
                .key(&id[..])
                .payload(&record)
                .partition(0)
                .timestamp(at);
            match producer.send(r) {
                Ok(()) => break,
                Err(_) => producer.poll(Duration::from_millis(10)),
            }
        }
    }
    let input = format!("{name}-in");
    let r = BaseRecord::<[u8], [u8]>::to(&input)
        .key(b"0af7651916cd43dd8448eb211c80319c")
        .payload(b"not a trace: dead-lettered");
    producer.send(r).map_err(|(e, _)| e).expect("input record");
    producer.flush(Duration::from_secs(120)).expect("flushed");
}

/// Runs the sampler until it logs that decisions were read back; returns the
/// seconds that took, the decisions read and the peak RSS in MiB.
fn resume(bootstrap: &str, name: &str, window: &str) -> (f64, u64, u64) {
    let dir = std::env::temp_dir().join(format!("tailsift-readback-{name}-{window}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("tailsift.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: \"{bootstrap}\"\n  group_id: {name}-{window}\n  input_topics: [{name}-in]\n  output_topic: {name}-out\n  dead_letter_topic: {name}-dlq\n  decisions_topic: {name}-decisions\n  decisions_window: {window}\ntelemetry:\n  listen: \"\"\npolicies:\n  - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n"
        ),
    )
    .expect("config");
    // A new owner of a partition someone consumed: its offset committed at the end.
    let group: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{name}-{window}"))
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&format!("{name}-in"), 0, rdkafka::Offset::Offset(1))
        .expect("offset");
    rdkafka::consumer::Consumer::commit(&group, &tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("committed");
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info,librdkafka=off,rdkafka=off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tailsift starts");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let mut read = 0;
    let mut took = f64::NAN;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("Decisions read back") {
            took = started.elapsed().as_secs_f64();
            read = line
                .split("decisions=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let peak = status_kib(pid, "VmHWM:") / 1024;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    (took, read, peak)
}

fn main() {
    let Ok(bootstrap) = std::env::var("READBACK_KAFKA") else {
        eprintln!("readback: READBACK_KAFKA not set (an Apache Kafka bootstrap); skipped");
        return;
    };
    let sizes: Vec<usize> = std::env::var("READBACK_RECORDS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect();
    println!("decisions read back by a partition's new owner (Apache Kafka at {bootstrap}):");
    println!(
        "{:>12}  {:>8}  {:>10}  {:>10}  {:>10}",
        "in topic", "window", "read", "seconds", "peak RSS"
    );
    for n in sizes {
        let name = format!("readback-{n}-{}", std::process::id());
        prepare(&bootstrap, &name, n);
        for window in ["10m", "48h"] {
            let (took, read, peak) = resume(&bootstrap, &name, window);
            println!("{n:>12}  {window:>8}  {read:>10}  {took:>10.2}  {peak:>7} MiB");
        }
    }
}
