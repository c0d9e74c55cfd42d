//! The x86-64 kernels: AVX-512 VNNI (64 values per `vpdpbusd`), AVX-VNNI
//! (the same instruction on 32), and AVX2 (`vpmaddubsw` + `vpmaddwd`). Each
//! is one generic function over the type (`F`), the rows (`R`) and the
//! tokens (`T`) it takes at once; the type's planes and scales are read by
//! the helpers below, shared by every tier.
//!
//! Every function here has `#[target_feature]`; the caller in `quant` calls
//! one only for a [`super::Tier`] that run-time detection granted.

use std::arch::x86_64::*;

use super::layout::{QuantType, Scales, LANES, PAIR};
use super::{Pairs, XPair, F16_MAX};

/// How far ahead the AVX-512 kernel prefetches weights, in calls' worth of
/// rows (2: measured best of 1, 2 and 4 by `benches/kernels.rs`).
const PREFETCH_GROUPS: usize = 2;

/// `N` bytes of `s` from `at` (a bounds-checked, unaligned load).
#[inline(always)]
fn load<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
    s[at..at + N].try_into().unwrap_or([0; N])
}

/// A super-block header as `[d, d, -dmin, -dmin]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn header<const F: u8>(s: &[u8]) -> __m128 {
    let layout = const { QuantType::at(F).layout() };
    if layout.header == 0 {
        return _mm_setzero_ps();
    }
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(load(s, 0))));
    let spread = _mm_shuffle_ps::<0b01_01_00_00>(both, both);
    _mm_mul_ps(spread, _mm_setr_ps(1.0, 1.0, -1.0, -1.0))
}

/// A pair's groups' scales `a` and offsets `b` (see `layout::pair_scales`,
/// which this computes in the same f32 operations).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scales<const F: u8>(bytes: &[u8], header: __m128) -> (__m128, __m128) {
    let layout = const { QuantType::at(F).layout() };
    let word = |at: usize| _mm_cvtsi32_si128(i32::from_le_bytes(load(bytes, at)));
    let d = _mm_shuffle_ps::<0>(header, header);
    let neg_dmin = _mm_shuffle_ps::<0b10_10_10_10>(header, header);
    match layout.scales {
        Scales::Legacy { zero } => {
            let ds = _mm_cvtph_ps(word(0));
            let a = _mm_shuffle_ps::<0b01_01_00_00>(ds, ds);
            (a, _mm_mul_ps(a, _mm_set1_ps(-(zero as f32))))
        }
        Scales::LegacyMin => {
            let all = _mm_cvtph_ps(_mm_cvtsi64_si128(i64::from_le_bytes(load(bytes, 0))));
            let a = _mm_shuffle_ps::<0b01_01_00_00>(all, all);
            let b = _mm_shuffle_ps::<0b11_11_10_10>(all, all);
            (a, b)
        }
        Scales::Packed => {
            let ints = _mm_cvtepu8_epi32(word(0));
            let sc = _mm_cvtepi32_ps(_mm_and_si128(ints, _mm_set1_epi32(0xF)));
            let m = _mm_cvtepi32_ps(_mm_srli_epi32::<4>(ints));
            (_mm_mul_ps(d, sc), _mm_mul_ps(neg_dmin, m))
        }
        Scales::Signed { zero } => {
            let a = _mm_mul_ps(d, _mm_cvtepi32_ps(_mm_cvtepi8_epi32(word(0))));
            (a, _mm_mul_ps(a, _mm_set1_ps(-(zero as f32))))
        }
        Scales::Min32 => {
            let f = _mm_mul_ps(_mm_cvtepi32_ps(_mm_cvtepu8_epi32(word(0))), header);
            let a = _mm_shuffle_ps::<0b01_01_00_00>(f, f);
            let b = _mm_shuffle_ps::<0b11_11_10_10>(f, f);
            (a, b)
        }
    }
}

/// Where pair `p` of super-block `s` starts in a row of type `F`.
#[inline(always)]
fn pair_at<const F: u8>(s: usize, p: usize) -> usize {
    let layout = const { QuantType::at(F).layout() };
    s * layout.super_bytes() + layout.header + p * layout.pair_bytes()
}

