//! A worker whose broker connection is closed under it reconnects, redeclares and resumes;
//! nothing in flight is lost.

use secflow_producer::{PublishRequest, publish_tasks};
use secflow_tests::TestNs;
use secflow_worker::{WorkerConfig, WorkerStats};
use serde_json::json;
use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Closes the broker-side connection named `name` (as an operator or a broker restart would).
fn close_connection(name: &str) {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pid = listing
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name}"))
        .to_string();
    let closed = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "test: connection dropped"])
        .output()
        .expect("rabbitmqctl");
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
}

/// Starts an in-process worker named `{ns}-w` with `prefetch`; its stats, stop token and handle.
fn named_worker(
    ns: &TestNs,
    prefetch: u16,
) -> (
    String,
    Arc<WorkerStats>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), secflow_worker::WorkerError>>,
) {
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let worker_id = format!("{}-w", ns.name);
    let cfg = WorkerConfig {
        worker_id: Some(worker_id.clone()),
        prefetch,
        ..ns.worker_config()
    };
    let worker = tokio::spawn(secflow_worker::run_with_stats(
        cfg,
        Arc::clone(&stats),
        stop.clone().cancelled_owned(),
    ));
    (worker_id, stats, stop, worker)
}

/// Proves: after its connection is closed by the broker, a worker is consuming again within
/// 5 s, and every task, published before and after, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_its_connection_is_closed() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let (worker_id, stats, stop, worker) = named_worker(&ns, 64);
    let echo = |n| PublishRequest {
        node_type: "builtin.echo".into(),
        config: json!({}),
        count: n,
        retry: None,
        timeout_ms: None,
    };
    let mut ids = publish_tasks(&ns.broker(), &echo(5)).await.unwrap();
    tap.wait_until("5 completions", Duration::from_secs(10), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() >= 5
    })
    .await;

    close_connection(&format!("secflow-worker {worker_id}"));
    let dropped = Instant::now();
    secflow_tests::wait_for("the worker to notice", Duration::from_secs(10), || async {
        !stats.consuming.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    secflow_tests::wait_for(
        "the worker to consume again",
        Duration::from_secs(10),
        || async { stats.consuming.load(std::sync::atomic::Ordering::SeqCst) },
    )
    .await;
    let recovery = dropped.elapsed();
    assert!(
        recovery < Duration::from_secs(5),
        "consuming again after {recovery:?}"
    );
    ids.extend(publish_tasks(&ns.broker(), &echo(5)).await.unwrap());
    tap.wait_until("all 10 completed", Duration::from_secs(20), |ev| {
        ids.iter().all(|id| {
            ev.iter()
                .any(|e| e.kind == "node.completed" && e.task_id == Some(*id))
        })
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Proves: tasks in flight and prefetched when the connection drops come back with a delivery
/// count, but they are not suspects (no worker died): none is run in isolation, all complete
/// once, and the worker is back at full concurrency at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_redelivered_after_a_lost_connection_are_not_suspects() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let (worker_id, stats, stop, worker) = named_worker(&ns, 16);
    let sleeps = PublishRequest {
        node_type: "builtin.sleep".into(),
        config: json!({"ms": 400}),
        count: 64,
        retry: None,
        timeout_ms: None,
    };
    let ids = publish_tasks(&ns.broker(), &sleeps).await.unwrap();
    tap.wait_until("a first completion", Duration::from_secs(10), |ev| {
        ev.iter().any(|e| e.kind == "node.completed")
    })
    .await;
    close_connection(&format!("secflow-worker {worker_id}"));
    tap.wait_until("all 64 completed", Duration::from_secs(60), |ev| {
        ids.iter().all(|id| {
            ev.iter()
                .any(|e| e.kind == "node.completed" && e.task_id == Some(*id))
        })
    })
    .await;
    assert_eq!(
        WorkerStats::get(&stats.isolated),
        0,
        "a lost connection is no evidence against the tasks it held"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}
