//! The hook dispatcher of one broker connection: consumes `{ns}.hooks` on a channel of its own
//! (prefetch [`PREFETCH`]), apart from the task consumer, and acks each message once every
//! delivery of its events ended.
//!
//! The queue exists once a worker with fleet hooks started or a recipe with hooks was
//! submitted. A worker that did not declare it checks for it (a passive declare) at start and
//! every [`CHECK_EVERY`] after, and consumes it once it exists. When told to stop, the
//! dispatcher stops consuming and gives deliveries in flight the grace period; what is still
//! unfinished then is left unacked, and the broker delivers it again (to another worker).

use super::{Hooks, deliver::Item};
use crate::events::EventBatcher;
use futures_util::{StreamExt, future::join_all};
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
};
use secflow_common::{
    Topology,
    deadline::{BROKER_OP, CLOSE, within},
    events::{RawEvent, TaskEvent, decode_raw},
};
use sha2::{Digest, Sha256};
use std::{sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Hook messages a worker holds at once.
const PREFETCH: u16 = 8;
/// How often a worker looks for the hooks queue while it does not consume it.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Longest time a message is held: its deliveries end well within it, but a message whose
/// many deliveries queue behind a slow receiver is handed back (finished ones are not
/// repeated) before the broker's `consumer_timeout` (30 min) would close the channel.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// Pause before handing back a message whose run hooks could not be read (Redis).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long messages cut at a stop get to notice.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Runs the dispatcher on `conn` until `stop` (stop consuming, let deliveries finish within
/// `grace`) or `abort` (the connection is lost: leave everything to the broker).
pub async fn dispatch(
    conn: &Connection,
    topology: &Topology,
    hooks: Arc<Hooks>,
    events: EventBatcher,
    stop: &CancellationToken,
    abort: &CancellationToken,
    grace: Duration,
) {
    let queue = topology.hooks_queue();
    let run = Run {
        hooks: &hooks,
        events: &events,
        tracker: TaskTracker::new(),
        cut: CancellationToken::new(),
        stop,
        abort,
    };
    let mut channels = Vec::new();
    // A lost connection ends at once whatever broker operation is under way: the worker must
    // not reconnect later for it.
    tokio::select! {
        () = abort.cancelled() => {}
        () = run.serve(conn, &queue, &mut channels) => {}
    }
    run.tracker.close();
    if !abort.is_cancelled() && !run.tracker.is_empty() {
        tracing::info!(
            in_flight = run.tracker.len(),
            "stopping hooks: finishing deliveries in flight"
        );
        tokio::select! {
            _ = tokio::time::timeout(grace, run.tracker.wait()) => {}
            () = abort.cancelled() => {}
        }
    }
    run.cut.cancel();
    let _ = tokio::time::timeout(CUT_WAIT, run.tracker.wait()).await;
    if abort.is_cancelled() {
        return;
    }
    for ch in channels {
        let _ = within(
            "closing the hooks channel",
            CLOSE,
            ch.close(200, "stopped".into()),
        )
        .await;
    }
}

/// Whether `queue` exists: a passive declare on a short-lived connection of its own. Not on
/// the worker's connection: the broker answers a missing queue by closing the channel, and
/// the worker takes an error on its connection for the loss of that connection (it would hand
/// its tasks back and reconnect every time it looked).
async fn queue_exists(amqp_url: &str, queue: &str) -> bool {
    let check = async {
        let conn = secflow_common::amqp::connect(amqp_url, "secflow-worker-hooks-check", BROKER_OP)
            .await
            .map_err(|e| e.to_string())?;
        let found = secflow_common::amqp::passive_declare(&conn, queue)
            .await
            .map(drop);
        let _ = conn.close(200, "checked".into()).await;
        match found {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
                if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    };
    match within("checking for the hooks queue", BROKER_OP, check).await {
        Ok(Ok(exists)) => exists,
        Ok(Err(e)) => {
            tracing::debug!(queue, error = %e, "could not check for the hooks queue");
            false
        }
        Err(e) => {
            tracing::debug!(queue, error = %e, "could not check for the hooks queue");
            false
        }
    }
}

/// One dispatcher's shared parts.
struct Run<'a> {
    hooks: &'a Arc<Hooks>,
    events: &'a EventBatcher,
    tracker: TaskTracker,
    /// Ends messages in flight unacked (the stop's grace is over).
    cut: CancellationToken,
    stop: &'a CancellationToken,
    abort: &'a CancellationToken,
}

impl Run<'_> {
    /// Looks for the queue and consumes it while it exists, until told to stop.
    async fn serve(&self, conn: &Connection, queue: &str, channels: &mut Vec<Channel>) {
        let mut warned = false;
        while !self.stop.is_cancelled() {
            if queue_exists(self.hooks.amqp_url(), queue).await {
                if self.hooks.can_deliver() {
                    match self.consume(conn, queue, channels).await {
                        Ok(()) => return,
                        Err(e) => tracing::warn!(queue, error = %e, "hook consumer ended"),
                    }
                } else if !warned {
                    warned = true;
                    tracing::warn!(
                        queue,
                        "the hooks queue exists but this worker has no hook secret (--hook-secret): it delivers no hooks"
                    );
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }

    /// Consumes `queue` until told to stop (`Ok`) or the consumer ends (`Err`). The channel is
    /// kept in `channels` (messages in flight are acked on it) and closed at the end.
    async fn consume(
        &self,
        conn: &Connection,
        queue: &str,
        channels: &mut Vec<Channel>,
    ) -> Result<(), String> {
        let tag = format!(
            "hooks-{}-{}",
            self.hooks.worker_id,
            uuid::Uuid::new_v4().simple()
        );
        let opened = within("opening the hooks consumer", BROKER_OP, async {
            let ch = conn.create_channel().await?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            let options = BasicConsumeOptions::default();
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    tag.as_str().into(),
                    options,
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((ch, consumer))
        })
        .await;
        let (ch, mut consumer) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        tracing::info!(queue, prefetch = PREFETCH, "delivering hooks");
        let result = loop {
            tokio::select! {
                () = self.stop.cancelled() => break Ok(()),
                () = self.abort.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let (hooks, events) = (Arc::clone(self.hooks), self.events.clone());
                        self.tracker.spawn(handle(hooks, events, delivery, self.cut.clone()));
                    }
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Err("the broker cancelled the hooks consumer".into()),
                },
            }
        };
        if result.is_ok() && !self.abort.is_cancelled() {
            let cancel = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let _ = within("cancelling the hooks consumer", CLOSE, cancel).await;
        }
        channels.push(ch);
        result
    }
}

/// Delivers a message's events and acks it; hands it back when the run hooks could not be read
/// or its deadline passed; leaves it unacked when cut.
async fn handle(
    hooks: Arc<Hooks>,
    events: EventBatcher,
    delivery: Delivery,
    cut: CancellationToken,
) {
    let work = tokio::time::timeout(MESSAGE_DEADLINE, process(&hooks, &events, &delivery.data));
    let outcome = tokio::select! {
        () = cut.cancelled() => return,
        outcome = work => outcome,
    };
    let settled = match outcome {
        Ok(Ok(())) => {
            let ack = delivery.acker.ack(BasicAckOptions::default());
            within("acking a hooks message", BROKER_OP, ack).await
        }
        failed => {
            match failed {
                Ok(Err(e)) => tracing::warn!(error = %e, "a hooks message goes back to the queue"),
                _ => tracing::warn!(
                    deadline_secs = MESSAGE_DEADLINE.as_secs(),
                    "the deliveries of a hooks message did not end in time; it goes back to the queue (finished deliveries are not repeated)"
                ),
            }
            tokio::select! {
                () = cut.cancelled() => return,
                () = tokio::time::sleep(RETRY_PAUSE) => {}
            }
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            within(
                "handing back a hooks message",
                BROKER_OP,
                delivery.acker.nack(requeue),
            )
            .await
        }
    };
    match settled {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not settle a hooks message; the broker delivers it again")
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not settle a hooks message; the broker delivers it again")
        }
    }
}

