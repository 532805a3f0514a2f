//! The guarantees' floor: what the waits SecFlow's guarantees put before each ack cost on this
//! broker and Redis, with none of SecFlow's own code around them, beside the bare consume + ack
//! loop and the worker, in one run.
//!
//! A task's ack waits, in order, for its claim in Redis (`SET NX PX`: the lease that keeps two
//! copies from running at once), its completing marker (`SET PX`: a copy delivered again after
//! its completion was reported is not run again) and the broker's confirm of its completion
//! event (routed to the audit stream: the task ends visibly even if the worker dies right after
//! the ack); after the ack, the done marker. The floor loops do exactly that with bare lapin and
//! a bare Redis client, each delivery on its own future, the events batched by the worker's own
//! batcher (one confirmed message per batch, as the worker sends them): no signature check, no
//! decoding beyond the message id, no breaker, metrics, spans or disposition. Three variants
//! split the cost: both waits, only the Redis round trips, only the event. The ratio of the
//! floor to the bare loop is what the guarantees cost here; the ratio of the worker to the
//! floor is what the rest of the worker costs. The bare loop is run twice: as the transport
//! benchmark's ceiling (each ack awaited before the next delivery is taken) and with its acks
//! pipelined (deliveries taken as they come, the acks awaited together, as the floor and the
//! worker do), which at a deep prefetch is the faster of the two.
//!
//! `cargo bench -p secflow-tests --bench floor`
//! (SECFLOW_BENCH_TASKS overrides 50,000 tasks, SECFLOW_BENCH_ROUNDS overrides 3 rounds)

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{message::Delivery, options::BasicAckOptions};
use secflow_common::{Topology, amqp::Publisher, config::BrokerArgs, deadline, events::TaskEvent};
use secflow_tests::bench::{
    Acks, BenchNs, DRAIN_DEADLINE, bare_consume, bare_publish_tasks, consumer, median, own_runtime,
    per_message, process_cpu, worker,
};
use secflow_worker::events::EventBatcher;
use std::time::{Duration, Instant};

/// Prefetches measured (the same for every loop): the worker's default and a deeper one.
const PREFETCHES: [u16; 2] = [64, 256];
/// The TTL of the floor's lease and markers.
const TTL_MS: u64 = 600_000;

/// What became of a delivery in a floor loop.
enum Settled {
    /// Run and acked.
    Ran,
    /// A copy of a task an earlier loop ran: acked without running it.
    Copy,
}

/// Which of the guarantees' waits a floor loop makes before each ack.
#[derive(Clone, Copy)]
struct Waits {
    redis: bool,
    event: bool,
}

/// Each loop's rates (msg/s), one per round.
#[derive(Default)]
struct Rates {
    bare: Vec<f64>,
    bare_pipelined: Vec<f64>,
    floor: Vec<f64>,
    redis_only: Vec<f64>,
    event_only: Vec<f64>,
    worker: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 50_000);
    let rounds = secflow_tests::env_or("SECFLOW_BENCH_ROUNDS", 3);
    let bench = BenchNs::new().await?;
    let (ns, broker, topology) = (&bench.ns, &bench.broker, &bench.topology);
    let queue = topology.work_queue("default");
    let url = broker.amqp_url.clone();

    for prefetch in PREFETCHES {
        let mut rates = Rates::default();
        for round in 0..rounds {
            // Each step fills the work queue with the producer's messages, then drains it; the
            // steps take turns going first, so the broker's leftover work from the step before
            // falls on each alike.
            for turn in 0..6 {
                bare_publish_tasks(broker, n).await?;
                let (waits, into) = match (round + turn) % 6 {
                    0 => {
                        rates
                            .bare
                            .push(bare_consume(&url, &queue, n, prefetch, Acks::Awaited).await?);
                        continue;
                    }
                    5 => {
                        rates
                            .bare_pipelined
                            .push(bare_consume(&url, &queue, n, prefetch, Acks::Pipelined).await?);
                        continue;
                    }
                    1 => {
                        rates
                            .worker
                            .push(worker(ns, n, None, prefetch, None).await?);
                        continue;
                    }
                    2 => (
                        Waits {
                            redis: true,
                            event: true,
                        },
                        &mut rates.floor,
                    ),
                    3 => (
                        Waits {
                            redis: true,
                            event: false,
                        },
                        &mut rates.redis_only,
                    ),
                    _ => (
                        Waits {
                            redis: false,
                            event: true,
                        },
                        &mut rates.event_only,
                    ),
                };
                into.push(floor(ns, broker, topology, n, prefetch, waits).await?);
            }
            let last = |v: &[f64]| v.last().copied().unwrap_or_default();
            eprintln!(
                "  round {}: bare consume + ack {:.0} (acks pipelined {:.0}), floor {:.0}, Redis waits only {:.0}, event wait only {:.0}, worker with Redis {:.0} msg/s",
                round + 1,
                last(&rates.bare),
                last(&rates.bare_pipelined),
                last(&rates.floor),
                last(&rates.redis_only),
                last(&rates.event_only),
                last(&rates.worker),
            );
        }
        let bare = median(rates.bare);
        let bare_pipelined = median(rates.bare_pipelined);
        let share = |part: f64| 100.0 * part / bare;
        let floor = median(rates.floor);
        let redis_only = median(rates.redis_only);
        let event_only = median(rates.event_only);
        let worker = median(rates.worker);
        println!("guarantees' floor: {n} messages, median of {rounds} rounds, prefetch {prefetch}");
        println!(
            "  bare consume + ack, each ack awaited (the transport ceiling) {bare:>7.0} msg/s"
        );
        println!(
            "  bare consume + ack, acks pipelined                          {bare_pipelined:>8.0} msg/s  {:>5.1}% of bare",
            share(bare_pipelined)
        );
        println!(
            "  floor: claim + completing marker + confirmed event, then ack {floor:>7.0} msg/s  {:>5.1}% of bare",
            share(floor)
        );
        println!(
            "  floor, the two Redis waits only                             {redis_only:>8.0} msg/s  {:>5.1}% of bare",
            share(redis_only)
        );
        println!(
            "  floor, the event's confirm only                             {event_only:>8.0} msg/s  {:>5.1}% of bare",
            share(event_only)
        );
        println!(
            "  worker, breaker + idempotency in Redis                      {worker:>8.0} msg/s  {:>5.1}% of bare, {:>5.1}% of bare with acks pipelined, {:>5.1}% of the floor",
            share(worker),
            100.0 * worker / bare_pipelined,
            100.0 * worker / floor
        );
    }

    bench.remove().await
}

