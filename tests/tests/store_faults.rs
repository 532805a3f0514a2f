//! Corrupted state in Redis and Redis outages, against the real broker and Redis: a bad value
//! affects only its own task or service and never puts the worker in degraded mode; while Redis
//! is unreachable only tasks declared idempotent run.

use lapin::message::Delivery;
use secflow_common::{TaskEnvelope, headers};
use secflow_tests::{PrivateRedis, TestNs, publish, wait_for};
use secflow_worker::{WorkerConfig, WorkerError, WorkerStats};
use serde_json::json;
use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// A worker in this process, with its stats and whether it was ever seen degraded.
struct Worker {
    stats: Arc<WorkerStats>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), WorkerError>>,
    degraded_seen: Arc<AtomicBool>,
}

impl Worker {
    fn start(cfg: WorkerConfig) -> Self {
        let stats = Arc::new(WorkerStats::default());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(secflow_worker::run_with_stats(
            cfg,
            Arc::clone(&stats),
            stop.clone().cancelled_owned(),
        ));
        // Degraded mode lasts at least the store's 1 s probe period: polling every 2 ms sees it.
        let degraded_seen = Arc::new(AtomicBool::new(false));
        let (seen, watched, until) = (Arc::clone(&degraded_seen), Arc::clone(&stats), stop.clone());
        tokio::spawn(async move {
            while !until.is_cancelled() {
                if watched.redis_degraded.load(Ordering::SeqCst) {
                    seen.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self {
            stats,
            stop,
            handle,
            degraded_seen,
        }
    }

    /// Stops it; whether it was ever degraded.
    async fn stop(self) -> bool {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
        self.degraded_seen.load(Ordering::SeqCst)
    }
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Makes `key` a list holding `value`: a value of the wrong type for every key the worker
/// writes.
async fn plant_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: impl redis::ToRedisArgs,
    value: &str,
) {
    redis::cmd("LPUSH")
        .arg(key)
        .arg(value)
        .query_async::<i64>(conn)
        .await
        .unwrap();
}

fn task_key(ns: &TestNs, task: &TaskEnvelope) -> String {
    format!("sf:{{{}:task:{}}}", ns.name, task.task_id)
}

/// An `exec` task appending `tag` to `effects`: its side effect, counted outside the fleet.
fn effect_task(effects: &Path, tag: &str) -> TaskEnvelope {
    TaskEnvelope::new(
        "exec",
        json!({"argv": ["sh", "-c", format!("echo {tag} >> {}", effects.display())]}),
    )
}

fn effects_of(effects: &Path) -> Vec<String> {
    std::fs::read_to_string(effects)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn header(d: &Delivery, name: &str) -> String {
    headers::get_str(d.properties.headers().as_ref(), name)
        .unwrap_or("")
        .to_string()
}

/// Asserts `d` was dead-lettered as corrupted state, naming `key`.
fn assert_state_corrupted(d: &Delivery, key: &str) {
    assert_eq!(header(d, headers::DEAD_LETTER_REASON), "state_corrupted");
    assert_eq!(header(d, headers::ERROR_CODE), "state_corrupted");
    assert_eq!(header(d, headers::ERROR_CLASS), "permanent");
    let message = header(d, headers::ERROR_MESSAGE);
    assert!(
        message.contains(key),
        "the message names the key: {message}"
    );
}

/// Proves: a task key of the wrong type (a list) dead-letters that task alone as
/// `state_corrupted` without running it; the worker does not degrade, so the completed tasks
/// republished beside it are still recognised as done and do not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_key_affects_only_its_task() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = Worker::start(ns.worker_config());
    let effects = std::env::temp_dir().join(format!("{}-effects", ns.name));
    let done: Vec<_> = (0..20)
        .map(|i| effect_task(&effects, &format!("done-{i}")))
        .collect();
    publish(&ns, &done).await;
    tap.wait_until("20 completions", Duration::from_secs(30), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() == 20
    })
    .await;

    let poisoned = effect_task(&effects, "poisoned");
    let key = task_key(&ns, &poisoned);
    let mut conn = redis(secflow_common::config::DEFAULT_REDIS_URL).await;
    plant_list(&mut conn, &key, "not a task marker").await;
    let mut again = vec![poisoned];
    again.extend(done.iter().cloned());
    publish(&ns, &again).await;
    let dead = ns.take_dlq(1, Duration::from_secs(20)).await;
    wait_for("20 duplicates", Duration::from_secs(20), || async {
        WorkerStats::get(&worker.stats.duplicates) == 20
    })
    .await;
    let corrupted = WorkerStats::get(&worker.stats.state_corrupted);
    let degraded = worker.stop().await;

    assert_state_corrupted(&dead[0], &key);
    assert!(!degraded, "a bad value never degrades the worker");
    assert_eq!(corrupted, 1, "the bad key was counted");
    let ran = effects_of(&effects);
    assert_eq!(
        ran.len(),
        20,
        "nothing ran again, the poisoned task not at all: {ran:?}"
    );
    assert!(!ran.iter().any(|l| l == "poisoned"));
    assert_eq!(tap.of_kind("node.completed").len(), 20);
    let _ = std::fs::remove_file(effects);
}

/// Proves: a breaker value in no known format (a garbage string, or a key of another type) is
/// repaired for its own service; its tasks and another service's run; the worker does not
/// degrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_breaker_value_is_repaired_without_degrading() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut conn = redis(secflow_common::config::DEFAULT_REDIS_URL).await;
    let breaker = |service: &str| format!("sf:{{{}:breaker:{service}}}", ns.name);
    redis::cmd("SET")
        .arg(breaker("garbled"))
        .arg("garbage")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    plant_list(&mut conn, breaker("listed"), "x").await;
    let worker = Worker::start(ns.worker_config());
    let tasks: Vec<_> = ["garbled", "listed", "healthy"]
        .iter()
        .flat_map(|service| {
            (0..5).map(move |_| {
                let mut t = TaskEnvelope::new("builtin.echo", json!({}));
                t.service = Some((*service).to_string());
                t
            })
        })
        .collect();
    publish(&ns, &tasks).await;
    tap.wait_until("all 15 completed", Duration::from_secs(30), |ev| {
        ev.iter().filter(|e| e.kind == "node.completed").count() == 15
    })
    .await;
    let corrupted = WorkerStats::get(&worker.stats.state_corrupted);
    let degraded = worker.stop().await;

    assert!(!degraded, "a bad breaker value never degrades the worker");
    assert!(corrupted >= 2, "both bad keys were counted: {corrupted}");
    for service in ["garbled", "listed"] {
        let stored: Option<String> = redis::cmd("GET")
            .arg(breaker(service))
            .query_async(&mut conn)
            .await
            .unwrap_or(Some("still not a string".into()));
        if let Some(stored) = stored {
            assert!(
                secflow_worker::breaker::parse_record(&stored).is_ok(),
                "{service}: repaired, now `{stored}`"
            );
        }
    }
}

/// Proves: a checkpoint key of another type (a list) is corrupted state for its task alone: the
/// task starts from scratch and completes, its saves replace the key, the worker does not
/// degrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_checkpoint_is_ignored_without_degrading() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut conn = redis(secflow_common::config::DEFAULT_REDIS_URL).await;
    let batch = TaskEnvelope::new(
        "builtin.batch",
        json!({"items": 4, "item_ms": 10, "checkpoint_every": 1}),
    );
    plant_list(
        &mut conn,
        format!("sf:{{{}:checkpoint:{}}}", ns.name, batch.task_id),
        "not a checkpoint",
    )
    .await;
    let worker = Worker::start(ns.worker_config());
    publish(&ns, std::slice::from_ref(&batch)).await;
    tap.wait_until("the batch to complete", Duration::from_secs(20), |ev| {
        ev.iter().any(|e| e.kind == "node.completed")
    })
    .await;
    let corrupted = WorkerStats::get(&worker.stats.state_corrupted);
    let degraded = worker.stop().await;
    assert!(!degraded, "a bad checkpoint never degrades the worker");
    assert_eq!(corrupted, 1, "the bad key was counted once");
}

/// Proves: a failure counter of another type (escalation) is repaired, counting starts over,
/// and the worker does not degrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_failure_counter_is_repaired() {
    let ns = TestNs::new().await;
    let mut conn = redis(secflow_common::config::DEFAULT_REDIS_URL).await;
    let message = "upstream broke";
    let counter = format!(
        "sf:{{{}:fingerprint:{}}}",
        ns.name,
        secflow_worker::fingerprint::fingerprint("builtin.fail", "transient", message)
    );
    plant_list(&mut conn, &counter, "not a count").await;
    let worker = Worker::start(ns.worker_config());
    let mut task = TaskEnvelope::new(
        "builtin.fail",
        json!({"class": "transient", "code": "broke", "message": message}),
    );
    task.retry = serde_json::from_value(
        json!({"strategy": "fixed", "base_delay_ms": 50, "max_attempts": 3, "jitter": "none"}),
    )
    .unwrap();
    publish(&ns, &[task]).await;
    let dead = ns.take_dlq(1, Duration::from_secs(20)).await;
    let corrupted = WorkerStats::get(&worker.stats.state_corrupted);
    let degraded = worker.stop().await;

