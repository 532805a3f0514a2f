//! Training the classifier's model from an operator's own examples and running `worker
//! classify` and the worker with it, without a rebuild; the worker's own failures classified by
//! the model (`model_<class>` codes).

use secflow_common::ErrorClass;
use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, command, request};
use serde_json::{Value, json};
use std::time::Duration;

/// An operator's labelled examples: a licence server's word for "come back later".
fn operator_examples(dir: &std::path::Path) -> String {
    let path = dir.join("train_licences.yaml");
    let mut text = String::new();
    for seat in 0..6 {
        text += &format!(
            "- {{class: resource, message: \"flexlm: all {seat} seats checked out, LICWAIT queue entered\"}}\n"
        );
        text += &format!(
            "- {{class: resource, message: \"licence pool drained: LICWAIT for feature scan{seat}\"}}\n"
        );
    }
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Proves: `worker classify --train` on the shipped corpus plus an operator's file prints the
/// training and validation accuracy and writes a model that `--model` and `SECFLOW_MODEL`
/// use, without a rebuild; held-out files and bad files are refused with a clear error.
#[test]
fn operators_retrain_without_rebuilding() {
    let dir = std::env::temp_dir().join(format!("secflow-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let examples = operator_examples(&dir);
    let model = dir.join("model.json").to_string_lossy().into_owned();
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/errors.yaml");
    let out = command("worker")
        .args([
            "classify",
            "--train",
            "--examples",
            corpus,
            "--examples",
            &examples,
            "--out",
            &model,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("training accuracy: ") && text.contains("validation accuracy: "),
        "{text}"
    );

    let message = "scanner stalled: LICWAIT, every seat is checked out";
    let with = command("worker")
        .args(["classify", "--json", "--model", &model, message])
        .output()
        .unwrap();
    let with: Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(
        (with["class"].as_str(), with["matched"].as_str()),
        (Some("resource"), Some("model"))
    );
    let env = command("worker")
        .env("SECFLOW_MODEL", &model)
        .args(["classify", "--json", message])
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&env.stdout).unwrap()["class"],
        "resource"
    );

    let refuse = |args: &[&str]| {
        let out = command("worker").args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let held_out = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/holdout.yaml");
    assert!(
        refuse(&[
            "classify",
            "--train",
            "--examples",
            held_out,
            "--out",
            &model
        ])
        .contains("held-out file is for evaluation only")
    );
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "- {class: sometimes, message: x}\n").unwrap();
    let err = refuse(&[
        "classify",
        "--train",
        "--examples",
        bad.to_str().unwrap(),
        "--out",
        &model,
    ]);
    assert!(
        err.contains("bad.yaml: not a list of labelled examples"),
        "{err}"
    );
    std::fs::write(&bad, "{\"format\": \"other\"}").unwrap();
    let err = refuse(&["classify", "--model", bad.to_str().unwrap(), "x"]);
    assert!(err.contains("not a classifier model file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Proves: the worker classifies an `exec` failure no rule knows with the model
/// (`model_validation`), and a worker started with `--model` uses the operator's model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_classifies_with_the_model() {
    let ns = TestNs::new().await;
    let dir = std::env::temp_dir().join(format!("{}-model", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let examples = operator_examples(&dir);
    let model = dir.join("model.json").to_string_lossy().into_owned();
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/errors.yaml");
    let out = command("worker")
        .args([
            "classify",
            "--train",
            "--examples",
            corpus,
            "--examples",
            &examples,
            "--out",
            &model,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());

    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(secflow_worker::WorkerConfig {
        model: Some(model),
        ..ns.worker_config()
    });
    let exec = |stderr: &str| {
        let mut r = request(
            "exec",
            json!({"argv": ["sh", "-c", format!("echo \"{stderr}\" >&2; exit 1")]}),
            1,
        );
        r.retry = serde_json::from_value(json!({"max_attempts": 1})).unwrap();
        r
    };
    let schema = publish_tasks(
        &ns.broker(),
        &exec("report rejected: schema validation failed, severity is a required property"),
    )
    .await
    .unwrap()[0];
    let licence = publish_tasks(
        &ns.broker(),
        &exec("LICWAIT: every seat of the licence pool is checked out"),
    )
    .await
    .unwrap()[0];
    tap.wait_until("both failures settled", Duration::from_secs(30), |ev| {
        [schema, licence].iter().all(|id| {
            ev.iter().any(|e| {
                e.task_id == Some(*id)
                    && matches!(e.kind.as_str(), "node.dead_lettered" | "node.retrying")
            })
        })
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    let error_of = |id| {
        let e = events
            .iter()
            .find(|e| e.task_id == Some(id) && e.error.is_some())
            .unwrap();
        let err = e.error.as_ref().unwrap();
        (err.class.clone(), err.code.clone())
    };
    assert_eq!(
        error_of(schema),
        (
            ErrorClass::Validation.to_string(),
            "model_validation".to_string()
        )
    );
    assert_eq!(
        error_of(licence),
        (
            ErrorClass::Resource.to_string(),
            "model_resource".to_string()
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}
