//! Whether a hanging webhook slows tasks: one worker drains no-op tasks without hooks, with a
//! fleet hook whose receiver answers at once, and with one whose receiver never answers, each
//! in a fresh namespace. Rounds alternate, so a machine that gets busier does not favour any
//! side; the medians are compared. The answering hook shows what having hooks costs (each
//! completion event is also routed to the hooks queue and delivered); the hanging one must
//! cost no more than that.
//!
//! `cargo bench -p secflow-tests --bench hooks` (SECFLOW_BENCH_TASKS overrides 10,000 tasks,
//! SECFLOW_BENCH_ROUNDS 3 rounds; the default run takes about a minute).

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
    let tasks = env_or("SECFLOW_BENCH_TASKS", 10_000) as u64;
    let rounds = env_or("SECFLOW_BENCH_ROUNDS", 3).max(1);
    let answering = HookReceiver::start(|_| Answer::Status(200)).await;
    let hanging = HookReceiver::start(|_| Answer::Hang).await;
    let (mut plain, mut answered, mut hung) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let drain = drain_noop(tasks, None).await;
        plain.push(drain.per_sec());
        drain.worker.stop().await;
        let drain = drain_noop(tasks, Some(&answering.url())).await;
        answered.push(drain.per_sec());
        drain.worker.stop().await;
        let drain = drain_noop(tasks, Some(&hanging.url())).await;
        hung.push(drain.per_sec());
        drain.worker.stop().await;
        println!(
            "round {round}: {:.0} tasks/s without hooks, {:.0} with an answering hook, {:.0} with a hanging hook ({} requests hanging so far)",
            plain[round - 1],
            answered[round - 1],
            hung[round - 1],
            hanging.requests().len()
        );
    }
    let (plain, answered, hung) = (median(plain), median(answered), median(hung));
    println!(
        "{tasks} no-op tasks on one worker (prefetch 64), median of {rounds}: {plain:.0} tasks/s without hooks, {answered:.0} with an answering hook ({:.0} %), {hung:.0} with a hanging hook ({:.0} % of no hooks, {:.0} % of an answering hook)",
        100.0 * answered / plain,
        100.0 * hung / plain,
        100.0 * hung / answered
    );
}
