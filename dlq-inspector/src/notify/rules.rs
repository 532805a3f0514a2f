//! What deserves a notification, and how often: pure decisions over audit events.
//!
//! Notified: dead letters and security rejections (at or above `--min-severity`), breaker
//! openings, backlogged queues, unresponsive workers, and error-rate anomalies (the share of
//! failed attempts over a sliding window above a threshold). One notification per fingerprint
//! per dedup window (the next one says how many were suppressed); at most N per minute per
//! destination (the next one says how many were dropped).

use secflow_common::{events::TaskEvent, severity::Severity};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// A notification to send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// `dead_letter`, `security`, `breaker_open`, `backlog`, `worker_unresponsive`,
    /// `error_rate`.
    pub kind: &'static str,
    pub severity: Severity,
    /// What makes two alerts the same alert.
    pub fingerprint: String,
    /// One line for people.
    pub title: String,
    /// Alerts of this fingerprint suppressed since the last one sent.
    pub suppressed: u64,
    pub at_ms: u64,
    /// The event behind it (as published; already redacted by its publisher).
    pub event: serde_json::Value,
}

/// The notifier's settings.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Failures less severe than this are not notified.
    pub min_severity: Severity,
    /// One alert per fingerprint per this many ms.
    pub dedup_ms: u64,
    /// Error-rate anomaly: share of failed attempts over `window_ms`, with at least
    /// `min_attempts` attempts in the window.
    pub error_rate: f64,
    pub window_ms: u64,
    pub min_attempts: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_severity: Severity::High,
            dedup_ms: 600_000,
            error_rate: 0.10,
            window_ms: 300_000,
            min_attempts: 20,
        }
    }
}

/// The alert an event calls for, if any (before deduplication).
pub fn alert_for(event: &TaskEvent, json: &serde_json::Value, policy: &Policy) -> Option<Alert> {
    let what = event
        .node_type
        .clone()
        .unwrap_or_else(|| "task".to_string());
    let detail = event
        .error
        .as_ref()
        .map(|e| format!("{}/{}: {}", e.class, e.code, e.message))
        .unwrap_or_default();
    let output = |key: &str| {
        event
            .output
            .as_ref()
            .and_then(|o| o[key].as_str())
            .unwrap_or("?")
            .to_string()
    };
    let (kind, severity, fingerprint, title) = match event.kind.as_str() {
        "node.dead_lettered" | "node.retrying" => {
            let severity = event.severity?;
            if severity > policy.min_severity {
                return None;
            }
            let print = event
                .error
                .as_ref()
                .and_then(|e| e.fingerprint.clone())
                .unwrap_or_else(|| format!("{what}:{detail}"));
            let kind = if severity == Severity::Critical {
                "security"
            } else {
                "dead_letter"
            };
            let verb = if event.kind == "node.dead_lettered" {
                "dead-lettered"
            } else {
                "failed"
            };
            (kind, severity, print, format!("{what} {verb}: {detail}"))
        }
        "breaker.opened" => {
            let service = output("service");
            (
                "breaker_open",
                Severity::High,
                format!("breaker:{service}"),
                format!("circuit breaker for {service} opened: its tasks are deferred"),
            )
        }
        "queue.backlog" => {
            let queue = output("queue");
            (
                "backlog",
                Severity::Medium,
                format!("backlog:{queue}"),
                format!("queue {queue} is backlogged"),
            )
        }
        "worker.unresponsive" => {
            let worker = output("worker");
            (
                "worker_unresponsive",
                Severity::High,
                format!("unresponsive:{worker}"),
                format!("worker {worker} stopped answering"),
            )
        }
        _ => return None,
    };
    Some(Alert {
        kind,
        severity,
        fingerprint,
        title,
        suppressed: 0,
        at_ms: event.at_ms,
        event: json.clone(),
    })
}

/// One alert per fingerprint per window.
#[derive(Debug, Default)]
pub struct Dedup {
    /// Fingerprint → (last sent at, suppressed since).
    seen: HashMap<String, (u64, u64)>,
}

impl Dedup {
    /// `alert` to send now (with the count suppressed before it), or `None` if one of its
    /// fingerprint went out less than `window_ms` ago.
    pub fn admit(&mut self, mut alert: Alert, now_ms: u64, window_ms: u64) -> Option<Alert> {
        // Forget what is long past, so the map stays small.
        if self.seen.len() > 10_000 {
            self.seen
                .retain(|_, (at, _)| now_ms.saturating_sub(*at) < window_ms);
        }
        match self.seen.get_mut(&alert.fingerprint) {
            Some((at, suppressed)) if now_ms.saturating_sub(*at) < window_ms => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                alert.suppressed = std::mem::take(suppressed);
                *at = now_ms;
                Some(alert)
            }
            None => {
                self.seen.insert(alert.fingerprint.clone(), (now_ms, 0));
                Some(alert)
            }
        }
    }
}

/// At most `per_minute` sends in any minute (a token bucket refilled continuously).
#[derive(Debug)]
pub struct RateLimit {
    per_minute: f64,
    tokens: f64,
    last_ms: u64,
    /// Alerts dropped since the last one let through.
    pub dropped: u64,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute),
            tokens: f64::from(per_minute),
            last_ms: 0,
            dropped: 0,
        }
    }

    /// Whether one more may go now; the dropped count is taken by the caller when it may.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 60_000.0;
        self.tokens = (self.tokens + elapsed * self.per_minute).min(self.per_minute);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// The share of failed attempts over a sliding window.
#[derive(Debug, Default)]
pub struct ErrorRate {
    /// (at, failed) of each attempt in the window.
    attempts: VecDeque<(u64, bool)>,
    failed: u64,
    /// Whether the rate is above the threshold now (an alert fires on the way up).
    above: bool,
}

