//! The cost of the fleet's background work per worker against Redis on loopback: building and
//! writing its registry record (once a second) and reading the fleet controls (four times a
//! second), p50/p99 of each, the record's size, and what that adds up to per worker per second.
//!
//! `cargo bench -p secflow-tests --bench heartbeat` (SECFLOW_BENCH_OPS overrides 5,000).

use secflow_common::{Topology, config::DEFAULT_REDIS_URL, topology::Namespace};
use secflow_worker::{
    WorkerStats,
    breaker::{Breakers, state::BreakerConfig},
    controls::ControlView,
    fleet::{Fleet, FleetArgs, FleetParts},
    store::Store,
};
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 * q) as usize).min(d.len() - 1)].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_OPS", 5_000);
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stats = Arc::new(WorkerStats::default());
    let store =
        Store::new(DEFAULT_REDIS_URL, &ns, Arc::clone(&stats)).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(store.check().await, "Redis must run on 127.0.0.1:6379");
    let controls = Arc::new(ControlView::new(DEFAULT_REDIS_URL, &ns).map_err(anyhow::Error::msg)?);
    let breakers = Arc::new(Breakers::new(
        Arc::clone(&store),
        BreakerConfig::default(),
        HashMap::new(),
    ));
    let topology = Arc::new(Topology::new(Namespace::new(&ns)?, 5));
    let fleet = Fleet::new(FleetParts {
        args: FleetArgs::default(),
        worker_id: "bench-worker".into(),
        pool: "default".into(),
        amqp_url: "amqp://127.0.0.1:5672/%2f".into(),
        stats,
        store,
        controls: Arc::clone(&controls),
        breakers,
        topology,
    });
    let Some(control_store) = controls.store() else {
        anyhow::bail!("the view has a store")
    };
    let (mut build, mut beat, mut refresh) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let record = fleet.record();
        build.push(t.elapsed());
        bytes = serde_json::to_vec(&record)?.len();
        let t = Instant::now();
        control_store.beat(&record).await?;
        beat.push(t.elapsed());
        let t = Instant::now();
        controls.refresh().await;
        refresh.push(t.elapsed());
    }
    let (b50, b99) = percentiles(build);
    let (h50, h99) = percentiles(beat);
    let (r50, r99) = percentiles(refresh);
    println!("fleet background work per worker, {n} rounds against Redis on loopback");
    println!(
        "  building the registry record: p50 {b50:.1} µs, p99 {b99:.1} µs ({bytes} bytes of JSON)"
    );
    println!("  writing it (HSET):             p50 {h50:.1} µs, p99 {h99:.1} µs");
    println!("  reading the controls (HGETALL): p50 {r50:.1} µs, p99 {r99:.1} µs");
    let per_second = b50 + h50 + 4.0 * r50;
    println!(
        "  per worker per second: 1 record + 4 control reads = {per_second:.0} µs of round trips ({:.3} % of one core if all of it were CPU), {} bytes written",
        per_second / 1e4,
        bytes
    );
    control_store
        .forget_worker(fleet.record().live.as_str())
        .await?;
    secflow_tests::delete_redis_keys(DEFAULT_REDIS_URL, &ns).await?;
    Ok(())
}
