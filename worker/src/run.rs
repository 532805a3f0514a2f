//! The worker loop: consume, run, settle; stop gracefully on the shutdown signal.

use crate::{
    config::WorkerConfig,
    disposition::{DeadReason, Disposition, decide},
    handlers::{Handlers, TaskContext},
    settle::{DeliveryMeta, Settler},
};
use futures_util::StreamExt;
use lapin::{
    Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use rand::RngExt;
use secflow_common::{
    TaskEnvelope, TaskError, Topology, amqp, envelope::EnvelopeError, retry::RetryPolicy,
};
use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};
use tokio::sync::RwLock;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Invalid flags or environment.
    #[error("{0}")]
    Config(String),
    /// Broker or topology failure that retrying cannot fix.
    #[error(transparent)]
    Broker(#[from] secflow_common::Error),
}

/// How long hard-stopped tasks get to hand their deliveries back.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What every in-flight task shares.
struct Shared {
    handlers: Handlers,
    settler: Settler,
    policies: HashMap<String, RetryPolicy>,
    default_policy: RetryPolicy,
    default_timeout: Duration,
    /// Redelivered-after-crash tasks run alone (write lock) so a task that kills the process
    /// does not take innocent tasks' delivery attempts with it.
    isolation: RwLock<()>,
    /// Cancelled when the grace period is over: unfinished tasks are handed back.
    hard_stop: CancellationToken,
}

/// Runs a worker until `shutdown` resolves, then drains gracefully and returns.
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    cfg.validate().map_err(WorkerError::Config)?;
    let ns = cfg.broker.namespace()?;
    let topology = Arc::new(Topology::new(ns, cfg.broker.delivery_limit));
    let handlers = Handlers::new(cfg.max_output_bytes).map_err(WorkerError::Config)?;
    let worker_id = cfg.worker_id();
    let conn = amqp::connect(&cfg.broker.amqp_url, &format!("secflow-worker {worker_id}"), Duration::from_secs(cfg.broker.connect_timeout_secs)).await?;
    let declare = conn.create_channel().await.map_err(secflow_common::Error::from)?;
    topology.declare_pool(&declare, &cfg.pool, &cfg.bind).await?;
    let _ = declare.close(200, "declared".into()).await;

    let queue = topology.work_queue(&cfg.pool);
    let shared = Arc::new(Shared {
        handlers,
        settler: Settler { publisher: amqp::Publisher::new(&conn).await?, topology, worker_id: worker_id.clone(), queue: queue.clone() },
        policies: cfg.policies(),
        default_policy: RetryPolicy::default(),
        default_timeout: Duration::from_secs(cfg.task_timeout_secs),
        isolation: RwLock::new(()),
        hard_stop: CancellationToken::new(),
    });
    let result = consume(&conn, &cfg, &queue, &shared, shutdown).await;
    let _ = conn.close(200, "worker stopped".into()).await;
    result
}

async fn consume(conn: &Connection, cfg: &WorkerConfig, queue: &str, shared: &Arc<Shared>, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let channel = conn.create_channel().await.map_err(secflow_common::Error::from)?;
    channel.basic_qos(cfg.prefetch, BasicQosOptions::default()).await.map_err(secflow_common::Error::from)?;
    let tag = format!("{}-{}", shared.settler.worker_id, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(secflow_common::Error::from)?;
    tracing::info!(worker = %shared.settler.worker_id, queue, prefetch = cfg.prefetch, "worker consuming");
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let shared = Arc::clone(shared);
                    tracker.spawn(async move { process(&shared, delivery).await });
                }
                Some(Err(e)) => break Err(WorkerError::Broker(e.into())),
                None => break Err(WorkerError::Config("the broker cancelled the consumer (queue deleted?)".into())),
            },
        }
    };
    tracing::info!(in_flight = tracker.len(), grace_secs = cfg.grace_secs, "stopping: no new deliveries, finishing in-flight tasks");
    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
    // Deliveries already prefetched but not started go straight back.
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(cfg.grace_secs), tracker.wait()).await.is_err() {
        tracing::warn!(unfinished = tracker.len(), "grace period over: handing unfinished tasks back to the queue");
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(HAND_BACK_TIMEOUT, tracker.wait()).await;
    }
    let _ = channel.close(200, "worker stopped".into()).await;
    tracing::info!("worker stopped");
    outcome
}

/// Decodes, runs and settles one delivery. Never panics on input.
async fn process(shared: &Shared, delivery: Delivery) {
    let meta = DeliveryMeta::read(&delivery);
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str());
    let task = match TaskEnvelope::decode(&delivery.data, message_id) {
        Ok(task) => task,
        Err(e) => return shared.settler.settle(&delivery, None, &meta, malformed(&e)).await,
    };
    if !shared.handlers.knows(&task.node_type) {
        let error = TaskError::validation("unknown_type", format!("no handler for node type `{}` in this worker pool", task.node_type));
        let disposition = Disposition::DeadLetter { reason: DeadReason::Validation, error };
        return shared.settler.settle(&delivery, Some(&task), &meta, disposition).await;
    }
    let _read_guard;
    let _write_guard;
    if meta.delivery_count > 0 {
        tracing::warn!(task_id = %task.task_id, deliveries = meta.delivery_count, "redelivered after an unsettled attempt: running it alone");
        _write_guard = shared.isolation.write().await;
    } else {
        _read_guard = shared.isolation.read().await;
    }
    let timeout = task.timeout_ms.map_or(shared.default_timeout, Duration::from_millis).min(crate::config::MAX_TASK_TIMEOUT);
    let ctx = TaskContext { task: &task, retry_count: meta.retry_count, timeout };
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, shared.handlers.run(&ctx)) => r.unwrap_or_else(|_| Err(TaskError::new(
            secflow_common::ErrorClass::Transient, "timeout", format!("{} did not finish within {} ms", task.node_type, timeout.as_millis()),
        ))),
        () = shared.hard_stop.cancelled() => {
            tracing::warn!(task_id = %task.task_id, "shutdown: handing the task back unfinished");
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            return;
        }
    };
    let policy = task.retry.as_ref().or_else(|| shared.policies.get(&task.node_type)).unwrap_or(&shared.default_policy);
    let retries = u32::try_from(meta.retry_count).unwrap_or(u32::MAX);
    let unit = rand::rng().random::<f64>();
    let disposition = decide(outcome, retries, policy, unit);
    shared.settler.settle(&delivery, Some(&task), &meta, disposition).await;
}

fn malformed(e: &EnvelopeError) -> Disposition {
    tracing::error!(code = e.code(), error = %e, "malformed message: dead-lettering it");
    Disposition::DeadLetter { reason: DeadReason::Malformed, error: TaskError::validation(e.code(), e.to_string()) }
}
