//! What the inspector does to selected messages: requeue them, export them, remove them.

use crate::session::{InspectorError, Session};
use futures_util::{StreamExt, stream};
use secflow_common::{amqp, headers as h, now_ms};
use std::{io::Write, time::Duration};

/// Copies in flight at once during a requeue: also the most duplicates a kill can leave.
const WINDOW: usize = 32;

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
}

/// Republishes each selected message to where it came from, with confirms, and acks its DLQ
/// copy only after the confirm. A message whose origin is unknown or unroutable stays.
pub async fn requeue(
    session: &mut Session,
    selected: &[usize],
    opts: RequeueOptions,
) -> Result<RequeueReport, InspectorError> {
    let publisher = amqp::Publisher::new(session.connection()).await?;
    let interval = (opts.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
    let copies: Vec<(usize, Result<Copy, String>)> = selected
        .iter()
        .map(|&i| (i, copy_of(session, i, opts.reset_retries)))
        .collect();
    let publisher = &publisher;
    let results = stream::iter(copies)
        .then(|item| async move {
            if let Some(interval) = interval {
                tokio::time::sleep(interval).await;
            }
            item
        })
        .map(|(i, copy)| async move {
            let result = match copy {
                Ok(c) => publisher
                    .publish(&c.exchange, &c.routing_key, &c.body, c.props, true)
                    .await
                    .map_err(|e| e.to_string()),
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

/// A message ready to publish.
struct Copy {
    exchange: String,
    routing_key: String,
    props: lapin::BasicProperties,
    body: Vec<u8>,
}

/// The requeue copy of message `i`: same body and headers, requeue recorded, broker counters
/// dropped (the copy is a fresh delivery, not a suspect).
fn copy_of(session: &Session, i: usize, reset_retries: bool) -> Result<Copy, String> {
    let record = &session.records[i];
    let delivery = &session.messages[i];
    let id = record.task_id.as_deref().unwrap_or("(no id)");
    if record.code == "unparseable" {
        return Err(format!(
            "task {id}: the AMQP client could not read it as published ({}); export or purge it",
            record.message
        ));
    }
    let (Some(exchange), Some(routing_key)) = (
        record.origin_exchange.clone(),
        record.origin_routing_key.clone(),
    ) else {
        return Err(format!(
            "task {id}: its origin exchange and routing key are unknown; export or purge it"
        ));
    };
    let mut headers = h::for_copy(delivery.properties.headers().as_ref());
    h::set_u64(&mut headers, h::REQUEUE_COUNT, record.requeue_count + 1);
    h::set_u64(&mut headers, h::LAST_REQUEUED_AT, now_ms());
    if reset_retries {
        h::set_u64(&mut headers, h::RETRY_COUNT, 0);
    }
    let props = amqp::copy_properties(&delivery.properties, headers);
    Ok(Copy {
        exchange,
        routing_key,
        props,
        body: delivery.data.clone(),
    })
}

/// Writes the selected messages to `path` as JSON lines and syncs the file to disk.
pub fn export(session: &Session, selected: &[usize], path: &str) -> Result<(), InspectorError> {
    let err = |source| InspectorError::Export {
        path: path.to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    let mut out = std::io::BufWriter::new(file);
    for &i in selected {
        let line = crate::report::export_line(session, i);
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
