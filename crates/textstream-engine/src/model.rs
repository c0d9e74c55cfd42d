//! Loads a llama-architecture GGUF file into candle once, and hands out
//! [`Session`]s that share its weights.
//!
//! [`Model::load`] reads the metadata, builds the tokenizer from it, checks
//! that every tensor the llama graph needs is present, of a type candle can
//! compute with, the right shape and inside the file, and only then lets
//! candle read the weights, so that a corrupt or truncated file is an
//! [`EngineError`] rather than a panic. (A panic inside candle is still caught
//! as a last resort.) Everything runs on the CPU.
//!
//! A [`Session`] is one sequence's state: a clone of the weights (candle
//! tensors are reference-counted, so this copies no weight data) plus its own
//! KV cache. Its one operation, [`Session::forward_last`], serves both prefill
//! and decode steps.

use std::fs::File;
use std::io::BufReader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use textstream::Detokenizer;

use crate::llama::{KvCache, LlamaWeights, WeightFormat};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::GgufTokenizer;
use crate::EngineError;

/// The `general.architecture` values this engine runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Positions candle's llama implementation precomputes rotary embeddings for,
/// in tokens: the hard upper bound on a session's context, whatever the file says.
pub const CANDLE_MAX_POSITIONS: usize = MAX_SEQ_LEN;

/// The GGUF metadata keys this module reads (names from the GGUF spec).
mod key {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const CONTEXT_LENGTH: &str = "llama.context_length";
    pub const BLOCK_COUNT: &str = "llama.block_count";
    pub const EMBEDDING_LENGTH: &str = "llama.embedding_length";
    pub const HEAD_COUNT: &str = "llama.attention.head_count";
    pub const HEAD_COUNT_KV: &str = "llama.attention.head_count_kv";
    pub const ROPE_DIMENSION: &str = "llama.rope.dimension_count";
    pub const RMS_EPSILON: &str = "llama.attention.layer_norm_rms_epsilon";
    pub const EXPERT_COUNT: &str = "llama.expert_count";
}

/// Tensor types candle can load from GGUF and multiply with on the CPU.
const LOADABLE_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Facts about a loaded model, read from its metadata and tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// `llama.context_length`, what the model was trained for, in tokens.
    pub trained_context_length: Option<usize>,
    /// Tokens a session can hold: the trained length, capped by
    /// [`CANDLE_MAX_POSITIONS`] (and that alone when the file does not say).
    pub context_length: usize,
    /// Rows of the token embedding: ids at or above this are invalid.
    pub vocab_size: usize,
    /// Transformer blocks.
    pub block_count: usize,
    /// Width of the hidden state.
    pub embedding_length: usize,
}

/// How long each part of [`Model::load`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadTimings {
    /// Reading the GGUF header and metadata.
    pub metadata: Duration,
    /// Building the tokenizer (on the fast path, while the weights load).
    pub tokenizer: Duration,
    /// Reading the weights.
    pub weights: Duration,
    /// All of it.
    pub total: Duration,
}

/// How [`Model::load_with`] loads a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// How the weights are held and run. By default, the engine's fast path
    /// ([`WeightFormat::default`]).
    pub weights: WeightFormat,
    /// A `tokenizer.json` to use instead of the tokenizer described by the
    /// GGUF metadata (special ids still come from the metadata). By default,
    /// none.
    pub tokenizer_json: Option<PathBuf>,
    /// Threads the fast path's matrix products run on. By default (`None`),
    /// one per core the process may use.
    pub threads: Option<usize>,
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

    /// Sets how the weights are held and run.
    pub fn weights(mut self, weights: WeightFormat) -> Self {
        self.weights = weights;
        self
    }
}

