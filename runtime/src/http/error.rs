//! Error answers: `{"error": {"code": "...", "message": "..."}}` with a precise status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::control::{ControlError, ControlErrorKind};

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Answer with `Connection: close`: the request body was not read to its end, so the
    /// connection cannot carry another request and the client must not reuse it.
    pub close_connection: bool,
    /// Answer with `Retry-After` (seconds): the condition is temporary (503, 429).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            close_connection: false,
            retry_after_s: None,
        }
    }

    /// The same error, answered with `Retry-After: {s}`.
    pub fn with_retry_after(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s);
        self
    }

    /// The same error, answered with `Connection: close`.
    pub fn closing(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// 400 for a body that is not valid JSON for the expected shape.
    pub fn bad_json(e: serde_json::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", format!("request body: {e}"))
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let (status, code) = match e.kind() {
            ControlErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ControlErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ControlErrorKind::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            ControlErrorKind::Exhausted => (StatusCode::CONFLICT, "limit_reached"),
            ControlErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
            ControlErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ControlErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let retry = e.kind() == ControlErrorKind::Unavailable;
        let mut answer = ApiError::new(status, code, e.to_string());
        if retry {
            answer.retry_after_s = Some(1);
        }
        answer
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        if self.close_connection {
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
