//! The generation loop: prefill, then one decode step per token, every token
//! reported through a [`Streamer`].
//!
//! [`generate`] puts the prompt ids into the streamer, runs the whole prompt
//! through the model in one forward pass (prefill), and then alternates
//! sampling and single-token forward passes (decode steps); both passes go
//! through [`Session::forward_last`]. It stops on the first of:
//!
//! - a stop id of the model (EOS, end of turn): the stop token is not put,
//!   and the stream ends with [`FinishReason::Stop`];
//! - `max_new_tokens` tokens: [`FinishReason::Length`];
//! - `put` answering [`Closed`]: at once, without computing another token.
//!   [`Closed::Stopped`] means the streamer matched a stop string and has
//!   ended the stream itself; [`Closed::ConsumerGone`] (or
//!   [`Closed::Ended`]) means nobody reads any more.
//!
//! Errors, including invalid input found before any work, are reported to the
//! streamer with [`Streamer::fail`] as well as returned.
//! [`spawn_generate`] runs the same loop on its own thread.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use textstream::{AsyncTextIteratorStreamer, Closed, FinishReason, StreamOptions, Streamer};

use crate::model::{Model, Session};
use crate::models::PROMPT_CHUNK;
use crate::sampling::{Sampler, SamplingConfig};
use crate::EngineError;

/// Tokens generated when the caller does not say: enough for a short answer.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// How to generate. Stop tokens are not configured here: they come from the
/// model ([`Session::stop_ids`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// The most tokens to generate; must be at least 1, and the prompt plus
    /// this must fit in the model's context. By default,
    /// [`DEFAULT_MAX_NEW_TOKENS`].
    pub max_new_tokens: usize,
    /// How each token is chosen. By default, greedy.
    pub sampling: SamplingConfig,
    /// Generate past the model's stop ids (they are put like any token)
    /// until `max_new_tokens`: benchmarks decode the same count every run.
    /// By default, false.
    pub ignore_stop_ids: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            sampling: SamplingConfig::default(),
            ignore_stop_ids: false,
        }
    }
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// The prompt's forward pass.
    pub prefill: Duration,
    /// Everything after prefill: sampling and the decode steps.
    pub decode: Duration,
    /// Tokens generated (the stop token not counted).
    pub generated: usize,
    /// Single-token forward passes run after prefill.
    pub decode_steps: usize,
    /// From the call to the first sampled token.
    pub ttft: Duration,
}

impl Timings {
    /// Decode steps per second, or `None` before the first step.
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        let seconds = self.decode.as_secs_f64();
        (self.decode_steps > 0 && seconds > 0.0).then(|| self.decode_steps as f64 / seconds)
    }

    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> Option<f64> {
        let seconds = self.prefill.as_secs_f64();
        (self.prompt_tokens > 0 && seconds > 0.0).then(|| self.prompt_tokens as f64 / seconds)
    }
}

/// What [`generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// Every token offered to the streamer, in order: the stop token is not
    /// included; the token whose `put` was refused is.
    pub tokens: Vec<u32>,
    /// Why generation ended. For [`Closed::Stopped`] it is
    /// [`FinishReason::StopString`] with an empty string: the streamer knows
    /// which stop string matched and has already reported it. When the
    /// consumer left, it is [`FinishReason::Stop`] and `consumer_gone` is set.
    pub finish_reason: FinishReason,
    /// The consumer left (`put` answered [`Closed::ConsumerGone`] or
    /// [`Closed::Ended`]); the streamer was not finished, as nobody listens.
    pub consumer_gone: bool,
    /// Where the time went.
    pub timings: Timings,
}

/// Generates a continuation of `prompt_ids` in `session`, putting the prompt
/// and then each token into `streamer` (see the module docs for when it stops).
///
/// The session's KV cache starts over: the prompt is the whole sequence.
pub fn generate(
    session: &mut Session,
    prompt_ids: &[u32],
    config: &GenerateConfig,
    streamer: &mut impl Streamer,
) -> Result<GenerateOutput, EngineError> {
    run(session, prompt_ids, config, streamer).inspect_err(|error| {
        streamer.fail(Box::new(for_streamer(error)));
    })
}

/// Runs [`generate`] on a new thread with a new session of `model`; the
/// thread owns everything it uses. Pair the streamer with a consumer (e.g. the
/// core crate's async stream) before calling.
///
/// # Panics
///
/// Like [`std::thread::spawn`], if the operating system cannot create a thread.
pub fn spawn_generate<S>(
    model: Arc<Model>,
    prompt_ids: Vec<u32>,
    config: GenerateConfig,
    mut streamer: S,
) -> JoinHandle<Result<GenerateOutput, EngineError>>
where
    S: Streamer + Send + 'static,
{
    std::thread::Builder::new()
        .name("textstream-generate".to_owned())
        .spawn(move || {
            let mut session = model.session();
            generate(&mut session, &prompt_ids, &config, &mut streamer)
        })
        .expect("failed to spawn the generation thread")
}

/// The one-call form (transformers' `run_generate` pattern): starts
/// generation on its own thread and returns the text as an async stream,
/// with a handle to the thread's result. Drop the stream to stop generating.
///
/// `options` decide what the stream shows; by default the prompt and special
/// tokens are left out, as a chat user expects.
pub fn run_generate(
    model: Arc<Model>,
    prompt_ids: Vec<u32>,
    config: GenerateConfig,
    options: Option<StreamOptions>,
) -> (
    AsyncTextIteratorStreamer,
    JoinHandle<Result<GenerateOutput, EngineError>>,
) {
    let options = options.unwrap_or_else(|| {
        StreamOptions::default()
            .skip_prompt(true)
            .skip_special_tokens(true)
    });
    let (producer, stream) = AsyncTextIteratorStreamer::new(model.detokenizer(), options);
    (stream, spawn_generate(model, prompt_ids, config, producer))
}

