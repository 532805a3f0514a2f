//! Guarantee 6 of `docs/ARCHITECTURE.md` for a failure-rate threshold, against the real Redis:
//! two workers' breakers on one namespace count every call of a service with a rate threshold
//! in one shared window, and the rate opens it for both although the count threshold is not
//! reached; services without a rate threshold keep successes off Redis.

use secflow_common::{config::DEFAULT_REDIS_URL, now_ms};
use secflow_tests::TestNs;
use secflow_worker::{
    WorkerStats,
    breaker::{
        Breakers, CLOSED_CACHE_MS, parse_record,
        state::{BreakerConfig, BreakerState, Mode, Verdict},
        window,
    },
    store::Store,
};
use std::{collections::HashMap, sync::Arc};

/// The service with a rate threshold: 40 % of at least 20 calls in a minute; a count threshold
/// of 50 failures, which these tests never reach.
const RATED: &str = "scanner";

fn rated() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 50,
        failure_rate_threshold: Some(40),
        minimum_calls: 20,
        window_ms: 60_000,
        open_ms: 10_000,
        ..BreakerConfig::default()
    }
}

/// One worker's breakers on the namespace: its own store (connection pool), `RATED` with a rate
/// threshold, every other service on the count-only defaults.
fn worker_breakers(ns: &TestNs) -> (Arc<Store>, Breakers) {
    let store = Store::new(
        DEFAULT_REDIS_URL,
        &ns.name,
        Arc::new(WorkerStats::default()),
    )
    .expect("a Redis URL that parses");
    let configs = HashMap::from([(RATED.to_string(), rated())]);
    let breakers = Breakers::new(Arc::clone(&store), BreakerConfig::default(), configs);
    (store, breakers)
}

/// The breaker of `service` as stored in Redis, if any.
async fn stored(store: &Arc<Store>, service: &str) -> Option<BreakerState> {
    let raw = store
        .breaker_get(service)
        .await
        .expect("Redis must run on 127.0.0.1:6379")?;
    Some(
        parse_record(&raw)
            .expect("a breaker record this worker wrote")
            .1,
    )
}

/// Proves: with calls of one service reported by two workers, half of them failing, the
/// breaker stays closed below `minimum_calls` and opens for both workers on the call that
/// reaches it (50 % ≥ 40 %) with 10 failures, far below the count threshold of 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_calls_failing_opens_the_breaker_for_the_fleet_before_the_count_does() {
    let ns = TestNs::new().await;
    let (store, a) = worker_breakers(&ns);
    let (_, b) = worker_breakers(&ns);
    let t0 = now_ms();
    // Worker a's calls succeed, worker b's fail, in turn.
    for i in 0..19 {
        let (worker, healthy) = if i % 2 == 0 { (&a, true) } else { (&b, false) };
        assert_eq!(worker.admit(RATED, t0 + i).await, Verdict::Allow);
        worker.record(RATED, healthy, t0 + i).await;
    }
    let before = stored(&store, RATED).await.expect("the calls are stored");
    assert_eq!(before.mode, Mode::Closed, "19 calls: below minimum_calls");
    assert_eq!(
        window::totals(&before.calls),
        (19, 9),
        "both workers' calls, successes too, are in the shared window"
    );

    b.record(RATED, false, t0 + 19).await;
    let after = stored(&store, RATED).await.expect("the breaker is stored");
    assert_eq!(
        after.mode,
        Mode::Open,
        "10 failures of 20 calls: 50 % ≥ 40 %"
    );
    // Both workers refuse calls once their short trust in a closed breaker is over.
    let later = t0 + 19 + CLOSED_CACHE_MS;
    for worker in [&a, &b] {
        assert!(
            matches!(worker.admit(RATED, later).await, Verdict::Reject { until_ms } if until_ms == t0 + 19 + 10_000),
            "every worker defers until the open period ends"
        );
    }
}

/// Proves: at 10 % failures over five times `minimum_calls` the breaker stays closed, and the
/// shared window holds every call of both workers in a few counters, not one entry per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_failure_rate_keeps_the_breaker_closed() {
    let ns = TestNs::new().await;
    let (store, a) = worker_breakers(&ns);
    let (_, b) = worker_breakers(&ns);
    let t0 = now_ms();
    for i in 0..100 {
        let worker = if i % 2 == 0 { &a } else { &b };
        let now = t0 + i * 10;
        assert_eq!(worker.admit(RATED, now).await, Verdict::Allow, "call {i}");
        worker.record(RATED, i % 10 != 3, now).await;
    }
    let state = stored(&store, RATED).await.expect("the calls are stored");
    assert_eq!(state.mode, Mode::Closed);
    assert_eq!(window::totals(&state.calls), (100, 10));
    assert!(
        state.calls.len() <= 2,
        "{} buckets for 1 s of calls in a 60 s window",
        state.calls.len()
    );
    assert_eq!(state.failures.len(), 10, "the count threshold counts on");
}

/// Proves: a service without a rate threshold keeps the cheap path: a success in a breaker
/// just seen closed is not written to Redis, and a failure is stored without call counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_a_rate_threshold_keep_successes_off_redis() {
    let ns = TestNs::new().await;
    let (store, a) = worker_breakers(&ns);
    let t0 = now_ms();
    assert_eq!(a.admit("plain", t0).await, Verdict::Allow);
    a.record("plain", true, t0 + 1).await;
    assert_eq!(
        stored(&store, "plain").await,
        None,
        "the success was not reported"
    );
    a.record("plain", false, t0 + 2).await;
    let state = stored(&store, "plain")
        .await
        .expect("the failure is stored");
    assert_eq!((state.failures.len(), state.calls.len()), (1, 0));
    let raw = store
        .breaker_get("plain")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        !raw.contains("calls"),
        "the record keeps its count-only form: {raw}"
    );
}
