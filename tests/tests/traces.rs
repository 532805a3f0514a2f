//! Distributed traces against the real RabbitMQ and Redis and a local OTLP/HTTP receiver that
//! decodes the protobuf with the official OpenTelemetry definitions (tests/otlp/receiver.py):
//! a run's node that fails once and then succeeds, and its dependent, form one trace across two
//! workers with the parent/child chain as it happened; a requeued dead letter joins its
//! original trace; a dead collector costs only dropped spans, counted.

use secflow_tests::{TestNs, command, free_port, http_get, recipe_file, wait_for};
use serde_json::Value;
use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

/// The receiver process and the file it writes spans to; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    fn start(ns: &TestNs, fail: bool) -> Self {
        let out = std::env::temp_dir().join(format!("{}-spans.jsonl", ns.name));
        let _ = std::fs::remove_file(&out);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/otlp/receiver.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(&out)
            .args(fail.then_some("--fail"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver (python3 with opentelemetry-proto)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("receiver did not print its port: {line:?}"));
        Self { child, port, out }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// A worker process on `ns` in `pool` taking `bind`, exporting to `endpoint`.
fn worker(ns: &TestNs, pool: &str, bind: &str, endpoint: &str, metrics: Option<u16>) -> Child {
    let mut cmd = command("worker");
    cmd.env("AMQP_URL", &ns.amqp_url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-secflow-test=worker%20export",
        )
        .args(["--namespace", &ns.name, "--pool", pool, "--bind", bind])
        .args([
            "--worker-id",
            &format!("{pool}-worker"),
            "--log-format",
            "text",
        ])
        .stdout(Stdio::null());
    if let Some(port) = metrics {
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
    }
    cmd.spawn().expect("spawn the worker binary")
}

/// Consumers of `queue`, 0 while it is not declared yet.
async fn consumers(ns: &TestNs, queue: &str) -> u32 {
    secflow_common::amqp::passive_declare(&ns.conn, queue)
        .await
        .map_or(0, |q| q.consumer_count())
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn str_of<'a>(span: &'a Value, key: &str) -> &'a str {
    attr(span, key).as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_node_and_its_dependent_form_one_trace_across_two_workers() {
    let ns = TestNs::new().await;
    let receiver = Receiver::start(&ns, false);
    // Two pools: the failing node's type runs on one worker, its dependent on the other (the
    // namespace's default pool takes every type until told otherwise).
    let topology = ns.topology();
    ns.ch
        .queue_unbind(
            topology.work_queue("default").as_str().into(),
            topology.tasks_exchange().as_str().into(),
            "#".into(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut a = worker(&ns, "default", "builtin.fail", &receiver.endpoint(), None);
    let mut b = worker(&ns, "other", "builtin.echo", &receiver.endpoint(), None);
    wait_for("both pools' consumers", Duration::from_secs(20), || async {
        consumers(&ns, &topology.work_queue("default")).await == 1
            && consumers(&ns, &topology.work_queue("other")).await == 1
    })
    .await;
    let recipe = recipe_file(
        &ns,
        "traced",
        r#"
version: "1.0"
name: traced
nodes:
  - id: flaky
    type: builtin.fail
    outputs: [attempts]
    config: { class: transient, times: 1 }
    retry: { strategy: fixed, max_attempts: 3, base_delay_ms: 100 }
  - id: after
    type: builtin.echo
    inputs: { upstream: flaky.attempts }
"#,
    );
    let out = command("producer")
        .env("AMQP_URL", &ns.amqp_url)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", receiver.endpoint()),
        )
        .env("OTEL_SERVICE_NAME", "test-submitter")
        .args([
            "--namespace",
            &ns.name,
            "submit",
            &recipe,
            "--wait",
            "--timeout",
            "60",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    // Root span (producer) + 2 attempts of `flaky` + 1 of `after`.
    wait_for("the run's four spans", Duration::from_secs(20), || async {
        receiver
            .spans()
            .iter()
            .filter(|s| {
                s["name"].as_str().unwrap_or("").starts_with("run ")
                    || str_of(s, "secflow.run_id") == run_id
            })
            .count()
            >= 4
    })
    .await;
    let spans = receiver.spans();
    let root = spans
        .iter()
        .find(|s| s["name"] == "run traced")
        .expect("the run's root span");
    assert_eq!(
        root["parent_span_id"], "",
        "the run's span is its trace's root"
    );
    assert_eq!(root["resource"]["service.name"], "test-submitter");
    let trace = root["trace_id"].as_str().unwrap();
    assert_eq!(
        run["trace_id"].as_str(),
        Some(trace),
        "the run records its trace"
    );
    let of_node = |node: &str| -> Vec<&Value> {
        let mut v: Vec<&Value> = spans
            .iter()
            .filter(|s| str_of(s, "secflow.run_id") == run_id && str_of(s, "secflow.node") == node)
            .collect();
        v.sort_by_key(|s| attr(s, "secflow.attempt").as_i64());
        v
    };
    let flaky = of_node("flaky");
    let after = of_node("after");
    assert_eq!(flaky.len(), 2, "two attempts of the flaky node: {flaky:#?}");
    assert_eq!(after.len(), 1, "one attempt of its dependent: {after:#?}");
    for s in flaky.iter().chain(&after) {
        assert_eq!(s["trace_id"], trace, "every attempt is in the run's trace");
        assert_eq!(s["resource"]["deployment.environment"], "test");
        assert_eq!(s["resource"]["service.name"], "secflow-worker");
        assert_eq!(s["scope"], "secflow");
        assert_eq!(s["kind"], 5, "an attempt is a consumer span");
        assert_eq!(
            s["header"], "worker export",
            "the exporter sends the headers set"
        );
        if !s["flags"].is_null() {
            // Sampled, and the parent's remoteness known: remote (another process).
            assert_eq!(s["flags"], 0x301);
        }
    }
    assert_eq!(root["kind"], 4, "the run's span is a producer span");
    assert_eq!(
        root["header"],
        Value::Null,
        "the producer was given no headers"
    );
    if !root["flags"].is_null() {
        assert_eq!(root["flags"], 0x101, "sampled, no remote parent");
    }
    // Both attempts of `flaky` are children of the run's span, on the first worker.
    assert_eq!(flaky[0]["parent_span_id"], root["span_id"]);
    assert_eq!(flaky[1]["parent_span_id"], root["span_id"]);
    assert_eq!(str_of(flaky[0], "secflow.outcome"), "retried");
    assert_eq!(str_of(flaky[0], "error.type"), "transient");
    assert_eq!(flaky[0]["status"], 2, "a failed attempt has status error");
    assert_eq!(attr(flaky[0], "secflow.retry_count"), 0);
    assert_eq!(str_of(flaky[1], "secflow.outcome"), "completed");
    assert_eq!(flaky[1]["status"], 1, "a completed attempt has status ok");
    assert!(flaky[0]["end"].as_u64() >= flaky[0]["start"].as_u64());
    assert_eq!(attr(flaky[1], "secflow.retry_count"), 1);
    assert_eq!(str_of(flaky[0], "secflow.worker"), "default-worker");
    // The dependent is the child of the attempt that completed its upstream, on the other
    // worker.
    assert_eq!(after[0]["parent_span_id"], flaky[1]["span_id"]);
    assert_eq!(str_of(after[0], "secflow.worker"), "other-worker");
    assert_eq!(str_of(after[0], "secflow.task_type"), "builtin.echo");
    assert_eq!(str_of(after[0], "secflow.outcome"), "completed");
    secflow_tests::stop_gracefully(&mut a).await;
    secflow_tests::stop_gracefully(&mut b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requeued_dead_letter_joins_its_original_trace() {
    let ns = TestNs::new().await;
    let receiver = Receiver::start(&ns, false);
    let mut w = worker(&ns, "default", "#", &receiver.endpoint(), None);
    let out = command("producer")
        .env("AMQP_URL", &ns.amqp_url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .args([
            "--namespace",
            &ns.name,
            "publish",
            "--type",
            "builtin.fail",
            "--json",
        ])
        .args(["--config", r#"{"class":"permanent","code":"gone"}"#])
        .output()
        .unwrap();
    let task_id = secflow_tests::stdout(&out)
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["task_id"].as_str().map(str::to_string))
        .expect("the published task's id");
    let attempts = || {
        receiver
            .spans()
            .into_iter()
            .filter(|s| {
                str_of(s, "secflow.task_id") == task_id
                    && s["name"].as_str().is_some_and(|n| n.starts_with("task "))
            })
            .collect::<Vec<_>>()
    };
    wait_for(
        "the first attempt's span",
        Duration::from_secs(20),
        || async { attempts().len() == 1 },
    )
    .await;
    let requeue = command("dlq-inspector")
        .env("AMQP_URL", &ns.amqp_url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .args(["--namespace", &ns.name, "requeue", "--all"])
        .output()
        .unwrap();
    secflow_tests::stdout(&requeue);
    wait_for(
        "the requeued attempt's span",
        Duration::from_secs(20),
        || async { attempts().len() == 2 },
    )
    .await;
    let spans = receiver.spans();
    let publish = spans
        .iter()
        .find(|s| s["name"] == "publish builtin.fail")
        .expect("the publish span");
    let requeued = spans
        .iter()
        .find(|s| s["name"] == "requeue builtin.fail")
        .unwrap_or_else(|| panic!("the inspector's requeue span: {spans:#?}"));
    let trace = &publish["trace_id"];
    assert_eq!(requeued["trace_id"], *trace);
    assert_eq!(
        requeued["resource"]["service.name"],
        "secflow-dlq-inspector"
    );
    for attempt in attempts() {
        assert_eq!(attempt["trace_id"], *trace, "{attempt:#}");
        assert_eq!(attempt["parent_span_id"], publish["span_id"]);
        assert_eq!(str_of(&attempt, "secflow.outcome"), "dead_lettered");
    }
    secflow_tests::stop_gracefully(&mut w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_collector_costs_only_dropped_spans_and_they_are_counted() {
    let ns = TestNs::new().await;
    let receiver = Receiver::start(&ns, true);
    let port = free_port();
    let mut w = worker(&ns, "default", "#", &receiver.endpoint(), Some(port));
    let tasks: Vec<_> = (0..20)
        .map(|_| secflow_common::TaskEnvelope::new("builtin.noop", serde_json::json!({})))
        .collect();
    let tap = ns.tap_events().await;
    secflow_tests::publish(&ns, &tasks).await;
    tap.wait_until("every task's completion", Duration::from_secs(20), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() == 20
    })
    .await;
    wait_for(
        "the refused spans to be counted",
        Duration::from_secs(20),
        || async {
            let Some((200, metrics)) = http_get(port, "/metrics").await else {
                return false;
            };
            metrics.lines().any(|l| {
                l.starts_with("secflow_trace_spans_dropped_total{reason=\"export_failed\"}")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(20.0)
            })
        },
    )
    .await;
    secflow_tests::stop_gracefully(&mut w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standard_sampler_variable_is_honoured() {
    let ns = TestNs::new().await;
    let receiver = Receiver::start(&ns, false);
    let mut sampled_out = command("worker");
    sampled_out
        .env("AMQP_URL", &ns.amqp_url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_TRACES_SAMPLER", "always_off")
        .args(["--namespace", &ns.name, "--log-format", "text"])
        .stdout(Stdio::null());
    let mut w = sampled_out.spawn().unwrap();
    let tap = ns.tap_events().await;
    let task = secflow_common::TaskEnvelope::new("builtin.noop", serde_json::json!({}));
    secflow_tests::publish(&ns, &[task]).await;
    tap.wait_until("the task's completion", Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e.kind == "node.completed")
    })
    .await;
    // A graceful stop exports whatever is queued: with the sampler off, nothing.
    secflow_tests::stop_gracefully(&mut w).await;
    assert_eq!(receiver.spans().len(), 0, "{:#?}", receiver.spans());
    // The ids still go into the events (and logs) for correlation.
    let completed = tap.of_kind("node.completed");
    assert_eq!(completed[0].trace_id.as_deref().map(str::len), Some(32));
}
