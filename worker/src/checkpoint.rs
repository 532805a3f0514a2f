//! Checkpoints: how a long task saves its progress so that, after a crash, the redelivered
//! task resumes from there instead of from scratch.
//!
//! A checkpoint lives in Redis under the task id, with the version of the handler that wrote
//! it; a handler of another version ignores it and starts over (its progress may mean
//! something else). Saving is best effort: with Redis unreachable the task keeps running and
//! a crash restarts it from the last checkpoint that was saved.

use crate::store::Store;
use serde_json::{Value, json};
use std::sync::Arc;

/// How long an unfinished task's checkpoint is kept.
const TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// One task's checkpoint, as its handler sees it.
pub struct Checkpoint {
    store: Arc<Store>,
    task_id: String,
    version: String,
}

impl Checkpoint {
    /// The checkpoint of `task_id` for a handler at `version`.
    pub fn new(store: Arc<Store>, task_id: String, version: String) -> Self {
        Self {
            store,
            task_id,
            version,
        }
    }

    /// The handler version checkpoints are written with.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The progress last saved by this handler version, if any.
    pub async fn load(&self) -> Option<Value> {
        let raw = match self.store.checkpoint_get(&self.task_id).await {
            Ok(raw) => raw?,
            Err(e) => {
                tracing::warn!(task_id = self.task_id, error = %e, "cannot read the checkpoint: starting from scratch");
                return None;
            }
        };
        let saved: Value = match serde_json::from_str(&raw) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(task_id = self.task_id, error = %e, "unreadable checkpoint ignored");
                return None;
            }
        };
        let version = saved["version"].as_str().unwrap_or_default();
        if version != self.version {
            tracing::info!(
                task_id = self.task_id,
                saved_version = version,
                handler_version = self.version,
                "checkpoint from another handler version ignored: starting from scratch"
            );
            return None;
        }
        Some(saved["progress"].clone())
    }

    /// Saves `progress`; `false` if it could not be saved (the task goes on regardless).
    pub async fn save(&self, progress: &Value) -> bool {
        let record = json!({
            "version": self.version,
            "progress": progress,
            "saved_at_ms": secflow_common::now_ms(),
        });
        match self
            .store
            .checkpoint_set(&self.task_id, &record.to_string(), TTL_MS)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task_id = self.task_id, error = %e, "checkpoint not saved");
                false
            }
        }
    }

    /// Forgets the checkpoint once the task has completed.
    pub async fn clear(&self) {
        let _ = self.store.checkpoint_delete(&self.task_id).await;
    }
}
