//! The stuck-task watchdog against the real RabbitMQ and Redis: a handler that blocks its
//! thread past its timeout is abandoned and its task retried as `timeout` without waiting for
//! it; one that lets go within the watchdog's grace is a healing action that worked, one that
//! does not makes `/healthz` fail so the worker is restarted.

use secflow_common::{TaskEnvelope, retry::RetryPolicy};
use secflow_tests::{TestNs, free_port, http_get, publish, wait_for};
use serde_json::json;
use std::time::Duration;

fn blocking(ms: u64) -> TaskEnvelope {
    let mut t = TaskEnvelope::new("builtin.block", json!({ "ms": ms }));
    t.timeout_ms = Some(1_000);
    // A second attempt far away: the test watches the first one.
    t.retry = Some(
        serde_json::from_value::<RetryPolicy>(
            json!({"strategy": "fixed", "base_delay_ms": 300000, "max_delay_ms": 300000, "max_attempts": 2, "jitter": "none"}),
        )
        .unwrap(),
    );
    t
}

/// Proves: a handler blocking its thread for 2.5 s under a 1 s timeout is retried as `timeout`
/// at its timeout, and reported as a stuck handler that let go (`healing.action`, worked) while
/// `/healthz` stays ok; one blocking for 7 s is reported as failed and `/healthz` answers 503
/// naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stuck_past_its_timeout_is_abandoned_retried_and_health_fails_if_it_holds_on() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = ns.spawn_worker_process(&["--metrics-addr", &addr]);
    wait_for("/healthz", Duration::from_secs(30), || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    let brief = publish(&ns, &[blocking(2_500)]).await[0];
    tap.wait_until("the retry as timeout", Duration::from_secs(20), |e| {
        e.iter().any(|e| {
            e.kind == "node.retrying"
                && e.task_id == Some(brief)
                && e.error.as_ref().is_some_and(|x| x.code == "timeout")
        })
    })
    .await;
    let retried_after = tap
        .of_kind("node.retrying")
        .iter()
        .find(|e| e.task_id == Some(brief))
        .map(|e| e.at_ms)
        .unwrap();
    tap.wait_until("the healing action", Duration::from_secs(20), |e| {
        e.iter().any(|e| {
            e.kind == "healing.action"
                && e.output.as_ref().unwrap()["action"] == "abandon_stuck_handler"
        })
    })
    .await;
    let healed = &tap.of_kind("healing.action")[0];
    assert_eq!(
        healed.output.as_ref().unwrap()["outcome"],
        "worked",
        "{healed:?}"
    );
    assert!(
        healed.at_ms >= retried_after,
        "the task was retried before the handler let go"
    );
    assert_eq!(http_get(port, "/healthz").await.map(|r| r.0), Some(200));

    let stuck = publish(&ns, &[blocking(7_000)]).await[0];
    tap.wait_until(
        "the second retry as timeout",
        Duration::from_secs(20),
        |e| {
            e.iter()
                .any(|e| e.kind == "node.retrying" && e.task_id == Some(stuck))
        },
    )
    .await;
    wait_for("/healthz to fail", Duration::from_secs(20), || async {
        matches!(http_get(port, "/healthz").await, Some((503, body)) if body.contains(&stuck.to_string()))
    })
    .await;
    tap.wait_until("the failed healing action", Duration::from_secs(20), |e| {
        e.iter().any(|e| {
            e.kind == "healing.action" && e.output.as_ref().unwrap()["outcome"] == "failed"
        })
    })
    .await;
    worker.kill().unwrap();
    let _ = worker.wait();
}
