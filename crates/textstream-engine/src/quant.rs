//! Quantized weight matrices and the matrix products the native forward pass
//! runs on them: the engine's own CPU kernels.
//!
//! # Affine blocks
//!
//! Every quantized matrix is held as *affine blocks*: 32 consecutive values of
//! a row share a scale `s` and an offset `o`, and each value is `s * q + o`
//! with `q` unsigned, 4 or 8 bits. GGUF's common types map onto this without
//! changing a single value:
//!
//! | GGUF   | value          | affine block                    |
//! |--------|----------------|---------------------------------|
//! | Q4_1   | `d * q + m`    | 4 bits, `s = d`, `o = m`        |
//! | Q4_0   | `d * (q - 8)`  | 4 bits, `s = d`, `o = -8 d`     |
//! | Q8_0   | `d * q` (i8)   | 8 bits, `q + 128`, `o = -128 d` |
//!
//! Other types (Q5, K-quants, F16) are dequantized and re-quantized to 8-bit
//! affine blocks at load; F32 matrices stay F32.
//!
//! # The product
//!
//! Activations are rounded to signed 8 bits per block of 32 (scale
//! `max |x| / 127`, as ggml's Q8_1 does), so a block's contribution to a dot
//! product is `s * sx * Σ q·qx + o * sx * Σ qx`: the bulk is an integer dot
//! product of unsigned weights and signed activations, which AVX-512 VNNI's
//! `vpdpbusd` does 64 at a time, and `sx * Σ qx` is computed once per block
//! of the activation, not once per row.
//!
//! Rows are stored in *pairs of blocks*, each pair's integers followed by its
//! two scales and two offsets (f16, as in the file), so one row is one
//! sequential read. In a 4-bit pair, byte `k` holds value `k` of the first
//! block in its low nibble and value `k` of the second in its high nibble, so
//! one 32-byte load unpacks into the 64 bytes that face the activation's 64.
//!
//! # Parallelism
//!
//! A product runs on the current rayon pool: a decode step (one token) splits
//! the rows, a prompt splits the tokens. The engine runs its whole forward
//! pass inside one pool, so a product costs no thread hand-off.
//!
//! # Unsafe code
//!
//! The one exception to the workspace's `deny(unsafe_code)`: calling the
//! `#[target_feature]` functions in the private `simd` module. They are compiled only when the
//! build targets a CPU with those features (`.cargo/config.toml` sets
//! `target-cpu=native`), so the call's one requirement holds by construction.
//! Everything else, loads included, is safe code (`bytemuck` casts). Without
//! those features a portable path computes the same sums.

use half::f16;
use rayon::prelude::*;

/// Values per block: the unit a scale and an offset apply to.
pub const BLOCK: usize = 32;
/// Values per stored pair of blocks.
const PAIR: usize = 2 * BLOCK;
/// Bytes of the two scales and two offsets (f16) that end a stored pair.
const PAIR_SCALES_BYTES: usize = 8;
/// Bytes of one stored 4-bit pair: 64 nibbles, then the scales.
const FOUR_PAIR_BYTES: usize = PAIR / 2 + PAIR_SCALES_BYTES;
/// Bytes of one stored 8-bit pair: 64 bytes, then the scales.
const EIGHT_PAIR_BYTES: usize = PAIR + PAIR_SCALES_BYTES;
/// Largest magnitude of a rounded activation (signed 8 bits, symmetric).
const ACTIVATION_MAX: f32 = 127.0;
/// Rows one parallel task takes in a single-token product: enough work
/// (tens of microseconds) that a task outweighs its scheduling.
const ROWS_PER_TASK: usize = 64;
/// Rows a kernel call takes at once: their loads overlap, and they share the
/// activation's.
const ROWS_AT_ONCE: usize = 4;
/// Rows a prompt kernel call takes at once (times [`TOKENS_PER_TASK`]
/// accumulators: 8 of AVX-512's 32 registers).
const PROMPT_ROWS_AT_ONCE: usize = 2;
/// Tokens one parallel task takes in a prompt product.
const TOKENS_PER_TASK: usize = 4;

/// A matrix of `rows x cols` values in one of the kernels' layouts.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    /// Stored pairs per row: `ceil(cols / 64)` (a last odd block is padded
    /// with zeros, which add nothing to any product).
    pairs: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    Four(Vec<[u8; FOUR_PAIR_BYTES]>),
    Eight(Vec<[u8; EIGHT_PAIR_BYTES]>),
    F32(Vec<f32>),
}

/// A GGUF tensor type this module reads directly (the rest arrive as f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufBlocks {
    /// `d: f16, m: f16, q: [u8; 16]` (nibbles, value `k` low, `k + 16` high).
    Q4_1,
    /// `d: f16, q: [u8; 16]`, value `d * (q - 8)`.
    Q4_0,
    /// `d: f16, q: [i8; 32]`.
    Q8_0,
}

impl GgufBlocks {
    /// Bytes of one GGUF block of this type.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q4_0 => 18,
            Self::Q8_0 => 34,
        }
    }
}

/// Why a matrix could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The byte or value count does not match the shape.
    #[error("{got} {what} for a {rows} x {cols} matrix, expected {expected}")]
    Size {
        /// What was counted: "bytes" or "values".
        what: &'static str,
        /// The count given.
        got: usize,
        /// The count the shape needs.
        expected: usize,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// Rows must be whole blocks.
    #[error("rows of {0} values are not whole blocks of {BLOCK}")]
    PartialBlock(usize),
    /// A Q8_0 scale too large for the offset `-128 d` to fit in f16.
    #[error("a Q8_0 scale is too large to keep its values exactly")]
    ScaleRange,
    /// Rows appended to a matrix of another width or layout.
    #[error("rows of another width or layout cannot be appended")]
    Mismatch,
}

