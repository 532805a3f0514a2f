//! `${inputs.NAME:file}` in an `exec` node's arguments: the input's value is written as lines
//! (JSON for objects) to a file in the task's private working directory, and the argument
//! gets the file's path. The file goes away with the directory.

use super::Workdir;
use secflow_common::{
    ErrorClass, TaskError,
    recipe::{Rule, rewrite},
};
use serde_json::{Map, Value};
use std::{collections::BTreeMap, path::PathBuf};

/// Replaces every `${inputs.NAME:file}` in the arguments after the program with the path of a
/// file holding input `NAME` of `inputs`, written into `workdir`. An input the task does not
/// have is a validation error; a file that cannot be written a resource error.
pub(super) fn write_input_files(
    argv: &mut [String],
    inputs: &Map<String, Value>,
    workdir: &Workdir,
) -> Result<(), TaskError> {
    let dir = std::path::absolute(workdir.path()).map_err(|e| unwritable(workdir, &e))?;
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for (i, arg) in argv.iter_mut().enumerate().skip(1) {
        if !arg.contains(":file}") {
            continue;
        }
        let mut failure = None;
        let rewritten = rewrite(arg, "inputs", &mut |name, rule| {
            if rule != Some(Rule::File) || failure.is_some() {
                return None;
            }
            if let Some(path) = written.get(name) {
                return Some(path.clone());
            }
            let Some(value) = inputs.get(name) else {
                failure = Some(TaskError::validation(
                    "missing_input",
                    format!(
                        "exec: config.argv[{i}]: `${{inputs.{name}:file}}`: the task has no input `{name}`"
                    ),
                ));
                return None;
            };
            let path = dir.join(file_name(name, written.len()));
            if let Err(e) = std::fs::write(&path, Rule::File.render(value)) {
                failure = Some(unwritable(workdir, &e));
                return None;
            }
            let path = path.to_string_lossy().into_owned();
            written.insert(name.to_string(), path.clone());
            Some(path)
        });
        if let Some(error) = failure {
            return Err(error);
        }
        *arg = rewritten;
    }
    Ok(())
}

/// `input-NAME.txt` for a plain name, else `input.N.txt` (no plain name has a dot).
fn file_name(name: &str, n: usize) -> PathBuf {
    let plain = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        PathBuf::from(format!("input-{name}.txt"))
    } else {
        PathBuf::from(format!("input.{n}.txt"))
    }
}

fn unwritable(workdir: &Workdir, e: &std::io::Error) -> TaskError {
    TaskError::new(
        ErrorClass::Resource,
        "workdir_unavailable",
        format!(
            "exec: cannot write an input file in {}: {e}",
            workdir.path().display()
        ),
    )
}
