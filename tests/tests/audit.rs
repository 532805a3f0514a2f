//! The audit trail against the real RabbitMQ and Redis: every event lands in the namespace's
//! stream whoever listens, survives a broker restart, and `dlq-inspector audit` reads a run's
//! history back in order, by run, task, trace, kind and severity; requeues and purges are in it
//! with who did them; `dlq-inspector analytics` computes recovery figures from it.

use secflow_common::TaskEnvelope;
use secflow_producer::recipes::submit;
use secflow_tests::{PrivateRabbit, TestNs, command, json_lines, publish, recipe_file};
use serde_json::{Value, json};
use std::{collections::BTreeMap, collections::HashMap, time::Duration};

/// Runs `dlq-inspector` with `args` on `ns` (whose broker may be private).
fn inspector(ns: &TestNs, args: &[&str]) -> std::process::Output {
    command("dlq-inspector")
        .env("AMQP_URL", &ns.amqp_url)
        .env("USER", "alice")
        .args(["--namespace", &ns.name])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1000_task_runs_history_survives_a_broker_restart_and_reads_back_in_order() {
    const NODES: usize = 1000;
    let rabbit = PrivateRabbit::start();
    let ns = TestNs::on_broker(&rabbit.url(), 5).await;
    let worker = ns.spawn_worker(ns.worker_config());
    let mut yaml = String::from("version: \"1.0\"\nname: audited\nnodes:\n");
    for i in 0..NODES {
        yaml.push_str(&format!("  - {{ id: n{i}, type: builtin.noop }}\n"));
    }
    let path = recipe_file(&ns, "audited", &yaml);
    let run = submit(
        &ns.broker(),
        &path,
        &BTreeMap::new(),
        Some(Duration::from_secs(120)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("succeeded"));
    worker.stop().await;
    // Nobody was subscribed to the events; the broker now restarts.
    tokio::task::block_in_place(|| {
        rabbit.stop();
        rabbit.start_again();
    });
    let run_id = run.run_id.to_string();
    let events = json_lines(&inspector(&ns, &["audit", "--run", &run_id, "--json"]));
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count("node.started"), NODES);
    assert_eq!(count("node.completed"), NODES);
    assert_eq!(count("workflow.started"), 1);
    assert_eq!(
        kinds.last(),
        Some(&"workflow.completed"),
        "the run's end is last"
    );
    // Each node's start comes before its end, and they are the run's own.
    let mut started: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["run_id"], run_id.as_str());
        let node = e["node_id"].as_str().unwrap_or_default();
        match e["kind"].as_str() {
            Some("node.started") => {
                started.insert(node, i);
            }
            Some("node.completed") => {
                assert!(
                    started.get(node).is_some_and(|s| *s < i),
                    "{node} ended before it started"
                );
            }
            _ => {}
        }
    }
    // The same history by trace: the run's trace id is on every node event.
    let trace = run.trace_id.clone();
    let by_trace = json_lines(&inspector(
        &ns,
        &[
            "audit",
            "--trace",
            &trace,
            "--kind",
            "node.completed",
            "--json",
        ],
    ));
    assert_eq!(by_trace.len(), NODES);
    // Text for people, one line an event, limited.
    let out = inspector(
        &ns,
        &[
            "audit",
            "--run",
            &run_id,
            "--kind",
            "workflow.",
            "--limit",
            "5",
        ],
    );
    let text = secflow_tests::stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().last().unwrap().contains("workflow.completed"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeues_and_purges_are_recorded_with_who_did_them_and_analytics_counts_recoveries() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let mut recovering = Vec::new();
    for _ in 0..4 {
        let mut t = TaskEnvelope::new("builtin.fail", json!({"class": "transient", "times": 1}));
        t.retry = Some(
            serde_json::from_value(json!({"strategy": "immediate", "max_attempts": 3})).unwrap(),
        );
        recovering.push(t);
    }
    let doomed = TaskEnvelope::new(
        "builtin.fail",
        json!({"class": "security", "code": "scope_violation", "message": "target outside scope"}),
    );
    let doomed_id = doomed.task_id;
    let mut all = recovering.clone();
    all.push(doomed);
    publish(&ns, &all).await;
    tap.wait_until(
        "4 completions and a dead letter",
        Duration::from_secs(30),
        |ev| {
            ev.iter().filter(|e| e.kind == "node.completed").count() == 4
                && ev.iter().any(|e| e.kind == "node.dead_lettered")
        },
    )
    .await;
    secflow_tests::stdout(&inspector(&ns, &["requeue", "--all"]));
    tap.wait_until(
        "the requeued task's second dead letter",
        Duration::from_secs(30),
        |ev| ev.iter().filter(|e| e.kind == "node.dead_lettered").count() == 2,
    )
    .await;
    secflow_tests::stdout(&inspector(&ns, &["purge", "--all", "--yes"]));
    worker.stop().await;
    let id = doomed_id.to_string();
    let history = json_lines(&inspector(&ns, &["audit", "--task", &id, "--json"]));
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "node.dead_lettered",
            "task.requeued",
            "node.dead_lettered",
            "task.purged"
        ],
        "{history:#?}"
    );
    assert_eq!(history[1]["by"], "alice");
    assert_eq!(history[3]["by"], "alice");
    assert_eq!(history[0]["severity"], "critical");
    assert_eq!(history[0]["reason"], "security");
    assert_eq!(history[1]["trace_id"], history[0]["trace_id"]);
    // By severity and class.
    let critical = json_lines(&inspector(
        &ns,
        &["audit", "--severity", "critical", "--json"],
    ));
    assert_eq!(critical.len(), 2);
    let transient = json_lines(&inspector(
        &ns,
        &["audit", "--class", "transient", "--json"],
    ));
    assert_eq!(transient.len(), 4);
    assert!(transient.iter().all(|e| e["kind"] == "node.retrying"));
    // Analytics: 5 tasks failed, 4 of them then completed.
    let out = inspector(&ns, &["analytics", "--window", "10m", "--json"]);
    let figures: Value = serde_json::from_str(&secflow_tests::stdout(&out)).unwrap();
    assert_eq!(figures["failed_tasks"], 5);
    assert_eq!(figures["recovered_tasks"], 4);
    assert_eq!(figures["recovery_rate"], 0.8);
    assert_eq!(figures["errors"], 6);
    assert_eq!(figures["dead_lettered"], 2);
    assert_eq!(figures["by_class"]["security"], 2);
    assert_eq!(figures["by_severity"]["critical"], 2);
    assert_eq!(figures["top_fingerprints"][0]["count"], 4);
    assert_eq!(figures["task_recovery_ms"]["builtin.fail"]["count"], 4);
    let text = secflow_tests::stdout(&inspector(&ns, &["analytics", "--window", "10m"]));
    assert!(
        text.contains("recovery: 4 of 5 failed tasks then completed (80.0 %)"),
        "{text}"
    );
}
