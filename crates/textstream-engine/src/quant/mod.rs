//! Weight matrices and the matrix products the native forward pass runs on
//! them: the engine's own CPU kernels, chosen at run time for the CPU.
//!
//! # Every type at its own width
//!
//! A [`Matrix`] keeps each GGUF tensor in the type the file stores: Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K at their own bits (re-laid at load so
//! one 64-value pair unpacks in a few instructions; see [`layout`]), F32, F16
//! and BF16 as floats. Stacked tensors of different types (a Q/K/V made of
//! Q5_0 and Q8_0 parts) are *segments* of one matrix, each in its own type.
//!
//! # The product
//!
//! Activations are rounded to signed 8 bits per block of 32 (scale
//! `max |x| / 127`, as ggml's Q8_0 and Q8_1 do). Every quantized weight is
//! `a * q + b` with `q` unsigned and `a`, `b` shared by a group of 16 values,
//! so a group's contribution is `a * sx * Σ q·qx + b * sx * Σ qx`: the bulk
//! is an integer dot product of unsigned weights and signed activations
//! (`vpdpbusd` with AVX-512 VNNI or AVX-VNNI, `vpmaddubsw` with AVX2), and
//! `sx * Σ qx` is computed once per group of the activation, not once per row.
//!
//! # Tiers
//!
//! [`Tier::selected`] detects the CPU once (`is_x86_feature_detected!`) and
//! takes the best of AVX-512 VNNI, AVX-VNNI, AVX2 and portable Rust;
//! `TEXTSTREAM_KERNEL=avx2|portable|…` asks for a lower one. A matrix keeps
//! the tier it was built with.
//!
//! # Parallelism
//!
//! A product runs on the current rayon pool: a decode step (one token) splits
//! the rows; several tokens (a prompt, a batch) split into tiles of rows
//! against blocks of tokens. The engine runs its whole forward
//! pass inside one pool, so a product costs no thread hand-off.
//!
//! # Unsafe code
//!
//! The one exception to the workspace's `deny(unsafe_code)`: calling the
//! `#[target_feature]` kernels in the private `x86` module, which happens only
//! for a [`Tier`] that run-time detection granted ([`Tier::supported`]), so
//! the call's one requirement holds. Everything else, loads included, is safe
//! code.

mod layout;
mod pages;
pub mod peak;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use crate::math::{integer_bits, round_to_f16};
#[cfg(target_arch = "x86_64")]
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

pub use layout::QuantType;
#[cfg(any(test, feature = "test-support"))]
pub use layout::QUANT_TYPES;
use layout::{BLOCK, LANES, PAIR};
use pages::Bytes;

/// Largest magnitude of a rounded activation (signed 8 bits, symmetric).
const ACTIVATION_MAX: f32 = 127.0;
/// Rows one parallel task takes at least (and a several-token product's
/// tile at most, but on lane blocks in prompts).
const ROWS_PER_TASK: usize = 64;
/// Rows a kernel call takes at once in a single-token product: their loads
/// overlap, and they share the activation's.
const ROWS_AT_ONCE: usize = 4;
/// Rows a prompt kernel call takes at once (times [`TOKENS_PER_TASK`]
/// accumulators: 8 of AVX-512's 32 registers).
const PROMPT_ROWS_AT_ONCE: usize = 2;
/// Tokens a prompt kernel call takes at once, all of them against each
/// unpacked pair of weights.
const TOKENS_PER_TASK: usize = 4;
/// Tokens a lane-block kernel call takes at once: its 16 unpacked vectors
/// and 8 accumulators fit AVX-512's 32 registers, and the unpacking is
/// shared by twice as many tokens (a batch of 8 SmolLM2 decode steps: 486
/// -> 548 tokens/s against 4 at once).
const LANE_TOKENS_PER_TASK: usize = 8;
/// Tokens a lane-block kernel call takes at once in a prompt (half as many
/// for a batch of 16 to 31): each unpacked pair serves 4 times as many
/// tokens. The accumulators live in memory (the compiler does not unroll
/// the loop over tokens, at 8 either), so more tokens cost no registers. Measured
/// in cache on this file's AVX-512 machine against 8 at once, 128 tokens,
/// the variants alternating in one process: Q8_0 +16 %, Q5_0 +19 %, Q4_1
/// +9 %, Q6_K +16 % (64 at once was no better); Qwen2.5-Coder's 1,024-token
/// prefill +11 %, 16 SmolLM2 decode steps at once -4.5 % time (16 at once).
const LANE_PROMPT_TOKENS: usize = 32;
/// Weights one task of a several-token product reads, about: its rows stay
/// in the core's cache while the task's tokens go by.
const TILE_BYTES: usize = 16 << 10;
/// Weights one task of a prompt's product on lane blocks reads, about:
/// each lane block (16 rows) stays in L1 for its calls of
/// [`LANE_PROMPT_TOKENS`] tokens, so the tile need not, and larger tiles
/// mean fewer tasks and output pieces for the leader to lay out (1,024-token
/// prefills, the two builds alternating, 3 pairs each: Gemma 3 676-716 ->
/// 665-701 ms, Qwen2.5-Coder 1,888-2,105 -> 1,841-1,965, SmolLM2 946-989 ->
/// 848-947, against 16 KiB).
const LANE_PROMPT_TILE_BYTES: usize = 64 << 10;
/// Tasks per thread of a product of one token, or of tokens that take one
/// call of the lane kernel (a decode step of 2, 4, 8 or 16 sequences): each
/// row is read once whatever the tasks, so tasks only
/// share the work out, and each costs its start (a new stream of weights,
/// an output piece, a call). One SmolLM2 sequence's step with 64-row tasks
/// (768 for the output matrix) against 2 per thread, alternating in one
/// process: 3.59-3.77 -> 3.16-3.33 ms; 8 sequences, 8 tasks per thread
/// against 1: -3.4 to -4.6 % (4 sequences -6 to -11 %); 16 sequences at 2
/// per thread against 16 KiB tiles: SmolLM2 -5 to -6 %, Qwen2.5-Coder -6 to
/// -10 %, Gemma 3 -2 to -7 %. One per thread was
/// 1-2 % faster again; 2 leave a thread that the OS has taken away half
/// as much of a product to wait for.
const DECODE_TASKS_PER_THREAD: usize = 2;
/// Tasks per thread of a product of up to [`LANE_TOKENS_PER_TASK`] tokens
/// that take several calls of the lane kernel (3, 5, 6 or 7): small enough
/// tiles that each stays in cache from one call to the next.
const SHARED_TASKS_PER_THREAD: usize = 8;
/// Tokens of the lane kernel's call after those of [`LANE_PROMPT_TOKENS`]:
/// 16 to 31 tokens (a batch of sequences) take one call of 16 first.
const LANE_HALF_TOKENS: usize = LANE_PROMPT_TOKENS / 2;
/// The most rows one task of a prompt's product on lane blocks takes (its
/// [`LANE_PROMPT_TILE_BYTES`] permitting): fewer tasks, and fewer output
/// pieces to lay out, than at [`ROWS_PER_TASK`] (1,024-token prefills,
/// alternating in one process: Gemma 3 -1.6 to -4.5 %, Qwen2.5-Coder
/// level to -1.3 %, SmolLM2 -2 %; at 4x [`ROWS_PER_TASK`] Qwen2.5-Coder's
/// was mixed, +4 % in one of two runs).
const LANE_PROMPT_ROWS: usize = 2 * ROWS_PER_TASK;
/// Tokens one task of a several-token product takes: their rounded
/// activations (160 bytes per 64 values) stay in the core's cache too.
const TOKEN_BLOCK: usize = 64;
/// The environment variable that asks for a lower kernel tier.
pub const KERNEL_ENV: &str = "TEXTSTREAM_KERNEL";

