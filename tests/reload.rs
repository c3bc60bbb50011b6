//! Hot reload of the policies under traffic: the new set decides every trace decided
//! after the reload, buffered traces are not lost, a bad file changes nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tailsift::codec::TraceId;
use tailsift::config::Config;
use tailsift::demo::metric;

const CHECKOUT: &str =
    "  - {name: checkout, type: string_attribute, string_attribute: {key: http.route, values: [/api/checkout]}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_policies_decide_buffered_and_new_traces_and_a_bad_file_changes_nothing() {
    let h = Harness::new(8, 2);
    let dir = std::env::temp_dir().join(format!("tailsift-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tailsift.yaml");
    let v1 = h.config_yaml(ERRORS_SLOW_AND, "4s", None);
    std::fs::write(&path, &v1).expect("write v1");
    let cfg = Config::load(&path).expect("v1 valid");
    let out = h.collector();
    let sampler = Instance::start(&cfg).await;
    let policies = std::sync::Arc::clone(&sampler.running.policies);
    tokio::spawn(tailsift::reload::watch(
        path.clone(),
        std::sync::Arc::clone(&policies),
        cfg.clone(),
        sampler.trigger.subscribe(),
        Duration::from_millis(100),
    ));
    sampler.wait_assigned().await;

    // Batch A is buffered (4 s decision wait) when the file changes to add a policy
    // reading an attribute the first set never tested.
    let a = feed(&h, 300, 0, 21, "lz4").await;
    std::fs::write(
        &path,
        h.config_yaml(&format!("{ERRORS_SLOW_AND}{CHECKOUT}"), "4s", None),
    )
    .expect("write v2");
    let reloaded = wait_until(Duration::from_secs(3), || policies.current().number == 1).await;
    assert!(reloaded, "the changed file was not picked up");
    let b = feed(&h, 300, 0, 22, "lz4").await;

    // A broken file is refused (on change and on SIGHUP) and the set stays.
    let telemetry = sampler.running.telemetry_addr.expect("telemetry");
    let errors = || {
        metric(
            &http_get(telemetry, "/metrics").1,
            "tailsift_config_reloads_total{result=\"error\"}",
        )
    };
    std::fs::write(
        &path,
        v1.replace("status_codes: [ERROR]", "status_codes: [BROKEN]"),
    )
    .expect("write v3");
    assert!(
        wait_until(Duration::from_secs(3), || errors() >= 1.0).await,
        "bad file not refused"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    assert!(
        wait_until(Duration::from_secs(3), || errors() >= 2.0).await,
        "SIGHUP did not reload"
    );
    assert_eq!(
        policies.current().number,
        1,
        "a bad file replaced the policies"
    );

    let truths: Vec<_> = a.iter().chain(&b).cloned().collect();
    let keep = |t: &tailsift::gen::Truth| t.error || t.slow || t.route == "/api/checkout";
    let n = truths.iter().filter(|t| keep(t)).count();
    let ok = wait_until(Duration::from_secs(30), || out.traces().len() >= n).await;
    out.settle(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    sampler.stop().await;
    let got: HashMap<TraceId, _> = out.traces();
    assert!(ok, "{} of {n} traces came out", got.len());
    for t in &truths {
        assert_eq!(
            got.contains_key(&t.trace_id),
            keep(t),
            "trace {} (error={}, slow={}, route={}, batch {})",
            t.trace_id,
            t.error,
            t.slow,
            t.route,
            if a.iter().any(|x| x.trace_id == t.trace_id) {
                "A, buffered at the reload"
            } else {
                "B"
            }
        );
        if let Some(o) = got.get(&t.trace_id) {
            assert_eq!(
                (o.distinct_spans, o.records),
                (t.spans, 1),
                "trace {} incomplete",
                t.trace_id
            );
        }
    }
    assert!(
        a.iter()
            .any(|t| !t.error && !t.slow && t.route == "/api/checkout"),
        "batch A has no plain checkout trace: the test shows nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
