//! `/api/dlq`: browse the dead letters with the inspector's filters (paginated), one task's full
//! record (secrets masked), export, and the actions — requeue (selected, by filter, paced) and
//! purge with confirmation — through the same functions as `requeue` and `purge`.

use super::{
    Shared,
    auth::Principal,
    dlq::{Select, filters},
    error::{ApiError, ApiResult},
};
use crate::{
    Session,
    actions::RequeueOptions,
    announce::Action,
    cli::Pace,
    dlq_cmd::{RequeueHow, purge_selected, requeue_selected},
    filter::all_match,
    report::{self, Secrets},
};
use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use secflow_common::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

/// Most dead letters one page lists.
pub const MAX_PAGE: usize = 1_000;

/// `GET /api/dlq?type=..&class=..&code=..&reason=..&run=..&queue=..&older=..&newer=..&offset=0&limit=100&refresh=1`
pub async fn list(
    State(console): State<Shared>,
    Query(mut q): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let number = |q: &mut BTreeMap<String, String>, key: &str, default: usize| {
        q.remove(key).map_or(Ok(default), |v| {
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("`{key}` must be a number")))
        })
    };
    let offset = number(&mut q, "offset", 0)?;
    let limit = number(&mut q, "limit", 100)?.min(MAX_PAGE);
    let refresh = q.remove("refresh").is_some();
    let filters = filters(&q)?;
    let snapshot = console
        .dlq
        .get(&console.broker, console.lock_wait, refresh)
        .await?;
    let now = now_ms();
    let matched: Vec<&crate::record::DeadRecord> = snapshot
        .entries
        .iter()
        .map(|e| &e.record)
        .filter(|r| all_match(&filters, r, now))
        .collect();
    let items: Vec<&crate::record::DeadRecord> =
        matched.iter().skip(offset).take(limit).copied().collect();
    Ok(Json(json!({
        "queue": console.queue(),
        "taken_ms": snapshot.taken_ms,
        "total": snapshot.entries.len(),
        "matched": matched.len(),
        "offset": offset,
        "limit": limit,
        "items": items,
        "stats": report::stats(snapshot.entries.iter().map(|e| &e.record), now),
    })))
}

/// `GET /api/dlq/task/{id}`: record, headers, body and timeline, secrets masked.
pub async fn one(State(console): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    for refresh in [false, true] {
        let snapshot = console
            .dlq
            .get(&console.broker, console.lock_wait, refresh)
            .await?;
        let found = snapshot
            .entries
            .iter()
            .find(|e| e.record.task_id.as_deref() == Some(id.as_str()));
        if let Some(e) = found {
            return Ok(Json(report::full_of(
                &e.props,
                &e.body,
                &e.record,
                Secrets::Redacted,
            )));
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no dead-lettered task with id {id} in {}", console.queue()),
    ))
}

/// `GET /api/dlq/export?FILTERS`: the selected dead letters as JSON lines (as `export` writes
/// them, secrets masked); nothing is removed.
pub async fn export(
    State(console): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Response> {
    let select = Select {
        all: q.is_empty(),
        filter: q,
        ..Select::default()
    };
    let selection = select.selection()?;
    let session = Session::open(&console.broker, console.lock_wait).await?;
    let lines = selection
        .apply(&session.records, &console.queue(), now_ms())
        .map(|selected| {
            selected
                .iter()
                .map(|&i| report::export_line(&session, i, Secrets::Redacted) + "\n")
                .collect::<String>()
        });
    session.release().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"dlq-export.jsonl\"",
            ),
        ],
        lines?,
    )
        .into_response())
}

