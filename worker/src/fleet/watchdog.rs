//! The worker's liveness watchdog and the runtime its handlers run on.
//!
//! Handlers run on a runtime of their own ([`handlers`]): a handler that blocks its thread (a
//! blocking call in async code) can stall the runtime it runs on — tokio's timers and sockets
//! are driven by whichever worker thread parks last — but not the worker's delivery loop,
//! settlements, heartbeats and probes, which live on the main runtime; there the handler's
//! timeout fires on time and its task is retried as `timeout`.
//!
//! `/healthz` fails (and Kubernetes restarts the pod) while either runtime makes no progress,
//! and for good once a handler abandoned past its timeout never lets go of its thread. A ticker
//! on each runtime stamps the time every [`TICK`]; a plain OS thread, which a stalled runtime
//! cannot hold up, checks the stamps and says so in the log.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// How often the runtime stamps its progress.
const TICK: Duration = Duration::from_millis(250);
/// A runtime that has not stamped for this long is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How long an abandoned handler gets to let go of its thread before the worker counts as
/// stalled.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

struct Watchdog {
    started: Instant,
    /// Ms since `started` of the main runtime's last stamp.
    last_tick_ms: AtomicU64,
    /// Ms since `started` of the handler runtime's last stamp (0: not started).
    handler_tick_ms: AtomicU64,
    /// Why the worker is unhealthy, once it is.
    unhealthy: Mutex<Option<String>>,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

fn watchdog() -> &'static Watchdog {
    WATCHDOG.get_or_init(|| Watchdog {
        started: Instant::now(),
        last_tick_ms: AtomicU64::new(0),
        handler_tick_ms: AtomicU64::new(0),
        unhealthy: Mutex::new(None),
    })
}

fn mark_unhealthy(why: String) {
    let mut unhealthy = watchdog()
        .unhealthy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if unhealthy.is_none() {
        tracing::error!(
            why,
            "worker unhealthy: /healthz now fails so its supervisor restarts it"
        );
        *unhealthy = Some(why);
    }
}

/// `Err(why)` while the runtime is stalled, and for good once a handler would not let go of
/// its thread: the worker needs a restart.
pub fn health() -> Result<(), String> {
    let w = watchdog();
    if let Some(why) = w
        .unhealthy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
    {
        return Err(why);
    }
    let since = w.started.elapsed().as_millis() as u64;
    let silent = since.saturating_sub(w.last_tick_ms.load(Ordering::Relaxed));
    if silent > STALL_AFTER.as_millis() as u64 {
        return Err(format!("the runtime made no progress for {silent} ms"));
    }
    let handler_tick = w.handler_tick_ms.load(Ordering::Relaxed);
    let handler_silent = since.saturating_sub(handler_tick);
    if handler_tick > 0 && handler_silent > STALL_AFTER.as_millis() as u64 {
        return Err(format!(
            "the handlers' runtime made no progress for {handler_silent} ms (a handler blocks it)"
        ));
    }
    Ok(())
}

/// Starts the ticker on the runtime and the checking thread, until `stop`.
pub fn start(stop: &CancellationToken) {
    let w = watchdog();
    w.last_tick_ms
        .store(w.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let ticking = stop.clone();
    tokio::spawn(async move {
        loop {
            let w = watchdog();
            w.last_tick_ms
                .store(w.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = ticking.cancelled() => return,
            }
        }
    });
    let checking = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("secflow-watchdog".into())
        .spawn(move || {
            let mut said = false;
            while !checking.is_cancelled() {
                match health() {
                    Err(why) if !said => {
                        tracing::error!(
                            why,
                            "worker unhealthy: /healthz fails so its supervisor restarts it"
                        );
                        said = true;
                    }
                    Err(_) => {}
                    Ok(()) => said = false,
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "watchdog thread not started: a stalled runtime is caught only by probe timeouts");
    }
}

static HANDLERS: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

/// The runtime handlers run on (as many threads as cores, at least 2), started on first use
/// with its ticker; `None` if it could not be started (handlers then run on the caller's).
pub fn handlers() -> Option<tokio::runtime::Handle> {
    HANDLERS
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("secflow-handler")
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => {
                    rt.spawn(async {
                        loop {
                            let w = watchdog();
                            w.handler_tick_ms
                                .store(w.started.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
                            tokio::time::sleep(TICK).await;
                        }
                    });
                    Some(rt)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no runtime of their own for handlers: they run beside the delivery loop");
                    None
                }
            }
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
}

/// How an abandoned handler let go of its thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LetGo {
    /// As soon as it was aborted (it was waiting, as handlers do).
    AtOnce,
    /// Later, within [`STUCK_AFTER`] (it was blocking its thread).
    Later,
    /// Not within [`STUCK_AFTER`]: the worker is marked unhealthy.
    Never,
}

/// Aborts a handler abandoned past its timeout (`handle`) and follows it: if it has not let go
/// of its thread within [`STUCK_AFTER`] the worker is marked unhealthy.
pub async fn abandoned(task_id: &str, handle: AbortHandle) -> LetGo {
    handle.abort();
    let started = Instant::now();
    while started.elapsed() < STUCK_AFTER {
        if handle.is_finished() {
            return if started.elapsed() < Duration::from_millis(100) {
                LetGo::AtOnce
            } else {
                LetGo::Later
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mark_unhealthy(format!(
        "the handler of task {task_id} still holds its thread {} s after it was abandoned",
        STUCK_AFTER.as_secs()
    ));
    LetGo::Never
}
