//! What a dead-lettered message says about when and where it died, from the headers either
//! writer puts on it: a SecFlow worker (`x-dead-letter-reason`, `x-dead-lettered-at`) or the
//! broker itself when a task exceeds the delivery limit (`x-death`).

use crate::headers as h;
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

/// When the message was dead-lettered, ms since the epoch: the worker's header, else the
/// broker's newest death (whole seconds), else its publication time.
pub fn dead_lettered_ms(props: &BasicProperties) -> Option<u64> {
    let headers = props.headers().as_ref();
    h::get_u64(headers, h::DEAD_LETTERED_AT)
        .filter(|_| h::get_str(headers, h::DEAD_LETTER_REASON).is_some())
        .or_else(|| {
            latest_death(headers)
                .and_then(|d| d.time_s)
                .map(|t| t * 1000)
        })
        .or_else(|| props.timestamp().map(|t| t * 1000))
}

/// The oldest entry of the broker's `x-death` history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Death {
    /// Queue it died in.
    pub queue: Option<String>,
    /// Exchange it had been published to.
    pub exchange: Option<String>,
    /// First routing key it had been published with.
    pub routing_key: Option<String>,
    /// Death time, seconds since the epoch.
    pub time_s: Option<u64>,
    /// Times it died there for that reason.
    pub count: u64,
}

/// Every `x-death` entry, newest first, as the broker writes them.
pub fn deaths(headers: Option<&FieldTable>) -> Vec<(String, Death)> {
    let Some(AMQPValue::FieldArray(entries)) = headers.and_then(|h| h.inner().get("x-death"))
    else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .map(|t| {
            let t = Some(t);
            let routing_key = match t.and_then(|t| t.inner().get("routing-keys")) {
                Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().find_map(|k| match k {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                }),
                _ => None,
            };
            let death = Death {
                queue: h::get_str(t, "queue").map(str::to_string),
                exchange: h::get_str(t, "exchange").map(str::to_string),
                routing_key,
                time_s: h::get_u64(t, "time"),
                count: h::get_u64(t, "count").unwrap_or(1),
            };
            (h::get_str(t, "reason").unwrap_or("?").to_string(), death)
        })
        .collect()
}

/// The newest death (the broker puts it first): the queue the task died in and the exchange
/// and routing key that lead back to it.
pub fn latest_death(headers: Option<&FieldTable>) -> Option<Death> {
    deaths(headers).into_iter().next().map(|(_, d)| d)
}
