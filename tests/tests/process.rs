//! Process-level guarantees with the real `worker` binary: a crashing task is dead-lettered
//! after the delivery limit without taking other tasks with it; SIGTERM drains gracefully.

use secflow_common::{TaskEnvelope, headers as h};
use secflow_tests::{TestNs, command, publish, stop_gracefully, wait_for};
use serde_json::json;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

fn echoes(n: usize) -> Vec<TaskEnvelope> {
    (0..n)
        .map(|i| TaskEnvelope::new("builtin.echo", json!({ "i": i })))
        .collect()
}

/// Proves: `builtin.crash` aborts the worker each time it runs; the broker redelivers it and,
/// after the delivery limit, it is dead-lettered; the 60 tasks queued around it all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_task_is_dead_lettered_after_the_delivery_limit_and_nothing_else_is_lost() {
    let ns = TestNs::with_delivery_limit(3).await;
    let tap = ns.tap_events().await;
    let mut ids = publish(&ns, &echoes(30)).await;
    let crash = publish(&ns, &[TaskEnvelope::new("builtin.crash", json!({}))]).await[0];
    ids.extend(publish(&ns, &echoes(30)).await);

    let dlq = ns.topology().dlq();
    // The dead worker's lease is taken over once its liveness lapses (about 3 s): the crash
    // task is then a suspect, run alone.
    let port = secflow_tests::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let args = ["--prefetch", "16", "--metrics-addr", metrics.as_str()];
    let mut child = ns.spawn_worker_process(&args);
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while ns.ready(&dlq).await == 0 {
        assert!(
            Instant::now() < deadline,
            "crash task never reached the DLQ ({crashes} crashes)"
        );
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the worker only exits here by crashing");
            crashes += 1;
            child = ns.spawn_worker_process(&args);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last crash happened before the broker dead-lettered the task (the dead worker's
    // connection closing is what charged its last delivery), but its exit may show a moment
    // later: the kernel closes a dying process's sockets before its parent can reap it, and on
    // a busy machine the broker can dead-letter the task and answer the DLQ check in between.
    // So the worker now running is either that one, about to be seen exited, or a fresh one,
    // about to be ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the worker only exits here by crashing");
            crashes += 1;
            child = ns.spawn_worker_process(&args);
            break;
        }
        if matches!(
            secflow_tests::http_get(port, "/readyz").await,
            Some((200, _))
        ) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last worker neither exited nor became ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tap.wait_until(
        "all 60 echo tasks completed",
        Duration::from_secs(30),
        |ev| {
            ids.iter().all(|id| {
                ev.iter()
                    .any(|e| e.kind == "node.completed" && e.task_id == Some(*id))
            })
        },
    )
    .await;
    // A worker started just now must have its signal handler before it is told to stop.
    secflow_tests::wait_for("the last worker ready", Duration::from_secs(30), || async {
        matches!(
            secflow_tests::http_get(port, "/readyz").await,
            Some((200, _))
        )
    })
    .await;
    stop_gracefully(&mut child).await;

    assert!(
        (3..=4).contains(&crashes),
        "the crash task ran about delivery-limit times, not {crashes}"
    );
    let dead = ns.take_dlq(1, Duration::from_secs(5)).await;
    assert_eq!(
        dead[0]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(crash.to_string())
    );
    let headers = dead[0].properties.headers().as_ref();
    // Dead-lettered by the broker (newest x-death entry) or by a worker that counted the
    // unsettled deliveries across deferred copies.
    let broker = secflow_dlq_inspector::record::deaths(headers)
        .into_iter()
        .next()
        .map(|(reason, _)| reason);
    let reason = h::get_str(headers, h::DEAD_LETTER_REASON)
        .map(str::to_string)
        .or(broker);
    assert_eq!(
        reason.as_deref(),
        Some("delivery_limit"),
        "dead-lettered for its delivery limit: {:?}",
        headers.map(secflow_common::headers::table_to_json)
    );
    assert_eq!(
        ns.ready(&dlq).await,
        0,
        "no innocent task was dead-lettered alongside it"
    );
    let dead_events = tap.of_kind("node.dead_lettered");
    assert!(
        dead_events.iter().all(|e| e.task_id == Some(crash)),
        "only the crash task failed"
    );
}

