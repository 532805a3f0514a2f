//! Exclusive access to a namespace's DLQ.
//!
//! The inspector first takes a lock, an exclusive queue `{ns}.dlq.lock` that only one
//! connection can hold, so a second inspector waits (or gives up with a clear error) instead of
//! seeing half the queue; the broker deletes it when the connection ends, so a killed inspector
//! never leaves it stale. It then takes every message of the DLQ with manual ack. Messages the command does
//! not act on are handed back with one `nack(requeue)` and keep their place; messages it does
//! act on are acked only after their new copy is confirmed. If the inspector dies at any point,
//! the broker returns every unacked message to the DLQ: none is ever in neither queue.

use crate::record::DeadRecord;
use futures_util::StreamExt;
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
};
use secflow_common::{Topology, amqp, config::BrokerArgs};
use std::time::{Duration, Instant};

/// Most messages one run holds (AMQP's prefetch is 16 bits); a larger DLQ is worked on in runs.
pub const MAX_HELD: u16 = u16::MAX;

/// How long to wait for the next message the queue said it held.
const IDLE: Duration = Duration::from_secs(2);

/// Inspector failures, each telling the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    /// Connecting, declaring or talking to the broker failed.
    #[error(transparent)]
    Broker(#[from] secflow_common::Error),
    /// Another inspector holds the DLQ.
    #[error(
        "another dlq-inspector is working on `{0}` (it holds the lock queue); retry when it is done, or raise --lock-wait"
    )]
    Locked(String),
    /// A task id that is not in the DLQ.
    #[error("no dead-lettered task with id {id} in `{queue}` ({count} messages checked)")]
    UnknownId {
        id: String,
        queue: String,
        count: usize,
    },
    /// A filter that selects nothing.
    #[error("no dead-lettered task matches {filters} ({count} messages checked)")]
    NoMatch { filters: String, count: usize },
    /// A file could not be written; nothing was removed.
    #[error("cannot write {path}: {source}; nothing was removed from the DLQ")]
    Export {
        path: String,
        source: std::io::Error,
    },
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
}

impl From<lapin::Error> for InspectorError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e.into())
    }
}

/// The DLQ's messages, held unacked by this inspector until it settles or releases them.
pub struct Session {
    conn: Connection,
    channel: Channel,
    /// The namespace's topology.
    pub topology: Topology,
    /// Every message read, in queue order.
    pub messages: Vec<Delivery>,
    /// What each message says about itself (same order).
    pub records: Vec<DeadRecord>,
    settled: Vec<bool>,
}

impl Session {
    /// Connects and takes the DLQ, waiting up to `lock_wait` for another inspector to finish.
    pub async fn open(broker: &BrokerArgs, lock_wait: Duration) -> Result<Self, InspectorError> {
        broker.validate()?;
        let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
        let timeout = Duration::from_secs(broker.connect_timeout_secs);
        let conn = amqp::connect(&broker.amqp_url, "secflow-dlq-inspector", timeout).await?;
        let declare = conn.create_channel().await?;
        topology.declare_core(&declare).await?;
        let _ = declare.close(200, "declared".into()).await;
        let queue = topology.dlq();
        let deadline = Instant::now() + lock_wait;
        let (channel, consumer, count) = loop {
            match take(&conn, &topology).await {
                Ok(taken) => break taken,
                Err(e) if is_locked(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) if is_locked(&e) => return Err(InspectorError::Locked(queue)),
                Err(e) => return Err(e.into()),
            }
        };
        if count > u32::from(MAX_HELD) {
            tracing::warn!(
                count,
                "the DLQ holds more messages than one run can take; this run covers the first {MAX_HELD}"
            );
            eprintln!(
                "note: {queue} holds {count} messages; this run covers the first {MAX_HELD}, run again for the rest"
            );
        }
        let messages = read_all(consumer, count.min(u32::from(MAX_HELD))).await?;
        let records = messages
            .iter()
            .map(|d| DeadRecord::read(&d.properties, &d.data))
            .collect();
        let settled = vec![false; messages.len()];
        Ok(Self {
            conn,
            channel,
            topology,
            messages,
            records,
            settled,
        })
    }

    /// Acks message `i`: it leaves the DLQ for good (its copy, if any, is already confirmed).
    pub async fn ack(&mut self, i: usize) -> Result<(), InspectorError> {
        self.messages[i]
            .acker
            .ack(BasicAckOptions::default())
            .await?;
        self.settled[i] = true;
        Ok(())
    }

    /// Hands every message not acked back to the DLQ, in place, and disconnects.
    pub async fn release(self) -> Result<(), InspectorError> {
        let last_unsettled = self
            .messages
            .iter()
            .zip(&self.settled)
            .rev()
            .find(|(_, settled)| !**settled)
            .map(|(d, _)| d);
        if let Some(delivery) = last_unsettled {
            // One frame returns every unsettled delivery up to this tag; acked ones are gone.
            delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await?;
        }
        let _ = self.channel.close(200, "released".into()).await;
        let _ = self.conn.close(200, "inspector done".into()).await;
        Ok(())
    }

    /// The connection, for publishing copies.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

async fn take(
    conn: &Connection,
    topology: &Topology,
) -> Result<(Channel, Consumer, u32), lapin::Error> {
    let channel = conn.create_channel().await?;
    topology.lock_dlq(&channel).await?;
    let queue = topology.dlq();
    let queue = queue.as_str();
    // Every message is held until the command decides about it. Prefetch 0 would not do:
    // quorum queues cap an "unlimited" consumer at 2,000 unacked messages.
    channel
        .basic_qos(MAX_HELD, BasicQosOptions::default())
        .await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?
        .message_count();
    let consumer = channel
        .basic_consume(
            queue.into(),
            "dlq-inspector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer, count))
}

fn is_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED)))
}

/// Reads the `count` messages the queue held when it was taken. Messages dead-lettered
/// meanwhile stay for the next run (the broker returns them when the channel closes).
async fn read_all(mut consumer: Consumer, count: u32) -> Result<Vec<Delivery>, InspectorError> {
    let mut out = Vec::with_capacity(count as usize);
    while out.len() < count as usize {
        match tokio::time::timeout(IDLE, consumer.next()).await {
            Ok(Some(delivery)) => out.push(delivery?),
            // Fewer than counted (another reader, a purge): what arrived is all there is.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}
