//! Checkpoints: how a long task saves its progress so that, after a crash, the redelivered
//! task resumes from there instead of from scratch.
//!
//! A checkpoint lives in Redis under the task id, with the version of the handler that wrote
//! it; a handler of another version ignores it and starts over (its progress may mean
//! something else). Saving is best effort: with Redis unreachable the task keeps running and
//! a crash restarts it from the last checkpoint that was saved.

use crate::store::Store;
use serde::Deserialize;
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

    /// The progress last saved by this handler version, if any. A checkpoint in no format
    /// this worker writes is corrupted state (logged, counted) and ignored: the task starts
    /// from scratch, and its next save replaces it.
    pub async fn load(&self) -> Option<Value> {
        let raw = match self.store.checkpoint_get(&self.task_id).await {
            Ok(raw) => raw?,
            Err(e) => {
                tracing::warn!(task_id = self.task_id, error = %e, "cannot read the checkpoint: starting from scratch");
                return None;
            }
        };
        let saved = match parse_record(&raw) {
            Ok(saved) => saved,
            Err(detail) => {
                let key = self.store.checkpoint_key(&self.task_id);
                self.store.corrupted(&key, detail);
                return None;
            }
        };
        if saved.version != self.version {
            tracing::info!(
                task_id = self.task_id,
                saved_version = saved.version,
                handler_version = self.version,
                "checkpoint from another handler version ignored: starting from scratch"
            );
            return None;
        }
        Some(saved.progress)
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

/// A checkpoint as stored.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// Version of the handler that saved it.
    pub version: String,
    /// What the handler saved.
    pub progress: Value,
    /// When, ms since the epoch.
    pub saved_at_ms: u64,
}

/// Parses a stored checkpoint strictly; the error says what is wrong with it.
pub fn parse_record(raw: &str) -> Result<Saved, String> {
    serde_json::from_str(raw).map_err(|e| format!("checkpoint is unreadable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_save_writes_parses() {
        let raw = json!({"version": "v1", "progress": {"done": 3}, "saved_at_ms": 7}).to_string();
        assert_eq!(
            parse_record(&raw),
            Ok(Saved {
                version: "v1".into(),
                progress: json!({"done": 3}),
                saved_at_ms: 7
            })
        );
    }

    #[test]
    fn garbage_is_refused() {
        for raw in [
            "garbage",
            "{}",
            r#"{"version": 1, "progress": 3, "saved_at_ms": 7}"#,
            r#"{"version": "v1", "saved_at_ms": 7}"#,
            r#"{"version": "v1", "progress": 3, "saved_at_ms": -7}"#,
            r#"{"version": "v1", "progress": 3, "saved_at_ms": 7, "extra": true}"#,
        ] {
            let err = parse_record(raw).unwrap_err();
            assert!(err.contains("checkpoint is unreadable"), "{raw}: {err}");
        }
    }
}