impl Matrix {
    /// Rows (outputs of a product).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs of a product).
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix holds.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Four(p) => p.len() * FOUR_PAIR_BYTES,
            Storage::Eight(p) => p.len() * EIGHT_PAIR_BYTES,
            Storage::F32(v) => v.len() * 4,
        }
    }

    /// Keeps f32 values as they are.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize) -> Result<Self, QuantError> {
        check_values(values.len(), rows, cols)?;
        Ok(Self {
            rows,
            cols,
            pairs: 0,
            storage: Storage::F32(values),
        })
    }

    /// Rounds f32 values to 8-bit affine blocks (each block's minimum to
    /// maximum in 255 steps): for types the kernels do not read directly.
    pub fn quantize_eight(values: &[f32], rows: usize, cols: usize) -> Result<Self, QuantError> {
        check_values(values.len(), rows, cols)?;
        let blocks = values.chunks_exact(BLOCK).map(|block| {
            let min = block.iter().copied().fold(f32::INFINITY, f32::min);
            let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let scale = f16::from_f32((max - min) / 255.0);
            let offset = f16::from_f32(min);
            let (s, o) = (scale.to_f32(), offset.to_f32());
            let mut q = [0u8; BLOCK];
            for (q, &x) in q.iter_mut().zip(block) {
                *q = match s > 0.0 {
                    true => ((x - o) / s).round().clamp(0.0, 255.0) as u8,
                    false => 0,
                };
            }
            (q, scale, offset)
        });
        Ok(Self::from_eight_blocks(rows, cols, blocks))
    }

    /// Takes a GGUF tensor's bytes (`rows x cols` values of type `kind`)
    /// without changing any value.
    pub fn from_gguf(
        kind: GgufBlocks,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::PartialBlock(cols));
        }
        let expected = rows * cols / BLOCK * kind.block_bytes();
        if bytes.len() != expected {
            return Err(QuantError::Size {
                what: "bytes",
                got: bytes.len(),
                expected,
                rows,
                cols,
            });
        }
        let blocks = bytes.chunks_exact(kind.block_bytes());
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
        Ok(match kind {
            GgufBlocks::Q4_1 | GgufBlocks::Q4_0 => {
                let blocks = blocks.map(|b| {
                    let d = f16_at(b, 0);
                    let (offset, nibbles) = match kind {
                        GgufBlocks::Q4_1 => (f16_at(b, 2), &b[4..20]),
                        _ => (f16::from_f32(-8.0 * d.to_f32()), &b[2..18]),
                    };
                    let mut q = [0u8; BLOCK];
                    for (k, &byte) in nibbles.iter().enumerate() {
                        q[k] = byte & 0x0F;
                        q[k + BLOCK / 2] = byte >> 4;
                    }
                    (q, d, offset)
                });
                Self::from_four_blocks(rows, cols, blocks)
            }
            GgufBlocks::Q8_0 => {
                // -128 d is exact in f16 (a power-of-two multiple) unless it
                // overflows, which no real weight scale comes near; if one
                // does, the values go through f32 instead.
                if blocks
                    .clone()
                    .any(|b| !f16::from_f32(-128.0 * f16_at(b, 0).to_f32()).is_finite())
                {
                    return Err(QuantError::ScaleRange);
                }
                let blocks = blocks.map(|b| {
                    let d = f16_at(b, 0);
                    let mut q = [0u8; BLOCK];
                    for (q, &v) in q.iter_mut().zip(&b[2..34]) {
                        *q = (v as i8 as i16 + 128) as u8;
                    }
                    (q, d, f16::from_f32(-128.0 * d.to_f32()))
                });
                Self::from_eight_blocks(rows, cols, blocks)
            }
        })
    }

    fn from_four_blocks(rows: usize, cols: usize, blocks: impl Iterator<Item = Block>) -> Self {
        let stored = in_pairs(rows, cols, blocks, |a, b| {
            let mut pair = [0u8; FOUR_PAIR_BYTES];
            for ((byte, low), high) in pair.iter_mut().zip(a.0).zip(b.0) {
                *byte = low | (high << 4);
            }
            write_scales(&mut pair[PAIR / 2..], &a, &b);
            pair
        });
        Self {
            rows,
            cols,
            pairs: cols.div_ceil(PAIR),
            storage: Storage::Four(stored),
        }
    }

    fn from_eight_blocks(rows: usize, cols: usize, blocks: impl Iterator<Item = Block>) -> Self {
        let stored = in_pairs(rows, cols, blocks, |a, b| {
            let mut pair = [0u8; EIGHT_PAIR_BYTES];
            pair[..BLOCK].copy_from_slice(&a.0);
            pair[BLOCK..PAIR].copy_from_slice(&b.0);
            write_scales(&mut pair[PAIR..], &a, &b);
            pair
        });
        Self {
            rows,
            cols,
            pairs: cols.div_ceil(PAIR),
            storage: Storage::Eight(stored),
        }
    }

    /// Appends `other`'s rows below this matrix's (same columns and layout):
    /// a large matrix can be built a few rows at a time.
    pub fn append_rows(&mut self, other: Matrix) -> Result<(), QuantError> {
        if other.cols != self.cols {
            return Err(QuantError::Mismatch);
        }
        match (&mut self.storage, other.storage) {
            (Storage::Four(a), Storage::Four(b)) => a.extend(b),
            (Storage::Eight(a), Storage::Eight(b)) => a.extend(b),
            (Storage::F32(a), Storage::F32(b)) => a.extend(b),
            _ => return Err(QuantError::Mismatch),
        }
        self.rows += other.rows;
        Ok(())
    }

    /// Row `row` as f32 values into `out` (`cols` long): the embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let out = &mut out[..self.cols];
        let pairs = self.pairs;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[row * self.cols..][..self.cols]),
            Storage::Four(p) => {
                for (pair, out) in p[row * pairs..][..pairs].iter().zip(out.chunks_mut(PAIR)) {
                    let [sa, sb, oa, ob] = read_scales(&pair[PAIR / 2..]);
                    for (k, v) in out.iter_mut().enumerate() {
                        let byte = pair[k % BLOCK];
                        *v = match k < BLOCK {
                            true => sa * (byte & 0x0F) as f32 + oa,
                            false => sb * (byte >> 4) as f32 + ob,
                        };
                    }
                }
            }
            Storage::Eight(p) => {
                for (pair, out) in p[row * pairs..][..pairs].iter().zip(out.chunks_mut(PAIR)) {
                    let [sa, sb, oa, ob] = read_scales(&pair[PAIR..]);
                    for (k, v) in out.iter_mut().enumerate() {
                        *v = match k < BLOCK {
                            true => sa * pair[k] as f32 + oa,
                            false => sb * pair[k] as f32 + ob,
                        };
                    }
                }
            }
        }
    }

    /// `out[t][r] = Σ_c x[t][c] * self[r][c]` for the `x.len() / cols` tokens
    /// of `x`, on the current rayon pool. `scratch` holds the rounded
    /// activations between calls, so a step allocates nothing.
    ///
    /// # Panics
    ///
    /// If `x` is not whole rows of `cols` or `out` is not as many rows of `rows`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32], scratch: &mut Activations) {
        let tokens = x.len() / self.cols;
        assert_eq!(x.len(), tokens * self.cols, "input is not whole rows");
        assert_eq!(out.len(), tokens * self.rows, "output is not whole rows");
        if let Storage::F32(w) = &self.storage {
            return self.matmul_f32(w, x, out);
        }
        scratch.quantize(x, self.cols);
        let scratch = &*scratch;
        if tokens == 1 {
            out.par_chunks_mut(ROWS_PER_TASK)
                .enumerate()
                .for_each(|(task, out)| self.rows_dot(task * ROWS_PER_TASK, out, scratch, 0));
        } else {
            out.par_chunks_mut(self.rows * TOKENS_PER_TASK)
                .enumerate()
                .for_each(|(task, out)| {
                    // Rows outermost: a row's bytes stay in L1 across the tokens.
                    let first = task * TOKENS_PER_TASK;
                    let tokens = out.len() / self.rows;
                    if let (Storage::Four(w), TOKENS_PER_TASK) = (&self.storage, tokens) {
                        return self.prompt_rows_dot(w, out, scratch, first);
                    }
                    let mut dots = [0.0; ROWS_AT_ONCE];
                    for r in (0..self.rows).step_by(ROWS_AT_ONCE) {
                        let n = ROWS_AT_ONCE.min(self.rows - r);
                        for t in 0..tokens {
                            self.rows_dot(r, &mut dots[..n], scratch, first + t);
                            out[t * self.rows + r..][..n].copy_from_slice(&dots[..n]);
                        }
                    }
                });
        }
    }

    /// Every row of a 4-bit matrix against [`TOKENS_PER_TASK`] tokens from
    /// `first`, into `out` (`[token][row]`): each pair of weights is unpacked
    /// once for all the tokens.
    fn prompt_rows_dot(
        &self,
        w: &[[u8; FOUR_PAIR_BYTES]],
        out: &mut [f32],
        act: &Activations,
        first: usize,
    ) {
        let p = self.pairs;
        let xs: [Pairs; TOKENS_PER_TASK] = std::array::from_fn(|t| Pairs {
            q: &act.q[(first + t) * p..][..p],
            scales: &act.scales[(first + t) * p..][..p],
            sums: &act.rounded_sums[(first + t) * p..][..p],
        });
        let rows = self.rows;
        let mut write = |first_row: usize, dots: &[[f32; TOKENS_PER_TASK]]| {
            for (i, dots) in dots.iter().enumerate() {
                for (t, &dot) in dots.iter().enumerate() {
                    out[t * rows + first_row + i] = dot;
                }
            }
        };
        let whole = rows - rows % PROMPT_ROWS_AT_ONCE;
        for r in (0..whole).step_by(PROMPT_ROWS_AT_ONCE) {
            let dots: [_; PROMPT_ROWS_AT_ONCE] =
                dot_four_tokens(&w[r * p..][..PROMPT_ROWS_AT_ONCE * p], &xs);
            write(r, &dots);
        }
        for r in whole..rows {
            let dots: [_; 1] = dot_four_tokens(&w[r * p..][..p], &xs);
            write(r, &dots);
        }
    }

    fn matmul_f32(&self, w: &[f32], x: &[f32], out: &mut [f32]) {
        let cols = self.cols;
        out.par_chunks_mut(self.rows)
            .zip(x.par_chunks(cols))
            .for_each(|(out, x)| {
                for (out, row) in out.iter_mut().zip(w.chunks_exact(cols)) {
                    *out = dot_f32(row, x);
                }
            });
    }

    /// Rows `first..first + out.len()` against token `token` of `act`, into
    /// `out`, [`ROWS_AT_ONCE`] at a time.
    fn rows_dot(&self, first: usize, out: &mut [f32], act: &Activations, token: usize) {
        let p = self.pairs;
        let sums = match self.storage {
            Storage::Four(_) => &act.rounded_sums,
            _ => &act.exact_sums,
        };
        let x = Pairs {
            q: &act.q[token * p..][..p],
            scales: &act.scales[token * p..][..p],
            sums: &sums[token * p..][..p],
        };
        let mut chunks = out.chunks_exact_mut(ROWS_AT_ONCE);
        let mut row = first;
        for out in &mut chunks {
            let out: &mut [f32; ROWS_AT_ONCE] = out.try_into().expect("chunks are exact");
            *out = match &self.storage {
                Storage::Four(w) => dot_four::<ROWS_AT_ONCE>(&w[row * p..][..ROWS_AT_ONCE * p], &x),
                Storage::Eight(w) => {
                    dot_eight::<ROWS_AT_ONCE>(&w[row * p..][..ROWS_AT_ONCE * p], &x)
                }
                Storage::F32(_) => unreachable!("f32 matrices take matmul_f32"),
            };
            row += ROWS_AT_ONCE;
        }
        for out in chunks.into_remainder() {
            *out = match &self.storage {
                Storage::Four(w) => dot_four::<1>(&w[row * p..][..p], &x)[0],
                Storage::Eight(w) => dot_eight::<1>(&w[row * p..][..p], &x)[0],
                Storage::F32(_) => unreachable!("f32 matrices take matmul_f32"),
            };
            row += 1;
        }
    }
}