pub(crate) fn validate(
    session: &Session,
    prompt_ids: &[u32],
    config: &GenerateConfig,
) -> Result<(), EngineError> {
    if prompt_ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if config.max_new_tokens == 0 {
        return Err(EngineError::InvalidConfig {
            field: "max_new_tokens",
            reason: "must be at least 1".to_owned(),
        });
    }
    let context_length = session.context_length();
    if prompt_ids.len().saturating_add(config.max_new_tokens) > context_length {
        return Err(EngineError::ContextOverflow {
            prompt_tokens: prompt_ids.len(),
            max_new_tokens: config.max_new_tokens,
            context_length,
        });
    }
    session.check_input(prompt_ids, 0)?;
    config.sampling.validate()
}

/// The loop behind [`generate`]; any `Err` still needs reporting to the streamer.
fn run(
    session: &mut Session,
    prompt_ids: &[u32],
    config: &GenerateConfig,
    streamer: &mut impl Streamer,
) -> Result<GenerateOutput, EngineError> {
    let start = Instant::now();
    validate(session, prompt_ids, config)?;
    let mut sampler = Sampler::new(config.sampling.clone())?;
    let mut timings = Timings {
        prompt_tokens: prompt_ids.len(),
        ..Timings::default()
    };
    let mut tokens = Vec::with_capacity(config.max_new_tokens);
    let mut history = prompt_ids.to_vec();
    let finish = |tokens, finish_reason, consumer_gone, timings| GenerateOutput {
        tokens,
        finish_reason,
        consumer_gone,
        timings,
    };

    if let Err(closed) = streamer.put(prompt_ids) {
        let (reason, gone) = closed_reason(&closed);
        return Ok(finish(tokens, reason, gone, timings));
    }

    // The prompt in the chunks the model runs anyway, so that a consumer
    // who leaves while a long prompt is read stops it within one chunk.
    let mut logits = Vec::new();
    for (i, chunk) in prompt_ids.chunks(PROMPT_CHUNK).enumerate() {
        if i > 0 && streamer.is_closed() {
            let (reason, gone) = closed_reason(&Closed::ConsumerGone);
            timings.prefill = start.elapsed();
            return Ok(finish(tokens, reason, gone, timings));
        }
        logits = session.forward_last(chunk, i * PROMPT_CHUNK)?;
    }
    timings.prefill = start.elapsed();
    let decode_start = Instant::now();
    let mut pos = prompt_ids.len();
    let stop_ids = match config.ignore_stop_ids {
        true => Vec::new(),
        false => session.stop_ids().to_vec(),
    };

    let (reason, gone) = loop {
        let picked = sampler.sample(&mut logits, &history)?;
        if tokens.is_empty() {
            timings.ttft = start.elapsed();
        }
        if stop_ids.contains(&picked.id) {
            streamer.finish(FinishReason::Stop);
            break (FinishReason::Stop, false);
        }
        tokens.push(picked.id);
        history.push(picked.id);
        if let Err(closed) = streamer.put_scored(picked.id, picked.logprob, &picked.top) {
            break closed_reason(&closed);
        }
        if tokens.len() >= config.max_new_tokens {
            streamer.finish(FinishReason::Length);
            break (FinishReason::Length, false);
        }
        logits = session.forward_last(&[picked.id], pos)?;
        pos += 1;
        timings.decode_steps += 1;
    };
    timings.decode = decode_start.elapsed();
    timings.generated = tokens.len();
    Ok(finish(tokens, reason, gone, timings))
}

/// The finish reason for a refused `put`, and whether the consumer left.
pub(crate) fn closed_reason(closed: &Closed) -> (FinishReason, bool) {
    match closed {
        Closed::Stopped => (FinishReason::StopString(String::new()), false),
        _ => (FinishReason::Stop, true),
    }
}

/// A copy of `error` for [`Streamer::fail`], which needs its own: an
/// `EngineError` cannot be cloned (some variants hold an `io::Error`). The
/// variants `generate` produces are copied exactly, so a consumer can
/// downcast to `EngineError` (e.g. to answer 400 for a too-long prompt);
/// anything else becomes [`EngineError::Inference`] with the same message.
pub(crate) fn for_streamer(error: &EngineError) -> EngineError {
    match error {
        EngineError::EmptyPrompt => EngineError::EmptyPrompt,
        EngineError::ContextOverflow {
            prompt_tokens,
            max_new_tokens,
            context_length,
        } => EngineError::ContextOverflow {
            prompt_tokens: *prompt_tokens,
            max_new_tokens: *max_new_tokens,
            context_length: *context_length,
        },
        EngineError::TokenOutOfRange { id, vocab_size } => EngineError::TokenOutOfRange {
            id: *id,
            vocab_size: *vocab_size,
        },
        EngineError::InvalidConfig { field, reason } => EngineError::InvalidConfig {
            field,
            reason: reason.clone(),
        },
        EngineError::Inference { message } => EngineError::Inference {
            message: message.clone(),
        },
        other => EngineError::Inference {
            message: other.to_string(),
        },
    }
}
