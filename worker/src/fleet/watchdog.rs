//! The worker's liveness watchdog: `/healthz` fails (and Kubernetes restarts the pod) when the
//! tokio runtime stops making progress, or when a handler abandoned past its timeout and grace
//! never lets go of its thread. A ticker on the runtime stamps the time every [`TICK`]; a plain
//! OS thread, which a stalled runtime cannot hold up, checks the stamp.

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
    /// Ms since `started` of the runtime's last stamp.
    last_tick_ms: AtomicU64,
    /// Why the worker is unhealthy, once it is.
    unhealthy: Mutex<Option<String>>,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

fn watchdog() -> &'static Watchdog {
    WATCHDOG.get_or_init(|| Watchdog {
        started: Instant::now(),
        last_tick_ms: AtomicU64::new(0),
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
    let since = w.started.elapsed().as_millis() as u64;
    let silent = since.saturating_sub(w.last_tick_ms.load(Ordering::Relaxed));
    if silent > STALL_AFTER.as_millis() as u64 {
        return Err(format!("the runtime made no progress for {silent} ms"));
    }
    w.unhealthy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .map_or(Ok(()), Err)
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

/// Watches a handler that was abandoned past its timeout and grace (`handle` aborted): if it
/// has not let go of its thread within [`STUCK_AFTER`] the worker is marked unhealthy. Whether
/// it let go.
pub async fn abandoned(task_id: &str, handle: AbortHandle) -> bool {
    handle.abort();
    let deadline = Instant::now() + STUCK_AFTER;
    while Instant::now() < deadline {
        if handle.is_finished() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mark_unhealthy(format!(
        "the handler of task {task_id} still holds its thread {} s after it was abandoned",
        STUCK_AFTER.as_secs()
    ));
    false
}
