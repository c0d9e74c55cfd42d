//! Loads a GGUF model file once, and hands out [`Session`]s that share its
//! weights.
//!
//! [`Model::load`] reads the metadata, finds the file's family
//! ([`crate::models::family`]), reads its hyper-parameters
//! once, checks that every tensor the family needs is present, of a type the
//! loader reads, the right shape and inside the file, and that one session's
//! KV cache fits in memory, and only then reads the weights, so that a
//! corrupt or truncated file is an [`EngineError`] rather than a panic. (A
//! panic inside candle's reader is still caught as a last resort.)
//! Everything runs on the CPU.
//!
//! A [`Session`] is one sequence's state: the shared weights plus its own KV
//! cache. Its one operation, [`Session::forward_last`], serves both prefill
//! and decode steps.

use std::fs::File;
use std::io::BufReader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use textstream::Detokenizer;

use crate::models::hparams::DEFAULT_CONTEXT_LENGTH;
use crate::models::{self, CheckError, Hparams, KvCache, Step, Transformer};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::GgufTokenizer;
use crate::EngineError;

/// Positions candle's llama implementation precomputes rotary embeddings for,
/// in tokens: the hard upper bound on a [`Backend::Candle`] session's context.
pub const CANDLE_MAX_POSITIONS: usize = MAX_SEQ_LEN;

/// Facts about a loaded model, read from its metadata and tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// `{arch}.context_length`, what the model was trained for, in tokens.
    pub trained_context_length: Option<usize>,
    /// Tokens a session can hold: [`LoadOptions::context_length`] or the
    /// trained length ([`DEFAULT_CONTEXT_LENGTH`] when the file does not say).
    pub context_length: usize,
    /// Rows of the token embedding: ids at or above this are invalid.
    pub vocab_size: usize,
    /// Transformer blocks.
    pub block_count: usize,
    /// Width of the hidden state.
    pub embedding_length: usize,
    /// Bytes one session's KV cache takes when full.
    pub kv_cache_bytes: u64,
}

/// How long each part of [`Model::load`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadTimings {
    /// Reading the GGUF header and metadata.
    pub metadata: Duration,
    /// Building the tokenizer (on the native backend, while the weights load).
    pub tokenizer: Duration,
    /// Reading the weights.
    pub weights: Duration,
    /// All of it.
    pub total: Duration,
}

/// Which forward pass runs the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The engine's own forward pass ([`crate::models`]) for every family,
    /// on its own kernels. The default.
    #[default]
    Native,
    /// candle's `quantized_llama::ModelWeights` with the file's own types
    /// (llama files only, at most [`CANDLE_MAX_POSITIONS`] tokens): the
    /// reference the native pass is checked against.
    Candle,
}

impl std::str::FromStr for Backend {
    type Err = String;

    /// `native` or `candle`.
    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "native" => Ok(Self::Native),
            "candle" => Ok(Self::Candle),
            _ => Err(format!(
                "unknown backend {name:?}: expected native or candle"
            )),
        }
    }
}

/// How [`Model::load_with`] loads a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Which forward pass runs the model. By default, [`Backend::Native`].
    pub backend: Backend,
    /// A `tokenizer.json` to use instead of the tokenizer described by the
    /// GGUF metadata (special ids still come from the metadata). By default,
    /// none.
    pub tokenizer_json: Option<PathBuf>,
    /// Threads the native backend's matrix products run on. By default
    /// (`None`), one per core the process may use.
    pub threads: Option<usize>,
    /// Tokens a session holds, at most the model's trained context. By
    /// default (`None`), the trained context.
    pub context_length: Option<usize>,
}

impl LoadOptions {
    /// Sets the `tokenizer.json` override.
    pub fn tokenizer_json(mut self, path: Option<PathBuf>) -> Self {
        self.tokenizer_json = path;
        self
    }