    assert_eq!(header(&dead[0], headers::DEAD_LETTER_REASON), "exhausted");
    assert!(!degraded, "a bad counter never degrades the worker");
    assert_eq!(corrupted, 1, "counted once, then repaired");
    let count: String = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Two retries counted: the first bump found the list, repaired it and counted 1.
    assert_eq!(count, "2", "counting started over and went on");
}

/// Proves: a `completing:` marker in no valid format is not taken for a completion, and a value
/// in no known format without a TTL is not taken for a lease (deferring the task until
/// `--max-defers`): both tasks are dead-lettered as `state_corrupted` at once, unrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_values_are_corrupted_state() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut conn = redis(secflow_common::config::DEFAULT_REDIS_URL).await;
    let effects = std::env::temp_dir().join(format!("{}-effects", ns.name));
    let completing = effect_task(&effects, "completing");
    let unknown = effect_task(&effects, "unknown");
    for (task, value) in [(&completing, "completing:garbage"), (&unknown, "mystery")] {
        redis::cmd("SET")
            .arg(task_key(&ns, task))
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let worker = Worker::start(ns.worker_config());
    publish(&ns, &[completing.clone(), unknown.clone()]).await;
    let dead = ns.take_dlq(2, Duration::from_secs(20)).await;
    let deferred = WorkerStats::get(&worker.stats.deferred);
    let degraded = worker.stop().await;

    for d in &dead {
        let task = TaskEnvelope::decode(&d.data, None).unwrap();
        assert_state_corrupted(d, &task_key(&ns, &task));
    }
    assert_eq!(deferred, 0, "not taken for a lease");
    assert!(!degraded);
    assert!(
        tap.of_kind("node.completed").is_empty(),
        "not reported completed"
    );
    assert!(effects_of(&effects).is_empty(), "neither ran");
}

