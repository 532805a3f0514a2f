//! The commands that read the audit trail: `audit` (events by run, task, trace, class, kind,
//! severity and time) and `analytics` (error figures over a window).

use crate::{analytics, session::InspectorError};
use secflow_common::{
    Topology, amqp,
    audit::{self, Query},
    config::BrokerArgs,
    now_ms,
    utc::{self, Utc},
};
use std::time::Duration;

/// Longest wait for the broker to accept the connection.
const CONNECT: Duration = Duration::from_secs(10);

/// Prints the events `query` selects (JSON lines with `json`), at most `limit`.
pub async fn audit(
    broker: &BrokerArgs,
    query: &Query,
    limit: Option<usize>,
    json: bool,
) -> Result<(), InspectorError> {
    let mut shown = 0usize;
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = std::io::stdout().lock();
    let read = read(broker, query, |raw| {
        use std::io::Write;
        if shown >= limit {
            return;
        }
        shown += 1;
        let line = if json {
            raw.json.get().to_string()
        } else {
            line(&raw.event, raw.json.get())
        };
        let _ = writeln!(out, "{line}");
    })
    .await?;
    drop(out);
    if !json {
        eprintln!("{shown} events shown of {read} read from the audit trail");
    }
    Ok(())
}

/// Prints the analytics of the last `window_ms`.
pub async fn analytics(
    broker: &BrokerArgs,
    window_ms: u64,
    top: usize,
    json: bool,
) -> Result<(), InspectorError> {
    let until = now_ms();
    let since = until.saturating_sub(window_ms);
    let query = Query {
        since_ms: Some(since),
        ..Query::default()
    };
    let mut events = Vec::new();
    read(broker, &query, |raw| events.push(raw.event)).await?;
    let figures = analytics::compute(&events, since, until, top);
    if json {
        println!("{}", serde_json::to_string(&figures).unwrap_or_default());
    } else {
        print!("{}", analytics::text(&figures));
    }
    Ok(())
}

/// Reads the trail of `broker`'s namespace, handing each selected event to `each`; how many
/// events were read.
async fn read(
    broker: &BrokerArgs,
    query: &Query,
    each: impl FnMut(secflow_common::events::RawEvent),
) -> Result<u64, InspectorError> {
    broker.validate()?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    let conn = amqp::connect(&broker.amqp_url, "secflow-dlq-inspector-audit", CONNECT).await?;
    let result = audit::read(&conn, &topology, query, each).await;
    amqp::close(&conn, "audit read").await;
    result.map_err(|e| InspectorError::Usage(format!("audit trail: {e}")))
}

/// One event as a line for people: time, kind, where, why.
fn line(e: &secflow_common::events::TaskEvent, json: &str) -> String {
    let mut parts = vec![time_text(e.at_ms), format!("{:<20}", e.kind)];
    if let Some(sev) = e.severity {
        parts.push(format!("[{sev}]"));
    }
    if let Some(run) = e.run_id {
        parts.push(format!("run={run}"));
    }
    if let Some(node) = &e.node_id {
        parts.push(format!("node={node}"));
    }
    if let Some(task) = e.task_id {
        parts.push(format!("task={task}"));
    }
    if let Some(t) = &e.node_type {
        parts.push(format!("type={t}"));
    }
    parts.push(format!("by={}", actor(e, json)));
    if e.retry_count > 0 {
        parts.push(format!("retries={}", e.retry_count));
    }
    if let Some(reason) = &e.reason {
        parts.push(format!("reason={reason}"));
    }
    if let Some(err) = &e.error {
        parts.push(format!("{}/{}: {}", err.class, err.code, err.message));
    } else if let Some(status) = &e.status {
        parts.push(format!("status={status}"));
    } else if let Some(out) = e.output.as_ref().filter(|_| !e.kind.starts_with("node.")) {
        parts.push(out.to_string());
    }
    parts.join("  ")
}

/// Who caused the event: the operator for operator and inspector events, else the worker.
fn actor(e: &secflow_common::events::TaskEvent, json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["by"].as_str().map(str::to_string))
        .unwrap_or_else(|| e.worker.clone())
}

/// `at_ms` as UTC ISO 8601 with milliseconds.
pub fn time_text(at_ms: u64) -> String {
    let t = Utc::of(at_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
    )
}

/// A point in time as given on the command line: a duration ago (`15m`, `2h`, `7d`), ms since
/// the epoch, or UTC `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
pub fn time_arg(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() >= 10 {
        return s.parse().map_err(|e| format!("`{s}`: {e}"));
    }
    if let Ok(ago) = secflow_common::duration::parse_ms(s) {
        return Ok(now_ms().saturating_sub(ago));
    }
    parse_utc(s).ok_or_else(|| {
        format!(
            "`{s}` is not a time: give a duration ago (15m, 2h, 7d), ms since the epoch, or UTC like 2026-11-30T18:00:00Z"
        )
    })
}

fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let ms: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let days = utc::days_from_civil(y, mo, da);
    u64::try_from(days)
        .ok()
        .map(|days| (days * 86_400 + h * 3600 + mi * 60 + se) * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_back() {
        let at = 1_796_064_372_123;
        let text = time_text(at);
        assert_eq!(text, "2026-11-30T18:46:12.123Z");
        assert_eq!(time_arg(&text), Ok(at));
        assert_eq!(time_arg("2026-11-30T18:46:12Z"), Ok(at - 123));
        assert_eq!(time_arg("1796064372123"), Ok(at));
        assert_eq!(time_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            time_arg("2024-02-29T00:00:00Z").map(time_text).as_deref(),
            Ok("2024-02-29T00:00:00.000Z")
        );
    }

    #[test]
    fn a_duration_is_that_long_ago_and_nonsense_is_refused() {
        let ago = time_arg("10m").unwrap();
        let expected = now_ms() - 600_000;
        assert!(ago.abs_diff(expected) < 5_000);
        for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-30 18:00:00"] {
            let e = time_arg(bad).unwrap_err();
            assert!(e.contains("is not a time"), "{e}");
        }
    }
}
