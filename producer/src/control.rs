//! Runs once submitted: resume failed nodes, watch a run to its end, cancel it.

use crate::follow_run::{self, Follow, Subscription};
use crate::recipes::publish_event;
use secflow_common::{
    amqp,
    config::BrokerArgs,
    deadline::{REDIS_OP, within},
    runs::RunStore,
};
use std::time::Duration;

/// Publishes the failed nodes of `run` again (or just `node`), with their original task ids;
/// the worker that takes one puts the run back to running. Upstream outputs are kept.
pub async fn resume(
    broker: &BrokerArgs,
    run: &str,
    node: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let runs = RunStore::new(&broker.redis_url, &broker.namespace)?;
    let run_id: uuid::Uuid = run
        .parse()
        .map_err(|_| anyhow::anyhow!("`{run}` is not a run id"))?;
    let mut failed = within(
        "Redis to list a run's failed nodes",
        REDIS_OP,
        runs.failed_nodes(run),
    )
    .await??;
    if let Some(only) = node {
        failed.retain(|n| n.id == only);
        anyhow::ensure!(
            !failed.is_empty(),
            "node `{only}` of run {run} has not failed: nothing to resume"
        );
    }
    anyhow::ensure!(!failed.is_empty(), "run {run} has no failed node to resume");
    let (conn, topology) = crate::connect(broker, "secflow-producer-resume").await?;
    let published = async {
        let publisher =
            amqp::Publisher::for_tasks(&conn, broker.keyring()?, broker.max_message_bytes).await?;
        let trace = within("Redis to read the run's trace", REDIS_OP, runs.trace(run)).await??;
        for n in &failed {
            let task = within(
                "Redis to build a resumed task",
                REDIS_OP,
                runs.envelope(run_id, n),
            )
            .await??;
            amqp::publish_task(&publisher, &topology, &task, trace.as_ref()).await?;
        }
        anyhow::Ok(())
    }
    .await;
    amqp::close(&conn, "resumed").await;
    published?;
    Ok(failed.into_iter().map(|n| n.id).collect())
}

/// Follows `run` until it ends, calling `on_line` with a progress line per event, and returns
/// its final status. A lost broker connection is re-established and the run's state read
/// again, so an end published meanwhile is not missed (see [`follow_run`]).
pub async fn watch(
    broker: &BrokerArgs,
    run: &str,
    shutdown: impl std::future::Future<Output = ()>,
    on_line: impl FnMut(String),
) -> anyhow::Result<String> {
    let runs = RunStore::new(&broker.redis_url, &broker.namespace)?;
    let run_id: uuid::Uuid = run
        .parse()
        .map_err(|_| anyhow::anyhow!("`{run}` is not a run id"))?;
    let follow = Follow {
        broker,
        runs: &runs,
        run_id,
        pattern: "#",
        limit: None,
    };
    // The first subscription gets the whole connect timeout, like every other command.
    let timeout = Duration::from_secs(broker.connect_timeout_secs);
    let first = Subscription::open(broker, "#", timeout).await?;
    Ok(follow_run::until_end(&follow, Some(first), shutdown, on_line).await?)
}

/// Cancels `run`: marks it so queued nodes are skipped and tells the workers (event
/// `run.cancelled`) to stop its running nodes. `when: always` nodes still run. False when the
/// run had already ended.
pub async fn cancel(broker: &BrokerArgs, run: &str) -> anyhow::Result<bool> {
    let runs = secflow_common::runs::RunStore::new(&broker.redis_url, &broker.namespace)?;
    let run_id: uuid::Uuid = run
        .parse()
        .map_err(|_| anyhow::anyhow!("`{run}` is not a run id"))?;
    if !within("Redis to mark a run cancelled", REDIS_OP, runs.cancel(run)).await?? {
        return Ok(false);
    }
    let (conn, topology) = crate::connect(broker, "secflow-producer-cancel").await?;
    let published = tell_cancelled(&conn, &topology, run_id).await;
    amqp::close(&conn, "cancelled").await;
    published?;
    Ok(true)
}

/// Publishes `run.cancelled` for `run` (the workers stop its running nodes).
async fn tell_cancelled(
    conn: &lapin::Connection,
    topology: &secflow_common::Topology,
    run_id: uuid::Uuid,
) -> anyhow::Result<()> {
    let event = secflow_common::events::TaskEvent::new("run.cancelled", "producer")
        .about(None, Some(run_id));
    publish_event(conn, topology, event).await
}
