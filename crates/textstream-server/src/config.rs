//! How the server is sized and named: [`ServerConfig`].

use std::time::Duration;

/// Requests that generate at once by default, stepped together by one
/// scheduler; their KV memory is bounded by the KV budget, not by this.
/// 64 lets 50 clients all start at once (the 50-client load's time to first
/// token p99: 0.40 s at 50, 5.0 s at 8); fewer give each stream more
/// tokens per second and the aggregate less.
pub const DEFAULT_WORKERS: usize = 64;

/// Requests that may wait for a free slot by default; one more gets `429`.
pub const DEFAULT_MAX_QUEUE: usize = 16;

/// Largest request body by default, in bytes (1 MiB): far more than any
/// prompt that fits a small model's context.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long streams may go on after shutdown begins, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection may take to send a request's head, counted from
/// its opening or from the end of its previous response, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request's body may take to arrive, by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections open at once by default; more wait to be accepted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// Silence after which a stream gets an SSE comment, by default.
pub const DEFAULT_SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

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
    /// Bytes of KV cache all requests may hold together (running ones and
    /// cached prefixes). A request runs only when its worst case (prompt
    /// plus `max_tokens`) fits; one that never could gets `400`. `None` by
    /// default: room for `workers` whole-context requests, at most a quarter
    /// of the memory available at start (see
    /// `textstream_engine::scheduler::default_kv_memory`).
    pub kv_memory: Option<u64>,
    /// Largest request body in bytes; larger ones get `413`.
    pub max_body_bytes: usize,
    /// The name listed by `/v1/models`; requests must name it or `"default"`.
    pub model_name: String,
    /// When set, every `/v1/*` request must carry `Authorization: Bearer
    /// KEY` (`401` otherwise); `/health`, `/metrics` and the chat page
    /// stay open. `None` by default.
    pub api_key: Option<String>,
    /// Origins whose web pages may call the API (CORS); `"*"` allows any.
    /// Empty by default: no CORS headers, so browsers keep other sites'
    /// pages from reading answers.
    pub cors_origins: Vec<String>,
    /// Which `Host` headers are answered; see [`HostCheck`].
    pub host_check: HostCheck,
    /// After shutdown begins, how long streams in flight may go on; then
    /// each still open ends with an error event (non-streamed answers with
    /// `503`). By default, [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// A connection that has not sent a whole request head within this
    /// time, counted from its opening or from the end of its previous
    /// response, is closed: this is both the header read timeout (slow
    /// clients holding sockets) and the keep-alive idle timeout. By
    /// default, [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// A request whose body has not wholly arrived within this time, from
    /// when the handler starts reading it, gets `408`. By default,
    /// [`DEFAULT_BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// Connections [`crate::serve`] keeps open at once; at the cap it
    /// accepts no more until one closes (the rest wait in the listen
    /// backlog). At least 1. By default, [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// A stream that has sent nothing for this long (waiting in the queue,
    /// a long prompt) gets an SSE comment line, so that proxies and clients
    /// do not take it for dead. By default, [`DEFAULT_SSE_KEEP_ALIVE`].
    pub sse_keep_alive: Duration,
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
            kv_memory: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            model_name: DEFAULT_MODEL_NAME.to_owned(),
            api_key: None,
            cors_origins: Vec::new(),
            host_check: HostCheck::Auto,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            sse_keep_alive: DEFAULT_SSE_KEEP_ALIVE,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            token_delay: None,
        }
    }
}

/// Which `Host` headers the server answers. A page on another site can
/// rebind its own host name to 127.0.0.1 (DNS rebinding) and then read a
/// loopback server's answers as same-origin; checking `Host` stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostCheck {
    /// [`crate::serve`] checks when its listener is bound to a loopback
    /// address and not otherwise; [`crate::app`] alone does not check.
    #[default]
    Auto,
    /// Only `localhost`, `127.0.0.0/8` and `[::1]` (any port), or no `Host`
    /// at all; others get `403`.
    Loopback,
    /// Any `Host` (behind a reverse proxy that sends its public name, or
    /// bound to a public address).
    Any,
}
