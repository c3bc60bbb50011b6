//! Faults from outside: the sampler killed with SIGKILL and restarted, stopped with
//! SIGTERM, its broker taken down and brought back, its produce and commit requests
//! failing. Each test checks the output topic against the generator's ground truth:
//! every error and slow trace present with all its spans.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tailsift::gen;
use tailsift::telemetry::names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_repeatedly_and_restarted_it_loses_no_kept_trace_then_stops_cleanly() {
    let h = Harness::new(16, 4);
    let dir = std::env::temp_dir().join(format!("tailsift-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("tailsift.log");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    // ~30 s of traffic, ~3 MB per partition (the broker keeps ~5 MiB).
    let feed = traffic(&h, 6000, 200, 31);
    let mut sampler = spawn(&dir, &yaml, &log);
    // Each instance is killed with SIGKILL once it has been reading for a while:
    // traces buffered undecided (decision_wait 2 s), kept ones in flight to the
    // broker, commits pending. The next one waits out the dead member's session.
    let mut killed_with_work = 0;
    for extra_ms in [2_500, 3_500, 2_000] {
        let reading = wait_until(Duration::from_secs(40), || {
            metric_of(&sampler, names::SPANS_RECEIVED) > 0.0
        })
        .await;
        assert!(reading, "instance never read input; log: {}", log.display());
        tokio::time::sleep(Duration::from_millis(extra_ms)).await;
        if metric_of(&sampler, names::BUFFER_TRACES) > 0.0 {
            killed_with_work += 1;
        }
        sampler.child.kill().expect("SIGKILL");
        sampler.child.wait().expect("reaped");
        sampler = spawn(&dir, &yaml, &log);
    }
    assert!(killed_with_work >= 2, "kills did not hit buffered traces");
    let truths = feed.await.expect("traffic task");
    let done = wait_until(Duration::from_secs(120), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    // The last instance is a member owning every partition, has read all of the
    // input and decided it: only then does a clean stop leave nothing uncommitted
    // (the drain commits what is decided; it does not decide early).
    let settled = wait_until(Duration::from_secs(60), || {
        metric_of(&sampler, names::ASSIGNED_PARTITIONS) == 16.0
            && metric_of(&sampler, names::CONSUMER_LAG) == 0.0
            && metric_of(&sampler, names::BUFFER_TRACES) == 0.0
    })
    .await;
    assert!(
        settled,
        "the last instance never caught up; log: {}",
        log.display()
    );
    // SIGTERM: the last instance stops reading, commits what is safe and exits 0.
    let pid = sampler.child.id().to_string();
    let signalled = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(signalled.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = sampler.child.try_wait().expect("child status") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(45) {
            let _ = sampler.child.kill();
            panic!("no exit within 45 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; log:\n{text}"
    );
    let missing = missing_kept(&truths, &out.traces());
    assert!(
        done && missing.is_empty(),
        "{} error/slow traces lost or incomplete after 3 kills: {missing:?}",
        missing.len()
    );
    assert_eq!(
        uncommitted(&h),
        vec![],
        "after a clean stop with everything decided, all input is committed"
    );
    h.assert_no_broker_truncation();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_reported_and_survived() {
    let h = Harness::new(8, 4);
    let cfg = h.config(ERRORS_SLOW_AND, "1s", Some("300ms"));
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    sampler.wait_assigned().await;
    assert_eq!(http_get(addr, "/readyz").0, 200);
    let feed = traffic(&h, 2000, 250, 37);
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.broker.cluster().broker_down(-1).expect("broker down");
    let mut why = String::new();
    let reported = wait_until(Duration::from_secs(30), || {
        let (code, body) = http_get(addr, "/readyz");
        why = body;
        code == 503
    })
    .await;
    // A broker outage fails readiness, never liveness: a restart would not help.
    let (live, live_body) = http_get(addr, "/healthz");
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.broker.cluster().broker_up(-1).expect("broker up");
    let recovered = wait_until(Duration::from_secs(60), || {
        http_get(addr, "/readyz").0 == 200
    })
    .await;
    let truths = feed.await.expect("traffic task");
    let done = wait_until(Duration::from_secs(90), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    sampler.stop().await;
    assert!(
        reported,
        "/readyz did not turn 503 while the broker was down"
    );
    assert!(
        why.starts_with("not ready: ") && (why.contains("kafka") || why.contains("stalled")),
        "/readyz does not say why: {why:?}"
    );
    assert_eq!(live, 200, "a broker outage failed liveness: {live_body}");
    assert!(
        recovered,
        "/readyz did not recover after the broker came back"
    );
    let missing = missing_kept(&truths, &out.traces());
    assert!(
        done && missing.is_empty(),
        "{} error/slow traces lost or incomplete across the outage: {missing:?}",
        missing.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_produce_and_commit_requests_lose_nothing() {
    use RDKafkaRespErr::*;
    let h = Harness::new(8, 4);
    let cfg = h.config(ERRORS_SLOW_AND, "1s", Some("300ms"));
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    sampler.wait_assigned().await;
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    let feed = traffic(&h, 1500, 300, 41);
    // Kept traces coming out: the sampler's producer is at work.
    let flowing = wait_until(Duration::from_secs(30), || out.traces().len() >= 5).await;
    assert!(flowing, "no kept trace came out");
    let (produce_before, commit_before) = (
        labelled_metric_at(addr, names::PRODUCE_ERRORS, &[]),
        labelled_metric_at(addr, names::COMMITS, &["result=\"error\""]),
    );
    let truths = feed.await.expect("traffic task");
    // The feeder is done: the sampler's producer gets these errors, in order, on the
    // next produce requests (the last traces' kept ones; librdkafka retries them
    // inside its idempotent producer, so no delivery fails and nothing counts them).
    let cluster = h.broker.cluster();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    // The last traces are still buffered: the commits of their offsets fail first
    // (10 errors, ~2 s of commit rounds) and must be retried, not taken as done.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 10],
    );
    let done = wait_until(Duration::from_secs(90), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    // Commits resume once the errors are used up: everything read is committed.
    let committed = wait_until(Duration::from_secs(30), || uncommitted(&h).is_empty()).await;
    let (produce_after, commit_after) = (
        labelled_metric_at(addr, names::PRODUCE_ERRORS, &[]),
        labelled_metric_at(addr, names::COMMITS, &["result=\"error\""]),
    );
    sampler.stop().await;
    let missing = missing_kept(&truths, &out.traces());
    assert!(
        done && missing.is_empty(),
        "{} error/slow traces lost or incomplete: {missing:?}",
        missing.len()
    );
    assert!(committed, "input left uncommitted: {:?}", uncommitted(&h));
    eprintln!(
        "failed deliveries {produce_before} -> {produce_after}, commit errors {commit_before} -> {commit_after}"
    );
    // The faults reached the sampler (not only the feeder), and were survived.
    assert!(
        commit_after > commit_before,
        "no commit failed: the injected errors never reached the sampler"
    );
}

/// Whether an encoded request holds a span with status ERROR.
fn has_error_span(message: &[u8]) -> bool {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    ExportTraceServiceRequest::decode(message).is_ok_and(|r| {
        r.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .any(|s| s.status.as_ref().is_some_and(|st| st.code == 2))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_owner_decides_late_spans_as_the_decisions_topic_says() {
    let h = Harness::new(4, 2);
    h.broker
        .create_topic("decisions", 4)
        .expect("decisions topic");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "1s", Some("300ms")).replace(
        "  dead_letter_topic: dead-letters\n",
        "  dead_letter_topic: dead-letters\n  decisions_topic: decisions\n",
    );
    let cfg = tailsift::config::Config::from_yaml(&yaml).expect("config");
    let out = h.collector();
    // Error traces whose last service message holds no error span: judged alone, that
    // message would be dropped. It is held back and sent after the trace was decided
    // and its partition changed owner.
    let mut g = gen::Generator::new(gen::GenConfig {
        seed: 43,
        error_rate: 0.2,
        ..Default::default()
    });
    let mut early = Vec::new();
    let mut late = Vec::new();
    let mut watched = Vec::new();
    for _ in 0..300 {
        let t = g.next_trace(gen::now_ns());
        let n = t.messages.len();
        let late_ok = n > 1 && !t.truth.slow && !has_error_span(&t.messages[n - 1]);
        let key = t.truth.trace_id.to_hex();
        for (i, m) in t.messages.into_iter().enumerate() {
            if t.truth.error && late_ok && i == n - 1 {
                late.push((key.clone(), m));
            } else {
                early.push((key.clone(), m));
            }
        }
        if t.truth.error && late_ok {
            watched.push(t.truth);
        }
    }
    assert!(
        watched.len() >= 10,
        "too few watched traces: {}",
        watched.len()
    );
    let producer = h.producer("lz4");
    let a = Instance::start(&cfg).await;
    a.wait_assigned().await;
    for (key, m) in &early {
        gen::send(&producer, INPUT, key.as_bytes(), m)
            .await
            .expect("send");
    }
    // A decides and keeps the early parts.
    let decided = wait_until(Duration::from_secs(60), || {
        let got = out.traces();
        watched.iter().all(|t| got.contains_key(&t.trace_id))
    })
    .await;
    assert!(decided, "the early parts were not kept");
    a.stop().await;
    assert!(
        watched
            .iter()
            .all(|t| out.traces()[&t.trace_id].distinct_spans < t.spans),
        "the late spans were held back"
    );
    // B owns the partitions now; the late spans arrive.
    let b = Instance::start(&cfg).await;
    b.wait_assigned().await;
    for (key, m) in &late {
        gen::send(&producer, INPUT, key.as_bytes(), m)
            .await
            .expect("send");
    }
    let complete = wait_until(Duration::from_secs(60), || {
        let got = out.traces();
        watched.iter().all(|t| {
            got.get(&t.trace_id)
                .is_some_and(|o| o.distinct_spans == t.spans)
        })
    })
    .await;
    let loaded = b
        .running
        .telemetry_addr
        .map(|a| tailsift::demo::metric(&http_get(a, "/metrics").1, names::DECISIONS_LOADED))
        .unwrap_or(0.0);
    b.stop().await;
    let got = out.traces();
    let incomplete: Vec<_> = watched
        .iter()
        .filter(|t| {
            got.get(&t.trace_id)
                .is_none_or(|o| o.distinct_spans != t.spans)
        })
        .map(|t| t.trace_id)
        .collect();
    assert!(
        loaded >= 300.0,
        "B read back {loaded} decisions, expected one per trace"
    );
    assert!(
        complete && incomplete.is_empty(),
        "late spans of kept traces not forwarded by the next owner: {incomplete:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_instances_killed_the_other_takes_over_without_loss() {
    let h = Harness::new(16, 4);
    let dir = std::env::temp_dir().join(format!("tailsift-faults2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("tailsift.log");
    let yaml = h.config_yaml(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    let mut a = spawn(&dir, &yaml, &log);
    let mut b = spawn(&dir, &yaml, &log);
    let feed = traffic(&h, 5000, 200, 47);
    // Both reading, then A dies with traces buffered; B gets A's partitions once A's
    // session times out and re-reads them from A's last safe commits.
    let both = wait_until(Duration::from_secs(40), || {
        metric_of(&a, names::SPANS_RECEIVED) > 0.0 && metric_of(&b, names::SPANS_RECEIVED) > 0.0
    })
    .await;
    assert!(both, "both instances should read; log: {}", log.display());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_buffered = metric_of(&a, names::BUFFER_TRACES);
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    let truths = feed.await.expect("traffic task");
    let done = wait_until(Duration::from_secs(120), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    let missing = missing_kept(&truths, &out.traces());
    let _ = b.child.kill();
    let _ = b.child.wait();
    assert!(a_buffered > 0.0, "A was killed with nothing buffered");
    assert!(
        done && missing.is_empty(),
        "{} error/slow traces lost or incomplete after A was killed: {missing:?}",
        missing.len()
    );
    h.assert_no_broker_truncation();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash between writing traces out and committing the input they came from: the
/// next owner re-reads that input. With the decisions topic it knows which spans the
/// last owner wrote out and does not write them again, so each kept trace is in the
/// output once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_does_not_write_out_again_what_the_killed_one_did() {
    let h = Harness::new(4, 2);
    h.broker
        .create_topic("decisions", 4)
        .expect("decisions topic");
    let dir = std::env::temp_dir().join(format!("tailsift-reread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("tailsift.log");
    // Commits an hour apart: nothing A reads is committed before it is killed.
    let yaml = h
        .config_yaml(ERRORS_SLOW_AND, "1s", Some("300ms"))
        .replace(
            "  dead_letter_topic: dead-letters\n",
            "  dead_letter_topic: dead-letters\n  decisions_topic: decisions\n",
        )
        .replace("commit_interval: 200ms", "commit_interval: 1h");
    let out = h.collector();
    let mut a = spawn(&dir, &yaml, &log);
    let ready = wait_until(Duration::from_secs(40), || {
        http_get(a.telemetry, "/readyz").0 == 200
    })
    .await;
    assert!(ready, "A not ready; log: {}", log.display());
    let truths = feed(&h, 300, 0, 57, "lz4").await;
    // A decides every trace and records each decision after its output is acknowledged.
    let recorded = wait_until(Duration::from_secs(60), || {
        metric_of(&a, names::DECISIONS_RECORDED) >= truths.len() as f64
    })
    .await;
    assert!(recorded, "A did not record every decision");
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    let all_out = wait_until(Duration::from_secs(30), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    assert!(all_out, "A did not output every kept trace");
    assert_eq!(
        uncommitted(&h).len(),
        4,
        "A committed input: nothing would be re-read"
    );

    // B takes the partitions over and re-reads all of it.
    let b = spawn(&dir, &yaml, &log);
    let spans: usize = truths.iter().map(|t| t.spans).sum();
    let reread = wait_until(Duration::from_secs(60), || {
        metric_of(&b, names::SPANS_RECEIVED) >= spans as f64
            && metric_of(&b, names::BUFFER_TRACES) == 0.0
    })
    .await;
    assert!(
        reread,
        "B did not re-read the input; log: {}",
        log.display()
    );
    out.settle(Duration::from_secs(3), Duration::from_secs(20))
        .await;
    let skipped = metric_of(&b, "tailsift_late_spans_total{decision=\"already_output\"}");
    let mut b = b;
    b.child.kill().expect("SIGKILL");
    b.child.wait().expect("reaped");
    let got = out.traces();
    let twice: Vec<_> = truths
        .iter()
        .filter(|t| {
            got.get(&t.trace_id)
                .is_some_and(|o| o.spans != t.spans || o.records != 1)
        })
        .map(|t| t.trace_id)
        .collect();
    assert!(
        twice.is_empty(),
        "{} kept traces written out again by the new owner: {twice:?}",
        twice.len()
    );
    assert!(missing_kept(&truths, &got).is_empty());
    let kept_spans: usize = truths
        .iter()
        .filter(|t| got.contains_key(&t.trace_id))
        .map(|t| t.spans)
        .sum();
    assert_eq!(
        skipped as usize, kept_spans,
        "B should skip exactly the re-read spans of the kept traces"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