/// A family of kernels, each for the instructions some CPUs have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Plain Rust that the compiler vectorizes: any CPU.
    Portable,
    /// x86-64 with AVX2, FMA and F16C (2013 on).
    Avx2,
    /// AVX2 with the 256-bit VNNI dot product (Alder Lake, Zen 5).
    AvxVnni,
    /// AVX-512 with VNNI (Ice Lake, Sapphire Rapids, Zen 4).
    Avx512Vnni,
}

/// Every tier, lowest first.
const TIERS: [Tier; 4] = [Tier::Portable, Tier::Avx2, Tier::AvxVnni, Tier::Avx512Vnni];

impl Tier {
    /// The name `TEXTSTREAM_KERNEL` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::AvxVnni => "avxvnni",
            Self::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the tier's kernels.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                Self::Portable => true,
                Self::Avx2 => avx2,
                Self::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
                Self::Avx512Vnni => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        matches!(self, Self::Portable)
    }

    /// The tiers this CPU can run, lowest first.
    pub fn available() -> Vec<Tier> {
        TIERS.into_iter().filter(|t| t.supported()).collect()
    }

    /// The best tier this CPU can run.
    pub fn detected() -> Tier {
        TIERS
            .into_iter()
            .rev()
            .find(|t| t.supported())
            .unwrap_or(Tier::Portable)
    }

    /// The tier matrices are built with: the detected one, or the one
    /// `TEXTSTREAM_KERNEL` names when this CPU can run it. Decided once.
    pub fn selected() -> Result<Tier, QuantError> {
        static SELECTED: OnceLock<Result<Tier, QuantError>> = OnceLock::new();
        SELECTED
            .get_or_init(|| Self::from_request(std::env::var(KERNEL_ENV).ok().as_deref()))
            .clone()
    }

    /// The tier for a `TEXTSTREAM_KERNEL` value (`None` or empty: detected).
    fn from_request(request: Option<&str>) -> Result<Tier, QuantError> {
        let request = match request.map(str::trim) {
            None | Some("") => return Ok(Self::detected()),
            Some(name) => name,
        };
        let names = || {
            TIERS
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let tier = TIERS
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(request))
            .ok_or_else(|| {
                QuantError::Kernel(format!("unknown kernel {request:?} (one of {})", names()))
            })?;
        match tier.supported() {
            true => Ok(tier),
            false => Err(QuantError::Kernel(format!(
                "this CPU cannot run the {} kernels (it can run: {})",
                tier.name(),
                Self::available()
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A GGUF tensor type the matrices take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// A block-quantized type.
    Quant(QuantType),
}

impl GgufType {
    /// Values per block (a row is whole blocks).
    fn block(self) -> usize {
        match self {
            Self::Quant(q) => q.layout().block,
            _ => 1,
        }
    }

    /// Bytes per block.
    fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Quant(q) => q.layout().file_block_bytes,
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
    #[error("rows of {cols} values are not whole blocks of {block}")]
    PartialBlock {
        /// Values per row.
        cols: usize,
        /// Values per block of the type.
        block: usize,
    },
    /// Rows appended to a matrix of another width.
    #[error("rows of another width cannot be appended")]
    Mismatch,
    /// `TEXTSTREAM_KERNEL` names no tier this CPU runs.
    #[error("{KERNEL_ENV}: {0}")]
    Kernel(String),
}

/// A matrix of `rows x cols` values: one or more segments of rows, each in
/// its own type.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    tier: Tier,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
struct Segment {
    rows: usize,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    /// Rows of [`layout`] super-blocks, `row_bytes` each; in lane blocks of
    /// 16 rows ([`layout::interleave`]) when `lanes`, which the AVX-512
    /// tier takes when the rows are whole blocks.
    Quant {
        kind: QuantType,
        row_bytes: usize,
        bytes: Bytes,
        lanes: bool,
    },
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
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

    /// The kernels this matrix's products run on.
    #[cfg(any(test, feature = "test-support"))]
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Bytes the matrix holds (what a product reads).
    pub fn bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match &s.data {
                Data::Quant { bytes, .. } => bytes.len(),
                Data::F32(v) => v.len() * 4,
                Data::F16(v) => v.len() * 2,
                Data::BF16(v) => v.len() * 2,
            })
            .sum()
    }

    /// Keeps f32 values as they are.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize) -> Result<Self, QuantError> {
        if values.len() != rows * cols {
            return Err(size_error("values", values.len(), rows * cols, rows, cols));
        }
        Self::single(rows, cols, Data::F32(values))
    }

    /// Takes a GGUF tensor's bytes (`rows x cols` values of type `kind`)
    /// without changing any value.
    pub fn from_gguf(
        kind: GgufType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        let block = kind.block();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::PartialBlock { cols, block });
        }
        let expected = rows * (cols / block) * kind.block_bytes();
        if bytes.len() != expected {
            return Err(size_error("bytes", bytes.len(), expected, rows, cols));
        }
        let data = match kind {
            GgufType::F32 => Data::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            GgufType::F16 => Data::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            GgufType::BF16 => Data::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            GgufType::Quant(kind) => {
                let layout = kind.layout();
                let row_bytes = cols.div_ceil(layout.super_values()) * layout.super_bytes();
                Data::Quant {
                    kind,
                    row_bytes,
                    bytes: layout::relayout(kind, bytes, rows, cols).into(),
                    lanes: false,
                }
            }
        };
        Self::single(rows, cols, data)
    }

    fn single(rows: usize, cols: usize, data: Data) -> Result<Self, QuantError> {
        let mut segment = Segment { rows, data };
        let tier = Tier::selected()?;
        segment.set_lanes(tier);
        Ok(Self {
            rows,
            cols,
            tier,
            segments: vec![segment],
        })
    }

    /// The same matrix with its products on `tier` (which this CPU must run).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_tier(mut self, tier: Tier) -> Result<Self, QuantError> {
        match tier.supported() {
            true => {
                self.tier = tier;
                self.segments.iter_mut().for_each(|s| s.set_lanes(tier));
            }
            false => {
                return Err(QuantError::Kernel(format!(
                    "this CPU cannot run {}",
                    tier.name()
                )))
            }
        }
        Ok(self)
    }

    /// Appends `other`'s rows below this matrix's (same columns, any type):
    /// stacked tensors become one matrix, and a large matrix can be built a
    /// few rows at a time.
    pub fn append_rows(&mut self, other: Matrix) -> Result<(), QuantError> {
        if other.cols != self.cols {
            return Err(QuantError::Mismatch);
        }
        self.rows += other.rows;
        for segment in other.segments {
            match (self.segments.last_mut(), segment.data) {
                (
                    Some(Segment {
                        rows,
                        data:
                            Data::Quant {
                                kind: a,
                                bytes,
                                lanes,
                                ..
                            },
                    }),
                    Data::Quant {
                        kind: b,
                        bytes: more,
                        lanes: more_lanes,
                        ..
                    },
                ) if *a == b && *lanes == more_lanes => {
                    *rows += segment.rows;
                    bytes.to_mut().extend_from_slice(&more);
                }
                (
                    Some(Segment {
                        rows,
                        data: Data::F32(values),
                    }),
                    Data::F32(more),
                ) => {
                    *rows += segment.rows;
                    values.extend(more);
                }
                (_, data) => self.segments.push(Segment {
                    rows: segment.rows,
                    data,
                }),
            }
        }
        Ok(())
    }

    /// Row `row` as f32 values into `out` (`cols` long): the embedding lookup.
    pub fn dequantize_row(&self, mut row: usize, out: &mut [f32]) {
        let out = &mut out[..self.cols];
        let cols = self.cols;
        for segment in &self.segments {
            if row >= segment.rows {
                row -= segment.rows;
                continue;
            }
            match &segment.data {
                Data::F32(v) => out.copy_from_slice(&v[row * cols..][..cols]),
                Data::F16(v) => {
                    for (o, v) in out.iter_mut().zip(&v[row * cols..]) {
                        *o = v.to_f32();
                    }
                }
                Data::BF16(v) => {
                    for (o, v) in out.iter_mut().zip(&v[row * cols..]) {
                        *o = v.to_f32();
                    }
                }
                Data::Quant {
                    kind,
                    row_bytes,
                    bytes,
                    lanes,
                } => {
                    let layout = kind.layout();
                    let mut chunks = out.chunks_mut(PAIR);
                    let gathered;
                    let row_bytes = match lanes {
                        true => {
                            gathered = layout::interleaved_row(bytes, row, *row_bytes);
                            &gathered[..]
                        }
                        false => &bytes[row * row_bytes..][..*row_bytes],
                    };
                    layout::for_each_pair(&layout, row_bytes, |v, a, b| {
                        if let Some(out) = chunks.next() {
                            for (k, o) in out.iter_mut().enumerate() {
                                *o = a[k / 16] * v[k] as f32 + b[k / 16];
                            }
                        }
                    });
                }
            }
            return;
        }
        panic!("row {row} past the matrix");
    }

    /// `out[t][r] = Σ_c x[t][c] * self[r][c]` for the `x.len() / cols` tokens
    /// of `x`, on the current rayon pool. `scratch` holds the rounded
    /// activations between calls, so a step allocates nothing.
    ///
    /// # Panics
    ///
    /// If `x` is not whole rows of `cols` or `out` is not as many rows of `rows`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32], scratch: &mut Activations) {
        assert_eq!(
            out.len(),
            x.len() / self.cols * self.rows,
            "output is not whole rows"
        );
        self.matmul_rows(x, out.chunks_exact_mut(self.rows).collect(), scratch);
    }

    /// [`Self::matmul`] with each token's output a buffer of its own
    /// (`outs[t]`, `rows` long): a batch's logits go straight into each
    /// sequence's vector, not through one buffer copied out.
    ///
    /// # Panics
    ///
    /// If `x` is not whole rows of `cols`, or `outs` is not one row of `rows`
    /// per token.
    pub fn matmul_rows(&self, x: &[f32], mut outs: Vec<&mut [f32]>, scratch: &mut Activations) {
        let tokens = x.len() / self.cols;
        assert_eq!(x.len(), tokens * self.cols, "input is not whole rows");
        assert_eq!(outs.len(), tokens, "one output row per token");
        assert!(
            outs.iter().all(|out| out.len() == self.rows),
            "output rows of {} values",
            self.rows
        );
        if self
            .segments
            .iter()
            .any(|s| matches!(s.data, Data::Quant { .. }))
        {
            scratch.quantize(x, self.cols);
        }
        let act = &*scratch;
        match outs.as_mut_slice() {
            [] => {}
            [out] => {
                // Split every segment's rows into tasks, over all segments at once.
                let mut tasks = Vec::new();
                let mut rest = &mut **out;
                let parts = rayon::current_num_threads() * DECODE_TASKS_PER_THREAD;
                for segment in &self.segments {
                    // Whole lane blocks (a multiple of the kernels' rows at once).
                    let per_task = segment
                        .rows
                        .div_ceil(parts)
                        .next_multiple_of(LANES)
                        .max(ROWS_PER_TASK);
                    for first in (0..segment.rows).step_by(per_task) {
                        let n = per_task.min(segment.rows - first);
                        let (task, tail) = std::mem::take(&mut rest).split_at_mut(n);
                        tasks.push((segment, first, task));
                        rest = tail;
                    }
                }
                crate::team::for_each(tasks, 1, |(segment, first, out)| {
                    vectorized(
                        #[inline(always)]
                        || segment.rows_dot(self, first, out, x, act),
                    )
                });
            }
            _ => self.tiled(x, outs, act),
        }
    }

    /// The product for several tokens (a prompt, or one token of each of a
    /// batch of sequences): tasks are tiles of rows (about [`TILE_BYTES`] of
    /// weights, which stay in cache) against blocks of up to [`TOKEN_BLOCK`]
    /// tokens, each pair of weights unpacked once for [`TOKENS_PER_TASK`] (on lane
    /// blocks [`LANE_TOKENS_PER_TASK`], in prompts [`LANE_PROMPT_TOKENS`])
    /// tokens. Splitting rows, not only tokens, reads the weights once per
    /// block of tokens and keeps both cores busy from two tokens up. Each
    /// task writes its results in place in `out` (no tile to copy after).
    fn tiled(&self, x: &[f32], mut outs: Vec<&mut [f32]>, act: &Activations) {
        let tokens = outs.len();
        // (segment, its first row, rows): in order, they cover the matrix.
        let mut tiles = Vec::new();
        let threads = rayon::current_num_threads();
        for segment in &self.segments {
            let tile_bytes = match segment.lanes() && tokens >= LANE_PROMPT_TOKENS {
                true => LANE_PROMPT_TILE_BYTES,
                false => TILE_BYTES,
            };
            let most = match segment.lanes() && tokens >= LANE_PROMPT_TOKENS {
                true => LANE_PROMPT_ROWS,
                false => ROWS_PER_TASK,
            };
            let mut per_tile =
                (tile_bytes / segment.row_bytes(self.cols).max(1)).clamp(PROMPT_ROWS_AT_ONCE, most);
            if segment.lanes() {
                // Whole lane blocks.
                per_tile = per_tile.max(LANES) / LANES * LANES;
                // Tokens that take one call of the lane kernel read each lane
                // block once, whatever the tiles: a few large tasks. Tokens
                // that take several calls read a tile once per call: tiles
                // that stay in the core's L2 (at 2 tasks a thread, 3, 6 or 7
                // Qwen2.5-Coder sequences were 4-14 % slower).
                let parts = match tokens {
                    1 | 2 | TOKENS_PER_TASK | LANE_TOKENS_PER_TASK | LANE_HALF_TOKENS => {
                        Some(threads * DECODE_TASKS_PER_THREAD)
                    }
                    _ if tokens <= LANE_TOKENS_PER_TASK => Some(threads * SHARED_TASKS_PER_THREAD),
                    _ => None,
                };
                if let Some(parts) = parts {
                    per_tile = per_tile.max(segment.rows.div_ceil(parts).next_multiple_of(LANES));
                }
            }
            for first in (0..segment.rows).step_by(per_tile) {
                tiles.push((segment, first, per_tile.min(segment.rows - first)));
            }
        }
        // Each token's row of `out` cut at the tiles' edges, grouped by task
        // (a block of tokens against a tile, block by block), so each task
        // writes its results in place.
        let mut pieces: Vec<&mut [f32]> = Vec::with_capacity(tokens * tiles.len());
        for rows in outs.chunks_mut(TOKEN_BLOCK) {
            for &(_, _, n) in &tiles {
                for row in rows.iter_mut() {
                    let (piece, rest) = std::mem::take(row).split_at_mut(n);
                    pieces.push(piece);
                    *row = rest;
                }
            }
        }
        let mut tasks = Vec::with_capacity(tokens.div_ceil(TOKEN_BLOCK) * tiles.len());
        let mut rest = &mut pieces[..];
        for first in (0..tokens).step_by(TOKEN_BLOCK) {
            let count = TOKEN_BLOCK.min(tokens - first);
            for &tile in &tiles {
                let (outs, tail) = std::mem::take(&mut rest).split_at_mut(count);
                tasks.push((tile, first, outs));
                rest = tail;
            }
        }
        crate::team::for_each(tasks, 1, |((segment, first_row, n), first, outs)| {
            vectorized(
                #[inline(always)]
                || segment.tile_dot(self, first_row, n, first, outs, x, act),
            )
        });
    }
}

