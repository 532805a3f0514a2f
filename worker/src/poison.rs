//! Messages the AMQP client cannot parse: found and dead-lettered with the raw client after
//! one of them dropped the worker's connection, so the worker consumes again and the tasks
//! returned with it are not charged for it.
//!
//! lapin drops the whole connection on a delivery whose names are not UTF-8, and the broker
//! counts a delivery against every message that connection held. After such a drop, the
//! broker serves the returned messages first; the sweep takes them with `basic.get` (names
//! kept as bytes), dead-letters each unreadable one with the reason, and hands each readable
//! one back as a fresh copy without the broker's delivery count — the charge the drop caused.

use secflow_common::{
    Topology, headers as h,
    rawamqp::{RawClient, RawError, RawProperties, Shown, unparseable_dead_letter},
};
use std::time::Duration;

/// Deadline of each raw operation.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Unreadable messages dead-lettered.
    pub dead_lettered: usize,
    /// Readable messages handed back as fresh copies.
    pub handed_back: usize,
}

/// Takes up to `limit` messages from the head of `queue` and settles each as above.
pub async fn sweep(
    url: &str,
    topology: &Topology,
    queue: &str,
    worker_id: &str,
    limit: usize,
) -> Result<Sweep, RawError> {
    let mut raw = RawClient::connect(url, OP_TIMEOUT).await?;
    let mut done = Sweep::default();
    let result = async {
        // Everything is taken first, then settled: a fresh copy goes to the back of the queue
        // and must not be taken again by this sweep.
        for msg in raw.take(queue, limit).await? {
            let unreadable = msg.unreadable_fields();
            if unreadable.is_empty() {
                let props = fresh_copy(&msg.properties);
                raw.publish(b"", queue.as_bytes(), &props, &msg.body)
                    .await?;
                done.handed_back += 1;
            } else {
                let props = unparseable_dead_letter(&msg, &unreadable, queue, worker_id);
                raw.publish(
                    topology.dlx().as_bytes(),
                    queue.as_bytes(),
                    &props,
                    &msg.body,
                )
                .await?;
                tracing::error!(
                    message_id = %Shown(msg.properties.message_id.as_deref().unwrap_or_default()),
                    fields = %unreadable.join("; "),
                    "message the AMQP client cannot parse: dead-lettered as malformed/unparseable"
                );
                metrics::counter!("secflow_unparseable_total").increment(1);
                done.dead_lettered += 1;
            }
            raw.ack(msg.delivery_tag, false).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        // Whatever was taken and not acked goes back (the connection close does it too).
        let _ = raw.nack_all().await;
    }
    raw.close().await;
    result.map(|()| done)
}

/// The properties of a readable message for its fresh copy: the broker's delivery count goes.
fn fresh_copy(props: &RawProperties) -> RawProperties {
    let mut props = props.clone();
    // The broker checks user-id against the publishing user.
    props.user_id = None;
    if let Some(headers) = props.headers.as_mut() {
        headers.retain(|(k, _)| {
            k.as_slice() != h::DELIVERY_COUNT.as_bytes()
                && k.as_slice() != h::DELAY_BUCKET.as_bytes()
        });
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::rawamqp::RawValue;

    #[test]
    fn a_fresh_copy_loses_only_the_broker_counters() {
        let props = RawProperties {
            headers: Some(vec![
                (h::RETRY_COUNT.as_bytes().to_vec(), RawValue::Int(1)),
                (h::DELIVERY_COUNT.as_bytes().to_vec(), RawValue::Int(1)),
            ]),
            ..RawProperties::default()
        };
        let copy = fresh_copy(&props);
        assert!(copy.header(h::RETRY_COUNT).is_some());
        assert!(copy.header(h::DELIVERY_COUNT).is_none());
    }
}
