//! The store's breaker, checkpoint and failure-counter records: plain reads and writes whose
//! values the callers parse ([`crate::breaker`], [`crate::checkpoint`]).

use super::{Store, StoreError};
use std::sync::Arc;

impl Store {
    /// The key of `service`'s breaker, for reports.
    pub fn breaker_key(&self, service: &str) -> String {
        self.key("breaker", service, "")
    }

    /// A breaker's stored value as it is (`None` when absent); the caller parses it.
    pub async fn breaker_get(
        self: &Arc<Self>,
        service: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.breaker_key(service);
        let mut get = deadpool_redis::redis::cmd("GET");
        get.arg(&key);
        self.command(&key, get).await
    }

    /// Deletes a breaker's stored value (it was unusable).
    pub async fn breaker_delete(self: &Arc<Self>, service: &str) -> Result<(), StoreError> {
        let key = self.breaker_key(service);
        let mut del = deadpool_redis::redis::cmd("DEL");
        del.arg(&key);
        self.command::<i64>(&key, del).await.map(drop)
    }

    /// Replaces a breaker's stored value by `new` if it still is `expected` (`None`: absent).
    /// `Ok(None)` when swapped, else the current value to retry from.
    pub async fn breaker_cas(
        self: &Arc<Self>,
        service: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: u64,
    ) -> Result<Option<Option<String>>, StoreError> {
        let key = self.breaker_key(service);
        let (swapped, current): (i64, String) = self
            .run(
                &self.scripts.cas,
                &[&key],
                &[expected.unwrap_or_default(), new, &ttl_ms.to_string()],
            )
            .await?;
        Ok((swapped != 1).then(|| (!current.is_empty()).then_some(current)))
    }

    /// The key of `task_id`'s checkpoint, for reports.
    pub fn checkpoint_key(&self, task_id: &str) -> String {
        self.key("checkpoint", task_id, "")
    }

    /// A task's saved checkpoint as stored, if any; the caller parses it.
    pub async fn checkpoint_get(
        self: &Arc<Self>,
        task_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.checkpoint_key(task_id);
        let mut get = deadpool_redis::redis::cmd("GET");
        get.arg(&key);
        self.command(&key, get).await
    }

    /// Saves a task's checkpoint for `ttl_ms` (replacing whatever the key held).
    pub async fn checkpoint_set(
        self: &Arc<Self>,
        task_id: &str,
        json: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        self.set_px(self.checkpoint_key(task_id), json, ttl_ms)
            .await
    }

    /// Drops a task's checkpoint (it completed).
    pub async fn checkpoint_delete(self: &Arc<Self>, task_id: &str) -> Result<(), StoreError> {
        let key = self.checkpoint_key(task_id);
        let mut del = deadpool_redis::redis::cmd("DEL");
        del.arg(&key);
        self.command::<i64>(&key, del).await.map(drop)
    }

    /// Counts one more failure with `fingerprint` in a window of `window_ms`; returns the count.
    /// A counter holding garbage (not an integer, another type) is only a count: it is deleted
    /// (logged) and counting starts over.
    pub async fn bump_fingerprint(
        self: &Arc<Self>,
        fingerprint: &str,
        window_ms: u64,
    ) -> Result<u64, StoreError> {
        let key = self.key("fingerprint", fingerprint, "");
        let window = window_ms.to_string();
        match self.run(&self.scripts.bump, &[&key], &[&window]).await {
            Err(StoreError::Corrupted(_)) => {
                tracing::warn!(
                    key,
                    "repairing a corrupted failure counter: counting starts over"
                );
                let mut del = deadpool_redis::redis::cmd("DEL");
                del.arg(&key);
                self.command::<i64>(&key, del).await?;
                self.run(&self.scripts.bump, &[&key], &[&window]).await
            }
            other => other,
        }
    }
}
