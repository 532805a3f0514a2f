//! A checked tool definition: built from its spec once, with every template and regex parsed.

use super::argv::{ArgTemplate, valid_name};
use super::config::{ConfigDef, check_value};
use super::finding::Severity;
use super::parse::{FindingTemplates, Parser};
use super::record::{RecordTemplate, split_path};
use super::refs::check_templates;
use super::spec::{ConfigType, Format, InputSpec, OutputFrom, ToolSpec};
use crate::retry::RetryPolicy;
use regex::Regex;

/// Names a dataset may not take: the output's own keys.
pub const RESERVED_KEYS: &[&str] = &[
    "findings",
    "findings_count",
    "records",
    "parser",
    "parse_error",
    "truncated",
];

/// A problem found while checking a definition: the field and what is wrong.
pub type DefProblem = (String, String);

/// One declared input, its item template and optional arguments parsed.
#[derive(Debug, Clone)]
pub struct InputDef {
    /// Input name.
    pub name: String,
    /// As written.
    pub spec: InputSpec,
    /// `item`, parsed.
    pub item: Option<RecordTemplate>,
    /// `optional_args`, parsed.
    pub optional_args: Vec<ArgTemplate>,
}

/// A tool definition that passed every load-time check.
#[derive(Debug, Clone)]
pub struct ToolDef {
    pub(crate) name: String,
    pub(crate) spec: ToolSpec,
    pub(crate) argv: Vec<ArgTemplate>,
    pub(crate) config: Vec<ConfigDef>,
    pub(crate) inputs: Vec<InputDef>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) parser: Parser,
}

impl ToolDef {
    /// The node type it defines (`scan.nuclei`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it does.
    pub fn description(&self) -> &str {
        &self.spec.description
    }

    /// The program to run (name or absolute path).
    pub fn program(&self) -> &str {
        &self.spec.program
    }

    /// Exit codes that mean success.
    pub fn success_exit_codes(&self) -> &[i32] {
        &self.spec.success_exit_codes
    }

    /// Run time limit in milliseconds, if the definition sets one.
    pub fn timeout_ms(&self) -> Option<u64> {
        self.timeout_ms
    }

    /// Default retry policy of the tool's tasks, if the definition sets one.
    pub fn retry(&self) -> Option<&RetryPolicy> {
        self.spec.retry.as_ref()
    }

    /// Whether the output is read from stdout or from the output file.
    pub fn output_from(&self) -> OutputFrom {
        self.spec.output.from
    }

    /// The definition as written.
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// Names of the inputs it declares, in order.
    pub fn declared_inputs(&self) -> Vec<&str> {
        self.inputs.iter().map(|i| i.name.as_str()).collect()
    }

    /// Whether input `name` is declared and required.
    pub fn input_required(&self, name: &str) -> bool {
        self.inputs
            .iter()
            .any(|i| i.name == name && i.spec.required)
    }

    /// Names of the settings it accepts, in order.
    pub fn config_names(&self) -> Vec<&str> {
        self.config.iter().map(|c| c.name.as_str()).collect()
    }

