//! The worker's HTTP endpoints for operators and Kubernetes: `/healthz` (the process is alive),
//! `/readyz` (consuming; with Redis's state as detail) and `/metrics` (Prometheus text).

use crate::stats::WorkerStats;
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; binaries call it at start-up) and keeps
/// its histograms trimmed.
pub fn install_prometheus() -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("secflow_node_duration_seconds".into()),
            &crate::report::DURATION_BUCKETS,
        )
        .map_err(|e| format!("cannot set the metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
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

/// Serves the endpoints on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<WorkerStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {addr}: {e}"))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(prometheus))
        .with_state(stats);
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

async fn ready(State(stats): State<Arc<WorkerStats>>) -> impl IntoResponse {
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

async fn prometheus() -> impl IntoResponse {
    match PROMETHEUS.get() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder in this process\n".to_string(),
        ),
    }
}
