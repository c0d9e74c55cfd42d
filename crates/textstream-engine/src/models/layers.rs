//! The layers every family is built from, on plain f32 slices: RMS norm,
//! rotary embeddings (both pairings, with divisors and linear scaling), the
//! gated feed-forward activations, and attention over a KV cache whose
//! layers hold either the whole context or, for windowed layers, only their
//! window (a ring of slots).
//!
//! The KV cache stores keys and values as f16 (as llama.cpp does by
//! default: half the bytes that attention reads), keys in tiles of
//! [`KEY_TILE`] positions, dimension-major inside a tile, so a query's
//! scores against 16 keys are 16 lanes of one multiply-add per dimension,
//! and one pass over a KV head's keys serves its whole group of query
//! heads. Attention widens a tile of keys, or a block of value rows, to f32
//! once for all the queries that read it.

use std::ops::Range;

use half::f16;

use super::hparams::{Activation, Hparams, Rope, RopeStyle, MAX_GROUP};
use crate::math::{fast_exp, max_f32, shifted_exp_sum};
use crate::quant::{dot_f32, narrow_f16, prefetch, vectorized, widen_f16};

/// Key positions per tile of the key cache (16 f32 lanes: one AVX-512 register).
pub const KEY_TILE: usize = 16;

/// Value rows attention widens to f32 at a time (with a tile of keys, a
/// few KiB: they stay in the core's first cache while every query reads
/// them).
const VALUE_BLOCK: usize = 16;

/// The most bytes a prompt chunk's attention widens its layer's whole
/// cache into, once for all its jobs (past it, each job widens what it
/// reads, as a decode step's do).
const WIDE_CACHE_LIMIT: usize = 64 << 20;

/// Key positions per task when a decode step's attention is split (a
/// multiple of [`KEY_TILE`]): past this, a step has work for every core.
const KEY_CHUNK: usize = 256;

/// Positions of keys and values a step asks the CPU for before it starts
/// (4 KiB of each per KV head at SmolLM2's 64 dimensions).
const PREFETCH_ROWS: usize = 32;

/// Neighbouring tokens of a prompt whose pieces of attention that start at
/// one slot run as one job (each key and value read once for them all).
const QUERY_BLOCK: usize = 4;

/// Values of attention's pieces up to which the calling thread merges them
/// alone (one SmolLM2 sequence's decode step: 3 pieces of 192 values) instead
/// of in a parallel region: one sequence's steps 1-2 % faster, alternating
/// in one process. (Its jobs, by contrast, gain from the region: run on one
/// thread, the step was 3 % slower.)
const SERIAL_MERGE_VALUES: usize = 4096;

/// Tokens one parallel task of the gated activation takes at least: a
/// batch of 8 decode steps splits in two (at 8 it ran on one thread while
/// the other waited: steps of 8 SmolLM2 sequences 1.2-1.7 %
/// faster split, alternating in one process).
const ACTIVATION_TOKENS_PER_TASK: usize = 2;

/// `sqrt(2 / pi)`, GELU's tanh approximation's inner factor.
const GELU_SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// GELU's tanh approximation's cubic coefficient.
const GELU_CUBIC: f32 = 0.044_715;

/// `out = x / rms(x) * weight`, row by row (rows of `weight.len()` values).
#[inline(always)]
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let inverse = inverse_rms(x, eps);
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * inverse * w;
        }
    }
}

/// [`rms_norm`] in place.
#[inline(always)]
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    for x in x.chunks_exact_mut(weight.len()) {
        let inverse = inverse_rms(x, eps);
        for (v, &w) in x.iter_mut().zip(weight) {
            *v *= inverse * w;
        }
    }
}

#[inline(always)]
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mean_square = dot_f32(x, x) / x.len() as f32;
    1.0 / (mean_square + eps).sqrt()
}

/// `x += y`.
#[inline(always)]
pub fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// `act = activation(gate) * up` for each token: rows of `act` are `width`
/// values, rows of `gate_up` the token's gate values followed by its up values.
pub fn gated_activation(activation: Activation, width: usize, gate_up: &[f32], act: &mut [f32]) {
    let rows: Vec<_> = act
        .chunks_exact_mut(width)
        .zip(gate_up.chunks_exact(2 * width))
        .collect();
    crate::team::for_each(rows, ACTIVATION_TOKENS_PER_TASK, |(act, gate_up)| {
        vectorized(
            #[inline(always)]
            || {
                let (gate, up) = gate_up.split_at(width);
                match activation {
                    Activation::Silu => {
                        for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
                            *a = g / (1.0 + fast_exp(-g)) * u;
                        }
                    }
                    Activation::GeluTanh => {
                        for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
                            *a = gelu_tanh(g) * u;
                        }
                    }
                }
            },
        )
    });
}

