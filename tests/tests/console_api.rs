//! The web console's API against the real RabbitMQ and Redis: no access without a token, the
//! read-only role cannot act, a cookie session must send its CSRF token, a requeue through the
//! API moves the dead letter back to its work queue, and every action is announced as an
//! `operator.action` event that names who took it, through the console.

mod console_support;

use console_support::{Console, OPERATOR, READ, SECRET, call, dead_letter, tap, tap_actions};
use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, recipe_file, wait_for};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Waits for the announcement of `action` and returns it.
async fn announced(actions: &Arc<Mutex<Vec<Value>>>, action: &str) -> Value {
    let find = || {
        actions
            .lock()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .cloned()
    };
    wait_for(
        &format!("the {action} event"),
        Duration::from_secs(20),
        || async { find().is_some() },
    )
    .await;
    find().unwrap()
}

/// Proves: without a token (or with a wrong one) the API answers 401 and the page sends the
/// browser to sign in; the read-only token reads but gets 403 for a requeue; a browser session
/// (HttpOnly, SameSite=Strict cookie) must send its CSRF token: none or a forged one is 403, the
/// right one acts, and the action's event names the session's role and the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_csrf_guard_every_action() {
    let ns = TestNs::new().await;
    let actions = tap_actions(&ns).await;
    let console = Console::start(&ns).await;

    let anonymous = console.get("/api/runs", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous.header("www-authenticate").is_some());
    assert_eq!(
        console
            .get("/api/dlq", Some("not-a-console-token"))
            .await
            .status,
        401
    );
    let page = console.get("/", None).await;
    assert_eq!(
        (page.status, page.header("location")),
        (303, Some("/login"))
    );

    let read = console.get("/api/dlq", Some(READ)).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let refused = console
        .post("/api/dlq/requeue", READ, &json!({"all": true}))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("read-only")
    );
    let refused = console
        .post("/api/breakers/svc-a", READ, &json!({"action": "open"}))
        .await;
    assert_eq!(refused.status, 403);

    let wrong = call(console.port, "GET", "/login?token=nope", &[], None).await;
    assert_eq!(wrong.status, 401);
    let form = format!("token={OPERATOR}");
    let signed_in = call(
        console.port,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&form),
    )
    .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let set_cookie = signed_in.header("set-cookie").unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let session = call(
        console.port,
        "GET",
        "/api/session",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    let csrf = session.json()["csrf"].as_str().unwrap().to_string();
    assert_eq!(session.json()["role"], "operator");

    let body = json!({"action": "open", "for": "10m", "reason": "maintenance"}).to_string();
    let post = |headers: Vec<(&'static str, String)>| {
        let body = body.clone();
        let port = console.port;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(port, "POST", "/api/breakers/svc-a", &headers, Some(&body)).await
        }
    };
    let json_type = ("Content-Type", "application/json".to_string());
    let no_csrf = post(vec![("Cookie", cookie.clone()), json_type.clone()]).await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let forged = post(vec![
        ("Cookie", cookie.clone()),
        json_type.clone(),
        ("X-CSRF-Token", "0".repeat(64)),
    ])
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.json()["error"].as_str().unwrap().contains("CSRF"));
    assert!(
        actions.lock().unwrap().is_empty(),
        "nothing refused was done or announced"
    );
    let opened = post(vec![
        ("Cookie", cookie.clone()),
        json_type,
        ("X-CSRF-Token", csrf),
    ])
    .await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    assert_eq!(opened.json()["state"]["mode"], "open");
    let event = announced(&actions, "breaker.open").await;
    assert_eq!(
        (
            event["by"].as_str(),
            event["via"].as_str(),
            event["target"].as_str()
        ),
        (Some("console:operator"), Some("console"), Some("svc-a"))
    );
    assert_eq!(event["reason"], "maintenance");
    let breakers = console.get("/api/breakers", Some(READ)).await.json();
    assert_eq!(breakers["breakers"][0]["state"], "held_open");
}

