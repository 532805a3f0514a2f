//! The third and fourth steps: [`gate`] asks the service's breaker and the run whether the
//! task may run now; [`execute`] runs its handler under its timeout (or stands a cached output
//! or a cancellation in for it), keeping its lease alive.

use super::{Shared, claim::jittered};
use crate::{
    breaker::state::Verdict,
    chaos::Injection,
    disposition::{self, Disposition},
    handlers::TaskContext,
    report::NodeReport,
    settle::DeliveryMeta,
    store::Lease,
    workflow::Prepared,
};
use secflow_common::{ErrorClass, TaskEnvelope, TaskError, now_ms};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a task does not run now.
pub(super) enum Held {
    /// Its service's breaker is open: deferred until it may half-open.
    Deferred(Disposition),
    /// Its node is already recorded as succeeded: its completion is reported from the record.
    Recorded(Disposition),
}

/// `Err` when the task must not run now; `Ok` with what its run says (run, or cancelled).
pub(super) async fn gate(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    service: &str,
) -> Result<Prepared, Held> {
    let now = now_ms();
    // An operator's hold (a paused type, a breaker held open or disabled) comes first: it
    // holds the task without counting a deferral.
    if let Some(held) = shared.controls.held(service, &task.node_type, now) {
        return Err(Held::Deferred(Disposition::Hold {
            delay: jittered(held.delay.as_millis() as u64),
            reason: held.reason,
        }));
    }
    if let Verdict::Reject { until_ms } = shared.breakers.admit(service, now).await {
        return Err(Held::Deferred(disposition::defer(
            meta.defer_count,
            shared.limits.max_defers,
            jittered(until_ms.saturating_sub(now)),
            "circuit breaker open",
        )));
    }
    let prepared = crate::workflow::prepare(&shared.runs, task).await;
    if prepared == Prepared::AlreadySucceeded {
        let retry = super::conclude::retry_by_policy(shared, task, meta);
        let finished =
            crate::workflow::finish_recorded(&shared.runs, &shared.settler, task, &retry).await;
        return Err(Held::Recorded(finished));
    }
    Ok(prepared)
}

/// The task's outcome: its handler's, a cached output, or a cancellation (`None` if the
/// worker's grace period ran out, or its connection was lost, first), and how it ran. A
/// workflow node's start is announced (`node.started`) before its handler runs.
pub(super) async fn execute(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    lease: Option<&Lease>,
    prepared: Prepared,
) -> (Option<Result<Value, TaskError>>, Option<NodeReport>) {
    if prepared == Prepared::Cancelled {
        return (Some(Err(disposition::cancelled_before_start())), None);
    }
    if let Some(output) = crate::workflow::cached_output(&shared.runs, task).await {
        let report = NodeReport {
            duration: Duration::ZERO,
            cache_hit: true,
        };
        return (Some(Ok(output)), Some(report));
    }
    if task.run_id.is_some() {
        shared.settler.started(task, meta).await;
    }
    let cancel = task.run_id.map(|run| shared.cancels.enter(run));
    let started = Instant::now();
    let outcome = run_handler(shared, task, meta, lease, cancel.as_ref()).await;
    let report = NodeReport {
        duration: started.elapsed(),
        cache_hit: false,
    };
    if let Some(run) = task.run_id {
        shared.cancels.release(run);
    }
    (outcome, Some(report))
}

/// Runs the handler under its timeout, keeping the lease alive; `None` if the worker's grace
/// period ran out first.
async fn run_handler(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    lease: Option<&Lease>,
    cancel: Option<&CancellationToken>,
) -> Option<Result<Value, TaskError>> {
    let timeout = task
        .timeout_ms
        .map(Duration::from_millis)
        .or_else(|| shared.handlers.default_timeout(&task.node_type))
        .unwrap_or(shared.default_timeout)
        .min(crate::config::MAX_TASK_TIMEOUT);
    let ctx = TaskContext {
        task,
        retry_count: meta.retry_count,
        timeout,
        checkpoint: super::conclude::checkpoint(shared, task),
    };
    let handler = async {
        if let Some(chaos) = &shared.chaos {
            let (latency, injection) = chaos.draw(&task.node_type);
            tokio::time::sleep(latency).await;
            match injection {
                Injection::None => {}
                Injection::Fail(e) => {
                    metrics::counter!("secflow_chaos_injected_total", "kind" => "fail")
                        .increment(1);
                    return Err(e);
                }
                Injection::Crash => {
                    tracing::error!(task_id = %task.task_id, "chaos: aborting the worker mid-task");
                    std::process::abort();
                }
                Injection::Hang => {
                    tracing::warn!(task_id = %task.task_id, "chaos: hanging the task until its timeout");
                    std::future::pending::<()>().await;
                }
            }
        }
        shared.handlers.run(&ctx).await
    };
    let keep_alive = async {
        match lease {
            Some(lease) => lease.keep_alive().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, handler) => Some(r.unwrap_or_else(|_| Err(shared.handlers.timed_out(&task.node_type, timeout)))),
        () = keep_alive => None,
        () = async { match cancel { Some(t) => t.cancelled().await, None => std::future::pending().await } } => {
            Some(Err(TaskError::new(ErrorClass::Cancelled, "run_cancelled", "its run was cancelled while it ran; stopped")))
        }
        () = shared.hard_stop.cancelled() => None,
    }
}