/// GELU, tanh approximation: `x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`,
/// with `tanh(y) = 1 - 2 / (e^(2y) + 1)`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    let y = GELU_SQRT_2_OVER_PI * x * (1.0 + GELU_CUBIC * x * x);
    let tanh = 1.0 - 2.0 / (fast_exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// For each of `tokens` positions from `start`, `cos` then `sin` of each
/// rotating pair's angle: `[tokens][dims]` (the attention scale is applied
/// to scores, not here). Angles are `position * theta_i` in f32,
/// `theta_i = scale / factor_i * base^(-2i / dims)`, as llama.cpp and
/// candle compute them.
pub fn rotations(rope: &Rope, start: usize, tokens: usize) -> Vec<f32> {
    let theta: Vec<f32> = (0..rope.dims)
        .step_by(2)
        .enumerate()
        .map(|(pair, i)| {
            let theta = 1.0 / rope.base.powf(i as f32 / rope.dims as f32);
            let factor = rope
                .factors
                .as_ref()
                .and_then(|f| f.get(pair))
                .copied()
                .unwrap_or(1.0);
            theta * rope.scale / factor
        })
        .collect();
    let mut table = Vec::with_capacity(tokens * rope.dims);
    for position in start..start + tokens {
        let angles = theta.iter().map(|t| position as f32 * t);
        table.extend(angles.clone().map(f32::cos));
        table.extend(angles.map(f32::sin));
    }
    table
}

/// Rotates one head by one position's `rotation` (`cos` then `sin` per pair).
#[inline(always)]
pub fn rotate(style: RopeStyle, head: &mut [f32], rotation: &[f32]) {
    let (cos, sin) = rotation.split_at(rotation.len() / 2);
    let pairs = cos.len();
    match style {
        RopeStyle::Adjacent => {
            for ((pair, &c), &s) in head[..2 * pairs].chunks_exact_mut(2).zip(cos).zip(sin) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
        RopeStyle::Halves => {
            let (first, second) = head[..2 * pairs].split_at_mut(pairs);
            for (((a, b), &c), &s) in first.iter_mut().zip(second).zip(cos).zip(sin) {
                let (x, y) = (*a, *b);
                *a = x * c - y * s;
                *b = x * s + y * c;
            }
        }
    }
}

/// One block's cached keys and values, as f16: the whole context, or for a
/// windowed layer a ring of slots just large enough for the window and one
/// prompt chunk.
#[derive(Debug)]
pub struct LayerCache {
    /// Per KV head, `[slots / KEY_TILE][head_dim][KEY_TILE]`, grown a tile
    /// at a time as positions are written.
    keys: Vec<Vec<f16>>,
    /// Per KV head, `[slots][head_dim]`, grown with the keys.
    values: Vec<Vec<f16>>,
    /// Slots per KV head (a multiple of [`KEY_TILE`]); position `p` lives
    /// in slot `p % slots`.
    slots: usize,
    /// Positions a query sees, when the layer is windowed.
    window: Option<usize>,
}

impl LayerCache {
    /// Slots a layer needs: the context, or for a window `w` with prompt
    /// chunks of up to `chunk` tokens, `w + chunk` (the keys a chunk's
    /// first query needs are still there when its last key is written).
    pub fn slots(context: usize, window: Option<usize>, chunk: usize) -> usize {
        let positions = match window {
            Some(w) => context.min(w.saturating_add(chunk)),
            None => context,
        };
        positions.div_ceil(KEY_TILE) * KEY_TILE
    }

    /// An empty cache; it takes memory as positions are written, up to
    /// [`Self::bytes`] (a session holds what its longest sequence used,
    /// not the whole context).
    pub fn new(h: &Hparams, context: usize, window: Option<usize>, chunk: usize) -> Self {
        Self {
            keys: vec![Vec::new(); h.kv_heads],
            values: vec![Vec::new(); h.kv_heads],
            slots: Self::slots(context, window, chunk),
            window,
        }
    }

    /// Writes one position's keys and values (`kv = [keys | values]`, each
    /// `[kv_heads][head_dim]`), rounded to the nearest f16.
    pub fn store(&mut self, head_dim: usize, position: usize, kv: &[f32]) {
        let kv_width = kv.len() / 2;
        let slot = position % self.slots;
        let (tile, lane) = (slot / KEY_TILE, slot % KEY_TILE);
        // Whole tiles, so that attention may read a tile past the last key.
        let needed = (tile + 1) * KEY_TILE * head_dim;
        let mut key = vec![f16::ZERO; head_dim];
        for (head, (keys, values)) in self.keys.iter_mut().zip(&mut self.values).enumerate() {
            if keys.len() < needed {
                keys.resize(needed, f16::ZERO);
                values.resize(needed, f16::ZERO);
            }
            narrow_f16(&kv[head * head_dim..][..head_dim], &mut key);
            let tile_start = tile * head_dim * KEY_TILE;
            for (d, &k) in key.iter().enumerate() {
                keys[tile_start + d * KEY_TILE + lane] = k;
            }
            let value = &kv[kv_width + head * head_dim..][..head_dim];
            narrow_f16(value, &mut values[slot * head_dim..][..head_dim]);
        }
    }

    /// Starts loading what a step from `position` touches first, usually
    /// out of every cache by then (the weights of a whole pass went through
    /// since): the key tile and value row it writes first and the first
    /// [`PREFETCH_ROWS`] keys and values it reads, while it rotates its
    /// queries (steps of 8 SmolLM2 sequences 0.5-1 % faster, alternating
    /// with and without it in one process). The reads after those the
    /// CPU's own prefetchers follow: asking for them 4 KiB ahead as well
    /// changed nothing.
    pub fn prefetch(&self, head_dim: usize, position: usize) {
        let slot = position % self.slots;
        let first = self.slot_ranges(position)[0].start;
        let tile_of = |slot: usize| slot / KEY_TILE * KEY_TILE * head_dim;
        let some = |data: &[f16], start: usize, len: usize| {
            prefetch(&data[start.min(data.len())..(start + len).min(data.len())]);
        };
        for (keys, values) in self.keys.iter().zip(&self.values) {
            some(keys, tile_of(slot), KEY_TILE * head_dim);
            some(values, slot * head_dim, head_dim);
            some(keys, tile_of(first), PREFETCH_ROWS * head_dim);
            some(values, first * head_dim, PREFETCH_ROWS * head_dim);
        }
    }

    /// The slot ranges (one, or two when the ring wraps) holding the
    /// positions a query at `position` attends to.
    fn slot_ranges(&self, position: usize) -> [Range<usize>; 2] {
        let first = match self.window {
            Some(w) => (position + 1).saturating_sub(w),
            None => 0,
        };
        let (start, end) = (first % self.slots, position % self.slots + 1);
        if start < end {
            [start..end, 0..0]
        } else {
            [start..self.slots, 0..end]
        }
    }

    /// Causal attention of `t` tokens' queries (positions `pos..pos + t`;
    /// `qkv` rows of `[q | k | v]`) over this cache, into `out`
    /// (`[t][heads * head_dim]`). Each (token, KV head) attends its slot
    /// ranges split into [`KEY_CHUNK`] pieces, so that every core has work
    /// even for one token; pieces merge by their maxima, as flash-decoding
    /// does. The pieces depend on the token's position alone, never on the
    /// tokens beside it: a token attends bit for bit alike in a prompt
    /// chunk of any length and as a decode step.
    ///
    /// Pieces of up to [`QUERY_BLOCK`] neighbouring tokens that start at the
    /// same slot run as one job, so that each key and value read serves all
    /// their query heads (a prompt of 1,024 tokens read every key once per
    /// token and head); each query's own arithmetic is unchanged by it.
    ///
    /// With `split` false the jobs run one after another on the calling
    /// thread: for a decode step among many sequences, which already keep
    /// every core busy (handing its three or so small jobs to other threads
    /// cost more than they take). The arithmetic is the same either way.
    pub fn attend(&self, h: &Hparams, qkv: &[f32], pos: usize, out: &mut [f32], split: bool) {
        // A region no longer than its minimum length runs on the calling
        // thread.
        let min_len = if split { 1 } else { usize::MAX };
        let qkv_width = h.q_width() + 2 * h.kv_width();
        let t = qkv.len() / qkv_width;
        let group_width = h.q_width() / h.kv_heads;
        // Pieces in (token, KV head) order; `groups` holds each one's range.
        let mut pieces = Vec::new();
        let mut groups = Vec::with_capacity(t * h.kv_heads);
        for i in 0..t {
            let ranges = self.slot_ranges(pos + i);
            for kv_head in 0..h.kv_heads {
                let first = pieces.len();
                for range in ranges.iter().filter(|r| !r.is_empty()) {
                    let mut start = range.start;
                    while start < range.end {
                        let end = range.end.min(start + KEY_CHUNK);
                        pieces.push(Piece {
                            token: i,
                            kv_head,
                            start,
                            end,
                        });
                        start = end;
                    }
                }
                groups.push(first..pieces.len());
            }
        }
        // Jobs: a block of tokens' pieces of one KV head from one slot.
        let mut jobs: Vec<Vec<usize>> = Vec::new();
        let mut located = vec![(0, 0); pieces.len()];
        for block in (0..t).step_by(QUERY_BLOCK) {
            for kv_head in 0..h.kv_heads {
                let mut members: Vec<usize> = (block..t.min(block + QUERY_BLOCK))
                    .flat_map(|i| groups[i * h.kv_heads + kv_head].clone())
                    .collect();
                members.sort_by_key(|&p| pieces[p].start);
                for job in members.chunk_by(|&a, &b| pieces[a].start == pieces[b].start) {
                    for (k, &p) in job.iter().enumerate() {
                        located[p] = (jobs.len(), k);
                    }
                    jobs.push(job.to_vec());
                }
            }
        }
        // A prompt chunk's jobs read each key and value many times (once
        // per block of queries): widened once here, not by every job.
        // Widening is exact, so the jobs' arithmetic is the same either way.
        // f32 takes twice the bytes the f16 cache holds.
        let wide: Vec<(Vec<f32>, Vec<f32>)> =
            if t > 1 && 2 * self.held_bytes() <= WIDE_CACHE_LIMIT as u64 {
                let heads: Vec<_> = self.keys.iter().zip(&self.values).collect();
                crate::team::map_init(
                    &heads,
                    1,
                    || (),
                    |(), (keys, values)| {
                        let mut wide = (vec![0.0; keys.len()], vec![0.0; values.len()]);
                        widen_f16(keys, &mut wide.0);
                        widen_f16(values, &mut wide.1);
                        wide
                    },
                )
            } else {
                Vec::new()
            };
        let done: Vec<(Vec<Partial>, Vec<f32>)> =
            crate::team::map_init(&jobs, min_len, Scratch::default, |scratch, job| {
                let first = &pieces[job[0]];
                let members: Vec<Member> = job
                    .iter()
                    .map(|&p| Member {
                        queries: &qkv[pieces[p].token * qkv_width + first.kv_head * group_width..]
                            [..group_width],
                        end: pieces[p].end,
                    })
                    .collect();
                let (keys, values) = match wide.get(first.kv_head) {
                    Some((keys, values)) => (Rows::Wide(keys), Rows::Wide(values)),
                    None => (
                        Rows::Half(&self.keys[first.kv_head]),
                        Rows::Half(&self.values[first.kv_head]),
                    ),
                };
                let span = KvHead {
                    keys,
                    values,
                    head_dim: h.head_dim,
                };
                let mut outs = vec![0.0; job.len() * group_width];
                let partials = vectorized(
                    #[inline(always)]
                    || {
                        attend(
                            &members,
                            first.start,
                            span,
                            h.attention_scale,
                            scratch,
                            &mut outs,
                        )
                    },
                );
                (partials, outs)
            });
        // Merging a decode step's few pieces is a few hundred multiplies:
        // less than opening a region for them costs.
        let merge_len = match pieces.len() * group_width <= SERIAL_MERGE_VALUES {
            true => usize::MAX,
            false => min_len,
        };
        let outs: Vec<_> = out.chunks_mut(group_width).zip(&groups).collect();
        crate::team::for_each(outs, merge_len, |(out, range)| {
            let parts = range.clone().map(|p| {
                let (job, k) = located[p];
                let (partials, outs) = &done[job];
                (&partials[k], &outs[k * group_width..][..group_width])
            });
            vectorized(
                #[inline(always)]
                || merge(parts, h.head_dim, out),
            )
        });
    }

    /// Bytes this layer's cache takes when full.
    pub fn bytes(h: &Hparams, context: usize, window: Option<usize>, chunk: usize) -> u64 {
        Self::bytes_for(h, context, window, chunk, context)
    }

    /// Bytes this layer's cache takes once `positions` positions are written:
    /// whole tiles of [`KEY_TILE`] positions (one block), at most the ring's.
    pub fn bytes_for(
        h: &Hparams,
        context: usize,
        window: Option<usize>,
        chunk: usize,
        positions: usize,
    ) -> u64 {
        let slots = Self::slots(context, window, chunk);
        let tiles = positions.min(slots).div_ceil(KEY_TILE) as u64;
        tiles * Self::block_bytes(h)
    }

    /// Bytes of one block: [`KEY_TILE`] positions' keys and values.
    pub fn block_bytes(h: &Hparams) -> u64 {
        (2 * KEY_TILE * h.kv_heads * h.head_dim * std::mem::size_of::<f16>()) as u64
    }

    /// Bytes this cache holds now.
    pub fn held_bytes(&self) -> u64 {
        let values: usize = self.keys.iter().chain(&self.values).map(Vec::len).sum();
        (values * std::mem::size_of::<f16>()) as u64
    }

    /// Gives its memory back; the cache grows again as positions are written.
    pub fn release(&mut self) {
        for v in self.keys.iter_mut().chain(&mut self.values) {
            *v = Vec::new();
        }
    }

    /// Whether writing `written` positions has wrapped this layer's ring
    /// (positions then share slots with later ones).
    pub fn wrapped(&self, written: usize) -> bool {
        written > self.slots
    }

    /// A copy holding what this cache holds for positions `..keep`: only
    /// the tiles those positions live in. The ring must not have wrapped.
    pub fn prefix_copy(&self, head_dim: usize, keep: usize) -> Self {
        let kept = keep.div_ceil(KEY_TILE) * KEY_TILE * head_dim;
        let copy = |v: &Vec<Vec<f16>>| -> Vec<Vec<f16>> {
            v.iter().map(|v| v[..kept.min(v.len())].to_vec()).collect()
        };
        Self {
            keys: copy(&self.keys),
            values: copy(&self.values),
            slots: self.slots,
            window: self.window,
        }
    }
}

/// One (token, KV head)'s slots `start..end`: a piece of its attention.
struct Piece {
    token: usize,
    kv_head: usize,
    start: usize,
    end: usize,
}

/// A job's member: one token's query heads of the job's KV head
/// (`[group][head_dim]`), and the slot its piece ends at.
struct Member<'a> {
    queries: &'a [f32],
    end: usize,
}

/// One KV head's cached keys and values.
#[derive(Clone, Copy)]
struct KvHead<'a> {
    keys: Rows<'a>,
    values: Rows<'a>,
    head_dim: usize,
}

