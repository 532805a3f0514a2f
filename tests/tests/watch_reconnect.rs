//! `producer watch` across a real broker restart (a private RabbitMQ node stopped and started
//! again while it watches): it reconnects, subscribes again, reads the run's state again and
//! ends with the run's real outcome instead of an error.

use secflow_producer::recipes::submit;
use secflow_tests::{KillOnDrop, PrivateRabbit, TestNs, exit_status, recipe_file, wait_for};
use std::{
    io::BufRead,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Three nodes of 1.5 s each, one after the other: the run outlasts the restart's start.
const SLOW_CHAIN: &str = r#"
version: 1
name: slow-chain
nodes:
  - { id: one, type: builtin.sleep, config: { ms: 1500 }, outputs: [slept_ms] }
  - { id: two, type: builtin.sleep, inputs: { a: one.slept_ms }, config: { ms: 1500 }, outputs: [slept_ms] }
  - { id: three, type: builtin.sleep, inputs: { b: two.slept_ms }, config: { ms: 1500 } }
"#;

/// Submits the slow chain on `ns`; its run id.
async fn submit_slow_chain(ns: &TestNs) -> uuid::Uuid {
    let recipe = recipe_file(ns, "slow-chain", SLOW_CHAIN);
    submit(&ns.broker(), &recipe, &Default::default(), None, false)
        .await
        .expect("the run is submitted")
        .run_id
}

/// `producer watch RUN` on `ns` through `rabbit`, giving up after `connect_timeout` s of outage.
fn spawn_watch(
    rabbit: &PrivateRabbit,
    ns: &TestNs,
    run: uuid::Uuid,
    connect_timeout: u64,
    stderr: Stdio,
) -> KillOnDrop {
    KillOnDrop(
        secflow_tests::command("producer")
            .env("AMQP_URL", rabbit.url())
            .args([
                "--namespace",
                &ns.name,
                "--connect-timeout-secs",
                &connect_timeout.to_string(),
                "watch",
                &run.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn producer watch"),
    )
}

/// Proves: `producer watch RUN` survives a broker restart while it watches: it does not exit
/// while the broker is down, and once the broker is back it follows the run to its end and
/// exits 0 saying the run succeeded (before, a lost connection ended it with an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_run_across_a_broker_restart() {
    let rabbit = PrivateRabbit::start();
    let ns = TestNs::on_broker(&rabbit.url(), 5).await;
    let mut worker = KillOnDrop(ns.spawn_worker_process(&[]));
    let run = submit_slow_chain(&ns).await;

    let mut watch = spawn_watch(&rabbit, &ns, run, 90, Stdio::inherit());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = watch.0.stdout.take().expect("piped stdout");
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    let printed = |needle: &'static str| {
        let lines = Arc::clone(&lines);
        move || {
            let found = lines.lock().unwrap().iter().any(|l| l.contains(needle));
            async move { found }
        }
    };
    wait_for(
        "watch to print the run's state (it is subscribed)",
        Duration::from_secs(30),
        printed("nodes ended"),
    )
    .await;

    tokio::task::block_in_place(|| rabbit.stop());
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "watch exited while the broker was down: {:?}",
        lines.lock().unwrap()
    );
    tokio::task::block_in_place(|| rabbit.start_again());

    let status = exit_status(&mut watch.0, Duration::from_secs(90)).await;
    let out = lines.lock().unwrap().join("\n");
    assert_eq!(status.code(), Some(0), "watch failed:\n{out}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("run {run}: succeeded,"))),
        "the last line states the run succeeded:\n{out}"
    );
    let runs = secflow_common::runs::RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    assert_eq!(
        runs.status(&run.to_string()).await.unwrap().status,
        "succeeded"
    );
    secflow_tests::stop_gracefully(&mut worker.0).await;
}

/// Proves: an outage longer than `--connect-timeout-secs` ends `producer watch` with a clear
/// error naming the run and the flag (exit non-zero), instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gives_up_after_an_outage_longer_than_the_connect_timeout() {
    let rabbit = PrivateRabbit::start();
    let ns = TestNs::on_broker(&rabbit.url(), 5).await;
    // No worker: the run stays running, so only the outage can end the watch.
    let run = submit_slow_chain(&ns).await;
    let mut watch = spawn_watch(&rabbit, &ns, run, 3, Stdio::piped());
    let mut stdout = std::io::BufReader::new(watch.0.stdout.take().expect("piped stdout"));
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).map(|_| line)
    });
    let first = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("watch prints the run's state within 30 s")
        .unwrap()
        .unwrap();
    assert!(first.contains("running"), "{first}");

    tokio::task::block_in_place(|| rabbit.stop());
    let stopped = std::time::Instant::now();
    let status = exit_status(&mut watch.0, Duration::from_secs(30)).await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("--connect-timeout-secs") && stderr.contains(&run.to_string()),
        "the error names the flag and the run: {stderr}"
    );
    eprintln!(
        "watch gave up {:?} after the broker stopped",
        stopped.elapsed()
    );
}
