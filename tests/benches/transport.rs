//! Transport benchmark: on one broker, in one run, measures the ceiling (bare lapin loops:
//! confirmed publish, consume + ack, on quorum queues) and SecFlow itself (`producer publish`
//! and one `worker` draining no-op tasks), and prints each rate and its ratio to the ceiling.
//! Each figure is the median of several rounds, the loops interleaved so machine noise hits
//! all of them alike. Set-up is left out of every figure: the publishers are timed from their
//! first publish to their last confirm, the bare consumer from its registration, the worker from
//! its first completion; `producer publish, end to end` also counts the producer's envelopes,
//! connection, topology and close.
//!
//! `cargo bench -p secflow-tests --bench transport`
//! (SECFLOW_BENCH_TASKS overrides 50,000 tasks, SECFLOW_BENCH_ROUNDS overrides 3 rounds;
//! SECFLOW_BENCH_WORKER_ONLY=1 runs only the producer and the worker with Redis, for profiling;
//! SECFLOW_BENCH_RUNTIME=multi runs the producer and the worker on a thread per core instead
//! of one). Besides the rates it prints the worker's CPU time and heap allocations per task
//! (the bench counts its process's allocations: the worker runs in it).

use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use secflow_common::{TaskEnvelope, Topology, amqp::Publisher, config::BrokerArgs};
use secflow_producer::{PublishRequest, publish::publish_envelopes};
use secflow_worker::{WorkerConfig, WorkerStats};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Heap allocations made by this process so far (every thread): the worker's allocations per
/// task are read from it while it drains.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting calls that hand out memory (`alloc`, `realloc`).
struct Counting;

