//! What flows between nodes: the outputs a node stores, and the task a dependent receives
//! with its inputs filled in.

use super::{RunError, RunStore, StoredNode};
use crate::{TaskEnvelope, recipe::substitute};
use serde_json::{Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

impl RunStore {
    /// The outputs recorded for `node` when it succeeded.
    pub async fn recorded_output(&self, run: Uuid, node: &str) -> Result<Option<Value>, RunError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = deadpool_redis::redis::cmd("HGET")
            .arg(self.key(&run.to_string(), "outputs"))
            .arg(node)
            .query_async(&mut conn)
            .await?;
        Ok(raw.map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The task envelope of `node`, its inputs taken from its upstreams' stored outputs and
    /// filled into its config (`${inputs.NAME}`, rendered by the reference's rule if it has
    /// one; scalars in fields that need text become text).
    pub async fn envelope(&self, run: Uuid, node: &StoredNode) -> Result<TaskEnvelope, RunError> {
        let upstreams: Vec<String> = node
            .inputs
            .values()
            .filter_map(|s| s.split_once('.'))
            .map(|(up, _)| up.to_string())
            .collect();
        let mut outputs: HashMap<String, Value> = HashMap::new();
        if !upstreams.is_empty() {
            let mut conn = self.conn().await?;
            let raw: Vec<Option<String>> = deadpool_redis::redis::cmd("HMGET")
                .arg(self.key(&run.to_string(), "outputs"))
                .arg(&upstreams)
                .query_async(&mut conn)
                .await?;
            for (up, r) in upstreams.iter().zip(raw) {
                if let Some(text) = r {
                    outputs.insert(
                        up.clone(),
                        serde_json::from_str(&text).unwrap_or(Value::Null),
                    );
                }
            }
        }
        let mut inputs = Map::new();
        let mut partial = Vec::new();
        for (name, source) in &node.inputs {
            let value = source
                .split_once('.')
                .and_then(|(up, out)| outputs.get(up).and_then(|o| o.get(out)).cloned())
                // A null output (a node skipped at its degradation level) is missing too.
                .filter(|v| !v.is_null());
            if value.is_none() {
                partial.push(Value::String(name.clone()));
            }
            inputs.insert(name.clone(), value.unwrap_or(Value::Null));
        }
        let lookup = |name: &str| inputs.get(name).cloned();
        // Rules render structured values as text; `:file` stays for the exec handler.
        let config =
            crate::nodes::textified(&node.node_type, substitute(&node.config, "inputs", &lookup));
        let fallback = node
            .fallback
            .iter()
            .map(|alt| {
                let mut alt = alt.clone();
                alt.config = crate::nodes::textified(
                    &alt.node_type,
                    substitute(&alt.config, "inputs", &lookup),
                );
                alt
            })
            .collect();
        if !partial.is_empty() {
            inputs.insert("_partial".into(), Value::Array(partial));
        }
        if !node.targets.is_empty() {
            let targets = node.targets.iter().cloned().map(Value::String).collect();
            inputs.insert(super::TARGETS_INPUT.into(), Value::Array(targets));
        }
        let mut task = TaskEnvelope::new(node.node_type.clone(), config);
        task.task_id = node.task_id;
        task.run_id = Some(run);
        task.node_id = node.id.clone();
        task.inputs = inputs;
        task.retry.clone_from(&node.retry);
        task.timeout_ms = node.timeout_ms;
        task.service.clone_from(&node.service);
        task.cache = node.cache;
        task.fallback = fallback;
        task.fallback_on.clone_from(&node.fallback_on);
        task.degrade.clone_from(&node.degrade);
        task.optional = node.optional;
        task.essential = node.essential;
        Ok(task)
    }
}

/// The declared outputs of a node picked from its handler's output: a field of that name, or,
/// for a generic handler (`exec`, `http`, built-ins) whose node declares exactly one output,
/// the whole output. Tool nodes produce named datasets: only a field of that name counts.
pub fn select_outputs(node: &StoredNode, output: &Value) -> Value {
    let mut selected = Map::new();
    for name in &node.outputs {
        selected.insert(
            name.clone(),
            output_value(node, output, name).unwrap_or(Value::Null),
        );
    }
    Value::Object(selected)
}

/// The declared outputs a node's `output` does not provide (absent or null).
pub fn missing_outputs(node: &StoredNode, output: &Value) -> Vec<String> {
    node.outputs
        .iter()
        .filter(|name| output_value(node, output, name).is_none())
        .cloned()
        .collect()
}

fn output_value(node: &StoredNode, output: &Value, name: &str) -> Option<Value> {
    let whole_allowed =
        node.outputs.len() == 1 && crate::nodes::KNOWN_TYPES.contains(&node.node_type.as_str());
    output
        .get(name)
        .filter(|v| !v.is_null())
        .cloned()
        .or_else(|| (whole_allowed && !output.is_null()).then(|| output.clone()))
}
