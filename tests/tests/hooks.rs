//! Hooks against the real RabbitMQ and Redis: recipe webhooks retried and received once each,
//! signed; a fleet hook surviving its worker's SIGKILL without a third delivery; a hanging
//! receiver that does not slow tasks; exec hooks under the allowlist; bad hooks refused.

use secflow_common::events::TaskEvent;
use secflow_producer::publish_tasks;
use secflow_tests::{
    KillOnDrop, TestNs, command,
    hooks::{
        Answer, HOOK_SECRET, HookReceiver, drain_noop, signature_valid, spawn_counted, webhook_file,
    },
    recipe_file, redis_done_markers, request, wait_for,
};
use secflow_worker::WorkerStats;
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

/// Proves: a recipe's `on_node_complete` and `on_workflow_complete` webhooks, to a receiver
/// that answers 500 twice and 200 after, receive every node's completion and the run's end
/// with a 2xx exactly once, signed with the fleet's secret; the first delivery took 2 retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_webhooks_are_retried_signed_and_received_once_each() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let receiver = HookReceiver::start(|n| Answer::Status(if n < 2 { 500 } else { 200 })).await;
    let url = receiver.url();
    // `b` sleeps long enough that `a`'s three attempts (backoff about 1 s, then 2 s) come first.
    let yaml = format!(
        "version: 1\nname: hooked\nnodes:\n  - {{id: a, type: builtin.echo, config: {{x: 1}}, outputs: [out]}}\n  - {{id: b, type: builtin.sleep, config: {{ms: 6000}}, inputs: {{x: a.out}}}}\nhooks:\n  on_node_complete:\n    - url: \"{url}\"\n  on_workflow_complete:\n    - url: \"{url}\"\n      max_attempts: 3\n"
    );
    let path = recipe_file(&ns, "hooked", &yaml);
    // Submitted first: the worker finds the hooks queue the submission declared at once.
    let run = secflow_producer::recipes::submit(&ns.broker(), &path, &BTreeMap::new(), None, true)
        .await
        .unwrap()
        .run_id;
    let mut cfg = ns.worker_config();
    cfg.hook_secret = Some(HOOK_SECRET.into());
    cfg.grace_secs = 5;
    let (worker, stats) = spawn_counted(cfg);
    wait_for(
        "two completions and the run's end delivered",
        Duration::from_secs(60),
        || async { receiver.delivered().len() >= 3 },
    )
    .await;
    // A graceful stop finishes what the dispatcher holds: nothing is left to deliver.
    worker.stop().await;
    assert_eq!(ns.ready(&ns.topology().hooks_queue()).await, 0);

    let requests = receiver.requests();
    let delivered = receiver.delivered();
    let ids: HashSet<&str> = delivered
        .iter()
        .map(|r| r.header("x-secflow-delivery"))
        .collect();
    assert_eq!(delivered.len(), 3, "{requests:#?}");
    assert_eq!(ids.len(), 3, "a delivery was received twice: {ids:?}");
    assert_eq!(WorkerStats::get(&stats.hooks_delivered), 3);
    let first = requests[0].header("x-secflow-delivery");
    let attempts: Vec<Answer> = requests
        .iter()
        .filter(|r| r.header("x-secflow-delivery") == first)
        .map(|r| r.answer)
        .collect();
    assert_eq!(
        attempts,
        [
            Answer::Status(500),
            Answer::Status(500),
            Answer::Status(200)
        ],
        "the first delivery: 2 retries"
    );
    assert!(
        first.starts_with(&format!("run:{run}:on_node_complete:0:")),
        "{first}"
    );
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        assert!(
            signature_valid(r, HOOK_SECRET),
            "bad signature: {:?}",
            r.headers
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("x-secflow-timestamp").parse::<u64>().is_ok());
        let event: TaskEvent = serde_json::from_slice(&r.body).expect("one event per request");
        assert_eq!(event.kind, r.header("x-secflow-event"));
        assert_eq!(event.run_id, Some(run));
        let hook = if event.kind == "node.completed" {
            "on_node_complete"
        } else {
            "on_workflow_complete"
        };
        let expected = format!("run:{run}:{hook}:0:{}", event.event_id.unwrap());
        assert_eq!(r.header("x-secflow-delivery"), expected);
        if r.ok() {
            *kinds.entry(event.kind).or_default() += 1;
        }
    }
    assert_eq!(kinds.get("node.completed"), Some(&2), "{kinds:?}");
    assert_eq!(kinds.get("workflow.completed"), Some(&1), "{kinds:?}");
    // What was received is what the fleet published.
    let published: HashSet<String> = tap
        .snapshot()
        .into_iter()
        .filter(|e| e.run_id == Some(run) && e.kind != "node.retrying")
        .filter_map(|e| e.event_id)
        .collect();
    for r in &delivered {
        let event: TaskEvent = serde_json::from_slice(&r.body).unwrap();
        assert!(published.contains(&event.event_id.unwrap()));
    }
}

