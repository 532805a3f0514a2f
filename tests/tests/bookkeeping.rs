//! Forged bookkeeping headers against a real worker and inspector: a rewritten retry count
//! never buys a task more attempts, a forged crash history never dead-letters a valid task, and
//! forged origin headers never steer a requeue out of the namespace.

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use secflow_common::{TaskEnvelope, amqp::copy_properties, bookkeeping, headers as h};
use secflow_tests::{EventTap, TestNs, inspector, publish, wait_for};
use serde_json::json;
use std::time::Duration;

/// A task that fails transiently on every attempt, allowed 2 attempts in all.
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

/// Attempts of `task` so far: each ends in a retry or a dead letter with the handler's code.
fn attempts(tap: &EventTap, task: uuid::Uuid) -> usize {
    count_attempts(&tap.snapshot(), task)
}

fn count_attempts(events: &[secflow_common::events::TaskEvent], task: uuid::Uuid) -> usize {
    events
        .iter()
        .filter(|e| e.task_id == Some(task))
        .filter(|e| e.error.as_ref().is_some_and(|err| err.code == "flaky"))
        .count()
}

/// Reason and code of a dead letter.
fn reason(d: &Delivery) -> (String, String) {
    let headers = d.properties.headers().as_ref();
    let get = |name| h::get_str(headers, name).unwrap_or_default().to_string();
    (get(h::DEAD_LETTER_REASON), get(h::ERROR_CODE))
}

/// Republishes `d` to the tasks exchange (as anyone with publish rights can) with its headers
/// changed by `edit`; the body and its signature are untouched.
async fn republish(ns: &TestNs, d: &Delivery, edit: impl FnOnce(&mut FieldTable)) {
    let mut headers = h::for_copy(d.properties.headers().as_ref());
    edit(&mut headers);
    let props = copy_properties(&d.properties, headers);
    ns.publish_unsigned("builtin.fail", &d.data, props).await;
}

