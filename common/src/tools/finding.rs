//! Normalised findings: severity words, stable ids, bounded text and raw records.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Largest serialized raw record kept in a finding.
pub const MAX_RAW_BYTES: usize = 4 * 1024;
/// Largest evidence text kept in a finding.
pub const MAX_EVIDENCE_BYTES: usize = 4 * 1024;
/// Largest title or target kept in a finding.
pub const MAX_LINE_BYTES: usize = 1024;

/// How serious a finding is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    #[default]
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Reads a severity word (case-insensitive; `informational`, `none`, `moderate`,
    /// `important` and `severe` are accepted synonyms); `None` for anything else.
    pub fn from_word(word: &str) -> Option<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "info" | "informational" | "information" | "none" => Some(Self::Info),
            "low" => Some(Self::Low),
            "medium" | "moderate" => Some(Self::Medium),
            "high" | "important" => Some(Self::High),
            "critical" | "severe" => Some(Self::Critical),
            _ => None,
        }
    }

    /// Maps a tool's word through `map` (keys compared case-insensitively), then normalises
    /// it; empty or unknown words become `default`.
    pub fn normalise(word: &str, map: &BTreeMap<String, String>, default: Self) -> Self {
        let word = word.trim();
        if word.is_empty() {
            return default;
        }
        let mapped = map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(word))
            .map_or(word, |(_, v)| v.as_str());
        Self::from_word(mapped).unwrap_or(default)
    }
}

/// One normalised finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id: the first 16 hex digits of SHA-256 over the tool and the rendered id.
    pub id: String,
    /// The tool (node type) that reported it.
    pub tool: String,
    /// How serious it is.
    pub severity: Severity,
    /// What it is about (URL, `host:port`).
    pub target: String,
    /// One-line summary.
    pub title: String,
    /// Supporting detail.
    pub evidence: String,
    /// The record it came from (cut to 4 KiB, then a string with a marker); `null` when
    /// dropped to keep the output small.
    pub raw: Value,
}

/// The stable id of a finding: SHA-256 of `TOOL`, a newline and the rendered id template,
/// first 16 hex digits.
pub fn finding_id(tool: &str, rendered: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tool.as_bytes());
    hasher.update(b"\n");
    hasher.update(rendered.as_bytes());
    let mut id = hex::encode(hasher.finalize());
    id.truncate(16);
    id
}

/// `text` cut to at most `max` bytes on a character boundary, with a marker saying how much
/// was left out.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated {} bytes]", &text[..end], text.len() - end)
}

/// A record as kept in a finding: itself when its JSON fits in `max` bytes, else its JSON text
/// cut with a marker.
pub fn bounded_raw(record: &Value, max: usize) -> Value {
    let text = record.to_string();
    if text.len() <= max {
        record.clone()
    } else {
        Value::String(cut(&text, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn severities_are_mapped_then_normalised() {
        let map = BTreeMap::from([("unknown".to_string(), "info".to_string())]);
        let n = |w| Severity::normalise(w, &map, Severity::Low);
        assert_eq!(n("HIGH"), Severity::High);
        assert_eq!(n("unknown"), Severity::Info);
        assert_eq!(n(""), Severity::Low);
        assert_eq!(n("weird"), Severity::Low);
        assert_eq!(n(" Moderate "), Severity::Medium);
        assert_eq!(
            serde_json::to_value(Severity::Critical).unwrap(),
            "critical"
        );
    }

    #[test]
    fn ids_are_stable_and_depend_on_the_tool() {
        let a = finding_id("scan.nuclei", "x:http://h/");
        assert_eq!(a.len(), 16);
        assert_eq!(a, finding_id("scan.nuclei", "x:http://h/"));
        assert_ne!(a, finding_id("scan.httpx", "x:http://h/"));
    }

    #[test]
    fn long_text_and_records_are_cut_with_a_marker() {
        assert_eq!(cut("short", 10), "short");
        let cut_text = cut(&"é".repeat(10), 5);
        assert!(cut_text.starts_with("éé…[truncated 16 bytes]"));
        let big = json!({"body": "x".repeat(10_000)});
        let raw = bounded_raw(&big, MAX_RAW_BYTES);
        let text = raw.as_str().unwrap();
        assert!(text.len() < MAX_RAW_BYTES + 40 && text.contains("[truncated"));
        assert_eq!(
            bounded_raw(&json!({"a": 1}), MAX_RAW_BYTES),
            json!({"a": 1})
        );
    }
}
