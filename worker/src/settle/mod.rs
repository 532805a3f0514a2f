//! Carries out a [`Disposition`]: the one place that acks.
//!
//! Whatever replaces a delivery (its retry copy, its dead-letter copy, its completion event) is
//! published with confirms *before* the ack. If any of that fails, the delivery is handed back
//! with a nack so the broker redelivers it: nothing is acked that has not been replaced.

use crate::{
    disposition::{DeadReason, Disposition},
    events::EventBatcher,
    stats::WorkerStats,
    store::{Lease, Store},
};
use lapin::{BasicProperties, message::Delivery, options::BasicNackOptions, types::FieldTable};
use secflow_common::severity::Severity;
use secflow_common::{
    ErrorClass, TaskEnvelope, TaskError, Topology,
    amqp::{Publisher, copy_properties},
    bookkeeping, headers as h, now_ms,
    topology::delay_bucket,
};
use std::{sync::Arc, time::Duration};

/// Longest error message kept in headers and events.
const MAX_ERROR_MESSAGE: usize = 1_000;

pub use crate::meta::DeliveryMeta;

mod acks;
mod emit;
pub use acks::Acks;
use emit::{event_error, truncate};

/// Settles deliveries of one work queue.
pub struct Settler {
    /// Confirmed publisher shared by all in-flight tasks.
    pub publisher: Publisher,
    /// Topology of the namespace.
    pub topology: Arc<Topology>,
    /// This worker's id, written into headers and events.
    pub worker_id: String,
    /// The work queue deliveries come from.
    pub queue: String,
    /// Settlement counters.
    pub stats: Arc<WorkerStats>,
    /// How long done markers are kept, ms.
    pub done_ttl_ms: u64,
    /// Lifecycle events, batched.
    pub events: EventBatcher,
    /// Acks of the consumer channel's deliveries, batched.
    pub acks: Acks,
    /// The worker's Redis: done markers of tasks completed without a lease.
    pub store: Arc<Store>,
    /// Workflow runs: each node's end is reported to its run once its event is confirmed.
    pub runs: Arc<secflow_common::runs::RunStore>,
}

/// Longest wait for an ack or nack to be written (a stalled connection must not hold a task).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

