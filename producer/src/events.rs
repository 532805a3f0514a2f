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

/// How a node was served, as `producer status` appends it to the node's line:
/// ` level=medium served_by=#1:builtin.static quality=low`, ` skipped: WHY`.
pub fn record_text(record: &secflow_common::runs::NodeRecord) -> String {
    let mut text = format!(" level={}", record.level);
    if let Some(by) = &record.served_by {
        text.push_str(&format!(" served_by=#{}:{}", by.index, by.node_type));
    }
    if record.quality != secflow_common::control::Level::Full {
        text.push_str(&format!(" quality={}", record.quality));
    }
    if !record.adjusted.is_empty() {
        text.push_str(&format!(" adjusted={}", record.adjusted.join(",")));
    }
    if let Some(why) = &record.skipped {
        text.push_str(&format!(" skipped: {why}"));
    }
    text
}

/// One line of a run's execution trace, as `producer watch` prints it:
/// `[2025-10-06 12:01:05] Node discovery.ferox completed (urls=356) [discovery]`.
pub fn trace_line(e: &TaskEvent) -> String {
    let ty = e.node_type.as_deref().unwrap_or("?");
    let node = e.node_id.as_deref().unwrap_or("?");
    let what = match e.kind.as_str() {
        "workflow.started" => format!(
            "Workflow \"{}\" started",
            e.workflow.as_deref().unwrap_or("?")
        ),
        "workflow.completed" | "workflow.failed" => {
            let status = e.status.as_deref().unwrap_or("ended");
            let how = match status {
                "succeeded" => "completed successfully".to_string(),
                "partial" => "completed partially (an optional node failed)".to_string(),
                "degraded" => {
                    "completed degraded (a node was served by a fallback or skipped)".to_string()
                }
                other => other.to_string(),
            };
            format!(
                "Workflow {how} (findings={}{})",
                e.findings.unwrap_or(0),
                e.duration
                    .map(|d| format!(", {d:.1} s"))
                    .unwrap_or_default()
            )
        }
        "node.started" => format!("Node {ty} started [{node}]"),
        "node.completed" => {
            let counts = e
                .counts
                .as_ref()
                .map(|c| {
                    c.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| format!("findings={}", e.findings.unwrap_or(0)));
            let cached = if e.cache_hit == Some(true) {
                ", cached"
            } else {
                ""
            };
            format!(
                "Node {ty} completed ({counts}{cached}{}) [{node}]",
                degradation(e)
            )
        }
        "node.dead_lettered" => format!("Node {ty} failed{} [{node}]", error_text(e)),
        "node.retrying" => format!(
            "Node {ty} will retry in {} ms{} [{node}]",
            e.next_delay_ms.unwrap_or(0),
            error_text(e)
        ),
        "node.cancelled" => format!("Node {ty} cancelled [{node}]"),
        "node.deferred" => format!("Node {ty} deferred{} [{node}]", error_text(e)),
        other => format!("{other} {ty} [{node}]"),
    };
    format!("[{}] {what}", datetime(e.at_ms))
}

/// `, served by #2 builtin.static (quality low), level medium` for a node served below full
/// quality, skipped, or run below level `full`; empty otherwise.
fn degradation(e: &TaskEvent) -> String {
    let mut text = String::new();
    if let Some(why) = &e.skipped {
        text.push_str(&format!(", skipped: {why}"));
    }
    if let Some(by) = &e.served_by {
        let quality = e.quality.map(|q| q.as_str()).unwrap_or("?");
        text.push_str(&format!(
            ", served by fallback #{} {} (quality {quality})",
            by.index, by.node_type
        ));
    }
    if let Some(level) = e
        .level
        .filter(|l| *l != secflow_common::control::Level::Full)
    {
        text.push_str(&format!(", level {level}"));
    }
    text
}

fn error_text(e: &TaskEvent) -> String {
    e.error
        .as_ref()
        .map(|err| format!(": {}/{}: {}", err.class, err.code, err.message))
        .unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a millisecond timestamp.
fn datetime(ms: u64) -> String {
    let t = secflow_common::utc::Utc::of(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
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

    #[test]
    fn trace_lines_read_like_the_published_trace() {
        // 2025-10-06 12:01:05 UTC.
        let at = 1_759_752_065_000;
        assert_eq!(datetime(at), "2025-10-06 12:01:05");
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00");
        let mut e = TaskEvent::new("node.completed", "w");
        e.at_ms = at;
        e.node_type = Some("discovery.ferox".into());
        e.node_id = Some("discovery".into());
        e.counts = Some([("urls".to_string(), 356)].into());
        assert_eq!(
            trace_line(&e),
            "[2025-10-06 12:01:05] Node discovery.ferox completed (urls=356) [discovery]"
        );
        let mut end = TaskEvent::new("workflow.completed", "w");
        end.at_ms = at;
        end.status = Some("succeeded".into());
        end.findings = Some(112);
        assert_eq!(
            trace_line(&end),
            "[2025-10-06 12:01:05] Workflow completed successfully (findings=112)"
        );
    }

    #[test]
    fn degraded_nodes_and_runs_say_so() {
        use secflow_common::{control::Level, recipe::ServedBy, runs::NodeRecord};
        let mut e = TaskEvent::new("node.completed", "w");
        e.at_ms = 0;
        e.node_type = Some("http".into());
        e.node_id = Some("cves".into());
        e.level = Some(Level::Medium);
        e.quality = Some(Level::Low);
        e.served_by = Some(ServedBy {
            index: 2,
            node_type: "builtin.static".into(),
        });
        assert_eq!(
            trace_line(&e),
            "[1970-01-01 00:00:00] Node http completed (findings=0, served by fallback #2 builtin.static (quality low), level medium) [cves]"
        );
        let mut end = TaskEvent::new("workflow.completed", "w");
        end.at_ms = 0;
        end.status = Some("degraded".into());
        assert!(trace_line(&end).contains("completed degraded"));
        let record = NodeRecord {
            level: Level::Low,
            skipped: Some("optional nodes are skipped".into()),
            quality: Level::Full,
            ..NodeRecord::default()
        };
        assert_eq!(
            record_text(&record),
            " level=low skipped: optional nodes are skipped"
        );
    }
}
