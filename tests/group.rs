//! Several instances in one consumer group.

mod common;

use std::time::Duration;

use common::*;
use tailsift::gen::Truth;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_without_splitting_or_duplicating() {
    let h = Harness::new(16, 4);
    let cfg = h.config(ERRORS_SLOW_AND, "1s", Some("300ms"));
    let out = h.collector();
    let a = Instance::start(&cfg).await;
    let b = Instance::start(&cfg).await;
    let balanced = wait_until(Duration::from_secs(40), || {
        let (x, y) = (a.running.health.assigned(), b.running.health.assigned());
        x > 0 && y > 0 && x + y == 16
    })
    .await;
    assert!(
        balanced,
        "partitions not shared: {} and {}",
        a.running.health.assigned(),
        b.running.health.assigned()
    );
    let truths = feed(&h, 2000, 0, 11, "lz4").await;
    let want: Vec<&Truth> = truths.iter().filter(|t| t.error || t.slow).collect();
    let ok = wait_until(Duration::from_secs(60), || out.traces().len() >= want.len()).await;
    out.settle(Duration::from_secs(3), Duration::from_secs(30))
        .await;
    a.stop().await;
    b.stop().await;
    let got = out.traces();
    assert!(
        ok,
        "{} of {} traces came out; missing: {:?}",
        got.len(),
        want.len(),
        missing_kept(&truths, &got)
    );
    for t in &want {
        let o = got
            .get(&t.trace_id)
            .unwrap_or_else(|| panic!("trace {} not kept", t.trace_id));
        assert_eq!(
            (o.records, o.spans, o.distinct_spans),
            (1, t.spans, t.spans),
            "trace {} split or duplicated",
            t.trace_id
        );
    }
    assert_eq!(got.len(), want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_mid_stream_loses_no_kept_trace() {
    let h = Harness::new(16, 4);
    let cfg = h.config(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    let a = Instance::start(&cfg).await;
    let b = Instance::start(&cfg).await;
    let balanced = wait_until(Duration::from_secs(40), || {
        a.running.health.assigned() > 0 && b.running.health.assigned() > 0
    })
    .await;
    assert!(balanced, "partitions not shared");
    // Traffic for ~6 s; A stops after 2 s with traces of its partitions still
    // buffered (decision_wait 2 s); B must take them over from A's commits.
    let traffic = traffic(&h, 3000, 500, 23);
    // Kept traces coming out: the traffic has run past a decision wait, so A holds
    // traces of its partitions undecided.
    let flowing = wait_until(Duration::from_secs(30), || out.traces().len() >= 10).await;
    assert!(flowing, "no kept trace came out before the stop");
    let a_had = a.running.health.assigned();
    a.stop().await;
    let took_over = wait_until(Duration::from_secs(40), || {
        b.running.health.assigned() == 16
    })
    .await;
    assert!(took_over, "B did not take over A's {a_had} partitions");
    let truths = traffic.await.expect("traffic task");
    let want: Vec<&Truth> = truths.iter().filter(|t| t.error || t.slow).collect();
    let ok = wait_until(Duration::from_secs(60), || {
        let got = out.traces();
        want.iter().all(|t| {
            got.get(&t.trace_id)
                .is_some_and(|o| o.distinct_spans == t.spans)
        })
    })
    .await;
    out.settle(Duration::from_secs(3), Duration::from_secs(30))
        .await;
    b.stop().await;
    h.assert_no_broker_truncation();
    let got = out.traces();
    let missing = missing_kept(&truths, &got);
    assert!(
        ok && missing.is_empty(),
        "kept traces lost or incomplete after takeover: {missing:?}"
    );
    assert_whole_records(&truths, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_under_traffic_loses_and_splits_nothing() {
    let h = Harness::new(16, 4);
    // decision_wait 2 s: every instance that leaves has traces of its partitions
    // buffered undecided, which the remaining one must decide from the commits.
    let cfg = h.config(ERRORS_SLOW_AND, "2s", None);
    let out = h.collector();
    let a = Instance::start(&cfg).await;
    a.wait_assigned().await;
    // ~25 s of traffic, ~3 MB per partition (the broker keeps ~5 MiB).
    let traffic = traffic(&h, 5000, 200, 29);
    let flowing = wait_until(Duration::from_secs(30), || out.traces().len() >= 5).await;
    assert!(flowing, "no kept trace came out before the scale-out");
    let b = Instance::start(&cfg).await;
    let c = Instance::start(&cfg).await;
    let spread = wait_until(Duration::from_secs(40), || {
        let n = [&a, &b, &c].map(|i| i.running.health.assigned());
        n.iter().all(|&x| x > 0) && n.iter().sum::<usize>() == 16
    })
    .await;
    assert!(spread, "three instances did not share the partitions");
    // B and C work a while: more kept traces out since they joined (each of them then
    // holds undecided traces of its partitions when it stops).
    let before = out.traces().len();
    let worked = wait_until(Duration::from_secs(30), || {
        out.traces().len() >= before + 10
    })
    .await;
    assert!(worked, "no kept trace came out while three instances ran");
    b.stop().await;
    c.stop().await;
    let back = wait_until(Duration::from_secs(40), || {
        a.running.health.assigned() == 16
    })
    .await;
    assert!(
        back,
        "the remaining instance did not take every partition back"
    );
    let truths = traffic.await.expect("traffic task");
    let ok = wait_until(Duration::from_secs(60), || {
        missing_kept(&truths, &out.traces()).is_empty()
    })
    .await;
    out.settle(Duration::from_secs(3), Duration::from_secs(30))
        .await;
    a.stop().await;
    h.assert_no_broker_truncation();
    let got = out.traces();
    let missing = missing_kept(&truths, &got);
    assert!(
        ok && missing.is_empty(),
        "kept traces lost or incomplete across 1 -> 3 -> 1: {missing:?}"
    );
    assert_whole_records(&truths, &got);
}