/// The AVX-512 VNNI kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_avx512<const F: u8, const R: usize, const T: usize>(
    w: &[u8],
    row_bytes: usize,
    xs: &[Pairs; T],
) -> [[f32; T]; R] {
    let layout = const { QuantType::at(F).layout() };
    let rounded = layout.rounded_sums();
    let pair_bytes = layout.pair_bytes();
    // Lane i of a product covers values 4i..4i+3: group i / 4.
    let group_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut out = [[0.0; T]; R];
    // Rows one after the other: one sequential stream of weights. Reading
    // the `R` rows' pairs interleaved (`R` streams a row apart) halved the
    // rate memory delivered on short rows (Gemma 3's 640-wide output
    // projection: 15 against 28 GiB/s, `SHAPE=262144x640` in
    // `benches/kernels.rs`).
    let ahead = PREFETCH_GROUPS * R * row_bytes;
    for (r, out) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..][..row_bytes];
        // Accumulators per row, so that they stay in registers.
        let mut acc = [_mm512_setzero_ps(); T];
        let mut acc_offsets = [_mm_setzero_ps(); T];
        for (s, i) in (0..row_bytes / layout.super_bytes()).zip((0..).step_by(layout.pairs)) {
            let header = header::<F>(&row[pair_at::<F>(s, 0) - layout.header..]);
            for (p, i) in (i..i + layout.pairs).enumerate() {
                let pair = &row[pair_at::<F>(s, p)..][..pair_bytes];
                // A pair may span two cache lines: ask for both.
                let future = pair.as_ptr().wrapping_add(ahead);
                _mm_prefetch::<_MM_HINT_T0>(future.cast());
                _mm_prefetch::<_MM_HINT_T0>(future.wrapping_add(pair_bytes - 1).cast());
                let values = unpack_avx512::<F>(pair);
                let (a, b) = scales::<F>(&pair[layout.planes_bytes()..], header);
                let a = _mm512_permutexvar_ps(group_of_lane, _mm512_castps128_ps512(a));
                for t in 0..T {
                    let x = &xs[t][i];
                    let dots =
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), values, bytemuck::cast(x.q));
                    let scale = _mm512_mul_ps(a, bytemuck::cast(x.scales));
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, acc[t]);
                    acc_offsets[t] =
                        _mm_fmadd_ps(b, bytemuck::cast(*x.sums(rounded)), acc_offsets[t]);
                }
            }
        }
        *out = std::array::from_fn(|t| {
            let offsets: [f32; 4] = bytemuck::cast(acc_offsets[t]);
            _mm512_reduce_add_ps(acc[t]) + offsets.iter().sum::<f32>()
        });
    }
    out
}

/// How far ahead the lane-block kernel prefetches weights, in bytes (16
/// rows' pairs are one sequential stream). Gemma 3 decoded at 64-65
/// tokens/s with 4,096, 68-72 with 1,024 and 64-68 with 256 (two paired
/// runs each; `textstream bench --prompt-lengths 8`).
const LANE_PREFETCH_BYTES: usize = 1024;

/// Tokens from which the lane-block kernel prefetches
/// [`LANE_BATCH_PREFETCH_BYTES`] ahead into L2 instead: with 4 or more
/// tokens a pair takes long enough that loads asked for 1 KiB ahead arrive
/// late, and the kernel read memory and computed by turns (8 tokens
/// against 106 MB of Q8_0 rows: 137-144 G multiply-adds/s, against 290 with
/// them in cache; 293-304 prefetching 16 KiB ahead into L2). Decode steps
/// of a batch, the variants alternating in one process: SmolLM2 4 / 8 / 16
/// sequences -9 / -10 / -5 %, Gemma 3 -16 / -25 / -10 %, Qwen2.5-Coder
/// -13 / -21 / -7 % (2 sequences were level to 8 % slower, one level to
/// 2.5 % slower: below 4 tokens the near prefetch stays); prefill level.
const LANE_BATCH_TOKENS: usize = 4;

/// How far ahead the lane-block kernel prefetches for
/// [`LANE_BATCH_TOKENS`] or more, in bytes (SmolLM2's 8-sequence steps: 4
/// and 8 KiB -10 %, 16 KiB -7 %, 32 KiB -5 %).
const LANE_BATCH_PREFETCH_BYTES: usize = 8192;

