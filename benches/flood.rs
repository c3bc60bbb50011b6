//! Flood: traffic far beyond what `memory.limit` can buffer, for a minute, against a
//! sampler running as its own process (so its RSS is its own, not the broker's).
//!
//! `decision_wait` is 10 minutes: buffering one minute of input would need ~15x the
//! limit, so every decision is forced by memory pressure. Measures the sampler's RSS
//! from /proc every 100 ms (and VmHWM), the lag, and checks the output: every error
//! trace kept and complete. Then the sampler is stopped and a second one (short wait)
//! decides what was still buffered, as after a restart.
//!
//! `cargo bench --bench flood` (env `FLOOD_SECS`, default 60; `FLOOD_RATE` traces/s,
//! default 2000; `FLOOD_LIMITS`, default `64MiB,256MiB`; `FLOOD_COMPRESSION` of the
//! input, default `lz4`, or `none`).

mod proc;
use proc::status_kib;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tailsift::codec::TraceId;
use tailsift::config::parse_bytes;
use tailsift::demo::{metric, Collector};
use tailsift::gen::{self, GenConfig, Generator, Truth};

const BIN: &str = env!("CARGO_BIN_EXE_tailsift");
const INPUT: &str = "flood-in";
const OUTPUT: &str = "flood-out";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19464)
}

fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sampler(config: &str, bootstrap: &str) -> Child {
    Command::new(BIN)
        .args(["run", "-c", config, "--brokers", bootstrap])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start tailsift run")
}

