//! The worker's registry record, written on every heartbeat: who it is, what it is doing, how
//! it is doing. Operators read it (`dlq-inspector workers`); the controller reads it for the
//! fleet's error rate, memory pressure and open breakers, and to spot silent workers.

use super::Fleet;
use crate::stats::WorkerStats;
use secflow_common::{control::registry::WorkerRecord, now_ms};
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// How often a worker writes its record.
pub const BEAT: Duration = Duration::from_secs(1);

impl Fleet {
    /// This worker's record now.
    pub fn record(&self) -> WorkerRecord {
        let stats = &self.stats;
        let state = if self.memory_exceeded.is_cancelled() {
            "memory_limit"
        } else if self.stopping.is_cancelled() {
            "stopping"
        } else if stats.consuming.load(std::sync::atomic::Ordering::Relaxed) {
            "consuming"
        } else {
            "disconnected"
        };
        WorkerRecord {
            id: self.worker_id.clone(),
            live: self.store.live_id().to_string(),
            pool: self.pool.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: self.host.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            last_beat_ms: now_ms(),
            beat_ms: BEAT.as_millis() as u64,
            in_flight: WorkerStats::get(&stats.in_flight),
            done: WorkerStats::get(&stats.completed),
            failed: WorkerStats::get(&stats.retried) + WorkerStats::get(&stats.dead_lettered),
            rss_bytes: super::memory::rss_bytes().unwrap_or(0),
            level: self.controls.level(),
            state: state.to_string(),
            max_rss_bytes: self.args.max_rss_mb << 20,
            open_breakers: self.breakers.open_now(now_ms()),
            queue_wait_ms: WorkerStats::get(&stats.last_wait_ms),
            queue_wait_at_ms: WorkerStats::get(&stats.last_wait_at_ms),
            settled: [
                &stats.completed,
                &stats.retried,
                &stats.dead_lettered,
                &stats.handed_back,
                &stats.deferred,
                &stats.duplicates,
            ]
            .into_iter()
            .map(WorkerStats::get)
            .sum(),
        }
    }

    /// Writes the record every [`BEAT`] until `stop`, then removes it (a clean exit leaves no
    /// unresponsive record behind).
    pub(super) fn keep_beating(self: &Arc<Self>, stop: CancellationToken) {
        let fleet = Arc::clone(self);
        let beating = tokio::spawn(async move {
            let Some(store) = fleet.controls.store() else {
                return;
            };
            loop {
                let record = fleet.record();
                let beat = tokio::time::timeout(Duration::from_secs(2), store.beat(&record));
                if let Ok(Err(e)) = beat.await {
                    tracing::debug!(error = %e, "registry record not written");
                }
                tokio::select! {
                    () = tokio::time::sleep(BEAT) => {}
                    () = stop.cancelled() => break,
                }
            }
            let live = fleet.store.live_id().to_string();
            let _ = tokio::time::timeout(Duration::from_secs(2), store.forget_worker(&live)).await;
        });
        *self
            .beating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(beating);
    }
}
