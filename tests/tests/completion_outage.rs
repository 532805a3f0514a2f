//! Redis dies between a task's end and its report, against the real broker and a private Redis
//! (append-only, synced on every write): a completion is reported only once Redis has recorded
//! it, so a task is never reported complete twice, whether Redis comes back in time or the
//! worker is killed while it waits.

use secflow_common::TaskEnvelope;
use secflow_tests::{
    KillOnDrop, PrivateRedis, TestNs, completing_attempts, free_port, metric, publish, redis_keys,
    wait_for, wait_ready,
};
use serde_json::json;
use std::{path::PathBuf, time::Duration};

/// A worker on `ns` using `redis`, its metrics on `port`.
fn start_worker(ns: &TestNs, redis: &PrivateRedis, port: u16) -> KillOnDrop {
    KillOnDrop(ns.spawn_worker_process(&[
        "--redis-url",
        &redis.url(),
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--exec-allow",
        "sh",
    ]))
}

/// A file listing the task's runs (one line per start), removed on drop.
struct Runs(PathBuf);

impl Runs {
    fn new(ns: &TestNs) -> Self {
        Self(std::env::temp_dir().join(format!("secflow-{}-runs", ns.name)))
    }

    fn count(&self) -> usize {
        std::fs::read_to_string(&self.0).map_or(0, |s| s.lines().count())
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Publishes one `exec` task (it notes its start in `runs`, then works for 1.5 s), waits until
/// the worker on `port` has claimed it, kills Redis, and waits until the task's program has
/// ended and the worker waits for Redis to record the completion. Returns the task's id.
async fn complete_during_outage(
    ns: &TestNs,
    redis: &mut PrivateRedis,
    port: u16,
    runs: &Runs,
) -> uuid::Uuid {
    let script = format!("echo start >> {}; sleep 1.5", runs.0.display());
    let task = TaskEnvelope::new("exec", json!({ "argv": ["sh", "-c", script] }));
    let id = publish(ns, &[task]).await[0];
    let url = redis.url();
    wait_for("the task to be claimed", Duration::from_secs(30), || {
        let (url, ns) = (url.clone(), ns.name.clone());
        async move {
            redis_keys(&url, &ns)
                .await
                .is_ok_and(|keys| keys.iter().any(|k| k.contains(&id.to_string())))
        }
    })
    .await;
    redis.stop();
    wait_for(
        "the worker to wait for Redis with a completed task",
        Duration::from_secs(20),
        || async { metric(port, "secflow_completions_unrecorded").await == Some(1.0) },
    )
    .await;
    id
}

/// A worker on a private Redis that has completed a task while Redis was down, and waits.
struct Scene {
    /// First, so it dies before its Redis and namespace go.
    worker: KillOnDrop,
    redis: PrivateRedis,
    ns: TestNs,
    tap: secflow_tests::EventTap,
    runs: Runs,
    port: u16,
    id: uuid::Uuid,
}

impl Scene {
    async fn start() -> Self {
        let mut redis = PrivateRedis::start_persistent().await;
        let ns = TestNs::new().await;
        let tap = ns.tap_events().await;
        let runs = Runs::new(&ns);
        let port = free_port();
        let worker = start_worker(&ns, &redis, port);
        wait_ready("the worker", port).await;
        let id = complete_during_outage(&ns, &mut redis, port, &runs).await;
        Self {
            worker,
            redis,
            ns,
            tap,
            runs,
            port,
            id,
        }
    }

    /// Runs of the task, and its completing attempts (by `node.completed`).
    fn runs_and_reports(&self) -> (usize, usize) {
        let reported = completing_attempts(&self.tap.snapshot())
            .get(&self.id)
            .map_or(0, std::collections::HashSet::len);
        (self.runs.count(), reported)
    }
}

/// Proves: a task that completes while Redis is down is not reported until Redis records its
/// completing marker; when Redis comes back within the lease's time the same attempt reports
/// it, once, and the task does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_waits_for_redis_and_is_reported_once() {
    let mut scene = Scene::start().await;
    assert_eq!(
        scene.runs_and_reports(),
        (1, 0),
        "no completion is reported while Redis cannot record it"
    );
    scene.redis.restart().await;
    scene
        .tap
        .wait_completed(scene.id, Duration::from_secs(30))
        .await;
    let queue = scene.ns.topology().work_queue("default");
    wait_for(
        "the delivery to be acked",
        Duration::from_secs(20),
        || async {
            metric(scene.port, "secflow_tasks_in_flight").await == Some(0.0)
                && scene.ns.ready(&queue).await == 0
        },
    )
    .await;
    assert_eq!(
        scene.runs_and_reports(),
        (1, 1),
        "one run, reported by one attempt"
    );
    scene.worker.kill();
}

/// Proves: a worker killed while it waits for Redis to record a completion has reported
/// nothing; the copy the broker delivers again runs the task (its first run was never
/// reported) and reports it: one completing attempt in all, and the task done in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_redis_records_its_completion_reports_nothing() {
    let mut scene = Scene::start().await;
    scene.worker.kill();
    scene.redis.restart().await;
    let _second = start_worker(&scene.ns, &scene.redis, free_port());
    scene
        .tap
        .wait_completed(scene.id, Duration::from_secs(60))
        .await;
    let url = scene.redis.url();
    wait_for("the task's done marker", Duration::from_secs(20), || {
        let (url, ns) = (url.clone(), scene.ns.name.clone());
        async move {
            secflow_tests::redis_done_markers(&url, &ns)
                .await
                .is_ok_and(|n| n == 1)
        }
    })
    .await;
    assert_eq!(
        scene.runs_and_reports(),
        (2, 1),
        "run twice (the first run was never reported), reported once"
    );
}
