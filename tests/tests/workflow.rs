//! Recipes run as DAGs across several workers against the real RabbitMQ and Redis:
//! choreographed continuation, outputs passed along, failure semantics.

use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, completions, recipe_file};
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};

/// Proves: a diamond runs each node exactly once across three workers, and the join node gets
/// both branches' outputs through its inputs and its config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_each_node_once_and_passes_outputs() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let workers: Vec<_> = (0..3)
        .map(|_| ns.spawn_worker(ns.worker_config()))
        .collect();
    let path = recipe_file(
        &ns,
        "diamond",
        r#"
version: 1
name: diamond
parameters: { word: { default: hello } }
nodes:
  - { id: a, type: builtin.echo, config: { w: "${params.word}" }, outputs: [echo] }
  - { id: b, type: builtin.echo, inputs: { x: a.echo }, config: { left: "${inputs.x}" }, outputs: [echo] }
  - { id: c, type: builtin.echo, inputs: { x: a.echo }, config: { right: "${inputs.x}" }, outputs: [echo] }
  - { id: d, type: builtin.echo, inputs: { l: b.echo, r: c.echo }, config: { joined: "${inputs.l} + ${inputs.r}" } }
"#,
    );
    let mut params = BTreeMap::new();
    params.insert("word".to_string(), Value::from("scan"));
    let run = submit(
        &ns.broker(),
        &path,
        &params,
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("succeeded"));
    assert_eq!(run.roots, ["a"]);
    tap.wait_until("4 completions", Duration::from_secs(10), |ev| {
        completions(ev, run.run_id).len() == 4
    })
    .await;
    for w in workers {
        w.stop().await;
    }
    let done = completions(&tap.snapshot(), run.run_id);
    assert!(
        done.values().all(|v| v.len() == 1),
        "every node ran once: {done:?}"
    );
    let d = done["d"][0].clone().unwrap();
    assert_eq!(d["inputs"]["l"], serde_json::json!({"left": {"w": "scan"}}));
    assert_eq!(
        d["echo"]["joined"],
        r#"{"left":{"w":"scan"}} + {"right":{"w":"scan"}}"#
    );
    let _ = std::fs::remove_file(path);
}

/// Proves: a 200-node fan-out / fan-in completes with every node run exactly once, the sink
/// receiving all 200 outputs, even with branches finishing at the same instant on 3 workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_of_200_nodes() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let workers: Vec<_> = (0..3)
        .map(|_| ns.spawn_worker(ns.worker_config()))
        .collect();
    let mut yaml = String::from(
        "version: 1\nname: fan\nnodes:\n  - { id: root, type: builtin.echo, config: { n: 0 }, outputs: [echo] }\n",
    );
    let mut sink_inputs = Vec::new();
    for i in 0..200 {
        yaml.push_str(&format!("  - {{ id: m{i}, type: builtin.echo, inputs: {{ x: root.echo }}, config: {{ i: {i} }}, outputs: [echo] }}\n"));
        sink_inputs.push(format!("i{i}: m{i}.echo"));
    }
    yaml.push_str(&format!(
        "  - {{ id: sink, type: builtin.echo, inputs: {{ {} }} }}\n",
        sink_inputs.join(", ")
    ));
    let path = recipe_file(&ns, "fan", &yaml);
    let run = submit(
        &ns.broker(),
        &path,
        &BTreeMap::new(),
        Some(Duration::from_secs(60)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("succeeded"));
    tap.wait_until("202 completions", Duration::from_secs(20), |ev| {
        completions(ev, run.run_id).len() == 202
    })
    .await;
    for w in workers {
        w.stop().await;
    }
    let done = completions(&tap.snapshot(), run.run_id);
    assert_eq!(done.len(), 202);
    assert!(done.values().all(|v| v.len() == 1), "a node ran twice");
    let sink = done["sink"][0].clone().unwrap();
    let inputs = sink["inputs"].as_object().unwrap();
    assert_eq!(inputs.len(), 200);
    assert!(
        (0..200).all(|i| inputs[&format!("i{i}")] == serde_json::json!({"i": i})),
        "each branch's output reached the sink"
    );
    let _ = std::fs::remove_file(path);
}

