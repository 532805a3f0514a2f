//! Hooks: webhooks and programs told about completed tasks and ended runs.
//!
//! Events reach hooks through the durable `{ns}.hooks` queue (bound to the events exchange for
//! `node.completed`, `workflow.completed` and `workflow.failed`), never from the task path: a
//! slow or dead receiver holds no task. Every worker with a hook secret runs a dispatcher on it
//! ([`dispatch`]); for each event of a message and each hook that applies (the fleet's, and the
//! run's own, read from the run store), a delivery is skipped when its Redis marker says it
//! succeeded already, else made with retries ([`deliver`]) and marked after success. The
//! message is acked once all its deliveries ended, so a worker dying mid-delivery leaves it to
//! the broker, which delivers it again; the markers keep finished deliveries from repeating.

mod deliver;
mod dispatch;
mod state;
mod webhook;

pub use dispatch::{CHECK_EVERY, dispatch};

use crate::{config::WorkerConfig, handlers::Handlers, stats::WorkerStats};
use secflow_common::{
    events::TaskEvent,
    hooks::{Hook, HookOn, MIN_SECRET_LEN},
    runs::RunStore,
    signing::Keyring,
};
use std::{path::Path, sync::Arc, time::Duration};

/// Delivery attempts in flight at once per worker (webhook requests and hook programs).
const ATTEMPTS_IN_FLIGHT: usize = 64;
/// Largest fleet hooks file read, bytes.
const MAX_HOOKS_FILE_BYTES: u64 = 1 << 20;

/// What a worker needs to deliver hooks; shared by its dispatchers across connections.
pub struct Hooks {
    fleet: Vec<Arc<Hook>>,
    secret: Option<Vec<u8>>,
    http: reqwest::Client,
    handlers: Arc<Handlers>,
    state: state::HookState,
    worker_id: String,
    attempts: tokio::sync::Semaphore,
    stats: Arc<WorkerStats>,
    amqp_url: String,
}

impl Hooks {
    /// The broker's URL (the dispatcher checks for its queue on a connection of its own).
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// Reads the fleet hooks (`--hooks`) and the hook secret. A hooks file that cannot be read
    /// or has a problem, a bad secret, or fleet hooks without a secret are configuration
    /// errors: the worker does not start. Runs' own hooks are delivered when sealed with a key
    /// of `keyring` (the task signing keys; `None` when signing is disabled).
    pub fn new(
        cfg: &WorkerConfig,
        handlers: Arc<Handlers>,
        runs: Arc<RunStore>,
        keyring: Option<Keyring>,
        worker_id: &str,
        stats: Arc<WorkerStats>,
    ) -> Result<Self, String> {
        let fleet = match &cfg.hooks {
            Some(path) => load_fleet(path)?,
            None => Vec::new(),
        };
        let secret = load_secret(cfg)?;
        if !fleet.is_empty() && secret.is_none() {
            return Err(
                "--hooks configures hooks but no hook secret is set: set SECFLOW_HOOK_SECRET, \
                 --hook-secret or --hook-secret-file (receivers check X-SecFlow-Signature with it)"
                    .into(),
            );
        }
        // reqwest is built without a default TLS provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "secflow-worker/",
                env!("CARGO_PKG_VERSION"),
                " hooks"
            ))
            // A redirect is not a delivery: the receiver's URL is what the hook names.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the hooks' HTTP client: {e}"))?;
        Ok(Self {
            fleet: fleet.into_iter().map(Arc::new).collect(),
            secret,
            http,
            handlers,
            state: state::HookState::new(
                &cfg.broker.redis_url,
                &cfg.broker.namespace,
                runs,
                keyring,
            )?,
            worker_id: worker_id.to_string(),
            attempts: tokio::sync::Semaphore::new(ATTEMPTS_IN_FLIGHT),
            stats,
            amqp_url: cfg.broker.amqp_url.clone(),
        })
    }

    /// Whether this worker has fleet hooks (it then declares the hooks queue at start).
    pub fn has_fleet_hooks(&self) -> bool {
        !self.fleet.is_empty()
    }

    /// Whether this worker can deliver hooks (it has a secret to sign webhooks with).
    pub fn can_deliver(&self) -> bool {
        self.secret.is_some()
    }

    /// The hooks `event` fires: the fleet's, then its run's own. An error means the run's
    /// hooks could not be read (Redis): the event must wait.
    async fn applicable(&self, event: &TaskEvent) -> Result<Vec<Arc<Hook>>, String> {
        let Some(on) = HookOn::for_event(&event.kind) else {
            return Ok(Vec::new());
        };
        let mut hooks: Vec<Arc<Hook>> = self.fleet.iter().filter(|h| h.on == on).cloned().collect();
        if let Some(run) = event.run_id {
            let own = self.state.run_hooks(run).await?;
            hooks.extend(own.iter().filter(|h| h.on == on).cloned());
        }
        Ok(hooks)
    }
}

/// The fleet hooks of the file at `path`.
fn load_fleet(path: &Path) -> Result<Vec<Hook>, String> {
    let source = format!("--hooks {}", path.display());
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{source}: cannot read it: {e}"))?
        .len();
    if size > MAX_HOOKS_FILE_BYTES {
        return Err(format!(
            "{source}: {size} bytes, over the {MAX_HOOKS_FILE_BYTES}-byte limit"
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{source}: cannot read it: {e}"))?;
    secflow_common::hooks::parse_file(&source, &text)
}

/// The hook secret from `--hook-secret` or `--hook-secret-file` (not both), if any.
fn load_secret(cfg: &WorkerConfig) -> Result<Option<Vec<u8>>, String> {
    let secret = match (&cfg.hook_secret, &cfg.hook_secret_file) {
        (Some(_), Some(_)) => {
            return Err("--hook-secret and --hook-secret-file are both set: choose one".into());
        }
        (Some(s), None) => s.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --hook-secret-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the hook secret is {} bytes; it must be at least {MIN_SECRET_LEN}",
            secret.len()
        ));
    }
    Ok(Some(secret.into_bytes()))
}

#[cfg(test)]
mod tests;
