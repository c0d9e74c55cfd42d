//! The engine's own llama forward pass: the [`quant`](crate::quant)
//! kernels on the file's own values, plain f32 buffers in between, a
//! preallocated KV cache, all on one rayon pool.
//!
//! candle's `quantized_llama::ModelWeights` (kept as the reference, see
//! [`WeightFormat::Reference`]) is correct but slow on a small model on few
//! cores, for reasons this module removes:
//!
//! - **No SIMD kernel for the file's type.** candle multiplies Q4_1 with a
//!   scalar loop. The [`quant`](crate::quant) kernels take Q4_1, Q4_0 and
//!   Q8_0 as they are (AVX-512 VNNI, one instruction per 64 products), so
//!   the fast path computes with exactly the file's weights.
//! - **Hundreds of small tensor operations per token**, each a dispatch and
//!   an allocation, and a thread pool woken for each. Here a layer is four
//!   matrix products (Q, K and V stacked into one matrix, gate and up into
//!   another) and a few loops over plain slices, and the whole step runs
//!   inside one rayon pool, so the products split across cores without a
//!   hand-off.
//! - **A KV cache rebuilt every step.** The reference concatenates the whole
//!   cache onto the new key at every token (O(n) copies per step). [`KvCache`]
//!   allocates each layer's keys and values for the whole context once
//!   (zeroed memory, backed only as positions are written) and writes each
//!   new position in place. Keys are stored in tiles of
//!   [`KEY_TILE`] positions, dimension-major inside a tile, so a query's
//!   scores against 16 keys are 16 lanes of one multiply-add per dimension,
//!   and one pass over a KV head's keys serves its whole group of query heads.
//!
//! Prefill and decode share [`LlamaWeights::forward_last`]: a decode step is a
//! prompt of one token.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use rayon::prelude::*;

use crate::math::{exp_in_place, fast_exp};
use crate::quant::{dot_f32, Activations, GgufBlocks, Matrix, QuantError};

/// Rotary base when the file does not give `llama.rope.freq_base`, as in
/// llama.cpp and candle.
const DEFAULT_ROPE_FREQ_BASE: f32 = 10_000.0;

/// Most query heads per KV head this forward pass handles (llama models use
/// 1 to 8; SmolLM2 uses 3).
const MAX_GROUP: usize = 16;

/// Key positions per task when a decode step's attention is split (a
/// multiple of [`KEY_TILE`]).
const KEY_CHUNK: usize = 256;

/// Tokens of a prompt one parallel task takes in the element-wise steps.
const TOKENS_PER_TASK: usize = 8;

/// Key positions per tile of the key cache (16 f32 lanes: one AVX-512 register).
pub const KEY_TILE: usize = 16;

/// How the weights of a llama model are held and run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightFormat {
    /// candle's `quantized_llama::ModelWeights` with the file's own types:
    /// the reference the fast path is checked against.
    Reference,
    /// This module's forward pass on the file's own values (Q4_0, Q4_1 and
    /// Q8_0 kept bit for bit; other quantized types re-rounded to 8 bits per
    /// value at load; F32 kept). The default.
    #[default]
    Fast,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    /// `reference` or `fast`.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "reference" => Ok(Self::Reference),
            "fast" => Ok(Self::Fast),
            _ => Err(format!(
                "unknown weight format {name:?}: expected reference or fast"
            )),
        }
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
#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    qkv: Matrix,
    output: Matrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `[2 * feed_forward, hidden]`.
    gate_up: Matrix,
    down: Matrix,
}

/// A llama model's weights, shared by sessions (in an `Arc`).
#[derive(Debug)]
pub struct LlamaWeights {
    shape: Shape,
    /// The token embedding; rows are dequantized on lookup.
    embedding: Matrix,
    /// The output projection, or `None` when it is the embedding (tied).
    output: Option<Matrix>,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// Per position, `cos` then `sin` of each pair's rotation angle.
    rotary: Vec<f32>,
    max_positions: usize,
    pool: rayon::ThreadPool,
}

/// One sequence's keys and values, allocated for the whole context at once.
#[derive(Debug)]
pub struct KvCache {
    /// Per block: keys `[kv_heads][positions / KEY_TILE][head_dim][KEY_TILE]`
    /// and values `[kv_heads][positions][head_dim]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    activations: Activations,
}