/// Drains `n` tasks from the work queue at `prefetch`, each delivery making `waits` before its
/// ack, on a connection and a runtime of its own like the worker's; timed from the consumer's
/// registration, as the bare loop is.
async fn floor(
    ns: &str,
    broker: &BrokerArgs,
    topology: &Topology,
    n: usize,
    prefetch: u16,
    waits: Waits,
) -> anyhow::Result<f64> {
    let (url, redis_url) = (broker.amqp_url.clone(), broker.redis_url.clone());
    let (queue, exchange) = (topology.work_queue("default"), topology.events_exchange());
    let ns = ns.to_string();
    own_runtime(async move {
        let conn =
            secflow_common::amqp::connect(&url, "secflow-bench-floor", Duration::from_secs(30))
                .await?;
        let events = EventBatcher::start(Publisher::new(&conn).await?, exchange);
        let redis = redis::Client::open(redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let (ch, mut consumer) = consumer(&conn, &queue, prefetch, "floor").await?;
        let started = Instant::now();
        let cpu_before = process_cpu();
        let mut in_flight = FuturesUnordered::new();
        let copies = deadline::within("the floor's drain", DRAIN_DEADLINE, async {
            let (mut done, mut copies) = (0, 0);
            while done < n {
                tokio::select! {
                    delivery = consumer.next(), if done + in_flight.len() < n => {
                        let delivery = delivery
                            .ok_or_else(|| anyhow::anyhow!("floor consumer ended"))??;
                        in_flight.push(settle(delivery, waits, &ns, redis.clone(), &events));
                    }
                    Some(settled) = in_flight.next() => match settled? {
                        Settled::Ran => done += 1,
                        Settled::Copy => copies += 1,
                    },
                }
            }
            anyhow::Ok(copies)
        })
        .await??;
        let elapsed = started.elapsed();
        eprintln!(
            "  (floor at prefetch {prefetch}, Redis waits {}, event wait {}: {:.0} µs of this process's CPU per task, {copies} copies of earlier tasks acked without running)",
            waits.redis,
            waits.event,
            per_message(process_cpu().saturating_sub(cpu_before), n)
        );
        ch.close(200, "".into()).await?;
        conn.close(200, "".into()).await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    })
    .await?
}

/// One delivery through the floor: claim, completing marker, confirmed completion event, ack,
/// done marker (the waits `waits` leaves out are skipped).
async fn settle(
    delivery: Delivery,
    waits: Waits,
    ns: &str,
    mut redis: redis::aio::MultiplexedConnection,
    events: &EventBatcher,
) -> anyhow::Result<Settled> {
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let key = format!("sf:{{{ns}}}:floor:{id}");
    let set = |value: &str, nx: bool| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value);
        if nx {
            cmd.arg("NX");
        }
        cmd.arg("PX").arg(TTL_MS);
        cmd
    };
    if waits.redis {
        let claimed: Option<String> = set("lease:floor", true).query_async(&mut redis).await?;
        if claimed.is_none() {
            // A copy of a task already run: the broker handed back some acks of an earlier
            // loop as it closed its channel (quorum queues may drop acks that arrive just
            // before a channel closes). The worker acks such a copy without running it.
            ack(&delivery).await?;
            return Ok(Settled::Copy);
        }
        let () = set("completing:floor", false)
            .query_async(&mut redis)
            .await?;
    }
    if waits.event {
        let task = id.parse().ok();
        let mut event = TaskEvent::new("node.completed", "floor").about(task, None);
        event.node_type = Some("builtin.noop".into());
        events.emit(event).await.map_err(anyhow::Error::msg)?;
    }
    ack(&delivery).await?;
    if waits.redis {
        let () = set("done:floor", false).query_async(&mut redis).await?;
    }
    Ok(Settled::Ran)
}

/// Acks `delivery`; an ack the client refuses (its channel gone) is an error.
async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    let sent = delivery.acker.ack(BasicAckOptions::default()).await?;
    anyhow::ensure!(
        sent,
        "the ack of delivery {} was not sent",
        delivery.delivery_tag
    );
    Ok(())
}
