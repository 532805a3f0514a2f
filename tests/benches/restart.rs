//! Broker-restart benchmark: 4 worker processes (prefetch 64) drain 50,000 no-op tasks from a
//! private RabbitMQ node (Redis: the shared local one, own namespace); at about 40 % drained the
//! broker is stopped (`rabbitmqctl stop_app`), kept down 3 s and started again. Prints the rate
//! before the stop (at most 5 s of it), the rate per 1-s window once the broker accepts AMQP
//! connections again, PASS/FAIL for ">= 90 % of the rate before within 5 s" and for the rest of
//! the drain keeping up, when every worker consumes again, what the workers' logs say (suspects
//! isolated, tasks dead-lettered as crash loops), and checks in Redis that every task has a done
//! marker. Figures are reported, not asserted: it panics only if a task is neither done nor in
//! the DLQ, or the drain is not over in 5 min.
//!
//! `cargo build --release -p secflow-worker --bins && cargo bench -p secflow-tests --bench restart`
//! (SECFLOW_BENCH_TASKS overrides 50,000 tasks, SECFLOW_BENCH_WORKERS 4 workers;
//! SECFLOW_BENCH_RESTART=node stops and boots the whole node instead).

#[path = "restart/report.rs"]
mod report;

use lapin::{Channel, Connection, ConnectionProperties, options::QueueDeclareOptions};
use report::{Restart, Sample};
use secflow_tests::{PrivateRabbit, TestNs};
use std::{
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const STOP_AT: f64 = 0.4;
const DOWNTIME: Duration = Duration::from_secs(3);
const DRAIN_DEADLINE: Duration = Duration::from_secs(300);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

struct Worker {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    last: [u64; 4],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = secflow_tests::env_or("SECFLOW_BENCH_TASKS", 50_000);
    let workers_n = secflow_tests::env_or("SECFLOW_BENCH_WORKERS", 4);
    let full_stop = std::env::var("SECFLOW_BENCH_RESTART").is_ok_and(|m| m == "node");
    let rabbit = Arc::new(tokio::task::spawn_blocking(PrivateRabbit::start).await?);
    let ns = TestNs::on_broker(&rabbit.url(), 5).await;
    let queue = ns.topology().work_queue("default");

    let started = Instant::now();
    let req = secflow_tests::request("builtin.noop", serde_json::json!({}), n);
    let ids = secflow_producer::publish_tasks(&ns.broker(), &req).await?;
    println!(
        "restart benchmark: published {} tasks in {:.1} s; {workers_n} worker processes, prefetch 64, restart by {}",
        ids.len(),
        started.elapsed().as_secs_f64(),
        if full_stop {
            "full node stop"
        } else {
            "stop_app/start_app"
        }
    );

    // `rabbitmqctl` takes seconds to start on a busy machine before it stops anything.
    let cli_lag = tokio::task::spawn_blocking(|| {
        let started = Instant::now();
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        started.elapsed()
    })
    .await?;
    println!(
        "  rabbitmqctl starts in {:.2} s: the stop is issued that much early",
        secs(cli_lag)
    );
    let mut workers: Vec<Worker> = (0..workers_n)
        .map(|i| spawn_worker(&ns, i))
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    let mut probe = Probe::default();
    let mut samples: Vec<Sample> = Vec::new();
    // One restart: its task while it runs, then its timings.
    let mut restart: Option<tokio::task::JoinHandle<Restart>> = None;
    let mut restarted: Option<Restart> = None;
    let mut last_check = Duration::ZERO;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while t0.elapsed() < DRAIN_DEADLINE {
        tick.tick().await;
        let s = sample(&mut workers, &mut probe, &rabbit.url(), &queue, t0).await;
        samples.push(s);
        // Issued early by what the fleet completes while the CLI starts, so the broker goes
        // down at about STOP_AT.
        let rate = samples
            .iter()
            .rev()
            .find(|p| p.at + Duration::from_secs(1) <= s.at)
            .map_or(0.0, |p| {
                s.completed.saturating_sub(p.completed) as f64 / secs(s.at - p.at)
            });
        if restart.is_none()
            && restarted.is_none()
            && s.completed as f64 + rate * secs(cli_lag) >= STOP_AT * n as f64
        {
            restart = Some(tokio::spawn(restart_broker(
                Arc::clone(&rabbit),
                full_stop,
                t0,
            )));
        }
        if let Some(handle) = restart.take_if(|h| h.is_finished()) {
            restarted = Some(handle.await?);
        }
        // Over when every task is done or dead-lettered (by a worker or by the broker's own
        // delivery limit, which the workers' counters do not see).
        if restarted.is_some() && s.ready == Some(0) && s.at >= last_check + Duration::from_secs(2)
        {
            last_check = s.at;
            let dlq = probe.depth(&rabbit.url(), &ns.topology().dlq()).await;
            if not_done(&ns.name, &ids).await? <= dlq.unwrap_or(0) as usize {
                break;
            }
        }
    }
    // The workers' counters as they stand once every task is done: the last sample may be up
    // to a sampling period older than the done markers the loop saw.
    let settled = sample(&mut workers, &mut probe, &rabbit.url(), &queue, t0).await;
    samples.push(settled);
    for w in &mut workers {
        stop(&mut w.child).await;
    }
    let missing = not_done(&ns.name, &ids).await?;
    let dlq = probe.depth(&rabbit.url(), &ns.topology().dlq()).await;

    let recovered = restarted
        .as_ref()
        .map(|r| report::report(n, workers_n, &samples, r));
    for (i, w) in workers.iter().enumerate() {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
        println!(
            "  worker {i}: {} suspects run in isolation, {} dead-lettered as crash_loop, {} connection losses, {} settlements failed; log {}",
            count("running it in isolation"),
            count("code=crash_loop"),
            count("lost the RabbitMQ connection"),
            count("could not publish the settlement"),
            w.log.display()
        );
    }
    let last = samples.last().copied().unwrap_or_default();
    println!(
        "  tasks: {n} published, {} with a done marker, {} completions reported ({} repeats), {} duplicates acked unrun, {} handed back, {} dead-lettered ({} in the DLQ)",
        n - missing,
        last.completed,
        last.completed.saturating_sub(n as u64),
        last.duplicates,
        last.handed_back,
        last.dead_lettered,
        dlq.map_or("?".into(), |d| d.to_string())
    );
    match (recovered, missing) {
        (None, _) => println!(
            "  FAIL: the drain never reached {:.0} %: no restart",
            STOP_AT * 100.0
        ),
        (Some(_), 0) => println!("  PASS: every task completed"),
        (Some(_), _) => println!(
            "  FAIL: {missing} of {n} tasks did not complete ({} dead-lettered by the workers)",
            last.dead_lettered
        ),
    }
    // Dead-lettered tasks are reported above; a task neither done nor in the DLQ is lost.
    let lost = missing.saturating_sub(dlq.unwrap_or(0) as usize);
    assert!(
        recovered.is_some() && lost == 0,
        "{lost} of {n} tasks neither completed nor dead-lettered within {DRAIN_DEADLINE:?}"
    );
    drop(ns);
    Ok(())
}

/// The `worker` binary on the namespace, logging to a file, with its metrics endpoint on.
fn spawn_worker(ns: &TestNs, i: usize) -> anyhow::Result<Worker> {
    let port = secflow_tests::free_port();
    let log = std::env::temp_dir().join(format!("secflow-restart-{}-w{i}.log", ns.name));
    let child = secflow_tests::command("worker")
        .env("AMQP_URL", &ns.amqp_url)
        .args(["--namespace", &ns.name, "--delivery-limit"])
        .arg(ns.delivery_limit.to_string())
        .args(["--log-format", "text", "--prefetch", "64", "--worker-id"])
        .arg(format!("bench-w{i}"))
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    Ok(Worker {
        child,
        port,
        log,
        last: [0; 4],
    })
}

async fn sample(
    workers: &mut [Worker],
    probe: &mut Probe,
    url: &str,
    queue: &str,
    t0: Instant,
) -> Sample {
    let mut s = Sample::default();
    for w in workers.iter_mut() {
        let metrics =
            tokio::time::timeout(PROBE_TIMEOUT, secflow_tests::http_get(w.port, "/metrics")).await;
        if let Ok(Some((200, body))) = metrics {
            for (k, outcome) in ["completed", "duplicate", "handed_back", "dead_lettered"]
                .iter()
                .enumerate()
            {
                let key = format!("secflow_tasks_settled_total{{outcome=\"{outcome}\"}} ");
                if let Some(v) = body.lines().find_map(|l| l.strip_prefix(key.as_str())) {
                    w.last[k] = v.trim().parse().unwrap_or(w.last[k]);
                }
            }
        }
        let ready =
            tokio::time::timeout(PROBE_TIMEOUT, secflow_tests::http_get(w.port, "/readyz")).await;
        s.consuming += usize::from(matches!(ready, Ok(Some((200, _)))));
        s.completed += w.last[0];
        s.duplicates += w.last[1];
        s.handed_back += w.last[2];
        s.dead_lettered += w.last[3];
    }
    s.at = t0.elapsed();
    if let Some((ready, consumers)) = probe.queue(url, queue).await {
        s.ready = Some(ready);
        s.consumers = Some(consumers);
    }
    s
}

/// A connection of the bench's own for passive declares, reopened after the restart.
#[derive(Default)]
struct Probe {
    open: Option<(Connection, Channel)>,
}

impl Probe {
    async fn queue(&mut self, url: &str, queue: &str) -> Option<(u32, u32)> {
        if self.open.is_none() {
            let conn = accepts(url).await?;
            let ch = tokio::time::timeout(PROBE_TIMEOUT, conn.create_channel())
                .await
                .ok()?
                .ok()?;
            self.open = Some((conn, ch));
        }
        let (_, ch) = self.open.as_ref()?;
        let declared = tokio::time::timeout(
            PROBE_TIMEOUT,
            ch.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            ),
        )
        .await;
        match declared {
            Ok(Ok(q)) => Some((q.message_count(), q.consumer_count())),
            _ => {
                self.open = None;
                None
            }
        }
    }
}

