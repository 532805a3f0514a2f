//! Circuit breakers per service, shared by the fleet through Redis, with a local fallback.
//!
//! [`state::transition`] decides; this module only stores. With Redis healthy, a change is a
//! compare-and-set of the whole state (retried on conflict with the state the script returns),
//! so every worker sees one breaker. With Redis unreachable, the same transitions run on an
//! in-process copy until Redis answers again.

pub mod state;

use crate::store::{Store, StoreError};
use state::{BreakerConfig, BreakerState, Input, Mode, Verdict, transition};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Stored breaker states expire after a day without any change.
const STATE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Compare-and-set attempts before the worker decides on the state it last read.
const CAS_ATTEMPTS: usize = 16;

/// How long a worker trusts a shared breaker it last saw closed without asking Redis again.
/// Bounds how late a worker notices another one opening it; keeps the gate off the network
/// for the common case (closed, healthy).
pub const CLOSED_CACHE_MS: u64 = 100;

/// All breakers of a worker.
pub struct Breakers {
    store: Arc<Store>,
    local: Mutex<HashMap<String, BreakerState>>,
    /// Services last seen closed in Redis, and when.
    seen_closed: Mutex<HashMap<String, u64>>,
    configs: HashMap<String, BreakerConfig>,
    default: BreakerConfig,
}

impl Breakers {
    /// Breakers on `store`, with per-service settings over `default`.
    pub fn new(
        store: Arc<Store>,
        default: BreakerConfig,
        configs: HashMap<String, BreakerConfig>,
    ) -> Self {
        Self {
            store,
            local: Mutex::new(HashMap::new()),
            seen_closed: Mutex::new(HashMap::new()),
            configs,
            default,
        }
    }

    fn config(&self, service: &str) -> &BreakerConfig {
        self.configs.get(service).unwrap_or(&self.default)
    }

    /// May a task call `service` now?
    pub async fn admit(&self, service: &str, now_ms: u64) -> Verdict {
        if self.recently_closed(service, now_ms) {
            return Verdict::Allow;
        }
        self.apply(service, Input::Admit, now_ms).await
    }

    /// Reports the outcome of a call.
    pub async fn record(&self, service: &str, healthy: bool, now_ms: u64) {
        // A success changes nothing in a closed breaker: no need to ask.
        if healthy && self.recently_closed(service, now_ms) {
            return;
        }
        let input = if healthy {
            Input::Success
        } else {
            Input::Failure
        };
        self.apply(service, input, now_ms).await;
    }

    fn recently_closed(&self, service: &str, now_ms: u64) -> bool {
        let seen = self
            .seen_closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get(service)
            .is_some_and(|&at| now_ms.saturating_sub(at) < CLOSED_CACHE_MS)
    }

    fn remember(&self, service: &str, mode: Mode, now_ms: u64) {
        let mut seen = self
            .seen_closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if mode == Mode::Closed {
            seen.insert(service.to_string(), now_ms);
        } else {
            seen.remove(service);
        }
    }

    async fn apply(&self, service: &str, input: Input, now_ms: u64) -> Verdict {
        let cfg = self.config(service);
        match self.apply_shared(service, input, now_ms, cfg).await {
            Ok(verdict) => verdict,
            Err(_) => {
                let mut local = self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let state = local.entry(service.to_string()).or_default();
                let (next, verdict) = transition(state, input, now_ms, cfg);
                log_change(service, state.mode, next.mode, "local");
                *state = next;
                verdict
            }
        }
    }

    async fn apply_shared(
        &self,
        service: &str,
        input: Input,
        now_ms: u64,
        cfg: &BreakerConfig,
    ) -> Result<Verdict, StoreError> {
        let (mut version, mut json) = self.store.breaker_get(service).await?;
        let mut verdict = Verdict::Recorded;
        for _ in 0..CAS_ATTEMPTS {
            // Unreadable stored state (another version wrote it) starts over as closed.
            let current: BreakerState = json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default();
            let next;
            (next, verdict) = transition(&current, input, now_ms, cfg);
            if next == current {
                self.remember(service, next.mode, now_ms);
                return Ok(verdict);
            }
            let encoded = serde_json::to_string(&next).unwrap_or_default();
            match self
                .store
                .breaker_cas(service, version, &encoded, STATE_TTL_MS)
                .await?
            {
                None => {
                    log_change(service, current.mode, next.mode, "shared");
                    self.remember(service, next.mode, now_ms);
                    return Ok(verdict);
                }
                Some((v, j)) => (version, json) = (v, j),
            }
        }
        tracing::warn!(
            service,
            "breaker state contended; deciding on the last state read"
        );
        Ok(verdict)
    }
}

fn log_change(service: &str, from: Mode, to: Mode, scope: &str) {
    if from != to {
        let to_name = match to {
            Mode::Open => "open",
            Mode::HalfOpen => "half_open",
            Mode::Closed => "closed",
        };
        metrics::counter!("secflow_breaker_transitions_total", "service" => service.to_string(), "to" => to_name, "scope" => scope.to_string()).increment(1);
        match to {
            Mode::Open => tracing::warn!(
                service,
                scope,
                ?from,
                "circuit breaker opened: deferring tasks for this service"
            ),
            Mode::HalfOpen => tracing::info!(
                service,
                scope,
                "circuit breaker half-open: probing the service"
            ),
            Mode::Closed => tracing::info!(
                service,
                scope,
                "circuit breaker closed: service healthy again"
            ),
        }
    }
}