/// Proves: a fleet hook's event whose delivery hangs when its worker is SIGKILLed is delivered
/// by the next worker, and once delivered, its marker stops a third delivery of a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_hook_outlives_a_killed_worker_and_its_marker_stops_a_third_delivery() {
    let ns = TestNs::new().await;
    let receiver = HookReceiver::start(|n| {
        if n == 0 {
            Answer::Hang
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let hooks = webhook_file(&ns, &receiver.url(), "60s");
    let mut first =
        KillOnDrop(ns.spawn_worker_process(&["--hooks", &hooks, "--hook-secret", HOOK_SECRET]));
    let task = publish_tasks(&ns.broker(), &request("builtin.echo", json!({"n": 1}), 1))
        .await
        .unwrap()[0];
    let redis = secflow_common::config::DEFAULT_REDIS_URL;
    wait_for(
        "the task done and its hook hanging",
        Duration::from_secs(30),
        || async {
            receiver.requests().len() == 1
                && redis_done_markers(redis, &ns.name).await.unwrap_or(0) == 1
        },
    )
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let mut cfg = ns.worker_config();
    cfg.hooks = Some(hooks.clone().into());
    cfg.hook_secret = Some(HOOK_SECRET.into());
    let (second, stats) = spawn_counted(cfg);
    wait_for(
        "the event delivered by the next worker",
        Duration::from_secs(30),
        || async { receiver.delivered().len() == 1 },
    )
    .await;
    let requests = receiver.requests();
    let delivery = format!("fleet:on_node_complete:0:{task}:node.completed");
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.header("x-secflow-delivery") == delivery)
    );

    // A copy of the event comes again (as after an ack lost with a connection).
    let mut copy = b"[".to_vec();
    copy.extend_from_slice(&requests[1].body);
    copy.push(b']');
    let publisher = secflow_common::amqp::Publisher::new(&ns.conn)
        .await
        .unwrap();
    let props = secflow_common::amqp::json_properties("copy", Default::default());
    publisher
        .publish("", &ns.topology().hooks_queue(), &copy, props, true)
        .await
        .unwrap();
    wait_for("the copy skipped", Duration::from_secs(30), || async {
        WorkerStats::get(&stats.hooks_skipped) == 1
    })
    .await;
    second.stop().await;
    assert_eq!(receiver.requests().len(), 2, "a third delivery was made");
    assert_eq!(WorkerStats::get(&stats.hooks_delivered), 1);
    assert_eq!(ns.ready(&ns.topology().hooks_queue()).await, 0);
}

