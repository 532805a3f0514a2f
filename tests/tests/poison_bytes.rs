//! A message the AMQP client cannot parse (names that are not UTF-8) among signed tasks: every
//! task completes, only the poison is dead-lettered with a reason, the worker stays ready and
//! stops on SIGTERM, and the inspector lists and purges the poison.

use secflow_common::{
    TaskEnvelope,
    rawamqp::{RawClient, RawProperties, RawValue},
};
use secflow_tests::{
    TestNs, exit_status, free_port, http_get, inspector, json_lines, publish, wait_for,
};
use serde_json::json;
use std::time::Duration;

/// Publishes through the raw client a task-shaped message whose message id and one header name
/// are not UTF-8, straight into the pool's work queue.
async fn publish_poison(ns: &TestNs) {
    let mut raw = RawClient::connect(&ns.amqp_url, Duration::from_secs(10))
        .await
        .unwrap();
    let props = RawProperties {
        content_type: Some(b"application/json".to_vec()),
        delivery_mode: Some(2),
        message_id: Some(vec![b'p', 0xff, 0xfe]),
        headers: Some(vec![(vec![b'x', 0xc3, 0x28], RawValue::Int(1))]),
        ..RawProperties::default()
    };
    let body = serde_json::to_vec(&TaskEnvelope::new("builtin.echo", json!({}))).unwrap();
    raw.publish(
        b"",
        ns.topology().work_queue("default").as_bytes(),
        &props,
        &body,
    )
    .await
    .unwrap();
    raw.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unparseable_poison_among_signed_tasks_charges_no_innocent() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let tasks: Vec<_> = (0..30)
        .map(|i| TaskEnvelope::new("builtin.echo", json!({ "message": i })))
        .collect();
    let first = publish(&ns, &tasks[..10]).await;
    publish_poison(&ns).await;
    let rest = publish(&ns, &tasks[10..]).await;
    let port = free_port();
    let mut worker = ns.spawn_worker_process(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--prefetch",
        "64",
    ]);

    // Every signed task completes exactly once.
    tap.wait_until("30 tasks completed", Duration::from_secs(60), |events| {
        let done: std::collections::HashSet<_> = events
            .iter()
            .filter(|e| e.kind == "node.completed")
            .filter_map(|e| e.task_id)
            .collect();
        done.len() >= 30
    })
    .await;
    let done: std::collections::HashSet<_> = tap
        .of_kind("node.completed")
        .iter()
        .filter_map(|e| e.task_id)
        .collect();
    for id in first.iter().chain(&rest) {
        assert!(done.contains(id), "task {id} never completed");
    }

    // Only the poison reaches the DLQ, with a reason the inspector can show.
    let dlq = ns.topology().dlq();
    wait_for(
        "the poison dead-lettered",
        Duration::from_secs(60),
        || async { ns.ready(&dlq).await == 1 },
    )
    .await;
    let lines = json_lines(&inspector(&ns, &["list", "--json"]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let text = lines[0].to_string();
    assert!(
        text.contains("unparseable"),
        "poison not shown as unparseable: {text}"
    );
    assert!(
        text.contains("fffe") || text.contains("not UTF-8"),
        "{text}"
    );

    // The worker is still consuming and ready.
    let queue = ns.topology().work_queue("default");
    assert_eq!(ns.consumers(&queue).await, 1, "the worker has no consumer");
    let (status, _) = http_get(port, "/readyz").await.expect("readyz answers");
    assert_eq!(status, 200);

    // The inspector purges it.
    let purged = inspector(&ns, &["purge", "--all", "--yes"]);
    assert!(
        purged.status.success(),
        "inspector purge failed: {}",
        String::from_utf8_lossy(&purged.stderr)
    );
    wait_for("DLQ empty", Duration::from_secs(10), || async {
        ns.ready(&dlq).await == 0
    })
    .await;

    // SIGTERM stops it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        exit_status(&mut worker, Duration::from_secs(20))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inspector_shows_exports_and_purges_an_unparseable_dead_letter_and_requeues_the_rest() {
    let ns = TestNs::new().await;
    let dlq = ns.topology().dlq();
    // Two ordinary dead letters.
    let worker = ns.spawn_worker(ns.worker_config());
    let doomed: Vec<_> = (0..2)
        .map(|_| {
            TaskEnvelope::new(
                "builtin.fail",
                json!({"class": "permanent", "message": "no"}),
            )
        })
        .collect();
    publish(&ns, &doomed).await;
    wait_for("two dead letters", Duration::from_secs(30), || async {
        ns.ready(&dlq).await == 2
    })
    .await;
    worker.stop().await;
    // A message the client cannot parse, as the broker leaves it after the delivery limit.
    let mut raw = RawClient::connect(&ns.amqp_url, Duration::from_secs(10))
        .await
        .unwrap();
    let props = RawProperties {
        message_id: Some(vec![0xfe, 0xed]),
        headers: Some(vec![(vec![0xff], RawValue::Bytes(b"v".to_vec()))]),
        ..RawProperties::default()
    };
    raw.publish(b"", dlq.as_bytes(), &props, b"poison body")
        .await
        .unwrap();
    raw.close().await;

    let lines = json_lines(&inspector(&ns, &["list", "--json"]));
    assert_eq!(lines.len(), 3, "{lines:?}");
    let poison: Vec<_> = lines
        .iter()
        .filter(|l| l["code"] == "unparseable")
        .collect();
    assert_eq!(poison.len(), 1, "{lines:?}");
    assert!(poison[0].to_string().contains("0xfeed"), "{}", poison[0]);

    let out = std::env::temp_dir().join(format!("{}-poison.jsonl", ns.name));
    let exported = inspector(
        &ns,
        &[
            "export",
            "--out",
            out.to_str().unwrap(),
            "--filter",
            "code=unparseable",
        ],
    );
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("poison body"), "{text}");
    std::fs::remove_file(&out).ok();

    // Requeue of everything moves the two readable ones and leaves the poison.
    let requeued = inspector(&ns, &["requeue", "--all"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&requeued.stdout),
        String::from_utf8_lossy(&requeued.stderr)
    );
    assert!(said.contains("could not read it as published"), "{said}");
    let queue = ns.topology().work_queue("default");
    wait_for("two requeued", Duration::from_secs(10), || async {
        ns.ready(&queue).await == 2 && ns.ready(&dlq).await == 1
    })
    .await;

    let purged = inspector(&ns, &["purge", "--yes", "--filter", "code=unparseable"]);
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );
    wait_for("DLQ empty", Duration::from_secs(10), || async {
        ns.ready(&dlq).await == 0
    })
    .await;
}
