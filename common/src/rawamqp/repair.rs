//! Readable copies of messages the regular client cannot parse, for the DLQ.

use super::{RawMessage, RawProperties, RawTable, RawValue, Shown};
use crate::{headers as h, now_ms};

/// A readable copy of an unreadable message for the DLQ: every name that is not UTF-8 replaced
/// by its hex form (`<not UTF-8: 0x…>`), the failure headers added (`malformed`/`unparseable`,
/// naming each unreadable field), the broker's delivery count dropped, the body untouched.
/// `by` is who dead-lettered it (a worker id, or the inspector).
pub fn unparseable_dead_letter(
    msg: &RawMessage,
    unreadable: &[String],
    queue: &str,
    by: &str,
) -> RawProperties {
    let p = &msg.properties;
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| Shown(b).to_string().into_bytes());
    let mut headers: RawTable = p
        .headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.as_slice() != h::DELIVERY_COUNT.as_bytes())
        .map(|(k, v)| (Shown(&k).to_string().into_bytes(), readable_value(v)))
        .collect();
    let now = now_ms();
    let mut set = |name: &str, value: RawValue| {
        headers.retain(|(k, _)| k.as_slice() != name.as_bytes());
        headers.push((name.as_bytes().to_vec(), value));
    };
    let s = |v: String| RawValue::Bytes(v.into_bytes());
    let message = format!(
        "the AMQP client cannot read this message (AMQP names must be UTF-8): {}",
        unreadable.join("; ")
    );
    set(h::ERROR_CLASS, s("malformed".into()));
    set(h::ERROR_CODE, s("unparseable".into()));
    set(h::ERROR_MESSAGE, s(message));
    set(h::DEAD_LETTER_REASON, s("malformed".into()));
    set(h::WORKER_ID, s(by.into()));
    set(h::ORIGIN_QUEUE, s(queue.into()));
    set(h::ORIGIN_EXCHANGE, s(Shown(&msg.exchange).to_string()));
    set(
        h::ORIGIN_ROUTING_KEY,
        s(Shown(&msg.routing_key).to_string()),
    );
    set(h::FIRST_FAILURE_AT, RawValue::Int(i128::from(now)));
    set(h::LAST_FAILURE_AT, RawValue::Int(i128::from(now)));
    set(h::DEAD_LETTERED_AT, RawValue::Int(i128::from(now)));
    RawProperties {
        content_type: text(&p.content_type),
        content_encoding: text(&p.content_encoding),
        headers: Some(headers),
        correlation_id: text(&p.correlation_id),
        reply_to: text(&p.reply_to),
        expiration: None,
        message_id: text(&p.message_id),
        kind: text(&p.kind),
        user_id: None,
        app_id: text(&p.app_id),
        cluster_id: None,
        delivery_mode: Some(2),
        ..p.clone()
    }
}

/// Nested tables with their names made readable.
fn readable_value(v: RawValue) -> RawValue {
    match v {
        RawValue::Table(t) => RawValue::Table(
            t.into_iter()
                .map(|(k, v)| (Shown(&k).to_string().into_bytes(), readable_value(v)))
                .collect(),
        ),
        RawValue::Array(items) => RawValue::Array(items.into_iter().map(readable_value).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_copy_is_readable_and_says_why() {
        let msg = RawMessage {
            delivery_tag: 1,
            redelivered: true,
            exchange: b"".to_vec(),
            routing_key: b"ns.work.default".to_vec(),
            properties: RawProperties {
                message_id: Some(vec![b'p', 0xff]),
                user_id: Some(b"guest".to_vec()),
                headers: Some(vec![
                    (vec![0xc3, 0x28], RawValue::Int(1)),
                    (h::DELIVERY_COUNT.as_bytes().to_vec(), RawValue::Int(2)),
                ]),
                ..RawProperties::default()
            },
            body: b"{}".to_vec(),
        };
        let unreadable = msg.unreadable_fields();
        let copy = unparseable_dead_letter(&msg, &unreadable, "ns.work.default", "w1");
        let as_msg = RawMessage {
            properties: copy.clone(),
            ..msg.clone()
        };
        assert!(
            as_msg.unreadable_fields().is_empty(),
            "{:?}",
            as_msg.unreadable_fields()
        );
        assert_eq!(
            copy.message_id.as_deref(),
            Some(&b"<not UTF-8: 0x70ff>"[..])
        );
        assert_eq!(
            copy.user_id, None,
            "the broker checks user-id against the publisher"
        );
        assert!(
            matches!(copy.header(h::ERROR_CODE), Some(RawValue::Bytes(b)) if b == b"unparseable")
        );
        assert!(copy.header(h::DELIVERY_COUNT).is_none());
        match copy.header(h::ERROR_MESSAGE) {
            Some(RawValue::Bytes(b)) => {
                let text = String::from_utf8_lossy(b);
                assert!(text.contains("message_id <not UTF-8: 0x70ff>"), "{text}");
                assert!(text.contains("header name <not UTF-8: 0xc328>"), "{text}");
            }
            other => panic!("no error message: {other:?}"),
        }
    }
}