    /// Names of the datasets its output has, `findings` first.
    pub fn datasets(&self) -> Vec<String> {
        std::iter::once("findings".to_string())
            .chain(self.parser.datasets.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// Checks `spec` and builds the definition; the error names the field that is wrong.
    pub fn build(name: &str, spec: ToolSpec) -> Result<Self, DefProblem> {
        crate::envelope::check_node_type(name).map_err(|e| ("name".to_string(), e))?;
        if crate::nodes::KNOWN_TYPES.contains(&name) {
            return Err(("name".into(), format!("`{name}` is a built-in node type")));
        }
        let program = spec.program.trim();
        if program.is_empty() {
            return Err(("program".into(), "must name a program".into()));
        }
        if program.contains('/') && !program.starts_with('/') {
            return Err((
                "program".into(),
                format!("`{program}` must be a bare name or an absolute path"),
            ));
        }
        if spec.success_exit_codes.is_empty() {
            return Err((
                "success_exit_codes".into(),
                "must list at least one code".into(),
            ));
        }
        let timeout_ms = spec
            .timeout
            .as_deref()
            .map(crate::duration::parse_ms)
            .transpose()
            .map_err(|e| ("timeout".to_string(), e))?;
        if timeout_ms == Some(0) {
            return Err(("timeout".into(), "must be longer than 0".into()));
        }
        if let Some(retry) = &spec.retry {
            retry.validate().map_err(|e| ("retry".to_string(), e))?;
        }
        let argv = spec
            .argv
            .iter()
            .enumerate()
            .map(|(i, a)| ArgTemplate::parse(a).map_err(|e| (format!("argv[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let config = spec
            .config
            .iter()
            .map(|(n, s)| build_config(n, s))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs = spec
            .inputs
            .iter()
            .map(|(n, s)| build_input(n, s))
            .collect::<Result<Vec<_>, _>>()?;
        let def = Self {
            name: name.to_string(),
            parser: build_parser(&spec)?,
            spec,
            argv,
            config,
            inputs,
            timeout_ms,
        };
        check_templates(&def)?;
        super::degrade::check(&def)?;
        Ok(def)
    }
}

fn build_config(name: &str, spec: &super::spec::ConfigSpec) -> Result<ConfigDef, DefProblem> {
    let field = format!("config.{name}");
    let fail = |e: String| (field.clone(), e);
    if !valid_name(name) {
        return Err(fail(
            "setting names are letters, digits, `_` and `-`".into(),
        ));
    }
    let numeric = matches!(
        spec.kind,
        ConfigType::Integer | ConfigType::Number | ConfigType::List
    );
    if (spec.min.is_some() || spec.max.is_some()) && !numeric {
        return Err(fail(
            "min and max apply to integer, number and list settings only".into(),
        ));
    }
    if let (Some(min), Some(max)) = (spec.min, spec.max)
        && min > max
    {
        return Err(fail(format!("min {min} is greater than max {max}")));
    }
    let textual = matches!(spec.kind, ConfigType::String | ConfigType::List);
    if spec.pattern.is_some() && !textual {
        return Err(fail(
            "pattern applies to string and list settings only".into(),
        ));
    }
    let pattern = spec
        .pattern
        .as_deref()
        .map(|p| Regex::new(p).map_err(|e| fail(format!("pattern does not compile: {e}"))))
        .transpose()?;
    let optional_args = optional_args(&spec.optional_args, &fail)?;
    let def = ConfigDef {
        name: name.to_string(),
        spec: spec.clone(),
        pattern,
        optional_args,
    };
    if let Some(default) = &spec.default {
        check_value(&def, default, true).map_err(|e| fail(format!("default: {e}")))?;
    }
    Ok(def)
}

/// A setting's or an input's `optional_args`, parsed; the error names the field.
fn optional_args(
    args: &[String],
    fail: &dyn Fn(String) -> DefProblem,
) -> Result<Vec<ArgTemplate>, DefProblem> {
    args.iter()
        .map(|a| ArgTemplate::parse(a).map_err(|e| fail(format!("optional_args: {e}"))))
        .collect()
}

fn build_input(name: &str, spec: &InputSpec) -> Result<InputDef, DefProblem> {
    let field = format!("inputs.{name}");
    let fail = |e: String| (field.clone(), e);
    if !valid_name(name) {
        return Err(fail("input names are letters, digits, `_` and `-`".into()));
    }
    if spec.required && !spec.optional_args.is_empty() {
        return Err(fail(
            "optional_args apply to optional inputs (`required: false`)".into(),
        ));
    }
    let item = spec
        .item
        .as_deref()
        .map(|t| RecordTemplate::parse(t).map_err(|e| fail(format!("item: {e}"))))
        .transpose()?;
    let optional_args = optional_args(&spec.optional_args, &fail)?;
    Ok(InputDef {
        name: name.to_string(),
        spec: spec.clone(),
        item,
        optional_args,
    })
}

fn build_parser(spec: &ToolSpec) -> Result<Parser, DefProblem> {
    let out = &spec.output;
    let fail = |field: &str, e: String| (format!("output.{field}"), e);
    let template = |field: &str, t: &str| RecordTemplate::parse(t).map_err(|e| fail(field, e));
    match out.format {
        Format::Json => {}
        _ if out.records.is_some() => {
            return Err(fail("records", "applies to the json format only".into()));
        }
        _ => {}
    }
    if !out.filter.is_empty() && !matches!(out.format, Format::Json | Format::Jsonl) {
        return Err(fail(
            "where",
            "applies to the json and jsonl formats only".into(),
        ));
    }
    if let Some((path, v)) = out
        .filter
        .iter()
        .find(|(p, v)| p.is_empty() || v.is_array() || v.is_object())
    {
        return Err(fail(
            "where",
            format!("`{path}: {v}` must be a field path and a plain value"),
        ));
    }
    let patterns = match out.format {
        Format::Regex => {
            if !out.patterns.iter().any(|p| !p.context) {
                return Err(fail(
                    "patterns",
                    "the regex format needs at least one pattern that is not `context: true`"
                        .into(),
                ));
            }
            out.patterns
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    Regex::new(&p.regex).map(|re| (re, p.context)).map_err(|e| {
                        fail(&format!("patterns[{i}]"), format!("does not compile: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        _ if !out.patterns.is_empty() => {
            return Err(fail("patterns", "applies to the regex format only".into()));
        }
        _ => Vec::new(),
    };
    for (word, mapped) in &out.severity_map {
        if Severity::from_word(mapped).is_none() {
            return Err(fail(
                "severity_map",
                format!(
                    "`{word}` maps to `{mapped}`, not one of info, low, medium, high, critical"
                ),
            ));
        }
    }
    let finding = out
        .finding
        .as_ref()
        .map(|f| -> Result<FindingTemplates, DefProblem> {
            Ok(FindingTemplates {
                id: template("finding.id", &f.id)?,
                title: template("finding.title", &f.title)?,
                severity: f
                    .severity
                    .as_deref()
                    .map(|s| template("finding.severity", s))
                    .transpose()?,
                target: template("finding.target", &f.target)?,
                evidence: template("finding.evidence", &f.evidence)?,
            })
        })
        .transpose()?;
    let mut datasets = Vec::new();
    for (name, t) in &out.datasets {
        let field = format!("datasets.{name}");
        if !valid_name(name) || RESERVED_KEYS.contains(&name.as_str()) {
            return Err(fail(
                &field,
                format!(
                    "`{name}` is not a dataset name (letters, digits, `_`, `-`; not {})",
                    RESERVED_KEYS.join(", ")
                ),
            ));
        }
        datasets.push((name.clone(), template(&field, t)?));
    }
    if finding.is_none() && datasets.is_empty() {
        return Err(fail(
            "finding",
            "the output makes neither findings nor datasets".into(),
        ));
    }
    Ok(Parser {
        from: out.from,
        format: out.format,
        records: split_path(out.records.as_deref().unwrap_or("")),
        filter: out
            .filter
            .iter()
            .map(|(p, v)| (split_path(p), v.clone()))
            .collect(),
        patterns,
        finding,
        severity_map: out.severity_map.clone(),
        default_severity: out.default_severity,
        datasets,
    })
}