/// Proves: a receiver that never answers does not slow tasks: 2,000 no-op tasks drain on one
/// worker with and without a hanging fleet hook (both rates printed; no timed assertion), and
/// the hook's deliveries are still pending when the tasks are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_does_not_hold_tasks() {
    const TASKS: u64 = 2_000;
    let plain = drain_noop(TASKS, None).await;
    let plain_rate = plain.per_sec();
    plain.worker.stop().await;
    let receiver = HookReceiver::start(|_| Answer::Hang).await;
    let hooked = drain_noop(TASKS, Some(&receiver.url())).await;
    println!(
        "{TASKS} no-op tasks on one worker: {plain_rate:.0} tasks/s without hooks, {:.0} tasks/s with a hanging fleet hook",
        hooked.per_sec()
    );
    wait_for("hook requests hanging", Duration::from_secs(30), || async {
        !receiver.requests().is_empty()
    })
    .await;
    assert!(receiver.delivered().is_empty());
    let stats = &hooked.stats;
    assert_eq!(WorkerStats::get(&stats.completed), TASKS);
    assert_eq!(WorkerStats::get(&stats.hooks_delivered), 0);
    assert_eq!(
        WorkerStats::get(&stats.hooks_failed),
        0,
        "deliveries are still retrying"
    );
    hooked.worker.stop().await;
}

/// Proves: an exec hook runs its program with the event on stdin under the pool's allowlist;
/// a hook program outside the allowlist is reported as `hook.failed` with class `security`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_hooks_get_the_event_on_stdin_within_the_allowlist() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let dir = std::env::temp_dir().join(format!("secflow-{}-exec-hooks", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("event.json");
    let writer = "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())";
    let yaml = format!(
        "hooks:\n  on_node_complete:\n    - exec: [python3, -c, \"{writer}\", \"{}\"]\n    - exec: [\"true\"]\n",
        out.display()
    );
    let mut cfg = ns.worker_config();
    cfg.exec_allow = vec!["sh".into(), "python3".into()];
    cfg.hooks = Some(recipe_file(&ns, "exec-hooks", &yaml).into());
    cfg.hook_secret = Some(HOOK_SECRET.into());
    let (worker, stats) = spawn_counted(cfg);
    let task = publish_tasks(&ns.broker(), &request("builtin.echo", json!({"n": 1}), 1))
        .await
        .unwrap()[0];
    tap.wait_until("hook.failed", Duration::from_secs(30), |events| {
        events.iter().any(|e| e.kind == "hook.failed")
    })
    .await;
    wait_for(
        "the hook program's file",
        Duration::from_secs(30),
        || async { WorkerStats::get(&stats.hooks_delivered) == 1 },
    )
    .await;
    let written: TaskEvent = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(written.kind, "node.completed");
    assert_eq!(written.task_id, Some(task));
    let failed = tap.of_kind("hook.failed");
    assert_eq!(failed.len(), 1);
    let error = failed[0].error.clone().unwrap();
    assert_eq!(
        (error.class.as_str(), error.code.as_str()),
        ("security", "exec_not_allowed")
    );
    let output = failed[0].output.clone().unwrap();
    assert_eq!(output["hook"], "fleet:on_node_complete:1");
    assert_eq!(output["attempts"], 1, "a security failure is not retried");
    assert_eq!(failed[0].task_id, Some(task));
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Proves: hooks written into a run's record in Redis without a signing key the fleet holds
/// are refused, not delivered (a fleet hook on the same events is, as a witness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_hooks_planted_in_redis_without_the_signing_key_are_refused() {
    let ns = TestNs::new().await;
    let receiver = HookReceiver::start(|_| Answer::Status(200)).await;
    let url = receiver.url();
    let yaml = format!(
        "version: 1\nname: planted\nnodes:\n  - {{id: a, type: builtin.noop}}\nhooks:\n  on_node_complete:\n    - url: \"{url}\"\n"
    );
    let path = recipe_file(&ns, "planted", &yaml);
    let run = secflow_producer::recipes::submit(&ns.broker(), &path, &BTreeMap::new(), None, true)
        .await
        .unwrap()
        .run_id;
    // Someone with Redis access but not the signing keys replaces the run's hooks.
    let forger = secflow_common::signing::Keyring::parse("evil:0123456789abcdef0123").unwrap();
    let spec: secflow_common::recipe::Recipe = secflow_common::recipe::parse("r", &yaml).unwrap();
    let sealed =
        secflow_common::hooks::SealedHooks::seal(&spec.hooks, &run.to_string(), Some(&forger))
            .unwrap();
    let client = redis::Client::open(secflow_common::config::DEFAULT_REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("sf:{{{}:run:{run}}}:hooks", ns.name);
    redis::cmd("SET")
        .arg(&key)
        .arg(serde_json::to_string(&sealed).unwrap())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut cfg = ns.worker_config();
    cfg.hooks = Some(webhook_file(&ns, &url, "10s").into());
    cfg.hook_secret = Some(HOOK_SECRET.into());
    let (worker, _) = spawn_counted(cfg);
    wait_for(
        "the fleet hook delivered",
        Duration::from_secs(30),
        || async { !receiver.delivered().is_empty() },
    )
    .await;
    // The run's hooks were weighed together with the fleet's, before any delivery started.
    worker.stop().await;
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("x-secflow-delivery").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].starts_with("fleet:on_node_complete:0:"), "{ids:?}");
}

