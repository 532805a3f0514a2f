//! One delivery, from bytes to settlement, as a short pipeline of named steps:
//! [`admit`] (size, signature, envelope, a handler for its type, not a crash loop) →
//! [`claim`] (no second run of a completed task, no two attempts at once, suspects isolated) →
//! [`gate`] (the service's breaker, a node already recorded) → [`execute`] (the handler under
//! its timeout, lease kept alive) → [`conclude`] (breaker report, the one decision,
//! escalation, the run moved forward). Each step either hands the next one what it needs or
//! ends the delivery with its [`End`]; the delivery is settled once, at the end.

mod admit;
mod claim;
mod conclude;
mod execute;

use crate::{
    breaker::Breakers,
    disposition::Disposition,
    handlers::Handlers,
    policies::PolicyTable,
    settle::{DeliveryMeta, Settler},
    store::{Lease, Store},
};
use lapin::message::Delivery;
use secflow_common::TaskEnvelope;
use secflow_common::logging::context::{self as log_context, Context as LogContext};
use secflow_common::trace::{self, KeyValue, TraceSpan};
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
    /// The fleet side of the worker (healing actions).
    pub fleet: Arc<crate::fleet::Fleet>,
    /// The fleet controls (holds, pauses, degradation level) as last read.
    pub controls: Arc<crate::controls::ControlView>,
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
    /// `secflow_queue_head_age_seconds` of the work queue (looked up once, set per delivery).
    pub head_age: metrics::Gauge,
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

/// How a delivery ends.
pub(crate) enum End {
    /// Settled as this says.
    Settle(Box<Settlement>),
    /// Evidence says it may have killed a worker: the consumer runs it alone.
    Isolate,
}

/// What the one settlement of a delivery needs.
pub(crate) struct Settlement {
    /// The task, when it could be read.
    task: Option<TaskEnvelope>,
    /// What happens to the delivery.
    disposition: Disposition,
    /// The lease this attempt holds, when it took one.
    lease: Option<Lease>,
    /// Whether the task's run already knows (the last step moves the run forward itself).
    recorded: bool,
    /// How its handler ran, when it did.
    report: Option<crate::report::NodeReport>,
}

impl End {
    /// Settles with `disposition`.
    fn settle(task: Option<TaskEnvelope>, disposition: Disposition, lease: Option<Lease>) -> Self {
        Self::Settle(Box::new(Settlement {
            task,
            disposition,
            lease,
            recorded: false,
            report: None,
        }))
    }

    /// Settles `task` with `disposition`, its run already told.
    fn recorded(task: TaskEnvelope, disposition: Disposition, lease: Option<Lease>) -> Self {
        Self::Settle(Box::new(Settlement {
            task: Some(task),
            disposition,
            lease,
            recorded: true,
            report: None,
        }))
    }

    /// Settles `task`, which ran as `report` says, with `disposition`, its run already told.
    fn ran(
        task: TaskEnvelope,
        disposition: Disposition,
        lease: Option<Lease>,
        report: Option<crate::report::NodeReport>,
    ) -> Self {
        Self::Settle(Box::new(Settlement {
            task: Some(task),
            disposition,
            lease,
            recorded: true,
            report,
        }))
    }

    /// Settles `task` with `disposition`, no lease.
    fn with(task: &TaskEnvelope, disposition: Disposition) -> Self {
        Self::settle(Some(task.clone()), disposition, None)
    }
}