    /// Sets the number of threads (`None`: one per core).
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }

    /// Threads to run on: [`LoadOptions::threads`] or one per core.
    fn thread_count(&self) -> usize {
        self.threads
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
    }

    /// Sets which forward pass runs the model.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the context a session holds (`None`: the model's trained context).
    pub fn context_length(mut self, tokens: Option<usize>) -> Self {
        self.context_length = tokens;
        self
    }
}

/// The weights in the form [`LoadOptions::backend`] chose.
#[derive(Debug, Clone)]
enum Weights {
    Candle(Box<ModelWeights>),
    Native(Arc<Transformer>),
}

/// A model loaded once and shared (e.g. in an `Arc`) by any number of sessions.
#[derive(Debug)]
pub struct Model {
    path: PathBuf,
    weights: Weights,
    tokenizer: GgufTokenizer,
    /// The tokenizer as the streamers use it; its per-token byte table is
    /// computed once, on the first stream, and shared by all later ones.
    detokenizer: Detokenizer,
    /// The chat template, or why there is none usable.
    chat_template: Result<ChatTemplate, String>,
    info: ModelInfo,
    stop_ids: Arc<[u32]>,
    load_timings: LoadTimings,
}

impl Model {
    /// Loads the GGUF file at `path` with the default [`LoadOptions`].
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        Self::load_with(path, LoadOptions::default())
    }

    /// Loads the GGUF file at `path` as `options` say.
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Self, EngineError> {
        let start = Instant::now();
        let io_err = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_size = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(file);
        let content = read_content(path, &mut reader)?;
        let (family, hparams) = checked(path, &content, file_size)?;
        let info = model_info(path, &content, &hparams, &options)?;
        let metadata = start.elapsed();

        let build_tokenizer = |content: &Content| {
            let start = Instant::now();
            let tokenizer = match &options.tokenizer_json {
                Some(json) => GgufTokenizer::from_tokenizer_json(json, content)?,
                None => GgufTokenizer::from_gguf(content)?,
            };
            Ok::<_, EngineError>((tokenizer, start.elapsed()))
        };
        let context_length = info.context_length;
        let ((tokenizer, tokenizer_time), (weights, weights_time)) = match options.backend {
            // candle's reader takes the metadata by value: one after the other.
            Backend::Candle => {
                let tokenizer = build_tokenizer(&content)?;
                let start = Instant::now();
                let weights = load_weights(path, || {
                    ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)
                        .map(|w| Weights::Candle(Box::new(w)))
                })?;
                (tokenizer, (weights, start.elapsed()))
            }
            // The tokenizer (a third of the time) builds on its own thread
            // while the weights load.
            Backend::Native => std::thread::scope(|scope| {
                let tokenizer = scope.spawn(|| build_tokenizer(&content));
                let start = Instant::now();
                let weights = load_weights(path, || {
                    Transformer::load(
                        family,
                        hparams,
                        &content,
                        &mut reader,
                        context_length,
                        options.thread_count(),
                    )
                    .map(|w| Weights::Native(Arc::new(w)))
                });
                let weights_time = start.elapsed();
                let tokenizer = tokenizer.join().unwrap_or_else(|_| {
                    Err(invalid(path, "building the tokenizer panicked".to_owned()))
                });
                Ok::<_, EngineError>((tokenizer?, (weights?, weights_time)))
            })?,
        };
        let total = start.elapsed();

        let stop_ids: Arc<[u32]> = tokenizer.stop_ids.clone().into();
        let detokenizer = Detokenizer::new(tokenizer.tokenizer.clone());
        let chat_template = chat_template(&tokenizer, &info.architecture);
        tracing::debug!(path = %path.display(), ?total, "model loaded");
        Ok(Self {
            path: path.to_path_buf(),
            weights,
            tokenizer,
            detokenizer,
            chat_template,
            info,
            stop_ids,
            load_timings: LoadTimings {
                metadata,
                tokenizer: tokenizer_time,
                weights: weights_time,
                total,
            },
        })
    }

    /// A new session with an empty KV cache, sharing this model's weights.
    ///
    /// # Panics
    ///
    /// If the KV cache cannot be allocated (like any allocation failure).
    pub fn session(&self) -> Session {
        let state = match &self.weights {
            Weights::Candle(weights) => State::Candle(weights.clone()),
            Weights::Native(weights) => State::Native {
                cache: weights.new_cache(),
                weights: Arc::clone(weights),
            },
        };
        Session {
            state,
            stop_ids: Arc::clone(&self.stop_ids),
            context_length: self.info.context_length,
            vocab_size: self.info.vocab_size,
            device: Device::Cpu,
        }
    }

    /// Bytes of KV cache one sequence of `positions` positions holds, as it
    /// is allocated (whole blocks); `None` for candle's backend.
    pub fn kv_bytes(&self, positions: usize) -> Option<u64> {
        match &self.weights {
            Weights::Native(weights) => Some(weights.kv_bytes(positions)),
            Weights::Candle(_) => None,
        }
    }

    /// Bytes of one KV block (16 positions of one layer); `None` for
    /// candle's backend.
    pub fn kv_block_bytes(&self) -> Option<u64> {
        match &self.weights {
            Weights::Native(weights) => Some(weights.kv_block_bytes()),
            Weights::Candle(_) => None,
        }
    }

    /// The tokenizer built from the file's metadata.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The tokenizer for streams: clone it into each stream's constructor.
    pub fn detokenizer(&self) -> Detokenizer {
        self.detokenizer.clone()
    }

    /// The token ids of a prompt (raw text or a rendered chat template),
    /// with the BOS token in front when the model wants one
    /// (`tokenizer.ggml.add_bos_token`) and the text does not already start
    /// with it (chat templates such as Gemma's write it themselves). Every
    /// caller encodes prompts here, so BOS is decided in one place.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let tokenizer = &self.tokenizer;
        let has_bos = tokenizer
            .bos_id
            .and_then(|id| tokenizer.token_text(id))
            .is_some_and(|bos| !bos.is_empty() && text.starts_with(&bos));
        tokenizer.encode(text, tokenizer.add_bos && !has_bos)
    }

    /// Renders `messages` with the model's chat template, ending with the
    /// start of the assistant's turn.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String, EngineError> {
        match &self.chat_template {
            Ok(template) => template.render(messages, true),
            Err(reason) => Err(EngineError::Template {
                message: reason.clone(),
            }),
        }
    }

    /// Facts read from the file.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Tokens a session can hold (prompt and generated together).
    pub fn context_length(&self) -> usize {
        self.info.context_length
    }

    /// Token ids that end generation (end of sequence, end of turn).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Bytes of weights one decode step reads, on the native backend.
    pub fn weight_bytes_per_token(&self) -> Option<usize> {
        match &self.weights {
            Weights::Native(weights) => Some(weights.weight_bytes_per_token()),
            Weights::Candle(_) => None,
        }
    }

    /// Multiply-adds of one prompt token's products, on the native backend
    /// (see [`crate::models::Transformer::prompt_macs_per_token`]).
    pub fn prompt_macs_per_token(&self) -> Option<usize> {
        match &self.weights {
            Weights::Native(weights) => Some(weights.prompt_macs_per_token()),
            Weights::Candle(_) => None,
        }
    }

    /// Multiply-adds of attention over a prompt of `tokens` tokens, on the
    /// native backend (see [`crate::models::Hparams::prompt_attention_macs`]).
    pub fn prompt_attention_macs(&self, tokens: usize) -> Option<u64> {
        match &self.weights {
            Weights::Native(weights) => Some(weights.hparams().prompt_attention_macs(tokens)),
            Weights::Candle(_) => None,
        }
    }

    /// How long loading took.
    pub fn load_timings(&self) -> LoadTimings {
        self.load_timings
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Parses the metadata's chat template (or, for a file without one, the
/// family's own, [`crate::template::builtin`]) with the model's BOS/EOS texts.
fn chat_template(tokenizer: &GgufTokenizer, architecture: &str) -> Result<ChatTemplate, String> {
    let source = tokenizer
        .chat_template
        .as_deref()
        .or_else(|| crate::template::builtin(architecture))
        .ok_or_else(|| {
            "the model file has no chat template (tokenizer.chat_template)".to_owned()
        })?;
    let text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token_text(id))
            .unwrap_or_default()
    };
    ChatTemplate::new(source, &text(tokenizer.bos_id), &text(tokenizer.eos_id))
        .map_err(|e| e.to_string())
}

