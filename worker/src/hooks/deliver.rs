//! One delivery (a hook and an event) from start to end: skipped if its marker says it was
//! made, else attempted up to the hook's `max_attempts` with backoff (1 s, 2 s, 4 s … capped at
//! 60 s, equal jitter; a longer `Retry-After`, up to 60 s, is honoured) and marked once it
//! succeeded. A delivery that fails for good or runs out of attempts is logged, counted and
//! reported as a `hook.failed` event; it is not retried.

use super::{Hooks, webhook};
use crate::{events::EventBatcher, stats::WorkerStats};
use secflow_common::{
    ErrorClass, TaskError,
    events::{EventError, TaskEvent},
    hooks::{Hook, HookTarget},
    retry::{Jitter, Strategy, backoff},
};
use serde_json::json;
use std::time::{Duration, Instant};

/// First retry delay.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay, `Retry-After` included.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// How one attempt went.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The receiver took it (2xx, or the program exited 0).
    Delivered,
    /// Worth another attempt, after at least `after` if the receiver said so.
    Retry {
        /// What went wrong.
        reason: String,
        /// The receiver's `Retry-After`.
        after: Option<Duration>,
    },
    /// Another attempt cannot help.
    Fail(TaskError),
}

/// An event as hooks receive it.
pub(super) struct Item<'a> {
    /// The event, parsed.
    pub event: &'a TaskEvent,
    /// The event as published.
    pub body: &'a [u8],
    /// Its id (stable for completions and run ends).
    pub event_id: String,
}

impl Hooks {
    /// Delivers `item` to `hook` unless that was done already; never two of the same
    /// delivery at once in this process.
    pub(super) async fn deliver(&self, hook: &Hook, item: &Item<'_>, events: &EventBatcher) {
        let delivery_id = format!("{}:{}", hook.id, item.event_id);
        let lock = self.state.lock_for(&delivery_id);
        {
            let _held = lock.lock().await;
            self.deliver_locked(hook, item, &delivery_id, events).await;
        }
        self.state.release(&delivery_id, lock);
    }