/// Proves: while Redis is unreachable, an `exec` task (not idempotent by default) is deferred,
/// not run, while an echo task runs; once Redis is back the `exec` task runs exactly once, and
/// the echo task's done marker (kept while Redis was away) is there: a copy of it is a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_tasks_wait_for_redis() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let mut private = PrivateRedis::start().await;
    let mut cfg = ns.worker_config();
    cfg.broker.redis_url = private.url();
    let worker = Worker::start(cfg);
    wait_for("the worker to consume", Duration::from_secs(20), || async {
        worker.stats.consuming.load(Ordering::SeqCst)
    })
    .await;
    private.stop();
    let effects = std::env::temp_dir().join(format!("{}-effects", ns.name));
    let exec = effect_task(&effects, "exec");
    let echo = TaskEnvelope::new("builtin.echo", json!({"hello": 1}));
    publish(&ns, &[exec.clone(), echo.clone()]).await;
    tap.wait_until("the echo task to run", Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(echo.task_id))
    })
    .await;
    wait_for(
        "the exec task to be deferred",
        Duration::from_secs(20),
        || async { WorkerStats::get(&worker.stats.deferred) >= 1 },
    )
    .await;
    assert!(
        effects_of(&effects).is_empty(),
        "exec did not run without Redis"
    );

    private.restart().await;
    tap.wait_until("the exec task to run", Duration::from_secs(30), |ev| {
        ev.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(exec.task_id))
    })
    .await;
    // The echo task completed without Redis: its done marker was kept and written when Redis
    // answered again (before idempotency checks resumed), so a copy of it is a duplicate.
    let client = redis::Client::open(private.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let marker: Option<String> = redis::cmd("GET")
        .arg(task_key(&ns, &echo))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        marker.as_deref().is_some_and(|m| m.starts_with("done:")),
        "done marker of the echo task: {marker:?}"
    );
    let duplicates = WorkerStats::get(&worker.stats.duplicates);
    publish(&ns, std::slice::from_ref(&echo)).await;
    wait_for(
        "the echo task's copy to be acked as a duplicate",
        Duration::from_secs(20),
        || async { WorkerStats::get(&worker.stats.duplicates) > duplicates },
    )
    .await;
    worker.stop().await;
    let echo_done = tap
        .of_kind("node.completed")
        .iter()
        .filter(|e| e.task_id == Some(echo.task_id))
        .count();
    assert_eq!(echo_done, 1, "the echo task's copy did not run again");
    assert_eq!(
        effects_of(&effects),
        vec!["exec".to_string()],
        "ran exactly once"
    );
    let exec_done = tap
        .of_kind("node.completed")
        .iter()
        .filter(|e| e.task_id == Some(exec.task_id))
        .count();
    assert_eq!(exec_done, 1);
    let _ = std::fs::remove_file(effects);
}

