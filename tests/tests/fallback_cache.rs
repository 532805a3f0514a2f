//! The cache alternative against the real RabbitMQ and Redis: a node whose chain ends in
//! `cache.last` keeps its last output, and serves it when both of its sources are down.

use axum::{Router, http::StatusCode, routing::get};
use secflow_common::{control::Level, runs::RunStore};
use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, completions, free_port, recipe_file};
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// A CVE source that answers 503 while `down`.
async fn source(down: Arc<AtomicBool>) -> u16 {
    let app = Router::new().route(
        "/cves",
        get(move || {
            let down = Arc::clone(&down);
            async move {
                if down.load(Ordering::SeqCst) {
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (StatusCode::OK, "CVE-2024-3094")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Proves: a first run with its primary source up succeeds and keeps the node's output; a
/// second run of the same recipe with the primary answering 503 and the mirror unreachable is
/// served, in its first attempt, by `cache.last` with that earlier output: the node records
/// alternative 2 at quality `medium`, its dependent gets the cached body, and the run ends
/// `degraded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_falls_through_to_the_cache_when_both_sources_are_down() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let down = Arc::new(AtomicBool::new(false));
    let primary = source(Arc::clone(&down)).await;
    let mirror = free_port();
    let yaml = format!(
        r#"
version: "1.0"
name: cve-feed
nodes:
  - id: cves
    type: http
    config: {{ url: "http://127.0.0.1:{primary}/cves" }}
    timeout: 5s
    outputs: [body]
    fallback:
      - {{ type: http, config: {{ url: "http://127.0.0.1:{mirror}/cves" }}, timeout: 5s, quality: high }}
      - {{ type: cache.last, quality: medium }}
  - id: report
    type: builtin.echo
    inputs: {{ feed: cves.body }}
    config: {{ feed: "${{inputs.feed}}" }}
"#
    );
    let path = recipe_file(&ns, "cache", &yaml);
    let wait = Some(Duration::from_secs(30));
    let first = submit(&ns.broker(), &path, &BTreeMap::new(), wait, false)
        .await
        .unwrap();
    assert_eq!(first.status.as_deref(), Some("succeeded"));

    down.store(true, Ordering::SeqCst);
    let second = submit(&ns.broker(), &path, &BTreeMap::new(), wait, false)
        .await
        .unwrap();
    assert_eq!(second.status.as_deref(), Some("degraded"));
    tap.wait_until(
        "the second run's completions",
        Duration::from_secs(10),
        |ev| completions(ev, second.run_id).len() == 2,
    )
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    let served = events
        .iter()
        .find(|e| {
            e.kind == "node.completed"
                && e.run_id == Some(second.run_id)
                && e.node_id.as_deref() == Some("cves")
        })
        .unwrap();
    let by = served.served_by.as_ref().expect("served by an alternative");
    assert_eq!((by.index, by.node_type.as_str()), (2, "cache.last"));
    assert_eq!(
        (served.quality, served.retry_count),
        (Some(Level::Medium), 0)
    );
    let report = completions(&events, second.run_id)["report"][0]
        .clone()
        .unwrap();
    assert_eq!(report["echo"]["feed"], "CVE-2024-3094");
    let runs = RunStore::new(secflow_common::config::DEFAULT_REDIS_URL, &ns.name).unwrap();
    let status = runs.status(&second.run_id.to_string()).await.unwrap();
    assert_eq!(status.records["cves"].quality, Level::Medium);
    let _ = std::fs::remove_file(path);
}
