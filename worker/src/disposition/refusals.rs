//! The dispositions of tasks refused before or around their run: the DLQ entries whose reason
//! is not the handler's outcome (oversized, forged, malformed, unknown type, crash loop,
//! escalated, output too large) and the deferrals of tasks that must not run now.

use super::{DeadReason, Disposition};
use secflow_common::{ErrorClass, TaskError};
use std::time::Duration;

fn dead(reason: DeadReason, error: TaskError) -> Disposition {
    Disposition::DeadLetter { reason, error }
}

/// A message over the worker's size limit: dead-lettered unread.
pub fn too_large(bytes: usize, limit: usize) -> Disposition {
    let message = format!(
        "message is {bytes} bytes, over this worker's {limit}-byte limit (--max-message-bytes); not read"
    );
    dead(
        DeadReason::Malformed,
        TaskError::validation("too_large", message),
    )
}

/// A task whose signature, or whose signed bookkeeping, does not verify: never run.
pub fn forged(code: &str, message: String) -> Disposition {
    dead(
        DeadReason::Security,
        TaskError::new(ErrorClass::Security, code, message),
    )
}

/// A message that is not a task envelope.
pub fn malformed(code: &str, message: String) -> Disposition {
    dead(DeadReason::Malformed, TaskError::validation(code, message))
}

/// A task of a type this pool has no handler for.
pub fn unknown_type(node_type: &str) -> Disposition {
    let message = format!("no handler for node type `{node_type}` in this worker pool");
    dead(
        DeadReason::Validation,
        TaskError::validation("unknown_type", message),
    )
}

/// A task delivered `unsettled` times without being settled: it crashes or hangs its workers.
pub fn crash_loop(unsettled: u64) -> Disposition {
    let message = format!(
        "delivered {unsettled} times without being settled: it crashes or hangs the workers that run it"
    );
    dead(
        DeadReason::DeliveryLimit,
        TaskError::new(ErrorClass::Permanent, "crash_loop", message),
    )
}

/// A transient failure seen `seen` times across the fleet within `window_secs`: persistent.
pub fn escalated(error: &TaskError, seen: u64, window_secs: u64) -> Disposition {
    let message = format!(
        "escalated to persistent: the same failure was seen {seen} times across the fleet within {window_secs} s: {}",
        error.message
    );
    dead(
        DeadReason::Escalated,
        TaskError::new(ErrorClass::Permanent, error.code.clone(), message),
    )
}

/// A workflow node whose output does not fit its run's stored outputs.
pub fn output_too_large(node_id: &str, size: usize, limit: usize) -> Disposition {
    let message = format!(
        "node `{node_id}` produced {size} bytes of output, above the {limit}-byte limit of a run's stored outputs"
    );
    dead(
        DeadReason::Validation,
        TaskError::validation("output_too_large", message),
    )
}

/// A node that completed without producing every output it declares: it fails (its
/// dependents are blocked) rather than feeding them nothing.
pub fn missing_output(
    node_id: &str,
    missing: &[String],
    output: &serde_json::Value,
) -> Disposition {
    let has: Vec<&str> = output
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let message = format!(
        "node `{node_id}` declares output(s) {} but did not produce them (its output has: {})",
        missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", "),
        if has.is_empty() {
            "nothing".to_string()
        } else {
            has.join(", ")
        }
    );
    dead(
        DeadReason::Permanent,
        TaskError::new(ErrorClass::Permanent, "missing_output", message),
    )
}

/// The outcome of a node whose run was cancelled before it started.
pub fn cancelled_before_start() -> TaskError {
    TaskError::new(
        ErrorClass::Cancelled,
        "run_cancelled",
        "its run was cancelled before it started",
    )
}

/// Defers a task for `delay` unless it has been deferred `cap` times already.
pub fn defer(defers: u64, cap: u64, delay: Duration, reason: &str) -> Disposition {
    if defers >= cap {
        let message = format!("deferred {defers} times ({reason}); giving up");
        let error = TaskError::new(ErrorClass::Transient, "deferred_too_long", message);
        return dead(DeadReason::DeferredTooLong, error);
    }
    Disposition::Defer {
        delay,
        reason: reason.to_string(),
    }
}

/// Dead-letters a task whose Redis `key` holds unusable state (`detail`): `permanent` (a
/// retry meets the same key), code `state_corrupted`, naming the key and what is wrong.
pub fn state_corrupted(key: &str, detail: &str) -> Disposition {
    let message = format!(
        "its state in Redis key `{key}` is corrupted: {detail}; not run, since whether it already \
         ran is unknown (inspect the key, delete it, then requeue the task)"
    );
    dead(
        DeadReason::StateCorrupted,
        TaskError::new(ErrorClass::Permanent, "state_corrupted", message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferral_gives_up_at_the_cap() {
        let d = Duration::from_secs(1);
        assert!(matches!(defer(3, 4, d, "x"), Disposition::Defer { .. }));
        match defer(4, 4, d, "breaker open") {
            Disposition::DeadLetter { reason, error } => {
                assert_eq!(reason, DeadReason::DeferredTooLong);
                assert!(error.message.contains("breaker open"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_name_their_cause() {
        let parts = |d: Disposition| match d {
            Disposition::DeadLetter { reason, error } => (reason, error.code, error.class),
            other => panic!("{other:?}"),
        };
        let (reason, code, class) = parts(too_large(10, 5));
        assert_eq!(
            (reason, code.as_str(), class),
            (DeadReason::Malformed, "too_large", ErrorClass::Validation)
        );
        assert_eq!(parts(crash_loop(6)).0, DeadReason::DeliveryLimit);
        assert_eq!(parts(unknown_type("x.y")).1, "unknown_type");
        assert_eq!(
            parts(forged("unsigned", "no".into())).2,
            ErrorClass::Security
        );
        let e = TaskError::new(ErrorClass::Transient, "dns", "no such host");
        let (reason, code, class) = parts(escalated(&e, 50, 60));
        assert_eq!(
            (reason, code.as_str(), class),
            (DeadReason::Escalated, "dns", ErrorClass::Permanent)
        );
    }
}
