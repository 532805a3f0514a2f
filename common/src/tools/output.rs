//! A parse result and the node output it becomes, bounded in count and size.

use super::finding::Finding;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Most findings one parse keeps.
pub const MAX_FINDINGS: usize = 10_000;
/// Size the serialized output stays under (raw records are dropped first, then lists cut).
pub const MAX_OUTPUT_BYTES: usize = 900 * 1024;

/// What a tool's output became.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Findings, de-duplicated by id, at most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Every dataset the tool declares (empty ones included), values de-duplicated in order.
    pub datasets: BTreeMap<String, Vec<Value>>,
    /// Records read (after the `where` filter).
    pub records: usize,
    /// Findings left out past [`MAX_FINDINGS`].
    pub findings_dropped: usize,
    /// Why the output could not be parsed; the result is then the fallback.
    pub parse_error: Option<String>,
}

impl Parsed {
    /// The node output: `{"findings": [...], "<dataset>": [...], "findings_count": N,
    /// "records": N, "parser": "ok" | "fallback", "parse_error"?, "truncated"?}`.
    ///
    /// Kept under [`MAX_OUTPUT_BYTES`]: `raw` is dropped from findings first, then the lists
    /// are cut; `truncated` then says `raw_dropped` and, per list cut, `{kept, total}`.
    /// `findings_count` is the number of findings in the output.
    pub fn to_output(&self) -> Value {
        let mut findings: Vec<Value> = self
            .findings
            .iter()
            .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
            .collect();
        let mut lists: Vec<(String, Vec<Value>)> = self
            .datasets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut totals: BTreeMap<String, usize> = BTreeMap::new();
        if self.findings_dropped > 0 {
            totals.insert(
                "findings".into(),
                self.findings.len() + self.findings_dropped,
            );
        }
        let mut raw_dropped = false;
        let overhead = 1024;
        let size = |f: &[Value], l: &[(String, Vec<Value>)]| list_bytes(f) + lists_bytes(l);
        if size(&findings, &lists) + overhead > MAX_OUTPUT_BYTES {
            raw_dropped = true;
            for f in &mut findings {
                if let Some(obj) = f.as_object_mut() {
                    obj.insert("raw".into(), Value::Null);
                }
            }
        }
        let target = MAX_OUTPUT_BYTES.saturating_sub(overhead + 64 * (lists.len() + 1));
        let mut aim = target;
        for _ in 0..32 {
            let total = size(&findings, &lists);
            if total <= target {
                break;
            }
            let ratio = aim as f64 / total as f64;
            cut_list("findings", &mut findings, ratio, &mut totals);
            for (name, values) in &mut lists {
                cut_list(name, values, ratio, &mut totals);
            }
            aim = aim * 9 / 10;
        }

        let mut out = Map::new();
        let count = findings.len();
        out.insert("findings".into(), Value::Array(findings));
        for (name, values) in lists {
            out.insert(name, Value::Array(values));
        }
        out.insert("findings_count".into(), json!(count));
        out.insert("records".into(), json!(self.records));
        let parser = if self.parse_error.is_some() {
            "fallback"
        } else {
            "ok"
        };
        out.insert("parser".into(), json!(parser));
        if let Some(e) = &self.parse_error {
            out.insert("parse_error".into(), json!(e));
        }
        if raw_dropped || !totals.is_empty() {
            let kept_of = |name: &str, total: usize, out: &Map<String, Value>| {
                let kept = out.get(name).and_then(Value::as_array).map_or(0, Vec::len);
                json!({"kept": kept, "total": total})
            };
            let cut: Map<String, Value> = totals
                .iter()
                .map(|(name, total)| (name.clone(), kept_of(name, *total, &out)))
                .collect();
            out.insert(
                "truncated".into(),
                json!({"raw_dropped": raw_dropped, "lists": cut}),
            );
        }
        Value::Object(out)
    }
}

fn item_bytes(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len()) + 1
}

fn list_bytes(values: &[Value]) -> usize {
    values.iter().map(item_bytes).sum::<usize>() + 2
}

fn lists_bytes(lists: &[(String, Vec<Value>)]) -> usize {
    lists
        .iter()
        .map(|(name, values)| name.len() + 4 + list_bytes(values))
        .sum()
}

/// Keeps the prefix of `values` that fits in `ratio` of its size, noting the original length.
fn cut_list(name: &str, values: &mut Vec<Value>, ratio: f64, totals: &mut BTreeMap<String, usize>) {
    let allowed = (list_bytes(values) as f64 * ratio) as usize;
    let mut used = 2;
    let keep = values
        .iter()
        .take_while(|v| {
            used += item_bytes(v);
            used <= allowed
        })
        .count();
    if keep < values.len() {
        totals.entry(name.to_string()).or_insert(values.len());
        values.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::finding::Severity;

    fn finding(i: usize, evidence: &str) -> Finding {
        Finding {
            id: format!("{i:016}"),
            tool: "scan.test".into(),
            severity: Severity::Info,
            target: format!("http://h/{i}"),
            title: "t".into(),
            evidence: evidence.into(),
            raw: json!({"payload": "r".repeat(3000)}),
        }
    }

    #[test]
    fn small_outputs_are_whole() {
        let parsed = Parsed {
            findings: vec![finding(1, "e")],
            datasets: BTreeMap::from([("urls".to_string(), vec![json!("http://h/")])]),
            records: 1,
            ..Parsed::default()
        };
        let out = parsed.to_output();
        assert_eq!(out["findings_count"], 1);
        assert_eq!(out["urls"], json!(["http://h/"]));
        assert_eq!(out["parser"], "ok");
        assert!(out.get("truncated").is_none() && out.get("parse_error").is_none());
        assert_eq!(
            out["findings"][0]["raw"]["payload"].as_str().unwrap().len(),
            3000
        );
    }

    #[test]
    fn raw_is_dropped_first_then_lists_are_cut() {
        let parsed = Parsed {
            findings: (0..400).map(|i| finding(i, "e")).collect(),
            records: 400,
            ..Parsed::default()
        };
        let out = parsed.to_output();
        assert!(serde_json::to_vec(&out).unwrap().len() < MAX_OUTPUT_BYTES);
        assert_eq!(out["truncated"]["raw_dropped"], true);
        assert_eq!(out["findings_count"], 400);
        assert!(out["findings"][0]["raw"].is_null());

        let parsed = Parsed {
            findings: (0..2000).map(|i| finding(i, &"e".repeat(1000))).collect(),
            datasets: BTreeMap::from([(
                "urls".to_string(),
                (0..20_000)
                    .map(|i| json!(format!("http://h/{i:060}")))
                    .collect(),
            )]),
            records: 2000,
            findings_dropped: 5,
            ..Parsed::default()
        };
        let out = parsed.to_output();
        assert!(serde_json::to_vec(&out).unwrap().len() < MAX_OUTPUT_BYTES);
        let kept = out["findings"].as_array().unwrap().len();
        assert!(kept > 100 && kept < 2000, "{kept}");
        assert_eq!(out["findings_count"], kept);
        assert_eq!(out["truncated"]["lists"]["findings"]["total"], 2005);
        assert_eq!(out["truncated"]["lists"]["findings"]["kept"], kept);
        assert_eq!(out["truncated"]["lists"]["urls"]["total"], 20_000);
    }
}
