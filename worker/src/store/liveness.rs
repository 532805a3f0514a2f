//! Worker liveness: each worker process keeps a short-lived key `sf:{ns:worker:LIVE}` fresh;
//! a lease names its worker's `LIVE`, so another worker can tell within seconds that a lease's
//! holder died (SIGKILL, crash, lost host) and take the task over instead of waiting for the
//! lease to expire.
//!
//! A worker cut off from Redis for longer than [`LIVE_TTL`] looks dead too: its tasks may then
//! run a second time elsewhere, as they may already while Redis is unreachable (degraded mode).

use super::{Store, StoreError};
use secflow_common::now_ms;
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// How long a worker counts as alive after its last heartbeat.
pub const LIVE_TTL: Duration = Duration::from_secs(3);
/// How often a worker refreshes its liveness key: two may be missed before it looks dead.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// Who holds a task's lease, as its stored value (`lease:<owner>`) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// An attempt of the worker process whose liveness id is this: `<worker>/<live>/<attempt>`.
    Tracked(String),
    /// An attempt of a worker without liveness (an older version): `<worker>/<attempt>`. Only
    /// its lease's expiry frees the task.
    Untracked,
    /// Not a lease value this worker knows: treated as untracked, and logged.
    Unknown,
}

/// Reads a lease value (`lease:<owner>`) strictly.
pub fn holder(value: &str) -> Holder {
    value.strip_prefix("lease:").map_or(Holder::Unknown, owner)
}

/// Reads an attempt's identity strictly. Ids are 32 lowercase hex digits (simple UUIDs); the
/// worker id before them may contain anything, `/` included.
pub fn owner(owner: &str) -> Holder {
    let is_id =
        |s: &str| s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut parts = owner.rsplitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(attempt), Some(live), Some(worker))
            if is_id(attempt) && is_id(live) && !worker.is_empty() =>
        {
            Holder::Tracked(live.to_string())
        }
        (Some(attempt), Some(worker), rest)
            if is_id(attempt) && (!worker.is_empty() || rest.is_some()) =>
        {
            Holder::Untracked
        }
        _ => Holder::Unknown,
    }
}

impl Store {
    /// This worker process's liveness id, part of every lease it takes.
    pub fn live_id(&self) -> &str {
        &self.live_id
    }

    fn liveness_key(&self, live: &str) -> String {
        self.key("worker", live, "")
    }

    /// Refreshes this process's liveness key (its value names the worker, for operators).
    pub async fn heartbeat(self: &Arc<Self>, worker_id: &str) -> Result<(), StoreError> {
        let ttl_ms = LIVE_TTL.as_millis() as u64;
        let sent = now_ms();
        self.set_px(self.liveness_key(&self.live_id), worker_id, ttl_ms)
            .await?;
        self.alive_until_ms
            .fetch_max(sent + ttl_ms, Ordering::SeqCst);
        Ok(())
    }

    /// Makes sure this process's liveness key is there (with a second left) before it takes a
    /// lease: after a Redis outage it may have expired, and a lease without it looks abandoned.
    pub async fn ensure_alive(self: &Arc<Self>, worker_id: &str) -> Result<(), StoreError> {
        if now_ms() + 1_000 < self.alive_until_ms.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.heartbeat(worker_id).await
    }

    /// Keeps this process's liveness key fresh until `stop`, then deletes it (the worker left
    /// no lease behind).
    pub fn keep_alive_worker(self: &Arc<Self>, worker_id: String, stop: CancellationToken) {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                // Failures degrade the store, which says so; the next beat tries again.
                let _ = store.heartbeat(&worker_id).await;
                tokio::select! {
                    () = tokio::time::sleep(LIVE_EVERY) => {}
                    () = stop.cancelled() => break,
                }
            }
            let key = store.liveness_key(&store.live_id);
            let mut del = deadpool_redis::redis::cmd("DEL");
            del.arg(&key);
            let _ = store.command::<i64>(&key, del).await;
        });
    }

    /// How long the worker with liveness id `live` still counts as alive, ms; `None` if it
    /// does not (its key expired or was deleted).
    pub async fn alive_for(self: &Arc<Self>, live: &str) -> Result<Option<u64>, StoreError> {
        let key = self.liveness_key(live);
        let mut pttl = deadpool_redis::redis::cmd("PTTL");
        pttl.arg(&key);
        let ms: i64 = self.command(&key, pttl).await?;
        // -2: no key. -1 (no expiry) is never written; count it as alive for a full period.
        Ok(match ms {
            -2 => None,
            -1 => Some(LIVE_TTL.as_millis() as u64),
            ms => u64::try_from(ms).ok(),
        })
    }

    /// Replaces the lease `expected` (held by a dead worker) with this attempt's, atomically:
    /// false if the task's key no longer holds `expected`.
    pub async fn take_over(
        self: &Arc<Self>,
        task_id: &str,
        expected: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = self.key("task", task_id, "");
        let swapped: i64 = self
            .run(
                &self.scripts.take_over,
                &[&key],
                &[expected, &format!("lease:{owner}"), &lease_ms.to_string()],
            )
            .await?;
        Ok(swapped == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn lease_values_are_read_strictly() {
        assert_eq!(
            holder(&format!("lease:host-1/{A}/{B}")),
            Holder::Tracked(A.into())
        );
        assert_eq!(
            holder(&format!("lease:pod/x/{A}/{B}")),
            Holder::Tracked(A.into())
        );
        assert_eq!(holder(&format!("lease:host-1/{B}")), Holder::Untracked);
        assert_eq!(holder(&format!("lease:a/b/{B}")), Holder::Untracked);
        for bad in [
            format!("done:host/{B}"),
            format!("lease:{B}"),
            format!("lease:/{B}"),
            format!("lease:host/{}", &B[1..]),
            format!("lease:host/{}", B.to_uppercase()),
            "lease:".to_string(),
            "garbage".to_string(),
        ] {
            assert_eq!(holder(&bad), Holder::Unknown, "{bad}");
        }
    }
}