/// Proves: a failed required node blocks its dependents and fails the run (naming it), a
/// `when: always` node still runs, and a failed optional node lets its dependent run with the
/// input marked partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_block_optional_degrades_always_runs() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let path = recipe_file(
        &ns,
        "failing",
        r#"
version: 1
name: failing
nodes:
  - { id: discover, type: builtin.echo, outputs: [echo] }
  - { id: scan, type: builtin.fail, inputs: { h: discover.echo }, config: { class: permanent, message: "scanner crashed" }, outputs: [findings] }
  - { id: triage, type: builtin.echo, inputs: { f: scan.findings } }
  - { id: enrich, type: builtin.fail, optional: true, inputs: { h: discover.echo }, config: { class: permanent }, outputs: [intel] }
  - { id: report, type: builtin.echo, inputs: { intel: enrich.intel, h: discover.echo } }
  - { id: cleanup, type: builtin.echo, when: always, inputs: { f: scan.findings } }
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
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let status = runs.status(&run.run_id.to_string()).await.unwrap();
    assert_eq!(status.blocking_node.as_deref(), Some("scan"));
    let state = |n: &str| status.nodes[n].as_str();
    assert_eq!(
        [
            state("discover"),
            state("scan"),
            state("triage"),
            state("enrich"),
            state("report"),
            state("cleanup")
        ],
        [
            "succeeded",
            "failed",
            "skipped",
            "failed",
            "succeeded",
            "succeeded"
        ]
    );
    tap.wait_until(
        "report and cleanup completed",
        Duration::from_secs(10),
        |ev| {
            let done = completions(ev, run.run_id);
            done.contains_key("report") && done.contains_key("cleanup")
        },
    )
    .await;
    worker.stop().await;
    let done = completions(&tap.snapshot(), run.run_id);
    assert!(!done.contains_key("triage"), "a blocked node never runs");
    let report = done["report"][0].clone().unwrap();
    assert_eq!(
        report["inputs"]["_partial"],
        serde_json::json!(["intel"]),
        "the failed optional input is marked partial"
    );
    let _ = std::fs::remove_file(path);
}

/// A run of `yaml` stored in `ns`'s Redis (nothing published): the store, the run's id and its
/// root nodes.
async fn stored_run(
    ns: &TestNs,
    yaml: &str,
) -> (
    secflow_common::runs::RunStore,
    String,
    Vec<secflow_common::runs::StoredNode>,
) {
    let recipe = secflow_common::recipe::parse("r.yaml", yaml).unwrap();
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let (run, roots) = runs
        .create(&recipe, &BTreeMap::new(), &[], false, None, None)
        .await
        .unwrap();
    (runs, run.to_string(), roots)
}

/// Proves: recording a node's end is exactly once: a second call (a redelivery after a crash
/// before the dependents' publish was confirmed) returns the same ready dependents and changes
/// nothing; once the publish is confirmed, a further call returns none.
#[tokio::test]
async fn node_end_is_exactly_once_across_redeliveries() {
    let ns = TestNs::new().await;
    let (runs, run, roots) = stored_run(
        &ns,
        "version: 1\nname: r\nnodes:\n  - { id: a, type: builtin.echo, outputs: [echo] }\n  - { id: b, type: builtin.echo, inputs: { x: a.echo } }\n  - { id: c, type: builtin.echo, inputs: { x: a.echo } }\n",
    )
    .await;
    let output = serde_json::json!({"echo": {"host": "10.0.0.5"}});
    let end = runs
        .node_end(&run, &roots[0], Some(&output), None, None)
        .await
        .unwrap();
    let (first, status, already) = (end.ready, end.status, end.already);
    assert!(!already);
    let mut ids: Vec<_> = first.iter().map(|n| n.id.clone()).collect();
    ids.sort();
    assert_eq!(
        (ids, status.as_str()),
        (vec!["b".to_string(), "c".to_string()], "running")
    );
    let end = runs
        .node_end(&run, &roots[0], Some(&output), None, None)
        .await
        .unwrap();
    let (again, already) = (end.ready, end.already);
    assert!(already, "a second end of the node is flagged");
    assert_eq!(
        again.len(),
        2,
        "a redelivery before the publish was confirmed publishes them again"
    );
    runs.published(&run, "a").await.unwrap();
    let after = runs
        .node_end(&run, &roots[0], Some(&output), None, None)
        .await
        .unwrap()
        .ready;
    assert!(
        after.is_empty(),
        "once confirmed, a redelivery publishes nothing"
    );
    let status = runs.status(&run).await.unwrap();
    assert_eq!(
        (status.nodes["a"].as_str(), status.nodes["b"].as_str()),
        ("succeeded", "queued")
    );
}

