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
//! KV memory has a budget ([`SchedulerConfig::kv_memory`]), counted in the
//! blocks caches grow by (16 positions of one layer). A request is admitted
//! only when its worst case (prompt plus `max_new_tokens` positions) fits
//! beside what the running sequences may still take, so a running sequence
//! never runs out; until then it waits, in arrival order. A request whose
//! worst case exceeds the whole budget is refused by [`Scheduler::submit`].
//!
//! Prefix cache: sessions of ended sequences are kept with their KV caches
//! (up to `max_batch` of them, least recently used evicted first, and
//! evicted sooner when a new request needs their memory). A request whose
//! prompt begins with what a session holds (the earlier turns of a chat, a
//! system prompt shared by many conversations) starts past the common
//! prefix: it takes an idle session whose cache it continues, or else gets
//! a copy of the blocks holding that prefix from any session, idle or
//! running. A follow-up turn costs only its new tokens.
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
    /// Bytes of KV cache all sessions may hold together, running and idle;
    /// `None`: [`default_kv_memory`]. (Unbounded for candle's backend, whose
    /// caches are not counted.)
    pub kv_memory: Option<u64>,
}

/// The KV budget when none is given: room for `max_batch` sequences of the
/// model's whole context, but at most a quarter of the memory available at
/// start (and at least one whole-context sequence, which loading checked fits).
pub fn default_kv_memory(model: &Model, max_batch: usize) -> Option<u64> {
    let full = model.kv_bytes(model.context_length())?;
    let wanted = full.saturating_mul(max_batch as u64);
    Some(match crate::model::available_memory_bytes() {
        Some(available) => wanted.min(available / 4).max(full),
        None => wanted,
    })
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_waiting: 64,
            step_tokens: 256,
            kv_memory: None,
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
    /// The request's worst case (its prompt and `max_new_tokens`) needs
    /// more KV memory than the whole budget: it could never run.
    #[error(
        "the request needs up to {} MiB of KV cache ({positions} positions: the prompt and \
         max_new_tokens), more than the budget of {} MiB (kv_memory); shorten it or raise the budget",
        needed.div_ceil(1 << 20),
        budget >> 20
    )]
    TooLarge {
        /// Positions of its worst case.
        positions: usize,
        /// Bytes they take.
        needed: u64,
        /// The scheduler's budget in bytes.
        budget: u64,
    },
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
    waiting: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_copies: AtomicU64,
    memory_waits: AtomicU64,
    kv_budget: AtomicU64,
    kv_block: AtomicU64,
    kv_held: AtomicU64,
    kv_reserved: AtomicU64,
    kv_peak: AtomicU64,
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

    /// Requests the loop holds, waiting for a slot or for KV memory.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests that started past a cached prefix (prefix-cache hits).
    pub fn prefix_hits(&self) -> u64 {
        self.prefix_hits.load(Ordering::Relaxed)
    }

    /// Of [`Self::prefix_hits`], those that got a copy of another
    /// session's blocks rather than continuing an idle session.
    pub fn prefix_copies(&self) -> u64 {
        self.prefix_copies.load(Ordering::Relaxed)
    }

    /// Times the next request waited because its worst case did not fit
    /// in the KV memory left.
    pub fn memory_waits(&self) -> u64 {
        self.memory_waits.load(Ordering::Relaxed)
    }

    /// The KV budget in bytes (0 when not counted: candle's backend).
    pub fn kv_budget_bytes(&self) -> u64 {
        self.kv_budget.load(Ordering::Relaxed)
    }

    /// Bytes of one KV block (0 when not counted).
    pub fn kv_block_bytes(&self) -> u64 {
        self.kv_block.load(Ordering::Relaxed)
    }

    /// Bytes of KV cache held now by all sessions, running and idle.
    pub fn kv_held_bytes(&self) -> u64 {
        self.kv_held.load(Ordering::Relaxed)
    }

    /// Bytes held or promised: idle sessions' caches and each running
    /// sequence's worst case. At most the budget; the rest is free.
    pub fn kv_reserved_bytes(&self) -> u64 {
        self.kv_reserved.load(Ordering::Relaxed)
    }

    /// The most KV bytes held at once, checked after every step.
    pub fn kv_peak_bytes(&self) -> u64 {
        self.kv_peak.load(Ordering::Relaxed)
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
    model: Arc<Model>,
    /// The KV budget in bytes; `None` when caches are not counted.
    budget: Option<u64>,
}

