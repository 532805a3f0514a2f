//! A broker that stops answering (its process paused with SIGSTOP: connections stay open,
//! nothing comes back) holds nothing for ever: a worker connecting to it gives up within its
//! deadline with a clear error, a running worker stops on SIGTERM within its grace period, and
//! once the broker goes on, a worker consumes and completes tasks again.

use secflow_common::TaskEnvelope;
use secflow_tests::{PrivateRabbit, TestNs, command, exit_status, publish};
use serde_json::json;
use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_holds_no_worker_for_ever() {
    let rabbit = PrivateRabbit::start();
    let ns = TestNs::on_broker(&rabbit.url(), 5).await;
    let tap = ns.tap_events().await;
    let mut running = ns.spawn_worker_process(&["--grace-period", "2"]);
    let first = publish(&ns, &[TaskEnvelope::new("builtin.echo", json!({"n": 1}))]).await;
    tap.wait_until("the first task completed", Duration::from_secs(30), |ev| {
        ev.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(first[0]))
    })
    .await;

    rabbit.pause();
    // A new worker's connection attempt is never answered: it gives up within its deadline.
    let started = Instant::now();
    let mut late = command("worker")
        .env("AMQP_URL", rabbit.url())
        .env("RUST_BACKTRACE", "0")
        .args([
            "--namespace",
            &ns.name,
            "--connect-timeout-secs",
            "3",
            "--log-format",
            "text",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_status(&mut late, Duration::from_secs(20)).await;
    let waited = started.elapsed();
    let mut stderr = String::new();
    late.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        waited < Duration::from_secs(15),
        "gave up only after {waited:?}"
    );
    assert!(
        stderr.contains("RabbitMQ") || stderr.contains("broker"),
        "{stderr}"
    );

    // The running worker honours SIGTERM although the broker answers nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = exit_status(&mut running, Duration::from_secs(20)).await;
    assert!(stopped.success(), "the stopping worker failed: {stopped:?}");

    // The broker goes on: a new worker consumes and completes tasks.
    rabbit.resume();
    let mut worker = ns.spawn_worker_process(&[]);
    let second = publish(&ns, &[TaskEnvelope::new("builtin.echo", json!({"n": 2}))]).await;
    tap.wait_until("the second task completed", Duration::from_secs(60), |ev| {
        ev.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(second[0]))
    })
    .await;
    secflow_tests::stop_gracefully(&mut worker).await;
}
