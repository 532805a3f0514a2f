//! The second step: claim the task (one lease per task in Redis) before it runs. A completed
//! task is a duplicate; one another attempt holds or is reporting waits; one whose previous
//! attempt died with its worker is a suspect and runs alone; corrupted state dead-letters only
//! this task; without Redis only tasks declared idempotent run.

use super::{End, Limits, Shared};
use crate::{
    disposition::{self, Disposition},
    settle::DeliveryMeta,
    store::{Lease, Refused, StoreError},
};
use rand::RngExt;
use secflow_common::{TaskEnvelope, now_ms};
use serde_json::Value;
use std::time::Duration;

/// The lease this attempt holds (`None`: Redis is unreachable and the task may run without
/// one), or how the delivery ends.
pub(super) async fn claim(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    exclusive: bool,
) -> Result<Option<Lease>, End> {
    let task_id = task.task_id.to_string();
    let worker = &shared.settler.worker_id;
    let limits = &shared.limits;
    match Lease::claim(&shared.store, &task_id, worker, limits.lease_ms).await {
        // Evidence that this task may have killed the worker that ran it: it runs alone, so
        // that if it kills this one too, only it is charged a delivery.
        Ok(Ok(lease)) if lease.taken_over() && !exclusive => {
            lease.release().await;
            tracing::warn!(
                task_id,
                "its last attempt died with its worker: running it in isolation"
            );
            Err(End::Isolate)
        }
        Ok(Ok(lease)) => Ok(Some(lease)),
        Ok(Err(refused)) => match wait_or_duplicate(&refused, meta.defer_count, limits, now_ms()) {
            Some(disposition) => {
                tracing::debug!(task_id, ?refused, "not running the task now");
                Err(End::with(task, disposition))
            }
            // Boxed: a rare path whose state (a run's records) would otherwise weigh on
            // every delivery's.
            None => Err(Box::pin(report_again(shared, task, meta, refused)).await),
        },
        // Its key holds unusable state: whether it ran is unknown, so it does not run. Only
        // this task is affected (the store has logged and counted it).
        Err(StoreError::Corrupted(c)) => Err(End::with(
            task,
            disposition::state_corrupted(&c.key, &c.detail),
        )),
        // Redis unreachable: a workflow node waits (its end could not be recorded, so running
        // it would only repeat its effects later), and so does a task not declared idempotent
        // (`--idempotent`: it could run twice); an idempotent ad-hoc task runs anyway (at least
        // once), the store has said so.
        Err(_) => match without_redis(task, meta.defer_count, limits) {
            Some(later) => Err(End::with(task, later)),
            None => Ok(None),
        },
    }
}

/// What a refused claim means when no completion needs reporting again: a duplicate (already
/// done), or a deferral while another attempt holds the task or is reporting its completion.
/// `None` when an attempt completed the task and is not reporting it (it stopped, or its
/// worker died): the caller reports the completion again.
fn wait_or_duplicate(
    refused: &Refused,
    defers: u64,
    limits: &Limits,
    now: u64,
) -> Option<Disposition> {
    match refused {
        Refused::Done => Some(Disposition::Duplicate),
        Refused::Completing {
            since_ms,
            worker_dead: false,
            ..
        } if now.saturating_sub(*since_ms) < limits.lease_ms => {
            // The attempt is reporting its completion right now: look again in a moment, when
            // its done marker is there.
            Some(disposition::defer(
                defers,
                limits.max_defers,
                jittered(200),
                "another attempt is reporting the task's completion",
            ))
        }
        Refused::Completing { .. } => None,
        Refused::Leased(ms) => {
            // A live holder renews every third of the lease; look again about then rather than
            // at its expiry, so a lease given up early does not hold the task back long.
            let wait = (*ms).clamp(100, (limits.lease_ms / 3).max(100));
            Some(disposition::defer(
                defers,
                limits.max_defers,
                jittered(wait),
                "another attempt holds the task",
            ))
        }
    }
}

/// Whether a task that cannot be claimed (Redis unreachable) must wait: `None` if it may run.
fn without_redis(task: &TaskEnvelope, defers: u64, limits: &Limits) -> Option<Disposition> {
    let why = if task.run_id.is_some() {
        "Redis unreachable: the node's run cannot be recorded"
    } else if !limits
        .idempotent
        .is_idempotent(&task.node_type, &task.config)
    {
        "Redis unreachable: the task is not declared idempotent and cannot be claimed"
    } else {
        return None;
    };
    Some(disposition::defer(
        defers,
        limits.max_defers,
        jittered(1_000),
        why,
    ))
}