/// A KV head's keys or values: as stored, or widened to f32 beforehand.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Half(&'a [f16]),
    Wide(&'a [f32]),
}

impl<'a> Rows<'a> {
    /// Values `at..at + len` as f32: the widened ones, or these widened
    /// into `buffer` (at least `len` long).
    #[inline(always)]
    fn get<'b>(self, at: usize, len: usize, buffer: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Rows::Wide(wide) => &wide[at..][..len],
            Rows::Half(half) => {
                let buffer = &mut buffer[..len];
                widen_f16(&half[at..][..len], buffer);
                buffer
            }
        }
    }

    fn len(self) -> usize {
        match self {
            Rows::Wide(wide) => wide.len(),
            Rows::Half(half) => half.len(),
        }
    }
}

/// A worker's buffers for [`attend`]: scores, and a tile of keys or a
/// block of values widened to f32.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    queries: Vec<[f32; SCORE_ROWS]>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// Per query head, the largest scaled score of a range and the sum of
/// `e^(score - largest)` over it: what merging ranges needs.
struct Partial {
    maxima: [f32; MAX_GROUP],
    totals: [f32; MAX_GROUP],
}

/// Combines a (token, KV head)'s pieces (partial result, unnormalized
/// output) into `out`: each piece's sums rescaled to the largest maximum,
/// then normalized.
#[inline(always)]
fn merge<'a>(
    pieces: impl ExactSizeIterator<Item = (&'a Partial, &'a [f32])> + Clone,
    head_dim: usize,
    out: &mut [f32],
) {
    if pieces.len() == 1 {
        for (only, piece) in pieces {
            for ((out, piece), total) in out
                .chunks_exact_mut(head_dim)
                .zip(piece.chunks_exact(head_dim))
                .zip(only.totals)
            {
                let inverse = 1.0 / total;
                out.iter_mut()
                    .zip(piece)
                    .for_each(|(o, &p)| *o = p * inverse);
            }
        }
        return;
    }
    out.fill(0.0);
    for (h, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let max = pieces
            .clone()
            .fold(f32::NEG_INFINITY, |m, (p, _)| m.max(p.maxima[h]));
        let mut total = 0.0;
        for (partial, piece) in pieces.clone() {
            let weight = (partial.maxima[h] - max).exp();
            total += partial.totals[h] * weight;
            let piece = &piece[h * head_dim..][..head_dim];
            for (o, &c) in out.iter_mut().zip(piece) {
                *o += c * weight;
            }
        }
        let inverse = 1.0 / total;
        out.iter_mut().for_each(|o| *o *= inverse);
    }
}

