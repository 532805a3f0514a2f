//! A node's `inputs` as written, and their resolution: a list names datasets, each produced by
//! exactly one node's `outputs`; a map names `node.output` directly (and disambiguates).

use super::NodeSpec;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `inputs:` as written in a recipe.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Inputs {
    /// `[urls, findings]`: dataset names, resolved to the node that outputs each.
    List(Vec<String>),
    /// `{ robots: fetch.body }`: input name → `node.output`.
    Map(BTreeMap<String, String>),
}

impl Default for Inputs {
    fn default() -> Self {
        Self::Map(BTreeMap::new())
    }
}

/// A list-form input that cannot be resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct InputProblem {
    /// The dataset name as written.
    pub input: String,
    /// What is wrong, in the published schema's words.
    pub message: String,
}

/// Fills every node's `inputs` map from what was written, recording unresolvable list entries.
pub(super) fn resolve(nodes: &mut [NodeSpec]) {
    let mut producers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in nodes.iter() {
        for output in &node.outputs {
            producers.entry(output).or_default().push(&node.id);
        }
    }
    let resolved: Vec<(BTreeMap<String, String>, Vec<InputProblem>)> = nodes
        .iter()
        .map(|node| match &node.declared_inputs {
            Inputs::Map(map) => (map.clone(), Vec::new()),
            Inputs::List(names) => {
                let mut map = BTreeMap::new();
                let mut problems = Vec::new();
                for name in names {
                    let found: Vec<&str> = producers
                        .get(name.as_str())
                        .map(|p| p.iter().copied().filter(|id| *id != node.id).collect())
                        .unwrap_or_default();
                    match found.as_slice() {
                        [one] => drop(map.insert(name.clone(), format!("{one}.{name}"))),
                        [] => problems.push(InputProblem {
                            input: name.clone(),
                            message: format!("Unresolved input '{name}' in node {}: no other node lists it in `outputs`", node.id),
                        }),
                        many => problems.push(InputProblem {
                            input: name.clone(),
                            message: format!(
                                "input '{name}' in node {} is produced by {}: name one with the map form, e.g. `inputs: {{ {name}: {}.{name} }}`",
                                node.id,
                                many.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(" and "),
                                many[0]
                            ),
                        }),
                    }
                }
                (map, problems)
            }
        })
        .collect();
    for (node, (map, problems)) in nodes.iter_mut().zip(resolved) {
        node.inputs = map;
        node.input_problems = problems;
    }
}

#[cfg(test)]
mod tests {
    use crate::recipe::parse;

    #[test]
    fn list_inputs_resolve_to_the_one_producer() {
        let r = parse(
            "r.yaml",
            "version: '1.0'\nname: t\nnodes:\n  - {id: a, type: builtin.echo, outputs: [urls]}\n  - {id: b, type: builtin.echo, inputs: [urls], outputs: [findings]}\n  - {id: c, type: builtin.echo, inputs: [findings, nothing]}\n",
        )
        .unwrap();
        assert_eq!(r.nodes[1].inputs["urls"], "a.urls");
        assert_eq!(r.nodes[2].inputs["findings"], "b.findings");
        assert_eq!(r.nodes[2].input_problems.len(), 1);
        assert!(
            r.nodes[2].input_problems[0]
                .message
                .starts_with("Unresolved input 'nothing' in node c")
        );
    }

    #[test]
    fn an_ambiguous_input_names_both_producers() {
        let r = parse(
            "r.yaml",
            "version: 1\nname: t\nnodes:\n  - {id: a, type: builtin.echo, outputs: [urls]}\n  - {id: b, type: builtin.echo, outputs: [urls]}\n  - {id: c, type: builtin.echo, inputs: [urls]}\n  - {id: d, type: builtin.echo, inputs: {urls: b.urls}}\n",
        )
        .unwrap();
        let message = &r.nodes[2].input_problems[0].message;
        assert!(message.contains("`a` and `b`"), "{message}");
        assert!(r.nodes[3].input_problems.is_empty());
        assert_eq!(r.nodes[3].inputs["urls"], "b.urls");
    }
}
