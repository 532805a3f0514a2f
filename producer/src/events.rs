//! Following the events exchange: `producer events`.

use crate::follow_run::Subscription;
use secflow_common::{
    Error, Result, config::BrokerArgs, events::TaskEvent, retry::ReconnectBackoff,
};
use std::time::{Duration, Instant};

/// Prints (through `on_event`) every event matching `pattern` until `idle` passes without one,
/// or forever when `idle` is `None`, or until `shutdown` resolves. Events that are not valid
/// JSON are reported, not fatal. A lost connection is re-established (the shared
/// [`ReconnectBackoff`], each outage bounded by `--connect-timeout-secs`) and the subscription
/// renewed; events published while it was down are not seen (the subscription queue is the
/// follower's own and goes with its connection).
pub async fn follow(
    broker: &BrokerArgs,
    pattern: &str,
    idle: Option<Duration>,
    shutdown: impl std::future::Future<Output = ()>,
    mut on_event: impl FnMut(&TaskEvent),
) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let budget = Duration::from_secs(broker.connect_timeout_secs);
    let mut backoff = ReconnectBackoff::default();
    let mut outage: Option<Instant> = None;
    loop {
        let left = budget.saturating_sub(outage.map_or(Duration::ZERO, |o| o.elapsed()));
        let opened = tokio::select! {
            opened = Subscription::open(broker, pattern, left) => opened,
            () = &mut shutdown => return Ok(()),
        };
        let mut sub = match opened {
            Ok(sub) => sub,
            Err(e) if e.is_transient() && outage.is_some_and(|o| o.elapsed() < budget) => {
                let wait = backoff.next_delay(&mut rand::rng());
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot follow events yet");
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        };
        if outage.take().is_some() {
            tracing::warn!(
                "reconnected to RabbitMQ: following events again (some may have been missed)"
            );
        }
        let lost = loop {
            let idle_end = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(365 * 24 * 3600)));
            let next = tokio::select! {
                next = sub.next() => next,
                () = idle_end, if idle.is_some() => break None,
                () = &mut shutdown => break None,
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
                    break Some(Error::ConnectionLost("following events".into()));
                }
            }
        };
        let lasted = sub.age();
        sub.close().await;
        let Some(e) = lost else { return Ok(()) };
        backoff.connection_lasted(lasted);
        outage = Some(Instant::now());
        let wait = backoff.next_delay(&mut rand::rng());
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "lost the RabbitMQ connection while following events: reconnecting");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return Ok(()),
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