/// A session's weights and cache, for the model's backend.
#[derive(Debug)]
enum State {
    /// candle's model holds its cache inside the (cloned) weights.
    Candle(Box<ModelWeights>),
    Native {
        weights: Arc<Transformer>,
        cache: KvCache,
    },
}

/// One sequence's state: shared weights and its own KV cache.
#[derive(Debug)]
pub struct Session {
    state: State,
    stop_ids: Arc<[u32]>,
    context_length: usize,
    vocab_size: usize,
    device: Device,
}

impl Session {
    /// Runs `ids` through the model at positions `pos..pos + ids.len()`,
    /// extending the KV cache, and returns the logits for the position after
    /// the last one. `pos == 0` starts a new sequence (the cache is reset).
    /// Prefill passes the whole prompt at 0; each decode step passes one id.
    pub fn forward_last(&mut self, ids: &[u32], pos: usize) -> Result<Vec<f32>, EngineError> {
        self.check_input(ids, pos)?;
        let device = &self.device;
        let state = &mut self.state;
        let result = guarded("running the model", || -> candle_core::Result<Vec<f32>> {
            match state {
                State::Candle(weights) => {
                    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
                    weights.forward(&input, pos)?.squeeze(0)?.to_vec1::<f32>()
                }
                State::Native { weights, cache } => weights.forward_last(cache, ids, pos),
            }
        });
        inference(result, || self.reset())
    }

