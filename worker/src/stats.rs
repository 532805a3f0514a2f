//! Counters of what a worker has settled, for metrics, readiness and benchmarks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Settlement counters, shared by every in-flight task of a worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// How long the last delivery taken had waited in the work queue, ms.
    pub last_wait_ms: AtomicU64,
    /// When that delivery was taken, ms since the epoch (0: none yet).
    pub last_wait_at_ms: AtomicU64,
    /// Tasks completed and acked.
    pub completed: AtomicU64,
    /// Deliveries being processed now.
    pub in_flight: AtomicU64,
    /// Retry copies scheduled.
    pub retried: AtomicU64,
    /// Tasks dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Deliveries handed back unrun (shutdown, isolation).
    pub handed_back: AtomicU64,
    /// Tasks deferred without using a retry (open breaker, busy lease).
    pub deferred: AtomicU64,
    /// Suspect tasks run alone (their last attempt died with its worker).
    pub isolated: AtomicU64,
    /// Redelivered tasks that had already completed, acked without running.
    pub duplicates: AtomicU64,
    /// Redis is unreachable: breakers are local, idempotency checks are skipped.
    pub redis_degraded: AtomicBool,
    /// The worker is consuming its queue (readiness).
    pub consuming: AtomicBool,
    /// Redis keys found holding unusable state (wrong type, unknown format): each affects
    /// only its own task or service.
    pub state_corrupted: AtomicU64,
    /// Done markers of tasks completed without Redis that were dropped before Redis came back
    /// (more were kept than the store holds): their redelivered copies would run again.
    pub done_markers_dropped: AtomicU64,
    /// Settlements whose publish failed, so the delivery was nacked back to the broker.
    pub settle_failures: AtomicU64,
    /// Hook deliveries made (a 2xx answer, or a hook program that exited 0).
    pub hooks_delivered: AtomicU64,
    /// Hook deliveries skipped because their marker says they were made already.
    pub hooks_skipped: AtomicU64,
    /// Hook deliveries that failed for good or ran out of attempts (`hook.failed`).
    pub hooks_failed: AtomicU64,
}

impl WorkerStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
