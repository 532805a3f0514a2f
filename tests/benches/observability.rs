//! Observability overhead: one `worker` process drains N no-op tasks with everything on (spans
//! exported over OTLP/HTTP to a local receiver, JSON logs at `info`, `/metrics` scraped every
//! second) and with everything off (no exporter, logs at `error`, no metrics endpoint). Rounds
//! alternate so machine noise hits both alike; prints each round, the medians, and the
//! throughput lost with everything on (target: at most 5 %).
//!
//! `cargo build --release -p secflow-worker --bins && cargo bench -p secflow-tests --bench observability`
//! (SECFLOW_BENCH_TASKS overrides 20,000 tasks, SECFLOW_BENCH_ROUNDS 3 rounds per setting;
//! SECFLOW_BENCH_ON=traces, logs or metrics, comma-separated, turns on only those).

use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, command, free_port, request};
use serde_json::json;
use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 20_000);
    let rounds = secflow_tests::env_or("SECFLOW_BENCH_ROUNDS", 3);
    let (collector, exported) = sink().await?;
    let (mut off, mut on, mut off_cpu, mut on_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        for observed in [false, true] {
            let d = drain(n, observed.then_some(collector)).await?;
            println!(
                "round {round}: {:<22} {:>8.0} tasks/s, worker CPU {:>6.1} us/task",
                if observed {
                    "observability on"
                } else {
                    "all off"
                },
                d.rate,
                d.cpu_us_per_task
            );
            if observed {
                on.push(d.rate);
                on_cpu.push(d.cpu_us_per_task);
            } else {
                off.push(d.rate);
                off_cpu.push(d.cpu_us_per_task);
            }
        }
    }
    let (off, on) = (median(&mut off), median(&mut on));
    let (off_cpu, on_cpu) = (median(&mut off_cpu), median(&mut on_cpu));
    println!(
        "median: all off {off:.0} tasks/s, {off_cpu:.1} us CPU/task; on {on:.0} tasks/s, {on_cpu:.1} us CPU/task"
    );
    println!(
        "observability on costs {:.1} % of the throughput and {:.1} % more worker CPU per task (target <= 5 %); {} span batches received",
        (1.0 - on / off) * 100.0,
        (on_cpu / off_cpu - 1.0) * 100.0,
        exported.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Publishes `n` no-op tasks to a fresh namespace, starts one worker (observed: exporting to
/// the collector on `port`, JSON logs at info, metrics scraped) and returns tasks/s from its
/// first consumption to an empty queue.
async fn drain(n: usize, collector: Option<u16>) -> anyhow::Result<Drained> {
    let ns = TestNs::new().await;
    let ids = publish_tasks(&ns.broker(), &request("builtin.noop", json!({}), n))
        .await
        .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
    anyhow::ensure!(ids.len() == n, "published {} of {n}", ids.len());
    let mut cmd = command("worker");
    cmd.env("AMQP_URL", &ns.amqp_url)
        .args(["--namespace", &ns.name])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let metrics = free_port();
    // SECFLOW_BENCH_ON picks what "on" turns on (default: traces,logs,metrics).
    let on = std::env::var("SECFLOW_BENCH_ON").unwrap_or_else(|_| "traces,logs,metrics".into());
    let has = |part: &str| collector.is_some() && on.split(',').any(|p| p.trim() == part);
    match collector {
        Some(port) if has("traces") => {
            cmd.env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            );
        }
        _ => {
            cmd.env("OTEL_SDK_DISABLED", "true");
        }
    }
    if has("logs") {
        cmd.env("RUST_LOG", "info").args(["--log-format", "json"]);
    } else {
        cmd.env("RUST_LOG", "error");
    }
    if has("metrics") {
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{metrics}")]);
    }
    let mut worker = cmd.spawn()?;
    let scraping = has("metrics").then(|| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = secflow_tests::http_get(metrics, "/metrics").await;
            }
        })
    });
    let queue = ns.topology().work_queue("default");
    let ready = || async {
        let q = secflow_common::amqp::passive_declare(&ns.conn, &queue)
            .await
            .ok()?;
        Some(q.message_count() as usize)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut first, mut left_at_first, mut cpu_at_first) = (None, n, 0);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "drain not over in 5 min");
        let left = ready().await.unwrap_or(n);
        if first.is_none() && left < n {
            first = Some(Instant::now());
            left_at_first = left;
            cpu_at_first = cpu_ticks(worker.id());
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = first.map_or(Duration::from_millis(1), |f| f.elapsed());
    let cpu = cpu_ticks(worker.id()).saturating_sub(cpu_at_first);
    if let Some(s) = scraping {
        s.abort();
    }
    secflow_tests::stop_gracefully(&mut worker).await;
    Ok(Drained {
        rate: left_at_first as f64 / took.as_secs_f64(),
        cpu_us_per_task: cpu as f64 * 1e6 / ticks_per_second() / left_at_first as f64,
    })
}

/// What one drain measured.
struct Drained {
    /// Tasks per second, wall clock.
    rate: f64,
    /// The worker process's CPU time (all threads, user + system) per task, µs: what
    /// observability costs the worker, much less sensitive than the rate to what else the
    /// machine runs.
    cpu_us_per_task: f64,
}

/// User + system CPU time of process `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// `/proc` reports CPU times in USER_HZ ticks, 100 a second on Linux whatever the kernel's HZ.
fn ticks_per_second() -> f64 {
    100.0
}

/// A collector stand-in on loopback that reads each OTLP request and answers 200 (counting
/// them); it does no decoding, so the worker, not the receiver, is what is measured.
async fn sink() -> anyhow::Result<(u16, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Answer each complete request (headers + Content-Length body).
                    while let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..at]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if pending.len() < at + 4 + len {
                            break;
                        }
                        pending.drain(..at + 4 + len);
                        counted.fetch_add(1, Ordering::Relaxed);
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((port, count))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
