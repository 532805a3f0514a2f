//! The worker loop: consume, run, settle; stop gracefully on the shutdown signal.

use crate::{
    breaker::Breakers,
    classify::Classifier,
    config::WorkerConfig,
    disposition::Disposition,
    events::EventBatcher,
    handlers::Handlers,
    observe,
    settle::{DeliveryMeta, Settler},
    stats::WorkerStats,
    store::Store,
    task::{Limits, Shared, process},
};
use futures_util::StreamExt;
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use secflow_common::{Topology, amqp, config::redact_url};
use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
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

/// Runs a worker until `shutdown` resolves, then drains gracefully and returns.
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    run_with_stats(cfg, Arc::default(), shutdown).await
}

/// [`run`], counting settlements into `stats`.
pub async fn run_with_stats(
    cfg: WorkerConfig,
    stats: Arc<WorkerStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    cfg.validate().map_err(WorkerError::Config)?;
    let ns = cfg.broker.namespace()?;
    let topology = Arc::new(Topology::new(ns, cfg.broker.delivery_limit));
    let classifier = match &cfg.rules {
        Some(path) => Classifier::with_file(path).map_err(WorkerError::Config)?,
        None => Classifier::defaults(),
    };
    let handlers = Handlers::new(cfg.max_output_bytes, classifier).map_err(WorkerError::Config)?;
    let worker_id = cfg.worker_id();
    let conn = amqp::connect(
        &cfg.broker.amqp_url,
        &format!("secflow-worker {worker_id}"),
        Duration::from_secs(cfg.broker.connect_timeout_secs),
    )
    .await?;
    let declare = conn
        .create_channel()
        .await
        .map_err(secflow_common::Error::from)?;
    topology
        .declare_pool(&declare, &cfg.pool, &cfg.bind)
        .await?;
    let _ = declare.close(200, "declared".into()).await;

    let queue = topology.work_queue(&cfg.pool);
    let store = Store::new(
        &cfg.broker.redis_url,
        &cfg.broker.namespace,
        Arc::clone(&stats),
    )
    .map_err(WorkerError::Config)?;
    if !store.check().await {
        tracing::warn!(url = %redact_url(&cfg.broker.redis_url), "starting without Redis: local breakers until it answers");
    }
    let breakers = Breakers::new(
        Arc::clone(&store),
        cfg.breaker_default.clone(),
        cfg.breakers.iter().cloned().collect(),
    );
    let shared = Arc::new(Shared {
        handlers,
        settler: Settler {
            events: EventBatcher::start(
                amqp::Publisher::new(&conn).await?,
                topology.events_exchange(),
            ),
            publisher: amqp::Publisher::new(&conn).await?,
            topology,
            worker_id: worker_id.clone(),
            queue: queue.clone(),
            stats,
            done_ttl_ms: cfg.done_ttl_secs.saturating_mul(1000),
        },
        runs: secflow_common::runs::RunStore::new(&cfg.broker.redis_url, &cfg.broker.namespace)
            .map_err(|e| WorkerError::Config(e.to_string()))?,
        cancels: Arc::default(),
        store,
        breakers,
        policies: cfg.policies(),
        default_timeout: Duration::from_secs(cfg.task_timeout_secs),
        isolation: RwLock::new(()),
        delivery_limit: u64::from(cfg.broker.delivery_limit),
        hard_stop: CancellationToken::new(),
        limits: Limits {
            lease_ms: cfg.lease_ms,
            max_defers: cfg.max_defers,
            escalate_after: cfg.escalate_after,
            escalate_window_ms: cfg.escalate_window_secs.saturating_mul(1000),
        },
    });
    crate::workflow::listen_for_cancels(
        &conn,
        &shared.settler.topology,
        Arc::clone(&shared.cancels),
    )
    .await?;
    let stop_endpoints = CancellationToken::new();
    if let Some(addr) = cfg.metrics_addr {
        let stats = Arc::clone(&shared.settler.stats);
        observe::serve(addr, stats, stop_endpoints.clone().cancelled_owned())
            .await
            .map_err(WorkerError::Config)?;
    }
    let result = consume(&conn, &cfg, &queue, &shared, shutdown).await;
    stop_endpoints.cancel();
    let _ = conn.close(200, "worker stopped".into()).await;
    result
}

