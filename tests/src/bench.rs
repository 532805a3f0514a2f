//! Loops the benchmarks share: the bare ceiling loops (a confirmed publish of the producer's
//! own messages, a consume + ack), the worker draining a queue, and the timing helpers.

use crate::signed_broker;
use futures_util::{StreamExt, stream, stream::FuturesUnordered};
use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use secflow_common::{
    Topology,
    amqp::Publisher,
    config::BrokerArgs,
    deadline,
    trace::{Kind, TraceSpan},
};
use secflow_producer::PublishRequest;
use secflow_worker::{WorkerConfig, WorkerStats};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Outstanding confirms of the bare publish loops (the producer uses the same window).
pub const WINDOW: usize = 512;

/// Longest a drain may take (through `deadline::within`): a stalled broker or Redis fails the
/// benchmark with the name of what it waited for instead of holding it for ever.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(600);

/// A benchmark's own namespace: its broker settings, a connection and a channel, and its
/// topology with one pool (`default`, bound to every routing key).
pub struct BenchNs {
    /// The namespace's name.
    pub ns: String,
    /// Settings of the producer and workers in it (signed tasks).
    pub broker: BrokerArgs,
    /// The bench's own connection.
    pub conn: lapin::Connection,
    /// A channel on it.
    pub ch: lapin::Channel,
    /// The namespace's exchanges and queues.
    pub topology: Topology,
}

impl BenchNs {
    /// A fresh namespace with its pool declared.
    pub async fn new() -> anyhow::Result<Self> {
        let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let broker = signed_broker(&ns);
        let conn = secflow_common::amqp::connect(
            &broker.amqp_url,
            "secflow-bench",
            Duration::from_secs(30),
        )
        .await?;
        let ch = conn.create_channel().await?;
        let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
        topology.declare_pool(&ch, "default", &["#".into()]).await?;
        Ok(Self {
            ns,
            broker,
            conn,
            ch,
            topology,
        })
    }

    /// Deletes the namespace's exchanges, queues and Redis keys (the markers of every task
    /// run in it) and closes the connection.
    pub async fn remove(self) -> anyhow::Result<()> {
        self.topology.delete_all(&self.ch, &["default"]).await?;
        self.conn.close(200, "".into()).await?;
        crate::delete_redis_keys(&self.broker.redis_url, &self.ns).await?;
        Ok(())
    }
}

