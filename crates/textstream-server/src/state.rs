//! What every handler shares: [`AppState`] (model, detokenizer, config,
//! the batching scheduler, metrics), cheap to clone.

use std::sync::Arc;

use textstream::Detokenizer;
use textstream_engine::model::Model;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pool::Batcher;

/// Requests prepared (templated and tokenized) at once: a few, so that a
/// burst of huge prompts queues here instead of taking every core.
pub const PREPARE_AT_ONCE: usize = 4;

/// The server's shared state: one model, its scheduler and counters.
///
/// Dropping the last clone closes the job queue; the scheduler finishes the
/// running requests and exits.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    model: Arc<Model>,
    /// Built once with the model; each stream clones the handle.
    detokenizer: Detokenizer,
    config: ServerConfig,
    pool: Batcher,
    metrics: Arc<Metrics>,
    /// Requests templated and tokenized at once, on the blocking pool.
    preparing: tokio::sync::Semaphore,
    /// Turns true when the shutdown timeout has run out: open streams end.
    closing: tokio::sync::watch::Sender<bool>,
    /// The vocabulary's longest token in bytes (see
    /// `GgufTokenizer::longest_token_bytes`).
    longest_token_bytes: usize,
}

impl AppState {
    /// Starts the scheduler for `model`, running up to `config.workers`
    /// requests at once.
    ///
    /// # Errors
    ///
    /// When a CORS origin is not a valid origin (`InvalidInput`), or the
    /// operating system cannot start a thread.
    pub fn new(model: Arc<Model>, config: ServerConfig) -> std::io::Result<Self> {
        crate::guard::cors(&config.cors_origins)
            .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
        if config.max_connections == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "max_connections must be at least 1",
            ));
        }
        let metrics = Arc::new(Metrics::default());
        let longest_token_bytes = model.tokenizer().longest_token_bytes();
        let pool = Batcher::start(
            Arc::clone(&model),
            config.workers,
            config.max_queue,
            config.kv_memory,
            Arc::clone(&metrics),
            config.token_delay,
        )?;
        Ok(Self {
            inner: Arc::new(Shared {
                detokenizer: model.detokenizer(),
                model,
                config,
                pool,
                metrics,
                preparing: tokio::sync::Semaphore::new(PREPARE_AT_ONCE),
                closing: tokio::sync::watch::Sender::new(false),
                longest_token_bytes,
            }),
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// Runs `work` (templating, tokenizing: a megabyte prompt takes a
    /// while) on tokio's blocking pool, at most [`PREPARE_AT_ONCE`] at a
    /// time, so that it never stalls the async threads that carry every
    /// other stream.
    pub(crate) async fn prepare<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Model) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .inner
            .preparing
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable)?;
        let model = Arc::clone(&self.inner.model);
        tokio::task::spawn_blocking(move || work(&model))
            .await
            .map_err(|error| ApiError::Internal(format!("preparing the prompt failed: {error}")))?
    }

    /// The vocabulary's longest token in bytes: no token covers more text.
    pub(crate) fn longest_token_bytes(&self) -> usize {
        self.inner.longest_token_bytes
    }

    /// A receiver that turns true when open streams must end.
    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Ends every open stream (with an error event) and refuses new ones:
    /// what [`crate::serve`] does when the shutdown timeout runs out.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The settings the server was started with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub(crate) fn detokenizer(&self) -> Detokenizer {
        self.inner.detokenizer.clone()
    }

    pub(crate) fn pool(&self) -> &Batcher {
        &self.inner.pool
    }
}
