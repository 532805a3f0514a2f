//! `/api/breakers`, `/api/degrade`, `/api/workers`, `/api/queues` and `/api/overview`: the
//! fleet's controls and state, changed through the same functions as `breaker` and `degrade`.

use super::{
    Shared,
    auth::Principal,
    dlq_api::merge,
    error::{ApiError, ApiResult},
};
use crate::{
    cli::BreakerAction,
    control_view::worker_rows,
    controls::{breaker_change, breaker_table, level_change},
};
use axum::{
    Extension, Json,
    extract::{Path, State},
};
use secflow_common::{amqp, deadline, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};
use std::{collections::BTreeSet, time::Duration};

/// `GET /api/breakers`: every breaker with a stored state or a hold, the paused types, the level.
pub async fn breakers(State(console): State<Shared>) -> ApiResult<Json<Value>> {
    let (rows, controls) = breaker_table(&console.fleet, now_ms()).await?;
    Ok(Json(json!({
        "breakers": rows,
        "paused": controls.paused,
        "level": controls.level,
        "problems": controls.problems,
    })))
}

/// `POST /api/breakers/{service}`.
#[derive(Deserialize)]
pub struct BreakerBody {
    /// open, close, disable, enable.
    action: String,
    /// With open: lift the hold after this long (`10m`).
    #[serde(default, rename = "for")]
    for_duration: Option<String>,
    /// Why.
    #[serde(default)]
    reason: String,
}

/// `POST /api/breakers/{service}`: as `breaker ACTION SERVICE [--for D]`.
pub async fn breaker(
    State(console): State<Shared>,
    Extension(who): Extension<Principal>,
    Path(service): Path<String>,
    Json(body): Json<BreakerBody>,
) -> ApiResult<Json<Value>> {
    let action = match body.action.as_str() {
        "open" => BreakerAction::Open,
        "close" => BreakerAction::Close,
        "disable" => BreakerAction::Disable,
        "enable" => BreakerAction::Enable,
        other => {
            return Err(ApiError::bad_request(format!(
                "action `{other}`: use open, close, disable or enable"
            )));
        }
    };
    let for_ms = body
        .for_duration
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(crate::cli::duration_ms)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let (a, text) = breaker_change(
        &console.fleet,
        action,
        &service,
        for_ms,
        &body.reason,
        &who.by,
        now_ms(),
    )
    .await?;
    Ok(Json(console.finish(a, text).await))
}

/// `GET /api/degrade`: the level in force, who set it and why.
pub async fn level(State(console): State<Shared>) -> ApiResult<Json<Value>> {
    let controls = console.fleet.controls().await?;
    Ok(Json(json!(controls.level)))
}

/// `POST /api/degrade`.
#[derive(Deserialize)]
pub struct LevelBody {
    /// full, high, medium, low, minimal or auto.
    level: String,
    /// Why.
    #[serde(default)]
    reason: String,
}

/// `POST /api/degrade`: as `degrade LEVEL|auto`.
pub async fn set_level(
    State(console): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(body): Json<LevelBody>,
) -> ApiResult<Json<Value>> {
    let current = console.fleet.controls().await?;
    let (a, text) = level_change(
        &console.fleet,
        &current.level,
        &body.level,
        &body.reason,
        &who.by,
        now_ms(),
    )
    .await?;
    Ok(Json(console.finish(a, text).await))
}

/// `GET /api/workers`: the registry (heartbeat age, in-flight, RSS, version) and the healing
/// record, and the fleet's completions and failures per 10 s from the events.
pub async fn workers(State(console): State<Shared>) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let (records, problems) = console.fleet.workers().await?;
    let healing = console.fleet.healing().await?;
    let actions: serde_json::Map<String, Value> = healing
        .actions
        .iter()
        .map(|(a, (taken, worked))| (a.clone(), json!({"taken": taken, "worked": worked})))
        .collect();
    Ok(Json(json!({
        "workers": worker_rows(records, now),
        "problems": problems,
        "healing": {"actions": actions, "recovery_rate": healing.recovery_rate()},
        "rates": console.live.with(|t| t.rates(now)),
    })))
}