/// The weights in the form [`LoadOptions::weights`] chose.
#[derive(Debug, Clone)]
enum Weights {
    Reference(Box<ModelWeights>),
    Fast(Arc<LlamaWeights>),
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
    /// The chat template from the metadata, or why there is none usable.
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
        let content = guarded("reading the GGUF header", || Content::read(&mut reader))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|reason| invalid(path, reason))?;
        let info = check(path, &content, file_size)?;
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
        let ((tokenizer, tokenizer_time), (weights, weights_time)) = match options.weights {
            // candle's reader takes the metadata by value: one after the other.
            WeightFormat::Reference => {
                let tokenizer = build_tokenizer(&content)?;
                let start = Instant::now();
                let weights = load_weights(path, || {
                    ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)
                        .map(|w| Weights::Reference(Box::new(w)))
                })?;
                (tokenizer, (weights, start.elapsed()))
            }
            // The tokenizer (a third of the time) builds on its own thread
            // while the weights load.
            WeightFormat::Fast => std::thread::scope(|scope| {
                let tokenizer = scope.spawn(|| build_tokenizer(&content));
                let start = Instant::now();
                let weights = load_weights(path, || {
                    LlamaWeights::load(
                        &content,
                        &mut reader,
                        context_length,
                        options.thread_count(),
                    )
                    .map(|w| Weights::Fast(Arc::new(w)))
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
        let chat_template = chat_template(&tokenizer);
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
            Weights::Reference(weights) => State::Reference(weights.clone()),
            Weights::Fast(weights) => State::Fast {
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

    /// The tokenizer built from the file's metadata.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The tokenizer for streams: clone it into each stream's constructor.
    pub fn detokenizer(&self) -> Detokenizer {
        self.detokenizer.clone()
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

    /// How long loading took.
    pub fn load_timings(&self) -> LoadTimings {
        self.load_timings
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Parses the metadata's chat template with the model's BOS/EOS texts.
fn chat_template(tokenizer: &GgufTokenizer) -> Result<ChatTemplate, String> {
    let source = tokenizer.chat_template.as_deref().ok_or_else(|| {
        "the model file has no chat template (tokenizer.chat_template)".to_owned()
    })?;
    let text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token_text(id))
            .unwrap_or_default()
    };
    ChatTemplate::new(source, &text(tokenizer.bos_id), &text(tokenizer.eos_id))
        .map_err(|e| e.to_string())
}

/// A session's weights and cache, in the model's format.
#[derive(Debug)]
enum State {
    /// candle's model holds its cache inside the (cloned) weights.
    Reference(Box<ModelWeights>),
    Fast {
        weights: Arc<LlamaWeights>,
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
        let end = pos.saturating_add(ids.len());
        if end > self.context_length {
            return Err(EngineError::Inference {
                message: format!(
                    "position {end} is past the context length of {} tokens",
                    self.context_length
                ),
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                id,
                vocab_size: self.vocab_size,
            });
        }
        let device = &self.device;
        let state = &mut self.state;
        let result = guarded("running the model", || -> candle_core::Result<Vec<f32>> {
            match state {
                State::Reference(weights) => {
                    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
                    weights.forward(&input, pos)?.squeeze(0)?.to_vec1::<f32>()
                }
                State::Fast { weights, cache } => weights.forward_last(cache, ids, pos),
            }
        });
        match result {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(e)) => Err(EngineError::Inference {
                message: e.to_string(),
            }),
            Err(message) => {
                // The cache may hold half an update; start over next time.
                self.reset();
                Err(EngineError::Inference { message })
            }
        }
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        match &mut self.state {
            State::Reference(weights) => weights.clear_kv_cache(),
            // Positions are written before they are read: nothing to clear.
            State::Fast { .. } => {}
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

fn metadata_err(key: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Metadata {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// A required `u32` entry, as candle reads it, that must be at least 1.
fn positive_u32(content: &Content, key: &str) -> Result<usize, EngineError> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| metadata_err(key, "missing"))?
        .to_u32()
        .map_err(|e| metadata_err(key, e.to_string()))?;
    if value == 0 {
        return Err(metadata_err(key, "must be at least 1"));
    }
    Ok(value as usize)
}

fn optional_usize(content: &Content, key: &str) -> Result<Option<usize>, EngineError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(value) => {
            let v = value
                .to_u64()
                .map_err(|e| metadata_err(key, e.to_string()))?;
            usize::try_from(v)
                .map(Some)
                .map_err(|_| metadata_err(key, format!("{v} is too large")))
        }
    }
}

/// Checks what candle will rely on, so that loading fails with a message
/// instead of a panic or an enormous allocation, and returns the model's facts.
fn check(path: &Path, content: &Content, file_size: u64) -> Result<ModelInfo, EngineError> {
    let architecture = match content.metadata.get(key::ARCHITECTURE) {
        Some(Value::String(arch)) => arch.clone(),
        Some(_) => return Err(metadata_err(key::ARCHITECTURE, "not a string")),
        None => return Err(metadata_err(key::ARCHITECTURE, "missing")),
    };
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(EngineError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture,
            supported: SUPPORTED_ARCHITECTURES.join(", "),
        });
    }
    if optional_usize(content, key::EXPERT_COUNT)?.unwrap_or(0) > 1 {
        return Err(invalid(
            path,
            "mixture-of-experts llama models are not supported",
        ));
    }

    let block_count = positive_u32(content, key::BLOCK_COUNT)?;
    let embedding_length = positive_u32(content, key::EMBEDDING_LENGTH)?;
    let head_count = positive_u32(content, key::HEAD_COUNT)?;
    let head_count_kv = positive_u32(content, key::HEAD_COUNT_KV)?;
    let rope_dimension = positive_u32(content, key::ROPE_DIMENSION)?;
    match content.metadata.get(key::RMS_EPSILON).map(Value::to_f32) {
        Some(Ok(eps)) if eps.is_finite() && eps > 0.0 => {}
        Some(Ok(eps)) => return Err(metadata_err(key::RMS_EPSILON, format!("{eps} is not > 0"))),
        Some(Err(e)) => return Err(metadata_err(key::RMS_EPSILON, e.to_string())),
        None => return Err(metadata_err(key::RMS_EPSILON, "missing")),
    }
    if embedding_length % head_count != 0 || head_count % head_count_kv != 0 {
        return Err(invalid(
            path,
            format!(
                "{embedding_length} hidden units, {head_count} heads and {head_count_kv} KV \
                 heads do not divide evenly"
            ),
        ));
    }
    let head_dim = embedding_length / head_count;
    if rope_dimension != head_dim {
        return Err(invalid(
            path,
            format!("rotary dimension {rope_dimension} differs from the head size {head_dim}"),
        ));
    }
    // Every block has nine tensors; a larger count cannot be backed by the file.
    if block_count > content.tensor_infos.len() {
        return Err(invalid(
            path,
            format!(
                "{block_count} blocks but only {} tensors",
                content.tensor_infos.len()
            ),
        ));
    }

    // Every tensor, used or not, must be a loadable type and lie inside the file.
    for (name, tensor) in &content.tensor_infos {
        check_extent(path, name, tensor, content.tensor_data_offset, file_size)?;
    }

    let embedding = tensor(path, content, "token_embd.weight")?;
    let vocab_size = match embedding.shape.dims() {
        [rows, cols] if *cols == embedding_length && *rows > 0 => *rows,
        dims => {
            return Err(invalid(
                path,
                format!(
                    "token_embd.weight has shape {dims:?}, expected [vocab, {embedding_length}]"
                ),
            ))
        }
    };
    let kv_width = head_dim * head_count_kv;
    let feed_forward = match tensor(path, content, "blk.0.ffn_gate.weight")?.shape.dims() {
        [rows, _] => *rows,
        dims => {
            return Err(invalid(
                path,
                format!("blk.0.ffn_gate.weight has shape {dims:?}, expected 2 dimensions"),
            ))
        }
    };
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("output_norm.weight".into(), vec![embedding_length]),
        (
            "token_embd.weight".into(),
            vec![vocab_size, embedding_length],
        ),
    ];
    if content.tensor_infos.contains_key("output.weight") {
        expected.push(("output.weight".into(), vec![vocab_size, embedding_length]));
    }
    for block in 0..block_count {
        let shapes = [
            ("attn_norm", vec![embedding_length]),
            ("ffn_norm", vec![embedding_length]),
            ("attn_q", vec![embedding_length, embedding_length]),
            ("attn_k", vec![kv_width, embedding_length]),
            ("attn_v", vec![kv_width, embedding_length]),
            ("attn_output", vec![embedding_length, embedding_length]),
            ("ffn_gate", vec![feed_forward, embedding_length]),
            ("ffn_up", vec![feed_forward, embedding_length]),
            ("ffn_down", vec![embedding_length, feed_forward]),
        ];
        for (part, shape) in shapes {
            expected.push((format!("blk.{block}.{part}.weight"), shape));
        }
    }
    for (name, shape) in &expected {
        let info = tensor(path, content, name)?;
        if info.shape.dims() != shape.as_slice() {
            return Err(invalid(
                path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                ),
            ));
        }
        // Quantized matrix rows are whole blocks, or the matmul kernels misread them.
        let block = info.ggml_dtype.block_size();
        if shape.last().is_some_and(|cols| cols % block != 0) {
            return Err(invalid(
                path,
                format!(
                    "tensor {name}: rows of {} values do not fill whole {:?} blocks of {block}",
                    shape.last().copied().unwrap_or_default(),
                    info.ggml_dtype
                ),
            ));
        }
    }

    let trained_context_length = optional_usize(content, key::CONTEXT_LENGTH)?;
    let context_length = trained_context_length
        .unwrap_or(CANDLE_MAX_POSITIONS)
        .min(CANDLE_MAX_POSITIONS);
    if context_length == 0 {
        return Err(metadata_err(key::CONTEXT_LENGTH, "must be at least 1"));
    }
    let name = match content.metadata.get(key::NAME) {
        Some(Value::String(name)) => Some(name.clone()),
        _ => None,
    };
    Ok(ModelInfo {
        architecture,
        name,
        trained_context_length,
        context_length,
        vocab_size,
        block_count,
        embedding_length,
    })
}

fn tensor<'a>(
    path: &Path,
    content: &'a Content,
    name: &str,
) -> Result<&'a TensorInfo, EngineError> {
    content
        .tensor_infos
        .get(name)
        .ok_or_else(|| invalid(path, format!("tensor {name} is missing")))
}

