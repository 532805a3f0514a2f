//! Whether a hanging webhook slows tasks: one worker drains no-op tasks without hooks, then
//! with a fleet hook whose receiver never answers, each in a fresh namespace; both rates are
//! printed with their ratio. Rounds alternate, so a machine that gets busier does not favour
//! either side; the medians are compared.
//!
//! `cargo bench -p secflow-tests --bench hooks` (SECFLOW_BENCH_TASKS overrides 2,000 tasks,
//! SECFLOW_BENCH_ROUNDS 3 rounds; the default run takes about 30 s).

use secflow_tests::{
    env_or,
    hooks::{Answer, HookReceiver, drain_noop},
};

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() {
    let tasks = env_or("SECFLOW_BENCH_TASKS", 2_000) as u64;
    let rounds = env_or("SECFLOW_BENCH_ROUNDS", 3).max(1);
    let receiver = HookReceiver::start(|_| Answer::Hang).await;
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let drain = drain_noop(tasks, None).await;
        plain.push(drain.per_sec());
        drain.worker.stop().await;
        let drain = drain_noop(tasks, Some(&receiver.url())).await;
        hooked.push(drain.per_sec());
        let pending = receiver.requests().len();
        drain.worker.stop().await;
        println!(
            "round {round}: {:.0} tasks/s without hooks, {:.0} tasks/s with a hanging fleet hook ({pending} hook requests hanging so far)",
            plain[round - 1],
            hooked[round - 1]
        );
    }
    let (plain, hooked) = (median(plain), median(hooked));
    println!(
        "{tasks} no-op tasks on one worker (prefetch 64), median of {rounds}: {plain:.0} tasks/s without hooks, {hooked:.0} tasks/s with a hanging hook ({:.0} %)",
        100.0 * hooked / plain
    );
}
