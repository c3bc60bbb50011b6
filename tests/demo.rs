//! The README's first command, scaled down, in a process of its own (the demo reads
//! the process-wide metrics to know when the sampler is done).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passes_its_own_ground_truth_checks() {
    // The README's first command, scaled down: embedded broker, generator, sampler,
    // read-back and checks.
    let opts = tailsift::demo::DemoOptions {
        traces: 600,
        rate: 600,
        seed: 3,
    };
    let report = tailsift::demo::run(&opts, |_| {}).await.expect("demo runs");
    assert!(report.passed, "{}", report.lines.join("\n"));
    assert!(report.lines.iter().any(|l| l.contains("error traces kept")));
}
