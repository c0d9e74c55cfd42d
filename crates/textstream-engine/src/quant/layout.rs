//! How each GGUF quantized type is laid out for the kernels: the file's own
//! integers and scales, re-ordered so that one 64-value *pair* unpacks into
//! the 64 bytes that face the activations' 64, and the plain-Rust reading of
//! that layout (the portable kernel's and the reference every tier is tested
//! against).
//!
//! # Pairs, planes and groups
//!
//! A row is a sequence of *super-blocks*: an optional 4-byte header (a K-quant
//! block's `d` and `dmin`, f16 as in the file) and 1 pair (legacy types,
//! blocks of 32) or 4 pairs (K-quants, blocks of 256). A pair holds its 64
//! unsigned integers in bit planes, then its scale bytes:
//!
//! | plane | bytes | where value `k` of the pair is                        |
//! |-------|-------|-------------------------------------------------------|
//! | 8-bit | 64    | byte `k`                                              |
//! | 4-bit | 32    | byte `k % 32`, low nibble for `k < 32`, else high     |
//! | 2-bit | 16    | byte `k % 16`, bits `2 (k / 16)` and up               |
//! | 1-bit | 8     | bit `k` of a little-endian `u64`                      |
//!
//! 5-bit values are a 4-bit and a 1-bit plane (`nibble | bit << 4`), 6-bit a
//! 4-bit and a 2-bit plane, 3-bit a 2-bit and a 1-bit plane (`two | bit << 2`).
//!
//! Each *group* of 16 values in a pair has a scale `a` and an offset `b`, so
//! value `k` is `a[k / 16] * q + b[k / 16]`. The scale bytes keep what the
//! file stores (f16 scales, 4-, 6- or 8-bit integer sub-scales), and `a`, `b`
//! are computed from them in f32 exactly: an f16 times an integer of up to 8
//! bits fits f32's 24-bit mantissa. Types whose values are `d * (q - z)` (Q4_0
//! `z = 8`, Q5_0 16, Q8_0 128, Q3_K 4, Q6_K 32) have `b = -z a`, exact too
//! (`z` is a power of two). Q8_0's signed values are kept as `q + 128`.

use half::f16;

/// Values per pair: the unit the kernels take at once.
pub(crate) const PAIR: usize = 64;
/// Values per legacy block (one scale, or scale and minimum).
pub(crate) const BLOCK: usize = 32;
/// Values per K-quant super-block.
const SUPER: usize = 256;
/// Bytes of a K-quant super-block's header (`d`, `dmin` as f16).
const HEADER: usize = 4;

/// A quantized GGUF type the kernels read at its own bit width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// `d * (q - 8)`, 4-bit, blocks of 32.
    Q4_0,
    /// `d * q + m`, 4-bit, blocks of 32.
    Q4_1,
    /// `d * (q - 16)`, 5-bit, blocks of 32.
    Q5_0,
    /// `d * q + m`, 5-bit, blocks of 32.
    Q5_1,
    /// `d * q`, signed 8-bit, blocks of 32.
    Q8_0,
    /// 2-bit, 16 groups of 16 with 4-bit scales and minimums.
    Q2_K,
    /// 3-bit, 16 groups of 16 with signed 6-bit scales.
    Q3_K,
    /// 4-bit, 8 groups of 32 with 6-bit scales and minimums.
    Q4_K,
    /// 5-bit, 8 groups of 32 with 6-bit scales and minimums.
    Q5_K,
    /// 6-bit, 16 groups of 16 with signed 8-bit scales.
    Q6_K,
}

/// Every quantized type, in [`QuantType::index`] order.
pub const QUANT_TYPES: [QuantType; 10] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q2_K,
    QuantType::Q3_K,
    QuantType::Q4_K,
    QuantType::Q5_K,
    QuantType::Q6_K,
];

