//! Rendering the command line of a tool from a node's config and inputs: the arguments, the
//! files to write first, standard input and the output file.

use super::argv::{ArgTemplate, Filter, Segment, Source};
use super::config::{ConfigDef, as_map, check, is_set};
use super::def::{InputDef, ToolDef};
use super::inputs::{Prepared, input_file, prepare};
use super::record::scalar_text;
use super::resources::Resources;
use super::spec::{ConfigType, Format, OutputFrom, PassAs};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a task runs: its private working directory and the resources it may use.
#[derive(Debug, Clone)]
pub struct RenderContext<'a> {
    /// The task's private working directory; input files and the output file go there.
    pub workdir: PathBuf,
    /// Resolves `res://` settings.
    pub resources: &'a Resources,
}

/// What to run: the worker writes `files`, runs `program` with `argv`, feeds `stdin`, then
/// parses stdout or `output_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program name or absolute path (for the exec allowlist).
    pub program: String,
    /// Arguments after the program.
    pub argv: Vec<String>,
    /// Standard input, when an input is passed that way.
    pub stdin: Option<Vec<u8>>,
    /// Files to write before running, under the working directory.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// The file the tool writes its output to, when it is read from a file.
    pub output_file: Option<PathBuf>,
}

/// Why a tool cannot be run with this config and these inputs (a validation failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{tool}: {problem}")]
pub struct RenderError {
    /// The tool (node type).
    pub tool: String,
    /// What is wrong.
    pub problem: RenderProblem,
}

/// What is wrong with a render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderProblem {
    /// A required input is absent or null.
    #[error("input `{0}` is missing (absent or null)")]
    MissingInput(String),
    /// A required input has no items: there is nothing to run the tool on (the worker may
    /// complete the node with [`ToolDef::empty`] instead).
    #[error("input `{0}` is empty: there is nothing to run the tool on")]
    EmptyInput(String),
    /// An input is not a list of strings or objects, or an item cannot be passed.
    #[error("input `{input}`: {detail}")]
    InputShape {
        /// The input.
        input: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The config does not match the definition.
    #[error("invalid config: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A `res://` setting names a resource that is not there.
    #[error("{0}")]
    Resource(String),
    /// A value would start an argument with `-`, so the program would read it as an option.
    #[error("{what} `{value}` starts with `-` and would be read as an option")]
    Unsafe {
        /// Which setting or input.
        what: String,
        /// The value.
        value: String,
    },
    /// `require_any` or `exclusive` is not met.
    #[error("{0}")]
    Requirement(String),
    /// The working directory or a resolved path is not valid UTF-8.
    #[error("path {0} is not valid UTF-8")]
    Path(String),
}

/// The values a render reads: settings (defaults applied) and prepared inputs.
struct Values<'a> {
    defs: &'a [ConfigDef],
    config: BTreeMap<&'a str, &'a Value>,
    inputs: BTreeMap<&'a str, Prepared>,
    output_file: Option<String>,
    workdir: String,
    resources: &'a Resources,
}

impl ToolDef {
    /// Problems of a node's config: unknown key, wrong type, missing required setting, value
    /// out of range or not allowed, malformed `res://`. Strings holding `${params.X}` or
    /// `${inputs.X}` are not type-checked (the recipe resolves them later).
    pub fn check_config(&self, config: &Value) -> Vec<String> {
        check(&self.config, config, false)
            .into_iter()
            .map(|e| format!("{}: {e}", self.name))
            .collect()
    }