/// Proves: a workflow node whose run data in Redis is damaged (a run key of the wrong type) is
/// dead-lettered as `state_corrupted` once it ran, naming the run's keys, instead of being
/// retried (run again) against the same damaged data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_run_data_dead_letters_the_node() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = Worker::start(ns.worker_config());
    let recipe = secflow_tests::recipe_file(
        &ns,
        "damaged",
        "version: 1\nname: damaged\nnodes:\n  - { id: a, type: builtin.sleep, config: { ms: 1500 }, outputs: [slept_ms] }\n  - { id: b, type: builtin.echo, inputs: { s: a.slept_ms }, outputs: [echo] }\n",
    );
    let submitted = secflow_producer::recipes::submit(
        &ns.broker(),
        &recipe,
        &std::collections::BTreeMap::new(),
        None,
        false,
    )
    .await
    .unwrap();
    let run = submitted.run_id;
    let url = secflow_common::config::DEFAULT_REDIS_URL;
    wait_for("node a to be claimed", Duration::from_secs(20), || async {
        secflow_tests::redis_keys(url, &ns.name)
            .await
            .is_ok_and(|keys| keys.iter().any(|k| k.contains(":task:")))
    })
    .await;
    let links = format!("sf:{{{}:run:{run}}}:links", ns.name);
    let mut conn = redis(url).await;
    redis::cmd("SET")
        .arg(&links)
        .arg("garbage")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let dead = ns.take_dlq(1, Duration::from_secs(20)).await;
    let degraded = worker.stop().await;

    assert_state_corrupted(&dead[0], &format!("sf:{{{}:run:{run}}}:*", ns.name));
    assert!(!degraded);
    let runs_of_a = tap
        .snapshot()
        .iter()
        .filter(|e| e.run_id == Some(run) && e.kind == "node.retrying")
        .count();
    assert_eq!(runs_of_a, 0, "not retried against the damaged data");
}

/// Proves: plain commands of concurrent tasks share pipelines, and a key of the wrong type in
/// one of them fails only its own command: 200 claims at once, one on a list, give 199 leases
/// and one corrupted state, and the store stays healthy (a claim of each task again is then
/// refused as leased, so every lease was really written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_fails_only_its_own_command_in_a_shared_pipeline() {
    use secflow_worker::store::{Claim, Store, StoreError};
    let ns = TestNs::new().await;
    let stats = Arc::new(WorkerStats::default());
    let store = Store::new(secflow_common::config::DEFAULT_REDIS_URL, &ns.name, stats).unwrap();
    let ids: Vec<String> = (0..200).map(|i| format!("batch-{i}")).collect();
    let bad = format!("sf:{{{}:task:{}}}", ns.name, ids[117]);
    let mut conn = redis(secflow_common::config::DEFAULT_REDIS_URL).await;
    plant_list(&mut conn, &bad, "not a task marker").await;

    let claims = futures_util::future::join_all(
        ids.iter()
            .map(|id| store.claim(id, "w/0123456789abcdef0123456789abcdef", 30_000)),
    )
    .await;
    for (i, claim) in claims.iter().enumerate() {
        if i == 117 {
            assert!(
                matches!(claim, Err(StoreError::Corrupted(c)) if c.key == bad),
                "the list key is corrupted state: {claim:?}"
            );
        } else {
            assert_eq!(claim.as_ref().ok(), Some(&Claim::Claimed), "task {i}");
        }
    }
    assert!(
        !store.is_degraded(),
        "one bad value never degrades the store"
    );
    let again = futures_util::future::join_all(
        ids.iter()
            .map(|id| store.claim(id, "w/fedcba9876543210fedcba9876543210", 30_000)),
    )
    .await;
    let leased = again
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Leased { .. })))
        .count();
    assert_eq!(leased, 199, "every other claim was written");
}
