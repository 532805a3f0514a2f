//! What falling through a fallback chain costs, in process (no broker): the worker's handlers
//! and breakers (on Redis on loopback) are built and the chain function is called directly.
//! A chain whose primary and first alternative fail at once (`transient`, so each failure is
//! recorded on its breaker, a 1 ms window keeping the breaker's state small) and whose second alternative (`builtin.static`) serves is timed
//! against that alternative run alone through the same function; the difference divided by
//! the two fall-throughs is the per-fallback overhead. Rounds alternate the two so a machine
//! that gets busier favours neither; medians are compared. Target: under 1 ms.
//!
//! `cargo bench -p secflow-tests --bench fallback` (SECFLOW_BENCH_OPS overrides 2,000 chains
//! per round, SECFLOW_BENCH_ROUNDS 5 rounds).

use secflow_common::{
    TaskEnvelope, TaskError, config::DEFAULT_REDIS_URL, control::Level, recipe::Alternative,
    tools::ToolSet,
};
use secflow_tests::env_or;
use secflow_worker::{
    WorkerStats,
    breaker::{Breakers, state::BreakerConfig},
    checkpoint::Checkpoint,
    classify::Classifier,
    fallback::{ChainEnd, StepRunner, alternative_task, run_chain},
    handlers::{ExecPolicy, Handlers, TaskContext, Tooling},
    store::Store,
};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

/// Calls the worker's handlers directly, as the task pipeline does under its timeout.
struct Direct {
    handlers: Handlers,
    store: Arc<Store>,
}

impl StepRunner for Direct {
    async fn run(&self, task: &TaskEnvelope) -> Option<Result<Value, TaskError>> {
        let ctx = TaskContext {
            task,
            retry_count: 0,
            requeue_count: 0,
            timeout: Duration::from_secs(10),
            checkpoint: Checkpoint::new(
                Arc::clone(&self.store),
                task.task_id.to_string(),
                self.handlers.version(&task.node_type),
            ),
        };
        Some(self.handlers.run(&ctx).await)
    }
}

/// Runs `n` chains; mean time per chain.
async fn time(
    n: usize,
    primary: &TaskEnvelope,
    alternatives: &[(TaskEnvelope, Level)],
    breakers: &Breakers,
    runner: &Direct,
) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        match run_chain(primary, false, alternatives, breakers, runner).await {
            ChainEnd::Served { .. } => {}
            other => panic!("the chain did not serve: {other:?}"),
        }
    }
    started.elapsed() / n as u32
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_or("SECFLOW_BENCH_OPS", 2_000);
    let rounds = env_or("SECFLOW_BENCH_ROUNDS", 5).max(1);
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let store = Store::new(DEFAULT_REDIS_URL, &ns, Arc::new(WorkerStats::default()))
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(store.check().await, "Redis must run on 127.0.0.1:6379");
    // Failures are recorded (a compare-and-set in Redis each) but never open a breaker: every
    // chain falls through the same way. A 1 ms window keeps the stored failure list short, as a
    // breaker that opens after a few failures does (a list of every failure of the run would
    // make each record slower than the last, which is the breaker's cost, not the chain's).
    let lenient = BreakerConfig {
        failure_threshold: 1_000,
        window_ms: 1,
        ..BreakerConfig::default()
    };
    let breakers = Breakers::new(Arc::clone(&store), lenient, HashMap::new());
    let handlers = Handlers::new(
        1 << 20,
        Classifier::new(None, None).map_err(anyhow::Error::msg)?,
        ExecPolicy::new(&[], None, None).map_err(anyhow::Error::msg)?,
        BTreeMap::new(),
        Tooling::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let runner = Direct {
        handlers,
        store: Arc::clone(&store),
    };
    let fail = json!({"class": "transient", "code": "source_down"});
    let mut primary = TaskEnvelope::new("builtin.fail", fail.clone());
    primary.service = Some("cve-primary".into());
    let alt = |node_type: &str, config: &Value, service: &str| Alternative {
        node_type: node_type.into(),
        config: config.clone(),
        timeout_ms: None,
        service: Some(service.into()),
        quality: Level::Low,
    };
    let cache = json!({"body": "CVE-2021-44228 (cached)"});
    let tools = ToolSet::default();
    let chain: Vec<(TaskEnvelope, Level)> = [
        alt("builtin.fail", &fail, "cve-mirror"),
        alt("builtin.static", &cache, "cve-cache"),
    ]
    .iter()
    .map(|a| {
        (
            alternative_task(&primary, a, Level::Full, &tools),
            a.quality,
        )
    })
    .collect();
    let alone = chain[1].0.clone();
    // Warm up: connections, breaker states, caches.
    time(200, &primary, &chain, &breakers, &runner).await;
    time(200, &alone, &[], &breakers, &runner).await;
    let (mut chained, mut single) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let c = time(n, &primary, &chain, &breakers, &runner).await;
        let s = time(n, &alone, &[], &breakers, &runner).await;
        println!(
            "round {round}: chain served by its 2nd alternative {:.1} µs, that alternative alone {:.1} µs",
            c.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6
        );
        chained.push(c);
        single.push(s);
    }
    let (c, s) = (median(chained), median(single));
    let per_fallback = c.saturating_sub(s) / 2;
    println!(
        "{n} chains × {rounds} rounds, medians: chain {:.1} µs, alternative alone {:.1} µs, per-fallback overhead {:.1} µs (target < 1000 µs: {})",
        c.as_secs_f64() * 1e6,
        s.as_secs_f64() * 1e6,
        per_fallback.as_secs_f64() * 1e6,
        if per_fallback < Duration::from_millis(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    // Leave nothing behind (breaker records).
    secflow_tests::delete_redis_keys(DEFAULT_REDIS_URL, &ns).await?;
    Ok(())
}
