//! `${params.NAME}` and `${inputs.NAME}` references inside a node's config.

use serde_json::Value;

/// The references found in a config, each with the JSON path of the string holding it.
#[derive(Debug, Default, PartialEq)]
pub struct References {
    /// `(path, parameter name)`.
    pub params: Vec<(String, String)>,
    /// `(path, input name)`.
    pub inputs: Vec<(String, String)>,
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
        match inner.split_once('.') {
            Some(("params", name)) if !name.is_empty() => {
                refs.params.push((path.to_string(), name.to_string()))
            }
            Some(("inputs", name)) if !name.is_empty() => {
                refs.inputs.push((path.to_string(), name.to_string()))
            }
            _ => refs
                .unknown
                .push((path.to_string(), format!("${{{inner}}}"))),
        }
        rest = &after[end + 1..];
    }
}

/// Replaces `${params.NAME}` references whose value is known. A string that is exactly one
/// reference takes the parameter's JSON value (so numbers stay numbers); otherwise the value is
/// spliced in as text.
pub fn substitute_params(value: &Value, params: &dyn Fn(&str) -> Option<Value>) -> Value {
    substitute(value, "params", params)
}

/// Replaces `${KIND.NAME}` references (`KIND` being `params` or `inputs`) whose value is known,
/// as [`substitute_params`] does.
pub fn substitute(value: &Value, kind: &str, lookup: &dyn Fn(&str) -> Option<Value>) -> Value {
    let open = format!("${{{kind}.");
    match value {
        Value::String(s) => {
            if let Some(name) = s
                .strip_prefix(open.as_str())
                .and_then(|r| r.strip_suffix('}'))
                && !name.contains('}')
                && let Some(v) = lookup(name)
            {
                return v;
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find(open.as_str()) {
                let after = &rest[start + open.len()..];
                match after
                    .find('}')
                    .and_then(|end| lookup(&after[..end]).map(|v| (end, v)))
                {
                    Some((end, v)) => {
                        out.push_str(&rest[..start]);
                        out.push_str(&v.as_str().map_or_else(|| v.to_string(), str::to_string));
                        rest = &after[end + 1..];
                    }
                    None => {
                        out.push_str(&rest[..start + open.len()]);
                        rest = after;
                    }
                }
            }
            out.push_str(rest);
            Value::String(out)
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
}
