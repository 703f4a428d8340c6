//! The HTTP server: `/metrics`, `/healthz`, `/readyz`.

use crate::health::Health;
use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use std::net::SocketAddr;

#[derive(Clone)]
pub(crate) struct AppState {
    metrics: Metrics,
    health: Health,
}

/// Builds the router; other crates may merge more routes into it.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String, example = "ok\n")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus metrics in the text exposition format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    // The alert on readiness (deploy/prometheus/) reads what /readyz would answer now.
    s.metrics.ready.set(i64::from(s.health.ready()));
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// The `/readyz` answer: ready or not, and every worker's state.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub workers: std::collections::BTreeMap<String, crate::health::WorkerHealth>,
    /// This binary's versions and the generation it writes, with the versions that created it.
    pub versions: crate::health::Versions,
}

/// Readiness: every worker connected, none halted, each lag at most `run --ready-lag`.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = Readiness),
              (status = 503, description = "Not ready (see workers)", body = Readiness)))]
pub(crate) async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let code = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            ready: code == StatusCode::OK,
            workers: s.health.snapshot(),
            versions: s.health.versions(),
        }),
    )
}

/// Serves `router` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