impl Settler {
    /// Publishes what replaces the delivery, then acks it; on failure hands it back (nack).
    pub async fn settle(
        &self,
        delivery: &Delivery,
        task: Option<&TaskEnvelope>,
        meta: &DeliveryMeta,
        disposition: Disposition,
        lease: Option<&Lease>,
    ) {
        // A completion is reported only once its completing marker is recorded: else a copy
        // delivered after this worker died would find only the lease, take it over, run the
        // task again and report a second completion. Unrecorded, it goes back unreported.
        let disposition = match (disposition, lease) {
            (Disposition::Complete(_), Some(lease))
                if !lease.completing(self.done_ttl_ms).await =>
            {
                Disposition::HandBack
            }
            (disposition, _) => disposition,
        };
        // An attempt that did not complete gives its lease up before its replacement is
        // published: the copy may be delivered at once and must find the task free.
        if let Some(lease) = lease
            && !matches!(disposition, Disposition::Complete(_))
        {
            lease.release().await;
        }
        let result = match &disposition {
            Disposition::Complete(output) => {
                // Recorded (above) before the event goes out: if this attempt dies before its
                // done marker, a redelivery reports the completion again under the same event
                // id instead of running the task.
                // The event id stays `TASK:node.completed` (set by `emit`) however often the
                // completion is reported; `attempt` names the attempt that completed it.
                let attempt = lease.map(|l| l.owner().to_string());
                self.emit("node.completed", task, meta, |e| {
                    e.attempt = attempt;
                    crate::report::completed(e, output, meta.report.as_ref());
                    // Events are for watching, not for data: secrets in outputs are masked.
                    let mut output = output.clone();
                    secflow_common::redact::global().redact_json(&mut output);
                    e.output = Some(output);
                })
                .await
            }
            // The republishing paths are boxed: each holds a publish future of kilobytes
            // that would otherwise weigh on every settlement's state, completions too.
            Disposition::Retry { delay, error } => {
                Box::pin(self.retry(delivery, task, meta, *delay, error)).await
            }
            Disposition::DeadLetter { reason, error } => {
                Box::pin(self.dead_letter(delivery, task, meta, *reason, error)).await
            }
            Disposition::Cancelled(error) => {
                self.emit("node.cancelled", task, meta, |e| {
                    e.error = Some(event_error(error))
                })
                .await
            }
            Disposition::HandBack => Box::pin(self.hand_back(delivery, meta)).await,
            Disposition::Defer { delay, reason } => {
                Box::pin(self.defer(delivery, task, meta, *delay, reason, true)).await
            }
            Disposition::Hold { delay, reason } => {
                Box::pin(self.defer(delivery, task, meta, *delay, reason, false)).await
            }
            Disposition::Duplicate => Ok(()),
        };
        // A workflow node's end is reported to its run once its event is confirmed; the run's
        // end goes out after every node's own end (whoever confirms the last one sends it).
        let result = match (result, task) {
            (Ok(()), Some(task))
                if task.run_id.is_some()
                    && matches!(
                        disposition,
                        Disposition::Complete(_)
                            | Disposition::DeadLetter { .. }
                            | Disposition::Cancelled(_)
                    ) =>
            {
                self.report_node_end(task).await
            }
            (result, _) => result,
        };
        let task_id = task.map(|t| t.task_id.to_string());
        match result {
            Ok(()) => {
                // The done marker goes out beside the ack, not before it: the completing
                // marker written before the event already keeps any later copy of the task
                // from running (it reports the completion again under the same event id), and
                // an acked delivery is not redelivered. The done marker then lets later copies
                // be acked as duplicates without a report; it costs the ack no round trip.
                let marker = async {
                    match (lease, &disposition, task) {
                        (Some(lease), Disposition::Complete(_), _) => {
                            lease.complete(self.done_ttl_ms).await;
                        }
                        // Completed without a lease (Redis was unreachable at its claim): its
                        // done marker is written when Redis answers, so a later copy is a
                        // duplicate.
                        (None, Disposition::Complete(_), Some(task)) => {
                            self.store
                                .complete_unleased(
                                    &task.task_id.to_string(),
                                    &self.worker_id,
                                    self.done_ttl_ms,
                                )
                                .await;
                        }
                        _ => {}
                    }
                };
                let stats = &self.stats;
                let (counter, outcome) = match disposition {
                    Disposition::Complete(_) => (&stats.completed, "completed"),
                    Disposition::Cancelled(_) => (&stats.completed, "cancelled"),
                    Disposition::Retry { .. } => (&stats.retried, "retried"),
                    Disposition::DeadLetter { .. } => (&stats.dead_lettered, "dead_lettered"),
                    Disposition::HandBack => (&stats.handed_back, "handed_back"),
                    Disposition::Defer { .. } | Disposition::Hold { .. } => {
                        (&stats.deferred, "deferred")
                    }
                    Disposition::Duplicate => (&stats.duplicates, "duplicate"),
                };
                WorkerStats::bump(counter);
                crate::report::settled(outcome);
                if let Disposition::Retry { error, .. } | Disposition::DeadLetter { error, .. } =
                    &disposition
                {
                    metrics::counter!("secflow_task_failures_total", "outcome" => outcome, "class" => error.class.as_str())
                        .increment(1);
                }
                if let (Some(task), Some(report)) = (task, &meta.report) {
                    let output = match &disposition {
                        Disposition::Complete(output) => Some(output),
                        _ => None,
                    };
                    crate::report::record(&task.node_type, outcome, output, Some(report));
                }
                // Acked by the channel's batcher: with others settled at the same moment (one
                // `multiple` ack), or alone at once.
                let ack = self.acks.ack(delivery.delivery_tag, delivery.acker.clone());
                tokio::join!(marker, ack);
            }
            Err(e) => {
                WorkerStats::bump(&self.stats.settle_failures);
                metrics::counter!("secflow_settle_failures_total").increment(1);
                if e.is_transient() {
                    // The connection is going: every in-flight task says so at once.
                    tracing::warn!(task_id, error = %e, "could not publish the settlement (broker connection lost?); the delivery goes back to the queue");
                } else {
                    tracing::error!(task_id, error = %e, "could not publish the settlement; handing the delivery back");
                }
                // A completion that could not be reported: the copy the broker delivers next
                // reports it at once rather than waiting for this attempt.
                if let (Some(lease), Disposition::Complete(_)) = (lease, &disposition) {
                    lease.abandon_report(self.done_ttl_ms).await;
                }
                let _ = tokio::time::timeout(
                    SETTLE_TIMEOUT,
                    delivery.acker.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    }),
                )
                .await;
                self.acks.forget(delivery.delivery_tag);
            }
        }
    }

    /// Republishes with the retry count + 1 through the delay queue of `delay`.
    async fn retry(
        &self,
        delivery: &Delivery,
        task: Option<&TaskEnvelope>,
        meta: &DeliveryMeta,
        delay: Duration,
        error: &TaskError,
    ) -> secflow_common::Result<()> {
        let mut headers = self.failure_headers(delivery, meta, error);
        h::set_u64(&mut headers, h::RETRY_COUNT, meta.retry_count + 1);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let severity = Severity::of_failure(error.class.as_str(), "retried", None);
        tracing::warn!(
            task_id = task.map(|t| t.task_id.to_string()), class = %error.class, code = %error.code,
            %severity, retry = meta.retry_count + 1, delay_ms, error = %error.message, "task failed; retry scheduled"
        );
        // The event is confirmed before the copy exists: the next attempt (and its events)
        // cannot come before the failure it follows, in the audit trail or to any subscriber.
        // If the copy then cannot be published, the delivery goes back and the event repeats.
        self.emit("node.retrying", task, meta, |e| {
            e.error = Some(event_error(error));
            e.next_delay_ms = Some(delay_ms);
            e.severity = Some(severity);
        })
        .await?;
        self.republish_after(delivery, headers, delay).await
    }

    /// Puts the task back after `delay` without using a retry attempt.
    async fn defer(
        &self,
        delivery: &Delivery,
        task: Option<&TaskEnvelope>,
        meta: &DeliveryMeta,
        delay: Duration,
        reason: &str,
        counted: bool,
    ) -> secflow_common::Result<()> {
        let mut headers = copy_headers(delivery, meta);
        if counted {
            h::set_u64(&mut headers, h::DEFER_COUNT, meta.defer_count + 1);
        }
        if meta.unsettled_total() > 0 {
            // A crash-looping task must not shed its history by being deferred.
            h::set_u64(&mut headers, h::UNSETTLED_BEFORE, meta.unsettled_total());
        }
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(
            task_id = task.map(|t| t.task_id.to_string()),
            delay_ms,
            reason,
            "task deferred"
        );
        // Confirmed before the copy exists, as for a retry.
        self.emit("node.deferred", task, meta, |e| {
            e.next_delay_ms = Some(delay_ms)
        })
        .await?;
        self.republish_after(delivery, headers, delay).await
    }

    /// Publishes a copy with `headers` through the delay queue of `delay` back to the work
    /// queue.
    async fn republish_after(
        &self,
        delivery: &Delivery,
        mut headers: FieldTable,
        delay: Duration,
    ) -> secflow_common::Result<()> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        h::set_u64(&mut headers, h::SCHEDULED_DELAY_MS, delay_ms);
        h::set_u64(&mut headers, h::RETRY_PUBLISHED_AT, now_ms());
        let exchange = match delay_bucket(delay) {
            Some(bucket) => {
                self.topology
                    .ensure_delay(self.publisher.channel(), bucket)
                    .await?;
                h::set_str(&mut headers, h::DELAY_BUCKET, &bucket.to_string());
                self.topology.delay_exchange()
            }
            // Too short to delay: straight back to the work queue through the default exchange.
            None => String::new(),
        };
        let props = self.sealed(delivery, headers);
        self.publisher
            .publish(&exchange, &self.queue, &delivery.data, props, true)
            .await?;
        Ok(())
    }

    /// Publishes the original body with the failure headers to the dead-letter exchange.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        task: Option<&TaskEnvelope>,
        meta: &DeliveryMeta,
        reason: DeadReason,
        error: &TaskError,
    ) -> secflow_common::Result<()> {
        let mut headers = self.failure_headers(delivery, meta, error);
        h::set_u64(&mut headers, h::RETRY_COUNT, meta.retry_count);
        h::set_str(&mut headers, h::DEAD_LETTER_REASON, reason.as_str());
        h::set_u64(&mut headers, h::DEAD_LETTERED_AT, now_ms());
        let props = self.sealed(delivery, headers);
        self.publisher
            .publish(
                &self.topology.dlx(),
                &self.queue,
                &delivery.data,
                props,
                true,
            )
            .await?;
        let task_id = task.map(|t| t.task_id.to_string());
        let severity =
            Severity::of_failure(error.class.as_str(), "dead_lettered", Some(reason.as_str()));
        if error.class == ErrorClass::Security {
            tracing::error!(alert = "critical", %severity, task_id, class = %error.class, code = %error.code, error = %error.message, "security failure: task dead-lettered");
        } else {
            tracing::error!(task_id, class = %error.class, code = %error.code, %severity, reason = reason.as_str(), retries = meta.retry_count, error = %error.message, "task dead-lettered");
        }
        self.emit("node.dead_lettered", task, meta, |e| {
            e.error = Some(event_error(error));
            e.reason = Some(reason.as_str().to_string());
            e.severity = Some(severity);
        })
        .await
    }

    /// Republishes the delivery unchanged to the back of its work queue, carrying its count of
    /// unsettled deliveries (the copy starts a fresh `x-delivery-count`).
    async fn hand_back(
        &self,
        delivery: &Delivery,
        meta: &DeliveryMeta,
    ) -> secflow_common::Result<()> {
        let mut headers = copy_headers(delivery, meta);
        if meta.unsettled_total() > 0 {
            h::set_u64(&mut headers, h::UNSETTLED_BEFORE, meta.unsettled_total());
        }
        let props = self.sealed(delivery, headers);
        self.publisher
            .publish("", &self.queue, &delivery.data, props, true)
            .await
    }

    /// Headers of a failed delivery's copy: the original ones (minus the broker's counters
    /// and any bookkeeping that was not believed) plus what the operator needs to know about
    /// the failure.
    fn failure_headers(
        &self,
        delivery: &Delivery,
        meta: &DeliveryMeta,
        error: &TaskError,
    ) -> FieldTable {
        let mut headers = copy_headers(delivery, meta);
        // Unbelieved origin headers are gone from the copy: the delivery's own are used.
        let old = Some(&headers);
        let now = now_ms();
        let first = meta.first_failure_at.unwrap_or(now);
        let origin_exchange = h::get_str(old, h::ORIGIN_EXCHANGE)
            .unwrap_or(delivery.exchange.as_str())
            .to_string();
        let origin_key = h::get_str(old, h::ORIGIN_ROUTING_KEY)
            .unwrap_or(delivery.routing_key.as_str())
            .to_string();
        h::set_u64(&mut headers, h::FIRST_FAILURE_AT, first);
        h::set_u64(&mut headers, h::LAST_FAILURE_AT, now);
        h::set_str(&mut headers, h::ERROR_CLASS, error.class.as_str());
        h::set_str(&mut headers, h::ERROR_CODE, &error.code);
        h::set_str(&mut headers, h::ERROR_MESSAGE, &truncate(&error.message));
        h::set_str(&mut headers, h::WORKER_ID, &self.worker_id);
        h::set_str(&mut headers, h::ORIGIN_QUEUE, &self.queue);
        h::set_str(&mut headers, h::ORIGIN_EXCHANGE, &origin_exchange);
        h::set_str(&mut headers, h::ORIGIN_ROUTING_KEY, &origin_key);
        headers
    }

    /// Properties of a copy of `delivery` with `headers`, its bookkeeping signed by this
    /// worker (the last step before publishing: every header is set).
    fn sealed(&self, delivery: &Delivery, mut headers: FieldTable) -> BasicProperties {
        match self.publisher.signer() {
            Some(keyring) => {
                let message_id = delivery.properties.message_id().as_ref();
                let message_id = message_id.map(|m| m.as_str()).unwrap_or_default();
                bookkeeping::sign(keyring, &mut headers, message_id);
            }
            // Signing disabled: a stale signature would only mislead.
            None => {
                h::remove(&mut headers, &[bookkeeping::SIGNATURE, bookkeeping::KEY_ID]);
            }
        }
        copy_properties(&delivery.properties, headers)
    }
}

/// The delivery's headers for a copy of it: without the broker's counters, and without
/// bookkeeping headers that were not believed (they are never signed into a copy).
fn copy_headers(delivery: &Delivery, meta: &DeliveryMeta) -> FieldTable {
    bookkeeping::for_copy(
        delivery.properties.headers().as_ref(),
        meta.bookkeeping.as_ref().ok().copied(),
    )
}
