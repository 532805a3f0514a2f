//! Message header names and typed access to them.
//!
//! `x-retry-count` is ours: classified failures so far, driving backoff and exhaustion. The
//! broker's `x-delivery-count` counts unsettled deliveries (crashes) and is only read.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Classified failures so far (retries already scheduled).
pub const RETRY_COUNT: &str = "x-retry-count";
/// The broker's count of unsettled deliveries (quorum queues).
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// First failure time, ms since the epoch.
pub const FIRST_FAILURE_AT: &str = "x-first-failure-at";
/// Latest failure time, ms since the epoch.
pub const LAST_FAILURE_AT: &str = "x-last-failure-at";
/// Error class of the latest failure.
pub const ERROR_CLASS: &str = "x-error-class";
/// Error code of the latest failure.
pub const ERROR_CODE: &str = "x-error-code";
/// Redacted message of the latest failure.
pub const ERROR_MESSAGE: &str = "x-error-message";
/// Why the task was dead-lettered: `exhausted`, `permanent`, `validation`, `security`,
/// `malformed`, `delivery_limit`, `deferred_too_long`, `escalated`.
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// Worker that settled the delivery last.
pub const WORKER_ID: &str = "x-worker-id";
/// Work queue the task was consumed from.
pub const ORIGIN_QUEUE: &str = "x-origin-queue";
/// Exchange the task was first published to.
pub const ORIGIN_EXCHANGE: &str = "x-origin-exchange";
/// Routing key the task was first published with (its node type).
pub const ORIGIN_ROUTING_KEY: &str = "x-origin-routing-key";
/// Delay the retry was scheduled for, ms.
pub const SCHEDULED_DELAY_MS: &str = "x-scheduled-delay-ms";
/// When the retry copy was published, ms since the epoch.
pub const RETRY_PUBLISHED_AT: &str = "x-retry-published-at";
/// Delay-queue selector matched by the delay exchange (headers exchanges ignore `x-` names).
pub const DELAY_BUCKET: &str = "sf-delay-bucket";
/// Time the task was dead-lettered, ms since the epoch.
pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
/// Unsettled deliveries carried over when a worker handed a suspect task back as a fresh copy
/// (the broker's `x-delivery-count` starts again at 0 for the copy).
pub const UNSETTLED_BEFORE: &str = "x-unsettled-before";

/// Reads an integer header written by us or the broker, whatever integer width it came in.
pub fn get_u64(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// Reads a string header.
pub fn get_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Sets an integer header (as the signed 64-bit type RabbitMQ tools display best).
pub fn set_u64(headers: &mut FieldTable, name: &str, value: u64) {
    let v = i64::try_from(value).unwrap_or(i64::MAX);
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(v));
}

/// Sets a string header.
pub fn set_str(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value)),
    );
}

/// Removes the headers named `names` (the field table has no remove of its own, so the table
/// is rebuilt: only when one of them is there).
pub fn remove(headers: &mut FieldTable, names: &[&str]) {
    if !names.iter().any(|name| headers.inner().contains_key(*name)) {
        return;
    }
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if !names.contains(&k.as_str()) {
            kept.insert(k.clone(), v.clone());
        }
    }
    *headers = kept;
}

/// Times the task was deferred (open breaker, busy lease): not retries, capped separately.
pub const DEFER_COUNT: &str = "x-defer-count";
/// Times the inspector has requeued the task.
pub const REQUEUE_COUNT: &str = "x-requeue-count";
/// When the inspector last requeued the task, ms since the epoch.
pub const LAST_REQUEUED_AT: &str = "x-last-requeued-at";

/// Headers for a new copy of a message: the original ones minus those that describe the old
/// message rather than its copy (delivery counts, the delay-queue selector).
pub fn for_copy(original: Option<&FieldTable>) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(original) = original {
        for (k, v) in original.inner() {
            if ![DELIVERY_COUNT, UNSETTLED_BEFORE, DELAY_BUCKET].contains(&k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers
}

/// A header table as JSON, for display and export (byte arrays as lossy text).
pub fn table_to_json(table: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), to_json(v)))
            .collect(),
    )
}

/// One header value as JSON.
pub fn to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::{Value, json};
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(v) => json!(v),
        AMQPValue::ShortShortUInt(v) => json!(v),
        AMQPValue::ShortInt(v) => json!(v),
        AMQPValue::ShortUInt(v) => json!(v),
        AMQPValue::LongInt(v) => json!(v),
        AMQPValue::LongUInt(v) => json!(v),
        AMQPValue::LongLongInt(v) => json!(v),
        AMQPValue::Float(v) => json!(v),
        AMQPValue::Double(v) => json!(v),
        AMQPValue::DecimalValue(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_any_width_read_back() {
        let mut h = FieldTable::default();
        set_u64(&mut h, RETRY_COUNT, 3);
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongInt(2));
        set_str(&mut h, "n", "17");
        h.insert("neg".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(get_u64(Some(&h), RETRY_COUNT), Some(3));
        assert_eq!(get_u64(Some(&h), DELIVERY_COUNT), Some(2));
        assert_eq!(get_u64(Some(&h), "n"), Some(17));
        assert_eq!(
            get_u64(Some(&h), "neg"),
            None,
            "negative counts are rejected, not wrapped"
        );
        assert_eq!(get_u64(None, RETRY_COUNT), None);
        assert_eq!(get_str(Some(&h), "n"), Some("17"));
    }
}
