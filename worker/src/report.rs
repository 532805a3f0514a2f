//! What a node's end reports besides its outcome: the published event contract's fields
//! (duration, findings, exit status, cache hit, CPU time, peak memory, dataset sizes) and the
//! per-node Prometheus metrics, both read from the handler's output and the time it took.

use secflow_common::{
    events::TaskEvent,
    runs::{NodeRecord, count_findings},
};
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};

/// How the task's attempt ran (absent when it never reached its handler).
#[derive(Clone, Debug, Default)]
pub struct NodeReport {
    /// Time its handler ran (zero for a cached output), its fallback alternatives' included.
    pub duration: Duration,
    /// A cached output stood in for running it.
    pub cache_hit: bool,
    /// How it was served: the degradation level, the alternative that served it and its
    /// quality, or why it was skipped.
    pub record: NodeRecord,
    /// Its fallback chain already told each step's breaker how the step went.
    pub breakers_told: bool,
}

/// Fills the contract fields of a `node.completed` event from the node's `output`, and how it
/// was served (level, quality, alternative, skip).
pub fn completed(event: &mut TaskEvent, output: &Value, report: Option<&NodeReport>) {
    timed(event, report);
    if let Some(r) = report {
        event.level = Some(r.record.level);
        event.quality = Some(r.record.quality);
        event.served_by.clone_from(&r.record.served_by);
        event.skipped.clone_from(&r.record.skipped);
    }
    event.findings = Some(count_findings(output));
    let counts: BTreeMap<String, u64> = output
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_array().map(|a| (k.clone(), a.len() as u64)))
                .collect()
        })
        .unwrap_or_default();
    event.counts = (!counts.is_empty()).then_some(counts);
    event.exit_status = output.get("exit_code").and_then(Value::as_i64);
    let usage = output.get("usage");
    event.cpu_time = usage
        .and_then(|u| u.get("cpu_seconds"))
        .and_then(Value::as_f64);
    event.peak_memory = usage
        .and_then(|u| u.get("max_rss_bytes"))
        .and_then(Value::as_u64);
}

/// Fills the duration and cache hit of any node event.
pub fn timed(event: &mut TaskEvent, report: Option<&NodeReport>) {
    if let Some(r) = report {
        event.duration = Some(r.duration.as_secs_f64());
        event.cache_hit = Some(r.cache_hit);
    }
}

/// Records the per-node metrics of an ended attempt: duration by type and outcome, exit status,
/// cache hits and misses, findings by type and severity.
pub fn record(
    node_type: &str,
    outcome: &'static str,
    output: Option<&Value>,
    report: Option<&NodeReport>,
) {
    let ty = node_type.to_string();
    if let Some(r) = report {
        metrics::histogram!("secflow_node_duration_seconds", "type" => ty.clone(), "outcome" => outcome)
            .record(r.duration.as_secs_f64());
        let result = if r.cache_hit { "hit" } else { "miss" };
        metrics::counter!("secflow_node_cache_total", "type" => ty.clone(), "result" => result)
            .increment(1);
    }
    let Some(output) = output else { return };
    if let Some(code) = output.get("exit_code").and_then(Value::as_i64) {
        metrics::counter!("secflow_node_exit_status_total", "type" => ty.clone(), "status" => code.to_string())
            .increment(1);
    }
    let mut by_severity: BTreeMap<&'static str, u64> = BTreeMap::new();
    for finding in output
        .get("findings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let written = finding.get("severity").and_then(Value::as_str);
        let severity = SEVERITIES
            .into_iter()
            .find(|s| Some(*s) == written)
            .unwrap_or("info");
        *by_severity.entry(severity).or_default() += 1;
    }
    for (severity, n) in by_severity {
        metrics::counter!("secflow_node_findings_total", "type" => ty.clone(), "severity" => severity)
            .increment(n);
    }
}

/// Severities a finding may have; anything else is counted as `info`.
const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

/// Buckets of `secflow_node_duration_seconds`: tool runs last from milliseconds to minutes.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1500.0,
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_completion_carries_the_contract_fields() {
        let mut e = TaskEvent::new("node.completed", "w");
        let output = json!({
            "exit_code": 0, "usage": {"cpu_seconds": 0.25, "max_rss_bytes": 4096},
            "findings": [{"severity": "high"}, {"severity": "low"}], "urls": ["a", "b", "c"],
        });
        let report = NodeReport {
            duration: Duration::from_millis(1500),
            record: NodeRecord {
                level: secflow_common::control::Level::Medium,
                served_by: Some(secflow_common::recipe::ServedBy {
                    index: 2,
                    node_type: "builtin.static".into(),
                }),
                quality: secflow_common::control::Level::Low,
                ..NodeRecord::default()
            },
            ..NodeReport::default()
        };
        completed(&mut e, &output, Some(&report));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "node_completed");
        assert_eq!(v["duration"], 1.5);
        assert_eq!(v["findings"], 2);
        assert_eq!(v["counts"], json!({"findings": 2, "urls": 3}));
        assert_eq!(
            (v["exit_status"].clone(), v["cache_hit"].clone()),
            (json!(0), json!(false))
        );
        assert_eq!(
            (v["cpu_time"].clone(), v["peak_memory"].clone()),
            (json!(0.25), json!(4096))
        );
        assert_eq!(
            (v["level"].clone(), v["quality"].clone()),
            (json!("medium"), json!("low"))
        );
        assert_eq!(
            v["served_by"],
            json!({"index": 2, "type": "builtin.static"})
        );
        assert!(v.get("skipped").is_none());
    }
}
