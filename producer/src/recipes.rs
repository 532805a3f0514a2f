//! Loading recipes: read, parse, validate with the given parameters.

use secflow_common::recipe::{self, Recipe, RecipeError};
use serde_json::Value;
use std::{collections::BTreeMap, fmt};

/// What a valid recipe amounts to.
#[derive(Debug)]
pub struct Summary {
    /// The recipe.
    pub recipe: Recipe,
    /// Nodes with no inputs (published first).
    pub roots: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: {} nodes, roots: {}",
            self.recipe.name,
            self.recipe.nodes.len(),
            self.roots.join(", ")
        )
    }
}

/// Reads and validates the recipe at `path`; every problem is returned.
pub fn load(path: &str, params: &BTreeMap<String, Value>) -> Result<Summary, Vec<RecipeError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![RecipeError {
            source: path.to_string(),
            node: None,
            field: String::new(),
            message: format!("cannot read the recipe: {e}"),
        }]
    })?;
    let recipe = recipe::parse(path, &text).map_err(|e| vec![e])?;
    let errors = recipe::validate(path, &recipe, params);
    if !errors.is_empty() {
        return Err(errors);
    }
    let roots = recipe
        .nodes
        .iter()
        .filter(|n| n.inputs.is_empty())
        .map(|n| n.id.clone())
        .collect();
    Ok(Summary { recipe, roots })
}

/// Parses `NAME=VALUE` parameters; VALUE is JSON when it parses as JSON, else text.
pub fn parse_params(raw: &[String]) -> Result<BTreeMap<String, Value>, String> {
    raw.iter()
        .map(|p| {
            let (name, value) = p
                .split_once('=')
                .ok_or_else(|| format!("--param `{p}` must be NAME=VALUE"))?;
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            Ok((name.to_string(), value))
        })
        .collect()
}
