//! Tool nodes end to end: the published recipe run verbatim on two workers with stand-in tools
//! (programs that print the real tools' output formats), the event contract, CVE enrichment
//! with its cache fallback, and what happens when a tool times out, prints garbage, names a
//! missing resource, crashes, or a node does not produce a declared output.

use secflow_common::{events::TaskEvent, recipe::Catalog, runs::RunStore, tools};
use secflow_producer::recipes::{RunRequest, Submitted, submit_until};
use secflow_tests::{TestNs, recipe_file};
use secflow_worker::config::WorkerConfig;
use serde_json::Value;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

/// Worker settings that run the stand-in tools, with the demo resources.
fn tool_worker(ns: &TestNs, cve_source: Option<String>) -> WorkerConfig {
    let standins = [
        "feroxbuster",
        "nuclei",
        "httpx",
        "katana",
        "ffuf",
        "subfinder",
    ];
    let mut allow: Vec<String> = standins
        .iter()
        .map(|s| repo(&format!("tests/standins/{s}")).display().to_string())
        .collect();
    allow.push("python3".into());
    WorkerConfig {
        exec_allow: allow,
        resources: Some(repo("recipes/resources")),
        cve_source,
        ..ns.worker_config()
    }
}

fn catalog() -> Catalog {
    Catalog {
        tools: tools::ToolSet::builtin().unwrap(),
        resources: tools::Resources::new(Some(repo("recipes/resources"))),
    }
}

async fn run_recipe(ns: &TestNs, path: &str, targets: &[String], catalog: &Catalog) -> Submitted {
    let params = BTreeMap::new();
    let request = RunRequest {
        path,
        params: &params,
        targets,
        catalog,
    };
    submit_until(
        &ns.broker(),
        &request,
        Some(Duration::from_secs(90)),
        false,
        std::future::pending(),
    )
    .await
    .unwrap()
}

/// A CVE service stub: answers `GET /CVE-ID` with a record, counting requests.
async fn cve_stub() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use axum::{Json, Router, extract::Path, routing::get};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().route(
        "/{id}",
        get(move |Path(id): Path<String>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Json(serde_json::json!({ "cvss": 6.1, "summary": format!("record of {id}") }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits, server)
}

fn of<'a>(events: &'a [TaskEvent], run: uuid::Uuid, kind: &str) -> Vec<&'a TaskEvent> {
    events
        .iter()
        .filter(|e| e.run_id == Some(run) && e.kind == kind)
        .collect()
}

