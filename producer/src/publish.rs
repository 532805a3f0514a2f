//! Ad-hoc single-node tasks: `producer publish`.

use futures_util::{StreamExt, stream};
use secflow_common::{
    Error, Result, TaskEnvelope, Topology,
    amqp::{self, Publisher},
    config::BrokerArgs,
    retry::RetryPolicy,
};
use serde_json::Value;
use uuid::Uuid;

/// Publishes in flight at once: enough to keep the broker's confirm batching busy.
const CONFIRM_WINDOW: usize = 512;

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// Node type (routing key).
    pub node_type: String,
    /// Handler config (a JSON object).
    pub config: Value,
    /// How many copies (each with its own task id).
    pub count: usize,
    /// Retry policy carried by the tasks.
    pub retry: Option<RetryPolicy>,
    /// Handler timeout, ms.
    pub timeout_ms: Option<u64>,
}

impl PublishRequest {
    /// The envelopes to publish, checked.
    pub fn envelopes(&self) -> Result<Vec<TaskEnvelope>> {
        (0..self.count)
            .map(|_| {
                let mut task = TaskEnvelope::new(self.node_type.clone(), self.config.clone());
                task.retry.clone_from(&self.retry);
                task.timeout_ms = self.timeout_ms;
                task.check().map_err(Error::Config)?;
                Ok(task)
            })
            .collect()
    }
}

/// Why a publish did not fully succeed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Nothing was published (bad request, broker unreachable, topology conflict).
    #[error(transparent)]
    Setup(#[from] Error),
    /// Some tasks were confirmed, others were not: both lists are given so nothing is
    /// published twice or assumed published by mistake.
    #[error("{} of {} tasks were not published (first error: {first}); {} were confirmed", .failed.len(), .failed.len() + .confirmed.len(), .confirmed.len())]
    Partial {
        /// Ids the broker confirmed, in request order.
        confirmed: Vec<Uuid>,
        /// Ids that failed, with their error.
        failed: Vec<(Uuid, String)>,
        /// The first error, for the summary line.
        first: String,
    },
}

/// Connects, declares the exchanges and publishes the tasks, returning their ids in order.
/// Every id returned was confirmed by the broker and routed to a work queue.
pub async fn publish_tasks(
    broker: &BrokerArgs,
    req: &PublishRequest,
) -> Result<Vec<Uuid>, PublishError> {
    let tasks = req.envelopes()?;
    let (conn, topology) = crate::connect(broker, "secflow-producer").await?;
    let publisher = Publisher::for_tasks(&conn, broker).await?;
    let result = publish_envelopes(&publisher, &topology, &tasks).await;
    let _ = conn.close(200, "producer done".into()).await;
    result
}

/// Publishes `tasks` to the tasks exchange with a window of outstanding confirms and returns
/// their ids in order, or which were and were not confirmed.
pub async fn publish_envelopes(
    publisher: &Publisher,
    topology: &Topology,
    tasks: &[TaskEnvelope],
) -> Result<Vec<Uuid>, PublishError> {
    let failed: Vec<(Uuid, String)> = stream::iter(tasks)
        .map(|task| async move {
            let result = amqp::publish_task(publisher, topology, task).await;
            result.err().map(|e| (task.task_id, e.to_string()))
        })
        .buffer_unordered(CONFIRM_WINDOW)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    let confirmed_ids = || tasks.iter().map(|t| t.task_id);
    if failed.is_empty() {
        return Ok(confirmed_ids().collect());
    }
    let failed_ids: std::collections::HashSet<Uuid> = failed.iter().map(|(id, _)| *id).collect();
    let first = failed[0].1.clone();
    Err(PublishError::Partial {
        confirmed: confirmed_ids()
            .filter(|id| !failed_ids.contains(id))
            .collect(),
        failed,
        first,
    })
}
