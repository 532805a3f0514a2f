//! What the inspector does to selected messages: requeue them, export them, remove them.

use crate::session::{InspectorError, Session};
use futures_util::{StreamExt, stream};
use secflow_common::trace::{KeyValue, Kind, TraceContext, TraceSpan};
use secflow_common::{TaskEnvelope, amqp, bookkeeping, headers as h, now_ms, signing::Keyring};
use std::{io::Write, time::Duration};

/// The audit event of a requeue.
pub const REQUEUED: &str = "task.requeued";

/// Copies in flight at once during a requeue: also the most duplicates a kill can leave.
pub const WINDOW: usize = 32;

/// How to requeue.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequeueOptions {
    /// Start the retry budget again (`x-retry-count` = 0).
    pub reset_retries: bool,
    /// At most this many messages per second (0 = as fast as confirms come).
    pub rate: u32,
}

/// Result of a requeue.
#[derive(Debug, Default)]
pub struct RequeueReport {
    /// Messages moved back to their work queue.
    pub requeued: usize,
    /// Messages left in the DLQ because their copy could not be published, with the reason.
    pub failed: Vec<(usize, String)>,
    /// Messages left in the DLQ because their service's breaker or a pause still held them
    /// when a paced requeue's `--max-wait` ran out, with the reason.
    pub held: Vec<(usize, String)>,
}

/// Republishes each selected message to the namespace's tasks exchange under its type, with
/// confirms, and acks its DLQ copy only after the confirm; its bookkeeping headers are signed
/// with `keyring` (`None` only when signing is disabled). A message that is not a task, whose
/// bookkeeping does not verify (without `reset_retries`) or that is unroutable stays.
pub async fn requeue(
    session: &mut Session,
    selected: &[usize],
    opts: RequeueOptions,
    keyring: Option<&Keyring>,
) -> Result<RequeueReport, InspectorError> {
    let exchange = session.topology.tasks_exchange();
    let publisher = amqp::Publisher::new(session.connection()).await?;
    let interval = (opts.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
    let copies: Vec<(usize, Result<Copy, String>)> = selected
        .iter()
        .map(|&i| (i, copy_of(session, i, opts.reset_retries, keyring)))
        .collect();
    let (publisher, exchange) = (&publisher, exchange.as_str());
    let results = stream::iter(copies)
        .then(|item| async move {
            if let Some(interval) = interval {
                tokio::time::sleep(interval).await;
            }
            item
        })
        .map(|(i, copy)| async move {
            let result = match copy {
                Ok(c) => publish_copy(publisher, exchange, c).await,
                Err(e) => Err(e),
            };
            (i, result)
        })
        .buffer_unordered(WINDOW);
    let mut results = std::pin::pin!(results);
    let mut report = RequeueReport::default();
    while let Some((i, result)) = results.next().await {
        match result {
            // Acked as soon as its copy is confirmed: that bounds the duplicates a kill leaves.
            Ok(()) => {
                session.ack(i).await?;
                report.requeued += 1;
            }
            Err(e) => report.failed.push((i, e)),
        }
    }
    Ok(report)
}

/// Publishes a requeue copy to the tasks exchange with a confirm. The requeue is a span of the
/// task's own trace: its next attempt follows it there (the copy keeps the task's signed trace
/// context).
pub(crate) async fn publish_copy(
    publisher: &amqp::Publisher,
    exchange: &str,
    c: Copy,
) -> Result<(), String> {
    let span = TraceSpan::start(
        format!("requeue {}", c.routing_key),
        Kind::Producer,
        c.trace.as_ref(),
        vec![KeyValue::new("secflow.task_type", c.routing_key.clone())],
    );
    // The trail says the task was requeued before anything its copy does can be recorded.
    let (events, event) = &c.event;
    let props = amqp::json_properties(&uuid::Uuid::now_v7().to_string(), Default::default());
    let published = match publisher
        .publish(events, REQUEUED, event, props, false)
        .await
    {
        Ok(()) => publisher
            .publish(exchange, &c.routing_key, &c.body, c.props, true)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!(
            "its requeue could not be recorded in the audit trail: {e}"
        )),
    };
    match &published {
        Ok(()) => span.end("requeued", None),
        Err(e) => span.end("not_requeued", Some(("transient", "publish", e))),
    }
    published
}