/// One token's rounded activations, as the kernels read them.
struct Pairs<'a> {
    q: &'a [[u8; PAIR]],
    scales: &'a [[f32; 16]],
    sums: &'a [[f32; 4]],
}

/// One block's unsigned values, scale and offset.
type Block = ([u8; BLOCK], f16, f16);

/// A block of zeros: pads a row's last pair when it has an odd number of blocks.
const EMPTY_BLOCK: Block = ([0; BLOCK], f16::ZERO, f16::ZERO);

/// The blocks of `rows` rows of `cols` values, paired within each row by
/// `pair` (a row's odd last block with [`EMPTY_BLOCK`]).
fn in_pairs<T>(
    rows: usize,
    cols: usize,
    mut blocks: impl Iterator<Item = Block>,
    pair: impl Fn(Block, Block) -> T,
) -> Vec<T> {
    let (per_row, pairs) = (cols / BLOCK, cols.div_ceil(PAIR));
    let mut stored = Vec::with_capacity(rows * pairs);
    for _ in 0..rows {
        for p in 0..pairs {
            let a = blocks.next().unwrap_or(EMPTY_BLOCK);
            let b = match 2 * p + 1 < per_row {
                true => blocks.next().unwrap_or(EMPTY_BLOCK),
                false => EMPTY_BLOCK,
            };
            stored.push(pair(a, b));
        }
    }
    stored
}

