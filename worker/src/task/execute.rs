//! The third and fourth steps: [`gate`] asks the service's breaker and the run whether the
//! task may run now, and reads the fleet's degradation level; [`execute`] runs its handler
//! under its timeout, with the level's config overrides, falling through its fallback chain
//! ([`crate::fallback`]) when it has one (or stands a cached output, a skip or a cancellation
//! in for it), keeping its lease alive.

use super::{Shared, claim::jittered};
use crate::{
    breaker::state::Verdict,
    chaos::Injection,
    disposition::{self, Disposition},
    fallback::{ChainEnd, StepRunner, alternative_task, chain_of, run_chain},
    handlers::TaskContext,
    report::NodeReport,
    settle::DeliveryMeta,
    store::Lease,
    workflow::Prepared,
};
use secflow_common::{
    ErrorClass, TaskEnvelope, TaskError, control::Level, now_ms, runs::NodeRecord, tools::config_at,
};
use serde_json::Value;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Why a task does not run now.
pub(super) enum Held {
    /// Its service's breaker is open: deferred until it may half-open.
    Deferred(Disposition),
    /// Its node is already recorded as succeeded: its completion is reported from the record.
    Recorded(Disposition),
}

/// What the gate lets through.
pub(super) struct Gated {
    /// What its run says: run it, or it was cancelled.
    prepared: Prepared,
    /// The fleet's degradation level it runs at.
    level: Level,
    /// Why a workflow node does not run at that level.
    skipped: Option<String>,
    /// Its service's breaker is open and it has a fallback chain: the deferral it gets if no
    /// alternative serves it.
    open: Option<Disposition>,
}

/// How [`execute`] ended.
pub(super) enum Executed {
    /// Its outcome (`None`: stopped by shutdown or a lost connection) and how it ran.
    Ran(Option<Result<Value, TaskError>>, Option<NodeReport>),
    /// Its breaker was open and no alternative of its chain served it: deferred as without
    /// a chain.
    Deferred(Disposition),
}

/// `Err` when the task must not run now; `Ok` with what its run says (run, or cancelled) and
/// the level it runs at. A task whose breaker is open goes to its fallback chain at once
/// instead of being deferred, when it has one.
pub(super) async fn gate(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    service: &str,
) -> Result<Gated, Held> {
    let now = now_ms();
    // An operator's hold (a paused type, a breaker held open or disabled) comes first: it
    // holds the task without counting a deferral.
    if let Some(held) = shared.controls.held(service, &task.node_type, now) {
        return Err(Held::Deferred(Disposition::Hold {
            delay: jittered(held.delay.as_millis() as u64),
            reason: held.reason,
        }));
    }
    let level = shared.controls.level();
    let skipped = task.skipped_at(level);
    let mut open = None;
    // A node skipped at this level calls no service.
    if skipped.is_none()
        && let Verdict::Reject { until_ms } = shared.breakers.admit(service, now).await
    {
        let deferral = disposition::defer(
            meta.defer_count,
            shared.limits.max_defers,
            jittered(until_ms.saturating_sub(now)),
            "circuit breaker open",
        );
        if chain_of(task, shared.handlers.fleet_chains()).is_empty() {
            return Err(Held::Deferred(deferral));
        }
        tracing::info!(task_id = %task.task_id, service, "circuit breaker open: going to the fallback alternatives at once");
        open = Some(deferral);
    }
    let prepared = crate::workflow::prepare(&shared.runs, task).await;
    if prepared == Prepared::AlreadySucceeded {
        let retry = super::conclude::retry_by_policy(shared, task, meta);
        let finished =
            crate::workflow::finish_recorded(&shared.runs, &shared.settler, task, &retry).await;
        return Err(Held::Recorded(finished));
    }
    Ok(Gated {
        prepared,
        level,
        skipped,
        open,
    })
}

