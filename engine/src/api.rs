//! The read API on the metrics server: the same views as `projector query`, as JSON.
//!
//! `GET /v1/stories/{id}`, `/v1/stories/{id}/timeline`, `/v1/decisions`, `/v1/tasks`,
//! `/v1/approvals`, and the OpenAPI document at `/openapi.json`. Unknown ids are 404 with a
//! JSON error, bad parameters 400, an unreachable Neo4j 503; never a stack trace.

use crate::sink::{cache::CacheSink, graph::GraphSink};
use crate::views::{self, story_view, Source};
use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Clone)]
struct Api {
    graph: GraphSink,
    cache: Option<CacheSink>,
}

/// An error answer: a status and a one-line JSON message.
struct ApiError {
    code: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.as_u16();
        (
            self.code,
            Json(json!({"error": self.message, "status": status})),
        )
            .into_response()
    }
}

fn error(code: StatusCode, message: String) -> Response {
    ApiError { code, message }.into_response()
}

fn unavailable_err(e: crate::error::WriteError) -> ApiError {
    ApiError {
        code: StatusCode::SERVICE_UNAVAILABLE,
        message: format!("graph unavailable: {e}"),
    }
}

fn unavailable(e: crate::error::WriteError) -> Response {
    unavailable_err(e).into_response()
}

#[derive(Debug, Deserialize)]
struct GenParam {
    generation: Option<String>,
}

impl Api {
    async fn generation(&self, asked: Option<String>) -> Result<(String, bool), ApiError> {
        let live = crate::generations::live(&self.graph)
            .await
            .map_err(unavailable_err)?;
        let gen = asked.unwrap_or_else(|| live.clone());
        let is_live = gen == live;
        Ok((gen, is_live))
    }
}

async fn story(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(p): Query<GenParam>,
) -> Response {
    let (gen, live) = match api.generation(p.generation).await {
        Ok(g) => g,
        Err(r) => return r.into_response(),
    };
    match story_view(&api.graph, api.cache.as_ref(), &gen, live, &id).await {
        Ok(Some((ctx, source))) => {
            let mut v = serde_json::to_value(&ctx).expect("serializable");
            v["generation"] = gen.into();
            v["source"] = match source {
                Source::Cache => "cache",
                Source::Neo4j => "neo4j",
            }
            .into();
            Json(v).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no story {id} in generation {}",
                if live { "live" } else { &gen }
            ),
        ),
        Err(e) => unavailable(e),
    }
}

async fn timeline(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(p): Query<GenParam>,
) -> Response {
    let (gen, live) = match api.generation(p.generation).await {
        Ok(g) => g,
        Err(r) => return r.into_response(),
    };
    match api.graph.story_version(&gen, &id).await {
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no story {id} in generation {}",
                    if live { "live" } else { &gen }
                ),
            )
        }
        Err(e) => return unavailable(e),
        Ok(Some(_)) => {}
    }
    match views::run(&api.graph, views::TIMELINE, &gen, vec![("id", id.into())]).await {
        Ok(v) => Json(v.unwrap_or(json!([]))).into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    generation: Option<String>,
    story: Option<String>,
    since: Option<String>,
    status: Option<String>,
    role: Option<String>,
    limit: Option<String>,
}

fn limit(p: &ListParams) -> Result<i64, ApiError> {
    match &p.limit {
        None => Ok(100),
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(ApiError {
                code: StatusCode::BAD_REQUEST,
                message: format!("limit {l:?} must be an integer from 1 to 10000"),
            }),
        },
    }
}

fn opt(v: &Option<String>) -> Value {
    v.clone().map(Value::from).unwrap_or(Value::Null)
}

async fn list(
    api: &Api,
    statement: &str,
    p: ListParams,
    params: Vec<(&'static str, Value)>,
) -> Response {
    let n = match limit(&p) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let (gen, _) = match api.generation(p.generation).await {
        Ok(g) => g,
        Err(r) => return r.into_response(),
    };
    let mut params = params;
    params.push(("limit", n.into()));
    match views::run(&api.graph, statement, &gen, params).await {
        Ok(v) => Json(v.unwrap_or(json!([]))).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn decisions(State(api): State<Api>, Query(p): Query<ListParams>) -> Response {
    let since = match &p.since {
        None => Value::Null,
        Some(t) => {
            match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
                Ok(t) => ((t.unix_timestamp_nanos() / 1_000_000) as i64).into(),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("since {t:?} is not an RFC 3339 time"),
                    )
                }
            }
        }
    };
    let params = vec![("story", opt(&p.story)), ("since", since)];
    list(&api, views::DECISIONS, p, params).await
}

async fn tasks(State(api): State<Api>, Query(p): Query<ListParams>) -> Response {
    let params = vec![("status", opt(&p.status)), ("role", opt(&p.role))];
    list(&api, views::TASKS, p, params).await
}

async fn approvals(State(api): State<Api>, Query(p): Query<ListParams>) -> Response {
    let params = vec![("story", opt(&p.story))];
    list(&api, views::APPROVALS, p, params).await
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.0 description of the read API.
pub fn openapi_document() -> Value {
    let gen = json!({"name": "generation", "in": "query", "required": false, "schema": {"type": "string"},
                     "description": "generation to read; default: the live one"});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "example": "US-0001"});
    let limit = json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}});
    let q = |name: &str, desc: &str| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}, "description": desc});
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"type": "object"}}}});
    let okl = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "projector read API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Views over the projected Neo4j graph (docs/views.md)."},
        "paths": {
            "/v1/stories/{id}": {"get": {"summary": "A story: phases, plans and approvals, tasks, decisions, milestones",
                "parameters": [id, gen], "responses": {"200": ok("the story view"), "404": err, "503": err}}},
            "/v1/stories/{id}/timeline": {"get": {"summary": "Every projected change of the story in stream order",
                "parameters": [id, gen], "responses": {"200": okl("timeline entries"), "404": err, "503": err}}},
            "/v1/decisions": {"get": {"summary": "Decisions, newest first",
                "parameters": [q("story", "only this story's"), q("since", "RFC 3339 time"), limit, gen],
                "responses": {"200": okl("decisions"), "400": err, "503": err}}},
            "/v1/tasks": {"get": {"summary": "Tasks",
                "parameters": [q("status", "CREATED, ASSIGNED, DISPATCHED, RUNNING, COMPLETED, FAILED"), q("role", "DEV, QA, ..."), limit, gen],
                "responses": {"200": okl("tasks"), "400": err, "503": err}}},
            "/v1/approvals": {"get": {"summary": "Plan approvals, newest first",
                "parameters": [q("story", "only this story's"), limit, gen],
                "responses": {"200": okl("approvals"), "400": err, "503": err}}}
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["error", "status"],
            "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}}}
    })
}

/// The API routes, to merge into the metrics server's router.
pub fn router(graph: GraphSink, cache: Option<CacheSink>) -> Router {
    Router::new()
        .route("/v1/stories/{id}", get(story))
        .route("/v1/stories/{id}/timeline", get(timeline))
        .route("/v1/decisions", get(decisions))
        .route("/v1/tasks", get(tasks))
        .route("/v1/approvals", get(approvals))
        .route("/openapi.json", get(openapi))
        .with_state(Api { graph, cache })
}
