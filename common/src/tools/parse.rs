//! Turning a tool's real output into records, then findings and datasets; malformed output
//! becomes the fallback result instead.

use super::config::kind_of;
use super::def::ToolDef;
use super::finding::{
    Finding, MAX_EVIDENCE_BYTES, MAX_LINE_BYTES, MAX_RAW_BYTES, Severity, bounded_raw, cut,
    finding_id,
};
use super::output::{MAX_FINDINGS, Parsed};
use super::record::{RecordTemplate, lookup};
use super::spec::{Format, OutputFrom};
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

/// Most values one dataset keeps.
pub const MAX_DATASET_VALUES: usize = 100_000;
/// Bytes of the output shown as the fallback finding's evidence.
pub const FALLBACK_EVIDENCE_BYTES: usize = 500;
/// Bytes of the output kept as the fallback finding's raw text.
pub const FALLBACK_RAW_BYTES: usize = 64 * 1024;

/// The finding templates of a definition, parsed.
#[derive(Debug, Clone)]
pub struct FindingTemplates {
    /// Rendered, then hashed into the id.
    pub id: RecordTemplate,
    /// Title.
    pub title: RecordTemplate,
    /// Severity word; `None` = the default severity.
    pub severity: Option<RecordTemplate>,
    /// Target.
    pub target: RecordTemplate,
    /// Evidence.
    pub evidence: RecordTemplate,
}

/// The output section of a definition, compiled.
#[derive(Debug, Clone)]
pub struct Parser {
    /// Stdout or the output file.
    pub from: OutputFrom,
    /// How records are read.
    pub format: Format,
    /// `json`: path to the records.
    pub records: Vec<String>,
    /// `where`: (path, value) pairs a record must match.
    pub filter: Vec<(Vec<String>, Value)>,
    /// `regex`: the expressions and whether each is a context pattern.
    pub patterns: Vec<(Regex, bool)>,
    /// How a record becomes a finding.
    pub finding: Option<FindingTemplates>,
    /// Severity words mapped before normalising.
    pub severity_map: BTreeMap<String, String>,
    /// Severity when a record's is empty or unknown.
    pub default_severity: Severity,
    /// Named dataset templates.
    pub datasets: Vec<(String, RecordTemplate)>,
}

impl ToolDef {
    /// Parses the tool's output: `stdout`, or `file` (the output file's content; `None` when
    /// it was not written, read as empty) when the definition reads from a file.
    ///
    /// Malformed output (a JSON line or document that does not parse, a JSONL line that is
    /// not an object, records that are not objects) gives the fallback result: one generic
    /// info finding carrying the raw output, every dataset empty, `parse_error` saying where.
    pub fn parse(&self, stdout: &[u8], file: Option<&[u8]>) -> Parsed {
        let data = match self.parser.from {
            OutputFrom::Stdout => stdout,
            OutputFrom::File => file.unwrap_or_default(),
        };
        match records(&self.parser, data) {
            Ok(records) => self.collect(records),
            Err(e) => self.fallback(data, e),
        }
    }

