//! The engine's own forward pass for every model family it runs: one
//! [`Family`] per architecture (one file each), typed [`Hparams`] read once
//! from the GGUF keys, and one [`Transformer`] built from the shared
//! layers on the engine's quantized kernels.
//!
//! A family says how its blocks are wired ([`Wiring`]: rotary pairing,
//! fused or separate Q/K/V and gate/up, biases, Q/K norms, norms after
//! attention and the feed-forward network, the activation, embedding
//! scaling) and reads whatever hyper-parameters are its own (Gemma 3's
//! local layers, Phi-3's context cap). The next family is one new file and
//! one line in [`FAMILIES`].
//!
//! [`Transformer::forward_last`] serves prefill and decode alike (a decode
//! step is a prompt of one token). Prompts run in chunks of at most
//! [`PROMPT_CHUNK`] tokens, which bounds the buffers and lets a windowed
//! layer keep only its window and one chunk. Everything runs on plain
//! `Vec<f32>` buffers inside one rayon pool per model: a layer is four
//! matrix products (Q, K and V stacked into one matrix, gate and up into
//! another) and a few loops over slices.

mod gemma3;
pub mod hparams;
mod layers;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;

use std::io::{Read, Seek};
use std::ops::Range;

use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

pub use hparams::{Activation, Hparams, Rope, RopeStyle, SlidingWindow, Wiring};
use layers::{add, gated_activation, rms_norm, rms_norm_in_place, rotate, rotations, LayerCache};

use crate::quant::{vectorized, Activations, GgufType, Matrix, QuantError, QuantType};
use crate::EngineError;

/// Most prompt tokens one forward pass takes; longer prompts run in chunks.
pub const PROMPT_CHUNK: usize = 512;

/// One model family: how its GGUF file describes it and how its blocks are
/// wired from the shared layers.
pub trait Family: Sync {
    /// The `general.architecture` value.
    fn architecture(&self) -> &'static str;

    /// How the blocks are wired.
    fn wiring(&self) -> Wiring;

    /// The hyper-parameters, read once. By default, the keys every family
    /// shares ([`Hparams::read`]).
    fn hparams(&self, content: &Content) -> Result<Hparams, EngineError> {
        Hparams::read(content, self.wiring())
    }

    /// The tensor of per-frequency rotary divisors this family may carry.
    fn rope_factors(&self) -> Option<&'static str> {
        None
    }
}

/// Every family the engine runs.
pub const FAMILIES: &[&dyn Family] = &[
    &llama::Llama,
    &qwen2::Qwen2,
    &qwen3::Qwen3,
    &gemma3::Gemma3,
    &phi3::Phi3,
];

/// The family of `general.architecture` value `architecture`.
pub fn family(architecture: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.architecture() == architecture)
}

/// The architectures [`FAMILIES`] covers, comma-separated, for messages.
pub fn supported_architectures() -> String {
    let names: Vec<&str> = FAMILIES.iter().map(|f| f.architecture()).collect();
    names.join(", ")
}

/// Tensor types the loader reads (through candle's GGUF reader).
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

/// One transformer block's weights.
#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `[q_width + 2 * kv_width, hidden]`.
    qkv: Matrix,
    /// Their biases, stacked the same way.
    qkv_bias: Option<Vec<f32>>,
    /// Per-head RMS norm weights of Q and K (`[head_dim]` each).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    output: Matrix,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `[2 * feed_forward, hidden]`.
    gate_up: Matrix,
    down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A model's weights in the kernels' layouts, shared by sessions (in an `Arc`).
#[derive(Debug)]
pub struct Transformer {
    hparams: Hparams,
    /// The token embedding; rows are dequantized on lookup.
    embedding: Matrix,
    /// The output projection, or `None` when it is the embedding (tied).
    output: Option<Matrix>,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// `sqrt(hidden)` when the family scales embeddings.
    embedding_scale: Option<f32>,
    /// Positions a session holds.
    context: usize,
    /// Most prompt tokens per forward pass ([`PROMPT_CHUNK`]).
    prompt_chunk: usize,
    pool: rayon::ThreadPool,
}

/// One sequence's keys and values and the kernels' scratch space.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    activations: Activations,
    /// The ids whose keys and values the layers hold, by position.
    tokens: Vec<u32>,
}