/// Proves: the API lists the dead letters (paginated), shows one with its record and exports
/// them, the secret in their configs masked everywhere; a requeue
/// of one selected task puts it back in its work queue and leaves the others; a purge without
/// the right confirmation removes nothing, with it removes the selection; each action's
/// `operator.action` event says what was done, by whom, through the console, and the audit
/// trail gets each task's `task.requeued` / `task.purged` with the console's caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_and_purge_through_the_api_act_and_are_announced() {
    let ns = TestNs::new().await;
    let ids = dead_letter(&ns, 3).await;
    let actions = tap_actions(&ns).await;
    let trail = tap(&ns, "task.*").await;
    let console = Console::start(&ns).await;
    let dlq = ns.topology().dlq();
    let work = ns.topology().work_queue("default");

    let page = console
        .get("/api/dlq?limit=2&type=builtin.fail", Some(READ))
        .await
        .json();
    assert_eq!(
        (page["total"].as_u64(), page["matched"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let one = console
        .get(&format!("/api/dlq/task/{}", ids[0]), Some(READ))
        .await
        .json();
    assert_eq!(one["record"]["class"], "permanent");
    assert!(!one["timeline"].as_array().unwrap().is_empty());
    assert!(
        !one.to_string().contains(SECRET),
        "the task's secret is masked"
    );
    let export = console.get("/api/dlq/export", Some(READ)).await;
    assert_eq!((export.status, export.body.lines().count()), (200, 3));
    assert!(!export.body.contains(SECRET), "exports are masked");

    let requeued = console
        .post(
            "/api/dlq/requeue",
            OPERATOR,
            &json!({"ids": [ids[0].to_string()], "reason": "fixed upstream"}),
        )
        .await;
    assert_eq!(requeued.status, 200, "{}", requeued.body);
    assert_eq!(
        (
            requeued.json()["requeued"].as_u64(),
            requeued.json()["selected"].as_u64()
        ),
        (Some(1), Some(1))
    );
    wait_for(
        "the task back in its work queue",
        Duration::from_secs(20),
        || async { ns.ready(&work).await == 1 && ns.ready(&dlq).await == 2 },
    )
    .await;
    let back = ns.take(&work, 1, Duration::from_secs(10)).await;
    assert_eq!(
        back[0]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(ids[0].to_string())
    );
    let event = announced(&actions, "dlq.requeue").await;
    assert_eq!(
        (
            event["by"].as_str(),
            event["via"].as_str(),
            event["reason"].as_str()
        ),
        (
            Some("console:operator"),
            Some("console"),
            Some("fixed upstream")
        )
    );
    assert_eq!(event["output"]["requeued"], 1);

    let unconfirmed = console
        .post(
            "/api/dlq/purge",
            OPERATOR,
            &json!({"all": true, "confirm": 5}),
        )
        .await;
    assert_eq!(unconfirmed.status, 409, "{}", unconfirmed.body);
    let why = unconfirmed.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("\"confirm\": 2"), "{why}");
    assert_eq!(
        ns.ready(&dlq).await,
        2,
        "an unconfirmed purge removes nothing"
    );
    let purged = console
        .post(
            "/api/dlq/purge",
            OPERATOR,
            &json!({"all": true, "confirm": 2}),
        )
        .await;
    assert_eq!(
        (purged.status, purged.json()["purged"].as_u64()),
        (200, Some(2))
    );
    assert_eq!(ns.ready(&dlq).await, 0);
    let event = announced(&actions, "dlq.purge").await;
    assert_eq!(event["by"], "console:operator");
    // The audit trail has one event per task, naming the console's caller.
    wait_for(
        "the trail's task events",
        Duration::from_secs(20),
        || async { trail.lock().unwrap().len() >= 3 },
    )
    .await;
    let trail = trail.lock().unwrap().clone();
    let of = |kind: &str| -> Vec<&Value> { trail.iter().filter(|e| e["kind"] == kind).collect() };
    let requeued = of("task.requeued");
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0]["task_id"], ids[0].to_string());
    assert_eq!(of("task.purged").len(), 2);
    assert!(
        trail.iter().all(|e| e["by"] == "console:operator"),
        "{trail:?}"
    );
}

