//! `${params.NAME}` and `${inputs.NAME}` references inside a node's config, optionally with a
//! rendering rule (`${inputs.NAME:lines}`, see [`super::rules`]): finding them and
//! substituting their values.

use super::rules::{INPUT_RULES, PARAM_RULES, Rule};
use serde_json::Value;

/// The references found in a config, each with the JSON path of the string holding it.
#[derive(Debug, Default, PartialEq)]
pub struct References {
    /// `(path, parameter name)`, with or without a rule.
    pub params: Vec<(String, String)>,
    /// `(path, input name)`, with or without a rule.
    pub inputs: Vec<(String, String)>,
    /// `(path, parameter name, rule)` of the parameter references whose rule (if any) is valid.
    pub param_rules: Vec<(String, String, Option<Rule>)>,
    /// `(path, input name, rule)` of the input references whose rule (if any) is valid.
    pub input_rules: Vec<(String, String, Option<Rule>)>,
    /// `(path, message)` of references whose rule is unknown or not allowed for their kind.
    pub bad_rules: Vec<(String, String)>,
    /// `(path, text)` of references that are neither.
    pub unknown: Vec<(String, String)>,
}

/// Collects the references in `value`, paths starting at `config`.
pub fn references(value: &Value) -> References {
    let mut refs = References::default();
    walk(value, "config", &mut refs);
    refs
}

fn walk(value: &Value, path: &str, refs: &mut References) {
    match value {
        Value::String(s) => scan(s, path, refs),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| walk(v, &format!("{path}[{i}]"), refs)),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| walk(v, &format!("{path}.{k}"), refs)),
        _ => {}
    }
}

/// `NAME` and the rule text of a reference's body after `KIND.`; `None` without a name.
fn name_and_rule(body: &str) -> Option<(&str, Option<&str>)> {
    let (name, rule) = match body.split_once(':') {
        Some((name, rule)) => (name, Some(rule)),
        None => (body, None),
    };
    (!name.is_empty()).then_some((name, rule))
}

fn scan(s: &str, path: &str, refs: &mut References) {
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            refs.unknown
                .push((path.to_string(), rest[start..].to_string()));
            return;
        };
        let inner = &after[..end];
        let parts = inner
            .split_once('.')
            .and_then(|(kind, body)| Some(kind).zip(name_and_rule(body)));
        match parts {
            Some((kind @ ("params" | "inputs"), (name, rule))) => {
                let (names, ruled, allowed) = if kind == "params" {
                    (&mut refs.params, &mut refs.param_rules, PARAM_RULES)
                } else {
                    (&mut refs.inputs, &mut refs.input_rules, INPUT_RULES)
                };
                names.push((path.to_string(), name.to_string()));
                match rule.map(|r| Rule::parse(r, allowed)).transpose() {
                    Ok(rule) => ruled.push((path.to_string(), name.to_string(), rule)),
                    Err(message) => refs
                        .bad_rules
                        .push((path.to_string(), format!("`${{{inner}}}`: {message}"))),
                }
            }
            _ => refs
                .unknown
                .push((path.to_string(), format!("${{{inner}}}"))),
        }
        rest = &after[end + 1..];
    }
}

