//! Everything checked before a recipe is published: ids, types, configs, inputs, parameters,
//! cycles, data flow ([`super::flow`]). Errors name the file, the node and the field, and all
//! of them are reported at once.

use super::{
    Catalog, NodeSpec, RECIPE_MAJOR, Recipe, When, cycle::find_cycle, fallback, flow, template,
};
use crate::{duration, nodes};
use serde_json::Value;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

/// Longest node timeout: below RabbitMQ's default 30 min `consumer_timeout`.
const MAX_TIMEOUT_MS: u64 = 25 * 60 * 1000;
/// Most nodes in one recipe.
const MAX_NODES: usize = 20_000;

/// One problem in a recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct RecipeError {
    /// File (or other source) name.
    pub source: String,
    /// Node id, when the problem is in a node.
    pub node: Option<String>,
    /// Field path (`config.url`, `inputs.hosts`), when known.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(node) = &self.node {
            write!(f, ": node `{node}`")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Checks `recipe` (read from `source`) with the given parameter values against the built-in
/// tools; empty when valid.
pub fn validate(
    source: &str,
    recipe: &Recipe,
    params: &BTreeMap<String, Value>,
) -> Vec<RecipeError> {
    validate_with(source, recipe, params, Catalog::builtin())
}

/// [`validate`] against `catalog`'s tools and resources.
pub fn validate_with(
    source: &str,
    recipe: &Recipe,
    params: &BTreeMap<String, Value>,
    catalog: &Catalog,
) -> Vec<RecipeError> {
    let mut errors = Vec::new();
    let mut err = |node: Option<&str>, field: &str, message: String| {
        errors.push(RecipeError {
            source: source.to_string(),
            node: node.map(str::to_string),
            field: field.to_string(),
            message,
        });
    };
    if !recipe.version.supported() {
        err(
            None,
            "version",
            format!(
                "unsupported recipe version {} (this build reads {RECIPE_MAJOR}.x)",
                recipe.version
            ),
        );
    }
    if recipe.name.trim().is_empty() {
        err(None, "name", "must not be empty".into());
    }
    if recipe.nodes.is_empty() || recipe.nodes.len() > MAX_NODES {
        err(
            None,
            "nodes",
            format!(
                "a recipe has 1 to {MAX_NODES} nodes, this one has {}",
                recipe.nodes.len()
            ),
        );
    }
    for name in params
        .keys()
        .filter(|p| !recipe.parameters.contains_key(*p))
    {
        err(
            None,
            "parameters",
            format!("`{name}` was given but the recipe declares no such parameter"),
        );
    }
    let mut by_id: HashMap<&str, &NodeSpec> = HashMap::new();
    for node in &recipe.nodes {
        if by_id.insert(node.id.as_str(), node).is_some() {
            err(Some(&node.id), "id", "is used by more than one node".into());
        }
        if !valid_id(&node.id) {
            err(
                Some(&node.id),
                "id",
                "must be 1 to 100 characters of letters, digits, '-' or '_'".into(),
            );
        }
    }
    let value_of = |name: &str| {
        params
            .get(name)
            .cloned()
            .or_else(|| recipe.parameters.get(name).and_then(|p| p.default.clone()))
    };
    for node in &recipe.nodes {
        check_node(node, recipe, &by_id, &value_of, catalog, &mut err);
    }
    let compensators: HashSet<&str> = recipe
        .nodes
        .iter()
        .filter_map(|n| n.compensate.as_deref())
        .collect();
    for node in &recipe.nodes {
        for (name, source) in &node.inputs {
            if let Some((up, _)) = source.split_once('.')
                && compensators.contains(up)
            {
                err(
                    Some(&node.id),
                    &format!("inputs.{name}"),
                    format!(
                        "`{up}` is a compensation node (it only runs after a failure): no node may take its outputs"
                    ),
                );
            }
        }
        if compensators.contains(node.id.as_str()) && node.compensate.is_some() {
            err(
                Some(&node.id),
                "compensate",
                "a compensation node cannot have a compensation of its own".into(),
            );
        }
    }
    for problem in recipe.hooks.problems() {
        err(None, &problem.field, problem.message);
    }
    if let Some(cycle) = find_cycle(&recipe.nodes, &by_id) {
        err(
            Some(&cycle[0]),
            "inputs",
            format!("forms a cycle: {}", cycle.join(" → ")),
        );
    }
    errors
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_node(
    node: &NodeSpec,
    recipe: &Recipe,
    by_id: &HashMap<&str, &NodeSpec>,
    value_of: &dyn Fn(&str) -> Option<Value>,
    catalog: &Catalog,
    err: &mut impl FnMut(Option<&str>, &str, String),
) {
    let id = Some(node.id.as_str());
    if !catalog.knows(&node.node_type) {
        err(
            id,
            "type",
            format!(
                "unknown node type `{}` (known: {})",
                node.node_type,
                catalog.known()
            ),
        );
    }
    if !node.config.is_object() {
        err(id, "config", "must be a mapping".into());
    }
    for problem in &node.input_problems {
        err(
            id,
            &format!("inputs.{}", problem.input),
            problem.message.clone(),
        );
    }
    let mut seen = HashSet::new();
    for output in &node.outputs {
        if !seen.insert(output) {
            err(id, "outputs", format!("`{output}` is declared twice"));
        }
    }
    for (name, source) in &node.inputs {
        let field = format!("inputs.{name}");
        match source.split_once('.') {
            Some((up, _)) if up == node.id => {
                err(id, &field, "a node cannot take its own output".into())
            }
            Some((up, out)) => match by_id.get(up) {
                None => err(id, &field, format!("`{source}`: there is no node `{up}`")),
                Some(upstream) if !upstream.outputs.iter().any(|o| o == out) => err(
                    id,
                    &field,
                    format!(
                        "`{source}`: node `{up}` declares no output `{out}` (it declares: {})",
                        list(&upstream.outputs)
                    ),
                ),
                Some(_) => {}
            },
            None => err(id, &field, format!("`{source}` must be NODE.OUTPUT")),
        }
    }
    let refs = template::references(&node.config);
    for (path, name) in &refs.params {
        if !recipe.parameters.contains_key(name) {
            err(
                id,
                path,
                format!("`${{params.{name}}}`: the recipe declares no parameter `{name}`"),
            );
        } else if value_of(name).is_none() {
            err(
                id,
                path,
                format!(
                    "`${{params.{name}}}` has no value: pass --param {name}=VALUE or give it a default"
                ),
            );
        }
    }
    for (path, name) in &refs.inputs {
        if !node.inputs.contains_key(name) {
            err(
                id,
                path,
                format!(
                    "`${{inputs.{name}}}`: the node declares no input `{name}` (it declares: {})",
                    list(node.inputs.keys())
                ),
            );
        }
    }
    for (path, text) in &refs.unknown {
        err(
            id,
            path,
            format!("`{text}` is not a reference (use ${{params.NAME}} or ${{inputs.NAME}})"),
        );
    }
    // The config's shape can be checked once parameters are in; input values only exist at run time.
    let resolved = nodes::textified(
        &node.node_type,
        template::substitute_params(&node.config, value_of),
    );
    let scope = flow::Scope {
        by_id,
        value_of,
        catalog,
    };
    let flow_refused = flow::check(node, &refs, &resolved, &scope, &mut |field, m| {
        err(id, field, m)
    });
    for (field, message) in catalog.check_tool_node(node, &resolved) {
        err(id, &field, message);
    }
    if node.node_type == "enrich.cve" && !node.inputs.contains_key("findings") {
        err(
            id,
            "inputs",
            "enrich.cve needs input `findings`: connect it to a node's findings".into(),
        );
    }
    if refs.inputs.is_empty()
        && !flow_refused
        && template::references(&resolved).params.is_empty()
        && let Err(e) = nodes::check_config(&node.node_type, &resolved)
        && nodes::KNOWN_TYPES.contains(&node.node_type.as_str())
    {
        err(id, "config", e);
    }
    if let Some(policy) = &node.retry
        && let Err(e) = policy.validate()
    {
        err(id, "retry", e);
    }
    if let Some(timeout) = &node.timeout {
        match duration::parse_ms(timeout) {
            Ok(ms) if ms == 0 || ms > MAX_TIMEOUT_MS => err(
                id,
                "timeout",
                format!("`{timeout}` must be between 1 ms and 25 m"),
            ),
            Ok(_) => {}
            Err(e) => err(id, "timeout", e),
        }
    }
    if node.when == When::Always && node.inputs.is_empty() {
        err(
            id,
            "when",
            "`always` runs a node after its upstreams end: it needs at least one input".into(),
        );
    }
    if let Some(target) = &node.compensate
        && !by_id.contains_key(target.as_str())
    {
        err(id, "compensate", format!("there is no node `{target}`"));
    }
    check_degradation(node, value_of, catalog, &mut |field, message| {
        err(id, field, message)
    });
}

/// The node's fallback chain, `fallback_on` and `degrade` overrides.
fn check_degradation(
    node: &NodeSpec,
    value_of: &dyn Fn(&str) -> Option<Value>,
    catalog: &Catalog,
    err: &mut dyn FnMut(&str, String),
) {
    let inputs: Vec<&str> = node.inputs.keys().map(String::as_str).collect();
    for (field, message) in
        fallback::check_chain("fallback", &node.fallback, &inputs, value_of, catalog)
    {
        err(&field, message);
    }
    for message in fallback::check_fallback_on(node.fallback_on.as_deref().unwrap_or_default()) {
        err("fallback_on", message);
    }
    if let Err(e) = crate::control::level::check_overrides(&node.degrade) {
        err("degrade", e);
    }
}

fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
