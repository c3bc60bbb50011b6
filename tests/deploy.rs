//! What ships in `deploy/` holds together without a container engine or a cluster:
//! every YAML and JSON file parses, the dashboard, alert rules and autoscaler query
//! only metrics tailsift exports, and the config the Kubernetes manifests carry loads.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use serde::Deserialize;
use tailsift::config::Config;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every file under `dir` (recursively), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("readable dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every YAML document in `text`.
fn yaml_docs(text: &str) -> Result<Vec<serde_yaml_ng::Value>, serde_yaml_ng::Error> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(serde_yaml_ng::Value::deserialize)
        .collect()
}

/// Helm templates are Go templates, not YAML, until rendered.
fn is_template(p: &Path) -> bool {
    p.components().any(|c| c.as_os_str() == "templates")
}

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let mut checked = 0;
    for p in files(&deploy()) {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        match p.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") if !is_template(&p) => {
                let docs = yaml_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(!docs.is_empty(), "{} is empty", p.display());
                checked += 1;
            }
            Some("json") => {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 6, "only {checked} files checked");
}

/// The `tailsift_*` and `process_*` names a text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["tailsift_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Only whole identifiers (not `my_tailsift_x`).
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.insert(name.clone());
            }
            rest = &rest[at + name.len().max(1)..];
        }
    }
    out
}

/// The dashboard, the alert rules and the KEDA query name only metrics tailsift
/// exports: its own (from the one table in the code) and the process metrics, as a
/// live `/metrics` shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_alerts_and_autoscaling_use_only_exported_metrics() {
    let h = Harness::new(1, 1);
    let cfg = h.config(ERRORS_SLOW_AND, "500ms", None);
    let sampler = Instance::start(&cfg).await;
    let addr = sampler.running.telemetry_addr.expect("telemetry enabled");
    let (_, live) = http_get(addr, "/metrics");
    sampler.stop().await;
    let exported: BTreeSet<String> = tailsift::telemetry::names::ALL
        .iter()
        .map(|m| m.name.to_string())
        .chain(
            live.lines()
                .filter(|l| l.starts_with("# TYPE process_"))
                .filter_map(|l| l.split_whitespace().nth(2))
                .map(str::to_string),
        )
        .collect();
    assert!(
        exported.contains("process_resident_memory_bytes"),
        "no process metrics on /metrics:\n{live}"
    );
    let d = deploy();
    let users = [
        d.join("grafana/tailsift.json"),
        d.join("prometheus/alerts.yaml"),
        d.join("helm/tailsift/templates/scaledobject.yaml"),
    ];
    for p in &users {
        let text = std::fs::read_to_string(p).expect("readable");
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{} uses no metric", p.display());
        for name in used {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| exported.contains(*f))
                .unwrap_or(&name);
            assert!(
                exported.contains(family),
                "{} uses {name}, which tailsift does not export",
                p.display()
            );
        }
    }
}

/// The config inside each rendered Kubernetes manifest loads as `tailsift run` would
/// load it in its pod: the pod name, which Kubernetes provides, stood in for, and the
/// manifest's own Secret as the pod sees it (its keys as environment variables and
/// as files under /etc/tailsift/secrets).
#[test]
fn the_configs_the_manifests_carry_load() {
    let dir = deploy().join("kubernetes");
    let secrets_dir = std::env::temp_dir().join(format!("tailsift-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&secrets_dir).expect("scratch dir");
    let mut checked = 0;
    for p in files(&dir) {
        let text = std::fs::read_to_string(&p).expect("readable");
        let docs = yaml_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let secret: Vec<(String, String)> = docs
            .iter()
            .filter(|d| d["kind"] == "Secret")
            .filter_map(|d| d["stringData"].as_mapping())
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect();
        for doc in &docs {
            if doc["kind"] != "ConfigMap" {
                continue;
            }
            let yaml = doc["data"]["tailsift.yaml"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a ConfigMap without tailsift.yaml", p.display()));
            let mut yaml = yaml.replace("${env:POD_NAME}", "tailsift-0");
            for (k, v) in &secret {
                let file = secrets_dir.join(k);
                std::fs::write(&file, v).expect("secret file");
                yaml = yaml.replace(&format!("${{env:{k}}}"), v).replace(
                    &format!("${{file:/etc/tailsift/secrets/{k}}}"),
                    &format!("${{file:{}}}", file.display()),
                );
            }
            let cfg = Config::from_yaml(&yaml)
                .unwrap_or_else(|e| panic!("{}: its config does not load: {e}", p.display()));
            assert!(!cfg.policies.is_empty());
            checked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&secrets_dir);
    assert!(
        checked >= 2,
        "rendered manifests missing in {}",
        dir.display()
    );
}

/// The config the compose pipeline gives tailsift loads (its broker from the
/// environment, with the default the file names).
#[test]
fn the_compose_config_loads() {
    let path = deploy().join("compose/tailsift.yaml");
    let text = std::fs::read_to_string(&path).expect("readable");
    assert!(
        text.contains("${env:KAFKA_BROKERS:-"),
        "the broker comes from the environment"
    );
    let cfg = Config::from_yaml(&text.replace("KAFKA_BROKERS", "TAILSIFT_TEST_UNSET_BROKERS"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(cfg.kafka.brokers, "localhost:9092");
    assert_eq!(cfg.kafka.output_topic, "otlp_spans_sampled");
}
