//! Fallback chains against the real RabbitMQ and Redis: a node whose sources are down is served
//! by the next alternative in the same attempt, an open breaker sends its tasks to the chain
//! at once, and a security failure never falls through.

use secflow_common::{control::Level, runs::RunStore};
use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, completions, free_port, recipe_file};
use secflow_worker::{
    WorkerStats,
    breaker::{Breakers, state::BreakerConfig},
    store::Store,
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// Proves: with both CVE sources unreachable, the chain falls through to its static
/// alternative in the first attempt (no retry), the node's event, its run record and the
/// trace say which alternative served it and at what quality, its dependent gets that output,
/// and the run ends `degraded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_falls_through_to_a_static_record_when_both_sources_are_down() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let (primary, mirror) = (free_port(), free_port());
    let yaml = format!(
        r#"
version: 1
name: cve-lookup
nodes:
  - id: cves
    type: http
    config: {{ url: "http://127.0.0.1:{primary}/cves" }}
    timeout: 5s
    outputs: [body]
    fallback:
      - {{ type: http, config: {{ url: "http://127.0.0.1:{mirror}/cves" }}, timeout: 5s, quality: high }}
      - {{ type: builtin.static, config: {{ body: "CVE-2021-44228 (cached)" }} }}
  - id: report
    type: builtin.echo
    inputs: {{ feed: cves.body }}
    config: {{ feed: "${{inputs.feed}}" }}
"#
    );
    let path = recipe_file(&ns, "chain", &yaml);
    let run = submit(
        &ns.broker(),
        &path,
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("degraded"));
    tap.wait_until("both completions", Duration::from_secs(10), |ev| {
        completions(ev, run.run_id).len() == 2
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    let served = events
        .iter()
        .find(|e| e.kind == "node.completed" && e.node_id.as_deref() == Some("cves"))
        .unwrap();
    let by = served.served_by.as_ref().expect("served by an alternative");
    assert_eq!((by.index, by.node_type.as_str()), (2, "builtin.static"));
    assert_eq!(
        (served.quality, served.level, served.retry_count),
        (Some(Level::Low), Some(Level::Full), 0)
    );
    assert!(
        !events
            .iter()
            .any(|e| e.kind == "node.retrying" && e.run_id == Some(run.run_id)),
        "the primary is not retried when an alternative serves"
    );
    let report = completions(&events, run.run_id)["report"][0]
        .clone()
        .unwrap();
    assert_eq!(report["echo"]["feed"], "CVE-2021-44228 (cached)");
    let end = events
        .iter()
        .find(|e| e.kind == "workflow.completed" && e.run_id == Some(run.run_id))
        .unwrap();
    assert_eq!(end.status.as_deref(), Some("degraded"));
    assert!(secflow_producer::events::trace_line(served).contains("served by fallback #2"));
    let runs = RunStore::new(secflow_common::config::DEFAULT_REDIS_URL, &ns.name).unwrap();
    let status = runs.status(&run.run_id.to_string()).await.unwrap();
    assert_eq!(status.status, "degraded");
    let record = &status.records["cves"];
    assert_eq!(
        (
            record.served_by.as_ref().map(|b| b.index),
            record.quality,
            record.level
        ),
        (Some(2), Level::Low, Level::Full)
    );
    assert_eq!(status.records["report"].quality, Level::Full);
    let _ = std::fs::remove_file(path);
}

/// Proves: a task whose service's breaker is open goes to its alternative at once: the
/// alternative serves it in the first delivery, no deferral is published, and the primary
/// (which would have succeeded) never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_primary_breaker_sends_the_task_to_the_alternative_at_once() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let breaker = BreakerConfig {
        failure_threshold: 1,
        open_ms: 600_000,
        max_open_ms: 600_000,
        ..BreakerConfig::default()
    };
    // Open the shared breaker of `cve-api` as a failing worker would.
    let store = Store::new(
        secflow_common::config::DEFAULT_REDIS_URL,
        &ns.name,
        Arc::new(WorkerStats::default()),
    )
    .unwrap();
    let breakers = Breakers::new(store, breaker.clone(), std::collections::HashMap::new());
    breakers
        .record("cve-api", false, secflow_common::now_ms())
        .await;
    let mut cfg = ns.worker_config();
    cfg.breakers = vec![("cve-api".into(), breaker)];
    let worker = ns.spawn_worker(cfg);
    let path = recipe_file(
        &ns,
        "open",
        r#"
version: 1
name: open-breaker
nodes:
  - id: cves
    type: builtin.echo
    service: cve-api
    config: { from: primary }
    fallback:
      - { type: builtin.static, config: { from: mirror }, quality: medium }
"#,
    );
    let run = submit(
        &ns.broker(),
        &path,
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("degraded"));
    tap.wait_until("the completion", Duration::from_secs(10), |ev| {
        completions(ev, run.run_id).len() == 1
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    assert!(
        !events.iter().any(|e| e.kind == "node.deferred"),
        "an open breaker with a chain does not defer"
    );
    let done = events
        .iter()
        .find(|e| e.kind == "node.completed" && e.run_id == Some(run.run_id))
        .unwrap();
    assert_eq!(done.output, Some(serde_json::json!({"from": "mirror"})));
    assert_eq!(done.quality, Some(Level::Medium));
    assert_eq!(done.served_by.as_ref().map(|b| b.index), Some(1));
    let _ = std::fs::remove_file(path);
}

/// Proves: a `security` failure of the primary does not fall through: the alternative never
/// serves, the node is dead-lettered as `security` and the run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_failure_of_the_primary_does_not_fall_through() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let path = recipe_file(
        &ns,
        "security",
        r#"
version: 1
name: security
nodes:
  - id: fetch
    type: builtin.fail
    config: { class: security, code: forged_token }
    fallback:
      - { type: builtin.static, config: { body: cached } }
"#,
    );
    let run = submit(
        &ns.broker(),
        &path,
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("failed"));
    tap.wait_until("the dead letter", Duration::from_secs(10), |ev| {
        ev.iter()
            .any(|e| e.kind == "node.dead_lettered" && e.run_id == Some(run.run_id))
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    let dead = events
        .iter()
        .find(|e| e.kind == "node.dead_lettered" && e.run_id == Some(run.run_id))
        .unwrap();
    let error = dead.error.as_ref().unwrap();
    assert_eq!(
        (error.class.as_str(), error.code.as_str()),
        ("security", "forged_token")
    );
    assert!(
        completions(&events, run.run_id).is_empty(),
        "nothing served it"
    );
    let _ = std::fs::remove_file(path);
}
