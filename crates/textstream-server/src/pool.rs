//! The worker pool: OS threads that each own one [`Session`] (shared
//! weights, own KV cache) and take generation jobs from one bounded queue.
//!
//! Handlers never wait for a worker: [`WorkerPool::submit`] either queues the
//! job or answers [`ApiError::QueueFull`] at once. A job carries the
//! [`StreamProducer`] half of the request's token stream; when the client
//! leaves, the handler drops the consumer half, the next `put` fails and the
//! worker moves on to the next job within one token. A job whose client left
//! while it waited is skipped without running the model.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use textstream::{Closed, FinishReason, StreamProducer, Streamer};
use textstream_engine::generate::{generate, GenerateConfig};
use textstream_engine::model::{Model, Session};

use crate::error::ApiError;
use crate::metrics::Metrics;

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

/// The threads and the sending end of their queue. Dropping the pool closes
/// the queue: each worker finishes its job and exits.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    sender: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl WorkerPool {
    /// Starts `workers` threads (at least one) behind a queue of `max_queue` jobs.
    pub fn start(
        model: Arc<Model>,
        workers: usize,
        max_queue: usize,
        metrics: Arc<Metrics>,
        token_delay: Option<Duration>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(max_queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..workers.max(1) {
            let worker = Worker {
                model: Arc::clone(&model),
                receiver: Arc::clone(&receiver),
                metrics: Arc::clone(&metrics),
                token_delay,
            };
            std::thread::Builder::new()
                .name(format!("textstream-worker-{index}"))
                .spawn(move || worker.run())?;
        }
        Ok(Self { sender, metrics })
    }

    /// Queues `job`, or says why not at once.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before sending so a fast worker never takes it below zero.
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.sender.try_send(job).map_err(|error| {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match error {
                TrySendError::Full(_) => ApiError::QueueFull,
                TrySendError::Disconnected(_) => ApiError::Unavailable,
            }
        })
    }
}

/// What one worker thread owns.
struct Worker {
    model: Arc<Model>,
    receiver: Arc<Mutex<Receiver<Job>>>,
    metrics: Arc<Metrics>,
    token_delay: Option<Duration>,
}

impl Worker {
    /// Takes jobs until the queue closes.
    fn run(self) {
        let mut session = self.model.session();
        loop {
            // The lock is held only while waiting, so exactly one idle worker
            // waits on the queue and the others wait on the lock.
            let job = self
                .receiver
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .recv();
            let Ok(job) = job else { return };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.producer.is_consumer_gone() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.metrics.busy_workers.fetch_add(1, Ordering::Relaxed);
            let healthy = self.generate(&mut session, job);
            self.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
            if !healthy {
                // A panic may have left the KV cache half-written: start over.
                session = self.model.session();
            }
        }
    }

    /// Runs one job; false when it panicked. The producer is dropped here in
    /// every case, so a panic ends the client's stream with an error.
    fn generate(&self, session: &mut Session, job: Job) -> bool {
        let Job {
            prompt_ids,
            config,
            producer,
        } = job;
        let mut streamer = Paced {
            inner: producer,
            delay: self.token_delay,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            generate(session, &prompt_ids, &config, &mut streamer)
        }));
        match result {
            Ok(Ok(output)) => {
                let tokens = u64::try_from(output.tokens.len()).unwrap_or(u64::MAX);
                self.metrics
                    .tokens_generated
                    .fetch_add(tokens, Ordering::Relaxed);
                if output.consumer_gone {
                    self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Ok(Err(error)) => {
                // Already reported to the stream by `generate`.
                tracing::warn!(%error, "generation failed");
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                tracing::error!("generation panicked");
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The producer, optionally sleeping before each generated token (tests).
struct Paced {
    inner: StreamProducer,
    delay: Option<Duration>,
}

impl Streamer for Paced {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        self.inner.put(ids)
    }

    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        self.inner.put_token(id, logprob)
    }

    fn finish(&mut self, reason: FinishReason) {
        self.inner.finish(reason);
    }

    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        self.inner.fail(error);
    }
}
