//! Worker memory benchmark: one `worker` process (the release binary, default settings,
//! Redis on) is started on a namespace of its own. Prints its resident memory (`VmRSS`) once it
//! has been idle and ready for a few seconds, its peak (`VmHWM`) while draining no-op tasks at
//! the default prefetch, and its resident memory once idle again after the drain. Target: idle
//! below 30 MB. Figures are reported, not asserted.
//!
//! `cargo build --release -p secflow-worker --bins && cargo bench -p secflow-tests --bench memory`
//! (SECFLOW_BENCH_TASKS overrides 20,000 tasks).

use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, free_port, http_get, request, wait_for};
use std::time::Duration;

/// How long the worker sits idle before its memory is read: its connections, channels and
/// background loops (heartbeats, control reads, probes) have all run a few rounds by then.
const SETTLE: Duration = Duration::from_secs(5);

/// `VmRSS` and `VmHWM` of process `pid`, in MB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("bad {name} line: {line}"))?
            .parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 20_000);
    let ns = TestNs::new().await;
    let port = free_port();
    let mut worker = ns.spawn_worker_process(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let measured = measure(&ns, worker.id(), port, n).await;
    secflow_tests::stop_gracefully(&mut worker).await;
    let (idle, peak, after) = measured?;

    println!("worker memory (release binary, default settings, Redis on):");
    println!(
        "  idle and ready for {} s             {idle:>6.1} MB resident (target < 30 MB: {})",
        SETTLE.as_secs(),
        if idle < 30.0 { "met" } else { "NOT met" }
    );
    println!("  peak while draining {n} no-op tasks {peak:>6.1} MB");
    println!(
        "  idle again {} s after the drain       {after:>6.1} MB resident",
        SETTLE.as_secs()
    );
    Ok(())
}

/// Idle resident memory, peak while draining `n` tasks, and resident memory idle again, in MB.
async fn measure(ns: &TestNs, pid: u32, port: u16, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    wait_for(
        "the worker to be ready",
        Duration::from_secs(30),
        || async { http_get(port, "/readyz").await.map(|(s, _)| s) == Some(200) },
    )
    .await;
    // Idle is what is measured here: the wait is the measurement, not a synchronisation.
    tokio::time::sleep(SETTLE).await;
    let (idle, _) = memory(pid)?;

    publish_tasks(
        &ns.broker(),
        &request("builtin.noop", serde_json::json!({}), n),
    )
    .await?;
    let queue = ns.topology().work_queue("default");
    wait_for("the drain", Duration::from_secs(300), || async {
        ns.ready(&queue).await == 0
            && secflow_tests::redis_done_markers(
                secflow_common::config::DEFAULT_REDIS_URL,
                &ns.name,
            )
            .await
            .unwrap_or(0)
                >= n
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let (after, peak) = memory(pid)?;
    Ok((idle, peak, after))
}
