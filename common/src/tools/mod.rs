//! Tool definitions (the "ToolPort"): how a node type such as `scan.nuclei` runs an external
//! program and how its real output becomes normalised findings and datasets.
//!
//! The worker looks a definition up ([`ToolSet::get`]), renders an [`Invocation`]
//! ([`ToolDef::render`]), writes its files into the task's working directory, runs it, then
//! parses the output ([`ToolDef::parse`]) and stores [`Parsed::to_output`]. The producer checks
//! recipe configs with [`ToolDef::check_config`]. `common/tools/builtin.yaml` is built in.
//!
//! # Tools file
//!
//! `tools:` maps node types to definitions with these keys:
//!
//! - `description`, `program` (a name or an absolute path), `argv` (arguments after the
//!   program), `success_exit_codes` (default `[0]`), `timeout` (`30m`), `retry` (a retry policy).
//! - `config`: every setting a recipe may give (unknown ones are refused): `type` (`string`,
//!   `integer`, `number`, `boolean`, `list`, `resource`), `required`, `default`, `min`/`max`
//!   (for lists: item counts), `allowed`, `pattern` (a regex), `description`, and
//!   `optional_args`: arguments appended only when the setting is set and not `false`, `[]` or
//!   `""`, with `${value}` standing for it. A `resource` is `res://NAME:TAG`, rendered as the
//!   path [`Resources`] resolves.
//! - `inputs`: `as` (`file`: written to `WORKDIR/input-NAME.txt` one item a line, rendered as
//!   its path; `stdin`; `lines` and `csv`: one argument; `args`: one argument per item, only as
//!   a whole argument), `item` (a record template for object items), `required` (default
//!   true), `optional_args` (optional inputs only).
//! - `require_any` / `exclusive`: `config.X` and `inputs.X` of which at least one must be set /
//!   at most one may be set.
//! - `output`: `from` (`stdout` or `file`: argv must pass `${output_file}`), `format`
//!   (`jsonl`, `json` with `records` the dotted path to the records, `lines` making records
//!   `{"line": ...}`, `regex` with `patterns` of `{regex, context}`), `where` (field = value
//!   filters, json and jsonl), `finding` (record templates `id`, `title`, `severity`,
//!   `target`, `evidence`), `severity_map`, `default_severity`, `datasets` (name → template).
//! - `degrade`: overrides of settings by degradation level (`{high: {rate_limit: 100},
//!   medium: {rate_limit: 50, concurrency: "x0.5"}}`): a value replaces the setting, a factor
//!   scales it (its default when the node leaves it unset); a node's own `degrade` wins
//!   ([`config_at`]).
//!
//! Arguments reference `${config.NAME}`, `${inputs.NAME}`, `${value}` (in `optional_args`),
//! `${output_file}` and `${workdir}`; a list setting needs a filter (`|csv`, `|lines`, `|json`,
//! or `|args` for one argument per item). Record templates read dotted paths of a record
//! (`{info.name}`, `{x.0}`), take the first non-empty alternative (`{ip||host}`), join lists
//! (`{tags|csv}`) or write JSON (`{a|json}`); a missing path is empty.
//!
//! A value that would begin an argument with `-` is refused when rendering (the program would
//! read it as an option). Definitions are checked when loaded: every reference declared and
//! renderable, every input passed, regexes and templates valid, format fields consistent.

mod argv;
mod config;
mod def;
mod degrade;
mod finding;
mod inputs;
mod output;
mod parse;
mod record;
mod refs;
mod render;
mod resources;
mod spec;

#[cfg(test)]
mod tests;

pub use config::kind_of;
pub use def::ToolDef;
pub use degrade::config_at;
pub use finding::{Finding, Severity, finding_id};
pub use output::{MAX_FINDINGS, MAX_OUTPUT_BYTES, Parsed};
pub use record::RecordTemplate;
pub use render::{Invocation, RenderContext, RenderError, RenderProblem};
pub use resources::{ResourceRef, Resources};
pub use spec::{
    ConfigSpec, ConfigType, FindingSpec, Format, InputSpec, OutputFrom, OutputSpec, PassAs,
    PatternSpec, ToolSpec, ToolsFile,
};

use std::collections::BTreeMap;
use std::path::Path;

/// The built-in tools file.
pub const BUILTIN_YAML: &str = include_str!("../../tools/builtin.yaml");

/// A tools file that could not be loaded: the file, the tool and the field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {}{}{message}", tool.as_ref().map(|t| format!("tool `{t}`: ")).unwrap_or_default(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ToolError {
    /// The file (or other source) read.
    pub source_name: String,
    /// The tool, when one is at fault.
    pub tool: Option<String>,
    /// The field, when one is at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Tool definitions by node type.
#[derive(Debug, Clone, Default)]
pub struct ToolSet {
    tools: BTreeMap<String, ToolDef>,
}

impl ToolSet {
    /// The built-in definitions (`common/tools/builtin.yaml`).
    pub fn builtin() -> Result<Self, ToolError> {
        Self::from_yaml("builtin.yaml", BUILTIN_YAML)
    }

    /// Parses and checks a tools file; `source_name` names it in errors.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Self, ToolError> {
        let error = |tool: Option<&str>, field: Option<String>, message: String| ToolError {
            source_name: source_name.to_string(),
            tool: tool.map(str::to_string),
            field,
            message,
        };
        let file: ToolsFile = yaml_serde::from_str(text)
            .map_err(|e| error(None, None, format!("not a valid tools file: {e}")))?;
        let mut tools = BTreeMap::new();
        for (name, spec) in file.tools {
            let def = ToolDef::build(&name, spec)
                .map_err(|(field, message)| error(Some(&name), Some(field), message))?;
            tools.insert(name, def);
        }
        Ok(Self { tools })
    }

    /// Reads and checks the tools file at `path`.
    pub fn load(path: &Path) -> Result<Self, ToolError> {
        let text = std::fs::read_to_string(path).map_err(|e| ToolError {
            source_name: path.display().to_string(),
            tool: None,
            field: None,
            message: format!("cannot read the tools file: {e}"),
        })?;
        Self::from_yaml(&path.display().to_string(), &text)
    }

    /// Adds `other`'s definitions; one with the same name replaces the existing one.
    pub fn merge(&mut self, other: ToolSet) {
        self.tools.extend(other.tools);
    }

    /// The definition of node type `node_type`.
    pub fn get(&self, node_type: &str) -> Option<&ToolDef> {
        self.tools.get(node_type)
    }

    /// The node types defined, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }
}
