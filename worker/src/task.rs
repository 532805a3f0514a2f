//! One delivery, from bytes to settlement: decode, refuse what must not run, claim it (no
//! second run of a completed task, no two attempts at once), ask the service's breaker, run
//! the handler, report to the breaker, escalate recurring failures, decide, settle.

use crate::{
    breaker::{Breakers, state::Verdict},
    chaos::Injection,
    disposition::{DeadReason, Disposition, decide, defer, state_corrupted},
    fingerprint::fingerprint,
    handlers::{Handlers, TaskContext},
    policies::PolicyTable,
    settle::{DeliveryMeta, Settler},
    store::{Lease, Refused, Store, StoreError},
    workflow::Prepared,
};
use lapin::message::Delivery;
use rand::RngExt;
use secflow_common::{ErrorClass, TaskEnvelope, TaskError, envelope::EnvelopeError, now_ms};
use serde_json::Value;
use std::{sync::Arc, time::Duration};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

/// What every in-flight task of a worker shares.
pub(crate) struct Shared {
    pub handlers: Arc<Handlers>,
    /// Deliveries found to be suspects while claiming them, for the consumer to run alone.
    pub suspects: tokio::sync::mpsc::UnboundedSender<Delivery>,
    pub settler: Settler,
    pub store: Arc<Store>,
    pub runs: Arc<secflow_common::runs::RunStore>,
    pub cancels: Arc<crate::workflow::RunCancels>,
    pub breakers: Arc<Breakers>,
    pub policies: PolicyTable,
    pub default_timeout: Duration,
    /// Suspect tasks run alone (write lock) so a task that kills the process does not take
    /// innocent tasks' delivery attempts with it.
    pub isolation: RwLock<()>,
    /// The work queue's delivery limit, also enforced across hand-backs.
    pub delivery_limit: u64,
    /// Cancelled when the grace period is over: unfinished tasks are handed back.
    pub hard_stop: CancellationToken,
    pub limits: Limits,
    /// Verifies task signatures; `None` only when signing was disabled explicitly.
    pub keyring: Option<secflow_common::signing::Keyring>,
    /// Larger messages are dead-lettered unread.
    pub max_message_bytes: usize,
    /// Fault injection, when switched on.
    pub chaos: Option<crate::chaos::ChaosConfig>,
}

/// Idempotency, deferral and escalation settings.
pub(crate) struct Limits {
    pub lease_ms: u64,
    pub max_defers: u64,
    pub escalate_after: u64,
    pub escalate_window_ms: u64,
    /// Which tasks may run without a claim while Redis is unreachable.
    pub idempotent: crate::idempotency::IdempotencyTable,
}

