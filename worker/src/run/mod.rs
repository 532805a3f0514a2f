//! The worker loop: consume, run, settle; stop gracefully on the shutdown signal.

mod isolation;

use crate::{
    breaker::Breakers,
    classify::Classifier,
    config::WorkerConfig,
    disposition::Disposition,
    events::EventBatcher,
    handlers::{ExecPolicy, Handlers},
    observe,
    settle::{DeliveryMeta, Settler},
    stats::WorkerStats,
    store::Store,
    task::{Limits, Shared, process},
};
use futures_util::StreamExt;
use isolation::{Isolation, consumer_tag, isolate, next_buffered, subscribe};
use lapin::{
    Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicQosOptions},
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

/// The parts of a worker that outlive a broker connection.
struct Parts {
    keyring: Option<secflow_common::signing::Keyring>,
    handlers: Arc<Handlers>,
    store: Arc<Store>,
    breakers: Arc<Breakers>,
    runs: Arc<secflow_common::runs::RunStore>,
    cancels: Arc<crate::workflow::RunCancels>,
}

/// [`run`], counting settlements into `stats`. A lost broker connection is re-established
/// with backoff (queues redeclared, consuming resumed); only the first connection must succeed
/// within `--connect-timeout-secs`.
pub async fn run_with_stats(
    cfg: WorkerConfig,
    stats: Arc<WorkerStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    cfg.validate().map_err(WorkerError::Config)?;
    secflow_common::redact::install(&cfg.redact_patterns).map_err(WorkerError::Config)?;
    let keyring = cfg.broker.keyring()?;
    if keyring.is_none() {
        tracing::warn!(
            "task signing is disabled (--insecure-no-signing): this worker runs unsigned tasks from anyone who can publish"
        );
    }
    let exec_policy = ExecPolicy::new(
        &cfg.exec_allow,
        cfg.exec_workdir.clone(),
        cfg.exec_memory_mb,
    )
    .map_err(WorkerError::Config)?;
    if let Some(chaos) = cfg.chaos.as_ref().filter(|c| c.enabled()) {
        tracing::warn!(?chaos, "chaos injection is on");
    }
    let topology = Arc::new(Topology::new(
        cfg.broker.namespace()?,
        cfg.broker.delivery_limit,
    ));
    let classifier = match &cfg.rules {
        Some(path) => Classifier::with_file(path).map_err(WorkerError::Config)?,
        None => Classifier::defaults(),
    };
    let store = Store::new(
        &cfg.broker.redis_url,
        &cfg.broker.namespace,
        Arc::clone(&stats),
    )
    .map_err(WorkerError::Config)?;
    if !store.check().await {
        tracing::warn!(url = %redact_url(&cfg.broker.redis_url), "starting without Redis: local breakers until it answers");
    }
    let tools = cfg.tool_set().map_err(WorkerError::Config)?;
    let runs = Arc::new(
        secflow_common::runs::RunStore::new(&cfg.broker.redis_url, &cfg.broker.namespace)
            .map_err(|e| WorkerError::Config(e.to_string()))?,
    );
    let tooling = crate::handlers::Tooling {
        tools,
        resources: secflow_common::tools::Resources::new(cfg.resources.clone()),
        cve: Some(crate::handlers::CveSource {
            url: cfg.cve_source.clone(),
            cache: Arc::clone(&runs),
        }),
    };
    let worker_id = cfg.worker_id();
    // Other workers take this one's leases over within seconds once these heartbeats stop.
    let stop_heartbeat = CancellationToken::new();
    store.keep_alive_worker(worker_id.clone(), stop_heartbeat.clone());
    let _stop_heartbeat = stop_heartbeat.drop_guard();
    let parts = Parts {
        keyring,
        handlers: Arc::new(
            Handlers::new(
                cfg.max_output_bytes,
                classifier,
                exec_policy,
                cfg.handler_versions.iter().cloned().collect(),
                tooling,
            )
            .map_err(WorkerError::Config)?,
        ),
        breakers: Arc::new(Breakers::new(
            Arc::clone(&store),
            cfg.breaker_default.clone(),
            cfg.breakers.iter().cloned().collect(),
        )),
        runs,
        cancels: Arc::default(),
        store,
    };
    let stop_endpoints = CancellationToken::new();
    if let Some(addr) = cfg.metrics_addr {
        observe::serve(
            addr,
            Arc::clone(&stats),
            stop_endpoints.clone().cancelled_owned(),
        )
        .await
        .map_err(WorkerError::Config)?;
    }
    let name = format!("secflow-worker {worker_id}");
    tokio::pin!(shutdown);
    let mut connected_once = false;
    let mut backoff = secflow_common::retry::ReconnectBackoff::default();
    let result = loop {
        // The first connection has a deadline (a wrong URL must say so); later ones retry until
        // the broker is back or the worker is told to stop.
        let timeout = if connected_once {
            Duration::from_secs(24 * 3600)
        } else {
            Duration::from_secs(cfg.broker.connect_timeout_secs)
        };
        let conn = tokio::select! {
            c = amqp::connect(&cfg.broker.amqp_url, &name, timeout) => c,
            () = &mut shutdown => break Ok(()),
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => break Err(e.into()),
        };
        if connected_once {
            tracing::info!("reconnected to RabbitMQ: redeclaring and resuming");
        }
        connected_once = true;
        let up_since = std::time::Instant::now();
        let outcome = session(
            &conn,
            &cfg,
            &topology,
            &parts,
            &stats,
            &worker_id,
            shutdown.as_mut(),
        )
        .await;
        // A close the broker never answers must not keep a stopping worker alive.
        amqp::close(&conn, "worker stopped").await;
        // A connection that stayed up starts the backoff over; one dropped at once does not.
        backoff.connection_lasted(up_since.elapsed());
        match outcome {
            Ok(()) => break Ok(()),
            Err(WorkerError::Broker(e)) if e.is_unparseable_frame() => {
                // Not a broker outage: a message the client cannot parse. Find it before
                // consuming again, or it drops the next connection too.
                let queue = topology.work_queue(&cfg.pool);
                let limit = usize::from(cfg.prefetch.max(1)) + SWEEP_EXTRA;
                tracing::warn!(
                    queue,
                    limit,
                    "a delivery could not be parsed: sweeping the head of the queue with the raw reader"
                );
                let swept = tokio::select! {
                    s = crate::poison::sweep(&cfg.broker.amqp_url, &topology, &queue, &worker_id, limit) => s,
                    () = &mut shutdown => break Ok(()),
                };
                match swept {
                    Ok(s) => tracing::info!(
                        dead_lettered = s.dead_lettered,
                        handed_back = s.handed_back,
                        "sweep done"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "sweep failed; the broker's delivery limit will dead-letter the message")
                    }
                }
            }
            Err(WorkerError::Broker(e)) if !e.is_transient() => {
                // A topology conflict, a refused login or permission: retrying cannot fix it.
                // Stop with the reason (a supervisor shows a crash loop saying why).
                break Err(WorkerError::Broker(e));
            }
            Err(WorkerError::Broker(e)) => {
                let wait = backoff.next_delay(&mut rand::rng());
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "lost the RabbitMQ connection: in-flight deliveries go back to the queue; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => break Ok(()),
                }
            }
            Err(e) => break Err(e),
        }
    };
    stop_endpoints.cancel();
    result
}