/// `GET /api/queues`: depth and consumers of the DLQ and of every work queue a registered worker
/// consumes, how long the messages taken from each work queue in the last minute had waited
/// (`waited_ms`, reported by its workers), and the age of the oldest dead letter (from the latest
/// DLQ snapshot, if any).
pub async fn queues(State(console): State<Shared>) -> ApiResult<Json<Value>> {
    let (records, _) = console.fleet.workers().await?;
    let topology = &console.topology;
    let mut names: BTreeSet<String> = records
        .iter()
        .map(|w| topology.work_queue(&w.pool))
        .collect();
    names.insert(topology.dlq());
    let conn = amqp::connect(
        &console.broker.amqp_url,
        "secflow-console-queues",
        Duration::from_secs(5),
    )
    .await
    .map_err(crate::InspectorError::from)?;
    let mut queues = Vec::new();
    for name in names {
        let passive = amqp::passive_declare(&conn, &name);
        match deadline::within("reading a queue", deadline::BROKER_OP, passive).await {
            Ok(Ok(q)) => queues.push(json!({
                "queue": name,
                "messages": q.message_count(),
                "consumers": q.consumer_count(),
                "waited_ms": waited(&records, topology, &name),
            })),
            Ok(Err(_)) => queues.push(json!({"queue": name, "missing": true})),
            Err(e) => queues.push(json!({"queue": name, "error": e.to_string()})),
        }
    }
    amqp::close(&conn, "queues read").await;
    let oldest = console.dlq.peek().await.map(|s| {
        json!({
            "taken_ms": s.taken_ms,
            "oldest_age_ms": crate::report::stats(s.entries.iter().map(|e| &e.record), now_ms()).oldest_age_ms,
        })
    });
    Ok(Json(json!({ "queues": queues, "dlq": oldest })))
}

/// How long the last messages the pool's workers took from `queue` had waited in it (the
/// longest, among takes of the last minute): under FIFO, the age of its oldest message then.
fn waited(
    records: &[secflow_common::control::registry::WorkerRecord],
    topology: &secflow_common::Topology,
    queue: &str,
) -> Option<u64> {
    let recent = now_ms().saturating_sub(60_000);
    records
        .iter()
        .filter(|w| topology.work_queue(&w.pool) == queue && w.queue_wait_at_ms >= recent)
        .map(|w| w.queue_wait_ms)
        .max()
}

/// `GET /api/overview`: counts for the landing page and the most recent dead letters.
pub async fn overview(State(console): State<Shared>) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let runs = console
        .fleet
        .call(
            "listing runs",
            super::runs::list(console.fleet.store.pool(), console.fleet.store.ns()),
        )
        .await?;
    let running = runs.iter().filter(|r| r.status == "running").count();
    let (rows, controls) = breaker_table(&console.fleet, now).await?;
    let (workers, _) = console.fleet.workers().await?;
    let snapshot = console
        .dlq
        .get(&console.broker, console.lock_wait, false)
        .await?;
    let mut recent: Vec<&crate::record::DeadRecord> =
        snapshot.entries.iter().map(|e| &e.record).collect();
    recent.sort_by_key(|r| std::cmp::Reverse(r.dead_lettered_ms));
    recent.truncate(10);
    let mut out = json!({
        "runs": {"total": runs.len(), "running": running, "recent": runs.iter().take(5).collect::<Vec<_>>()},
        "dlq": {"total": snapshot.entries.len(), "recent": recent},
        "breakers": {"total": rows.len(), "not_closed": rows.iter().filter(|r| r.state != "closed").count()},
        "level": controls.level,
        "workers": workers.len(),
    });
    merge(&mut out, json!({"live": console.live.subscribed()}));
    Ok(Json(out))
}
