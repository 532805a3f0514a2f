//! The one module that declares SecFlow's RabbitMQ topology, under a namespace.
//!
//! ```text
//! {ns}.tasks  (topic) ──type──► {ns}.work.{pool}  (quorum, delivery limit, DLX {ns}.dlx)
//! {ns}.delay  (headers, sf-delay-bucket) ──► {ns}.delay.{ms} (quorum, TTL) ──DLX ""──► work queue
//! {ns}.dlx    (fanout) ──► {ns}.dlq (quorum, no TTL, no max length)
//! {ns}.events (topic)  ──► whoever listens
//!     └─ node.completed, workflow.completed, workflow.failed ──► {ns}.hooks (quorum)
//! ```
//!
//! A retry copy is published to the delay exchange with the *work queue's name* as routing key;
//! when its TTL expires the delay queue dead-letters it to the default exchange, which routes by
//! that key straight back to the queue it came from. Every message of a delay queue has the
//! same TTL, so expiry order is arrival order and nothing waits behind a longer delay.

use crate::{Error, Result};
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use std::{collections::HashSet, sync::Mutex, time::Duration};

mod delay;

pub use delay::{delay_bucket, delay_ladder};

/// The broker never drops from the DLQ; 4.x would otherwise default to 20 redeliveries.
/// (`-1`, "unlimited", only exists from 4.0 on, so a bound no inspector can reach is used.)
const DLQ_DELIVERY_LIMIT: i64 = 1_000_000;

/// Nor from the hooks queue: a message whose deliveries were cut short (its worker died) comes
/// back as often as it takes.
const HOOKS_DELIVERY_LIMIT: i64 = 1_000_000;

/// A validated namespace: lowercase letters, digits, `-` and `_`, 1 to 48 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        check_name("namespace", name, 48)?;
        Ok(Self(name.to_string()))
    }

    /// The namespace as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} `{name}` must be 1 to {max} characters of a-z, 0-9, '-' or '_'"
        )))
    }
}

/// Names and declarations of a namespace's exchanges and queues.
#[derive(Debug)]
pub struct Topology {
    ns: Namespace,
    delivery_limit: u32,
    declared_delays: Mutex<HashSet<u64>>,
}

