//! The worker loop: consume, run, settle; stop gracefully on the shutdown signal.

mod consume;
mod isolation;
mod parts;

use crate::{
    config::WorkerConfig,
    events::EventBatcher,
    observe,
    settle::Settler,
    stats::WorkerStats,
    task::{Limits, Shared},
};
use consume::consume;
use lapin::Connection;
use parts::Parts;
use secflow_common::{Topology, amqp};
use std::{future::Future, sync::Arc, time::Duration};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

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

/// Runs a worker until `shutdown` resolves, then drains gracefully and returns.
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    run_with_stats(cfg, Arc::default(), shutdown).await
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
    let topology = Arc::new(Topology::new(
        cfg.broker.namespace()?,
        cfg.broker.delivery_limit,
    ));
    let worker_id = cfg.worker_id();
    let parts = Parts::build(&cfg, &stats, &worker_id).await?;
    // Building the parts (the classifier's model is parsed from JSON, its rules compiled) frees
    // several MB that the allocator would keep: give them back, so an idle worker's resident
    // memory is what it uses.
    trim_heap();
    // Other workers take this one's leases over within seconds once these heartbeats stop.
    let stop_heartbeat = CancellationToken::new();
    parts
        .store
        .keep_alive_worker(worker_id.clone(), stop_heartbeat.clone());
    parts.controls.keep_fresh(stop_heartbeat.clone());
    let fleet = Arc::new(crate::fleet::Fleet::new(crate::fleet::FleetParts {
        args: cfg.fleet.clone(),
        worker_id: worker_id.clone(),
        pool: cfg.pool.clone(),
        amqp_url: cfg.broker.amqp_url.clone(),
        stats: Arc::clone(&stats),
        store: Arc::clone(&parts.store),
        controls: Arc::clone(&parts.controls),
        breakers: Arc::clone(&parts.breakers),
        topology: Arc::clone(&topology),
    }));
    fleet.start(&stop_heartbeat);
    tracing::info!(
        worker = %worker_id,
        host = %fleet.host,
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        pool = %cfg.pool,
        "worker starting"
    );
    let _stop_heartbeat = stop_heartbeat.clone().drop_guard();
    // The memory watchdog stops the worker the way SIGTERM does.
    let (memory, stopping) = (fleet.memory_exceeded.clone(), fleet.stopping.clone());
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = memory.cancelled() => {}
        }
        stopping.cancel();
    };
    let stop_endpoints = CancellationToken::new();
    if let Some(addr) = cfg.metrics_addr {
        observe::serve(
            addr,
            observe::Endpoints {
                stats: Arc::clone(&stats),
                admin_token: cfg.admin_token.clone().filter(|t| !t.is_empty()),
            },
            stop_endpoints.clone().cancelled_owned(),
        )
        .await
        .map_err(WorkerError::Config)?;
    }
    let name = format!("secflow-worker {worker_id}");
    tokio::pin!(shutdown);
    let mut connected_once = false;
    // Why the last connection was lost, until a new one is up.
    let mut lost: Option<String> = None;
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
        if let Some(lost) = lost.take() {
            tracing::info!("reconnected to RabbitMQ: redeclaring and resuming");
            let fleet = Arc::clone(&fleet);
            tokio::spawn(async move {
                let done = "reconnected with backoff; redeclaring the topology and consuming again";
                fleet.healed("reconnect_broker", &lost, done, true).await;
            });
        }
        connected_once = true;
        let up_since = std::time::Instant::now();
        let outcome = session(
            &conn,
            &cfg,
            &topology,
            &parts,
            &stats,
            &fleet,
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
                lost = Some(format!("lost the RabbitMQ connection: {e}"));
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
    if fleet.memory_exceeded.is_cancelled() {
        let left = WorkerStats::get(&stats.in_flight);
        let detected = format!(
            "resident memory above --max-rss-mb {}",
            cfg.fleet.max_rss_mb
        );
        let done = format!(
            "stopped taking work, finished or handed back what it held ({left} left), exiting 0 for a fresh start"
        );
        fleet
            .healed(
                "memory_restart",
                &detected,
                &done,
                result.is_ok() && left == 0,
            )
            .await;
    }
    stop_heartbeat.cancel();
    fleet.close().await;
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
    fleet: &Arc<crate::fleet::Fleet>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), WorkerError> {
    let worker_id = fleet.worker_id.as_str();
    let queue = topology.work_queue(&cfg.pool);
    let setup = within("declaring the topology and opening channels", async {
        let declare = conn
            .create_channel()
            .await
            .map_err(secflow_common::Error::from)?;
        topology
            .declare_pool(&declare, &cfg.pool, &cfg.bind)
            .await?;
        if parts.hooks.has_fleet_hooks() {
            topology.declare_hooks(&declare).await?;
        }
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
    // Closed before the session ends (see below).
    let channels = [events.channel().clone(), publisher.channel().clone()];
    let (suspects, suspects_rx) = tokio::sync::mpsc::unbounded_channel();
    let events = EventBatcher::start(events, topology.events_exchange());
    let shared = Arc::new(Shared {
        suspects,
        handlers: Arc::clone(&parts.handlers),
        settler: Settler {
            events: events.clone(),
            publisher,
            topology: Arc::clone(topology),
            worker_id: worker_id.to_string(),
            queue: queue.clone(),
            stats: Arc::clone(stats),
            done_ttl_ms: cfg.done_ttl_secs.saturating_mul(1000),
            runs: Arc::clone(&parts.runs),
            acks: crate::settle::Acks::start(),
            store: Arc::clone(&parts.store),
        },
        runs: Arc::clone(&parts.runs),
        cancels: Arc::clone(&parts.cancels),
        store: Arc::clone(&parts.store),
        breakers: Arc::clone(&parts.breakers),
        controls: Arc::clone(&parts.controls),
        fleet: Arc::clone(fleet),
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
        head_age: metrics::gauge!("secflow_queue_head_age_seconds", "queue" => queue.clone()),
    });
    // The hook dispatcher runs beside the consumer: it stops consuming on the same signal and
    // finishes its deliveries within the same grace period; a lost connection ends it at once.
    let (stop_hooks, abort_hooks) = (CancellationToken::new(), CancellationToken::new());
    let tasks = async {
        let signalled = async {
            shutdown.as_mut().await;
            stop_hooks.cancel();
        };
        tokio::pin!(signalled);
        let outcome = consume(conn, cfg, &queue, &shared, suspects_rx, signalled).await;
        if outcome.is_err() {
            abort_hooks.cancel();
        }
        stop_hooks.cancel();
        outcome
    };
    let hooks = crate::hooks::dispatch(
        conn,
        topology,
        Arc::clone(&parts.hooks),
        events,
        &stop_hooks,
        &abort_hooks,
        Duration::from_secs(cfg.grace_secs),
    );
    let outcome = tokio::join!(tasks, hooks).0;
    // The publishing channels are closed here, while the connection is up: the AMQP client
    // closes a channel whose last handle is dropped, and one dropped while the connection is
    // already closing made it log a connection error at every stop.
    for channel in channels {
        let _ = secflow_common::deadline::within(
            "the broker to close a channel",
            secflow_common::deadline::CLOSE,
            channel.close(200, "worker stopped".into()),
        )
        .await;
    }
    outcome
}

/// Returns the allocator's free memory to the system (glibc keeps freed heap for reuse).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free pages of glibc's own heaps; it takes the
    // allocator's locks like any allocation and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