/// The AVX-512 VNNI kernel on a lane block ([`super::layout::interleave`]):
/// 16 rows at once, row `r` in lane `r` of every vector, against `T`
/// tokens. A 4-byte word of the block holds 4 values of each row, so one
/// `vpdpbusd` against 4 broadcast activation bytes adds 4 products to each
/// of the 16 rows' integer sums; the sums become f32 once per 32 values (16
/// for types with a scale per 16), and the 16 outputs come out in one
/// vector: no horizontal sum, no scale per lane, no unpacking per token.
/// A type whose offset is an integer (`q - zero`: Q4_0, Q5_0, Q8_0, Q3_K,
/// Q6_K) starts each integer sum at `-zero * Σ qx`, so the offset costs no
/// float operation (in cache, 8 and 128 tokens: Q8_0 +3-5 %, Q5_0 +3-5 %,
/// Q6_K +6-11 % against a second multiply-add per group). Each token's
/// arithmetic is the same whatever `T` is.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_lanes<const F: u8, const T: usize>(
    w: &[u8],
    row_bytes: usize,
    xs: &[Pairs; T],
) -> [[f32; LANES]; T] {
    let layout = const { QuantType::at(F).layout() };
    let rounded = layout.rounded_sums();
    let per32 = !matches!(layout.scales, Scales::Packed | Scales::Signed { .. });
    let w = &w[..LANES * row_bytes];
    let mut acc = [_mm512_setzero_ps(); T];
    for (s, i) in (0..row_bytes / layout.super_bytes()).zip((0..).step_by(layout.pairs)) {
        let (d, neg_dmin) = match layout.header {
            0 => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            _ => {
                let h = word_column(w, pair_at::<F>(s, 0) - layout.header);
                (low_f16(h), _mm512_sub_ps(_mm512_setzero_ps(), high_f16(h)))
            }
        };
        for (p, i) in (i..i + layout.pairs).enumerate() {
            let at = pair_at::<F>(s, p);
            let block = at / 4 * 64;
            for line in (0..layout.pair_bytes() * LANES).step_by(64) {
                if T >= LANE_BATCH_TOKENS {
                    let future = w
                        .as_ptr()
                        .wrapping_add(block + line + LANE_BATCH_PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T1>(future.cast());
                } else {
                    let future = w.as_ptr().wrapping_add(block + line + LANE_PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(future.cast());
                }
            }
            let (a, b) = lane_scales::<F>(w, at + layout.planes_bytes(), d, neg_dmin);
            // The pair as 16 vectors: vector `c` holds values `4c..4c + 4` of
            // each of the 16 rows, as unsigned bytes. (Written here, not in a
            // function of its own: one that returned the 16 vectors was not
            // inlined, and went through the stack.)
            let v = {
                let mut v = [_mm512_setzero_si512(); 16];
                if layout.eight {
                    for (c, v) in v.iter_mut().enumerate() {
                        *v = word_column(w, at + 4 * c);
                    }
                }
                if layout.four {
                    let low = _mm512_set1_epi8(0x0F);
                    for j in 0..8 {
                        let nibbles = word_column(w, at + 4 * j);
                        v[j] = _mm512_and_si512(nibbles, low);
                        v[j + 8] = _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), low);
                    }
                }
                if layout.two {
                    // Value 16 k + i is bits 2k.. of byte i: word i / 4, shifted by 2k.
                    let mask = _mm512_set1_epi8(3);
                    let up = _mm_cvtsi32_si128(layout.two_shift() as i32);
                    for j in 0..4 {
                        let word = word_column(w, at + layout.two_at() + 4 * j);
                        for k in 0..4 {
                            let bits = _mm512_srl_epi32(word, _mm_cvtsi32_si128(2 * k as i32));
                            let two = _mm512_sll_epi32(_mm512_and_si512(bits, mask), up);
                            v[4 * k + j] = _mm512_or_si512(v[4 * k + j], two);
                        }
                    }
                }
                if layout.one {
                    // Bits 4c..4c + 4 of the 64: a 4-bit index into the 16 ways of
                    // spreading 4 bits over 4 bytes (at the plane's place).
                    let spread: __m512i = bytemuck::cast(
                        const { spread_bits(QuantType::at(F).layout().one_shift()) },
                    );
                    for half in 0..2 {
                        let word = word_column(w, at + layout.one_at() + 4 * half);
                        for k in 0..8 {
                            let index = _mm512_srl_epi32(word, _mm_cvtsi32_si128(4 * k as i32));
                            let bits = _mm512_permutexvar_epi32(index, spread);
                            v[8 * half + k] = _mm512_or_si512(v[8 * half + k], bits);
                        }
                    }
                }
                v
            };
            for t in 0..T {
                let x = &xs[t][i];
                let q: [i32; 16] = bytemuck::cast(x.q);
                // Groups of `width` vectors (4 values each) share a weight
                // scale: 32 values, or 16 for types with a scale per 16.
                let width = if per32 { 8 } else { 4 };
                for g in 0..16 / width {
                    let (first, quarter) = (width * g, width * g / 4);
                    let mut dots = match layout.zero() {
                        // `zero * Σ qx` subtracted in the integer sums (they
                        // start at it), as ggml's integer `q - zero` does.
                        Some(zero) => {
                            let count: i32 = x.counts[quarter..][..width / 4].iter().sum();
                            _mm512_set1_epi32(-(zero as i32) * count)
                        }
                        None => _mm512_setzero_si512(),
                    };
                    for c in first..first + width {
                        dots = _mm512_dpbusd_epi32(dots, v[c], _mm512_set1_epi32(q[c]));
                    }
                    let x_scale = _mm512_set1_ps(x.scales[8 * (first / 8)]);
                    let scale = _mm512_mul_ps(a[quarter], x_scale);
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, acc[t]);
                    if layout.zero().is_none() {
                        let sum = match per32 {
                            true => x.block_sums(rounded)[g],
                            false => x.sums(rounded)[g],
                        };
                        acc[t] = _mm512_fmadd_ps(b[quarter], _mm512_set1_ps(sum), acc[t]);
                    }
                }
            }
        }
    }
    acc.map(bytemuck::cast)
}

