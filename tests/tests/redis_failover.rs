//! The Redis primary dies under load and its replica is promoted behind the same address (the
//! managed-endpoint setup the docs describe: a cloud Redis's primary endpoint, a Service that
//! follows the primary, a proxy checking `role:master`). Here the endpoint is a TCP forwarder
//! in the test, pointed at the replica once it is promoted. The workers go degraded while no
//! primary answers, come back to the shared state on the new primary, and lose no task.

use secflow_producer::publish_tasks;
use secflow_tests::{
    EventTap, PrivateRedis, TestNs, command, completing_attempts, free_port, metric,
    redis_done_markers, request, stop_gracefully, wait_for, wait_ready,
};
use serde_json::json;
use std::{
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::net::{TcpListener, TcpStream};

const TASKS: usize = 3_000;

/// One address in front of whichever Redis is primary: every new connection goes to the
/// current target; connections to a dead target die with it.
struct Endpoint {
    port: u16,
    target: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let current = Arc::clone(&target);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = current.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, target, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs one command on the Redis at `url`; its answer as text.
async fn redis_cmd(url: &str, args: &[&str]) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let value: redis::Value = cmd.query_async(&mut conn).await?;
    Ok(match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => s,
        other => format!("{other:?}"),
    })
}

/// A worker process on `ns` whose Redis is `redis_url`, waited for until /readyz says 200.
async fn ready_worker(ns: &TestNs, id: &str, redis_url: &str) -> (Child, u16) {
    let port = free_port();
    let child = command("worker")
        .env("AMQP_URL", &ns.amqp_url)
        .env("REDIS_URL", redis_url)
        .args(["--namespace", &ns.name, "--log-format", "text"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--worker-id", id, "--prefetch", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the worker binary");
    wait_ready(id, port).await;
    (child, port)
}

/// Whether the worker with metrics on `port` says Redis is unreachable (`None`: no answer).
async fn degraded(port: u16) -> Option<bool> {
    metric(port, "secflow_redis_degraded")
        .await
        .map(|v| v == 1.0)
}

fn completed(events: &EventTap) -> usize {
    completing_attempts(&events.snapshot()).len()
}

/// Proves: SIGKILLing the Redis primary mid-drain and promoting its asynchronous replica behind
/// the same address loses no task and dead-letters none: both workers go degraded while no
/// primary answers, return to the shared state within 5 s of the promotion, and every task
/// completes. Tasks completed twice (the at-least-once window of the outage and of writes the
/// replica had not received) are counted and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_behind_the_same_address_loses_no_task() {
    let mut primary = PrivateRedis::start().await;
    let replica = PrivateRedis::start().await;
    // The initial sync goes over the socket, leaving no RDB file in the working directory.
    redis_cmd(
        &primary.url(),
        &["CONFIG", "SET", "repl-diskless-sync", "yes"],
    )
    .await
    .unwrap();
    redis_cmd(
        &primary.url(),
        &["CONFIG", "SET", "repl-diskless-sync-delay", "0"],
    )
    .await
    .unwrap();
    redis_cmd(
        &replica.url(),
        &["CONFIG", "SET", "repl-diskless-load", "on-empty-db"],
    )
    .await
    .unwrap();
    redis_cmd(
        &replica.url(),
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
    )
    .await
    .unwrap();
    wait_for("the replica to sync", Duration::from_secs(20), || async {
        redis_cmd(&replica.url(), &["INFO", "replication"])
            .await
            .is_ok_and(|info| info.contains("master_link_status:up"))
    })
    .await;
    let endpoint = Endpoint::start(primary.port).await;

    let ns = TestNs::new().await;
    let events = ns.tap_events().await;
    let (mut worker_a, port_a) =
        ready_worker(&ns, &format!("{}-a", ns.name), &endpoint.url()).await;
    let (mut worker_b, port_b) =
        ready_worker(&ns, &format!("{}-b", ns.name), &endpoint.url()).await;

    let broker = ns.broker();
    let publishing = tokio::spawn(async move {
        publish_tasks(
            &broker,
            &request("builtin.sleep", json!({ "ms": 50 }), TASKS),
        )
        .await
    });
    wait_for(
        "the drain to be under way",
        Duration::from_secs(60),
        || async { completed(&events) >= 500 },
    )
    .await;

    // The primary dies. The failover (a Sentinel quorum, a managed service) notices, promotes
    // the replica and repoints the address; here it is done once both workers have noticed.
    let markers_before = redis_done_markers(&replica.url(), &ns.name).await.unwrap();
    let killed_at = Instant::now();
    primary.stop();
    let done_at_kill = completed(&events);
    wait_for(
        "both workers to go degraded",
        Duration::from_secs(15),
        || async { degraded(port_a).await == Some(true) && degraded(port_b).await == Some(true) },
    )
    .await;
    let noticed = killed_at.elapsed();
    redis_cmd(&replica.url(), &["REPLICAOF", "NO", "ONE"])
        .await
        .unwrap();
    endpoint.point_at(replica.port);
    let promoted_at = Instant::now();
    wait_for(
        "both workers back on the shared state",
        Duration::from_secs(15),
        || async { degraded(port_a).await == Some(false) && degraded(port_b).await == Some(false) },
    )
    .await;
    let recovery = promoted_at.elapsed();
    eprintln!(
        "primary killed with {done_at_kill} of {TASKS} done ({markers_before} done markers on \
         the replica): workers degraded {noticed:?} later, back on the promoted replica \
         {recovery:?} after the promotion"
    );
    assert!(
        recovery < Duration::from_secs(5),
        "recovery took {recovery:?}"
    );

    let ids = publishing.await.unwrap().expect("every task confirmed");
    assert_eq!(ids.len(), TASKS);
    let deadline = Instant::now() + Duration::from_secs(90);
    while completed(&events) < TASKS {
        assert!(
            Instant::now() < deadline,
            "{} of {TASKS} tasks completed after 90 s",
            completed(&events)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        done_at_kill < TASKS,
        "the kill came after the drain (else this test proves less than it says)"
    );
    let snapshot = events.snapshot();
    let attempts = completing_attempts(&snapshot);
    let lost = ids.iter().filter(|id| !attempts.contains_key(id)).count();
    let duplicated = attempts.values().filter(|a| a.len() > 1).count();
    let dead = snapshot
        .iter()
        .filter(|e| e.kind == "node.dead_lettered")
        .count();
    let markers = redis_done_markers(&endpoint.url(), &ns.name).await.unwrap();
    eprintln!(
        "{TASKS} tasks: {lost} lost, {duplicated} completed twice, {dead} dead-lettered; \
         {markers} done markers on the new primary"
    );
    assert_eq!(lost, 0, "tasks without a completion");
    assert_eq!(dead, 0, "dead-lettered tasks");
    // The promoted replica kept what it had received: no marker it held before the kill is gone.
    assert!(
        markers >= markers_before,
        "{markers} done markers on the new primary, {markers_before} on the replica before the kill"
    );
    stop_gracefully(&mut worker_a).await;
    stop_gracefully(&mut worker_b).await;
}
