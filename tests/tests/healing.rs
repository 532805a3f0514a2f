//! Self-healing against the real RabbitMQ and Redis: a silent worker is reported within three
//! beats and its task completes elsewhere once; a worker over its memory limit exits 0 with
//! nothing lost; a backlog is reported; an error-rate spike lowers the degradation level and
//! calm brings it back up, step by step, without flapping.

use nix::{sys::signal, unistd::Pid};
use secflow_common::{TaskEnvelope, control::ControlStore};
use secflow_tests::{TestNs, exit_status, publish, wait_for};
use secflow_worker::{WorkerConfig, fleet::FleetArgs};
use serde_json::json;
use std::time::{Duration, Instant};

fn sleeper(ms: u64) -> TaskEnvelope {
    TaskEnvelope::new("builtin.sleep", json!({ "ms": ms }))
}

fn detail<'a>(e: &'a secflow_common::events::TaskEvent, key: &str) -> &'a serde_json::Value {
    &e.output.as_ref().expect("fleet events carry a detail")[key]
}

/// Proves: a worker SIGSTOPped while it runs a task is reported `worker.unresponsive` (with a
/// `healing.action`) by another worker within three beats and the lead's handover; once it is
/// SIGKILLed the broker redelivers its task, which completes on the other worker exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_reported_and_its_task_completes_elsewhere_once() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut stopped = ns.spawn_worker_process(&["--prefetch", "1"]);
    let controls = ControlStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let pid = stopped.id();
    wait_for(
        "the first worker's record",
        Duration::from_secs(30),
        || async {
            let (records, _) = controls.workers().await.unwrap();
            records
                .iter()
                .any(|r| r.pid == pid && r.state == "consuming")
        },
    )
    .await;
    let task = publish(&ns, &[sleeper(2_000)]).await[0];
    wait_for("the task in flight", Duration::from_secs(30), || async {
        let (records, _) = controls.workers().await.unwrap();
        records.iter().any(|r| r.pid == pid && r.in_flight == 1)
    })
    .await;
    let other = ns.spawn_worker(ns.worker_config());
    let raw = Pid::from_raw(pid as i32);
    signal::kill(raw, signal::Signal::SIGSTOP).unwrap();
    let stopped_at = Instant::now();
    tap.wait_until("worker.unresponsive", Duration::from_secs(20), |e| {
        e.iter()
            .any(|e| e.kind == "worker.unresponsive" && detail(e, "pid") == pid)
    })
    .await;
    println!(
        "reported unresponsive {} ms after SIGSTOP",
        stopped_at.elapsed().as_millis()
    );
    // Published right after the report.
    tap.wait_until("the healing action", Duration::from_secs(10), |e| {
        e.iter().any(|e| {
            e.kind == "healing.action"
                && detail(e, "action") == "release_leases"
                && detail(e, "outcome") == "worked"
        })
    })
    .await;
    signal::kill(raw, signal::Signal::SIGKILL).unwrap();
    let _ = exit_status(&mut stopped, Duration::from_secs(10)).await;
    tap.wait_until(
        "the task completed elsewhere",
        Duration::from_secs(60),
        |e| {
            e.iter()
                .any(|e| e.kind == "node.completed" && e.task_id == Some(task))
        },
    )
    .await;
    other.stop().await;
    let completions = tap
        .of_kind("node.completed")
        .into_iter()
        .filter(|e| e.task_id == Some(task))
        .count();
    assert_eq!(completions, 1, "completed exactly once");
    let stats = controls.healing().await.unwrap();
    assert_eq!(stats.recovery_rate(), Some(1.0));
    let out = secflow_tests::inspector(&ns, &["workers", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healing"]["recovery_rate"], 1.0, "{report}");
    assert_eq!(report["healing"]["actions"]["release_leases"]["worked"], 1);
}

/// Proves: a worker above `--max-rss-mb` stops taking work, finishes what it holds and exits
/// 0, saying so in a `healing.action`; another worker then completes every task, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_exits_0_with_nothing_lost() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let tasks: Vec<_> = (0..40).map(|_| sleeper(300)).collect();
    publish(&ns, &tasks).await;
    let mut heavy = ns.spawn_worker_process(&["--prefetch", "8", "--max-rss-mb", "1"]);
    let status = exit_status(&mut heavy, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    tap.wait_until("the memory healing action", Duration::from_secs(10), |e| {
        e.iter().any(|e| {
            e.kind == "healing.action"
                && detail(e, "action") == "memory_restart"
                && detail(e, "outcome") == "worked"
        })
    })
    .await;
    let by_heavy = tap.of_kind("node.completed").len();
    let fresh = ns.spawn_worker(ns.worker_config());
    tap.wait_until("every task completed", Duration::from_secs(60), |e| {
        e.iter().filter(|e| e.kind == "node.completed").count() >= tasks.len()
    })
    .await;
    fresh.stop().await;
    let mut ids: Vec<_> = tap
        .of_kind("node.completed")
        .into_iter()
        .filter_map(|e| e.task_id)
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), all), (tasks.len(), tasks.len()), "each once");
    assert!(tap.of_kind("node.dead_lettered").is_empty());
    println!("{by_heavy} completed before the memory limit stopped the first worker");
}

