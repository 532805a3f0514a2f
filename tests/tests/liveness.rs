//! Lease takeover on real Redis: a lease is taken over only once its worker's liveness key is
//! gone, never while that worker is alive.

use secflow_tests::TestNs;
use secflow_worker::store::{Lease, Refused, Store};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

const LEASE_MS: u64 = 30_000;

/// A worker's store on the shared Redis, with its heartbeat running until `stop`.
async fn worker_store(ns: &TestNs, worker: &str, stop: &CancellationToken) -> Arc<Store> {
    let store = Store::new(
        secflow_common::config::DEFAULT_REDIS_URL,
        &ns.name,
        Arc::default(),
    )
    .unwrap();
    assert!(store.check().await, "Redis must run on 127.0.0.1:6379");
    store.keep_alive_worker(worker.into(), stop.clone());
    store
}

/// Proves: a second worker does not take a lease over while its holder's worker keeps its
/// liveness fresh (it waits out one liveness period, then refuses), and takes it over at once
/// after that worker stopped (its liveness key deleted); the first attempt then knows it lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_taken_over_only_from_a_dead_worker() {
    let ns = TestNs::new().await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = worker_store(&ns, "worker-a", &stop_a).await;
    let b = worker_store(&ns, "worker-b", &stop_b).await;

    let held = Lease::claim(&a, "t1", "worker-a", LEASE_MS)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("a free task is claimed, not refused: {r:?}"));
    let refused = Lease::claim(&b, "t1", "worker-b", LEASE_MS).await.unwrap();
    assert!(
        matches!(refused, Err(Refused::Leased(ms)) if ms > 20_000),
        "a live worker's lease is not taken over: {:?}",
        refused.as_ref().err()
    );

    stop_a.cancel();
    let at = Instant::now();
    let taken = loop {
        if let Ok(lease) = Lease::claim(&b, "t1", "worker-b", LEASE_MS).await.unwrap() {
            break lease;
        }
        assert!(at.elapsed() < Duration::from_secs(10), "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        at.elapsed() < Duration::from_secs(4),
        "taken over {:?} after its worker stopped",
        at.elapsed()
    );
    assert_ne!(taken.owner(), held.owner());
    assert!(
        !a.renew("t1", held.owner(), LEASE_MS).await.unwrap(),
        "the first attempt's lease is gone"
    );
    stop_b.cancel();
}
