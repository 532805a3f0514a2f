//! A tool's config settings: checking a recipe's values against their declared types.

use super::argv::ArgTemplate;
use super::resources::ResourceRef;
use super::spec::{ConfigSpec, ConfigType};
use regex::Regex;
use serde_json::{Map, Value};

/// One declared setting, its pattern and optional arguments parsed.
#[derive(Debug, Clone)]
pub struct ConfigDef {
    /// Setting name.
    pub name: String,
    /// As written.
    pub spec: ConfigSpec,
    /// `pattern`, compiled (anchored by the writer, if wanted).
    pub pattern: Option<Regex>,
    /// `optional_args`, parsed.
    pub optional_args: Vec<ArgTemplate>,
}

/// Whether a string is (or contains) a `${params.X}` / `${inputs.X}` reference that a recipe
/// resolves later.
pub fn is_reference(s: &str) -> bool {
    s.contains("${params.") || s.contains("${inputs.")
}

/// What kind of JSON value `v` is, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Whether a value counts as set for `optional_args`, `require_any` and `exclusive`: not
/// null, `false`, `""` or `[]`.
pub fn is_set(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
        && v.as_str() != Some("")
        && v.as_array().is_none_or(|a| !a.is_empty())
}

/// The settings of `config` (null counts as `{}`), or a message when it is not an object.
pub fn as_map<'a>(
    config: &'a Value,
    empty: &'a Map<String, Value>,
) -> Result<&'a Map<String, Value>, String> {
    match config {
        Value::Null => Ok(empty),
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "config must be a JSON object, not {}",
            kind_of(other)
        )),
    }
}

