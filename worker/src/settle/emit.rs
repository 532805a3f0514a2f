//! The settlement's events: a node's start, its end, and what follows it (its run's end).

use super::{DeliveryMeta, MAX_ERROR_MESSAGE, Settler};
use secflow_common::{
    TaskEnvelope, TaskError,
    events::{EventError, TaskEvent},
};

impl Settler {
    /// Reports to its run that workflow node `task`'s end event was confirmed and, when that
    /// was the run's last unreported node end and the run has its final status, publishes the
    /// run's end (`workflow.completed` or `workflow.failed`) and records that it went out. A
    /// failure hands the delivery back: its redelivery reports the node's end (same event id)
    /// and this again.
    pub(super) async fn report_node_end(&self, task: &TaskEnvelope) -> secflow_common::Result<()> {
        let Some(run) = task.run_id else {
            return Ok(());
        };
        let run_key = run.to_string();
        let store = |e: secflow_common::runs::RunError| {
            secflow_common::Error::Events(format!("run {run}: {e}"))
        };
        let Some(ended) = self
            .runs
            .reported(&run_key, &task.node_id)
            .await
            .map_err(store)?
        else {
            return Ok(());
        };
        let event = crate::workflow::run_end_event(self, task, run, &ended);
        self.events
            .emit(event)
            .await
            .map_err(secflow_common::Error::Events)?;
        self.runs.end_reported(&run_key).await.map_err(store)
    }

    /// Announces that a workflow node starts (`node.started`), once the broker has confirmed
    /// it, so it comes before the node's end. A failure is logged: the node runs anyway.
    pub async fn started(&self, task: &TaskEnvelope, meta: &DeliveryMeta) {
        if let Err(e) = self.emit("node.started", Some(task), meta, |_| {}).await {
            tracing::warn!(task_id = %task.task_id, error = %e, "could not announce the node's start");
        }
    }

    /// Publishes a lifecycle event with confirms (not mandatory: nobody may be listening), in a
    /// batch with other events of its kind.
    pub(super) async fn emit(
        &self,
        kind: &str,
        task: Option<&TaskEnvelope>,
        meta: &DeliveryMeta,
        fill: impl FnOnce(&mut TaskEvent),
    ) -> secflow_common::Result<()> {
        let mut event = TaskEvent::new(kind, &self.worker_id)
            .about(task.map(|t| t.task_id), task.and_then(|t| t.run_id));
        event.node_id = task.map(|t| t.node_id.clone());
        event.node_type = task.map(|t| t.node_type.clone());
        event.retry_count = meta.retry_count;
        event.scheduled_delay_ms = meta.scheduled_delay_ms;
        event.observed_delay_ms = meta.observed_delay_ms;
        if let Some(trace) = &meta.trace {
            event.trace_id = Some(trace.trace_id.to_string());
            event.span_id = Some(trace.span_id.to_string());
        }
        crate::report::timed(&mut event, meta.report.as_ref());
        event.service = task.map(|t| t.service().to_string());
        fill(&mut event);
        if let Some(error) = &mut event.error {
            error.fingerprint = Some(crate::fingerprint::fingerprint(
                event.node_type.as_deref().unwrap_or_default(),
                &error.class,
                &error.message,
            ));
        }
        self.events
            .emit(event)
            .await
            .map_err(secflow_common::Error::Events)
    }
}

pub(super) fn event_error(error: &TaskError) -> EventError {
    EventError {
        class: error.class.to_string(),
        code: error.code.clone(),
        message: truncate(&error.message),
        fingerprint: None,
    }
}

/// The message as it may leave the worker: secrets masked, length bounded.
pub(super) fn truncate(message: &str) -> String {
    let message = secflow_common::redact::redact(message);
    let message = message.as_ref();
    if message.len() <= MAX_ERROR_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}
