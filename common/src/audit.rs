//! The audit trail: every event of a namespace (errors, retries, dead letters, requeues, purges,
//! breaker transitions, operator and healing actions, run and node lifecycle), appended as it
//! is published to a RabbitMQ stream bound to the events exchange
//! ([`crate::Topology::audit_stream`]). Nothing depends on a live subscriber: the stream keeps
//! events (7 days or 1 GiB by default) and any number of readers replay them from any point.
//!
//! A read ([`read`]) starts at the first event or at a time, and ends at a marker it appends
//! itself to the stream (straight to the stream, not through the events exchange): the trail
//! as it was when the read began, in the order the broker stored it.

use crate::{
    Result, Topology,
    deadline::{BROKER_OP, within},
    events::{RawEvent, TaskEvent, decode_raw},
    headers as h,
    severity::Severity,
};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use std::time::Duration;
use uuid::Uuid;

/// Header of the end-of-read marker (its value: the read's id).
const MARKER: &str = "x-audit-marker";
/// Longest wait for the next stored message before the read gives up.
const STALL: Duration = Duration::from_secs(15);
/// Longest wait for a stream that is recovering after a broker restart.
const RECOVERY: Duration = Duration::from_secs(30);
/// Messages in flight to a reader (streams need a prefetch).
const PREFETCH: u16 = 1000;

/// Which events a read returns: every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Events at or after this time, ms since the epoch (also where the read starts).
    pub since_ms: Option<u64>,
    /// Events at or before this time.
    pub until_ms: Option<u64>,
    pub run: Option<Uuid>,
    pub task: Option<Uuid>,
    /// Trace id, 32 hex digits.
    pub trace: Option<String>,
    /// Error class of the event's failure.
    pub class: Option<String>,
    /// Kind, or kind prefix ending in `.` (`node.`, `breaker.`).
    pub kind: Option<String>,
    /// At least this severe.
    pub severity: Option<Severity>,
}

impl Query {
    /// Whether `event` is selected.
    pub fn matches(&self, event: &TaskEvent) -> bool {
        let kind_ok = self.kind.as_deref().is_none_or(|k| {
            if k.ends_with('.') {
                event.kind.starts_with(k)
            } else {
                event.kind == k
            }
        });
        kind_ok
            && self.since_ms.is_none_or(|t| event.at_ms >= t)
            && self.until_ms.is_none_or(|t| event.at_ms <= t)
            && self.run.is_none_or(|r| event.run_id == Some(r))
            && self.task.is_none_or(|t| event.task_id == Some(t))
            && self
                .trace
                .as_deref()
                .is_none_or(|t| event.trace_id.as_deref() == Some(t))
            && self
                .class
                .as_deref()
                .is_none_or(|c| event.error.as_ref().is_some_and(|e| e.class == c))
            && self
                .severity
                .is_none_or(|s| event.severity.is_some_and(|e| e <= s))
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Broker(#[from] crate::Error),
    #[error("the broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "namespace has no audit trail `{0}` yet: it is created by the first worker, producer or inspector that connects"
    )]
    Missing(String),
    #[error(
        "the audit trail `{0}` is still recovering after a broker restart (its node says it is down or inaccessible); try again shortly"
    )]
    Unavailable(String),
    #[error("the audit trail stopped delivering for {0:?} before the read reached its end")]
    Stalled(Duration),
}