fn check_values(got: usize, rows: usize, cols: usize) -> Result<(), QuantError> {
    if !cols.is_multiple_of(BLOCK) {
        return Err(QuantError::PartialBlock(cols));
    }
    match got == rows * cols {
        true => Ok(()),
        false => Err(QuantError::Size {
            what: "values",
            got,
            expected: rows * cols,
            rows,
            cols,
        }),
    }
}

/// Writes `[s_a, s_b, o_a, o_b]` as little-endian f16.
fn write_scales(out: &mut [u8], a: &Block, b: &Block) {
    for (i, v) in [a.1, b.1, a.2, b.2].into_iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads `[s_a, s_b, o_a, o_b]`.
fn read_scales(bytes: &[u8]) -> [f32; 4] {
    std::array::from_fn(|i| f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32())
}

/// Activations rounded to signed 8 bits per block, laid out in pairs like
/// the matrices, with what the kernels need precomputed per pair.
#[derive(Debug, Default, Clone)]
pub struct Activations {
    /// Per pair, 64 values as `i8` bits.
    q: Vec<[u8; PAIR]>,
    /// Per pair, the first block's scale in lanes 0-7 and the second's in
    /// 8-15: the lanes `vpdpbusd`'s sums come out in.
    scales: Vec<[f32; 16]>,
    /// Per pair, `[0, 0, sx_a * Σ qx_a, sx_b * Σ qx_b]`, exact: multiplied
    /// by an 8-bit pair's `[s_a, s_b, o_a, o_b]` they give the offsets' share.
    exact_sums: Vec<[f32; 4]>,
    /// The same sums rounded to f16 (see [`RoundedBlock`]), for 4-bit pairs.
    rounded_sums: Vec<[f32; 4]>,
}

impl Activations {
    /// An empty buffer; it grows to the largest input it is given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rounds `x` (tokens of `cols` values) into this buffer.
    fn quantize(&mut self, x: &[f32], cols: usize) {
        let pairs_per_token = cols.div_ceil(PAIR);
        let pairs = x.len() / cols * pairs_per_token;
        self.q.resize(pairs, [0; PAIR]);
        self.scales.resize(pairs, [0.0; 16]);
        self.exact_sums.resize(pairs, [0.0; 4]);
        self.rounded_sums.resize(pairs, [0.0; 4]);
        let slots = self
            .q
            .par_chunks_mut(pairs_per_token)
            .zip(self.scales.par_chunks_mut(pairs_per_token))
            .zip(self.exact_sums.par_chunks_mut(pairs_per_token))
            .zip(self.rounded_sums.par_chunks_mut(pairs_per_token));
        // One token is too little to split; a prompt splits by tokens.
        slots
            .zip(x.par_chunks_exact(cols))
            .with_min_len(TOKENS_PER_TASK)
            .for_each(|((((q, scales), exact), rounded), x)| {
                quantize_token(x, q, scales, exact, rounded)
            });
    }
}

/// Rounds one token's values into its pairs.
fn quantize_token(
    x: &[f32],
    q: &mut [[u8; PAIR]],
    scales: &mut [[f32; 16]],
    exact: &mut [[f32; 4]],
    rounded: &mut [[f32; 4]],
) {
    let sums = exact.iter_mut().zip(rounded);
    for (p, ((q, scales), (exact, rounded))) in q.iter_mut().zip(scales).zip(sums).enumerate() {
        for half in 0..2 {
            let start = p * PAIR + half * BLOCK;
            let lanes = &mut q[half * BLOCK..][..BLOCK];
            let block = match x.get(start..start + BLOCK) {
                Some(block) => quantize_block(block, lanes),
                None => {
                    lanes.fill(0);
                    RoundedBlock::default()
                }
            };
            scales[half * 8..][..8].fill(block.scale);
            exact[2 + half] = block.exact_sum;
            rounded[2 + half] = block.rounded_sum;
        }
    }
}

/// What rounding one block of activations gives besides its lanes.
#[derive(Debug, Default, Clone, Copy)]
struct RoundedBlock {
    /// The scale, rounded to f16 as ggml stores it.
    scale: f32,
    /// `scale * Σ q`, exact: what the offsets of 8-bit matrices (from Q8_0's
    /// `-128 d`) multiply, so they cancel exactly as in Q8_0 × Q8_0.
    exact_sum: f32,
    /// `scale * Σ q` rounded to f16 as ggml's Q8_1 stores it: what Q4_1's
    /// `m` multiplies in ggml and candle.
    rounded_sum: f32,
}

/// Rounds one block to `i8` lanes exactly as ggml's Q8_0 and Q8_1 do (the
/// lanes from the f32 scale, the stored scale rounded to f16), so that the
/// products match ggml's and candle's but for the order of the additions.
fn quantize_block(block: &[f32], lanes: &mut [u8]) -> RoundedBlock {
    let max = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = max / ACTIVATION_MAX;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (lane, &x) in lanes.iter_mut().zip(block) {
        let q = (x * inverse).round() as i8;
        sum += q as i32;
        *lane = q as u8;
    }
    let scale = f16::from_f32(scale);
    RoundedBlock {
        scale: scale.to_f32(),
        exact_sum: scale.to_f32() * sum as f32,
        rounded_sum: (f16::from_f32(sum as f32) * scale).to_f32(),
    }
}

/// A dot product of f32 slices, in 16 lanes (so it vectorizes).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs the first kernel call where the target has the SIMD kernels, the
/// second (portable) elsewhere.
macro_rules! kernel {
    ($simd:expr, $portable:expr) => {{
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx512vnni",
            target_feature = "avx512bw",
            target_feature = "f16c"
        ))]
        #[allow(unsafe_code)]
        // SAFETY: the `simd` module, and so this call, is compiled only for
        // targets with every feature its functions enable.
        return unsafe { $simd };
        #[allow(unreachable_code)]
        $portable
    }};
}