/// A channel on `conn` with `prefetch` and a consumer tagged `tag` on `queue`.
pub async fn consumer(
    conn: &lapin::Connection,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// A bare pipelined confirmed publish of `n` tasks as the producer sends them (the same body,
/// properties, trace headers and signature, built before the clock starts) through the tasks
/// exchange into the work queue, on a connection and a runtime of its own like the producer's.
pub async fn bare_publish_tasks(broker: &BrokerArgs, n: usize) -> anyhow::Result<f64> {
    let broker = broker.clone();
    own_runtime(async move {
        let tasks = noop_request(n).envelopes()?;
        let (conn, topology, publisher) = task_publisher(&broker, "secflow-bench-bare").await?;
        let messages = tasks
            .iter()
            .map(|task| {
                let span = TraceSpan::start_with(Kind::Producer, None, || ("publish", vec![]));
                secflow_common::amqp::task_message(&publisher, task, span.context())
                    .map(|(body, props)| (task.node_type.clone(), body, props))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (elapsed, cpu) = publish_all(&publisher, &topology.tasks_exchange(), messages).await?;
        eprintln!(
            "  (bare publish of the producer's messages: {:.1} µs of this process's CPU per message)",
            per_message(cpu, n)
        );
        secflow_common::amqp::close(&conn, "bench done").await;
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// Publishes `messages` (routing key, body, properties) to `exchange` with [`WINDOW`] confirms
/// in flight: the time from the first publish to the last confirm, and this process's CPU time
/// over it.
pub async fn publish_all(
    publisher: &Publisher,
    exchange: &str,
    messages: Vec<(String, Vec<u8>, BasicProperties)>,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let cpu_before = process_cpu();
    let confirmed: Vec<_> = stream::iter(messages)
        .map(|message| publish_message(publisher, exchange, message))
        .buffer_unordered(WINDOW)
        .collect()
        .await;
    let taken = (started.elapsed(), process_cpu().saturating_sub(cpu_before));
    confirmed.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(taken)
}

/// Publishes one message built beforehand (routing key, body, properties), confirmed.
pub async fn publish_message(
    publisher: &Publisher,
    exchange: &str,
    (routing_key, body, props): (String, Vec<u8>, BasicProperties),
) -> Result<(), secflow_common::Error> {
    publisher
        .publish(exchange, &routing_key, &body, props, true)
        .await
}

/// A connection, the topology and a publisher of tasks, as the producer opens them.
pub async fn task_publisher(
    broker: &BrokerArgs,
    name: &str,
) -> anyhow::Result<(lapin::Connection, Topology, Publisher)> {
    let (conn, topology) = secflow_producer::connect(broker, name).await?;
    let publisher =
        Publisher::for_tasks(&conn, broker.keyring()?, broker.max_message_bytes).await?;
    Ok((conn, topology, publisher))
}

/// `n` no-op tasks, as `producer publish --type builtin.noop --count n` asks for them.
pub fn noop_request(n: usize) -> PublishRequest {
    PublishRequest {
        node_type: "builtin.noop".into(),
        config: serde_json::json!({}),
        count: n,
        retry: None,
        timeout_ms: None,
    }
}

/// A bare consume + ack loop over `n` messages, on a connection and a runtime of its own like
/// the worker's. `Acks::Awaited` waits for each ack before taking the next delivery (the loop
/// the transport benchmark's ceiling has always been); `Acks::Pipelined` takes the next delivery
/// at once and waits for the acks together, as the worker does with its many deliveries in
/// flight, and is timed to the last ack.
pub async fn bare_consume(
    url: &str,
    queue: &str,
    n: usize,
    prefetch: u16,
    acks: Acks,
) -> anyhow::Result<f64> {
    let (url, queue) = (url.to_string(), queue.to_string());
    own_runtime(async move {
        let conn =
            secflow_common::amqp::connect(&url, "secflow-bench-bare", Duration::from_secs(30))
                .await?;
        let (ch, mut consumer) = consumer(&conn, &queue, prefetch, "bare").await?;
        let started = Instant::now();
        deadline::within("the bare consume loop", DRAIN_DEADLINE, async {
            match acks {
                Acks::Awaited => {
                    for _ in 0..n {
                        let delivery = consumer
                            .next()
                            .await
                            .ok_or_else(|| anyhow::anyhow!("bare consumer ended"))??;
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                    }
                }
                Acks::Pipelined => {
                    let mut pending = FuturesUnordered::new();
                    let (mut received, mut acked) = (0, 0);
                    while acked < n {
                        tokio::select! {
                            delivery = consumer.next(), if received < n => {
                                let delivery = delivery
                                    .ok_or_else(|| anyhow::anyhow!("bare consumer ended"))??;
                                received += 1;
                                pending.push(async move {
                                    delivery.acker.ack(BasicAckOptions::default()).await
                                });
                            }
                            Some(ack) = pending.next() => {
                                ack?;
                                acked += 1;
                            }
                        }
                    }
                }
            }
            anyhow::Ok(())
        })
        .await??;
        let elapsed = started.elapsed();
        ch.close(200, "".into()).await?;
        conn.close(200, "".into()).await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// How a bare consume loop waits for its acks.
#[derive(Clone, Copy)]
pub enum Acks {
    /// Each ack before the next delivery.
    Awaited,
    /// All together, deliveries taken as they come.
    Pipelined,
}

/// Runs `run` on a runtime of its own, as the binaries run themselves: one thread (or a
/// thread per core with SECFLOW_BENCH_RUNTIME=multi, to compare).
pub fn own_runtime<T: Send + 'static>(
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
pub async fn worker(
    ns: &str,
    n: usize,
    redis_url: Option<&str>,
    prefetch: u16,
    allocations: Option<fn() -> u64>,
) -> anyhow::Result<f64> {
    let allocations = || allocations.map(|count| count());
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let mut cfg = WorkerConfig {
        prefetch,
        broker: signed_broker(ns),
        ..WorkerConfig::local(ns)
    };
    if let Some(url) = redis_url {
        cfg.broker.redis_url = url.to_string();
    }

    let run =
        secflow_worker::run_with_stats(cfg, Arc::clone(&stats), stop.clone().cancelled_owned());
    let worker = own_runtime(async move { run.await.map_err(anyhow::Error::from) });
    let completed = |count: u64| {
        let stats = Arc::clone(&stats);
        deadline::within("the worker's drain", DRAIN_DEADLINE, async move {
            while WorkerStats::get(&stats.completed) < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    completed(1).await?;
    let started = Instant::now();
    let cpu_before = process_cpu();
    let allocations_before = allocations();
    completed(n as u64).await?;
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let allocations = allocations()
        .zip(allocations_before)
        .map(|(after, before)| {
            format!(
                " and {:.0} heap allocations",
                (after - before) as f64 / (n - 1) as f64
            )
        })
        .unwrap_or_default();
    stop.cancel();
    worker.await??;
    eprintln!(
        "  (worker at prefetch {prefetch}, Redis {}: {:.0} µs of this process's CPU{allocations} per task)",
        if redis_url.is_some() {
            "unreachable"
        } else {
            "on"
        },
        cpu.as_secs_f64() * 1e6 / (n - 1) as f64,
    );
    Ok((n - 1) as f64 / elapsed.as_secs_f64())
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (zero where
/// it cannot be read).
pub fn process_cpu() -> Duration {
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

/// `cpu` spread over `n` messages, in µs.
pub fn per_message(cpu: Duration, n: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// The median of `v` (the upper one of an even count; zero if empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
