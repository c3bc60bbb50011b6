//! Hot reload of the sampling policies, on SIGHUP or when the config file changes.
//!
//! The file is read and validated as at start; if it is valid, its policy set (with
//! `sample_on_first_match`) takes over for every trace decided from then on, and the
//! traces already buffered stay buffered. An invalid file is rejected with a log line
//! and `tailsift_config_reloads_total{result="error"}`, and the running set carries
//! on. The log filter (`telemetry.logs.level`) is applied live too, unless `RUST_LOG`
//! set it. Every other setting (Kafka, buffer, memory, the listen address, ...) is
//! read at start only: a reload names each one the file changed since start in a
//! warning, and `tailsift_config_restart_pending` counts them until a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::Config;
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

/// What a new version of the config file changes, against the file the process
/// started with: compared as written (references unresolved), key by key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The policies (or `sample_on_first_match`) changed: applied live.
    pub policies: bool,
    /// `telemetry.logs.level` changed: applied live.
    pub log_level: bool,
    /// Every other changed key, dotted (`kafka.brokers`): applied at the next start.
    pub restart: Vec<String>,
}

/// Keys whose changes a reload applies: the policies, wherever they are written.
const LIVE_POLICY_KEYS: &[&str] = &[
    "policies",
    "sample_on_first_match",
    "tail_sampling",
    "processors",
];

/// Compares the file as the process started with it to its new text.
pub fn changes(started: &str, now: &str) -> Changes {
    let parse = |t: &str| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(t).unwrap_or_default();
    let mut paths = Vec::new();
    diff(&parse(started), &parse(now), &mut String::new(), &mut paths);
    let mut c = Changes::default();
    for p in paths {
        let top = p.split(['.', '[']).next().unwrap_or_default();
        if LIVE_POLICY_KEYS.contains(&top) {
            c.policies = true;
        } else if p == "telemetry.logs.level" {
            c.log_level = true;
        } else {
            c.restart.push(p);
        }
    }
    c
}

/// The dotted paths at which `a` and `b` differ (a whole list when any item does).
fn diff(
    a: &serde_yaml_ng::Value,
    b: &serde_yaml_ng::Value,
    path: &mut String,
    out: &mut Vec<String>,
) {
    use serde_yaml_ng::Value;
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            let keys: std::collections::BTreeSet<String> = x
                .keys()
                .chain(y.keys())
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            for k in keys {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k);
                let missing = Value::Null;
                diff(
                    x.get(k.as_str()).unwrap_or(&missing),
                    y.get(k.as_str()).unwrap_or(&missing),
                    path,
                    out,
                );
                path.truncate(len);
            }
        }
        _ if a != b => out.push(path.clone()),
        _ => {}
    }
}

/// Watches `path` until `shutdown`: reloads on SIGHUP and whenever its contents
/// change (checked every `poll`). `running` is the config the pipeline started with:
/// its Kafka connection (a reload does not change it) checks that new policies'
/// topics exist, and its policies are the first fingerprint.
pub async fn watch(
    path: PathBuf,
    policies: Arc<LivePolicies>,
    running: Config,
    mut shutdown: Shutdown,
    poll: Duration,
) {
    metrics::gauge!(names::POLICY_GENERATION).set(0.0);
    metrics::gauge!(names::CONFIG_RESTART_PENDING).set(0.0);
    let mut last = std::fs::read(&path).ok();
    let started = last
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let mut fingerprint = running.policy_fingerprint();
    metrics::gauge!(names::POLICY_FINGERPRINT, "fingerprint" => fingerprint.clone()).set(1.0);
    let kafka = running.kafka;
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
                let now_fp = cfg.policy_fingerprint();
                info!(message = "Policies reloaded; they decide every trace from now on.", trigger = why, path = %path.display(), generation, fingerprint = %now_fp);
                if fingerprint != now_fp {
                    let old = std::mem::replace(&mut fingerprint, now_fp.clone());
                    metrics::gauge!(names::POLICY_FINGERPRINT, "fingerprint" => old).set(0.0);
                    metrics::gauge!(names::POLICY_FINGERPRINT, "fingerprint" => now_fp).set(1.0);
                }
                let now = std::fs::read(&path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let changed = changes(&started, &now);
                if changed.log_level {
                    let level = cfg
                        .telemetry
                        .logs
                        .level
                        .as_deref()
                        .unwrap_or(crate::telemetry::RUN_LOG_LEVEL);
                    match crate::telemetry::set_log_level(level) {
                        Ok(true) => info!(message = "Log filter reloaded.", level = %level),
                        Ok(false) => warn!(message = "telemetry.logs.level changed, but RUST_LOG chose the log filter at start and wins."),
                        Err(e) => warn!(message = "telemetry.logs.level changed and does not parse; the running filter stays.", error = %e),
                    }
                }
                metrics::gauge!(names::CONFIG_RESTART_PENDING).set(changed.restart.len() as f64);
                if !changed.restart.is_empty() {
                    warn!(message = "The config file changed settings that only a restart applies; they are not in force.", settings = ?changed.restart);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_tells_live_changes_from_restart_ones() {
        let started = "kafka: {brokers: a:9092, input_topics: [i], output_topic: o, consumer: {session.timeout.ms: 6000}}\ntelemetry: {logs: {level: info}}\npolicies:\n  - {name: all, type: always_sample}\n";
        assert_eq!(changes(started, started), Changes::default());
        let now = started
            .replace("a:9092", "b:9092")
            .replace("6000", "7000")
            .replace("level: info", "level: debug")
            .replace("always_sample", "always_sample, topic: t")
            + "memory: {limit: 1GiB}\n";
        assert_eq!(
            changes(started, &now),
            Changes {
                policies: true,
                log_level: true,
                restart: vec![
                    "kafka.brokers".to_string(),
                    "kafka.consumer.session.timeout.ms".to_string(),
                    "memory".to_string(),
                ],
            }
        );
    }
}
