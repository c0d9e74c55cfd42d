//! The engine's own llama forward pass: candle tensors and [`QMatMul`], with
//! the weights re-laid for speed and a preallocated KV cache.
//!
//! candle's `quantized_llama::ModelWeights` (kept as the reference, see
//! [`WeightFormat::Reference`]) is correct but slow on a small model on few
//! cores, for three reasons this module removes:
//!
//! - **No SIMD kernel for the file's type.** candle multiplies Q4_1 with a
//!   scalar loop. [`LlamaWeights::load`] re-quantizes every matrix once, at
//!   load, to a type with an AVX2/AVX-512 kernel (by default
//!   [`DEFAULT_FAST_DTYPE`], Q8_0: 8 bits hold the 16 levels of a Q4_1 block
//!   to within half a Q8_0 step, so greedy output stays that of the file).
//! - **Many small matmuls.** Q, K and V share their input, and so do the
//!   feed-forward gate and up projections: each group becomes one matrix
//!   whose rows are the parts stacked, so a layer runs 4 matmuls, not 7.
//! - **A KV cache rebuilt every step.** The reference concatenates the whole
//!   cache onto the new key at every token (O(n) copies per step, O(n²) per
//!   sequence). [`KvCache`] allocates each layer's keys and values for the
//!   whole context once and writes each new position in place; the zeroed
//!   allocation is only backed by memory as positions are written.
//!
//! The attention scale `1/sqrt(head_dim)` is folded into the rotary table
//! used for queries (a power of two for every llama head size in use, so the
//! result is bit-for-bit the scaled product), and grouped-query attention
//! multiplies each KV head by its group of query heads at once instead of
//! copying the keys for every query head.
//!
//! Prefill and decode share [`LlamaWeights::forward_last`]: a decode step is a
//! prompt of one token.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

/// The type matrices are re-quantized to by default: Q8_0 has an AVX2 and an
/// AVX-512 VNNI kernel in candle, and loses nothing that decides greedy
/// output on the default model (see `tests/fast_path.rs`).
pub const DEFAULT_FAST_DTYPE: GgmlDType = GgmlDType::Q8_0;

/// Rotary base when the file does not give `llama.rope.freq_base`, as in
/// llama.cpp and candle.
const DEFAULT_ROPE_FREQ_BASE: f32 = 10_000.0;

/// How the weights of a llama model are held and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightFormat {
    /// candle's `quantized_llama::ModelWeights` with the file's own types:
    /// the reference the fast path is checked against.
    Reference,
    /// This module's forward pass, every matrix converted to the given type
    /// at load (`F32`/`F16` dequantize; the file's own type keeps its bytes).
    Fast(GgmlDType),
}

impl Default for WeightFormat {
    /// By default, the fast path with [`DEFAULT_FAST_DTYPE`].
    fn default() -> Self {
        Self::Fast(DEFAULT_FAST_DTYPE)
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    /// `reference`, or a type name for the fast path: `q8_0` (the default),
    /// `q4_0`, `q4_1`, `q5_0`, `q5_1`, `f16`, `f32`.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        let dtype = match name.to_ascii_lowercase().as_str() {
            "reference" => return Ok(Self::Reference),
            "q8_0" => GgmlDType::Q8_0,
            "q4_0" => GgmlDType::Q4_0,
            "q4_1" => GgmlDType::Q4_1,
            "q5_0" => GgmlDType::Q5_0,
            "q5_1" => GgmlDType::Q5_1,
            "f16" => GgmlDType::F16,
            "f32" => GgmlDType::F32,
            _ => {
                return Err(format!(
                    "unknown weight format {name:?}: expected reference, q8_0, q4_0, q4_1, \
                     q5_0, q5_1, f16 or f32"
                ))
            }
        };
        Ok(Self::Fast(dtype))
    }
}

/// Shapes read from the GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    blocks: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    feed_forward: usize,
    rms_eps: f32,
    rope_freq_base: f32,
}

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    /// Q, K and V stacked: `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    qkv: QMatMul,
    output: QMatMul,
    ffn_norm: Tensor,
    /// Gate and up stacked: `[2 * feed_forward, hidden]`.
    gate_up: QMatMul,
    down: QMatMul,
}

/// A llama model's weights, shared by sessions (in an `Arc`).
#[derive(Debug)]
pub struct LlamaWeights {
    shape: Shape,
    /// The token embedding in the file's type; rows are dequantized on lookup.
    embedding: QTensor,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: QMatMul,
    /// Rotary tables `[positions, head_dim / 2]`; the query ones carry the
    /// attention scale.
    cos: Tensor,
    sin: Tensor,
    cos_q: Tensor,
    sin_q: Tensor,
    max_positions: usize,
}

/// One sequence's keys and values, allocated for the whole context at once.
#[derive(Debug)]
pub struct KvCache {
    /// Per block, `[kv_heads, max_positions, head_dim]` each.
    layers: Vec<(Tensor, Tensor)>,
}

