//! Continuous batching: one loop on its own thread owns a model and steps
//! every running sequence together.
//!
//! Each step is one [`Session::forward_batch`]: a decode token for every
//! sequence past its prompt, and the rest of a per-step token budget filled
//! with prompt chunks of the sequences still prefilling (chunked prefill: a
//! long prompt never stalls the streams already running). Requests join at
//! the next step; a sequence leaves as soon as it ends: a stop id, its token
//! limit, an error, or a streamer that answers [`textstream::Closed`] (the
//! consumer left, or a stop string matched), which frees its slot within one
//! step. A panic in a step ends the sequences then running with an error;
//! the loop goes on.
//!
//! Sessions of ended sequences are kept (one per slot) with their KV caches:
//! a request whose prompt begins with what one of them ran (the earlier
//! turns of a chat, a shared system prompt) takes that session and starts
//! past the common prefix, so a follow-up turn costs only its new tokens.
//!
//! A sequence behaves exactly as [`crate::generate::generate`] would run it
//! alone, token for token: the same validation, prompt put, sampling (its own
//! [`Sampler`] and seed), stop ids and finish reasons, and — because a
//! batched forward pass gives each sequence bit for bit its own logits — the
//! same tokens whatever else runs beside it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use textstream::{FinishReason, Streamer};

use crate::generate::{
    closed_reason, for_streamer, validate, GenerateConfig, GenerateOutput, Timings,
};
use crate::model::{Model, Session};
use crate::models::PROMPT_CHUNK;
use crate::sampling::Sampler;
use crate::EngineError;

/// How a [`Scheduler`] shares its model between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences that run at once; more wait in the queue. Each running
    /// sequence holds a KV cache of the model's context.
    pub max_batch: usize,
    /// Requests that may wait for a slot beyond those running;
    /// [`Scheduler::submit`] refuses more with [`SubmitError::QueueFull`].
    pub max_waiting: usize,
    /// Tokens one step runs at most: every decoding sequence's one token,
    /// then prompt chunks up to this.
    pub step_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_waiting: 64,
            step_tokens: 256,
        }
    }
}

/// Why [`Scheduler::submit`] did not take a request.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds [`SchedulerConfig::max_waiting`] requests already.
    #[error("the queue is full: try again later")]
    QueueFull,
    /// The scheduler's loop has ended.
    #[error("the scheduler has stopped")]
    Stopped,
}

/// What a request's submitter gets back when its sequence ends.
pub type Finished = Receiver<Result<GenerateOutput, EngineError>>;

/// What a [`Scheduler`] is doing, updated by its loop (for `/metrics`).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    running: AtomicU64,
    steps: AtomicU64,
    step_sequences: AtomicU64,
    step_tokens: AtomicU64,
    last_sequences: AtomicU64,
    reused_tokens: AtomicU64,
    abandoned: AtomicU64,
}

impl SchedulerStats {
    /// Sequences running now (holding a session).
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Forward passes so far.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// Sequences summed over every pass (÷ [`Self::steps`]: the mean batch).
    pub fn step_sequences(&self) -> u64 {
        self.step_sequences.load(Ordering::Relaxed)
    }

    /// Tokens summed over every pass, prompt chunks included.
    pub fn step_tokens(&self) -> u64 {
        self.step_tokens.load(Ordering::Relaxed)
    }

    /// Sequences in the latest pass.
    pub fn last_sequences(&self) -> u64 {
        self.last_sequences.load(Ordering::Relaxed)
    }

    /// Prompt tokens not run again because a session still held them
    /// (prefix-cache hits, in tokens).
    pub fn reused_tokens(&self) -> u64 {
        self.reused_tokens.load(Ordering::Relaxed)
    }

    /// Sequences ended while still reading their prompt because their
    /// consumer had left.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }
}

/// One request: what [`crate::generate::generate`] takes.
struct Request {
    prompt_ids: Vec<u32>,
    config: GenerateConfig,
    streamer: Box<dyn Streamer + Send>,
    done: Sender<Result<GenerateOutput, EngineError>>,
}

/// Steps many sequences of one model together on its own thread (see the
/// module docs). Dropping it lets the running sequences finish, then ends
/// the loop.
pub struct Scheduler {
    requests: Option<SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<SchedulerStats>,
}