async fn consume(
    conn: &Connection,
    cfg: &WorkerConfig,
    queue: &str,
    shared: &Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(secflow_common::Error::from)?;
    channel
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(secflow_common::Error::from)?;
    let tag = format!(
        "{}-{}",
        shared.settler.worker_id,
        uuid::Uuid::new_v4().simple()
    );
    let mut consumer = subscribe(&channel, queue, &tag).await?;
    let stats = &shared.settler.stats;
    stats.consuming.store(true, Ordering::SeqCst);
    tracing::info!(worker = %shared.settler.worker_id, queue, prefetch = cfg.prefetch, "worker consuming");
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) if DeliveryMeta::read(&delivery).is_suspect() => {
                    if isolate(&channel, &tag, &mut consumer, delivery, shared, &tracker, shutdown.as_mut()).await {
                        break Ok(());
                    }
                    consumer = subscribe(&channel, queue, &tag).await?;
                }
                Some(Ok(delivery)) => {
                    let shared = Arc::clone(shared);
                    tracker.spawn(async move { process(&shared, delivery, false).await });
                }
                Some(Err(e)) => break Err(WorkerError::Broker(e.into())),
                None => break Err(WorkerError::Config("the broker cancelled the consumer (queue deleted?)".into())),
            },
        }
    };
    stats.consuming.store(false, Ordering::SeqCst);
    tracing::info!(
        in_flight = tracker.len(),
        grace_secs = cfg.grace_secs,
        "stopping: no new deliveries, finishing in-flight tasks"
    );
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    // Deliveries already prefetched but not started go straight back, as fresh copies: a
    // nack would count as a failed delivery and bring them nearer the delivery limit.
    while let Some(delivery) = next_buffered(&mut consumer).await {
        let meta = DeliveryMeta::read(&delivery);
        shared
            .settler
            .settle(&delivery, None, &meta, Disposition::HandBack, None)
            .await;
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(cfg.grace_secs), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unfinished = tracker.len(),
            "grace period over: handing unfinished tasks back to the queue"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(HAND_BACK_TIMEOUT, tracker.wait()).await;
    }
    let _ = channel.close(200, "worker stopped".into()).await;
    tracing::info!("worker stopped");
    outcome
}

async fn subscribe(channel: &Channel, queue: &str, tag: &str) -> Result<Consumer, WorkerError> {
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(secflow_common::Error::from)?;
    Ok(consumer)
}

/// A delivery the broker already pushed to a cancelled consumer, if any is left.
async fn next_buffered(consumer: &mut Consumer) -> Option<Delivery> {
    match tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
        Ok(Some(Ok(delivery))) => Some(delivery),
        _ => None,
    }
}

/// Runs a suspect task (one whose earlier delivery was never settled) with nothing else held:
/// consumption stops, prefetched deliveries are handed back as fresh copies, in-flight tasks
/// finish, then the suspect runs alone. If it kills the process, it alone is charged a
/// delivery; innocent tasks never reach the delivery limit by standing next to it.
/// Returns true when shutdown was requested meanwhile.
async fn isolate(
    channel: &Channel,
    tag: &str,
    consumer: &mut Consumer,
    suspect: Delivery,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let meta = DeliveryMeta::read(&suspect);
    tracing::warn!(
        deliveries = meta.unsettled_total(),
        "redelivered after an unsettled attempt: running it in isolation"
    );
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    while let Some(delivery) = next_buffered(consumer).await {
        let meta = DeliveryMeta::read(&delivery);
        shared
            .settler
            .settle(&delivery, None, &meta, Disposition::HandBack, None)
            .await;
    }
    let shared = Arc::clone(shared);
    let run = tracker.spawn(async move { process(&shared, suspect, true).await });
    tokio::select! {
        _ = run => false,
        () = &mut shutdown => true,
    }
}
