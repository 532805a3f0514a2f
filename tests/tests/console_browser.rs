//! The web console in headless Chromium (Debian's `chromium`, driven by npm's `playwright-core`
//! from tests/browser/console.js) against the real RabbitMQ, Redis and a worker: sign in, watch
//! a 20-node run reach `succeeded` on the runs page without a reload, open its DAG, requeue a
//! dead letter from the DLQ page and see its run continue, open and close a breaker. The
//! screenshots of each page go to docs/console/.

mod console_support;

use console_support::{Console, OPERATOR};
use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, recipe_file, wait_for};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long the whole browser session may take.
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Installs `playwright-core` from the lock file when it is missing.
fn playwright(dir: &Path) {
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm must be installed (scripts/test.sh installs it)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// A 20-node run: a binary tree of 600 ms sleeps, five layers deep (about 3 s end to end).
fn tree_recipe(ns: &TestNs) -> String {
    let mut nodes = String::from(
        "  - { id: n00, type: builtin.sleep, config: { ms: 600 }, outputs: [slept_ms] }\n",
    );
    for i in 1..20 {
        nodes.push_str(&format!(
            "  - {{ id: n{i:02}, type: builtin.sleep, config: {{ ms: 600 }}, inputs: {{ up: n{:02}.slept_ms }}, outputs: [slept_ms] }}\n",
            (i - 1) / 2
        ));
    }
    recipe_file(
        ns,
        "tree",
        &format!("version: 1\nname: tree-of-20\nnodes:\n{nodes}"),
    )
}

/// A run whose `scan` fails until `marker` exists (then dead-lettered at once).
fn fixable_recipe(ns: &TestNs, marker: &Path) -> String {
    recipe_file(
        ns,
        "fixable",
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

/// Proves: the console works in a real browser for the operator's everyday tasks, live, with
/// nothing loaded from outside the console; saves a screenshot of every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium must be installed (scripts/test.sh installs it)"
    );
    let browser_dir = repo().join("tests/browser");
    playwright(&browser_dir);
    let shots = repo().join("docs/console");
    std::fs::create_dir_all(&shots).unwrap();

    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let console = Console::start(&ns).await;
    let marker = std::env::temp_dir().join(format!("{}-fixed", ns.name));
    let failed = submit(
        &ns.broker(),
        &fixable_recipe(&ns, &marker),
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(failed.status.as_deref(), Some("failed"));
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let run_key = failed.run_id.to_string();
    let scan = runs.nodes(&run_key, &["scan".to_string()]).await.unwrap();
    let dlq = ns.topology().dlq();
    wait_for(
        "the scan node dead-lettered",
        Duration::from_secs(30),
        || async { ns.ready(&dlq).await == 1 },
    )
    .await;
    std::fs::write(&marker, b"fixed").unwrap();

    let profile = std::env::temp_dir().join(format!("{}-chromium", ns.name));
    let mut child = tokio::process::Command::new("node")
        .arg("console.js")
        .current_dir(&browser_dir)
        .env("CONSOLE_URL", format!("http://127.0.0.1:{}", console.port))
        .env("CONSOLE_TOKEN", OPERATOR)
        .env("FIXABLE_RUN", &run_key)
        .env("FIXABLE_TASK", scan[0].task_id.to_string())
        .env("SHOTS", &shots)
        .env("PROFILE", &profile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (scripts/test.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let tree = tree_recipe(&ns);
    let session = async {
        let mut said = Vec::new();
        while let Some(line) = out.next_line().await.unwrap() {
            println!("browser: {line}");
            if line == "need run" {
                let run = submit(&ns.broker(), &tree, &BTreeMap::new(), None, false)
                    .await
                    .unwrap();
                stdin
                    .write_all(format!("{}\n", run.run_id).as_bytes())
                    .await
                    .unwrap();
            }
            said.push(line);
        }
        said
    };
    let said = tokio::time::timeout(BROWSER_DEADLINE, session)
        .await
        .expect("the browser session did not end in time");
    let status = child.wait().await.unwrap();
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_dir_all(&profile);
    worker.stop().await;
    assert!(
        status.success() && said.last().map(String::as_str) == Some("ok"),
        "the browser script failed after: {said:?}"
    );
    for page in [
        "overview",
        "runs",
        "run-dag",
        "dlq",
        "run-continued",
        "breakers",
        "workers",
    ] {
        assert!(shots.join(format!("{page}.png")).exists(), "{page}.png");
    }
}
