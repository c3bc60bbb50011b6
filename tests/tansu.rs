//! Against tansu, an independent Kafka-compatible broker written in Rust, instead of
//! librdkafka's mock cluster: tailsift creates the topics it writes (tansu creates
//! none on first use), and survives tansu being killed with SIGKILL and restarted on
//! its SQLite data mid-stream. Opt-in, as it needs tansu's binary (not a dependency:
//! `cargo install tansu --locked --features dynostore,libsql`, ~10 min on 2 cores):
//!
//! ```text
//! TANSU_BIN=$(which tansu) cargo test --test tansu -- --ignored
//! ```

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tailsift::demo::Collector;
use tailsift::gen;
use tailsift::telemetry::names;

const PARTITIONS: i32 = 4;

fn tansu_bin() -> PathBuf {
    PathBuf::from(std::env::var("TANSU_BIN").expect(
        "set TANSU_BIN to a tansu binary (cargo install tansu --locked --features dynostore,libsql)",
    ))
}

/// `tansu broker` on `port`, keeping its data in `dir`/tansu.db.
fn start_tansu(port: u16, dir: &Path, log: &Path) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // tansu reads the path of a sqlite:// URL relative to its working directory.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tansu starts")
}

/// Whether the broker answers metadata requests.
fn answers(bootstrap: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    c.fetch_metadata(None, Duration::from_secs(2)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TANSU_BIN; see the file's docs"]
async fn on_tansu_topics_are_created_and_a_broker_crash_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("tailsift-tansu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("tansu.log");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut tansu = start_tansu(port, &dir, &log);
    assert!(
        wait_until(Duration::from_secs(30), || answers(&bootstrap)).await,
        "tansu did not come up; log: {}",
        log.display()
    );
    // The input topic, as the OTel Collector's exporter would find it.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(INPUT, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create input topic");

    let yaml = format!(
        "kafka:\n  brokers: \"{bootstrap}\"\n  group_id: tansu-test\n  input_topics: [{INPUT}]\n  output_topic: {OUTPUT}\n  dead_letter_topic: {DLQ}\n  decisions_topic: decisions\n  create_missing_topics: true\n  replication_factor: 1\n  commit_interval: 200ms\n  consumer: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}\nbuffer:\n  decision_wait: 2s\n  shards: 2\ntelemetry:\n  listen: \"127.0.0.1:0\"\npolicies:\n{ERRORS_SLOW_AND}"
    );
    let sampler_log = dir.join("tailsift.log");
    let mut sampler = spawn(&dir, &yaml, &sampler_log);
    let ready = wait_until(Duration::from_secs(60), || {
        // Ready, and holding partitions (a member with none is ready too).
        http_get(sampler.telemetry, "/readyz").0 == 200
            && max_metric_of(&sampler, "tailsift_assigned_partitions") > 0.0
    })
    .await;
    assert!(
        ready,
        "tailsift not ready on tansu; log: {}",
        sampler_log.display()
    );
    for topic in [OUTPUT, DLQ, "decisions"] {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("client");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        assert_eq!(
            md.topics()[0].partitions().len() as i32,
            PARTITIONS,
            "{topic} created with the input's partitions"
        );
    }
    let out = Collector::start(&bootstrap, OUTPUT, PARTITIONS).expect("collector");

    // Traffic for ~15 s; tansu is killed with SIGKILL in the middle and restarted on
    // its data two seconds later.
    let feed = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move {
            let mut g = gen::Generator::new(gen::GenConfig {
                seed: 77,
                ..gen::GenConfig::default()
            });
            let opts = gen::FeedOptions {
                traces: 1500,
                rate: 100,
                compression: "lz4".into(),
                batch_spans: 0,
            };
            gen::feed(&bootstrap, INPUT, &mut g, &opts, |_| {})
                .await
                .expect("feed")
                .0
        })
    };
    let reading = wait_until(Duration::from_secs(30), || {
        metric_of(&sampler, names::SPANS_RECEIVED) > 0.0
    })
    .await;
    assert!(reading, "tailsift read nothing");
    tokio::time::sleep(Duration::from_secs(5)).await;
    tansu.kill().expect("SIGKILL tansu");
    tansu.wait().expect("reaped");
    let noticed = wait_until(Duration::from_secs(30), || {
        http_get(sampler.telemetry, "/readyz").0 == 503
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut tansu = start_tansu(port, &dir, &log);
    let back = wait_until(Duration::from_secs(60), || {
        // Ready, and holding partitions (a member with none is ready too).
        http_get(sampler.telemetry, "/readyz").0 == 200
            && max_metric_of(&sampler, "tailsift_assigned_partitions") > 0.0
    })
    .await;
    let truths = feed.await.expect("traffic");
    let done = wait_until(Duration::from_secs(120), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    let missing = missing_kept(&truths, &out.traces());
    let _ = sampler.child.kill();
    let _ = sampler.child.wait();
    let _ = tansu.kill();
    let _ = tansu.wait();
    assert!(noticed, "/readyz never reported the broker gone");
    assert!(
        back,
        "tailsift did not recover without a restart; log: {}",
        sampler_log.display()
    );
    assert!(
        done && missing.is_empty(),
        "{} error/slow traces lost or incomplete across the tansu crash: {missing:?}; logs in {}",
        missing.len(),
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
