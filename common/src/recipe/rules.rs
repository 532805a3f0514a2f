//! Rendering rules of references (`${inputs.NAME:lines}`): how a structured value (a list, an
//! object) becomes text where a config needs a string.
//!
//! - `lines`: list items one per line; a string stays as it is.
//! - `csv`: list items joined with commas; a string stays as it is.
//! - `json`: the value's JSON text.
//! - `file` (inputs in an `exec` node's argv only): the worker writes the value as lines to a
//!   file in the task's private working directory and passes the file's path.
//!
//! In `lines`, `csv` and `file`, items that are not strings (objects, numbers) are written as
//! JSON, and a missing value (`null`, an optional upstream that failed) is empty.

use serde_json::Value;
use std::fmt;

/// How a referenced value is rendered as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// One list item per line.
    Lines,
    /// List items joined with commas.
    Csv,
    /// The JSON text.
    Json,
    /// A file holding the value as lines, passed by its path (`exec` argv only).
    File,
}

/// The rules parameters may use.
pub const PARAM_RULES: &[Rule] = &[Rule::Lines, Rule::Csv, Rule::Json];
/// The rules inputs may use.
pub const INPUT_RULES: &[Rule] = &[Rule::Lines, Rule::Csv, Rule::Json, Rule::File];

impl Rule {
    /// Its name as written after the colon.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Lines => "lines",
            Rule::Csv => "csv",
            Rule::Json => "json",
            Rule::File => "file",
        }
    }

    /// The rule named `text` among `allowed`; the error names the rules that are.
    pub fn parse(text: &str, allowed: &[Rule]) -> Result<Rule, String> {
        let names = || {
            allowed
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match [Rule::Lines, Rule::Csv, Rule::Json, Rule::File]
            .into_iter()
            .find(|r| r.name() == text)
        {
            Some(rule) if allowed.contains(&rule) => Ok(rule),
            Some(rule) => Err(format!(
                "the rule `{}` cannot be used here (rules here: {})",
                rule.name(),
                names()
            )),
            None => Err(format!("unknown rule `{text}` (known rules: {})", names())),
        }
    }

    /// `value` rendered as text by this rule; `file` gives the file's contents.
    pub fn render(self, value: &Value) -> String {
        match self {
            Rule::Json => value.to_string(),
            Rule::Lines => joined(value, "\n"),
            Rule::Csv => joined(value, ","),
            Rule::File => {
                let mut text = joined(value, "\n");
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A list's items joined with `separator`; a string as it is; nothing for null; JSON otherwise.
fn joined(value: &Value, separator: &str) -> String {
    match value {
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(separator),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_strings_and_objects_render_by_rule() {
        let urls = json!(["http://a/1", "http://a/2", {"u": 3}, 4]);
        assert_eq!(
            Rule::Lines.render(&urls),
            "http://a/1\nhttp://a/2\n{\"u\":3}\n4"
        );
        assert_eq!(Rule::Csv.render(&urls), "http://a/1,http://a/2,{\"u\":3},4");
        assert_eq!(
            Rule::Json.render(&urls),
            r#"["http://a/1","http://a/2",{"u":3},4]"#
        );
        assert_eq!(
            Rule::File.render(&urls),
            "http://a/1\nhttp://a/2\n{\"u\":3}\n4\n"
        );
        assert_eq!(Rule::Lines.render(&json!("a b")), "a b");
        assert_eq!(Rule::Csv.render(&json!("a,b")), "a,b");
        assert_eq!(Rule::Json.render(&json!("a")), "\"a\"");
        assert_eq!(Rule::Lines.render(&json!({"k": [1]})), r#"{"k":[1]}"#);
        assert_eq!(Rule::File.render(&json!({"k": 1})), "{\"k\":1}\n");
        assert_eq!(Rule::File.render(&json!("one\n")), "one\n");
        assert_eq!(Rule::Lines.render(&Value::Null), "");
        assert_eq!(Rule::File.render(&json!([])), "");
        assert_eq!(Rule::Csv.render(&json!(7)), "7");
    }

    #[test]
    fn parsing_names_the_known_rules() {
        assert_eq!(Rule::parse("csv", INPUT_RULES), Ok(Rule::Csv));
        assert_eq!(Rule::parse("file", INPUT_RULES), Ok(Rule::File));
        assert_eq!(
            Rule::parse("upper", INPUT_RULES).unwrap_err(),
            "unknown rule `upper` (known rules: lines, csv, json, file)"
        );
        assert_eq!(
            Rule::parse("file", PARAM_RULES).unwrap_err(),
            "the rule `file` cannot be used here (rules here: lines, csv, json)"
        );
    }
}