/// The 64 bytes at row byte `at` of a lane block: that 4-byte word of each row.
#[inline(always)]
fn word_column(w: &[u8], at: usize) -> __m512i {
    bytemuck::cast(load::<64>(w, at / 4 * 64))
}

/// Each lane's low f16 as f32.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[inline]
fn low_f16(words: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words))
}

/// Each lane's high f16 as f32.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[inline]
fn high_f16(words: __m512i) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(words)))
}

/// Byte `k` of each lane as f32, unsigned.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[inline]
fn byte_u8(words: __m512i, k: u32) -> __m512 {
    let shifted = _mm512_srl_epi32(words, _mm_cvtsi32_si128(8 * k as i32));
    _mm512_cvtepi32_ps(_mm512_and_si512(shifted, _mm512_set1_epi32(0xFF)))
}

/// Byte `k` of each lane as f32, signed.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[inline]
fn byte_i8(words: __m512i, k: u32) -> __m512 {
    let up = _mm512_sll_epi32(words, _mm_cvtsi32_si128(24 - 8 * k as i32));
    _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(up))
}

/// The 16 rows' `a` and `b` for each group of 16 values of the pair whose
/// scale bytes start at row byte `at` (the same f32 operations as `scales`).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[inline]
fn lane_scales<const F: u8>(
    w: &[u8],
    at: usize,
    d: __m512,
    neg_dmin: __m512,
) -> ([__m512; 4], [__m512; 4]) {
    let layout = const { QuantType::at(F).layout() };
    let words = word_column(w, at);
    match layout.scales {
        Scales::Legacy { zero } => {
            let (da, db) = (low_f16(words), high_f16(words));
            let a = [da, da, db, db];
            (
                a,
                a.map(|a| _mm512_mul_ps(a, _mm512_set1_ps(-(zero as f32)))),
            )
        }
        Scales::LegacyMin => {
            let (da, db) = (low_f16(words), high_f16(words));
            let mins = word_column(w, at + 4);
            let (ma, mb) = (low_f16(mins), high_f16(mins));
            ([da, da, db, db], [ma, ma, mb, mb])
        }
        Scales::Packed => {
            let a = std::array::from_fn(|g| {
                let sc = _mm512_and_si512(
                    _mm512_srl_epi32(words, _mm_cvtsi32_si128(8 * g as i32)),
                    _mm512_set1_epi32(0xF),
                );
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc))
            });
            let b = std::array::from_fn(|g| {
                let m = _mm512_and_si512(
                    _mm512_srl_epi32(words, _mm_cvtsi32_si128(8 * g as i32 + 4)),
                    _mm512_set1_epi32(0xF),
                );
                _mm512_mul_ps(neg_dmin, _mm512_cvtepi32_ps(m))
            });
            (a, b)
        }
        Scales::Signed { zero } => {
            let a: [__m512; 4] =
                std::array::from_fn(|g| _mm512_mul_ps(d, byte_i8(words, g as u32)));
            (
                a,
                a.map(|a| _mm512_mul_ps(a, _mm512_set1_ps(-(zero as f32)))),
            )
        }
        Scales::Min32 => {
            let (sa, sb) = (
                _mm512_mul_ps(byte_u8(words, 0), d),
                _mm512_mul_ps(byte_u8(words, 1), d),
            );
            let ma = _mm512_mul_ps(byte_u8(words, 2), neg_dmin);
            let mb = _mm512_mul_ps(byte_u8(words, 3), neg_dmin);
            ([sa, sa, sb, sb], [ma, ma, mb, mb])
        }
    }
}

/// For each 4-bit index `n`, a word whose byte `b` is bit `b` of `n`,
/// shifted up by `shift`.
const fn spread_bits(shift: u32) -> [i32; 16] {
    let mut out = [0; 16];
    let mut n = 0;
    while n < 16 {
        let mut b = 0;
        while b < 4 {
            out[n] |= (((n >> b) & 1) as i32) << (8 * b + shift as usize);
            b += 1;
        }
        n += 1;
    }
    out
}

/// A pair's 64 values as bytes, with AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[inline]
fn unpack_avx512<const F: u8>(pair: &[u8]) -> __m512i {
    let layout = const { QuantType::at(F).layout() };
    let mut v = _mm512_setzero_si512();
    if layout.eight {
        v = bytemuck::cast(load::<64>(pair, 0));
    }
    if layout.four {
        let both = _mm512_broadcast_i64x4(bytemuck::cast(load::<32>(pair, 0)));
        // The first 256 bits keep the low nibbles, the second take the high ones.
        let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
        v = _mm512_and_si512(_mm512_srlv_epi64(both, shifts), _mm512_set1_epi8(0x0F));
    }
    if layout.two {
        let all = _mm512_broadcast_i32x4(bytemuck::cast(load::<16>(pair, layout.two_at())));
        let shifts = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
        let two = _mm512_and_si512(_mm512_srlv_epi64(all, shifts), _mm512_set1_epi8(3));
        v = _mm512_or_si512(
            v,
            _mm512_sll_epi64(two, _mm_cvtsi32_si128(layout.two_shift() as i32)),
        );
    }
    if layout.one {
        let bits = u64::from_le_bytes(load(pair, layout.one_at()));
        let bit = _mm512_set1_epi8(1 << layout.one_shift());
        v = _mm512_or_si512(v, _mm512_maskz_mov_epi8(bits, bit));
    }
    v
}

