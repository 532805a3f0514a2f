//! The consume loop of one connection: run each delivery, isolate suspects, and on shutdown
//! or a lost connection stop consuming, hand back what was not started and let in-flight
//! tasks finish (within the grace period) or go.

use super::isolation::{Isolation, consumer_tag, isolate, next_buffered, subscribe};
use super::{CLOSE_TIMEOUT, WorkerError, within};
use crate::{
    config::WorkerConfig,
    disposition::Disposition,
    settle::DeliveryMeta,
    task::{Shared, process},
};
use futures_util::StreamExt;
use lapin::{
    Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicQosOptions},
};
use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio_util::task::TaskTracker;

/// How long hard-stopped tasks get to hand their deliveries back.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long tasks of a lost connection get to notice before the worker reconnects without them.
const LOST_TASKS_WAIT: Duration = Duration::from_secs(1);

/// Consumes `queue` until `shutdown` (`Ok`) or the connection is lost (`Err(Broker)`).
pub(super) async fn consume(
    conn: &Connection,
    cfg: &WorkerConfig,
    queue: &str,
    shared: &Arc<Shared>,
    mut suspects: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), WorkerError> {
    let mut tag = consumer_tag(&shared.settler.worker_id);
    let setup = within("opening the consumer", async {
        let channel = conn
            .create_channel()
            .await
            .map_err(secflow_common::Error::from)?;
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(secflow_common::Error::from)?;
        let consumer = subscribe(&channel, queue, &tag).await?;
        Ok::<_, WorkerError>((channel, consumer))
    });
    let (channel, mut consumer) = tokio::select! {
        r = setup => r??,
        () = shutdown.as_mut() => return Ok(()),
    };
    let stats = &shared.settler.stats;
    stats.consuming.store(true, Ordering::SeqCst);
    tracing::info!(worker = %shared.settler.worker_id, queue, prefetch = cfg.prefetch, "worker consuming");
    let tracker = TaskTracker::new();
    // The consumer stream does not always end when the server closes the connection; the
    // connection's own events say so.
    let mut connection_events = conn.events_listener();
    let outcome = loop {
        let suspect = tokio::select! {
            () = &mut shutdown => break Ok(()),
            event = connection_events.next() => match event {
                Some(lapin::Event::Error(e)) => break Err(WorkerError::Broker(e.into())),
                Some(_) => continue,
                None => break Err(WorkerError::Broker(secflow_common::Error::ConnectionLost("consuming (the connection's event stream ended)".into()))),
            },
            Some(suspect) = suspects.recv() => suspect,
            next = consumer.next() => match next.map(|n| n.inspect(|d| shared.settler.acks.delivered(d.delivery_tag))) {
                // (Each delivery is registered with the ack batcher above, before anything can
                // ack a later delivery of the channel.)
                // Without Redis there is no evidence of what killed a worker: a delivery that
                // was never settled is taken for a suspect, as the broker's count is all there is.
                Some(Ok(delivery)) if shared.store.is_degraded() && DeliveryMeta::read(&delivery, shared.keyring.as_ref()).is_suspect() => delivery,
                Some(Ok(delivery)) => {
                    let shared = Arc::clone(shared);
                    // Boxed: the spawned future stays a few hundred bytes instead of the whole
                    // pipeline's state, which every move on the way into the task would copy.
                    tracker.spawn(async move { Box::pin(process(&shared, delivery, false)).await });
                    continue;
                }
                Some(Err(e)) => break Err(WorkerError::Broker(e.into())),
                // The broker cancelled the consumer (queue deleted, node restarted): start over.
                None => break Err(WorkerError::Broker(secflow_common::Error::ConnectionLost("consuming (the broker cancelled the consumer)".into()))),
            },
        };
        match isolate(
            &channel,
            &tag,
            &mut consumer,
            suspect,
            shared,
            &tracker,
            shutdown.as_mut(),
            &mut connection_events,
        )
        .await
        {
            Isolation::Done => {
                // A fresh tag: RabbitMQ 3.10 can fail a channel that reuses a cancelled one.
                tag = consumer_tag(&shared.settler.worker_id);
                consumer = within("subscribing again", subscribe(&channel, queue, &tag)).await??;
                stats.consuming.store(true, Ordering::SeqCst);
            }
            Isolation::Shutdown => break Ok(()),
            Isolation::Lost(e) => break Err(e),
        }
    };
    stats.consuming.store(false, Ordering::SeqCst);
    if outcome.is_err() {
        // The channel is gone: no in-flight delivery can be settled, the broker redelivers
        // them all. Stop their handlers now rather than run them for nothing.
        shared.hard_stop.cancel();
    }
    tracing::info!(
        in_flight = tracker.len(),
        grace_secs = cfg.grace_secs,
        "stopping: no new deliveries, finishing in-flight tasks"
    );
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await;
    // Deliveries already prefetched but not started go straight back, as fresh copies: a
    // nack would count as a failed delivery and bring them nearer the delivery limit.
    // (On a lost connection they are redelivered anyway.)
    while outcome.is_ok()
        && let Some(delivery) = next_buffered(&mut consumer, shared).await
    {
        let meta = DeliveryMeta::read(&delivery, shared.keyring.as_ref());
        shared
            .settler
            .settle(&delivery, None, &meta, Disposition::HandBack, None)
            .await;
    }
    tracker.close();
    if outcome.is_err() {
        // Nothing in flight can be settled on a dead channel; their deliveries are already on
        // their way back to the queue. Waiting for them (a publish that never gets its confirm)
        // would only keep the worker from reconnecting: give them a moment, then leave them.
        if tokio::time::timeout(LOST_TASKS_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                unfinished = tracker.len(),
                "not waiting for tasks of the lost connection"
            );
        }
    } else if tokio::time::timeout(Duration::from_secs(cfg.grace_secs), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unfinished = tracker.len(),
            "grace period over: handing unfinished tasks back to the queue"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(HAND_BACK_TIMEOUT, tracker.wait()).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "worker stopped".into())).await;
    tracing::info!("consumer stopped");
    outcome
}