impl ErrorRate {
    /// Counts `event` if it ends an attempt; an alert when the rate crosses the threshold.
    pub fn observe(&mut self, event: &TaskEvent, policy: &Policy) -> Option<Alert> {
        let failed = match event.kind.as_str() {
            "node.completed" => false,
            "node.retrying" | "node.dead_lettered" => true,
            _ => return None,
        };
        self.attempts.push_back((event.at_ms, failed));
        self.failed += u64::from(failed);
        while let Some(&(at, f)) = self.attempts.front() {
            if event.at_ms.saturating_sub(at) <= policy.window_ms {
                break;
            }
            self.attempts.pop_front();
            self.failed -= u64::from(f);
        }
        let total = self.attempts.len() as u64;
        let rate = self.failed as f64 / total.max(1) as f64;
        let above = total >= policy.min_attempts && rate > policy.error_rate;
        let crossed = above && !self.above;
        // Back under at most 80 % of the threshold re-arms it (no flapping at the edge).
        if above {
            self.above = true;
        } else if rate <= policy.error_rate * 0.8 {
            self.above = false;
        }
        crossed.then(|| Alert {
            kind: "error_rate",
            severity: Severity::High,
            fingerprint: "error_rate".into(),
            title: format!(
                "error rate {:.1} % over the last {} s ({} of {} attempts failed), above {:.0} %",
                rate * 100.0,
                policy.window_ms / 1000,
                self.failed,
                total,
                policy.error_rate * 100.0
            ),
            suppressed: 0,
            at_ms: event.at_ms,
            event: serde_json::json!({ "error_rate": rate, "failed": self.failed, "attempts": total }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::events::EventError;

    fn dead(class: &str, print: &str, at: u64) -> TaskEvent {
        let mut e = TaskEvent::new("node.dead_lettered", "w");
        e.at_ms = at;
        e.node_type = Some("scan.x".into());
        e.severity = Some(Severity::of_failure(class, "dead_lettered", Some(class)));
        e.error = Some(EventError {
            class: class.into(),
            code: "c".into(),
            message: "m".into(),
            fingerprint: Some(print.into()),
        });
        e
    }

    #[test]
    fn dead_letters_security_and_breakers_are_alerts_retries_are_not() {
        let p = Policy::default();
        let v = serde_json::Value::Null;
        assert_eq!(
            alert_for(&dead("permanent", "a", 1), &v, &p).unwrap().kind,
            "dead_letter"
        );
        let security = alert_for(&dead("security", "s", 1), &v, &p).unwrap();
        assert_eq!(
            (security.kind, security.severity),
            ("security", Severity::Critical)
        );
        // Validation dead letters are medium: below the default minimum.
        assert!(alert_for(&dead("validation", "v", 1), &v, &p).is_none());
        let mut retry = dead("transient", "t", 1);
        retry.kind = "node.retrying".into();
        retry.severity = Some(Severity::Low);
        assert!(alert_for(&retry, &v, &p).is_none());
        let mut opened = TaskEvent::new("breaker.opened", "w");
        opened.output = Some(serde_json::json!({"service": "nvd"}));
        let alert = alert_for(&opened, &v, &p).unwrap();
        assert_eq!(alert.fingerprint, "breaker:nvd");
        assert!(alert_for(&TaskEvent::new("node.completed", "w"), &v, &p).is_none());
    }

    #[test]
    fn one_alert_per_fingerprint_per_window_and_the_next_counts_the_rest() {
        let p = Policy::default();
        let v = serde_json::Value::Null;
        let mut dedup = Dedup::default();
        let alert = |print: &str, at| alert_for(&dead("permanent", print, at), &v, &p).unwrap();
        assert!(dedup.admit(alert("a", 0), 0, 1000).is_some());
        assert!(dedup.admit(alert("a", 10), 10, 1000).is_none());
        assert!(dedup.admit(alert("a", 20), 20, 1000).is_none());
        assert!(dedup.admit(alert("b", 30), 30, 1000).is_some());
        let again = dedup.admit(alert("a", 1500), 1500, 1000).unwrap();
        assert_eq!(again.suppressed, 2);
    }

    #[test]
    fn the_rate_limit_lets_a_minutes_worth_through_then_refills() {
        let mut limit = RateLimit::new(3);
        assert!((0..3).all(|_| limit.allow(0)));
        assert!(!limit.allow(0));
        assert_eq!(limit.dropped, 1);
        assert!(limit.allow(20_000), "a third of a minute refills one");
        assert!(!limit.allow(20_000));
    }

    #[test]
    fn the_error_rate_alerts_once_on_the_way_up() {
        let p = Policy {
            min_attempts: 10,
            ..Policy::default()
        };
        let mut rate = ErrorRate::default();
        let ok = |at| {
            let mut e = TaskEvent::new("node.completed", "w");
            e.at_ms = at;
            e
        };
        let mut alerts = 0;
        for i in 0..9 {
            alerts += usize::from(rate.observe(&ok(i), &p).is_some());
        }
        // 2 of 11 failed: 18 %, above 10 %.
        alerts += usize::from(rate.observe(&dead("transient", "x", 10), &p).is_some());
        let alert = rate.observe(&dead("transient", "x", 11), &p);
        assert!(alert.is_some_and(|a| a.title.starts_with("error rate 18.2 %")));
        for i in 12..20 {
            alerts += usize::from(rate.observe(&dead("transient", "x", i), &p).is_some());
        }
        assert_eq!(alerts, 0, "one alert while it stays above");
        // Long after, the window holds only successes.
        for i in 0..20 {
            rate.observe(&ok(1_000_000 + i), &p);
        }
        assert!(!rate.above);
    }
}
