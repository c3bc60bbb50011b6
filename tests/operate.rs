//! What an operator sees: metrics, health, and config errors from the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tailsift::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let h = Harness::new(4, 2);
    let cfg = h.config(ERRORS_SLOW_AND, "500ms", None);
    let sampler = Instance::start(&cfg).await;
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    sampler.wait_assigned().await;
    let truths = feed(&h, 200, 0, 3, "lz4").await;
    let spans: usize = truths.iter().map(|t| t.spans).sum();
    let healthy = wait_until(Duration::from_secs(15), || {
        sampler.running.health.kafka_up()
    })
    .await;
    assert!(healthy, "kafka never reported up");
    assert_eq!(http_get(addr, "/healthz").0, 200);
    let (code, body) = http_get(addr, "/readyz");
    assert_eq!(code, 200, "{body}");
    let names = [
        "tailsift_messages_received_total",
        "tailsift_traces_decided_total{",
        "tailsift_policy_evaluations_total{",
        "tailsift_buffer_bytes",
        "tailsift_decision_latency_seconds_bucket",
        "tailsift_spans_produced_total",
        "tailsift_consumer_lag_messages{",
        "tailsift_kafka_up",
    ];
    // Lag comes from librdkafka statistics, published every second.
    let seen = wait_until(Duration::from_secs(20), || {
        let (_, m) = http_get(addr, "/metrics");
        tailsift::demo::metric(&m, "tailsift_spans_received_total") >= spans as f64
            && tailsift::demo::metric(&m, "tailsift_buffer_traces") == 0.0
            && names.iter().all(|n| m.contains(n))
    })
    .await;
    let (_, m) = http_get(addr, "/metrics");
    assert!(
        seen,
        "metrics never showed {spans} spans received and every metric:\n{m}"
    );
    assert_eq!(http_get(addr, "/nope").0, 404);
    sampler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_reported_not_fatal() {
    // Nothing listens on port 1: the consumer retries, the process stays up, and the
    // health endpoints say why it is not working.
    let yaml = "kafka:\n  brokers: \"127.0.0.1:1\"\n  input_topics: [in]\n  output_topic: out\ntelemetry:\n  listen: \"127.0.0.1:0\"\npolicies:\n  - {name: all, type: always_sample}\n";
    let cfg = Config::from_yaml(yaml).expect("valid");
    let sampler = Instance::start(&cfg).await;
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!(code, 503);
    assert!(body.contains("kafka"), "{body}");
    assert_eq!(http_get(addr, "/readyz").0, 503);
    sampler.stop().await;
}

#[test]
fn check_rejects_a_bad_config_naming_field_value_and_expectation() {
    let dir = std::env::temp_dir().join(format!("tailsift-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "kafka: {brokers: b:9092, input_topics: [in], output_topic: out}\npolicies:\n  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 250}}\n",
    )
    .expect("write");
    let run = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .expect("run tailsift");
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("`policies[0].probabilistic.sampling_percentage` = 250: expected a percentage from 0 to 100"),
        "{err}"
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tailsift.example.yaml");
    let ok = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["check", "-c", example])
        .output()
        .expect("run tailsift");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        text.contains("errors [status_code]") && text.contains("baseline [probabilistic]"),
        "{text}"
    );
    // The tree: each policy's block with defaults filled in, sub-policies below.
    assert!(
        text.contains("  - slow [latency] {\"threshold_ms\":1000,\"upper_threshold_ms\":0}")
            && text.contains("  - failed-checkouts [and] all of:\n      - errors [status_code]"),
        "{text}"
    );
}

#[test]
fn readme_lists_every_metric() {
    let names = include_str!("../src/telemetry/names.rs");
    let readme = include_str!("../README.md");
    let metrics: Vec<&str> = names
        .split('"')
        .filter(|s| s.starts_with("tailsift_"))
        .collect();
    assert!(metrics.len() > 20, "found only {metrics:?}");
    for name in metrics {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list {name}"
        );
    }
}

#[test]
fn simulate_reports_what_the_policies_would_keep_of_recorded_traffic() {
    let dir = std::env::temp_dir().join(format!("tailsift-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("policies.yaml");
    std::fs::write(
        &config,
        format!("kafka: {{brokers: x, input_topics: [i], output_topic: o}}\npolicies:\n{ERRORS_SLOW_AND}"),
    )
    .expect("config");
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/otel-sdk-by-trace.bin"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .arg("simulate")
        .arg("-c")
        .arg(&config)
        .arg(data)
        .output()
        .expect("run tailsift");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Against the SDK's ground truth: errors first, then traces whose root took 1 s.
    let truth = testdata_truth();
    let errors = truth.values().filter(|t| t.1).count();
    let slow = truth.values().filter(|t| !t.1 && t.2 >= 1000).count();
    let spans: usize = truth.values().map(|t| t.0).sum();
    assert!(
        text.contains(&format!("{} traces, {spans} spans", truth.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("kept {} traces", errors + slow)),
        "{text}"
    );
    assert!(
        text.contains(&format!("kept by errors: {errors}"))
            && text.contains(&format!("kept by slow: {slow}")),
        "{text}"
    );
}
