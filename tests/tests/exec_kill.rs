//! SIGKILL of a worker while it runs an `exec` task: the program dies with its worker, its
//! side effect happens once, and another worker runs the task again within 5 s (not after
//! the 30 s lease).

use secflow_common::TaskEnvelope;
use secflow_tests::{KillOnDrop, TestNs, publish, stop_gracefully, wait_for};
use serde_json::json;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Our error-detection target: a task whose worker died runs again within this.
const RERUN_WITHIN: Duration = Duration::from_secs(5);

/// Whether process `pid` exists and is not a zombie (a zombie has finished running).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Lines of `path` (none when it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A scratch directory for one test's marker files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(ns: &TestNs) -> Self {
        let dir = std::env::temp_dir().join(format!("secflow-{}-exec-kill", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Proves: the exec program of a SIGKILLed worker is gone within 1 s (with the helper it
/// started in the background), its side effect never happens, and a second worker runs the
/// task again within 5 s of the kill and completes it: one side effect overall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_exec_child_dies_and_the_task_reruns_within_5s() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let scratch = Scratch::new(&ns);
    let (pidfile, helperfile, starts, effects) = (
        scratch.file("pid"),
        scratch.file("helper"),
        scratch.file("starts"),
        scratch.file("effects"),
    );
    // The program records its pid and a background helper's, marks its start, works for 3 s,
    // then performs its side effect.
    let script = format!(
        "echo $$ > {pid}; sleep 60 > /dev/null 2>&1 & echo $! > {helper}; echo start >> {starts}; sleep 3; echo effect >> {effects}",
        pid = pidfile.display(),
        helper = helperfile.display(),
        starts = starts.display(),
        effects = effects.display(),
    );
    let task = TaskEnvelope::new("exec", json!({ "argv": ["sh", "-c", script] }));
    let id = publish(&ns, &[task]).await[0];

    let mut first = KillOnDrop(ns.spawn_worker_process(&[]));
    wait_for(
        "the first run to start",
        Duration::from_secs(30),
        || async { lines(&starts).len() == 1 && lines(&helperfile).len() == 1 },
    )
    .await;
    // The second worker is up before the kill, so the measurement is of redelivery, not start-up.
    let mut second = KillOnDrop(ns.spawn_worker_process(&[]));
    let queue = ns.topology().work_queue("default");
    wait_for(
        "the second worker to consume",
        Duration::from_secs(30),
        || async { ns.consumers(&queue).await == 2 },
    )
    .await;
    let pid = lines(&pidfile).concat();
    let helper = lines(&helperfile).concat();
    assert!(
        alive(&pid) && alive(&helper),
        "the program runs under the first worker"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let _ = first.0.wait();
    wait_for(
        "the killed worker's program and its helper to die",
        Duration::from_secs(1),
        || async { !alive(&pid) && !alive(&helper) },
    )
    .await;
    wait_for(
        "the second worker to run the task again",
        RERUN_WITHIN,
        || async { lines(&starts).len() == 2 },
    )
    .await;
    let rerun_after = killed.elapsed();
    eprintln!("the task ran again {rerun_after:?} after its worker was killed");
    assert!(
        rerun_after < RERUN_WITHIN,
        "the task ran again {rerun_after:?} after its worker died"
    );
    tap.wait_until("the task to complete", Duration::from_secs(30), |ev| {
        ev.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(id))
    })
    .await;
    stop_gracefully(&mut second.0).await;
    assert_eq!(
        lines(&effects),
        vec!["effect".to_string()],
        "the side effect happened exactly once"
    );
    assert_eq!(lines(&starts).len(), 2, "the task started twice, no more");
}

/// Proves: a program that did its side effect and exited, whose worker was SIGKILLed before
/// it recorded the task's end, does not run again. The program stops its own worker (SIGSTOP)
/// right after its side effect, so the worker cannot record anything; its shim records the
/// outcome in Redis all the same. After the kill, a second worker completes the task with the
/// first run's output within 5 s, and the side effect happened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_ended_before_its_worker_died_is_not_run_again() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let scratch = Scratch::new(&ns);
    let effects = scratch.file("effects");
    let queue = ns.topology().work_queue("default");
    let mut first = KillOnDrop(ns.spawn_worker_process(&[]));
    wait_for(
        "the first worker to consume",
        Duration::from_secs(30),
        || async { ns.consumers(&queue).await == 1 },
    )
    .await;
    let worker_pid = first.0.id();
    let script = format!(
        "echo effect >> {effects}; echo output of the first run; kill -STOP {worker_pid}",
        effects = effects.display(),
    );
    let task = TaskEnvelope::new("exec", json!({ "argv": ["sh", "-c", script] }));
    let id = publish(&ns, &[task]).await[0];
    // The outcome is recorded although its worker is stopped.
    let redis = secflow_common::redis_pool::pool(
        &ns.worker_config().broker.redis_url,
        Duration::from_secs(2),
    )
    .unwrap();
    let pattern = format!("sf:{{{}:task:{id}}}:exec:*", ns.name);
    wait_for(
        "the shim to record the program's outcome",
        Duration::from_secs(30),
        || async {
            secflow_common::redis_pool::scan_keys(&redis, &pattern)
                .await
                .is_ok_and(|keys| keys.len() == 1)
        },
    )
    .await;
    assert_eq!(lines(&effects), vec!["effect".to_string()]);
    let mut second = KillOnDrop(ns.spawn_worker_process(&[]));
    wait_for(
        "the second worker to consume",
        Duration::from_secs(30),
        || async { ns.consumers(&queue).await == 2 },
    )
    .await;
    assert!(
        tap.of_kind("node.completed").is_empty(),
        "the stopped worker recorded nothing"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let _ = first.0.wait();
    tap.wait_until("the task to complete", RERUN_WITHIN, |ev| {
        ev.iter()
            .any(|e| e.kind == "node.completed" && e.task_id == Some(id))
    })
    .await;
    let events = tap.snapshot();
    eprintln!(
        "the task completed {:?} after its worker was killed",
        killed.elapsed()
    );
    let completed = events
        .iter()
        .find(|e| e.kind == "node.completed" && e.task_id == Some(id))
        .unwrap();
    let output = completed.output.clone().unwrap_or_default();
    assert_eq!(
        output["stdout"], "output of the first run\n",
        "the first run's recorded outcome was reported: {output}"
    );
    stop_gracefully(&mut second.0).await;
    assert_eq!(
        lines(&effects),
        vec!["effect".to_string()],
        "the side effect happened once"
    );
}
