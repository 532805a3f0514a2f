//! Lifecycle events published to the events exchange (`node.completed`, ...).

use crate::{Result, Topology};
use lapin::{
    Channel, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A task lifecycle event. The routing key is `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// `node.completed`, `node.retrying`, `node.deferred`, `node.dead_lettered`, `node.cancelled`.
    pub kind: String,
    /// Identity of the event for consumers that deduplicate: events are delivered at least
    /// once, and a completion reported again (its worker died or lost its connection while
    /// reporting it) keeps its id: `TASK:node.completed`, `RUN:workflow.completed`. Other
    /// kinds get a fresh id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Task id (absent for messages too malformed to have one).
    pub task_id: Option<Uuid>,
    /// Run id, for workflow tasks.
    pub run_id: Option<Uuid>,
    /// Node id.
    pub node_id: Option<String>,
    /// Node type.
    pub node_type: Option<String>,
    /// Worker that emitted the event.
    pub worker: String,
    /// Value of `x-retry-count` on the delivery.
    pub retry_count: u64,
    /// Event time, ms since the epoch.
    pub at_ms: u64,
    /// The attempt that completed the task (`node.completed`: worker id and a random
    /// suffix): the same in a repeated report, different if two attempts ever completed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Handler output (`node.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Error class, code and message (failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// Delay scheduled before the next attempt, ms (`node.retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_delay_ms: Option<u64>,
    /// For a retried delivery: the delay that was scheduled before it, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_delay_ms: Option<u64>,
    /// For a retried delivery: how long it really waited (publish of the copy to delivery), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_delay_ms: Option<u64>,
}

/// The error part of a failure event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventError {
    /// Error class.
    pub class: String,
    /// Error code.
    pub code: String,
    /// Redacted message.
    pub message: String,
}

/// Decodes an events message: workers publish a JSON array of events of one kind (one object
/// is accepted too).
pub fn decode(body: &[u8]) -> serde_json::Result<Vec<TaskEvent>> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        serde_json::from_slice(body)
    } else {
        serde_json::from_slice(body).map(|e| vec![e])
    }
}

/// An event with the exact JSON it was published as.
pub struct RawEvent {
    /// The event, parsed.
    pub event: TaskEvent,
    /// Its JSON as published (a hook receives these bytes).
    pub json: Box<serde_json::value::RawValue>,
}

/// [`decode`], keeping each event's JSON exactly as published (unknown fields and key order
/// included), for consumers that pass events on.
pub fn decode_raw(body: &[u8]) -> serde_json::Result<Vec<RawEvent>> {
    let raws: Vec<Box<serde_json::value::RawValue>> =
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            serde_json::from_slice(body)?
        } else {
            vec![serde_json::from_slice(body)?]
        };
    raws.into_iter()
        .map(|json| {
            Ok(RawEvent {
                event: serde_json::from_str(json.get())?,
                json,
            })
        })
        .collect()
}

/// Subscribes to the events matching `pattern` through a private queue that disappears with
/// the channel. Deliveries need no ack. Each broker operation has a deadline
/// ([`crate::deadline::BROKER_OP`]).
pub async fn subscribe(ch: &Channel, topology: &Topology, pattern: &str) -> Result<Consumer> {
    use crate::deadline::{BROKER_OP, within};
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = within(
        "declaring an events subscription queue",
        BROKER_OP,
        ch.queue_declare("".into(), private, FieldTable::default()),
    )
    .await??;
    within(
        "binding an events subscription queue",
        BROKER_OP,
        ch.queue_bind(
            queue.name().clone(),
            topology.events_exchange().into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await??;
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    Ok(within(
        "consuming an events subscription queue",
        BROKER_OP,
        ch.basic_consume(
            queue.name().clone(),
            "events".into(),
            options,
            FieldTable::default(),
        ),
    )
    .await??)
}

/// The event id of `kind` for `subject` (a task or run id): stable for completions, which
/// happen once however often they are reported, fresh for everything else.
pub fn event_id(subject: Option<Uuid>, kind: &str) -> String {
    match subject {
        Some(id) if kind.ends_with(".completed") => format!("{id}:{kind}"),
        _ => Uuid::now_v7().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_events_keep_their_bytes_and_unknown_fields() {
        let one = r#"{"kind":"node.completed","worker":"w","retry_count":0,"at_ms":1,"task_id":null,"run_id":null,"node_id":null,"node_type":null,"later":{"z":1,"a":2}}"#;
        let body = format!("[{one}, {one}]");
        let events = decode_raw(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].json.get(), one);
        assert_eq!(events[1].event.kind, "node.completed");
        assert_eq!(decode_raw(one.as_bytes()).unwrap()[0].json.get(), one);
        assert!(decode_raw(b"[{\"kind\":1}]").is_err());
    }
}
