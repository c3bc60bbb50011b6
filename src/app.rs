//! Wires the stages together and owns startup and shutdown order.
//!
//! ```text
//! source --ScanJob--> scanners --ShardMsg--> decide::ShardWorker --SinkMsg--> sink
//!    ^   (by partition)  (codec)  (by trace)  (one per shard)             |
//!    |                                            | dropped traces       | acknowledged
//!    +------------------ Releases ----------------+-----------------------+
//! ```
//!
//! Shutdown runs front to back: the source stops reading and closes the scanner
//! channels, the scanners the shard channels; workers exit (buffered traces stay
//! uncommitted, to be re-read); the sink drains what it was given; the source commits
//! what is safe and leaves the group.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::budget::MemoryBudget;
use crate::buffer::TraceLimits;
use crate::clock::StreamClocks;
use crate::config::Config;
use crate::decide::{Generation, LivePolicies, ShardWorker, WorkerConfig};
use crate::flow::Releases;
use crate::policy::PolicyError;
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::sink::{Sink, SinkError};
use crate::source::{Outputs, Source, SourceError, StreamTime};
use crate::telemetry::{self, Health, ServerError};

/// Capacity of each shard's input channel, in messages.
const SHARD_CHANNEL: usize = 64;
/// Capacity of the sink's input channel, in kept traces.
const SINK_CHANNEL: usize = 4096;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The policies could not be built.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The consumer could not be created.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The producer could not be created.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The telemetry server could not start.
    #[error(transparent)]
    Telemetry(#[from] ServerError),
    /// Missing topics could not be created.
    #[error(transparent)]
    Topics(#[from] crate::sink::TopicError),
    /// The route stage could not start.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// A start-up step on the blocking pool ended without an answer (the runtime is
    /// shutting down).
    #[error("start-up interrupted: {0}")]
    Stopped(String),
}

/// A started pipeline.
pub struct Running {
    /// Where `/metrics` is served, if enabled.
    pub telemetry_addr: Option<SocketAddr>,
    /// Health flags, as the endpoints report them.
    pub health: Arc<Health>,
    /// The memory budget, as the buffer charges it.
    pub budget: MemoryBudget,
    /// The policy set in force; `reload` replaces it.
    pub policies: Arc<LivePolicies>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the pipeline has shut down and drained.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts the pipeline; it runs until `shutdown` fires.
///
/// # Errors
/// [`AppError`] if a component cannot be created.
pub async fn start(cfg: &Config, shutdown: Shutdown) -> Result<Running, AppError> {
    start_pipeline(cfg, shutdown, false).await
}

/// Starts the pipeline again after it stopped itself ([`Health::wait_fatal`]: an
/// aborted transaction, typically in a broker outage). The same as [`start`], except
/// that each partition's first idle streak lasts `buffer.idle_delay_after_outage`:
/// producers cut off by the same outage may still hold spans of the traces re-read
/// from the committed offsets, and a fresh pipeline would otherwise remember no
/// outage and decide those traces `idle_delay` after catching up.
///
/// # Errors
/// [`AppError`] if a component cannot be created.
pub async fn restart(cfg: &Config, shutdown: Shutdown) -> Result<Running, AppError> {
    start_pipeline(cfg, shutdown, true).await
}

async fn start_pipeline(
    cfg: &Config,
    shutdown: Shutdown,
    restarted: bool,
) -> Result<Running, AppError> {
    // The recorder first: metric handles registered before it would go nowhere.
    let prometheus = telemetry::install();
    let policies = Arc::new(LivePolicies::new(Generation::build(cfg, None)?));
    let health = Health::new();
    let mut telemetry_addr = None;
    let mut server = None;
    if !cfg.telemetry.listen.is_empty() {
        let (addr, task) = telemetry::serve(
            &cfg.telemetry.listen,
            prometheus,
            Arc::clone(&health),
            shutdown.clone(),
        )
        .await?;
        info!(message = "Serving /metrics, /healthz, /readyz and /startupz.", address = %addr);
        telemetry_addr = Some(addr);
        server = Some(task);
    }

    let mut topics = vec![
        (cfg.kafka.output_topic.clone(), false),
        (cfg.kafka.dead_letter_topic.clone(), false),
    ];
    if let Some(d) = &cfg.kafka.decisions_topic {
        topics.push((d.clone(), true));
    }
    for p in &cfg.policies {
        if let Some(t) = &p.topic {
            topics.push((t.clone(), false));
        }
    }
    if cfg.kafka.create_missing_topics {
        crate::sink::create_missing(&cfg.kafka, &topics).await?;
    } else {
        for topic in crate::sink::missing(&cfg.kafka, &topics).await {
            warn!(message = "A topic tailsift writes does not exist; its records wait (input uncommitted, nothing lost) until it is created, unless the broker creates topics on first use. Set kafka.create_missing_topics to create it.", topic = %topic);
        }
    }
    // In the background: a broker without DescribeConfigs (the embedded one) takes
    // the request's whole timeout (10 s) to say nothing.
    let kafka = cfg.kafka.clone();
    tokio::spawn(async move {
        for problem in crate::sink::decisions_retention_problems(&kafka).await {
            warn!(message = "The decisions topic's retention does not fit.", detail = %problem);
        }
    });
    let split = cfg.memory.split();
    let budget = MemoryBudget::new(
        split.buffer,
        cfg.memory.high_watermark,
        cfg.memory.low_watermark,
    );
    let observed_budget = budget.clone();
    let (releases, release_rx) = Releases::channel();
    let (sink_tx, sink_rx) = mpsc::channel(SINK_CHANNEL);
    // Blocking: the decisions topic's metadata read (up to 10 s) and, in exactly-once
    // mode, the transactional producer's initialisation (up to 30 s).
    let sink = {
        let (kafka, health, releases) = (cfg.kafka.clone(), Arc::clone(&health), releases.clone());
        tokio::task::spawn_blocking(move || Sink::new(&kafka, &split, health, sink_rx, releases))
            .await
            .map_err(|e| AppError::Stopped(e.to_string()))??
    };
    let clocks = Arc::new(StreamClocks::new());
    let (reread_tx, reread_rx) = mpsc::unbounded_channel();
    let worker_cfg = WorkerConfig {
        decision_wait: cfg.buffer.decision_wait.0,
        after_root: cfg.buffer.decision_wait_after_root_received.map(|d| d.0),
        limits: TraceLimits {
            max_spans: cfg.trace.max_spans,
            max_bytes: cfg.trace.max_bytes(&cfg.memory),
        },
        cache_capacity: cfg.buffer.decision_cache_traces,
        max_message_bytes: cfg.kafka.max_message_bytes,
        output_encoding: cfg.kafka.output_encoding,
        shards: cfg.shard_count(),
        record_decisions: cfg.kafka.decisions_topic.is_some(),
        annotate: cfg.annotate,
        skip_reread: cfg.kafka.decisions_topic.is_some() && cfg.kafka.input_topics.len() == 1,
        remember_output: cfg.kafka.input_topics.len() == 1,
        forget_on_revoke: cfg.kafka.exactly_once,
        clocks: Arc::clone(&clocks),
        rereads: cfg.promotion.enabled.then_some(reread_tx),
    };
    let shortest = worker_cfg
        .after_root
        .unwrap_or(worker_cfg.decision_wait)
        .min(worker_cfg.decision_wait);
    let stream = StreamTime {
        clocks,
        max_skew: cfg.buffer.max_timestamp_skew.0,
        idle_delay: cfg.buffer.idle_delay.0,
        idle_delay_after_outage: cfg.buffer.idle_delay_after_outage.0,
        probe_interval: (shortest / 10)
            .clamp(Duration::from_millis(100), Duration::from_millis(500)),
        restarted,
        // Several waits, and the longer idle confirmation after an outage on top.
        stall_after: worker_cfg.decision_wait * 3
            + cfg
                .buffer
                .idle_delay_after_outage
                .0
                .max(cfg.buffer.idle_delay.0),
    };
    let mut shard_txs = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..cfg.shard_count() {
        let (tx, rx) = mpsc::channel(SHARD_CHANNEL);
        shard_txs.push(tx);
        workers.push(ShardWorker::new(
            &worker_cfg,
            policies.watch(),
            budget.clone(),
            rx,
            sink_tx.clone(),
            releases.clone(),
        ));
    }
    let sampled = cfg.sampler_kafka();
    let router = match &cfg.route {
        Some(route) => {
            if cfg.kafka.create_missing_topics {
                crate::route::create_routed_topics(&cfg.kafka, route).await?;
            }
            if route.in_process {
                // A health of its own: the probes and `assigned` report the sampler's
                // group; the route stage's failures still stop the pipeline (below).
                let (kafka, route, health) = (cfg.kafka.clone(), route.clone(), Health::new());
                Some(
                    tokio::task::spawn_blocking(move || Router::new(&kafka, &route, health))
                        .await
                        .map_err(|e| AppError::Stopped(e.to_string()))??,
                )
            } else {
                None
            }
        }
        None => None,
    };
    let source = Source::new(
        &sampled,
        &split,
        budget,
        Arc::clone(&health),
        policies.scan_keys(),
        stream,
        Outputs {
            shards: shard_txs,
            sink: sink_tx,
            releases: release_rx,
            txn: sink
                .transactions()
                .map(|t| t as Arc<dyn crate::flow::TxnCommit>),
            rereads: cfg
                .promotion
                .enabled
                .then(|| (reread_rx, cfg.promotion.clone())),
        },
    )?;
    // The source must not hold a release sender, or its drain would never end; nor
    // may a re-read sender outlive the workers, or the re-reader would not end.
    drop(releases);
    drop(worker_cfg);
    health.set_started();
    info!(
        message = "tailsift started.",
        input = ?sampled.input_topics,
        output = %cfg.kafka.output_topic,
        shards = workers.len(),
        policies = cfg.policies.len()
    );
    let route_shutdown = shutdown.clone();
    let route_health = Arc::clone(&health);
    let task = tokio::spawn(async move {
        let router = router.map(|r| {
            tokio::spawn(async move {
                if let Err(e) = r.run(route_shutdown).await {
                    route_health.set_fatal(e.to_string());
                }
            })
        });
        let sink = tokio::spawn(sink.run());
        let workers: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run())).collect();
        source.run(shutdown).await;
        for w in workers {
            let _ = w.await;
        }
        let _ = sink.await;
        if let Some(r) = router {
            let _ = r.await;
        }
        if let Some(s) = server {
            let _ = s.await;
        }
        info!(message = "tailsift stopped.");
    });
    Ok(Running {
        telemetry_addr,
        health,
        budget: observed_budget,
        policies,
        task,
    })
}

/// Starts the pipeline and runs it until `shutdown` fires and everything drained.
///
/// # Errors
/// [`AppError`] if a component cannot be created.
pub async fn run(cfg: &Config, shutdown: Shutdown) -> Result<(), AppError> {
    start(cfg, shutdown).await?.wait().await;
    Ok(())
}
