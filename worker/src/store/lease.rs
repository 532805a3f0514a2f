//! One attempt's hold on a task: the lease while it runs, the done marker once it completed.

use super::{Claim, Store, StoreError};
use std::{sync::Arc, time::Duration};

/// Why an attempt may not run a task now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It already completed.
    Done,
    /// Another attempt holds it for this many more ms.
    Leased(u64),
    /// An attempt completed it and is reporting it (or died doing so): since when (ms since the
    /// epoch) and which attempt.
    Completing { since_ms: u64, owner: String },
}

/// This attempt's hold on a task: renewed while it runs, turned into a done marker when it
/// completes, dropped when it ends otherwise.
pub struct Lease {
    store: Arc<Store>,
    task_id: String,
    owner: String,
    lease_ms: u64,
}

impl Lease {
    /// Claims `task_id` for a new attempt; `Ok(Err(refusal))` when it must not run now.
    pub async fn claim(
        store: &Arc<Store>,
        task_id: &str,
        worker: &str,
        lease_ms: u64,
    ) -> Result<Result<Self, Refused>, StoreError> {
        let owner = format!("{worker}/{}", uuid::Uuid::new_v4().simple());
        Ok(match store.claim(task_id, &owner, lease_ms).await? {
            Claim::Claimed => Ok(Self {
                store: Arc::clone(store),
                task_id: task_id.to_string(),
                owner,
                lease_ms,
            }),
            Claim::Done => Err(Refused::Done),
            Claim::Leased(ms) => Err(Refused::Leased(ms)),
            Claim::Completing { since_ms, owner } => Err(Refused::Completing { since_ms, owner }),
        })
    }

    /// The hold of attempt `owner` that completed the task but may not have reported it, taken
    /// over to report it under that attempt's identity.
    pub fn adopt(store: &Arc<Store>, task_id: &str, owner: String, lease_ms: u64) -> Self {
        Self {
            store: Arc::clone(store),
            task_id: task_id.to_string(),
            owner,
            lease_ms,
        }
    }

    /// The attempt's identity (`worker/uuid`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Records that this attempt completed the task and is reporting it (before the
    /// completion event): a redelivery then reports it again under the same event id instead of
    /// running it.
    pub async fn completing(&self, ttl_ms: u64) {
        let _ = self
            .store
            .completing(&self.task_id, &self.owner, ttl_ms)
            .await;
    }

    /// Says this attempt completed the task but gave up reporting it: the next copy reports it
    /// again at once (same event id) instead of waiting for this attempt.
    pub async fn abandon_report(&self, ttl_ms: u64) {
        let _ = self
            .store
            .completing_abandoned(&self.task_id, &self.owner, ttl_ms)
            .await;
    }

    /// Keeps the lease alive until the returned future is dropped.
    pub async fn keep_alive(&self) {
        let every = Duration::from_millis(self.lease_ms / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            match self
                .store
                .renew(&self.task_id, &self.owner, self.lease_ms)
                .await
            {
                Ok(true) | Err(_) => {}
                Ok(false) => {
                    tracing::warn!(task_id = %self.task_id, "task lease lost (expired under load?); another worker may run it too")
                }
            }
        }
    }

    /// Marks the task done (for `ttl_ms`) so a redelivery is acked without running.
    pub async fn complete(&self, ttl_ms: u64) {
        let _ = self
            .store
            .complete(&self.task_id, &self.owner, ttl_ms)
            .await;
    }

    /// Lets another attempt claim the task.
    pub async fn release(&self) {
        let _ = self.store.release(&self.task_id, &self.owner).await;
    }
}
