//! What flows between nodes, as far as a recipe can know before it runs: the kind of each
//! node type's outputs (text, scalar, list, object), and the config fields that need text.

use super::KNOWN_TYPES;
use serde_json::Value;

/// What a node's output is, as far as a recipe can know before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A string (`exec` stdout, an `http` body).
    Text,
    /// A number or a boolean (`exec` exit code, `http` status).
    Scalar,
    /// A list (a tool's datasets and findings).
    List,
    /// An object (a generic node's whole output).
    Object,
    /// Not known: possibly structured.
    Unknown,
}

impl OutputKind {
    /// Whether it can stand where a config needs a string (scalars become their text).
    pub fn is_text(self) -> bool {
        matches!(self, OutputKind::Text | OutputKind::Scalar)
    }

    /// What it is, for messages: "is a list".
    pub fn describe(self) -> &'static str {
        match self {
            OutputKind::Text => "is text",
            OutputKind::Scalar => "is a scalar",
            OutputKind::List => "is a list",
            OutputKind::Object => "is an object",
            OutputKind::Unknown => "is not known to be text",
        }
    }
}

/// The kind of output `output` of a node of `node_type` declaring `declared` outputs, tool
/// nodes looked up in `tools`. A generic node (`exec`, `http`, built-ins, `enrich.cve`) that
/// declares a single output other than its handler's fields stores its whole output object
/// under that name (see `runs::select_outputs`).
pub fn output_kind(
    node_type: &str,
    output: &str,
    declared: &[String],
    tools: &crate::tools::ToolSet,
) -> OutputKind {
    use OutputKind::{List, Object, Scalar, Text, Unknown};
    if let Some(def) = tools.get(node_type) {
        return match output {
            o if def.datasets().iter().any(|d| d == o) => List,
            "findings_count" | "records" => Scalar,
            "parser" | "parse_error" => Text,
            _ => Unknown,
        };
    }
    let field = match (node_type, output) {
        ("exec", "stdout" | "stderr") | ("http", "body" | "content_type") => Some(Text),
        ("exec", "exit_code" | "stdout_truncated" | "stderr_truncated")
        | ("http", "status" | "body_truncated")
        | ("enrich.cve", "findings_count" | "degraded") => Some(Scalar),
        ("enrich.cve", "enriched_findings") => Some(List),
        _ => None,
    };
    match field {
        Some(kind) => kind,
        None if declared.len() == 1 && KNOWN_TYPES.contains(&node_type) => Object,
        None => Unknown,
    }
}

/// Whether the config field at `path` (`config.argv[2]`, `config.headers.Accept`) of a node of
/// `node_type` needs a string: `exec` arguments, environment values and `cwd`; `http` URL,
/// method, header values and body.
pub fn needs_text(node_type: &str, path: &str) -> bool {
    let Some(field) = path.strip_prefix("config.") else {
        return false;
    };
    let key_of = |prefix: &str| field.strip_prefix(prefix).is_some_and(|k| !k.is_empty());
    match node_type {
        "exec" => argv_index(path).is_some() || key_of("env.") || field == "cwd",
        "http" => matches!(field, "url" | "method" | "body") || key_of("headers."),
        _ => false,
    }
}

/// The index of an `exec` argument from its path (`config.argv[2]` → 2).
pub fn argv_index(path: &str) -> Option<usize> {
    path.strip_prefix("config.argv[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `config` with numbers and booleans in the fields [`needs_text`] names turned into their
/// text, and nulls in arguments, environment and header values into empty text (an optional
/// upstream that failed). Other types' configs are returned as they are.
pub fn textified(node_type: &str, mut config: Value) -> Value {
    fn text(v: &mut Value, null_too: bool) {
        match v {
            Value::Number(n) => *v = Value::String(n.to_string()),
            Value::Bool(b) => *v = Value::String(b.to_string()),
            Value::Null if null_too => *v = Value::String(String::new()),
            _ => {}
        }
    }
    let (scalars, lists, maps): (&[&str], &[&str], &[&str]) = match node_type {
        "exec" => (&["cwd"], &["argv"], &["env"]),
        "http" => (&["url", "method", "body"], &[], &["headers"]),
        _ => return config,
    };
    let Some(map) = config.as_object_mut() else {
        return config;
    };
    for key in scalars {
        map.get_mut(*key).into_iter().for_each(|v| text(v, false));
    }
    for key in lists {
        if let Some(Value::Array(items)) = map.get_mut(*key) {
            items.iter_mut().for_each(|v| text(v, true));
        }
    }
    for key in maps {
        if let Some(Value::Object(values)) = map.get_mut(*key) {
            values.values_mut().for_each(|v| text(v, true));
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_kinds_and_text_fields() {
        let tools = crate::tools::ToolSet::builtin().unwrap();
        let one = |o: &str| vec![o.to_string()];
        assert_eq!(
            output_kind("exec", "stdout", &one("stdout"), &tools),
            OutputKind::Text
        );
        assert_eq!(
            output_kind("exec", "exit_code", &[], &tools),
            OutputKind::Scalar
        );
        assert_eq!(
            output_kind("exec", "result", &one("result"), &tools),
            OutputKind::Object
        );
        assert_eq!(output_kind("http", "body", &[], &tools), OutputKind::Text);
        assert_eq!(
            output_kind("builtin.echo", "echo", &one("echo"), &tools),
            OutputKind::Object
        );
        assert_eq!(
            output_kind("builtin.echo", "a", &[], &tools),
            OutputKind::Unknown
        );
        assert_eq!(
            output_kind("enrich.cve", "enriched_findings", &[], &tools),
            OutputKind::List
        );
        let tool = tools.names()[0];
        assert_eq!(
            output_kind(tool, "findings", &one("findings"), &tools),
            OutputKind::List
        );
        assert!(needs_text("exec", "config.argv[3]") && needs_text("exec", "config.env.X"));
        assert!(needs_text("http", "config.headers.Accept") && needs_text("http", "config.url"));
        assert!(!needs_text("http", "config.json.a") && !needs_text("exec", "config.argv"));
        assert!(!needs_text("builtin.echo", "config.text"));
        assert_eq!(
            textified(
                "exec",
                json!({"argv": ["sleep", 5, null, true], "env": {"N": 1}})
            ),
            json!({"argv": ["sleep", "5", "", "true"], "env": {"N": "1"}})
        );
        assert_eq!(
            textified("http", json!({"url": "http://x", "body": null, "json": 1})),
            json!({"url": "http://x", "body": null, "json": 1})
        );
        assert_eq!(textified("builtin.echo", json!({"a": 1})), json!({"a": 1}));
    }
}
