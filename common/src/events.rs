//! Lifecycle events published to the events exchange (`node.completed`, ...).

use crate::{Result, Topology};
use lapin::{
    Channel, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A task lifecycle event. The routing key is `kind`.
///
/// Besides SecFlow's own fields, every event carries the published event contract: `event`
/// (the kind with `_` for `.`: `node_started`, `node_completed`, `workflow_completed`,
/// `workflow_failed`, ...), `workflow_id` (the run), `node_id`, `duration` (seconds) and
/// `findings`, and for node ends the node's `exit_status`, `cache_hit`, `cpu_time` (seconds)
/// and `peak_memory` (bytes) where they apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The contract's name of the kind: `node_completed` for `node.completed`.
    #[serde(default)]
    pub event: String,
    /// `node.started`, `node.completed`, `node.retrying`, `node.deferred`,
    /// `node.dead_lettered`, `node.cancelled`, `workflow.started`, `workflow.completed`
    /// (succeeded, partial or degraded), `workflow.failed` (failed or cancelled), `run.cancelled`.
    pub kind: String,
    /// The run, as the contract names it (the same id as `run_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// How long the node's handler ran, or the run lasted, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Findings the node produced, or the run's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<u64>,
    /// Items in each list the node output (`urls`, `findings`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<BTreeMap<String, u64>>,
    /// Exit code of the node's program (`exec` and tool nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i64>,
    /// Whether a cached output stood in for running the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
    /// CPU time (user + system) of the node's program, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<f64>,
    /// Peak resident memory of the node's program, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<u64>,
    /// A run's final status (`workflow.*`): succeeded, partial, degraded, failed or
    /// cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The fleet's degradation level the node ran at (`node.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<crate::control::Level>,
    /// Quality of what served the node (`node.completed`): `full` for its own handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::control::Level>,
    /// The fallback alternative that served the node (`node.completed`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<crate::recipe::ServedBy>,
    /// Why the node was skipped at its degradation level without running (`node.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The recipe's name (`workflow.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
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
    /// The trace of the task's run (or of the ad-hoc task), 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The span of the attempt that emitted the event, 16 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The service (breaker key) of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why a task was dead-lettered (`exhausted`, `permanent`, `security`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How urgent the failure the event reports is (`critical`, `high`, `medium`, `low`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<crate::severity::Severity>,
}

impl TaskEvent {
    /// An event of `kind` from `worker`, now, with its contract name and a fresh id (a
    /// completion's stable id is set by [`TaskEvent::about`]).
    pub fn new(kind: &str, worker: &str) -> Self {
        Self {
            event: kind.replace('.', "_"),
            kind: kind.to_string(),
            workflow_id: None,
            duration: None,
            findings: None,
            counts: None,
            exit_status: None,
            cache_hit: None,
            cpu_time: None,
            peak_memory: None,
            status: None,
            level: None,
            quality: None,
            served_by: None,
            skipped: None,
            workflow: None,
            event_id: Some(event_id(None, kind)),
            task_id: None,
            run_id: None,
            node_id: None,
            node_type: None,
            worker: worker.to_string(),
            retry_count: 0,
            at_ms: crate::now_ms(),
            attempt: None,
            output: None,
            error: None,
            next_delay_ms: None,
            scheduled_delay_ms: None,
            observed_delay_ms: None,
            trace_id: None,
            span_id: None,
            service: None,
            reason: None,
            severity: None,
        }
    }

    /// Sets the task (or, without one, the run) the event is about, and the event id that
    /// goes with it.
    pub fn about(mut self, task: Option<Uuid>, run: Option<Uuid>) -> Self {
        self.task_id = task;
        self.run_id = run;
        self.workflow_id = run.map(|r| r.to_string());
        self.event_id = Some(event_id(task.or(run), &self.kind));
        self
    }
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
    /// The same failure told apart from its incidental details (type, class, normalised
    /// message, hashed): what analytics and notifications group by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
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

/// The event id of `kind` for `subject` (a task or run id): stable for completions and run
/// ends, which happen once however often they are reported, fresh for everything else.
pub fn event_id(subject: Option<Uuid>, kind: &str) -> String {
    match subject {
        Some(id) if kind.ends_with(".completed") || kind == "workflow.failed" => {
            format!("{id}:{kind}")
        }
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