/// `R` consecutive rows of 4-bit pairs (`R * pairs` of them) against one
/// token's activations.
fn dot_four<const R: usize>(rows: &[[u8; FOUR_PAIR_BYTES]], x: &Pairs) -> [f32; R] {
    kernel!(
        simd::dot_four::<R>(rows, x),
        portable::dot_four::<R>(rows, x)
    )
}

/// `R` consecutive rows of 4-bit pairs against `T` tokens' activations.
fn dot_four_tokens<const R: usize, const T: usize>(
    rows: &[[u8; FOUR_PAIR_BYTES]],
    xs: &[Pairs; T],
) -> [[f32; T]; R] {
    kernel!(simd::dot_four_tokens::<R, T>(rows, xs), {
        let per_token: [[f32; R]; T] =
            std::array::from_fn(|t| portable::dot_four::<R>(rows, &xs[t]));
        std::array::from_fn(|r| std::array::from_fn(|t| per_token[t][r]))
    })
}

/// `R` consecutive rows of 8-bit pairs against one token's activations.
fn dot_eight<const R: usize>(rows: &[[u8; EIGHT_PAIR_BYTES]], x: &Pairs) -> [f32; R] {
    kernel!(
        simd::dot_eight::<R>(rows, x),
        portable::dot_eight::<R>(rows, x)
    )
}

/// The kernels in plain Rust: any CPU, and the reference the SIMD ones are
/// tested against.
mod portable {
    use super::*;

    pub(super) fn dot_four<const R: usize>(rows: &[[u8; FOUR_PAIR_BYTES]], x: &Pairs) -> [f32; R] {
        let pairs = x.q.len();
        std::array::from_fn(|r| {
            let mut total = 0.0f32;
            for (i, pair) in rows[r * pairs..][..pairs].iter().enumerate() {
                let (q, x_scale, x_sum) = (&x.q[i], &x.scales[i], &x.sums[i]);
                let mut dots = [0i32; 2];
                for k in 0..BLOCK {
                    dots[0] += (pair[k] & 0x0F) as i32 * q[k] as i8 as i32;
                    dots[1] += (pair[k] >> 4) as i32 * q[BLOCK + k] as i8 as i32;
                }
                total += pair_total(read_scales(&pair[PAIR / 2..]), dots, x_scale, x_sum);
            }
            total
        })
    }

