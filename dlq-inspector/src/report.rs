//! How dead-lettered tasks are shown: list lines, stats, the full view of one, export lines,
//! with secrets masked unless asked for as they are.

use crate::{
    record::{DeadRecord, deaths},
    session::Session,
};
use lapin::BasicProperties;
use secflow_common::headers::table_to_json;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Whether `show` and `export` mask secrets (in task configs, inputs, fallbacks, headers and
/// error texts) or write the messages as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Secrets {
    /// Masked by the shared redactor: keys that name a secret (password, token, secret,
    /// api_key, authorization, cookie, ...) and the patterns it knows (URL credentials,
    /// bearer tokens, well-known token shapes, PEM keys).
    #[default]
    Redacted,
    /// As published (`--unredacted`): what a republish elsewhere needs.
    Unredacted,
}

impl Secrets {
    /// `--unredacted` given or not.
    pub fn from_flag(unredacted: bool) -> Self {
        if unredacted {
            Self::Unredacted
        } else {
            Self::Redacted
        }
    }

    /// What the operator is told on stderr before anything unredacted is printed or written.
    pub fn warning(self) -> Option<&'static str> {
        (self == Self::Unredacted).then_some(
            "warning: --unredacted: secrets in task configs, inputs and headers are written as they are; keep this output out of tickets, chats, logs and shared storage",
        )
    }
}

/// `view` as it may be shown: every string masked by the shared redactor when `secrets` says
/// so, untouched otherwise.
pub fn shown(mut view: Value, secrets: Secrets) -> Value {
    if secrets == Secrets::Redacted {
        secflow_common::redact::global().redact_json(&mut view);
    }
    view
}

/// Header of the list table.
pub const LIST_HEADER: &str = "TASK_ID                               RUN       NODE                 TYPE               CLASS       REASON          RETRIES  AGE      ORIGIN_QUEUE             MESSAGE";