    /// One forward pass of several sessions of one model at once: each
    /// `(session, ids, pos)` as [`Self::forward_last`] would run it (at most
    /// [`models::PROMPT_CHUNK`] ids each, or an error), the weights read
    /// once for all of them. Each session's logits are bit for bit those it would get alone.
    /// Sessions of candle's backend run one after the other.
    pub fn forward_batch(
        steps: &mut [(&mut Session, &[u32], usize)],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        for (session, ids, pos) in steps.iter() {
            session.check_input(ids, *pos)?;
        }
        if steps
            .iter()
            .any(|(session, _, _)| matches!(session.state, State::Candle(_)))
        {
            return steps
                .iter_mut()
                .map(|(session, ids, pos)| session.forward_last(ids, *pos))
                .collect();
        }
        let mut weights: Option<Arc<Transformer>> = None;
        let mut native = Vec::with_capacity(steps.len());
        for (session, ids, pos) in steps.iter_mut() {
            if let State::Native { weights: w, cache } = &mut session.state {
                if !Arc::ptr_eq(weights.get_or_insert_with(|| Arc::clone(w)), w) {
                    return Err(EngineError::Inference {
                        message: "a batch's sessions must share one model".to_owned(),
                    });
                }
                native.push(Step {
                    cache,
                    ids,
                    pos: *pos,
                });
            }
        }
        let Some(weights) = weights else {
            return Ok(Vec::new());
        };
        let result = guarded("running the model", || weights.forward_batch(&mut native));
        drop(native);
        inference(result, || {
            for (session, _, _) in steps.iter_mut() {
                session.reset();
            }
        })
    }

