//! What a dead-lettered message says about itself, read from its headers and body.
//!
//! Two writers put messages in the DLQ: SecFlow workers (headers `x-error-*`, `x-origin-*`,
//! `x-dead-letter-reason`) and the broker itself when a task exceeds the delivery limit
//! (`x-death`, `x-first-death-*`). A record reads either.

use lapin::BasicProperties;
pub use secflow_common::dead_letter::{Death, deaths};
use secflow_common::{TaskEnvelope, dead_letter::latest_death, headers as h};
use serde::Serialize;

/// One dead-lettered task, as the inspector shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeadRecord {
    /// Task id (message id, else the envelope's).
    pub task_id: Option<String>,
    /// Run id.
    pub run_id: Option<String>,
    /// Node id.
    pub node_id: Option<String>,
    /// Node type.
    #[serde(rename = "type")]
    pub node_type: Option<String>,
    /// Error class (`delivery_limit` deaths by the broker count as `permanent`).
    pub class: String,
    /// Error code.
    pub code: String,
    /// Why it was dead-lettered (`exhausted`, `permanent`, `malformed`, `delivery_limit`, ...).
    pub reason: String,
    /// Error message.
    pub message: String,
    /// `x-retry-count` when it died.
    pub retry_count: u64,
    /// Times it was requeued by an inspector.
    pub requeue_count: u64,
    /// First failure, ms since the epoch.
    pub first_failure_ms: Option<u64>,
    /// Last failure, ms since the epoch.
    pub last_failure_ms: Option<u64>,
    /// When it entered the DLQ, ms since the epoch.
    pub dead_lettered_ms: Option<u64>,
    /// Work queue it died in.
    pub origin_queue: Option<String>,
    /// Exchange it was published to, as its headers say (shown only: a requeue always goes to
    /// the namespace's tasks exchange under the task's type).
    pub origin_exchange: Option<String>,
    /// Routing key it was published with, as its headers say (shown only).
    pub origin_routing_key: Option<String>,
}

impl DeadRecord {
    /// Reads a DLQ message.
    pub fn read(props: &BasicProperties, body: &[u8]) -> Self {
        let headers = props.headers().as_ref();
        let envelope = serde_json::from_slice::<TaskEnvelope>(body).ok();
        let death = latest_death(headers);
        let str_of = |name| h::get_str(headers, name).map(str::to_string);
        let broker_reason = deaths(headers).into_iter().next().map(|(reason, _)| reason);
        let ours = str_of(h::DEAD_LETTER_REASON);
        let reason = ours
            .clone()
            .or(broker_reason)
            .unwrap_or_else(|| "unknown".into());
        Self {
            task_id: props
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .or_else(|| envelope.as_ref().map(|e| e.task_id.to_string())),
            run_id: envelope
                .as_ref()
                .and_then(|e| e.run_id)
                .map(|r| r.to_string()),
            node_id: envelope.as_ref().map(|e| e.node_id.clone()),
            node_type: envelope
                .as_ref()
                .map(|e| e.node_type.clone())
                .or_else(|| str_of(h::ORIGIN_ROUTING_KEY)),
            class: str_of(h::ERROR_CLASS)
                .filter(|_| ours.is_some())
                .unwrap_or_else(|| "permanent".into()),
            code: str_of(h::ERROR_CODE)
                .filter(|_| ours.is_some())
                .unwrap_or_else(|| reason.clone()),
            message: str_of(h::ERROR_MESSAGE)
                .filter(|_| ours.is_some())
                .unwrap_or_else(|| broker_message(&reason, death.as_ref())),
            reason,
            retry_count: h::get_u64(headers, h::RETRY_COUNT).unwrap_or(0),
            requeue_count: h::get_u64(headers, h::REQUEUE_COUNT).unwrap_or(0),
            first_failure_ms: h::get_u64(headers, h::FIRST_FAILURE_AT),
            last_failure_ms: h::get_u64(headers, h::LAST_FAILURE_AT),
            dead_lettered_ms: secflow_common::dead_letter::dead_lettered_ms(props),
            origin_queue: str_of(h::ORIGIN_QUEUE)
                .or_else(|| death.as_ref().and_then(|d| d.queue.clone())),
            origin_exchange: str_of(h::ORIGIN_EXCHANGE)
                .or_else(|| death.as_ref().and_then(|d| d.exchange.clone())),
            origin_routing_key: str_of(h::ORIGIN_ROUTING_KEY)
                .or_else(|| death.as_ref().and_then(|d| d.routing_key.clone())),
        }
    }

    /// Time in the DLQ at `now_ms`.
    pub fn age_ms(&self, now_ms: u64) -> Option<u64> {
        self.dead_lettered_ms.map(|t| now_ms.saturating_sub(t))
    }
}

fn broker_message(reason: &str, death: Option<&Death>) -> String {
    match (reason, death) {
        ("delivery_limit", Some(d)) => format!(
            "dead-lettered by the broker: delivered more times than the delivery limit of {} allows without being settled (it crashes or hangs workers)",
            d.queue.as_deref().unwrap_or("its queue")
        ),
        (reason, _) => format!("dead-lettered by the broker ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::types::{FieldArray, LongString};

    #[test]
    fn reads_a_worker_dead_letter() {
        let env = TaskEnvelope::new("scan.nuclei", serde_json::json!({}));
        let mut headers = FieldTable::default();
        h::set_str(&mut headers, h::DEAD_LETTER_REASON, "exhausted");
        h::set_str(&mut headers, h::ERROR_CLASS, "transient");
        h::set_str(&mut headers, h::ERROR_CODE, "timeout");
        h::set_str(&mut headers, h::ORIGIN_QUEUE, "ns.work.default");
        h::set_u64(&mut headers, h::RETRY_COUNT, 4);
        h::set_u64(&mut headers, h::DEAD_LETTERED_AT, 1_000);
        let props = BasicProperties::default()
            .with_message_id(env.task_id.to_string().into())
            .with_headers(headers);
        let r = DeadRecord::read(&props, &env.to_body());
        assert_eq!(r.task_id, Some(env.task_id.to_string()));
        assert_eq!(
            (r.class.as_str(), r.code.as_str(), r.reason.as_str()),
            ("transient", "timeout", "exhausted")
        );
        assert_eq!(r.node_type.as_deref(), Some("scan.nuclei"));
        assert_eq!((r.retry_count, r.age_ms(5_000)), (4, Some(4_000)));
    }

    #[test]
    fn reads_a_broker_delivery_limit_death() {
        let mut death = FieldTable::default();
        h::set_str(&mut death, "reason", "delivery_limit");
        h::set_str(&mut death, "queue", "ns.work.default");
        h::set_str(&mut death, "exchange", "ns.tasks");
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                LongString::from("builtin.crash"),
            )])),
        );
        death.insert("time".into(), AMQPValue::Timestamp(7));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let r = DeadRecord::read(
            &BasicProperties::default().with_headers(headers),
            b"not json",
        );
        assert_eq!(
            (r.reason.as_str(), r.class.as_str()),
            ("delivery_limit", "permanent")
        );
        assert_eq!(r.origin_exchange.as_deref(), Some("ns.tasks"));
        assert_eq!(r.origin_routing_key.as_deref(), Some("builtin.crash"));
        assert_eq!(r.dead_lettered_ms, Some(7_000));
        assert!(r.message.contains("delivery limit"));
    }
}
