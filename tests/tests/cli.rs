//! The `producer` binary as an operator runs it.

use secflow_tests::{TestNs, command};

fn producer(ns: &TestNs, args: &[&str]) -> std::process::Output {
    command("producer")
        .args(["--namespace", &ns.name])
        .args(args)
        .output()
        .unwrap()
}

/// Proves: `producer publish --count N --json` prints one JSON object per confirmed task, and
/// the tasks are in the work queue.
#[tokio::test]
async fn publish_prints_confirmed_ids() {
    let ns = TestNs::new().await;
    let out = producer(
        &ns,
        &[
            "publish",
            "--type",
            "builtin.echo",
            "--config",
            r#"{"m":1}"#,
            "--count",
            "3",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines.iter().all(|l| l["type"] == "builtin.echo"
            && l["task_id"].as_str().is_some_and(|id| id.len() == 36))
    );
    secflow_tests::wait_for(
        "3 tasks queued",
        std::time::Duration::from_secs(5),
        || async { ns.ready(&ns.topology().work_queue("default")).await == 3 },
    )
    .await;
}

/// Proves: bad input is refused before anything is published, with an error naming the flag.
#[tokio::test]
async fn publish_rejects_bad_input_clearly() {
    let ns = TestNs::new().await;
    let out = producer(
        &ns,
        &["publish", "--type", "builtin.echo", "--config", "{not json"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config is not valid JSON"));
    let out = producer(&ns, &["publish", "--type", "Bad Type"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid node type"));
    let out = producer(
        &ns,
        &[
            "publish",
            "--type",
            "builtin.echo",
            "--retry",
            r#"{"max_attempts":0}"#,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_attempts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ns.ready(&ns.topology().work_queue("default")).await,
        0,
        "nothing was published"
    );
    let out = command("producer")
        .args([
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--connect-timeout-secs",
            "1",
        ])
        .args(["publish", "--type", "builtin.echo"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
