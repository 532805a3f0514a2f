//! Structured logs against the real RabbitMQ and Redis: in JSON lines, every line about a task
//! carries its trace, span, task, type, node, worker, attempt, error class and code, and the
//! worker says once which host and version it is; the log filter changes at run time (SIGHUP,
//! authenticated endpoint).

use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, command, exit_status, free_port, http_request, publish, wait_for};
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
    assert_eq!(retry["span"]["class"], "transient");
    assert_eq!(retry["span"]["code"], "injected");
    let trace = retry["span"]["trace_id"].as_str().unwrap_or_default();
    assert_eq!(trace.len(), 32, "{retry}");
    assert_eq!(retry["span"]["span_id"].as_str().map(str::len), Some(16));
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
    // The second attempt is another span of the same trace.
    assert_eq!(again["span"]["trace_id"], trace);
    assert_ne!(again["span"]["span_id"], retry["span"]["span_id"]);
}

/// Proves: the log filter is replaced at run time, by SIGHUP (from the filter file) and by
/// `PUT /log-filter` with the admin token; without the token or with an invalid filter nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_changes_without_a_restart() {
    let ns = TestNs::new().await;
    let port = free_port();
    let filter_file = std::env::temp_dir().join(format!("{}-filter", ns.name));
    std::fs::write(&filter_file, "info,secflow_worker=debug\n").unwrap();
    let mut worker = command("worker")
        .env("AMQP_URL", &ns.amqp_url)
        .env("RUST_LOG", "warn")
        .env("SECFLOW_ADMIN_TOKEN", "admin-token-for-the-test")
        .args([
            "--namespace",
            &ns.name,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--log-filter-file")
        .arg(&filter_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let auth = [("Authorization", "Bearer admin-token-for-the-test")];
    let filter = || async {
        http_request(port, "GET", "/log-filter", &auth, "")
            .await
            .map(|(status, body)| (status, body.trim().to_string()))
    };
    wait_for("the endpoint", Duration::from_secs(20), || async {
        filter().await.is_some()
    })
    .await;
    assert_eq!(filter().await, Some((200, "warn".into())));
    let unauthenticated = http_request(port, "PUT", "/log-filter", &[], "debug").await;
    assert_eq!(unauthenticated.map(|r| r.0), Some(401));
    let wrong = [("Authorization", "Bearer admin-token-for-the-tesT")];
    let forged = http_request(port, "PUT", "/log-filter", &wrong, "debug").await;
    assert_eq!(forged.map(|r| r.0), Some(401));
    let invalid = http_request(port, "PUT", "/log-filter", &auth, "secflow_worker=loud").await;
    assert_eq!(invalid.map(|r| r.0), Some(400));
    assert_eq!(filter().await, Some((200, "warn".into())));
    // SIGHUP applies the file.
    let pid = nix::unistd::Pid::from_raw(worker.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for(
        "SIGHUP to apply the file",
        Duration::from_secs(10),
        || async { filter().await == Some((200, "info,secflow_worker=debug".into())) },
    )
    .await;
    let set = http_request(port, "PUT", "/log-filter", &auth, "error").await;
    assert_eq!(set.map(|r| r.0), Some(200));
    assert_eq!(filter().await, Some((200, "error".into())));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        exit_status(&mut worker, Duration::from_secs(15))
            .await
            .success()
    );
    let _ = std::fs::remove_file(&filter_file);
}