/// Query rows whose scores one pass over a key tile computes together.
const SCORE_ROWS: usize = 4;

/// One job's attention: each member's query heads over the KV head's slots
/// from `start` to the member's end, into `outs` (`[member][group][head_dim]`),
/// not yet divided by the softmax totals it returns. Each key tile and value
/// row is read once for all members' heads; each query's sums run in the
/// same order as if it were alone.
#[inline(always)]
fn attend(
    members: &[Member],
    start: usize,
    kv: KvHead,
    scale: f32,
    scratch: &mut Scratch,
    outs: &mut [f32],
) -> Vec<Partial> {
    let Scratch {
        scores,
        queries,
        keys,
        values,
    } = scratch;
    let head_dim = kv.head_dim;
    let group = members[0].queries.len() / head_dim;
    // Scores are computed for whole tiles from the one holding `start`.
    let aligned = start - start % KEY_TILE;
    let offset = start - aligned;
    let last = members.iter().map(|m| m.end).max().unwrap_or(start);
    let tiles = (last - aligned).div_ceil(KEY_TILE);
    let padded = tiles * KEY_TILE;
    let rows: Vec<&[f32]> = members
        .iter()
        .flat_map(|m| m.queries.chunks_exact(head_dim))
        .collect();
    let seen: Vec<usize> = members
        .iter()
        .flat_map(|m| std::iter::repeat_n(m.end - start, group))
        .collect();
    // Every score the softmax reads is written below (tiles up to the last
    // member's end): the buffer is only grown, not cleared (zeroing it was
    // a fifth of a long prompt's job setup).
    if scores.len() < rows.len() * padded {
        scores.resize(rows.len() * padded, 0.0);
    }
    let scores = &mut scores[..rows.len() * padded];
    by_dimension(&rows, head_dim, queries);
    keys.resize(KEY_TILE * head_dim, 0.0);
    let stored_tiles = kv.keys.len() / (KEY_TILE * head_dim);
    for tile in 0..tiles.min(stored_tiles.saturating_sub(aligned / KEY_TILE)) {
        let at = (aligned + tile * KEY_TILE) * head_dim;
        let keys = kv.keys.get(at, KEY_TILE * head_dim, keys);
        for (block, queries) in queries.chunks_exact(head_dim).enumerate() {
            let r = block * SCORE_ROWS;
            let scores = &mut scores[r * padded..];
            match rows.len() - r {
                1 => tile_scores::<1>(queries, keys, scores, padded, tile),
                2 => tile_scores::<2>(queries, keys, scores, padded, tile),
                3 => tile_scores::<3>(queries, keys, scores, padded, tile),
                _ => tile_scores::<SCORE_ROWS>(queries, keys, scores, padded, tile),
            }
        }
    }
    // Softmax numerators of each query row's scores.
    let mut partials: Vec<Partial> = members
        .iter()
        .map(|_| Partial {
            maxima: [0.0; MAX_GROUP],
            totals: [0.0; MAX_GROUP],
        })
        .collect();
    for (r, scores) in scores.chunks_exact_mut(padded).enumerate() {
        let scores = &mut scores[offset..][..seen[r]];
        let max = max_f32(scores);
        let total = shifted_exp_sum(scores, max, scale);
        let partial = &mut partials[r / group];
        partial.maxima[r % group] = max * scale;
        partial.totals[r % group] = total;
    }
    let probabilities: Vec<&[f32]> = scores
        .chunks_exact(padded)
        .zip(&seen)
        .map(|(s, &seen)| &s[offset..][..seen])
        .collect();
    let mut outs: Vec<&mut [f32]> = outs.chunks_exact_mut(head_dim).collect();
    outs.iter_mut().for_each(|out| out.fill(0.0));
    values.resize(VALUE_BLOCK * head_dim, 0.0);
    let longest = probabilities.iter().map(|p| p.len()).max().unwrap_or(0);
    // Values widened beforehand are summed in one block.
    let step = match kv.values {
        Rows::Wide(_) => longest.max(1),
        Rows::Half(_) => VALUE_BLOCK,
    };
    for first in (0..longest).step_by(step) {
        let rows = step.min(longest - first);
        let block = kv
            .values
            .get((start + first) * head_dim, rows * head_dim, values);
        match head_dim {
            64 => weighted_sums::<64>(&probabilities, first, block, &mut outs),
            128 => weighted_sums::<128>(&probabilities, first, block, &mut outs),
            256 => weighted_sums::<256>(&probabilities, first, block, &mut outs),
            _ => {
                for (p, out) in probabilities.iter().zip(outs.iter_mut()) {
                    let p = p.get(first..).unwrap_or_default();
                    for (&p, value) in p.iter().zip(block.chunks_exact(head_dim)) {
                        for (o, &v) in out.iter_mut().zip(value) {
                            *o = p.mul_add(v, *o);
                        }
                    }
                }
            }
        }
    }
    partials
}

