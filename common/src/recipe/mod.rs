//! Recipes: YAML descriptions of a workflow, a DAG of nodes, parsed and checked before
//! anything is published.
//!
//! ```yaml
//! version: "1.0"
//! name: discovery
//! parameters:
//!   target: { description: base URL, default: "http://127.0.0.1:8080" }
//! nodes:
//!   - id: fetch
//!     type: http
//!     config: { url: "${params.target}/robots.txt" }
//!     outputs: [body]
//!   - id: report
//!     type: builtin.echo
//!     inputs: { robots: fetch.body }
//!     config: { text: "${inputs.robots}" }
//! hooks:
//!   on_workflow_complete:
//!     - url: "https://hooks.example.com/secflow"
//! ```
//!
//! `inputs` is either a map (input name → `node.output`) or, as the published schema writes it,
//! a list of dataset names, each resolved to the one node that lists it in `outputs`
//! ([`inputs`]).
//!
//! Where a config needs text (an `exec` argument, an `http` URL), a structured upstream output
//! is written with a rendering rule (`${inputs.urls:lines}`, [`rules`]); [`validate`] refuses
//! one without a rule ([`flow`]).

mod catalog;
mod cycle;
pub mod fallback;
mod flow;
mod inputs;
pub mod rules;
pub mod template;
mod validate;
mod version;

pub use catalog::Catalog;
pub use fallback::{Alternative, AlternativeSpec, FleetChains, ServedBy};
pub use inputs::{InputProblem, Inputs};
pub use rules::Rule;
pub use template::{References, references, rewrite, substitute, substitute_params};
pub use validate::{RecipeError, validate, validate_with};
pub use version::{RECIPE_MAJOR, Version};

use crate::retry::RetryPolicy;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A workflow recipe as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Format version: `"1.0"` (also `1` or `"1"`).
    pub version: Version,
    /// Name of the workflow.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Parameters by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, Parameter>,
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// Webhooks and programs told about this run's node completions and its end.
    #[serde(default)]
    pub hooks: crate::hooks::HooksSpec,
}

/// A recipe parameter.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// Value when none is given.
    #[serde(default)]
    pub default: Option<Value>,
}

/// When a node runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Once all its inputs are available (its upstreams succeeded).
    #[default]
    Success,
    /// Once all its upstreams have ended, whatever their outcome (cleanup, notification).
    Always,
}

/// One node of a recipe.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique id within the recipe.
    pub id: String,
    /// Node type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Handler config; may reference `${params.NAME}` and `${inputs.NAME}`.
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Inputs as written: a list of dataset names or a map of name → `node.output`.
    #[serde(default, rename = "inputs")]
    pub declared_inputs: Inputs,
    /// Input name → `node.output` of an upstream node, resolved by [`parse`] from
    /// `declared_inputs`.
    #[serde(skip)]
    pub inputs: BTreeMap<String, String>,
    /// Inputs of the list form that name no dataset or an ambiguous one (reported by
    /// [`validate`]).
    #[serde(skip)]
    pub input_problems: Vec<InputProblem>,
    /// Names of the outputs this node produces.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Retry policy for this node.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Handler timeout (`30s`, `5m`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Circuit-breaker key (defaults to the type).
    #[serde(default)]
    pub service: Option<String>,
    /// A failure degrades the run to partial instead of failing it.
    #[serde(default)]
    pub optional: bool,
    /// When it runs.
    #[serde(default)]
    pub when: When,
    /// Node that undoes this one's effects if the run fails after it succeeded.
    #[serde(default)]
    pub compensate: Option<String>,
    /// Alternatives that may serve the node, in order, when its handler fails with a class
    /// `fallback_on` allows or its service's breaker is open ([`fallback`]).
    #[serde(default)]
    pub fallback: Vec<AlternativeSpec>,
    /// Failure classes that let the chain fall through (default: transient, resource,
    /// unknown, permanent).
    #[serde(default)]
    pub fallback_on: Option<Vec<crate::ErrorClass>>,
    /// Config overrides by degradation level (`{medium: {threads: "x0.5"}}`).
    #[serde(default)]
    pub degrade: crate::control::LevelOverrides,
    /// Runs at every degradation level, `minimal` included.
    #[serde(default)]
    pub essential: bool,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Largest recipe file read, bytes.
pub const MAX_RECIPE_BYTES: usize = 4 << 20;
/// Most nodes a recipe may have.
pub const MAX_NODES: usize = 20_000;

/// Parses a recipe; the error names the source, and the line and field serde reports. Recipes
/// over [`MAX_RECIPE_BYTES`] or [`MAX_NODES`] are refused before anything else is checked.
pub fn parse(source: &str, text: &str) -> Result<Recipe, RecipeError> {
    let error = |message: String| RecipeError {
        source: source.to_string(),
        node: None,
        field: String::new(),
        message,
    };
    if text.len() > MAX_RECIPE_BYTES {
        return Err(error(format!(
            "the recipe is {} bytes, over the {MAX_RECIPE_BYTES}-byte limit",
            text.len()
        )));
    }
    let mut recipe: Recipe =
        yaml_serde::from_str(text).map_err(|e| error(format!("not a valid recipe: {e}")))?;
    if recipe.nodes.len() > MAX_NODES {
        return Err(RecipeError {
            field: "nodes".into(),
            ..error(format!(
                "the recipe has {} nodes, over the limit of {MAX_NODES}",
                recipe.nodes.len()
            ))
        });
    }
    inputs::resolve(&mut recipe.nodes);
    Ok(recipe)
}