/// The task's outcome: its handler's (or its chain's), a cached output, a skip at the
/// degradation level, or a cancellation (`None` if the worker's grace period ran out, or its
/// connection was lost, first), and how it ran. A workflow node's start is announced
/// (`node.started`) before its handler runs.
pub(super) async fn execute(
    shared: &Shared,
    task: &TaskEnvelope,
    meta: &DeliveryMeta,
    lease: Option<&Lease>,
    gated: Gated,
) -> Executed {
    if gated.prepared == Prepared::Cancelled {
        return Executed::Ran(Some(Err(disposition::cancelled_before_start())), None);
    }
    let mut report = NodeReport {
        record: NodeRecord {
            level: gated.level,
            ..NodeRecord::default()
        },
        ..NodeReport::default()
    };
    if let Some(why) = gated.skipped {
        tracing::info!(task_id = %task.task_id, node = %task.node_id, level = %gated.level, why, "node skipped at this degradation level");
        report.record.skipped = Some(why);
        return Executed::Ran(
            Some(Ok(Value::Object(serde_json::Map::new()))),
            Some(report),
        );
    }
    if let Some(output) = crate::workflow::cached_output(&shared.runs, task).await {
        report.cache_hit = true;
        return Executed::Ran(Some(Ok(output)), Some(report));
    }
    let tools = shared.handlers.tools();
    let mut primary = task.clone();
    let (config, adjusted) = config_at(
        &task.config,
        gated.level,
        tools.get(&task.node_type),
        &task.degrade,
    );
    if !adjusted.is_empty() {
        tracing::info!(task_id = %task.task_id, level = %gated.level, ?adjusted, "config adjusted for the degradation level");
    }
    primary.config = config;
    report.record.adjusted = adjusted;
    if task.run_id.is_some() {
        shared.settler.started(task, meta).await;
    }
    let cancel = task.run_id.map(|run| shared.cancels.enter(run));
    let started = Instant::now();
    let chain = chain_of(task, shared.handlers.fleet_chains());
    let outcome = if chain.is_empty() {
        run_handler(shared, &primary, meta, lease, cancel.as_ref()).await
    } else {
        let alternatives: Vec<(TaskEnvelope, Level)> = chain
            .iter()
            .map(|alt| (alternative_task(task, alt, gated.level, tools), alt.quality))
            .collect();
        let runner = HandlerRunner {
            shared,
            meta,
            lease,
            cancel: cancel.as_ref(),
        };
        report.breakers_told = true;
        let open = gated.open.is_some();
        match run_chain(&primary, open, &alternatives, &shared.breakers, &runner).await {
            ChainEnd::Stopped => None,
            ChainEnd::Served {
                output,
                served_by,
                quality,
            } => {
                report.record.served_by = served_by;
                report.record.quality = quality;
                Some(Ok(output))
            }
            ChainEnd::Failed(e) => Some(Err(e)),
            ChainEnd::PrimaryOpen => {
                if let Some(run) = task.run_id {
                    shared.cancels.release(run);
                }
                return match gated.open {
                    Some(deferral) => Executed::Deferred(deferral),
                    None => Executed::Ran(None, None),
                };
            }
        }
    };
    report.duration = started.elapsed();
    if let Some(run) = task.run_id {
        shared.cancels.release(run);
    }
    Executed::Ran(outcome, Some(report))
}

/// Runs each step of a chain the way a task's handler runs.
struct HandlerRunner<'a> {
    shared: &'a Shared,
    meta: &'a DeliveryMeta,
    lease: Option<&'a Lease>,
    cancel: Option<&'a CancellationToken>,
}