/// The scores of `N` query rows against one tile of keys
/// (`[head_dim][KEY_TILE]`), into each row's `scores` (rows `padded`
/// apart) at `tile`. `queries` holds the rows by dimension (`[d][row]`, as
/// [`by_dimension`] lays them out), so each step of the pass reads the next
/// `N` values and the next key row; the key tile is read once for all rows,
/// and each row's sum runs over `d` in order.
#[inline(always)]
fn tile_scores<const N: usize>(
    queries: &[[f32; SCORE_ROWS]],
    keys: &[f32],
    scores: &mut [f32],
    padded: usize,
    tile: usize,
) {
    let mut lanes = [[0.0f32; KEY_TILE]; N];
    let (keys, _) = keys.as_chunks::<KEY_TILE>();
    for (key, q) in keys.iter().zip(queries) {
        for (lanes, &q) in lanes.iter_mut().zip(q) {
            for (lane, &k) in lanes.iter_mut().zip(key) {
                *lane = q.mul_add(k, *lane);
            }
        }
    }
    for (n, lanes) in lanes.iter().enumerate() {
        scores[n * padded + tile * KEY_TILE..][..KEY_TILE].copy_from_slice(lanes);
    }
}

/// Each block of [`SCORE_ROWS`] query rows by dimension, `[block][d][row]`,
/// into `out`, a worker's buffer kept between jobs (rows past the last are
/// zeros).
fn by_dimension(rows: &[&[f32]], head_dim: usize, out: &mut Vec<[f32; SCORE_ROWS]>) {
    out.clear();
    out.resize(
        rows.len().div_ceil(SCORE_ROWS) * head_dim,
        [0.0; SCORE_ROWS],
    );
    for (block, out) in rows.chunks(SCORE_ROWS).zip(out.chunks_exact_mut(head_dim)) {
        for (n, row) in block.iter().enumerate() {
            for (out, &v) in out.iter_mut().zip(*row) {
                out[n] = v;
            }
        }
    }
}

