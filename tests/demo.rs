//! The README's first command, scaled down, in a process of its own (the demo reads
//! the process-wide metrics to know when the sampler is done).

/// Log lines, captured (the demo runs in this process; this is the only test here).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passes_its_own_ground_truth_checks() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("warn,librdkafka=off,rdkafka=off")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
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
    let warned = String::from_utf8_lossy(
        &logs
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(
        !warned.contains("does not exist"),
        "the demo warned about a topic it should have made:\n{warned}"
    );
}
