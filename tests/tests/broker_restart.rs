//! A real broker restart (a private RabbitMQ node, stopped and started again) under a worker
//! and a producer that are both busy: nothing is lost and consuming resumes within 5 s of the
//! broker accepting connections again.

use secflow_producer::publish_tasks;
use secflow_tests::{
    PrivateRabbit, TestNs, free_port, http_get, metric, redis_done_markers, request, wait_for,
};
use serde_json::json;
use std::time::{Duration, Instant};

const REDIS: &str = "redis://127.0.0.1:6379/";
const TASKS: usize = 10_000;

async fn ready(port: u16) -> Option<u16> {
    http_get(port, "/readyz").await.map(|(status, _)| status)
}

/// Proves: a worker and a producer survive a broker restart: the producer's publish (cut off
/// mid-way) completes with every task confirmed, the worker reports not ready while the broker
/// is down and consumes again within 5 s of the broker accepting connections, and every task
/// completes (done markers = tasks published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_producer_survive_a_broker_restart() {
    let rabbit = PrivateRabbit::start();
    let ns = TestNs::on_broker(&rabbit.url(), 5).await;
    let port = free_port();
    let mut worker = ns.spawn_worker_process(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    wait_for(
        "the worker to be ready",
        Duration::from_secs(30),
        || async { ready(port).await == Some(200) },
    )
    .await;

    let broker = ns.broker();
    let publishing = tokio::spawn(async move {
        let ids = publish_tasks(&broker, &request("builtin.noop", json!({}), TASKS)).await;
        (ids, Instant::now())
    });
    let queue = ns.topology().work_queue("default");
    // A tenth of the tasks queued or settled: read cheaply (a queue's count, one scrape), so the
    // restart comes while most of the publish is still to do however fast the worker drains.
    // (Counting done markers in Redis, one read per key, once lagged until the whole publish
    // was confirmed.)
    wait_for(
        "the publish to be under way",
        Duration::from_secs(30),
        || async {
            ns.ready(&queue).await >= 1_000
                || metric(port, "secflow_tasks_settled_total")
                    .await
                    .is_some_and(|settled| settled >= 1_000.0)
        },
    )
    .await;
    let stopping = Instant::now();
    tokio::task::block_in_place(|| rabbit.stop());
    wait_for(
        "the worker to report not ready",
        Duration::from_secs(10),
        || async { ready(port).await == Some(503) },
    )
    .await;
    tokio::task::block_in_place(|| rabbit.start_again());
    let up = Instant::now();
    wait_for(
        "the worker to consume again",
        Duration::from_secs(30),
        || async { ready(port).await == Some(200) },
    )
    .await;
    let recovery = up.elapsed();
    eprintln!("worker consuming again {recovery:?} after the broker accepted connections");
    assert!(
        recovery < Duration::from_secs(5),
        "recovery took {recovery:?}"
    );

    let (ids, published_at) = publishing.await.unwrap();
    let ids = ids.expect("every task confirmed despite the restart");
    assert_eq!(ids.len(), TASKS);
    assert!(
        published_at > stopping,
        "the restart hit the producer mid-publish (else this test proves less than it says)"
    );
    wait_for("every task completed", Duration::from_secs(120), || async {
        redis_done_markers(REDIS, &ns.name).await.unwrap_or(0) >= TASKS
    })
    .await;
    assert_eq!(redis_done_markers(REDIS, &ns.name).await.unwrap(), TASKS);
    // The worker exits cleanly after it all.
    secflow_tests::stop_gracefully(&mut worker).await;
}