/// Columns of the value rows one pass of [`weighted_sums`] takes, for
/// [`SUM_ROWS`] rows of probabilities at once: their 4 x 4 sums stay in 16
/// registers, and each value vector loaded serves 4 rows. (Whole rows of
/// Gemma 3's 256 values, one probability row at a time, loaded a vector
/// per multiply-add, from L2: the sums took twice as long as the scores.)
const SUM_COLUMNS: usize = 64;
/// Probability rows one pass of [`weighted_sums`] takes.
const SUM_ROWS: usize = 4;

/// `out += Σ_j p[first + j] * block[j]` (rows of `D` values) for every
/// row of probabilities, up to [`SUM_ROWS`] rows and [`SUM_COLUMNS`]
/// columns at a time: each value vector of the block is read once for
/// them, and their sums stay in registers through the block. Each output's
/// sum runs over `j` in order, as alone, whatever the rows and columns
/// beside it.
#[inline(always)]
fn weighted_sums<const D: usize>(
    probabilities: &[&[f32]],
    first: usize,
    block: &[f32],
    outs: &mut [&mut [f32]],
) {
    const { assert!(D.is_multiple_of(SUM_COLUMNS), "whole passes of columns") };
    let (block, _) = block.as_chunks::<D>();
    for (probabilities, outs) in probabilities
        .chunks(SUM_ROWS)
        .zip(outs.chunks_mut(SUM_ROWS))
    {
        for column in (0..D).step_by(SUM_COLUMNS) {
            // A fixed count of rows (not the chunk's length, known only at
            // run time): with it the sums are registers; without it, each
            // multiply-add loaded and stored its sum.
            match probabilities.len() {
                1 => rows_sums::<D, 1>(probabilities, first, block, outs, column),
                2 => rows_sums::<D, 2>(probabilities, first, block, outs, column),
                3 => rows_sums::<D, 3>(probabilities, first, block, outs, column),
                _ => rows_sums::<D, SUM_ROWS>(probabilities, first, block, outs, column),
            }
        }
    }
}

/// [`weighted_sums`] of exactly `N` rows in the [`SUM_COLUMNS`] columns
/// from `column`: the value rows all of them reach with the `N` rows' sums
/// together, then each row's remaining ones.
#[inline(always)]
fn rows_sums<const D: usize, const N: usize>(
    probabilities: &[&[f32]],
    first: usize,
    block: &[[f32; D]],
    outs: &mut [&mut [f32]],
    column: usize,
) {
    let probabilities: [&[f32]; N] =
        std::array::from_fn(|n| probabilities[n].get(first..).unwrap_or_default());
    let common = probabilities
        .iter()
        .map(|p| p.len())
        .min()
        .unwrap_or(0)
        .min(block.len());
    let mut sums = [[0.0f32; SUM_COLUMNS]; N];
    for (sum, out) in sums.iter_mut().zip(outs.iter()) {
        sum.copy_from_slice(&out[column..][..SUM_COLUMNS]);
    }
    accumulate(
        &mut sums,
        probabilities.map(|p| &p[..common]),
        &block[..common],
        column,
    );
    for ((sum, p), out) in sums.iter_mut().zip(probabilities).zip(outs.iter_mut()) {
        let rest = p.len().min(block.len()).max(common);
        let mut one = [*sum];
        accumulate(&mut one, [&p[common..rest]], &block[common..rest], column);
        out[column..][..SUM_COLUMNS].copy_from_slice(&one[0]);
    }
}