/// Proves: a queue whose depth would take longer than `--backlog-secs` to drain at the measured
/// rate is reported in a `queue.backlog` event naming it, its depth and drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_reported() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let tasks: Vec<_> = (0..150).map(|_| sleeper(100)).collect();
    publish(&ns, &tasks).await;
    let worker = ns.spawn_worker(WorkerConfig {
        prefetch: 1,
        fleet: FleetArgs {
            backlog_secs: 3,
            ..FleetArgs::default()
        },
        ..ns.worker_config()
    });
    tap.wait_until("queue.backlog", Duration::from_secs(30), |e| {
        e.iter().any(|e| e.kind == "queue.backlog")
    })
    .await;
    let backlog = &tap.of_kind("queue.backlog")[0];
    assert_eq!(
        detail(backlog, "queue"),
        &json!(ns.topology().work_queue("default"))
    );
    assert!(detail(backlog, "depth").as_u64().unwrap() > 0);
    assert!(detail(backlog, "drain_secs").as_f64().unwrap() > 3.0);
    worker.stop().await;
}

/// Proves: a burst of failures lowers the level one step at a time (`degradation.changed` with
/// the error rate as reason) while the workers keep running, and once the window is calm the
/// level climbs back to `full` one step per recovery period: down, then up, never back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_spike_lowers_the_level_and_calm_restores_it_without_flapping() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(WorkerConfig {
        fleet: FleetArgs {
            degrade_error_rate: 0.2,
            degrade_min_tasks: 10,
            degrade_window_secs: 4,
            degrade_step_secs: 1,
            degrade_recover_secs: 3,
            ..FleetArgs::default()
        },
        ..ns.worker_config()
    });
    let failing: Vec<_> = (0..60)
        .map(|_| TaskEnvelope::new("builtin.fail", json!({"class": "permanent"})))
        .collect();
    let spike = Instant::now();
    publish(&ns, &failing).await;
    tap.wait_until("the first step down", Duration::from_secs(30), |e| {
        e.iter().any(|e| e.kind == "degradation.changed")
    })
    .await;
    println!(
        "first step down {} ms after the failures were published",
        spike.elapsed().as_millis()
    );
    tap.wait_until("the level down to medium", Duration::from_secs(30), |e| {
        e.iter()
            .any(|e| e.kind == "degradation.changed" && detail(e, "to") == "medium")
    })
    .await;
    // The tasks that follow run with the level's parameters.
    let probe = || {
        let mut t = TaskEnvelope::new("builtin.echo", json!({"rate_limit": 150}));
        t.degrade = serde_json::from_value(
            json!({"high": {"rate_limit": 100}, "medium": {"rate_limit": 50}}),
        )
        .unwrap();
        t
    };
    let rate_of = |id| {
        let done = tap.of_kind("node.completed");
        let e = done.iter().find(|e| e.task_id == Some(id)).cloned();
        e.map(|e| e.output.unwrap()["echo"]["rate_limit"].clone())
    };
    let during = publish(&ns, &[probe()]).await[0];
    wait_for(
        "the probe during the spike",
        Duration::from_secs(10),
        || async { rate_of(during).is_some() },
    )
    .await;
    assert_eq!(rate_of(during), Some(json!(50)), "medium's parameters");
    tap.wait_until("the level back to full", Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| e.kind == "degradation.changed" && detail(e, "to") == "full")
    })
    .await;
    let changes: Vec<String> = tap
        .of_kind("degradation.changed")
        .iter()
        .map(|e| detail(e, "to").as_str().unwrap().to_string())
        .collect();
    assert_eq!(changes, ["high", "medium", "high", "full"]);
    let first = &tap.of_kind("degradation.changed")[0];
    assert!(
        detail(first, "reason")
            .as_str()
            .unwrap()
            .contains("error rate"),
        "{first:?}"
    );
    let controls = ControlStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    wait_for("workers to see full", Duration::from_secs(5), || async {
        controls.read().await.unwrap().level.level == secflow_common::control::Level::Full
    })
    .await;
    // Once the worker's record says it sees full, the config is as written again.
    wait_for(
        "the worker to see full",
        Duration::from_secs(10),
        || async {
            let (records, _) = controls.workers().await.unwrap();
            records
                .iter()
                .all(|r| r.level == secflow_common::control::Level::Full)
        },
    )
    .await;
    let after = publish(&ns, &[probe()]).await[0];
    wait_for(
        "the probe after recovery",
        Duration::from_secs(10),
        || async { rate_of(after).is_some() },
    )
    .await;
    assert_eq!(
        rate_of(after),
        Some(json!(150)),
        "full runs the config as written"
    );
    let level = controls.read().await.unwrap().level;
    assert!(level.auto);
    assert_eq!(level.level, secflow_common::control::Level::Full);
    worker.stop().await;
}