    /// How many of `prompt`'s first tokens this session's cache already
    /// holds exactly as running them again would compute them: a sequence
    /// may start there (see [`Transformer::reusable_prefix`]). Always 0 for
    /// candle's backend.
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        match &self.state {
            State::Native { weights, cache } => weights.reusable_prefix(cache, prompt),
            State::Candle(_) => 0,
        }
    }

    /// How many positions this session's cache holds from its last
    /// sequence (0 for candle's backend).
    pub fn cached_tokens(&self) -> usize {
        match &self.state {
            State::Native { cache, .. } => cache.len(),
            State::Candle(_) => 0,
        }
    }

    /// Checks that `ids` at positions `pos..` fit in the context and the
    /// vocabulary: the one check of a forward pass's input, which
    /// [`crate::generate`] also runs on a prompt before any work.
    pub fn check_input(&self, ids: &[u32], pos: usize) -> Result<(), EngineError> {
        let end = pos.saturating_add(ids.len());
        if end > self.context_length {
            return Err(EngineError::Inference {
                message: format!(
                    "position {end} is past the context length of {} tokens",
                    self.context_length
                ),
            });
        }
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(&id) => Err(EngineError::TokenOutOfRange {
                id,
                vocab_size: self.vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Bytes of keys and values this session's cache holds now (0 for
    /// candle's backend, which does not say).
    pub fn kv_held_bytes(&self) -> u64 {
        match &self.state {
            State::Native { cache, .. } => cache.held_bytes(),
            State::Candle(_) => 0,
        }
    }

    /// Empties the KV cache and gives its memory back.
    pub fn release(&mut self) {
        match &mut self.state {
            State::Candle(weights) => weights.clear_kv_cache(),
            State::Native { cache, .. } => cache.release(),
        }
    }

    /// A new session of the same model whose cache holds what this one holds
    /// for `prompt`'s first `keep` tokens (at most
    /// [`Self::reusable_prefix`]`(prompt)`), copied: it starts past them.
    /// `None` for candle's backend.
    pub fn fork(&self, keep: usize) -> Option<Session> {
        let State::Native { weights, cache } = &self.state else {
            return None;
        };
        Some(Session {
            state: State::Native {
                cache: weights.fork(cache, keep),
                weights: Arc::clone(weights),
            },
            stop_ids: Arc::clone(&self.stop_ids),
            context_length: self.context_length,
            vocab_size: self.vocab_size,
            device: self.device.clone(),
        })
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        match &mut self.state {
            State::Candle(weights) => weights.clear_kv_cache(),
            // Positions are written before they are read: only what the
            // cache holds is forgotten, so that nothing is reused from it.
            State::Native { cache, .. } => cache.forget(),
        }
    }

    /// Token ids that end generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Tokens this session can hold.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Rows of the token embedding: valid ids are below this.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// A guarded forward pass's result as the engine's: candle's errors and
/// panics become [`EngineError::Inference`]; after a panic, `reset` runs
/// first (a cache may hold half an update: start over next time).
fn inference<T>(
    result: Result<candle_core::Result<T>, String>,
    reset: impl FnOnce(),
) -> Result<T, EngineError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(EngineError::Inference {
            message: e.to_string(),
        }),
        Err(message) => {
            reset();
            Err(EngineError::Inference { message })
        }
    }
}

/// Runs `f`, turning a panic into `Err(message)`: candle asserts on some
/// malformed inputs, and a bad file must not take the process down.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        format!("candle panicked while {what}: {detail}")
    })
}

/// Runs `load` under [`guarded`]; a panic or an error is an invalid model.
fn load_weights<T>(
    path: &Path,
    load: impl FnOnce() -> candle_core::Result<T>,
) -> Result<T, EngineError> {
    guarded("loading the weights", load)
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|reason| invalid(path, reason))
}

