//! Prometheus integration: the alert rules pass `promtool check rules` and their unit tests, the
//! Grafana dashboard's queries are valid PromQL, a live worker's `/metrics` passes `promtool
//! check metrics`, and a real Prometheus scraping two worker processes every second sees the
//! series of both and loads the rules.

use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, free_port, http_get, publish, stop_gracefully, wait_for};
use serde_json::{Value, json};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Polls `probe` until it returns a value, panicking with `what` after `timeout`.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `deploy/prometheus` in the workspace.
fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// Runs a Prometheus tool (`promtool` or `prometheus`), which `scripts/test.sh` installs.
fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: `apt-get install prometheus` (scripts/test.sh does)"
    );
    Command::new(name)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Proves: the alert rules are valid and every alert fires and stays quiet where its unit tests
/// say (`deploy/prometheus/alerts_test.yaml`).
#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let dir = rules_dir();
    let check = tool("promtool")
        .args(["check", "rules"])
        .arg(dir.join("alerts.yaml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("SUCCESS: 7 rules found"),
        "{}",
        text(&check)
    );
    let unit = tool("promtool")
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(unit.status.success(), "{}", text(&unit));
    assert!(text(&unit).contains("SUCCESS"), "{}", text(&unit));
}

/// Proves: the Grafana dashboard is valid JSON with a Prometheus datasource variable that every
/// panel uses, and every panel query is valid PromQL over SecFlow metrics (`promtool check
/// rules` on the queries as recording rules, Grafana's `$__rate_interval` as 1m).
#[test]
fn the_grafana_dashboard_queries_are_valid_promql() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/secflow.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["type"] == "datasource"
        && v["query"] == "prometheus"
        && v["name"] == "datasource"));
    let panels = dashboard["panels"].as_array().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, panel) in panels.iter().enumerate() {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains("secflow_"), "{expr}");
            let expr = expr.replace("$__rate_interval", "1m");
            rules.push_str(&format!(
                "      - record: dashboard:panel{i}:{}\n        expr: {}\n",
                target["refId"].as_str().unwrap(),
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("secflow-dashboard-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("queries.yaml"), rules).unwrap();
    let check = tool("promtool")
        .args(["check", "rules"])
        .arg(dir.join("queries.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(check.status.success(), "{}", text(&check));
    assert!(panels.len() >= 10, "{} panels", panels.len());
}

/// A task that fails transiently on both of its 2 attempts: one retry, then the DLQ.
fn always_flaky() -> TaskEnvelope {
    let mut task = TaskEnvelope::new(
        "builtin.fail",
        json!({"class": "transient", "code": "flaky", "message": "still down"}),
    );
    task.retry = serde_json::from_value(
        json!({"strategy": "fixed", "base_delay_ms": 50, "max_attempts": 2, "jitter": "none"}),
    )
    .unwrap();
    task
}

/// Waits for a worker's `/metrics` to contain every one of `lines` (prefixes); its body.
async fn metrics_with(port: u16, lines: &[&str]) -> String {
    poll(
        &format!("/metrics with {lines:?}"),
        Duration::from_secs(30),
        || async {
            let (_, body) = http_get(port, "/metrics").await.filter(|r| r.0 == 200)?;
            lines
                .iter()
                .all(|p| body.lines().any(|l| l.starts_with(p)))
                .then_some(body)
        },
    )
    .await
}

/// Proves: after completions, a retry, a dead letter and a breaker read, and once the fleet
/// controller set its gauges, `promtool check metrics` finds no problem in `/metrics` (names,
/// units, `_total` counters, help text on every metric).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_workers_metrics_pass_promtool_check_metrics() {
    let ns = TestNs::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = ns.spawn_worker_process(&["--metrics-addr", &addr]);
    let mut tasks: Vec<TaskEnvelope> = (0..3)
        .map(|i| TaskEnvelope::new("builtin.echo", json!({ "i": i })))
        .collect();
    tasks[0].service = Some("svc-ok".into());
    tasks.push(always_flaky());
    publish(&ns, &tasks).await;
    let body = metrics_with(
        port,
        &[
            "secflow_tasks_settled_total{outcome=\"completed\"} 3",
            "secflow_tasks_settled_total{outcome=\"dead_lettered\"} 1",
            "secflow_task_failures_total{outcome=\"retried\",class=\"transient\"} 1",
            "secflow_breaker_state{service=\"svc-ok\"} 0",
            "secflow_node_duration_seconds_bucket{",
            "secflow_fleet_controller_leading 1",
            "secflow_queue_consumers{",
            "secflow_queue_oldest_message_age_seconds{",
        ],
    )
    .await;
    stop_gracefully(&mut child).await;
    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "promtool check metrics found problems:\n{}\nin:\n{body}",
        text(&out)
    );
}

/// The value of `metric{queue="QUEUE"}` in a worker's `/metrics`, once it is there.
async fn gauge(port: u16, metric: &str, queue: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").await.filter(|r| r.0 == 200)?;
    let prefix = format!("{metric}{{queue=\"{queue}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Proves: the leader's `secflow_queue_oldest_message_age_seconds` follows how long the oldest
/// message has waited, for a work queue nobody can take from (its one worker busy) and for
/// the DLQ: never older than the time since it was published or dead-lettered, growing while
/// it waits, and back to 0 once the work queue is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_message_age_follows_work_queue_and_dlq() {
    let ns = TestNs::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = ns.spawn_worker_process(&["--metrics-addr", &addr, "--prefetch", "1"]);
    let work = ns.topology().work_queue("default");
    let dlq = ns.topology().dlq();
    // The ledger has seen the queue empty before anything is published.
    poll(
        "the work queue's age at 0",
        Duration::from_secs(30),
        || async {
            (gauge(port, "secflow_queue_oldest_message_age_seconds", &work).await == Some(0.0))
                .then_some(())
        },
    )
    .await;
    let before_dead = Instant::now();
    publish(
        &ns,
        &[TaskEnvelope::new(
            "builtin.fail",
            json!({"class": "permanent", "code": "gone", "message": "no such target"}),
        )],
    )
    .await;
    wait_for("the task in the DLQ", Duration::from_secs(20), || async {
        ns.ready(&dlq).await == 1
    })
    .await;
    let dead_by = Instant::now();
    // One task holds the worker for 8 s; three wait behind it.
    let before_backlog = Instant::now();
    let mut tasks = vec![TaskEnvelope::new("builtin.sleep", json!({"ms": 8_000}))];
    tasks.extend((0..3).map(|i| TaskEnvelope::new("builtin.noop", json!({ "i": i }))));
    publish(&ns, &tasks).await;
    let mut seen = Vec::new();
    loop {
        let age = poll("the work queue's age", Duration::from_secs(10), || {
            gauge(port, "secflow_queue_oldest_message_age_seconds", &work)
        })
        .await;
        let waited = before_backlog.elapsed().as_secs_f64();
        assert!(
            age <= waited + 0.5,
            "the oldest message is {age} s old by the gauge, published {waited} s ago"
        );
        seen.push(age);
        if age >= 4.0 {
            break;
        }
        assert!(waited < 20.0, "the age never reached 4 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The DLQ's age counts from its dead-lettering (read every 10 s, set every tick).
    let age = poll("the DLQ's age", Duration::from_secs(30), || async {
        gauge(port, "secflow_queue_oldest_message_age_seconds", &dlq)
            .await
            .filter(|a| *a > 0.0)
    })
    .await;
    assert!(
        age <= before_dead.elapsed().as_secs_f64() + 0.5
            && age >= dead_by.elapsed().as_secs_f64() - 2.5,
        "the DLQ's message is {age} s old by the gauge, dead-lettered between {:?} and {:?} ago",
        dead_by.elapsed(),
        before_dead.elapsed()
    );
    // Drained: the age is 0 again; the DLQ's message is still there, its age still counting.
    poll(
        "the work queue's age back at 0",
        Duration::from_secs(30),
        || async {
            (gauge(port, "secflow_queue_oldest_message_age_seconds", &work).await == Some(0.0))
                .then_some(())
        },
    )
    .await;
    poll("the DLQ's age to grow", Duration::from_secs(5), || async {
        gauge(port, "secflow_queue_oldest_message_age_seconds", &dlq)
            .await
            .filter(|later| *later > age)
    })
    .await;
    stop_gracefully(&mut child).await;
    assert_eq!(
        ns.ready(&dlq).await,
        1,
        "looking at the DLQ's head kept it there"
    );
}

/// A `prometheus` server in a temporary directory, killed and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Starts one scraping `targets` every second and evaluating the alert rules.
    fn start(targets: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("secflow-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = rules_dir().join("alerts.yaml").canonicalize().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: secflow\n    static_configs:\n      - targets: {}\n",
            rules.display(),
            serde_json::to_string(targets).unwrap()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = tool("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, dir, port }
    }

    /// The `data` of an API answer at `path`, or `None` while the server does not answer.
    async fn api(&self, path: &str) -> Option<Value> {
        let get = tokio::time::timeout(Duration::from_secs(5), http_get(self.port, path));
        let (status, body) = get.await.ok().flatten()?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && answer["status"] == "success").then(|| answer["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Proves: a real Prometheus scraping two worker processes every second returns, through
/// `/api/v1/query`, the series of both (exactly one of them leading the fleet controller), and
/// loads all seven alert rules healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_two_workers_and_loads_the_rules() {
    let ns = TestNs::new().await;
    let ports = [free_port(), free_port()];
    let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut workers: Vec<Child> = targets
        .iter()
        .map(|t| ns.spawn_worker_process(&["--metrics-addr", t]))
        .collect();
    let prometheus = Prometheus::start(&targets);
    let seen = poll(
        "both workers' secflow_fleet_controller_leading in Prometheus, one leading",
        Duration::from_secs(60),
        || async {
            let data = prometheus
                .api("/api/v1/query?query=secflow_fleet_controller_leading")
                .await?;
            let results = data["result"].as_array().cloned().unwrap_or_default();
            let mut instances: Vec<String> = results
                .iter()
                .filter_map(|r| r["metric"]["instance"].as_str().map(String::from))
                .collect();
            instances.sort();
            let mut expected = targets.clone();
            expected.sort();
            let leading: f64 = results
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                .sum();
            (instances == expected && leading == 1.0).then_some(data)
        },
    )
    .await;
    assert_eq!(seen["resultType"], "vector");
    poll(
        "the seven alert rules loaded and evaluated",
        Duration::from_secs(30),
        || async {
            let data = prometheus.api("/api/v1/rules").await?;
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (rules.len() == 7 && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        },
    )
    .await;
    for w in &mut workers {
        stop_gracefully(w).await;
    }
    drop(prometheus);
}
