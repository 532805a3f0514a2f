//! A workflow through a Redis outage (a private Redis with an append-only file, killed and
//! started again): nodes wait instead of running unrecorded, and the run completes with every
//! node exactly once.

use secflow_tests::{PrivateRedis, TestNs, completions, recipe_file, redis_keys, wait_for};
use std::{collections::BTreeMap, time::Duration};

/// Proves: when Redis dies while a workflow node runs, its end cannot be recorded, so it is
/// retried and then deferred (not run again and again) until Redis is back; the run then
/// succeeds with each node completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_waits_out_a_redis_outage() {
    let mut redis = PrivateRedis::start_persistent().await;
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut cfg = ns.worker_config();
    cfg.broker.redis_url = redis.url();
    // The attempt that Redis died under cannot release its lease: the next attempt waits for
    // it to expire (30 s by default).
    cfg.lease_ms = 3_000;
    let worker = ns.spawn_worker(cfg);
    let mut broker = ns.broker();
    broker.redis_url = redis.url();
    let recipe = recipe_file(
        &ns,
        "outage",
        "version: 1\nname: outage\nnodes:\n  - { id: a, type: builtin.sleep, config: { ms: 1500 }, outputs: [slept_ms] }\n  - { id: b, type: builtin.echo, inputs: { s: a.slept_ms }, outputs: [echo] }\n",
    );
    let submitted =
        secflow_producer::recipes::submit(&broker, &recipe, &BTreeMap::new(), None, false)
            .await
            .unwrap();
    let run = submitted.run_id;
    let url = redis.url();
    wait_for("node a to be claimed", Duration::from_secs(20), || {
        let (url, ns) = (url.clone(), ns.name.clone());
        async move {
            redis_keys(&url, &ns)
                .await
                .is_ok_and(|keys| keys.iter().any(|k| k.contains(":task:")))
        }
    })
    .await;
    redis.stop();
    // The outage itself: what is under test is how the fleet behaves during it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.restart().await;
    tap.wait_until("the run to complete", Duration::from_secs(60), |ev| {
        ev.iter().any(|e| {
            matches!(e.kind.as_str(), "workflow.completed" | "workflow.failed")
                && e.run_id == Some(run)
        })
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    let done = completions(&events, run);
    assert_eq!(done.get("a").map(Vec::len), Some(1), "{done:?}");
    assert_eq!(done.get("b").map(Vec::len), Some(1), "{done:?}");
    let waited = events
        .iter()
        .filter(|e| {
            e.run_id == Some(run) && (e.kind == "node.deferred" || e.kind == "node.retrying")
        })
        .count();
    assert!(waited >= 1, "node a waited for Redis: {events:?}");
    let runs = secflow_common::runs::RunStore::new(&redis.url(), &ns.name).unwrap();
    assert_eq!(
        runs.status(&run.to_string()).await.unwrap().status,
        "succeeded"
    );
}
