//! What an operator sees: metrics, health, and config errors from the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
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
    assert_eq!(http_get(addr, "/startupz").0, 200);
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
    // Every tailsift family carries its help text and type; the build and the
    // process are described too.
    for family in m
        .lines()
        .filter(|l| l.starts_with("tailsift_"))
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
        })
    {
        assert!(
            m.contains(&format!("# HELP {family} ")) && m.contains(&format!("# TYPE {family} ")),
            "{family} has no HELP or TYPE line"
        );
    }
    let build = m
        .lines()
        .find(|l| l.starts_with("tailsift_build_info{"))
        .unwrap_or_default();
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\"")
            && build.ends_with(" 1"),
        "build info: {build:?}"
    );
    for process in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(
            tailsift::demo::metric(&m, process) > 0.0,
            "{process} missing or zero"
        );
    }
    assert_eq!(http_get(addr, "/nope").0, 404);
    // A scraper's query string selects nothing; only GET and HEAD are answered.
    let (code, with_query) = http_get(addr, "/metrics?name[]=tailsift_kafka_up");
    assert!(
        code == 200 && with_query.contains("tailsift_kafka_up"),
        "{code}"
    );
    assert_eq!(http_request(addr, "POST", "/readyz").0, 405);
    let (code, body) = http_request(addr, "HEAD", "/readyz");
    assert!(code == 200 && body.is_empty(), "{code} {body:?}");
    sampler.stop().await;
}

/// `telemetry.logs.encoding: json`: every line on stderr is one JSON object with a
/// level and a message, and no colour escapes reach a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_without_colour() {
    let dir = std::env::temp_dir().join(format!("tailsift-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let log = dir.join("run.log");
    let yaml = "kafka:\n  brokers: \"127.0.0.1:1\"\n  input_topics: [in]\n  output_topic: out\ntelemetry:\n  listen: \"127.0.0.1:0\"\n  logs: {encoding: json}\npolicies:\n  - {name: all, type: always_sample}\n";
    let mut s = spawn(&dir, yaml, &log);
    let started = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Serving /metrics"))
    })
    .await;
    let _ = s.child.kill();
    let _ = s.child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(started, "no start line:\n{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour escapes in a file:\n{text}"
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_reported_not_fatal() {
    // Nothing listens on port 1: the consumer retries, the process stays up, and the
    // health endpoints say why it is not working.
    let yaml = "kafka:\n  brokers: \"127.0.0.1:1\"\n  input_topics: [in]\n  output_topic: out\ntelemetry:\n  listen: \"127.0.0.1:0\"\npolicies:\n  - {name: all, type: always_sample}\n";
    let cfg = Config::from_yaml(yaml).expect("valid");
    let sampler = Instance::start(&cfg).await;
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    let reported = wait_until(Duration::from_secs(30), || {
        http_get(addr, "/readyz")
            .1
            .contains("kafka: no broker reachable")
    })
    .await;
    assert!(reported, "readiness never named the unreachable broker");
    // Liveness holds (a restart would not bring the broker back), and says why the
    // instance is not ready; readiness names the broker problem.
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("kafka: no broker reachable"), "{body}");
    let (code, body) = http_get(addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("kafka: no broker reachable"), "{body}");
    assert_eq!(
        http_get(addr, "/startupz").0,
        200,
        "started: metadata read tried"
    );
    sampler.stop().await;
}

/// More members than partitions: the member without any is ready (it is in the
/// group and takes over when another leaves) and says why it holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_partitions_is_ready_and_says_so() {
    let h = Harness::new(1, 1);
    let cfg = h.config(ERRORS_SLOW_AND, "500ms", None);
    let a = Instance::start(&cfg).await;
    a.wait_assigned().await;
    let b = Instance::start(&cfg).await;
    let addrs = [&a, &b].map(|i| i.running.telemetry_addr.expect("telemetry enabled"));
    let both = wait_until(Duration::from_secs(30), || {
        addrs.iter().all(|&addr| http_get(addr, "/readyz").0 == 200)
            && a.running.health.assigned() + b.running.health.assigned() == 1
    })
    .await;
    let bodies = addrs.map(|addr| http_get(addr, "/readyz").1);
    a.stop().await;
    b.stop().await;
    assert!(
        both,
        "not both ready with one partition between them: {bodies:?}"
    );
    assert!(
        bodies.iter().any(|b| b.contains("no partitions"))
            && bodies.iter().any(|b| b.contains("1 partitions")),
        "{bodies:?}"
    );
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
    // A secret from the environment: resolved for the run, and a missing one named
    // by field and reference, not by any value.
    let secret = dir.join("secret.yaml");
    std::fs::write(
        &secret,
        "kafka:\n  brokers: b:9092\n  input_topics: [in]\n  output_topic: out\n  client: {sasl.username: u, sasl.password: \"${env:TAILSIFT_TEST_SECRET}\"}\npolicies:\n  - {name: all, type: always_sample}\n",
    )
    .expect("write");
    let check = |env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tailsift"));
        c.args(["check", "-c"]).arg(&secret);
        match env {
            Some(v) => c.env("TAILSIFT_TEST_SECRET", v),
            None => c.env_remove("TAILSIFT_TEST_SECRET"),
        };
        c.output().expect("run tailsift")
    };
    let missing = check(None);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success()
            && err.contains("kafka.client.sasl.password")
            && err.contains("${env:TAILSIFT_TEST_SECRET}"),
        "{err}"
    );
    let set = check(Some("hunter2-very-secret"));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&set.stdout),
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(set.status.success(), "{all}");
    assert!(!all.contains("hunter2"), "the secret was printed:\n{all}");
    // The Collector's own README example, pasted: valid, with a warning per key
    // tailsift has another setting for.
    let otel = dir.join("otel.yaml");
    std::fs::write(
        &otel,
        format!(
            "kafka: {{brokers: b:9092, input_topics: [in], output_topic: out}}\n{}",
            include_str!("../src/config/otel_readme_example.yaml")
        ),
    )
    .expect("write");
    let pasted = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["check", "-c"])
        .arg(&otel)
        .output()
        .expect("run tailsift");
    let text = String::from_utf8_lossy(&pasted.stdout);
    assert!(
        pasted.status.success()
            && text.contains("warning: processors.tail_sampling.num_traces (100) is not used"),
        "{text}{}",
        String::from_utf8_lossy(&pasted.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's minimal configuration loads, and its example policies are the ones
/// `check` prints: what a user pastes first works.
#[test]
fn the_readmes_configuration_example_loads() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in it");
    let cfg = tailsift::config::Config::from_yaml(yaml)
        .unwrap_or_else(|e| panic!("the README's example does not load: {e}\n{yaml}"));
    let names: Vec<&str> = cfg.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["errors", "slow", "some"]);
}

