//! Delivery of alerts to one destination, on a task of its own: a bounded queue (a full one
//! drops and counts), a rate limit, and retries with backoff for failures that may pass
//! (connection errors, 5xx, 429 with its `Retry-After`).

use super::rules::{Alert, RateLimit};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

/// Alerts waiting for one destination at most.
const QUEUE: usize = 1000;
/// Attempts per alert.
const ATTEMPTS: u32 = 4;
/// Longest wait for one HTTP request.
const REQUEST: Duration = Duration::from_secs(10);

/// The body a destination takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The alert as JSON (`kind`, `severity`, `fingerprint`, `title`, `suppressed`,
    /// `rate_limited`, `namespace`, `at_ms`, `event`).
    Json,
    /// Slack's incoming-webhook body (`{"text": ...}`), which Mattermost and others take too.
    Slack,
}

/// A destination's queue; alerts handed to it are sent in order, in the background.
pub struct Destination {
    tx: mpsc::Sender<Alert>,
    /// Alerts dropped because the queue was full.
    pub overflow: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Destination {
    /// Starts the sender for `url` in `format`, at most `per_minute` alerts a minute.
    pub fn start(
        client: reqwest::Client,
        url: String,
        format: Format,
        namespace: String,
        per_minute: u32,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Alert>(QUEUE);
        let overflow = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(async move {
            let mut limit = RateLimit::new(per_minute);
            while let Some(alert) = rx.recv().await {
                if !limit.allow(secflow_common::now_ms()) {
                    tracing::warn!(url = %redact(&url), fingerprint = %alert.fingerprint, "notification rate limit reached: alert dropped (counted in the next one)");
                    continue;
                }
                let dropped = std::mem::take(&mut limit.dropped);
                let body = body(&alert, format, &namespace, dropped);
                deliver(&client, &url, &body).await;
            }
        });
        Self { tx, overflow }
    }

    /// Queues `alert` without waiting; a full queue drops it (counted, logged).
    pub fn send(&self, alert: Alert) {
        if self.tx.try_send(alert).is_err() {
            self.overflow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("notification queue full: alert dropped");
        }
    }
}

/// The request body of `alert` in `format`.
pub fn body(
    alert: &Alert,
    format: Format,
    namespace: &str,
    rate_limited: u64,
) -> serde_json::Value {
    match format {
        Format::Json => json!({
            "source": "secflow",
            "namespace": namespace,
            "kind": alert.kind,
            "severity": alert.severity,
            "fingerprint": alert.fingerprint,
            "title": alert.title,
            "suppressed": alert.suppressed,
            "rate_limited": rate_limited,
            "at_ms": alert.at_ms,
            "event": alert.event,
        }),
        Format::Slack => {
            let mut text = format!(
                "*[{}] {}* ({namespace}): {}",
                alert.severity.as_str().to_uppercase(),
                alert.kind.replace('_', " "),
                alert.title
            );
            for (label, key) in [
                ("run", "run_id"),
                ("task", "task_id"),
                ("trace", "trace_id"),
            ] {
                if let Some(v) = alert.event[key].as_str() {
                    text.push_str(&format!(" {label} `{v}`"));
                }
            }
            if alert.suppressed > 0 {
                text.push_str(&format!(" (+{} more like it)", alert.suppressed));
            }
            if rate_limited > 0 {
                text.push_str(&format!(
                    " ({rate_limited} alerts dropped by the rate limit)"
                ));
            }
            json!({ "text": text })
        }
    }
}

/// Posts `body` to `url`, retrying what may pass; a final failure is logged.
async fn deliver(client: &reqwest::Client, url: &str, body: &serde_json::Value) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let sent = client.post(url).json(body).timeout(REQUEST).send().await;
        let retry_after = match &sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(300))),
            Ok(r) => {
                tracing::error!(url = %redact(url), status = %r.status(), "notification refused: not retried");
                return;
            }
            Err(_) => None,
        };
        let why = match &sent {
            Ok(r) => r.status().to_string(),
            Err(e) => e.to_string(),
        };
        if attempt == ATTEMPTS {
            tracing::error!(url = %redact(url), error = %why, attempts = ATTEMPTS, "notification not delivered");
            return;
        }
        tracing::warn!(url = %redact(url), error = %why, attempt, "notification failed; retrying");
        tokio::time::sleep(retry_after.unwrap_or(wait)).await;
        wait *= 2;
    }
}

/// A webhook URL fit for a log line: its path often is the secret.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split('/').next().unwrap_or_default();
            format!("{scheme}://{host}/…")
        }
        None => "(webhook)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::severity::Severity;

    fn alert() -> Alert {
        Alert {
            kind: "dead_letter",
            severity: Severity::High,
            fingerprint: "f".into(),
            title: "scan.x dead-lettered: permanent/gone: gone".into(),
            suppressed: 3,
            at_ms: 1,
            event: json!({"run_id": "r1", "task_id": "t1"}),
        }
    }

    #[test]
    fn slack_gets_one_line_of_text_with_what_to_look_up() {
        let b = body(&alert(), Format::Slack, "prod", 2);
        let text = b["text"].as_str().unwrap();
        assert!(
            text.starts_with("*[HIGH] dead letter* (prod): scan.x dead-lettered"),
            "{text}"
        );
        assert!(
            text.contains("run `r1`") && text.contains("task `t1`"),
            "{text}"
        );
        assert!(
            text.contains("+3 more like it") && text.contains("2 alerts dropped"),
            "{text}"
        );
    }

    #[test]
    fn the_json_body_carries_the_alert_and_its_event() {
        let b = body(&alert(), Format::Json, "prod", 0);
        assert_eq!(b["kind"], "dead_letter");
        assert_eq!(b["severity"], "high");
        assert_eq!(b["suppressed"], 3);
        assert_eq!(b["event"]["task_id"], "t1");
    }

    #[test]
    fn urls_in_logs_lose_their_path() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
    }
}