impl Topology {
    /// The topology of `ns`, whose work queues allow `delivery_limit` deliveries.
    pub fn new(ns: Namespace, delivery_limit: u32) -> Self {
        Self {
            ns,
            delivery_limit,
            declared_delays: Mutex::new(HashSet::new()),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Topic exchange tasks are published to, routing key = node type.
    pub fn tasks_exchange(&self) -> String {
        format!("{}.tasks", self.ns.0)
    }

    /// Topic exchange of lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.ns.0)
    }

    /// Headers exchange in front of the delay queues.
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.ns.0)
    }

    /// Dead-letter exchange (fanout to the DLQ).
    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.ns.0)
    }

    /// The dead-letter queue.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.ns.0)
    }

    /// Exclusive queue whose existence is the DLQ inspectors' lock.
    pub fn dlq_lock(&self) -> String {
        format!("{}.dlq.lock", self.ns.0)
    }

    /// Takes the inspectors' lock: an exclusive queue only one connection can hold, deleted by
    /// the broker when that connection ends, so a killed inspector never leaves it stale.
    /// Fails with RESOURCE_LOCKED while another connection holds it.
    pub async fn lock_dlq(&self, ch: &Channel) -> std::result::Result<(), lapin::Error> {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(
            self.dlq_lock().as_str().into(),
            options,
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Work queue of `pool`.
    pub fn work_queue(&self, pool: &str) -> String {
        format!("{}.work.{pool}", self.ns.0)
    }

    /// The queue hook dispatchers consume: completions and run ends.
    pub fn hooks_queue(&self) -> String {
        format!("{}.hooks", self.ns.0)
    }

    /// Declares the hooks queue and binds it to the events exchange for the kinds hooks fire
    /// on ([`crate::hooks::ROUTING_KEYS`]); declares the core first. Events published after
    /// this returns land in it. No dead-letter exchange: its messages are events, not tasks.
    pub async fn declare_hooks(&self, ch: &Channel) -> Result<()> {
        self.declare_core(ch).await?;
        let mut args = quorum_args();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(HOOKS_DELIVERY_LIMIT),
        );
        let queue = self.hooks_queue();
        declare_queue(ch, &queue, args).await?;
        for key in crate::hooks::ROUTING_KEYS {
            ch.queue_bind(
                queue.as_str().into(),
                self.events_exchange().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// The audit trail: a RabbitMQ stream bound to every event of the namespace.
    pub fn audit_stream(&self) -> String {
        format!("{}.audit", self.ns.0)
    }

    /// Delay queue holding messages for `bucket_ms`.
    pub fn delay_queue(&self, bucket_ms: u64) -> String {
        format!("{}.delay.{bucket_ms}", self.ns.0)
    }

    /// Declares the exchanges and the DLQ. Harmless when they exist with the same settings.
    pub async fn declare_core(&self, ch: &Channel) -> Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            (self.tasks_exchange(), ExchangeKind::Topic),
            (self.events_exchange(), ExchangeKind::Topic),
            (self.delay_exchange(), ExchangeKind::Headers),
            (self.dlx(), ExchangeKind::Fanout),
        ] {
            ch.exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .map_err(|e| conflict("exchange", &name, e))?;
        }
        let mut args = quorum_args();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DLQ_DELIVERY_LIMIT),
        );
        let dlq = self.dlq();
        declare_queue(ch, &dlq, args).await?;
        ch.queue_bind(
            dlq.as_str().into(),
            self.dlx().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        // Every event is appended to the audit trail as it is published, whoever listens.
        let audit = self.audit_stream();
        declare_queue(ch, &audit, stream_args()).await?;
        ch.queue_bind(
            audit.as_str().into(),
            self.events_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Declares the work queue of `pool` and binds it to the routing-key `patterns`
    /// (`#` = every type). Declares the core first.
    pub async fn declare_pool(&self, ch: &Channel, pool: &str, patterns: &[String]) -> Result<()> {
        check_name("pool", pool, 64)?;
        self.declare_core(ch).await?;
        let mut args = quorum_args();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert("x-dead-letter-exchange".into(), long_str(&self.dlx()));
        let queue = self.work_queue(pool);
        declare_queue(ch, &queue, args).await?;
        for pattern in patterns {
            ShortString::try_new(pattern.as_str())
                .map_err(|_| Error::Config(format!("binding pattern `{pattern}` is too long")))?;
            ch.queue_bind(
                queue.as_str().into(),
                self.tasks_exchange().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Makes sure the delay queue of `bucket_ms` exists (declared once per process).
    pub async fn ensure_delay(&self, ch: &Channel, bucket_ms: u64) -> Result<()> {
        if self.lock_delays().contains(&bucket_ms) {
            return Ok(());
        }
        let mut args = quorum_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(bucket_ms).unwrap_or(i64::MAX)),
        );
        args.insert("x-dead-letter-exchange".into(), long_str(""));
        let queue = self.delay_queue(bucket_ms);
        declare_queue(ch, &queue, args).await?;
        let mut binding = FieldTable::default();
        binding.insert("x-match".into(), long_str("all"));
        binding.insert(
            crate::headers::DELAY_BUCKET.into(),
            long_str(&bucket_ms.to_string()),
        );
        ch.queue_bind(
            queue.as_str().into(),
            self.delay_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            binding,
        )
        .await?;
        self.lock_delays().insert(bucket_ms);
        Ok(())
    }

    fn lock_delays(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // The set only caches declarations: a poisoned lock still holds a usable set.
        self.declared_delays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes every queue and exchange of the namespace for `pools` (tests, `teardown`).
    pub async fn delete_all(&self, ch: &Channel, pools: &[&str]) -> Result<()> {
        let mut queues: Vec<String> = pools.iter().map(|p| self.work_queue(p)).collect();
        queues.push(self.dlq());
        queues.push(self.hooks_queue());
        queues.push(self.audit_stream());
        queues.extend(
            delay_ladder(Duration::from_millis(crate::retry::policy::MAX_DELAY_MS))
                .into_iter()
                .map(|b| self.delay_queue(b)),
        );
        for q in queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [
            self.tasks_exchange(),
            self.events_exchange(),
            self.delay_exchange(),
            self.dlx(),
        ] {
            ch.exchange_delete(x.as_str().into(), Default::default())
                .await?;
        }
        self.lock_delays().clear();
        Ok(())
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Quorum queue with at-least-once dead-lettering (which needs `reject-publish` overflow).
/// How long the audit trail keeps events (RabbitMQ's `x-max-age` syntax).
pub const AUDIT_MAX_AGE: &str = "7D";
/// Most bytes the audit trail keeps.
pub const AUDIT_MAX_BYTES: i64 = 1 << 30;

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_str("quorum"));
    args.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
    args.insert("x-overflow".into(), long_str("reject-publish"));
    args
}

/// The audit stream's retention: 7 days or 1 GiB, whichever comes first, dropped a 16 MiB
/// segment at a time. Operators change it with a RabbitMQ policy (`max-age`,
/// `max-length-bytes`), which overrides these without a redeclare.
fn stream_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_str("stream"));
    args.insert("x-max-age".into(), long_str(AUDIT_MAX_AGE));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(AUDIT_MAX_BYTES),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(16 << 20),
    );
    args
}

async fn declare_queue(ch: &Channel, name: &str, args: FieldTable) -> Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), options, args)
        .await
        .map_err(|e| conflict("queue", name, e))?;
    Ok(())
}

/// Turns PRECONDITION_FAILED into a [`Error::TopologyConflict`] naming the object.
fn conflict(kind: &'static str, name: &str, e: lapin::Error) -> Error {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    {
        return Error::TopologyConflict {
            kind,
            name: name.into(),
            detail: amqp.get_message().to_string(),
        };
    }
    Error::Amqp(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Namespace::new("t-1_a").is_ok());
        for bad in ["", "UPPER", "dot.ted", &"x".repeat(49)] {
            assert!(Namespace::new(bad).is_err(), "{bad}");
        }
    }
}
