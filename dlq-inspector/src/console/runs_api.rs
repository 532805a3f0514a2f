//! `/api/runs`: the runs with status, progress, findings and duration; one run with its DAG
//! (each node's state, upstreams, attempts, duration, findings, the alternative that served it,
//! its error); cancel, resume, resume one node — through `producer cancel` / `resume`'s own
//! functions.

use super::{
    Shared,
    auth::Principal,
    dlq_api::merge,
    error::{ApiError, ApiResult},
    runs::{self, RunSummary},
};
use crate::{
    announce::Action,
    report::{Secrets, shown},
};
use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use secflow_common::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// `?limit=` of the list.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /api/runs?limit=200`: the newest runs first.
pub async fn list(
    State(console): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let all = console
        .fleet
        .call(
            "listing runs",
            runs::list(console.fleet.store.pool(), console.fleet.store.ns()),
        )
        .await?;
    let now = now_ms();
    let limit = q.limit.unwrap_or(200).min(5_000);
    let items: Vec<Value> = all.iter().take(limit).map(|r| summary(r, now)).collect();
    Ok(Json(json!({ "total": all.len(), "runs": items })))
}

fn summary(r: &RunSummary, now: u64) -> Value {
    let mut v = json!(r);
    let end = r.ended_ms.unwrap_or(now);
    v["duration_ms"] = json!(end.saturating_sub(r.created_ms));
    v
}

/// `GET /api/runs/{id}`: the run and every node of its DAG.
pub async fn one(State(console): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_run_id(&id)?;
    let head = console
        .fleet
        .call(
            "reading the run",
            runs::one(console.fleet.store.pool(), console.fleet.store.ns(), &id),
        )
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no run {id} in this namespace (runs are kept 7 days)"),
            )
        })?;
    let status = console.runs.status(&id).await?;
    let ids: Vec<String> = status.nodes.keys().cloned().collect();
    let specs = console.runs.nodes(&id, &ids).await?;
    let seen = console.live.with(|t| t.nodes(&id));
    let nodes: Vec<Value> = specs
        .iter()
        .map(|n| {
            let state = status.nodes.get(&n.id).cloned().unwrap_or_default();
            let s = seen.get(&n.id).cloned().unwrap_or_default();
            let upstream: BTreeSet<&str> = n
                .inputs
                .values()
                .filter_map(|src| src.split_once('.').map(|(up, _)| up))
                .filter(|up| status.nodes.contains_key(*up))
                .collect();
            let record = status.records.get(&n.id);
            let running = s.running && matches!(state.as_str(), "queued" | "pending");
            json!({
                "id": n.id,
                "type": n.node_type,
                "state": if running { "running" } else { state.as_str() },
                "upstream": upstream,
                "optional": n.optional,
                "compensation": n.compensation,
                "findings": status.node_findings.get(&n.id),
                "error": status.errors.get(&n.id).cloned().or(s.error),
                "blocked_by": status.blocked_by.get(&n.id),
                "served_by": record.and_then(|r| r.served_by.as_ref()),
                "quality": record.map(|r| r.quality),
                "level": record.map(|r| r.level),
                "skipped": record.and_then(|r| r.skipped.as_ref()),
                "attempts": s.attempts,
                "duration_s": s.duration_s,
                "started_ms": s.started_ms,
                "worker": s.worker,
            })
        })
        .collect();
    let counts: BTreeMap<&str, usize> = nodes.iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n["state"].as_str().unwrap_or("")).or_default() += 1;
        m
    });
    let mut out = summary(&head, now_ms());
    merge(
        &mut out,
        json!({
            "blocking_node": status.blocking_node,
            "counts": counts,
            "nodes": nodes,
        }),
    );
    // Errors and outputs may quote secrets: mask them as everywhere else.
    Ok(Json(shown(out, Secrets::Redacted)))
}

/// The body of a run action.
#[derive(Default, Deserialize)]
pub struct ActionBody {
    /// Only this failed node (resume).
    #[serde(default)]
    node: Option<String>,
    /// Why.
    #[serde(default)]
    reason: String,
}

/// `POST /api/runs/{id}/cancel` (as `producer cancel`; 409 once the run has ended) and
/// `POST /api/runs/{id}/resume` (as `producer resume`; `{"node": ID}` for one failed node).
pub async fn act(
    State(console): State<Shared>,
    Extension(who): Extension<Principal>,
    Path((id, verb)): Path<(String, String)>,
    body: Option<Json<ActionBody>>,
) -> ApiResult<Json<Value>> {
    check_run_id(&id)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let (action, out) = match verb.as_str() {
        "cancel" => {
            let cancelled = secflow_producer::control::cancel(&console.broker, &id)
                .await
                .map_err(refused)?;
            if !cancelled {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("run {id} has already ended: nothing to cancel"),
                ));
            }
            ("run.cancel", json!({ "run_id": id, "cancelled": true }))
        }
        "resume" => {
            let node = body.node.as_deref();
            let resumed = secflow_producer::control::resume(&console.broker, &id, node)
                .await
                .map_err(refused)?;
            ("run.resume", json!({ "run_id": id, "resumed": resumed }))
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no run action `{other}`: use cancel or resume"),
            ));
        }
    };
    let mut answer = out.clone();
    let a = Action::now(action, &id, &body.reason, &who.by, out);
    merge(&mut answer, console.announce(a).await);
    Ok(Json(answer))
}

/// A run id is a UUID: anything else is refused before it reaches a Redis key.
fn check_run_id(id: &str) -> Result<(), ApiError> {
    id.parse::<uuid::Uuid>()
        .map(|_| ())
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a run id (a UUID)")))
}

/// A refused run action: the producer's message, which says why; the status from its type.
fn refused(e: anyhow::Error) -> ApiError {
    use secflow_common::runs::RunError;
    let status = match e.downcast_ref::<RunError>() {
        Some(RunError::UnknownRun(_)) => StatusCode::NOT_FOUND,
        Some(RunError::Redis(_)) => StatusCode::SERVICE_UNAVAILABLE,
        Some(RunError::Corrupt(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        None if e.downcast_ref::<secflow_common::Error>().is_some() => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        None => StatusCode::CONFLICT,
    };
    ApiError::new(status, format!("{e:#}"))
}
