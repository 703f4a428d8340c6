//! The live story viewer at `/ui/`: three static files built into the binary (no build
//! step), reading `/v1/stories`, `/v1/stories/{id}`, its timeline, and following
//! `/v1/changes` with the browser's `EventSource` (which resumes with `Last-Event-ID`).

use axum::{http::header, response::IntoResponse, response::Redirect, routing::get, Router};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn file(ty: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `/ui/` and its assets; `/ui` redirects there.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}
