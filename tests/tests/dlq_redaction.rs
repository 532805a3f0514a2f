//! `dlq-inspector show`, `export` and `purge --export` against the real broker mask secrets in
//! a dead letter's config and inputs unless `--unredacted` is given, which warns on stderr.

use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, inspector, json_lines, publish, stdout, wait_for};
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};

const SECRETS: [&str; 3] = ["s3cr3t", "u:pw@", "tok-9876543210"];

/// A task carrying secrets in its config and inputs; its config is not one `builtin.fail`
/// accepts, so it is dead-lettered at once.
fn secret_task() -> TaskEnvelope {
    let mut task = TaskEnvelope::new(
        "builtin.fail",
        json!({"api_key": "s3cr3t", "url": "https://u:pw@host/x"}),
    );
    task.inputs
        .insert("session".into(), json!({"token": "tok-9876543210"}));
    task
}

/// Runs a worker until `n` secret-carrying tasks are in the DLQ, then stops it; their ids.
async fn dead_letter(ns: &TestNs, n: usize) -> Vec<String> {
    let worker = ns.spawn_worker(ns.worker_config());
    let tasks: Vec<TaskEnvelope> = (0..n).map(|_| secret_task()).collect();
    let ids = publish(ns, &tasks).await;
    let dlq = ns.topology().dlq();
    wait_for("tasks dead-lettered", Duration::from_secs(60), || async {
        ns.ready(&dlq).await as usize >= n
    })
    .await;
    worker.stop().await;
    ids.iter().map(ToString::to_string).collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_masked(text: &str, what: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows `{secret}`: {text}");
    }
    assert!(
        text.contains("https://u:[REDACTED]@host/x"),
        "{what} keeps what is not secret: {text}"
    );
}

fn assert_as_published(text: &str, what: &str) {
    for secret in SECRETS {
        assert!(text.contains(secret), "{what} lacks `{secret}`: {text}");
    }
}

fn temp_file(ns: &TestNs, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}.jsonl", ns.name))
}

/// Proves: `show` masks the config's `api_key` and URL password and the inputs' token, and
/// warns nothing; `show --unredacted` prints them as published and warns on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_masks_secrets_unless_unredacted() {
    let ns = TestNs::new().await;
    let id = dead_letter(&ns, 1).await.remove(0);

    let out = inspector(&ns, &["show", &id, "--json"]);
    let view: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_masked(&view.to_string(), "show");
    assert_eq!(view["body"]["config"]["api_key"], "[REDACTED]");
    assert!(!stderr(&out).contains("--unredacted"), "{}", stderr(&out));
    let pretty = stdout(&inspector(&ns, &["show", &id]));
    assert_masked(&pretty, "show (pretty)");

    let out = inspector(&ns, &["show", &id, "--json", "--unredacted"]);
    let view: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        view["body"]["config"],
        json!({"api_key": "s3cr3t", "url": "https://u:pw@host/x"})
    );
    assert_as_published(&view.to_string(), "show --unredacted");
    assert!(
        stderr(&out).contains("warning: --unredacted"),
        "{}",
        stderr(&out)
    );
}

/// Proves: `export` and `purge --export` write masked lines marked `redacted: true` by default;
/// with `--unredacted` they write the task as published (enough to republish it), marked
/// `redacted: false`, and warn on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_purge_export_mask_secrets_unless_unredacted() {
    let ns = TestNs::new().await;
    let ids = dead_letter(&ns, 2).await;
    let read = |path: &PathBuf| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let masked = temp_file(&ns, "masked");
    let out = inspector(&ns, &["export", "--out", masked.to_str().unwrap()]);
    stdout(&out);
    assert!(!stderr(&out).contains("--unredacted"), "{}", stderr(&out));
    let lines = read(&masked);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_masked(&line.to_string(), "export");
        assert_eq!(line["redacted"], true);
    }

    let clear = temp_file(&ns, "clear");
    let out = inspector(
        &ns,
        &["export", "--out", clear.to_str().unwrap(), "--unredacted"],
    );
    stdout(&out);
    assert!(stderr(&out).contains("warning: --unredacted"));
    for line in read(&clear) {
        assert_as_published(&line.to_string(), "export --unredacted");
        assert_eq!(line["redacted"], false);
        let body: TaskEnvelope = serde_json::from_value(line["body"].clone()).unwrap();
        assert_eq!(body.config, secret_task().config, "republishable as is");
    }

    let purged = temp_file(&ns, "purged");
    let args = [
        "purge",
        &ids[0],
        "--yes",
        "--export",
        purged.to_str().unwrap(),
    ];
    stdout(&inspector(&ns, &args));
    let lines = read(&purged);
    assert_eq!((lines.len(), &lines[0]["redacted"]), (1, &json!(true)));
    assert_masked(&lines[0].to_string(), "purge --export");

    let kept = temp_file(&ns, "kept");
    let args = [
        "purge",
        &ids[1],
        "--yes",
        "--export",
        kept.to_str().unwrap(),
        "--unredacted",
    ];
    let out = inspector(&ns, &args);
    stdout(&out);
    assert!(stderr(&out).contains("warning: --unredacted"));
    let lines = read(&kept);
    assert_eq!((lines.len(), &lines[0]["redacted"]), (1, &json!(false)));
    assert_as_published(&lines[0].to_string(), "purge --export --unredacted");
    assert!(
        json_lines(&inspector(&ns, &["list", "--json"])).is_empty(),
        "both were purged"
    );
    for path in [masked, clear, purged, kept] {
        let _ = std::fs::remove_file(path);
    }
}