/// `POST /api/dlq/requeue`.
#[derive(Deserialize)]
pub struct RequeueBody {
    #[serde(flatten)]
    select: Select,
    #[serde(default)]
    reset_retries: bool,
    #[serde(default)]
    rate: u32,
    /// `none` (default) or `auto`.
    #[serde(default)]
    pace: Option<String>,
    /// With `pace: auto`: how long to wait for held tasks (`1m` by default).
    #[serde(default)]
    max_wait: Option<String>,
    /// Why (recorded in the announcement).
    #[serde(default)]
    reason: String,
}

/// `POST /api/dlq/requeue`: as `requeue`: each copy confirmed before its dead letter is acked.
pub async fn requeue(
    State(console): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(body): Json<RequeueBody>,
) -> ApiResult<Json<Value>> {
    let reason = body.reason.clone();
    let selection = body.select.selection()?;
    selection.require_explicit()?;
    let pace = match body.pace.as_deref() {
        None | Some("none") => Pace::None,
        Some("auto") => Pace::Auto,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "pace `{other}`: use none or auto"
            )));
        }
    };
    let max_wait = crate::cli::duration_ms(body.max_wait.as_deref().unwrap_or("1m"))
        .map_err(ApiError::bad_request)?;
    let how = RequeueHow {
        options: RequeueOptions {
            reset_retries: body.reset_retries,
            rate: body.rate,
        },
        pace,
        max_wait: Duration::from_millis(max_wait),
    };
    let queue = console.queue();
    let mut session = Session::open(&console.broker, console.lock_wait).await?;
    session.by = who.by.clone();
    let outcome = async {
        let selected = selection.apply(&session.records, &queue, now_ms())?;
        let report = requeue_selected(&mut session, &selected, how, &console.broker).await?;
        let id = |i: usize| session.records[i].task_id.clone();
        let listed = |v: &[(usize, String)]| -> Vec<Value> {
            v.iter()
                .map(|(i, why)| json!({"task_id": id(*i), "reason": why}))
                .collect()
        };
        Ok::<_, crate::InspectorError>(json!({
            "selected": selected.len(),
            "requeued": report.requeued,
            "failed": listed(&report.failed),
            "held": listed(&report.held),
        }))
    }
    .await;
    session.release().await?;
    console.dlq.invalidate().await;
    let mut out = outcome?;
    let a = Action::now("dlq.requeue", &queue, &reason, &who.by, out.clone());
    merge(&mut out, console.announce(a).await);
    Ok(Json(out))
}

/// `POST /api/dlq/purge`.
#[derive(Deserialize)]
pub struct PurgeBody {
    #[serde(flatten)]
    select: Select,
    /// How many dead letters the caller expects to remove: must match the selection.
    confirm: Option<usize>,
    /// Why (recorded in the announcement).
    #[serde(default)]
    reason: String,
}

/// `POST /api/dlq/purge`: as `purge --yes`, once `confirm` equals the number selected.
pub async fn purge(
    State(console): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(body): Json<PurgeBody>,
) -> ApiResult<Json<Value>> {
    let reason = body.reason.clone();
    let selection = body.select.selection()?;
    selection.require_explicit()?;
    let queue = console.queue();
    let mut session = Session::open(&console.broker, console.lock_wait).await?;
    session.by = who.by.clone();
    let outcome = async {
        let selected = selection.apply(&session.records, &queue, now_ms())?;
        if body.confirm != Some(selected.len()) {
            return Ok(Err(selected.len()));
        }
        let removed = purge_selected(&mut session, &selected, &console.broker).await?;
        Ok::<_, crate::InspectorError>(Ok(removed))
    }
    .await;
    session.release().await?;
    console.dlq.invalidate().await;
    let removed = outcome?.map_err(|n| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("purge removes {n} tasks for good: send \"confirm\": {n} to go ahead"),
        )
    })?;
    let mut out = json!({ "purged": removed });
    let a = Action::now("dlq.purge", &queue, &reason, &who.by, out.clone());
    merge(&mut out, console.announce(a).await);
    Ok(Json(out))
}

/// Adds `extra`'s fields to `out`.
pub fn merge(out: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
}
