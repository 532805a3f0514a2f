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
use secflow_common::{Topology, amqp, config::BrokerArgs, headers as h};
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
    /// Redis (the fleet's controls and breaker states) did not answer or refused.
    #[error(
        "Redis at {url}: {detail}; is it running and is --redis-url / REDIS_URL right? Nothing was changed by the failed call"
    )]
    Redis {
        /// The Redis URL, password masked.
        url: String,
        /// What failed.
        detail: String,
    },
}

impl From<lapin::Error> for InspectorError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e.into())
    }
}

/// The DLQ's messages, held unacked by this inspector until it settles or releases them.
pub struct Session {
    lock: Connection,
    conn: Connection,
    channel: Channel,
    /// The namespace's topology.
    pub topology: Topology,
    /// Every message read, in queue order.
    pub messages: Vec<Delivery>,
    /// What each message says about itself (same order).
    pub records: Vec<DeadRecord>,
    /// Who acts on the messages, as the audit trail records it: `$USER` for the command line,
    /// the console's caller (`console:operator`) for the console.
    pub by: String,
    settled: Vec<bool>,
}

impl Session {
    /// Connects and takes the DLQ, waiting up to `lock_wait` for another inspector to finish.
    pub async fn open(broker: &BrokerArgs, lock_wait: Duration) -> Result<Self, InspectorError> {
        broker.validate()?;
        let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
        let timeout = Duration::from_secs(broker.connect_timeout_secs);
        // The lock lives on a connection of its own: a message the client cannot parse drops
        // the reading connection, and the DLQ must stay ours while it is repaired.
        let lock = amqp::connect(&broker.amqp_url, "secflow-dlq-inspector-lock", timeout).await?;
        let declare = bounded("opening a channel", lock.create_channel()).await??;
        bounded("declaring the DLQ", topology.declare_core(&declare)).await??;
        let queue = topology.dlq();
        let deadline = Instant::now() + lock_wait;
        loop {
            // A refused exclusive declare closes its channel: each try gets a new one.
            let channel = bounded("opening a channel", lock.create_channel()).await??;
            match bounded("taking the DLQ lock", topology.lock_dlq(&channel)).await? {
                Ok(()) => break,
                Err(e) if is_locked(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) if is_locked(&e) => return Err(InspectorError::Locked(queue)),
                Err(e) => return Err(InspectorError::from(e)),
            }
        }
        let mut repaired = false;
        let (conn, channel, messages) = loop {
            let conn = amqp::connect(&broker.amqp_url, "secflow-dlq-inspector", timeout).await?;
            let (channel, consumer, count) =
                bounded("subscribing to the DLQ", take(&conn, &topology)).await??;
            if count > u32::from(MAX_HELD) {
                tracing::warn!(
                    count,
                    "the DLQ holds more messages than one run can take; this run covers the first {MAX_HELD}"
                );
                eprintln!(
                    "note: {queue} holds {count} messages; this run covers the first {MAX_HELD}, run again for the rest"
                );
            }
            let read = read_all(consumer, count.min(u32::from(MAX_HELD))).await;
            let intact = read.is_ok() && conn.status().connected();
            if intact || repaired {
                if !intact {
                    let _ = bounded("closing", conn.close(200, "giving up".into())).await;
                }
                break (conn, channel, read?);
            }
            // The connection dropped while reading: a message the client cannot parse (names
            // that are not UTF-8). Rewrite such messages as readable records, then read again.
            let _ = bounded("closing", conn.close(200, "repairing".into())).await;
            let fixed = repair(&broker.amqp_url, &topology, count).await?;
            eprintln!(
                "note: {fixed} message(s) in {queue} could not be read by the AMQP client; they are kept as readable records with class malformed, code unparseable"
            );
            repaired = true;
        };
        let records = messages
            .iter()
            .map(|d| DeadRecord::read(&d.properties, &d.data))
            .collect();
        let settled = vec![false; messages.len()];
        Ok(Self {
            lock,
            conn,
            channel,
            topology,
            messages,
            records,
            by: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            settled,
        })
    }

    /// Acks message `i`: it leaves the DLQ for good (its copy, if any, is already confirmed).
    pub async fn ack(&mut self, i: usize) -> Result<(), InspectorError> {
        bounded(
            "an ack",
            self.messages[i].acker.ack(BasicAckOptions::default()),
        )
        .await??;
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
            bounded(
                "handing messages back",
                delivery.acker.nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                }),
            )
            .await??;
        }
        let _ = bounded(
            "closing the channel",
            self.channel.close(200, "released".into()),
        )
        .await;
        let _ = bounded(
            "closing the connection",
            self.conn.close(200, "inspector done".into()),
        )
        .await;
        let _ = bounded(
            "releasing the lock",
            self.lock.close(200, "inspector done".into()),
        )
        .await;
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

/// Deadline of every broker operation of the inspector.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// `fut` with the inspector's deadline.
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, InspectorError> {
    Ok(secflow_common::deadline::within(what, OP_TIMEOUT, fut).await?)
}

/// Takes up to `count` (+ a margin) messages of the DLQ with the raw client, replaces each one
/// the regular client cannot parse by a readable record of it, and hands the others back in
/// place. How many were replaced.
async fn repair(url: &str, topology: &Topology, count: u32) -> Result<usize, InspectorError> {
    use secflow_common::rawamqp::{RawClient, RawValue, unparseable_dead_letter};
    // Only a URL the raw reader cannot use is a configuration error; the rest is the broker.
    let raw_err = |e: secflow_common::rawamqp::RawError| {
        InspectorError::Broker(match e {
            secflow_common::rawamqp::RawError::Url(_) => {
                secflow_common::Error::Config(e.to_string())
            }
            e => secflow_common::Error::ConnectionLost(format!(
                "repairing unparseable dead letters ({e})"
            )),
        })
    };
    let queue = topology.dlq();
    let mut raw = RawClient::connect(url, Duration::from_secs(10))
        .await
        .map_err(raw_err)?;
    let mut fixed = 0;
    let result = async {
        let taken = raw.take(&queue, count as usize + 16).await?;
        for msg in &taken {
            let unreadable = msg.unreadable_fields();
            if unreadable.is_empty() {
                continue;
            }
            let origin = match msg.properties.header(h::ORIGIN_QUEUE) {
                Some(RawValue::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => "unknown".to_string(),
            };
            let props = unparseable_dead_letter(msg, &unreadable, &origin, "dlq-inspector");
            raw.publish(b"", queue.as_bytes(), &props, &msg.body)
                .await?;
            raw.ack(msg.delivery_tag, false).await?;
            fixed += 1;
        }
        raw.nack_all().await
    }
    .await;
    raw.close().await;
    result.map_err(raw_err)?;
    Ok(fixed)
}
