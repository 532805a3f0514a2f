//! The fleet's self-healing, run inside every worker: the registry heartbeat ([`beat`]), the
//! memory watchdog ([`memory`]), and the controller ([`controller`]) — one worker of the
//! namespace at a time, chosen by a Redis lease — that moves the degradation level from the
//! fleet's signals ([`signals`]), detects backlogs and silent workers, and reports every
//! healing action as an event ([`announce`]) and in the recovery statistics.

mod age;
pub mod announce;
pub mod beat;
pub mod config;
mod controller;
pub mod memory;
pub mod signals;
pub mod watchdog;

use crate::{
    breaker::{Breakers, state::Mode},
    controls::ControlView,
    stats::WorkerStats,
    store::Store,
};
pub use config::FleetArgs;
use secflow_common::{Topology, events::TaskEvent, now_ms, severity::Severity};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything the heartbeat, the watchdogs and the controller need.
pub struct Fleet {
    pub(crate) args: FleetArgs,
    pub(crate) worker_id: String,
    pub(crate) pool: String,
    pub(crate) host: String,
    pub(crate) started_ms: u64,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) store: Arc<Store>,
    pub(crate) controls: Arc<ControlView>,
    pub(crate) breakers: Arc<Breakers>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) announcer: announce::Announcer,
    /// Cancelled when the worker begins to stop.
    pub stopping: CancellationToken,
    /// Cancelled when the memory watchdog fires (the worker then stops).
    pub memory_exceeded: CancellationToken,
    /// The heartbeat's task, which removes the registry record when it stops.
    beating: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What [`Fleet::new`] takes.
pub struct FleetParts {
    /// Settings.
    pub args: FleetArgs,
    /// The worker's id and pool.
    pub worker_id: String,
    /// Its pool.
    pub pool: String,
    /// Broker URL for the fleet's own connection.
    pub amqp_url: String,
    /// Shared pieces of the worker.
    pub stats: Arc<WorkerStats>,
    /// Its store (liveness).
    pub store: Arc<Store>,
    /// Its view of the controls.
    pub controls: Arc<ControlView>,
    /// Its breakers.
    pub breakers: Arc<Breakers>,
    /// Its topology.
    pub topology: Arc<Topology>,
}

impl Fleet {
    /// The fleet side of one worker.
    pub fn new(p: FleetParts) -> Self {
        let host = secflow_common::logging::hostname().unwrap_or_else(|| "unknown".into());
        Self {
            announcer: announce::Announcer::new(&p.amqp_url, Arc::clone(&p.topology), &p.worker_id),
            args: p.args,
            worker_id: p.worker_id,
            pool: p.pool,
            host,
            started_ms: now_ms(),
            stats: p.stats,
            store: p.store,
            controls: p.controls,
            breakers: p.breakers,
            topology: p.topology,
            stopping: CancellationToken::new(),
            memory_exceeded: CancellationToken::new(),
            beating: std::sync::Mutex::new(None),
        }
    }

    /// Starts the heartbeat, the memory watchdog and the controller until `stop`.
    pub fn start(self: &Arc<Self>, stop: &CancellationToken) {
        self.keep_beating(stop.clone());
        watchdog::start(stop);
        if self.args.max_rss_mb > 0 {
            let stats = Arc::clone(&self.stats);
            memory::watch(
                self.args.max_rss_mb << 20,
                move || stats.consuming.load(std::sync::atomic::Ordering::Relaxed),
                self.memory_exceeded.clone(),
                stop.clone(),
            );
        }
        if !self.args.no_controller {
            controller::spawn(Arc::clone(self), stop.clone());
        }
        if let Some(transitions) = self.breakers.transitions() {
            self.announce_breakers(transitions, stop.clone());
        }
    }

    /// Announces every breaker transition this worker decides (`breaker.opened`,
    /// `breaker.half_open`, `breaker.closed`) until `stop`, on the fleet's own connection:
    /// the task path never waits for it.
    fn announce_breakers(
        self: &Arc<Self>,
        mut transitions: tokio::sync::mpsc::UnboundedReceiver<crate::breaker::Transition>,
        stop: CancellationToken,
    ) {
        let fleet = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let t = tokio::select! {
                    () = stop.cancelled() => return,
                    t = transitions.recv() => match t {
                        Some(t) => t,
                        None => return,
                    },
                };
                let (kind, severity) = match t.to {
                    Mode::Open => ("breaker.opened", Some(Severity::High)),
                    Mode::HalfOpen => ("breaker.half_open", None),
                    Mode::Closed => ("breaker.closed", None),
                };
                let mut event = TaskEvent::new(kind, &fleet.worker_id);
                event.severity = severity;
                event.output = Some(serde_json::json!({
                    "service": t.service,
                    "from": format!("{:?}", t.from).to_lowercase(),
                    "scope": t.scope,
                    "version": t.version,
                }));
                let _ = fleet.announcer.publish(event).await;
            }
        });
    }

    /// Reports a healing action: what was `detected`, what was `done`, whether it `worked`,
    /// as a `healing.action` event, a log line, a metric and a count in the recovery
    /// statistics.
    pub async fn healed(&self, action: &str, detected: &str, done: &str, worked: bool) {
        let outcome = if worked { "worked" } else { "failed" };
        tracing::warn!(action, detected, done, outcome, "healing action");
        metrics::counter!("secflow_healing_actions_total", "action" => action.to_string(), "outcome" => outcome)
            .increment(1);
        let detail =
            json!({"action": action, "detected": detected, "done": done, "outcome": outcome});
        let _ = self.announcer.event("healing.action", detail).await;
        if let Some(store) = self.controls.store() {
            let count = store.count_healing(action, worked);
            if let Ok(Err(e)) = tokio::time::timeout(std::time::Duration::from_secs(2), count).await
            {
                tracing::debug!(error = %e, "healing action not counted");
            }
        }
    }

    /// Closes the fleet's broker connection.
    pub async fn close(&self) {
        // Waits for the heartbeat (stopped by then) to remove the registry record: left to
        // itself, its task may be dropped with the runtime at exit before it does, and a worker
        // that stopped cleanly would look unresponsive later.
        let beating = self
            .beating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(beating) = beating {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), beating).await;
        }
        self.announcer.close().await;
    }
}
