//! Lifecycle events, batched: one confirmed publish carries every event of a kind that is
//! ready at that moment.
//!
//! A task's settlement still waits for the broker to confirm its event before the ack, but a
//! busy worker sends one message per batch instead of one per task, which keeps the broker's
//! work per task close to a bare consume and ack. Under light load a batch is one event and
//! nothing waits for company: batches grow only while earlier ones are being confirmed.

use futures_util::future::join_all;
use secflow_common::{amqp::Publisher, events::TaskEvent};
use std::{collections::BTreeMap, sync::Arc};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most events in one message.
const MAX_BATCH: usize = 512;
/// Batches being confirmed at once; while all are out, new events gather into the next ones.
const IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<(), String>>;

/// Hands events to the batching task and waits for their confirm.
#[derive(Clone)]
pub struct EventBatcher {
    tx: mpsc::UnboundedSender<(TaskEvent, Reply)>,
}

impl EventBatcher {
    /// Starts the batching task, publishing to `exchange` with routing key = event kind.
    pub fn start(publisher: Publisher, exchange: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(TaskEvent, Reply)>();
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let exchange = Arc::new(exchange);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (publisher, exchange) = (publisher.clone(), Arc::clone(&exchange));
                tokio::spawn(async move {
                    publish(&publisher, &exchange, batch).await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Publishes `event` (in a batch) and returns once the broker confirmed it.
    pub async fn emit(&self, event: TaskEvent) -> Result<(), String> {
        let started = std::time::Instant::now();
        let (reply, confirmed) = oneshot::channel();
        self.tx
            .send((event, reply))
            .map_err(|_| "the event publisher has stopped".to_string())?;
        let result = confirmed
            .await
            .map_err(|_| "the event publisher has stopped".to_string())?;
        metrics::histogram!(
            "secflow_event_publish_seconds",
            "outcome" => if result.is_ok() { "confirmed" } else { "failed" }
        )
        .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Publishes the events of each kind in as few messages as fit under the publisher's size
/// limit (the broker refuses larger ones and closes the channel) and tells every event's
/// sender how its message went.
async fn publish(publisher: &Publisher, exchange: &str, batch: Vec<(TaskEvent, Reply)>) {
    let mut by_kind: BTreeMap<String, Vec<(TaskEvent, Reply)>> = BTreeMap::new();
    for item in batch {
        by_kind.entry(item.0.kind.clone()).or_default().push(item);
    }
    let limit = publisher.max_message_bytes();
    join_all(by_kind.into_iter().map(|(kind, items)| async move {
        let (events, replies): (Vec<TaskEvent>, Vec<Reply>) = items.into_iter().unzip();
        let mut replies = replies.into_iter();
        for (body, count) in pack(events, limit) {
            let props = secflow_common::amqp::json_properties(
                &secflow_common::now_ms().to_string(),
                Default::default(),
            );
            let result = publisher
                .publish(exchange, &kind, &body, props, false)
                .await
                .map_err(|e| e.to_string());
            for reply in replies.by_ref().take(count) {
                let _ = reply.send(result.clone());
            }
        }
    }))
    .await;
}

/// Splits `events` into JSON-array bodies of at most `limit` bytes, in order, each with the
/// number of events it holds. An event too large on its own keeps everything but its output,
/// which is replaced by a note saying why.
fn pack(events: Vec<TaskEvent>, limit: usize) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut body = vec![b'['];
    let mut count = 0;
    for mut event in events {
        let mut json = serde_json::to_vec(&event).unwrap_or_default();
        if json.len() + 2 > limit {
            let note = format!(
                "output omitted: it made this event {} bytes, over the {limit}-byte message limit",
                json.len()
            );
            event.output = Some(serde_json::json!({ "omitted": note }));
            json = serde_json::to_vec(&event).unwrap_or_default();
        }
        if count > 0 && body.len() + json.len() + 2 > limit {
            body.push(b']');
            out.push((std::mem::replace(&mut body, vec![b'[']), count));
            count = 0;
        }
        if count > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&json);
        count += 1;
    }
    if count > 0 {
        body.push(b']');
        out.push((body, count));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(output_bytes: usize) -> TaskEvent {
        let mut event = TaskEvent::new("node.completed", "w");
        event.output = Some(serde_json::Value::String("x".repeat(output_bytes)));
        event
    }

    #[test]
    fn batches_split_under_the_limit_in_order_and_oversized_outputs_are_omitted() {
        let limit = 1_000;
        let events = vec![event(300), event(300), event(300), event(5_000), event(10)];
        let bodies = pack(events, limit);
        let counts: Vec<usize> = bodies.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts.iter().sum::<usize>(), 5);
        assert!(bodies.len() >= 2, "{counts:?}");
        let mut decoded = Vec::new();
        for (body, n) in &bodies {
            assert!(body.len() <= limit, "{} bytes", body.len());
            let events = secflow_common::events::decode(body).unwrap();
            assert_eq!(events.len(), *n);
            decoded.extend(events);
        }
        let sizes: Vec<String> = decoded
            .iter()
            .map(|e| match &e.output {
                Some(serde_json::Value::String(s)) => s.len().to_string(),
                other => other.as_ref().unwrap()["omitted"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            })
            .collect();
        assert_eq!(&sizes[..3], ["300", "300", "300"]);
        assert!(sizes[3].contains("1000-byte message limit"), "{}", sizes[3]);
        assert_eq!(sizes[4], "10");
    }
}