/// One table line for `list`.
pub fn list_line(r: &DeadRecord, now_ms: u64) -> String {
    let short = |s: Option<&str>, n: usize| {
        s.map_or_else(|| "-".to_string(), |s| s.chars().take(n).collect())
    };
    format!(
        "{:<37} {:<9} {:<20} {:<18} {:<11} {:<15} {:>7}  {:<8} {:<24} {}",
        short(r.task_id.as_deref(), 36),
        short(r.run_id.as_deref(), 8),
        short(r.node_id.as_deref(), 20),
        short(r.node_type.as_deref(), 18),
        r.class,
        r.reason,
        r.retry_count,
        r.age_ms(now_ms).map_or_else(|| "-".into(), human_age),
        short(r.origin_queue.as_deref(), 24),
        r.message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(80)
            .collect::<String>(),
    )
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`.
pub fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Counts for `stats`.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Messages in the DLQ.
    pub total: usize,
    /// By error class.
    pub by_class: BTreeMap<String, usize>,
    /// By node type.
    pub by_type: BTreeMap<String, usize>,
    /// By origin work queue.
    pub by_origin_queue: BTreeMap<String, usize>,
    /// By dead-letter reason.
    pub by_reason: BTreeMap<String, usize>,
    /// Age of the oldest, ms.
    pub oldest_age_ms: Option<u64>,
}

/// Aggregates records.
pub fn stats<'a>(records: impl IntoIterator<Item = &'a DeadRecord>, now_ms: u64) -> Stats {
    let mut s = Stats::default();
    for r in records {
        s.total += 1;
        *s.by_class.entry(r.class.clone()).or_default() += 1;
        *s.by_type
            .entry(r.node_type.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        *s.by_origin_queue
            .entry(r.origin_queue.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        *s.by_reason.entry(r.reason.clone()).or_default() += 1;
        s.oldest_age_ms = s.oldest_age_ms.max(r.age_ms(now_ms));
    }
    s
}

/// Stats as text.
pub fn stats_text(s: &Stats) -> String {
    let mut out = format!(
        "{} dead-lettered tasks, oldest {}\n",
        s.total,
        s.oldest_age_ms.map_or_else(|| "-".into(), human_age)
    );
    for (title, map) in [
        ("class", &s.by_class),
        ("type", &s.by_type),
        ("origin queue", &s.by_origin_queue),
        ("reason", &s.by_reason),
    ] {
        out.push_str(&format!("by {title}:\n"));
        for (k, v) in map {
            out.push_str(&format!("  {v:>8}  {k}\n"));
        }
    }
    out
}

/// Everything about message `i`: record, headers (with the broker's `x-death`), body, timeline,
/// secrets masked unless `secrets` says otherwise.
pub fn full(session: &Session, i: usize, secrets: Secrets) -> Value {
    let d = &session.messages[i];
    full_of(&d.properties, &d.data, &session.records[i], secrets)
}

/// [`full`] of a message read earlier: its properties, body and record.
pub fn full_of(props: &BasicProperties, body: &[u8], r: &DeadRecord, secrets: Secrets) -> Value {
    let headers = props.headers().as_ref();
    let mut timeline = Vec::new();
    let mut at = |t: Option<u64>, what: String| {
        if let Some(t) = t {
            timeline.push(json!({ "at_ms": t, "event": what }));
        }
    };
    at(props.timestamp().map(|t| t * 1000), "published".into());
    at(r.first_failure_ms, "first failure".into());
    if r.retry_count > 0 {
        at(
            r.last_failure_ms,
            format!("last failure, after {} retries", r.retry_count),
        );
    }
    for (reason, death) in deaths(headers) {
        at(
            death.time_s.map(|t| t * 1000),
            format!(
                "dead-lettered by the broker from {} ({reason}, {} times)",
                death.queue.unwrap_or_default(),
                death.count
            ),
        );
    }
    at(r.dead_lettered_ms, format!("dead-lettered ({})", r.reason));
    if r.requeue_count > 0 {
        at(
            secflow_common::headers::get_u64(headers, secflow_common::headers::LAST_REQUEUED_AT),
            format!("requeued ({} times in all)", r.requeue_count),
        );
    }
    timeline.sort_by_key(|e| e["at_ms"].as_u64());
    let view = json!({
        "record": r,
        "headers": headers.map(table_to_json).unwrap_or(Value::Null),
        "body": body_json(body),
        "timeline": timeline,
    });
    shown(view, secrets)
}

/// One JSON line for `export`/`purge --export`: record, headers, body, and `redacted` (whether
/// secrets were masked, so the line is not the message as published). Unredacted, it is
/// enough to republish the task.
pub fn export_line(session: &Session, i: usize, secrets: Secrets) -> String {
    let d = &session.messages[i];
    let line = json!({
        "record": session.records[i],
        "message_id": d.properties.message_id().as_ref().map(|m| m.to_string()),
        "headers": d.properties.headers().as_ref().map(table_to_json).unwrap_or(Value::Null),
        "body": body_json(&d.data),
    });
    let mut line = shown(line, secrets);
    line["redacted"] = Value::Bool(secrets == Secrets::Redacted);
    line.to_string()
}

/// The body as JSON when it is JSON, as text when it is UTF-8, else as hex.
fn body_json(body: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(text) => json!({ "text": text }),
        Err(_) => json!({ "hex": hex::encode(body) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_unless_asked_for() {
        let view = json!({
            "body": {"config": {"api_key": "s3cr3t", "url": "https://u:pw@host/x"},
                     "inputs": {"auth": {"Authorization": "Bearer abcdefgh12345678"}},
                     "node_type": "http"},
            "headers": {"x-error-message": "GET https://admin:hunter2@h/ failed"},
        });
        let masked = shown(view.clone(), Secrets::Redacted).to_string();
        for secret in ["s3cr3t", ":pw@", "abcdefgh12345678", "hunter2"] {
            assert!(!masked.contains(secret), "{secret} in {masked}");
        }
        assert!(masked.contains("https://u:[REDACTED]@host/x") && masked.contains("\"http\""));
        assert_eq!(shown(view.clone(), Secrets::Unredacted), view);
        assert_eq!(Secrets::from_flag(false), Secrets::Redacted);
        assert!(Secrets::Redacted.warning().is_none());
        assert!(Secrets::from_flag(true).warning().is_some());
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(human_age(7_000), "7s");
        assert_eq!(human_age(306_000), "5m6s");
        assert_eq!(human_age(90_000_000), "1d1h");
    }

    #[test]
    fn stats_count_each_dimension() {
        let a = DeadRecord {
            class: "transient".into(),
            reason: "exhausted".into(),
            node_type: Some("exec".into()),
            dead_lettered_ms: Some(0),
            ..Default::default()
        };
        let b = DeadRecord {
            class: "permanent".into(),
            reason: "permanent".into(),
            node_type: Some("exec".into()),
            dead_lettered_ms: Some(500),
            ..Default::default()
        };
        let s = stats([&a, &b], 1_000);
        assert_eq!(s.total, 2);
        assert_eq!(s.by_type["exec"], 2);
        assert_eq!((s.by_class["transient"], s.by_class["permanent"]), (1, 1));
        assert_eq!(s.oldest_age_ms, Some(1_000));
    }
}