/// One sequence's part of a batched forward pass
/// ([`Transformer::forward_batch`]): its cache, its next tokens (one while
/// it decodes, a prompt chunk while it prefills) and the first one's position.
#[derive(Debug)]
pub struct Step<'a> {
    /// The sequence's keys and values.
    pub cache: &'a mut KvCache,
    /// Its tokens in this pass.
    pub ids: &'a [u32],
    /// The position of `ids[0]`.
    pub pos: usize,
}

impl KvCache {
    /// Positions the cache holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it holds no position.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forgets which ids the cache holds: nothing will be reused from it
    /// (its memory stays, and positions are written before they are read).
    pub fn forget(&mut self) {
        self.tokens.clear();
    }

    /// Bytes of keys and values it holds now.
    pub fn held_bytes(&self) -> u64 {
        self.layers.iter().map(LayerCache::held_bytes).sum()
    }

    /// Forgets its ids and gives its keys' and values' memory back.
    pub fn release(&mut self) {
        self.forget();
        self.layers.iter_mut().for_each(LayerCache::release);
    }
}

/// What one forward pass computes, sized for its tokens.
struct Buffers {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    projected: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

/// Bytes one session's KV cache takes when full, for a model with
/// `hparams` and a context of `context` tokens.
pub fn kv_cache_bytes(hparams: &Hparams, context: usize) -> u64 {
    (0..hparams.blocks)
        .map(|i| LayerCache::bytes(hparams, context, hparams.window(i), PROMPT_CHUNK))
        .sum()
}

/// Reads the family and hyper-parameters of a GGUF file and checks that
/// every tensor the family needs is present with the right shape and type
/// and lies inside the file, before any weight is read.
pub fn check(
    content: &Content,
    file_size: u64,
) -> Result<(&'static dyn Family, Hparams), CheckError> {
    let architecture = crate::gguf::Metadata(content)
        .required_string("general.architecture")
        .map_err(CheckError::Engine)?;
    let family = family(architecture).ok_or_else(|| CheckError::Unsupported {
        architecture: architecture.to_owned(),
    })?;
    let hparams = family.hparams(content).map_err(CheckError::Engine)?;
    // Every block is several tensors of the file: a count beyond the file's
    // tensors is corrupt, and would size per-block tables (the list below,
    // the KV caches) out of all proportion to the file (found by fuzzing: a
    // 222 KB file asked for 1.6 GB here).
    if hparams.blocks > content.tensor_infos.len() {
        return Err(CheckError::Invalid(format!(
            "block_count is {} but the file holds only {} tensors",
            hparams.blocks,
            content.tensor_infos.len()
        )));
    }
    // Every tensor, used or not, must be a loadable type and lie inside the
    // file, and no two may share bytes: a crafted file whose tensors all
    // point at one region would pass the size checks and multiply memory
    // at load (each tensor is read into memory of its own).
    let mut extents = Vec::with_capacity(content.tensor_infos.len());
    for (name, tensor) in &content.tensor_infos {
        let extent = check_extent(name, tensor, content.tensor_data_offset, file_size)?;
        extents.push((extent, name));
    }
    extents.sort_by_key(|(extent, name)| (extent.start, extent.end, *name));
    for pair in extents.windows(2) {
        let ((first, first_name), (second, second_name)) = (&pair[0], &pair[1]);
        if second.start < first.end {
            return Err(CheckError::Invalid(format!(
                "tensors {first_name} (bytes {first:?}) and {second_name} (bytes {second:?}) \
                 overlap: the file is corrupt"
            )));
        }
    }
    for (name, shape) in expected_tensors(family, &hparams, content) {
        let info = content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| CheckError::Invalid(format!("tensor {name} is missing")))?;
        if info.shape.dims() != shape.as_slice() {
            return Err(CheckError::Invalid(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                info.shape.dims()
            )));
        }
        // Quantized matrix rows are whole blocks, or the kernels misread them.
        let block = info.ggml_dtype.block_size();
        if shape.last().is_some_and(|cols| cols % block != 0) {
            return Err(CheckError::Invalid(format!(
                "tensor {name}: rows of {} values do not fill whole {:?} blocks of {block}",
                shape.last().copied().unwrap_or_default(),
                info.ggml_dtype
            )));
        }
    }
    Ok((family, hparams))
}

