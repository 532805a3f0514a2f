//! The worker's HTTP endpoints for operators and Kubernetes: `/healthz` (the process is alive),
//! `/readyz` (consuming; with Redis's state as detail) and `/metrics` (Prometheus text).

use crate::stats::WorkerStats;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of `secflow_event_publish_seconds`: a confirm takes about a millisecond on a healthy
/// broker, seconds when it is in trouble.
const EVENT_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Installs the process-wide Prometheus recorder (once; binaries call it at start-up) and keeps
/// its histograms trimmed.
pub fn install_prometheus() -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("secflow_node_duration_seconds".into()),
            &crate::report::DURATION_BUCKETS,
        )
        .map_err(|e| format!("cannot set the metrics buckets: {e}"))?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("secflow_hook_delivery_seconds".into()),
            &crate::report::DURATION_BUCKETS,
        )
        .map_err(|e| format!("cannot set the metrics buckets: {e}"))?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("secflow_event_publish_seconds".into()),
            &EVENT_BUCKETS,
        )
        .map_err(|e| format!("cannot set the metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let _ = PROMETHEUS.set(handle);
    Ok(())
}

/// The kind of a metric, for its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Only goes up; the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets; the name ends in the unit (`_seconds`).
    Histogram,
}

/// Every metric the worker exports, with its kind and help text (the `# HELP` line).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "secflow_tasks_settled_total",
        Kind::Counter,
        "Deliveries settled, by outcome (completed, cancelled, retried, dead_lettered, handed_back, deferred, duplicate).",
    ),
    (
        "secflow_task_failures_total",
        Kind::Counter,
        "Failed attempts by error class and outcome (retried or dead_lettered).",
    ),
    (
        "secflow_settle_failures_total",
        Kind::Counter,
        "Settlements that could not be published; the delivery went back to the queue.",
    ),
    (
        "secflow_security_rejections_total",
        Kind::Counter,
        "Tasks refused before running, by rejection code (signature, limits, hostile input).",
    ),
    (
        "secflow_chaos_injected_total",
        Kind::Counter,
        "Failures injected by --chaos, by kind.",
    ),
    (
        "secflow_breaker_transitions_total",
        Kind::Counter,
        "Circuit breaker changes, by service, new state and scope (shared or local).",
    ),
    (
        "secflow_breaker_state",
        Kind::Gauge,
        "Circuit breaker state this worker last read, by service: 0 closed, 1 half-open, 2 open.",
    ),
    (
        "secflow_redis_degraded",
        Kind::Gauge,
        "1 while Redis is unreachable and the worker runs on local breakers, else 0.",
    ),
    (
        "secflow_completions_unrecorded",
        Kind::Gauge,
        "Tasks that completed but wait for Redis to record it before the completion is reported.",
    ),
    (
        "secflow_done_markers_dropped_total",
        Kind::Counter,
        "Done markers of tasks completed while Redis was unreachable, dropped before it came back.",
    ),
    (
        "secflow_state_corrupted_total",
        Kind::Counter,
        "Stored state found corrupted and repaired or dropped, by kind.",
    ),
    (
        "secflow_unparseable_total",
        Kind::Counter,
        "Deliveries whose body is no task; dead-lettered.",
    ),
    (
        "secflow_memory_limit_exits_total",
        Kind::Counter,
        "Worker exits for passing its memory limit.",
    ),
    (
        "secflow_hook_deliveries_total",
        Kind::Counter,
        "Hook delivery attempts, by hook kind and outcome (delivered, retried, failed).",
    ),
    (
        "secflow_hook_delivery_seconds",
        Kind::Histogram,
        "Hook deliveries from their first attempt to their end, in seconds.",
    ),
    (
        "secflow_node_duration_seconds",
        Kind::Histogram,
        "Node attempts' run time in seconds, by node type and outcome.",
    ),
    (
        "secflow_node_cache_total",
        Kind::Counter,
        "Node result cache lookups, by node type and result (hit or miss).",
    ),
    (
        "secflow_node_exit_status_total",
        Kind::Counter,
        "Tool exit statuses, by node type and status.",
    ),
    (
        "secflow_node_findings_total",
        Kind::Counter,
        "Findings reported by nodes, by node type and severity.",
    ),
    (
        "secflow_healing_actions_total",
        Kind::Counter,
        "Healing actions taken, by action and outcome (worked or failed).",
    ),
    (
        "secflow_degradation_level",
        Kind::Gauge,
        "The fleet's degradation level this worker runs at (0 full).",
    ),
    (
        "secflow_fleet_controller_leading",
        Kind::Gauge,
        "1 while this worker leads the fleet controller (its secflow_queue_* and secflow_fleet_* gauges are current), else 0.",
    ),
    (
        "secflow_fleet_error_ratio",
        Kind::Gauge,
        "Failed share of the tasks settled over the controller's window (0 to 1); set by the leader.",
    ),
    (
        "secflow_healing_recovery_ratio",
        Kind::Gauge,
        "Share of healing actions that worked (0 to 1); set by the leader.",
    ),
    (
        "secflow_queue_depth",
        Kind::Gauge,
        "Messages ready in a work queue or the DLQ; set by the leader.",
    ),
    (
        "secflow_queue_consumers",
        Kind::Gauge,
        "Consumers on a work queue; set by the leader.",
    ),
    (
        "secflow_queue_drain_seconds",
        Kind::Gauge,
        "Seconds a work queue takes to drain at its recent rate (+Inf when nothing is taken); set by the leader.",
    ),
    (
        "secflow_queue_backlogged",
        Kind::Gauge,
        "1 while a work queue's drain time exceeds the backlog threshold, else 0; set by the leader.",
    ),
    (
        "secflow_queue_oldest_message_age_seconds",
        Kind::Gauge,
        "Age of the oldest message ready in a work queue (from the broker's ready count and the fleet's settled and in-flight counts, to a second) or in the DLQ (since it was dead-lettered, read every 10 s); set by the leader.",
    ),
    (
        "secflow_queue_head_age_seconds",
        Kind::Gauge,
        "How long the last message this worker took from the queue had waited in it (since publication, or since a retry's delay ended): under FIFO, the age of the queue's oldest message when it was taken.",
    ),
    (
        "secflow_tasks_in_flight",
        Kind::Gauge,
        "Deliveries this worker holds and is processing now.",
    ),
    (
        "secflow_redeliveries_total",
        Kind::Counter,
        "Deliveries that an earlier delivery of the same copy left unsettled (a lost connection or a crashed worker), by the broker's redelivered flag.",
    ),
    (
        "secflow_broker_consuming",
        Kind::Gauge,
        "1 while the worker's broker connection is up and its consumer registered, else 0.",
    ),
    (
        "secflow_event_publish_seconds",
        Kind::Histogram,
        "Time from handing a lifecycle event to the publisher to the broker's confirm, by outcome (confirmed, failed).",
    ),
    (
        "secflow_trace_spans_exported_total",
        Kind::Counter,
        "Spans the OTLP collector accepted.",
    ),
    (
        "secflow_trace_spans_dropped_total",
        Kind::Counter,
        "Spans dropped, by reason: queue_full (the exporter fell behind), export_failed (the collector refused or did not answer).",
    ),
];

