//! Circuit breakers per service, shared by the fleet through Redis, with a local fallback.
//!
//! [`state::transition`] decides; this module only stores. With Redis healthy, a change is a
//! compare-and-set of the whole state (retried on conflict with the state the script returns),
//! so every worker sees one breaker. With Redis unreachable, the same transitions run on an
//! in-process copy until Redis answers again.
//!
//! Successes reach the shared state only for services with a failure rate threshold
//! ([`BreakerConfig::counts_calls`]); for the others a success in a breaker recently seen closed
//! is not reported at all.

mod config;
pub mod state;
pub mod window;

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

/// How long a breaker seen open counts as open for the fleet's signals without being seen
/// again (a worker that stops calling a service no longer reads its breaker).
pub const OPEN_SEEN_MS: u64 = 30_000;

/// All breakers of a worker.
pub struct Breakers {
    store: Arc<Store>,
    local: Mutex<HashMap<String, BreakerState>>,
    /// Services last seen closed in Redis, and when.
    seen_closed: Mutex<HashMap<String, u64>>,
    /// Services last seen open or half-open in Redis, and when.
    seen_open: Mutex<HashMap<String, u64>>,
    configs: HashMap<String, BreakerConfig>,
    default: BreakerConfig,
    /// Every transition this worker decided, for the fleet to announce.
    transitions: tokio::sync::mpsc::UnboundedSender<Transition>,
    announced: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Transition>>>,
}

/// A breaker transition this worker decided (in Redis, so once for the fleet, or locally while
/// Redis is unreachable).
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub service: String,
    pub from: Mode,
    pub to: Mode,
    /// `shared` (Redis) or `local`.
    pub scope: &'static str,
    /// The shared state's version this transition wrote (it grows by one with every change
    /// while the state is kept): workers announce their own transitions on their own
    /// connections, so the announcements of several workers may arrive in another order than
    /// the one they were decided in, and this orders them. `None` for a local breaker.
    pub version: Option<u64>,
}

impl Breakers {
    /// Breakers on `store`, with per-service settings over `default`.
    pub fn new(
        store: Arc<Store>,
        default: BreakerConfig,
        configs: HashMap<String, BreakerConfig>,
    ) -> Self {
        let (transitions, announced) = tokio::sync::mpsc::unbounded_channel();
        Self {
            store,
            local: Mutex::new(HashMap::new()),
            seen_closed: Mutex::new(HashMap::new()),
            seen_open: Mutex::new(HashMap::new()),
            configs,
            default,
            transitions,
            announced: Mutex::new(Some(announced)),
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
        // A success changes nothing in a closed breaker without a failure rate threshold: no
        // need to ask. With one, the success is counted in the shared window.
        if healthy && self.recently_closed(service, now_ms) && !self.config(service).counts_calls()
        {
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
        set_state_gauge(service, mode);
        let mut seen = self
            .seen_closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut open = self
            .seen_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if mode == Mode::Closed {
            seen.insert(service.to_string(), now_ms);
            open.remove(service);
        } else {
            seen.remove(service);
            open.insert(service.to_string(), now_ms);
        }
    }

    /// Services whose shared breaker this worker saw open or half-open within the last
    /// [`OPEN_SEEN_MS`] (for its registry record and the fleet's degradation signals).
    pub fn open_now(&self, now_ms: u64) -> Vec<String> {
        let open = self
            .seen_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut services: Vec<String> = open
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) < OPEN_SEEN_MS)
            .map(|(s, _)| s.clone())
            .collect();
        services.sort();
        services
    }