impl Probe {
    /// Messages ready in `queue`, if the broker answers.
    async fn depth(&mut self, url: &str, queue: &str) -> Option<u32> {
        self.queue(url, queue).await.map(|(ready, _)| ready)
    }
}

/// An AMQP connection if the broker completes a handshake within the probe timeout.
async fn accepts(url: &str) -> Option<Connection> {
    tokio::time::timeout(
        PROBE_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .ok()?
    .ok()
}

/// Stops the broker, keeps it down for [`DOWNTIME`], starts it, and notes when it accepts
/// AMQP connections again (polled independently of the start command's own wait).
async fn restart_broker(rabbit: Arc<PrivateRabbit>, full_stop: bool, t0: Instant) -> Restart {
    let stop_issued = t0.elapsed();
    let r = Arc::clone(&rabbit);
    let stop = tokio::task::spawn_blocking(move || if full_stop { r.stop() } else { r.stop_app() });
    // The stop command takes a while to start; the port closing is when clients notice.
    let addr = ("127.0.0.1", rabbit.port);
    let give_up = Instant::now() + Duration::from_secs(60);
    let down = loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
        if !matches!(probe.await, Ok(Ok(_))) {
            break t0.elapsed();
        }
        assert!(
            Instant::now() < give_up,
            "the private broker did not stop within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.await.expect("stopping the broker");
    tokio::time::sleep(DOWNTIME).await;
    let start_issued = t0.elapsed();
    let url = rabbit.url();
    let start = tokio::task::spawn_blocking(move || {
        if full_stop {
            rabbit.start_again()
        } else {
            rabbit.start_app()
        }
    });
    let give_up = Instant::now() + Duration::from_secs(120);
    let accepting = loop {
        assert!(
            Instant::now() < give_up,
            "the private broker did not accept connections within 120 s of its start"
        );
        if let Some(conn) = accepts(&url).await {
            let at = t0.elapsed();
            let _ = tokio::time::timeout(PROBE_TIMEOUT, conn.close(200, "".into())).await;
            break at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    start.await.expect("starting the broker");
    Restart {
        stop_issued,
        down,
        start_issued,
        accepting,
    }
}

/// SIGTERM, then SIGKILL if the worker has not exited within 15 s.
async fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Tasks among `ids` without a done marker in the shared Redis.
async fn not_done(ns: &str, ids: &[uuid::Uuid]) -> anyhow::Result<usize> {
    let client = redis::Client::open(secflow_common::config::DEFAULT_REDIS_URL)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await??;
    let mut missing = 0;
    for chunk in ids.chunks(1000) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("sf:{{{ns}:task:{id}}}"))
            .collect();
        let values: Vec<Option<String>> = tokio::time::timeout(
            Duration::from_secs(5),
            redis::cmd("MGET").arg(keys).query_async(&mut conn),
        )
        .await??;
        missing += values
            .iter()
            .filter(|v| !v.as_deref().is_some_and(|v| v.starts_with("done:")))
            .count();
    }
    Ok(missing)
}
