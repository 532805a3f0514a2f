//! Data flow checks: a reference in a config field that needs text (an `exec` argument, an
//! `http` URL) either holds text or a scalar, or is rendered by a rule (`:lines`, `:csv`,
//! `:json`, `:file`). A structured upstream output or parameter without a rule is refused here,
//! so that it never reaches a worker as a config it cannot run.

use super::{Catalog, NodeSpec, References, Rule, template};
use crate::nodes::{self, OutputKind};
use serde_json::Value;
use std::collections::HashMap;

/// What [`check`] needs of the recipe besides the node.
pub(super) struct Scope<'a> {
    /// Nodes by id.
    pub by_id: &'a HashMap<&'a str, &'a NodeSpec>,
    /// Parameter values (given or default).
    pub value_of: &'a dyn Fn(&str) -> Option<Value>,
    /// Tools, to know what their outputs are.
    pub catalog: &'a Catalog,
}

/// Reports, through `report(field, message)`, the references of `node` that are not rendered
/// as its config needs: rules that are unknown or out of place, structured values without a
/// rule where text is needed, and (`exec`, `http`) a config that would not parse once its
/// inputs are filled in with text. `resolved` is its config with parameters filled in. Whether
/// it reported anything (the config's shape is then not worth checking again).
pub(super) fn check(
    node: &NodeSpec,
    refs: &References,
    resolved: &Value,
    scope: &Scope<'_>,
    report: &mut dyn FnMut(&str, String),
) -> bool {
    let mut problems: Vec<(&str, String)> = refs
        .bad_rules
        .iter()
        .map(|(path, message)| (path.as_str(), message.clone()))
        .collect();
    let file_allowed =
        |path: &str| node.node_type == "exec" && nodes::argv_index(path).is_some_and(|i| i > 0);
    for (path, name, rule) in &refs.input_rules {
        let reference = format!("${{inputs.{name}}}");
        match rule {
            Some(Rule::File) if !file_allowed(path) => problems.push((
                path,
                format!(
                    "`${{inputs.{name}:file}}`: the file rule is only for the arguments of an exec node (config.argv[1] onwards), where the worker writes the file; here write {}",
                    rules_for(&reference, false)
                ),
            )),
            None if nodes::needs_text(&node.node_type, path) => {
                if let Some((kind, source)) = input_kind(node, name, scope)
                    && !kind.is_text()
                {
                    problems.push((
                        path,
                        format!(
                            "`{reference}` {} ({source}); this field needs text: write {}",
                            kind.describe(),
                            rules_for(&reference, file_allowed(path))
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    for (path, name, rule) in &refs.param_rules {
        if rule.is_none()
            && nodes::needs_text(&node.node_type, path)
            && let Some(value @ (Value::Array(_) | Value::Object(_))) = (scope.value_of)(name)
        {
            let reference = format!("${{params.{name}}}");
            problems.push((
                path,
                format!(
                    "`{reference}` is {} (parameter `{name}`); this field needs text: write {}",
                    crate::tools::kind_of(&value),
                    rules_for(&reference, false)
                ),
            ));
        }
    }
    if problems.is_empty()
        && let Some(message) = shape_with_text_inputs(node, refs, resolved)
    {
        problems.push(("config", message));
    }
    for (field, message) in &problems {
        report(field, message.clone());
    }
    !problems.is_empty()
}

/// The kind of the upstream output input `name` of `node` takes, and where it comes from (for
/// messages); `None` when the input or its node is not declared (reported elsewhere).
fn input_kind(node: &NodeSpec, name: &str, scope: &Scope<'_>) -> Option<(OutputKind, String)> {
    let (up, output) = node.inputs.get(name)?.split_once('.')?;
    let upstream = scope.by_id.get(up)?;
    let kind = nodes::output_kind(
        &upstream.node_type,
        output,
        &upstream.outputs,
        &scope.catalog.tools,
    );
    let what = if scope.catalog.tools.get(&upstream.node_type).is_some() {
        "tool"
    } else {
        "node"
    };
    let source = format!(
        "output `{output}` of node `{up}`, a {} {what}",
        upstream.node_type
    );
    Some((kind, source))
}

/// `${inputs.x:lines}, ${inputs.x:csv}, ${inputs.x:json}` (`or ${inputs.x:file}` when allowed)
/// for `reference` = `${inputs.x}`.
fn rules_for(reference: &str, with_file: bool) -> String {
    let base = reference.trim_end_matches('}');
    let written: Vec<String> = [Rule::Lines, Rule::Csv, Rule::Json, Rule::File]
        .into_iter()
        .filter(|r| with_file || *r != Rule::File)
        .map(|r| format!("{base}:{r}}}"))
        .collect();
    match written.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => written.join(""),
    }
}

/// An `exec` or `http` config with inputs is checked with each input standing for some text
/// (what a text or scalar input, or a rule, gives it): a field that cannot hold an input
/// (`argv: "${inputs.x}"`) or a wrong setting is refused now rather than when it runs.
fn shape_with_text_inputs(node: &NodeSpec, refs: &References, resolved: &Value) -> Option<String> {
    if !matches!(node.node_type.as_str(), "exec" | "http")
        || refs.inputs.is_empty()
        || !template::references(resolved).params.is_empty()
    {
        return None;
    }
    let text = |_: &str| Some(Value::String("text".into()));
    let filled = template::substitute(resolved, "inputs", &text);
    nodes::check_config(&node.node_type, &nodes::textified(&node.node_type, filled)).err()
}

#[cfg(test)]
mod tests;
