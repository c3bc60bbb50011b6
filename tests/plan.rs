//! `tailsift plan` against a measured run: the sampler, as its own process on the
//! embedded broker, given the `memory.limit` the plan asks for and the traffic the
//! plan was made for, buffers what the plan says (within 25%), decides nothing early
//! for memory, keeps every error trace and stays within the planned pod memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tailsift::gen::{GenConfig, Generator};
use tailsift::plan::{plan, PlanInput};
use tailsift::telemetry::names;

const TRACES: usize = 4000;
const RATE: u64 = 250;
const SEED: u64 = 77;
const WAIT_S: u64 = 5;

/// Spans per trace and message bytes per span of the traffic `traffic()` sends
/// (the same generator and seed).
fn traffic_shape() -> (f64, f64) {
    let mut g = Generator::new(GenConfig {
        seed: SEED,
        ..GenConfig::default()
    });
    let (mut spans, mut bytes) = (0usize, 0usize);
    for _ in 0..TRACES {
        let t = g.next_trace(tailsift::gen::now_ns());
        spans += t.truth.spans;
        bytes += t.messages.iter().map(Vec::len).sum::<usize>();
    }
    (spans as f64 / TRACES as f64, bytes as f64 / spans as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planned_memory_matches_a_measured_run() {
    let (spans_per_trace, bytes_per_span) = traffic_shape();
    let input = PlanInput {
        spans_per_sec: RATE as f64 * spans_per_trace,
        decision_wait: Duration::from_secs(WAIT_S),
        bytes_per_span,
        spans_per_trace,
        ..PlanInput::default()
    };
    let p = plan(&input).expect("plan");
    assert_eq!(p.instances, 1, "{p:?}");

    let h = Harness::new(8, 2);
    let dir = std::env::temp_dir().join(format!("tailsift-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("tailsift.log");
    let mut yaml = h.config_yaml(ERRORS_SLOW_AND, &format!("{WAIT_S}s"), None);
    yaml.push_str(&format!("memory:\n  limit: {}\n", p.memory_limit));
    let out = h.collector();
    let mut sampler = spawn(&dir, &yaml, &log);
    let ready = wait_until(Duration::from_secs(30), || {
        metric_of(&sampler, names::ASSIGNED_PARTITIONS) == 8.0
    })
    .await;
    assert!(
        ready,
        "sampler never owned the input; log: {}",
        log.display()
    );

    let feed = traffic(&h, TRACES, RATE, SEED);
    let start = Instant::now();
    // Measure while the traffic flows: the buffer from one decision wait (plus 2 s of
    // slack for stream time to settle) in, until the traffic ends.
    let steady_from = Duration::from_secs(WAIT_S + 2);
    let steady_until = Duration::from_secs(TRACES as u64 / RATE);
    let (mut samples, mut peak_rss) = (Vec::new(), 0.0f64);
    while start.elapsed() < steady_until + Duration::from_secs(1) {
        let t = start.elapsed();
        if t >= steady_from && t <= steady_until {
            samples.push(metric_of(&sampler, names::BUFFER_BYTES));
        }
        peak_rss = peak_rss.max(metric_of(&sampler, "process_resident_memory_bytes"));
        // A sampling period, not synchronisation: the measurement is the samples.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let truths = feed.await.expect("traffic task");
    let kept = wait_until(Duration::from_secs(60), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    let forced = metric_of(&sampler, names::FORCED_DECISIONS);
    peak_rss = peak_rss.max(metric_of(&sampler, "process_resident_memory_bytes"));
    sampler.child.kill().expect("SIGKILL");
    sampler.child.wait().expect("reaped");
    h.assert_no_broker_truncation();

    assert!(samples.len() >= 10, "too few samples: {samples:?}");
    let measured = samples.iter().sum::<f64>() / samples.len() as f64;
    let ratio = measured / p.buffer_bytes;
    eprintln!(
        "plan: buffer {:.1} MiB, memory.limit {} MiB, pod {} MiB; measured: buffer {:.1} MiB \
         (x{ratio:.2}), peak RSS {:.1} MiB, forced {forced}",
        p.buffer_bytes / 1048576.0,
        p.memory_limit >> 20,
        p.pod_memory >> 20,
        measured / 1048576.0,
        peak_rss / 1048576.0
    );
    assert!(
        (0.75..=1.25).contains(&ratio),
        "buffer measured {measured:.0} B against {:.0} B planned (x{ratio:.2}); samples {samples:?}",
        p.buffer_bytes
    );
    assert!(kept, "error/slow traces missing under the planned limit");
    assert_eq!(forced, 0.0, "the planned memory.limit forced decisions");
    assert!(
        peak_rss > 0.0 && peak_rss <= p.pod_memory as f64,
        "peak RSS {peak_rss:.0} B above the planned pod memory {} B",
        p.pod_memory
    );
}
