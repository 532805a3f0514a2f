//! What a node's end reports besides its outcome: the published event contract's fields
//! (duration, findings, exit status, cache hit, CPU time, peak memory, dataset sizes) and the
//! per-node Prometheus metrics, both read from the handler's output and the time it took.

use secflow_common::{
    events::TaskEvent,
    runs::{NodeRecord, count_findings},
};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock, PoisonError, RwLock},
    time::Duration,
};

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
    if let Some(r) = report {
        let seconds = r.duration.as_secs_f64();
        let result = usize::from(r.cache_hit);
        match (handles(node_type), outcome_index(outcome)) {
            (Some(h), Some(i)) => {
                h.duration[i]
                    .get_or_init(|| duration(node_type, outcome))
                    .record(seconds);
                h.cache[result]
                    .get_or_init(|| cache(node_type, result))
                    .increment(1);
            }
            _ => {
                duration(node_type, outcome).record(seconds);
                cache(node_type, result).increment(1);
            }
        }
    }
    let Some(output) = output else { return };
    if let Some(code) = output.get("exit_code").and_then(Value::as_i64) {
        metrics::counter!("secflow_node_exit_status_total", "type" => node_type.to_string(), "status" => code.to_string())
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
        metrics::counter!("secflow_node_findings_total", "type" => node_type.to_string(), "severity" => severity)
            .increment(n);
    }
}

/// Counts a settled delivery in `secflow_tasks_settled_total{outcome}`.
pub fn settled(outcome: &'static str) {
    static SETTLED: [OnceLock<metrics::Counter>; OUTCOMES.len()] =
        [const { OnceLock::new() }; OUTCOMES.len()];
    let settled = |outcome: &'static str| metrics::counter!("secflow_tasks_settled_total", "outcome" => outcome);
    match outcome_index(outcome) {
        Some(i) => SETTLED[i].get_or_init(|| settled(outcome)).increment(1),
        None => settled(outcome).increment(1),
    }
}

fn duration(node_type: &str, outcome: &'static str) -> metrics::Histogram {
    metrics::histogram!("secflow_node_duration_seconds", "type" => node_type.to_string(), "outcome" => outcome)
}

/// `result`: 0 a miss, 1 a hit.
fn cache(node_type: &str, result: usize) -> metrics::Counter {
    let result = if result == 1 { "hit" } else { "miss" };
    metrics::counter!("secflow_node_cache_total", "type" => node_type.to_string(), "result" => result)
}

/// How a delivery was settled, as the `outcome` label of the per-task metrics says it.
const OUTCOMES: [&str; 7] = [
    "completed",
    "cancelled",
    "retried",
    "dead_lettered",
    "handed_back",
    "deferred",
    "duplicate",
];

fn outcome_index(outcome: &str) -> Option<usize> {
    OUTCOMES.iter().position(|o| *o == outcome)
}

/// Node types whose handles are kept at most; more (not expected: types are the handlers')
/// are recorded through the registry each time.
const MAX_TYPES: usize = 1024;

/// The per-node metric handles of one node type, each made on first use. A `counter!` or
/// `histogram!` with labels builds its key (label strings copied), hashes it and looks it up
/// in the registry on every call; a handle records directly.
#[derive(Default)]
struct NodeHandles {
    /// `secflow_node_duration_seconds`, by outcome (as in [`OUTCOMES`]).
    duration: [OnceLock<metrics::Histogram>; OUTCOMES.len()],
    /// `secflow_node_cache_total`, miss then hit.
    cache: [OnceLock<metrics::Counter>; 2],
}

/// The handles of each node type seen.
static NODES: RwLock<BTreeMap<String, Arc<NodeHandles>>> = RwLock::new(BTreeMap::new());

/// The handles of `node_type` (`None` once too many types were seen).
fn handles(node_type: &str) -> Option<Arc<NodeHandles>> {
    if let Some(h) = NODES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(node_type)
    {
        return Some(h.clone());
    }
    let mut nodes = NODES.write().unwrap_or_else(PoisonError::into_inner);
    if nodes.len() >= MAX_TYPES && !nodes.contains_key(node_type) {
        return None;
    }
    Some(nodes.entry(node_type.to_string()).or_default().clone())
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