impl LlamaWeights {
    /// Reads every tensor of a llama GGUF file (already checked by the caller)
    /// and converts the matrices to `dtype`; sessions hold up to
    /// `max_positions` tokens.
    pub fn load<R: Read + Seek>(
        content: &Content,
        reader: &mut R,
        dtype: GgmlDType,
        max_positions: usize,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let shape = read_shape(content)?;
        let mut tensor = |name: &str| content.tensor(reader, name, &device);

        let embedding = tensor("token_embd.weight")?;
        // Tied embeddings (no output.weight): the output matrix is a copy of
        // the embedding, which stays in the file's type for row lookups.
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => tensor("output.weight")?,
            false => clone_qtensor(&embedding)?,
        };
        let output_norm = tensor("output_norm.weight")?.dequantize(&device)?;
        let mut blocks = Vec::with_capacity(shape.blocks);
        for i in 0..shape.blocks {
            let mut part = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            let attn_norm = part("attn_norm")?.dequantize(&device)?;
            let ffn_norm = part("ffn_norm")?.dequantize(&device)?;
            let q = part("attn_q")?;
            let k = part("attn_k")?;
            let v = part("attn_v")?;
            let attn_output = part("attn_output")?;
            let gate = part("ffn_gate")?;
            let up = part("ffn_up")?;
            let down = part("ffn_down")?;
            blocks.push(Block {
                attn_norm,
                qkv: stacked(&[&q, &k, &v], dtype)?,
                output: stacked(&[&attn_output], dtype)?,
                ffn_norm,
                gate_up: stacked(&[&gate, &up], dtype)?,
                down: stacked(&[&down], dtype)?,
            });
        }
        let output = stacked(&[&output], dtype)?;

