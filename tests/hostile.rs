//! Regressions of defects found by hostile testing: records larger than the producer's
//! share of memory, output that cannot progress, and what must be refused at start.

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tailsift::codec::TraceId;
use tailsift::gen;
use tailsift::sink::{HEADER_ERROR, HEADER_SOURCE_OFFSET};

/// A producer that may send input messages of up to 64 MB.
fn big_producer(h: &Harness, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &h.bootstrap)
        .set("compression.codec", compression)
        .set("message.max.bytes", "67108864")
        .create()
        .expect("producer")
}

/// One error span of about `bytes` encoded bytes (a large attribute), as a request.
fn error_span_request(id: [u8; 16], bytes: usize) -> Vec<u8> {
    let span = Span {
        trace_id: id.to_vec(),
        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
        name: "big".into(),
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_001_000_000,
        attributes: vec![KeyValue {
            key: "blob".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(bytes))),
            }),
            ..KeyValue::default()
        }],
        status: Some(Status {
            code: status::StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

/// Sends one generated error trace and waits until the broker has it.
async fn send_error_trace(h: &Harness, seed: u64) -> gen::GeneratedTrace {
    let mut g = gen::Generator::new(gen::GenConfig {
        seed,
        error_rate: 1.0,
        ..gen::GenConfig::default()
    });
    let t = g.next_trace(gen::now_ns());
    let key = t.truth.trace_id.to_hex();
    let p = h.producer("none");
    for m in &t.messages {
        gen::send(&p, INPUT, key.as_bytes(), m).await.expect("send");
    }
    let flushed = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        p.flush(Duration::from_secs(10))
    })
    .await
    .expect("flush task");
    assert!(flushed.is_ok(), "input delivered");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_span_larger_than_the_producer_queue_goes_out() {
    let h = Harness::new(2, 2);
    // memory.limit 16MiB: the producer's share is 1 MiB, the span 1.5 MB.
    let yaml = h
        .config_yaml(ERRORS_SLOW_AND, "500ms", None)
        .replace("telemetry:", "memory:\n  limit: 16MiB\ntelemetry:");
    let cfg = tailsift::config::Config::from_yaml(&yaml).expect("config");
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let id = [0x5a; 16];
    let payload = error_span_request(id, 1_500_000);
    gen::send(&big_producer(&h, "lz4"), INPUT, b"big", &payload)
        .await
        .expect("send");
    // Bounds, not expectations (about 5 s here): a CI machine's two cores are shared
    // by every test of the file at once.
    let got = wait_until(Duration::from_secs(60), || {
        out.traces().contains_key(&TraceId(id))
    })
    .await;
    let committed = wait_until(Duration::from_secs(30), || uncommitted(&h).is_empty()).await;
    sampler.stop().await;
    assert!(got, "the 1.5 MB error span never came out");
    assert!(
        committed,
        "its input was never committed: {:?}",
        uncommitted(&h)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_larger_than_the_producer_queue_goes_out() {
    let h = Harness::new(2, 2);
    // memory.limit 128MiB: the producer's share is 8 MiB; the garbage is 20 MB
    // (gzip makes it a few kB on the wire).
    let yaml = h
        .config_yaml(ERRORS_SLOW_AND, "500ms", None)
        .replace("telemetry:", "memory:\n  limit: 128MiB\ntelemetry:");
    let cfg = tailsift::config::Config::from_yaml(&yaml).expect("config");
    let dlq = h.dead_letters();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let garbage = vec![0xffu8; 20_000_000];
    gen::send(&big_producer(&h, "gzip"), INPUT, b"garbage", &garbage)
        .await
        .expect("send");
    let got = wait_until(Duration::from_secs(60), || !dlq.is_empty()).await;
    let committed = wait_until(Duration::from_secs(20), || uncommitted(&h).is_empty()).await;
    // What the sampler saw, for a failure to say where the dead letter stopped.
    let addr = sampler.running.telemetry_addr.expect("telemetry");
    let (_, metrics) = http_get(addr, "/metrics");
    // Whether a reader started now sees it (it was written, the first reader missed it).
    let late_reader = if got {
        None
    } else {
        let again = tailsift::demo::Collector::start(&h.bootstrap, DLQ, 1).expect("collector");
        Some(wait_until(Duration::from_secs(15), || !again.is_empty()).await)
    };
    sampler.stop().await;
    let seen: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "received",
                    "dead_letter",
                    "produce",
                    "memory",
                    "paused",
                    "pinned",
                    "lag",
                ]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect();
    assert!(
        got,
        "the 20 MB dead letter never came out; a reader started after 60 s saw it: {late_reader:?}; input uncommitted {:?}; sampler metrics:\n{}",
        uncommitted(&h),
        seen.join("\n")
    );
    let r = &dlq.records()[0];
    assert_eq!(r.payload.len(), garbage.len(), "unchanged");
    assert!(r.header(HEADER_ERROR).is_some_and(|e| !e.is_empty()));
    assert_eq!(r.header(HEADER_SOURCE_OFFSET).as_deref(), Some("0"));
    assert!(
        committed,
        "its input was never committed: {:?}",
        uncommitted(&h)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_cannot_progress_shows_in_readyz_and_a_metric_then_recovers() {
    let h = Harness::new(2, 2);
    let cfg = h.config(ERRORS_SLOW_AND, "500ms", None);
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    let addr = sampler.running.telemetry_addr.expect("telemetry");
    sampler.wait_assigned().await;
    let t = send_error_trace(&h, 3).await;
    // From now on every produce request fails (retriably): the kept trace cannot
    // get out.
    h.broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
    );
    let stalled = wait_until(Duration::from_secs(25), || {
        let (code, body) = http_get(addr, "/readyz");
        code == 503 && body.contains("output stalled")
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics");
    let gauge = tailsift::demo::metric(&metrics, tailsift::telemetry::names::PRODUCE_STALLED);
    h.broker
        .cluster()
        .clear_request_errors(RDKafkaApiKey::Produce);
    let recovered = wait_until(Duration::from_secs(60), || {
        http_get(addr, "/readyz").0 == 200 && out.traces().contains_key(&t.truth.trace_id)
    })
    .await;
    sampler.stop().await;
    assert!(stalled, "/readyz never said output is stalled");
    assert_eq!(gauge, 1.0, "tailsift_produce_stalled while stalled");
    assert!(
        recovered,
        "the kept trace did not come out once produce worked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_is_dead_lettered_with_its_headers_and_logged_a_few_times() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let h = Harness::new(2, 2);
    let dir = std::env::temp_dir().join(format!("tailsift-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("tailsift.log");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "500ms", None);
    let dlq = h.dead_letters();
    let mut sampler = spawn(&dir, &yaml, &log);
    let ready = wait_until(Duration::from_secs(40), || {
        // Ready, and holding partitions (a member with none is ready too).
        http_get(sampler.telemetry, "/readyz").0 == 200
            && max_metric_of(&sampler, "tailsift_assigned_partitions") > 0.0
    })
    .await;
    assert!(ready, "sampler not ready");
    let p = h.producer("lz4");
    const N: usize = 2000;
    for i in 0..N {
        let headers = OwnedHeaders::new().insert(Header {
            key: "origin",
            value: Some(format!("client-{i}").as_bytes()),
        });
        let record = FutureRecord::to(INPUT)
            .key("k")
            .payload(b"\xff\xfe not protobuf".as_slice())
            .headers(headers);
        p.send(record, Duration::from_secs(10)).await.expect("send");
    }
    let all = wait_until(Duration::from_secs(60), || dlq.len() >= N).await;
    signal(&sampler.child, "-TERM");
    let _ = sampler.child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(all, "{} of {N} dead letters", dlq.len());
    let r = &dlq.records()[0];
    assert!(
        r.header("origin").is_some_and(|v| v.starts_with("client-")),
        "the original header is kept: {:?}",
        r.headers
    );
    assert!(r.header(HEADER_ERROR).is_some(), "and tailsift's added");
    let lines = text.matches("Undecodable message").count();
    assert!(
        (1..=5).contains(&lines),
        "{lines} log lines for {N} undecodable messages"
    );
}

/// A sampler holding a kept trace the broker refuses to take (every produce
/// fails with a retriable error), so a drain would wait for it.
async fn stuck_in_the_producer(h: &Harness, dir: &std::path::Path) -> Sampler {
    let log = dir.join("tailsift.log");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "500ms", None);
    let sampler = spawn(dir, &yaml, &log);
    let ready = wait_until(Duration::from_secs(40), || {
        // Ready, and holding partitions (a member with none is ready too).
        http_get(sampler.telemetry, "/readyz").0 == 200
            && max_metric_of(&sampler, "tailsift_assigned_partitions") > 0.0
    })
    .await;
    assert!(ready, "sampler not ready");
    send_error_trace(h, 5).await;
    h.broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1000],
    );
    let stuck = wait_until(Duration::from_secs(20), || {
        metric_of(&sampler, tailsift::telemetry::names::PRODUCE_OLDEST_PENDING) >= 2.0
    })
    .await;
    assert!(stuck, "the kept trace was never held up in the producer");
    sampler
}

/// Waits up to `max` for a child to exit (killing it then); its status, if it did.
async fn exit_within(sampler: &mut Sampler, max: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = sampler.child.try_wait().expect("status") {
            return Some(s);
        }
        if start.elapsed() > max {
            let _ = sampler.child.kill();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_stuck_drain_at_once_with_a_failure_status() {
    let h = Harness::new(2, 2);
    let dir = std::env::temp_dir().join(format!("tailsift-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut sampler = stuck_in_the_producer(&h, &dir).await;
    signal(&sampler.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&sampler.child, "-TERM");
    let status = exit_within(&mut sampler, Duration::from_secs(10)).await;
    h.broker
        .cluster()
        .clear_request_errors(RDKafkaApiKey::Produce);
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("exited within 10 s of the second signal");
    assert_eq!(
        status.code(),
        Some(3),
        "exit status after an incomplete drain"
    );
}

/// One SIGTERM whose drain gives up waiting for the output's acknowledgement (the
/// sink's 30 s) exits 3, as the README says, not 0: the kept trace's input stays
/// uncommitted, and the exit status must not claim a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_gives_up_exits_with_a_failure_status() {
    let h = Harness::new(2, 2);
    let dir = std::env::temp_dir().join(format!("tailsift-giveup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut sampler = stuck_in_the_producer(&h, &dir).await;
    signal(&sampler.child, "-TERM");
    let status = exit_within(&mut sampler, Duration::from_secs(90)).await;
    h.broker
        .cluster()
        .clear_request_errors(RDKafkaApiKey::Produce);
    let text = std::fs::read_to_string(dir.join("tailsift.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("exited within 90 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(3),
        "exit status after a drain that gave up; log:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_requested_while_starting_exits_cleanly() {
    // A broker that does not answer holds the start in its first metadata read
    // (3 s); a SIGTERM then is a stop request like any other, not the default
    // action that ends the process by signal.
    let h = Harness::new(1, 1);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let dir = std::env::temp_dir().join(format!("tailsift-early-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("tailsift.log");
    let yaml = h
        .config_yaml(ERRORS_SLOW_AND, "500ms", None)
        .replace(&h.bootstrap, &dead.to_string());
    let mut sampler = spawn(&dir, &yaml, &log);
    let serving = wait_until(Duration::from_secs(20), || {
        http_get(sampler.telemetry, "/healthz").0 != 0
    })
    .await;
    signal(&sampler.child, "-TERM");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = sampler.child.try_wait().expect("status") {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = sampler.child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(serving, "telemetry never answered; log:\n{text}");
    let status = status.expect("exited within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}; log:\n{text}");
    assert!(
        !text.contains("tailsift started"),
        "the signal came while starting, not after; log:\n{text}"
    );
}

/// With stderr a closed pipe (`tailsift run ... 2>&1 | head -1` once `head` is
/// gone), every log line fails to write. That must not end the process: a config
/// error still exits 1 (it panicked with 101), and a running instance keeps
/// running and stops cleanly (it aborted from librdkafka's log callback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_neither_panics_nor_aborts() {
    use std::process::{Command, Stdio};
    let closed_stderr = || {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        Stdio::from(writer)
    };
    let status = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["run", "-c", "/nonexistent/tailsift.yaml"])
        .stdout(Stdio::null())
        .stderr(closed_stderr())
        .status()
        .expect("runs");
    assert_eq!(status.code(), Some(1), "a config error with stderr closed");

    let h = Harness::new(1, 1);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let telemetry = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let dir = std::env::temp_dir().join(format!("tailsift-stderr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Unreachable brokers: librdkafka logs connection errors over and over.
    let yaml = h
        .config_yaml(ERRORS_SLOW_AND, "500ms", None)
        .replace(&h.bootstrap, &dead.to_string())
        .replace("127.0.0.1:0", &telemetry.to_string());
    let config = dir.join("tailsift.yaml");
    std::fs::write(&config, yaml).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(closed_stderr())
        .spawn()
        .expect("starts");
    // Serving, and still alive after librdkafka reported the broker unreachable
    // (its connection attempts fail within milliseconds; the first metadata read
    // gives up after 3 s).
    let served = wait_until(Duration::from_secs(20), || {
        http_get(telemetry, "/healthz").0 != 0
    })
    .await;
    let errors_seen = wait_until(Duration::from_secs(20), || {
        http_get(telemetry, "/readyz")
            .1
            .contains("no broker reachable")
            && child.try_wait().ok().flatten().is_none()
    })
    .await;
    let early_exit = child.try_wait().expect("status");
    signal(&child, "-TERM");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("status") {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(served, "telemetry never answered");
    assert_eq!(early_exit, None, "the process ended by itself");
    assert!(errors_seen, "never saw the broker unreachable");
    let status = status.expect("exited within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
}