/// Decodes, runs and settles one delivery. Never panics on input. `exclusive` runs it with no
/// other task in flight.
pub(crate) async fn process(shared: &Shared, delivery: Delivery, exclusive: bool) {
    let settler = &shared.settler;
    let meta = DeliveryMeta::read(&delivery, shared.keyring.as_ref());
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str());
    if let Some(refusal) = screen(shared, &delivery, message_id, &meta) {
        return settler.settle(&delivery, None, &meta, refusal, None).await;
    }
    let task = match TaskEnvelope::decode(&delivery.data, message_id) {
        Ok(task) => task,
        Err(e) => {
            return settler
                .settle(&delivery, None, &meta, malformed(&e), None)
                .await;
        }
    };
    if let Some(refusal) = refuse(shared, &task, &meta) {
        return settler
            .settle(&delivery, Some(&task), &meta, refusal, None)
            .await;
    }
    let (_exclusive, _shared);
    if exclusive {
        _exclusive = shared.isolation.write().await;
    } else {
        _shared = shared.isolation.read().await;
    }
    let task_id = task.task_id.to_string();
    let lease = match Lease::claim(
        &shared.store,
        &task_id,
        &settler.worker_id,
        shared.limits.lease_ms,
    )
    .await
    {
        // Evidence that this task may have killed the worker that ran it: it runs alone, so
        // that if it kills this one too, only it is charged a delivery.
        Ok(Ok(lease)) if lease.taken_over() && !exclusive => {
            lease.release().await;
            tracing::warn!(
                task_id,
                "its last attempt died with its worker: running it in isolation"
            );
            if let Err(back) = shared.suspects.send(delivery) {
                // The consumer is gone (connection lost, stopping): the broker redelivers it.
                drop(back);
            }
            return;
        }
        Ok(Ok(lease)) => Some(lease),
        Ok(Err(Refused::Done)) => {
            return settler
                .settle(&delivery, Some(&task), &meta, Disposition::Duplicate, None)
                .await;
        }
        Ok(Err(Refused::Completing {
            since_ms,
            owner,
            worker_dead: false,
        })) if now_ms().saturating_sub(since_ms) < shared.limits.lease_ms => {
            // The attempt is reporting its completion right now: look again in a moment, when
            // its done marker is there.
            let later = defer(
                meta.defer_count,
                shared.limits.max_defers,
                jittered(200),
                "another attempt is reporting the task's completion",
            );
            tracing::debug!(task_id, attempt = %owner, "completion being reported: deferring the copy");
            return settler
                .settle(&delivery, Some(&task), &meta, later, None)
                .await;
        }
        Ok(Err(Refused::Completing { owner, .. })) => {
            // An attempt completed the task and stopped while reporting it: report it again
            // under that attempt's identity (same event id), never run it again.
            tracing::info!(task_id, attempt = %owner, "completed by an attempt that did not finish reporting it: reporting it again");
            let adopted = Lease::adopt(&shared.store, &task_id, owner, shared.limits.lease_ms);
            let disposition = if task.run_id.is_some() {
                crate::workflow::finish_recorded(
                    &shared.runs,
                    settler,
                    &task,
                    &retry_by_policy(shared, &task, &meta),
                )
                .await
            } else {
                // Ad-hoc tasks keep no output outside their event: the repeat carries none.
                Disposition::Complete(Value::Null)
            };
            return settler
                .settle(&delivery, Some(&task), &meta, disposition, Some(&adopted))
                .await;
        }
        Ok(Err(Refused::Leased(ms))) => {
            // A live holder renews every third of the lease; look again about then rather than
            // at its expiry, so a lease given up early does not hold the task back long.
            let wait = ms.clamp(100, (shared.limits.lease_ms / 3).max(100));
            tracing::info!(
                task_id,
                lease_left_ms = ms,
                retry_in_ms = wait,
                "another attempt holds the task: deferring it"
            );
            let later = defer(
                meta.defer_count,
                shared.limits.max_defers,
                jittered(wait),
                "another attempt holds the task",
            );
            return settler
                .settle(&delivery, Some(&task), &meta, later, None)
                .await;
        }
        // Its key holds unusable state: whether it ran is unknown, so it does not run. Only
        // this task is affected (the store has logged and counted it).
        Err(StoreError::Corrupted(c)) => {
            let dead = state_corrupted(&c.key, &c.detail);
            return settler
                .settle(&delivery, Some(&task), &meta, dead, None)
                .await;
        }
        // Redis unreachable: a workflow node waits (its end could not be recorded, so running
        // it would only repeat its effects later), and so does a task not declared idempotent
        // (`--idempotent`: it could run twice); an idempotent ad-hoc task runs anyway (at least
        // once), the store has said so.
        Err(_)
            if task.run_id.is_some()
                || !shared
                    .limits
                    .idempotent
                    .is_idempotent(&task.node_type, &task.config) =>
        {
            let why = if task.run_id.is_some() {
                "Redis unreachable: the node's run cannot be recorded"
            } else {
                "Redis unreachable: the task is not declared idempotent and cannot be claimed"
            };
            let later = defer(
                meta.defer_count,
                shared.limits.max_defers,
                jittered(1_000),
                why,
            );
            return settler
                .settle(&delivery, Some(&task), &meta, later, None)
                .await;
        }
        Err(_) => None,
    };
    let service = task.service().to_string();
    let now = now_ms();
    if let Verdict::Reject { until_ms } = shared.breakers.admit(&service, now).await {
        let later = defer(
            meta.defer_count,
            shared.limits.max_defers,
            jittered(until_ms.saturating_sub(now)),
            "circuit breaker open",
        );
        return settler
            .settle(&delivery, Some(&task), &meta, later, lease.as_ref())
            .await;
    }
    let prepared = crate::workflow::prepare(&shared.runs, &task).await;
    if prepared == Prepared::AlreadySucceeded {
        let disposition = crate::workflow::finish_recorded(
            &shared.runs,
            settler,
            &task,
            &retry_by_policy(shared, &task, &meta),
        )
        .await;
        return settler
            .settle(&delivery, Some(&task), &meta, disposition, lease.as_ref())
            .await;
    }
    let outcome = if prepared == Prepared::Cancelled {
        Some(Err(TaskError::new(
            ErrorClass::Cancelled,
            "run_cancelled",
            "its run was cancelled before it started",
        )))
    } else if let Some(output) = crate::workflow::cached_output(&shared.runs, &task).await {
        Some(Ok(output))
    } else {
        let cancel = task.run_id.map(|run| shared.cancels.enter(run));
        let outcome = run_handler(shared, &task, &meta, lease.as_ref(), cancel.as_ref()).await;
        if let Some(run) = task.run_id {
            shared.cancels.release(run);
        }
        outcome
    };
    let Some(outcome) = outcome else {
        tracing::warn!(task_id, "shutdown: handing the task back unfinished");
        return settler
            .settle(
                &delivery,
                Some(&task),
                &meta,
                Disposition::HandBack,
                lease.as_ref(),
            )
            .await;
    };
    // A side effect that happened must not happen again: a successful ad-hoc task is complete
    // whatever follows, so record that first. A worker killed from here on has its completion
    // reported again by the redelivery instead of the task run again.
    if let (Ok(_), Some(lease), None) = (&outcome, &lease, task.run_id) {
        lease.completing(settler.done_ttl_ms).await;
    }
    // Only failures that say the service is unwell count against it: an unknown exit code or
    // a 404 is the task's problem, not the service's.
    let healthy = !matches!(&outcome, Err(e) if matches!(e.class, ErrorClass::Transient | ErrorClass::Resource));
    shared.breakers.record(&service, healthy, now_ms()).await;
    let class = outcome.as_ref().err().map(|e| e.class);
    let policy = shared
        .policies
        .lookup(task.retry.as_ref(), &task.node_type, class);
    let retries = u32::try_from(meta.retry_count).unwrap_or(u32::MAX);
    let unit = rand::rng().random::<f64>();
    let disposition = escalate(shared, &task, decide(outcome, retries, policy, unit)).await;
    let retry = retry_by_policy(shared, &task, &meta);
    let disposition =
        crate::workflow::advance(&shared.runs, settler, &task, disposition, &retry).await;
    let completed = matches!(disposition, Disposition::Complete(_));
    settler
        .settle(&delivery, Some(&task), &meta, disposition, lease.as_ref())
        .await;
    if completed {
        checkpoint(shared, &task).clear().await;
    }
}