/// Every problem of `config` (each message starting `config.NAME:`): unknown keys, wrong types, missing required settings,
/// values out of range or not allowed, malformed `res://` references. With `strict` false, a
/// string holding a `${params.X}`/`${inputs.X}` reference is not type-checked; with `strict`
/// it is an error (it should have been resolved).
pub fn check(defs: &[ConfigDef], config: &Value, strict: bool) -> Vec<String> {
    let empty = Map::new();
    let map = match as_map(config, &empty) {
        Ok(map) => map,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for key in map.keys() {
        if !defs.iter().any(|d| d.name == *key) {
            let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            problems.push(format!(
                "config.{key}: unknown setting (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    for def in defs {
        match map.get(&def.name) {
            None | Some(Value::Null) => {
                if def.spec.required && def.spec.default.is_none() {
                    problems.push(format!(
                        "config.{}: required setting is missing ({})",
                        def.name,
                        def.spec.kind.name()
                    ));
                }
            }
            Some(value) => {
                if let Err(e) = check_value(def, value, strict) {
                    problems.push(format!("config.{}: {e}", def.name));
                }
            }
        }
    }
    problems
}

/// Checks one value against its declaration.
pub fn check_value(def: &ConfigDef, value: &Value, strict: bool) -> Result<(), String> {
    if let Value::String(s) = value
        && is_reference(s)
    {
        return if strict {
            Err(format!("`{s}` is an unresolved reference"))
        } else {
            Ok(())
        };
    }
    let spec = &def.spec;
    let want = |what: &str| Err(format!("expected {what}, got {}", kind_of(value)));
    match spec.kind {
        ConfigType::String => match value {
            Value::String(s) => check_text(def, s)?,
            _ => return want("a string"),
        },
        ConfigType::Integer => {
            if !(value.is_i64() || value.is_u64()) {
                return want("a whole number");
            }
            check_range(spec, value.as_f64().unwrap_or_default(), "")?;
        }
        ConfigType::Number => {
            let Some(n) = value.as_f64() else {
                return want("a number");
            };
            check_range(spec, n, "")?;
        }
        ConfigType::Boolean => {
            if !value.is_boolean() {
                return want("true or false");
            }
        }
        ConfigType::Resource => match value {
            Value::String(s) => {
                ResourceRef::parse(s)?;
            }
            _ => return want("a res://NAME:TAG reference"),
        },
        ConfigType::List => {
            let Value::Array(items) = value else {
                return want("a list");
            };
            check_range(spec, items.len() as f64, " items")?;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if is_reference(s) => {
                        if strict {
                            return Err(format!("item {i}: `{s}` is an unresolved reference"));
                        }
                    }
                    Value::String(s) => check_text(def, s).map_err(|e| format!("item {i}: {e}"))?,
                    Value::Number(_) | Value::Bool(_) => {
                        check_allowed(spec, item).map_err(|e| format!("item {i}: {e}"))?
                    }
                    other => {
                        return Err(format!(
                            "item {i} is {}; list items are strings or numbers",
                            kind_of(other)
                        ));
                    }
                }
            }
            return Ok(());
        }
    }
    check_allowed(spec, value)
}

fn check_text(def: &ConfigDef, s: &str) -> Result<(), String> {
    if s.contains(['\0', '\n', '\r']) {
        return Err("must not contain NUL or line breaks".into());
    }
    if let Some(re) = &def.pattern
        && !re.is_match(s)
    {
        return Err(format!(
            "`{s}` does not match the pattern `{}`",
            re.as_str()
        ));
    }
    check_allowed(&def.spec, &Value::String(s.to_string()))
}

fn check_allowed(spec: &ConfigSpec, value: &Value) -> Result<(), String> {
    if spec.allowed.is_empty() || spec.allowed.contains(value) {
        return Ok(());
    }
    let allowed: Vec<String> = spec.allowed.iter().map(Value::to_string).collect();
    Err(format!(
        "{value} is not allowed (allowed: {})",
        allowed.join(", ")
    ))
}

fn check_range(spec: &ConfigSpec, n: f64, unit: &str) -> Result<(), String> {
    if let Some(min) = spec.min
        && n < min
    {
        return Err(format!("{n}{unit} is below the minimum of {min}{unit}"));
    }
    if let Some(max) = spec.max
        && n > max
    {
        return Err(format!("{n}{unit} is above the maximum of {max}{unit}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(name: &str, yaml: &str) -> ConfigDef {
        let spec: ConfigSpec = yaml_serde::from_str(yaml).unwrap();
        ConfigDef {
            name: name.into(),
            pattern: spec.pattern.as_deref().map(|p| Regex::new(p).unwrap()),
            spec,
            optional_args: vec![],
        }
    }

    fn defs() -> Vec<ConfigDef> {
        vec![
            def("templates", "{ type: resource, required: true }"),
            def(
                "rate",
                "{ type: integer, default: 150, min: 1, max: 10000 }",
            ),
            def("severity", "{ type: list, allowed: [low, high], max: 2 }"),
            def("url", "{ type: string, pattern: 'FUZZ' }"),
            def("insecure", "{ type: boolean }"),
        ]
    }

    #[test]
    fn good_configs_pass() {
        let ok = json!({"templates": "res://nuclei/templates:latest", "rate": 10,
                        "severity": ["low"], "url": "http://h/FUZZ", "insecure": true});
        assert_eq!(check(&defs(), &ok, true), Vec::<String>::new());
        let refs = json!({"templates": "${params.t}", "rate": "${params.rate}",
                          "severity": "${inputs.s}"});
        assert_eq!(check(&defs(), &refs, false), Vec::<String>::new());
        assert_eq!(check(&defs(), &refs, true).len(), 3);
    }

    #[test]
    fn each_problem_is_named() {
        let bad = json!({"rate": 0, "severity": ["medium"], "url": "http://h/",
                         "insecure": "yes", "extra": 1});
        let problems = check(&defs(), &bad, false).join("\n");
        for needle in [
            "config.extra: unknown setting (known: templates, rate, severity, url, insecure)",
            "config.templates: required",
            "config.rate: 0 is below the minimum of 1",
            "config.severity: item 0: \"medium\" is not allowed",
            "config.url: `http://h/` does not match the pattern `FUZZ`",
            "config.insecure: expected true or false, got a string",
        ] {
            assert!(problems.contains(needle), "{needle} not in\n{problems}");
        }
        let malformed = json!({"templates": "res://../x:1", "rate": 1.5});
        let problems = check(&defs(), &malformed, false).join("\n");
        assert!(problems.contains("res://../x:1") && problems.contains("whole number"));
        assert!(check(&defs(), &json!([1]), false)[0].contains("JSON object"));
    }

    #[test]
    fn set_means_not_empty_or_false() {
        assert!(is_set(&json!(true)) && is_set(&json!(0)) && is_set(&json!(["a"])));
        assert!(!is_set(&json!(false)) && !is_set(&json!([])) && !is_set(&json!("")));
    }
}
