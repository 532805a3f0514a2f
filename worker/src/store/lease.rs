//! One attempt's hold on a task: the lease while it runs, the done marker once it completed.

use super::{Claim, Holder, LIVE_TTL, Store, StoreError, holder, liveness};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How often a completing marker Redis could not take is tried again.
const COMPLETING_RETRY: Duration = Duration::from_millis(100);

/// Why an attempt may not run a task now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It already completed.
    Done,
    /// Another attempt holds it, for this many more ms, and its worker is alive.
    Leased(u64),
    /// An attempt completed it and is reporting it (or died doing so): since when (ms since the
    /// epoch), which attempt, and whether that attempt's worker is known to be dead (then
    /// nothing more comes from it: report the completion again now).
    Completing {
        since_ms: u64,
        owner: String,
        worker_dead: bool,
    },
}

/// This attempt's hold on a task: renewed while it runs, turned into a done marker when it
/// completes, dropped when it ends otherwise.
pub struct Lease {
    store: Arc<Store>,
    task_id: String,
    owner: String,
    lease_ms: u64,
    /// Whether the completing marker has been written.
    completing: AtomicBool,
    /// Whether it was taken over from an attempt whose worker died holding it.
    taken_over: bool,
}

impl Lease {
    /// Claims `task_id` for a new attempt; `Ok(Err(refusal))` when it must not run now.
    ///
    /// A lease held by an attempt of a dead worker (its liveness key is gone) is taken over at
    /// once. One whose worker still looks alive is looked at again when that worker's liveness
    /// would have lapsed (at most [`LIVE_TTL`]): a worker that was just killed has not been
    /// missed yet when the broker redelivers its tasks, and this wait in place (instead of a
    /// deferral) runs its tasks again within seconds without spending a deferral.
    pub async fn claim(
        store: &Arc<Store>,
        task_id: &str,
        worker: &str,
        lease_ms: u64,
    ) -> Result<Result<Self, Refused>, StoreError> {
        store.ensure_alive(worker).await?;
        let owner = format!(
            "{worker}/{}/{}",
            store.live_id(),
            uuid::Uuid::new_v4().simple()
        );
        let claim = store.claim(task_id, &owner, lease_ms).await?;
        let claim = match claim {
            Claim::Leased { left_ms, value } => {
                let held = Claim::Leased {
                    left_ms,
                    value: value.clone(),
                };
                // A Redis failure from here on leaves the task to its holder: deferred.
                Self::unless_abandoned(store, task_id, &owner, lease_ms, &value)
                    .await
                    .unwrap_or(None)
                    .unwrap_or(held)
            }
            other => other,
        };
        Ok(match claim {
            Claim::Claimed | Claim::TakenOver => Ok(Self {
                taken_over: claim == Claim::TakenOver,
                store: Arc::clone(store),
                task_id: task_id.to_string(),
                owner,
                lease_ms,
                completing: AtomicBool::new(false),
            }),
            Claim::Done => Err(Refused::Done),
            Claim::Leased { left_ms, .. } => Err(Refused::Leased(left_ms)),
            Claim::Completing(marker) => {
                let (since, attempt) = marker.split_once(':').unwrap_or(("0", marker.as_str()));
                // Unknown (Redis failed just now) counts as alive: the copy is deferred.
                let worker_dead = match liveness::owner(attempt) {
                    Holder::Tracked(live) if live != store.live_id() => {
                        matches!(store.alive_for(&live).await, Ok(None))
                    }
                    _ => false,
                };
                Err(Refused::Completing {
                    since_ms: since.parse().unwrap_or(0),
                    owner: attempt.to_string(),
                    worker_dead,
                })
            }
        })
    }