fn invalid(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidModel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a GGUF file's header and metadata (not its weights) through the
/// same guard as [`Model::load`]: a malformed header (`general.alignment =
/// 0` made candle divide by zero) is an error, never a panic. For commands
/// that need only the tokenizer or the metadata.
///
/// # Errors
///
/// When the file cannot be opened or its header is malformed.
pub fn read_metadata(path: &Path) -> Result<Content, EngineError> {
    let file =
        File::open(path).map_err(|error| invalid(path, format!("cannot open it: {error}")))?;
    read_content(path, &mut BufReader::new(file))
}

/// Reads the GGUF header and metadata.
pub(crate) fn read_content(
    path: &Path,
    reader: &mut BufReader<File>,
) -> Result<Content, EngineError> {
    guarded("reading the GGUF header", || Content::read(reader))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|reason| invalid(path, reason))
}

/// [`models::check`], with the path in its errors.
fn checked(
    path: &Path,
    content: &Content,
    file_size: u64,
) -> Result<(&'static dyn models::Family, Hparams), EngineError> {
    models::check(content, file_size).map_err(|error| match error {
        CheckError::Unsupported { architecture } => EngineError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture,
            supported: models::supported_architectures(),
        },
        CheckError::TensorType { tensor, dtype } => EngineError::UnsupportedTensorType {
            path: path.to_path_buf(),
            tensor,
            dtype,
        },
        CheckError::Invalid(reason) => invalid(path, reason),
        CheckError::Engine(error) => error,
    })
}

/// The model's facts, and the context a session holds: the trained one or
/// the one asked for, refused when one session's KV cache would not fit
/// in the memory available now.
fn model_info(
    path: &Path,
    content: &Content,
    hparams: &Hparams,
    options: &LoadOptions,
) -> Result<ModelInfo, EngineError> {
    let trained = hparams.trained_context;
    let limit = trained.unwrap_or(DEFAULT_CONTEXT_LENGTH);
    let mut context_length = match options.context_length {
        Some(0) => {
            return Err(EngineError::Context {
                message: "a context of 0 tokens holds no prompt".to_owned(),
            })
        }
        Some(asked) if asked > limit => {
            return Err(EngineError::Context {
                message: format!(
                    "a context of {asked} tokens is more than the model's {limit} ({})",
                    match trained {
                        Some(_) => "its trained context",
                        None => "the default for a file that does not give one",
                    }
                ),
            })
        }
        Some(asked) => asked,
        None => limit,
    };
    if options.backend == Backend::Candle {
        if hparams.architecture != "llama" {
            return Err(invalid(
                path,
                format!(
                    "the candle backend runs llama files only, not {}",
                    hparams.architecture
                ),
            ));
        }
        context_length = context_length.min(CANDLE_MAX_POSITIONS);
    }
    let kv_cache_bytes = models::kv_cache_bytes(hparams, context_length);
    if let Some(available) = available_memory_bytes() {
        if kv_cache_bytes > available {
            return Err(EngineError::Context {
                message: format!(
                    "a context of {context_length} tokens needs {} MiB of KV cache per \
                     session, more than the {} MiB of memory available: lower it with \
                     --ctx-size (LoadOptions::context_length)",
                    kv_cache_bytes >> 20,
                    available >> 20
                ),
            });
        }
    }
    let name = match content.metadata.get("general.name") {
        Some(Value::String(name)) => Some(name.clone()),
        _ => None,
    };
    Ok(ModelInfo {
        architecture: hparams.architecture.clone(),
        name,
        trained_context_length: trained,
        context_length,
        vocab_size: hparams.vocab,
        block_count: hparams.blocks,
        embedding_length: hparams.hidden,
        kv_cache_bytes,
    })
}

/// `MemAvailable` from `/proc/meminfo`, where there is one.
pub(crate) fn available_memory_bytes() -> Option<u64> {
    proc_kib_as_bytes("/proc/meminfo", "MemAvailable:")
}

/// A `KEY: N kB` line of a `/proc` file (`/proc/meminfo`,
/// `/proc/self/status`), in bytes; `None` where there is no such file or line.
pub(crate) fn proc_kib_as_bytes(path: &str, key: &str) -> Option<u64> {
    const BYTES_PER_KIB: u64 = 1024;
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * BYTES_PER_KIB)
}
