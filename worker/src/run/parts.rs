//! The parts of a worker that outlive a broker connection, built once at start: every
//! configuration error (keys, allowlist, rules, hooks, URLs) surfaces here, before connecting.

use super::WorkerError;
use crate::{
    breaker::Breakers,
    classify::Classifier,
    config::WorkerConfig,
    handlers::{ExecPolicy, Handlers},
    hooks::Hooks,
    stats::WorkerStats,
    store::Store,
};
use secflow_common::{config::redact_url, runs::RunStore};
use std::sync::Arc;

/// The parts of a worker that outlive a broker connection.
pub(super) struct Parts {
    pub(super) keyring: Option<secflow_common::signing::Keyring>,
    pub(super) handlers: Arc<Handlers>,
    pub(super) store: Arc<Store>,
    pub(super) breakers: Arc<Breakers>,
    pub(super) runs: Arc<RunStore>,
    pub(super) cancels: Arc<crate::workflow::RunCancels>,
    pub(super) hooks: Arc<Hooks>,
    pub(super) controls: Arc<crate::controls::ControlView>,
}

impl Parts {
    /// Builds them from `cfg`; checks Redis once (a worker starts without it).
    pub(super) async fn build(
        cfg: &WorkerConfig,
        stats: &Arc<WorkerStats>,
        worker_id: &str,
    ) -> Result<Self, WorkerError> {
        let keyring = cfg.broker.keyring()?;
        if keyring.is_none() {
            tracing::warn!(
                "task signing is disabled (--insecure-no-signing): this worker runs unsigned tasks from anyone who can publish"
            );
        }
        let spool = crate::handlers::Spool::new(
            &cfg.broker.redis_url,
            &cfg.broker.namespace,
            std::time::Duration::from_secs(cfg.exec_spool_ttl_secs),
            cfg.exec_spool_max_bytes,
        )
        .map_err(WorkerError::Config)?;
        let mut exec_policy = ExecPolicy::new(
            &cfg.exec_allow,
            cfg.exec_workdir.clone(),
            cfg.exec_memory_mb,
        )
        .map_err(WorkerError::Config)?
        .with_spool(spool);
        if let Some(shim) = &cfg.exec_shim {
            exec_policy = exec_policy.with_shim(shim.clone());
        }
        if let Some(chaos) = cfg.chaos.as_ref().filter(|c| c.enabled()) {
            tracing::warn!(?chaos, "chaos injection is on");
        }
        let classifier = Classifier::new(cfg.rules.as_deref(), cfg.model.as_deref())
            .map_err(WorkerError::Config)?;
        let runs = Arc::new(
            RunStore::new(&cfg.broker.redis_url, &cfg.broker.namespace)
                .map_err(|e| WorkerError::Config(e.to_string()))?,
        );
        let tools = cfg.tool_set().map_err(WorkerError::Config)?;
        let tooling = crate::handlers::Tooling {
            fallbacks: cfg.fleet_chains(&tools).map_err(WorkerError::Config)?,
            tools,
            resources: secflow_common::tools::Resources::new(cfg.resources.clone()),
            cve: Some(crate::handlers::CveSource {
                url: cfg.cve_source.clone(),
                cache: Arc::clone(&runs),
            }),
        };
        let handlers = Arc::new(
            Handlers::new(
                cfg.max_output_bytes,
                classifier,
                exec_policy,
                cfg.handler_versions.iter().cloned().collect(),
                tooling,
            )
            .map_err(WorkerError::Config)?,
        );
        let hooks = Hooks::new(
            cfg,
            Arc::clone(&handlers),
            Arc::clone(&runs),
            keyring.clone(),
            worker_id,
            Arc::clone(stats),
        )
        .map_err(WorkerError::Config)?;
        let store = Store::new(
            &cfg.broker.redis_url,
            &cfg.broker.namespace,
            Arc::clone(stats),
        )
        .map_err(WorkerError::Config)?;
        if !store.check().await {
            tracing::warn!(url = %redact_url(&cfg.broker.redis_url), "starting without Redis: local breakers until it answers");
        }
        let controls =
            crate::controls::ControlView::new(&cfg.broker.redis_url, &cfg.broker.namespace)
                .map_err(WorkerError::Config)?;
        controls.refresh().await;
        Ok(Self {
            controls: Arc::new(controls),
            keyring,
            handlers,
            breakers: Arc::new(Breakers::new(
                Arc::clone(&store),
                cfg.breaker_default.clone(),
                cfg.breakers.iter().cloned().collect(),
            )),
            runs,
            cancels: Arc::default(),
            hooks: Arc::new(hooks),
            store,
        })
    }
}