/// Proves: `recipes/owasp-top10.yaml` (the published example, verbatim) validates and runs end
/// to end on two workers with stand-in tools; findings flow discovery → scan → enrichment; the
/// events carry the contract fields and read as the published trace; a second run while the
/// CVE source is down is enriched from the cache and marked degraded.
#[tokio::test(flavor = "multi_thread")]
async fn published_recipe_runs_end_to_end_with_findings_and_the_event_contract() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let (url, hits, server) = cve_stub().await;
    let w1 = ns.spawn_worker(tool_worker(&ns, Some(url.clone())));
    let w2 = ns.spawn_worker(tool_worker(&ns, Some(url)));
    let recipe = repo("recipes/owasp-top10.yaml").display().to_string();
    let targets = vec!["http://127.0.0.1:18080".to_string()];

    let first = run_recipe(&ns, &recipe, &targets, &catalog()).await;
    assert_eq!(first.status.as_deref(), Some("succeeded"), "{first:?}");
    let runs = RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let status = runs.status(&first.run_id.to_string()).await.unwrap();
    // The stand-in feroxbuster answers 200, 301 and 403 for the first three words; nuclei
    // reports one finding per URL, every other one a CVE.
    assert_eq!(
        status.node_findings.get("discovery"),
        Some(&3),
        "{status:?}"
    );
    assert_eq!(status.node_findings.get("scan"), Some(&3), "{status:?}");
    assert_eq!(status.node_findings.get("enrich"), Some(&3), "{status:?}");
    assert_eq!(status.findings, 9);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one CVE id among the findings"
    );

    let events = tap.snapshot();
    let run = first.run_id;
    let started = of(&events, run, "node.started");
    let completed = of(&events, run, "node.completed");
    assert_eq!((started.len(), completed.len()), (3, 3), "{events:#?}");
    for e in &completed {
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["event"], "node_completed");
        assert_eq!(v["workflow_id"], run.to_string());
        assert!(v["node_id"].is_string() && v["findings"].is_u64(), "{v}");
        assert!(v["duration"].as_f64().is_some_and(|d| d > 0.0), "{v}");
        assert_eq!(v["cache_hit"], false);
        if e.node_type.as_deref() != Some("enrich.cve") {
            assert_eq!(v["exit_status"], 0, "{v}");
            assert!(v["cpu_time"].as_f64().is_some_and(|c| c > 0.0), "{v}");
            assert!(
                v["peak_memory"].as_u64().is_some_and(|m| m > 1 << 20),
                "{v}"
            );
        }
    }
    let enrich = completed
        .iter()
        .find(|e| e.node_id.as_deref() == Some("enrich"))
        .unwrap();
    let enriched = &enrich.output.as_ref().unwrap()["enriched_findings"];
    let cves: Vec<&Value> = enriched
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["cves"].as_array().unwrap())
        .collect();
    assert_eq!(cves.len(), 1);
    assert_eq!(cves[0]["source"], "source");
    assert_eq!(cves[0]["cvss"], 6.1);
    let end = of(&events, run, "workflow.completed");
    assert_eq!(end.len(), 1);
    let v = serde_json::to_value(end[0]).unwrap();
    assert_eq!(
        (v["event"].clone(), v["findings"].clone()),
        ("workflow_completed".into(), 9.into())
    );
    let trace: Vec<String> = events
        .iter()
        .filter(|e| e.run_id == Some(run))
        .map(secflow_producer::events::trace_line)
        .collect();
    let text = trace.join("\n");
    for line in [
        "Workflow \"OWASP Top 10 Scan\" started",
        "Node discovery.ferox completed (findings=3, urls=3) [discovery]",
        "Node scan.nuclei completed (findings=3, urls=3) [scan]",
        "Node enrich.cve completed (enriched_findings=3) [enrich]",
        "Workflow completed successfully (findings=9",
    ] {
        assert!(
            text.contains(line),
            "missing `{line}` in the trace:\n{text}"
        );
    }
    assert!(
        trace.last().unwrap().contains("Workflow completed"),
        "{text}"
    );
    println!("{text}");

    // The CVE source goes down: the next run is enriched from the cache.
    server.abort();
    let second = run_recipe(&ns, &recipe, &targets, &catalog()).await;
    assert_eq!(second.status.as_deref(), Some("succeeded"));
    let events = tap.snapshot();
    let enrich = of(&events, second.run_id, "node.completed")
        .into_iter()
        .find(|e| e.node_id.as_deref() == Some("enrich"))
        .unwrap()
        .output
        .clone()
        .unwrap();
    assert_eq!(enrich["degraded"], true, "{enrich}");
    assert_eq!(enrich["cves"]["from_cache"], 1, "{enrich}");
    w1.stop().await;
    w2.stop().await;
}

/// The tools file of the failure tests: tools whose programs hang, print garbage or crash.
const TOOLS: &str = r#"
tools:
  scan.slow:
    description: "sleeps past any timeout"
    program: python3
    argv: ["-c", "import time; time.sleep(60)"]
    timeout: 30s
    output: { format: lines, datasets: { lines: "{line}" } }
  scan.garbage:
    description: "prints a banner where JSON lines are expected"
    program: python3
    argv: ["-c", "print('[INF] loading templates'); print('{\"broken\": ')"]
    output:
      format: jsonl
      finding: { id: "{name}", title: "{name}", target: "{name}" }
  scan.crashy:
    description: "exits 3 every time"
    program: python3
    argv: ["-c", "import sys; print('segfault-ish', file=sys.stderr); sys.exit(3)"]
    output: { format: lines, datasets: { lines: "{line}" } }
"#;