/// What a transient failure outside the handler (the run store unreachable) leads to under the
/// task's retry policy: a retry with backoff, or the DLQ once its attempts are used up.
fn retry_by_policy<'a>(
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
fn checkpoint(shared: &Shared, task: &TaskEnvelope) -> crate::checkpoint::Checkpoint {
    crate::checkpoint::Checkpoint::new(
        Arc::clone(&shared.store),
        task.task_id.to_string(),
        shared.handlers.version(&task.node_type),
    )
}

/// What is refused before the body is even parsed: an oversized message, and (unless signing
/// was disabled explicitly) one whose signature is missing or wrong, or whose bookkeeping
/// headers (retry count, history) were rewritten outside the fleet.
fn screen(
    shared: &Shared,
    delivery: &Delivery,
    message_id: Option<&str>,
    meta: &DeliveryMeta,
) -> Option<Disposition> {
    if delivery.data.len() > shared.max_message_bytes {
        let message = format!(
            "message is {} bytes, over this worker's {}-byte limit (--max-message-bytes); not read",
            delivery.data.len(),
            shared.max_message_bytes
        );
        tracing::error!(
            bytes = delivery.data.len(),
            "oversized message: dead-lettering it"
        );
        return Some(Disposition::DeadLetter {
            reason: DeadReason::Malformed,
            error: TaskError::validation("too_large", message),
        });
    }
    let keyring = shared.keyring.as_ref()?;
    let (code, message) = match keyring.verify(
        delivery.properties.headers().as_ref(),
        message_id.unwrap_or_default(),
        &delivery.data,
    ) {
        Err(forgery) => (forgery.code(), forgery.to_string()),
        Ok(()) => match &meta.bookkeeping {
            Err(tampered) => (tampered.code(), tampered.to_string()),
            Ok(_) => return None,
        },
    };
    metrics::counter!("secflow_security_rejections_total", "code" => code).increment(1);
    Some(Disposition::DeadLetter {
        reason: DeadReason::Security,
        error: TaskError::new(ErrorClass::Security, code, message),
    })
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
        .map_or(shared.default_timeout, Duration::from_millis)
        .min(crate::config::MAX_TASK_TIMEOUT);
    let ctx = TaskContext {
        task,
        retry_count: meta.retry_count,
        timeout,
        checkpoint: checkpoint(shared, task),
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
        r = tokio::time::timeout(timeout, handler) => Some(r.unwrap_or_else(|_| Err(TaskError::new(
            ErrorClass::Transient, "timeout", format!("{} did not finish within {} ms", task.node_type, timeout.as_millis()),
        )))),
        () = keep_alive => None,
        () = async { match cancel { Some(t) => t.cancelled().await, None => std::future::pending().await } } => {
            Some(Err(TaskError::new(ErrorClass::Cancelled, "run_cancelled", "its run was cancelled while it ran; stopped")))
        }
        () = shared.hard_stop.cancelled() => None,
    }
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
    let Ok(seen) = shared
        .store
        .bump_fingerprint(&fp, shared.limits.escalate_window_ms)
        .await
    else {
        return disposition;
    };
    if seen < shared.limits.escalate_after {
        return disposition;
    }
    let message = format!(
        "escalated to persistent: the same failure was seen {seen} times across the fleet within {} s: {}",
        shared.limits.escalate_window_ms / 1000,
        error.message
    );
    let error = TaskError::new(ErrorClass::Permanent, error.code.clone(), message);
    Disposition::DeadLetter {
        reason: DeadReason::Escalated,
        error,
    }
}

