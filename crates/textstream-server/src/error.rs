//! Every error the server answers with, its HTTP status and its
//! OpenAI-style JSON body (`{"error": {"message", "type", "param", "code"}}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What `Retry-After` says when the queue is full, in seconds: about one
/// short generation on a small model.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed or a value is out of range: `400`.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, for a person.
        message: String,
        /// The request field at fault, if one is.
        param: Option<String>,
        /// A machine-readable code, e.g. `context_length_exceeded`.
        code: Option<&'static str>,
    },
    /// The request names a model this server does not serve: `400`.
    #[error("the model {model:?} does not exist; this server serves {served:?} (or \"default\")")]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The name served.
        served: String,
    },
    /// `/v1/*` without the server's API key as `Authorization: Bearer KEY`: `401`.
    #[error("a valid API key is required: send it as the header `Authorization: Bearer KEY`")]
    Unauthorized,
    /// The `Host` header names something other than the loopback address
    /// the server is bound to (a DNS-rebinding page): `403`.
    #[error("the Host {host:?} is not accepted: this server is bound to a loopback address and answers only requests for localhost, 127.0.0.1 or [::1]")]
    ForbiddenHost {
        /// The Host header as sent.
        host: String,
    },
    /// A POST body that is not declared as JSON: `415`.
    #[error("the body must be JSON, sent with `Content-Type: application/json` (got {got:?})")]
    UnsupportedMediaType {
        /// The content type as sent (empty when there was none).
        got: String,
    },
    /// The body is larger than the configured limit: `413`.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive within the configured time: `408`.
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout {
        /// The limit in seconds.
        secs: u64,
    },
    /// Every worker is busy and the queue is full: `429` with `Retry-After`.
    #[error("the server is busy: all workers are generating and the queue is full; retry later")]
    QueueFull,
    /// No route for this path: `404`.
    #[error("no route for {path}")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The route exists but not for this method: `405`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The workers have stopped (the server is shutting down): `503`.
    #[error("the server is shutting down")]
    Unavailable,
    /// Something failed inside the server: `500`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A `400` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::UnknownModel { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ForbiddenHost { .. } => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::QueueFull => "rate_limit_error",
            ApiError::Unavailable | ApiError::Internal(_) => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `param` and `code` fields.
    fn param_and_code(&self) -> (Option<&str>, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { param, code, .. } => (param.as_deref(), *code),
            ApiError::UnknownModel { .. } => (Some("model"), Some("model_not_found")),
            ApiError::Unauthorized => (None, Some("invalid_api_key")),
            ApiError::ForbiddenHost { .. } => (None, Some("forbidden_host")),
            ApiError::UnsupportedMediaType { .. } => (None, Some("unsupported_media_type")),
            ApiError::PayloadTooLarge { .. } => (None, Some("payload_too_large")),
            ApiError::BodyTimeout { .. } => (None, Some("request_timeout")),
            ApiError::QueueFull => (None, Some("queue_full")),
            ApiError::NotFound { .. } => (None, Some("not_found")),
            ApiError::MethodNotAllowed => (None, Some("method_not_allowed")),
            ApiError::Unavailable => (None, Some("unavailable")),
            ApiError::Internal(_) => (None, None),
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (param, code) = self.param_and_code();
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": param,
                "code": code,
            }
        })
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let (message, code) = match error.classify() {
            Category::Data => (format!("invalid request: {error}"), "invalid_type"),
            Category::Io | Category::Syntax | Category::Eof => (
                format!("the body is not valid JSON: {error}"),
                "invalid_json",
            ),
        };
        ApiError::InvalidRequest {
            message,
            param: None,
            code: Some(code),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if self == ApiError::QueueFull {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self == ApiError::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
