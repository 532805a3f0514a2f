//! Transport benchmark: on one broker, in one run, measures the ceiling (bare lapin loops on the
//! same exchange and queue SecFlow uses: a confirmed publish of the producer's own messages,
//! built beforehand, into the work queue; a consume + ack of them from it) and SecFlow itself
//! (`producer publish` and one `worker` draining no-op tasks), and prints each rate and its
//! ratio to the ceiling. The earlier ceiling (a plain body without headers into a quorum queue
//! without the work queue's arguments) is printed beside it for comparison. Each figure is the
//! median of several rounds, the loops interleaved so machine noise hits all of them alike.
//! Set-up is left out of every figure: the publishers are timed from their first publish to
//! their last confirm, the bare consumer from its registration, the worker from its first
//! completion; `producer publish, end to end` also counts the producer's envelopes,
//! connection, topology and close.
//!
//! `cargo bench -p secflow-tests --bench transport`
//! (SECFLOW_BENCH_TASKS overrides 50,000 tasks, SECFLOW_BENCH_ROUNDS overrides 3 rounds;
//! SECFLOW_BENCH_WORKER_ONLY=1 runs only the producer and the worker with Redis, for profiling;
//! SECFLOW_BENCH_RUNTIME=multi runs the producer and the worker on a thread per core instead
//! of one). Besides the rates it prints the worker's CPU time and heap allocations per task
//! (the bench counts its process's allocations: the worker runs in it).