impl Scheduler {
    /// Starts the loop for `model`.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidConfig`] for a batch, queue or step budget of
    /// 0, or a KV budget too small for a one-token sequence.
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
        let budget = match config.kv_memory {
            Some(bytes) => model.kv_bytes(1).map(|_| bytes),
            None => default_kv_memory(&model, config.max_batch),
        };
        if let (Some(budget), Some(least)) = (budget, model.kv_bytes(1)) {
            if budget < least {
                return Err(EngineError::InvalidConfig {
                    field: "kv_memory",
                    reason: format!(
                        "{budget} bytes cannot hold one position of every layer ({least} bytes)"
                    ),
                });
            }
        }
        let (requests, inbox) = mpsc::sync_channel(config.max_waiting);
        let stats = Arc::new(SchedulerStats::default());
        stats
            .kv_budget
            .store(budget.unwrap_or(0), Ordering::Relaxed);
        stats
            .kv_block
            .store(model.kv_block_bytes().unwrap_or(0), Ordering::Relaxed);
        let shared = Arc::clone(&stats);
        let looped = Arc::clone(&model);
        let thread = std::thread::Builder::new()
            .name("textstream-scheduler".to_owned())
            .spawn(move || Loop::new(looped, config, budget, inbox, shared).run())
            .map_err(|e| EngineError::Inference {
                message: format!("cannot start the scheduler's thread: {e}"),
            })?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
            stats,
            model,
            budget,
        })
    }

    /// What the loop is doing.
    pub fn stats(&self) -> &Arc<SchedulerStats> {
        &self.stats
    }

    /// The KV budget in bytes (`None` when caches are not counted).
    pub fn kv_budget(&self) -> Option<u64> {
        self.budget
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
        let positions = worst_positions(&self.model, prompt_ids.len(), &config);
        if let (Some(budget), Some(needed)) = (self.budget, self.model.kv_bytes(positions)) {
            if needed > budget {
                return Err(SubmitError::TooLarge {
                    positions,
                    needed,
                    budget,
                });
            }
        }
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

/// Positions a request may write: its prompt and every token it may
/// generate, within the context (a longer one fails validation).
fn worst_positions(model: &Model, prompt: usize, config: &GenerateConfig) -> usize {
    prompt
        .saturating_add(config.max_new_tokens)
        .min(model.context_length())
}

/// A running sequence.
struct Running {
    request: Request,
    session: Session,
    /// KV bytes counted for it: its worst case, or what its session held
    /// when it started if that was more.
    charge: u64,
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

/// A session kept after its sequence ended, for a later prompt that
/// begins with what it holds.
struct Idle {
    session: Session,
    /// When it was last used (the loop's clock): the least recent goes first.
    used: u64,
}

/// Where an admitted request's session comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Idle session `i`, whose cache it continues.
    Take(usize),
    /// A copy of the first `keep` positions of idle session `i`.
    CopyIdle(usize, usize),
    /// A copy of the first `keep` positions of running sequence `i`.
    CopyRunning(usize, usize),
    /// A new, empty session.
    Fresh,
}

/// The scheduler's thread.
struct Loop {
    model: Arc<Model>,
    config: SchedulerConfig,
    /// KV bytes all sessions may hold; `None`: not counted.
    budget: Option<u64>,
    inbox: Receiver<Request>,
    waiting: VecDeque<Request>,
    running: Vec<Running>,
    /// Sessions of ended sequences, kept for the next ones (at most `max_batch`).
    idle: Vec<Idle>,
    /// Counts admissions and ends, to order idle sessions by last use.
    clock: u64,
    open: bool,
    stats: Arc<SchedulerStats>,
}

impl Loop {
    fn new(
        model: Arc<Model>,
        config: SchedulerConfig,
        budget: Option<u64>,
        inbox: Receiver<Request>,
        stats: Arc<SchedulerStats>,
    ) -> Self {
        Self {
            model,
            config,
            budget,
            inbox,
            waiting: VecDeque::new(),
            running: Vec::new(),
            idle: Vec::new(),
            clock: 0,
            open: true,
            stats,
        }
    }

    /// Keeps `session` for later prompts; past `max_batch` idle sessions,
    /// the least recently used one is dropped.
    fn keep_idle(&mut self, session: Session) {
        self.clock += 1;
        self.idle.push(Idle {
            session,
            used: self.clock,
        });
        while self.idle.len() > self.config.max_batch {
            self.evict_idle(None);
        }
    }

    /// Drops the least recently used idle session but `spare`; whether
    /// there was one.
    fn evict_idle(&mut self, spare: Option<usize>) -> bool {
        let oldest = self
            .idle
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != spare)
            .min_by_key(|(_, idle)| idle.used)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.idle.remove(i);
                true
            }
            None => false,
        }
    }

    /// KV bytes held or promised: idle sessions' caches, running
    /// sequences' charges.
    fn reserved(&self) -> u64 {
        let idle: u64 = self.idle.iter().map(|i| i.session.kv_held_bytes()).sum();
        idle + self.running.iter().map(|r| r.charge).sum::<u64>()
    }

    /// Publishes the KV and queue figures.
    fn publish(&self) {
        let stats = &self.stats;
        let held: u64 = self
            .idle
            .iter()
            .map(|i| &i.session)
            .chain(self.running.iter().map(|r| &r.session))
            .map(Session::kv_held_bytes)
            .sum();
        stats.kv_held.store(held, Ordering::Relaxed);
        stats.kv_peak.fetch_max(held, Ordering::Relaxed);
        stats.kv_reserved.store(self.reserved(), Ordering::Relaxed);
        stats
            .waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
        stats
            .running
            .store(self.running.len() as u64, Ordering::Relaxed);
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
            self.publish();
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

    /// Where a request for `prompt` gets its session: the idle session
    /// holding the longest reusable prefix when continuing it loses no more
    /// of its cache than it gives (among equals, the one that loses least);
    /// else a copy of the longest reusable prefix any session holds; else
    /// a new one.
    fn source(&self, prompt: &[u32]) -> Source {
        let best_idle = self
            .idle
            .iter()
            .enumerate()
            .map(|(i, idle)| {
                let reuse = idle.session.reusable_prefix(prompt);
                (i, reuse, idle.session.cached_tokens() - reuse)
            })
            .max_by_key(|&(_, reuse, lost)| (reuse, std::cmp::Reverse(lost)));
        if let Some((i, reuse, lost)) = best_idle {
            if reuse > 0 && reuse >= lost {
                return Source::Take(i);
            }
        }
        let copy_idle = best_idle.map(|(i, reuse, _)| (Source::CopyIdle(i, reuse), reuse));
        let copy_running = self
            .running
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let reuse = r.session.reusable_prefix(prompt);
                (Source::CopyRunning(i, reuse), reuse)
            })
            .max_by_key(|&(_, reuse)| reuse);
        match copy_idle
            .into_iter()
            .chain(copy_running)
            .max_by_key(|&(_, reuse)| reuse)
        {
            Some((source, reuse)) if reuse > 0 => source,
            _ => Source::Fresh,
        }
    }

    /// Starts waiting requests, in arrival order, while there are free
    /// slots and KV memory for their worst case (idle sessions are evicted,
    /// least recently used first, to make room).
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some(mut request) = self.waiting.pop_front() else {
                break;
            };
            let started = Instant::now();
            let positions = worst_positions(&self.model, request.prompt_ids.len(), &request.config);
            let worst = self.model.kv_bytes(positions).unwrap_or(0);
            let mut source = self.source(&request.prompt_ids);
            // Make room: the charge is the worst case, or what a taken
            // session already holds if more.
            if let Some(budget) = self.budget {
                loop {
                    let (spare, taken) = match source {
                        Source::Take(i) => (Some(i), self.idle[i].session.kv_held_bytes()),
                        Source::CopyIdle(i, _) => (Some(i), 0),
                        _ => (None, 0),
                    };
                    if self.reserved() - taken + worst.max(taken) <= budget {
                        break;
                    }
                    if self.evict_idle(spare) {
                        // Indices past the evicted one moved: choose again.
                        source = self.source(&request.prompt_ids);
                        continue;
                    }
                    if spare.is_some() {
                        // Only the session it would use is left: start afresh.
                        self.idle.clear();
                        source = Source::Fresh;
                        continue;
                    }
                    break;
                }
                let taken = match source {
                    Source::Take(i) => self.idle[i].session.kv_held_bytes(),
                    _ => 0,
                };
                if self.reserved() - taken + worst.max(taken) > budget {
                    // The running sequences' worst cases leave too little:
                    // it waits for one to end, ahead of later requests.
                    self.stats.memory_waits.fetch_add(1, Ordering::Relaxed);
                    self.waiting.push_front(request);
                    break;
                }
            }
            let session = match source {
                Source::Take(i) => Some(self.idle.swap_remove(i).session),
                Source::CopyIdle(i, keep) => self.idle[i].session.fork(keep),
                Source::CopyRunning(i, keep) => self.running[i].session.fork(keep),
                Source::Fresh => None,
            }
            .unwrap_or_else(|| self.model.session());
            let charge = worst.max(session.kv_held_bytes());
            let reused = session.reusable_prefix(&request.prompt_ids);
            let admitted = validate(&session, &request.prompt_ids, &request.config)
                .and_then(|()| Sampler::new(request.config.sampling.clone()));
            let sampler = match admitted {
                Ok(sampler) => sampler,
                Err(error) => {
                    request.streamer.fail(Box::new(for_streamer(&error)));
                    let _ = request.done.send(Err(error));
                    self.keep_idle(session);
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
                self.keep_idle(session);
                continue;
            }
            let stop_ids = match request.config.ignore_stop_ids {
                true => Vec::new(),
                false => session.stop_ids().to_vec(),
            };
            if reused > 0 {
                self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                if !matches!(source, Source::Take(_)) {
                    self.stats.prefix_copies.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats
                .reused_tokens
                .fetch_add(reused as u64, Ordering::Relaxed);
            self.clock += 1;
            self.running.push(Running {
                history: request.prompt_ids.clone(),
                request,
                session,
                charge,
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
                self.keep_idle(seq.session);
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
                true => self.keep_idle(seq.session),
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
