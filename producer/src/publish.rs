//! Ad-hoc single-node tasks: `producer publish`.

use futures_util::{StreamExt, stream};
use secflow_common::{
    Error, Result, TaskEnvelope, Topology,
    amqp::{self, Publisher},
    config::BrokerArgs,
    retry::RetryPolicy,
};
use serde_json::Value;
use std::time::Duration;
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

/// Connects, declares the exchanges and publishes the tasks, returning their ids in order.
/// Every id returned was confirmed by the broker and routed to a work queue.
pub async fn publish_tasks(broker: &BrokerArgs, req: &PublishRequest) -> Result<Vec<Uuid>> {
    broker.validate()?;
    let tasks = req.envelopes()?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    let conn = amqp::connect(&broker.amqp_url, "secflow-producer", Duration::from_secs(broker.connect_timeout_secs)).await?;
    let ch = conn.create_channel().await?;
    topology.declare_core(&ch).await?;
    let publisher = Publisher::new(&conn).await?;
    let result = publish_envelopes(&publisher, &topology, &tasks).await;
    let _ = conn.close(200, "producer done".into()).await;
    result
}

/// Publishes `tasks` to the tasks exchange with a window of outstanding confirms.
pub async fn publish_envelopes(publisher: &Publisher, topology: &Topology, tasks: &[TaskEnvelope]) -> Result<Vec<Uuid>> {
    let exchange = topology.tasks_exchange();
    let results: Vec<Result<Uuid>> = stream::iter(tasks)
        .map(|task| {
            let exchange = &exchange;
            async move {
                let id = task.task_id.to_string();
                let props = amqp::json_properties(&id, Default::default()).with_type(task.node_type.as_str().into());
                publisher.publish(exchange, &task.node_type, &task.to_body(), props, true).await?;
                Ok(task.task_id)
            }
        })
        .buffered(CONFIRM_WINDOW)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(id) => ids.push(id),
            Err(e) => {
                return Err(Error::Config(format!(
                    "{} of {} tasks were confirmed before a publish failed: {e}",
                    ids.len(),
                    tasks.len()
                )));
            }
        }
    }
    Ok(ids)
}
