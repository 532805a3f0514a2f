//! Ad-hoc single-node tasks: `producer publish`.

use futures_util::{StreamExt, stream::FuturesUnordered};
use secflow_common::trace::{KeyValue, Kind, TraceSpan};
use secflow_common::{
    Error, Result, TaskEnvelope, Topology,
    amqp::{self, Publisher},
    config::BrokerArgs,
    retry::{ReconnectBackoff, RetryPolicy},
};
use serde_json::Value;
use std::time::{Duration, Instant};
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
///
/// A connection lost mid-way (broker restart, dropped connection) is re-established with
/// the shared [`ReconnectBackoff`] and the tasks not yet confirmed are published again; a task the broker
/// had already stored may then arrive twice, which the workers' done markers absorb (same task
/// id). An outage longer than `--connect-timeout-secs` ends the publish with the unconfirmed tasks
/// listed as failed.
pub async fn publish_tasks(
    broker: &BrokerArgs,
    req: &PublishRequest,
) -> Result<Vec<Uuid>, PublishError> {
    let tasks = req.envelopes()?;
    let signer = broker.keyring()?;
    let outage_limit = Duration::from_secs(broker.connect_timeout_secs);
    let mut pending: Vec<&TaskEnvelope> = tasks.iter().collect();
    let mut failed: Vec<(Uuid, String)> = Vec::new();
    let mut outage: Option<Instant> = None;
    let mut backoff = ReconnectBackoff::default();
    let mut connected_once = false;
    while !pending.is_empty() {
        let session = async {
            let (conn, topology) = crate::connect(broker, "secflow-producer").await?;
            let publisher =
                Publisher::for_tasks(&conn, signer.clone(), broker.max_message_bytes).await?;
            Ok::<_, Error>((conn, topology, publisher))
        }
        .await;
        let lost = match session {
            Ok((conn, topology, publisher)) => {
                connected_once = true;
                let failures = publish_each(&publisher, &topology, &pending).await;
                amqp::close(&conn, "producer done").await;
                let mut retry = Vec::new();
                for (task, e) in failures {
                    if e.is_transient() {
                        retry.push((task, e.to_string()));
                    } else {
                        failed.push((task.task_id, e.to_string()));
                    }
                }
                if retry.len() < pending.len() {
                    // Progress: a new outage starts counting from now.
                    outage = None;
                    backoff.reset();
                }
                retry
            }
            // Nothing was published and the broker never answered: a plain setup error.
            Err(e) if !connected_once => return Err(PublishError::Setup(e)),
            Err(e) => pending.iter().map(|t| (*t, e.to_string())).collect(),
        };
        if lost.is_empty() {
            break;
        }
        let started = *outage.get_or_insert_with(Instant::now);
        if started.elapsed() >= outage_limit {
            failed.extend(lost.into_iter().map(|(t, e)| (t.task_id, e)));
            break;
        }
        let wait = backoff.next_delay(&mut rand::rng());
        tracing::warn!(
            unconfirmed = lost.len(),
            error = %lost[0].1,
            retry_in_ms = wait.as_millis() as u64,
            "broker connection lost: publishing the unconfirmed tasks again after reconnecting"
        );
        tokio::time::sleep(wait).await;
        pending = lost.into_iter().map(|(t, _)| t).collect();
    }
    outcome(&tasks, failed)
}

/// Publishes `tasks` to the tasks exchange with a window of outstanding confirms and returns
/// their ids in order, or which were and were not confirmed.
pub async fn publish_envelopes(
    publisher: &Publisher,
    topology: &Topology,
    tasks: &[TaskEnvelope],
) -> Result<Vec<Uuid>, PublishError> {
    let refs: Vec<&TaskEnvelope> = tasks.iter().collect();
    let failed = publish_each(publisher, topology, &refs)
        .await
        .into_iter()
        .map(|(t, e)| (t.task_id, e.to_string()))
        .collect();
    outcome(tasks, failed)
}

/// Publishes each task (a window of confirms in flight); the ones that failed, with why.
async fn publish_each<'a>(
    publisher: &Publisher,
    topology: &Topology,
    tasks: &[&'a TaskEnvelope],
) -> Vec<(&'a TaskEnvelope, Error)> {
    let mut failures = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let mut next = tasks.iter().copied();
    loop {
        while in_flight.len() < CONFIRM_WINDOW {
            let Some(task) = next.next() else { break };
            in_flight.push(async move {
                // One trace per ad-hoc task, rooted in its publication.
                let span = TraceSpan::start_with(Kind::Producer, None, || {
                    (
                        format!("publish {}", task.node_type),
                        vec![
                            KeyValue::new("secflow.task_id", task.task_id.to_string()),
                            KeyValue::new("secflow.task_type", task.node_type.clone()),
                        ],
                    )
                });
                let published = amqp::publish_task(publisher, topology, task, span.context()).await;
                match &published {
                    Ok(()) => span.end("published", None),
                    Err(e) => span.end(
                        "unconfirmed",
                        Some(("transient", "publish", &e.to_string())),
                    ),
                }
                (task, published)
            });
        }
        match in_flight.next().await {
            Some((task, Err(e))) => failures.push((task, e)),
            Some((_, Ok(()))) => {}
            None => return failures,
        }
    }
}

/// All ids in order, or the confirmed and failed ones.
fn outcome(tasks: &[TaskEnvelope], failed: Vec<(Uuid, String)>) -> Result<Vec<Uuid>, PublishError> {
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
