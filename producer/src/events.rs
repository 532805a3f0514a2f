//! Following the events exchange: `producer events`.

use futures_util::StreamExt;
use secflow_common::{Error, Result, config::BrokerArgs, events::TaskEvent};
use std::time::Duration;

/// Prints (through `on_event`) every event matching `pattern` until `idle` passes without one,
/// or forever when `idle` is `None`. Events that are not valid JSON are reported, not fatal.
/// A lost connection is re-established (backoff with jitter, up to `--connect-timeout-secs` per
/// outage) and the subscription renewed; events published while it was down are not seen
/// (the subscription queue is the follower's own and goes with its connection).
pub async fn follow(
    broker: &BrokerArgs,
    pattern: &str,
    idle: Option<Duration>,
    mut on_event: impl FnMut(&TaskEvent),
) -> Result<()> {
    let mut first = true;
    loop {
        // `connect` itself retries with backoff until --connect-timeout-secs.
        let (conn, topology) = crate::connect(broker, "secflow-producer-events").await?;
        if !first {
            tracing::warn!(
                "reconnected to RabbitMQ: following events again (some may have been missed)"
            );
        }
        first = false;
        let ch = conn.create_channel().await?;
        let mut consumer = secflow_common::events::subscribe(&ch, &topology, pattern).await?;
        let lost = loop {
            let next = match idle {
                Some(idle) => match tokio::time::timeout(idle, consumer.next()).await {
                    Ok(next) => next,
                    Err(_) => break None,
                },
                None => consumer.next().await,
            };
            match next {
                Some(Ok(delivery)) => match secflow_common::events::decode(&delivery.data) {
                    Ok(events) => events.iter().for_each(&mut on_event),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an event that is not SecFlow JSON")
                    }
                },
                Some(Err(e)) => break Some(Error::Amqp(e)),
                None => {
                    break (!conn.status().connected())
                        .then(|| Error::Config("connection closed".into()));
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), conn.close(200, "done".into())).await;
        match lost {
            None => return Ok(()),
            Some(e) => {
                tracing::warn!(error = %e, "lost the RabbitMQ connection while following events: reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One human-readable line for an event.
pub fn describe(e: &TaskEvent) -> String {
    let mut line = format!(
        "{} {:<19} {:<14} {} worker={} retries={}",
        clock(e.at_ms),
        e.kind,
        e.node_type.as_deref().unwrap_or("?"),
        e.task_id
            .map_or_else(|| "(no task id)".to_string(), |id| id.to_string()),
        e.worker,
        e.retry_count,
    );
    if let Some(err) = &e.error {
        line.push_str(&format!(" {}/{}: {}", err.class, err.code, err.message));
    }
    if let Some(ms) = e.next_delay_ms {
        line.push_str(&format!(" (next attempt in {ms} ms)"));
    }
    if let (Some(s), Some(o)) = (e.scheduled_delay_ms, e.observed_delay_ms) {
        line.push_str(&format!(" (waited {o} ms of {s} ms scheduled)"));
    }
    line
}

/// `HH:MM:SS.mmm` (UTC) of a millisecond timestamp.
fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(3_723_004), "01:02:03.004");
    }
}
