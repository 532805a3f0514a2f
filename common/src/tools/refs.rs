//! Load-time checks of the references in a definition's arguments: every `${config.X}` and
//! `${inputs.X}` declared and renderable, every input passed somewhere, the output file wired.

use super::argv::{ArgTemplate, Filter, Source};
use super::config::ConfigDef;
use super::def::{DefProblem, InputDef, ToolDef};
use super::spec::{ConfigType, OutputFrom, PassAs};

/// Whose arguments a template belongs to.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Argv,
    Config(&'a ConfigDef),
    Input(&'a InputDef),
}

/// Checks every argument template of `def`.
pub fn check_templates(def: &ToolDef) -> Result<(), DefProblem> {
    for (i, t) in def.argv.iter().enumerate() {
        check_arg(def, t, Owner::Argv).map_err(|e| (format!("argv[{i}]"), e))?;
    }
    for c in &def.config {
        for t in &c.optional_args {
            check_arg(def, t, Owner::Config(c))
                .map_err(|e| (format!("config.{}.optional_args", c.name), e))?;
        }
    }
    for input in &def.inputs {
        for t in &input.optional_args {
            check_arg(def, t, Owner::Input(input))
                .map_err(|e| (format!("inputs.{}.optional_args", input.name), e))?;
        }
    }
    let all_args = || {
        def.argv
            .iter()
            .chain(def.config.iter().flat_map(|c| &c.optional_args))
            .chain(def.inputs.iter().flat_map(|i| &i.optional_args))
    };
    for input in &def.inputs {
        let named = |t: &ArgTemplate| {
            t.refs()
                .any(|(s, _)| *s == Source::Input(input.name.clone()))
        };
        let own = |t: &ArgTemplate| t.refs().any(|(s, _)| *s == Source::Value);
        let passed = all_args().any(named) || input.optional_args.iter().any(own);
        if input.spec.pass != PassAs::Stdin && !passed {
            return Err((
                format!("inputs.{}", input.name),
                format!(
                    "is never passed to the program: reference ${{inputs.{}}} in argv or \
                     ${{value}} in its optional_args",
                    input.name
                ),
            ));
        }
    }
    if def
        .inputs
        .iter()
        .filter(|i| i.spec.pass == PassAs::Stdin)
        .count()
        > 1
    {
        return Err((
            "inputs".into(),
            "only one input can be passed on stdin".into(),
        ));
    }
    let output_in_argv = def
        .argv
        .iter()
        .any(|t| t.refs().any(|(s, _)| *s == Source::OutputFile));
    if def.spec.output.from == OutputFrom::File && !output_in_argv {
        return Err((
            "argv".into(),
            "output.from is file, but argv never passes ${output_file}".into(),
        ));
    }
    for (field, refs) in [
        ("require_any", &def.spec.require_any),
        ("exclusive", &def.spec.exclusive),
    ] {
        for r in refs {
            let declared = match r.split_once('.') {
                Some(("config", n)) => def.config.iter().any(|c| c.name == n),
                Some(("inputs", n)) => def.inputs.iter().any(|i| i.name == n),
                _ => false,
            };
            if !declared {
                return Err((
                    field.to_string(),
                    format!("`{r}` is not a declared config.NAME or inputs.NAME"),
                ));
            }
        }
    }
    Ok(())
}

fn check_arg(def: &ToolDef, t: &ArgTemplate, owner: Owner) -> Result<(), String> {
    let whole = t.whole_ref().is_some();
    for (source, filter) in t.refs() {
        if filter == Some(Filter::Args) && !whole {
            return Err("`|args` makes several arguments: it must be a whole argument".into());
        }
        match source {
            Source::Config(n) => {
                let c = def
                    .config
                    .iter()
                    .find(|c| c.name == *n)
                    .ok_or_else(|| format!("${{config.{n}}} is not a declared setting"))?;
                if !c.spec.required && c.spec.default.is_none() {
                    return Err(format!(
                        "config.{n} is optional and has no default: pass it through its optional_args"
                    ));
                }
                config_ref(c, filter)?;
            }
            Source::Input(n) => {
                let i = def
                    .inputs
                    .iter()
                    .find(|i| i.name == *n)
                    .ok_or_else(|| format!("${{inputs.{n}}} is not a declared input"))?;
                if !i.spec.required {
                    return Err(format!(
                        "inputs.{n} is optional: pass it through its optional_args"
                    ));
                }
                input_ref(i, filter, whole)?;
            }
            Source::Value => match owner {
                Owner::Argv => return Err("${value} belongs in optional_args".into()),
                Owner::Config(c) => config_ref(c, filter)?,
                Owner::Input(i) => input_ref(i, filter, whole)?,
            },
            Source::OutputFile if def.spec.output.from != OutputFrom::File => {
                return Err("${output_file} needs `output.from: file`".into());
            }
            Source::OutputFile | Source::Workdir => {}
        }
    }
    Ok(())
}

fn config_ref(c: &ConfigDef, filter: Option<Filter>) -> Result<(), String> {
    if c.spec.kind == ConfigType::List && filter.is_none() {
        return Err(format!(
            "config.{} is a list: add a filter (|csv, |lines, |json or |args)",
            c.name
        ));
    }
    Ok(())
}

fn input_ref(i: &InputDef, filter: Option<Filter>, whole: bool) -> Result<(), String> {
    if filter.is_some() {
        return Err(format!(
            "inputs.{} is passed as its `as` says: filters do not apply",
            i.name
        ));
    }
    match i.spec.pass {
        PassAs::Stdin => Err(format!(
            "inputs.{} is passed on stdin and cannot appear in an argument",
            i.name
        )),
        PassAs::Args if !whole => Err(format!(
            "inputs.{} is passed as args: it must be a whole argument",
            i.name
        )),
        _ => Ok(()),
    }
}
