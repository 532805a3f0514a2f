//! Structured upstream outputs in fields that need text, against the real RabbitMQ and Redis:
//! a tool's list reaches `exec` nodes through the rendering rules (`:file`, `:csv`, `:json`),
//! and the same recipe without a rule is refused by `producer validate` and `submit` before
//! anything is stored or published.

use secflow_common::{recipe::Catalog, tools};
use secflow_producer::recipes::{RunRequest, submit_until};
use secflow_tests::{TestNs, command, completions, recipe_file, redis_keys};
use secflow_worker::config::WorkerConfig;
use std::{collections::BTreeMap, time::Duration};

/// A tool whose `urls` dataset is a real list of three URLs.
const TOOLS: &str = r#"
tools:
  list.urls:
    description: "prints three URLs, one a line"
    program: python3
    argv: ["-c", "print('http://a/1'); print('http://a/2'); print('http://a/3')"]
    output: { format: lines, datasets: { urls: "{line}" } }
"#;

/// The recipe; `RULE` stands for each reference's rule (`:file`, `:csv`, `:json` or nothing).
const RECIPE: &str = r#"
version: "1.0"
name: flow
nodes:
  - { id: discovery, type: list.urls, outputs: [urls] }
  - { id: count, type: exec, inputs: { urls: discovery.urls }, outputs: [stdout],
      config: { argv: [sh, -c, 'wc -l < "$1"', _, "${inputs.urls:file}"] } }
  - { id: joined, type: exec, inputs: { urls: discovery.urls }, outputs: [stdout],
      config: { argv: [sh, -c, 'printf %s "$1"', _, "${inputs.urls:csv}"] } }
  - { id: json, type: exec, inputs: { urls: discovery.urls }, outputs: [stdout],
      config: { argv: [sh, -c, 'printf %s "$URLS"'], env: { URLS: "${inputs.urls:json}" } } }
"#;

fn producer(ns: &TestNs, args: &[&str], tools_file: &str) -> (bool, String) {
    let out = command("producer")
        .args(["--namespace", &ns.name])
        .args(args)
        .args(["--tools", tools_file])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Proves: with `:file` an exec node reads the tool's list from a file (one URL a line), with
/// `:csv` it gets the joined text, with `:json` the JSON text; without a rule, `producer
/// validate` refuses the recipe naming the node, the field, the input, its source and the
/// rules, and `producer submit` stores and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_list_reaches_exec_by_its_rule_and_without_one_is_refused() {
    let ns = TestNs::new().await;
    let tools_file = std::env::temp_dir().join(format!("{}-tools.yaml", ns.name));
    std::fs::write(&tools_file, TOOLS).unwrap();
    let tools_arg = tools_file.to_string_lossy().into_owned();

    // Without rules: refused before anything is stored or published.
    let bare = RECIPE
        .replace("${inputs.urls:file}", "${inputs.urls}")
        .replace("${inputs.urls:csv}", "${inputs.urls}")
        .replace("${inputs.urls:json}", "${inputs.urls}");
    let bare = recipe_file(&ns, "bare", &bare);
    let (ok, stderr) = producer(&ns, &["validate", &bare], &tools_arg);
    assert!(!ok, "{stderr}");
    for expected in [
        "node `count`: config.argv[4]: `${inputs.urls}` is a list (output `urls` of node `discovery`, a list.urls tool); this field needs text: write ${inputs.urls:lines}, ${inputs.urls:csv}, ${inputs.urls:json} or ${inputs.urls:file}",
        "node `joined`: config.argv[4]: `${inputs.urls}` is a list",
        "node `json`: config.env.URLS: `${inputs.urls}` is a list (output `urls` of node `discovery`, a list.urls tool); this field needs text: write ${inputs.urls:lines}, ${inputs.urls:csv} or ${inputs.urls:json}",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    let (ok, stderr) = producer(&ns, &["submit", &bare], &tools_arg);
    assert!(!ok && stderr.contains("nothing was published"), "{stderr}");
    assert!(stderr.contains("node `count`: config.argv[4]"), "{stderr}");
    assert_eq!(ns.ready(&ns.topology().work_queue("default")).await, 0);
    let keys = redis_keys(&ns.broker().redis_url, &ns.name).await.unwrap();
    assert!(keys.is_empty(), "nothing stored: {keys:?}");

    // With rules: valid, and each exec node gets the list as its rule renders it.
    let path = recipe_file(&ns, "ruled", RECIPE);
    let (ok, stderr) = producer(&ns, &["validate", &path], &tools_arg);
    assert!(ok, "{stderr}");
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(WorkerConfig {
        exec_allow: vec!["python3".into(), "sh".into()],
        tools: Some(tools_file.clone()),
        ..ns.worker_config()
    });
    let mut set = tools::ToolSet::builtin().unwrap();
    set.merge(tools::ToolSet::load(&tools_file).unwrap());
    let catalog = Catalog {
        tools: set,
        resources: tools::Resources::new(None),
    };
    let request = RunRequest {
        path: &path,
        params: &BTreeMap::new(),
        targets: &[],
        catalog: &catalog,
    };
    let run = submit_until(
        &ns.broker(),
        &request,
        Some(Duration::from_secs(60)),
        false,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("succeeded"), "{run:?}");
    tap.wait_until("4 completions", Duration::from_secs(10), |ev| {
        completions(ev, run.run_id).len() == 4
    })
    .await;
    worker.stop().await;
    let done = completions(&tap.snapshot(), run.run_id);
    let stdout = |node: &str| {
        let output = done[node][0].clone().unwrap();
        output["stdout"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(stdout("count").trim(), "3");
    assert_eq!(stdout("joined"), "http://a/1,http://a/2,http://a/3");
    assert_eq!(
        stdout("json"),
        r#"["http://a/1","http://a/2","http://a/3"]"#
    );
    for file in [bare, path] {
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_file(tools_file);
}