/// Runs `f` compiled for the vector instructions of the selected tier: the
/// f32 work around the products (attention, norms, rounding activations),
/// which the build itself targets at baseline x86-64. `f` and the
/// `#[inline(always)]` functions it calls are inlined into a function with
/// those features; calls that are not inlined run at baseline.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `Tier::selected` grants only tiers `Tier::supported` found on
    // this CPU, and each wrapper enables a subset of its tier's features.
    match Tier::selected().unwrap_or(Tier::Portable) {
        Tier::Avx512Vnni => return unsafe { x86::with_avx512(f) },
        Tier::Avx2 | Tier::AvxVnni => return unsafe { x86::with_avx2(f) },
        Tier::Portable => {}
    }
    f()
}

/// Whether the selected tier is one above the portable one (each of which
/// has F16C), read once: the f16 conversions ask on every call.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn f16c() -> bool {
    static F16C: OnceLock<bool> = OnceLock::new();
    *F16C.get_or_init(|| Tier::selected().is_ok_and(|tier| tier != Tier::Portable))
}

/// Asks the CPU to start loading `data`'s cache lines, as a hint: it
/// changes no result (a no-op where there is no such instruction).
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data)).step_by(64) {
            #[allow(unsafe_code)]
            // SAFETY: every x86-64 CPU has SSE's prefetch, which reads
            // nothing into the program and cannot fault.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset))
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// `dst[i] = src[i]` as f32 (exact), with F16C's conversion on every x86
/// tier but the portable one. The KV cache is read through this.
#[inline(always)]
pub(crate) fn widen_f16(src: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        #[allow(unsafe_code)]
        // SAFETY: `f16c` is true only where `Tier::supported` found AVX2,
        // FMA and F16C, all this needs.
        return unsafe { x86::widen_f16(HalfFloatSliceExt::reinterpret_cast(src), dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// The largest finite f16, where [`narrow_f16`] saturates.
pub(crate) const F16_MAX: f32 = 65_504.0;

/// `dst[i] = src[i]` rounded to the nearest f16, ties to even (what
/// `f16::from_f32` gives), saturating at ±[`F16_MAX`] rather than becoming
/// infinite (a key past it would make attention's scores NaN); NaN stays
/// NaN. With F16C's conversion as [`widen_f16`] has it. The KV cache is
/// written through this.
#[inline(always)]
pub(crate) fn narrow_f16(src: &[f32], dst: &mut [f16]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        #[allow(unsafe_code)]
        // SAFETY: as in `widen_f16`.
        return unsafe { x86::narrow_f16(src, HalfFloatSliceExt::reinterpret_cast_mut(dst)) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s.clamp(-F16_MAX, F16_MAX));
    }
}

fn size_error(
    what: &'static str,
    got: usize,
    expected: usize,
    rows: usize,
    cols: usize,
) -> QuantError {
    QuantError::Size {
        what,
        got,
        expected,
        rows,
        cols,
    }
}

/// Random valid file bytes for `rows x cols` values of `kind` (whole
/// blocks): any integers, and scales of the size real weights have (Q4_1's
/// and Q5_1's minimums negative). For tests and benchmarks.
#[cfg(any(test, feature = "test-support"))]
pub fn sample_bytes(kind: QuantType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let layout = kind.layout();
    // Byte offsets of the f16 scales in one block.
    let f16_fields: &[usize] = match kind {
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q2_K => &[80, 82],
        QuantType::Q3_K => &[108],
        QuantType::Q6_K => &[208],
    };
    let blocks = rows * cols / layout.block;
    let mut out = Vec::with_capacity(blocks * layout.file_block_bytes);
    let mut state = seed.max(1);
    for _ in 0..blocks {
        let start = out.len();
        for _ in 0..layout.file_block_bytes {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            out.push(state as u8);
        }
        for (i, &at) in f16_fields.iter().enumerate() {
            let byte = out[start + at] as f32;
            let value = match (i, kind) {
                (1, QuantType::Q4_1 | QuantType::Q5_1) => -0.1 + byte / 3000.0,
                _ => 0.0005 + byte / 20000.0,
            };
            out[start + at..start + at + 2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
        }
    }
    out
}

/// Runs `$call` with the const parameter `F` set to `$kind`'s index.
macro_rules! with_type {
    ($kind:expr, $f:ident :: <F $(, $rest:tt)*> ($($args:expr),*)) => {
        match $kind {
            QuantType::Q4_0 => $f::<{ QuantType::Q4_0.index() } $(, $rest)*>($($args),*),
            QuantType::Q4_1 => $f::<{ QuantType::Q4_1.index() } $(, $rest)*>($($args),*),
            QuantType::Q5_0 => $f::<{ QuantType::Q5_0.index() } $(, $rest)*>($($args),*),
            QuantType::Q5_1 => $f::<{ QuantType::Q5_1.index() } $(, $rest)*>($($args),*),
            QuantType::Q8_0 => $f::<{ QuantType::Q8_0.index() } $(, $rest)*>($($args),*),
            QuantType::Q2_K => $f::<{ QuantType::Q2_K.index() } $(, $rest)*>($($args),*),
            QuantType::Q3_K => $f::<{ QuantType::Q3_K.index() } $(, $rest)*>($($args),*),
            QuantType::Q4_K => $f::<{ QuantType::Q4_K.index() } $(, $rest)*>($($args),*),
            QuantType::Q5_K => $f::<{ QuantType::Q5_K.index() } $(, $rest)*>($($args),*),
            QuantType::Q6_K => $f::<{ QuantType::Q6_K.index() } $(, $rest)*>($($args),*),
        }
    };
}

/// `R` rows of type `F` against `T` tokens on `tier`'s kernel.
fn kernel<const F: u8, const R: usize, const T: usize>(
    tier: Tier,
    w: &[u8],
    row_bytes: usize,
    xs: &[Pairs; T],
) -> [[f32; T]; R] {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: a matrix's tier is one `Tier::supported` granted on this CPU
    // (`Tier::selected`, `Matrix::with_tier`), and each kernel needs exactly
    // the features that tier checks.
    match tier {
        Tier::Avx512Vnni => return unsafe { x86::dot_avx512::<F, R, T>(w, row_bytes, xs) },
        Tier::AvxVnni => return unsafe { x86::dot_avxvnni::<F, R, T>(w, row_bytes, xs) },
        Tier::Avx2 => return unsafe { x86::dot_avx2::<F, R, T>(w, row_bytes, xs) },
        Tier::Portable => {}
    }
    let _ = tier;
    portable::dot::<F, R, T>(w, row_bytes, xs)
}

/// 16 rows of type `F` in a lane block against `T` tokens: `out[t][r]`.
fn lane_kernel<const F: u8, const T: usize>(
    tier: Tier,
    w: &[u8],
    row_bytes: usize,
    xs: &[Pairs; T],
) -> [[f32; LANES]; T] {
    #[cfg(target_arch = "x86_64")]
    if tier == Tier::Avx512Vnni {
        #[allow(unsafe_code)]
        // SAFETY: as in `kernel`: the matrix's tier was granted on this CPU,
        // and this kernel needs exactly the AVX-512 VNNI tier's features.
        return unsafe { x86::dot_lanes::<F, T>(w, row_bytes, xs) };
    }
    let _ = tier;
    // Lane blocks are made for the AVX-512 tier only (`Segment::set_lanes`);
    // were one read on another, its rows are read back first.
    let mut rows = w[..LANES * row_bytes].to_vec();
    layout::deinterleave(&mut rows, LANES, row_bytes);
    let mut out = [[0.0; LANES]; T];
    for r in 0..LANES {
        let [dots] = portable::dot::<F, 1, T>(&rows[r * row_bytes..], row_bytes, xs);
        for (t, dot) in dots.into_iter().enumerate() {
            out[t][r] = dot;
        }
    }
    out
}

/// Every one of `rows` rows (whole lane blocks) of `w` against `T` tokens:
/// `out[k][r]` for token `k`, row `r`.
fn lane_rows<const F: u8, const T: usize>(
    tier: Tier,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    xs: &[Pairs; T],
    out: &mut [&mut [f32]],
) {
    for first in (0..rows).step_by(LANES) {
        let dots = lane_kernel::<F, T>(tier, &w[first * row_bytes..], row_bytes, xs);
        for (out, dots) in out.iter_mut().zip(&dots) {
            out[first..][..LANES].copy_from_slice(dots);
        }
    }
}

/// Moves the quantized rows of `matrices` into one buffer, in this order
/// (the order a step reads them), in 2 MiB pages where the OS gives them
/// ([`pages`]). Products and results are unchanged.
pub fn pack(matrices: Vec<&mut Matrix>) {
    pages::pack(
        matrices
            .into_iter()
            .flat_map(|m| m.segments.iter_mut())
            .filter_map(|s| match &mut s.data {
                Data::Quant { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect(),
    );
}

impl Segment {
    /// Lays this segment's rows out in lane blocks when `tier` reads them
    /// so (AVX-512, whole blocks of 16 rows), or back in rows otherwise.
    fn set_lanes(&mut self, tier: Tier) {
        let want = tier == Tier::Avx512Vnni && self.rows.is_multiple_of(LANES);
        if let Data::Quant {
            row_bytes,
            bytes,
            lanes,
            ..
        } = &mut self.data
        {
            if *lanes != want {
                match want {
                    true => layout::interleave(bytes.to_mut(), self.rows, *row_bytes),
                    false => layout::deinterleave(bytes.to_mut(), self.rows, *row_bytes),
                }
                *lanes = want;
            }
        }
    }

    /// Whether the rows are in lane blocks.
    fn lanes(&self) -> bool {
        matches!(self.data, Data::Quant { lanes: true, .. })
    }

    /// Rows `first..first + out.len()` of this segment against the one token.
    fn rows_dot(&self, m: &Matrix, first: usize, out: &mut [f32], x: &[f32], act: &Activations) {
        let cols = m.cols;
        match &self.data {
            Data::Quant {
                kind,
                row_bytes,
                bytes,
                lanes,
            } => {
                let w = &bytes[first * row_bytes..][..out.len() * row_bytes];
                let xs = [act.token(0)];
                let rows = out.len();
                match lanes {
                    true => with_type!(
                        *kind,
                        lane_rows::<F, 1>(m.tier, w, *row_bytes, rows, &xs, &mut [out])
                    ),
                    false => with_type!(*kind, quant_rows::<F>(m.tier, w, *row_bytes, out, &xs)),
                }
            }
            _ => self.float_dot(first, cols, out, x),
        }
    }

    /// Rows `first..first + out.len()` of a float segment against one token.
    fn float_dot(&self, first: usize, cols: usize, out: &mut [f32], x: &[f32]) {
        match &self.data {
            Data::F32(v) => float_rows(&v[first * cols..], cols, out, x, |v| *v),
            Data::F16(v) => float_rows(&v[first * cols..], cols, out, x, |v| v.to_f32()),
            Data::BF16(v) => float_rows(&v[first * cols..], cols, out, x, |v| v.to_f32()),
            Data::Quant { .. } => unreachable!("quantized segments take the kernels"),
        }
    }

    /// Bytes per row as stored (an f32 row's, for float segments).
    fn row_bytes(&self, cols: usize) -> usize {
        match &self.data {
            Data::Quant { row_bytes, .. } => *row_bytes,
            Data::F32(_) => 4 * cols,
            Data::F16(_) | Data::BF16(_) => 2 * cols,
        }
    }

    /// Rows `first_row..first_row + n` of this segment against the tokens
    /// from `first`: `outs` holds each token's `n` outputs.
    #[allow(clippy::too_many_arguments)]
    fn tile_dot(
        &self,
        m: &Matrix,
        first_row: usize,
        n: usize,
        first: usize,
        outs: &mut [&mut [f32]],
        x: &[f32],
        act: &Activations,
    ) {
        let cols = m.cols;
        match &self.data {
            Data::Quant {
                kind,
                row_bytes,
                bytes,
                lanes,
            } => {
                let w = &bytes[first_row * row_bytes..][..n * row_bytes];
                let count = outs.len();
                let tier = m.tier;
                let row_bytes = *row_bytes;
                // Tokens by 32s on lane blocks, then 16, 8, by fours, then a
                // pair, then one alone: `$rows::<F, $t>` on the next `$t` tokens.
                let mut t = 0;
                macro_rules! tokens {
                    ($rows:ident, $t:expr) => {{
                        let xs: [Pairs; $t] = std::array::from_fn(|k| act.token(first + t + k));
                        let out = &mut outs[t..t + $t];
                        with_type!(*kind, $rows::<F, $t>(tier, w, row_bytes, n, &xs, out));
                        t += $t;
                    }};
                }
                while *lanes && count - t >= LANE_PROMPT_TOKENS {
                    tokens!(lane_rows, LANE_PROMPT_TOKENS);
                }
                if *lanes && count - t >= LANE_HALF_TOKENS {
                    tokens!(lane_rows, LANE_HALF_TOKENS);
                }
                while *lanes && count - t >= LANE_TOKENS_PER_TASK {
                    tokens!(lane_rows, LANE_TOKENS_PER_TASK);
                }
                while count - t >= TOKENS_PER_TASK {
                    match lanes {
                        true => tokens!(lane_rows, TOKENS_PER_TASK),
                        false => tokens!(quant_tokens, TOKENS_PER_TASK),
                    }
                }
                if count - t >= 2 {
                    match lanes {
                        true => tokens!(lane_rows, 2),
                        false => tokens!(quant_tokens, 2),
                    }
                }
                if t < count {
                    match lanes {
                        true => tokens!(lane_rows, 1),
                        false => {
                            let xs = [act.token(first + t)];
                            let out = &mut *outs[t];
                            with_type!(*kind, quant_rows::<F>(tier, w, row_bytes, out, &xs));
                            t += 1;
                        }
                    }
                }
                debug_assert_eq!(t, count, "every token of the tile");
            }
            _ => {
                for (t, out) in outs.iter_mut().enumerate() {
                    let x = &x[(first + t) * cols..][..cols];
                    self.float_dot(first_row, cols, out, x);
                }
            }
        }
    }
}

/// The first `out.len()` rows of `w` against one token, [`ROWS_AT_ONCE`] at a time.
fn quant_rows<const F: u8>(
    tier: Tier,
    w: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    xs: &[Pairs; 1],
) {
    let mut chunks = out.chunks_exact_mut(ROWS_AT_ONCE);
    let mut at = 0;
    for out in &mut chunks {
        let dots: [[f32; 1]; ROWS_AT_ONCE] =
            kernel::<F, ROWS_AT_ONCE, 1>(tier, &w[at..], row_bytes, xs);
        for (o, d) in out.iter_mut().zip(dots) {
            *o = d[0];
        }
        at += ROWS_AT_ONCE * row_bytes;
    }
    for o in chunks.into_remainder() {
        *o = kernel::<F, 1, 1>(tier, &w[at..], row_bytes, xs)[0][0];
        at += row_bytes;
    }
}

/// Every one of `rows` rows of `w` against `T` tokens, each pair of weights
/// unpacked once for all of them: `out[k][r]` for token `k`, row `r`.
fn quant_tokens<const F: u8, const T: usize>(
    tier: Tier,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    xs: &[Pairs; T],
    out: &mut [&mut [f32]],
) {
    let whole = rows - rows % PROMPT_ROWS_AT_ONCE;
    let mut write = |r: usize, dots: [f32; T]| {
        for (out, dot) in out.iter_mut().zip(dots) {
            out[r] = dot;
        }
    };
    for r in (0..whole).step_by(PROMPT_ROWS_AT_ONCE) {
        let dots: [_; PROMPT_ROWS_AT_ONCE] =
            kernel::<F, PROMPT_ROWS_AT_ONCE, T>(tier, &w[r * row_bytes..], row_bytes, xs);
        for (i, dots) in dots.into_iter().enumerate() {
            write(r + i, dots);
        }
    }
    for r in whole..rows {
        let [dots] = kernel::<F, 1, T>(tier, &w[r * row_bytes..], row_bytes, xs);
        write(r, dots);
    }
}

/// Rows of float weights (any width, as f32 through `widen`) against one token.
#[inline(always)]
fn float_rows<W: Copy>(
    w: &[W],
    cols: usize,
    out: &mut [f32],
    x: &[f32],
    widen: impl Fn(&W) -> f32,
) {
    const CHUNK: usize = 256;
    let mut buffer = [0.0f32; CHUNK];
    for (o, row) in out.iter_mut().zip(w.chunks_exact(cols)) {
        *o = row
            .chunks(CHUNK)
            .zip(x.chunks(CHUNK))
            .map(|(w, x)| {
                let buffer = &mut buffer[..w.len()];
                for (b, w) in buffer.iter_mut().zip(w) {
                    *b = widen(w);
                }
                dot_f32(buffer, x)
            })
            .sum();
    }
}

/// One pair of one token's rounded activations, with what the kernels need
/// precomputed: one cache-friendly record per pair.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct XPair {
    /// 64 values as `i8` bits.
    q: [u8; PAIR],
    /// The first block's scale in lanes 0-7 and the second's in 8-15: the
    /// lanes the integer products come out in.
    scales: [f32; 16],
    /// `sx * Σ qx` for each group of 16, exact.
    exact: [f32; 4],
    /// Each block's `sx * Σ qx` rounded to f16 as ggml's Q8_1 stores it,
    /// halved into its two groups (what Q4_1's and Q5_1's `m` multiply in
    /// ggml and candle).
    rounded: [f32; 4],
    /// Each block's two groups of `exact`, added (in f32, as a kernel with a
    /// scale per 32 values adds them): read straight into a vector, where
    /// adding them per token was 6 of a lane kernel's ~32 instructions per
    /// pair and token (steps of 8 SmolLM2 sequences 1.0-1.4 % faster, the
    /// two kernels alternating step by step in one process). In the
    /// record's padding: it stays 192 bytes.
    exact_blocks: [f32; 2],
    /// The same of `rounded`.
    rounded_blocks: [f32; 2],
    /// `Σ qx` for each group of 16, as integers: what a type whose offset is
    /// an integer `zero` subtracts (`zero * Σ qx`) from its integer sums
    /// before scaling them, as ggml's integer `q - zero` does. In the
    /// record's padding too.
    counts: [i32; 4],
}

// One record per pair, in three cache lines.
const _: () = assert!(std::mem::size_of::<XPair>() == 192);

const EMPTY_PAIR: XPair = XPair {
    q: [0; PAIR],
    scales: [0.0; 16],
    exact: [0.0; 4],
    rounded: [0.0; 4],
    exact_blocks: [0.0; 2],
    rounded_blocks: [0.0; 2],
    counts: [0; 4],
};

impl XPair {
    /// The group sums a type takes: rounded (Q4_1, Q5_1) or exact.
    #[inline(always)]
    fn sums(&self, rounded: bool) -> &[f32; 4] {
        match rounded {
            true => &self.rounded,
            false => &self.exact,
        }
    }

    /// Each block's sum of [`Self::sums`]' two groups.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    fn block_sums(&self, rounded: bool) -> &[f32; 2] {
        match rounded {
            true => &self.rounded_blocks,
            false => &self.exact_blocks,
        }
    }
}

/// One token's rounded activations, as the kernels read them.
pub(crate) type Pairs<'a> = &'a [XPair];

/// Activations rounded to signed 8 bits per block, laid out in pairs like
/// the matrices.
#[derive(Debug, Default, Clone)]
pub struct Activations {
    /// Pairs per token.
    per_token: usize,
    pairs: Vec<XPair>,
}

impl Activations {
    /// An empty buffer; it grows to the largest input it is given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Token `t`'s pairs.
    fn token(&self, t: usize) -> Pairs<'_> {
        &self.pairs[t * self.per_token..][..self.per_token]
    }

    /// Rounds `x` (tokens of `cols` values) into this buffer.
    fn quantize(&mut self, x: &[f32], cols: usize) {
        self.per_token = cols.div_ceil(PAIR);
        // Grown, never shrunk: the products of a step alternate between
        // widths, and regrowing wrote every record past the narrower ones
        // (15 MB before each of Qwen2.5-Coder's down products in a
        // 1,024-token prompt). Records past this input's are left as they are.
        let needed = x.len() / cols * self.per_token;
        if self.pairs.len() < needed {
            self.pairs.resize(needed, EMPTY_PAIR);
        }
        // One token is too little to split; a prompt splits by tokens.
        let tokens: Vec<_> = self
            .pairs
            .chunks_mut(self.per_token)
            .zip(x.chunks_exact(cols))
            .collect();
        #[cfg(target_arch = "x86_64")]
        let avx512 = Tier::selected() == Ok(Tier::Avx512Vnni);
        crate::team::for_each(tokens, TOKENS_PER_TASK, |(pairs, x)| {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: `Tier::selected` grants AVX-512 VNNI only where
                // `Tier::supported` found its features on this CPU.
                #[allow(unsafe_code)]
                unsafe {
                    x86::quantize_token(x, pairs)
                };
                return;
            }
            vectorized(
                #[inline(always)]
                || quantize_token(x, pairs),
            )
        });
    }
}

/// Rounds one token's values into its pairs.
#[inline(always)]
fn quantize_token(x: &[f32], pairs: &mut [XPair]) {
    for (p, pair) in pairs.iter_mut().enumerate() {
        for half in 0..2 {
            let start = p * PAIR + half * BLOCK;
            let lanes = &mut pair.q[half * BLOCK..][..BLOCK];
            let block = match x.get(start..start + BLOCK) {
                Some(block) => quantize_block(block, lanes),
                None => {
                    lanes.fill(0);
                    RoundedBlock::default()
                }
            };
            pair.scales[half * 8..][..8].fill(block.scale);
            pair.exact[2 * half..][..2].copy_from_slice(&block.exact_sums);
            pair.counts[2 * half..][..2].copy_from_slice(&block.counts);
            pair.rounded[2 * half..][..2].fill(block.rounded_sum / 2.0);
            pair.exact_blocks[half] = pair.exact[2 * half] + pair.exact[2 * half + 1];
            pair.rounded_blocks[half] = pair.rounded[2 * half] + pair.rounded[2 * half + 1];
        }
    }
}

/// What rounding one block of activations gives besides its lanes.
#[derive(Debug, Default, Clone, Copy)]
struct RoundedBlock {
    /// The scale, rounded to f16 as ggml stores it.
    scale: f32,
    /// `scale * Σ q` for each half of the block, exact (an f16 times at most
    /// 11 bits): what offsets `b = -z a` multiply, so they cancel as in ggml's
    /// integer `q - z`.
    exact_sums: [f32; 2],
    /// `Σ q` for each half of the block.
    counts: [i32; 2],
    /// `scale * Σ q` over the block, rounded to f16 as ggml's Q8_1 stores it.
    rounded_sum: f32,
}

/// Rounds one block to `i8` lanes exactly as ggml's Q8_0 and Q8_1 do (the
/// lanes from the f32 scale, the stored scale rounded to f16), so that the
/// products match ggml's and candle's but for the order of the additions.
///
/// Written so that it vectorizes (this runs for every value a product reads:
/// as scalar code it took 7 % of a batch of 8 decode steps): the maximum by
/// comparison (a NaN is passed over, as `f32::max` does), each value rounded
/// and clamped to `i8`'s range as an `i32` (what `as i8` does: a NaN gives 0,
/// and a denormal maximum, whose inverse scale is infinite, gives ±127/128),
/// then the lanes and the halves' sums from those.
#[inline(always)]
fn quantize_block(block: &[f32], lanes: &mut [u8]) -> RoundedBlock {
    let block: &[f32; BLOCK] = block.try_into().expect("a whole block");
    let lanes: &mut [u8; BLOCK] = lanes.try_into().expect("a whole block");
    // 16 running maxima, then their maximum (the same value in any order).
    let mut maxima = [0.0f32; BLOCK / 2];
    for half in block.chunks_exact(BLOCK / 2) {
        for (m, &x) in maxima.iter_mut().zip(half) {
            let a = x.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let max = maxima
        .iter()
        .fold(0.0f32, |m, &a| if a > m { a } else { m });
    let scale = max / ACTIVATION_MAX;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    // A loop, not `array::from_fn`: its closure was not inlined, so it ran
    // without the tier's instructions (`round` became a libm call). The
    // integer from the float's bits, not `as`: a saturating `as` was done one
    // lane at a time.
    let mut q = [0i32; BLOCK];
    for (q, &x) in q.iter_mut().zip(block) {
        let r = (x * inverse).round();
        let r = if r.is_nan() {
            0.0
        } else {
            r.clamp(-128.0, 127.0)
        };
        *q = integer_bits(r);
    }
    for (lane, &q) in lanes.iter_mut().zip(&q) {
        *lane = q as i8 as u8;
    }
    let half = |h: usize| q[h * BLOCK / 2..][..BLOCK / 2].iter().sum::<i32>();
    let sums = [half(0), half(1)];
    let scale = round_to_f16(scale);
    RoundedBlock {
        scale,
        exact_sums: sums.map(|s| scale * s as f32),
        counts: sums,
        // An f16 product, as `half` multiplies: in f32, then rounded.
        rounded_sum: round_to_f16(round_to_f16((sums[0] + sums[1]) as f32) * scale),
    }
}

/// A dot product of f32 slices, in 16 lanes (so it vectorizes).
#[inline(always)]
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

#[cfg(test)]
mod tests;
