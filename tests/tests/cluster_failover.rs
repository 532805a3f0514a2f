//! A node of a 3-node RabbitMQ cluster dies (SIGKILL) while two workers drain a run: the
//! clients that were on it move to the nodes left (the next address of their `AMQP_URL` list),
//! the work queue (a quorum queue with a replica on every node) elects a new leader, and every task
//! completes exactly once with none dead-lettered.

use futures_util::StreamExt;
use secflow_common::{amqp, events::TaskEvent};
use secflow_producer::publish_tasks;
use secflow_tests::{
    PrivateCluster, TestNs, command, completing_attempts, free_port, http_get, redis_done_markers,
    request, stop_gracefully, wait_for, wait_ready,
};
use serde_json::json;
use std::{
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const REDIS: &str = "redis://127.0.0.1:6379/";
const TASKS: usize = 2_000;

/// A worker process on `ns` whose `AMQP_URL` is `urls`, waited for until /readyz says 200;
/// its metrics port.
async fn ready_worker(ns: &TestNs, id: &str, urls: &str) -> (Child, u16) {
    let port = free_port();
    let child = command("worker")
        .env("AMQP_URL", urls)
        .args(["--namespace", &ns.name, "--log-format", "text"])
        .args(["--delivery-limit", &ns.delivery_limit.to_string()])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--worker-id", id, "--prefetch", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the worker binary");
    wait_ready(id, port).await;
    (child, port)
}

async fn ready(port: u16) -> Option<u16> {
    http_get(port, "/readyz").await.map(|(status, _)| status)
}

/// Collects the namespace's events through `conn` (a node that stays up).
async fn tap(conn: &lapin::Connection, ns: &TestNs) -> Arc<Mutex<Vec<TaskEvent>>> {
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = secflow_common::events::subscribe(&ch, &ns.topology(), "#")
        .await
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let decoded = secflow_common::events::decode(&d.data).expect("events are JSON");
            sink.lock().unwrap().extend(decoded);
        }
    });
    events
}

fn completed(events: &Mutex<Vec<TaskEvent>>) -> usize {
    completing_attempts(&events.lock().unwrap()).len()
}

/// Messages and consumers of `queue`, looked up through `conn`.
async fn queue_state(conn: &lapin::Connection, queue: &str) -> (u32, u32) {
    let q = tokio::time::timeout(Duration::from_secs(10), amqp::passive_declare(conn, queue))
        .await
        .expect("the passive declare answered within 10 s")
        .expect("the queue exists");
    (q.message_count(), q.consumer_count())
}