/// Proves: a tool that times out is killed and fails its node at once (one attempt), its
/// dependent is blocked and says why, and the independent branches still run: a tool whose
/// output cannot be parsed succeeds flagged with its raw output as one finding, a missing
/// resource fails its node clearly, a crashing tool is retried (3 retries) before failing.
#[tokio::test(flavor = "multi_thread")]
async fn failures_end_their_nodes_and_the_rest_of_the_run_goes_on() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let tools_file = std::env::temp_dir().join(format!("{}-tools.yaml", ns.name));
    std::fs::write(&tools_file, TOOLS).unwrap();
    let worker = ns.spawn_worker(WorkerConfig {
        tools: Some(tools_file.clone()),
        ..tool_worker(&ns, None)
    });
    let recipe = recipe_file(
        &ns,
        "failures",
        r#"version: "1.0"
name: failures
nodes:
  - { id: slow, type: scan.slow, timeout: 1s, outputs: [findings] }
  - { id: after_slow, type: builtin.echo, inputs: [findings] }
  - { id: discovery, type: discovery.ferox, config: { wordlist: "res://wordlists/dirb:latest" }, outputs: [urls] }
  - { id: scan, type: scan.nuclei, inputs: [urls], config: { templates: "res://templates/owasp-top10:latest" } }
  - { id: garbage, type: scan.garbage }
  - { id: missing, type: discovery.ferox, config: { wordlist: "res://wordlists/nope:latest" } }
  - { id: crashy, type: scan.crashy, retry: { max_attempts: 4, initial_delay: 0.05, max_delay: 0.2 } }
"#,
    );
    let mut tools = tools::ToolSet::builtin().unwrap();
    tools.merge(tools::ToolSet::load(&tools_file).unwrap());
    // The producer's catalog has no resource directory: the missing one is found at run time.
    let catalog = Catalog {
        tools,
        resources: tools::Resources::new(None),
    };
    let submitted = run_recipe(&ns, &recipe, &["http://127.0.0.1:18080".into()], &catalog).await;
    worker.stop().await;
    assert_eq!(submitted.status.as_deref(), Some("failed"));
    let runs = RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let status = runs.status(&submitted.run_id.to_string()).await.unwrap();
    let state = |n: &str| status.nodes.get(n).map(String::as_str);
    assert_eq!(state("slow"), Some("failed"), "{status:?}");
    assert!(
        status.errors["slow"].starts_with("permanent/timeout:"),
        "{status:?}"
    );
    assert_eq!(state("after_slow"), Some("skipped"));
    assert_eq!(
        status.blocked_by.get("after_slow").map(String::as_str),
        Some("slow")
    );
    assert_eq!(
        (state("discovery"), state("scan")),
        (Some("succeeded"), Some("succeeded"))
    );
    assert_eq!(state("garbage"), Some("succeeded"));
    assert_eq!(state("missing"), Some("failed"));
    assert!(
        status.errors["missing"].contains("res://wordlists/nope:latest"),
        "{status:?}"
    );
    assert_eq!(state("crashy"), Some("failed"));
    assert!(
        // A crash with an unknown exit code is retried as transient (by the rules' exit-code
        // fallback or by the learned model, whichever answers: the class is the contract).
        status.errors["crashy"].starts_with("transient/"),
        "{status:?}"
    );

    let events = tap.snapshot();
    let attempts = |node: &str| {
        events
            .iter()
            .filter(|e| e.node_id.as_deref() == Some(node) && e.kind == "node.started")
            .count()
    };
    assert_eq!(attempts("slow"), 1, "a timeout is not retried");
    assert_eq!(attempts("crashy"), 4, "a crash is retried 3 times");
    let garbage = events
        .iter()
        .find(|e| e.node_id.as_deref() == Some("garbage") && e.kind == "node.completed")
        .and_then(|e| e.output.clone())
        .unwrap();
    assert_eq!(garbage["parser"], "fallback", "{garbage}");
    assert_eq!(garbage["findings_count"], 1);
    assert!(
        garbage["findings"][0]["raw"]
            .to_string()
            .contains("loading templates"),
        "{garbage}"
    );
    let _ = std::fs::remove_file(tools_file);
    let _ = std::fs::remove_file(recipe);
}

