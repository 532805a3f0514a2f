//! Error analytics over a window of the audit trail: errors per minute, by class and severity,
//! the most frequent failures (by fingerprint), the recovery rate (tasks that failed at least
//! once and then completed / tasks that failed) and the mean time to recovery per service.

use secflow_common::events::TaskEvent;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The error rate our alerting names: above it the fleet is unwell.
pub const ERROR_RATE_THRESHOLD: f64 = 0.10;

/// The figures for one window.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Analytics {
    pub since_ms: u64,
    pub until_ms: u64,
    /// Failed attempts (retried or dead-lettered).
    pub errors: u64,
    /// Attempts that ended (completed, retried or dead-lettered).
    pub attempts: u64,
    /// errors / attempts.
    pub error_rate: f64,
    pub errors_per_minute: f64,
    /// The busiest minute: its start (ms) and errors.
    pub peak_minute: Option<(u64, u64)>,
    pub by_class: BTreeMap<String, u64>,
    pub by_severity: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub top_fingerprints: Vec<Fingerprint>,
    /// Tasks with at least one failure in the window.
    pub failed_tasks: u64,
    /// Of those, tasks that then completed.
    pub recovered_tasks: u64,
    /// recovered / failed (`None`: nothing failed).
    pub recovery_rate: Option<f64>,
    /// Per service: mean ms from a task's first failure to its completion, and how many.
    pub task_recovery_ms: BTreeMap<String, Mean>,
    /// Per service: mean ms its breaker stayed open before closing again, and how often.
    pub breaker_outage_ms: BTreeMap<String, Mean>,
}

/// One failure, told apart from its incidental details.
#[derive(Debug, PartialEq, Serialize)]
pub struct Fingerprint {
    pub fingerprint: String,
    pub count: u64,
    pub class: String,
    pub code: String,
    pub node_type: String,
    /// The latest message (redacted as events are).
    pub message: String,
}

/// A mean over `count` samples.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Mean {
    pub mean_ms: u64,
    pub count: u64,
}

