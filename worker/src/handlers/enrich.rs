//! `enrich.cve`: adds CVE records to findings. The CVE ids a finding mentions (in its title,
//! evidence or raw record) are looked up at the configured CVE source (`--cve-source URL`:
//! `GET URL/CVE-ID?sources=nvd,osv`, a JSON object back); every record fetched is cached in
//! Redis, and the cache is the fallback while the source fails: the node still completes,
//! marked `degraded`, with each record saying where it came from (`source`, `cache`, or
//! `unknown` when neither had it).

use futures_util::StreamExt;
use regex::Regex;
use secflow_common::{
    TaskEnvelope, TaskError, nodes::EnrichConfig, runs::RunStore, tools::kind_of,
};
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    sync::{Arc, LazyLock},
    time::Duration,
};

/// CVE lookups in flight at once.
const CONCURRENCY: usize = 8;
/// Longest wait for one lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

static CVE_ID: LazyLock<Regex> = LazyLock::new(|| {
    // A constant pattern: compiling it cannot fail.
    Regex::new(r"(?i)\bCVE-\d{4}-\d{4,7}\b").unwrap_or_else(|_| unreachable!())
});

/// Where CVE records come from.
pub struct CveSource {
    /// Base URL of the CVE service; `None`: the cache only.
    pub url: Option<String>,
    /// Redis, for the cache.
    pub cache: Arc<RunStore>,
}

/// Where one record came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Source,
    Cache,
    Unknown,
}

/// Enriches the task's `findings` input.
pub async fn run(
    http: &reqwest::Client,
    source: &CveSource,
    task: &TaskEnvelope,
    timeout: Duration,
) -> Result<Value, TaskError> {
    let cfg: EnrichConfig = super::parse_config("enrich.cve", &task.config)?;
    let findings = match task.inputs.get("findings") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => {
            return Err(TaskError::validation(
                "missing_input",
                "enrich.cve: input `findings` is missing (connect it to a node's findings)",
            ));
        }
        Some(other) => {
            return Err(TaskError::validation(
                "invalid_input",
                format!(
                    "enrich.cve: input `findings` must be a list of findings, not {}",
                    kind_of(other)
                ),
            ));
        }
    };
    let per_finding: Vec<Vec<String>> = findings.iter().map(cve_ids).collect();
    let ids: BTreeSet<String> = per_finding.iter().flatten().cloned().collect();
    let sources = cfg.sources.join(",");
    let lookup_timeout = LOOKUP_TIMEOUT.min(timeout / 2);
    let looked_up: Vec<(String, Value, Origin, Option<String>)> = futures_util::stream::iter(ids)
        .map(|id| async {
            let (record, origin, error) = lookup(http, source, &id, &sources, lookup_timeout).await;
            (id, record, origin, error)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let count = |o: Origin| looked_up.iter().filter(|r| r.2 == o).count();
    let first_error = looked_up.iter().find_map(|r| r.3.clone());
    let records: std::collections::HashMap<&str, &Value> = looked_up
        .iter()
        .map(|(id, r, _, _)| (id.as_str(), r))
        .collect();
    let enriched: Vec<Value> = findings
        .into_iter()
        .zip(&per_finding)
        .map(|(mut finding, ids)| {
            let cves: Vec<Value> = ids
                .iter()
                .filter_map(|id| records.get(id.as_str()).map(|r| (*r).clone()))
                .collect();
            if let Some(obj) = finding.as_object_mut() {
                obj.insert("cves".into(), Value::Array(cves));
            }
            finding
        })
        .collect();
    let degraded = first_error.is_some();
    if let Some(error) = &first_error {
        tracing::warn!(task_id = %task.task_id, error, cached = count(Origin::Cache), unknown = count(Origin::Unknown), "CVE source failed: served from the cache");
    }
    Ok(json!({
        "findings_count": enriched.len(),
        "enriched_findings": enriched,
        "cves": {
            "looked_up": looked_up.len(),
            "from_source": count(Origin::Source),
            "from_cache": count(Origin::Cache),
            "unknown": count(Origin::Unknown),
        },
        "degraded": degraded,
        "source_error": first_error,
    }))
}

/// One CVE's record: from the source (then cached), else from the cache, else unknown; with
/// the source's error when it failed.
async fn lookup(
    http: &reqwest::Client,
    source: &CveSource,
    id: &str,
    sources: &str,
    timeout: Duration,
) -> (Value, Origin, Option<String>) {
    let key = format!("cve:{id}");
    let error = match &source.url {
        None => "no CVE source configured (--cve-source)".to_string(),
        Some(url) => match fetch(http, url, id, sources, timeout).await {
            Ok(Some(mut record)) => {
                if let Some(obj) = record.as_object_mut() {
                    obj.insert("id".into(), json!(id));
                    obj.insert("source".into(), json!("source"));
                }
                if let Err(e) = source.cache.cache(&key, &record).await {
                    tracing::warn!(cve = id, error = %e, "could not cache a CVE record");
                }
                return (record, Origin::Source, None);
            }
            // The source answered that it does not know it: an answer, not a failure.
            Ok(None) => {
                return (
                    json!({ "id": id, "source": "source", "status": "not_found" }),
                    Origin::Source,
                    None,
                );
            }
            Err(e) => e,
        },
    };
    match source.cache.cached(&key).await {
        Ok(Some(mut record)) => {
            if let Some(obj) = record.as_object_mut() {
                obj.insert("source".into(), json!("cache"));
            }
            (record, Origin::Cache, Some(error))
        }
        _ => (
            json!({ "id": id, "source": "unknown", "status": "unknown" }),
            Origin::Unknown,
            Some(error),
        ),
    }
}

/// `GET URL/ID?sources=...` within `timeout`: the record, `None` on 404, else why not.
async fn fetch(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    sources: &str,
    timeout: Duration,
) -> Result<Option<Value>, String> {
    // Ids match `CVE-\d+-\d+` and sources are checked words: nothing to escape.
    let url = format!("{}/{id}?sources={sources}", base.trim_end_matches('/'));
    let request = http.get(&url).timeout(timeout).send();
    let response = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("{url}: {e}"))?;
    match response.status().as_u16() {
        404 => Ok(None),
        200..=299 => {
            let body = tokio::time::timeout(timeout, response.json::<Value>())
                .await
                .map_err(|_| format!("{url}: body not read within {} ms", timeout.as_millis()))?
                .map_err(|e| format!("{url}: not a JSON record: {e}"))?;
            if body.is_object() {
                Ok(Some(body))
            } else {
                Err(format!(
                    "{url}: expected a JSON object, got {}",
                    kind_of(&body)
                ))
            }
        }
        status => Err(format!("{url}: returned {status}")),
    }
}

/// The CVE ids a finding mentions, upper-cased, in order, once each.
fn cve_ids(finding: &Value) -> Vec<String> {
    let text = finding.to_string();
    let mut seen = BTreeSet::new();
    CVE_ID
        .find_iter(&text)
        .map(|m| m.as_str().to_ascii_uppercase())
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_cve_id_once_in_any_field() {
        let f = json!({"title": "Log4Shell cve-2021-44228", "evidence": "CVE-2021-44228, CVE-2023-1234567", "raw": {"x": "CVE-99-1"}});
        assert_eq!(cve_ids(&f), vec!["CVE-2021-44228", "CVE-2023-1234567"]);
    }
}
