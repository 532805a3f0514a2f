//! Operator controls as every worker obeys them, against the real RabbitMQ and Redis: a breaker
//! held open by hand defers its service's tasks fleet-wide within a second and lifting the hold
//! lets them through; a paused type is held without costing deferrals or retries and runs when
//! resumed.

use secflow_common::{
    TaskEnvelope,
    control::{BreakerHold, ControlStore, HoldMode, Pause},
    now_ms,
};
use secflow_tests::{TestNs, publish};
use serde_json::json;
use std::time::Duration;

fn sleeper(ms: u64, service: &str) -> TaskEnvelope {
    let mut t = TaskEnvelope::new("builtin.sleep", json!({ "ms": ms }));
    t.service = Some(service.to_string());
    t
}

/// Proves: two workers draining tasks of service `nvd`; once an operator holds its breaker
/// open, no task of it completes later than one second (plus one task's run) after the hold,
/// they are deferred instead; when the hold is lifted every task completes, none
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_held_open_by_hand_defers_its_tasks_fleet_wide_within_a_second() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            ns.spawn_worker(secflow_worker::WorkerConfig {
                prefetch: 2,
                ..ns.worker_config()
            })
        })
        .collect();
    let tasks: Vec<_> = (0..300).map(|_| sleeper(20, "nvd")).collect();
    publish(&ns, &tasks).await;
    tap.wait_until("some completions", Duration::from_secs(30), |e| {
        e.iter().filter(|e| e.kind == "node.completed").count() >= 20
    })
    .await;
    let controls = ControlStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let held_at = now_ms();
    let hold = BreakerHold {
        mode: HoldMode::Open,
        until_ms: None,
        reason: "vendor maintenance".into(),
        by: "test".into(),
        at_ms: held_at,
    };
    controls.hold_breaker("nvd", Some(&hold)).await.unwrap();
    tap.wait_until("deferrals by the hold", Duration::from_secs(10), |e| {
        e.iter().filter(|e| e.kind == "node.deferred").count() >= 10
    })
    .await;
    let after: Vec<u64> = tap
        .of_kind("node.completed")
        .iter()
        .map(|e| e.at_ms)
        .filter(|&at| at > held_at)
        .collect();
    let last = after.iter().max().map_or(0, |at| at - held_at);
    println!(
        "last completion {last} ms after the hold ({} after it)",
        after.len()
    );
    assert!(
        last <= 1_000 + 20 + 100,
        "a task completed {last} ms after its breaker was held open"
    );
    let completed_while_held = tap.of_kind("node.completed").len();
    controls.hold_breaker("nvd", None).await.unwrap();
    tap.wait_until("every task completed", Duration::from_secs(60), |e| {
        let mut ids: Vec<_> = e
            .iter()
            .filter(|e| e.kind == "node.completed")
            .filter_map(|e| e.task_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() == tasks.len()
    })
    .await;
    assert!(completed_while_held < tasks.len());
    assert!(tap.of_kind("node.dead_lettered").is_empty());
    for w in workers {
        w.stop().await;
    }
}

/// Proves: a paused type is held without counting deferrals: with `--max-defers 2`, tasks held
/// for several deferrals still run (none dead-lettered as deferred too long) once resumed, and
/// none ran while paused; another type runs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_type_waits_without_burning_deferrals_and_runs_when_resumed() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let controls = ControlStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let pause = Pause {
        reason: "scanner upgrade".into(),
        by: "test".into(),
        at_ms: now_ms(),
    };
    controls.pause("builtin.sleep", Some(&pause)).await.unwrap();
    let worker = ns.spawn_worker(secflow_worker::WorkerConfig {
        max_defers: 2,
        ..ns.worker_config()
    });
    let paused: Vec<_> = (0..5).map(|_| sleeper(1, "x")).collect();
    publish(&ns, &paused).await;
    let other = publish(&ns, &[TaskEnvelope::new("builtin.noop", json!({}))]).await;
    tap.wait_until(
        "every paused task deferred three times",
        Duration::from_secs(30),
        |e| {
            paused.iter().all(|t| {
                e.iter()
                    .filter(|e| e.kind == "node.deferred" && e.task_id == Some(t.task_id))
                    .count()
                    >= 3
            })
        },
    )
    .await;
    let done = tap.of_kind("node.completed");
    assert_eq!(done.len(), 1, "only the other type ran while paused");
    assert_eq!(done[0].task_id, Some(other[0]));
    controls.pause("builtin.sleep", None).await.unwrap();
    tap.wait_until("the paused tasks ran", Duration::from_secs(30), |e| {
        e.iter().filter(|e| e.kind == "node.completed").count() == 6
    })
    .await;
    assert!(tap.of_kind("node.dead_lettered").is_empty());
    worker.stop().await;
}