/// Why [`check`] refused a file; the caller adds the path.
#[derive(Debug)]
pub enum CheckError {
    /// `general.architecture` names no family here.
    Unsupported {
        /// The file's architecture.
        architecture: String,
    },
    /// A tensor type the loader cannot read.
    TensorType {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        dtype: String,
    },
    /// Something else is wrong with the file.
    Invalid(String),
    /// An error that already says everything (metadata).
    Engine(EngineError),
}

/// Every tensor the family's wiring reads, with its shape (candle's order:
/// rows, then columns).
fn expected_tensors(
    family: &dyn Family,
    h: &Hparams,
    content: &Content,
) -> Vec<(String, Vec<usize>)> {
    let w = h.wiring;
    let (hidden, q, kv, ff) = (h.hidden, h.q_width(), h.kv_width(), h.feed_forward);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("output_norm.weight".into(), vec![hidden]),
        ("token_embd.weight".into(), vec![h.vocab, hidden]),
    ];
    if content.tensor_infos.contains_key("output.weight") {
        expected.push(("output.weight".into(), vec![h.vocab, hidden]));
    }
    if let Some(name) = family.rope_factors() {
        if content.tensor_infos.contains_key(name) {
            expected.push((name.into(), vec![h.rope.dims / 2]));
        }
    }
    for i in 0..h.blocks {
        let mut part = |name: &str, shape: Vec<usize>| {
            expected.push((format!("blk.{i}.{name}"), shape));
        };
        part("attn_norm.weight", vec![hidden]);
        part("ffn_norm.weight", vec![hidden]);
        part("attn_output.weight", vec![hidden, q]);
        part("ffn_down.weight", vec![hidden, ff]);
        if w.fused_qkv {
            part("attn_qkv.weight", vec![q + 2 * kv, hidden]);
        } else {
            part("attn_q.weight", vec![q, hidden]);
            part("attn_k.weight", vec![kv, hidden]);
            part("attn_v.weight", vec![kv, hidden]);
        }
        if w.qkv_bias {
            part("attn_q.bias", vec![q]);
            part("attn_k.bias", vec![kv]);
            part("attn_v.bias", vec![kv]);
        }
        if w.qk_norm {
            part("attn_q_norm.weight", vec![h.head_dim]);
            part("attn_k_norm.weight", vec![h.head_dim]);
        }
        if w.sandwich_norms {
            part("post_attention_norm.weight", vec![hidden]);
            part("post_ffw_norm.weight", vec![hidden]);
        }
        if w.fused_gate_up {
            part("ffn_up.weight", vec![2 * ff, hidden]);
        } else {
            part("ffn_gate.weight", vec![ff, hidden]);
            part("ffn_up.weight", vec![ff, hidden]);
        }
    }
    expected
}

/// Checks that a tensor's type is loadable and its bytes lie inside the
/// file, with overflow-checked arithmetic (a crafted shape can overflow);
/// returns where its bytes are.
fn check_extent(
    name: &str,
    tensor: &TensorInfo,
    data_offset: u64,
    file_size: u64,
) -> Result<std::ops::Range<u64>, CheckError> {
    if !LOADABLE_TYPES.contains(&tensor.ggml_dtype) {
        return Err(CheckError::TensorType {
            tensor: name.to_owned(),
            dtype: format!("{:?}", tensor.ggml_dtype),
        });
    }
    let dims = tensor.shape.dims();
    let elements = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| CheckError::Invalid(format!("tensor {name} shape {dims:?} overflows")))?;
    let block = tensor.ggml_dtype.block_size();
    if elements == 0 || elements % block != 0 {
        return Err(CheckError::Invalid(format!(
            "tensor {name} has {elements} values, not a positive multiple of the {:?} block \
             size {block}",
            tensor.ggml_dtype
        )));
    }
    let bytes = (elements / block)
        .checked_mul(tensor.ggml_dtype.type_size())
        .and_then(|b| u64::try_from(b).ok());
    let start = data_offset.checked_add(tensor.offset);
    let end = bytes
        .and_then(|b| start?.checked_add(b))
        .filter(|&end| end <= file_size);
    match (start, end) {
        (Some(start), Some(end)) => Ok(start..end),
        _ => Err(CheckError::Invalid(format!(
            "tensor {name} ({dims:?} {:?} at offset {}) lies beyond the end of the file \
             ({file_size} bytes): the file is truncated or corrupt",
            tensor.ggml_dtype, tensor.offset
        ))),
    }
}