/// Proves: a run's cancel and resume through the API are `producer cancel` and `resume`: a
/// cancelled run ends `cancelled`, a second cancel is 409; a failed node resumed by itself runs
/// again and its run succeeds; both are announced with who did them; an unknown run is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_resume_runs_through_the_api() {
    let ns = TestNs::new().await;
    let actions = tap_actions(&ns).await;
    let worker = ns.spawn_worker(ns.worker_config());
    let console = Console::start(&ns).await;
    let marker = std::env::temp_dir().join(format!("{}-ready", ns.name));
    let yaml = format!(
        "version: 1\nname: console-runs\nnodes:\n  - id: wait\n    type: builtin.sleep\n    config: {{ ms: 60000 }}\n  - id: check\n    type: exec\n    config: {{ argv: [sh, -c, \"test -f {}\"] }}\n    retry: {{ max_attempts: 1 }}\n",
        marker.display()
    );
    let recipe = recipe_file(&ns, "runs", &yaml);
    let run = submit(&ns.broker(), &recipe, &BTreeMap::new(), None, false)
        .await
        .unwrap()
        .run_id
        .to_string();
    let node_state = |node: &'static str| {
        let (console, run) = (&console, &run);
        async move {
            let r = console
                .get(&format!("/api/runs/{run}"), Some(READ))
                .await
                .json();
            let nodes = r["nodes"].as_array().cloned().unwrap_or_default();
            let n = nodes.iter().find(|n| n["id"] == node).cloned();
            (
                r["status"].as_str().map(str::to_string),
                n.map(|n| n["state"].clone()),
            )
        }
    };
    wait_for("the check node failed", Duration::from_secs(30), || async {
        node_state("check").await.1 == Some(json!("failed"))
    })
    .await;
    // The work queue's row says how long the messages taken from it had waited (its workers
    // report it with their heartbeat).
    let work_queue = ns.topology().work_queue("default");
    wait_for(
        "the queue's wait reported",
        Duration::from_secs(10),
        || async {
            let q = console.get("/api/queues", Some(READ)).await.json();
            q["queues"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["queue"] == work_queue.as_str() && r["waited_ms"].is_u64())
        },
    )
    .await;
    std::fs::write(&marker, b"ready").unwrap();
    let resumed = console
        .post(
            &format!("/api/runs/{run}/resume"),
            OPERATOR,
            &json!({"node": "check"}),
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.json()["resumed"], json!(["check"]));
    wait_for(
        "the resumed node succeeded",
        Duration::from_secs(30),
        || async { node_state("check").await.1 == Some(json!("succeeded")) },
    )
    .await;
    let event = announced(&actions, "run.resume").await;
    assert_eq!(
        (event["by"].as_str(), event["target"].as_str()),
        (Some("console:operator"), Some(run.as_str()))
    );

    let cancelled = console
        .post(
            &format!("/api/runs/{run}/cancel"),
            OPERATOR,
            &json!({"reason": "done"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    wait_for("the run cancelled", Duration::from_secs(30), || async {
        node_state("wait").await.0.as_deref() == Some("cancelled")
    })
    .await;
    let again = console
        .post(&format!("/api/runs/{run}/cancel"), OPERATOR, &json!({}))
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(announced(&actions, "run.cancel").await["reason"], "done");
    let unknown = console
        .get(&format!("/api/runs/{}", uuid::Uuid::now_v7()), Some(READ))
        .await;
    assert_eq!(unknown.status, 404);
    worker.stop().await;
    let _ = std::fs::remove_file(&marker);
}

/// Proves: `dlq-inspector serve` refuses to start without a token, naming the variables and
/// `--no-auth`, and refuses `--no-auth` off loopback.
#[test]
fn serve_needs_a_token_unless_no_auth_on_loopback() {
    let run = |args: &[&str]| {
        secflow_tests::command("dlq-inspector")
            .env_remove(secflow_dlq_inspector::console::TOKEN_ENV)
            .env_remove(secflow_dlq_inspector::console::READ_TOKEN_ENV)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["serve", "--addr", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("SECFLOW_CONSOLE_TOKEN") && err.contains("--no-auth"),
        "{err}"
    );
    let out = run(&["serve", "--addr", "0.0.0.0:0", "--no-auth"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