    pub(super) fn dot_eight<const R: usize>(
        rows: &[[u8; EIGHT_PAIR_BYTES]],
        x: &Pairs,
    ) -> [f32; R] {
        let pairs = x.q.len();
        std::array::from_fn(|r| {
            let mut total = 0.0f32;
            for (i, pair) in rows[r * pairs..][..pairs].iter().enumerate() {
                let (q, x_scale, x_sum) = (&x.q[i], &x.scales[i], &x.sums[i]);
                let mut dots = [0i32; 2];
                for k in 0..PAIR {
                    dots[k / BLOCK] += pair[k] as i32 * q[k] as i8 as i32;
                }
                total += pair_total(read_scales(&pair[PAIR..]), dots, x_scale, x_sum);
            }
            total
        })
    }

    fn pair_total(w: [f32; 4], dots: [i32; 2], x_scale: &[f32; 16], x_sum: &[f32; 4]) -> f32 {
        let [sa, sb, oa, ob] = w;
        sa * x_scale[0] * dots[0] as f32
            + sb * x_scale[8] * dots[1] as f32
            + oa * x_sum[2]
            + ob * x_sum[3]
    }
}

/// The kernels with AVX-512 VNNI: one `vpdpbusd` per pair of blocks.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512vnni",
    target_feature = "avx512bw",
    target_feature = "f16c"
))]
mod simd {
    use std::arch::x86_64::*;

    use super::{Pairs, EIGHT_PAIR_BYTES, FOUR_PAIR_BYTES, PAIR};

    /// How far ahead the kernels prefetch weights, in calls' worth of rows
    /// (2: a few kilobytes, measured best of 1, 2 and 4 by `benches/kernels.rs`).
    const PREFETCH_GROUPS: usize = 2;

    /// A pair's `[s_a, s_b, o_a, o_b]` as f32, from the 8 bytes after its integers.
    #[target_feature(enable = "avx512f,f16c")]
    fn pair_scales(bytes: &[u8]) -> __m128 {
        let bits = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
    }

