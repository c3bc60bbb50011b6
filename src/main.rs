//! tailsift command line. Everything here is argument handling; the work is in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tailsift::codec::TraceId;
use tailsift::config::Config;
use tailsift::demo::{self, DemoOptions, EmbeddedBroker};
use tailsift::gen::{self, FeedOptions, GenConfig, Generator};
use tailsift::policy::PolicySet;
use tailsift::shutdown::ShutdownTrigger;
use tailsift::{app, telemetry};

/// Tail-sampling stream processor for distributed traces on Kafka.
#[derive(Parser)]
#[command(version = telemetry::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sampler: join the consumer group and sample until SIGINT/SIGTERM.
    Run {
        /// Config file (see tailsift.example.yaml).
        #[arg(short, long)]
        config: PathBuf,
        /// Override kafka.brokers.
        #[arg(long, env = "TAILSIFT_BROKERS")]
        brokers: Option<String>,
    },
    /// Run only the route stage (the config's `route:` section, with
    /// `in_process: false`): split unkeyed input by trace id into the routed topics,
    /// as a consumer group of its own, until SIGINT/SIGTERM.
    Route {
        /// Config file (see tailsift.example.yaml).
        #[arg(short, long)]
        config: PathBuf,
        /// Override kafka.brokers.
        #[arg(long, env = "TAILSIFT_BROKERS")]
        brokers: Option<String>,
    },
    /// Validate a config file and print the effective policy set.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the config's policies over recorded OTLP files, offline, and report what
    /// would be kept.
    Simulate {
        /// Config file (only its policies are used).
        #[arg(short, long)]
        config: PathBuf,
        /// Files of recorded OTLP traces, each in one of: an ExportTraceServiceRequest
        /// in protobuf (one per file); records of a 4-byte big-endian length and that
        /// many bytes of it; OTLP/JSON, one document or one per line (the Collector's
        /// file exporter). Jaeger and Zipkin files are not read.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Zero-setup demo: embedded broker, synthetic traffic, live progress, checked summary.
    Demo {
        /// Traces to generate.
        #[arg(long, default_value_t = 20_000)]
        traces: usize,
        /// Traces per second.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Generate synthetic OTLP traces into a topic (keyed by trace id).
    Gen {
        /// Bootstrap servers.
        #[arg(long, env = "TAILSIFT_BROKERS")]
        brokers: String,
        /// Topic to write.
        #[arg(long)]
        topic: String,
        /// Traces to send.
        #[arg(long, default_value_t = 10_000)]
        traces: usize,
        /// Traces per second (0: as fast as possible).
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Input compression: none, gzip, snappy, lz4, zstd.
        #[arg(long, default_value = "lz4")]
        compression: String,
        /// 0: one message per service per trace, keyed by trace id; N: pack the
        /// traces of one partition into messages of at least N spans.
        #[arg(long, default_value_t = 0)]
        batch_spans: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Run a standalone embedded Kafka-protocol broker and print its address.
    Broker {
        /// Number of brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Topics to create, as NAME:PARTITIONS.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// What happened to one trace: its decisions (kept or dropped, when, by which
    /// policy, on what evidence, promoted or not) and where its input lies, read
    /// from the decisions topic and a time window of the input.
    Explain {
        #[command(flatten)]
        lookup: Lookup,
    },
    /// Write a trace, whole, from the retained input to the output topic (or
    /// `--to`), marked `tailsift.promoted: request`, and record it as kept.
    Promote {
        #[command(flatten)]
        lookup: Lookup,
        /// Topic to write to instead of `kafka.output_topic`.
        #[arg(long)]
        to: Option<String>,
    },
    /// Capacity planning: memory per instance, instances, partitions and network for
    /// a given input, from the figures the benches measure (see README, Memory and capacity).
    Plan {
        /// Spans per second across the whole input.
        #[arg(long)]
        spans_per_sec: f64,
        /// `buffer.decision_wait` (e.g. 30s, 1m).
        #[arg(long, value_parser = parse_wait)]
        decision_wait: Duration,
        /// Encoded OTLP bytes per span (input topic bytes / spans).
        #[arg(long, default_value_t = 450.0)]
        bytes_per_span: f64,
        /// Spans per trace, on average.
        #[arg(long, default_value_t = 20.0)]
        spans_per_trace: f64,
        /// Share of traces kept (0 to 1).
        #[arg(long, default_value_t = 0.1)]
        kept_share: f64,
        /// Cores one instance may use.
        #[arg(long, default_value_t = 2.0)]
        cores: f64,
        /// Memory one instance (pod) may use, e.g. 2Gi; more instances if needed.
        #[arg(long, value_parser = parse_size)]
        memory_per_instance: Option<u64>,
        /// `buffer.decision_cache_traces`.
        #[arg(long, default_value_t = 100_000)]
        decision_cache_traces: u64,
    },
}

/// Which trace `explain` and `promote` look up, and where.
#[derive(clap::Args, Debug)]
struct Lookup {
    /// The trace id, 32 hex digits.
    trace_id: String,
    /// Config file (its kafka section is used).
    #[arg(short, long)]
    config: PathBuf,
    /// Search around this time (RFC 3339, e.g. 2026-12-07T21:30:00Z); default:
    /// the window ending now.
    #[arg(long)]
    around: Option<String>,
    /// How much of the input to search.
    #[arg(long, default_value = "10m", value_parser = parse_wait)]
    window: Duration,
}

impl Lookup {
    /// The config, the trace id and the window, checked.
    fn resolve(&self) -> Result<(Config, TraceId, tailsift::inspect::Window)> {
        let cfg = Config::load(&self.config)?;
        let id = parse_trace_id(&self.trace_id)?;
        let window = search_window(self.around.as_deref(), self.window)?;
        Ok((cfg, id, window))
    }
}

/// A trace id from the command line: 32 hex digits.
fn parse_trace_id(s: &str) -> Result<TraceId> {
    TraceId::from_hex(s.trim())
        .ok_or_else(|| anyhow::anyhow!("trace id {s:?}: expected 32 hex digits"))
}

/// The time window to search: `window` centred on `around` (RFC 3339), or ending now.
fn search_window(
    around: Option<&str>,
    window: Duration,
) -> anyhow::Result<tailsift::inspect::Window> {
    let centre = match around {
        Some(t) => humantime::parse_rfc3339_weak(t).map_err(|e| {
            anyhow::anyhow!(
                "--around {t:?}: expected an RFC 3339 time such as 2026-12-07T21:30:00Z ({e})"
            )
        })?,
        None => std::time::SystemTime::now(),
    };
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let w = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let c = ms(centre);
    Ok(match around {
        Some(_) => tailsift::inspect::Window {
            from_ms: c.saturating_sub(w / 2),
            to_ms: c.saturating_add(w / 2),
        },
        None => tailsift::inspect::Window {
            from_ms: c.saturating_sub(w),
            to_ms: c,
        },
    })
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    tailsift::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration: expected e.g. 500ms, 30s, 2m"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    tailsift::config::parse_bytes(s)
        .ok_or_else(|| format!("{s:?} is not a size: expected e.g. 512Mi, 2Gi, 4GiB"))
}

/// `println!` that ends the process quietly when stdout is a closed pipe
/// (`tailsift check -c F | head -1`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a line to a closed stderr is dropped (the exit
/// status still tells).
macro_rules! err_out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{args}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        err_out!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

// What `run` logs unless `telemetry.logs.level` or `RUST_LOG` say otherwise.
use tailsift::telemetry::RUN_LOG_LEVEL;

/// Exit status of a `run` whose shutdown gave up (timeout or a second signal) with
/// traces undecided or unacknowledged.
const EXIT_DRAIN_INCOMPLETE: i32 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` and `broker` stop on a signal in their own way, from the start of the
    // process on; the other commands keep the default action (Ctrl-C ends them).
    let signals = match cli.command {
        Command::Run { .. } | Command::Route { .. } | Command::Broker { .. } => Signals::install(),
        _ => Signals::none(),
    };
    // The demo and generator talk to the terminal; keep logs to problems there.
    // (The demo also silences the embedded broker's own client, which reports the
    // broker's shutdown at exit as an error.)
    let default_level = match cli.command {
        Command::Demo { .. } => "warn,librdkafka=off,rdkafka::client=off",
        Command::Gen { .. } | Command::Broker { .. } => "warn,librdkafka=warn,rdkafka=warn",
        _ => RUN_LOG_LEVEL,
    };
    // `run` logs as its config says, once the config is read (its errors are printed).
    if !matches!(cli.command, Command::Run { .. } | Command::Route { .. }) {
        telemetry::init_logging(default_level, telemetry::LogEncoding::Text);
    }
    match dispatch(cli.command, signals).await {
        Ok(code) => code,
        Err(e) => {
            err_out!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command, mut signals: Signals) -> Result<ExitCode> {
    match cmd {
        Command::Run { config, brokers } => {
            let mut cfg = Config::load(&config)?;
            let logs = &cfg.telemetry.logs;
            telemetry::init_logging(
                logs.level.as_deref().unwrap_or(RUN_LOG_LEVEL),
                logs.encoding,
            );
            for w in &cfg.warnings {
                tracing::warn!(message = "Config setting not used.", detail = %w);
            }
            if let Some(b) = brokers {
                cfg.kafka.brokers = b;
                // `--brokers ""` or an empty TAILSIFT_BROKERS is refused like the file's.
                cfg.validate()?;
            }
            cfg.kafka.check_clients()?;
            cfg.warn_if_memory_exceeds_machine();
            let mut restarts = 0u32;
            loop {
                if restarts > 0 {
                    // A reload may have replaced the policies since start: the restarted
                    // pipeline takes the file's, or they would fall back to the start's
                    // until the file changed again.
                    match Config::load(&config) {
                        Ok(now) => {
                            cfg.policies = now.policies;
                            cfg.sample_on_first_match = now.sample_on_first_match;
                        }
                        Err(e) => {
                            tracing::warn!(message = "The config file does not load; the restarted pipeline decides with the policies it started with.", error = %e)
                        }
                    }
                }
                let trigger = ShutdownTrigger::new();
                let running = tokio::select! {
                    started = async {
                        if restarts == 0 {
                            app::start(&cfg, trigger.subscribe()).await
                        } else {
                            app::restart(&cfg, trigger.subscribe()).await
                        }
                    } => started?,
                    () = signals.recv() => {
                        // Nothing was read yet by this pipeline, so nothing is owed.
                        tracing::info!(message = "Shutdown requested while starting; stopping.");
                        trigger.trigger();
                        return Ok(ExitCode::SUCCESS);
                    }
                };
                tokio::spawn(tailsift::reload::watch(
                    config.clone(),
                    std::sync::Arc::clone(&running.policies),
                    cfg.clone(),
                    trigger.subscribe(),
                    tailsift::reload::POLL,
                ));
                let health = std::sync::Arc::clone(&running.health);
                let signalled = tokio::select! {
                    _ = signals.recv() => true,
                    _ = health.wait_fatal() => false,
                };
                if !signalled {
                    // Exactly-once mode after an aborted transaction: the buffers and
                    // caches assumed output that is now invisible, so start over from
                    // what was committed, as a restarted process would.
                    restarts += 1;
                    let backoff = Duration::from_secs(u64::from(restarts.min(5)));
                    tracing::error!(message = "Pipeline stopped; starting it again from the committed offsets and decisions.", reason = %health.fatal().unwrap_or_default(), restarts, backoff_s = backoff.as_secs());
                    trigger.trigger();
                    tokio::select! {
                        _ = running.wait() => {}
                        _ = signals.recv() => std::process::exit(EXIT_DRAIN_INCOMPLETE),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = signals.recv() => return Ok(ExitCode::from(EXIT_DRAIN_INCOMPLETE as u8)),
                    }
                }
                tracing::info!(
                    message = "Shutdown requested: draining (a second signal stops at once)."
                );
                trigger.trigger();
                tokio::select! {
                    _ = running.wait() => {}
                    _ = signals.recv() => {
                        // Nothing is lost: what was not committed is read again by the
                        // partitions' next owner.
                        tracing::error!(message = "Second signal: stopping at once; undecided and unacknowledged input stays uncommitted and will be re-read.");
                        std::process::exit(EXIT_DRAIN_INCOMPLETE);
                    }
                }
                if health.drain_incomplete() || health.fatal().is_some() {
                    tracing::error!(message = "Stopped before every kept trace was acknowledged; their input is uncommitted and will be re-read (nothing lost).");
                    return Ok(ExitCode::from(EXIT_DRAIN_INCOMPLETE as u8));
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
        Command::Route { config, brokers } => route(&config, brokers, signals).await,
        Command::Explain { lookup } => {
            let (cfg, id, window) = lookup.resolve()?;
            let kafka = cfg.sampler_kafka();
            let explained = tokio::task::spawn_blocking(move || {
                tailsift::inspect::explain(&kafka, id, window, &mut |p| err_out!("{p}"))
            })
            .await??;
            let set = PolicySet::build(&cfg.policies).ok();
            out!("{}", explained.report(set.as_ref()).trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote { lookup, to } => {
            let (cfg, id, window) = lookup.resolve()?;
            let kafka = cfg.sampler_kafka();
            let topic = to.unwrap_or_else(|| cfg.kafka.output_topic.clone());
            let (explained, written) = tokio::task::spawn_blocking(move || {
                let e = tailsift::inspect::explain(&kafka, id, window, &mut |p| err_out!("{p}"))?;
                let n = tailsift::inspect::promote(&kafka, &e, &topic)?;
                Ok::<_, tailsift::inspect::InspectError>((e, (n, topic)))
            })
            .await??;
            let set = PolicySet::build(&cfg.policies).ok();
            out!("{}", explained.report(set.as_ref()).trim_end());
            out!("promoted: {} spans written to {}", written.0, written.1);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            cfg.kafka.check_clients()?;
            cfg.warn_if_memory_exceeds_machine();
            let set = PolicySet::build(&cfg.policies)?;
            out!(
                "{}",
                tailsift::check::report(&config, &cfg, &set).trim_end()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            spans_per_sec,
            decision_wait,
            bytes_per_span,
            spans_per_trace,
            kept_share,
            cores,
            memory_per_instance,
            decision_cache_traces,
        } => {
            let input = tailsift::plan::PlanInput {
                spans_per_sec,
                decision_wait,
                bytes_per_span,
                spans_per_trace,
                kept_share,
                cores_per_instance: cores,
                memory_per_instance,
                decision_cache_traces,
                ..Default::default()
            };
            out!("{}", tailsift::plan::plan(&input)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { config, inputs } => {
            let cfg = Config::load(&config)?;
            let r = tailsift::simulate::run(&cfg, &inputs)?;
            let mib = |b: u64| b as f64 / 1048576.0;
            let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * a / b } else { 0.0 };
            out!(
                "read {} requests ({} undecodable): {} traces, {} spans, {:.1} MiB of spans",
                r.messages,
                r.undecodable,
                r.traces,
                r.spans,
                mib(r.bytes)
            );
            out!(
                "kept {} traces ({:.1}%), {} spans, {:.1} MiB -> volume reduced by {:.1}%",
                r.kept_traces,
                pct(r.kept_traces as f64, r.traces as f64),
                r.kept_spans,
                mib(r.kept_bytes),
                100.0 - pct(r.kept_bytes as f64, r.bytes as f64)
            );
            for (policy, n) in &r.per_policy {
                out!("  kept by {policy}: {n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { traces, rate, seed } => {
            let report =
                demo::run(&DemoOptions { traces, rate, seed }, |line| out!("{line}")).await?;
            for l in &report.lines {
                out!("{l}");
            }
            if report.passed {
                out!("demo passed: every check against the ground truth holds.");
                Ok(ExitCode::SUCCESS)
            } else {
                out!("demo FAILED: see the checks above.");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Gen {
            brokers,
            topic,
            traces,
            rate,
            compression,
            batch_spans,
            seed,
        } => {
            let mut g = Generator::new(GenConfig {
                seed,
                ..GenConfig::default()
            });
            let opts = FeedOptions {
                traces,
                rate,
                compression,
                batch_spans,
            };
            let (truths, stats) = gen::feed(&brokers, &topic, &mut g, &opts, |s| {
                err_out!(
                    "sent {} traces, {} spans, {} messages",
                    s.traces,
                    s.spans,
                    s.messages
                );
            })
            .await
            .context("producing generated traces")?;
            let errors = truths.iter().filter(|t| t.error).count();
            let slow = truths.iter().filter(|t| t.slow).count();
            out!(
                "sent {} traces ({} error, {} slow), {} spans, {} bytes to {topic}",
                stats.traces,
                errors,
                slow,
                stats.spans,
                stats.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Broker { brokers, topics } => {
            let broker = EmbeddedBroker::start(brokers)?;
            for t in &topics {
                let Some((name, parts)) = t.rsplit_once(':') else {
                    bail!("--topic {t:?}: expected NAME:PARTITIONS, e.g. otlp_spans:16");
                };
                let parts: i32 = parts.parse().ok().filter(|p| *p > 0).with_context(|| {
                    format!("--topic {t:?}: expected a partition count >= 1 after ':'")
                })?;
                broker.create_topic(name, parts)?;
            }
            out!("{}", broker.bootstrap_servers());
            err_out!("embedded broker running; Ctrl-C to stop");
            signals.recv().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tailsift route`: the route stage alone, started again (with a backoff) after a
/// failed transaction, until a signal.
async fn route(
    config: &std::path::Path,
    brokers: Option<String>,
    mut signals: Signals,
) -> Result<ExitCode> {
    let mut cfg = Config::load(config)?;
    let logs = &cfg.telemetry.logs;
    telemetry::init_logging(
        logs.level.as_deref().unwrap_or(RUN_LOG_LEVEL),
        logs.encoding,
    );
    if let Some(b) = brokers {
        cfg.kafka.brokers = b;
        cfg.validate()?;
    }
    cfg.kafka.check_clients()?;
    let Some(route) = cfg.route.clone() else {
        bail!("config {}: `tailsift route` needs a `route:` section (route.topics: the unkeyed input topics)", config.display());
    };
    let trigger = ShutdownTrigger::new();
    let health = telemetry::Health::new();
    if !cfg.telemetry.listen.is_empty() {
        let (addr, _server) = telemetry::serve(
            &cfg.telemetry.listen,
            telemetry::install(),
            std::sync::Arc::clone(&health),
            trigger.subscribe(),
        )
        .await?;
        tracing::info!(message = "Serving /metrics, /healthz, /readyz and /startupz.", address = %addr);
    }
    if cfg.kafka.create_missing_topics {
        tailsift::route::create_routed_topics(&cfg.kafka, &route).await?;
    }
    let mut restarts = 0u32;
    loop {
        let router = {
            let (kafka, route, health) = (
                cfg.kafka.clone(),
                route.clone(),
                std::sync::Arc::clone(&health),
            );
            tokio::task::spawn_blocking(move || {
                tailsift::route::Router::new(&kafka, &route, health)
            })
            .await
            .context("starting the route stage")??
        };
        health.set_started();
        tracing::info!(message = "Route stage started.", topics = ?route.topics, targets = ?route.topics.iter().map(|t| route.target_of(t)).collect::<Vec<_>>());
        let stage = router.run(trigger.subscribe());
        tokio::pin!(stage);
        let result = tokio::select! {
            r = &mut stage => r,
            () = signals.recv() => {
                tracing::info!(message = "Shutdown requested: draining (a second signal stops at once).");
                trigger.trigger();
                tokio::select! {
                    r = &mut stage => r,
                    () = signals.recv() => std::process::exit(EXIT_DRAIN_INCOMPLETE),
                }?;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let Err(e) = result else {
            return Ok(ExitCode::SUCCESS);
        };
        restarts += 1;
        let backoff = Duration::from_secs(u64::from(restarts.min(5)));
        tracing::error!(message = "Route stage stopped; starting it again from the committed offsets.", reason = %e, restarts, backoff_s = backoff.as_secs());
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = signals.recv() => return Ok(ExitCode::from(EXIT_DRAIN_INCOMPLETE as u8)),
        }
    }
}

/// SIGINT and SIGTERM, listened for from the start of the process: a signal that
/// arrives while the config loads or the pipeline starts is a stop request like any
/// other, never the default action that would end the process mid-start.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// No listener: the default actions stay (a `recv` then waits for Ctrl-C).
    fn none() -> Self {
        Signals {
            #[cfg(unix)]
            term: None,
            #[cfg(unix)]
            int: None,
        }
    }

    /// Replaces the default actions of SIGINT and SIGTERM with this listener.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Resolves at the next SIGINT or SIGTERM (including one that came before the
    /// call and was not yet received).
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = next(&mut self.term) => {}
                () = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