impl StepRunner for HandlerRunner<'_> {
    fn run(
        &self,
        task: &TaskEnvelope,
    ) -> impl Future<Output = Option<Result<Value, TaskError>>> + Send {
        run_handler(self.shared, task, self.meta, self.lease, self.cancel)
    }
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
    let owned = handler_task(
        shared,
        task,
        (meta.retry_count, meta.requeue_count),
        timeout,
    );
    let inline = crate::handlers::Handlers::runs_inline(&task.node_type);
    let handler = async {
        if inline {
            // It only waits or returns: run it here, dropped at its timeout. A panic ends as
            // it would on the other runtime, not by unwinding the delivery unsettled.
            let owned = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(owned));
            return match tokio::time::timeout(timeout, owned).await {
                Ok(Ok(result)) => result,
                Ok(Err(payload)) => Err(panicked(
                    payload
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("it panicked"),
                )),
                Err(_) => Err(shared.handlers.timed_out(&task.node_type, timeout)),
            };
        }
        // Any other handler runs on a task of its own: one that blocks its thread past its
        // timeout cannot hold the delivery (it is concluded as timed out, the handler abandoned
        // and followed by the watchdog); dropping `_abort` stops it whichever way this ends.
        let handle = match crate::fleet::watchdog::handlers() {
            Some(runtime) => runtime.spawn(owned),
            None => tokio::spawn(owned),
        };
        let abort = handle.abort_handle();
        let _abort = AbortOnDrop(abort.clone());
        match tokio::time::timeout(timeout, handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(panicked(&e.to_string())),
            Err(_) => {
                let task_id = task.task_id.to_string();
                let fleet = Arc::clone(&shared.fleet);
                tokio::spawn(follow_abandoned(task_id, abort.clone(), fleet));
                Err(shared.handlers.timed_out(&task.node_type, timeout))
            }
        }
    };
    let keep_alive = async {
        match lease {
            Some(lease) => lease.keep_alive().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = handler => Some(r),
        () = keep_alive => None,
        () = async { match cancel { Some(t) => t.cancelled().await, None => std::future::pending().await } } => {
            Some(Err(TaskError::new(ErrorClass::Cancelled, "run_cancelled", "its run was cancelled while it ran; stopped")))
        }
        () = shared.hard_stop.cancelled() => None,
    }
}

/// The failure of a handler that stopped abnormally (`why`).
fn panicked(why: &str) -> TaskError {
    TaskError::new(
        ErrorClass::Unknown,
        "handler_panicked",
        format!("the handler stopped abnormally: {why}"),
    )
}

/// The handler of `task` (with chaos injection, when on), as an owned future for its own task.
fn handler_task(
    shared: &Shared,
    task: &TaskEnvelope,
    (retry_count, requeue_count): (u64, u64),
    timeout: Duration,
) -> impl Future<Output = Result<Value, TaskError>> + Send + 'static {
    let handlers = Arc::clone(&shared.handlers);
    let chaos = shared.chaos.clone();
    let checkpoint = super::conclude::checkpoint(shared, task);
    let task = task.clone();
    async move {
        if let Some(chaos) = &chaos {
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
        let ctx = TaskContext {
            task: &task,
            retry_count,
            requeue_count,
            timeout,
            checkpoint,
        };
        // Boxed: the spawned future stays small (every handler's state is in this one).
        Box::pin(handlers.run(&ctx)).await
    }
}

/// Aborts the handler's task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows a handler abandoned at its timeout. One that stops at once was merely slow (an
/// ordinary timeout); one that blocked its thread is a stuck handler, a healing action
/// (`abandon_stuck_handler`) that worked if it let go within the watchdog's grace, and one that
/// never does makes `/healthz` fail.
async fn follow_abandoned(
    task_id: String,
    abort: tokio::task::AbortHandle,
    fleet: Arc<crate::fleet::Fleet>,
) {
    use crate::fleet::watchdog::{LetGo, STUCK_AFTER, abandoned};
    let let_go = abandoned(&task_id, abort).await;
    if let_go == LetGo::AtOnce {
        return;
    }
    let detected = format!("the handler of task {task_id} blocked its thread past its timeout");
    let done = match let_go {
        LetGo::Later => {
            "abandoned it (the task is retried as `timeout`); it let go of its thread".to_string()
        }
        _ => format!(
            "abandoned it (the task is retried as `timeout`); it still held its thread after {} s: /healthz fails so the worker is restarted",
            STUCK_AFTER.as_secs()
        ),
    };
    fleet
        .healed(
            "abandon_stuck_handler",
            &detected,
            &done,
            let_go == LetGo::Later,
        )
        .await;
}