/// Stamps out a 256-bit kernel: `$name` with `$features`, whose integer dot
/// product of 32 unsigned weights and 32 signed activations is `$dot`;
/// with `$signed_eight`, `$dot` gives 8-bit weights' products already less
/// their offset (`Σ (w - 128) x`), and the kernel adds no offset term for them.
macro_rules! kernel_256 {
    ($name:ident, $features:literal, $dot:ident, $signed_eight:expr) => {
        #[target_feature(enable = $features)]
        pub(super) fn $name<const F: u8, const R: usize, const T: usize>(
            w: &[u8],
            row_bytes: usize,
            xs: &[Pairs; T],
        ) -> [[f32; T]; R] {
            let layout = const { QuantType::at(F).layout() };
            let rounded = layout.rounded_sums();
            let halves = [
                _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
                _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
            ];
            let mut out = [[0.0; T]; R];
            // Rows one after the other, prefetched as far ahead, as in
            // `dot_avx512`.
            let pair_bytes = layout.pair_bytes();
            let ahead = PREFETCH_GROUPS * R * row_bytes;
            for (r, out) in out.iter_mut().enumerate() {
                let row = &w[r * row_bytes..][..row_bytes];
                let mut acc = [_mm256_setzero_ps(); T];
                for (s, i) in (0..row_bytes / layout.super_bytes()).zip((0..).step_by(layout.pairs))
                {
                    let header = header::<F>(&row[pair_at::<F>(s, 0) - layout.header..]);
                    for (p, i) in (i..i + layout.pairs).enumerate() {
                        let pair = &row[pair_at::<F>(s, p)..][..pair_bytes];
                        let future = pair.as_ptr().wrapping_add(ahead);
                        _mm_prefetch::<_MM_HINT_T0>(future.cast());
                        _mm_prefetch::<_MM_HINT_T0>(future.wrapping_add(pair_bytes - 1).cast());
                        let (a, b) = scales::<F>(&pair[layout.planes_bytes()..], header);
                        let a = _mm256_castps128_ps256(a);
                        for h in 0..2 {
                            let values = unpack_256::<F>(pair, h);
                            let a = _mm256_permutevar8x32_ps(a, halves[h]);
                            for t in 0..T {
                                let x = &xs[t][i];
                                let q: __m256i = bytemuck::cast(load::<32>(&x.q, 32 * h));
                                let dots = $dot(values, q, layout.eight);
                                let x_scales: [f32; 8] =
                                    x.scales[8 * h..][..8].try_into().unwrap_or_default();
                                let scale = _mm256_mul_ps(a, bytemuck::cast(x_scales));
                                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale, acc[t]);
                            }
                        }
                        if !(layout.eight && $signed_eight) {
                            for t in 0..T {
                                let offsets =
                                    _mm_mul_ps(b, bytemuck::cast(*xs[t][i].sums(rounded)));
                                acc[t] = _mm256_add_ps(acc[t], _mm256_zextps128_ps256(offsets));
                            }
                        }
                    }
                }
                *out = std::array::from_fn(|t| {
                    let lanes: [f32; 8] = bytemuck::cast(acc[t]);
                    lanes.iter().sum()
                });
            }
            out
        }
    };
}

kernel_256!(dot_avx2, "avx2,fma,f16c", dot_maddubs, true);
kernel_256!(dot_avxvnni, "avx2,fma,f16c,avxvnni", dot_vnni_256, false);

/// Half `h` of a pair's values (32 of them) as bytes, with AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack_256<const F: u8>(pair: &[u8], h: usize) -> __m256i {
    let layout = const { QuantType::at(F).layout() };
    let mut v = _mm256_setzero_si256();
    if layout.eight {
        v = bytemuck::cast(load::<32>(pair, 32 * h));
    }
    if layout.four {
        let nibbles: __m256i = bytemuck::cast(load::<32>(pair, 0));
        let shifted = match h {
            0 => nibbles,
            _ => _mm256_srli_epi16::<4>(nibbles),
        };
        v = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
    }
    if layout.two {
        let all = _mm256_broadcastsi128_si256(bytemuck::cast(load::<16>(pair, layout.two_at())));
        let first = 4 * h as i64;
        let shifts = _mm256_set_epi64x(first + 2, first + 2, first, first);
        let two = _mm256_and_si256(_mm256_srlv_epi64(all, shifts), _mm256_set1_epi8(3));
        v = _mm256_or_si256(
            v,
            _mm256_sll_epi64(two, _mm_cvtsi32_si128(layout.two_shift() as i32)),
        );
    }
    if layout.one {
        let bits = u32::from_le_bytes(load(pair, layout.one_at() + 4 * h));
        // Byte k takes byte k / 8 of the bits, then keeps bit k % 8 of it.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let masks = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, masks), masks);
        v = _mm256_or_si256(
            v,
            _mm256_and_si256(set, _mm256_set1_epi8(1 << layout.one_shift())),
        );
    }
    v
}