/// Proves: killing (SIGKILL) the node that leads the work queue and holds a worker and the producer,
/// mid-drain, loses nothing and duplicates nothing: the worker is consuming again from another
/// node within 10 s, the other worker keeps going, every task has exactly one completing
/// attempt and a done marker, and the DLQ stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_task_and_its_clients_move_to_the_others() {
    let booting = Instant::now();
    let cluster = tokio::task::block_in_place(|| PrivateCluster::start(3));
    eprintln!("3-node cluster up in {:?}", booting.elapsed());
    // The namespace's own connection reaches node 0, its list's first address: declared through
    // it, the work queue's Raft leader is there (client-local placement), so killing node 0
    // also moves the queue's leadership. Its cleanup goes through the list too.
    let ns = TestNs::on_broker(&cluster.urls(&[0, 1, 2]), 5).await;
    // The test itself watches from node 2, which stays up.
    let watch = amqp::connect(
        &cluster.node(2).url(),
        "secflow-test-watch",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let events = tap(&watch, &ns).await;
    let queue = ns.topology().work_queue("default");

    // Listed differently: worker A reaches node 0 first, worker B node 1.
    let id_a = format!("{}-a", ns.name);
    let id_b = format!("{}-b", ns.name);
    let (mut worker_a, port_a) = ready_worker(&ns, &id_a, &cluster.urls(&[0, 1, 2])).await;
    let (mut worker_b, port_b) = ready_worker(&ns, &id_b, &cluster.urls(&[1, 2, 0])).await;
    // Where each worker's consuming connection is (rabbitmqctl blocks: off the runtime's
    // threads).
    let placement = || {
        let listing = tokio::task::block_in_place(|| cluster.connections());
        let of = |id: &str| {
            let name = format!("secflow-worker {id}");
            listing
                .iter()
                .find(|(_, line)| line.contains(&name))
                .map(|(node, _)| *node)
        };
        (of(&id_a), of(&id_b))
    };
    assert_eq!(
        placement(),
        (Some(0), Some(1)),
        "each worker connects to its first address"
    );

    // The producer lists node 0 first too: the kill may cut its publish off.
    let broker = ns.broker();
    let publishing = tokio::spawn(async move {
        publish_tasks(
            &broker,
            &request("builtin.sleep", json!({ "ms": 10 }), TASKS),
        )
        .await
    });
    wait_for(
        "the drain to be under way",
        Duration::from_secs(60),
        || async { completed(&events) >= 400 },
    )
    .await;

    let killed_at = Instant::now();
    cluster.node(0).kill();
    let done_at_kill = completed(&events);
    wait_for(
        "worker A to report not ready",
        Duration::from_secs(10),
        || async { ready(port_a).await != Some(200) },
    )
    .await;
    wait_for(
        "worker A to consume again",
        Duration::from_secs(30),
        || async { ready(port_a).await == Some(200) },
    )
    .await;
    let recovery = killed_at.elapsed();
    wait_for(
        "both workers consuming the work queue",
        Duration::from_secs(30),
        || async { queue_state(&watch, &queue).await.1 >= 2 },
    )
    .await;
    eprintln!(
        "node 0 killed with {done_at_kill} of {TASKS} done: worker A consuming again (from the \
         next address of its list) {recovery:?} later"
    );
    assert!(
        recovery < Duration::from_secs(10),
        "recovery took {recovery:?}"
    );
    assert_eq!(ready(port_b).await, Some(200), "worker B kept consuming");

    let ids = publishing
        .await
        .unwrap()
        .expect("every task confirmed despite the kill");
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
    let attempts = completing_attempts(&events.lock().unwrap());
    let lost = ids.iter().filter(|id| !attempts.contains_key(id)).count();
    let duplicated = attempts.values().filter(|a| a.len() > 1).count();
    let dead = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == "node.dead_lettered")
        .count();
    eprintln!("{TASKS} tasks: {lost} lost, {duplicated} completed twice, {dead} dead-lettered");
    assert_eq!(lost, 0, "tasks without a completion");
    assert_eq!(duplicated, 0, "tasks completed by two attempts");
    assert_eq!(dead, 0, "dead-lettered tasks");
    assert_eq!(
        queue_state(&watch, &ns.topology().dlq()).await.0,
        0,
        "the DLQ is empty"
    );
    assert_eq!(redis_done_markers(REDIS, &ns.name).await.unwrap(), TASKS);

    stop_gracefully(&mut worker_a).await;
    stop_gracefully(&mut worker_b).await;
    amqp::close(&watch, "test done").await;
}

/// Proves: a bad address anywhere in a list, or an empty one, stops the worker at once with an
/// error naming it (password masked), as a single bad URL does.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_address_in_the_list_stops_the_worker_at_once() {
    let good = "amqp://guest:guest@127.0.0.1:5672/%2f";
    for (list, expected) in [
        (
            format!("{good},http://u:secret@127.0.0.1:5672"),
            "(address 2 of 2) is not an AMQP URL",
        ),
        (format!("{good},"), "has an empty address"),
    ] {
        let started = Instant::now();
        let out = command("worker")
            .args(["--amqp-url", &list, "--log-format", "text"])
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .output()
            .expect("run the worker binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{list}: {stderr}");
        assert!(stderr.contains(expected), "{list}: {stderr}");
        assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{list}: not at once"
        );
    }
}