    /// Adds one pair's share to the accumulators: `dots` (16 i32 lanes, 0-7
    /// the first block's, 8-15 the second's) times both scales, and the offsets.
    #[target_feature(enable = "avx512f,f16c")]
    fn accumulate(
        dots: __m512i,
        w: __m128,
        x_scale: &[f32; 16],
        x_sum: &[f32; 4],
        acc: &mut __m512,
        acc_offsets: &mut __m128,
    ) {
        // Lanes 0-7 take s_a, 8-15 take s_b.
        let pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let w_lanes = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(w));
        let scale = _mm512_mul_ps(w_lanes, bytemuck::cast(*x_scale));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, *acc);
        *acc_offsets = _mm_fmadd_ps(w, bytemuck::cast(*x_sum), *acc_offsets);
    }

    /// Asks for the pair `distance` pairs after `pair` (the same place in the
    /// next call's rows) to be brought into cache: the hardware prefetcher
    /// alone leaves a core waiting on memory. A prefetch never faults, so the
    /// address may lie past the matrix.
    #[target_feature(enable = "sse")]
    fn prefetch_ahead<const N: usize>(pair: &[u8; N], distance: usize) {
        let ahead = pair.as_ptr().wrapping_add(distance * N);
        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
    }

    /// A 4-bit pair's 64 values as bytes (the first block's in the low 256
    /// bits, the second's in the high), and the bytes of its scales.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn unpack_four(pair: &[u8; FOUR_PAIR_BYTES]) -> (__m512i, &[u8]) {
        let (nibbles, scales) = pair.split_at(PAIR / 2);
        let nibbles: [u8; PAIR / 2] = nibbles.try_into().unwrap_or_default();
        let both = _mm512_broadcast_i64x4(bytemuck::cast(nibbles));
        // The first 256 bits keep the low nibbles, the second take the high ones.
        let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
        let values = _mm512_and_si512(_mm512_srlv_epi64(both, shifts), _mm512_set1_epi8(0x0F));
        (values, scales)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    fn total(acc: __m512, acc_offsets: __m128) -> f32 {
        let offsets: [f32; 4] = bytemuck::cast(acc_offsets);
        _mm512_reduce_add_ps(acc) + offsets[2] + offsets[3]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn dot_four<const R: usize>(rows: &[[u8; FOUR_PAIR_BYTES]], x: &Pairs) -> [f32; R] {
        let pairs = x.q.len();
        let rows: [&[[u8; FOUR_PAIR_BYTES]]; R] =
            std::array::from_fn(|r| &rows[r * pairs..][..pairs]);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_offsets = [_mm_setzero_ps(); R];
        for (i, ((q, x_scale), x_sum)) in x.q.iter().zip(x.scales).zip(x.sums).enumerate() {
            let q: __m512i = bytemuck::cast(*q);
            for r in 0..R {
                let pair = &rows[r][i];
                prefetch_ahead(pair, PREFETCH_GROUPS * R * pairs);
                let (weights, w) = unpack_four(pair);
                let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, q);
                accumulate(
                    dots,
                    pair_scales(w),
                    x_scale,
                    x_sum,
                    &mut acc[r],
                    &mut acc_offsets[r],
                );
            }
        }
        std::array::from_fn(|r| total(acc[r], acc_offsets[r]))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn dot_four_tokens<const R: usize, const T: usize>(
        rows: &[[u8; FOUR_PAIR_BYTES]],
        xs: &[Pairs; T],
    ) -> [[f32; T]; R] {
        let pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let pairs = xs[0].q.len();
        let rows: [&[[u8; FOUR_PAIR_BYTES]]; R] =
            std::array::from_fn(|r| &rows[r * pairs..][..pairs]);
        let qs: [&[[u8; PAIR]]; T] = std::array::from_fn(|t| &xs[t].q[..pairs]);
        let scales: [&[[f32; 16]]; T] = std::array::from_fn(|t| &xs[t].scales[..pairs]);
        let sums: [&[[f32; 4]]; T] = std::array::from_fn(|t| &xs[t].sums[..pairs]);
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut acc_offsets = [[_mm_setzero_ps(); T]; R];
        for i in 0..pairs {
            for r in 0..R {
                let pair = &rows[r][i];
                prefetch_ahead(pair, PREFETCH_GROUPS * R * pairs);
                let (weights, w) = unpack_four(pair);
                let w = pair_scales(w);
                let w_lanes = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(w));
                for t in 0..T {
                    let q: __m512i = bytemuck::cast(qs[t][i]);
                    let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, q);
                    let scale = _mm512_mul_ps(w_lanes, bytemuck::cast(scales[t][i]));
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, acc[r][t]);
                    acc_offsets[r][t] =
                        _mm_fmadd_ps(w, bytemuck::cast(sums[t][i]), acc_offsets[r][t]);
                }
            }
        }
        std::array::from_fn(|r| std::array::from_fn(|t| total(acc[r][t], acc_offsets[r][t])))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn dot_eight<const R: usize>(
        rows: &[[u8; EIGHT_PAIR_BYTES]],
        x: &Pairs,
    ) -> [f32; R] {
        let pairs = x.q.len();
        let rows: [&[[u8; EIGHT_PAIR_BYTES]]; R] =
            std::array::from_fn(|r| &rows[r * pairs..][..pairs]);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_offsets = [_mm_setzero_ps(); R];
        for (i, ((q, x_scale), x_sum)) in x.q.iter().zip(x.scales).zip(x.sums).enumerate() {
            let q: __m512i = bytemuck::cast(*q);
            for r in 0..R {
                let pair = &rows[r][i];
                prefetch_ahead(pair, PREFETCH_GROUPS * R * pairs);
                let (values, w) = pair.split_at(PAIR);
                let values: [u8; PAIR] = values.try_into().unwrap_or([0; PAIR]);
                let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bytemuck::cast(values), q);
                accumulate(
                    dots,
                    pair_scales(w),
                    x_scale,
                    x_sum,
                    &mut acc[r],
                    &mut acc_offsets[r],
                );
            }
        }
        std::array::from_fn(|r| total(acc[r], acc_offsets[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Q4_1 bytes for `rows x cols` of random blocks.
    fn q4_1_bytes(rows: usize, cols: usize, seed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..rows * cols / BLOCK {
            let byte = |i: usize| seed[(b * 7 + i) % seed.len()];
            out.extend_from_slice(&f16::from_f32(0.01 + byte(0) as f32 / 2000.0).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(-0.1 + byte(1) as f32 / 3000.0).to_le_bytes());
            out.extend((0..16).map(|i| byte(i + 2).wrapping_mul(31)));
        }
        out
    }

    fn q8_0_bytes(rows: usize, cols: usize, seed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..rows * cols / BLOCK {
            let byte = |i: usize| seed[(b * 5 + i) % seed.len()];
            out.extend_from_slice(&f16::from_f32(0.001 + byte(0) as f32 / 9000.0).to_le_bytes());
            out.extend((0..32).map(|i| byte(i + 1).wrapping_mul(77)));
        }
        out
    }

    /// The f32 product of the matrix's own values with `x`.
    fn exact(m: &Matrix, x: &[f32]) -> Vec<f32> {
        let tokens = x.len() / m.cols;
        let mut row = vec![0.0; m.cols];
        let mut out = vec![0.0; tokens * m.rows];
        for r in 0..m.rows {
            m.dequantize_row(r, &mut row);
            for t in 0..tokens {
                out[t * m.rows + r] = row
                    .iter()
                    .zip(&x[t * m.cols..][..m.cols])
                    .map(|(a, b)| (*a as f64 * *b as f64) as f32)
                    .sum();
            }
        }
        out
    }

    /// Products must match the exact ones to within the activations' rounding:
    /// each value moves by at most half a step (`max|x| / 254` per block) plus
    /// what rounding the block's scale to f16 adds (2^-11 of 127 steps).
    fn assert_close(m: &Matrix, x: &[f32]) {
        let mut out = vec![0.0; x.len() / m.cols * m.rows];
        m.matmul(x, &mut out, &mut Activations::new());
        let want = exact(m, x);
        let mut row = vec![0.0; m.cols];
        for (i, (got, want)) in out.iter().zip(&want).enumerate() {
            let (t, r) = (i / m.rows, i % m.rows);
            m.dequantize_row(r, &mut row);
            let x = &x[t * m.cols..][..m.cols];
            let bound: f32 = x
                .chunks(BLOCK)
                .zip(row.chunks(BLOCK))
                .map(|(x, w)| {
                    // Half a step, plus the scale's f16 rounding over 127 steps.
                    let step = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0 * 0.57;
                    step * w.iter().map(|v| v.abs()).sum::<f32>()
                })
                .sum();
            assert!(
                (got - want).abs() <= bound * 1.01 + 1e-3 * (1.0 + want.abs()),
                "token {t} row {r}: {got} vs {want} (bound {bound})"
            );
        }
    }

    #[test]
    fn gguf_values_are_kept_exactly() {
        let seed: Vec<u8> = (0..=255).collect();
        let bytes = q4_1_bytes(3, 96, &seed);
        let m = Matrix::from_gguf(GgufBlocks::Q4_1, &bytes, 3, 96).expect("q4_1");
        let mut row = vec![0.0; 96];
        m.dequantize_row(1, &mut row);
        let block = &bytes[3 * 20..4 * 20];
        let (d, m_) = (
            f16::from_le_bytes([block[0], block[1]]).to_f32(),
            f16::from_le_bytes([block[2], block[3]]).to_f32(),
        );
        for k in 0..16 {
            assert_eq!(row[k], d * (block[4 + k] & 15) as f32 + m_);
            assert_eq!(row[k + 16], d * (block[4 + k] >> 4) as f32 + m_);
        }

        let bytes = q8_0_bytes(2, 64, &seed);
        let m = Matrix::from_gguf(GgufBlocks::Q8_0, &bytes, 2, 64).expect("q8_0");
        let mut row = vec![0.0; 64];
        m.dequantize_row(1, &mut row);
        let block = &bytes[3 * 34..4 * 34];
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for k in 0..32 {
            assert_eq!(row[32 + k], d * (block[2 + k] as i8) as f32);
        }
    }

    #[test]
    fn huge_q8_0_scales_are_refused_not_overflowed() {
        let mut bytes = q8_0_bytes(1, 32, &[1, 2, 3]);
        bytes[..2].copy_from_slice(&f16::from_f32(1000.0).to_le_bytes());
        assert_eq!(
            Matrix::from_gguf(GgufBlocks::Q8_0, &bytes, 1, 32).unwrap_err(),
            QuantError::ScaleRange
        );
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(matches!(
            Matrix::from_gguf(GgufBlocks::Q8_0, &[0; 33], 1, 32),
            Err(QuantError::Size { .. })
        ));
        assert_eq!(
            Matrix::from_f32(vec![0.0; 20], 1, 20).unwrap_err(),
            QuantError::PartialBlock(20)
        );
    }

    #[test]
    fn rows_appended_a_few_at_a_time_make_the_whole_matrix() {
        let (rows, cols) = (10, 2 * PAIR);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let whole = Matrix::quantize_eight(&values, rows, cols).expect("whole");
        let mut built = Matrix::quantize_eight(&values[..3 * cols], 3, cols).expect("top");
        built
            .append_rows(Matrix::quantize_eight(&values[3 * cols..], rows - 3, cols).expect("rest"))
            .expect("append");
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.1).sin()).collect();
        let (mut a, mut b) = (vec![0.0; rows], vec![0.0; rows]);
        whole.matmul(&x, &mut a, &mut Activations::new());
        built.matmul(&x, &mut b, &mut Activations::new());
        assert_eq!(a, b);
        let narrow = Matrix::quantize_eight(&values[..PAIR], 1, PAIR).expect("narrow");
        assert_eq!(built.append_rows(narrow), Err(QuantError::Mismatch));
        let f32_rows = Matrix::from_f32(values[..cols].to_vec(), 1, cols).expect("f32");
        assert_eq!(built.append_rows(f32_rows), Err(QuantError::Mismatch));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn products_match_the_exact_ones(
            rows in 1usize..80,
            blocks in 1usize..6,
            tokens in 1usize..6,
            seed in proptest::collection::vec(any::<u8>(), 64..200),
            x in proptest::collection::vec(-4.0f32..4.0, 6 * 5 * BLOCK),
            kind in 0usize..4,
        ) {
            let cols = blocks * BLOCK;
            let m = match kind {
                0 => Matrix::from_gguf(GgufBlocks::Q4_1, &q4_1_bytes(rows, cols, &seed), rows, cols),
                1 => Matrix::from_gguf(GgufBlocks::Q8_0, &q8_0_bytes(rows, cols, &seed), rows, cols),
                2 => {
                    let values: Vec<f32> = (0..rows * cols).map(|i| seed[i % seed.len()] as f32 / 50.0 - 2.5).collect();
                    Matrix::quantize_eight(&values, rows, cols)
                }
                _ => {
                    let values: Vec<f32> = (0..rows * cols).map(|i| seed[i % seed.len()] as f32 / 50.0 - 2.5).collect();
                    Matrix::from_f32(values, rows, cols)
                }
            }.expect("matrix");
            assert_close(&m, &x[..tokens * cols]);
        }

        #[test]
        fn simd_and_portable_kernels_agree(
            pairs in 1usize..12,
            seed in proptest::collection::vec(any::<u8>(), 64..200),
            x in proptest::collection::vec(-4.0f32..4.0, 12 * PAIR),
        ) {
            let cols = pairs * PAIR;
            let mut act = Activations::new();
            act.quantize(&x[..cols], cols);
            let four = Matrix::from_gguf(GgufBlocks::Q4_1, &q4_1_bytes(1, cols, &seed), 1, cols).expect("q4_1");
            let eight = Matrix::from_gguf(GgufBlocks::Q8_0, &q8_0_bytes(1, cols, &seed), 1, cols).expect("q8_0");
            let (Storage::Four(f), Storage::Eight(e)) = (&four.storage, &eight.storage) else { unreachable!() };
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()));
            let x = Pairs { q: &act.q, scales: &act.scales, sums: &act.rounded_sums };
            let (a, b) = (dot_four::<1>(f, &x)[0], portable::dot_four::<1>(f, &x)[0]);
            prop_assert!(close(a, b), "four: {} vs {}", a, b);
            // The same with the activations' exact (unrounded) block sums.
            let x = Pairs { q: &act.q, scales: &act.scales, sums: &act.exact_sums };
            let (a, b) = (dot_four::<1>(f, &x)[0], portable::dot_four::<1>(f, &x)[0]);
            prop_assert!(close(a, b), "four, exact sums: {} vs {}", a, b);
            let (a, b) = (dot_eight::<1>(e, &x)[0], portable::dot_eight::<1>(e, &x)[0]);
            prop_assert!(close(a, b), "eight: {} vs {}", a, b);
        }
    }
}