// SAFETY: every call is passed unchanged to the system allocator, which upholds the contract;
// the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's `layout` is passed on as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Outstanding confirms of the bare publish loop (the producer uses the same window).
const WINDOW: usize = 512;
/// A Redis URL nothing listens on.
const NO_REDIS: &str = "redis://127.0.0.1:1/";
/// Prefetches the bare consumer and the worker are measured at (the same for both): the
/// worker's default, and a deeper one that hides the latency of confirming results first.
const PREFETCHES: [u16; 2] = [64, 256];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 50_000);
    let rounds = secflow_tests::env_or("SECFLOW_BENCH_ROUNDS", 3);
    let worker_only = std::env::var_os("SECFLOW_BENCH_WORKER_ONLY").is_some();
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let broker = secflow_tests::signed_broker(&ns);
    let conn =
        secflow_common::amqp::connect(&broker.amqp_url, "secflow-bench", Duration::from_secs(30))
            .await?;
    let ch = conn.create_channel().await?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    topology.declare_pool(&ch, "default", &["#".into()]).await?;
    let bare = format!("{ns}.bare");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        bare.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    // A topic exchange bound like a pool (`#`) that feeds only the bare queue.
    let bare_topic = format!("{ns}.bare-topic");
    ch.exchange_declare(
        bare_topic.as_str().into(),
        lapin::ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        bare.as_str().into(),
        bare_topic.as_str().into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await?;

    for prefetch in PREFETCHES {
        let mut results: [Vec<f64>; 7] = Default::default();
        for round in 0..rounds {
            if worker_only {
                // For profiling the worker: only it (with Redis) and the producer feeding it.
                let (rate, end_to_end) = producer(&broker, n).await?;
                results[3].push(rate);
                results[6].push(end_to_end);
                results[4].push(worker(&ns, n, None, prefetch).await?);
                continue;
            }
            // Ceiling: the same body into a quorum queue, straight through the default exchange,
            // then through the tasks (topic) exchange the fleet uses.
            let url = &broker.amqp_url;
            results[0].push(bare_publish(url, "", &bare, n).await?);
            results[1].push(bare_publish(url, &bare_topic, "builtin.noop", n).await?);
            // The three drains take turns going first: the one right after the publishes
            // finds the broker still busy with them (a worker-only run drains twice as fast as
            // the same worker measured right after the bare loop's 100,000 messages), so a
            // fixed order would charge that to whichever always came first.
            for turn in 0..3 {
                match (round + turn) % 3 {
                    0 => results[2].push(bare_consume(url, &bare, 2 * n, prefetch).await?),
                    1 => {
                        let (rate, end_to_end) = producer(&broker, n).await?;
                        results[3].push(rate);
                        results[6].push(end_to_end);
                        results[4].push(worker(&ns, n, None, prefetch).await?);
                    }
                    // The same worker with Redis unreachable: local breakers, no idempotency
                    // checks, to show what the shared state costs.
                    _ => {
                        let (rate, end_to_end) = producer(&broker, n).await?;
                        results[3].push(rate);
                        results[6].push(end_to_end);
                        results[5].push(worker(&ns, n, Some(NO_REDIS), prefetch).await?);
                    }
                }
            }
            let last = |i: usize| results[i].last().copied().unwrap_or_default();
            eprintln!(
                "  round {}: bare consume + ack {:.0}, worker with Redis {:.0} ({:.1} %), Redis unreachable {:.0} msg/s",
                round + 1,
                last(2),
                last(4),
                100.0 * last(4) / last(2),
                last(5)
            );
        }
        let [
            direct,
            topic,
            consume,
            producer,
            worker,
            worker_local,
            end_to_end,
        ] = results.map(median);

        println!(
            "transport benchmark: {n} messages, median of {rounds} rounds, prefetch {prefetch}, confirm window {WINDOW}"
        );
        println!("  ceiling  bare confirmed publish, default exchange  {direct:>8.0} msg/s");
        println!("  ceiling  bare confirmed publish, topic exchange    {topic:>8.0} msg/s");
        println!("  ceiling  bare consume + ack                        {consume:>8.0} msg/s");
        println!(
            "  secflow  producer publish                          {producer:>8.0} msg/s  {:>5.1}% of the topic-route ceiling, {:>5.1}% of the default-exchange one (target >= 95%)",
            100.0 * producer / topic,
            100.0 * producer / direct
        );
        println!(
            "  secflow  producer publish, end to end              {end_to_end:>8.0} msg/s  {:>5.1}% of the topic-route ceiling (with its envelopes, connection, topology and close)",
            100.0 * end_to_end / topic
        );
        println!(
            "  secflow  worker, breaker + idempotency in Redis    {worker:>8.0} msg/s  {:>5.1}% of the consume ceiling (target >= 85% at prefetch 64, >= 95% at 256)",
            100.0 * worker / consume
        );
        println!(
            "  secflow  worker, Redis unreachable (local breaker) {worker_local:>8.0} msg/s  {:>5.1}% of the consume ceiling",
            100.0 * worker_local / consume
        );
    }

    ch.queue_delete(bare.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(bare_topic.as_str().into(), Default::default())
        .await?;
    topology.delete_all(&ch, &["default"]).await?;
    conn.close(200, "".into()).await?;
    // The done markers of every task the worker ran.
    secflow_tests::delete_redis_keys(&broker.redis_url, &ns).await?;
    Ok(())
}

/// A bare pipelined confirmed publish loop, on a connection and a runtime of its own like the
/// producer's.
async fn bare_publish(
    url: &str,
    exchange: &str,
    routing_key: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let (url, exchange, routing_key) = (
        url.to_string(),
        exchange.to_string(),
        routing_key.to_string(),
    );
    own_runtime(async move {
        let conn =
            secflow_common::amqp::connect(&url, "secflow-bench-bare", Duration::from_secs(30))
                .await?;
        let body = TaskEnvelope::new("builtin.noop", serde_json::json!({})).to_body();
        let publisher = Publisher::new(&conn).await?;
        let started = Instant::now();
        let confirmed: Vec<_> = stream::iter(0..n)
            .map(|_| {
                publisher.publish(
                    &exchange,
                    &routing_key,
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                    true,
                )
            })
            .buffer_unordered(WINDOW)
            .collect()
            .await;
        let elapsed = started.elapsed();
        confirmed.into_iter().collect::<Result<Vec<_>, _>>()?;
        publisher.channel().close(200, "".into()).await?;
        conn.close(200, "".into()).await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// A bare consume + ack loop over `n` messages, on a connection and a runtime of its own like
/// the worker's.
async fn bare_consume(url: &str, queue: &str, n: usize, prefetch: u16) -> anyhow::Result<f64> {
    let (url, queue) = (url.to_string(), queue.to_string());
    own_runtime(async move {
        let conn =
            secflow_common::amqp::connect(&url, "secflow-bench-bare", Duration::from_secs(30))
                .await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "bare".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let started = Instant::now();
        for _ in 0..n {
            let delivery = consumer
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("bare consumer ended"))??;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        let elapsed = started.elapsed();
        ch.close(200, "".into()).await?;
        conn.close(200, "".into()).await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// `producer publish --type builtin.noop --count n`: the producer's own publish path (the one
/// `publish_tasks`, which the CLI calls, runs once connected), timed from the first publish to
/// the last confirm; and the same end to end, with its envelopes, connection, topology and close.
async fn producer(broker: &BrokerArgs, n: usize) -> anyhow::Result<(f64, f64)> {
    let req = PublishRequest {
        node_type: "builtin.noop".into(),
        config: serde_json::json!({}),
        count: n,
        retry: None,
        timeout_ms: None,
    };
    let broker = broker.clone();
    own_runtime(async move {
        let started = Instant::now();
        let tasks = req.envelopes()?;
        let (conn, topology) = secflow_producer::connect(&broker, "secflow-bench-producer").await?;
        let publisher =
            Publisher::for_tasks(&conn, broker.keyring()?, broker.max_message_bytes).await?;
        let publishing = Instant::now();
        let ids = publish_envelopes(&publisher, &topology, &tasks).await?;
        let published = publishing.elapsed();
        secflow_common::amqp::close(&conn, "bench done").await;
        let n = ids.len() as f64;
        Ok((
            n / published.as_secs_f64(),
            n / started.elapsed().as_secs_f64(),
        ))
    })
    .await?
}

/// Runs `run` on a runtime of its own, as the binaries run themselves: one thread (or a
/// thread per core with SECFLOW_BENCH_RUNTIME=multi, to compare).
fn own_runtime<T: Send + 'static>(
    run: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<T>> {
    let (done, result) = tokio::sync::oneshot::channel();
    let multi = std::env::var("SECFLOW_BENCH_RUNTIME").is_ok_and(|r| r == "multi");
    std::thread::spawn(move || {
        let runtime = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        };
        let _ = done.send(match runtime {
            Ok(rt) => rt.block_on(run),
            Err(e) => Err(e.into()),
        });
    });
    result
}

/// One worker draining the `n` tasks the producer queued, timed from its first completion so
/// connection set-up is not counted against it.
async fn worker(ns: &str, n: usize, redis_url: Option<&str>, prefetch: u16) -> anyhow::Result<f64> {
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let mut cfg = WorkerConfig {
        prefetch,
        broker: secflow_tests::signed_broker(ns),
        ..WorkerConfig::local(ns)
    };
    if let Some(url) = redis_url {
        cfg.broker.redis_url = url.to_string();
    }

    let run =
        secflow_worker::run_with_stats(cfg, Arc::clone(&stats), stop.clone().cancelled_owned());
    let worker = own_runtime(async move { run.await.map_err(anyhow::Error::from) });
    while WorkerStats::get(&stats.completed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let cpu_before = process_cpu();
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    while WorkerStats::get(&stats.completed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    stop.cancel();
    worker.await??;
    eprintln!(
        "  (worker at prefetch {prefetch}, Redis {}: {:.0} µs of this process's CPU and {:.0} heap allocations per task)",
        if redis_url.is_some() {
            "unreachable"
        } else {
            "on"
        },
        cpu.as_secs_f64() * 1e6 / (n - 1) as f64,
        allocations as f64 / (n - 1) as f64
    );
    Ok((n - 1) as f64 / elapsed.as_secs_f64())
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (zero where
/// it cannot be read).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces, inside parentheses): utime and
    // stime are the 12th and 13th, in clock ticks (100 a second on Linux).
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
