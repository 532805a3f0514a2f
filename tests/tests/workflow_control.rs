//! Controlling runs against the real RabbitMQ and Redis: requeue and resume after a failure,
//! cancel, warm re-runs from the cache, output limits, compensation, exactly-once node ends,
//! watching.

use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, completions, recipe_file};
use std::{collections::BTreeMap, time::Duration};

/// A run whose `scan` fails until `marker` exists (then dead-lettered at once).
fn fixable_recipe(ns: &TestNs, name: &str, marker: &std::path::Path) -> String {
    recipe_file(
        ns,
        name,
        &format!(
            r#"
version: 1
name: fixable
nodes:
  - {{ id: discover, type: builtin.echo, config: {{ target: "10.0.0.5" }}, outputs: [echo] }}
  - {{ id: scan, type: exec, inputs: {{ h: discover.echo }}, config: {{ argv: ["sh", "-c", "test -f {}"] }}, retry: {{ max_attempts: 1 }}, outputs: [stdout] }}
  - {{ id: report, type: builtin.echo, inputs: {{ s: scan.stdout, h: discover.echo }} }}
"#,
            marker.display()
        ),
    )
}

/// Proves: a failing node goes to the DLQ and fails the run; once the cause is fixed, either
/// `dlq-inspector requeue` or `producer resume` lets the run continue from that node and
/// succeed, the upstream node never running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_node_requeued_or_resumed_continues_the_run() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let marker = std::env::temp_dir().join(format!("{}-fixed", ns.name));
    let ended = |run: uuid::Uuid, status: &'static str| {
        move |ev: &[secflow_common::events::TaskEvent]| {
            ev.iter().any(|e| {
                matches!(e.kind.as_str(), "workflow.completed" | "workflow.failed")
                    && e.run_id == Some(run)
                    && e.output.as_ref().is_some_and(|o| o["status"] == status)
            })
        }
    };
    let first = submit(
        &ns.broker(),
        &fixable_recipe(&ns, "a", &marker),
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    let second = submit(
        &ns.broker(),
        &fixable_recipe(&ns, "b", &marker),
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        (first.status.as_deref(), second.status.as_deref()),
        (Some("failed"), Some("failed"))
    );
    assert_eq!(
        runs.status(&first.run_id.to_string())
            .await
            .unwrap()
            .blocking_node
            .as_deref(),
        Some("scan")
    );

    std::fs::write(&marker, b"fixed").unwrap();
    // First run: through the DLQ, as an operator would.
    let out = secflow_tests::command("dlq-inspector")
        .args([
            "--namespace",
            &ns.name,
            "requeue",
            "--filter",
            &format!("run={}", first.run_id),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tap.wait_until(
        "the requeued run to succeed",
        Duration::from_secs(20),
        ended(first.run_id, "succeeded"),
    )
    .await;
    // Second run: with producer resume.
    let resumed = secflow_producer::recipes::resume(&ns.broker(), &second.run_id.to_string(), None)
        .await
        .unwrap();
    assert_eq!(resumed, ["scan"]);
    tap.wait_until(
        "the resumed run to succeed",
        Duration::from_secs(20),
        ended(second.run_id, "succeeded"),
    )
    .await;
    worker.stop().await;
    let _ = std::fs::remove_file(&marker);

    for run in [first.run_id, second.run_id] {
        let done = completions(&tap.snapshot(), run);
        assert_eq!(
            done["discover"].len(),
            1,
            "the upstream node did not run again"
        );
        assert_eq!((done["scan"].len(), done["report"].len()), (1, 1));
        let status = runs.status(&run.to_string()).await.unwrap();
        assert_eq!(status.status, "succeeded");
        assert!(
            status.nodes.values().all(|s| s == "succeeded"),
            "{:?}",
            status.nodes
        );
    }
}

/// Proves: `producer cancel` stops a running `exec` node (its process is killed), skips what
/// depends on it, still runs the `when: always` cleanup, and ends the run `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_running_exec_and_runs_cleanup() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let pidfile = std::env::temp_dir().join(format!("{}-scan.pid", ns.name));
    let path = recipe_file(
        &ns,
        "cancel",
        &format!(
            r#"
version: 1
name: long-scan
nodes:
  - {{ id: scan, type: exec, config: {{ argv: ["sh", "-c", "echo $$ > {}; exec sleep 60"] }}, outputs: [stdout] }}
  - {{ id: triage, type: builtin.echo, inputs: {{ s: scan.stdout }} }}
  - {{ id: cleanup, type: builtin.echo, when: always, inputs: {{ s: scan.stdout }} }}
"#,
            pidfile.display()
        ),
    );
    let run = submit(&ns.broker(), &path, &BTreeMap::new(), None, false)
        .await
        .unwrap();
    secflow_tests::wait_for("the scan to start", Duration::from_secs(20), || async {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        secflow_producer::recipes::cancel(&ns.broker(), &run.run_id.to_string())
            .await
            .unwrap()
    );
    tap.wait_until("the run to end cancelled", Duration::from_secs(20), |ev| {
        ev.iter().any(|e| {
            matches!(e.kind.as_str(), "workflow.completed" | "workflow.failed")
                && e.run_id == Some(run.run_id)
                && e.output
                    .as_ref()
                    .is_some_and(|o| o["status"] == "cancelled")
        })
    })
    .await;
    worker.stop().await;
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    });
    assert!(!alive, "the scan's process {pid} was killed");
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let status = runs.status(&run.run_id.to_string()).await.unwrap();
    assert_eq!(status.status, "cancelled");
    assert_eq!(
        [
            status.nodes["scan"].as_str(),
            status.nodes["triage"].as_str(),
            status.nodes["cleanup"].as_str()
        ],
        ["failed", "skipped", "succeeded"]
    );
    assert!(
        tap.of_kind("node.cancelled")
            .iter()
            .any(|e| e.node_id.as_deref() == Some("scan"))
    );
    let _ = std::fs::remove_file(pidfile);
    let _ = std::fs::remove_file(path);
}