    /// The invocation for `config` and `inputs` (inputs the tool does not declare are
    /// ignored). Inputs may be a list of strings, a list of objects (rendered by the input's
    /// `item` template, else their `url`, else `target`, else their JSON), a string (one item
    /// a line) or null (missing).
    pub fn render(
        &self,
        config: &Value,
        inputs: &Map<String, Value>,
        ctx: &RenderContext,
    ) -> Result<Invocation, RenderError> {
        let fail = |problem| RenderError {
            tool: self.name.clone(),
            problem,
        };
        let problems = check(&self.config, config, true);
        if !problems.is_empty() {
            return Err(fail(RenderProblem::Config(problems)));
        }
        let empty = Map::new();
        let given = as_map(config, &empty).map_err(|e| fail(RenderProblem::Config(vec![e])))?;
        let workdir = utf8(&ctx.workdir).map_err(fail)?;
        let mut files = Vec::new();
        let mut stdin = None;
        let mut prepared = BTreeMap::new();
        for input in &self.inputs {
            let Some(p) = prepare(input, inputs.get(&input.name), &ctx.workdir).map_err(fail)?
            else {
                continue;
            };
            match input.spec.pass {
                PassAs::File => {
                    files.push((input_file(&ctx.workdir, &input.name), p.joined_lines()));
                }
                PassAs::Stdin => stdin = Some(p.joined_lines()),
                _ => {}
            }
            prepared.insert(input.name.as_str(), p);
        }
        let output_file = (self.spec.output.from == OutputFrom::File).then(|| {
            let ext = match self.spec.output.format {
                Format::Json => "json",
                Format::Jsonl => "jsonl",
                Format::Lines | Format::Regex => "txt",
            };
            ctx.workdir.join(format!("output.{ext}"))
        });
        let values = Values {
            defs: &self.config,
            config: self
                .config
                .iter()
                .filter_map(|c| {
                    let v = given
                        .get(&c.name)
                        .filter(|v| !v.is_null())
                        .or(c.spec.default.as_ref())?;
                    Some((c.name.as_str(), v))
                })
                .collect(),
            inputs: prepared,
            output_file: output_file.as_deref().map(utf8).transpose().map_err(fail)?,
            workdir,
            resources: ctx.resources,
        };
        self.check_requirements(&values).map_err(fail)?;
        let mut argv = Vec::new();
        for t in &self.argv {
            argv.extend(values.expand(t, None).map_err(fail)?);
        }
        for c in &self.config {
            if values
                .config
                .get(c.name.as_str())
                .is_some_and(|v| is_set(v))
            {
                for t in &c.optional_args {
                    argv.extend(values.expand(t, Some(Owner::Config(c))).map_err(fail)?);
                }
            }
        }
        for i in &self.inputs {
            if values.inputs.contains_key(i.name.as_str()) {
                for t in &i.optional_args {
                    argv.extend(values.expand(t, Some(Owner::Input(i))).map_err(fail)?);
                }
            }
        }
        Ok(Invocation {
            program: self.spec.program.trim().to_string(),
            argv,
            stdin,
            files,
            output_file,
        })
    }