/// Reads the audit trail of `topology`'s namespace from `query.since_ms` (or its start) to
/// the moment of the call, and hands each selected event, in stored order, to `each` (the
/// event and its JSON as published). Returns how many events were read in all.
pub async fn read(
    conn: &Connection,
    topology: &Topology,
    query: &Query,
    mut each: impl FnMut(RawEvent),
) -> std::result::Result<u64, AuditError> {
    let stream = topology.audit_stream();
    let marker = Uuid::new_v4().to_string();
    let tag = format!("audit-{marker}");
    // A second early: the stream's index is by second, the filter is exact.
    let start = query.since_ms.map_or(Start::First, Start::At);
    let (ch, mut consumer) = consume(conn, &stream, start, &tag).await?;
    append_marker(conn, &stream, &marker).await?;
    let (mut read, mut delivered) = (0u64, 0u64);
    let outcome = loop {
        let delivery = match tokio::time::timeout(STALL, consumer.next()).await {
            Err(_) => break Err(AuditError::Stalled(STALL)),
            Ok(None) => break Err(AuditError::Stalled(Duration::ZERO)),
            Ok(Some(Err(e))) => break Err(e.into()),
            Ok(Some(Ok(d))) => d,
        };
        let headers = delivery.properties.headers().as_ref();
        delivered += 1;
        // A stream reader acks only to let the broker send more (credit), in batches.
        if delivered.is_multiple_of(200) {
            let ack = BasicAckOptions { multiple: true };
            let tag = delivery.delivery_tag;
            let _ = within("acking the audit trail", BROKER_OP, ch.basic_ack(tag, ack)).await;
        }
        if h::get_str(headers, MARKER) == Some(marker.as_str()) {
            break Ok(read);
        }
        if h::get_str(headers, MARKER).is_some() {
            // Another reader's marker.
            continue;
        }
        // A message that is not events (nothing else is bound) is skipped, not fatal.
        let Ok(events) = decode_raw(&delivery.data) else {
            continue;
        };
        for raw in events {
            read += 1;
            if query.matches(&raw.event) {
                each(raw);
            }
        }
    };
    let _ = within(
        "ending the audit read",
        BROKER_OP,
        ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await;
    let _ = within(
        "closing the audit channel",
        BROKER_OP,
        ch.close(200, "read".into()),
    )
    .await;
    outcome
}

/// Where a follower starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The oldest event kept.
    First,
    /// Events appended from now on.
    Next,
    /// The event at this stream offset (one after the last handled, to resume).
    Offset(u64),
    /// Events appended from about this time on (ms since the epoch; the stream's index is by
    /// second, so a second earlier at most).
    At(u64),
}

/// Follows the audit trail from `start`, handing each event and the stream offset of its
/// message to `each` (awaited: a slow handler slows the reader, never loses an event), until
/// `stop` is cancelled or the connection fails (the error; the caller reconnects and resumes
/// from its last offset).
pub async fn follow<F, Fut>(
    conn: &Connection,
    topology: &Topology,
    start: Start,
    stop: &tokio_util::sync::CancellationToken,
    mut each: F,
) -> std::result::Result<(), AuditError>
where
    F: FnMut(u64, RawEvent) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (ch, mut consumer) =
        consume(conn, &topology.audit_stream(), start, "audit-follower").await?;
    let mut delivered = 0u64;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            next = consumer.next() => match next {
                None => return Err(AuditError::Stalled(Duration::ZERO)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(d)) => d,
            },
        };
        delivered += 1;
        if delivered.is_multiple_of(100) {
            let ack = BasicAckOptions { multiple: true };
            let tag = delivery.delivery_tag;
            within("acking the audit trail", BROKER_OP, ch.basic_ack(tag, ack)).await??;
        }
        let headers = delivery.properties.headers().as_ref();
        if h::get_str(headers, MARKER).is_some() {
            continue;
        }
        let offset = h::get_u64(headers, "x-stream-offset").unwrap_or(0);
        let Ok(events) = decode_raw(&delivery.data) else {
            continue;
        };
        for raw in events {
            each(offset, raw).await;
        }
    }
    let _ = within(
        "closing the audit channel",
        BROKER_OP,
        ch.close(200, "stopped".into()),
    )
    .await;
    Ok(())
}

