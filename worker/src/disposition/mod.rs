//! The one function that turns a task outcome into what happens to its delivery.
//!
//! Pure: the attempt count, the policy and a random draw come in, a [`Disposition`] goes out.
//! [`crate::settle`] carries it out against the broker.

use secflow_common::{ErrorClass, TaskError, retry::RetryPolicy};
use serde_json::Value;
use std::time::Duration;

mod refusals;
pub use refusals::*;

/// `resource` failures wait this many times longer than `transient` ones.
pub const RESOURCE_FACTOR: u32 = 4;
/// Longest delay a Retry-After header may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a task went to the DLQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// Retries used up.
    Exhausted,
    /// Retrying cannot help.
    Permanent,
    /// The task's input or config is wrong.
    Validation,
    /// Security failure: never retried, critical alert.
    Security,
    /// The message is not a task at all.
    Malformed,
    /// Delivered too often without being settled: it crashes or hangs its workers.
    DeliveryLimit,
    /// Deferred more often than allowed (its service stayed unavailable).
    DeferredTooLong,
    /// The same failure keeps recurring across the fleet: retrying is burning attempts.
    Escalated,
    /// Its bookkeeping in Redis is unusable (wrong type, unknown value): whether it ran is
    /// unknown, so it is not run.
    StateCorrupted,
}

impl DeadReason {
    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Permanent => "permanent",
            Self::Validation => "validation",
            Self::Security => "security",
            Self::Malformed => "malformed",
            Self::DeliveryLimit => "delivery_limit",
            Self::DeferredTooLong => "deferred_too_long",
            Self::Escalated => "escalated",
            Self::StateCorrupted => "state_corrupted",
        }
    }
}

/// What to do with a delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    /// Done: record the output, ack.
    Complete(Value),
    /// Republish with the retry count + 1 after `delay`, then ack.
    Retry { delay: Duration, error: TaskError },
    /// Publish to the dead-letter exchange, then ack.
    DeadLetter {
        reason: DeadReason,
        error: TaskError,
    },
    /// User abort: record it, ack, no retry.
    Cancelled(TaskError),
    /// Not run: republish unchanged to the back of the work queue, then ack. Used so a worker
    /// isolating a suspect task holds no other delivery the suspect could take down with it.
    HandBack,
    /// Not run now: republish after `delay` without using a retry attempt (open breaker,
    /// another attempt holds the task's lease), then ack.
    Defer { delay: Duration, reason: String },
    /// Held back by an operator (a paused type, a breaker held open or disabled): republished
    /// after `delay` like a deferral, but not counted against `--max-defers`: a hold may last
    /// as long as the operator wants without the task failing.
    Hold { delay: Duration, reason: String },
    /// Already completed (redelivered duplicate): ack without running.
    Duplicate,
}

impl Disposition {
    /// How the attempt ended, in one word (span outcome), and the error behind it, if any.
    pub fn outcome(&self) -> (&'static str, Option<&TaskError>) {
        match self {
            Self::Complete(_) => ("completed", None),
            Self::Retry { error, .. } => ("retried", Some(error)),
            Self::DeadLetter { error, .. } => ("dead_lettered", Some(error)),
            Self::Cancelled(error) => ("cancelled", Some(error)),
            Self::HandBack => ("handed_back", None),
            Self::Defer { .. } => ("deferred", None),
            Self::Hold { .. } => ("held", None),
            Self::Duplicate => ("duplicate", None),
        }
    }
}

