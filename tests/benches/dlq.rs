//! DLQ inspector benchmark: how long `list` and `stats` take on a DLQ of 10,000 dead-lettered
//! tasks (taking the lock, reading every message, formatting, handing them all back).
//!
//! `cargo bench -p secflow-tests --bench dlq` (SECFLOW_BENCH_DLQ overrides 10,000).

use futures_util::{StreamExt, stream};
use lapin::types::FieldTable;
use secflow_common::{TaskEnvelope, Topology, amqp, config::BrokerArgs, headers as h, now_ms};
use secflow_dlq_inspector::{Session, report};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("SECFLOW_BENCH_DLQ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let broker = BrokerArgs::local(&ns);
    let conn = amqp::connect(&broker.amqp_url, "secflow-bench", Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    topology.declare_core(&ch).await?;

    // Dead letters as a worker writes them.
    let publisher = amqp::Publisher::new(&conn).await?;
    let results: Vec<_> = stream::iter(0..n)
        .map(|i| {
            let task = TaskEnvelope::new(
                if i % 3 == 0 { "exec" } else { "http" },
                serde_json::json!({"target": format!("10.0.0.{}", i % 250)}),
            );
            let mut headers = FieldTable::default();
            h::set_str(&mut headers, h::DEAD_LETTER_REASON, "exhausted");
            h::set_str(&mut headers, h::ERROR_CLASS, "transient");
            h::set_str(&mut headers, h::ERROR_CODE, "timeout");
            h::set_str(
                &mut headers,
                h::ERROR_MESSAGE,
                "connect: connection timed out after 30 s",
            );
            h::set_u64(&mut headers, h::RETRY_COUNT, 4);
            h::set_u64(&mut headers, h::DEAD_LETTERED_AT, now_ms());
            h::set_str(
                &mut headers,
                h::ORIGIN_QUEUE,
                &topology.work_queue("default"),
            );
            h::set_str(&mut headers, h::ORIGIN_EXCHANGE, &topology.tasks_exchange());
            h::set_str(&mut headers, h::ORIGIN_ROUTING_KEY, &task.node_type);
            let props = amqp::json_properties(&task.task_id.to_string(), headers);
            let (publisher, dlx) = (&publisher, topology.dlx());
            async move {
                publisher
                    .publish(&dlx, "", &task.to_body(), props, true)
                    .await
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let session = Session::open(&broker, Duration::from_secs(5)).await?;
    let now = now_ms();
    let lines: usize = session
        .records
        .iter()
        .map(|r| report::list_line(r, now).len())
        .sum();
    let listed = session.records.len();
    session.release().await?;
    let list_time = started.elapsed();

    let started = Instant::now();
    let session = Session::open(&broker, Duration::from_secs(5)).await?;
    let stats = report::stats(&session.records, now_ms());
    session.release().await?;
    let stats_time = started.elapsed();

    println!("dlq-inspector benchmark: {n} dead-lettered tasks");
    println!(
        "  list   {listed} tasks ({} KiB of output) in {:.2} s",
        lines / 1024,
        list_time.as_secs_f64()
    );
    println!(
        "  stats  {} tasks in {:.2} s",
        stats.total,
        stats_time.as_secs_f64()
    );
    assert_eq!(
        (listed, stats.total),
        (n, n),
        "every message was read, and handed back for the next run"
    );

    topology.delete_all(&ch, &[]).await?;
    conn.close(200, "".into()).await?;
    Ok(())
}
