//! How the server is sized and named: [`ServerConfig`].

use std::time::Duration;

/// Requests that generate at once by default, stepped together by one
/// scheduler (each holds one KV cache of the model's context).
pub const DEFAULT_WORKERS: usize = 8;

/// Requests that may wait for a free slot by default; one more gets `429`.
pub const DEFAULT_MAX_QUEUE: usize = 16;

/// Largest request body by default, in bytes (1 MiB): far more than any
/// prompt that fits a small model's context.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The model name the server answers to by default (besides `"default"`).
pub const DEFAULT_MODEL_NAME: &str = "textstream";

/// Server settings. By default, [`DEFAULT_WORKERS`] workers, a queue of
/// [`DEFAULT_MAX_QUEUE`] requests, bodies up to [`DEFAULT_MAX_BODY_BYTES`]
/// and the model name [`DEFAULT_MODEL_NAME`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests that generate at once, all in each forward pass of the
    /// scheduler (continuous batching); at least 1. (The name is from when
    /// each was a worker thread of its own.)
    pub workers: usize,
    /// Requests that may wait for a free slot; when it is full, new
    /// requests get `429 Too Many Requests` with `Retry-After`.
    pub max_queue: usize,
    /// Largest request body in bytes; larger ones get `413`.
    pub max_body_bytes: usize,
    /// The name listed by `/v1/models`; requests must name it or `"default"`.
    pub model_name: String,
    /// Sleeps this long before each generated token. Only for tests that
    /// need a generation to last (queueing, cancellation); `None` by default.
    #[doc(hidden)]
    pub token_delay: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WORKERS,
            max_queue: DEFAULT_MAX_QUEUE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            model_name: DEFAULT_MODEL_NAME.to_owned(),
            token_delay: None,
        }
    }
}