/// Registers the help text of every metric in [`METRICS`] with the installed recorder.
fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// What breaks the Prometheus naming conventions in a metric's name, if anything.
pub fn naming_problem(name: &str, kind: Kind) -> Option<&'static str> {
    if !name.starts_with("secflow_") {
        return Some("not in the secflow_ namespace");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Some("not snake_case");
    }
    let total = name.ends_with("_total");
    match kind {
        Kind::Counter if !total => Some("a counter's name ends in _total"),
        Kind::Gauge | Kind::Histogram if total => Some("only counters end in _total"),
        Kind::Histogram if !name.ends_with("_seconds") && !name.ends_with("_bytes") => {
            Some("a histogram's name ends in its base unit")
        }
        _ if name.contains("_milliseconds") || name.contains("_ms") || name.ends_with("_rate") => {
            Some("not in base units (seconds, ratio 0..1)")
        }
        _ => None,
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct Endpoints {
    pub stats: Arc<WorkerStats>,
    /// The bearer token `/log-filter` requires (`None`: that endpoint is off).
    pub admin_token: Option<String>,
}

/// Serves the endpoints on `addr` until `shutdown` resolves: `/healthz`, `/readyz`,
/// `/metrics`, and `GET`/`PUT /log-filter` (the log filter in force, and replacing it; both
/// need the admin token).
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {addr}: {e}"))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(prometheus))
        .route("/log-filter", get(log_filter).put(set_log_filter))
        .with_state(endpoints);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Alive unless the watchdog found the runtime or a handler stuck: then a restart is needed.
async fn healthz() -> impl IntoResponse {
    match crate::fleet::watchdog::health() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Whether the request carries the admin token (compared in constant time).
fn authorized(endpoints: &Endpoints, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let Some(token) = &endpoints.admin_token else {
        return Err((
            StatusCode::NOT_FOUND,
            "the log filter endpoint is off: start the worker with SECFLOW_ADMIN_TOKEN\n".into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer TOKEN` header is required\n".into(),
        ))
    }
}

async fn log_filter(State(endpoints): State<Endpoints>, headers: HeaderMap) -> impl IntoResponse {
    match authorized(&endpoints, &headers) {
        Ok(()) => (
            StatusCode::OK,
            format!("{}\n", secflow_common::logging::filter()),
        ),
        Err(refused) => refused,
    }
}

/// Replaces the log filter with the request body (`RUST_LOG` syntax).
async fn set_log_filter(
    State(endpoints): State<Endpoints>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    if let Err(refused) = authorized(&endpoints, &headers) {
        return refused;
    }
    match secflow_common::logging::set_filter(&body) {
        Ok(()) => {
            tracing::warn!(
                filter = body.trim(),
                "log filter replaced through /log-filter"
            );
            (StatusCode::OK, format!("{}\n", body.trim()))
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let stats = &endpoints.stats;
    let consuming = stats.consuming.load(Ordering::Relaxed);
    let degraded = stats.redis_degraded.load(Ordering::Relaxed);
    let body = json!({
        "ready": consuming,
        "consuming": consuming,
        "redis": if degraded { "unreachable: local circuit breakers; idempotent types run unclaimed, others are deferred" } else { "ok" },
    });
    let status = if consuming {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn prometheus(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let stats = &endpoints.stats;
    // Values read at scrape time from the worker's own counters.
    metrics::gauge!("secflow_tasks_in_flight").set(stats.in_flight.load(Ordering::Relaxed) as f64);
    metrics::gauge!("secflow_broker_consuming")
        .set(f64::from(u8::from(stats.consuming.load(Ordering::Relaxed))));
    let spans = secflow_common::trace::counts();
    metrics::counter!("secflow_trace_spans_exported_total").absolute(spans.exported);
    metrics::counter!("secflow_trace_spans_dropped_total", "reason" => "queue_full")
        .absolute(spans.dropped_queue_full);
    metrics::counter!("secflow_trace_spans_dropped_total", "reason" => "export_failed")
        .absolute(spans.dropped_export_failed);
    match PROMETHEUS.get() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder in this process\n".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_by_convention() {
        for &(name, kind, help) in METRICS {
            assert_eq!(naming_problem(name, kind), None, "{name}");
            assert!(help.ends_with('.'), "{name}: help text is a sentence");
        }
        let mut names: Vec<_> = METRICS.iter().map(|m| m.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric is listed twice");
    }

    #[test]
    fn naming_problems_are_found() {
        assert!(naming_problem("secflow_tasks", Kind::Counter).is_some());
        assert!(naming_problem("secflow_depth_total", Kind::Gauge).is_some());
        assert!(naming_problem("secflow_latency", Kind::Histogram).is_some());
        assert!(naming_problem("secflow_error_rate", Kind::Gauge).is_some());
        assert!(naming_problem("secflow_wait_ms", Kind::Gauge).is_some());
        assert!(naming_problem("tasks_total", Kind::Counter).is_some());
        assert!(naming_problem("secflow_Tasks_total", Kind::Counter).is_some());
        assert_eq!(naming_problem("secflow_error_ratio", Kind::Gauge), None);
    }

    #[test]
    fn every_metric_the_worker_emits_is_listed() {
        let listed: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut found = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_ in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    for (i, _) in text.match_indices(macro_) {
                        let rest = &text[i + macro_.len()..];
                        let name = &rest[..rest.find('"').unwrap()];
                        assert!(
                            listed.contains(&name),
                            "{name} in {path:?} is not in METRICS"
                        );
                        found += 1;
                    }
                }
            }
        }
        assert!(found > 20, "only {found} metric uses found");
    }
}