        let (cos, sin) = rotary_tables(&shape, max_positions, 1.0)?;
        let scale = 1.0 / (shape.head_dim as f64).sqrt();
        let (cos_q, sin_q) = rotary_tables(&shape, max_positions, scale)?;
        Ok(Self {
            shape,
            embedding,
            blocks,
            output_norm,
            output,
            cos,
            sin,
            cos_q,
            sin_q,
            max_positions,
        })
    }

    /// An empty cache for one sequence of up to `max_positions` tokens.
    pub fn new_cache(&self) -> Result<KvCache> {
        let s = &self.shape;
        let layers = (0..s.blocks)
            .map(|_| {
                let dims = (s.kv_heads, self.max_positions, s.head_dim);
                Ok((
                    Tensor::zeros(dims, DType::F32, &Device::Cpu)?,
                    Tensor::zeros(dims, DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }

    /// Runs `ids` at positions `pos..pos + ids.len()`, writing their keys and
    /// values into `cache`, and returns the logits after the last one.
    pub fn forward_last(&self, cache: &mut KvCache, ids: &[u32], pos: usize) -> Result<Vec<f32>> {
        let s = &self.shape;
        let t = ids.len();
        let end = pos + t;
        if t == 0 || end > self.max_positions {
            candle_core::bail!("positions {pos}..{end} outside 1..={}", self.max_positions)
        }
        let device = Device::Cpu;
        let q_width = s.heads * s.head_dim;
        let kv_width = s.kv_heads * s.head_dim;
        let group = s.heads / s.kv_heads;

        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let cos_q = self.cos_q.narrow(0, pos, t)?;
        let sin_q = self.sin_q.narrow(0, pos, t)?;
        // Additive causal mask [t, end] for a prompt; a single token sees all.
        let mask = match t {
            1 => None,
            _ => Some(causal_mask(t, pos, &device)?),
        };

        let mut x = self.embedding.embedding(&Tensor::new(ids, &device)?)?;
        for (block, (k_cache, v_cache)) in self.blocks.iter().zip(&mut cache.layers) {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, s.rms_eps)?;
            let qkv = block.qkv.forward(&h)?;
            // [t, heads * head_dim] -> [heads, t, head_dim], as rope_i wants.
            let heads = |offset, n: usize| {
                qkv.narrow(1, offset, n * s.head_dim)?
                    .reshape((t, n, s.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)
            };
            let q = candle_nn::rotary_emb::rope_i(&heads(0, s.heads)?, &cos_q, &sin_q)?;
            let k = candle_nn::rotary_emb::rope_i(&heads(q_width, s.kv_heads)?, &cos, &sin)?;
            let v = heads(q_width + kv_width, s.kv_heads)?;
            k_cache.slice_set(&k.squeeze(0)?, 1, pos)?;
            v_cache.slice_set(&v.squeeze(0)?, 1, pos)?;
            let keys = k_cache.narrow(1, 0, end)?;
            let values = v_cache.narrow(1, 0, end)?;

            // Each KV head against its group of query heads: [kv_heads, group * t, head_dim].
            let q = q.reshape((s.kv_heads, group * t, s.head_dim))?;
            let scores = q.matmul(&keys.t()?)?;
            let scores = match &mask {
                None => scores,
                Some(mask) => scores
                    .reshape((s.kv_heads, group, t, end))?
                    .broadcast_add(mask)?
                    .reshape((s.kv_heads, group * t, end))?,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn = probs
                .matmul(&values)?
                .reshape((s.heads, t, s.head_dim))?
                .transpose(0, 1)?
                .reshape((t, q_width))?;
            x = (x + block.output.forward(&attn)?)?;

            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, s.rms_eps)?;
            let gate_up = block.gate_up.forward(&h)?;
            let gate = gate_up.narrow(1, 0, s.feed_forward)?;
            let up = gate_up.narrow(1, s.feed_forward, s.feed_forward)?;
            let act = (candle_nn::ops::silu(&gate)? * up)?;
            x = (x + block.down.forward(&act)?)?;
        }
        let last = x.narrow(0, t - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, s.rms_eps)?;
        self.output.forward(&last)?.squeeze(0)?.to_vec1::<f32>()
    }
}

/// Types candle 0.11 multiplies with a scalar loop on x86: the ones worth
/// converting at load.
const SCALAR_KERNEL_TYPES: &[GgmlDType] = &[GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// The matrices `parts` (same columns) stacked by rows into one. When they
/// share a type that has a SIMD kernel (or is `dtype` already) their bytes are
/// kept as they are; otherwise they go through f32 to `dtype`.
fn stacked(parts: &[&QTensor], dtype: GgmlDType) -> Result<QMatMul> {
    let first = parts[0].dtype();
    let columns = parts[0].shape().dims2()?.1;
    let rows: usize = parts
        .iter()
        .map(|p| p.shape().dims2().map(|(r, _)| r))
        .sum::<Result<usize>>()?;
    let same_type = parts.iter().all(|p| p.dtype() == first);
    let keep = same_type && (first == dtype || !SCALAR_KERNEL_TYPES.contains(&first));
    let tensor = if keep {
        let mut bytes = Vec::new();
        for part in parts {
            bytes.extend_from_slice(&part.data()?);
        }
        qtensor_from_ggml(first, &bytes, vec![rows, columns], &Device::Cpu)?
    } else {
        let f32_parts = parts
            .iter()
            .map(|p| p.dequantize(&Device::Cpu))
            .collect::<Result<Vec<_>>>()?;
        let whole = Tensor::cat(&f32_parts, 0)?;
        QTensor::quantize(&whole, dtype)?
    };
    QMatMul::from_qtensor(tensor)
}

fn clone_qtensor(t: &QTensor) -> Result<QTensor> {
    qtensor_from_ggml(
        t.dtype(),
        &t.data()?,
        t.shape().dims().to_vec(),
        &Device::Cpu,
    )
}

/// `cos` and `sin` of every position's rotation, `[positions, head_dim / 2]`,
/// times `scale`, computed as candle's llama does.
fn rotary_tables(shape: &Shape, positions: usize, scale: f64) -> Result<(Tensor, Tensor)> {
    let device = Device::Cpu;
    let theta: Vec<f32> = (0..shape.head_dim)
        .step_by(2)
        .map(|i| 1.0 / shape.rope_freq_base.powf(i as f32 / shape.head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), &device)?;
    let angles = Tensor::arange(0, positions as u32, &device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok(((angles.cos()? * scale)?, (angles.sin()? * scale)?))
}

/// 0 where query `i` (at `pos + i`) may see key `j`, minus infinity after it.
fn causal_mask(t: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let end = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..end).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, end), device)
}

fn read_shape(content: &Content) -> Result<Shape> {
    let get = |key: &str| match content.metadata.get(key) {
        Some(v) => v.to_u32().map(|v| v as usize),
        None => candle_core::bail!("metadata {key} is missing"),
    };
    let hidden = get("llama.embedding_length")?;
    let heads = get("llama.attention.head_count")?;
    let kv_heads = get("llama.attention.head_count_kv")?;
    let feed_forward = content
        .tensor_infos
        .get("blk.0.ffn_gate.weight")
        .map(|info| info.shape.dims()[0])
        .ok_or_else(|| candle_core::Error::Msg("blk.0.ffn_gate.weight is missing".into()))?;
    let rms_eps = match content
        .metadata
        .get("llama.attention.layer_norm_rms_epsilon")
    {
        Some(v) => v.to_f32()?,
        None => candle_core::bail!("metadata llama.attention.layer_norm_rms_epsilon is missing"),
    };
    let rope_freq_base = content
        .metadata
        .get("llama.rope.freq_base")
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(DEFAULT_ROPE_FREQ_BASE);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
        candle_core::bail!("{heads} heads, {kv_heads} KV heads and width {hidden} do not divide")
    }
    Ok(Shape {
        blocks: get("llama.block_count")?,
        hidden,
        heads,
        kv_heads,
        head_dim: hidden / heads,
        feed_forward,
        rms_eps,
        rope_freq_base,
    })
}