use lapin::{
    BasicProperties,
    options::QueueDeclareOptions,
    options::QueueDeleteOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use secflow_common::{TaskEnvelope, amqp::Publisher, config::BrokerArgs};
use secflow_producer::publish::publish_envelopes;
use secflow_tests::bench::{
    Acks, BenchNs, WINDOW, bare_consume, bare_publish_tasks, median, noop_request, own_runtime,
    per_message, process_cpu, publish_all, task_publisher, worker,
};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

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

/// The allocations counted so far.
fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// A Redis URL nothing listens on.
const NO_REDIS: &str = "redis://127.0.0.1:1/";
/// Prefetches the bare consumer and the worker are measured at (the same for both): the
/// worker's default, and a deeper one that hides the latency of confirming results first.
const PREFETCHES: [u16; 2] = [64, 256];

/// Each loop's rates (msg/s), one per round.
#[derive(Default)]
struct Rates {
    same_publish: Vec<f64>,
    same_consume: Vec<f64>,
    plain_publish: Vec<f64>,
    plain_consume: Vec<f64>,
    producer: Vec<f64>,
    end_to_end: Vec<f64>,
    worker: Vec<f64>,
    worker_local: Vec<f64>,
}

impl Rates {
    /// One step: `producer publish` of `n` tasks, then one worker draining them at `prefetch`
    /// with Redis (`redis_url` `None`) or with the Redis URL given; its rate goes to `worker` or
    /// `worker_local` accordingly.
    async fn producer_then_worker(
        &mut self,
        bench: &BenchNs,
        n: usize,
        prefetch: u16,
        redis_url: Option<&str>,
    ) -> anyhow::Result<()> {
        let (rate, end_to_end) = producer(&bench.broker, n).await?;
        self.producer.push(rate);
        self.end_to_end.push(end_to_end);
        let drained = worker(&bench.ns, n, redis_url, prefetch, Some(allocations)).await?;
        match redis_url {
            None => self.worker.push(drained),
            Some(_) => self.worker_local.push(drained),
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 50_000);
    let rounds = secflow_tests::env_or("SECFLOW_BENCH_ROUNDS", 3);
    let worker_only = std::env::var_os("SECFLOW_BENCH_WORKER_ONLY").is_some();
    let bench = BenchNs::new().await?;
    let (ns, broker, ch, topology) = (&bench.ns, &bench.broker, &bench.ch, &bench.topology);
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

    let work_queue = topology.work_queue("default");
    for prefetch in PREFETCHES {
        let mut rates = Rates::default();
        for round in 0..rounds {
            if worker_only {
                // For profiling the worker: only it (with Redis) and the producer feeding it.
                rates
                    .producer_then_worker(&bench, n, prefetch, None)
                    .await?;
                continue;
            }
            let url = &broker.amqp_url;
            // Four steps, each a publish then a drain of `n` messages, take turns going first:
            // the step right after another finds the broker still busy with it (a worker-only
            // run drains twice as fast as the same worker measured right after a bare loop's
            // messages), so a fixed order would charge that to whichever always came first.
            for turn in 0..4 {
                match (round + turn) % 4 {
                    // Ceiling: the producer's own messages (body, properties, signature and
                    // trace headers, built beforehand) through the same exchange into the same
                    // work queue, then consumed and acked from it.
                    0 => {
                        rates
                            .same_publish
                            .push(bare_publish_tasks(broker, n).await?);
                        rates.same_consume.push(
                            bare_consume(url, &work_queue, n, prefetch, Acks::Awaited).await?,
                        );
                    }
                    // The earlier ceiling, for comparison: a plain body (no headers) through a
                    // topic exchange bound like a pool into a quorum queue without the work
                    // queue's delivery limit and dead-letter exchange.
                    1 => {
                        rates
                            .plain_publish
                            .push(bare_publish(url, &bare_topic, "builtin.noop", n).await?);
                        rates
                            .plain_consume
                            .push(bare_consume(url, &bare, n, prefetch, Acks::Awaited).await?);
                    }
                    2 => {
                        rates
                            .producer_then_worker(&bench, n, prefetch, None)
                            .await?;
                    }
                    // The same worker with Redis unreachable: local breakers, no idempotency
                    // checks, to show what the shared state costs.
                    _ => {
                        rates
                            .producer_then_worker(&bench, n, prefetch, Some(NO_REDIS))
                            .await?;
                    }
                }
            }
            let last = |v: &[f64]| v.last().copied().unwrap_or_default();
            eprintln!(
                "  round {}: bare publish {:.0}, producer {:.0} ({:.1} %); bare consume + ack {:.0}, worker with Redis {:.0} ({:.1} %), Redis unreachable {:.0} msg/s",
                round + 1,
                last(&rates.same_publish),
                last(&rates.producer),
                100.0 * last(&rates.producer) / last(&rates.same_publish),
                last(&rates.same_consume),
                last(&rates.worker),
                100.0 * last(&rates.worker) / last(&rates.same_consume),
                last(&rates.worker_local)
            );
        }
        let same_publish = median(rates.same_publish);
        let same_consume = median(rates.same_consume);
        let plain_publish = median(rates.plain_publish);
        let plain_consume = median(rates.plain_consume);
        let producer = median(rates.producer);
        let end_to_end = median(rates.end_to_end);
        let worker = median(rates.worker);
        let worker_local = median(rates.worker_local);
        let share = |part: f64, whole: f64| 100.0 * part / whole;

        println!(
            "transport benchmark: {n} messages, median of {rounds} rounds, prefetch {prefetch}, confirm window {WINDOW}"
        );
        println!(
            "  ceiling  bare confirmed publish of the producer's messages, tasks exchange  {same_publish:>8.0} msg/s"
        );
        println!(
            "  ceiling  bare consume + ack of them, work queue                              {same_consume:>8.0} msg/s"
        );
        println!(
            "  earlier  bare confirmed publish, plain body, topic exchange, plain queue     {plain_publish:>8.0} msg/s"
        );
        println!(
            "  earlier  bare consume + ack, plain body, plain queue                         {plain_consume:>8.0} msg/s"
        );
        println!(
            "  secflow  producer publish                                                    {producer:>8.0} msg/s  {:>5.1}% of the ceiling (target >= 95%), {:>5.1}% of the earlier one",
            share(producer, same_publish),
            share(producer, plain_publish)
        );
        println!(
            "  secflow  producer publish, end to end (envelopes, connection, topology, close) {end_to_end:>6.0} msg/s  {:>5.1}% of the ceiling",
            share(end_to_end, same_publish)
        );
        println!(
            "  secflow  worker, breaker + idempotency in Redis                              {worker:>8.0} msg/s  {:>5.1}% of the ceiling (target >= 85% at prefetch 64, >= 95% at 256), {:>5.1}% of the earlier one",
            share(worker, same_consume),
            share(worker, plain_consume)
        );
        println!(
            "  secflow  worker, Redis unreachable (local breaker)                           {worker_local:>8.0} msg/s  {:>5.1}% of the ceiling, {:>5.1}% of the earlier one",
            share(worker_local, same_consume),
            share(worker_local, plain_consume)
        );
    }

    ch.queue_delete(bare.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(bare_topic.as_str().into(), Default::default())
        .await?;
    bench.remove().await
}

/// A bare pipelined confirmed publish loop of a plain body, on a connection and a runtime of its
/// own like the producer's.
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
        let messages = (0..n)
            .map(|_| {
                let props = BasicProperties::default().with_delivery_mode(2);
                (routing_key.clone(), body.clone(), props)
            })
            .collect();
        let (elapsed, _) = publish_all(&publisher, &exchange, messages).await?;
        publisher.channel().close(200, "".into()).await?;
        conn.close(200, "".into()).await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// `producer publish --type builtin.noop --count n`: the producer's own publish path (the one
/// `publish_tasks`, which the CLI calls, runs once connected), timed from the first publish to
/// the last confirm; and the same end to end, with its envelopes, connection, topology and close.
async fn producer(broker: &BrokerArgs, n: usize) -> anyhow::Result<(f64, f64)> {
    let req = noop_request(n);
    let broker = broker.clone();
    own_runtime(async move {
        let started = Instant::now();
        let tasks = req.envelopes()?;
        let (conn, topology, publisher) = task_publisher(&broker, "secflow-bench-producer").await?;
        let publishing = Instant::now();
        let cpu_before = process_cpu();
        let ids = publish_envelopes(&publisher, &topology, &tasks).await?;
        let published = publishing.elapsed();
        eprintln!(
            "  (producer publish: {:.1} µs of this process's CPU per message)",
            per_message(process_cpu().saturating_sub(cpu_before), ids.len())
        );
        secflow_common::amqp::close(&conn, "bench done").await;
        let n = ids.len() as f64;
        Ok((
            n / published.as_secs_f64(),
            n / started.elapsed().as_secs_f64(),
        ))
    })
    .await?
}
