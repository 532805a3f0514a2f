//! Observability overhead: one `worker` process drains N no-op tasks with everything on (spans
//! exported over OTLP/HTTP to a local receiver, JSON logs at `info`, `/metrics` scraped every
//! second) and with everything off (no exporter, logs at `error`, no metrics endpoint). Rounds
//! alternate so machine noise hits both alike; prints each round, the medians, and the
//! throughput lost with everything on (target: at most 5 %).
//!
//! `cargo build --release -p secflow-worker --bins && cargo bench -p secflow-tests --bench observability`
//! (SECFLOW_BENCH_TASKS overrides 20,000 tasks, SECFLOW_BENCH_ROUNDS 3 rounds per setting).

use lapin::options::QueueDeclareOptions;
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
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 1..=rounds {
        for observed in [false, true] {
            let rate = drain(n, observed.then_some(collector)).await?;
            println!(
                "round {round}: {:<28} {rate:>8.0} tasks/s",
                if observed {
                    "traces+logs+metrics on"
                } else {
                    "all off"
                }
            );
            if observed { &mut on } else { &mut off }.push(rate);
        }
    }
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "median: all off {off:.0} tasks/s, all on {on:.0} tasks/s: {:.1} % lower with everything on (target <= 5 %); {} span batches received",
        (1.0 - on / off) * 100.0,
        exported.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Publishes `n` no-op tasks to a fresh namespace, starts one worker (observed: exporting to
/// the collector on `port`, JSON logs at info, metrics scraped) and returns tasks/s from its
/// first consumption to an empty queue.
async fn drain(n: usize, collector: Option<u16>) -> anyhow::Result<f64> {
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
    match collector {
        Some(port) => {
            cmd.env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            )
            .env("RUST_LOG", "info")
            .args(["--log-format", "json"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")]);
        }
        None => {
            cmd.env("RUST_LOG", "error")
                .env("OTEL_SDK_DISABLED", "true");
        }
    }
    let mut worker = cmd.spawn()?;
    let scraping = collector.map(|_| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = secflow_tests::http_get(metrics, "/metrics").await;
            }
        })
    });
    let queue = ns.topology().work_queue("default");
    let ready = || async {
        let ch = ns.conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "".into()).await;
        Some(q.message_count() as usize)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut first, mut left_at_first) = (None, n);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "drain not over in 5 min");
        let left = ready().await.unwrap_or(n);
        if first.is_none() && left < n {
            first = Some(Instant::now());
            left_at_first = left;
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = first.map_or(Duration::from_millis(1), |f| f.elapsed());
    if let Some(s) = scraping {
        s.abort();
    }
    secflow_tests::stop_gracefully(&mut worker).await;
    Ok(left_at_first as f64 / took.as_secs_f64())
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