/// Computes the figures of `events` (in stored order) between `since_ms` and `until_ms`,
/// keeping the `top` most frequent fingerprints.
pub fn compute(events: &[TaskEvent], since_ms: u64, until_ms: u64, top: usize) -> Analytics {
    let mut a = Analytics {
        since_ms,
        until_ms,
        ..Analytics::default()
    };
    let mut minutes: BTreeMap<u64, u64> = BTreeMap::new();
    let mut prints: HashMap<String, Fingerprint> = HashMap::new();
    // Task → (service, first failure at), and task → its first completion at. A task that
    // failed and completed recovered, whichever of its events was stored first (events of
    // different kinds are published in separate messages).
    let mut first_failure: HashMap<uuid::Uuid, (String, u64)> = HashMap::new();
    let mut completed: HashMap<uuid::Uuid, u64> = HashMap::new();
    let mut opened: HashMap<String, u64> = HashMap::new();
    let mut outages: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        let service = e
            .service
            .clone()
            .or_else(|| e.node_type.clone())
            .unwrap_or_default();
        match e.kind.as_str() {
            "node.completed" => {
                a.attempts += 1;
                if let Some(task) = e.task_id {
                    completed.entry(task).or_insert(e.at_ms);
                }
            }
            "node.retrying" | "node.dead_lettered" => {
                a.attempts += 1;
                a.errors += 1;
                if e.kind == "node.dead_lettered" {
                    a.dead_lettered += 1;
                }
                *minutes.entry(e.at_ms / 60_000 * 60_000).or_default() += 1;
                if let Some(task) = e.task_id {
                    first_failure.entry(task).or_insert((service, e.at_ms));
                }
                if let Some(sev) = e.severity {
                    *a.by_severity.entry(sev.as_str().to_string()).or_default() += 1;
                }
                if let Some(err) = &e.error {
                    *a.by_class.entry(err.class.clone()).or_default() += 1;
                    let key = err.fingerprint.clone().unwrap_or_else(|| {
                        format!(
                            "{}/{}/{}",
                            err.class,
                            err.code,
                            e.node_type.as_deref().unwrap_or("")
                        )
                    });
                    let p = prints.entry(key.clone()).or_insert_with(|| Fingerprint {
                        fingerprint: key,
                        count: 0,
                        class: err.class.clone(),
                        code: err.code.clone(),
                        node_type: e.node_type.clone().unwrap_or_default(),
                        message: String::new(),
                    });
                    p.count += 1;
                    p.message = err.message.clone();
                }
            }
            "breaker.opened" => {
                if let Some(s) = breaker_service(e) {
                    opened.entry(s).or_insert(e.at_ms);
                }
            }
            "breaker.closed" => {
                if let Some(s) = breaker_service(e)
                    && let Some(at) = opened.remove(&s)
                {
                    outages
                        .entry(s)
                        .or_default()
                        .push(e.at_ms.saturating_sub(at));
                }
            }
            _ => {}
        }
    }
    let minutes_in_window = (until_ms.saturating_sub(since_ms) as f64 / 60_000.0).max(1.0 / 60.0);
    a.errors_per_minute = a.errors as f64 / minutes_in_window;
    a.peak_minute = minutes
        .into_iter()
        .max_by_key(|&(at, n)| (n, std::cmp::Reverse(at)));
    a.error_rate = if a.attempts == 0 {
        0.0
    } else {
        a.errors as f64 / a.attempts as f64
    };
    let mut prints: Vec<Fingerprint> = prints.into_values().collect();
    prints.sort_by(|x, y| {
        y.count
            .cmp(&x.count)
            .then(x.fingerprint.cmp(&y.fingerprint))
    });
    prints.truncate(top);
    a.top_fingerprints = prints;
    let recovered: HashMap<uuid::Uuid, u64> = completed
        .into_iter()
        .filter_map(|(task, done_at)| {
            let (_, failed_at) = first_failure.get(&task)?;
            Some((task, done_at.saturating_sub(*failed_at)))
        })
        .collect();
    a.failed_tasks = first_failure.len() as u64;
    a.recovered_tasks = recovered.len() as u64;
    a.recovery_rate =
        (a.failed_tasks > 0).then(|| a.recovered_tasks as f64 / a.failed_tasks as f64);
    let mut per_service: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (task, took) in recovered {
        if let Some((service, _)) = first_failure.get(&task) {
            per_service.entry(service.clone()).or_default().push(took);
        }
    }
    a.task_recovery_ms = means(per_service);
    a.breaker_outage_ms = means(outages);
    a
}

fn breaker_service(e: &TaskEvent) -> Option<String> {
    e.output
        .as_ref()
        .and_then(|o| o["service"].as_str())
        .map(str::to_string)
}

fn means(samples: BTreeMap<String, Vec<u64>>) -> BTreeMap<String, Mean> {
    samples
        .into_iter()
        .map(|(k, v)| {
            let count = v.len() as u64;
            let mean_ms = v.iter().sum::<u64>() / count.max(1);
            (k, Mean { mean_ms, count })
        })
        .collect()
}

