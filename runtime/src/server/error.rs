//! One error type for every HTTP answer: a status and a uniform JSON body
//! `{"error": {"code": "...", "message": "..."}}`. Internals are logged, not
//! returned.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No or a wrong bearer token.
    #[error("a valid `Authorization: Bearer <token>` header is required")]
    Unauthorized,
    /// Every slot is busy.
    #[error("all {slots} run slots are busy; retry later")]
    Full {
        /// Slots of this runtime.
        slots: usize,
    },
    /// The runtime is shutting down.
    #[error("the runtime is shutting down and accepts no new runs")]
    ShuttingDown,
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body is not a valid request.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// No such run.
    #[error("no run with id `{0}`")]
    NotFound(String),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// Wrong method for a route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The same id is running with another attempt.
    #[error("{0}")]
    Conflict(String),
    /// A bug or an I/O failure; details are in the runtime's log.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
}

impl AppError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Full { .. } => (StatusCode::TOO_MANY_REQUESTS, "full"),
            AppError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            AppError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error answering a request");
        }
        let (status, code) = self.status_and_code();
        let mut resp = (
            status,
            Json(Body {
                error: Detail {
                    code,
                    message: self.to_string(),
                },
            }),
        )
            .into_response();
        match self {
            AppError::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::Full { .. } | AppError::ShuttingDown => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}