impl Transformer {
    /// Reads every tensor of a file [`check`] accepted into the kernels'
    /// layouts; sessions hold up to `context` tokens and the products run
    /// on `threads` threads.
    pub fn load<R: Read + Seek + Send>(
        family: &dyn Family,
        mut hparams: Hparams,
        content: &Content,
        reader: &mut R,
        context: usize,
        threads: usize,
    ) -> candle_core::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("textstream-kernel-{i}"))
            .build()
            .map_err(|e| candle_core::Error::Msg(format!("starting the thread pool: {e}")))?;
        let mut read = |name: &str| content.tensor(reader, name, &Device::Cpu);
        let factors_tensor = family
            .rope_factors()
            .filter(|name| content.tensor_infos.contains_key(*name));
        if let Some(name) = factors_tensor {
            let factors = vector(&read(name)?)?;
            if factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
                candle_core::bail!("{name} holds a divisor that is not a positive number")
            }
            hparams.rope.factors = Some(factors);
        }
        let embedding = read("token_embd.weight")?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Some(read("output.weight")?),
            false => None,
        };
        let output_norm = vector(&read("output_norm.weight")?)?;
        let w = hparams.wiring;
        // Reading is sequential; laying matrices out for the kernels runs on
        // the pool: the embedding beside the blocks, two matrices at a time.
        let (embedding, blocks) = pool.install(|| {
            rayon::join(
                || matrix(&[&embedding]),
                || {
                    (0..hparams.blocks)
                        .map(|i| {
                            let mut part = |name: &str| read(&format!("blk.{i}.{name}"));
                            let qkv_parts = match w.fused_qkv {
                                true => vec![part("attn_qkv.weight")?],
                                false => vec![
                                    part("attn_q.weight")?,
                                    part("attn_k.weight")?,
                                    part("attn_v.weight")?,
                                ],
                            };
                            let qkv_bias = match w.qkv_bias {
                                true => Some(
                                    [
                                        vector(&part("attn_q.bias")?)?,
                                        vector(&part("attn_k.bias")?)?,
                                        vector(&part("attn_v.bias")?)?,
                                    ]
                                    .concat(),
                                ),
                                false => None,
                            };
                            let qk_norm = match w.qk_norm {
                                true => Some((
                                    vector(&part("attn_q_norm.weight")?)?,
                                    vector(&part("attn_k_norm.weight")?)?,
                                )),
                                false => None,
                            };
                            let (post_attn_norm, post_ffn_norm) = match w.sandwich_norms {
                                true => (
                                    Some(vector(&part("post_attention_norm.weight")?)?),
                                    Some(vector(&part("post_ffw_norm.weight")?)?),
                                ),
                                false => (None, None),
                            };
                            let attn_output = part("attn_output.weight")?;
                            let gate_up_parts = match w.fused_gate_up {
                                true => vec![part("ffn_up.weight")?],
                                false => vec![part("ffn_gate.weight")?, part("ffn_up.weight")?],
                            };
                            let down = part("ffn_down.weight")?;
                            let (attn_norm, ffn_norm) =
                                (part("attn_norm.weight")?, part("ffn_norm.weight")?);
                            let qkv_refs: Vec<&QTensor> = qkv_parts.iter().collect();
                            let gate_up_refs: Vec<&QTensor> = gate_up_parts.iter().collect();
                            let ((qkv, output), (gate_up, down)) = rayon::join(
                                || (matrix(&qkv_refs), matrix(&[&attn_output])),
                                || (matrix(&gate_up_refs), matrix(&[&down])),
                            );
                            Ok(Block {
                                attn_norm: vector(&attn_norm)?,
                                qkv: qkv?,
                                qkv_bias,
                                qk_norm,
                                output: output?,
                                post_attn_norm,
                                ffn_norm: vector(&ffn_norm)?,
                                gate_up: gate_up?,
                                down: down?,
                                post_ffn_norm,
                            })
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                },
            )
        });
        let mut model = Self {
            embedding_scale: w.scale_embedding.then(|| (hparams.hidden as f32).sqrt()),
            hparams,
            embedding: embedding?,
            output: output.map(|o| matrix(&[&o])).transpose()?,
            blocks: blocks?,
            output_norm,
            context,
            prompt_chunk: PROMPT_CHUNK,
            pool,
        };
        model.pack();
        Ok(model)
    }

    /// Moves the weights into one buffer in the order a step reads them
    /// (in 2 MiB pages where the OS gives them: [`crate::quant::pack`]).
    fn pack(&mut self) {
        let mut order: Vec<&mut Matrix> = Vec::with_capacity(4 * self.blocks.len() + 2);
        for block in &mut self.blocks {
            order.extend([
                &mut block.qkv,
                &mut block.output,
                &mut block.gate_up,
                &mut block.down,
            ]);
        }
        order.extend(self.output.as_mut());
        order.push(&mut self.embedding);
        self.pool.install(|| crate::quant::pack(order));
    }

    /// Sets the most prompt tokens per forward pass (at least 1), which also
    /// sizes windowed layers' rings: tests use a small one to make rings wrap.
    #[doc(hidden)]
    pub fn with_prompt_chunk(mut self, tokens: usize) -> Self {
        self.prompt_chunk = tokens.max(1);
        self
    }

    /// The hyper-parameters the model was built from.
    pub fn hparams(&self) -> &Hparams {
        &self.hparams
    }

    /// Bytes of weights one decode step reads: every block's matrices and
    /// the output projection (the embedding is read a row at a time).
    pub fn weight_bytes_per_token(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| b.qkv.bytes() + b.output.bytes() + b.gate_up.bytes() + b.down.bytes())
            .sum();
        blocks + self.output.as_ref().unwrap_or(&self.embedding).bytes()
    }

    /// Multiply-adds of one prompt token's products: every block's
    /// matrices (the output product runs for a prompt's last token only).
    pub fn prompt_macs_per_token(&self) -> usize {
        let size = |m: &Matrix| m.rows() * m.cols();
        self.blocks
            .iter()
            .map(|b| size(&b.qkv) + size(&b.output) + size(&b.gate_up) + size(&b.down))
            .sum()
    }

    /// An empty cache for one sequence of up to the model's context.
    pub fn new_cache(&self) -> KvCache {
        let h = &self.hparams;
        KvCache {
            layers: (0..h.blocks)
                .map(|i| LayerCache::new(h, self.context, h.window(i), self.prompt_chunk))
                .collect(),
            activations: Activations::new(),
            tokens: Vec::new(),
        }
    }

    /// Bytes of KV cache one sequence holds once `positions` positions are
    /// written (whole blocks of 16 positions per layer;
    /// a windowed layer at most its ring).
    pub fn kv_bytes(&self, positions: usize) -> u64 {
        let h = &self.hparams;
        (0..h.blocks)
            .map(|i| {
                LayerCache::bytes_for(h, self.context, h.window(i), self.prompt_chunk, positions)
            })
            .sum()
    }

    /// Bytes of one KV block: 16 positions' keys and values in one layer.
    pub fn kv_block_bytes(&self) -> u64 {
        LayerCache::block_bytes(&self.hparams)
    }

    /// A new cache holding what `cache` holds for `prompt`'s first `keep`
    /// tokens, `keep` at most [`Self::reusable_prefix`]`(cache, prompt)`:
    /// another sequence starts past them without running them again. Only
    /// the blocks those positions live in are copied. Empty when a windowed
    /// layer's ring has wrapped (its slots then also hold later positions,
    /// which the copy could not tell from its own).
    pub fn fork(&self, cache: &KvCache, keep: usize) -> KvCache {
        let written = cache.tokens.len();
        if cache.layers.iter().any(|l| l.wrapped(written)) {
            return self.new_cache();
        }
        let keep = keep.min(written);
        KvCache {
            layers: cache
                .layers
                .iter()
                .map(|l| l.prefix_copy(self.hparams.head_dim, keep))
                .collect(),
            activations: Activations::new(),
            tokens: cache.tokens[..keep].to_vec(),
        }
    }

    /// How many of `prompt`'s first tokens `cache` already holds, exactly as
    /// running them again would compute them (so a sequence may start past
    /// them): the common prefix of the ids it ran and `prompt`, all but
    /// `prompt`'s last token (whose logits are needed), and none where a
    /// windowed layer's ring has since overwritten keys the prefix needs.
    pub fn reusable_prefix(&self, cache: &KvCache, prompt: &[u32]) -> usize {
        let common = cache
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        let written = cache.tokens.len();
        let h = &self.hparams;
        let overwritten = (0..h.blocks).any(|i| match h.window(i) {
            Some(window) => {
                let slots = LayerCache::slots(self.context, Some(window), self.prompt_chunk);
                written - common + window > slots
            }
            None => false,
        });
        if overwritten {
            0
        } else {
            common
        }
    }

    /// Runs `ids` at positions `pos..pos + ids.len()`, writing their keys and
    /// values into `cache`, and returns the logits after the last one.
    pub fn forward_last(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        pos: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let end = pos + ids.len();
        if ids.is_empty() || end > self.context {
            candle_core::bail!("positions {pos}..{end} outside 1..={}", self.context)
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.embedding.rows()) {
            candle_core::bail!("token id {id} is outside the vocabulary")
        }
        Ok(crate::team::run(&self.pool, || {
            let mut last = Vec::new();
            for (i, chunk) in ids.chunks(self.prompt_chunk).enumerate() {
                let mut step = [Step {
                    cache: &mut *cache,
                    ids: chunk,
                    pos: pos + i * self.prompt_chunk,
                }];
                last = self.forward_steps(&mut step);
            }
            self.logits(&mut cache.activations, &last).remove(0)
        }))
    }

    /// One forward pass over several sequences at once, each with its own
    /// cache: a decode step of each running sequence, a prompt chunk of
    /// another. The weights are read once for all of their tokens; each
    /// sequence attends only its own cache. Returns each step's logits
    /// after its last token, exactly (bit for bit) what [`Self::forward_last`]
    /// gives that sequence alone.
    pub fn forward_batch(&self, steps: &mut [Step<'_>]) -> candle_core::Result<Vec<Vec<f32>>> {
        for step in steps.iter() {
            let end = step.pos + step.ids.len();
            if step.ids.is_empty() || end > self.context {
                candle_core::bail!("positions {}..{end} outside 1..={}", step.pos, self.context)
            }
            if step.ids.len() > self.prompt_chunk {
                candle_core::bail!(
                    "{} tokens in one step of a batch; at most {}",
                    step.ids.len(),
                    self.prompt_chunk
                )
            }
            if let Some(id) = step
                .ids
                .iter()
                .find(|&&id| id as usize >= self.embedding.rows())
            {
                candle_core::bail!("token id {id} is outside the vocabulary")
            }
        }
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        Ok(crate::team::run(&self.pool, || {
            let last = self.forward_steps(steps);
            self.logits(&mut steps[0].cache.activations, &last)
        }))
    }

    /// Every step's tokens through every block; returns each step's last
    /// hidden state (`[step][hidden]`).
    fn forward_steps(&self, steps: &mut [Step<'_>]) -> Vec<f32> {
        let h = &self.hparams;
        let w = h.wiring;
        // Each step's rows in the buffers.
        let mut spans = Vec::with_capacity(steps.len());
        let mut t = 0;
        for step in steps.iter() {
            spans.push(t..t + step.ids.len());
            t += step.ids.len();
        }
        let (q_width, kv_width) = (h.q_width(), h.kv_width());
        let qkv_width = q_width + 2 * kv_width;
        let mut b = Buffers {
            x: vec![0.0; t * h.hidden],
            normed: vec![0.0; t * h.hidden],
            qkv: vec![0.0; t * qkv_width],
            attn: vec![0.0; t * q_width],
            projected: vec![0.0; t * h.hidden],
            gate_up: vec![0.0; t * 2 * h.feed_forward],
            act: vec![0.0; t * h.feed_forward],
        };
        let ids = steps.iter().flat_map(|s| s.ids.iter());
        for (x, &id) in b.x.chunks_exact_mut(h.hidden).zip(ids) {
            self.embedding.dequantize_row(id as usize, x);
            if let Some(scale) = self.embedding_scale {
                x.iter_mut().for_each(|v| *v *= scale);
            }
        }
        // Rotations of every token, at its own sequence's position.
        let table = |rope: &Rope| -> Vec<f32> {
            steps
                .iter()
                .flat_map(|s| rotations(rope, s.pos, s.ids.len()))
                .collect()
        };
        let global = table(&h.rope);
        let local = h
            .sliding_window
            .as_ref()
            .and_then(|s| s.rope.as_ref())
            .map(table);
        for step in steps.iter_mut() {
            step.cache.tokens.truncate(step.pos);
            step.cache.tokens.extend_from_slice(step.ids);
        }
        // A step's attention is split into parallel jobs when it is more
        // than a thread's share of the batch's (a prompt chunk, a long
        // context, a sequence alone); the decode steps of a batch of many
        // already keep every thread busy, one sequence each.
        let work: Vec<usize> = steps
            .iter()
            .map(|s| s.ids.len() * (s.pos + s.ids.len()))
            .collect();
        let total: usize = work.iter().sum();
        let threads = rayon::current_num_threads();
        let split: Vec<bool> = work.iter().map(|&w| w * threads > total).collect();
        // The matrix products' scratch space is the first step's.
        let mut acts = std::mem::take(&mut steps[0].cache.activations);
        for (i, block) in self.blocks.iter().enumerate() {
            let rotation = match (&local, h.window(i)) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            vectorized(
                #[inline(always)]
                || rms_norm(&b.x, &block.attn_norm, h.rms_eps, &mut b.normed),
            );
            block.qkv.matmul(&b.normed, &mut b.qkv, &mut acts);
            // Each sequence's rotations, cache writes and attention: on its
            // own rows and its own cache, so the sequences run in parallel
            // (one at a time, a decode step's 3 or so attention jobs left a
            // core idle, once per sequence and layer).
            let rows = split_rows(&mut b.qkv, &spans, qkv_width)
                .into_iter()
                .zip(split_rows(&mut b.attn, &spans, q_width));
            let work: Vec<_> = steps.iter_mut().zip(&spans).zip(&split).zip(rows).collect();
            let attend = |(((step, span), &split), (qkv, attn)): AttentionWork<'_, '_>| {
                let layer = &mut step.cache.layers[i];
                // Its first keys and values are loaded while it rotates.
                layer.prefetch(h.head_dim, step.pos);
                let rotation = &rotation[span.start * h.rope.dims..span.end * h.rope.dims];
                vectorized(
                    #[inline(always)]
                    || {
                        for (j, token) in qkv.chunks_exact_mut(qkv_width).enumerate() {
                            if let Some(bias) = &block.qkv_bias {
                                add(token, bias);
                            }
                            let (q, kv) = token.split_at_mut(q_width);
                            if let Some((q_norm, k_norm)) = &block.qk_norm {
                                rms_norm_in_place(q, q_norm, h.rms_eps);
                                rms_norm_in_place(&mut kv[..kv_width], k_norm, h.rms_eps);
                            }
                            let rotation = &rotation[j * h.rope.dims..][..h.rope.dims];
                            for head in q.chunks_exact_mut(h.head_dim) {
                                rotate(w.rope_style, head, rotation);
                            }
                            for head in kv[..kv_width].chunks_exact_mut(h.head_dim) {
                                rotate(w.rope_style, head, rotation);
                            }
                            layer.store(h.head_dim, step.pos + j, kv);
                        }
                    },
                );
                layer.attend(h, qkv, step.pos, attn, split);
            };
            // A sequence whose attention splits into parallel jobs runs on
            // its own, opening its own regions; the others (decode steps of
            // a batch) share one region, a sequence per item.
            let (alone, shared): (Vec<_>, Vec<_>) =
                work.into_iter().partition(|(((_, _), &split), _)| split);
            alone.into_iter().for_each(&attend);
            crate::team::for_each(shared, 1, attend);
            block.output.matmul(&b.attn, &mut b.projected, &mut acts);
            vectorized(
                #[inline(always)]
                || {
                    if let Some(norm) = &block.post_attn_norm {
                        rms_norm_in_place(&mut b.projected, norm, h.rms_eps);
                    }
                    add(&mut b.x, &b.projected);
                    rms_norm(&b.x, &block.ffn_norm, h.rms_eps, &mut b.normed);
                },
            );
            block.gate_up.matmul(&b.normed, &mut b.gate_up, &mut acts);
            gated_activation(w.activation, h.feed_forward, &b.gate_up, &mut b.act);
            block.down.matmul(&b.act, &mut b.projected, &mut acts);
            vectorized(
                #[inline(always)]
                || {
                    if let Some(norm) = &block.post_ffn_norm {
                        rms_norm_in_place(&mut b.projected, norm, h.rms_eps);
                    }
                    add(&mut b.x, &b.projected);
                },
            );
        }
        steps[0].cache.activations = acts;
        spans
            .iter()
            .flat_map(|span| {
                b.x[(span.end - 1) * h.hidden..span.end * h.hidden]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// The logits of each of `last`'s hidden states (`[state][hidden]`).
    fn logits(&self, acts: &mut Activations, last: &[f32]) -> Vec<Vec<f32>> {
        let h = &self.hparams;
        let mut normed = vec![0.0; last.len()];
        for (last, normed) in last
            .chunks_exact(h.hidden)
            .zip(normed.chunks_exact_mut(h.hidden))
        {
            rms_norm(last, &self.output_norm, h.rms_eps, normed);
        }
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        // Each sequence's logits written in place (one buffer for all,
        // copied out, was 3 % of a step of 8 SmolLM2 sequences).
        let mut logits: Vec<Vec<f32>> = (0..last.len() / h.hidden)
            .map(|_| vec![0.0; output.rows()])
            .collect();
        output.matmul_rows(
            &normed,
            logits.iter_mut().map(Vec::as_mut_slice).collect(),
            acts,
        );
        logits
    }
}

/// One sequence's share of a layer's attention: its step, its rows of the
/// batch, whether its attention splits into parallel jobs, and its rows of
/// the QKV and attention buffers.
type AttentionWork<'s, 'a> = (
    ((&'s mut Step<'a>, &'s Range<usize>), &'s bool),
    (&'s mut [f32], &'s mut [f32]),
);

/// `buffer`'s rows (`width` values each) cut into each step's own, in order:
/// `spans` are consecutive from row 0.
fn split_rows<'a>(
    buffer: &'a mut [f32],
    spans: &[Range<usize>],
    width: usize,
) -> Vec<&'a mut [f32]> {
    let mut rest = buffer;
    spans
        .iter()
        .map(|span| {
            let (rows, tail) = std::mem::take(&mut rest).split_at_mut(span.len() * width);
            rest = tail;
            rows
        })
        .collect()
}

/// A norm's (or bias's) weights as f32.
fn vector(t: &QTensor) -> candle_core::Result<Vec<f32>> {
    t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()
}

/// The matrices `parts` (same columns) stacked by rows into one kernel
/// matrix, each part in the file's own type (a segment of its own where the
/// types differ). The types no weight is stored in (Q8_1, Q8_K) go through f32.
fn matrix(parts: &[&QTensor]) -> candle_core::Result<Matrix> {
    let quant_err = |e: QuantError| candle_core::Error::Msg(e.to_string());
    let mut built: Option<Matrix> = None;
    for part in parts {
        let (rows, cols) = part.shape().dims2()?;
        let piece = match gguf_type(part.dtype()) {
            Some(kind) => Matrix::from_gguf(kind, &part.data()?, rows, cols),
            None => Matrix::from_f32(vector(part)?, rows, cols),
        }
        .map_err(quant_err)?;
        match &mut built {
            Some(matrix) => matrix.append_rows(piece).map_err(quant_err)?,
            None => built = Some(piece),
        }
    }
    built.ok_or_else(|| candle_core::Error::Msg("a matrix of no parts".into()))
}

/// The kernels' name for a GGUF tensor type, if they read it.
fn gguf_type(dtype: GgmlDType) -> Option<GgufType> {
    Some(match dtype {
        GgmlDType::F32 => GgufType::F32,
        GgmlDType::F16 => GgufType::F16,
        GgmlDType::BF16 => GgufType::BF16,
        GgmlDType::Q4_0 => GgufType::Quant(QuantType::Q4_0),
        GgmlDType::Q4_1 => GgufType::Quant(QuantType::Q4_1),
        GgmlDType::Q5_0 => GgufType::Quant(QuantType::Q5_0),
        GgmlDType::Q5_1 => GgufType::Quant(QuantType::Q5_1),
        GgmlDType::Q8_0 => GgufType::Quant(QuantType::Q8_0),
        GgmlDType::Q2K => GgufType::Quant(QuantType::Q2_K),
        GgmlDType::Q3K => GgufType::Quant(QuantType::Q3_K),
        GgmlDType::Q4K => GgufType::Quant(QuantType::Q4_K),
        GgmlDType::Q5K => GgufType::Quant(QuantType::Q5_K),
        GgmlDType::Q6K => GgufType::Quant(QuantType::Q6_K),
        GgmlDType::Q8_1 | GgmlDType::Q8K => return None,
    })
}
