//! A rolling restart of a 4-worker pool in the middle of a 20,000-task run, as a Kubernetes
//! Deployment does it (maxSurge 1, maxUnavailable 0): for each worker, a replacement is started
//! and ready before the old one gets SIGTERM. Nothing is lost and nothing completes twice.
//! Completions are counted from the `node.completed` events (by task and attempt), not from
//! done markers: an idempotent task that completes while Redis does not answer gets its marker
//! only when Redis answers again, and not at all if its worker stops before that.

use secflow_producer::publish_tasks;
use secflow_tests::{
    EventTap, TestNs, completing_attempts, free_port, http_get, request, stop_gracefully, wait_for,
    wait_ready,
};
use serde_json::json;
use std::{
    collections::HashMap,
    process::Child,
    time::{Duration, Instant},
};

const TASKS: usize = 20_000;
const WORKERS: usize = 4;

/// A worker process with its metrics port, started and waited for until /readyz says 200.
async fn ready_worker(ns: &TestNs, name: &str) -> (Child, u16) {
    let port = free_port();
    let child = ns.spawn_worker_process(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--worker-id",
        name,
        // 16 tasks of 50 ms in flight per worker: the run lasts long enough for four restarts.
        "--prefetch",
        "16",
    ]);
    wait_ready(name, port).await;
    (child, port)
}

/// Tasks completed so far.
fn completed(events: &EventTap) -> usize {
    completing_attempts(&events.snapshot()).len()
}

/// Proves: restarting every worker of a busy pool one at a time (replacement ready first, then
/// SIGTERM to the old one, which exits 0 within its grace period) loses no task and completes
/// none twice: every published task has exactly one completing attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_nothing_and_duplicates_nothing() {
    let ns = TestNs::new().await;
    let events = ns.tap_events().await;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        workers.push(ready_worker(&ns, &format!("{}-w{i}", ns.name)).await);
    }

    let broker = ns.broker();
    let publishing = tokio::spawn(async move {
        publish_tasks(
            &broker,
            &request("builtin.sleep", json!({ "ms": 50 }), TASKS),
        )
        .await
    });
    wait_for(
        "the run to be under way",
        Duration::from_secs(60),
        || async { completed(&events) >= 2_000 },
    )
    .await;

    for (i, slot) in workers.iter_mut().enumerate() {
        let replacement = ready_worker(&ns, &format!("{}-r{i}", ns.name)).await;
        let (mut old, old_port) = std::mem::replace(slot, replacement);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        // Not ready from the moment SIGTERM arrives (until the process is gone).
        wait_for(
            "the stopping worker to report not ready",
            Duration::from_secs(5),
            || async { http_get(old_port, "/readyz").await.map(|(s, _)| s) != Some(200) },
        )
        .await;
        let status = secflow_tests::exit_status(&mut old, Duration::from_secs(45)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "worker {i} exits 0 after SIGTERM ({status:?})"
        );
    }
    let done_after_restarts = completed(&events);
    assert!(
        done_after_restarts < TASKS,
        "the restarts ended before the run did (else this test proves less than it says)"
    );

    let ids = publishing.await.unwrap().expect("every task confirmed");
    assert_eq!(ids.len(), TASKS);
    // Every task completed; on a timeout, say where the others went.
    let deadline = Instant::now() + Duration::from_secs(180);
    while completed(&events) < TASKS {
        if Instant::now() > deadline {
            let snapshot = events.snapshot();
            let mut kinds: HashMap<&str, usize> = HashMap::new();
            for e in &snapshot {
                *kinds.entry(e.kind.as_str()).or_default() += 1;
            }
            panic!(
                "{} of {TASKS} tasks completed after 180 s; events by kind: {kinds:?}",
                completing_attempts(&snapshot).len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = completing_attempts(&events.snapshot());
    let lost = ids.iter().filter(|id| !attempts.contains_key(id)).count();
    let duplicated = attempts.values().filter(|a| a.len() > 1).count();
    eprintln!(
        "{TASKS} tasks, 4 workers restarted one at a time with {done_after_restarts} done: \
         {lost} lost, {duplicated} completed twice"
    );
    assert_eq!(lost, 0, "tasks without a completion");
    assert_eq!(duplicated, 0, "tasks completed by two attempts");
    for (mut worker, _) in workers {
        stop_gracefully(&mut worker).await;
    }
}