/// Delivers every event of a message to each hook it fires; an error means the message must
/// wait (a run's hooks could not be read).
async fn process(hooks: &Hooks, events: &EventBatcher, body: &[u8]) -> Result<(), String> {
    let raws = match decode_raw(body) {
        Ok(raws) => raws,
        Err(e) => {
            // Never deliverable: acked so that it does not come back for ever.
            tracing::warn!(error = %e, "a hooks message is not a list of events; dropped");
            return Ok(());
        }
    };
    let mut plan = Vec::new();
    for raw in &raws {
        let applicable = hooks.applicable(&raw.event).await?;
        if !applicable.is_empty() {
            plan.push((item(raw), applicable));
        }
    }
    let deliveries = plan.iter().flat_map(|(item, applicable)| {
        applicable
            .iter()
            .map(move |hook| hooks.deliver(hook, item, events))
    });
    join_all(deliveries).await;
    Ok(())
}

fn item(raw: &RawEvent) -> Item<'_> {
    Item {
        event: &raw.event,
        body: raw.json.get().as_bytes(),
        event_id: stable_id(&raw.event, raw.json.get()),
    }
}

/// The event's id; for an event published without one, `SUBJECT:KIND` (the task of a
/// completion, the run of a run end), else a digest of its JSON: the same on every copy.
fn stable_id(event: &TaskEvent, json: &str) -> String {
    if let Some(id) = &event.event_id {
        return id.clone();
    }
    let subject = if event.kind.starts_with("workflow.") {
        event.run_id
    } else {
        event.task_id
    };
    match subject {
        Some(id) => format!("{id}:{}", event.kind),
        None => hex::encode(Sha256::digest(json.as_bytes())),
    }
}