    fn check_requirements(&self, values: &Values) -> Result<(), RenderProblem> {
        let is_given = |r: &String| match r.split_once('.') {
            Some(("config", n)) => values.config.get(n).is_some_and(|v| is_set(v)),
            Some(("inputs", n)) => values.inputs.contains_key(n),
            _ => false,
        };
        let any = &self.spec.require_any;
        if !any.is_empty() && !any.iter().any(is_given) {
            return Err(RenderProblem::Requirement(format!(
                "needs at least one of {}",
                any.join(", ")
            )));
        }
        let set: Vec<&str> = self
            .spec
            .exclusive
            .iter()
            .filter(|r| is_given(r))
            .map(String::as_str)
            .collect();
        if set.len() > 1 {
            return Err(RenderProblem::Requirement(format!(
                "takes only one of {}, but {} are set",
                self.spec.exclusive.join(", "),
                set.join(" and ")
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Owner<'a> {
    Config(&'a ConfigDef),
    Input(&'a InputDef),
}

impl Values<'_> {
    /// One argument template as zero or more arguments.
    fn expand(&self, t: &ArgTemplate, owner: Option<Owner>) -> Result<Vec<String>, RenderProblem> {
        if let Some((source, filter)) = t.whole_ref() {
            let items = match (self.resolve(source, owner), filter) {
                (Resolved::Input(name), _) if self.pass_of(name) == Some(PassAs::Args) => {
                    let items = self.inputs.get(name).map(|p| p.items.clone());
                    Some((format!("input `{name}`"), items.unwrap_or_default()))
                }
                (Resolved::Config(c), Some(Filter::Args)) => {
                    let value = self.config.get(c.name.as_str()).copied();
                    Some((
                        format!("config.{}", c.name),
                        value.map(list_items).unwrap_or_default(),
                    ))
                }
                _ => None,
            };
            if let Some((what, items)) = items {
                for item in &items {
                    guard(&what, item)?;
                }
                return Ok(items);
            }
        }
        let mut out = String::new();
        for segment in &t.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Ref(source, filter) => {
                    let (what, text) = self.text(source, *filter, owner)?;
                    if out.is_empty() {
                        guard(&what, &text)?;
                    }
                    out.push_str(&text);
                }
            }
        }
        Ok(vec![out])
    }

    fn pass_of(&self, input: &str) -> Option<PassAs> {
        self.inputs.get(input).map(|p| p.pass)
    }

    fn resolve<'s>(&'s self, source: &'s Source, owner: Option<Owner<'s>>) -> Resolved<'s> {
        match (source, owner) {
            (Source::Value, Some(Owner::Config(c))) => Resolved::Config(c),
            (Source::Value, Some(Owner::Input(i))) => Resolved::Input(&i.name),
            (Source::Input(n), _) => Resolved::Input(n),
            (Source::Config(n), _) => match self.defs.iter().find(|c| c.name == *n) {
                Some(c) => Resolved::Config(c),
                None => Resolved::Unknown(format!("config.{n} is not declared")),
            },
            (Source::Value, None) => {
                Resolved::Unknown("${value} is used outside optional_args".into())
            }
            (Source::OutputFile, _) => Resolved::OutputFile,
            (Source::Workdir, _) => Resolved::Workdir,
        }
    }

    /// One reference as text, and what it names (for messages).
    fn text(
        &self,
        source: &Source,
        filter: Option<Filter>,
        owner: Option<Owner>,
    ) -> Result<(String, String), RenderProblem> {
        match self.resolve(source, owner) {
            Resolved::Workdir => Ok(("the working directory".into(), self.workdir.clone())),
            Resolved::OutputFile => Ok((
                "the output file".into(),
                self.output_file.clone().unwrap_or_default(),
            )),
            Resolved::Input(name) => {
                let p = self
                    .inputs
                    .get(name)
                    .ok_or_else(|| RenderProblem::MissingInput(name.to_string()))?;
                Ok((format!("input `{name}`"), p.as_text()))
            }
            Resolved::Unknown(why) => Err(RenderProblem::Config(vec![why])),
            Resolved::Config(c) => {
                let what = format!("config.{}", c.name);
                let value = self
                    .config
                    .get(c.name.as_str())
                    .ok_or_else(|| RenderProblem::Config(vec![format!("{what}: is not set")]))?;
                if c.spec.kind == ConfigType::Resource {
                    let reference = value.as_str().unwrap_or_default();
                    let path = self
                        .resources
                        .resolve(reference)
                        .map_err(RenderProblem::Resource)?;
                    return Ok((what, utf8(&path)?));
                }
                let text = match (value, filter) {
                    (v, Some(Filter::Json)) => v.to_string(),
                    (Value::Array(_), Some(Filter::Lines)) => list_items(value).join("\n"),
                    (Value::Array(_), Some(Filter::Csv | Filter::Args)) => {
                        list_items(value).join(",")
                    }
                    (Value::Array(_), None) => {
                        return Err(RenderProblem::Config(vec![format!(
                            "{what}: a list needs a filter (|csv, |lines, |json) in an argument"
                        )]));
                    }
                    (v, _) => scalar_text(v),
                };
                Ok((what, text))
            }
        }
    }
}

enum Resolved<'s> {
    Config(&'s ConfigDef),
    Unknown(String),
    Input(&'s str),
    OutputFile,
    Workdir,
}

fn list_items(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(scalar_text).collect(),
        other => vec![scalar_text(other)],
    }
}

/// Refuses a value that would begin an argument with `-` (numbers like `-1` pass).
fn guard(what: &str, value: &str) -> Result<(), RenderProblem> {
    if value.starts_with('-') && value.parse::<f64>().is_err() {
        return Err(RenderProblem::Unsafe {
            what: what.to_string(),
            value: value.to_string(),
        });
    }
    Ok(())
}

fn utf8(path: &Path) -> Result<String, RenderProblem> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| RenderProblem::Path(path.display().to_string()))
}