/// `Σ w·x` per lane of 4 with AVX2. `vpmaddubsw` saturates at 16 bits, which
/// weights of up to 6 bits never reach (63 · 127 · 2 < 32767); 8-bit weights
/// (`q + 128`) are multiplied as signed `q`, which is their product less the
/// offset (`Σ (w - 128) x`, as ggml's integer Q8_0 product): the kernel then
/// adds no offset term (adding `128 Σ x` back here, for the float offset
/// term to take away again, cost 4 of a Q8_0 half's ~12 instructions).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_maddubs(w: __m256i, x: __m256i, eight: bool) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    if !eight {
        return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
    }
    let signed = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
    let products = _mm256_maddubs_epi16(_mm256_abs_epi8(signed), _mm256_sign_epi8(x, signed));
    _mm256_madd_epi16(products, ones)
}

/// `Σ w·x` per lane of 4 with AVX-VNNI (no saturation).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[inline]
fn dot_vnni_256(w: __m256i, x: __m256i, _eight: bool) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
}

/// `dst[i] = src[i]` (f16 bits) as f32, exactly: 8 at a time with F16C's
/// `vcvtph2ps`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn widen_f16(src: &[u16], dst: &mut [f32]) {
    let (halves, rest) = src.as_chunks::<8>();
    let (outs, out_rest) = dst.as_chunks_mut::<8>();
    for (h, o) in halves.iter().zip(outs) {
        *o = bytemuck::cast(_mm256_cvtph_ps(bytemuck::cast(*h)));
    }
    for (&h, o) in rest.iter().zip(out_rest) {
        *o = half::f16::from_bits(h).to_f32();
    }
}

/// `dst[i] = src[i]` rounded to the nearest f16 (ties to even), as bits,
/// saturating at the largest finite f16 (NaN stays NaN): 8 at a time with
/// F16C's `vcvtps2ph`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn narrow_f16(src: &[f32], dst: &mut [u16]) {
    let (floats, rest) = src.as_chunks::<8>();
    let (outs, out_rest) = dst.as_chunks_mut::<8>();
    let (high, low) = (_mm256_set1_ps(F16_MAX), _mm256_set1_ps(-F16_MAX));
    for (f, o) in floats.iter().zip(outs) {
        // `min`/`max` return their second operand when either is NaN.
        let x = _mm256_max_ps(low, _mm256_min_ps(high, bytemuck::cast(*f)));
        *o = bytemuck::cast(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
    }
    for (&f, o) in rest.iter().zip(out_rest) {
        *o = half::f16::from_f32(f.clamp(-F16_MAX, F16_MAX)).to_bits();
    }
}

/// One token's activations rounded into its pairs, exactly as
/// `quant::quantize_token` rounds them (the same f32 operations, bit for
/// bit), a pair's two blocks at a time in AVX-512 registers: their maxima,
/// scales and sums reduced together, the scales rounded to f16 by F16C.
/// Compiled from the generic code, each block's maximum and sums were
/// reduced one lane at a time and its f16 roundings were scalar bit
/// operations with branches (~1.2 ns a value; one token's activations are
/// rounded on one thread before every product of a decode step).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn quantize_token(x: &[f32], pairs: &mut [XPair]) {
    let (whole, _) = x.as_chunks::<PAIR>();
    let done = whole.len().min(pairs.len());
    for (values, pair) in whole.iter().zip(pairs.iter_mut()) {
        quantize_pair(values, pair);
    }
    // A pair that is not whole (its blocks partly or not at all in `x`).
    if done < pairs.len() {
        super::quantize_token(&x[done * PAIR..], &mut pairs[done..]);
    }
}

