//! Telemetry: metric names, Prometheus exporter, health endpoints and logging setup.
//!
//! Metrics are recorded through the `metrics` facade at the call sites named in
//! [`names`]; [`install`] registers the Prometheus recorder. The HTTP server answers
//! `/metrics` and three probes with Kubernetes' meanings: `/healthz` (liveness: the
//! process serves and its pipeline runs; a broker outage does not fail it, as a
//! restart would not help), `/readyz` (readiness: a broker reachable, a member of
//! its group, output not stalled) and `/startupz` (the first metadata read is done).

mod collector_json;
mod limit;
pub mod names;
mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use crate::config::LogEncoding;

pub use limit::LogLimiter;
pub use server::{serve, ServerError};

/// Shared health flags, written by the Kafka clients' callbacks and read by the
/// health endpoints.
#[derive(Debug, Default)]
pub struct Health {
    kafka_up: AtomicBool,
    /// Kafka has been seen up, or reported down on every broker, at least once: from
    /// then on only a change from up to down counts as an outage.
    state_seen: AtomicBool,
    /// Times Kafka went from up to down, plus one if every broker was reported down
    /// before any connection came up (a start during an outage).
    outages: AtomicU64,
    assigned: AtomicUsize,
    /// The pipeline has started: the first metadata read is done.
    started: AtomicBool,
    /// The consumer has been given an assignment (possibly empty) by its group.
    joined: AtomicBool,
    last_error: std::sync::Mutex<String>,
    /// Why output cannot progress, while it cannot.
    produce_stalled: std::sync::Mutex<Option<String>>,
    /// Input partitions that stopped moving, each with why.
    input_stalled: std::sync::Mutex<Vec<String>>,
    /// Set when a shutdown gave up waiting for decisions or acknowledgements.
    drain_incomplete: AtomicBool,
    /// Why the pipeline stopped by itself (an aborted transaction), once it has.
    fatal: std::sync::Mutex<Option<String>>,
    /// Woken when `fatal` is set.
    fatal_set: tokio::sync::Notify,
}

impl Health {
    /// New, with Kafka considered down until a broker answers.
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Records whether a broker connection is up, with the last error when not.
    pub fn set_kafka_up(&self, up: bool, error: Option<String>) {
        let was_up = self.kafka_up.swap(up, Ordering::Relaxed);
        if was_up && !up {
            self.outages.fetch_add(1, Ordering::Relaxed);
        }
        if up {
            self.state_seen.store(true, Ordering::Relaxed);
        }
        metrics::gauge!(names::KAFKA_UP).set(if up { 1.0 } else { 0.0 });
        if up {
            // Connected: an earlier failure's reason no longer applies.
            if let Ok(mut l) = self.last_error.lock() {
                l.clear();
            }
        } else if let Some(e) = error {
            if let Ok(mut l) = self.last_error.lock() {
                *l = e;
            }
        }
    }