/// Proves: a run's end is reported only after every node's own end event is confirmed, by
/// whichever worker confirms the last one: the node that completed the run (`c`) reports
/// first and is told nothing; the slower `b`, whose end was recorded earlier but whose event
/// went out later, is told to report the run's end; once that is confirmed, nobody is told
/// again, until the run is rewound (a failed node requeued) and ends anew.
#[tokio::test]
async fn the_run_end_waits_for_every_node_end_event() {
    let ns = TestNs::new().await;
    let (runs, run, roots) = stored_run(
        &ns,
        "version: 1\nname: r\nnodes:\n  - { id: a, type: builtin.echo }\n  - { id: b, type: builtin.echo }\n  - { id: c, type: builtin.echo }\n",
    )
    .await;
    let node = |id: &str| roots.iter().find(|n| n.id == id).unwrap().clone();
    let ok = serde_json::json!({});
    runs.node_end(&run, &node("a"), Some(&ok), None, None)
        .await
        .unwrap();
    assert!(
        runs.reported(&run, "a").await.unwrap().is_none(),
        "still running"
    );
    runs.node_end(&run, &node("b"), Some(&ok), None, None)
        .await
        .unwrap();
    let last = runs
        .node_end(&run, &node("c"), None, Some("transient/x: boom"), None)
        .await
        .unwrap();
    assert_eq!(last.status, "failed", "c's end completed the run");
    assert!(
        runs.reported(&run, "c").await.unwrap().is_none(),
        "b's end event is not confirmed yet: the run's end waits"
    );
    let end = runs.reported(&run, "b").await.unwrap();
    assert_eq!(
        end.map(|e| e.status).as_deref(),
        Some("failed"),
        "the last confirmed node end reports the run's end"
    );
    runs.end_reported(&run).await.unwrap();
    assert!(
        runs.reported(&run, "b").await.unwrap().is_none(),
        "a repeated report after the run's end went out says nothing"
    );
    // c requeued from the DLQ: the run runs again and ends again, reported again.
    assert_eq!(
        runs.rewind(&run, "c").await.unwrap(),
        secflow_common::runs::Rewind::Rewound
    );
    let again = runs
        .node_end(&run, &node("c"), Some(&ok), None, None)
        .await
        .unwrap();
    assert_eq!(again.status, "succeeded");
    let end = runs.reported(&run, "c").await.unwrap();
    assert_eq!(end.map(|e| e.status).as_deref(), Some("succeeded"));
}

/// Proves: `producer watch` follows a running run live and exits 0 when it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_run_to_its_end() {
    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let path = recipe_file(
        &ns,
        "watched",
        "version: 1\nname: watched\nnodes:\n  - { id: a, type: builtin.sleep, config: { ms: 400 }, outputs: [slept_ms] }\n  - { id: b, type: builtin.sleep, inputs: { x: a.slept_ms }, config: { ms: 400 } }\n",
    );
    let run = submit(&ns.broker(), &path, &BTreeMap::new(), None, false)
        .await
        .unwrap();
    let out = tokio::process::Command::from(secflow_tests::command("producer"))
        .args(["--namespace", &ns.name, "watch", &run.run_id.to_string()])
        .output()
        .await
        .unwrap();
    worker.stop().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().next().unwrap_or("").contains("running"),
        "{text}"
    );
    assert!(
        text.contains("] Node builtin.sleep completed")
            && text.contains("] Workflow completed successfully")
            && text.trim_end().ends_with("succeeded, 2/2 nodes ended"),
        "{text}"
    );
    let _ = std::fs::remove_file(path);
}