/// Decides the fate of a task that has been retried `retries` times, given its outcome.
/// `unit` is a uniform draw in `[0, 1)` for jitter.
pub fn decide(
    outcome: Result<Value, TaskError>,
    retries: u32,
    policy: &RetryPolicy,
    unit: f64,
) -> Disposition {
    let error = match outcome {
        Ok(output) => return Disposition::Complete(output),
        Err(error) => error,
    };
    let retry_after = error.retry_after.map(|d| d.min(MAX_RETRY_AFTER));
    let retry = |factor: u32, error: TaskError| {
        if !policy.allows_retry(retries) {
            return Disposition::DeadLetter {
                reason: DeadReason::Exhausted,
                error,
            };
        }
        let backoff = policy.delay(retries + 1, unit) * factor;
        let delay = retry_after.map_or(backoff, |ra| ra.max(backoff));
        Disposition::Retry { delay, error }
    };
    match error.class {
        ErrorClass::Transient => retry(1, error),
        ErrorClass::Resource => retry(RESOURCE_FACTOR, error),
        ErrorClass::Unknown if retries == 0 => retry(1, error),
        ErrorClass::Unknown => Disposition::DeadLetter {
            reason: DeadReason::Exhausted,
            error,
        },
        ErrorClass::Validation => Disposition::DeadLetter {
            reason: DeadReason::Validation,
            error,
        },
        ErrorClass::Permanent => Disposition::DeadLetter {
            reason: DeadReason::Permanent,
            error,
        },
        ErrorClass::Security => Disposition::DeadLetter {
            reason: DeadReason::Security,
            error,
        },
        ErrorClass::Cancelled => Disposition::Cancelled(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::retry::{Jitter, Strategy};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            strategy: Strategy::Fixed,
            max_attempts: 3,
            base_delay_ms: 100,
            jitter: Jitter::None,
            ..RetryPolicy::default()
        }
    }

    fn err(class: ErrorClass) -> Result<Value, TaskError> {
        Err(TaskError::new(class, "c", "m"))
    }

    #[test]
    fn transient_retries_until_exhausted() {
        let p = policy();
        assert!(
            matches!(decide(err(ErrorClass::Transient), 0, &p, 0.5), Disposition::Retry { delay, .. } if delay == Duration::from_millis(100))
        );
        assert!(matches!(
            decide(err(ErrorClass::Transient), 1, &p, 0.5),
            Disposition::Retry { .. }
        ));
        assert!(matches!(
            decide(err(ErrorClass::Transient), 2, &p, 0.5),
            Disposition::DeadLetter {
                reason: DeadReason::Exhausted,
                ..
            }
        ));
    }

    #[test]
    fn resource_waits_longer_and_retry_after_is_honoured() {
        let p = policy();
        assert!(
            matches!(decide(err(ErrorClass::Resource), 0, &p, 0.5), Disposition::Retry { delay, .. } if delay == Duration::from_millis(400))
        );
        let slow = Err(TaskError::new(ErrorClass::Transient, "rate_limited", "429")
            .with_retry_after(Duration::from_secs(2)));
        assert!(
            matches!(decide(slow, 0, &p, 0.5), Disposition::Retry { delay, .. } if delay == Duration::from_secs(2))
        );
    }

    #[test]
    fn corrupted_state_is_dead_lettered_naming_the_key() {
        let Disposition::DeadLetter { reason, error } = state_corrupted("sf:{n:task:1}", "bad")
        else {
            panic!("dead-lettered");
        };
        assert_eq!(reason, DeadReason::StateCorrupted);
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Permanent, "state_corrupted")
        );
        assert!(error.message.contains("sf:{n:task:1}") && error.message.contains("bad"));
    }

    #[test]
    fn unknown_retries_once() {
        let p = policy();
        assert!(matches!(
            decide(err(ErrorClass::Unknown), 0, &p, 0.5),
            Disposition::Retry { .. }
        ));
        assert!(matches!(
            decide(err(ErrorClass::Unknown), 1, &p, 0.5),
            Disposition::DeadLetter {
                reason: DeadReason::Exhausted,
                ..
            }
        ));
    }

    #[test]
    fn fail_fast_classes_never_retry() {
        let p = policy();
        for (class, reason) in [
            (ErrorClass::Validation, DeadReason::Validation),
            (ErrorClass::Permanent, DeadReason::Permanent),
            (ErrorClass::Security, DeadReason::Security),
        ] {
            assert!(
                matches!(decide(err(class), 0, &p, 0.5), Disposition::DeadLetter { reason: r, .. } if r == reason)
            );
        }
        assert!(matches!(
            decide(err(ErrorClass::Cancelled), 0, &p, 0.5),
            Disposition::Cancelled(_)
        ));
        assert_eq!(
            decide(Ok(Value::Null), 0, &p, 0.5),
            Disposition::Complete(Value::Null)
        );
    }
}
