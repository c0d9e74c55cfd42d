//! The read-only routes: `GET /health`, `GET /metrics`, `GET /v1/models`,
//! and the JSON answers for unknown routes and methods.

use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics::render_scheduler;
use crate::state::AppState;

/// Prometheus' text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /health`: the server is up and its model loaded.
pub(crate) async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "model": state.config().model_name}))
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.metrics().render() + &render_scheduler(state.pool().stats()),
    )
}

/// `GET /v1/models`: the one model served.
pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config().model_name,
            "object": "model",
            "created": 0,
            "owned_by": "textstream",
        }],
    }))
}

/// Any other path.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        path: uri.path().to_owned(),
    }
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
