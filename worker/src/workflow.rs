//! Choreography: the worker that ends a workflow node moves its run forward. One Redis script
//! marks the node and names the dependents that became ready; this worker publishes them (with
//! confirms) before it acks the node, and then confirms the publish to the store. A crash in
//! between leaves them "unpublished", so the redelivered node publishes them again; their
//! fixed task ids let the done markers absorb any duplicate.

use crate::{disposition::Disposition, settle::Settler};
use secflow_common::{
    ErrorClass, TaskEnvelope, TaskError,
    amqp::publish_task,
    events::TaskEvent,
    runs::{RunError, RunStore},
};
use serde_json::json;

/// Before a workflow node runs: if it had failed (it is back from the DLQ, or resumed), put it
/// and the nodes its failure skipped back to waiting. A store error is logged: the node still
/// runs, and its end will be recorded (or retried) as usual.
pub async fn prepare(runs: &RunStore, task: &TaskEnvelope) {
    let Some(run) = task.run_id else { return };
    match runs.rewind(&run.to_string(), &task.node_id).await {
        Ok(true) => {
            tracing::info!(%run, node = %task.node_id, "failed node runs again: its run is running again")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(%run, node = %task.node_id, error = %e, "cannot check the node's state in its run")
        }
    }
}

/// Moves the run of `task` forward after `disposition`, or turns the disposition into a retry
/// when the run store cannot be reached (the continuation must not be lost).
pub async fn advance(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    disposition: Disposition,
) -> Disposition {
    let Some(run) = task.run_id else {
        return disposition;
    };
    let output = match &disposition {
        Disposition::Complete(output) => Some(output),
        Disposition::DeadLetter { .. } | Disposition::Cancelled(_) => None,
        _ => return disposition,
    };
    match continue_run(runs, settler, task, run, output).await {
        Ok(()) => disposition,
        Err(e) => {
            tracing::error!(task_id = %task.task_id, %run, error = %e, "cannot record the node's end in its run: retrying the node");
            let error = TaskError::new(
                ErrorClass::Transient,
                "run_store_unavailable",
                format!("run {run}: {e}"),
            );
            Disposition::Retry {
                delay: std::time::Duration::from_secs(2),
                error,
            }
        }
    }
}

async fn continue_run(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    run: uuid::Uuid,
    output: Option<&serde_json::Value>,
) -> Result<(), String> {
    let run_key = run.to_string();
    let node = runs
        .nodes(&run_key, std::slice::from_ref(&task.node_id))
        .await
        .map_err(|e| e.to_string())?;
    let node = node.first().ok_or_else(|| {
        RunError::Corrupt(format!("node `{}` not in its run", task.node_id)).to_string()
    })?;
    let (ready, status) = runs
        .node_end(&run_key, node, output)
        .await
        .map_err(|e| e.to_string())?;
    for next in &ready {
        let envelope = runs.envelope(run, next).await.map_err(|e| e.to_string())?;
        publish_task(&settler.publisher, &settler.topology, &envelope)
            .await
            .map_err(|e| e.to_string())?;
    }
    runs.published(&run_key, &task.node_id)
        .await
        .map_err(|e| e.to_string())?;
    if status != "running" {
        tracing::info!(%run, status, "workflow run ended");
        let event = TaskEvent {
            kind: "workflow.completed".into(),
            task_id: Some(task.task_id),
            run_id: Some(run),
            node_id: Some(task.node_id.clone()),
            node_type: Some(task.node_type.clone()),
            worker: settler.worker_id.clone(),
            retry_count: 0,
            at_ms: secflow_common::now_ms(),
            output: Some(json!({ "status": status })),
            error: None,
            next_delay_ms: None,
            scheduled_delay_ms: None,
            observed_delay_ms: None,
        };
        settler.events.emit(event).await?;
    }
    Ok(())
}
