//! Transport guarantees against the real RabbitMQ: delivery exactly once under normal
//! operation, broker-side retries with measured delays, dead-lettering with full headers.

use secflow_common::headers as h;
use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, request, wait_for};
use serde_json::json;
use std::{collections::HashMap, time::Duration};

/// Proves: 1,000 tasks across 3 workers each complete exactly once, and nothing stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_echo_tasks_on_three_workers_complete_exactly_once() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let workers: Vec<_> = (0..3)
        .map(|i| {
            ns.spawn_worker(secflow_worker::WorkerConfig {
                worker_id: Some(format!("w{i}")),
                prefetch: 16,
                ..ns.worker_config()
            })
        })
        .collect();
    let queue = ns.topology().work_queue("default");
    wait_for("three consumers", Duration::from_secs(10), || async {
        ns.consumers(&queue).await == 3
    })
    .await;
    let ids = publish_tasks(
        &ns.broker(),
        &request("builtin.echo", json!({"n": 1}), 1000),
    )
    .await
    .unwrap();
    assert_eq!(ids.len(), 1000);
    tap.wait_until("1000 completions", Duration::from_secs(60), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() >= 1000
    })
    .await;
    for w in workers {
        w.stop().await;
    }
    let completed = tap.of_kind("node.completed");
    let mut per_id: HashMap<_, usize> = HashMap::new();
    for e in &completed {
        *per_id.entry(e.task_id.unwrap()).or_default() += 1;
    }
    assert_eq!(completed.len(), 1000, "a task completed twice");
    assert!(
        ids.iter().all(|id| per_id.get(id) == Some(&1)),
        "some task did not complete exactly once"
    );
    let by_worker: std::collections::HashSet<_> =
        completed.iter().map(|e| e.worker.clone()).collect();
    assert_eq!(
        by_worker.len(),
        3,
        "all three workers took part: {by_worker:?}"
    );
    assert_eq!(ns.ready(&ns.topology().work_queue("default")).await, 0);
    assert!(
        tap.snapshot().iter().all(|e| e.kind == "node.completed"),
        "no failures expected"
    );
}

