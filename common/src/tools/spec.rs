//! The tools-file format as written: the serde shapes of a tool definition before it is checked.

use super::finding::Severity;
use crate::retry::RetryPolicy;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// A tools file: `tools:` maps node types to their definitions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsFile {
    /// Definitions by node type, in file order.
    #[serde(deserialize_with = "ordered")]
    pub tools: Vec<(String, ToolSpec)>,
}

/// One tool as written in a tools file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// What the tool does, for people.
    #[serde(default)]
    pub description: String,
    /// Program name or absolute path, resolved by the worker's exec allowlist.
    pub program: String,
    /// Arguments after the program, with `${...}` references.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Every setting a recipe may give, in declaration order.
    #[serde(default, deserialize_with = "ordered")]
    pub config: Vec<(String, ConfigSpec)>,
    /// How each input is passed, in declaration order.
    #[serde(default, deserialize_with = "ordered")]
    pub inputs: Vec<(String, InputSpec)>,
    /// Exit codes that mean success.
    #[serde(default = "zero")]
    pub success_exit_codes: Vec<i32>,
    /// Run time limit, `30s`/`30m` style.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Default retry policy of the tool's tasks.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// References (`config.X`, `inputs.X`) of which at least one must be set.
    #[serde(default)]
    pub require_any: Vec<String>,
    /// References (`config.X`, `inputs.X`) of which at most one may be set.
    #[serde(default)]
    pub exclusive: Vec<String>,
    /// How the output becomes findings and datasets.
    pub output: OutputSpec,
    /// Overrides of settings by degradation level.
    #[serde(default)]
    pub degrade: crate::control::LevelOverrides,
}

fn zero() -> Vec<i32> {
    vec![0]
}

/// The type of a config setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigType {
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A list of strings or numbers.
    List,
    /// A `res://NAME:TAG` reference, rendered as the path it resolves to.
    Resource,
}

impl ConfigType {
    /// The name used in tools files.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::List => "list",
            Self::Resource => "resource",
        }
    }
}

/// One config setting of a tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// Whether a recipe must set it (a default satisfies it too).
    #[serde(default)]
    pub required: bool,
    /// Value used when the recipe does not set it.
    #[serde(default)]
    pub default: Option<Value>,
    /// Smallest number allowed (for lists: fewest items).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest number allowed (for lists: most items).
    #[serde(default)]
    pub max: Option<f64>,
    /// The only values allowed (for lists: the only items allowed); empty = any.
    #[serde(default)]
    pub allowed: Vec<Value>,
    /// Regular expression a string (or each list item) must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// What it means, for people.
    #[serde(default)]
    pub description: String,
    /// Arguments appended only when the setting is set (and not `false`), `${value}` being it.
    #[serde(default)]
    pub optional_args: Vec<String>,
}

/// How an input reaches the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassAs {
    /// A file in the working directory, one item a line; the reference renders as its path.
    File,
    /// The program's standard input, one item a line.
    Stdin,
    /// One argument, the items separated by newlines.
    Lines,
    /// One argument, the items separated by commas.
    Csv,
    /// One argument per item (the reference must be a whole argument).
    Args,
}

/// One input of a tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// How it is passed.
    #[serde(rename = "as")]
    pub pass: PassAs,
    /// Record template turning an object item into text (default: its `url`, else `target`).
    #[serde(default)]
    pub item: Option<String>,
    /// Whether the tool cannot run without it.
    #[serde(default = "yes")]
    pub required: bool,
    /// Arguments appended only when the input is given, `${value}` being it.
    #[serde(default)]
    pub optional_args: Vec<String>,
    /// When the recipe does not connect this input, the run's targets (`producer submit
    /// --target`) are passed as it: a root node scans what the run is about.
    #[serde(default)]
    pub run_targets: bool,
    /// What it is, for people.
    #[serde(default)]
    pub description: String,
}

fn yes() -> bool {
    true
}

/// Where the output is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFrom {
    /// The program's standard output.
    #[default]
    Stdout,
    /// The file named by `${output_file}`.
    File,
}

/// How the output is split into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object a line.
    Jsonl,
    /// One JSON document; `records` points at the array of records.
    Json,
    /// Each non-empty line is a record `{"line": ...}`.
    Lines,
    /// Lines matched against `patterns`; named captures are the record's fields.
    Regex,
}

/// One regular expression of the `regex` format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternSpec {
    /// The expression; its named captures become fields.
    pub regex: String,
    /// Whether its captures persist for the following lines instead of making a record.
    #[serde(default)]
    pub context: bool,
}

/// The `output:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Standard output or the output file.
    #[serde(default)]
    pub from: OutputFrom,
    /// How records are read.
    pub format: Format,
    /// `json` only: dotted path to the array of records (`""` = the document).
    #[serde(default)]
    pub records: Option<String>,
    /// Keep only records whose field (dotted path) equals the value.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, Value>,
    /// `regex` only: the expressions, tried in order on each line.
    #[serde(default)]
    pub patterns: Vec<PatternSpec>,
    /// How a record becomes a finding; absent = the tool makes datasets only.
    #[serde(default)]
    pub finding: Option<FindingSpec>,
    /// Tool severity words mapped to ours before normalising.
    #[serde(default)]
    pub severity_map: BTreeMap<String, String>,
    /// Severity when the record's is empty or unknown.
    #[serde(default)]
    pub default_severity: Severity,
    /// Named datasets: a record template each, one value per record.
    #[serde(default, deserialize_with = "ordered")]
    pub datasets: Vec<(String, String)>,
}

/// Record templates making a finding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingSpec {
    /// Rendered, then hashed with the tool name into the finding's stable id.
    pub id: String,
    /// One-line summary.
    pub title: String,
    /// Severity word (mapped and normalised); absent = the default severity.
    #[serde(default)]
    pub severity: Option<String>,
    /// What the finding is about (URL, host:port).
    pub target: String,
    /// Supporting detail.
    #[serde(default)]
    pub evidence: String,
}

/// Deserializes a mapping into `(key, value)` pairs in file order, refusing repeated keys.
fn ordered<'de, D, T>(deserializer: D) -> Result<Vec<(String, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Pairs<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Pairs<T> {
        type Value = Vec<(String, T)>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs: Vec<(String, T)> = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, T>()? {
                if pairs.iter().any(|(k, _)| *k == key) {
                    return Err(A::Error::custom(format!("`{key}` is defined twice")));
                }
                pairs.push((key, value));
            }
            Ok(pairs)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }

    deserializer.deserialize_map(Pairs(PhantomData))
}
