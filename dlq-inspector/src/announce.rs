//! Every control change is announced on the namespace's events exchange as an
//! `operator.action` event (a JSON array of one event, like the fleet's other events), published
//! with a confirm on a short-lived connection under a deadline. A failure to announce is
//! reported; the change itself stands.

use secflow_common::{Topology, amqp, config::BrokerArgs, deadline, events::TaskEvent, now_ms};
use serde_json::{Value, json};
use std::time::Duration;

/// The routing key (and kind) of the event.
pub const KIND: &str = "operator.action";

/// Longest wait for the broker to answer a connection attempt.
const CONNECT: Duration = Duration::from_secs(5);
/// Longest the whole announcement may take: connection, declare, publish and confirm.
const DEADLINE: Duration = Duration::from_secs(10);

/// One operator action.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// `breaker.open`, `breaker.close`, `breaker.disable`, `breaker.enable`, `pause`,
    /// `resume`, `degrade`.
    pub action: String,
    /// The service, the type, or `fleet` for the level.
    pub target: String,
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who.
    pub by: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// What is in force after it (the hold, the pause, the level; `null` once lifted).
    pub state: Value,
    /// Where it was taken (`console`); `None` for the command line.
    pub via: Option<String>,
}

impl Action {
    /// An action taken now.
    pub fn now(action: &str, target: &str, reason: &str, by: &str, state: Value) -> Self {
        Self {
            action: action.to_string(),
            target: target.to_string(),
            reason: reason.to_string(),
            by: by.to_string(),
            at_ms: now_ms(),
            state,
            via: None,
        }
    }

    /// What a command or the console answers about it: action, target, reason, by, when, and
    /// the state in force.
    pub fn summary(&self) -> Value {
        json!({
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "by": self.by,
            "at_ms": self.at_ms,
            "state": self.state,
        })
    }

    /// The same action, taken through `via` (`console`).
    pub fn via(mut self, via: &str) -> Self {
        self.via = Some(via.to_string());
        self
    }
}

/// The event's body: a JSON array of one event with the fleet's common fields, plus `action`,
/// `target`, `reason`, `by`, `via` (when not the command line), and the state in force in
/// `output`.
pub fn event_body(a: &Action) -> Vec<u8> {
    let mut event = TaskEvent::new(KIND, "dlq-inspector");
    event.at_ms = a.at_ms;
    event.node_id = Some(a.target.clone());
    event.output = Some(a.state.clone());
    let mut value = serde_json::to_value(&event).unwrap_or_else(|_| json!({}));
    if let Some(obj) = value.as_object_mut() {
        obj.insert("action".into(), json!(a.action));
        obj.insert("target".into(), json!(a.target));
        obj.insert("reason".into(), json!(a.reason));
        obj.insert("by".into(), json!(a.by));
        if let Some(via) = &a.via {
            obj.insert("via".into(), json!(via));
        }
    }
    serde_json::to_vec(&json!([value])).unwrap_or_default()
}

/// Publishes `a` to `broker`'s namespace's events exchange and waits for the confirm; the error
/// says what failed.
pub async fn announce(broker: &BrokerArgs, a: &Action) -> Result<(), String> {
    let body = event_body(a);
    publish(broker, KIND, &body).await
}

/// Publishes what the inspector did to dead-lettered tasks (`task.requeued`, `task.purged`),
/// one event per task with its task, run, node, type and trace, `by` the operator, in messages
/// of at most 500 events; the error says what failed.
pub async fn announce_tasks(
    broker: &BrokerArgs,
    kind: &str,
    events: &[Value],
) -> Result<(), String> {
    for chunk in events.chunks(500) {
        let body = serde_json::to_vec(chunk).unwrap_or_default();
        publish(broker, kind, &body).await?;
    }
    Ok(())
}

/// The event of `kind` about dead-lettered task `record` (with the trace from `headers`),
/// done by `by`.
pub fn task_event(
    kind: &str,
    record: &crate::record::DeadRecord,
    headers: Option<&lapin::types::FieldTable>,
    by: &str,
) -> Value {
    let mut event = TaskEvent::new(kind, "dlq-inspector").about(
        record.task_id.as_deref().and_then(|t| t.parse().ok()),
        record.run_id.as_deref().and_then(|r| r.parse().ok()),
    );
    event.event_id = Some(uuid::Uuid::now_v7().to_string());
    event.node_id = record.node_id.clone();
    event.node_type = record.node_type.clone();
    event.retry_count = record.retry_count;
    event.reason = Some(record.reason.clone());
    event.trace_id =
        secflow_common::trace::TraceContext::from_headers(headers).map(|t| t.trace_id.to_string());
    let mut value = serde_json::to_value(&event).unwrap_or_else(|_| json!({}));
    if let Some(obj) = value.as_object_mut() {
        obj.insert("by".into(), json!(by));
    }
    value
}

/// Publishes `body` under `kind` and waits for the confirm, within [`DEADLINE`].
async fn publish(broker: &BrokerArgs, kind: &str, body: &[u8]) -> Result<(), String> {
    let publish = async {
        let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
        let conn =
            amqp::connect(&broker.amqp_url, "secflow-dlq-inspector-control", CONNECT).await?;
        let sent = async {
            let ch = deadline::within(
                "opening a channel",
                deadline::BROKER_OP,
                conn.create_channel(),
            )
            .await??;
            deadline::within(
                "declaring the exchanges",
                deadline::BROKER_OP,
                topology.declare_core(&ch),
            )
            .await??;
            let _ = deadline::within(
                "closing a channel",
                deadline::CLOSE,
                ch.close(200, "declared".into()),
            )
            .await;
            let publisher = amqp::Publisher::new(&conn).await?;
            let id = uuid_of(body);
            let props = amqp::json_properties(&id, Default::default());
            let sent = publisher
                .publish(&topology.events_exchange(), kind, body, props, false)
                .await;
            let closing = publisher.channel().close(200, "published".into());
            let _ = deadline::within("closing a channel", deadline::CLOSE, closing).await;
            sent
        }
        .await;
        amqp::close(&conn, "event published").await;
        sent
    };
    match tokio::time::timeout(DEADLINE, publish).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no confirm within {DEADLINE:?}")),
    }
}

/// The event id written in `body` (for the message id).
fn uuid_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v[0]["event_id"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_reads_like_the_fleets_and_carries_the_action() {
        let a = Action::now(
            "breaker.open",
            "nvd",
            "upgrade",
            "alice",
            json!({"mode": "open"}),
        );
        let body = event_body(&a);
        let events = secflow_common::events::decode(&body).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind.as_str(), events[0].event.as_str()),
            (KIND, "operator_action")
        );
        assert_eq!(events[0].at_ms, a.at_ms);
        let raw: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(raw[0]["action"], "breaker.open");
        assert_eq!(
            (raw[0]["target"].as_str(), raw[0]["by"].as_str()),
            (Some("nvd"), Some("alice"))
        );
        assert_eq!(raw[0]["reason"], "upgrade");
        assert_eq!(raw[0]["output"]["mode"], "open");
        assert!(!uuid_of(&body).is_empty());
        assert!(raw[0].get("via").is_none());
        let raw: Value = serde_json::from_slice(&event_body(&a.via("console"))).unwrap();
        assert_eq!(raw[0]["via"], "console");
    }
}