fn stop(mut child: Child) {
    // SIGTERM for a graceful stop.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

struct Outcome {
    limit: u64,
    peak_rss: u64,
    hwm: u64,
    max_lag: f64,
    drain_secs: f64,
    spans_in: usize,
    mib_in: f64,
    forced: f64,
    errors: usize,
    errors_kept: usize,
    incomplete: usize,
    truncated: usize,
}

/// Partitions where the broker's retention (~5 MiB per partition on the embedded
/// broker) deleted input the group had not committed yet: data the restarted sampler
/// could not re-read, a loss of the broker's, not tailsift's. The flood writes 1 GiB
/// into 64 partitions, so old data is deleted; it must all be committed by then.
fn truncated_below_commit(bootstrap: &str) -> usize {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tailsift")
        .create::<BaseConsumer>()
    else {
        return usize::MAX;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..64 {
        let _ = tpl.add_partition(INPUT, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(10)) else {
        return usize::MAX;
    };
    committed
        .elements()
        .iter()
        .filter(|e| {
            let low = c
                .fetch_watermarks(INPUT, e.partition(), Duration::from_secs(5))
                .map_or(i64::MAX, |w| w.0);
            match e.offset() {
                Offset::Offset(o) => o < low,
                _ => low > 0,
            }
        })
        .count()
}

async fn run(limit_text: &str, secs: u64, rate: u64) -> Outcome {
    let limit = parse_bytes(limit_text).expect("limit");
    let mut broker = Command::new(BIN)
        .args([
            "broker",
            "--topic",
            &format!("{INPUT}:64"),
            "--topic",
            &format!("{OUTPUT}:16"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tailsift broker");
    let mut line = String::new();
    BufReader::new(broker.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("bootstrap line");
    let bootstrap = line.trim().to_string();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tailsift-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write_config = |name: &str, wait: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "kafka: {{brokers: x, input_topics: [{INPUT}], output_topic: {OUTPUT}, commit_interval: 500ms}}\n\
                 buffer: {{decision_wait: {wait}}}\n\
                 memory: {{limit: {limit_text}}}\n\
                 telemetry: {{listen: \"127.0.0.1:{port}\"}}\n\
                 policies:\n  - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n"
            ),
        )
        .expect("write config");
        path.display().to_string()
    };
    let flood_cfg = write_config("flood.yaml", "10m");
    let finish_cfg = write_config("finish.yaml", "1s");
    let out = Collector::start(&bootstrap, OUTPUT, 16).expect("collector");
    let child = sampler(&flood_cfg, &bootstrap);
    let pid = child.id();
    // Wait until it has its partitions.
    let t = Instant::now();
    while metric(&scrape(port), "tailsift_assigned_partitions") < 64.0
        && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sample RSS and lag while the flood runs and drains.
    let stop_sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = {
        let stop_sampling = std::sync::Arc::clone(&stop_sampling);
        tokio::spawn(async move {
            let (mut peak, mut max_lag) = (0u64, 0f64);
            while !stop_sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmRSS:") * 1024);
                max_lag = max_lag.max(metric(&scrape(port), "tailsift_consumer_lag_messages"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (peak, max_lag)
        })
    };
    let mut g = Generator::new(GenConfig {
        seed: 99,
        ..GenConfig::default()
    });
    let opts = gen::FeedOptions {
        traces: (secs * rate) as usize,
        rate,
        // Uncompressed input is kept by librdkafka in the fetch responses themselves
        // (a message pins its whole response), compressed input in a buffer per
        // message set: both are worth a run.
        compression: std::env::var("FLOOD_COMPRESSION").unwrap_or_else(|_| "lz4".into()),
        batch_spans: 0,
    };
    let (truths, fed) = gen::feed(&bootstrap, INPUT, &mut g, &opts, |s| {
        eprintln!("  fed {} traces, {} spans", s.traces, s.spans);
    })
    .await
    .expect("feed");
    let flood_end = Instant::now();
    // Lag drains once the flood stops.
    loop {
        let m = scrape(port);
        if metric(&m, "tailsift_spans_received_total") >= fed.spans as f64
            || flood_end.elapsed() > Duration::from_secs(120)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = flood_end.elapsed().as_secs_f64();
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak_rss, max_lag) = sampling.await.unwrap_or((0, 0.0));
    let hwm = status_kib(pid, "VmHWM:") * 1024;
    let forced = metric(&scrape(port), "tailsift_forced_decisions_total");
    stop(child);
    let truncated = truncated_below_commit(&bootstrap);
    // What was still buffered is decided by a fresh instance from the committed offsets.
    let finisher = sampler(&finish_cfg, &bootstrap);
    let errors: Vec<&Truth> = truths.iter().filter(|t| t.error).collect();
    let t = Instant::now();
    loop {
        let got = out.traces();
        if errors.iter().all(|e| got.contains_key(&e.trace_id))
            || t.elapsed() > Duration::from_secs(90)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.settle(Duration::from_secs(2), Duration::from_secs(30))
        .await;
    stop(finisher);
    let got = out.traces();
    let truth: HashMap<TraceId, &Truth> = truths.iter().map(|t| (t.trace_id, t)).collect();
    let errors_kept = errors
        .iter()
        .filter(|e| got.contains_key(&e.trace_id))
        .count();
    let incomplete = got
        .iter()
        .filter(|(id, o)| truth.get(id).is_none_or(|t| o.distinct_spans != t.spans))
        .count();
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        limit,
        peak_rss,
        hwm,
        max_lag,
        drain_secs,
        spans_in: fed.spans,
        mib_in: fed.bytes as f64 / 1048576.0,
        forced,
        errors: errors.len(),
        errors_kept,
        incomplete,
        truncated,
    }
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let rate: u64 = std::env::var("FLOOD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let limits = std::env::var("FLOOD_LIMITS").unwrap_or_else(|_| "64MiB,256MiB".into());
    let mut results = Vec::new();
    for l in limits.split(',') {
        eprintln!("flood: memory.limit {l}, {secs} s at {rate} traces/s, decision_wait 10m");
        results.push(run(l, secs, rate).await);
    }
    println!(
        "\nflood: {secs} s at {rate} traces/s, decision_wait 10m (every decision forced by memory)"
    );
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9} {:>11} {:>11} {:>10}",
        "limit",
        "input MiB",
        "peak RSS",
        "VmHWM",
        "RSS-limit",
        "max lag",
        "drain s",
        "forced",
        "errors kept",
        "incomplete"
    );
    let mut truncated = 0;
    for r in &results {
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "{:>7.0}MiB {:>10.0} {:>7.0}MiB {:>7.0}MiB {:>6.0}MiB {:>10.0} {:>9.1} {:>11.0} {:>5}/{:<5} {:>10}",
            mib(r.limit),
            r.mib_in,
            mib(r.peak_rss),
            mib(r.hwm),
            mib(r.hwm) - mib(r.limit),
            r.max_lag,
            r.drain_secs,
            r.forced,
            r.errors_kept,
            r.errors,
            r.incomplete
        );
        let _ = r.spans_in;
        truncated += r.truncated;
    }
    println!("partitions where the broker deleted uncommitted input: {truncated} (must be 0)");
}