    async fn apply(&self, service: &str, input: Input, now_ms: u64) -> Verdict {
        let cfg = self.config(service);
        match self.apply_shared(service, input, now_ms, cfg).await {
            Ok(verdict) => verdict,
            Err(e) => {
                if let StoreError::Corrupted(c) = &e {
                    // A key of another type: not even a compare-and-set can replace it. It is
                    // only a breaker: drop it (the next call starts a fresh one), decide locally.
                    if self.store.breaker_delete(service).await.is_ok() {
                        tracing::warn!(
                            key = c.key,
                            "corrupted breaker state deleted: a fresh one starts with the next call"
                        );
                    }
                }
                let mut local = self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let state = local.entry(service.to_string()).or_default();
                let (next, verdict) = transition(state, input, now_ms, cfg);
                self.changed(service, state.mode, next.mode, "local", None);
                set_state_gauge(service, next.mode);
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
        let mut stored = self.store.breaker_get(service).await?;
        let mut verdict = Verdict::Recorded;
        for _ in 0..CAS_ATTEMPTS {
            // A stored value in no format this worker writes is repaired: replaced by the state
            // after this input from a fresh closed breaker (what a missing one would be).
            let (version, current, repair) = match stored.as_deref().map(parse_record) {
                None => (0, BreakerState::default(), false),
                Some(Ok((version, state))) => (version, state, false),
                Some(Err(detail)) => {
                    let key = self.store.breaker_key(service);
                    self.store.corrupted(&key, detail);
                    (0, BreakerState::default(), true)
                }
            };
            let next;
            (next, verdict) = transition(&current, input, now_ms, cfg);
            if next == current && !repair {
                self.remember(service, next.mode, now_ms);
                return Ok(verdict);
            }
            let record = encode_record(version + 1, &next);
            match self
                .store
                .breaker_cas(service, stored.as_deref(), &record, STATE_TTL_MS)
                .await?
            {
                None => {
                    if repair {
                        tracing::warn!(
                            service,
                            "corrupted breaker state repaired: replaced by a fresh one"
                        );
                    }
                    self.changed(
                        service,
                        current.mode,
                        next.mode,
                        "shared",
                        Some(version + 1),
                    );
                    self.remember(service, next.mode, now_ms);
                    return Ok(verdict);
                }
                Some(found) => stored = found,
            }
        }
        tracing::warn!(
            service,
            "breaker state contended; deciding on the last state read"
        );
        Ok(verdict)
    }
}

/// Parses a stored breaker record, `<version>|<state JSON>`, strictly: the error says what is
/// wrong with it.
pub fn parse_record(raw: &str) -> Result<(u64, BreakerState), String> {
    let (version, json) = raw
        .split_once('|')
        .ok_or("breaker record is not `<version>|<json>`")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "breaker record version `{}` is not a number",
            version.escape_default()
        ));
    }
    let version = version
        .parse()
        .map_err(|_| "breaker record version is out of range".to_string())?;
    let state: BreakerState =
        serde_json::from_str(json).map_err(|e| format!("breaker state is unreadable: {e}"))?;
    Ok((version, state))
}

impl Breakers {
    /// The transitions this worker decides from now on (once: the fleet announces them).
    pub fn transitions(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Transition>> {
        self.announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn changed(
        &self,
        service: &str,
        from: Mode,
        to: Mode,
        scope: &'static str,
        version: Option<u64>,
    ) {
        if from == to {
            return;
        }
        log_change(service, from, to, scope);
        // Nobody listening (no fleet side, as in unit tests) is fine.
        let _ = self.transitions.send(Transition {
            service: service.to_string(),
            from,
            to,
            scope,
            version,
        });
    }
}

/// The stored form of `state` at `version`.
pub fn encode_record(version: u64, state: &BreakerState) -> String {
    // Serialising a plain struct of numbers cannot fail.
    format!(
        "{version}|{}",
        serde_json::to_string(state).unwrap_or_default()
    )
}

/// The value of `secflow_breaker_state` for a mode: 0 closed, 1 half-open, 2 open (ordered by
/// severity, so `max` over workers is the worst state any of them last read).
pub fn state_value(mode: Mode) -> f64 {
    match mode {
        Mode::Closed => 0.0,
        Mode::HalfOpen => 1.0,
        Mode::Open => 2.0,
    }
}

/// Sets `secflow_breaker_state{service}` to the mode this worker just read or decided.
fn set_state_gauge(service: &str, mode: Mode) {
    metrics::gauge!("secflow_breaker_state", "service" => service.to_string())
        .set(state_value(mode));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let state = BreakerState {
            mode: Mode::Open,
            opened_at_ms: 5,
            open_ms: 10,
            ..BreakerState::default()
        };
        assert_eq!(parse_record(&encode_record(7, &state)), Ok((7, state)));
        assert_eq!(
            parse_record(r#"1|{"mode":"closed"}"#),
            Ok((1, BreakerState::default()))
        );
    }

    #[test]
    fn breaker_state_values_rise_with_severity() {
        assert_eq!(state_value(Mode::Closed), 0.0);
        assert_eq!(state_value(Mode::HalfOpen), 1.0);
        assert_eq!(state_value(Mode::Open), 2.0);
    }

    #[test]
    fn garbage_records_are_refused_with_what_is_wrong() {
        for (raw, expected) in [
            ("garbage", "not `<version>|<json>`"),
            ("|{}", "not a number"),
            ("-1|{}", "not a number"),
            ("99999999999999999999999|{}", "out of range"),
            ("3|{not json", "unreadable"),
            (r#"3|{"mode":"ajar"}"#, "unreadable"),
            (r#"3|{"mode":"open","probes":-1}"#, "unreadable"),
        ] {
            let err = parse_record(raw).unwrap_err();
            assert!(err.contains(expected), "{raw}: {err}");
        }
    }
}