/// An attempt completed the task and stopped while reporting it: report it again under that
/// attempt's identity (same event id), never run it again.
async fn report_again(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    refused: Refused,
) -> End {
    let Refused::Completing { owner, .. } = refused else {
        return End::with(task, Disposition::Duplicate);
    };
    let task_id = task.task_id.to_string();
    tracing::info!(task_id, attempt = %owner, "completed by an attempt that did not finish reporting it: reporting it again");
    let adopted = Lease::adopt(&shared.store, &task_id, owner, shared.limits.lease_ms);
    let disposition = if task.run_id.is_some() {
        let retry = super::conclude::retry_by_policy(shared, task, meta);
        crate::workflow::finish_recorded(&shared.runs, &shared.settler, task, &retry).await
    } else {
        // Ad-hoc tasks keep no output outside their event: the repeat carries none.
        Disposition::Complete(Value::Null)
    };
    End::recorded(task.clone(), disposition, Some(adopted))
}

/// `delay_ms` plus up to 10% so deferred tasks do not all come back at the same instant.
pub(super) fn jittered(delay_ms: u64) -> Duration {
    let extra = (delay_ms as f64 * 0.1 * rand::rng().random::<f64>()) as u64;
    Duration::from_millis(delay_ms + extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::IdempotencyTable;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            lease_ms: 30_000,
            max_defers: 5,
            escalate_after: 50,
            escalate_window_ms: 60_000,
            idempotent: IdempotencyTable::new(&[]),
        }
    }

    fn delay(d: Option<Disposition>) -> Duration {
        match d {
            Some(Disposition::Defer { delay, .. }) => delay,
            other => panic!("not a deferral: {other:?}"),
        }
    }

    #[test]
    fn a_completed_task_is_a_duplicate() {
        assert_eq!(
            wait_or_duplicate(&Refused::Done, 0, &limits(), 0),
            Some(Disposition::Duplicate)
        );
    }

    #[test]
    fn a_completion_being_reported_is_waited_for_but_not_one_whose_reporter_stopped_or_died() {
        let completing = |since_ms, worker_dead| Refused::Completing {
            since_ms,
            owner: "w/0123456789abcdef0123456789abcdef".into(),
            worker_dead,
        };
        let now = 100_000;
        let wait = delay(wait_or_duplicate(
            &completing(now - 10, false),
            0,
            &limits(),
            now,
        ));
        assert!(wait >= Duration::from_millis(200) && wait <= Duration::from_millis(220));
        assert_eq!(
            wait_or_duplicate(&completing(now - 10, true), 0, &limits(), now),
            None
        );
        assert_eq!(
            wait_or_duplicate(&completing(now - 40_000, false), 0, &limits(), now),
            None
        );
        // The abandoned marker a worker writes when its report failed.
        assert_eq!(
            wait_or_duplicate(&completing(0, false), 0, &limits(), now),
            None
        );
    }

    #[test]
    fn a_held_lease_is_looked_at_again_within_a_third_of_the_lease() {
        let soon = delay(wait_or_duplicate(&Refused::Leased(50), 0, &limits(), 0));
        assert!(soon >= Duration::from_millis(100) && soon <= Duration::from_millis(110));
        let later = delay(wait_or_duplicate(&Refused::Leased(29_000), 0, &limits(), 0));
        assert!(later >= Duration::from_millis(10_000) && later <= Duration::from_millis(11_000));
        assert!(matches!(
            wait_or_duplicate(&Refused::Leased(50), 5, &limits(), 0),
            Some(Disposition::DeadLetter { .. })
        ));
    }

    #[test]
    fn without_redis_only_idempotent_ad_hoc_tasks_run() {
        let echo = TaskEnvelope::new("builtin.echo", json!({}));
        assert_eq!(without_redis(&echo, 0, &limits()), None);
        let exec = TaskEnvelope::new("exec", json!({"argv": ["true"]}));
        assert!(matches!(
            without_redis(&exec, 0, &limits()),
            Some(Disposition::Defer { .. })
        ));
        let mut node = TaskEnvelope::new("builtin.echo", json!({}));
        node.run_id = Some(uuid::Uuid::now_v7());
        assert!(matches!(
            without_redis(&node, 0, &limits()),
            Some(Disposition::Defer { .. })
        ));
    }
}