impl Scheduler {
    /// Starts the loop for `model`.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidConfig`] for a batch, queue or step budget of 0.
    pub fn new(model: Arc<Model>, config: SchedulerConfig) -> Result<Self, EngineError> {
        for (field, value) in [
            ("max_batch", config.max_batch),
            ("max_waiting", config.max_waiting),
            ("step_tokens", config.step_tokens),
        ] {
            if value == 0 {
                return Err(EngineError::InvalidConfig {
                    field,
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        let (requests, inbox) = mpsc::sync_channel(config.max_waiting);
        let stats = Arc::new(SchedulerStats::default());
        let shared = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("textstream-scheduler".to_owned())
            .spawn(move || Loop::new(model, config, inbox, shared).run())
            .map_err(|e| EngineError::Inference {
                message: format!("cannot start the scheduler's thread: {e}"),
            })?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
            stats,
        })
    }

    /// What the loop is doing.
    pub fn stats(&self) -> &Arc<SchedulerStats> {
        &self.stats
    }

    /// Queues a generation of `prompt_ids` into `streamer`, as
    /// [`crate::generate::generate`] would run it; the receiver gets its
    /// result when it ends (errors are also reported to the streamer).
    pub fn submit(
        &self,
        prompt_ids: Vec<u32>,
        config: GenerateConfig,
        streamer: Box<dyn Streamer + Send>,
    ) -> Result<Finished, SubmitError> {
        let (done, finished) = mpsc::channel();
        let request = Request {
            prompt_ids,
            config,
            streamer,
            done,
        };
        let requests = self.requests.as_ref().ok_or(SubmitError::Stopped)?;
        match requests.try_send(request) {
            Ok(()) => Ok(finished),
            Err(TrySendError::Full(_)) => Err(SubmitError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// A running sequence.
struct Running {
    request: Request,
    session: Session,
    sampler: Sampler,
    /// Prompt tokens already run.
    fed: usize,
    tokens: Vec<u32>,
    history: Vec<u32>,
    stop_ids: Vec<u32>,
    timings: Timings,
    started: Instant,
    decode_started: Option<Instant>,
}

impl Running {
    fn pos(&self) -> usize {
        self.fed + self.tokens.len().saturating_sub(1)
    }
}

/// The scheduler's thread.
struct Loop {
    model: Arc<Model>,
    config: SchedulerConfig,
    inbox: Receiver<Request>,
    waiting: VecDeque<Request>,
    running: Vec<Running>,
    /// Sessions of ended sequences, kept for the next ones (at most
    /// `max_batch` sessions in all, running or idle).
    idle: Vec<Session>,
    open: bool,
    stats: Arc<SchedulerStats>,
}

impl Loop {
    fn new(
        model: Arc<Model>,
        config: SchedulerConfig,
        inbox: Receiver<Request>,
        stats: Arc<SchedulerStats>,
    ) -> Self {
        Self {
            model,
            config,
            inbox,
            waiting: VecDeque::new(),
            running: Vec::new(),
            idle: Vec::new(),
            open: true,
            stats,
        }
    }

    fn run(mut self) {
        while self.open || !self.running.is_empty() || !self.waiting.is_empty() {
            self.receive();
            let stepped = catch_unwind(AssertUnwindSafe(|| {
                self.admit();
                if !self.running.is_empty() {
                    self.step();
                }
            }));
            self.stats
                .running
                .store(self.running.len() as u64, Ordering::Relaxed);
            if stepped.is_err() {
                // The running sequences' state is unknown: end them with an
                // error, and go on serving the others.
                for mut seq in self.running.drain(..) {
                    let error = || EngineError::Inference {
                        message: "the scheduler's step panicked".to_owned(),
                    };
                    seq.request.streamer.fail(Box::new(error()));
                    let _ = seq.request.done.send(Err(error()));
                }
            }
        }
    }

    /// Takes as many arrived requests as there are free slots (the rest
    /// wait in the bounded channel); waits for one when nothing runs.
    fn receive(&mut self) {
        if self.running.is_empty() && self.waiting.is_empty() && self.open {
            match self.inbox.recv() {
                Ok(request) => self.waiting.push_back(request),
                Err(_) => self.open = false,
            }
        }
        while self.open && self.running.len() + self.waiting.len() < self.config.max_batch {
            match self.inbox.try_recv() {
                Ok(request) => self.waiting.push_back(request),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => self.open = false,
            }
        }
    }

    /// Starts waiting requests while there are free slots.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some(mut request) = self.waiting.pop_front() else {
                break;
            };
            let started = Instant::now();
            // The idle session holding the longest reusable prefix of the
            // prompt (an earlier turn of the same chat, a shared system
            // prompt): the sequence starts past it.
            // Among equals, the one whose cache loses least; while slots
            // remain, a new session rather than one whose cache would lose
            // more than it gives (another conversation may come back to it).
            let best = self
                .idle
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let reuse = s.reusable_prefix(&request.prompt_ids);
                    (i, reuse, s.cached_tokens() - reuse)
                })
                .max_by_key(|&(_, reuse, lost)| (reuse, std::cmp::Reverse(lost)));
            let room = self.running.len() + self.idle.len() < self.config.max_batch;
            let session = match best {
                Some((i, reuse, lost)) if reuse >= lost || !room => self.idle.swap_remove(i),
                _ => self.model.session(),
            };
            let reused = session.reusable_prefix(&request.prompt_ids);
            let admitted = validate(&session, &request.prompt_ids, &request.config)
                .and_then(|()| Sampler::new(request.config.sampling.clone()));
            let sampler = match admitted {
                Ok(sampler) => sampler,
                Err(error) => {
                    request.streamer.fail(Box::new(for_streamer(&error)));
                    let _ = request.done.send(Err(error));
                    self.idle.push(session);
                    continue;
                }
            };
            let timings = Timings {
                prompt_tokens: request.prompt_ids.len(),
                ..Timings::default()
            };
            if let Err(closed) = request.streamer.put(&request.prompt_ids) {
                let (finish_reason, consumer_gone) = closed_reason(&closed);
                let _ = request.done.send(Ok(GenerateOutput {
                    tokens: Vec::new(),
                    finish_reason,
                    consumer_gone,
                    timings,
                }));
                self.idle.push(session);
                continue;
            }
            let stop_ids = match request.config.ignore_stop_ids {
                true => Vec::new(),
                false => session.stop_ids().to_vec(),
            };
            self.stats
                .reused_tokens
                .fetch_add(reused as u64, Ordering::Relaxed);
            self.running.push(Running {
                history: request.prompt_ids.clone(),
                request,
                session,
                sampler,
                fed: reused,
                tokens: Vec::new(),
                stop_ids,
                timings,
                started,
                decode_started: None,
            });
        }
    }

    /// Ends the sequences still reading their prompt whose consumer has
    /// left: their slot is free for the next step, not after the prompt.
    fn drop_abandoned(&mut self) {
        let running = std::mem::take(&mut self.running);
        for mut seq in running {
            if seq.fed < seq.request.prompt_ids.len() && seq.request.streamer.is_closed() {
                let (finish_reason, consumer_gone) =
                    closed_reason(&textstream::Closed::ConsumerGone);
                seq.timings.prefill = seq.started.elapsed();
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                let _ = seq.request.done.send(Ok(GenerateOutput {
                    tokens: Vec::new(),
                    finish_reason,
                    consumer_gone,
                    timings: seq.timings,
                }));
                self.idle.push(seq.session);
            } else {
                self.running.push(seq);
            }
        }
    }

    /// One forward pass of every running sequence, then each one's token.
    fn step(&mut self) {
        self.drop_abandoned();
        if self.running.is_empty() {
            return;
        }
        // Decoding sequences first (one token each), then prompt chunks in
        // the order the sequences arrived, within the step's budget.
        let mut budget = self.config.step_tokens;
        // Per running sequence, its ids and their first position in this pass.
        let mut inputs: Vec<Option<(Vec<u32>, usize)>> = vec![None; self.running.len()];
        for (seq, input) in self.running.iter().zip(&mut inputs) {
            if seq.fed == seq.request.prompt_ids.len() {
                let last = *seq.tokens.last().expect("a decoding sequence has a token");
                *input = Some((vec![last], seq.pos()));
                budget = budget.saturating_sub(1);
            }
        }
        let mut any = inputs.iter().any(Option::is_some);
        for (seq, input) in self.running.iter().zip(&mut inputs) {
            let prompt = &seq.request.prompt_ids;
            if seq.fed < prompt.len() && (budget > 0 || !any) {
                let take = (prompt.len() - seq.fed)
                    .min(PROMPT_CHUNK)
                    .min(budget.max(1));
                *input = Some((prompt[seq.fed..seq.fed + take].to_vec(), seq.fed));
                budget = budget.saturating_sub(take);
                any = true;
            }
        }
        let sequences = inputs.iter().flatten().count() as u64;
        let tokens: usize = inputs.iter().flatten().map(|(ids, _)| ids.len()).sum();
        let stats = &self.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats.step_sequences.fetch_add(sequences, Ordering::Relaxed);
        stats
            .step_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        stats.last_sequences.store(sequences, Ordering::Relaxed);
        let mut steps: Vec<(&mut Session, &[u32], usize)> = self
            .running
            .iter_mut()
            .zip(&inputs)
            .filter_map(|(seq, input)| {
                let (ids, pos) = input.as_ref()?;
                Some((&mut seq.session, &ids[..], *pos))
            })
            .collect();
        let results = Session::forward_batch(&mut steps);
        drop(steps);
        // (running index, tokens run) of each sequence in the pass.
        let ran: Vec<(usize, usize)> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, input)| input.as_ref().map(|(ids, _)| (i, ids.len())))
            .collect();
        let mut ended = vec![false; self.running.len()];
        match results {
            Ok(logits) => {
                for (&(i, count), mut logits) in ran.iter().zip(logits) {
                    let seq = &mut self.running[i];
                    if seq.fed < seq.request.prompt_ids.len() {
                        seq.fed += count;
                        if seq.fed < seq.request.prompt_ids.len() {
                            continue;
                        }
                        seq.timings.prefill = seq.started.elapsed();
                        seq.decode_started = Some(Instant::now());
                    } else {
                        seq.timings.decode_steps += 1;
                    }
                    ended[i] = Self::pick(seq, &mut logits);
                }
            }
            Err(error) => {
                // A failed pass fails every sequence in it.
                for &(i, _) in &ran {
                    let seq = &mut self.running[i];
                    seq.session.reset();
                    seq.request.streamer.fail(Box::new(for_streamer(&error)));
                    let _ = seq.request.done.send(Err(for_streamer(&error)));
                    ended[i] = true;
                }
            }
        }
        for (i, seq) in std::mem::take(&mut self.running).into_iter().enumerate() {
            match ended[i] {
                // Its cache stays: a later prompt may begin with its tokens.
                true => self.idle.push(seq.session),
                false => self.running.push(seq),
            }
        }
    }

    /// Samples `seq`'s next token from `logits` and puts it; whether the
    /// sequence has ended (its result then sent).
    fn pick(seq: &mut Running, logits: &mut [f32]) -> bool {
        let picked = match seq.sampler.sample(logits, &seq.history) {
            Ok(picked) => picked,
            Err(error) => {
                seq.request.streamer.fail(Box::new(for_streamer(&error)));
                let _ = seq.request.done.send(Err(error));
                return true;
            }
        };
        if seq.tokens.is_empty() {
            seq.timings.ttft = seq.started.elapsed();
        }
        let end = if seq.stop_ids.contains(&picked.id) {
            seq.request.streamer.finish(FinishReason::Stop);
            Some((FinishReason::Stop, false))
        } else {
            seq.tokens.push(picked.id);
            seq.history.push(picked.id);
            match seq
                .request
                .streamer
                .put_scored(picked.id, picked.logprob, &picked.top)
            {
                Err(closed) => Some(closed_reason(&closed)),
                Ok(()) if seq.tokens.len() >= seq.request.config.max_new_tokens => {
                    seq.request.streamer.finish(FinishReason::Length);
                    Some((FinishReason::Length, false))
                }
                Ok(()) => None,
            }
        };
        let Some((finish_reason, consumer_gone)) = end else {
            return false;
        };
        seq.timings.decode = seq.decode_started.map(|t| t.elapsed()).unwrap_or_default();
        seq.timings.generated = seq.tokens.len();
        let _ = seq.request.done.send(Ok(GenerateOutput {
            tokens: std::mem::take(&mut seq.tokens),
            finish_reason,
            consumer_gone,
            timings: seq.timings,
        }));
        true
    }
}
