//! What the run store keeps and returns: stored nodes, run status, errors.

use crate::{
    ErrorClass,
    control::{Level, LevelOverrides},
    recipe::{Alternative, ServedBy},
    retry::RetryPolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A node as stored with its run: parameters filled in, dependents known, task id fixed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredNode {
    /// Node id.
    pub id: String,
    /// Task id of this node in this run (the idempotency key; a resume reuses it).
    pub task_id: Uuid,
    /// Node type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Config with parameters filled in (inputs are filled in when it is published).
    pub config: Value,
    /// Input name → `node.output`.
    pub inputs: BTreeMap<String, String>,
    /// Declared outputs.
    pub outputs: Vec<String>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Timeout, ms.
    pub timeout_ms: Option<u64>,
    /// Breaker key.
    pub service: Option<String>,
    /// Whether a cached output may stand in for running it.
    #[serde(default)]
    pub cache: bool,
    /// Failure degrades the run instead of failing it.
    pub optional: bool,
    /// `success` or `always`.
    pub when: String,
    /// Nodes that take an input from this one.
    pub dependents: Vec<String>,
    /// This node only runs to undo another's effects after the run failed.
    #[serde(default)]
    pub compensation: bool,
    /// What the run is about (`producer submit --target`): given to the node as the input
    /// [`super::TARGETS_INPUT`], which tool nodes scan when their target input is unconnected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Alternatives that may serve it (parameters filled in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Alternative>,
    /// Failure classes that let its chain fall through; empty: the default ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_on: Vec<ErrorClass>,
    /// Config overrides by degradation level.
    #[serde(default, skip_serializing_if = "LevelOverrides::is_empty")]
    pub degrade: LevelOverrides,
    /// Runs at every degradation level.
    #[serde(default)]
    pub essential: bool,
}

/// How a node that completed was served, kept with its run (`_rec:NODE`) and told in its
/// `node.completed` event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The fleet's degradation level when it ran.
    pub level: Level,
    /// Config keys the level's overrides changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjusted: Vec<String>,
    /// The alternative that served it; absent when its own handler did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<ServedBy>,
    /// Quality of what served it: `full` for its own handler, else the alternative's.
    pub quality: Level,
    /// Why it was skipped at this level without running (its output is `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl NodeRecord {
    /// Whether it makes its run end `degraded`: served below `full`, or skipped.
    pub fn degrades_run(&self) -> bool {
        self.quality > Level::Full || self.skipped.is_some()
    }
}

/// What recording a node's end did ([`super::RunStore::node_end`]).
#[derive(Debug)]
pub struct NodeEnd {
    /// Dependents that became ready (or whose publish was never confirmed).
    pub ready: Vec<StoredNode>,
    /// The run's status: running, compensating, or its final status.
    pub status: String,
    /// The node's end had been recorded by another attempt first.
    pub already: bool,
    /// The run's findings so far.
    pub findings: u64,
    /// When the run was created, ms since the epoch.
    pub created_at_ms: u64,
    /// The recipe's name.
    pub name: String,
}

impl NodeEnd {
    /// Whether the run has taken its final status (compensations, if any, have ended).
    pub fn run_ended(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "partial" | "degraded" | "failed" | "cancelled"
        )
    }
}

/// Findings in a node's output: its `findings_count`, else the length of its `findings` list.
pub fn count_findings(output: &Value) -> u64 {
    output
        .get("findings_count")
        .and_then(Value::as_u64)
        .or_else(|| {
            output
                .get("findings")
                .and_then(Value::as_array)
                .map(|f| f.len() as u64)
        })
        .unwrap_or(0)
}

/// Errors of the run store.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Redis failed.
    #[error("Redis: {0} (check REDIS_URL)")]
    Redis(String),
    /// No such run.
    #[error("no run {0} in this namespace (runs are kept 7 days)")]
    UnknownRun(String),
    /// Stored data does not parse.
    #[error("run data is damaged: {0}")]
    Corrupt(String),
}

impl From<deadpool_redis::redis::RedisError> for RunError {
    /// A command Redis refused because of the value it found (wrong type, a script error on
    /// it) is damaged run data, not an unavailable Redis.
    fn from(e: deadpool_redis::redis::RedisError) -> Self {
        match crate::redis_fault::classify(&e) {
            crate::redis_fault::Fault::BadValue => {
                Self::Corrupt(format!("Redis refused a value: {e}"))
            }
            crate::redis_fault::Fault::Unreachable => Self::Redis(e.to_string()),
        }
    }
}

impl From<deadpool_redis::PoolError> for RunError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Redis(e.to_string())
    }
}

/// A run's state as `producer status` shows it.
#[derive(Debug, Serialize)]
pub struct RunStatus {
    /// Run id.
    pub run_id: String,
    /// running, succeeded, partial, degraded, failed, cancelling, compensating or cancelled.
    pub status: String,
    /// The required node whose failure failed the run.
    pub blocking_node: Option<String>,
    /// Node id → pending, queued, succeeded, failed or skipped.
    pub nodes: BTreeMap<String, String>,
    /// The run's trace (32 hex digits), when it was submitted with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Findings of the whole run so far.
    pub findings: u64,
    /// Findings by node (nodes that succeeded).
    pub node_findings: BTreeMap<String, u64>,
    /// Skipped node → the failed upstream that blocked it.
    pub blocked_by: BTreeMap<String, String>,
    /// Failed node → why (`class/code: message`).
    pub errors: BTreeMap<String, String>,
    /// Completed node → how it was served (level, alternative, quality, skipped).
    #[serde(default)]
    pub records: BTreeMap<String, NodeRecord>,
}
