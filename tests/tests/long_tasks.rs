//! Checkpointed long tasks across a real worker crash, and chaos injection on a worker.

use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, redis_keys, request};
use serde_json::json;
use std::time::Duration;

const REDIS: &str = "redis://127.0.0.1:6379/";

/// Progress saved in the checkpoint of `task`, if any.
async fn checkpointed(ns: &TestNs, task: uuid::Uuid) -> Option<u64> {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("sf:{{{}:checkpoint:{task}}}", ns.name))
        .query_async(&mut conn)
        .await
        .unwrap();
    let saved: serde_json::Value = serde_json::from_str(&raw?).unwrap();
    saved["progress"]["next"].as_u64()
}

/// Runs a 20-item batch whose first worker dies once item 8 is checkpointed — the handler
/// aborts the process (`abort`) or the test SIGKILLs it —, then finishes it on a second worker
/// started with `second_args`; the completion event's output.
async fn crash_then_resume(abort: bool, second_args: &[&str]) -> (TestNs, serde_json::Value) {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    // A short lease: the crashed attempt's lease must expire before the task runs again.
    let mut first = ns.spawn_worker_process(&["--lease-ms", "1500"]);
    let id = publish_tasks(
        &ns.broker(),
        &request(
            "builtin.batch",
            if abort {
                json!({"items": 20, "item_ms": 10, "checkpoint_every": 2, "crash_after": 8})
            } else {
                json!({"items": 20, "item_ms": 50, "checkpoint_every": 2})
            },
            1,
        ),
    )
    .await
    .unwrap()[0];
    if !abort {
        secflow_tests::wait_for("item 8 checkpointed", Duration::from_secs(30), || async {
            checkpointed(&ns, id).await.is_some_and(|n| n >= 8)
        })
        .await;
        first.kill().unwrap();
    }
    let status = secflow_tests::exit_status(&mut first, Duration::from_secs(30)).await;
    assert!(!status.success(), "the first worker crashed mid-task");
    let mut second = ns.spawn_worker_process(&[&["--lease-ms", "1500"], second_args].concat());
    tap.wait_until("the batch completed", Duration::from_secs(30), |ev| {
        ev.iter()
            .any(|e| e.task_id == Some(id) && e.kind == "node.completed")
    })
    .await;
    secflow_tests::stop_gracefully(&mut second).await;
    let done: Vec<_> = tap
        .snapshot()
        .into_iter()
        .filter(|e| e.task_id == Some(id) && e.kind == "node.completed")
        .collect();
    assert_eq!(done.len(), 1, "completed exactly once");
    let keys = redis_keys(REDIS, &ns.name).await.unwrap();
    assert!(
        !keys.iter().any(|k| k.contains(":checkpoint:")),
        "the checkpoint is removed once the task completed: {keys:?}"
    );
    (ns, done[0].output.clone().unwrap())
}

/// Proves: a batch interrupted by a worker crash resumes on another worker from its last
/// checkpoint (item 8 of 20), and its result is the same as an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_batch_resumes_from_its_checkpoint() {
    let (_ns, out) = crash_then_resume(true, &[]).await;
    assert_eq!(out["resumed_from"], 8, "{out}");
    assert_eq!(out["processed"], 12, "{out}");
    assert_eq!(out["sum"], (0..20).sum::<u64>(), "{out}");
}

/// Proves: after a SIGKILL the task resumes from its checkpoint (at least item 8); a checkpoint
/// written by another handler version is ignored: the task restarts from scratch and still
/// gives the right result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_batch_resumes_from_its_checkpoint() {
    let (_ns, out) = crash_then_resume(false, &[]).await;
    let resumed = out["resumed_from"].as_u64().unwrap();
    assert!((8..20).contains(&resumed), "{out}");
    assert_eq!(out["processed"].as_u64().unwrap(), 20 - resumed, "{out}");
    assert_eq!(out["sum"], (0..20).sum::<u64>(), "{out}");
}

/// Proves: a checkpoint written by another handler version is ignored: the task restarts from
/// scratch and still gives the right result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_handler_version_restarts_from_scratch() {
    let (_ns, out) = crash_then_resume(false, &["--handler-version", "builtin.batch=v2"]).await;
    assert_eq!(out["resumed_from"], 0, "{out}");
    assert_eq!(out["processed"], 20, "{out}");
    assert_eq!(out["handler_version"], "v2");
    assert_eq!(out["sum"], (0..20).sum::<u64>(), "{out}");
}

/// Proves: chaos injection on a worker (transient failures, hangs, latency) shows up as
/// retries with the injected codes, and every task still completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_injection_causes_retries_and_nothing_is_lost() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut cfg = ns.worker_config();
    cfg.chaos = Some(
        secflow_worker::chaos::ChaosConfig::parse(
            r#"{"fail": {"transient": 0.3}, "hang": 0.1, "latency_ms": [0, 20]}"#,
        )
        .unwrap(),
    );
    // Injected failures would open the echo service's breaker and defer tasks for its open
    // period; this test is about retries.
    cfg.breaker_default = serde_json::from_value(json!({"failure_threshold": 10000})).unwrap();
    let worker = ns.spawn_worker(cfg);
    let mut req = request("builtin.echo", json!({}), 40);
    req.timeout_ms = Some(300);
    req.retry = Some(
        serde_json::from_value(
            json!({"max_attempts": 30, "base_delay_ms": 20, "max_delay_ms": 100}),
        )
        .unwrap(),
    );
    let ids = publish_tasks(&ns.broker(), &req).await.unwrap();
    tap.wait_until("all 40 completed", Duration::from_secs(60), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() >= 40
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    for id in &ids {
        let n = events
            .iter()
            .filter(|e| e.task_id == Some(*id) && e.kind == "node.completed")
            .count();
        assert_eq!(n, 1, "task {id} completed {n} times");
    }
    let codes: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "node.retrying")
        .filter_map(|e| e.error.as_ref().map(|x| x.code.as_str()))
        .collect();
    assert!(codes.contains(&"chaos_injected"), "{codes:?}");
    assert!(
        codes.contains(&"timeout"),
        "injected hangs time out: {codes:?}"
    );
}
