//! The `dlq-inspector` binary against the real broker: listing agrees with the queue, requeue
//! moves exactly the selection, a killed inspector loses nothing, two inspectors never share
//! the DLQ, and mistakes get clear errors.

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, command, inspector, json_lines, publish, stdout, wait_for};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, HashSet},
    process::Output,
    time::Duration,
};

/// `n` tasks that fail permanently at once.
fn doomed(n: usize) -> Vec<TaskEnvelope> {
    (0..n)
        .map(|_| {
            TaskEnvelope::new(
                "builtin.fail",
                json!({"class": "permanent", "message": "out of scope"}),
            )
        })
        .collect()
}

/// Runs a worker until `n` tasks are in the DLQ, then stops it.
async fn dead_letter(ns: &TestNs, tasks: &[TaskEnvelope]) -> Vec<uuid::Uuid> {
    let worker = ns.spawn_worker(ns.worker_config());
    let ids = publish(ns, tasks).await;
    let dlq = ns.topology().dlq();
    wait_for("tasks dead-lettered", Duration::from_secs(60), || async {
        ns.ready(&dlq).await as usize >= tasks.len()
    })
    .await;
    worker.stop().await;
    ids
}

/// Proves: with 500 dead-lettered tasks, `list` and `stats` agree with the queue;
/// `requeue --filter` moves exactly the selected 300, which complete once their cause is fixed;
/// the other 200 stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_stats_and_filtered_requeue_of_500_dead_letters() {
    let ns = TestNs::new().await;
    let marker = std::env::temp_dir().join(format!("{}-fixed", ns.name));
    let probe = format!("test -f {}", marker.display());
    let mut tasks: Vec<TaskEnvelope> = (0..300)
        .map(|_| {
            let mut t = TaskEnvelope::new("exec", json!({"argv": ["sh", "-c", probe]}));
            t.retry = serde_json::from_value(json!({"max_attempts": 1})).unwrap();
            t
        })
        .collect();
    tasks.extend(doomed(200));
    let ids = dead_letter(&ns, &tasks).await;
    let exec_ids: HashSet<String> = ids[..300].iter().map(ToString::to_string).collect();

    let listed = json_lines(&inspector(&ns, &["list", "--json"]));
    assert_eq!(listed.len(), 500);
    let listed_ids: HashSet<String> = listed
        .iter()
        .map(|r| r["task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed_ids,
        ids.iter().map(ToString::to_string).collect(),
        "list shows every task once"
    );
    let mut by_class: HashMap<String, usize> = HashMap::new();
    for r in &listed {
        *by_class
            .entry(r["class"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!((by_class["unknown"], by_class["permanent"]), (300, 200));
    let stats: Value =
        serde_json::from_str(&stdout(&inspector(&ns, &["stats", "--json"]))).unwrap();
    assert_eq!(stats["total"], 500);
    assert_eq!(
        (
            stats["by_type"]["exec"].as_u64(),
            stats["by_type"]["builtin.fail"].as_u64()
        ),
        (Some(300), Some(200))
    );
    assert_eq!(stats["by_class"]["unknown"], 300);
    assert_eq!(
        ns.ready(&ns.topology().dlq()).await,
        500,
        "listing removed nothing"
    );
    let limited = json_lines(&inspector(
        &ns,
        &[
            "list",
            "--json",
            "--limit",
            "7",
            "--filter",
            "class=permanent",
        ],
    ));
    assert_eq!(limited.len(), 7);

    std::fs::write(&marker, b"fixed").unwrap();
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let out = stdout(&inspector(&ns, &["requeue", "--filter", "type=exec"]));
    assert!(
        out.contains("requeued 300 of 300 selected; 200 left"),
        "{out}"
    );
    tap.wait_until(
        "the 300 requeued tasks completed",
        Duration::from_secs(60),
        |ev| {
            ev.iter()
                .filter(|e| {
                    e.kind == "node.completed" && exec_ids.contains(&e.task_id.unwrap().to_string())
                })
                .count()
                >= 300
        },
    )
    .await;
    worker.stop().await;
    let _ = std::fs::remove_file(&marker);
    let left = json_lines(&inspector(&ns, &["list", "--json"]));
    assert_eq!(left.len(), 200);
    assert!(
        left.iter().all(|r| r["type"] == "builtin.fail"),
        "only the unselected tasks stay"
    );
    assert!(
        tap.of_kind("node.dead_lettered").is_empty(),
        "no requeued task failed again"
    );
}

/// Proves: an inspector SIGKILLed in the middle of requeueing 500 tasks loses none: each is in
/// the work queue or still in the DLQ; duplicates (confirmed copies whose DLQ original was not
/// yet acked) stay within the requeue window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_requeue_loses_nothing() {
    let ns = TestNs::new().await;
    let ids: HashSet<String> = dead_letter(&ns, &doomed(500))
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let work = ns.topology().work_queue("default");
    let dlq = ns.topology().dlq();
    let mut child = command("dlq-inspector")
        .args(["--namespace", &ns.name, "requeue", "--all", "--rate", "200"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the requeue to be under way",
        Duration::from_secs(20),
        || async { ns.ready(&work).await >= 100 },
    )
    .await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_for(
        "every task back in a queue",
        Duration::from_secs(20),
        || async { ns.ready(&work).await + ns.ready(&dlq).await >= 500 },
    )
    .await;
    let counts = (
        ns.ready(&work).await as usize,
        ns.ready(&dlq).await as usize,
    );
    assert!(counts.0 < 500, "the kill came before the requeue finished");
    let requeued: Vec<String> = ns
        .take(&work, counts.0, Duration::from_secs(10))
        .await
        .iter()
        .map(message_id)
        .collect();
    let still_dead: Vec<String> = ns
        .take_dlq(counts.1, Duration::from_secs(10))
        .await
        .iter()
        .map(message_id)
        .collect();
    let union: HashSet<String> = requeued.iter().chain(&still_dead).cloned().collect();
    assert_eq!(union, ids, "every task is in one queue or the other");
    let dupes = requeued.len() + still_dead.len() - union.len();
    assert!(
        dupes <= 32,
        "{dupes} duplicates: more than the requeue window"
    );
}

fn message_id(d: &lapin::message::Delivery) -> String {
    d.properties.message_id().as_ref().unwrap().to_string()
}

/// Proves: while one inspector works on the DLQ, another is refused (or waits) instead of
/// seeing part of it; the waiting one then sees the result of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_inspectors_never_share_the_dlq() {
    let ns = TestNs::new().await;
    dead_letter(&ns, &doomed(100)).await;
    let work = ns.topology().work_queue("default");
    let mut first = command("dlq-inspector")
        .args(["--namespace", &ns.name, "requeue", "--all", "--rate", "50"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the first inspector to be under way",
        Duration::from_secs(20),
        || async { ns.ready(&work).await >= 5 },
    )
    .await;
    let refused = inspector(&ns, &["list", "--lock-wait", "0"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("another dlq-inspector is working on"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let stats: Value = serde_json::from_str(&stdout(&inspector(
        &ns,
        &["stats", "--json", "--lock-wait", "30"],
    )))
    .unwrap();
    assert!(first.wait().unwrap().success());
    assert_eq!(
        stats["total"], 0,
        "the waiting inspector saw the first one's finished work"
    );
    assert_eq!(ns.ready(&work).await, 100);
}

/// Proves: unknown ids, filters matching nothing, a purge without --yes and an unreachable
/// broker are clear errors that change nothing; purge --export keeps a synced copy; export
/// removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_clear_errors_and_purge_exports_first() {
    let ns = TestNs::new().await;
    let ids = dead_letter(&ns, &doomed(3)).await;
    let err = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        err(inspector(
            &ns,
            &["show", "00000000-0000-0000-0000-000000000000"]
        ))
        .contains("no dead-lettered task with id 00000000-0000-0000-0000-000000000000")
    );
    assert!(
        err(inspector(
            &ns,
            &["requeue", "--filter", "type=scan.nothing"]
        ))
        .contains("no dead-lettered task matches type=scan.nothing (3 messages checked)")
    );
    assert!(err(inspector(&ns, &["requeue"])).contains("exactly one of them"));
    assert!(err(inspector(&ns, &["purge", "--all"])).contains("add --yes"));
    assert!(
        err(inspector(&ns, &["list", "--filter", "colour=red"]))
            .contains("unknown filter key `colour`")
    );
    let unreachable = command("dlq-inspector")
        .args([
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--connect-timeout-secs",
            "1",
            "stats",
        ])
        .output()
        .unwrap();
    assert!(err(unreachable).contains("cannot reach RabbitMQ"));
    assert_eq!(
        ns.ready(&ns.topology().dlq()).await,
        3,
        "no mistake changed the DLQ"
    );

    let shown: Value = serde_json::from_str(&stdout(&inspector(
        &ns,
        &["show", &ids[0].to_string(), "--json"],
    )))
    .unwrap();
    assert_eq!(shown["record"]["reason"], "permanent");
    assert_eq!(shown["body"]["task_id"], ids[0].to_string());
    assert!(shown["timeline"].as_array().unwrap().len() >= 2);

    let dir = std::env::temp_dir();
    let exported = dir.join(format!("{}-export.jsonl", ns.name));
    stdout(&inspector(
        &ns,
        &["export", "--out", exported.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read_to_string(&exported).unwrap().lines().count(),
        3
    );
    assert_eq!(
        ns.ready(&ns.topology().dlq()).await,
        3,
        "export removes nothing"
    );

    let purged = dir.join(format!("{}-purged.jsonl", ns.name));
    let out = stdout(&inspector(
        &ns,
        &[
            "purge",
            &ids[1].to_string(),
            "--yes",
            "--export",
            purged.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("purged 1 tasks"), "{out}");
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&purged).unwrap().trim()).unwrap();
    assert_eq!(line["message_id"], ids[1].to_string());
    assert!(
        err(inspector(
            &ns,
            &[
                "purge",
                "--all",
                "--yes",
                "--export",
                "/nonexistent-dir/x.jsonl"
            ]
        ))
        .contains("nothing was removed")
    );
    assert_eq!(ns.ready(&ns.topology().dlq()).await, 2);
    let _ = std::fs::remove_file(exported);
    let _ = std::fs::remove_file(purged);
}
