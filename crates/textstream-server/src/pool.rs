//! Generation for every request through one continuous-batching
//! [`Scheduler`]: its loop steps all running requests together, each
//! forward pass reading the weights once for all of them
//! (`ServerConfig::workers` of them at most; the rest wait in a bounded
//! queue).
//!
//! Handlers never wait: [`Batcher::submit`] either queues the job or answers
//! [`ApiError::QueueFull`] at once. A job carries the [`StreamProducer`]
//! half of the request's token stream; when the client leaves, the handler
//! drops the consumer half, the next `put` fails and the scheduler drops the
//! sequence within one step. A job whose client left while it waited is
//! dropped when its turn comes, without running the model.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use textstream::{Closed, FinishReason, StreamProducer, Streamer};
use textstream_engine::generate::GenerateConfig;
use textstream_engine::model::Model;
use textstream_engine::scheduler::{Scheduler, SchedulerConfig, SchedulerStats, SubmitError};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Tokens one scheduler step runs at most: every running request's next
/// token, then prompt chunks up to this (a long prompt is prefilled over
/// several steps instead of stalling the others' streams for its length).
const STEP_TOKENS: usize = 256;

/// One request's generation.
#[derive(Debug)]
pub(crate) struct Job {
    /// The whole prompt, tokenized.
    pub prompt_ids: Vec<u32>,
    /// Length limit and sampling.
    pub config: GenerateConfig,
    /// Where the tokens go; the handler holds the other end.
    pub producer: StreamProducer,
}

/// The scheduler and the counters it keeps. Dropping it closes the queue:
/// the running requests finish, then the loop exits.
#[derive(Debug)]
pub(crate) struct Batcher {
    scheduler: Scheduler,
    metrics: Arc<Metrics>,
    token_delay: Option<Duration>,
}

impl Batcher {
    /// Starts the scheduler: `max_batch` requests at once (at least one),
    /// `max_queue` more waiting, `kv_memory` bytes of KV cache in all
    /// (`None`: the scheduler's default).
    pub fn start(
        model: Arc<Model>,
        max_batch: usize,
        max_queue: usize,
        kv_memory: Option<u64>,
        metrics: Arc<Metrics>,
        token_delay: Option<Duration>,
    ) -> std::io::Result<Self> {
        let config = SchedulerConfig {
            max_batch: max_batch.max(1),
            max_waiting: max_queue.max(1),
            step_tokens: STEP_TOKENS,
            kv_memory,
        };
        let scheduler = Scheduler::new(model, config).map_err(std::io::Error::other)?;
        Ok(Self {
            scheduler,
            metrics,
            token_delay,
        })
    }

    /// What the scheduler is doing.
    pub fn stats(&self) -> &SchedulerStats {
        self.scheduler.stats()
    }

    /// Queues `job`, or says why not at once.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before sending so a fast scheduler never takes it below zero.
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let streamer = Metered {
            inner: job.producer,
            delay: self.token_delay,
            metrics: Arc::clone(&self.metrics),
            admitted: false,
            released: false,
        };
        let submitted = self
            .scheduler
            .submit(job.prompt_ids, job.config, Box::new(streamer));
        // The result also reaches the stream; the counters are kept by `Metered`.
        submitted.map(drop).map_err(|error| match error {
            SubmitError::QueueFull => ApiError::QueueFull,
            SubmitError::Stopped => ApiError::Unavailable,
            SubmitError::TooLarge {
                positions,
                needed,
                budget,
            } => ApiError::InvalidRequest {
                message: format!(
                    "this request needs up to {} MiB of KV cache ({positions} tokens: the prompt \
                     and max_tokens), more than the server's whole KV memory of {} MiB \
                     (--kv-memory): lower max_tokens or shorten the prompt",
                    needed.div_ceil(1 << 20),
                    budget >> 20
                ),
                param: Some("max_tokens".to_owned()),
                code: Some("kv_memory_exceeded"),
            },
        })
    }
}

/// The producer, counting what happens to its request for `/metrics`, and
/// optionally sleeping before each generated token (tests).
struct Metered {
    inner: StreamProducer,
    delay: Option<Duration>,
    metrics: Arc<Metrics>,
    /// The scheduler started the request (its prompt was put).
    admitted: bool,
    /// The request no longer counts as queued or busy: it ended (its
    /// streamer finished or failed, or was dropped).
    released: bool,
}

impl Metered {
    /// Before each generated token: the test delay, the token count.
    fn before_token(&self) {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        self.metrics
            .tokens_generated
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The request leaves the queue's count or the busy workers' once: when
    /// it ends, before its client can see the end (dropping the streamer
    /// came after the response was complete, so `/metrics` read right after
    /// it could still count the request as busy), or when dropped unended.
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        match self.admitted {
            true => self.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed),
            false => self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed),
        };
    }

    fn count_closed(&self, result: Result<(), Closed>) -> Result<(), Closed> {
        if let Err(Closed::ConsumerGone | Closed::Ended) = result {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Streamer for Metered {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        if !self.admitted {
            // The prompt: the request left the queue and runs.
            self.admitted = true;
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics.busy_workers.fetch_add(1, Ordering::Relaxed);
        }
        let result = self.inner.put(ids);
        self.count_closed(result)
    }

    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        self.before_token();
        let result = self.inner.put_token(id, logprob);
        self.count_closed(result)
    }

    fn put_scored(&mut self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Result<(), Closed> {
        self.before_token();
        let result = self.inner.put_scored(id, logprob, top);
        self.count_closed(result)
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn finish(&mut self, reason: FinishReason) {
        self.release();
        self.inner.finish(reason);
    }

    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        tracing::warn!(%error, "generation failed");
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        self.release();
        self.inner.fail(error);
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The scheduler drops a request's streamer when it ends, or never
        // started it (a bad request, a shutdown).
        self.release();
    }
}