/// Rewrites each `${KIND.NAME}` or `${KIND.NAME:RULE}` reference in `s` with the text
/// `replace(NAME, RULE)` gives. A reference it gives `None` for, one with an unknown rule and
/// anything else stay as written.
pub fn rewrite(
    s: &str,
    kind: &str,
    replace: &mut dyn FnMut(&str, Option<Rule>) -> Option<String>,
) -> String {
    let open = format!("${{{kind}.");
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find(open.as_str()) {
        let after = &rest[start + open.len()..];
        let replaced = after.find('}').and_then(|end| {
            let (name, rule) = name_and_rule(&after[..end])?;
            let rule = match rule {
                Some(text) => Some(Rule::parse(text, INPUT_RULES).ok()?),
                None => None,
            };
            replace(name, rule).map(|text| (end, text))
        });
        match replaced {
            Some((end, text)) => {
                out.push_str(&rest[..start]);
                out.push_str(&text);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[..start + open.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Replaces `${params.NAME}` references whose value is known. A string that is exactly one
/// reference without a rule takes the parameter's JSON value (so numbers stay numbers);
/// otherwise the value is spliced in as text, rendered by the reference's rule if it has one.
pub fn substitute_params(value: &Value, params: &dyn Fn(&str) -> Option<Value>) -> Value {
    substitute(value, "params", params)
}

/// Replaces `${KIND.NAME}` references (`KIND` being `params` or `inputs`) whose value is known,
/// as [`substitute_params`] does. `${KIND.NAME:file}` stays as written: the `exec` handler
/// writes the file when it runs.
pub fn substitute(value: &Value, kind: &str, lookup: &dyn Fn(&str) -> Option<Value>) -> Value {
    let open = format!("${{{kind}.");
    match value {
        Value::String(s) => {
            if let Some(name) = s
                .strip_prefix(open.as_str())
                .and_then(|r| r.strip_suffix('}'))
                && !name.contains('}')
                && !name.contains(':')
                && let Some(v) = lookup(name)
            {
                return v;
            }
            Value::String(rewrite(s, kind, &mut |name, rule| match rule {
                Some(Rule::File) => None,
                Some(rule) => lookup(name).map(|v| rule.render(&v)),
                None => {
                    lookup(name).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                }
            }))
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute(v, kind, lookup)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, kind, lookup)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_references_with_their_paths() {
        let refs = references(
            &json!({"url": "${params.target}/x", "argv": ["a", "${inputs.hosts}", "${env.HOME}"]}),
        );
        assert_eq!(
            refs.params,
            vec![("config.url".to_string(), "target".to_string())]
        );
        assert_eq!(
            refs.inputs,
            vec![("config.argv[1]".to_string(), "hosts".to_string())]
        );
        assert_eq!(
            refs.unknown,
            vec![("config.argv[2]".to_string(), "${env.HOME}".to_string())]
        );
    }

    #[test]
    fn substitutes_whole_values_and_splices_text() {
        let params = |name: &str| match name {
            "ms" => Some(json!(250)),
            "host" => Some(json!("10.0.0.1")),
            _ => None,
        };
        let out = substitute_params(
            &json!({"ms": "${params.ms}", "url": "http://${params.host}:80/${params.other}"}),
            &params,
        );
        assert_eq!(
            out,
            json!({"ms": 250, "url": "http://10.0.0.1:80/${params.other}"})
        );
    }

    #[test]
    fn finds_rules_and_names_the_known_ones() {
        let refs = references(&json!({"argv": [
            "${inputs.urls:file}",
            "-u=${inputs.urls:csv},${params.ports:lines}",
            "${inputs.urls}",
            "${inputs.x:upper}",
            "${params.p:file}",
        ]}));
        let p = |i: usize| format!("config.argv[{i}]");
        assert_eq!(
            refs.input_rules,
            vec![
                (p(0), "urls".to_string(), Some(Rule::File)),
                (p(1), "urls".to_string(), Some(Rule::Csv)),
                (p(2), "urls".to_string(), None),
            ]
        );
        assert_eq!(
            refs.param_rules,
            vec![(p(1), "ports".to_string(), Some(Rule::Lines))]
        );
        // Backward compatible: every reference is listed by name, its rule valid or not.
        assert_eq!(refs.inputs.len(), 4);
        assert_eq!(refs.inputs[3], (p(3), "x".to_string()));
        assert_eq!(refs.params.len(), 2);
        assert_eq!(
            refs.bad_rules,
            vec![
                (
                    p(3),
                    "`${inputs.x:upper}`: unknown rule `upper` (known rules: lines, csv, json, file)"
                        .to_string()
                ),
                (
                    p(4),
                    "`${params.p:file}`: the rule `file` cannot be used here (rules here: lines, csv, json)"
                        .to_string()
                ),
            ]
        );
        assert!(refs.unknown.is_empty());
    }

    #[test]
    fn rules_render_on_substitution_and_file_stays() {
        let inputs = |name: &str| match name {
            "urls" => Some(json!(["http://a/1", "http://a/2"])),
            "code" => Some(json!(0)),
            _ => None,
        };
        let out = substitute(
            &json!({
                "whole": "${inputs.urls}",
                "lines": "${inputs.urls:lines}",
                "csv": "-u ${inputs.urls:csv}",
                "json": "${inputs.urls:json}",
                "file": "${inputs.urls:file}",
                "bad": "${inputs.urls:upper}",
                "code": "${inputs.code}",
                "missing": "${inputs.nope:csv}",
            }),
            "inputs",
            &inputs,
        );
        assert_eq!(
            out,
            json!({
                "whole": ["http://a/1", "http://a/2"],
                "lines": "http://a/1\nhttp://a/2",
                "csv": "-u http://a/1,http://a/2",
                "json": r#"["http://a/1","http://a/2"]"#,
                "file": "${inputs.urls:file}",
                "bad": "${inputs.urls:upper}",
                "code": 0,
                "missing": "${inputs.nope:csv}",
            })
        );
        let ports = |name: &str| (name == "ports").then(|| json!([80, 443]));
        assert_eq!(
            substitute_params(
                &json!(["${params.ports:csv}", "${params.ports:file}"]),
                &ports
            ),
            json!(["80,443", "${params.ports:file}"])
        );
    }
}