/// Checks that a tensor's type is loadable and its bytes lie inside the file,
/// with overflow-checked arithmetic (a crafted shape can overflow).
fn check_extent(
    path: &Path,
    name: &str,
    tensor: &TensorInfo,
    data_offset: u64,
    file_size: u64,
) -> Result<(), EngineError> {
    if !LOADABLE_TYPES.contains(&tensor.ggml_dtype) {
        return Err(EngineError::UnsupportedTensorType {
            path: path.to_path_buf(),
            tensor: name.to_owned(),
            dtype: format!("{:?}", tensor.ggml_dtype),
        });
    }
    let dims = tensor.shape.dims();
    let elements = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(path, format!("tensor {name} shape {dims:?} overflows")))?;
    let block = tensor.ggml_dtype.block_size();
    if elements == 0 || elements % block != 0 {
        return Err(invalid(
            path,
            format!(
                "tensor {name} has {elements} values, not a positive multiple of the {:?} block \
                 size {block}",
                tensor.ggml_dtype
            ),
        ));
    }
    let bytes = (elements / block)
        .checked_mul(tensor.ggml_dtype.type_size())
        .and_then(|b| u64::try_from(b).ok());
    let end = bytes
        .and_then(|b| data_offset.checked_add(tensor.offset)?.checked_add(b))
        .filter(|&end| end <= file_size);
    if end.is_none() {
        return Err(invalid(
            path,
            format!(
                "tensor {name} ({dims:?} {:?} at offset {}) lies beyond the end of the file \
                 ({file_size} bytes): the file is truncated or corrupt",
                tensor.ggml_dtype, tensor.offset
            ),
        ));
    }
    Ok(())
}