/// `delay_ms` plus up to 10% so deferred tasks do not all come back at the same instant.
fn jittered(delay_ms: u64) -> Duration {
    let extra = (delay_ms as f64 * 0.1 * rand::rng().random::<f64>()) as u64;
    Duration::from_millis(delay_ms + extra)
}

/// Why a well-formed task must not run here at all: no handler for its type, or it has already
/// been delivered too often without being settled (a crash loop, also across hand-backs).
fn refuse(shared: &Shared, task: &TaskEnvelope, meta: &DeliveryMeta) -> Option<Disposition> {
    let (reason, error) = if !shared.handlers.knows(&task.node_type) {
        let message = format!(
            "no handler for node type `{}` in this worker pool",
            task.node_type
        );
        (
            DeadReason::Validation,
            TaskError::validation("unknown_type", message),
        )
    } else if meta.unsettled_total() > shared.delivery_limit {
        let message = format!(
            "delivered {} times without being settled: it crashes or hangs the workers that run it",
            meta.unsettled_total()
        );
        (
            DeadReason::DeliveryLimit,
            TaskError::new(ErrorClass::Permanent, "crash_loop", message),
        )
    } else {
        return None;
    };
    Some(Disposition::DeadLetter { reason, error })
}

fn malformed(e: &EnvelopeError) -> Disposition {
    tracing::error!(code = e.code(), error = %e, "malformed message: dead-lettering it");
    Disposition::DeadLetter {
        reason: DeadReason::Malformed,
        error: TaskError::validation(e.code(), e.to_string()),
    }
}
