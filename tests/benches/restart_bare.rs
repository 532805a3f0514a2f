//! Control for the restart benchmark: the same drain and broker restart with bare lapin
//! consumers (consume + ack, no SecFlow), to tell how much of the rate lost after a restart is
//! the broker's and how much the fleet's.
//!
//! `cargo bench -p secflow-tests --bench restart_bare` (SECFLOW_BENCH_TASKS overrides 150,000
//! messages, SECFLOW_BENCH_WORKERS 4 consumers; prefetch 64 each).

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use secflow_tests::PrivateRabbit;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const QUEUE: &str = "bare-restart";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 150_000) as u64;
    let consumers = secflow_tests::env_or("SECFLOW_BENCH_WORKERS", 4);
    let rabbit = Arc::new(PrivateRabbit::start());
    let url = rabbit.url();
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(QUEUE.into(), durable, args).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; 300];
    for chunk in 0..n.div_ceil(512) {
        let mut confirms = Vec::new();
        for _ in 0..512.min(n - chunk * 512) {
            let props = BasicProperties::default().with_delivery_mode(2);
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
    }
    let _ = conn.close(200, "published".into()).await;
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    for _ in 0..consumers {
        tokio::spawn(consume(url.clone(), Arc::clone(&acked)));
    }
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut restart: Option<(f64, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push((t0.elapsed().as_secs_f64(), acked.load(Ordering::Relaxed)));
        if restart.is_none() && acked.load(Ordering::Relaxed) >= n * 40 / 100 {
            let stop_at = t0.elapsed().as_secs_f64();
            let r = Arc::clone(&rabbit);
            tokio::task::spawn_blocking(move || {
                r.stop_app();
                std::thread::sleep(Duration::from_secs(3));
                r.start_app();
            })
            .await?;
            restart = Some((stop_at, t0.elapsed().as_secs_f64()));
        }
    }
    let (stop_at, back_at) = restart.unwrap_or((0.0, 0.0));
    let rate = |from: f64, to: f64| {
        let at = |t: f64| {
            samples
                .iter()
                .rev()
                .find(|(s, _)| *s <= t)
                .map_or(0, |(_, a)| *a)
        };
        (at(to) - at(from)) as f64 / (to - from)
    };
    let pre = rate((stop_at - 3.0).max(1.0), stop_at);
    println!(
        "bare restart control: {n} messages, {consumers} consumers (prefetch 64), stop_app/start_app"
    );
    println!(
        "  pre-restart rate {pre:.0} msgs/s over the {:.1} s before the stop",
        stop_at - (stop_at - 3.0).max(1.0)
    );
    println!("  broker back (start_app returned) at {back_at:.1} s");
    let end = samples.last().map_or(back_at, |(t, _)| *t);
    let mut t = back_at;
    while t + 1.0 <= end {
        let r = rate(t, t + 1.0);
        println!(
            "    +{:>3.0} s {r:>8.0} msgs/s {:>4.0} %",
            t - back_at,
            100.0 * r / pre
        );
        t += 1.0;
    }
    println!("  acked {} of {n}", acked.load(Ordering::Relaxed));
    Ok(())
}

/// Consumes and acks for ever, reconnecting after a lost connection.
async fn consume(url: String, acked: Arc<AtomicU64>) {
    loop {
        let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let run = async {
            let ch = conn.create_channel().await?;
            ch.basic_qos(64, BasicQosOptions::default()).await?;
            let mut consumer = ch
                .basic_consume(
                    QUEUE.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            while let Some(delivery) = consumer.next().await {
                delivery?.acker.ack(BasicAckOptions::default()).await?;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, lapin::Error>(())
        };
        let _ = run.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
