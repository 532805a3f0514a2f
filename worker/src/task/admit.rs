//! The first step: what is refused before the task runs or even claims anything — a message
//! over the size limit, a forged signature or bookkeeping, bytes that are not a task, a type
//! this pool has no handler for, a task that keeps killing its workers.

use super::{End, Shared};
use crate::{disposition, settle::DeliveryMeta};
use lapin::message::Delivery;
use secflow_common::TaskEnvelope;

/// The task, if it may go on to be claimed; else how the delivery ends.
pub(super) fn admit(
    shared: &Shared,
    delivery: &Delivery,
    meta: &DeliveryMeta,
) -> Result<TaskEnvelope, End> {
    let unread = |disposition| End::settle(None, disposition, None);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str());
    if delivery.data.len() > shared.max_message_bytes {
        tracing::error!(
            bytes = delivery.data.len(),
            "oversized message: dead-lettering it"
        );
        return Err(unread(disposition::too_large(
            delivery.data.len(),
            shared.max_message_bytes,
        )));
    }
    if let Some((code, message)) = forgery(shared, delivery, message_id, meta) {
        metrics::counter!("secflow_security_rejections_total", "code" => code).increment(1);
        return Err(unread(disposition::forged(code, message)));
    }
    let task = TaskEnvelope::decode(&delivery.data, message_id).map_err(|e| {
        tracing::error!(code = e.code(), error = %e, "malformed message: dead-lettering it");
        unread(disposition::malformed(e.code(), e.to_string()))
    })?;
    if !shared.handlers.knows(&task.node_type) {
        return Err(End::with(&task, disposition::unknown_type(&task.node_type)));
    }
    // Charged across hand-backs too (`x-unsettled-before`), not only by the broker.
    if meta.unsettled_total() > shared.delivery_limit {
        return Err(End::with(
            &task,
            disposition::crash_loop(meta.unsettled_total()),
        ));
    }
    Ok(task)
}

/// Why the delivery is not what the fleet sent (unless signing was disabled explicitly): its
/// signature is missing or wrong, or its bookkeeping headers (retry count, history) were
/// rewritten outside the fleet. The code and message.
fn forgery(
    shared: &Shared,
    delivery: &Delivery,
    message_id: Option<&str>,
    meta: &DeliveryMeta,
) -> Option<(&'static str, String)> {
    let keyring = shared.keyring.as_ref()?;
    match keyring.verify(
        delivery.properties.headers().as_ref(),
        message_id.unwrap_or_default(),
        &delivery.data,
    ) {
        Err(forgery) => Some((forgery.code(), forgery.to_string())),
        Ok(()) => match &meta.bookkeeping {
            Err(tampered) => Some((tampered.code(), tampered.to_string())),
            Ok(_) => None,
        },
    }
}
