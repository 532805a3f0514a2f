//! Which tasks may run without an idempotency claim (at least once) while Redis is unreachable:
//! those declared idempotent. The others wait for Redis, as workflow nodes do.

use serde_json::Value;
use std::collections::HashMap;

/// Idempotency by node type: the built-in defaults under the configured ones.
#[derive(Clone, Debug, Default)]
pub struct IdempotencyTable {
    by_type: HashMap<String, bool>,
}

impl IdempotencyTable {
    /// Defaults overridden by `declared` (`--idempotent TYPE=true|false`).
    pub fn new(declared: &[(String, bool)]) -> Self {
        Self {
            by_type: declared.iter().cloned().collect(),
        }
    }

    /// Whether a task of `node_type` with `config` may run twice without harm. Declared types
    /// follow their declaration; otherwise built-ins and `http` GET/HEAD are idempotent, and
    /// everything else (`exec`, other `http` methods, tool wrappers, any type not known here)
    /// is not.
    pub fn is_idempotent(&self, node_type: &str, config: &Value) -> bool {
        if let Some(&declared) = self.by_type.get(node_type) {
            return declared;
        }
        match node_type {
            "http" => {
                let method = config
                    .get("method")
                    .and_then(Value::as_str)
                    .unwrap_or("GET");
                method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD")
            }
            t => t.starts_with("builtin."),
        }
    }
}

/// Parses `TYPE=true|false`.
pub fn parse_declaration(s: &str) -> Result<(String, bool), String> {
    let (node_type, value) = s
        .split_once('=')
        .ok_or("expected TYPE=true|false, e.g. exec=true")?;
    secflow_common::envelope::check_node_type(node_type)?;
    let idempotent = match value {
        "true" => true,
        "false" => false,
        other => return Err(format!("`{other}` is not true or false (in `{s}`)")),
    };
    Ok((node_type.to_string(), idempotent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_run_only_harmless_types_twice() {
        let table = IdempotencyTable::default();
        assert!(table.is_idempotent("builtin.echo", &json!({})));
        assert!(table.is_idempotent("builtin.batch", &json!({"items": 3})));
        assert!(table.is_idempotent("http", &json!({"url": "http://x"})));
        assert!(table.is_idempotent("http", &json!({"url": "http://x", "method": "head"})));
        assert!(!table.is_idempotent("http", &json!({"url": "http://x", "method": "POST"})));
        assert!(!table.is_idempotent("http", &json!({"url": "http://x", "method": "DELETE"})));
        assert!(!table.is_idempotent("exec", &json!({"argv": ["true"]})));
        assert!(!table.is_idempotent("tool.nmap", &json!({})));
    }

    #[test]
    fn declarations_win() {
        let table = IdempotencyTable::new(&[
            parse_declaration("exec=true").unwrap(),
            parse_declaration("builtin.echo=false").unwrap(),
        ]);
        assert!(table.is_idempotent("exec", &json!({})));
        assert!(!table.is_idempotent("builtin.echo", &json!({})));
        assert!(parse_declaration("exec").is_err());
        assert!(
            parse_declaration("exec=yes")
                .unwrap_err()
                .contains("true or false")
        );
    }
}
