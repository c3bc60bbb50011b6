//! Hot reload of the sampling policies, on SIGHUP or when the config file changes.
//!
//! The file is read and validated as at start; if it is valid, its policy set (with
//! `sample_on_first_match`) takes over for every trace decided from then on, and the
//! traces already buffered stay buffered. An invalid file is rejected with a log line
//! and `tailsift_config_reloads_total{result="error"}`, and the running set carries
//! on. Other settings (Kafka, buffer, memory, telemetry, `annotate`) are read at start
//! only: changing them needs a restart, and a reload says so in its log line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::{Config, KafkaConfig};
use crate::decide::LivePolicies;
use crate::shutdown::Shutdown;
use crate::telemetry::names;

/// How often the file is checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The policies do not build.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

/// Loads `path` and puts its policies in force; returns the new generation's number
/// and the config loaded (the caller checks that its policies' topics exist).
///
/// # Errors
/// [`ReloadError`]; the policies in force stay.
pub fn reload(
    path: &std::path::Path,
    policies: &LivePolicies,
) -> Result<(u64, Config), ReloadError> {
    let cfg = Config::load(path)?;
    Ok((policies.replace(&cfg)?, cfg))
}

/// Watches `path` until `shutdown`: reloads on SIGHUP and whenever its contents
/// change (checked every `poll`). `kafka` is the running connection (a reload does
/// not change it), used to check that new policies' topics exist.
pub async fn watch(
    path: PathBuf,
    policies: Arc<LivePolicies>,
    kafka: KafkaConfig,
    mut shutdown: Shutdown,
    poll: Duration,
) {
    metrics::gauge!(names::POLICY_GENERATION).set(0.0);
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = hangups();
    loop {
        let why = tokio::select! {
            _ = shutdown.recv() => return,
            _ = next_hangup(&mut hup) => "SIGHUP",
            _ = tick.tick() => {
                let now = std::fs::read(&path).ok();
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                "the file changed"
            }
        };
        match reload(&path, &policies) {
            Ok((generation, cfg)) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
                metrics::gauge!(names::POLICY_GENERATION).set(generation as f64);
                info!(message = "Policies reloaded; they decide every trace from now on. Settings other than the policies need a restart.", trigger = why, path = %path.display(), generation);
                let topics: Vec<(String, bool)> = cfg
                    .policies
                    .iter()
                    .filter_map(|p| p.topic.clone().map(|t| (t, false)))
                    .collect();
                for topic in crate::sink::missing(&kafka, &topics).await {
                    warn!(message = "A reloaded policy's topic does not exist; its traces wait (input uncommitted) until it is created.", topic = %topic);
                }
            }
            Err(e) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "error").increment(1);
                error!(message = "Config reload rejected; the running policies stay in force.", trigger = why, path = %path.display(), error = %e);
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
}

async fn next_hangup(h: &mut Hangups) {
    #[cfg(unix)]
    if let Some(s) = h {
        s.recv().await;
        return;
    }
    let _ = h;
    std::future::pending::<()>().await;
}
