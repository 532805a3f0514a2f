//! Choreography: the worker that ends a workflow node moves its run forward. One Redis script
//! marks the node and names the dependents that became ready; this worker publishes them (with
//! confirms) before it acks the node, and then confirms the publish to the store. A crash in
//! between leaves them "unpublished", so the redelivered node publishes them again; their
//! fixed task ids let the done markers absorb any duplicate.

use crate::{
    disposition::{Disposition, state_corrupted},
    settle::Settler,
};
use futures_util::{StreamExt, TryStreamExt};
use secflow_common::{
    ErrorClass, TaskEnvelope, TaskError,
    amqp::publish_task,
    events::TaskEvent,
    runs::{NodeRecord, Rewind, RunError, RunStore},
};
use serde_json::json;
use uuid::Uuid;

mod cancels;
mod checks;

pub use cancels::{RunCancels, listen_for_cancels};
use checks::{check_and_cache, check_outputs};

/// Dependents published at once after a node ends.
const PUBLISH_WINDOW: usize = 128;

/// Whether a delivered workflow node may run.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Run it.
    Run,
    /// Its run was cancelled (and it is not a `when: always` node).
    Cancelled,
    /// Its end is already recorded (a worker died after recording it, before acking): do not
    /// run it again; only finish what that attempt left undone.
    AlreadySucceeded,
}

/// Before a workflow node runs: if it had failed (it is back from the DLQ, or resumed), put it
/// and the nodes its failure skipped back to waiting. A store error is logged and the node
/// runs; its end is recorded (or retried) as usual.
pub async fn prepare(runs: &RunStore, task: &TaskEnvelope) -> Prepared {
    match task.run_id {
        // Boxed (see `advance`).
        Some(run) => Box::pin(prepare_node(runs, task, run)).await,
        None => Prepared::Run,
    }
}

async fn prepare_node(runs: &RunStore, task: &TaskEnvelope, run: uuid::Uuid) -> Prepared {
    let run_key = run.to_string();
    match runs.rewind(&run_key, &task.node_id).await {
        Ok(Rewind::Rewound) => {
            tracing::info!(%run, node = %task.node_id, "failed node runs again: its run is running again")
        }
        Ok(Rewind::AlreadySucceeded) => return Prepared::AlreadySucceeded,
        Ok(Rewind::NotFailed) => {}
        Err(e) => {
            tracing::warn!(%run, node = %task.node_id, error = %e, "cannot check the node's state in its run")
        }
    }
    if !runs.is_cancelled(&run_key).await.unwrap_or(false) {
        return Prepared::Run;
    }
    let always = runs
        .nodes(&run_key, std::slice::from_ref(&task.node_id))
        .await
        .ok()
        .and_then(|n| n.first().map(|n| n.when == "always"));
    if always.unwrap_or(false) {
        Prepared::Run
    } else {
        Prepared::Cancelled
    }
}

/// A node whose success was recorded by an attempt that did not settle (its worker died, or
/// its broker connection was lost before the completion event was confirmed): publishes the
/// dependents that attempt left unpublished and completes with the recorded output, so the
/// completion event and done marker are written. The handler does not run again. (Only an
/// attempt killed between its event's confirm and its done marker, a sub-millisecond window,
/// leads to a second completion event.)
pub async fn finish_recorded(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    retry: &(dyn Fn(TaskError) -> Disposition + Sync),
) -> Disposition {
    match task.run_id {
        // Boxed (see `advance`).
        Some(run) => Box::pin(finish_recorded_node(runs, settler, task, run, retry)).await,
        None => Disposition::Duplicate,
    }
}

async fn finish_recorded_node(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    run: uuid::Uuid,
    retry: &(dyn Fn(TaskError) -> Disposition + Sync),
) -> Disposition {
    tracing::info!(task_id = %task.task_id, %run, node = %task.node_id, "node already recorded as succeeded: not running it again");
    let recorded = runs.recorded_output(run, &task.node_id).await;
    let nothing = NodeOutcome {
        output: None,
        failure: None,
        record: None,
    };
    let published = continue_run(runs, settler, task, run, nothing).await;
    let failure = match (published, recorded) {
        (Ok(_), Ok(output)) => {
            return Disposition::Complete(output.unwrap_or(serde_json::Value::Null));
        }
        (Err(e), _) => e,
        (_, Err(e)) => e.into(),
    };
    unrecorded(runs, run, failure, retry)
}

/// Why a node's end could not be recorded and its run moved on.
enum Unrecorded {
    /// The run's stored data is damaged (a value of the wrong type or format): a retry would
    /// meet the same data.
    Corrupt(String),
    /// Redis or the broker is unavailable: a retry may succeed.
    Unavailable(String),
}