    /// Records a client error for `/healthz`: librdkafka's reason names the broker
    /// and, for authentication and TLS failures, the mechanism or the certificate
    /// check (never a credential). "All brokers down" marks Kafka down but keeps the
    /// more specific reason seen before it.
    pub fn note_error(&self, error: &rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::RDKafkaErrorCode;
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Started while Kafka is down: producers cut off by the same outage may
            // deliver late, as after an outage seen from up (counted once).
            if !self.state_seen.swap(true, Ordering::Relaxed) {
                self.outages.fetch_add(1, Ordering::Relaxed);
            }
            let keep = self.last_error.lock().is_ok_and(|l| !l.is_empty());
            self.set_kafka_up(false, (!keep).then(|| reason.to_string()));
        } else if let Ok(mut l) = self.last_error.lock() {
            *l = reason.to_string();
        }
    }

    /// Records that the pipeline has started (`/startupz` answers 200 from now on).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Whether the pipeline has started.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Records that the group gave this member an assignment, empty or not: it is a
    /// member and can work.
    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    /// Whether the group has given this member an assignment yet.
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// Records the number of assigned input partitions.
    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n, Ordering::Relaxed);
        metrics::gauge!(names::ASSIGNED_PARTITIONS).set(n as f64);
    }

    /// How many times Kafka went from up to down (all of a client's broker
    /// connections lost), counting a start while every broker was down as one: the
    /// source treats idle probes around one as failed, however short it was.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// Whether a broker connection is up.
    pub fn kafka_up(&self) -> bool {
        self.kafka_up.load(Ordering::Relaxed)
    }

    /// Partitions assigned.
    pub fn assigned(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Records that output has stopped progressing (`Some(why)`) or moves again.
    pub fn set_produce_stalled(&self, why: Option<String>) {
        metrics::gauge!(names::PRODUCE_STALLED).set(if why.is_some() { 1.0 } else { 0.0 });
        if let Ok(mut s) = self.produce_stalled.lock() {
            *s = why;
        }
    }

    /// Why output cannot progress, while it cannot.
    pub fn produce_stalled(&self) -> Option<String> {
        self.produce_stalled.lock().ok().and_then(|s| s.clone())
    }

    /// Records which input partitions hold undecided input and stopped moving (one
    /// line each: the partition, how long, why); empty when every one moves.
    pub fn set_input_stalled(&self, stalled: Vec<String>) {
        metrics::gauge!(names::STALLED_PARTITIONS).set(stalled.len() as f64);
        if let Ok(mut s) = self.input_stalled.lock() {
            *s = stalled;
        }
    }

    /// The input partitions that stopped moving, with why.
    pub fn input_stalled(&self) -> Vec<String> {
        self.input_stalled
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Records that a shutdown gave up with work outstanding (its input stays
    /// uncommitted, so nothing is lost, but the exit status says so).
    pub fn set_drain_incomplete(&self) {
        self.drain_incomplete.store(true, Ordering::Relaxed);
    }

    /// Whether a shutdown gave up with work outstanding.
    pub fn drain_incomplete(&self) -> bool {
        self.drain_incomplete.load(Ordering::Relaxed)
    }

    /// Records that the pipeline must stop and be started again from what was
    /// committed (exactly-once mode after an aborted transaction).
    pub fn set_fatal(&self, why: String) {
        if let Ok(mut f) = self.fatal.lock() {
            if f.is_none() {
                *f = Some(why);
            }
        }
        self.fatal_set.notify_waiters();
        self.fatal_set.notify_one();
    }

    /// Why the pipeline stopped by itself, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until [`Health::set_fatal`] is called.
    pub async fn wait_fatal(&self) {
        loop {
            if self.fatal().is_some() {
                return;
            }
            self.fatal_set.notified().await;
        }
    }

    /// The last Kafka error seen.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::DECISION_LATENCY.into()),
                    &[0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (tests embedding tailsift);
            // metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe_all();
            handle
        })
        .clone()
}

/// The version and commit of this build, as `--version` prints them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TAILSIFT_COMMIT"),
    ")"
);

/// Sets up `tracing` logging to stderr in `encoding`, filtered by `RUST_LOG`, else by
/// `level` (an `EnvFilter` directive list such as `info,librdkafka=warn`). Colours
/// only when stderr is a terminal, so files and log collectors get plain text. Lines
/// that cannot be written are dropped: a closed stderr never stops the process.
pub fn init_logging(level: &str, encoding: LogEncoding) {
    use std::io::IsTerminal as _;
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A line that cannot be written (stderr a closed pipe) is lost, not
        // reported with `eprintln!`, which panics there: inside librdkafka's log
        // callback, or while a drop unwinds, that aborted the process.
        .log_internal_errors(false);
    // The reload handle is typed by the formatter: one per encoding.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let set: SetFilter = Box::new(move |level: &str| {
                let filter =
                    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            });
            builder.try_init().map(|()| set)
        }};
    }
    let installed = match encoding {
        LogEncoding::Text => install!(builder),
        LogEncoding::Json => install!(builder.json().flatten_event(true)),
        LogEncoding::CollectorJson => install!(builder.event_format(collector_json::CollectorJson)),
    };
    if let (Ok(set), false) = (installed, env_set) {
        let _ = LOG_FILTER.set(set);
    }
}