/// How a pair's scale bytes give its groups' `a` and `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scales {
    /// `[d_a, d_b]` f16 per block of 32; `b = -zero * a`.
    Legacy { zero: u8 },
    /// `[d_a, d_b, m_a, m_b]` f16 per block of 32.
    LegacyMin,
    /// One byte per group of 16, scale low nibble and minimum high; `a = d *
    /// scale`, `b = -dmin * minimum`.
    Packed,
    /// One `i8` scale per group of 16; `a = d * scale`, `b = -zero * a`.
    Signed { zero: u8 },
    /// `[scale_a, scale_b, min_a, min_b]` (6-bit) per group of 32.
    Min32,
}

/// Where a type's planes and scales lie in its pairs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Values per block of the file (32 or 256).
    pub block: usize,
    /// Bytes per block in the file.
    pub file_block_bytes: usize,
    /// Pairs per super-block (1 or 4).
    pub pairs: usize,
    /// Header bytes per super-block (0 or 4).
    pub header: usize,
    pub eight: bool,
    pub four: bool,
    pub two: bool,
    pub one: bool,
    pub scales: Scales,
}

impl Layout {
    /// Bytes of the integer planes of a pair; the scale bytes follow.
    pub const fn planes_bytes(&self) -> usize {
        64 * self.eight as usize
            + 32 * self.four as usize
            + 16 * self.two as usize
            + 8 * self.one as usize
    }

    /// Offset of the 2-bit plane in a pair.
    pub const fn two_at(&self) -> usize {
        32 * self.four as usize
    }

    /// Offset of the 1-bit plane in a pair.
    pub const fn one_at(&self) -> usize {
        32 * self.four as usize + 16 * self.two as usize
    }

    /// Where a 2-bit plane's values go (above a 4-bit plane's, or alone).
    pub const fn two_shift(&self) -> u32 {
        4 * self.four as u32
    }

    /// Where a 1-bit plane's values go.
    pub const fn one_shift(&self) -> u32 {
        match self.four {
            true => 4,
            false => 2,
        }
    }

    /// Bytes of a pair's scales.
    pub const fn scale_bytes(&self) -> usize {
        match self.scales {
            Scales::LegacyMin => 8,
            _ => 4,
        }
    }

    /// Bytes of one stored pair.
    pub const fn pair_bytes(&self) -> usize {
        self.planes_bytes() + self.scale_bytes()
    }

    /// Bytes of one stored super-block.
    pub const fn super_bytes(&self) -> usize {
        self.header + self.pairs * self.pair_bytes()
    }

    /// Values per super-block.
    pub const fn super_values(&self) -> usize {
        self.pairs * PAIR
    }

    /// Whether the offsets multiply the activations' f16-rounded block sums
    /// (as ggml's Q8_1 stores them, for the types that have a minimum `m`).
    pub const fn rounded_sums(&self) -> bool {
        matches!(self.scales, Scales::LegacyMin)
    }

    /// The integer the stored values are offset by (`b = -zero * a`), for
    /// the types whose offset is one.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub const fn zero(&self) -> Option<u8> {
        match self.scales {
            Scales::Legacy { zero } | Scales::Signed { zero } => Some(zero),
            _ => None,
        }
    }
}

/// A legacy type's layout: blocks of 32, one pair per super-block.
const fn legacy(
    file_block_bytes: usize,
    eight: bool,
    four: bool,
    one: bool,
    scales: Scales,
) -> Layout {
    Layout {
        block: BLOCK,
        file_block_bytes,
        pairs: 1,
        header: 0,
        eight,
        four,
        two: false,
        one,
        scales,
    }
}

/// A K-quant's layout: blocks of 256 with a header, four pairs.
const fn k(file_block_bytes: usize, four: bool, two: bool, one: bool, scales: Scales) -> Layout {
    Layout {
        block: SUPER,
        file_block_bytes,
        pairs: SUPER / PAIR,
        header: HEADER,
        eight: false,
        four,
        two,
        one,
        scales,
    }
}