/// Proves: bad hooks stop the worker at start and make `producer validate` fail, each error
/// naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hooks_are_refused_naming_the_field() {
    let ns = TestNs::new().await;
    let bad = recipe_file(
        &ns,
        "bad-hooks",
        "hooks:\n  on_node_complete:\n    - url: \"ftp://x\"\n",
    );
    let out = command("worker")
        .args([
            "--namespace",
            &ns.name,
            "--hooks",
            &bad,
            "--hook-secret",
            HOOK_SECRET,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "hooks.on_node_complete[0].url: `ftp://x` must be an http:// or https:// URL"
        ),
        "{stderr}"
    );
    let good = webhook_file(&ns, "http://127.0.0.1:9/x", "5s");
    let out = command("worker")
        .args(["--namespace", &ns.name, "--hooks", &good])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no hook secret is set"), "{stderr}");

    let recipe = recipe_file(
        &ns,
        "recipe-bad-hooks",
        "version: 1\nname: r\nnodes:\n  - {id: a, type: builtin.noop}\nhooks:\n  on_workflow_complete:\n    - {url: \"http://x\", exec: [notify]}\n    - {exec: [notify], timeout: 90s}\n",
    );
    let out = command("producer")
        .args(["validate", &recipe])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        "hooks.on_workflow_complete[0]: has both `url` and `exec`",
        "hooks.on_workflow_complete[1].timeout: `90s` must be between 100 ms and 60 s",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in {stderr}"
        );
    }
}

/// Proves: a worker without hooks that looks for the hooks queue (at start and every 30 s,
/// while it does not exist) keeps its connection: tasks in flight across a look are not handed
/// back, each runs once. (The look used to close a channel on the worker's own connection,
/// which the worker took for a lost connection: its tasks went back to the queue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_for_the_hooks_queue_does_not_cost_the_worker_its_connection() {
    let ns = TestNs::new().await;
    // Longer than the interval between looks, so at least one happens while they run.
    let ms = secflow_worker::hooks::CHECK_EVERY.as_millis() as u64 + 2_000;
    let tasks: Vec<secflow_common::TaskEnvelope> = (0..8)
        .map(|_| secflow_common::TaskEnvelope::new("builtin.sleep", json!({ "ms": ms })))
        .collect();
    secflow_tests::publish(&ns, &tasks).await;
    let (worker, stats) = spawn_counted(ns.worker_config());
    wait_for(
        "all 8 tasks to complete",
        Duration::from_millis(ms + 30_000),
        || async { WorkerStats::get(&stats.completed) == 8 },
    )
    .await;
    worker.stop().await;
    assert_eq!(
        WorkerStats::get(&stats.handed_back),
        0,
        "tasks were handed back"
    );
    assert_eq!(WorkerStats::get(&stats.completed), 8);
}