/// `sums[n] += Σ_j p[n][j] * rows[j][column..column + W]`, `j` in order
/// (each `p[n]` as long as `rows`). The sums are copied into a local and
/// back whole, so that they stay in registers through the loop: written in
/// place, or beside other loops over them, the compiler kept them in memory.
#[inline(always)]
fn accumulate<const D: usize, const W: usize, const N: usize>(
    sums: &mut [[f32; W]; N],
    p: [&[f32]; N],
    rows: &[[f32; D]],
    column: usize,
) {
    let mut acc = *sums;
    for (j, value) in rows.iter().enumerate() {
        let value: &[f32; W] = value[column..][..W].try_into().expect("W columns");
        for (acc, p) in acc.iter_mut().zip(p) {
            let p = p[j];
            for (a, &v) in acc.iter_mut().zip(value) {
                *a = p.mul_add(v, *a);
            }
        }
    }
    *sums = acc;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_formula() {
        for &x in &[-6.0f32, -2.5, -1.0, -0.1, 0.0, 0.3, 1.0, 2.0, 7.5] {
            let exact = 0.5
                * x
                * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!(
                (gelu_tanh(x) - exact).abs() < 1e-5,
                "{x}: {} vs {exact}",
                gelu_tanh(x)
            );
        }
    }

    #[test]
    fn halves_and_adjacent_rotate_the_same_pairs_differently() {
        let rope = Rope {
            style: RopeStyle::Halves,
            dims: 4,
            base: 10_000.0,
            scale: 1.0,
            factors: None,
        };
        let rotation = rotations(&rope, 3, 1);
        let mut halves = [1.0, 2.0, 3.0, 4.0, 5.0];
        rotate(RopeStyle::Halves, &mut halves, &rotation);
        let mut adjacent = [1.0, 3.0, 2.0, 4.0, 5.0];
        rotate(RopeStyle::Adjacent, &mut adjacent, &rotation);
        // The same pairs, (1, 3) and (2, 4), laid out two ways.
        assert_eq!(
            [halves[0], halves[2], halves[1], halves[3]],
            [adjacent[0], adjacent[1], adjacent[2], adjacent[3]]
        );
        // Dimensions past `dims` do not move; norms of pairs are kept.
        assert_eq!(halves[4], 5.0);
        let norm = (halves[0].powi(2) + halves[2].powi(2)).sqrt();
        assert!((norm - 10f32.sqrt()).abs() < 1e-5);
    }

    #[test]
    fn divisors_and_scale_slow_the_rotation() {
        let plain = Rope {
            style: RopeStyle::Halves,
            dims: 4,
            base: 10_000.0,
            scale: 1.0,
            factors: None,
        };
        let divided = Rope {
            factors: Some(vec![2.0, 2.0]),
            ..plain.clone()
        };
        let scaled = Rope {
            scale: 0.5,
            ..plain.clone()
        };
        // Position 10 with divisor 2 or scale 1/2 is position 5 undivided.
        assert_eq!(rotations(&divided, 10, 1), rotations(&plain, 5, 1));
        assert_eq!(rotations(&scaled, 10, 1), rotations(&plain, 5, 1));
    }

    fn attention_hparams(head_dim: usize, window: Option<usize>) -> Hparams {
        Hparams {
            architecture: "test".into(),
            wiring: super::super::hparams::Wiring::LLAMA,
            blocks: 1,
            hidden: 6 * head_dim,
            heads: 6,
            kv_heads: 2,
            head_dim,
            feed_forward: 1,
            vocab: 1,
            rms_eps: 1e-5,
            trained_context: None,
            rope: Rope {
                style: RopeStyle::Adjacent,
                dims: head_dim,
                base: 10_000.0,
                scale: 1.0,
                factors: None,
            },
            sliding_window: window.map(|window| super::super::hparams::SlidingWindow {
                window,
                local: vec![true],
                rope: None,
            }),
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    /// Plain causal attention in f64 over keys and values rounded to f16,
    /// as the cache holds them: `[tokens][heads * head_dim]`.
    fn reference_attention(h: &Hparams, qkv: &[f32], window: Option<usize>) -> Vec<f64> {
        let (qw, kw) = (h.q_width(), h.kv_width());
        let width = qw + 2 * kw;
        let t = qkv.len() / width;
        let half = |v: f32| f64::from(f16::from_f32(v).to_f32());
        let group = h.heads / h.kv_heads;
        let mut out = vec![0.0; t * qw];
        for i in 0..t {
            let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
            for head in 0..h.heads {
                let kv = head / group;
                let q = &qkv[i * width + head * h.head_dim..][..h.head_dim];
                let scores: Vec<f64> = (first..=i)
                    .map(|j| {
                        let k = &qkv[j * width + qw + kv * h.head_dim..][..h.head_dim];
                        let dot: f64 = q.iter().zip(k).map(|(&q, &k)| f64::from(q) * half(k)).sum();
                        dot * f64::from(h.attention_scale)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                let o = &mut out[i * qw + head * h.head_dim..][..h.head_dim];
                for (j, w) in (first..=i).zip(&weights) {
                    let v = &qkv[j * width + qw + kw + kv * h.head_dim..][..h.head_dim];
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o += w / total * half(v);
                    }
                }
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// A prompt attended in one chunk (its cache widened once for all
        /// jobs) gives each token exactly the bits it gets attended alone,
        /// as a decode step (widened a tile at a time), and both are the
        /// attention over the f16-rounded keys and values.
        #[test]
        fn attention_over_the_f16_cache_is_exact_and_chunk_invariant(
            head_dim in proptest::sample::select(vec![32usize, 64, 128]),
            tokens in 1usize..300,
            window in proptest::option::of(8usize..80),
            seed in 0u32..1000,
        ) {
            let h = attention_hparams(head_dim, window);
            let width = h.q_width() + 2 * h.kv_width();
            let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
            let qkv: Vec<f32> = (0..tokens * width)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state as f32 / u32::MAX as f32) * 4.0 - 2.0
                })
                .collect();
            let context = 512;
            let split = |qkv: &[f32]| -> Vec<f32> {
                qkv.chunks_exact(width).flat_map(|t| t[h.q_width()..].to_vec()).collect()
            };
            let kv = split(&qkv);
            // One chunk.
            let mut chunked = LayerCache::new(&h, context, window, tokens);
            for (i, kv) in kv.chunks_exact(2 * h.kv_width()).enumerate() {
                chunked.store(head_dim, i, kv);
            }
            let mut whole = vec![0.0; tokens * h.q_width()];
            chunked.attend(&h, &qkv, 0, &mut whole, true);
            // Token by token, every other one with its jobs unsplit.
            let mut stepped = LayerCache::new(&h, context, window, tokens);
            let mut alone = vec![0.0; tokens * h.q_width()];
            for (i, (token, out)) in qkv
                .chunks_exact(width)
                .zip(alone.chunks_exact_mut(h.q_width()))
                .enumerate()
            {
                stepped.store(head_dim, i, &token[h.q_width()..]);
                stepped.attend(&h, token, i, out, i % 2 == 0);
            }
            proptest::prop_assert_eq!(
                whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let reference = reference_attention(&h, &qkv, window);
            for (k, (&got, &want)) in whole.iter().zip(&reference).enumerate() {
                proptest::prop_assert!(
                    (f64::from(got) - want).abs() < 1e-4,
                    "value {k}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn keys_beyond_the_f16_range_saturate_instead_of_turning_attention_nan() {
        let h = attention_hparams(64, None);
        let width = h.q_width() + 2 * h.kv_width();
        let mut cache = LayerCache::new(&h, 64, None, 2);
        let mut qkv = vec![0.0f32; 2 * width];
        for (i, token) in qkv.chunks_exact_mut(width).enumerate() {
            token[..h.q_width()].fill(1.0);
            // Keys of 1e6 (an f16 infinity) and -1e6; values 0.5 and 2.
            let sign = if i == 0 { 1.0 } else { -1.0 };
            token[h.q_width()..][..h.kv_width()].fill(sign * 1e6);
            token[h.q_width() + h.kv_width()..].fill(if i == 0 { 0.5 } else { 2.0 });
            cache.store(h.head_dim, i, &token[h.q_width()..]);
        }
        let mut out = vec![0.0; 2 * h.q_width()];
        cache.attend(&h, &qkv, 0, &mut out, true);
        // The second token's query scores +65,504 * 64 * scale against the
        // first key and far below against its own: all weight on value 0.5.
        assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
        assert!(out.iter().all(|&v| v == 0.5), "{out:?}");
    }

    #[test]
    fn ring_slots_cover_the_window() {
        let cache = LayerCache {
            keys: Vec::new(),
            values: Vec::new(),
            slots: 32,
            window: Some(20),
        };
        assert_eq!(cache.slot_ranges(5), [0..6, 0..0]);
        assert_eq!(cache.slot_ranges(19), [0..20, 0..0]);
        assert_eq!(cache.slot_ranges(20), [1..21, 0..0]);
        // Position 40 sees 21..=40: slots 21..32 then 0..9.
        assert_eq!(cache.slot_ranges(40), [21..32, 0..9]);
        let [a, b] = cache.slot_ranges(40);
        assert_eq!(a.len() + b.len(), 20);
    }

    #[test]
    fn prompt_attention_macs_count_the_positions_attention_reads() {
        for window in [None, Some(1), Some(4), Some(16), Some(50)] {
            // Two blocks: the first windowed (when there is a window), the
            // second global.
            let mut h = attention_hparams(8, window);
            h.blocks = 2;
            if let Some(sliding) = &mut h.sliding_window {
                sliding.local = vec![true, false];
            }
            for tokens in [0, 1, 5, 16, 17, 100] {
                let read: usize = (0..h.blocks)
                    .map(|block| {
                        let window = h.window(block);
                        let cache = LayerCache::new(&h, 128, window, 16);
                        (0..tokens)
                            .flat_map(|p| cache.slot_ranges(p))
                            .map(|r| r.len())
                            .sum::<usize>()
                    })
                    .sum();
                let per_position = 2 * h.heads * h.head_dim;
                assert_eq!(
                    h.prompt_attention_macs(tokens),
                    (read * per_position) as u64,
                    "window {window:?}, {tokens} tokens"
                );
            }
        }
    }
}
