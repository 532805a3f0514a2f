//! Breaker and idempotency latency against Redis on loopback: p50/p99 of the breaker gate
//! (`admit` reading a closed breaker from Redis with one atomic script, and from the worker's
//! short cache of closed breakers), of recording a failure (compare-and-set),
//! and of a task's idempotency round trip (claim + complete), sequentially and with 64 tasks at
//! once as a worker runs them.
//!
//! `cargo bench -p secflow-tests --bench breaker` (SECFLOW_BENCH_OPS overrides 20,000).

use futures_util::{StreamExt, stream};
use secflow_common::{config::DEFAULT_REDIS_URL, now_ms};
use secflow_worker::{
    WorkerStats,
    breaker::{Breakers, state::BreakerConfig},
    store::{Lease, Store},
};
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("SECFLOW_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let store = Store::new(DEFAULT_REDIS_URL, &ns, Arc::new(WorkerStats::default()))
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(store.check().await, "Redis must run on 127.0.0.1:6379");
    let lenient = BreakerConfig {
        failure_threshold: 1_000,
        window_ms: 1,
        ..BreakerConfig::default()
    };
    let breakers = Arc::new(Breakers::new(Arc::clone(&store), lenient, HashMap::new()));

    println!("breaker and idempotency latency against Redis on loopback, {n} operations each");
    for concurrency in [1, 64] {
        // A service never seen before: the gate reads Redis (what it does at most every
        // CLOSED_CACHE_MS per service, and always for a breaker that is not closed).
        let admit = measure(n, concurrency, |i| {
            let b = Arc::clone(&breakers);
            async move {
                b.admit(&format!("scanner-{concurrency}-{i}"), now_ms())
                    .await;
            }
        })
        .await;
        report("breaker gate, read from Redis", concurrency, &admit);
        let cached = measure(n, concurrency, |_| {
            let b = Arc::clone(&breakers);
            async move {
                b.admit("scanner", now_ms()).await;
            }
        })
        .await;
        report("breaker gate, closed and cached", concurrency, &cached);
        let record = measure(n, concurrency, |_| {
            let b = Arc::clone(&breakers);
            async move { b.record("scanner", false, now_ms()).await }
        })
        .await;
        report("breaker failure (compare-and-set)", concurrency, &record);
        let idem = measure(n, concurrency, |i| {
            let s = Arc::clone(&store);
            async move {
                if let Ok(Ok(lease)) =
                    Lease::claim(&s, &format!("task-{concurrency}-{i}"), "bench", 30_000).await
                {
                    lease.complete(60_000).await;
                }
            }
        })
        .await;
        report("idempotency (claim + complete)", concurrency, &idem);
    }
    anyhow::ensure!(!store.is_degraded(), "Redis failed during the benchmark");
    // Leave nothing behind.
    secflow_tests::delete_redis_keys(DEFAULT_REDIS_URL, &ns).await?;
    Ok(())
}

/// Runs `op` `n` times with `concurrency` in flight; returns each latency.
async fn measure<F, Fut>(n: usize, concurrency: usize, op: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let op = &op;
    stream::iter(0..n)
        .map(|i| async move {
            let started = Instant::now();
            op(i).await;
            started.elapsed()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn report(what: &str, concurrency: usize, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    println!(
        "  {what:<36} concurrency {concurrency:>2}: p50 {:>7.3} ms  p99 {:>7.3} ms  (target p99 < 1 ms)",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
}
