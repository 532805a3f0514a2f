//! The `http` and `exec` handlers through the whole fleet path: a local HTTP server plays the
//! scanned service; retries, Retry-After and dead-lettering are observed on the events.

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use secflow_producer::{PublishRequest, publish_tasks};
use secflow_tests::TestNs;
use serde_json::{Value, json};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

/// Serves `/flaky` (429 with Retry-After: 1 on the first call, then 200), `/missing` (404),
/// and `/slow` (answers after 5 s). Returns its base URL.
async fn serve() -> String {
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/flaky",
            get(move || {
                let calls = Arc::clone(&calls);
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        )
                            .into_response()
                    } else {
                        (
                            StatusCode::OK,
                            [("content-type", "application/json")],
                            r#"{"ok":true}"#,
                        )
                            .into_response()
                    }
                }
            }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such page") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn request(node_type: &str, config: Value) -> PublishRequest {
    PublishRequest {
        node_type: node_type.into(),
        config,
        count: 1,
        retry: None,
        timeout_ms: None,
    }
}

/// Proves: a 429 is retried no sooner than its Retry-After and then completes; a 404 is
/// dead-lettered at once as permanent; a request past the task timeout is a transient timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_statuses_map_to_retries_and_dead_letters() {
    let ns = TestNs::new().await;
    let base = serve().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let mut flaky = request("http", json!({ "url": format!("{base}/flaky") }));
    flaky.retry = serde_json::from_value(json!({"base_delay_ms": 10, "jitter": "none"})).unwrap();
    let flaky = publish_tasks(&ns.broker(), &flaky).await.unwrap()[0];
    let missing = publish_tasks(
        &ns.broker(),
        &request("http", json!({ "url": format!("{base}/missing") })),
    )
    .await
    .unwrap()[0];
    let mut slow = request("http", json!({ "url": format!("{base}/slow") }));
    slow.timeout_ms = Some(300);
    slow.retry = serde_json::from_value(json!({"max_attempts": 1})).unwrap();
    let slow = publish_tasks(&ns.broker(), &slow).await.unwrap()[0];

    tap.wait_until("three outcomes", Duration::from_secs(20), |ev| {
        let done = |id, kind: &str| ev.iter().any(|e| e.task_id == Some(id) && e.kind == kind);
        done(flaky, "node.completed")
            && done(missing, "node.dead_lettered")
            && done(slow, "node.dead_lettered")
    })
    .await;
    worker.stop().await;
    let events = tap.snapshot();
    let of = |id| events.iter().filter(move |e| e.task_id == Some(id));

    let retry = of(flaky).find(|e| e.kind == "node.retrying").unwrap();
    assert_eq!(retry.error.as_ref().unwrap().code, "rate_limited");
    assert!(
        retry.next_delay_ms.unwrap() >= 1000,
        "Retry-After: 1 beats the 10 ms backoff"
    );
    let done = of(flaky).find(|e| e.kind == "node.completed").unwrap();
    assert!(done.observed_delay_ms.unwrap() >= 1000);
    assert_eq!(done.output.as_ref().unwrap()["body"], r#"{"ok":true}"#);

    let dead = of(missing)
        .find(|e| e.kind == "node.dead_lettered")
        .unwrap();
    assert_eq!(dead.error.as_ref().unwrap().class, "permanent");
    assert!(dead.error.as_ref().unwrap().message.contains("404"));
    assert_eq!(of(missing).count(), 1, "a 404 is never retried");

    let timed_out = of(slow).find(|e| e.kind == "node.dead_lettered").unwrap();
    assert_eq!(
        (
            timed_out.error.as_ref().unwrap().class.as_str(),
            timed_out.error.as_ref().unwrap().code.as_str()
        ),
        ("transient", "timeout")
    );
}
