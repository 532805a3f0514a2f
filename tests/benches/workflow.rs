//! Workflow benchmark on the real RabbitMQ and Redis with two workers:
//! (a) per-node orchestration overhead: in a chain of no-op nodes, the time from one node's
//!     completion to the next one's (its publish, delivery, claim, run, end script, events);
//! (b) a 10,000-node fan-out / fan-in recipe end to end (validate, store, run, finish).
//!
//! `cargo bench -p secflow-tests --bench workflow`
//! (SECFLOW_BENCH_CHAIN overrides 300 chain nodes, SECFLOW_BENCH_DAG 10,000 DAG nodes).

use futures_util::StreamExt;
use secflow_common::{Topology, amqp};
use secflow_producer::recipes;
use secflow_worker::WorkerConfig;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chain = secflow_tests::env_or("SECFLOW_BENCH_CHAIN", 300);
    let dag = secflow_tests::env_or("SECFLOW_BENCH_DAG", 10_000);
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let broker = secflow_tests::signed_broker(&ns);
    let conn = amqp::connect(&broker.amqp_url, "secflow-bench", Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    topology.declare_pool(&ch, "default", &["#".into()]).await?;
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(secflow_worker::run(
                WorkerConfig {
                    worker_id: Some(format!("bench-{i}")),
                    broker: broker.clone(),
                    ..WorkerConfig::local(&ns)
                },
                stop.clone().cancelled_owned(),
            ))
        })
        .collect();
    let dir = std::env::temp_dir();

    // (a) A chain: each hop is one node's whole orchestration.
    let mut yaml = String::from(
        "version: 1\nname: chain\nnodes:\n  - { id: n0, type: builtin.noop, outputs: [out] }\n",
    );
    for i in 1..chain {
        yaml.push_str(&format!(
            "  - {{ id: n{i}, type: builtin.noop, inputs: {{ x: n{}.out }}, outputs: [out] }}\n",
            i - 1
        ));
    }
    let chain_path = dir.join(format!("{ns}-chain.yaml"));
    std::fs::write(&chain_path, yaml)?;
    let events_ch = conn.create_channel().await?;
    let mut events =
        secflow_common::events::subscribe(&events_ch, &topology, "node.completed").await?;
    let run = recipes::submit(
        &broker,
        &chain_path.to_string_lossy(),
        &BTreeMap::new(),
        Some(Duration::from_secs(300)),
        false,
    )
    .await?;
    anyhow::ensure!(
        run.status.as_deref() == Some("succeeded"),
        "chain run ended {:?}",
        run.status
    );
    let mut at = Vec::with_capacity(chain);
    while at.len() < chain {
        let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("events ended"))??;
        for e in secflow_common::events::decode(&delivery.data)? {
            if e.run_id == Some(run.run_id) {
                at.push(e.at_ms);
            }
        }
    }
    at.sort_unstable();
    let mut hops: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    hops.sort_unstable();
    let pct = |p: f64| hops[((hops.len() as f64 * p) as usize).min(hops.len() - 1)];

    // (b) A wide DAG: one root, fan-out, one sink taking every branch's output.
    let mut yaml = String::from(
        "version: 1\nname: wide\nnodes:\n  - { id: root, type: builtin.noop, outputs: [out] }\n",
    );
    let mut sink = Vec::new();
    for i in 0..dag.saturating_sub(2) {
        yaml.push_str(&format!(
            "  - {{ id: m{i}, type: builtin.noop, inputs: {{ x: root.out }}, outputs: [out] }}\n"
        ));
        sink.push(format!("i{i}: m{i}.out"));
    }
    yaml.push_str(&format!(
        "  - {{ id: sink, type: builtin.noop, inputs: {{ {} }} }}\n",
        sink.join(", ")
    ));
    let dag_path = dir.join(format!("{ns}-dag.yaml"));
    std::fs::write(&dag_path, yaml)?;
    let started = Instant::now();
    recipes::load(&dag_path.to_string_lossy(), &BTreeMap::new())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let validate = started.elapsed();
    let started = Instant::now();
    let wide = recipes::submit(
        &broker,
        &dag_path.to_string_lossy(),
        &BTreeMap::new(),
        Some(Duration::from_secs(600)),
        false,
    )
    .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        wide.status.as_deref() == Some("succeeded"),
        "wide run ended {:?}",
        wide.status
    );

    println!("workflow benchmark, 2 workers, prefetch 64");
    println!(
        "  per-node orchestration, chain of {chain} no-op nodes: p50 {} ms  p99 {} ms  (completion to next completion)",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "  {dag}-node fan-out/fan-in end to end: {:.1} s ({:.0} nodes/s), of which validation {:.2} s",
        elapsed.as_secs_f64(),
        dag as f64 / elapsed.as_secs_f64(),
        validate.as_secs_f64()
    );

    stop.cancel();
    for w in workers {
        w.await??;
    }
    topology.delete_all(&ch, &["default"]).await?;
    secflow_tests::delete_redis_keys(&broker.redis_url, &ns).await?;
    let _ = std::fs::remove_file(chain_path);
    let _ = std::fs::remove_file(dag_path);
    Ok(())
}