/// The figures as text for people.
pub fn text(a: &Analytics) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let minutes = a.until_ms.saturating_sub(a.since_ms) / 60_000;
    let _ = writeln!(
        out,
        "window: last {minutes} min; {} attempts ended, {} failed ({:.1} % error rate{}), {} dead-lettered",
        a.attempts,
        a.errors,
        a.error_rate * 100.0,
        if a.error_rate > ERROR_RATE_THRESHOLD {
            format!(
                ", above the {:.0} % threshold",
                ERROR_RATE_THRESHOLD * 100.0
            )
        } else {
            String::new()
        },
        a.dead_lettered
    );
    let _ = write!(out, "errors per minute: {:.2}", a.errors_per_minute);
    if let Some((at, n)) = a.peak_minute {
        let _ = write!(
            out,
            " (peak {n} in the minute from {})",
            crate::trail::time_text(at)
        );
    }
    out.push('\n');
    let join = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "by class: {}", or_none(&join(&a.by_class)));
    let _ = writeln!(out, "by severity: {}", or_none(&join(&a.by_severity)));
    match a.recovery_rate {
        Some(r) => {
            let _ = writeln!(
                out,
                "recovery: {} of {} failed tasks then completed ({:.1} %)",
                a.recovered_tasks,
                a.failed_tasks,
                r * 100.0
            );
        }
        None => out.push_str("recovery: no task failed\n"),
    }
    for (service, m) in &a.task_recovery_ms {
        let _ = writeln!(
            out,
            "  {service}: mean time to recovery {} ms over {} tasks",
            m.mean_ms, m.count
        );
    }
    for (service, m) in &a.breaker_outage_ms {
        let _ = writeln!(
            out,
            "  {service}: breaker open {} ms on average, {} times",
            m.mean_ms, m.count
        );
    }
    if !a.top_fingerprints.is_empty() {
        out.push_str("top failures:\n");
        for p in &a.top_fingerprints {
            let _ = writeln!(
                out,
                "  {:>6}  {}/{}  {}  {}  [{}]",
                p.count,
                p.class,
                p.code,
                p.node_type,
                p.message.chars().take(100).collect::<String>(),
                &p.fingerprint[..p.fingerprint.len().min(12)]
            );
        }
    }
    out
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::{events::EventError, severity::Severity};
    use serde_json::json;

    fn failure(kind: &str, task: uuid::Uuid, at: u64, class: &str, print: &str) -> TaskEvent {
        let mut e = TaskEvent::new(kind, "w").about(Some(task), None);
        e.at_ms = at;
        e.node_type = Some("scan.x".into());
        e.service = Some("svc".into());
        let outcome = if kind == "node.dead_lettered" {
            "dead_lettered"
        } else {
            "retried"
        };
        e.severity = Some(Severity::of_failure(class, outcome, Some(class)));
        e.error = Some(EventError {
            class: class.into(),
            code: "c".into(),
            message: "m".into(),
            fingerprint: Some(print.into()),
        });
        e
    }

    fn done(task: uuid::Uuid, at: u64) -> TaskEvent {
        let mut e = TaskEvent::new("node.completed", "w").about(Some(task), None);
        e.at_ms = at;
        e
    }

    #[test]
    fn recovery_rate_and_time_count_tasks_that_completed_after_failing() {
        let (a, b, c) = (
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
        );
        let events = vec![
            failure("node.retrying", a, 1_000, "transient", "p1"),
            failure("node.retrying", a, 2_000, "transient", "p1"),
            done(a, 4_000),
            // Stored before the failure it follows: still a recovery.
            done(b, 3_000),
            failure("node.retrying", b, 1_000, "transient", "p1"),
            failure("node.dead_lettered", c, 5_000, "permanent", "p2"),
            done(uuid::Uuid::now_v7(), 6_000),
        ];
        let r = compute(&events, 0, 120_000, 5);
        assert_eq!((r.failed_tasks, r.recovered_tasks), (3, 2));
        assert_eq!(r.recovery_rate, Some(2.0 / 3.0));
        assert_eq!(
            r.task_recovery_ms["svc"],
            Mean {
                mean_ms: 2_500,
                count: 2
            }
        );
        assert_eq!((r.errors, r.attempts, r.dead_lettered), (4, 7, 1));
        assert_eq!(r.errors_per_minute, 2.0);
        assert_eq!(r.by_class["transient"], 3);
        assert_eq!(r.by_severity["low"], 3);
        assert_eq!(r.top_fingerprints[0].fingerprint, "p1");
        assert_eq!(r.top_fingerprints[0].count, 3);
        assert_eq!(r.peak_minute, Some((0, 4)));
    }

    #[test]
    fn breaker_outages_are_timed_per_service() {
        let mut opened = TaskEvent::new("breaker.opened", "w");
        opened.at_ms = 1_000;
        opened.output = Some(json!({"service": "nvd"}));
        let mut closed = TaskEvent::new("breaker.closed", "w");
        closed.at_ms = 31_000;
        closed.output = Some(json!({"service": "nvd"}));
        let r = compute(&[opened, closed], 0, 60_000, 5);
        assert_eq!(
            r.breaker_outage_ms["nvd"],
            Mean {
                mean_ms: 30_000,
                count: 1
            }
        );
        assert_eq!(r.recovery_rate, None);
        assert!(text(&r).contains("nvd: breaker open 30000 ms"));
    }
}
