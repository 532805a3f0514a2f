//! The fleet's own broker connection, separate from the task path: publishes fleet events
//! (`degradation.changed`, `queue.backlog`, `worker.unresponsive`, `healing.action`) and reads
//! queue depths. Opened when first needed, dropped on any failure and opened again on the next
//! use, so a broker outage costs a few missed readings, never a stuck controller.

use lapin::{
    BasicProperties, Channel, Connection, options::QueueDeclareOptions, types::FieldTable,
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
