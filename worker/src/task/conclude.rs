//! The last step: turn the outcome into the delivery's disposition — report it to the
//! service's breaker, record an ad-hoc success at once, make the one decision
//! ([`crate::disposition::decide`]), escalate a failure the whole fleet keeps seeing, and move
//! the task's run forward.

use super::Shared;
use crate::{
    disposition::{self, Disposition, decide},
    fingerprint::fingerprint,
    settle::DeliveryMeta,
    store::Lease,
};
use rand::RngExt;
use secflow_common::{ErrorClass, TaskEnvelope, TaskError, now_ms};
use serde_json::Value;
use std::sync::Arc;

/// How a task that reached its handler ran, besides its outcome.
pub(super) struct Ran<'a> {
    /// Its breaker key.
    pub service: &'a str,
    /// The lease this attempt holds.
    pub lease: Option<&'a Lease>,
    /// How it ran (served by, level, skipped), when it did.
    pub report: Option<&'a crate::report::NodeReport>,
}

/// The disposition of a task that ran (`None`: stopped by shutdown or a lost connection).
pub(super) async fn conclude(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    ran: Ran<'_>,
    outcome: Option<Result<Value, TaskError>>,
) -> Disposition {
    let Ran {
        service,
        lease,
        report,
    } = ran;
    let Some(outcome) = outcome else {
        tracing::warn!(task_id = %task.task_id, "shutdown: handing the task back unfinished");
        return Disposition::HandBack;
    };
    // A side effect that happened must not happen again: a successful ad-hoc task is complete
    // whatever follows, so record that first. A worker killed from here on has its completion
    // reported again by the redelivery instead of the task run again.
    if let (Ok(_), Some(lease), None) = (&outcome, lease, task.run_id) {
        lease.completing(shared.settler.done_ttl_ms).await;
    }
    // Only failures that say the service is unwell count against it: an unknown exit code or
    // a 404 is the task's problem, not the service's.
    // A fallback chain has told each of its steps' breakers already.
    if !report.is_some_and(|r| r.breakers_told) {
        let healthy = !matches!(&outcome, Err(e) if matches!(e.class, ErrorClass::Transient | ErrorClass::Resource));
        shared.breakers.record(service, healthy, now_ms()).await;
    }
    let class = outcome.as_ref().err().map(|e| e.class);
    let policy = shared
        .policies
        .lookup(task.retry.as_ref(), &task.node_type, class);
    let retries = u32::try_from(meta.retry_count).unwrap_or(u32::MAX);
    let unit = rand::rng().random::<f64>();
    let disposition = escalate(shared, task, decide(outcome, retries, policy, unit)).await;
    let retry = retry_by_policy(shared, task, meta);
    let record = report.map(|r| &r.record);
    crate::workflow::advance(
        &shared.runs,
        &shared.settler,
        task,
        disposition,
        record,
        &retry,
    )
    .await
}

/// What a transient failure outside the handler (the run store unreachable) leads to under the
/// task's retry policy: a retry with backoff, or the DLQ once its attempts are used up.
pub(super) fn retry_by_policy<'a>(
    shared: &'a Shared,
    task: &'a TaskEnvelope,
    meta: &'a DeliveryMeta,
) -> impl Fn(TaskError) -> Disposition + Sync + 'a {
    move |error| {
        let policy = shared.policies.lookup(
            task.retry.as_ref(),
            &task.node_type,
            Some(ErrorClass::Transient),
        );
        let retries = u32::try_from(meta.retry_count).unwrap_or(u32::MAX);
        decide(Err(error), retries, policy, rand::rng().random::<f64>())
    }
}

/// The task's checkpoint handle, for its handler's version.
pub(super) fn checkpoint(shared: &Shared, task: &TaskEnvelope) -> crate::checkpoint::Checkpoint {
    crate::checkpoint::Checkpoint::new(
        Arc::clone(&shared.store),
        task.task_id.to_string(),
        shared.handlers.version(&task.node_type),
    )
}

/// A transient failure that keeps recurring across the fleet is escalated to persistent:
/// dead-lettered now instead of burning every task's retries on one broken cause.
async fn escalate(shared: &Shared, task: &TaskEnvelope, disposition: Disposition) -> Disposition {
    let Disposition::Retry { error, .. } = &disposition else {
        return disposition;
    };
    if error.class != ErrorClass::Transient {
        return disposition;
    }
    let fp = fingerprint(&task.node_type, error.class.as_str(), &error.message);
    let limits = &shared.limits;
    match shared
        .store
        .bump_fingerprint(&fp, limits.escalate_window_ms)
        .await
    {
        Ok(seen) if seen >= limits.escalate_after => {
            disposition::escalated(error, seen, limits.escalate_window_ms / 1000)
        }
        _ => disposition,
    }
}