impl QuantType {
    /// This type's position in [`QUANT_TYPES`]: the kernels' const parameter.
    pub(crate) const fn index(self) -> u8 {
        self as u8
    }

    /// The type at `index` in [`QUANT_TYPES`].
    pub(crate) const fn at(index: u8) -> Self {
        QUANT_TYPES[index as usize]
    }

    pub(crate) const fn layout(self) -> Layout {
        match self {
            Self::Q4_0 => legacy(18, false, true, false, Scales::Legacy { zero: 8 }),
            Self::Q4_1 => legacy(20, false, true, false, Scales::LegacyMin),
            Self::Q5_0 => legacy(22, false, true, true, Scales::Legacy { zero: 16 }),
            Self::Q5_1 => legacy(24, false, true, true, Scales::LegacyMin),
            Self::Q8_0 => legacy(34, true, false, false, Scales::Legacy { zero: 128 }),
            Self::Q2_K => k(84, false, true, false, Scales::Packed),
            Self::Q3_K => k(110, false, true, true, Scales::Signed { zero: 4 }),
            Self::Q4_K => k(144, true, false, false, Scales::Min32),
            Self::Q5_K => k(176, true, false, true, Scales::Min32),
            Self::Q6_K => k(210, true, true, false, Scales::Signed { zero: 32 }),
        }
    }
}

/// One super-block as integers and scale bytes, before packing into planes.
struct Unpacked {
    /// The unsigned values, `super_values` of them (zeros past the row).
    q: [u8; SUPER],
    /// The header bytes (K-quants).
    header: [u8; HEADER],
    /// Each pair's scale bytes.
    scales: [[u8; 8]; SUPER / PAIR],
}

