//! Record templates: `{a.b.0}` reads a dotted path from a JSON record, `{a||b}` takes the first
//! non-empty alternative, `{a|csv}` joins a list; literal text around them is kept.

use serde_json::Value;

/// How a field's value is turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// List items joined with commas.
    Csv,
    /// Compact JSON.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field {
        alternatives: Vec<Vec<String>>,
        filter: Option<Filter>,
    },
}

/// A parsed record template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordTemplate {
    parts: Vec<Part>,
}

impl RecordTemplate {
    /// Parses `text`; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("`{}` is not closed by `}}`", &text[i..]))?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(parse_field(&rest[..end])?);
                    for _ in 0..=rest[..end].chars().count() {
                        chars.next();
                    }
                }
                '}' => return Err(format!("stray `}}` in `{text}` (write `}}}}` for a brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// Renders the template over `record`; a missing path renders as nothing.
    pub fn render(&self, record: &Value) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field {
                    alternatives,
                    filter,
                } => {
                    let text = alternatives
                        .iter()
                        .map(|path| {
                            lookup(record, path).map_or_else(String::new, |v| text_of(v, *filter))
                        })
                        .find(|t| !t.is_empty())
                        .unwrap_or_default();
                    out.push_str(&text);
                }
            }
        }
        out
    }
}

fn parse_field(inner: &str) -> Result<Part, String> {
    let mut alternatives: Vec<&str> = inner.split("||").collect();
    let mut filter = None;
    if let Some(last) = alternatives.pop() {
        let last = match last.split_once('|') {
            Some((path, f)) => {
                filter = Some(match f.trim() {
                    "csv" => Filter::Csv,
                    "json" => Filter::Json,
                    other => {
                        return Err(format!(
                            "unknown filter `{other}` in `{{{inner}}}` (use csv or json)"
                        ));
                    }
                });
                path
            }
            None => last,
        };
        alternatives.push(last);
    }
    let alternatives = alternatives
        .into_iter()
        .map(|path| {
            let path = path.trim();
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            if path.is_empty()
                || segments
                    .iter()
                    .any(|s| s.is_empty() || s.contains(['|', '{', '$']))
            {
                Err(format!(
                    "`{{{inner}}}` is not a field path like {{info.name}} or {{a||b}}"
                ))
            } else {
                Ok(segments)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Part::Field {
        alternatives,
        filter,
    })
}

/// The value at a dotted path (a number segment indexes an array).
pub fn lookup<'a>(record: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(record, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Splits a dotted path into its segments.
pub fn split_path(path: &str) -> Vec<String> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_string).collect()
    }
}

fn text_of(value: &Value, filter: Option<Filter>) -> String {
    match (value, filter) {
        (_, Some(Filter::Json)) => value.to_string(),
        (Value::Array(items), Some(Filter::Csv)) => items
            .iter()
            .map(|v| text_of(v, None))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(","),
        (v, _) => scalar_text(v),
    }
}

/// A value as plain text: strings as they are, null as nothing, lists and objects as JSON.
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_paths_lists_and_alternatives() {
        let record = json!({
            "template-id": "tech", "matched-at": "http://x/",
            "info": {"name": "Tech", "classification": {"cve-id": ["CVE-1", "CVE-2"]}},
            "list": [{"a": 1}], "port": 80,
        });
        let t = RecordTemplate::parse("{template-id}:{matched-at}").unwrap();
        assert_eq!(t.render(&record), "tech:http://x/");
        let t = RecordTemplate::parse("{info.classification.cve-id|csv} {list.0.a}").unwrap();
        assert_eq!(t.render(&record), "CVE-1,CVE-2 1");
        let t = RecordTemplate::parse("{missing||info.name}/{nothing}{port}").unwrap();
        assert_eq!(t.render(&record), "Tech/80");
        let t = RecordTemplate::parse("{{literal}} {info.classification|json}").unwrap();
        assert_eq!(
            t.render(&record),
            r#"{literal} {"cve-id":["CVE-1","CVE-2"]}"#
        );
        assert_eq!(
            RecordTemplate::parse("info").unwrap().render(&record),
            "info"
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert!(
            RecordTemplate::parse("{a")
                .unwrap_err()
                .contains("not closed")
        );
        assert!(RecordTemplate::parse("a}").unwrap_err().contains("stray"));
        assert!(RecordTemplate::parse("{}").is_err());
        assert!(RecordTemplate::parse("{a..b}").is_err());
        assert!(
            RecordTemplate::parse("{a|upper}")
                .unwrap_err()
                .contains("upper")
        );
        assert!(RecordTemplate::parse("{a|csv||b}").is_err());
    }
}