/// Proves: SIGTERM while 50 slow tasks are in flight makes the worker stop taking work, finish
/// what it can within the grace period, hand the rest back and exit 0; a second worker then
/// completes every task exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_slow_tasks_exits_zero_and_every_task_completes() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let tasks: Vec<_> = (0..50u64)
        .map(|i| TaskEnvelope::new("builtin.sleep", json!({ "ms": 200 + (i * 97) % 3000 })))
        .collect();
    let ids = publish(&ns, &tasks).await;
    let queue = ns.topology().work_queue("default");
    let mut child = ns.spawn_worker_process(&["--prefetch", "50", "--grace-period", "1"]);
    wait_for(
        "the worker to take all 50 tasks",
        Duration::from_secs(20),
        || async { ns.ready(&queue).await == 0 },
    )
    .await;

    stop_gracefully(&mut child).await;
    let done_before = tap.of_kind("node.completed").len();
    assert!(
        done_before < 50,
        "tasks longer than the grace period were handed back, not finished"
    );
    assert_eq!(
        ns.ready(&queue).await as usize,
        50 - done_before,
        "every unfinished task is back in the queue"
    );

    let worker = ns.spawn_worker(ns.worker_config());
    tap.wait_until("all 50 tasks completed", Duration::from_secs(30), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() >= 50
    })
    .await;
    worker.stop().await;
    let mut per_id: HashMap<_, usize> = HashMap::new();
    for e in tap.of_kind("node.completed") {
        *per_id.entry(e.task_id.unwrap()).or_default() += 1;
    }
    assert!(
        ids.iter().all(|id| per_id.get(id) == Some(&1)),
        "every task completed exactly once: {per_id:?}"
    );
}

/// Proves: the worker binary serves /healthz, /readyz (ready while consuming, with Redis's
/// state) and Prometheus /metrics counting settled tasks by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_endpoints() {
    let ns = TestNs::new().await;
    let port = secflow_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = ns.spawn_worker_process(&["--metrics-addr", &addr]);
    wait_for("/readyz to say ready", Duration::from_secs(20), || async {
        secflow_tests::http_get(port, "/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    let (_, ready) = secflow_tests::http_get(port, "/readyz").await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        (ready["consuming"].as_bool(), ready["redis"].as_str()),
        (Some(true), Some("ok"))
    );
    assert_eq!(
        secflow_tests::http_get(port, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    publish(&ns, &echoes(3)).await;
    wait_for(
        "3 completions in /metrics",
        Duration::from_secs(20),
        || async {
            secflow_tests::http_get(port, "/metrics")
                .await
                .is_some_and(|(_, body)| {
                    body.lines().any(|l| {
                        l.starts_with("secflow_tasks_settled_total{outcome=\"completed\"} 3")
                    })
                })
        },
    )
    .await;
    stop_gracefully(&mut child).await;
}

/// Proves: a binary the harness starts dies with the thread that started it (a test that fails
/// half-way leaves no worker behind): a worker waiting for an absent broker is SIGKILLed as
/// soon as its spawning thread ends.
#[test]
fn a_harness_child_dies_with_the_thread_that_started_it() {
    use std::os::unix::process::ExitStatusExt;
    let port = secflow_tests::free_port();
    let mut child = std::thread::spawn(move || {
        secflow_tests::command("worker")
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            )
            .args(["--namespace", "t-orphan", "--connect-timeout-secs", "120"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    })
    .join()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker outlived its thread"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// Proves: a worker that ran tasks and is stopped with SIGTERM exits 0 without a line at
/// `ERROR` (the AMQP client logged a connection error when a channel's last handle was dropped
/// while the connection was already closing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_logs_no_error() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let log = std::env::temp_dir().join(format!("{}-worker.log", ns.name));
    let mut child = command("worker")
        .env("AMQP_URL", &ns.amqp_url)
        .args(["--namespace", &ns.name, "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn the worker binary");
    publish(&ns, &echoes(20)).await;
    tap.wait_until("20 completions", Duration::from_secs(30), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() == 20
    })
    .await;
    stop_gracefully(&mut child).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "consumer stopped"),
        "the worker logged its stop: {text}"
    );
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "no error at a graceful stop: {errors:?}");
}

/// Proves: a worker whose own runtime has several threads (`--runtime-threads`) drains its
/// queue like the default one-thread worker, each task completed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_several_runtime_threads_completes_every_task() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let ids = publish(&ns, &echoes(40)).await;
    let mut child = ns.spawn_worker_process(&["--runtime-threads", "3"]);
    tap.wait_until("all 40 tasks completed", Duration::from_secs(30), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() >= 40
    })
    .await;
    stop_gracefully(&mut child).await;
    let completed: Vec<_> = tap
        .of_kind("node.completed")
        .into_iter()
        .filter_map(|e| e.task_id)
        .collect();
    let mut sorted = completed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(completed.len(), sorted.len(), "a task completed twice");
    assert!(ids.iter().all(|id| sorted.contains(id)));
}