/// What `run` logs unless `telemetry.logs.level` or `RUST_LOG` say otherwise.
pub const RUN_LOG_LEVEL: &str = "info,librdkafka=warn,rdkafka=warn";

/// Replaces the running log filter (a reload of `telemetry.logs.level`).
type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Puts `level` (an `EnvFilter` directive list) in force in the running process.
/// `Ok(false)`: not applied, as `RUST_LOG` chose the filter at start (it wins) or
/// logging was not set up here.
///
/// # Errors
/// The directive list does not parse.
pub fn set_log_level(level: &str) -> Result<bool, String> {
    match LOG_FILTER.get() {
        Some(set) => set(level).map(|()| true),
        None => Ok(false),
    }
}

/// Process metrics (CPU seconds, resident memory, open and maximum file
/// descriptors, threads, start time) under the Prometheus client names
/// (`process_cpu_seconds_total`, ...), refreshed at each scrape.
fn process_metrics() -> &'static metrics_process::Collector {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

/// The `/metrics` page: process metrics refreshed, then everything rendered.
///
/// `metrics` counters hold integers, so the process collector's CPU seconds arrive
/// truncated (0 after 0.73 s of CPU); the sample is written again with its fraction.
pub fn render(handle: &PrometheusHandle) -> String {
    process_metrics().collect();
    let text = handle.render();
    match metrics_process::collector::collect().cpu_seconds_total {
        Some(cpu) => with_sample(&text, "process_cpu_seconds_total", cpu),
        None => text,
    }
}

/// `text` (Prometheus exposition) with the unlabelled sample of `name` set to `value`.
fn with_sample(text: &str, name: &str, value: f64) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        if line
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' '))
        {
            out.push_str(&format!("{name} {value}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Registers the `# HELP` text of every tailsift metric and sets
/// `tailsift_build_info`.
fn describe_all() {
    for m in names::ALL {
        let help = m.help();
        match m.kind {
            names::Kind::Counter => metrics::describe_counter!(m.name, help),
            names::Kind::Gauge => metrics::describe_gauge!(m.name, help),
            names::Kind::Histogram => metrics::describe_histogram!(m.name, help),
        }
    }
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("TAILSIFT_COMMIT")).set(1.0);
    process_metrics();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    #[test]
    fn the_cpu_seconds_sample_keeps_its_fraction() {
        let text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 0\nprocess_cpu_seconds_totalx 1\n";
        assert_eq!(
            with_sample(text, "process_cpu_seconds_total", 0.73),
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 0.73\nprocess_cpu_seconds_totalx 1\n"
        );
    }

    fn all_down() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
    }

    /// A start while every broker is down counts as one outage (the idle probes then
    /// wait `idle_delay_after_outage`), as does each later loss from up; a start that
    /// merely has not connected yet does not.
    #[test]
    fn outages_count_losses_from_up_and_a_start_while_down() {
        let h = Health::default();
        h.set_kafka_up(false, None);
        assert_eq!(h.outages(), 0, "not connected yet is no outage");
        h.note_error(&all_down(), "1/1 brokers are down");
        h.note_error(&all_down(), "1/1 brokers are down");
        assert_eq!(h.outages(), 1, "started while down: one outage");
        h.set_kafka_up(true, None);
        h.note_error(&all_down(), "1/1 brokers are down");
        assert_eq!(h.outages(), 2, "lost from up");

        let h = Health::default();
        h.set_kafka_up(true, None);
        assert_eq!(h.outages(), 0);
        h.set_kafka_up(false, None);
        h.note_error(&all_down(), "1/1 brokers are down");
        assert_eq!(h.outages(), 1, "one loss counts once");
    }
}
