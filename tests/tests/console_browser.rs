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

/// The browser scripts' folder, once Debian's chromium is there and `playwright-core` is
/// installed (from the lock file, when missing).
fn browser() -> PathBuf {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium must be installed (scripts/test.sh installs it)"
    );
    let dir = repo().join("tests/browser");
    // The tests of this file run at once (each in its own process): one installs, the other
    // waits for it (two `npm ci` in one folder remove each other's files).
    let lock = std::fs::File::create(std::env::temp_dir().join("secflow-browser-npm-ci.lock"))
        .expect("create the npm install lock file");
    lock.lock().expect("take the npm install lock");
    if !dir.join("node_modules/playwright-core").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed (scripts/test.sh installs it)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    dir
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

/// A two-node run whose `probe` fails (dead-lettered at once) until `marker` exists; `after`
/// runs once it has succeeded.
fn fixable_recipe(ns: &TestNs, marker: &Path) -> String {
    let probe = format!("test -f {}", marker.display());
    let yaml = [
        "version: 1",
        "name: fixable",
        "nodes:",
        "  - id: probe",
        "    type: exec",
        &format!("    config: {{ argv: [sh, -c, {probe:?}] }}"),
        "    retry: { max_attempts: 1 }",
        "    outputs: [stdout]",
        "  - id: after",
        "    type: builtin.echo",
        "    inputs: { seen: probe.stdout }",
    ]
    .join("\n");
    recipe_file(ns, "fixable", &yaml)
}

/// Proves: the console works in a real browser for the operator's everyday tasks, live, with
/// nothing loaded from outside the console; saves a screenshot of every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    let browser_dir = browser();
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
    let probe = runs.nodes(&run_key, &["probe".to_string()]).await.unwrap();
    let dlq = ns.topology().dlq();
    wait_for(
        "the probe node dead-lettered",
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
        .env("FIXABLE_TASK", probe[0].task_id.to_string())
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

/// `n` dead letters published straight to the namespace's DLX, as a worker would leave them.
async fn fill_dlq(ns: &TestNs, n: usize) {
    use secflow_common::headers as h;
    let publisher = secflow_common::amqp::Publisher::new(&ns.conn)
        .await
        .unwrap();
    let dlx = ns.topology().dlx();
    let now = secflow_common::now_ms();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let sends = chunk.iter().map(|i| {
            let task = secflow_common::TaskEnvelope::new(
                "builtin.fail",
                serde_json::json!({"class": "permanent", "message": format!("case {i}")}),
            );
            let mut headers = lapin::types::FieldTable::default();
            h::set_str(&mut headers, h::DEAD_LETTER_REASON, "permanent");
            h::set_str(&mut headers, h::ERROR_CLASS, "permanent");
            h::set_str(&mut headers, h::ERROR_CODE, "out_of_scope");
            h::set_str(&mut headers, h::ERROR_MESSAGE, "out of scope");
            h::set_u64(&mut headers, h::DEAD_LETTERED_AT, now);
            let props = secflow_common::amqp::json_properties(&task.task_id.to_string(), headers);
            let (publisher, dlx) = (&publisher, dlx.as_str());
            async move {
                publisher
                    .publish(dlx, "", &task.to_body(), props, false)
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// A stored run of 2,000 nodes (40 layers of 50, each node fed by two of the layer before),
/// never published: the page only draws it.
async fn big_run(ns: &TestNs) -> String {
    let (layers, width) = (40, 50);
    let mut yaml = String::from("version: 1\nname: big\nnodes:\n");
    for l in 0..layers {
        for k in 0..width {
            let inputs = if l == 0 {
                String::new()
            } else {
                format!(
                    ", inputs: {{ a: n{}x{k}.echo, b: n{}x{}.echo }}",
                    l - 1,
                    l - 1,
                    (k + 1) % width
                )
            };
            yaml.push_str(&format!(
                "  - {{ id: n{l}x{k}, type: builtin.echo, outputs: [echo]{inputs} }}\n"
            ));
        }
    }
    let recipe = secflow_common::recipe::parse("big.yaml", &yaml).unwrap();
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let (run, _) = runs
        .create(&recipe, &BTreeMap::new(), &[], false, None, None)
        .await
        .unwrap();
    run.to_string()
}

/// Proves: with 10,000 dead letters and a 2,000-node run the page stays usable: the DLQ page
/// keeps one page of 100 rows in the DOM and renders it, and the DAG of 2,000 nodes is drawn,
/// each within 30 s (the figures are printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_stays_usable_with_10000_dead_letters_and_a_2000_node_run() {
    let browser_dir = browser();
    let ns = TestNs::new().await;
    fill_dlq(&ns, 10_000).await;
    let dlq = ns.topology().dlq();
    wait_for("10,000 dead letters", Duration::from_secs(60), || async {
        ns.ready(&dlq).await == 10_000
    })
    .await;
    let run = big_run(&ns).await;
    let console = Console::start(&ns).await;
    let profile = std::env::temp_dir().join(format!("{}-chromium", ns.name));
    let child = tokio::process::Command::new("node")
        .arg("scale.js")
        .current_dir(&browser_dir)
        .env("CONSOLE_URL", format!("http://127.0.0.1:{}", console.port))
        .env("CONSOLE_TOKEN", OPERATOR)
        .env("BIG_RUN", &run)
        .env("BIG_NODES", "2000")
        .env("PROFILE", &profile)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_DEADLINE, child)
        .await
        .expect("the browser session did not end in time")
        .expect("node must be installed (scripts/test.sh installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{said}");
    assert!(out.status.success() && said.ends_with("ok\n"), "{said}");
    let figure = |name: &str| -> u64 {
        said.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {said}"))
    };
    assert_eq!(figure("dlq_rows_in_dom"), 100, "one page in the DOM");
    for name in ["dlq_first_render_ms", "dag_first_render_ms"] {
        assert!(figure(name) < 30_000, "{name}: {} ms", figure(name));
    }
    assert_eq!(
        ns.ready(&dlq).await,
        10_000,
        "reading the DLQ removed nothing"
    );
}
