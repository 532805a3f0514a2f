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
        let (reply, confirmed) = oneshot::channel();
        self.tx
            .send((event, reply))
            .map_err(|_| "the event publisher has stopped".to_string())?;
        confirmed
            .await
            .map_err(|_| "the event publisher has stopped".to_string())?
    }
}

/// Publishes one message per kind and tells every event's sender how it went.
async fn publish(publisher: &Publisher, exchange: &str, batch: Vec<(TaskEvent, Reply)>) {
    let mut by_kind: BTreeMap<String, Vec<(TaskEvent, Reply)>> = BTreeMap::new();
    for item in batch {
        by_kind.entry(item.0.kind.clone()).or_default().push(item);
    }
    join_all(by_kind.into_iter().map(|(kind, items)| async move {
        let (events, replies): (Vec<TaskEvent>, Vec<Reply>) = items.into_iter().unzip();
        let body = serde_json::to_vec(&events).unwrap_or_default();
        let props = secflow_common::amqp::json_properties(
            &secflow_common::now_ms().to_string(),
            Default::default(),
        );
        let result = publisher
            .publish(exchange, &kind, &body, props, false)
            .await
            .map_err(|e| e.to_string());
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }))
    .await;
}
