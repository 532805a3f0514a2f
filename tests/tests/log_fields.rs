//! Structured logs against the real RabbitMQ and Redis: in JSON lines, every line about a task
//! carries its task, type, node, worker and attempt, and the worker says once which host and
//! version it is.

use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, command, exit_status, publish};
use serde_json::{Value, json};
use std::{process::Stdio, time::Duration};

/// Proves: a task that fails twice and then succeeds leaves a `retry scheduled` line whose span
/// names the task, its type, node, the worker and attempt 1, and one of attempt 2;
/// the first line of the worker names its host and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lines_carry_the_task_and_the_worker_says_its_host_and_version() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let log = std::env::temp_dir().join(format!("{}-worker.log", ns.name));
    let file = std::fs::File::create(&log).unwrap();
    let mut worker = command("worker")
        .env("AMQP_URL", &ns.amqp_url)
        .env("RUST_LOG", "secflow_worker=debug,warn")
        .args([
            "--namespace",
            &ns.name,
            "--worker-id",
            "log-test",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut task = TaskEnvelope::new("builtin.fail", json!({"class": "transient", "times": 2}));
    task.retry =
        Some(serde_json::from_value(json!({"strategy": "immediate", "max_attempts": 3})).unwrap());
    let id = publish(&ns, &[task]).await[0];
    tap.wait_until("the task completed", Duration::from_secs(30), |e| {
        e.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(id))
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = exit_status(&mut worker, Duration::from_secs(15)).await;
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let _ = std::fs::remove_file(&log);
    let start = lines
        .iter()
        .find(|l| l["message"] == "worker starting")
        .expect("a start line");
    assert!(start["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    let about = |attempt: u64| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| {
                l["span"]["task_id"] == json!(id.to_string()) && l["span"]["attempt"] == attempt
            })
            .collect()
    };
    let first = about(1);
    let retry = first
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("retry scheduled"))
        })
        .expect("the retry line carries the task");
    assert_eq!(retry["span"]["type"], "builtin.fail");
    assert_eq!(retry["span"]["node"], "builtin.fail");
    assert_eq!(retry["span"]["worker"], "log-test");
    assert_eq!(retry["class"], "transient");
    let second = about(2);
    let again = second
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("retry scheduled"))
        })
        .expect("the second attempt's retry line says attempt 2");
    assert_eq!(again["retry"], 2);
}
