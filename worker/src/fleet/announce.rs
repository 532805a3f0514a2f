//! The fleet's own broker connection, separate from the task path: publishes fleet events
//! (`degradation.changed`, `queue.backlog`, `worker.unresponsive`, `healing.action`) and reads
//! queue depths. Opened when first needed, dropped on any failure and opened again on the next
//! use, so a broker outage costs a few missed readings, never a stuck controller.

use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    types::FieldTable,
};
use secflow_common::{
    Topology, amqp,
    deadline::{self, BROKER_OP},
    events::TaskEvent,
};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::Mutex;

/// A queue's depth and consumers, as a passive declare reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Depth {
    /// Messages ready (not counting unacked ones).
    pub ready: u64,
    /// Consumers subscribed.
    pub consumers: u64,
}

/// What a look at the DLQ's first message found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqHead {
    /// The DLQ holds nothing.
    Empty,
    /// Its first (oldest) message was dead-lettered at this time, ms since the epoch (`None`
    /// when it carries no time at all).
    At(Option<u64>),
    /// Nothing was read: an inspector holds the DLQ, or the broker did not answer.
    Unknown,
}

struct Link {
    conn: Connection,
    publisher: amqp::Publisher,
    channel: Channel,
}

/// Publishes fleet events and reads queue depths on a connection of its own.
pub struct Announcer {
    url: String,
    name: String,
    topology: Arc<Topology>,
    worker_id: String,
    link: Mutex<Option<Link>>,
}

impl Announcer {
    /// An announcer for `worker_id` on `url`; connects on first use.
    pub fn new(url: &str, topology: Arc<Topology>, worker_id: &str) -> Self {
        Self {
            url: url.to_string(),
            name: format!("secflow-fleet {worker_id}"),
            topology,
            worker_id: worker_id.to_string(),
            link: Mutex::new(None),
        }
    }

    async fn open(&self) -> secflow_common::Result<Link> {
        let conn = amqp::connect(&self.url, &self.name, BROKER_OP).await?;
        let publisher = amqp::Publisher::new(&conn).await?;
        let channel = deadline::within("a new channel", BROKER_OP, conn.create_channel()).await??;
        Ok(Link {
            conn,
            publisher,
            channel,
        })
    }

    /// Publishes one event of `kind` whose `output` is `detail`, confirmed. A failure is
    /// logged and returned; the next call reconnects.
    pub async fn event(&self, kind: &str, detail: Value) -> Result<(), String> {
        let mut event = TaskEvent::new(kind, &self.worker_id);
        event.output = Some(detail);
        self.publish(event).await
    }

    /// Publishes `event` (under its kind), confirmed; as [`Announcer::event`].
    pub async fn publish(&self, mut event: TaskEvent) -> Result<(), String> {
        event.event_id = Some(uuid::Uuid::new_v4().to_string());
        let kind = event.kind.clone();
        let kind = kind.as_str();
        let body = serde_json::to_vec(&[event]).unwrap_or_default();
        let exchange = self.topology.events_exchange();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let mut link = self.link.lock().await;
        let result = async {
            if link.is_none() {
                *link = Some(self.open().await?);
            }
            match link.as_ref() {
                Some(l) => {
                    l.publisher
                        .publish(&exchange, kind, &body, props, false)
                        .await
                }
                None => Ok(()),
            }
        }
        .await;
        if let Err(e) = &result {
            tracing::warn!(kind, error = %e, "fleet event not published");
            self.drop_link(&mut link).await;
        }
        result.map_err(|e| e.to_string())
    }

    /// `queue`'s depth, `None` if it does not exist or the broker does not answer.
    pub async fn depth(&self, queue: &str) -> Option<Depth> {
        let mut link = self.link.lock().await;
        if link.is_none() {
            *link = self.open().await.ok();
        }
        let channel = link.as_ref()?.channel.clone();
        let declare = channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        );
        match deadline::within("a passive queue declare", BROKER_OP, declare).await {
            Ok(Ok(q)) => Some(Depth {
                ready: u64::from(q.message_count()),
                consumers: u64::from(q.consumer_count()),
            }),
            _ => {
                // A missing queue closes the channel; anything else may be the connection.
                self.drop_link(&mut link).await;
                None
            }
        }
    }

    /// Reads when the DLQ's first message was dead-lettered, and hands it back at once.
    ///
    /// The DLQ is a quorum queue, which reports no message times; its first message is read
    /// the way `dlq-inspector` reads it: under the inspector's lock (skipped while an inspector
    /// holds it, so the two never race), with a `basic.get` and a `nack(requeue)` that gives it
    /// back its place at the head. Each look raises the message's delivery count by one against
    /// the DLQ's bound of a million. It runs on a connection of its own, closed afterwards
    /// (which also releases the lock, and returns the message if the nack never went out): a
    /// message the client cannot parse costs this look, never the fleet's link.
    pub async fn dlq_head(&self) -> DlqHead {
        let Ok(conn) = amqp::connect(&self.url, &format!("{} dlq-age", self.name), BROKER_OP).await
        else {
            return DlqHead::Unknown;
        };
        let head = match deadline::within("a new channel", BROKER_OP, conn.create_channel()).await {
            Ok(Ok(ch)) => {
                let head = self.read_dlq_head(&ch).await;
                // Closed before the connection: a channel left to close itself while the
                // connection closes makes the client log an error.
                let _ = deadline::within("closing a channel", BROKER_OP, ch.close(200, "".into()))
                    .await;
                head
            }
            _ => None,
        };
        amqp::close(&conn, "DLQ age read").await;
        head.unwrap_or(DlqHead::Unknown)
    }

    /// [`Announcer::dlq_head`] on `ch`; `None` when the lock or the broker says no.
    async fn read_dlq_head(&self, ch: &Channel) -> Option<DlqHead> {
        deadline::within("taking the DLQ lock", BROKER_OP, self.topology.lock_dlq(ch))
            .await
            .ok()?
            .ok()?;
        let get = ch.basic_get(
            self.topology.dlq().as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let got = deadline::within("a basic.get on the DLQ", BROKER_OP, get)
            .await
            .ok()?
            .ok()?;
        let Some(message) = got else {
            return Some(DlqHead::Empty);
        };
        let at = secflow_common::dead_letter::dead_lettered_ms(&message.delivery.properties);
        let nack = message.delivery.acker.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        });
        let _ = deadline::within("handing the DLQ's head back", BROKER_OP, nack).await;
        Some(DlqHead::At(at))
    }

    async fn drop_link(&self, link: &mut Option<Link>) {
        if let Some(l) = link.take() {
            amqp::close(&l.conn, "fleet link reset").await;
        }
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let mut link = self.link.lock().await;
        self.drop_link(&mut link).await;
    }
}
