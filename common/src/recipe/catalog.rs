//! What node types a recipe may use beyond the generic ones: tool definitions (built in, plus a
//! `--tools` file) and the resource directory `res://` settings resolve in. Checks a tool
//! node's config, its inputs against the tool's, and its resources.

use super::NodeSpec;
use crate::tools::{Resources, ToolSet};
use serde_json::Value;
use std::sync::LazyLock;

/// Tool definitions and resources a recipe is checked against.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Tool node types.
    pub tools: ToolSet,
    /// Where `res://` settings resolve; with no directory, resources are not looked up.
    pub resources: Resources,
}

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| Catalog {
    // The built-in file is checked by a unit test; an error here would leave tools unknown.
    tools: ToolSet::builtin().unwrap_or_default(),
    resources: Resources::new(None),
});

impl Catalog {
    /// The built-in tools, no resource directory.
    pub fn builtin() -> &'static Catalog {
        &BUILTIN
    }

    /// Whether `node_type` is a type a worker can run.
    pub fn knows(&self, node_type: &str) -> bool {
        crate::nodes::KNOWN_TYPES.contains(&node_type) || self.tools.get(node_type).is_some()
    }

    /// Every known type, for error messages.
    pub fn known(&self) -> String {
        let mut all: Vec<&str> = crate::nodes::KNOWN_TYPES.to_vec();
        all.extend(self.tools.names());
        all.join(", ")
    }

    /// Problems of a tool node (config with parameters filled in), as `(field, message)`.
    /// Empty for other node types.
    pub fn check_tool_node(&self, node: &NodeSpec, config: &Value) -> Vec<(String, String)> {
        let Some(def) = self.tools.get(&node.node_type) else {
            return Vec::new();
        };
        let mut problems: Vec<(String, String)> = def
            .check_config(config)
            .into_iter()
            .map(|m| ("config".to_string(), m))
            .collect();
        let declared = def.declared_inputs();
        for name in node.inputs.keys() {
            if !declared.contains(&name.as_str()) {
                problems.push((
                    format!("inputs.{name}"),
                    format!(
                        "{} takes no input `{name}` (its inputs: {}); connect one of them, e.g. `inputs: {{ {}: NODE.{name} }}`",
                        node.node_type,
                        if declared.is_empty() { "none".to_string() } else { declared.join(", ") },
                        declared.first().copied().unwrap_or("INPUT"),
                    ),
                ));
            }
        }
        for (name, spec) in &def.spec().inputs {
            if def.input_required(name) && !spec.run_targets && !node.inputs.contains_key(name) {
                problems.push((
                    "inputs".into(),
                    format!(
                        "{} needs input `{name}`: connect it to an upstream output",
                        node.node_type
                    ),
                ));
            }
        }
        if self.resources.dir().is_some() {
            for (key, value) in config.as_object().into_iter().flatten() {
                if let Some(reference) = value.as_str().filter(|s| s.starts_with("res://"))
                    && let Err(e) = self.resources.resolve(reference)
                {
                    problems.push((format!("config.{key}"), e));
                }
            }
        }
        problems
    }

    /// Whether a tool node scans the run's targets: an input it takes them on is unconnected
    /// and nothing else (a config alternative) names what to scan.
    pub fn needs_targets(&self, node: &NodeSpec) -> bool {
        let Some(def) = self.tools.get(&node.node_type) else {
            return false;
        };
        let alternatives_set = def.spec().require_any.iter().any(|r| {
            r.strip_prefix("config.")
                .is_some_and(|k| node.config.get(k).is_some_and(|v| !v.is_null()))
                || r.strip_prefix("inputs.")
                    .is_some_and(|i| node.inputs.contains_key(i))
        });
        def.spec().inputs.iter().any(|(name, spec)| {
            spec.run_targets
                && !node.inputs.contains_key(name)
                && (def.input_required(name) || !alternatives_set)
        })
    }
}
