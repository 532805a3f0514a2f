//! The worker's copy of the fleet controls (`secflow_common::control`): refreshed from Redis
//! every [`REFRESH`], read by the task gate without a round trip. An operator's change reaches
//! every worker within one refresh; while Redis is unreachable the last copy stays in force.

use secflow_common::control::{ControlStore, Controls, Held, Level};
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// How often a worker reads the controls.
pub const REFRESH: Duration = Duration::from_millis(250);

/// The controls as this worker last read them.
pub struct ControlView {
    store: Option<ControlStore>,
    current: RwLock<Arc<Controls>>,
}

impl ControlView {
    /// A view of namespace `ns`'s controls on `redis_url`. Does not connect yet.
    pub fn new(redis_url: &str, ns: &str) -> Result<Self, String> {
        let store = ControlStore::new(redis_url, ns).map_err(|e| e.to_string())?;
        Ok(Self {
            store: Some(store),
            current: RwLock::default(),
        })
    }

    /// A view fixed at `controls`, never refreshed (tests, benchmarks).
    pub fn fixed(controls: Controls) -> Self {
        Self {
            store: None,
            current: RwLock::new(Arc::new(controls)),
        }
    }

    /// The store behind the view, when there is one.
    pub fn store(&self) -> Option<&ControlStore> {
        self.store.as_ref()
    }

    /// The controls in force.
    pub fn snapshot(&self) -> Arc<Controls> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The degradation level in force.
    pub fn level(&self) -> Level {
        self.snapshot().level.level
    }

    /// Whether a task of `task_type` calling `service` is held back now.
    pub fn held(&self, service: &str, task_type: &str, now_ms: u64) -> Option<Held> {
        self.snapshot().held(service, task_type, now_ms)
    }

    /// Reads the controls once; keeps the last copy if Redis does not answer.
    pub async fn refresh(&self) {
        let Some(store) = &self.store else { return };
        match tokio::time::timeout(Duration::from_secs(2), store.read()).await {
            Ok(Ok(controls)) => {
                for problem in &controls.problems {
                    tracing::warn!(problem, "a fleet control could not be read: ignored");
                }
                let mut current = self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if current.level.level != controls.level.level {
                    tracing::warn!(
                        from = %current.level.level,
                        to = %controls.level.level,
                        reason = controls.level.reason,
                        "degradation level changed"
                    );
                }
                metrics::gauge!("secflow_degradation_level").set(controls.level.level as u8 as f64);
                *current = Arc::new(controls);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "fleet controls not read: keeping the last copy")
            }
            Err(_) => tracing::debug!("fleet controls not read within 2 s: keeping the last copy"),
        }
    }

    /// Refreshes the view every [`REFRESH`] until `stop`.
    pub fn keep_fresh(self: &Arc<Self>, stop: CancellationToken) {
        let view = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                view.refresh().await;
                tokio::select! {
                    () = tokio::time::sleep(REFRESH) => {}
                    () = stop.cancelled() => break,
                }
            }
        });
    }
}