#[test]
fn readme_lists_every_metric() {
    let readme = include_str!("../README.md");
    let metrics: Vec<&str> = tailsift::telemetry::names::ALL
        .iter()
        .map(|m| m.name)
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
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/otel-sdk-by-trace.bin"
    );
    simulate_matches_the_sdk_truth(std::path::Path::new(data), "protobuf");
}

#[test]
fn simulate_reads_otlp_json_lines() {
    // The same SDK traffic, rewritten as OTLP/JSON (one request per line, as the
    // Collector's file exporter writes): the same traces must come out.
    let dir = std::env::temp_dir().join(format!("tailsift-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("traffic.jsonl");
    let lines: Vec<String> = testdata("otel-sdk-by-trace.bin")
        .iter()
        .map(|r| otlp_json(&ExportTraceServiceRequest::decode(&r[..]).expect("SDK data")))
        .collect();
    std::fs::write(&path, lines.join("\n")).expect("write json");
    simulate_matches_the_sdk_truth(&path, "json");
    let _ = std::fs::remove_dir_all(&dir);
}

/// OTLP/JSON for a request, written by hand from the specification (hex ids,
/// lowerCamelCase, 64-bit integers as strings): the fields policies read.
fn otlp_json(r: &ExportTraceServiceRequest) -> String {
    use serde_json::json;
    let attrs = |kvs: &[KeyValue]| -> Vec<serde_json::Value> {
        kvs.iter()
            .filter_map(|kv| {
                let v = match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => json!({"stringValue": s}),
                    Value::IntValue(i) => json!({"intValue": i.to_string()}),
                    Value::BoolValue(b) => json!({"boolValue": b}),
                    Value::DoubleValue(d) => json!({"doubleValue": d}),
                    _ => return None,
                };
                Some(json!({"key": kv.key, "value": v}))
            })
            .collect()
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let resource_spans: Vec<_> = r
        .resource_spans
        .iter()
        .map(|rs| {
            let scope_spans: Vec<_> = rs
                .scope_spans
                .iter()
                .map(|ss| {
                    let spans: Vec<_> = ss
                        .spans
                        .iter()
                        .map(|s| {
                            json!({
                                "traceId": hex(&s.trace_id),
                                "spanId": hex(&s.span_id),
                                "parentSpanId": hex(&s.parent_span_id),
                                "name": s.name,
                                "kind": s.kind,
                                "startTimeUnixNano": s.start_time_unix_nano.to_string(),
                                "endTimeUnixNano": s.end_time_unix_nano.to_string(),
                                "attributes": attrs(&s.attributes),
                                "status": {"code": s.status.as_ref().map_or(0, |st| st.code)},
                            })
                        })
                        .collect();
                    json!({"scope": {"name": ss.scope.as_ref().map(|s| s.name.clone())}, "spans": spans})
                })
                .collect();
            let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            json!({"resource": {"attributes": resource}, "scopeSpans": scope_spans})
        })
        .collect();
    json!({ "resourceSpans": resource_spans }).to_string()
}

fn simulate_matches_the_sdk_truth(data: &std::path::Path, label: &str) {
    let dir =
        std::env::temp_dir().join(format!("tailsift-simulate-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("policies.yaml");
    std::fs::write(
        &config,
        format!("kafka: {{brokers: x, input_topics: [i], output_topic: o}}\npolicies:\n{ERRORS_SLOW_AND}"),
    )
    .expect("config");
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