impl Default for Unpacked {
    fn default() -> Self {
        Self {
            q: [0; SUPER],
            header: [0; HEADER],
            scales: [[0; 8]; SUPER / PAIR],
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

/// Reads K-quant 6-bit scale and minimum `j` (0-7) from a 12-byte table, as ggml packs them.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    match j < 4 {
        true => (q[j] & 63, q[j + 4] & 63),
        false => (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        ),
    }
}

/// Q3_K's 16 signed 6-bit scales from its 12-byte table, minus 32.
fn q3_k_scales(table: &[u8]) -> [i8; 16] {
    let word = |i: usize| {
        u32::from_le_bytes([
            table[4 * i],
            table[4 * i + 1],
            table[4 * i + 2],
            table[4 * i + 3],
        ])
    };
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    const LOW: u32 = 0x0f0f_0f0f;
    const HIGH: u32 = 0x0303_0303;
    let aux = [
        (a0 & LOW) | ((tmp & HIGH) << 4),
        (a1 & LOW) | (((tmp >> 2) & HIGH) << 4),
        ((a0 >> 4) & LOW) | (((tmp >> 4) & HIGH) << 4),
        ((a1 >> 4) & LOW) | (((tmp >> 6) & HIGH) << 4),
    ];
    std::array::from_fn(|i| (aux[i / 4].to_le_bytes()[i % 4] as i8).wrapping_sub(32))
}

/// Reads the `n` file blocks in `blocks` (one legacy pair's two blocks, the
/// second maybe absent, or one K-quant super-block).
fn unpack_file(kind: QuantType, blocks: &[&[u8]]) -> Unpacked {
    let mut u = Unpacked::default();
    match kind {
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q8_0 => {
            for (h, b) in blocks.iter().enumerate() {
                let q = &mut u.q[h * BLOCK..][..BLOCK];
                let d = f16_at(b, 0);
                u.scales[0][2 * h..2 * h + 2].copy_from_slice(&d.to_le_bytes());
                let nibbles_at = match kind {
                    QuantType::Q4_0 => 2,
                    QuantType::Q4_1 => 4,
                    QuantType::Q5_0 => 6,
                    QuantType::Q5_1 => 8,
                    _ => {
                        for (q, &v) in q.iter_mut().zip(&b[2..34]) {
                            *q = (v as i8 as i16 + 128) as u8;
                        }
                        continue;
                    }
                };
                if matches!(kind, QuantType::Q4_1 | QuantType::Q5_1) {
                    u.scales[0][4 + 2 * h..6 + 2 * h].copy_from_slice(&b[2..4]);
                }
                let high = match kind {
                    QuantType::Q5_0 => u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                    QuantType::Q5_1 => u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    _ => 0,
                };
                for (j, &byte) in b[nibbles_at..nibbles_at + 16].iter().enumerate() {
                    q[j] = (byte & 0x0F) | (((high >> j) & 1) << 4) as u8;
                    q[j + 16] = (byte >> 4) | (((high >> (j + 16)) & 1) << 4) as u8;
                }
            }
        }
        QuantType::Q2_K => {
            let b = blocks[0];
            let (scales, qs) = (&b[..16], &b[16..80]);
            u.header = [b[80], b[81], b[82], b[83]];
            for (n, qs) in qs.chunks_exact(32).enumerate() {
                for j in 0..4 {
                    for (l, &byte) in qs.iter().enumerate() {
                        u.q[128 * n + 32 * j + l] = (byte >> (2 * j)) & 3;
                    }
                }
            }
            for (g, &s) in scales.iter().enumerate() {
                u.scales[g / 4][g % 4] = s;
            }
        }
        QuantType::Q3_K => {
            let b = blocks[0];
            let (hmask, qs, table) = (&b[..32], &b[32..96], &b[96..108]);
            u.header = [b[108], b[109], 0, 0];
            for (n, qs) in qs.chunks_exact(32).enumerate() {
                for j in 0..4 {
                    let bit = 4 * n + j;
                    for l in 0..32 {
                        let high = (hmask[l] >> bit) & 1;
                        u.q[128 * n + 32 * j + l] = ((qs[l] >> (2 * j)) & 3) | (high << 2);
                    }
                }
            }
            for (g, s) in q3_k_scales(table).into_iter().enumerate() {
                u.scales[g / 4][g % 4] = s as u8;
            }
        }
        QuantType::Q4_K | QuantType::Q5_K => {
            let b = blocks[0];
            u.header = [b[0], b[1], b[2], b[3]];
            let table = &b[4..16];
            let (qh, qs) = match kind {
                QuantType::Q5_K => (Some(&b[16..48]), &b[48..176]),
                _ => (None, &b[16..144]),
            };
            for p in 0..4 {
                let nibbles = &qs[32 * p..][..32];
                for (l, &byte) in nibbles.iter().enumerate() {
                    let (low, high) = match qh {
                        Some(qh) => ((qh[l] >> (2 * p)) & 1, (qh[l] >> (2 * p + 1)) & 1),
                        None => (0, 0),
                    };
                    u.q[64 * p + l] = (byte & 0x0F) | (low << 4);
                    u.q[64 * p + 32 + l] = (byte >> 4) | (high << 4);
                }
                let (sa, ma) = scale_min_k4(2 * p, table);
                let (sb, mb) = scale_min_k4(2 * p + 1, table);
                u.scales[p][..4].copy_from_slice(&[sa, sb, ma, mb]);
            }
        }
        QuantType::Q6_K => {
            let b = blocks[0];
            let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
            u.header = [b[208], b[209], 0, 0];
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                let y = &mut u.q[128 * n..];
                for l in 0..32 {
                    y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for (g, &s) in scales.iter().enumerate() {
                u.scales[g / 4][g % 4] = s;
            }
        }
    }
    u
}

/// Packs one unpacked super-block into `out` (`super_bytes` long).
fn pack(layout: &Layout, u: &Unpacked, out: &mut [u8]) {
    out[..layout.header].copy_from_slice(&u.header[..layout.header]);
    let pairs = out[layout.header..].chunks_exact_mut(layout.pair_bytes());
    for (p, pair) in pairs.enumerate() {
        let q = &u.q[p * PAIR..][..PAIR];
        if layout.eight {
            pair[..PAIR].copy_from_slice(q);
        }
        if layout.four {
            for k in 0..32 {
                pair[k] = (q[k] & 0x0F) | ((q[k + 32] & 0x0F) << 4);
            }
        }
        if layout.two {
            let (at, shift) = (layout.two_at(), layout.two_shift());
            for k in 0..16 {
                pair[at + k] = (0..4).fold(0, |byte, j| {
                    byte | (((q[16 * j + k] >> shift) & 3) << (2 * j))
                });
            }
        }
        if layout.one {
            let shift = layout.one_shift();
            let bits = (0..PAIR).fold(0u64, |bits, k| bits | (((q[k] >> shift) & 1) as u64) << k);
            pair[layout.one_at()..][..8].copy_from_slice(&bits.to_le_bytes());
        }
        let scale_bytes = layout.scale_bytes();
        pair[layout.planes_bytes()..].copy_from_slice(&u.scales[p][..scale_bytes]);
    }
}

/// `rows` rows of `cols` values of `kind` (the file's bytes) in the kernels'
/// layout: `rows * supers_per_row(cols)` super-blocks. The caller has checked
/// the sizes.
pub(crate) fn relayout(kind: QuantType, bytes: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let layout = kind.layout();
    let supers = cols.div_ceil(layout.super_values());
    let file_row = cols / layout.block * layout.file_block_bytes;
    let mut out = vec![0u8; rows * supers * layout.super_bytes()];
    let out_rows = out.chunks_exact_mut(supers * layout.super_bytes());
    for (row, out) in bytes.chunks_exact(file_row).zip(out_rows) {
        let blocks: Vec<&[u8]> = row.chunks_exact(layout.file_block_bytes).collect();
        let per_super = layout.super_values() / layout.block;
        for (file, out) in blocks
            .chunks(per_super)
            .zip(out.chunks_exact_mut(layout.super_bytes()))
        {
            pack(&layout, &unpack_file(kind, file), out);
        }
    }
    out
}

/// The 64 values of a stored pair, as bytes (plane by plane, so it vectorizes).
#[inline(always)]
pub(crate) fn pair_values(layout: &Layout, pair: &[u8]) -> [u8; PAIR] {
    let mut v = [0u8; PAIR];
    if layout.eight {
        v.copy_from_slice(&pair[..PAIR]);
    }
    if layout.four {
        let nibbles = &pair[..32];
        for k in 0..32 {
            v[k] = nibbles[k] & 0x0F;
            v[k + 32] = nibbles[k] >> 4;
        }
    }
    if layout.two {
        let (plane, shift) = (&pair[layout.two_at()..][..16], layout.two_shift());
        for j in 0..4 {
            for k in 0..16 {
                v[16 * j + k] |= ((plane[k] >> (2 * j)) & 3) << shift;
            }
        }
    }
    if layout.one {
        let bits = u64::from_le_bytes(pair[layout.one_at()..][..8].try_into().unwrap_or_default());
        for (k, v) in v.iter_mut().enumerate() {
            *v |= (((bits >> k) & 1) as u8) << layout.one_shift();
        }
    }
    v
}

/// A super-block header's `[d, dmin]`.
#[inline(always)]
pub(crate) fn header_values(bytes: &[u8]) -> [f32; 2] {
    [f16_at(bytes, 0).to_f32(), f16_at(bytes, 2).to_f32()]
}

/// A stored pair's groups' scales `a` and offsets `b`, given its
/// super-block's `[d, dmin]` (unused by legacy types).
#[inline(always)]
pub(crate) fn pair_scales(
    layout: &Layout,
    scales: &[u8],
    header: [f32; 2],
) -> ([f32; 4], [f32; 4]) {
    let [d, dmin] = header;
    let f = |i: usize| f16_at(scales, 2 * i).to_f32();
    match layout.scales {
        Scales::Legacy { zero } => {
            let a = [f(0), f(0), f(1), f(1)];
            (a, a.map(|a| -(zero as f32) * a))
        }
        Scales::LegacyMin => ([f(0), f(0), f(1), f(1)], [f(2), f(2), f(3), f(3)]),
        Scales::Packed => (
            std::array::from_fn(|g| d * (scales[g] & 0xF) as f32),
            std::array::from_fn(|g| -dmin * (scales[g] >> 4) as f32),
        ),
        Scales::Signed { zero } => {
            let a: [f32; 4] = std::array::from_fn(|g| d * scales[g] as i8 as f32);
            (a, a.map(|a| -(zero as f32) * a))
        }
        Scales::Min32 => {
            let a = [scales[0], scales[0], scales[1], scales[1]].map(|s| d * s as f32);
            let b = [scales[2], scales[2], scales[3], scales[3]].map(|m| -dmin * m as f32);
            (a, b)
        }
    }
}

/// Calls `f(values, a, b)` for each pair of one stored row, in order.
pub(crate) fn for_each_pair(
    layout: &Layout,
    row: &[u8],
    mut f: impl FnMut(&[u8; PAIR], [f32; 4], [f32; 4]),
) {
    for s in row.chunks_exact(layout.super_bytes()) {
        let header = match layout.header {
            0 => [0.0; 2],
            _ => header_values(s),
        };
        for pair in s[layout.header..].chunks_exact(layout.pair_bytes()) {
            let (a, b) = pair_scales(layout, &pair[layout.planes_bytes()..], header);
            f(&pair_values(layout, pair), a, b);
        }
    }
}

/// Rows a *lane block* holds: the AVX-512 kernel's layout, where lane `r`
/// of every 64-byte vector is row `r` of the block.
pub(crate) const LANES: usize = 16;

/// Re-lays `rows` rows of `row_bytes` bytes each (a multiple of 4; `rows` a
/// multiple of [`LANES`]) into lane blocks, in place: within a block of 16
/// rows, 4-byte word `d` of row `r` goes to byte `64 d + 4 r`. One 64-byte
/// load then holds the same word of 16 rows: the same 4 values, a scale or
/// a header of each. The bytes are the same bytes, moved; one block's worth
/// of memory is used besides.
pub(crate) fn interleave(bytes: &mut [u8], rows: usize, row_bytes: usize) {
    debug_assert_eq!(bytes.len(), rows * row_bytes);
    let mut rows_of = vec![0; LANES * row_bytes];
    for block in bytes.chunks_exact_mut(LANES * row_bytes) {
        rows_of.copy_from_slice(block);
        for (r, row) in rows_of.chunks_exact(row_bytes).enumerate() {
            for (d, word) in row.chunks_exact(4).enumerate() {
                block[64 * d + 4 * r..][..4].copy_from_slice(word);
            }
        }
    }
}

/// Undoes [`interleave`], in place.
pub(crate) fn deinterleave(bytes: &mut [u8], rows: usize, row_bytes: usize) {
    debug_assert_eq!(bytes.len(), rows * row_bytes);
    let mut lanes = vec![0; LANES * row_bytes];
    for block in bytes.chunks_exact_mut(LANES * row_bytes) {
        lanes.copy_from_slice(block);
        for (r, row) in block.chunks_exact_mut(row_bytes).enumerate() {
            for (d, word) in row.chunks_exact_mut(4).enumerate() {
                word.copy_from_slice(&lanes[64 * d + 4 * r..][..4]);
            }
        }
    }
}

/// Row `row`'s bytes out of interleaved `bytes`, in the row layout.
pub(crate) fn interleaved_row(bytes: &[u8], row: usize, row_bytes: usize) -> Vec<u8> {
    let block = &bytes[row / LANES * LANES * row_bytes..][..LANES * row_bytes];
    let r = row % LANES;
    (0..row_bytes / 4)
        .flat_map(|d| {
            let at = 64 * d + 4 * r;
            [block[at], block[at + 1], block[at + 2], block[at + 3]]
        })
        .collect()
}
