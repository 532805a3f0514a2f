//! The worker registry: every worker process writes its record to the hash `sf:{ns:workers}`
//! (field: its liveness id) on each heartbeat, and deletes it when it exits cleanly. A record
//! whose last beat is older than [`SILENT_BEATS`] beats belongs to a worker that is stopped,
//! hung or gone: it is reported `unresponsive`.

use super::{ControlError, ControlStore, Level, redis_err};
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Beats a worker may miss before it is reported unresponsive.
pub const SILENT_BEATS: u64 = 3;

/// What a worker says about itself on every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The worker's id (`--worker-id`, default host and pid).
    pub id: String,
    /// The process's liveness id (part of every lease it takes).
    pub live: String,
    /// Its pool (`--pool`).
    pub pool: String,
    /// Its version.
    pub version: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// When it last beat.
    pub last_beat_ms: u64,
    /// How often it beats, ms.
    pub beat_ms: u64,
    /// Tasks running now.
    pub in_flight: u64,
    /// Tasks completed since it started.
    pub done: u64,
    /// Tasks that failed (retried or dead-lettered) since it started.
    pub failed: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// The degradation level it last saw.
    pub level: Level,
    /// `consuming`, `stopping`, `disconnected`, `memory_limit`.
    pub state: String,
    /// Its `--max-rss-mb` in bytes (0: no limit).
    #[serde(default)]
    pub max_rss_bytes: u64,
    /// Services whose breaker it last saw open.
    #[serde(default)]
    pub open_breakers: Vec<String>,
    /// How long the last message it took had waited in its work queue, ms.
    #[serde(default)]
    pub queue_wait_ms: u64,
    /// When it took that message (ms since the epoch; 0: none yet).
    #[serde(default)]
    pub queue_wait_at_ms: u64,
    /// Deliveries it settled (acked) since it started: completed, cancelled, retried,
    /// deferred, dead-lettered, handed back or acked as duplicates.
    #[serde(default)]
    pub settled: u64,
}

impl WorkerRecord {
    /// Whether it has been silent for [`SILENT_BEATS`] beats at `now_ms`.
    pub fn unresponsive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_beat_ms) > SILENT_BEATS * self.beat_ms.max(1)
    }
}

/// The registry hash of namespace `ns`.
pub fn registry_key(ns: &str) -> String {
    format!("sf:{{{ns}:workers}}")
}

impl ControlStore {
    /// Writes this worker's record.
    pub async fn beat(&self, record: &WorkerRecord) -> Result<(), ControlError> {
        let mut conn = self.conn().await?;
        let value = serde_json::to_string(record).unwrap_or_default();
        conn.hset::<_, _, _, ()>(registry_key(&self.ns), &record.live, value)
            .await
            .map_err(redis_err)
    }

    /// Removes the record of the worker whose liveness id is `live`.
    pub async fn forget_worker(&self, live: &str) -> Result<(), ControlError> {
        let mut conn = self.conn().await?;
        conn.hdel::<_, _, ()>(registry_key(&self.ns), live)
            .await
            .map_err(redis_err)
    }

    /// Every registered worker, by liveness id; records that do not parse are skipped with
    /// their field named in the second list.
    pub async fn workers(&self) -> Result<(Vec<WorkerRecord>, Vec<String>), ControlError> {
        let mut conn = self.conn().await?;
        let fields: BTreeMap<String, String> = conn
            .hgetall(registry_key(&self.ns))
            .await
            .map_err(redis_err)?;
        let mut records = Vec::new();
        let mut problems = Vec::new();
        for (live, value) in fields {
            match serde_json::from_str::<WorkerRecord>(&value) {
                Ok(r) => records.push(r),
                Err(e) => problems.push(format!("{live}: {e}")),
            }
        }
        records.sort_by(|a, b| (&a.pool, &a.id).cmp(&(&b.pool, &b.id)));
        Ok((records, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_missed_beats_make_a_worker_unresponsive() {
        let r = WorkerRecord {
            id: "w".into(),
            live: "l".into(),
            pool: "default".into(),
            version: "0".into(),
            host: "h".into(),
            pid: 1,
            started_ms: 0,
            last_beat_ms: 10_000,
            beat_ms: 1_000,
            in_flight: 0,
            done: 0,
            failed: 0,
            rss_bytes: 0,
            level: Level::Full,
            state: "consuming".into(),
            max_rss_bytes: 0,
            open_breakers: Vec::new(),
            queue_wait_ms: 0,
            queue_wait_at_ms: 0,
            settled: 0,
        };
        assert!(!r.unresponsive(13_000));
        assert!(r.unresponsive(13_001));
    }
}