/// Decodes, runs and settles one delivery. Never panics on input. `exclusive` runs it with no
/// other task in flight.
pub(crate) async fn process(shared: &Shared, delivery: Delivery, exclusive: bool) {
    let mut meta = DeliveryMeta::read(&delivery, shared.keyring.as_ref());
    if delivery.redelivered {
        metrics::counter!("secflow_redeliveries_total").increment(1);
    }
    if let Some(waited) = waited_in_queue(&delivery, &meta) {
        shared.head_age.set(waited.as_secs_f64());
        let stats = &shared.settler.stats;
        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        stats
            .last_wait_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        stats.last_wait_at_ms.store(
            secflow_common::now_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    // The attempt's span, in the trace the task was published under.
    let attempt = TraceSpan::start_with(trace::Kind::Consumer, meta.parent.as_ref(), || {
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map_or_else(|| delivery.routing_key.as_str(), |k| k.as_str())
            .chars()
            .take(128)
            .collect::<String>();
        (
            format!("task {kind}"),
            vec![
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("secflow.worker", shared.settler.worker_id.clone()),
                KeyValue::new("secflow.attempt", (meta.retry_count + 1) as i64),
                KeyValue::new("secflow.retry_count", meta.retry_count as i64),
            ],
        )
    });
    meta.trace = attempt.context().cloned();
    // Every line logged while this delivery is processed carries its trace, span, worker and
    // attempt; once the envelope is read, its task, run, node and type, and once decided its
    // error class and code: the delivery's log context, its fields set as they become known.
    let context = LogContext::new("delivery")
        .with("trace_id", attempt.trace_id())
        .with("span_id", attempt.span_id())
        .with("worker", shared.settler.worker_id.as_str())
        .with("attempt", meta.retry_count + 1);
    let trace = meta.trace.clone();
    // Boxed once here: the two scopes around it then move a pointer, not the whole attempt's
    // state (kilobytes, copied at every wrapping).
    let attempt = Box::pin(process_in(shared, delivery, meta, exclusive, attempt));
    ATTEMPT
        .scope(trace, log_context::scope(context, attempt))
        .await;
}

tokio::task_local! {
    /// The span context of the attempt being processed: nodes its completion makes ready are
    /// published as its children.
    pub(crate) static ATTEMPT: Option<secflow_common::trace::TraceContext>;
}

async fn process_in(
    shared: &Shared,
    delivery: Delivery,
    meta: DeliveryMeta,
    exclusive: bool,
    mut attempt: TraceSpan,
) {
    let stats = &shared.settler.stats;
    stats
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _in_flight = InFlight(stats);
    let end = match admit::admit(shared, &delivery, &meta) {
        Ok(task) => {
            describe(&mut attempt, &task);
            log_context::record("task_id", task.task_id.to_string());
            if let Some(run) = task.run_id {
                log_context::record("run_id", run.to_string());
            }
            log_context::record("node", task.node_id.as_str());
            log_context::record("type", task.node_type.as_str());
            Box::pin(pipeline(shared, &meta, exclusive, task)).await
        }
        Err(end) => end,
    };
    Box::pin(finish(shared, delivery, meta, end, attempt)).await;
}

/// Settles the delivery as `end` says and ends its attempt's span.
async fn finish(
    shared: &Shared,
    delivery: Delivery,
    mut meta: DeliveryMeta,
    end: End,
    attempt: TraceSpan,
) {
    match end {
        End::Settle(settlement) => {
            let Settlement {
                task,
                mut disposition,
                lease,
                recorded,
                report,
            } = *settlement;
            meta.report = report;
            // A workflow node dead-lettered before it ran (refused, corrupted state, deferred
            // too long) must end in its run too, or the run would wait for it for ever.
            if let (false, Disposition::DeadLetter { .. }, Some(task)) =
                (recorded, &disposition, &task)
                && task.run_id.is_some()
            {
                let retry = conclude::retry_by_policy(shared, task, &meta);
                disposition = crate::workflow::advance(
                    &shared.runs,
                    &shared.settler,
                    task,
                    disposition,
                    None,
                    &retry,
                )
                .await;
            }
            // A completion waits (within the lease's time, until the hard stop) for Redis to
            // record its completing marker: the settler reports none without it, and hands
            // the delivery back instead.
            if let (Disposition::Complete(_), Some(lease)) = (&disposition, &lease) {
                let wait = Duration::from_millis(shared.limits.lease_ms);
                let ttl = shared.settler.done_ttl_ms;
                if !lease.completing_within(ttl, wait, &shared.hard_stop).await {
                    disposition = Disposition::HandBack;
                }
            }
            let completed = matches!(disposition, Disposition::Complete(_));
            let (outcome, error) = disposition.outcome();
            if let Some(e) = &error {
                log_context::record("class", e.class.as_str());
                log_context::record("code", e.code.as_str());
            }
            let error = error.map(|e| (e.class.to_string(), e.code.clone(), e.message.clone()));
            shared
                .settler
                .settle(&delivery, task.as_ref(), &meta, disposition, lease.as_ref())
                .await;
            if let (true, Some(task)) = (completed, &task)
                && Handlers::keeps_checkpoints(&task.node_type)
            {
                conclude::checkpoint(shared, task).clear().await;
            }
            attempt.end(
                outcome,
                error.as_ref().map(|(class, code, message)| {
                    (class.as_str(), code.as_str(), message.as_str())
                }),
            );
        }
        End::Isolate => {
            attempt.end("isolated", None);
            if let Err(back) = shared.suspects.send(delivery) {
                // The consumer is gone (connection lost, stopping): the broker redelivers it.
                drop(back);
            }
        }
    }
}

/// How long `delivery` waited in the work queue: since its retry copy came back from its delay
/// (a retry), or since it was published (the `timestamp` property, in seconds). Under FIFO this
/// is the age of the queue's oldest message when it was taken.
fn waited_in_queue(delivery: &Delivery, meta: &DeliveryMeta) -> Option<Duration> {
    let ms = match (meta.observed_delay_ms, meta.scheduled_delay_ms) {
        (Some(observed), Some(scheduled)) => observed.saturating_sub(scheduled),
        _ => {
            let published = delivery
                .properties
                .timestamp()
                .as_ref()?
                .saturating_mul(1000);
            secflow_common::now_ms().checked_sub(published)?
        }
    };
    Some(Duration::from_millis(ms))
}

/// The task's identity on its attempt's span (when the span is recorded).
fn describe(span: &mut TraceSpan, task: &TaskEnvelope) {
    if !span.recording() {
        return;
    }
    span.set("secflow.task_id", task.task_id.to_string());
    if let Some(run) = task.run_id {
        span.set("secflow.run_id", run.to_string());
    }
    span.set("secflow.node", task.node_id.clone());
    span.set("secflow.task_type", task.node_type.clone());
    span.set("secflow.service", task.service().to_string());
}

/// Counts a delivery out of `in_flight` however its processing ends.
struct InFlight<'a>(&'a crate::stats::WorkerStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn pipeline(
    shared: &Shared,
    meta: &DeliveryMeta,
    exclusive: bool,
    task: TaskEnvelope,
) -> End {
    // Suspects run alone (write), everything else side by side (read).
    let (_exclusive, _shared);
    if exclusive {
        _exclusive = shared.isolation.write().await;
    } else {
        _shared = shared.isolation.read().await;
    }
    let lease = match claim::claim(shared, &task, meta, exclusive).await {
        Ok(lease) => lease,
        Err(end) => return end,
    };
    let service = task.service().to_string();
    let gated = match execute::gate(shared, &task, meta, &service).await {
        Ok(gated) => gated,
        Err(execute::Held::Deferred(disposition)) => {
            return End::settle(Some(task), disposition, lease);
        }
        Err(execute::Held::Recorded(disposition)) => {
            return End::recorded(task, disposition, lease);
        }
    };
    let (outcome, report) = match execute::execute(shared, &task, meta, lease.as_ref(), gated).await
    {
        execute::Executed::Ran(outcome, report) => (outcome, report),
        execute::Executed::Deferred(disposition) => {
            return End::settle(Some(task), disposition, lease);
        }
    };
    let ran = conclude::Ran {
        service: &service,
        lease: lease.as_ref(),
        report: report.as_ref(),
    };
    let disposition = conclude::conclude(shared, &task, meta, ran, outcome).await;
    End::ran(task, disposition, lease, report)
}
