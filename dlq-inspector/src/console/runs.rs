//! Reading runs for the console: every run of the namespace with its status, progress, findings
//! and duration (one `SCAN` over the runs' state keys, then one pipelined `HMGET`), and the run
//! fields `producer status` does not return. Runs are kept in Redis as
//! [`secflow_common::runs::RunStore`] writes them.

use deadpool_redis::{Pool, redis};
use serde::Serialize;

/// Fields of a run's state hash the console shows.
const FIELDS: [&str; 7] = [
    "_run",
    "_name",
    "_total",
    "_ended",
    "_findings",
    "_created_at",
    "_ended_at",
];

/// One run, as the runs page lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// The recipe's name.
    pub name: String,
    /// running, succeeded, partial, degraded, failed, cancelling, compensating, cancelled.
    pub status: String,
    /// Nodes of the run (compensations not counted).
    pub total: u64,
    /// Nodes ended (succeeded, failed or skipped).
    pub ended: u64,
    /// Findings so far.
    pub findings: u64,
    /// When it was submitted, ms since the epoch.
    pub created_ms: u64,
    /// When it took its final status.
    pub ended_ms: Option<u64>,
}

impl RunSummary {
    /// A run from its id and the values of [`FIELDS`].
    pub fn from_fields(run_id: &str, v: &[Option<String>]) -> Self {
        let text = |k: usize| v.get(k).cloned().flatten().unwrap_or_default();
        let num = |k: usize| v.get(k).cloned().flatten().and_then(|s| s.parse().ok());
        Self {
            run_id: run_id.to_string(),
            status: text(0),
            name: text(1),
            total: num(2).unwrap_or(0),
            ended: num(3).unwrap_or(0),
            findings: num(4).unwrap_or(0),
            created_ms: num(5).unwrap_or(0),
            ended_ms: num(6),
        }
    }
}

/// The run id in a state key of namespace `ns` (`sf:{ns:run:ID}:state`).
pub fn run_of_key<'k>(ns: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix("sf:{")?
        .strip_prefix(ns)?
        .strip_prefix(":run:")?
        .strip_suffix("}:state")
        .filter(|s| !s.is_empty())
}

/// Every run of `ns`, newest first.
pub async fn list(pool: &Pool, ns: &str) -> Result<Vec<RunSummary>, String> {
    let pattern = format!("sf:{{{ns}:run:*}}:state");
    let keys = crate::fleet::scan_keys(pool, &pattern).await?;
    let mut ids: Vec<String> = keys
        .iter()
        .filter_map(|k| run_of_key(ns, k).map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let mut runs = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET").arg(state_key(ns, id)).arg(&FIELDS[..]);
        }
        let values: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        runs.extend(
            chunk
                .iter()
                .zip(values)
                .map(|(id, v)| RunSummary::from_fields(id, &v))
                .filter(|r| !r.status.is_empty()),
        );
    }
    runs.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then(b.run_id.cmp(&a.run_id))
    });
    Ok(runs)
}

/// One run's summary, `None` when it is unknown.
pub async fn one(pool: &Pool, ns: &str, run: &str) -> Result<Option<RunSummary>, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let v: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(state_key(ns, run))
        .arg(&FIELDS[..])
        .query_async(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    let summary = RunSummary::from_fields(run, &v);
    Ok((!summary.status.is_empty()).then_some(summary))
}

fn state_key(ns: &str, run: &str) -> String {
    format!("sf:{{{ns}:run:{run}}}:state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_name_their_run_and_fields_parse() {
        assert_eq!(run_of_key("ns", "sf:{ns:run:abc}:state"), Some("abc"));
        assert_eq!(run_of_key("ns", "sf:{ns:run:abc}:links"), None);
        assert_eq!(run_of_key("ns", "sf:{other:run:abc}:state"), None);
        let v = ["running", "owasp", "20", "3", "7", "1000", ""].map(|s| Some(s.to_string()));
        let r = RunSummary::from_fields("r1", &v);
        assert_eq!((r.total, r.ended, r.findings, r.ended_ms), (20, 3, 7, None));
        assert_eq!(r.status, "running");
    }
}