/// Proves: a warm re-run of a finished recipe completes without running nodes whose output is
/// cached (their side effect does not happen again); `--no-cache` runs them; an output over the
/// size limit fails its node with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_rerun_uses_cached_outputs_and_outputs_are_bounded() {
    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let effects = std::env::temp_dir().join(format!("{}-effects", ns.name));
    let path = recipe_file(
        &ns,
        "cached",
        &format!(
            r#"
version: 1
name: cached
nodes:
  - {{ id: scan, type: exec, config: {{ argv: ["sh", "-c", "echo scanned >> {0}; echo open:443"] }}, outputs: [stdout] }}
  - {{ id: enrich, type: exec, inputs: {{ s: scan.stdout }}, config: {{ argv: ["sh", "-c", "echo enriched >> {0}"] }} }}
"#,
            effects.display()
        ),
    );
    let lines = || {
        std::fs::read_to_string(&effects)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let wait = Some(Duration::from_secs(30));
    assert_eq!(
        submit(&ns.broker(), &path, &BTreeMap::new(), wait, true)
            .await
            .unwrap()
            .status
            .as_deref(),
        Some("succeeded")
    );
    assert_eq!(lines(), 2);
    assert_eq!(
        submit(&ns.broker(), &path, &BTreeMap::new(), wait, true)
            .await
            .unwrap()
            .status
            .as_deref(),
        Some("succeeded")
    );
    assert_eq!(lines(), 2, "the warm re-run ran nothing");
    assert_eq!(
        submit(&ns.broker(), &path, &BTreeMap::new(), wait, false)
            .await
            .unwrap()
            .status
            .as_deref(),
        Some("succeeded")
    );
    assert_eq!(lines(), 4, "--no-cache runs every node");

    let big = recipe_file(
        &ns,
        "big",
        &format!(
            "version: 1\nname: big\nnodes:\n  - {{ id: huge, type: builtin.echo, config: {{ blob: \"{}\" }} }}\n",
            "x".repeat(1_100_000)
        ),
    );
    let run = submit(&ns.broker(), &big, &BTreeMap::new(), wait, false)
        .await
        .unwrap();
    assert_eq!(run.status.as_deref(), Some("failed"));
    let dead = ns.take_dlq(1, Duration::from_secs(10)).await;
    let message =
        secflow_common::headers::get_str(dead[0].properties.headers().as_ref(), "x-error-message")
            .unwrap()
            .to_string();
    assert!(
        message.contains("node `huge` produced") && message.contains("limit"),
        "{message}"
    );
    worker.stop().await;
    for f in [effects.to_string_lossy().into_owned(), path, big] {
        let _ = std::fs::remove_file(f);
    }
}

/// Proves: when a run fails after a node succeeded, that node's compensation runs (with the
/// node's outputs as input) before the run's end is reported; a succeeding run never runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_runs_only_when_the_run_fails() {
    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let undone = std::env::temp_dir().join(format!("{}-undone", ns.name));
    let recipe = |fail: bool| {
        format!(
            r#"
version: 1
name: provisioned-scan
nodes:
  - {{ id: provision, type: builtin.echo, config: {{ sandbox: "sb-42" }}, outputs: [echo], compensate: teardown }}
  - {{ id: scan, type: builtin.fail, inputs: {{ sb: provision.echo }}, config: {{ class: permanent {} }} }}
  - {{ id: teardown, type: exec, inputs: {{ sb: provision.echo }}, config: {{ argv: ["sh", "-c", "echo '${{inputs.sb:json}}' >> {}"] }} }}
"#,
            if fail { "" } else { ", times: 0" },
            undone.display()
        )
    };
    let wait = Some(Duration::from_secs(30));
    let ok = submit(
        &ns.broker(),
        &recipe_file(&ns, "ok", &recipe(false)),
        &BTreeMap::new(),
        wait,
        false,
    )
    .await
    .unwrap();
    assert_eq!(ok.status.as_deref(), Some("succeeded"));
    let failed = submit(
        &ns.broker(),
        &recipe_file(&ns, "failed", &recipe(true)),
        &BTreeMap::new(),
        wait,
        false,
    )
    .await
    .unwrap();
    assert_eq!(failed.status.as_deref(), Some("failed"));
    // The run's end is reported only after its compensations ended: nothing to wait for.
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    assert!(
        std::fs::read_to_string(&undone).is_ok(),
        "the compensation ran before the run's end"
    );
    assert_eq!(
        runs.status(&failed.run_id.to_string()).await.unwrap().nodes["teardown"],
        "succeeded"
    );
    worker.stop().await;
    assert_eq!(
        std::fs::read_to_string(&undone).unwrap().trim(),
        r#"{"sandbox":"sb-42"}"#,
        "it ran once, with the node's output"
    );
    assert_eq!(
        runs.status(&ok.run_id.to_string()).await.unwrap().nodes["teardown"],
        "standby",
        "a run that succeeded undoes nothing"
    );
    let _ = std::fs::remove_file(undone);
}