/// A message ready to publish.
pub(crate) struct Copy {
    /// The task's type.
    pub(crate) routing_key: String,
    /// Its properties, bookkeeping signed again.
    pub(crate) props: lapin::BasicProperties,
    /// Its body, unchanged.
    pub(crate) body: Vec<u8>,
    /// The trace context it was published under.
    pub(crate) trace: Option<TraceContext>,
    /// Its `task.requeued` event (for the audit trail) and the events exchange.
    pub(crate) event: (String, Vec<u8>),
}

/// The requeue copy of message `i`: same body and task signature, requeue recorded, broker
/// counters dropped (the copy is a fresh delivery, not a suspect), bookkeeping signed again.
/// It goes to the namespace's tasks exchange under the task's own (signed) type, never to an
/// exchange or routing key a header names. Bookkeeping that does not verify is not carried
/// over: such a message is requeued only with `reset_retries`, which starts it over.
pub(crate) fn copy_of(
    session: &Session,
    i: usize,
    reset_retries: bool,
    keyring: Option<&Keyring>,
) -> Result<Copy, String> {
    let record = &session.records[i];
    let delivery = &session.messages[i];
    let id = record.task_id.as_deref().unwrap_or("(no id)");
    if record.code == "unparseable" {
        return Err(format!(
            "task {id}: the AMQP client could not read it as published ({}); export or purge it",
            record.message
        ));
    }
    let Ok(task) = serde_json::from_slice::<TaskEnvelope>(&delivery.data) else {
        return Err(format!(
            "task {id}: its body is not a task envelope, so it has no type to route by; export or purge it"
        ));
    };
    let original = delivery.properties.headers().as_ref();
    let message_id = delivery.properties.message_id().as_ref();
    let message_id = message_id.map(|m| m.as_str()).unwrap_or_default();
    let mut headers = match bookkeeping::verify(keyring, original, message_id) {
        Ok(trust) => bookkeeping::for_copy(original, Some(trust)),
        Err(_) if reset_retries => bookkeeping::for_copy(original, None),
        Err(tampered) => {
            return Err(format!(
                "task {id}: {tampered}; not requeued. Look at it with `show`; `requeue --reset-retries` starts it over with a fresh retry budget, `purge` removes it"
            ));
        }
    };
    let requeues = h::get_u64(Some(&headers), h::REQUEUE_COUNT).unwrap_or(0);
    h::set_u64(&mut headers, h::REQUEUE_COUNT, requeues + 1);
    h::set_u64(&mut headers, h::LAST_REQUEUED_AT, now_ms());
    if reset_retries {
        h::set_u64(&mut headers, h::RETRY_COUNT, 0);
    }
    match keyring {
        Some(keyring) => bookkeeping::sign(keyring, &mut headers, message_id),
        None => h::remove(&mut headers, &[bookkeeping::SIGNATURE, bookkeeping::KEY_ID]),
    }
    let trace = TraceContext::from_headers(Some(&headers));
    let props = amqp::copy_properties(&delivery.properties, headers);
    let event = crate::announce::task_event(
        REQUEUED,
        record,
        delivery.properties.headers().as_ref(),
        &session.by,
    );
    Ok(Copy {
        routing_key: task.node_type,
        props,
        body: delivery.data.clone(),
        trace,
        event: (
            session.topology.events_exchange(),
            serde_json::to_vec(&[event]).unwrap_or_default(),
        ),
    })
}

/// Writes the selected messages to `path` as JSON lines (secrets masked unless `secrets` says
/// otherwise) and syncs the file to disk.
pub fn export(
    session: &Session,
    selected: &[usize],
    path: &str,
    secrets: crate::report::Secrets,
) -> Result<(), InspectorError> {
    let err = |source| InspectorError::Export {
        path: path.to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    let mut out = std::io::BufWriter::new(file);
    for &i in selected {
        let line = crate::report::export_line(session, i, secrets);
        writeln!(out, "{line}").map_err(err)?;
    }
    let file = out.into_inner().map_err(|e| err(e.into_error()))?;
    // Only a synced file makes removing the messages safe (full disk, crash after purge).
    file.sync_all().map_err(err)
}

/// Removes the selected messages from the DLQ.
pub async fn purge(session: &mut Session, selected: &[usize]) -> Result<usize, InspectorError> {
    for &i in selected {
        session.ack(i).await?;
    }
    Ok(selected.len())
}