/// Proves: a dead letter republished with its retry count reset to 0, or with the count
/// stripped, keeping the task's valid body signature, is dead-lettered as
/// `security`/`forged_bookkeeping` without running: the 2-attempt task runs twice, not 4 times.
/// A requeue by the inspector (which signs) keeps the count: one more attempt, then `exhausted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_retry_count_never_buys_more_attempts() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let task = always_flaky();
    let id = publish(&ns, std::slice::from_ref(&task)).await[0];
    let dead = ns.take_dlq(1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(reason(&dead).0, "exhausted");
    // The dead letter is confirmed before its event: wait for the event too.
    tap.wait_until("2 attempts reported", Duration::from_secs(10), |ev| {
        count_attempts(ev, id) >= 2
    })
    .await;
    assert_eq!(attempts(&tap, id), 2);
    let headers = dead.properties.headers().as_ref();
    assert_eq!(h::get_u64(headers, h::RETRY_COUNT), Some(1));
    assert!(h::get_str(headers, bookkeeping::SIGNATURE).is_some());

    republish(&ns, &dead, |t| h::set_u64(t, h::RETRY_COUNT, 0)).await;
    republish(&ns, &dead, |t| h::remove(t, &[h::RETRY_COUNT])).await;
    // Also without the bookkeeping signature: an unsigned retry count is a forgery too.
    republish(&ns, &dead, |t| {
        h::remove(t, &[bookkeeping::SIGNATURE, bookkeeping::KEY_ID]);
        h::set_u64(t, h::RETRY_COUNT, 0);
    })
    .await;
    let rejected = ns.take_dlq(3, Duration::from_secs(20)).await;
    for d in &rejected {
        assert_eq!(
            reason(d),
            ("security".to_string(), "forged_bookkeeping".to_string()),
            "{:?}",
            d.properties.headers()
        );
    }
    assert_eq!(attempts(&tap, id), 2, "the forged copies never ran");

    // The genuine dead letter, requeued by the inspector (which signs), keeps its count.
    let publisher = secflow_common::amqp::Publisher::new(&ns.conn)
        .await
        .unwrap();
    let props = copy_properties(&dead.properties, h::for_copy(headers));
    publisher
        .publish(&ns.topology().dlx(), "", &dead.data, props, true)
        .await
        .unwrap();
    let out = inspector(&ns, &["requeue", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = ns.take_dlq(1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        reason(&back).0,
        "exhausted",
        "the requeued copy was believed"
    );
    let headers = back.properties.headers().as_ref();
    assert_eq!(h::get_u64(headers, h::REQUEUE_COUNT), Some(1));
    tap.wait_until("3 attempts reported", Duration::from_secs(10), |ev| {
        count_attempts(ev, id) >= 3
    })
    .await;
    assert_eq!(
        attempts(&tap, id),
        3,
        "one more attempt, not a fresh budget"
    );
    worker.stop().await;
}

/// Proves: a validly signed task published with a forged `x-unsettled-before` (no bookkeeping
/// signature) runs and completes instead of being dead-lettered unrun as a crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_crash_history_does_not_dead_letter_a_valid_task() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let task = TaskEnvelope::new("builtin.echo", json!({"hello": "world"}));
    let mut headers = FieldTable::default();
    h::set_u64(&mut headers, h::UNSETTLED_BEFORE, 99);
    h::set_u64(&mut headers, h::DEFER_COUNT, 10_000);
    let props = secflow_common::amqp::json_properties(&task.task_id.to_string(), headers);
    ns.publish_raw("builtin.echo", &task.to_body(), props).await;
    tap.wait_until("the task completed", Duration::from_secs(20), |events| {
        events
            .iter()
            .any(|e| e.task_id == Some(task.task_id) && e.kind == "node.completed")
    })
    .await;
    worker.stop().await;
    assert_eq!(
        ns.ready(&ns.topology().dlq()).await,
        0,
        "nothing dead-lettered"
    );
}

/// A private queue bound to `amq.direct` under `key`: where a forged origin would send a copy.
async fn trap(ns: &TestNs, key: &str) -> lapin::Consumer {
    let ch = ns.conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        "amq.direct".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        q.name().clone(),
        "trap".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap()
}

/// Proves: dead letters whose `x-origin-exchange` / `x-origin-routing-key` point elsewhere
/// are requeued only to the namespace's tasks exchange under the task's type: one whose
/// forged origin came without a bookkeeping signature is requeued there; one whose signed
/// origin was rewritten is refused (it stays) until `--reset-retries` starts it over, again
/// into the namespace's own work queue. Nothing reaches the exchange the headers name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_only_goes_to_the_namespace_tasks_exchange() {
    let ns = TestNs::new().await;
    let key = format!("{}-stolen", ns.name);
    let mut stolen = trap(&ns, &key).await;
    let worker = ns.spawn_worker(ns.worker_config());
    let mut doomed = always_flaky();
    doomed.retry = serde_json::from_value(json!({"strategy": "none", "max_attempts": 1})).unwrap();
    let mut doomed2 = doomed.clone();
    doomed2.task_id = uuid::Uuid::now_v7();
    let ids = publish(&ns, &[doomed, doomed2]).await;
    let dead = ns.take_dlq(2, Duration::from_secs(20)).await;
    worker.stop().await;
    let dlx = ns.topology().dlx();
    let forge = |t: &mut FieldTable| {
        h::set_str(t, h::ORIGIN_EXCHANGE, "amq.direct");
        h::set_str(t, h::ORIGIN_ROUTING_KEY, &key);
    };
    let publisher = secflow_common::amqp::Publisher::new(&ns.conn)
        .await
        .unwrap();
    for (i, d) in dead.iter().enumerate() {
        let mut headers = h::for_copy(d.properties.headers().as_ref());
        if i == 0 {
            // Unsigned: only what a producer's task would carry, plus the forged origin.
            bookkeeping::strip(&mut headers);
        }
        forge(&mut headers);
        let props = copy_properties(&d.properties, headers);
        publisher
            .publish(&dlx, "", &d.data, props, true)
            .await
            .unwrap();
    }
    let dlq = ns.topology().dlq();
    wait_for(
        "both forged dead letters in the DLQ",
        Duration::from_secs(10),
        || async { ns.ready(&dlq).await == 2 },
    )
    .await;
    let id_of = |d: &Delivery| d.properties.message_id().as_ref().unwrap().to_string();
    let (unsigned, rewritten) = (id_of(&dead[0]), id_of(&dead[1]));

    let out = inspector(&ns, &["requeue", &unsigned, &rewritten]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the rewritten one is refused");
    assert!(
        stderr.contains(&rewritten) && stderr.contains("do not match"),
        "{stderr}"
    );
    let work = ns.topology().work_queue("default");
    wait_for(
        "the unsigned one in the work queue",
        Duration::from_secs(10),
        || async { ns.ready(&work).await == 1 },
    )
    .await;
    assert_eq!(ns.ready(&dlq).await, 1, "the rewritten one stays");

    let out = inspector(&ns, &["requeue", "--reset-retries", &rewritten]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "both in the work queue",
        Duration::from_secs(10),
        || async { ns.ready(&work).await == 2 },
    )
    .await;
    let requeued = ns.take(&work, 2, Duration::from_secs(5)).await;
    for d in &requeued {
        let headers = d.properties.headers().as_ref();
        assert_eq!(d.exchange.as_str(), ns.topology().tasks_exchange());
        assert_eq!(d.routing_key.as_str(), "builtin.fail");
        assert_eq!(h::get_u64(headers, h::REQUEUE_COUNT), Some(1));
        assert!(h::get_str(headers, bookkeeping::SIGNATURE).is_some());
        assert_ne!(h::get_str(headers, h::ORIGIN_EXCHANGE), Some("amq.direct"));
    }
    let none = tokio::time::timeout(Duration::from_millis(500), stolen.next()).await;
    assert!(none.is_err(), "a copy reached the forged origin");
    assert_eq!(ids.len(), 2);
}