/// Messages past the prefetch that a sweep also takes (the poison may sit just behind them).
const SWEEP_EXTRA: usize = 16;

/// Longest wait for one setup step on a new connection (declare, open channels, subscribe).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `fut` with the setup deadline ([`secflow_common::deadline::within`]); a broker that does
/// not answer is treated like a lost connection (the worker reconnects).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, WorkerError> {
    Ok(secflow_common::deadline::within(what, SETUP_TIMEOUT, fut).await?)
}

/// How long tasks of a lost connection get to notice before the worker reconnects without them.
const LOST_TASKS_WAIT: Duration = Duration::from_secs(1);

/// Longest wait for the broker to confirm a channel or connection close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// One connection's worth of work: declare, consume until shutdown (`Ok`) or the connection
/// is lost (`Err(Broker)`).
async fn session(
    conn: &Connection,
    cfg: &WorkerConfig,
    topology: &Arc<Topology>,
    parts: &Parts,
    stats: &Arc<WorkerStats>,
    worker_id: &str,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), WorkerError> {
    let queue = topology.work_queue(&cfg.pool);
    let setup = within("declaring the topology and opening channels", async {
        let declare = conn
            .create_channel()
            .await
            .map_err(secflow_common::Error::from)?;
        topology
            .declare_pool(&declare, &cfg.pool, &cfg.bind)
            .await?;
        let _ = declare.close(200, "declared".into()).await;
        let events = amqp::Publisher::new(conn)
            .await?
            .limited(cfg.broker.max_message_bytes);
        let publisher =
            amqp::Publisher::for_tasks(conn, parts.keyring.clone(), cfg.broker.max_message_bytes)
                .await?;
        crate::workflow::listen_for_cancels(conn, topology, Arc::clone(&parts.cancels)).await?;
        Ok::<_, WorkerError>((events, publisher))
    });
    let (events, publisher) = tokio::select! {
        r = setup => r??,
        () = shutdown.as_mut() => return Ok(()),
    };
    let (suspects, suspects_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        suspects,
        handlers: Arc::clone(&parts.handlers),
        settler: Settler {
            events: EventBatcher::start(events, topology.events_exchange()),
            publisher,
            topology: Arc::clone(topology),
            worker_id: worker_id.to_string(),
            queue: queue.clone(),
            stats: Arc::clone(stats),
            done_ttl_ms: cfg.done_ttl_secs.saturating_mul(1000),
            follow_ups: std::sync::Mutex::default(),
        },
        runs: Arc::clone(&parts.runs),
        cancels: Arc::clone(&parts.cancels),
        store: Arc::clone(&parts.store),
        breakers: Arc::clone(&parts.breakers),
        policies: cfg.policies_with(parts.handlers.tools()),
        default_timeout: Duration::from_secs(cfg.task_timeout_secs),
        isolation: RwLock::new(()),
        delivery_limit: u64::from(cfg.broker.delivery_limit),
        hard_stop: CancellationToken::new(),
        limits: Limits {
            lease_ms: cfg.lease_ms,
            max_defers: cfg.max_defers,
            escalate_after: cfg.escalate_after,
            escalate_window_ms: cfg.escalate_window_secs.saturating_mul(1000),
            idempotent: crate::idempotency::IdempotencyTable::new(&cfg.idempotent),
        },
        keyring: parts.keyring.clone(),
        max_message_bytes: cfg.broker.max_message_bytes,
        chaos: cfg.chaos.clone().filter(crate::chaos::ChaosConfig::enabled),
    });
    consume(conn, cfg, &queue, &shared, suspects_rx, shutdown).await
}