/// `x` rounded to the nearest f16 (ties to even; past the largest finite
/// one, infinity), as f32, lane by lane: F16C's conversion, which is IEEE's
/// (`math::round_to_f16` computes the same in scalar bit operations).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn round_to_f16_x16(x: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// The same for 4 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn round_to_f16_x4(x: __m128) -> __m128 {
    _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// One whole pair of `quant::quantize_token`: two blocks of 32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn quantize_pair(values: &[f32; PAIR], pair: &mut XPair) {
    let (quarters, _) = values.as_chunks::<16>();
    let v: [__m512; 4] = std::array::from_fn(|k| bytemuck::cast(quarters[k]));
    // Each block's largest magnitude: `max(|x|, m)` keeps `m` where `|x|`
    // is NaN, as the generic comparison does; the maximum of the same
    // values in any order is the same value.
    let zero = _mm512_setzero_ps();
    let m0 = _mm512_max_ps(
        _mm512_abs_ps(v[1]),
        _mm512_max_ps(_mm512_abs_ps(v[0]), zero),
    );
    let m1 = _mm512_max_ps(
        _mm512_abs_ps(v[3]),
        _mm512_max_ps(_mm512_abs_ps(v[2]), zero),
    );
    // Lanes 0-7 from block 0, 8-15 from block 1, then halved within each
    // 8 until every lane holds its block's maximum.
    let m = _mm512_max_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(m0, m1),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(m0, m1),
    );
    let m = _mm512_max_ps(m, _mm512_shuffle_f32x4::<0b10_11_00_01>(m, m));
    let m = _mm512_max_ps(m, _mm512_permute_ps::<0b01_00_11_10>(m));
    let max = _mm512_max_ps(m, _mm512_permute_ps::<0b10_11_00_01>(m));
    let scale = _mm512_div_ps(max, _mm512_set1_ps(super::ACTIVATION_MAX));
    let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(scale, zero);
    let inverse = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), scale);
    let inverses = [
        _mm512_shuffle_f32x4::<0b00_00_00_00>(inverse, inverse),
        _mm512_shuffle_f32x4::<0b10_10_10_10>(inverse, inverse),
    ];
    let sign = _mm512_set1_epi32(i32::MIN);
    let one = _mm512_castps_si512(_mm512_set1_ps(1.0));
    let q: [__m512i; 4] = std::array::from_fn(|k| {
        let v = _mm512_mul_ps(v[k], inverses[k / 2]);
        // Halves away from zero, as `f32::round`: the truncation, one more
        // (with v's sign) where the part cut off is at least a half (exact:
        // a float minus its truncation is).
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let cut = _mm512_abs_ps(_mm512_sub_ps(v, t));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(cut, _mm512_set1_ps(0.5));
        let signed_one = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(_mm512_castps_si512(v), sign),
            one,
        ));
        let r = _mm512_mask_add_ps(t, up, t, signed_one);
        // NaN to 0, then into i8's range.
        let r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r), r);
        let r = _mm512_min_ps(
            _mm512_max_ps(r, _mm512_set1_ps(-128.0)),
            _mm512_set1_ps(127.0),
        );
        _mm512_cvttps_epi32(r)
    });
    for (k, &q) in q.iter().enumerate() {
        pair.q[k * 16..][..16]
            .copy_from_slice(&bytemuck::cast::<_, [u8; 16]>(_mm512_cvtepi32_epi8(q)));
    }
    // The four halves' sums: pairs of vectors folded into one, then within
    // each 128-bit lane, until lane 4k holds half k's sum.
    let fold = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b),
        )
    };
    let (s01, s23) = (fold(q[0], q[1]), fold(q[2], q[3]));
    let s = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(s01, s23),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(s01, s23),
    );
    let s = _mm512_add_epi32(s, _mm512_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm512_add_epi32(s, _mm512_shuffle_epi32::<0b10_11_00_01>(s));
    let counts = _mm512_castsi512_si128(_mm512_permutexvar_epi32(
        _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        s,
    ));
    pair.counts = bytemuck::cast(counts);
    // Lanes 0-7 hold block 0's scale, 8-15 block 1's: the record's layout.
    let scales = round_to_f16_x16(scale);
    pair.scales = bytemuck::cast(scales);
    // Each half's scale: [block 0, block 0, block 1, block 1].
    let half_scales = _mm512_castps512_ps128(_mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        scales,
    ));
    let exact = _mm_mul_ps(half_scales, _mm_cvtepi32_ps(counts));
    pair.exact = bytemuck::cast(exact);
    // Each block's count in both of its halves' lanes: [c0+c1, c0+c1, c2+c3, c2+c3].
    let block_counts = _mm_add_epi32(counts, _mm_shuffle_epi32::<0b10_11_00_01>(counts));
    let rounded_sum = round_to_f16_x4(_mm_mul_ps(
        round_to_f16_x4(_mm_cvtepi32_ps(block_counts)),
        half_scales,
    ));
    let rounded = _mm_div_ps(rounded_sum, _mm_set1_ps(2.0));
    pair.rounded = bytemuck::cast(rounded);
    // Each block's two halves added: lanes 0 and 2.
    let exact_blocks = _mm_add_ps(exact, _mm_shuffle_ps::<0b10_11_00_01>(exact, exact));
    let rounded_blocks = _mm_add_ps(rounded, _mm_shuffle_ps::<0b10_11_00_01>(rounded, rounded));
    let (e, r): ([f32; 4], [f32; 4]) =
        (bytemuck::cast(exact_blocks), bytemuck::cast(rounded_blocks));
    pair.exact_blocks = [e[0], e[2]];
    pair.rounded_blocks = [r[0], r[2]];
}