/// Proves: permanent failures, exhausted retries, non-JSON bodies and invalid envelopes all end
/// in the DLQ with the headers an operator needs, and the worker keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_malformed_messages_land_in_the_dlq_with_their_reason() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(secflow_worker::WorkerConfig {
        worker_id: Some("dlq-test-worker".into()),
        ..ns.worker_config()
    });
    let permanent = publish_tasks(&ns.broker(), &request("builtin.fail", json!({"class": "permanent", "code": "bad_target", "message": "target refused the scan"}), 1)).await.unwrap()[0];
    let mut exhausted_req = request(
        "builtin.fail",
        json!({"class": "transient", "code": "flaky"}),
        1,
    );
    exhausted_req.retry = serde_json::from_value(
        json!({"strategy": "fixed", "base_delay_ms": 100, "max_attempts": 3, "jitter": "none"}),
    )
    .unwrap();
    let exhausted = publish_tasks(&ns.broker(), &exhausted_req).await.unwrap()[0];
    let props = || lapin::BasicProperties::default().with_delivery_mode(2);
    ns.publish_raw("builtin.echo", b"this is not json", props())
        .await;
    ns.publish_raw("builtin.echo", br#"{"schema":1,"hello":"world"}"#, props())
        .await;

    let dead = ns.take_dlq(4, Duration::from_secs(20)).await;
    let mut by_code = HashMap::new();
    for d in &dead {
        let headers = d.properties.headers().as_ref();
        for name in [
            h::ERROR_CLASS,
            h::ERROR_CODE,
            h::ERROR_MESSAGE,
            h::DEAD_LETTER_REASON,
            h::WORKER_ID,
            h::ORIGIN_QUEUE,
            h::ORIGIN_EXCHANGE,
            h::ORIGIN_ROUTING_KEY,
        ] {
            assert!(
                h::get_str(headers, name).is_some(),
                "header {name} missing on {:?}",
                String::from_utf8_lossy(&d.data)
            );
        }
        for name in [h::RETRY_COUNT, h::FIRST_FAILURE_AT, h::LAST_FAILURE_AT] {
            assert!(h::get_u64(headers, name).is_some(), "header {name} missing");
        }
        assert_eq!(h::get_str(headers, h::WORKER_ID), Some("dlq-test-worker"));
        assert_eq!(
            h::get_str(headers, h::ORIGIN_QUEUE),
            Some(ns.topology().work_queue("default").as_str())
        );
        assert_eq!(
            h::get_str(headers, h::ORIGIN_EXCHANGE),
            Some(ns.topology().tasks_exchange().as_str())
        );
        by_code.insert(h::get_str(headers, h::ERROR_CODE).unwrap().to_string(), d);
    }
    let get = |code: &str, name: &str| {
        h::get_str(by_code[code].properties.headers().as_ref(), name).map(str::to_string)
    };
    let count =
        |code: &str| h::get_u64(by_code[code].properties.headers().as_ref(), h::RETRY_COUNT);

    assert_eq!(
        get("bad_target", h::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        get("bad_target", h::DEAD_LETTER_REASON).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        get("bad_target", h::ERROR_MESSAGE).as_deref(),
        Some("target refused the scan")
    );
    assert_eq!(
        by_code["bad_target"]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(permanent.to_string())
    );
    assert_eq!(count("bad_target"), Some(0));

    assert_eq!(
        get("flaky", h::DEAD_LETTER_REASON).as_deref(),
        Some("exhausted")
    );
    assert_eq!(
        get("flaky", h::ORIGIN_ROUTING_KEY).as_deref(),
        Some("builtin.fail"),
        "origin survives the delay queues"
    );
    assert_eq!(
        count("flaky"),
        Some(2),
        "two retries, then exhausted on the third attempt"
    );
    let first = h::get_u64(
        by_code["flaky"].properties.headers().as_ref(),
        h::FIRST_FAILURE_AT,
    )
    .unwrap();
    let last = h::get_u64(
        by_code["flaky"].properties.headers().as_ref(),
        h::LAST_FAILURE_AT,
    )
    .unwrap();
    assert!(
        last >= first + 150,
        "first/last failure times span the two retry delays ({first}..{last})"
    );
    assert_eq!(
        by_code["flaky"]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(exhausted.to_string())
    );

    assert_eq!(
        get("malformed_body", h::DEAD_LETTER_REASON).as_deref(),
        Some("malformed")
    );
    assert_eq!(
        by_code["malformed_body"].data, b"this is not json",
        "the original body is kept"
    );
    assert!(
        get("malformed_body", h::ERROR_MESSAGE)
            .unwrap()
            .contains("not JSON")
    );
    let schema_msg = get("invalid_envelope", h::ERROR_MESSAGE).unwrap();
    assert!(
        schema_msg.contains("task_id"),
        "the reason names the missing field: {schema_msg}"
    );
    assert_eq!(
        get("invalid_envelope", h::ERROR_CLASS).as_deref(),
        Some("validation")
    );

    // The worker survived all of it and still completes work.
    publish_tasks(&ns.broker(), &request("builtin.echo", json!({}), 1))
        .await
        .unwrap();
    tap.wait_until("an echo after the poison", Duration::from_secs(10), |ev| {
        ev.iter().any(|e| e.kind == "node.completed")
    })
    .await;
    worker.stop().await;
    wait_for(
        "DLQ drained by the test",
        Duration::from_secs(5),
        || async { ns.ready(&ns.topology().dlq()).await == 0 },
    )
    .await;
}

/// Proves: a namespace declared with one delivery limit refuses another with an error that
/// names the queue, instead of a bare PRECONDITION_FAILED.
#[tokio::test]
async fn conflicting_queue_settings_give_a_clear_error() {
    let ns = TestNs::new().await;
    let other = secflow_common::Topology::new(
        secflow_common::topology::Namespace::new(&ns.name).unwrap(),
        7,
    );
    let ch = ns.conn.create_channel().await.unwrap();
    let err = other
        .declare_pool(&ch, "default", &["#".into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&ns.topology().work_queue("default")) && err.contains("--delivery-limit"),
        "{err}"
    );
    // Declaring again with the same settings is harmless.
    let ch = ns.conn.create_channel().await.unwrap();
    ns.topology()
        .declare_pool(&ch, "default", &["#".into()])
        .await
        .unwrap();
}

/// Proves: publishing a type no pool is bound for is an error, not a silent drop.
#[tokio::test]
async fn unroutable_publish_is_an_error() {
    let ns = TestNs::new().await;
    let ch = ns.conn.create_channel().await.unwrap();
    ns.topology().delete_all(&ch, &["default"]).await.unwrap();
    let ch = ns.conn.create_channel().await.unwrap();
    ns.topology().declare_core(&ch).await.unwrap();
    let err = publish_tasks(&ns.broker(), &request("builtin.echo", json!({}), 3))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no queue is bound for routing key `builtin.echo`"),
        "{err}"
    );
}
