//! `dlq-inspector requeue --pace auto` against the real broker and Redis: tasks of a service
//! whose breaker is held stay in the DLQ while the others go on, and follow once it closes;
//! a stored open breaker and a paused type hold their tasks until `--max-wait`, after which
//! they stay in the DLQ and are reported.

use secflow_common::{TaskEnvelope, config::DEFAULT_REDIS_URL, control::breaker_key, now_ms};
use secflow_tests::{TestNs, command, exit_status, inspector, publish, stdout, wait_for};
use serde_json::json;
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Dead-letters `tasks` (no worker pool knows their types) and stops the worker.
async fn dead_letter(ns: &TestNs, tasks: &[TaskEnvelope]) {
    let worker = ns.spawn_worker(ns.worker_config());
    publish(ns, tasks).await;
    let dlq = ns.topology().dlq();
    wait_for("tasks dead-lettered", Duration::from_secs(90), || async {
        ns.ready(&dlq).await as usize >= tasks.len()
    })
    .await;
    worker.stop().await;
}

fn task(node_type: &str, service: Option<&str>) -> TaskEnvelope {
    let mut t = TaskEnvelope::new(node_type, json!({}));
    t.service = service.map(str::to_string);
    t
}

/// Proves: a paced requeue of 1,000 dead letters, half of them for a service whose breaker is
/// held open half-way through, sends none of that service's tasks to a work queue while the
/// hold lasts (the others all go on), and the rest once `breaker close` lifts it: all 1,000
/// end in the work queue and the DLQ is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_breaker_holds_its_tasks_and_the_rest_go_on() {
    let ns = TestNs::new().await;
    let tasks: Vec<TaskEnvelope> = (0..1000)
        .map(|i| match i % 2 {
            0 => task("scan.held", Some("svc-held")),
            _ => task("scan.free", None),
        })
        .collect();
    dead_letter(&ns, &tasks).await;
    // A second queue takes a copy of every task of the held service: its depth counts them.
    ns.topology()
        .declare_pool(&ns.ch, "other", &["scan.held".to_string()])
        .await
        .unwrap();
    let (work, held_q) = (
        ns.topology().work_queue("default"),
        ns.topology().work_queue("other"),
    );

    let mut child = command("dlq-inspector")
        .env("AMQP_URL", &ns.amqp_url)
        .args([
            "--namespace",
            &ns.name,
            "requeue",
            "--all",
            "--pace",
            "auto",
            "--rate",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    wait_for(
        "the requeue to be half-way",
        Duration::from_secs(30),
        || async { ns.ready(&work).await >= 300 },
    )
    .await;
    stdout(&inspector(
        &ns,
        &[
            "breaker", "open", "svc-held", "--reason", "outage", "--by", "tester",
        ],
    ));
    wait_for(
        "every task of the other service requeued",
        Duration::from_secs(60),
        || async {
            ns.ready(&work)
                .await
                .saturating_sub(ns.ready(&held_q).await)
                >= 500
        },
    )
    .await;
    let let_through = ns.ready(&held_q).await;
    assert!(
        let_through < 500,
        "the hold came before all of svc-held's tasks went"
    );
    // The inspector reports the rest waiting on the hold; two reports later, still none moved.
    let waiting = format!(
        "{} waiting (svc-held: {}, breaker of svc-held held open by tester: outage)",
        500 - let_through,
        500 - let_through
    );
    let seen_at = {
        let lines = &lines;
        let waiting = &waiting;
        let mut at = 0;
        wait_for(
            "the inspector to report the held tasks",
            Duration::from_secs(10),
            || {
                let found = lines
                    .lock()
                    .unwrap()
                    .iter()
                    .position(|l| l.contains(waiting.as_str()));
                if let Some(p) = found {
                    at = p;
                }
                async move { found.is_some() }
            },
        )
        .await;
        at
    };
    wait_for(
        "two more progress reports",
        Duration::from_secs(10),
        || async { lines.lock().unwrap().len() >= seen_at + 3 },
    )
    .await;
    assert_eq!(
        ns.ready(&held_q).await,
        let_through,
        "no held task reached a work queue"
    );
    assert_eq!(ns.ready(&work).await, 500 + let_through);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the requeue waits for the breaker"
    );

    stdout(&inspector(
        &ns,
        &["breaker", "close", "svc-held", "--by", "tester"],
    ));
    let status = exit_status(&mut child, Duration::from_secs(60)).await;
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        status.success(),
        "{out}\n{}",
        lines.lock().unwrap().join("\n")
    );
    assert!(
        out.contains("requeued 1000 of 1000 selected; 0 left"),
        "{out}"
    );
    assert_eq!(
        (ns.ready(&work).await, ns.ready(&held_q).await),
        (1000, 500)
    );
    assert_eq!(ns.ready(&ns.topology().dlq()).await, 0);
}

/// Proves: tasks whose service's stored breaker is open, or whose type is paused, are held
/// while the others are requeued; after `--max-wait` they stay in the DLQ, are named, and the
/// command exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_open_breaker_and_a_pause_hold_until_max_wait() {
    let ns = TestNs::new().await;
    let mut tasks: Vec<TaskEnvelope> = (0..10).map(|_| task("scan.slow", None)).collect();
    tasks.extend((0..10).map(|_| task("scan.paused", None)));
    tasks.extend((0..10).map(|_| task("scan.free", None)));
    dead_letter(&ns, &tasks).await;
    let mut conn = redis::Client::open(DEFAULT_REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let record = format!(
        r#"2|{{"mode":"open","failures":[1],"opened_at_ms":{},"open_ms":600000}}"#,
        now_ms()
    );
    redis::cmd("SET")
        .arg(breaker_key(&ns.name, "scan.slow"))
        .arg(record)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    stdout(&inspector(
        &ns,
        &[
            "pause",
            "scan.paused",
            "--reason",
            "maintenance",
            "--by",
            "tester",
        ],
    ));

    let out = inspector(
        &ns,
        &["requeue", "--all", "--pace", "auto", "--max-wait", "2s"],
    );
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{so}\n{se}");
    assert!(so.contains("requeued 10 of 30 selected; 20 left"), "{so}");
    assert!(se.contains("20 tasks were still held"), "{se}");
    assert_eq!(
        se.matches("still held, left in the DLQ").count(),
        20,
        "{se}"
    );
    assert!(se.contains("breaker of scan.slow open for"), "{se}");
    assert!(
        se.contains("type scan.paused paused by tester: maintenance"),
        "{se}"
    );
    assert_eq!(ns.ready(&ns.topology().work_queue("default")).await, 10);
    assert_eq!(ns.ready(&ns.topology().dlq()).await, 20);
}
