//! HTTP routes of `krt runtime serve`.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `POST /v1/runs` | yes | start a run (idempotent by id + attempt); 201 new, 200 existing, 429 full |
//! | `GET /v1/runs/{id}` | yes | status |
//! | `GET /v1/runs/{id}/events?from=N` | yes | NDJSON event stream from event N, live until the run ends |
//! | `DELETE /v1/runs/{id}` | yes | cancel (SIGTERM, grace, SIGKILL) |
//! | `GET /v1/capacity` | yes | slots, busy, free |
//! | `GET /metrics` | yes | Prometheus text |
//! | `GET /v1/health` | no | liveness |

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::AppError;
use super::runs::{AppState, RunStatus};
use crate::exec::RunRequest;

/// Largest request body.
pub const MAX_BODY: usize = 4 << 20;

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/runs", post(create_run))
        .route("/v1/runs/{id}", get(get_run).delete(cancel_run))
        .route("/v1/runs/{id}/events", get(events))
        .route("/v1/capacity", get(capacity))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/v1/health", get(health))
        .merge(protected)
        .fallback(no_route)
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if state.token_matches(t.as_bytes()) => Ok(next.run(req).await),
        _ => Err(AppError::Unauthorized),
    }
}

async fn no_route(req: Request) -> AppError {
    AppError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "accepting": state.accepting()}))
}

async fn create_run(
    State(state): State<AppState>,
    body: Result<Json<RunRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RunStatus>), AppError> {
    let Json(req) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge { limit: MAX_BODY },
        _ => AppError::BadRequest(e.body_text()),
    })?;
    let (handle, new) = state.start(req)?;
    let code = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(handle.status())))
}

async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunStatus>, AppError> {
    Ok(Json(state.get(&id)?.status()))
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunStatus>), AppError> {
    let h = state.get(&id)?;
    h.cancel();
    Ok((StatusCode::ACCEPTED, Json(h.status())))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    from: u64,
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let handle = state.get(&id)?;
    let stream = futures::stream::unfold((handle, q.from, false), |(h, next, done)| async move {
        if done {
            return None;
        }
        let mut rx = h.subscribe();
        loop {
            rx.borrow_and_update();
            let chunk = h.read_from(next, 256 * 1024);
            if !chunk.text.is_empty() {
                let (next, done) = (chunk.next, chunk.done);
                return Some((Ok::<_, Infallible>(chunk.text), (h, next, done)));
            }
            if chunk.done {
                return None;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn capacity(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (slots, busy) = (state.slots(), state.busy());
    Json(
        serde_json::json!({"slots": slots, "busy": busy, "free": slots - busy, "accepting": state.accepting()}),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics_text(),
    )
}