async fn consume(
    conn: &Connection,
    cfg: &WorkerConfig,
    queue: &str,
    shared: &Arc<Shared>,
    mut suspects: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), WorkerError> {
    let mut tag = consumer_tag(&shared.settler.worker_id);
    let setup = within("opening the consumer", async {
        let channel = conn
            .create_channel()
            .await
            .map_err(secflow_common::Error::from)?;
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(secflow_common::Error::from)?;
        let consumer = subscribe(&channel, queue, &tag).await?;
        Ok::<_, WorkerError>((channel, consumer))
    });
    let (channel, mut consumer) = tokio::select! {
        r = setup => r??,
        () = shutdown.as_mut() => return Ok(()),
    };
    let stats = &shared.settler.stats;
    stats.consuming.store(true, Ordering::SeqCst);
    tracing::info!(worker = %shared.settler.worker_id, queue, prefetch = cfg.prefetch, "worker consuming");
    let tracker = TaskTracker::new();
    // The consumer stream does not always end when the server closes the connection; the
    // connection's own events say so.
    let mut connection_events = conn.events_listener();
    let outcome = loop {
        let suspect = tokio::select! {
            () = &mut shutdown => break Ok(()),
            event = connection_events.next() => match event {
                Some(lapin::Event::Error(e)) => break Err(WorkerError::Broker(e.into())),
                Some(_) => continue,
                None => break Err(WorkerError::Broker(secflow_common::Error::ConnectionLost("consuming (the connection's event stream ended)".into()))),
            },
            Some(suspect) = suspects.recv() => suspect,
            next = consumer.next() => match next {
                // Without Redis there is no evidence of what killed a worker: a delivery that
                // was never settled is taken for a suspect, as the broker's count is all there is.
                Some(Ok(delivery)) if shared.store.is_degraded() && DeliveryMeta::read(&delivery, shared.keyring.as_ref()).is_suspect() => delivery,
                Some(Ok(delivery)) => {
                    let shared = Arc::clone(shared);
                    tracker.spawn(async move { process(&shared, delivery, false).await });
                    continue;
                }
                Some(Err(e)) => break Err(WorkerError::Broker(e.into())),
                // The broker cancelled the consumer (queue deleted, node restarted): start over.
                None => break Err(WorkerError::Broker(secflow_common::Error::ConnectionLost("consuming (the broker cancelled the consumer)".into()))),
            },
        };
        match isolate(
            &channel,
            &tag,
            &mut consumer,
            suspect,
            shared,
            &tracker,
            shutdown.as_mut(),
            &mut connection_events,
        )
        .await
        {
            Isolation::Done => {
                // A fresh tag: RabbitMQ 3.10 can fail a channel that reuses a cancelled one.
                tag = consumer_tag(&shared.settler.worker_id);
                consumer = within("subscribing again", subscribe(&channel, queue, &tag)).await??;
                stats.consuming.store(true, Ordering::SeqCst);
            }
            Isolation::Shutdown => break Ok(()),
            Isolation::Lost(e) => break Err(e),
        }
    };
    stats.consuming.store(false, Ordering::SeqCst);
    if outcome.is_err() {
        // The channel is gone: no in-flight delivery can be settled, the broker redelivers
        // them all. Stop their handlers now rather than run them for nothing.
        shared.hard_stop.cancel();
    }
    tracing::info!(
        in_flight = tracker.len(),
        grace_secs = cfg.grace_secs,
        "stopping: no new deliveries, finishing in-flight tasks"
    );
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await;
    // Deliveries already prefetched but not started go straight back, as fresh copies: a
    // nack would count as a failed delivery and bring them nearer the delivery limit.
    // (On a lost connection they are redelivered anyway.)
    while outcome.is_ok()
        && let Some(delivery) = next_buffered(&mut consumer).await
    {
        let meta = DeliveryMeta::read(&delivery, shared.keyring.as_ref());
        shared
            .settler
            .settle(&delivery, None, &meta, Disposition::HandBack, None)
            .await;
    }
    tracker.close();
    if outcome.is_err() {
        // Nothing in flight can be settled on a dead channel; their deliveries are already on
        // their way back to the queue. Waiting for them (a publish that never gets its confirm)
        // would only keep the worker from reconnecting: give them a moment, then leave them.
        if tokio::time::timeout(LOST_TASKS_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                unfinished = tracker.len(),
                "not waiting for tasks of the lost connection"
            );
        }
    } else if tokio::time::timeout(Duration::from_secs(cfg.grace_secs), tracker.wait())
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
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "worker stopped".into())).await;
    tracing::info!("consumer stopped");
    outcome
}
