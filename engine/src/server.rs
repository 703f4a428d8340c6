//! The HTTP server: `/metrics`, `/healthz`, `/readyz`.

use crate::health::Health;
use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use std::net::SocketAddr;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// Builds the router; other crates may merge more routes into it.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    // The alert on readiness (deploy/prometheus/) reads what /readyz would answer now.
    s.metrics.ready.set(i64::from(s.health.ready()));
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    let code = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({"ready": code == StatusCode::OK, "workers": s.health.snapshot()})),
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
