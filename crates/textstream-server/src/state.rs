//! What every handler shares: [`AppState`] (model, detokenizer, config,
//! the batching scheduler, metrics), cheap to clone.

use std::sync::Arc;

use textstream::Detokenizer;
use textstream_engine::model::Model;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::pool::Batcher;

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
}

impl AppState {
    /// Starts the scheduler for `model`, running up to `config.workers`
    /// requests at once.
    ///
    /// # Errors
    ///
    /// When the operating system cannot start a thread.
    pub fn new(model: Arc<Model>, config: ServerConfig) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let pool = Batcher::start(
            Arc::clone(&model),
            config.workers,
            config.max_queue,
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
            }),
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
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