/// Proves: a node that completes without a declared output fails (`missing_output`) and blocks
/// its dependents instead of feeding them null; the published error names what it has.
#[tokio::test(flavor = "multi_thread")]
async fn a_declared_output_that_is_not_produced_fails_the_node() {
    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let recipe = recipe_file(
        &ns,
        "missing-output",
        "version: 1\nname: m\nnodes:\n  - { id: a, type: builtin.echo, config: { x: 1 }, outputs: [urls, hosts] }\n  - { id: b, type: builtin.echo, inputs: [urls] }\n",
    );
    let submitted = run_recipe(&ns, &recipe, &[], Catalog::builtin()).await;
    worker.stop().await;
    assert_eq!(submitted.status.as_deref(), Some("failed"));
    let runs = RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let status = runs.status(&submitted.run_id.to_string()).await.unwrap();
    assert_eq!(status.nodes["a"], "failed");
    assert!(
        status.errors["a"].starts_with("permanent/missing_output: node `a` declares output(s) `urls`, `hosts` but did not produce them (its output has: echo)"),
        "{status:?}"
    );
    assert_eq!(status.nodes["b"], "skipped");
    let _ = std::fs::remove_file(recipe);
}

/// Proves: a worker's `/metrics` has the per-node metrics of a tool node: its duration
/// histogram by type and outcome, findings by type and severity, exit status, cache misses.
#[tokio::test(flavor = "multi_thread")]
async fn tool_nodes_are_measured_per_node_type() {
    let ns = TestNs::new().await;
    let port = secflow_tests::free_port();
    let nuclei = repo("tests/standins/nuclei").display().to_string();
    let resources = repo("recipes/resources").display().to_string();
    let mut worker = ns.spawn_worker_process(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--exec-allow",
        &nuclei,
        "--resources",
        &resources,
    ]);
    let recipe = recipe_file(
        &ns,
        "measured",
        "version: \"1.0\"\nname: measured\nnodes:\n  - { id: scan, type: scan.nuclei, config: { templates: \"res://templates/owasp-top10:latest\" }, outputs: [findings] }\n",
    );
    let targets: Vec<String> = (1..=5)
        .map(|i| format!("http://127.0.0.1:18080/{i}"))
        .collect();
    let submitted = run_recipe(&ns, &recipe, &targets, &catalog()).await;
    assert_eq!(submitted.status.as_deref(), Some("succeeded"));
    // The run's end is published just before its node's settlement records the metrics: wait
    // for them to appear rather than read them once.
    let last = r#"secflow_node_cache_total{type="scan.nuclei",result="miss"} 1"#;
    secflow_tests::wait_for("the node's metrics", Duration::from_secs(10), || async {
        secflow_tests::http_get(port, "/metrics")
            .await
            .is_some_and(|(_, m)| m.contains(last))
    })
    .await;
    let (_, metrics) = secflow_tests::http_get(port, "/metrics").await.unwrap();
    secflow_tests::stop_gracefully(&mut worker).await;
    let has = |needle: &str| {
        assert!(
            metrics.lines().any(|l| l.contains(needle)),
            "no `{needle}` in /metrics:\n{metrics}"
        );
    };
    has(r#"secflow_node_duration_seconds_bucket{type="scan.nuclei",outcome="completed",le="0.5"}"#);
    has(r#"secflow_node_duration_seconds_count{type="scan.nuclei",outcome="completed"} 1"#);
    // Severities of the stand-in's five findings cycle through all five.
    for severity in ["info", "low", "medium", "high", "critical"] {
        has(&format!(
            r#"secflow_node_findings_total{{type="scan.nuclei",severity="{severity}"}} 1"#
        ));
    }
    has(r#"secflow_node_exit_status_total{type="scan.nuclei",status="0"} 1"#);
    has(r#"secflow_node_cache_total{type="scan.nuclei",result="miss"} 1"#);
    let _ = std::fs::remove_file(recipe);
}
