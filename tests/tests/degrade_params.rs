//! Degradation-level parameters against the real RabbitMQ and Redis: the fleet's level changes
//! the config of the tasks that follow, and skips optional nodes at `low` and every node not
//! marked essential at `minimal`.

use secflow_common::{
    TaskEnvelope,
    config::DEFAULT_REDIS_URL,
    control::{ControlStore, Level, LevelSetting},
    events::TaskEvent,
    runs::RunStore,
};
use secflow_producer::recipes::submit;
use secflow_tests::{EventTap, TestNs, completions, publish, recipe_file, wait_for};
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

/// Sets the fleet's level in Redis, as an operator would.
async fn set_level(ns: &TestNs, level: Level) {
    let store = ControlStore::new(DEFAULT_REDIS_URL, &ns.name).unwrap();
    store
        .set_level(&LevelSetting {
            level,
            auto: false,
            reason: "test".into(),
            by: "test".into(),
            at_ms: secflow_common::now_ms(),
        })
        .await
        .unwrap();
}

/// Waits until the worker runs tasks at `level`: publishes an ad-hoc probe at a time until
/// one's completion says so.
async fn wait_for_level(ns: &TestNs, tap: &EventTap, level: Level) {
    wait_for(
        "the worker to see the new level",
        Duration::from_secs(10),
        || async {
            let probe = TaskEnvelope::new("builtin.noop", json!({}));
            let id = probe.task_id;
            publish(ns, &[probe]).await;
            tap.wait_until("the probe's completion", Duration::from_secs(5), |ev| {
                ev.iter()
                    .any(|e| e.kind == "node.completed" && e.task_id == Some(id))
            })
            .await;
            tap.snapshot().iter().any(|e| {
                e.task_id == Some(id) && e.kind == "node.completed" && e.level == Some(level)
            })
        },
    )
    .await;
}

/// Submits the recipe at `path` and waits for its end; the run id and its final status.
async fn run(ns: &TestNs, tap: &EventTap, path: &str, nodes: usize) -> (uuid::Uuid, String) {
    let run = submit(
        &ns.broker(),
        path,
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    tap.wait_until("every node's completion", Duration::from_secs(10), |ev| {
        completions(ev, run.run_id).len() == nodes
    })
    .await;
    (run.run_id, run.status.unwrap_or_default())
}

/// The `node.completed` event of `node` in `run`.
fn completed(events: &[TaskEvent], run: uuid::Uuid, node: &str) -> TaskEvent {
    events
        .iter()
        .find(|e| {
            e.kind == "node.completed"
                && e.run_id == Some(run)
                && e.node_id.as_deref() == Some(node)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no completion of {node}"))
}

/// Proves: a node's config is as written at `full`; once the level is `medium`, the tasks that
/// follow run with its `degrade` overrides (a value replaced, a factor applied), their events
/// and run records say at which level they ran and which keys changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_level_changes_the_config_of_the_tasks_that_follow() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let path = recipe_file(
        &ns,
        "params",
        r#"
version: 1
name: params
nodes:
  - id: scan
    type: builtin.echo
    config: { rate_limit: 150, threads: 8, target: "http://app" }
    degrade:
      high: { rate_limit: 100 }
      medium: { rate_limit: 50, threads: "x0.5" }
"#,
    );
    let (first, status) = run(&ns, &tap, &path, 1).await;
    assert_eq!(status, "succeeded");
    let at_full = completed(&tap.snapshot(), first, "scan");
    assert_eq!(at_full.level, Some(Level::Full));
    assert_eq!(
        at_full.output.unwrap()["echo"],
        json!({"rate_limit": 150, "threads": 8, "target": "http://app"})
    );
    set_level(&ns, Level::Medium).await;
    wait_for_level(&ns, &tap, Level::Medium).await;
    let (second, _) = run(&ns, &tap, &path, 1).await;
    worker.stop().await;
    let at_medium = completed(&tap.snapshot(), second, "scan");
    assert_eq!(at_medium.level, Some(Level::Medium));
    assert_eq!(
        at_medium.output.unwrap()["echo"],
        json!({"rate_limit": 50, "threads": 4, "target": "http://app"})
    );
    let runs = RunStore::new(DEFAULT_REDIS_URL, &ns.name).unwrap();
    let record = &runs.status(&second.to_string()).await.unwrap().records["scan"];
    assert_eq!(record.level, Level::Medium);
    assert_eq!(record.adjusted, ["rate_limit", "threads"]);
    let _ = std::fs::remove_file(path);
}

const SKIPS: &str = r#"
version: 1
name: skips
nodes:
  - { id: root, type: builtin.echo, essential: true, config: { n: 1 }, outputs: [echo] }
  - { id: extra, type: builtin.echo, optional: true, inputs: { x: root.echo }, config: { n: 2 }, outputs: [echo] }
  - { id: main, type: builtin.echo, inputs: { x: root.echo }, config: { n: 3 } }
  - { id: after, type: builtin.echo, inputs: { e: extra.echo }, config: { n: 4 } }
"#;

/// Proves: at `low` an optional node completes without running (output `{}`, its event and
/// run record say it was skipped and why), its dependent runs with that input missing
/// (`_partial`), required nodes run, and the run ends `degraded`; at `minimal` only the
/// essential node runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_nodes_are_skipped_at_low_and_non_essential_ones_at_minimal() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    // Set before the worker starts: it reads the controls before it consumes.
    set_level(&ns, Level::Low).await;
    let worker = ns.spawn_worker(ns.worker_config());
    let path = recipe_file(&ns, "skips", SKIPS);
    let (low, status) = run(&ns, &tap, &path, 4).await;
    assert_eq!(status, "degraded");
    let events = tap.snapshot();
    let extra = completed(&events, low, "extra");
    assert_eq!(extra.output, Some(json!({})));
    assert!(
        extra
            .skipped
            .as_deref()
            .is_some_and(|why| why.contains("low")),
        "{:?}",
        extra.skipped
    );
    for node in ["root", "main", "after"] {
        let e = completed(&events, low, node);
        assert_eq!(
            (e.skipped.clone(), e.level),
            (None, Some(Level::Low)),
            "{node}"
        );
    }
    let after = completed(&events, low, "after").output.unwrap();
    assert_eq!(after["inputs"]["_partial"], json!(["e"]));
    assert_eq!(after["inputs"]["e"], Value::Null);
    let runs = RunStore::new(DEFAULT_REDIS_URL, &ns.name).unwrap();
    let status = runs.status(&low.to_string()).await.unwrap();
    assert!(status.records["extra"].skipped.is_some());
    assert_eq!(status.nodes["extra"], "succeeded");

    set_level(&ns, Level::Minimal).await;
    wait_for_level(&ns, &tap, Level::Minimal).await;
    let (minimal, status) = run(&ns, &tap, &path, 4).await;
    worker.stop().await;
    assert_eq!(status, "degraded");
    let events = tap.snapshot();
    assert_eq!(completed(&events, minimal, "root").skipped, None);
    assert_eq!(
        completed(&events, minimal, "root").output.unwrap()["echo"],
        json!({"n": 1})
    );
    for node in ["extra", "main", "after"] {
        let e = completed(&events, minimal, node);
        assert_eq!(e.output, Some(json!({})), "{node}");
        assert!(
            e.skipped
                .as_deref()
                .is_some_and(|w| w.contains("essential")),
            "{node}: {:?}",
            e.skipped
        );
    }
    let _ = std::fs::remove_file(path);
}
