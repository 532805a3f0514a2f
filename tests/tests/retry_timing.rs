//! Retry timing against the real broker. Its own test binary, so it runs alone: cargo runs
//! test binaries one after another, and a delay measurement needs a machine that is not also
//! draining thousands of tasks for other tests.

use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, request};
use serde_json::json;
use std::time::Duration;

/// Proves: a task failing transiently twice is retried through the broker with x-retry-count
/// 1 then 2, each redelivery arriving within 10% (+50 ms) of its scheduled jittered delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_with_counted_headers_and_accurate_delays() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let mut req = request("builtin.fail", json!({"times": 2}), 1);
    req.retry = serde_json::from_value(json!({"strategy": "exponential", "base_delay_ms": 600, "multiplier": 2.0, "jitter": "equal", "max_attempts": 4})).unwrap();
    let id = publish_tasks(&ns.broker(), &req).await.unwrap()[0];
    tap.wait_until(
        "completion after two retries",
        Duration::from_secs(20),
        |ev| ev.iter().any(|e| e.kind == "node.completed"),
    )
    .await;
    worker.stop().await;

    let events: Vec<_> = tap
        .snapshot()
        .into_iter()
        .filter(|e| e.task_id == Some(id))
        .collect();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.retry_count))
        .collect();
    assert_eq!(
        kinds,
        [
            ("node.retrying", 0),
            ("node.retrying", 1),
            ("node.completed", 2)
        ]
    );
    // Each redelivery's observed wait against the delay its predecessor scheduled.
    for (before, after) in events.iter().zip(&events[1..]) {
        let scheduled = before.next_delay_ms.unwrap();
        assert_eq!(
            after.scheduled_delay_ms,
            Some(scheduled),
            "the header carries the scheduled delay"
        );
        let observed = after.observed_delay_ms.unwrap();
        let tolerance = scheduled / 10 + 50;
        assert!(
            observed.abs_diff(scheduled) <= tolerance,
            "retry {} waited {observed} ms, scheduled {scheduled} ms",
            after.retry_count
        );
    }
    let first = events[0].next_delay_ms.unwrap();
    assert!(
        (300..=600).contains(&first),
        "equal jitter keeps the first delay in [base/2, base]: {first}"
    );
    assert_eq!(events[2].output, Some(json!({"attempts": 3})));
}