/// A consumer of `stream` from `start`, tagged `tag`, on a channel of its own (with the prefetch
/// a stream consumer needs).
async fn consume(
    conn: &Connection,
    stream: &str,
    start: Start,
    tag: &str,
) -> std::result::Result<(lapin::Channel, lapin::Consumer), AuditError> {
    let ch = open(conn, stream).await?;
    within(
        "setting the audit reader's prefetch",
        BROKER_OP,
        ch.basic_qos(PREFETCH, BasicQosOptions::default()),
    )
    .await??;
    let offset = match start {
        Start::First => AMQPValue::LongString("first".into()),
        Start::Next => AMQPValue::LongString("next".into()),
        Start::Offset(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
        Start::At(ms) => AMQPValue::Timestamp((ms / 1000).saturating_sub(1)),
    };
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    let consumer = within(
        "reading the audit trail",
        BROKER_OP,
        ch.basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await??;
    Ok((ch, consumer))
}

/// A channel on which `stream` exists. Just after a broker restart the stream's replica may
/// still be recovering (`NOT_FOUND ... down or inaccessible`): that is waited out for up to
/// [`RECOVERY`].
async fn open(conn: &Connection, stream: &str) -> std::result::Result<lapin::Channel, AuditError> {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let ch = within(
            "a channel for the audit trail",
            BROKER_OP,
            conn.create_channel(),
        )
        .await??;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = within(
            "looking up the audit trail",
            BROKER_OP,
            ch.queue_declare(stream.into(), passive, FieldTable::default()),
        )
        .await?;
        match found {
            Ok(_) => return Ok(ch),
            Err(e)
                if e.to_string().contains("down or inaccessible")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) if e.to_string().contains("down or inaccessible") => {
                return Err(AuditError::Unavailable(stream.to_string()));
            }
            Err(_) => return Err(AuditError::Missing(stream.to_string())),
        }
    }
}

/// Appends this read's end marker to the stream itself, confirmed.
async fn append_marker(conn: &Connection, stream: &str, marker: &str) -> Result<()> {
    let ch = within(
        "a channel for the audit marker",
        BROKER_OP,
        conn.create_channel(),
    )
    .await??;
    within(
        "confirms on the audit marker's channel",
        BROKER_OP,
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await??;
    let mut headers = FieldTable::default();
    h::set_str(&mut headers, MARKER, marker);
    let confirm = within(
        "appending the audit read's end marker",
        BROKER_OP,
        ch.basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions::default(),
            b"[]",
            BasicProperties::default().with_headers(headers),
        ),
    )
    .await??;
    within("the audit marker's confirm", BROKER_OP, confirm).await??;
    let _ = within(
        "closing the marker channel",
        BROKER_OP,
        ch.close(200, "marked".into()),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventError;

    fn event(kind: &str, at_ms: u64) -> TaskEvent {
        let mut e = TaskEvent::new(kind, "w");
        e.at_ms = at_ms;
        e
    }

    #[test]
    fn a_query_selects_by_every_condition_it_has() {
        let run = Uuid::now_v7();
        let mut failed = event("node.dead_lettered", 2_000).about(None, Some(run));
        failed.error = Some(EventError {
            class: "permanent".into(),
            code: "gone".into(),
            message: "gone".into(),
            fingerprint: None,
        });
        failed.severity = Some(Severity::High);
        failed.trace_id = Some("ab".repeat(16));
        assert!(Query::default().matches(&failed));
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q
        };
        assert!(q(|q| q.kind = Some("node.".into())).matches(&failed));
        assert!(!q(|q| q.kind = Some("node.".into())).matches(&event("breaker.opened", 1)));
        assert!(!q(|q| q.kind = Some("node.dead".into())).matches(&failed));
        assert!(q(|q| q.since_ms = Some(2_000)).matches(&failed));
        assert!(!q(|q| q.since_ms = Some(2_001)).matches(&failed));
        assert!(!q(|q| q.until_ms = Some(1_999)).matches(&failed));
        assert!(!q(|q| q.run = Some(Uuid::now_v7())).matches(&failed));
        assert!(q(|q| q.class = Some("permanent".into())).matches(&failed));
        assert!(!q(|q| q.class = Some("transient".into())).matches(&failed));
        assert!(q(|q| q.severity = Some(Severity::High)).matches(&failed));
        assert!(q(|q| q.severity = Some(Severity::Low)).matches(&failed));
        assert!(!q(|q| q.severity = Some(Severity::Critical)).matches(&failed));
        assert!(q(|q| q.trace = Some("ab".repeat(16))).matches(&failed));
        assert!(!q(|q| q.trace = Some("cd".repeat(16))).matches(&failed));
    }
}