    fn collect(&self, records: Vec<Value>) -> Parsed {
        let p = &self.parser;
        let mut parsed = self.empty();
        let mut ids = HashSet::new();
        let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); p.datasets.len()];
        for record in records {
            if !p
                .filter
                .iter()
                .all(|(path, want)| lookup(&record, path) == Some(want))
            {
                continue;
            }
            parsed.records += 1;
            if let Some(f) = &p.finding {
                let id = finding_id(&self.name, &f.id.render(&record));
                if ids.insert(id.clone()) {
                    if parsed.findings.len() < MAX_FINDINGS {
                        let word = f.severity.as_ref().map(|s| s.render(&record));
                        parsed.findings.push(Finding {
                            id,
                            tool: self.name.clone(),
                            severity: Severity::normalise(
                                word.as_deref().unwrap_or_default(),
                                &p.severity_map,
                                p.default_severity,
                            ),
                            target: cut(f.target.render(&record).trim(), MAX_LINE_BYTES),
                            title: cut(f.title.render(&record).trim(), MAX_LINE_BYTES),
                            evidence: cut(f.evidence.render(&record).trim(), MAX_EVIDENCE_BYTES),
                            raw: bounded_raw(&record, MAX_RAW_BYTES),
                        });
                    } else {
                        parsed.findings_dropped += 1;
                    }
                }
            }
            for ((name, template), seen) in p.datasets.iter().zip(&mut seen) {
                let value = template.render(&record).trim().to_string();
                let values = parsed.datasets.entry(name.clone()).or_default();
                if !value.is_empty()
                    && values.len() < MAX_DATASET_VALUES
                    && seen.insert(value.clone())
                {
                    values.push(Value::String(value));
                }
            }
        }
        parsed
    }

    /// A result with no records: every declared dataset present and empty.
    pub fn empty(&self) -> Parsed {
        Parsed {
            datasets: self
                .parser
                .datasets
                .iter()
                .map(|(n, _)| (n.clone(), Vec::new()))
                .collect(),
            ..Parsed::default()
        }
    }

    fn fallback(&self, output: &[u8], error: String) -> Parsed {
        let text = String::from_utf8_lossy(output);
        let mut parsed = self.empty();
        parsed.findings.push(Finding {
            id: finding_id(&self.name, &format!("unparsed:{error}")),
            tool: self.name.clone(),
            severity: Severity::Info,
            target: String::new(),
            title: format!("unparsed output of {}", self.name),
            evidence: prefix(&text, FALLBACK_EVIDENCE_BYTES).to_string(),
            raw: Value::String(cut(&text, FALLBACK_RAW_BYTES)),
        });
        parsed.parse_error = Some(error);
        parsed
    }
}

fn prefix(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Splits `data` into records as the format says.
fn records(p: &Parser, data: &[u8]) -> Result<Vec<Value>, String> {
    match p.format {
        Format::Jsonl => jsonl(data),
        Format::Json => json_document(data, &p.records),
        Format::Lines => Ok(String::from_utf8_lossy(data)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Value::Object(Map::from_iter([("line".to_string(), Value::from(l))])))
            .collect()),
        Format::Regex => Ok(regex_records(&p.patterns, &String::from_utf8_lossy(data))),
    }
}

/// A serde_json error as `line L, column C: what` (its own position suffix removed).
fn json_error(e: &serde_json::Error, line: usize) -> String {
    let text = e.to_string();
    let what = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    format!("line {line}, column {}: {what}", e.column())
}

fn jsonl(data: &[u8]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v @ Value::Object(_)) => out.push(v),
            Ok(other) => {
                return Err(format!(
                    "line {} is {}, not a JSON object",
                    i + 1,
                    kind_of(&other)
                ));
            }
            Err(e) => return Err(json_error(&e, i + 1)),
        }
    }
    Ok(out)
}

fn json_document(data: &[u8], path: &[String]) -> Result<Vec<Value>, String> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let doc: Value = serde_json::from_slice(data).map_err(|e| json_error(&e, e.line()))?;
    let shown = path.join(".");
    let at = lookup(&doc, path)
        .ok_or_else(|| format!("the document has no `{shown}` to read records from"))?;
    match at {
        Value::Null => Ok(Vec::new()),
        Value::Object(_) => Ok(vec![at.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(_) => Ok(v.clone()),
                other => Err(format!(
                    "record {i} of `{shown}` is {}, not a JSON object",
                    kind_of(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "`{shown}` is {}, not a list of records",
            kind_of(other)
        )),
    }
}

/// Records of the regex format: a context pattern's captures persist (a capture that did not
/// take part is cleared); any other pattern makes one record per matching line, its captures
/// over the context. The first pattern matching a line wins.
fn regex_records(patterns: &[(Regex, bool)], text: &str) -> Vec<Value> {
    let mut context: Map<String, Value> = Map::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((re, caps, is_context)) = patterns
            .iter()
            .find_map(|(re, ctx)| re.captures(line).map(|c| (re, c, *ctx)))
        else {
            continue;
        };
        let mut record = if is_context {
            Map::new()
        } else {
            context.clone()
        };
        for name in re.capture_names().flatten() {
            match caps.name(name) {
                Some(m) => {
                    record.insert(name.to_string(), Value::from(m.as_str()));
                }
                None if is_context => {
                    context.remove(name);
                }
                None => {}
            }
        }
        if is_context {
            context.extend(record);
        } else {
            out.push(Value::Object(record));
        }
    }
    out
}