/// What one step computes, sized for its tokens.
struct Buffers {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    projected: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

impl LlamaWeights {
    /// Reads every tensor of a llama GGUF file (already checked by the caller)
    /// into the kernels' layouts; sessions hold up to `max_positions` tokens
    /// and their products run on `threads` threads.
    pub fn load<R: Read + Seek + Send>(
        content: &Content,
        reader: &mut R,
        max_positions: usize,
        threads: usize,
    ) -> Result<Self> {
        let shape = read_shape(content)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("textstream-kernel-{i}"))
            .build()
            .map_err(|e| candle_core::Error::Msg(format!("starting the thread pool: {e}")))?;
        let mut read = |name: &str| content.tensor(reader, name, &Device::Cpu);

        let embedding = read("token_embd.weight")?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Some(read("output.weight")?),
            false => None,
        };
        let output_norm = vector(&read("output_norm.weight")?)?;
        // Reading is sequential; laying matrices out for the kernels runs on
        // the pool: the embedding beside the blocks, two matrices at a time.
        let (embedding, blocks) = pool.install(|| {
            rayon::join(
                || matrix(&[&embedding]),
                || {
                    (0..shape.blocks)
                        .map(|i| {
                            let mut part = |name: &str| read(&format!("blk.{i}.{name}.weight"));
                            let (q, k, v) = (part("attn_q")?, part("attn_k")?, part("attn_v")?);
                            let attn_output = part("attn_output")?;
                            let (gate, up) = (part("ffn_gate")?, part("ffn_up")?);
                            let down = part("ffn_down")?;
                            let (attn_norm, ffn_norm) = (part("attn_norm")?, part("ffn_norm")?);
                            let ((qkv, output), (gate_up, down)) = rayon::join(
                                || (matrix(&[&q, &k, &v]), matrix(&[&attn_output])),
                                || (matrix(&[&gate, &up]), matrix(&[&down])),
                            );
                            Ok(Block {
                                attn_norm: vector(&attn_norm)?,
                                qkv: qkv?,
                                output: output?,
                                ffn_norm: vector(&ffn_norm)?,
                                gate_up: gate_up?,
                                down: down?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                },
            )
        });
        Ok(Self {
            rotary: rotary_table(&shape, max_positions),
            shape,
            embedding: embedding?,
            output: output.map(|o| matrix(&[&o])).transpose()?,
            blocks: blocks?,
            output_norm,
            max_positions,
            pool,
        })
    }

    /// An empty cache for one sequence of up to `max_positions` tokens.
    pub fn new_cache(&self) -> KvCache {
        let s = &self.shape;
        let tiles = self.max_positions.div_ceil(KEY_TILE);
        let layers = (0..s.blocks)
            .map(|_| {
                (
                    vec![0.0; s.kv_heads * tiles * KEY_TILE * s.head_dim],
                    vec![0.0; s.kv_heads * self.max_positions * s.head_dim],
                )
            })
            .collect();
        KvCache {
            layers,
            activations: Activations::new(),
        }
    }

    /// Runs `ids` at positions `pos..pos + ids.len()`, writing their keys and
    /// values into `cache`, and returns the logits after the last one.
    pub fn forward_last(&self, cache: &mut KvCache, ids: &[u32], pos: usize) -> Result<Vec<f32>> {
        let end = pos + ids.len();
        if ids.is_empty() || end > self.max_positions {
            candle_core::bail!("positions {pos}..{end} outside 1..={}", self.max_positions)
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.embedding.rows()) {
            candle_core::bail!("token id {id} is outside the vocabulary")
        }
        Ok(self.pool.install(|| self.forward(cache, ids, pos)))
    }

    fn forward(&self, cache: &mut KvCache, ids: &[u32], pos: usize) -> Vec<f32> {
        let s = &self.shape;
        let t = ids.len();
        let q_width = s.heads * s.head_dim;
        let kv_width = s.kv_heads * s.head_dim;
        let qkv_width = q_width + 2 * kv_width;
        let mut b = Buffers {
            x: vec![0.0; t * s.hidden],
            normed: vec![0.0; t * s.hidden],
            qkv: vec![0.0; t * qkv_width],
            attn: vec![0.0; t * q_width],
            projected: vec![0.0; t * s.hidden],
            gate_up: vec![0.0; t * 2 * s.feed_forward],
            act: vec![0.0; t * s.feed_forward],
        };
        for (x, &id) in b.x.chunks_exact_mut(s.hidden).zip(ids) {
            self.embedding.dequantize_row(id as usize, x);
        }
        let acts = &mut cache.activations;
        for (block, (keys, values)) in self.blocks.iter().zip(&mut cache.layers) {
            rms_norm(&b.x, &block.attn_norm, s.rms_eps, &mut b.normed);
            block.qkv.matmul(&b.normed, &mut b.qkv, acts);
            for (i, token) in b.qkv.chunks_exact_mut(qkv_width).enumerate() {
                let rotation = self.rotation(pos + i);
                for head in token[..q_width + kv_width].chunks_exact_mut(s.head_dim) {
                    rotate(head, rotation);
                }
                store_kv(
                    s,
                    keys,
                    values,
                    self.max_positions,
                    pos + i,
                    &token[q_width..],
                );
            }
            self.attention(keys, values, &b.qkv, pos, &mut b.attn);
            block.output.matmul(&b.attn, &mut b.projected, acts);
            add(&mut b.x, &b.projected);

            rms_norm(&b.x, &block.ffn_norm, s.rms_eps, &mut b.normed);
            block.gate_up.matmul(&b.normed, &mut b.gate_up, acts);
            b.act
                .par_chunks_exact_mut(s.feed_forward)
                .zip(b.gate_up.par_chunks_exact(2 * s.feed_forward))
                .with_min_len(TOKENS_PER_TASK)
                .for_each(|(act, gate_up)| {
                    let (gate, up) = gate_up.split_at(s.feed_forward);
                    for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
                        *a = g / (1.0 + fast_exp(-g)) * u;
                    }
                });
            block.down.matmul(&b.act, &mut b.projected, acts);
            add(&mut b.x, &b.projected);
        }
        let last = &b.x[(t - 1) * s.hidden..];
        let mut normed = vec![0.0; s.hidden];
        rms_norm(last, &self.output_norm, s.rms_eps, &mut normed);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let mut logits = vec![0.0; output.rows()];
        output.matmul(&normed, &mut logits, acts);
        logits
    }

    /// `cos` then `sin` of each pair's angle at `position`, with the
    /// attention scale `1/sqrt(head_dim)` left out (applied to scores).
    fn rotation(&self, position: usize) -> &[f32] {
        let half = self.shape.head_dim / 2;
        &self.rotary[position * 2 * half..][..2 * half]
    }

    /// Causal attention of the `t` queries in `qkv` (positions `pos..`)
    /// over the cached keys and values, into `out` (`[t][heads * head_dim]`).
    fn attention(&self, keys: &[f32], values: &[f32], qkv: &[f32], pos: usize, out: &mut [f32]) {
        let s = &self.shape;
        let group = s.heads / s.kv_heads;
        let qkv_width = (s.heads + 2 * s.kv_heads) * s.head_dim;
        let group_width = group * s.head_dim;
        let tiles = self.max_positions.div_ceil(KEY_TILE);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let head_keys = |kv_head: usize| {
            &keys[kv_head * tiles * KEY_TILE * s.head_dim..][..tiles * KEY_TILE * s.head_dim]
        };
        let head_values = |kv_head: usize| {
            &values[kv_head * self.max_positions * s.head_dim..][..self.max_positions * s.head_dim]
        };
        if qkv.len() == qkv_width && pos + 1 > KEY_CHUNK {
            return self.attention_split(
                &qkv[..group_width * s.kv_heads],
                pos + 1,
                &head_keys,
                &head_values,
                out,
            );
        }
        // One task per (token, KV head): its group of query heads, side by side in `out`.
        out.par_chunks_mut(group_width).enumerate().for_each_init(
            Vec::new,
            |scores, (task, out)| {
                let (i, kv_head) = (task / s.kv_heads, task % s.kv_heads);
                let queries = &qkv[i * qkv_width + kv_head * group_width..][..group_width];
                let seen = pos + i + 1;
                let range = AttendRange {
                    keys: head_keys(kv_head),
                    values: head_values(kv_head),
                    start: 0,
                    end: seen,
                };
                let partial = attend(queries, range, s.head_dim, scale, scores, out);
                for (out, total) in out.chunks_exact_mut(s.head_dim).zip(partial.totals) {
                    let inverse = 1.0 / total;
                    out.iter_mut().for_each(|o| *o *= inverse);
                }
            },
        );
    }

    /// One token's attention with each KV head's keys split into chunks of
    /// [`KEY_CHUNK`] positions, one task each, merged afterwards: a decode
    /// step at a long context has work for every core, not one per KV head.
    fn attention_split<'a>(
        &self,
        queries: &[f32],
        seen: usize,
        head_keys: &(dyn Fn(usize) -> &'a [f32] + Sync),
        head_values: &(dyn Fn(usize) -> &'a [f32] + Sync),
        out: &mut [f32],
    ) {
        let s = &self.shape;
        let group_width = queries.len() / s.kv_heads;
        let chunks = seen.div_ceil(KEY_CHUNK);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let mut partial_outs = vec![0.0f32; s.kv_heads * chunks * group_width];
        let partials: Vec<Partial> = partial_outs
            .par_chunks_mut(group_width)
            .enumerate()
            .map_init(Vec::new, |scores, (task, out)| {
                let (kv_head, chunk) = (task / chunks, task % chunks);
                let range = AttendRange {
                    keys: head_keys(kv_head),
                    values: head_values(kv_head),
                    start: chunk * KEY_CHUNK,
                    end: seen.min((chunk + 1) * KEY_CHUNK),
                };
                let queries = &queries[kv_head * group_width..][..group_width];
                attend(queries, range, s.head_dim, scale, scores, out)
            })
            .collect();
        // Rescale each chunk's sums to the largest maximum, then normalize.
        for (kv_head, out) in out.chunks_exact_mut(group_width).enumerate() {
            out.fill(0.0);
            let partials = &partials[kv_head * chunks..][..chunks];
            let outs = partial_outs[kv_head * chunks * group_width..].chunks_exact(group_width);
            for (h, out) in out.chunks_exact_mut(s.head_dim).enumerate() {
                let max = partials
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, p| m.max(p.maxima[h]));
                let mut total = 0.0;
                for (partial, chunk_out) in partials.iter().zip(outs.clone()) {
                    let weight = (partial.maxima[h] - max).exp();
                    total += partial.totals[h] * weight;
                    let chunk_out = &chunk_out[h * s.head_dim..][..s.head_dim];
                    for (o, &c) in out.iter_mut().zip(chunk_out) {
                        *o += c * weight;
                    }
                }
                let inverse = 1.0 / total;
                out.iter_mut().for_each(|o| *o *= inverse);
            }
        }
    }
}

/// One KV head's cached keys and values, and the positions `start..end` to
/// attend to (`start` a multiple of [`KEY_TILE`]).
struct AttendRange<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    start: usize,
    end: usize,
}

/// Per query head, the largest scaled score of a range and the sum of
/// `e^(score - largest)` over it: what merging ranges needs.
struct Partial {
    maxima: [f32; MAX_GROUP],
    totals: [f32; MAX_GROUP],
}

/// One KV head's attention for its group of queries (`[group][head_dim]`)
/// over a range of positions, into `out` (`[group][head_dim]`), not yet
/// divided by the softmax totals it returns.
fn attend(
    queries: &[f32],
    range: AttendRange,
    head_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Partial {
    let group = queries.len() / head_dim;
    let seen = range.end - range.start;
    let tiles = seen.div_ceil(KEY_TILE);
    let padded = tiles * KEY_TILE;
    scores.clear();
    scores.resize(group * padded, 0.0);
    let keys = range.keys[range.start * head_dim..].chunks_exact(KEY_TILE * head_dim);
    for (tile, keys) in keys.take(tiles).enumerate() {
        for (query, scores) in queries
            .chunks_exact(head_dim)
            .zip(scores.chunks_exact_mut(padded))
        {
            let mut lanes = [0.0f32; KEY_TILE];
            for (&q, key) in query.iter().zip(keys.chunks_exact(KEY_TILE)) {
                for (lane, &k) in lanes.iter_mut().zip(key) {
                    *lane = q.mul_add(k, *lane);
                }
            }
            scores[tile * KEY_TILE..][..KEY_TILE].copy_from_slice(&lanes);
        }
    }
    // Softmax numerators of each query head's scores.
    let mut partial = Partial {
        maxima: [0.0; MAX_GROUP],
        totals: [0.0; MAX_GROUP],
    };
    for (h, scores) in scores.chunks_exact_mut(padded).enumerate() {
        let scores = &mut scores[..seen];
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        scores.iter_mut().for_each(|v| *v = (*v - max) * scale);
        exp_in_place(scores);
        partial.maxima[h] = max * scale;
        partial.totals[h] = scores.iter().sum();
    }
    let values = &range.values[range.start * head_dim..][..seen * head_dim];
    for (h, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let probabilities = &scores[h * padded..][..seen];
        match head_dim {
            64 => weighted_sum::<64>(probabilities, values, out),
            128 => weighted_sum::<128>(probabilities, values, out),
            _ => {
                out.fill(0.0);
                for (&p, value) in probabilities.iter().zip(values.chunks_exact(head_dim)) {
                    for (o, &v) in out.iter_mut().zip(value) {
                        *o = p.mul_add(v, *o);
                    }
                }
            }
        }
    }
    partial
}

/// `out = Σ_j p[j] * values[j]` for rows of `D` values, the sum kept in
/// registers (a fixed size lets the compiler hold it there).
fn weighted_sum<const D: usize>(probabilities: &[f32], values: &[f32], out: &mut [f32]) {
    let mut sum = [0.0f32; D];
    for (&p, value) in probabilities.iter().zip(values.chunks_exact(D)) {
        for (s, &v) in sum.iter_mut().zip(value) {
            *s = p.mul_add(v, *s);
        }
    }
    out.copy_from_slice(&sum);
}

/// Writes one position's keys and values (`kv = [keys | values]`, each
/// `[kv_heads][head_dim]`) into a layer's cache.
fn store_kv(
    s: &Shape,
    keys: &mut [f32],
    values: &mut [f32],
    positions: usize,
    position: usize,
    kv: &[f32],
) {
    let kv_width = s.kv_heads * s.head_dim;
    let tiles = positions.div_ceil(KEY_TILE);
    let (tile, lane) = (position / KEY_TILE, position % KEY_TILE);
    for head in 0..s.kv_heads {
        let key = &kv[head * s.head_dim..][..s.head_dim];
        let tile_start = ((head * tiles + tile) * s.head_dim) * KEY_TILE;
        for (d, &k) in key.iter().enumerate() {
            keys[tile_start + d * KEY_TILE + lane] = k;
        }
        let value = &kv[kv_width + head * s.head_dim..][..s.head_dim];
        values[(head * positions + position) * s.head_dim..][..s.head_dim].copy_from_slice(value);
    }
}

/// Rotates each pair `(x[2i], x[2i + 1])` of one head by its angle
/// (GGUF's llama weights are laid out for adjacent pairs).
fn rotate(head: &mut [f32], rotation: &[f32]) {
    let (cos, sin) = rotation.split_at(head.len() / 2);
    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// `out = x / rms(x) * weight`, row by row.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean_square = dot_f32(x, x) / n as f32;
        let inverse = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * inverse * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// A norm's weights as f32.
fn vector(t: &QTensor) -> Result<Vec<f32>> {
    t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()
}

/// The matrices `parts` (same columns) stacked by rows into one kernel
/// matrix. Parts in a type the kernels read keep their values; the rest go
/// through f32.
fn matrix(parts: &[&QTensor]) -> Result<Matrix> {
    let first = parts[0].dtype();
    let cols = parts[0].shape().dims2()?.1;
    let rows: usize = parts
        .iter()
        .map(|p| p.shape().dims2().map(|(r, _)| r))
        .sum::<Result<usize>>()?;
    let same_type = parts.iter().all(|p| p.dtype() == first);
    let direct = match first {
        GgmlDType::Q4_1 => Some(GgufBlocks::Q4_1),
        GgmlDType::Q4_0 => Some(GgufBlocks::Q4_0),
        GgmlDType::Q8_0 => Some(GgufBlocks::Q8_0),
        _ => None,
    };
    let direct = match (direct, same_type) {
        (Some(kind), true) => {
            let mut bytes = Vec::new();
            for part in parts {
                bytes.extend_from_slice(&part.data()?);
            }
            Some(Matrix::from_gguf(kind, &bytes, rows, cols))
        }
        _ => None,
    };
    let built = match direct {
        Some(Err(QuantError::ScaleRange)) | None => {
            let mut values = Vec::with_capacity(rows * cols);
            for part in parts {
                values.extend(
                    part.dequantize(&Device::Cpu)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            match parts.iter().all(|p| p.dtype() == GgmlDType::F32) {
                true => Matrix::from_f32(values, rows, cols),
                false => Matrix::quantize_eight(&values, rows, cols),
            }
        }
        Some(built) => built,
    };
    built.map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Per position, `cos` then `sin` of each pair's angle `position * theta_i`,
/// `theta_i = base^(-2i / head_dim)`, in f32 as candle's llama computes them.
fn rotary_table(shape: &Shape, positions: usize) -> Vec<f32> {
    let theta: Vec<f32> = (0..shape.head_dim)
        .step_by(2)
        .map(|i| 1.0 / shape.rope_freq_base.powf(i as f32 / shape.head_dim as f32))
        .collect();
    let mut table = Vec::with_capacity(positions * shape.head_dim);
    for position in 0..positions {
        let angles = theta.iter().map(|t| position as f32 * t);
        table.extend(angles.clone().map(f32::cos));
        table.extend(angles.map(f32::sin));
    }
    table
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
    if heads / kv_heads > MAX_GROUP {
        candle_core::bail!(
            "{} query heads per KV head; this engine handles at most {MAX_GROUP}",
            heads / kv_heads
        )
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