    async fn deliver_locked(
        &self,
        hook: &Hook,
        item: &Item<'_>,
        delivery_id: &str,
        events: &EventBatcher,
    ) {
        match self.state.delivered(&hook.id, &item.event_id).await {
            Ok(true) => {
                WorkerStats::bump(&self.stats.hooks_skipped);
                tracing::debug!(delivery = delivery_id, "hook delivery already made");
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(delivery = delivery_id, error = %e, "cannot check whether this hook delivery was made; making it (at least once)");
            }
        }
        let kind = hook.target.kind();
        let started = Instant::now();
        let outcome = self.with_retries(hook, item, delivery_id).await;
        metrics::histogram!("secflow_hook_delivery_seconds", "hook_kind" => kind)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(attempts) => {
                WorkerStats::bump(&self.stats.hooks_delivered);
                metrics::counter!("secflow_hook_deliveries_total", "hook_kind" => kind, "outcome" => "delivered").increment(1);
                tracing::debug!(delivery = delivery_id, attempts, "hook delivered");
                if let Err(e) = self.state.mark(&hook.id, &item.event_id).await {
                    tracing::warn!(delivery = delivery_id, error = %e, "hook delivered but its marker could not be set: a redelivered event may be sent again");
                }
            }
            Err((error, attempts)) => {
                WorkerStats::bump(&self.stats.hooks_failed);
                metrics::counter!("secflow_hook_deliveries_total", "hook_kind" => kind, "outcome" => "failed").increment(1);
                tracing::warn!(
                    delivery = delivery_id, hook_kind = kind, attempts, class = %error.class,
                    code = %error.code, error = %error.message, "hook delivery failed"
                );
                let event =
                    failure_event(hook, item, delivery_id, &error, attempts, &self.worker_id);
                if let Err(e) = events.emit(event).await {
                    tracing::warn!(delivery = delivery_id, error = %e, "could not publish hook.failed");
                }
            }
        }
    }

    /// Attempts until one succeeds, one fails for good or the attempts are used up: the
    /// attempts made, or the error that ended it and the attempts made.
    async fn with_retries(
        &self,
        hook: &Hook,
        item: &Item<'_>,
        delivery_id: &str,
    ) -> Result<u32, (TaskError, u32)> {
        let mut made = 0;
        loop {
            made += 1;
            let attempt = match self.attempts.acquire().await {
                Ok(_permit) => self.attempt(hook, item, delivery_id).await,
                Err(_) => Attempt::Fail(TaskError::new(
                    ErrorClass::Permanent,
                    "stopped",
                    "the worker is stopping",
                )),
            };
            match attempt {
                Attempt::Delivered => return Ok(made),
                Attempt::Fail(e) => return Err((e, made)),
                Attempt::Retry { reason, .. } if made >= hook.max_attempts => {
                    let message = format!("{made} attempt(s) failed; the last: {reason}");
                    let error =
                        TaskError::new(ErrorClass::Transient, "attempts_exhausted", message);
                    return Err((error, made));
                }
                Attempt::Retry { reason, after } => {
                    let kind = hook.target.kind();
                    metrics::counter!("secflow_hook_deliveries_total", "hook_kind" => kind, "outcome" => "retried").increment(1);
                    let wait = retry_delay(made, after, rand::random::<f64>());
                    tracing::debug!(
                        delivery = delivery_id,
                        attempt = made,
                        reason,
                        wait_ms = wait.as_millis() as u64,
                        "hook delivery will be retried"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One attempt, bounded by the hook's timeout.
    async fn attempt(&self, hook: &Hook, item: &Item<'_>, delivery_id: &str) -> Attempt {
        match &hook.target {
            HookTarget::Http { url } => {
                let Some(secret) = &self.secret else {
                    return Attempt::Fail(TaskError::new(
                        ErrorClass::Permanent,
                        "no_hook_secret",
                        "this worker has no hook secret to sign webhooks with",
                    ));
                };
                let post = webhook::Post {
                    url,
                    kind: &item.event.kind,
                    delivery_id,
                    body: item.body,
                    timeout: hook.timeout,
                };
                webhook::post(&self.http, secret, &post).await
            }
            HookTarget::Exec { argv } => {
                // The runner kills the program's group at the timeout; the deadline here only
                // bounds what comes around it (spawning, collecting).
                let run = self
                    .handlers
                    .run_hook_program("hook", argv, item.body, hook.timeout);
                match tokio::time::timeout(hook.timeout + Duration::from_secs(5), run).await {
                    Ok(Ok(_)) => Attempt::Delivered,
                    Ok(Err(e)) if retryable(e.class) => Attempt::Retry {
                        reason: e.message,
                        after: e.retry_after,
                    },
                    Ok(Err(e)) => Attempt::Fail(e),
                    Err(_) => Attempt::Retry {
                        reason: format!("the hook program did not end within {:?}", hook.timeout),
                        after: None,
                    },
                }
            }
        }
    }
}

/// Whether a hook program's failure of `class` is worth another attempt.
fn retryable(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Transient | ErrorClass::Resource | ErrorClass::Unknown
    )
}

/// The wait before attempt `made + 1`: exponential from 1 s, capped at 60 s, equal jitter
/// (`unit` drawn from [0, 1)); at least the receiver's `Retry-After`, up to the cap.
fn retry_delay(made: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    let base = backoff::base_delay(Strategy::Exponential, BACKOFF_BASE, BACKOFF_CAP, 2.0, made);
    let wait = backoff::jittered(base, Jitter::Equal, unit);
    retry_after.map_or(wait, |after| wait.max(after.min(BACKOFF_CAP)))
}

/// The `hook.failed` event of a delivery that ended without success.
fn failure_event(
    hook: &Hook,
    item: &Item<'_>,
    delivery_id: &str,
    error: &TaskError,
    attempts: u32,
    worker: &str,
) -> TaskEvent {
    let target = match &hook.target {
        HookTarget::Http { url } => secflow_common::redact::redact(url).into_owned(),
        HookTarget::Exec { argv } => argv.first().cloned().unwrap_or_default(),
    };
    let source = item.event;
    let mut event = TaskEvent::new("hook.failed", worker);
    event.task_id = source.task_id;
    event.run_id = source.run_id;
    event.workflow_id = source.workflow_id.clone();
    event.node_id = source.node_id.clone();
    event.node_type = source.node_type.clone();
    event.output = Some(json!({
        "hook": hook.id,
        "hook_kind": hook.target.kind(),
        "target": target,
        "delivery": delivery_id,
        "event_id": item.event_id,
        "event_kind": source.kind,
        "attempts": attempts,
    }));
    event.error = Some(EventError {
        class: error.class.to_string(),
        code: error.code.clone(),
        message: secflow_common::redact::redact(&error.message).into_owned(),
        fingerprint: None,
    });
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_1s_cap_at_60s_and_honour_retry_after() {
        let s = Duration::from_secs;
        for (made, base) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)] {
            let low = retry_delay(made, None, 0.0);
            let high = retry_delay(made, None, 0.999_999);
            assert_eq!(low, s(base) / 2, "attempt {made}");
            assert!(high <= s(base) && high > s(base) * 9 / 10, "attempt {made}");
        }
        assert_eq!(retry_delay(1, Some(s(7)), 0.5), s(7));
        assert_eq!(retry_delay(1, Some(s(3600)), 0.5), s(60));
        assert_eq!(retry_delay(7, Some(s(1)), 0.0), s(30));
    }
}