/// Runs `f` with AVX-512 enabled (see `quant::vectorized`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` with AVX2 and FMA enabled (see `quant::vectorized`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Independent sums in the peak loops below: enough to hide each
/// instruction's latency (4-5 cycles) at up to two a cycle.
pub(super) const PEAK_CHAINS: usize = 12;

/// `rounds` x [`PEAK_CHAINS`] 512-bit `vpdpbusd` (64 byte multiply-adds
/// each, the AVX-512 kernels' instruction), with nothing else to wait for;
/// returns their sums (`w` comes from the caller, so that no round can be
/// folded away).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn int8_peak_avx512(rounds: usize, w: i32) -> i32 {
    let (w, x) = (_mm512_set1_epi32(w), _mm512_set1_epi32(0x0101_0101));
    let mut sums = [_mm512_setzero_si512(); PEAK_CHAINS];
    for _ in 0..rounds {
        for s in &mut sums {
            *s = _mm512_dpbusd_epi32(*s, w, x);
        }
    }
    sums.iter()
        .fold(0, |t, s| t.wrapping_add(_mm512_reduce_add_epi32(*s)))
}

/// As [`int8_peak_avx512`] with AVX-VNNI's 256-bit `vpdpbusd` (32 each).
#[target_feature(enable = "avx2,avxvnni")]
pub(super) fn int8_peak_avxvnni(rounds: usize, w: i32) -> i32 {
    let (w, x) = (_mm256_set1_epi32(w), _mm256_set1_epi32(0x0101_0101));
    let mut sums = [_mm256_setzero_si256(); PEAK_CHAINS];
    for _ in 0..rounds {
        for s in &mut sums {
            *s = _mm256_dpbusd_avx_epi32(*s, w, x);
        }
    }
    sums.iter()
        .fold(0, |t, s| t.wrapping_add(lanes_sum_256(*s)))
}

/// As [`int8_peak_avx512`] with the AVX2 kernels' sequence for 32 byte
/// multiply-adds: `vpmaddubsw`, `vpmaddwd` by ones, `vpaddd`. Only the
/// add depends on the sum, so that the products are not hoisted out of the
/// loop (or shared by the chains) each round's weights take the round's
/// number masked by `zero` (0, from the caller), and each chain has
/// activations of its own (the caller's, all equal, unknown here).
#[target_feature(enable = "avx2")]
pub(super) fn int8_peak_avx2(
    rounds: usize,
    w: i32,
    zero: i32,
    xs: &[[i32; 8]; PEAK_CHAINS],
) -> i32 {
    let xs: [__m256i; PEAK_CHAINS] = bytemuck::cast(*xs);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); PEAK_CHAINS];
    for round in 0..rounds {
        let w = _mm256_set1_epi32(w | (round as i32 & zero));
        for (s, x) in sums.iter_mut().zip(&xs) {
            let pairs = _mm256_maddubs_epi16(w, *x);
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
        }
    }
    sums.iter()
        .fold(0, |t, s| t.wrapping_add(lanes_sum_256(*s)))
}

/// `rounds` x [`PEAK_CHAINS`] 512-bit f32 multiply-adds (16 each), `x * m +
/// 0` from 1 (`m` from the caller: 1 keeps every value 1).
#[target_feature(enable = "avx512f")]
pub(super) fn f32_peak_avx512(rounds: usize, m: f32) -> f32 {
    let (m, zero) = (_mm512_set1_ps(m), _mm512_setzero_ps());
    let mut sums = [_mm512_set1_ps(1.0); PEAK_CHAINS];
    for _ in 0..rounds {
        for s in &mut sums {
            *s = _mm512_fmadd_ps(*s, m, zero);
        }
    }
    sums.iter().map(|s| _mm512_reduce_add_ps(*s)).sum()
}

/// As [`f32_peak_avx512`] on 256 bits (8 each).
#[target_feature(enable = "avx2,fma")]
pub(super) fn f32_peak_avx2(rounds: usize, m: f32) -> f32 {
    let (m, zero) = (_mm256_set1_ps(m), _mm256_setzero_ps());
    let mut sums = [_mm256_set1_ps(1.0); PEAK_CHAINS];
    for _ in 0..rounds {
        for s in &mut sums {
            *s = _mm256_fmadd_ps(*s, m, zero);
        }
    }
    let lanes: [[f32; 8]; PEAK_CHAINS] = bytemuck::cast(sums);
    lanes.iter().flatten().sum()
}

/// The sum of 8 lanes.
#[target_feature(enable = "avx2")]
fn lanes_sum_256(v: __m256i) -> i32 {
    let lanes: [i32; 8] = bytemuck::cast(v);
    lanes.iter().fold(0, |t, &l| t.wrapping_add(l))
}

const _: () = assert!(PAIR == 64);
