//! Consuming, and running a suspect alone: consumer tags, subscribing, taking back what a
//! cancelled consumer still had, and the isolation of a task that may have killed a worker.

use super::{CLOSE_TIMEOUT, WorkerError};
use crate::{
    disposition::Disposition,
    settle::DeliveryMeta,
    stats::WorkerStats,
    task::{Shared, process},
};
use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions},
    types::FieldTable,
};
use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio_util::task::TaskTracker;

/// A consumer tag of this worker, new each time it subscribes.
pub(super) fn consumer_tag(worker_id: &str) -> String {
    format!("{worker_id}-{}", uuid::Uuid::new_v4().simple())
}

pub(super) async fn subscribe(
    channel: &Channel,
    queue: &str,
    tag: &str,
) -> Result<Consumer, WorkerError> {
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(secflow_common::Error::from)?;
    Ok(consumer)
}

/// A delivery the broker already pushed to a cancelled consumer, if any is left (registered
/// with the channel's ack batcher, as every delivery taken from the consumer is).
pub(super) async fn next_buffered(consumer: &mut Consumer, shared: &Shared) -> Option<Delivery> {
    match tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
        Ok(Some(Ok(delivery))) => {
            shared.settler.acks.delivered(delivery.delivery_tag);
            Some(delivery)
        }
        _ => None,
    }
}

/// Runs a suspect task (one whose earlier delivery was never settled) with nothing else held:
/// consumption stops, prefetched deliveries are handed back as fresh copies, in-flight tasks
/// finish, then the suspect runs alone. If it kills the process, it alone is charged a
/// delivery; innocent tasks never reach the delivery limit by standing next to it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn isolate(
    channel: &Channel,
    tag: &str,
    consumer: &mut Consumer,
    suspect: Delivery,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    connection_events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> Isolation {
    let meta = DeliveryMeta::read(&suspect, shared.keyring.as_ref());
    tracing::warn!(
        deliveries = meta.unsettled_total(),
        "redelivered after an unsettled attempt: running it in isolation"
    );
    // Not consuming until the suspect is settled: readiness says so.
    shared
        .settler
        .stats
        .consuming
        .store(false, Ordering::SeqCst);
    WorkerStats::bump(&shared.settler.stats.isolated);
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
    )
    .await;
    while let Some(delivery) = next_buffered(consumer, shared).await {
        let meta = DeliveryMeta::read(&delivery, shared.keyring.as_ref());
        shared
            .settler
            .settle(&delivery, None, &meta, Disposition::HandBack, None)
            .await;
    }
    let shared = Arc::clone(shared);
    let mut run = tracker.spawn(async move { process(&shared, suspect, true).await });
    // Waiting for in-flight tasks and then the suspect can take a while: a connection lost
    // meanwhile ends the session at once (their deliveries are redelivered anyway).
    loop {
        tokio::select! {
            _ = &mut run => return Isolation::Done,
            () = &mut shutdown => return Isolation::Shutdown,
            event = connection_events.next() => match event {
                Some(lapin::Event::Error(e)) => return Isolation::Lost(WorkerError::Broker(e.into())),
                Some(_) => {}
                None => return Isolation::Lost(WorkerError::Broker(secflow_common::Error::ConnectionLost("consuming (the connection's event stream ended)".into()))),
            },
        }
    }
}

/// How running a suspect task alone ended.
pub(super) enum Isolation {
    /// It was settled (or handed back): consume again.
    Done,
    /// Shutdown was requested meanwhile.
    Shutdown,
    /// The broker connection was lost.
    Lost(WorkerError),
}
