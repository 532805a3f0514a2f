//! Event ids against a real worker and Redis: a completion has one id, `TASK:node.completed`,
//! whether it is reported the first time or again after the attempt that completed it died.

use secflow_common::{TaskEnvelope, config::DEFAULT_REDIS_URL};
use secflow_tests::{TestNs, publish};
use serde_json::json;
use std::time::Duration;

/// Proves: a task completed by an attempt that died while reporting it (its Redis key says
/// `completing` since long ago) is reported again with the same stable event id a first report
/// has, `TASK:node.completed`, and names the attempt that completed it; a task completed
/// normally has the same form of id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_reported_again_keeps_the_stable_event_id() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let orphan = TaskEnvelope::new("builtin.echo", json!({"n": 1}));
    let owner = "w-dead/0123456789abcdef0123456789abcdef";
    let client = redis::Client::open(DEFAULT_REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("sf:{{{}:task:{}}}", ns.name, orphan.task_id))
        .arg(format!("completing:1000:{owner}"))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let worker = ns.spawn_worker(ns.worker_config());
    let fresh = TaskEnvelope::new("builtin.echo", json!({"n": 2}));
    publish(&ns, &[orphan.clone(), fresh.clone()]).await;
    tap.wait_until("both completions", Duration::from_secs(20), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() == 2
    })
    .await;
    worker.stop().await;
    let completions = tap.of_kind("node.completed");
    for task in [&orphan, &fresh] {
        let e = completions
            .iter()
            .find(|e| e.task_id == Some(task.task_id))
            .unwrap();
        assert_eq!(
            e.event_id.as_deref(),
            Some(format!("{}:node.completed", task.task_id).as_str())
        );
    }
    let repeat = completions
        .iter()
        .find(|e| e.task_id == Some(orphan.task_id))
        .unwrap();
    assert_eq!(repeat.attempt.as_deref(), Some(owner));
}