    /// A lease `value` found held: `Some(Claimed)` if its worker is dead and it was taken over,
    /// possibly after waiting for that worker's liveness to lapse; `Some(other)` if the key
    /// turned into something else meanwhile; `None` if it stays with its live holder.
    async fn unless_abandoned(
        store: &Arc<Store>,
        task_id: &str,
        owner: &str,
        lease_ms: u64,
        value: &str,
    ) -> Result<Option<Claim>, StoreError> {
        let live = match holder(value) {
            Holder::Tracked(live) if live != store.live_id() => live,
            // This process's own attempt, alive by definition; or a holder without liveness.
            Holder::Tracked(_) | Holder::Untracked => return Ok(None),
            Holder::Unknown => {
                tracing::warn!(
                    task_id,
                    value,
                    "task key holds an unknown lease value: waiting for it to expire"
                );
                return Ok(None);
            }
        };
        if let Some(alive_ms) = store.alive_for(&live).await? {
            // Just past the moment its liveness lapses if it is not renewed.
            let wait = Duration::from_millis(alive_ms.min(LIVE_TTL.as_millis() as u64) + 50);
            tokio::time::sleep(wait).await;
            if store.alive_for(&live).await?.is_some() {
                return Ok(None);
            }
        }
        if store.take_over(task_id, value, owner, lease_ms).await? {
            tracing::info!(
                task_id,
                holder = value,
                "the task's holder died with its worker: running it again"
            );
            return Ok(Some(Claim::TakenOver));
        }
        // Completed, released or taken meanwhile: as the key says now.
        store.claim(task_id, owner, lease_ms).await.map(Some)
    }

    /// The hold of attempt `owner` that completed the task but may not have reported it, taken
    /// over to report it under that attempt's identity.
    pub fn adopt(store: &Arc<Store>, task_id: &str, owner: String, lease_ms: u64) -> Self {
        Self {
            store: Arc::clone(store),
            task_id: task_id.to_string(),
            owner,
            lease_ms,
            completing: AtomicBool::new(false),
            taken_over: false,
        }
    }

    /// Whether this lease was taken over from an attempt whose worker died while holding it:
    /// the evidence that makes a redelivered task a suspect (it may have killed that worker).
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// The attempt's identity (`worker/live/uuid`: the worker, its process's liveness id, the
    /// attempt).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Records that this attempt completed the task and is reporting it (before the
    /// completion event): a redelivery then reports it again under the same event id instead of
    /// running it. One try; whether the marker is recorded (now or by an earlier call).
    pub async fn completing(&self, ttl_ms: u64) -> bool {
        // Recorded once per attempt (see `task::conclude`: as soon as an ad-hoc task
        // succeeded); a failed write is tried again by the next call.
        if self.completing.load(Ordering::SeqCst) {
            return true;
        }
        let recorded = self
            .store
            .completing(&self.task_id, &self.owner, ttl_ms)
            .await
            .is_ok();
        if recorded {
            self.completing.store(true, Ordering::SeqCst);
        }
        recorded
    }

    /// [`Self::completing`], tried again while Redis does not answer, for up to `wait` or until
    /// `stop`. A completion must not be reported before its marker is recorded: a copy of the
    /// task delivered after this attempt's worker died would find only the lease, take it
    /// over and run the task again, and the task would be reported complete twice.
    pub async fn completing_within(
        &self,
        ttl_ms: u64,
        wait: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        if self.completing(ttl_ms).await {
            return true;
        }
        let until = tokio::time::Instant::now() + wait;
        tracing::warn!(
            task_id = %self.task_id,
            wait_ms = wait.as_millis() as u64,
            "task completed but Redis cannot record it yet: waiting for Redis before reporting it"
        );
        metrics::gauge!("secflow_completions_unrecorded").increment(1.0);
        let recorded = loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                break false;
            }
            tokio::select! {
                () = stop.cancelled() => break false,
                () = tokio::time::sleep((until - now).min(COMPLETING_RETRY)) => {}
            }
            // Not tried while the store knows Redis is down: its probe says when it is back.
            if !self.store.is_degraded() && self.completing(ttl_ms).await {
                break true;
            }
        };
        metrics::gauge!("secflow_completions_unrecorded").decrement(1.0);
        if recorded {
            tracing::info!(task_id = %self.task_id, "Redis recorded the completion: reporting it");
        } else {
            tracing::warn!(
                task_id = %self.task_id,
                "Redis did not record the completion in time: the task goes back unreported and runs again"
            );
        }
        recorded
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
