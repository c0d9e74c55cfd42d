//! textstream-server: an OpenAI-compatible HTTP server that streams text from
//! a [`textstream_engine`] model.
//!
//! [`AppState`] holds the model, a continuous-batching scheduler (one loop
//! stepping every running request together, each with its own KV cache, the
//! weights read once per step for all) behind a bounded queue, and the
//! [`Metrics`]. [`app`] builds the routes; [`serve`] runs them on a listener
//! (HTTP/1.1, a connection cap, header and idle timeouts) until a shutdown
//! future resolves, letting streams in flight finish.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text) and
//! `GET /` (a chat page). Every error is an [`ApiError`], answered as
//! `{"error": {"message", "type", "param", "code"}}` with its status code.
//!
//! ```no_run
//! use std::sync::Arc;
//! use textstream_engine::model::Model;
//! use textstream_server::{serve, AppState, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Arc::new(Model::load("model.gguf".as_ref())?);
//! let state = AppState::new(model, ServerConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! serve(listener, state, shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod chat;
mod completions;
mod config;
mod error;
mod extract;
mod guard;
mod info;
mod metrics;
mod pool;
mod request;
mod respond;
mod serve;
mod state;
mod web;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

pub use config::{
    HostCheck, ServerConfig, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUE, DEFAULT_MODEL_NAME, DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SSE_KEEP_ALIVE, DEFAULT_WORKERS,
};
pub use error::{ApiError, RETRY_AFTER_SECS};
pub use metrics::{Metrics, TTFT_BUCKETS_SECS};
pub use request::{DEFAULT_MODEL_ALIAS, DEFAULT_TEMPERATURE};
pub use serve::serve;
pub use state::{AppState, PREPARE_AT_ONCE};

/// The routes, with the body limit, panic catching, status counting, the
/// API key on `/v1/*` and CORS as configured. The `Host` check runs when
/// `config.host_check` is [`HostCheck::Loopback`] ([`serve`] also turns it
/// on for [`HostCheck::Auto`] on a loopback listener).
pub fn app(state: AppState) -> Router {
    let check = state.config().host_check == HostCheck::Loopback;
    router(state, check)
}

fn router(state: AppState, check_host: bool) -> Router {
    let body_limit = state.config().max_body_bytes;
    let api = Router::new()
        .route("/v1/models", get(info::models))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::require_api_key,
        ));
    let mut router = Router::new()
        .route("/", get(web::index))
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .merge(api)
        .fallback(info::not_found)
        .method_not_allowed_fallback(info::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_panic| {
            ApiError::Internal("the request handler panicked".to_owned()).into_response()
        }));
    // `AppState::new` checked the origins.
    if let Ok(Some(cors)) = guard::cors(&state.config().cors_origins) {
        router = router.layer(cors);
    }
    if check_host {
        router = router.layer(middleware::from_fn(guard::loopback_host_only));
    }
    router
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .with_state(state)
}

/// Counts every response by status code for `/metrics`.
async fn count_status(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.metrics().record_status(response.status().as_u16());
    response
}
