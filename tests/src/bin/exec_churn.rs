//! SIGKILL churn of `exec` tasks: 3 worker processes run 2,000 exec tasks whose side effect
//! (appending the task's number to a file) is counted outside the fleet, while a random worker
//! is SIGKILLed (and replaced) every 2–3 s. Prints the tasks lost (never completed), the
//! side effects duplicated (a number appearing twice) and the redeliveries that reused a
//! program's recorded outcome instead of running it again; exits non-zero if either of the
//! first two is not 0, or
//! after `--timeout` seconds (default 300) without all tasks completed.
//!
//! Not part of the test suite: `cargo build --workspace --bins && cargo run -p secflow-tests
//! --bin exec_churn -- [--tasks N] [--workers N] [--timeout SECS]` on the local broker and Redis.

use anyhow::{Context, Result, bail};
use rand::RngExt;
use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, command, publish};
use serde_json::json;
use std::{
    collections::{BTreeMap, HashSet},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

/// Run settings from the command line.
struct Settings {
    tasks: usize,
    workers: usize,
    timeout: Duration,
}

fn settings() -> Result<Settings> {
    let mut s = Settings {
        tasks: 2_000,
        workers: 3,
        timeout: Duration::from_secs(300),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: u64 = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--tasks" => s.tasks = usize::try_from(value)?,
            "--workers" => s.workers = usize::try_from(value)?,
            "--timeout" => s.timeout = Duration::from_secs(value),
            other => bail!("unknown flag {other} (--tasks N --workers N --timeout SECS)"),
        }
    }
    Ok(s)
}

/// Starts one worker process on `ns`, its log appended to `log`.
fn start_worker(ns: &TestNs, log: &std::path::Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .context("open the workers' log")?;
    command("worker")
        .env("AMQP_URL", &ns.amqp_url)
        .args(["--namespace", &ns.name])
        .args(["--delivery-limit", &ns.delivery_limit.to_string()])
        .args(["--prefetch", "16", "--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn the worker binary (cargo build --workspace --bins first)")
}

fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn sigkill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let s = settings()?;
    let ns = TestNs::new().await;
    let dir = std::env::temp_dir().join(format!("secflow-{}-exec-churn", ns.name));
    std::fs::create_dir_all(&dir)?;
    let effects = dir.join("effects");
    let log = dir.join("workers.log");
    let tap = ns.tap_events().await;
    let tasks: Vec<TaskEnvelope> = (0..s.tasks)
        .map(|i| {
            // 0.2–0.9 s of work, then the side effect: the task's number, the worker's pid and
            // the time (ns), to tell afterwards how close to its worker's death a repeated one
            // happened.
            let script = format!(
                "sleep 0.{}; echo {i} $PPID $(date +%s%N) >> {}",
                2 + i % 8,
                effects.display()
            );
            TaskEnvelope::new("exec", json!({ "argv": ["sh", "-c", script] }))
        })
        .collect();
    let ids: HashSet<uuid::Uuid> = publish(&ns, &tasks).await.into_iter().collect();
    println!(
        "{} exec tasks published to namespace {}; workers log to {}",
        ids.len(),
        ns.name,
        log.display()
    );

    let mut workers = (0..s.workers)
        .map(|_| start_worker(&ns, &log))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    // When each killed worker (by pid) was killed, ns since the epoch.
    let mut killed_at: BTreeMap<u32, u128> = BTreeMap::new();
    let mut next_kill = started + Duration::from_millis(rand::rng().random_range(2_000..3_000));
    let completed = loop {
        let done: HashSet<uuid::Uuid> = tap
            .of_kind("node.completed")
            .into_iter()
            .filter_map(|e| e.task_id)
            .filter(|id| ids.contains(id))
            .collect();
        if done.len() == ids.len() || started.elapsed() > s.timeout {
            break done;
        }
        if Instant::now() >= next_kill {
            let victim = rand::rng().random_range(0..workers.len());
            killed_at.insert(workers[victim].id(), epoch_ns());
            sigkill(&mut workers[victim]);
            workers[victim] = start_worker(&ns, &log)?;
            next_kill =
                Instant::now() + Duration::from_millis(rand::rng().random_range(2_000..3_000));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    workers.iter_mut().for_each(sigkill);
    // Long enough for a program that outlived its worker to finish its side effect.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Task number → (worker pid, time) of each side effect.
    let mut counts: BTreeMap<usize, Vec<(u32, u128)>> = BTreeMap::new();
    for line in std::fs::read_to_string(&effects)
        .unwrap_or_default()
        .lines()
    {
        let mut fields = line.split_whitespace().map(str::parse::<u128>);
        let (Some(Ok(n)), Some(Ok(pid)), Some(Ok(at))) =
            (fields.next(), fields.next(), fields.next())
        else {
            bail!("unreadable effects line `{line}`");
        };
        counts
            .entry(usize::try_from(n)?)
            .or_default()
            .push((u32::try_from(pid)?, at));
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, c)| c.len() > 1).collect();
    let missing_effects = (0..s.tasks).filter(|i| !counts.contains_key(i)).count();
    let dead = tap.of_kind("node.dead_lettered").len();
    // Redeliveries that found their program's outcome recorded by its shim (it had ended, its
    // worker was killed before recording the task's end) and did not run it again.
    let reused = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("an earlier delivery of this attempt ran the program")
        .count();
    let lost = ids.len() - completed.len();
    println!(
        "{} tasks, {} workers, {} SIGKILLs in {:.1} s: completed {}, lost {lost}, dead-lettered events {dead}, side effects {} (missing {missing_effects}, duplicated {}), recorded outcomes reused instead of a rerun {reused}",
        s.tasks,
        s.workers,
        killed_at.len(),
        elapsed.as_secs_f64(),
        completed.len(),
        counts.values().map(Vec::len).sum::<usize>(),
        duplicated.len(),
    );
    for (n, runs) in &duplicated {
        let first = runs[0];
        let gap = killed_at.get(&first.0).map(|k| {
            format!(
                "{} ms before its worker was SIGKILLed",
                (*k as i128 - first.1 as i128) / 1_000_000
            )
        });
        println!(
            "task {n}: side effect {} times; the first by worker {} {}",
            runs.len(),
            first.0,
            gap.unwrap_or_else(|| "whose worker was not killed".into())
        );
    }
    if lost > 0 || !duplicated.is_empty() {
        bail!(
            "{lost} lost, {} duplicated side effects (workers' log kept in {})",
            duplicated.len(),
            log.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