impl From<RunError> for Unrecorded {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Corrupt(detail) => Self::Corrupt(detail),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<String> for Unrecorded {
    fn from(e: String) -> Self {
        Self::Unavailable(e)
    }
}

/// The node's disposition when its end could not be recorded: dead-lettered as corrupted state
/// when its run's data is damaged, else retried shortly.
/// `retry` turns a transient failure into the node's next step under its retry policy (a retry
/// with backoff, or the DLQ once its attempts are used up): an unreachable run store does not
/// retry a node for ever.
fn unrecorded(
    runs: &RunStore,
    run: Uuid,
    failure: Unrecorded,
    retry: &(dyn Fn(TaskError) -> Disposition + Sync),
) -> Disposition {
    match failure {
        Unrecorded::Corrupt(detail) => {
            let keys = runs.keys_pattern(&run.to_string());
            tracing::warn!(%run, keys, detail, "corrupted run data in Redis: dead-lettering the node");
            metrics::counter!("secflow_state_corrupted_total", "kind" => "run").increment(1);
            state_corrupted(&keys, &detail)
        }
        Unrecorded::Unavailable(detail) => retry(TaskError::new(
            ErrorClass::Transient,
            "run_store_unavailable",
            format!("run {run}: {detail}"),
        )),
    }
}

/// A cached output that stands in for running a workflow node whose type, config and inputs
/// were already run to success (warm re-runs). `None` when caching is off or nothing matches.
pub async fn cached_output(runs: &RunStore, task: &TaskEnvelope) -> Option<serde_json::Value> {
    if task.run_id.is_none() || !task.cache {
        return None;
    }
    let hit = runs.cached(&task.cache_key()).await.ok().flatten();
    if hit.is_some() {
        tracing::info!(task_id = %task.task_id, node = %task.node_id, "cached output: not running the node");
    }
    hit
}

/// Moves the run of `task` forward after `disposition`, or turns the disposition into a retry
/// when the run store cannot be reached (the continuation must not be lost).
/// `record` says how a node that ran was served (level, fallback, skip).
pub async fn advance(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    disposition: Disposition,
    record: Option<&NodeRecord>,
    retry: &(dyn Fn(TaskError) -> Disposition + Sync),
) -> Disposition {
    match task.run_id {
        // Boxed: a run's bookkeeping is a future of kilobytes (its Redis calls), which every
        // delivery's state would otherwise hold inline and copy at each move, ad-hoc tasks
        // too; a node of a run pays one allocation instead.
        Some(run) => {
            Box::pin(advance_node(
                runs,
                settler,
                task,
                run,
                disposition,
                record,
                retry,
            ))
            .await
        }
        None => disposition,
    }
}

async fn advance_node(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    run: uuid::Uuid,
    disposition: Disposition,
    record: Option<&NodeRecord>,
    retry: &(dyn Fn(TaskError) -> Disposition + Sync),
) -> Disposition {
    let disposition = check_outputs(runs, task, disposition, record).await;
    let disposition = check_and_cache(runs, task, disposition, record).await;
    let end = match &disposition {
        Disposition::Complete(output) => NodeOutcome {
            output: Some(output),
            failure: None,
            record,
        },
        Disposition::DeadLetter { error, .. } | Disposition::Cancelled(error) => NodeOutcome {
            output: None,
            failure: Some(failure_summary(error)),
            record: None,
        },
        _ => return disposition,
    };
    match continue_run(runs, settler, task, run, end).await {
        // Another attempt of this task recorded the node's end first (two copies ran while
        // idempotency was unavailable): that attempt reports the completion, this one does not.
        Ok(true) if matches!(disposition, Disposition::Complete(_)) => {
            tracing::warn!(task_id = %task.task_id, %run, node = %task.node_id, "node already recorded by another attempt: this completion is a duplicate");
            Disposition::Duplicate
        }
        Ok(_) => disposition,
        Err(e) => {
            if let Unrecorded::Unavailable(detail) = &e {
                tracing::error!(task_id = %task.task_id, %run, error = %detail, "cannot record the node's end in its run: retrying the node");
            }
            unrecorded(runs, run, e, retry)
        }
    }
}

async fn continue_run(
    runs: &RunStore,
    settler: &Settler,
    task: &TaskEnvelope,
    run: uuid::Uuid,
    end: NodeOutcome<'_>,
) -> Result<bool, Unrecorded> {
    let run_key = run.to_string();
    let node = runs
        .nodes(&run_key, std::slice::from_ref(&task.node_id))
        .await?;
    let node = node
        .first()
        .ok_or_else(|| Unrecorded::Corrupt(format!("node `{}` not in its run", task.node_id)))?;
    let mut ended = runs
        .node_end(
            &run_key,
            node,
            end.output,
            end.failure.as_deref(),
            end.record,
        )
        .await?;
    // A fan-out can make thousands of nodes ready at once: publish them with confirms in flight
    // together, and fail (so the node is retried and they are re-published) if any one fails.
    // Published as children of this attempt's span: the trace follows the DAG.
    let parent = crate::task::ATTEMPT.try_with(Clone::clone).ok().flatten();
    let parent = parent.as_ref();
    futures_util::stream::iter(std::mem::take(&mut ended.ready))
        .map(|next| async move {
            let envelope = runs.envelope(run, &next).await?;
            publish_task(&settler.publisher, &settler.topology, &envelope, parent)
                .await
                .map_err(|e| Unrecorded::Unavailable(e.to_string()))
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .try_collect::<Vec<()>>()
        .await?;
    runs.published(&run_key, &task.node_id).await?;
    if ended.run_ended() {
        // Its end event is published once every node's own end event is confirmed
        // (`Settler::report_node_end`).
        tracing::info!(%run, status = %ended.status, findings = ended.findings, "workflow run ended");
    }
    Ok(ended.already)
}

/// How a node ended, for its run: its output, or why it failed.
pub struct NodeOutcome<'a> {
    /// The output of a node that succeeded.
    pub output: Option<&'a serde_json::Value>,
    /// Why a node that did not succeed failed (`class/code: message`).
    pub failure: Option<String>,
    /// How a node that succeeded was served.
    pub record: Option<&'a NodeRecord>,
}

/// Why a node failed, as its run keeps it: secrets masked, at most 500 bytes.
fn failure_summary(error: &TaskError) -> String {
    let text = format!("{}/{}: {}", error.class, error.code, error.message);
    let mut text = secflow_common::redact::redact(&text).into_owned();
    if text.len() > 500 {
        let mut end = 500;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// `workflow.completed` (succeeded, partial, degraded) or `workflow.failed` (failed,
/// cancelled), with the run's findings and how long it took; `task` is the node whose
/// confirmed end completed the run's history.
pub(crate) fn run_end_event(
    settler: &Settler,
    task: &TaskEnvelope,
    run: Uuid,
    ended: &secflow_common::runs::NodeEnd,
) -> TaskEvent {
    let kind = if matches!(ended.status.as_str(), "succeeded" | "partial" | "degraded") {
        "workflow.completed"
    } else {
        "workflow.failed"
    };
    let mut event = TaskEvent::new(kind, &settler.worker_id).about(None, Some(run));
    event.task_id = Some(task.task_id);
    event.node_id = Some(task.node_id.clone());
    event.node_type = Some(task.node_type.clone());
    event.status = Some(ended.status.clone());
    event.findings = Some(ended.findings);
    event.workflow = Some(ended.name.clone());
    if ended.created_at_ms > 0 {
        event.duration =
            Some(secflow_common::now_ms().saturating_sub(ended.created_at_ms) as f64 / 1000.0);
    }
    event.output = Some(json!({ "status": ended.status }));
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::decide;
    use secflow_common::retry::RetryPolicy;

    /// Every delivery awaits `prepare` and `cached_output` (and `advance`, built the same way),
    /// ad-hoc tasks too: a run's bookkeeping (its Redis calls, kilobytes of state) stays behind
    /// a box instead of in every task's state.
    #[test]
    fn run_bookkeeping_is_not_in_every_tasks_state() {
        let runs = RunStore::new("redis://127.0.0.1:1/", "ns").unwrap();
        let task = TaskEnvelope::new("builtin.noop", serde_json::Value::Null);
        let prepare = std::mem::size_of_val(&prepare(&runs, &task));
        let cached = std::mem::size_of_val(&cached_output(&runs, &task));
        eprintln!("prepare {prepare}, cached_output {cached}");
        assert!(prepare < 1_024, "prepare is a {prepare}-byte future");
        assert!(cached < 1_024, "cached_output is a {cached}-byte future");
    }

    #[test]
    fn an_unreachable_run_store_retries_a_node_only_within_its_policy() {
        let runs = RunStore::new("redis://127.0.0.1:1/", "ns").unwrap();
        let policy = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let down = || Unrecorded::Unavailable("connection refused".into());
        let first = |e| decide(Err(e), 0, &policy, 0.5);
        assert!(matches!(
            unrecorded(&runs, Uuid::nil(), down(), &first),
            Disposition::Retry { .. }
        ));
        let last = |e| decide(Err(e), 1, &policy, 0.5);
        match unrecorded(&runs, Uuid::nil(), down(), &last) {
            Disposition::DeadLetter { reason, error } => {
                assert_eq!(reason, crate::disposition::DeadReason::Exhausted);
                assert_eq!(error.code, "run_store_unavailable");
            }
            other => panic!("retried past its policy: {other:?}"),
        }
    }
}
