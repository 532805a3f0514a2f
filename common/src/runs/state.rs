//! What a run's state says and how it is changed from outside: status, cancellation, the
//! failed nodes a resume re-runs, and the output cache.

use super::{CACHE_TTL_SECS, RUN_TTL_SECS, RunError, RunStatus, RunStore, StoredNode};
use deadpool_redis::redis::AsyncCommands;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

impl RunStore {
    /// Marks a run cancelled: its queued nodes are skipped when they arrive (but for
    /// `when: always` ones), running ones are stopped by the workers that hear of it. False when
    /// the run had already ended.
    pub async fn cancel(&self, run: &str) -> Result<bool, RunError> {
        let status = self.status(run).await?;
        if status.status != "running" {
            return Ok(false);
        }
        let mut pipe = deadpool_redis::redis::pipe();
        pipe.atomic().hset_multiple(
            self.key(run, "state"),
            &[("_cancelled", "1"), ("_run", "cancelling")],
        );
        // A change of the run: every key of it is kept the run's TTL from now.
        for key in self.keys(run) {
            pipe.expire(key, RUN_TTL_SECS);
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(true)
    }

    /// Whether `run` was cancelled.
    pub async fn is_cancelled(&self, run: &str) -> Result<bool, RunError> {
        let mut conn = self.conn().await?;
        Ok(conn.hexists(self.key(run, "state"), "_cancelled").await?)
    }

    /// The failed nodes of a run (what `producer resume` re-runs).
    pub async fn failed_nodes(&self, run: &str) -> Result<Vec<StoredNode>, RunError> {
        let status = self.status(run).await?;
        let ids: Vec<String> = status
            .nodes
            .into_iter()
            .filter(|(_, s)| s == "failed")
            .map(|(id, _)| id)
            .collect();
        self.nodes(run, &ids).await
    }

    /// The state of every node of `run`.
    pub async fn status(&self, run: &str) -> Result<RunStatus, RunError> {
        let mut conn = self.conn().await?;
        let state: HashMap<String, String> = conn.hgetall(self.key(run, "state")).await?;
        if state.is_empty() {
            return Err(RunError::UnknownRun(run.to_string()));
        }
        let nodes = state
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let by_prefix = |prefix: &str| -> BTreeMap<String, String> {
            state
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
                .collect()
        };
        Ok(RunStatus {
            run_id: run.to_string(),
            status: state.get("_run").cloned().unwrap_or_default(),
            blocking_node: state.get("_blocking").cloned(),
            nodes,
            findings: state
                .get("_findings")
                .and_then(|f| f.parse().ok())
                .unwrap_or(0),
            node_findings: by_prefix("_f:")
                .into_iter()
                .map(|(n, f)| (n, f.parse().unwrap_or(0)))
                .collect(),
            trace_id: state
                .get("_trace")
                .and_then(|t| crate::trace::TraceContext::parse(t, None))
                .map(|t| t.trace_id.to_string()),
            blocked_by: by_prefix("_blocked:"),
            errors: by_prefix("_error:"),
            records: by_prefix("_rec:")
                .into_iter()
                .filter_map(|(n, r)| serde_json::from_str(&r).ok().map(|r| (n, r)))
                .collect(),
        })
    }

    /// The trace context `run` was submitted under (`None`: none recorded).
    pub async fn trace(&self, run: &str) -> Result<Option<crate::trace::TraceContext>, RunError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = conn.hget(self.key(run, "state"), "_trace").await?;
        Ok(raw.and_then(|t| crate::trace::TraceContext::parse(&t, None)))
    }

    /// The cached output for `key` (see [`TaskEnvelope::cache_key`]).
    pub async fn cached(&self, key: &str) -> Result<Option<Value>, RunError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = conn.get(format!("sf:{{{}:cache:{key}}}", self.ns)).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Caches a successful output under `key`.
    pub async fn cache(&self, key: &str, output: &Value) -> Result<(), RunError> {
        let mut conn = self.conn().await?;
        conn.set_ex::<_, _, ()>(
            format!("sf:{{{}:cache:{key}}}", self.ns),
            output.to_string(),
            CACHE_TTL_SECS,
        )
        .await?;
        Ok(())
    }
}
