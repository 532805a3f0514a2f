//! The chaos suite: a workflow of 2,000+ tasks through 4 workers while workers are SIGKILLed
//! and restarted, RabbitMQ is restarted, Redis is stopped for 10 s and poison messages arrive.
//! Runs on a RabbitMQ node and a Redis of its own (the shared ones are not touched), then
//! prints what was submitted, completed, dead-lettered (with reasons), lost and completed twice,
//! and how long the fleet took to consume again after the broker restart. Exits non-zero when
//! a task was lost or completed twice, a poison message is not in the DLQ with the right
//! reason, or a worker died on its own.
//!
//! `bash scripts/chaos.sh` (or `cargo run --release -p secflow-tests --bin chaos -- --help`).

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use rand::RngExt;
use secflow_common::{
    TaskEnvelope, Topology, amqp, config::BrokerArgs, deadline::within, headers as h,
    runs::RunStore, signing::Keyring, topology::Namespace,
};
use secflow_tests::{PrivateRabbit, PrivateRedis, TEST_SIGNING_KEY, bin, free_port, http_get};
use std::{
    collections::{BTreeMap, HashMap},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Suite settings (from the command line: `--branches N --workers N --timeout SECS`).
struct Settings {
    branches: usize,
    workers: usize,
    timeout: Duration,
    logs: Option<std::path::PathBuf>,
}

fn settings() -> Result<Settings> {
    let mut s = Settings {
        branches: 2_000,
        workers: 4,
        timeout: Duration::from_secs(300),
        logs: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--branches" => s.branches = usize::try_from(value()?)?,
            "--workers" => s.workers = usize::try_from(value()?)?,
            "--timeout" => s.timeout = Duration::from_secs(value()?),
            "--logs" => {
                let dir = std::path::PathBuf::from(it.next().context("--logs needs a directory")?);
                std::fs::create_dir_all(&dir)?;
                s.logs = Some(dir);
            }
            "--help" | "-h" => {
                println!("chaos [--branches 2000] [--workers 4] [--timeout 300] [--logs DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    ensure!(
        s.branches >= 10 && s.workers >= 2,
        "at least 10 branches and 2 workers"
    );
    Ok(s)
}

/// The fleet's worker processes, restartable.
struct Fleet {
    amqp_url: String,
    redis_url: String,
    ns: String,
    workers: Vec<(Child, u16)>,
    /// Where worker logs go (`--logs DIR`), if anywhere.
    logs: Option<std::path::PathBuf>,
    kills: usize,
    restarts: usize,
}

impl Fleet {
    fn spawn(&self, index: usize) -> Result<(Child, u16)> {
        let port = free_port();
        let child = Command::new(bin("worker"))
            .env("AMQP_URL", &self.amqp_url)
            .env("REDIS_URL", &self.redis_url)
            .env("SECFLOW_NAMESPACE", &self.ns)
            .env("SECFLOW_SIGNING_KEY", TEST_SIGNING_KEY)
            .env("RUST_LOG", "info")
            .args(["--worker-id", &format!("chaos-w{index}")])
            .args([
                "--prefetch",
                "8",
                "--lease-ms",
                "3000",
                "--grace-period",
                "5",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            // Chaos injection on top of the external faults: transient failures, latency and
            // rare hangs (the node timeout ends them).
            .args([
                "--chaos",
                r#"{"fail":{"transient":0.03},"latency_ms":[0,20],"hang":0.002}"#,
            ])
            .args([
                "--retry-policy",
                r#"*/transient={"max_attempts":25,"base_delay_ms":200,"max_delay_ms":2000}"#,
            ])
            .args([
                "--breaker-default",
                r#"{"failure_threshold":40,"window_ms":5000,"open_ms":1000}"#,
            ])
            // Injected failures all share one fingerprint; they are not one broken cause.
            .args(["--escalate-after", "1000000"])
            .stdout(Stdio::null())
            .stderr(match &self.logs {
                Some(dir) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join(format!("worker-{index}.log")))?,
                ),
                None => Stdio::null(),
            })
            .spawn()
            .context("spawn a worker")?;
        Ok((child, port))
    }

    /// SIGKILLs a random worker and starts a replacement.
    fn kill_and_restart(&mut self) -> Result<()> {
        let i = rand::rng().random_range(0..self.workers.len());
        let (child, _) = &mut self.workers[i];
        child.kill()?;
        child.wait()?;
        self.kills += 1;
        self.workers[i] = self.spawn(i)?;
        self.restarts += 1;
        Ok(())
    }

    /// Workers that exited although nobody killed them.
    fn died(&mut self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| !matches!(self.workers[i].0.try_wait(), Ok(None)))
            .collect()
    }

    fn ports(&self) -> Vec<u16> {
        self.workers.iter().map(|(_, p)| *p).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (child, _) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn all_ready(ports: &[u16]) -> (usize, usize) {
    let mut ready = 0;
    for port in ports {
        if http_get(*port, "/readyz").await.map(|r| r.0) == Some(200) {
            ready += 1;
        }
    }
    (ready, ports.len())
}

/// Node completions seen on the events exchange, by node id (a durable tap queue, consumed by
/// a loop that reconnects across the broker restart).
/// Completions of one node: (event id, the distinct reports of it).
type Reports = Vec<(String, Vec<String>)>;
/// Node id → its completions.
type Seen = Arc<Mutex<HashMap<String, Reports>>>;

async fn tap(url: String, topology: Arc<Topology>, seen: Seen) {
    let queue = format!("{}.chaos-tap", topology.namespace().as_str());
    // Every step of (re)subscribing has a deadline: right after a broker restart a connection
    // or a quorum queue's declare can hang, and a tap stuck there would miss every later event.
    const SETUP: Duration = Duration::from_secs(10);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt = async {
            let setup = async {
                let conn = Connection::connect(&url, Default::default()).await?;
                let ch = conn.create_channel().await?;
                let mut args = FieldTable::default();
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
                ch.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
                ch.queue_bind(
                    queue.as_str().into(),
                    topology.events_exchange().as_str().into(),
                    "node.completed".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
                let consumer = ch
                    .basic_consume(
                        queue.as_str().into(),
                        "chaos-tap".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, lapin::Error>((conn, ch, consumer))
            };
            let (conn, ch, mut consumer) = within("subscribing", SETUP, setup).await??;
            if attempts > 1 {
                println!("   (event tap subscribed again, attempt {attempts})");
            }
            let mut quiet = 0u32;
            loop {
                // The stream does not always end when the broker goes away: look at the
                // connection whenever it is quiet, and every 5 quiet seconds ask the broker
                // about the tap's queue (a connection can look up and be dead).
                let next = match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
                {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(_) if conn.status().connected() => {
                        quiet += 1;
                        if quiet.is_multiple_of(5) {
                            let passive = QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            };
                            let asked = ch.queue_declare(
                                queue.as_str().into(),
                                passive,
                                FieldTable::default(),
                            );
                            within("the broker's answer about the tap's queue", SETUP, asked)
                                .await??;
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                quiet = 0;
                let delivery = next?;
                for e in secflow_common::events::decode(&delivery.data).unwrap_or_default() {
                    if e.kind == "node.completed" {
                        let node = e.node_id.clone().unwrap_or_default();
                        let what = format!(
                            "{} at {} (task {}, retry {})",
                            e.worker,
                            e.at_ms,
                            e.task_id.map(|t| t.to_string()).unwrap_or_default(),
                            e.retry_count
                        );
                        // Events are delivered at least once, and a completion whose worker died
                        // while reporting it is reported again: both keep the event id and name
                        // the same attempt, so a completion counts once per attempt; a repeat
                        // is counted apart. Two attempts completing one node is a duplicate.
                        let id = e.attempt.clone().unwrap_or_else(|| what.clone());
                        let mut seen = seen.lock().unwrap();
                        let list = seen.entry(node).or_default();
                        match list.iter_mut().find(|(known, _)| *known == id) {
                            Some((_, reports)) => {
                                if !reports.contains(&what) {
                                    reports.push(what);
                                }
                            }
                            None => list.push((id, vec![what])),
                        }
                    }
                }
                within(
                    "an ack's confirmation",
                    SETUP,
                    delivery.acker.ack(BasicAckOptions::default()),
                )
                .await??;
            }
            Ok::<(), secflow_common::Error>(())
        };
        // Refused and reset connections are the outage itself; a missed deadline is named.
        if let Err(why @ secflow_common::Error::Timeout { .. }) = attempt.await {
            println!("   (event tap: {why}; subscribing again)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The "reason" of a poison message the broker must refuse at publish (over its
/// `max_message_size`): it never reaches a worker or the DLQ.
const REFUSED: &str = "refused_by_broker";

/// A poison message and the dead-letter reason and code it must end with.
struct Poison {
    id: String,
    body: Vec<u8>,
    routing_key: &'static str,
    /// Signed with the fleet's key (else unsigned, or forged when `code` says so).
    signed: bool,
    reason: &'static str,
    code: &'static str,
}

fn poison() -> Vec<Poison> {
    let p = |id: String, body: Vec<u8>, routing_key, signed, reason, code| Poison {
        id,
        body,
        routing_key,
        signed,
        reason,
        code,
    };
    let kind = |k: &str| format!("poison-{k}");
    let envelope = |node_type: &str, config| {
        let mut t = TaskEnvelope::new(node_type, config);
        t.node_id = "poison".into();
        t
    };
    let unknown = envelope("scan.nonexistent", serde_json::json!({}));
    let forged = envelope("builtin.echo", serde_json::json!({"forged": true}));
    let unsigned = envelope("builtin.echo", serde_json::json!({"unsigned": true}));
    vec![
        p(
            kind("not-json"),
            b"this is not json {".to_vec(),
            "builtin.echo",
            true,
            "malformed",
            "malformed_body",
        ),
        p(
            kind("wrong-schema"),
            br#"{"schema":1,"hello":"world"}"#.to_vec(),
            "builtin.echo",
            true,
            "malformed",
            "invalid_envelope",
        ),
        p(
            kind("wrong-types"),
            br#"{"schema":"one","task_id":5,"node_id":[],"type":7,"created_at_ms":"now"}"#.to_vec(),
            "builtin.echo",
            true,
            "malformed",
            "invalid_envelope",
        ),
        p(
            kind("10mb"),
            vec![b'x'; 10 << 20],
            "builtin.echo",
            true,
            REFUSED,
            "max_message_size",
        ),
        p(
            kind("invalid-utf8"),
            b"{\"schema\":1,\"node_id\":\"\xff\xfe\xfd\"}".to_vec(),
            "builtin.echo",
            true,
            "malformed",
            "malformed_body",
        ),
        p(
            unknown.task_id.to_string(),
            unknown.to_body(),
            "scan.nonexistent",
            true,
            "validation",
            "unknown_type",
        ),
        p(
            forged.task_id.to_string(),
            forged.to_body(),
            "builtin.echo",
            false,
            "security",
            "bad_signature",
        ),
        p(
            unsigned.task_id.to_string(),
            unsigned.to_body(),
            "builtin.echo",
            false,
            "security",
            "unsigned",
        ),
    ]
}

async fn publish_poison(
    url: &str,
    topology: &Topology,
) -> Result<Vec<(String, &'static str, &'static str)>> {
    let conn = amqp::connect(url, "chaos-poison", Duration::from_secs(30)).await?;
    let publisher = amqp::Publisher::new(&conn).await?;
    let keyring = Keyring::parse(TEST_SIGNING_KEY).map_err(anyhow::Error::msg)?;
    let attacker =
        Keyring::parse("test:not-the-real-key-0123456789").map_err(anyhow::Error::msg)?;
    let mut expected = Vec::new();
    for m in poison() {
        let mut headers = FieldTable::default();
        if m.signed {
            keyring.sign(&mut headers, &m.id, &m.body);
        } else if m.code == "bad_signature" {
            attacker.sign(&mut headers, &m.id, &m.body);
        }
        let props = BasicProperties::default()
            .with_message_id(m.id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        // The refusal closes the channel: a message the broker must refuse goes on one of its own.
        let own;
        let via = if m.reason == REFUSED {
            own = amqp::Publisher::new(&conn).await?;
            &own
        } else {
            &publisher
        };
        let sent = via
            .publish(
                &topology.tasks_exchange(),
                m.routing_key,
                &m.body,
                props,
                true,
            )
            .await;
        if m.reason == REFUSED {
            anyhow::ensure!(
                sent.is_err(),
                "the broker accepted the {} KiB poison message: is max_message_size set?",
                m.body.len() / 1024
            );
            continue;
        }
        sent?;
        expected.push((m.id, m.reason, m.code));
    }
    let _ = conn.close(200, "poison sent".into()).await;
    Ok(expected)
}

/// Drains the DLQ: (message id, reason, code) of each dead letter.
async fn drain_dlq(url: &str, topology: &Topology) -> Result<Vec<(String, String, String)>> {
    let conn = amqp::connect(url, "chaos-dlq", Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(
            topology.dlq().as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await?
    {
        let hd = msg.delivery.properties.headers().as_ref();
        let id = msg
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        out.push((
            id,
            h::get_str(hd, h::DEAD_LETTER_REASON)
                .unwrap_or("?")
                .to_string(),
            h::get_str(hd, h::ERROR_CODE).unwrap_or("?").to_string(),
        ));
        msg.delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    let _ = conn.close(200, "drained".into()).await;
    Ok(out)
}

/// What a stalled run looks like: node states, queue depths, worker readiness.
async fn stall_report(
    runs: &RunStore,
    run: &str,
    url: &str,
    topology: &Topology,
    fleet: &Fleet,
) -> String {
    let mut out = String::new();
    if let Ok(status) = runs.status(run).await {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for state in status.nodes.values() {
            *counts.entry(state.as_str()).or_default() += 1;
        }
        let open: Vec<&String> = status
            .nodes
            .iter()
            .filter(|(_, s)| !matches!(s.as_str(), "succeeded" | "failed" | "skipped"))
            .map(|(n, _)| n)
            .take(10)
            .collect();
        out.push_str(&format!("  node states: {counts:?}; not ended: {open:?}\n"));
    }
    if let Ok(conn) = amqp::connect(url, "chaos-diagnose", Duration::from_secs(5)).await {
        for queue in [topology.work_queue("default"), topology.dlq()] {
            if let Ok(ch) = conn.create_channel().await {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if let Ok(q) = ch
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    out.push_str(&format!(
                        "  {queue}: {} ready, {} consumers\n",
                        q.message_count(),
                        q.consumer_count()
                    ));
                }
            }
        }
        let _ = conn.close(200, "diagnosed".into()).await;
    }
    let (ready, total) = all_ready(&fleet.ports()).await;
    out.push_str(&format!("  workers ready: {ready}/{total}"));
    out
}

fn recipe(branches: usize) -> String {
    let mut yaml = String::from(
        "version: 1\nname: chaos\nnodes:\n  - { id: seed, type: builtin.echo, config: { scope: chaos }, outputs: [echo] }\n",
    );
    let mut join = Vec::new();
    for i in 0..branches {
        // Every 50th branch is a checkpointed batch; the rest sleep 200-800 ms.
        if i % 50 == 0 {
            yaml.push_str(&format!(
                "  - {{ id: b{i}, type: builtin.batch, timeout: 30s, inputs: {{ s: seed.echo }}, config: {{ items: 20, item_ms: 50, checkpoint_every: 2 }}, outputs: [sum] }}\n"
            ));
            join.push(format!("i{i}: b{i}.sum"));
        } else {
            let ms = 200 + (i * 7919) % 600;
            yaml.push_str(&format!(
                "  - {{ id: b{i}, type: builtin.sleep, timeout: 5s, inputs: {{ s: seed.echo }}, config: {{ ms: {ms} }}, outputs: [slept_ms] }}\n"
            ));
            join.push(format!("i{i}: b{i}.slept_ms"));
        }
    }
    yaml.push_str(&format!(
        "  - {{ id: join, type: builtin.noop, inputs: {{ {} }} }}\n",
        join.join(", ")
    ));
    yaml
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let settings = settings()?;
    let started = Instant::now();
    println!("chaos suite: starting a private RabbitMQ node and a private Redis");
    let rabbit = tokio::task::block_in_place(PrivateRabbit::start);
    let mut redis = PrivateRedis::start_persistent().await;
    let ns = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topology = Arc::new(Topology::new(Namespace::new(&ns)?, 5));
    let broker = BrokerArgs {
        amqp_url: rabbit.url(),
        redis_url: redis.url(),
        ..secflow_tests::signed_broker(&ns)
    };
    {
        let conn = amqp::connect(&broker.amqp_url, "chaos-setup", Duration::from_secs(30)).await?;
        let ch = conn.create_channel().await?;
        topology.declare_core(&ch).await?;
        topology
            .declare_pool(&ch, "default", &["#".to_string()])
            .await?;
        let _ = conn.close(200, "declared".into()).await;
    }
    let seen: Seen = Arc::default();
    tokio::spawn(tap(
        broker.amqp_url.clone(),
        Arc::clone(&topology),
        Arc::clone(&seen),
    ));

    let mut fleet = Fleet {
        amqp_url: broker.amqp_url.clone(),
        redis_url: broker.redis_url.clone(),
        ns: ns.clone(),
        workers: Vec::new(),
        logs: settings.logs.clone(),
        kills: 0,
        restarts: 0,
    };
    for i in 0..settings.workers {
        let w = fleet.spawn(i)?;
        fleet.workers.push(w);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while all_ready(&fleet.ports()).await.0 < settings.workers {
        ensure!(Instant::now() < deadline, "workers did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let path = std::env::temp_dir().join(format!("{ns}.yaml"));
    std::fs::write(&path, recipe(settings.branches))?;
    let submitted = secflow_producer::recipes::submit(
        &broker,
        &path.to_string_lossy(),
        &BTreeMap::new(),
        None,
        false,
    )
    .await?;
    let _ = std::fs::remove_file(&path);
    let run = submitted.run_id.to_string();
    let nodes = settings.branches + 2;
    println!(
        "submitted run {run}: {nodes} tasks on {} workers",
        settings.workers
    );
    let poisoned = publish_poison(&broker.amqp_url, &topology).await?;
    println!("published {} poison messages", poisoned.len());
    let runs = RunStore::new(&broker.redis_url, &ns)?;

    // The fault schedule, in seconds from now; worker kills throughout.
    let t0 = Instant::now();
    let mut next_kill = Duration::from_secs(3);
    let mut broker_restarted = false;
    let mut redis_stopped: Option<Instant> = None;
    let mut redis_done = false;
    let mut recovery: Option<(Duration, Duration)> = None;
    let status = loop {
        let now = t0.elapsed();
        if now >= next_kill && now < Duration::from_secs(40) {
            fleet.kill_and_restart()?;
            println!(
                "  {:>5.1}s SIGKILLed a worker and started a replacement",
                now.as_secs_f64()
            );
            next_kill += Duration::from_millis(rand::rng().random_range(2_500..5_000));
        }
        if !broker_restarted && now >= Duration::from_secs(8) {
            broker_restarted = true;
            println!("  {:>5.1}s restarting RabbitMQ", now.as_secs_f64());
            tokio::task::block_in_place(|| rabbit.stop());
            tokio::task::block_in_place(|| rabbit.start_again());
            let up = Instant::now();
            let mut first = None;
            loop {
                let (ready, total) = all_ready(&fleet.ports()).await;
                if ready > 0 && first.is_none() {
                    first = Some(up.elapsed());
                }
                if ready == total {
                    break;
                }
                ensure!(
                    up.elapsed() < Duration::from_secs(60),
                    "workers did not reconnect within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let all = up.elapsed();
            recovery = Some((first.unwrap_or(all), all));
            println!(
                "  {:>5.1}s RabbitMQ back; first worker consuming after {:.2} s, all after {:.2} s",
                t0.elapsed().as_secs_f64(),
                recovery.map_or(0.0, |r| r.0.as_secs_f64()),
                all.as_secs_f64()
            );
        }
        if redis_stopped.is_none() && !redis_done && now >= Duration::from_secs(20) {
            redis.stop();
            redis_stopped = Some(Instant::now());
            println!(
                "  {:>5.1}s Redis stopped (SIGKILL) for 10 s",
                now.as_secs_f64()
            );
        }
        if let Some(at) = redis_stopped
            && at.elapsed() >= Duration::from_secs(10)
        {
            redis.restart().await;
            redis_stopped = None;
            redis_done = true;
            println!("  {:>5.1}s Redis back", t0.elapsed().as_secs_f64());
        }
        let died = fleet.died();
        ensure!(died.is_empty(), "workers {died:?} exited on their own");
        if redis_done
            && let Ok(s) = runs.status(&run).await
            && s.status != "running"
        {
            break s;
        }
        if started.elapsed() >= settings.timeout {
            let mut diagnosis =
                stall_report(&runs, &run, &broker.amqp_url, &topology, &fleet).await;
            // Everything in the DLQ, with its reason: a node that ended there unrecorded would
            // leave its run waiting.
            if let Ok(dead) = drain_dlq(&broker.amqp_url, &topology).await {
                for (id, reason, code) in dead {
                    diagnosis.push_str(&format!("  dead letter {id}: {reason}/{code}\n"));
                }
            }
            bail!(
                "the run did not end within {:?}\n{diagnosis}",
                settings.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended = t0.elapsed();
    // Let the tap catch up with the last completions.
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().len() < nodes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ready, total) = all_ready(&fleet.ports()).await;
    let died = fleet.died();
    let dead = drain_dlq(&broker.amqp_url, &topology).await?;

    let succeeded = status.nodes.values().filter(|s| *s == "succeeded").count();
    let seen = seen.lock().unwrap().clone();
    let duplicates: Vec<(&String, &Reports)> = seen.iter().filter(|(_, n)| n.len() > 1).collect();
    let repeated = seen
        .values()
        .flatten()
        .filter(|(_, reports)| reports.len() > 1)
        .count();
    let node_ids: std::collections::HashSet<String> = status.nodes.keys().cloned().collect();
    let poison_ids: HashMap<&str, (&str, &str)> = poisoned
        .iter()
        .map(|(id, r, c)| (id.as_str(), (*r, *c)))
        .collect();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut poison_ok = 0;
    let mut poison_wrong = Vec::new();
    let mut workflow_dead = 0;
    for (id, reason, code) in &dead {
        *reasons.entry(format!("{reason}/{code}")).or_default() += 1;
        match poison_ids.get(id.as_str()) {
            Some((r, c)) if reason == r && code == c => poison_ok += 1,
            Some((r, c)) => poison_wrong.push(format!("{id}: {reason}/{code}, expected {r}/{c}")),
            None => workflow_dead += 1,
        }
    }
    let lost = nodes.saturating_sub(succeeded + workflow_dead);
    let completed_events = seen.keys().filter(|k| node_ids.contains(*k)).count();

    println!();
    println!(
        "chaos suite result ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  faults: {} workers SIGKILLed and restarted, RabbitMQ restarted once, Redis stopped 10 s, {} poison messages",
        fleet.kills,
        poisoned.len()
    );
    println!(
        "  run {run}: {} after {:.1} s",
        status.status,
        ended.as_secs_f64()
    );
    println!(
        "  tasks submitted:        {nodes} workflow + {} poison",
        poisoned.len()
    );
    println!(
        "  completed:              {succeeded} (run store), {completed_events} with a node.completed event"
    );
    println!(
        "  dead-lettered:          {} ({workflow_dead} workflow, {poison_ok} poison with the expected reason)",
        dead.len()
    );
    for (reason, n) in &reasons {
        println!("      {n:>5}  {reason}");
    }
    println!("  lost:                   {lost}");
    println!(
        "  duplicate completions:  {} (completions by different attempts)",
        duplicates.len()
    );
    println!(
        "  completions reported again by the same attempt (a worker died while reporting): {repeated}"
    );
    if let Some((first, all)) = recovery {
        println!(
            "  recovery after the broker restart: first worker consuming {:.2} s, all {total} {:.2} s after RabbitMQ accepted connections",
            first.as_secs_f64(),
            all.as_secs_f64()
        );
    }
    println!(
        "  workers running at the end: {ready}/{total} ready, {} exited on their own",
        died.len()
    );

    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!("{lost} tasks lost"));
    }
    if !duplicates.is_empty() {
        failures.push(format!("duplicate completions: {duplicates:?}"));
    }
    if poison_ok != poisoned.len() {
        failures.push(format!(
            "{} of {} poison messages in the DLQ with the right reason: {poison_wrong:?}",
            poison_ok,
            poisoned.len()
        ));
    }
    if completed_events < succeeded {
        failures.push(format!(
            "{} completions have no node.completed event",
            succeeded - completed_events
        ));
    }
    if !died.is_empty() || ready < total {
        failures.push("not every worker is running and ready".into());
    }
    if recovery.is_none_or(|(first, _)| first >= Duration::from_secs(5)) {
        failures.push("no worker consumed within 5 s of the broker restart".into());
    }
    drop(fleet);
    drop(redis);
    drop(rabbit);
    if failures.is_empty() {
        println!("PASS");
        Ok(())
    } else {
        bail!("FAIL: {}", failures.join("; "))
    }
}
