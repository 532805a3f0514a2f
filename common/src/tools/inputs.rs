//! A node's inputs as a tool takes them: items out of lists, objects and text, checked so
//! that no item can break out of its line or argument.

use super::def::InputDef;
use super::record::scalar_text;
use super::render::RenderProblem;
use super::spec::PassAs;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One input ready to pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// How it is passed.
    pub pass: PassAs,
    /// Its items, trimmed, de-duplicated in order, none empty.
    pub items: Vec<String>,
    /// `file`: the path of the file holding the items.
    pub path: Option<String>,
}

impl Prepared {
    /// The items one a line, ending with a newline (file and stdin content).
    pub fn joined_lines(&self) -> Vec<u8> {
        let mut out = self.items.join("\n").into_bytes();
        out.push(b'\n');
        out
    }

    /// The input as one argument: the file's path, or the items joined.
    pub fn as_text(&self) -> String {
        match self.pass {
            PassAs::File => self.path.clone().unwrap_or_default(),
            PassAs::Csv => self.items.join(","),
            PassAs::Lines | PassAs::Stdin | PassAs::Args => self.items.join("\n"),
        }
    }
}

/// Prepares `input` from its value: `Ok(None)` when an optional input is absent, null or
/// empty; an error when a required one is, or when its shape is wrong.
pub fn prepare(
    input: &InputDef,
    value: Option<&Value>,
    workdir: &Path,
) -> Result<Option<Prepared>, RenderProblem> {
    let name = &input.name;
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return if input.spec.required {
            Err(RenderProblem::MissingInput(name.clone()))
        } else {
            Ok(None)
        };
    };
    let items = items(input, value).map_err(|detail| RenderProblem::InputShape {
        input: name.clone(),
        detail,
    })?;
    if items.is_empty() {
        return if input.spec.required {
            Err(RenderProblem::EmptyInput(name.clone()))
        } else {
            Ok(None)
        };
    }
    let path = match input.spec.pass {
        PassAs::File => {
            let path = input_file(workdir, name);
            Some(
                path.to_str()
                    .ok_or_else(|| RenderProblem::Path(path.display().to_string()))?
                    .to_string(),
            )
        }
        _ => None,
    };
    Ok(Some(Prepared {
        pass: input.spec.pass,
        items,
        path,
    }))
}

/// Where a `file` input is written: `WORKDIR/input-NAME.txt`.
pub fn input_file(workdir: &Path, name: &str) -> PathBuf {
    workdir.join(format!("input-{name}.txt"))
}

fn items(input: &InputDef, value: &Value) -> Result<Vec<String>, String> {
    let mut raw = Vec::new();
    match value {
        Value::String(s) => raw.extend(s.lines().map(str::to_string)),
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                match v {
                    Value::Null => {}
                    Value::Array(_) => {
                        return Err(format!(
                            "item {i} is a list; items are strings, numbers or objects"
                        ));
                    }
                    Value::Object(_) => raw.push(object_item(input, v)),
                    other => raw.push(scalar_text(other)),
                }
            }
        }
        Value::Object(_) => raw.push(object_item(input, value)),
        other => raw.push(scalar_text(other)),
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in raw {
        let item = item.trim();
        if item.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "item `{}` contains a line break or NUL",
                item.escape_debug()
            ));
        }
        if !item.is_empty() && seen.insert(item.to_string()) {
            out.push(item.to_string());
        }
    }
    Ok(out)
}

/// An object item: its `item` template, else its `url`, else `target`, else its JSON.
fn object_item(input: &InputDef, v: &Value) -> String {
    if let Some(t) = &input.item {
        return t.render(v);
    }
    ["url", "target"]
        .iter()
        .filter_map(|k| v.get(k).map(scalar_text))
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| v.to_string())
}
