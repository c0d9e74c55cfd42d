//! The kernels against the file's own values: every type's re-layout against
//! candle's dequantization, and every type's products on every tier this CPU
//! runs against exact products of the dequantized values.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::Device;
use proptest::prelude::*;

use super::*;

fn ggml(kind: QuantType) -> GgmlDType {
    match kind {
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q5_1 => GgmlDType::Q5_1,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q2_K => GgmlDType::Q2K,
        QuantType::Q3_K => GgmlDType::Q3K,
        QuantType::Q4_K => GgmlDType::Q4K,
        QuantType::Q5_K => GgmlDType::Q5K,
        QuantType::Q6_K => GgmlDType::Q6K,
    }
}

fn file_bytes(kind: QuantType, rows: usize, cols: usize, seed: &[u8]) -> Vec<u8> {
    let seed = seed
        .iter()
        .fold(0x9E37_79B9u32, |s, &b| s.rotate_left(5) ^ b as u32);
    sample_bytes(kind, rows, cols, seed)
}

/// candle's f32 values for the file bytes.
fn candle_values(kind: QuantType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let tensor = qtensor_from_ggml(ggml(kind), bytes, vec![rows, cols], &Device::Cpu)
        .expect("candle tensor");
    tensor
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("dequantize")
}

/// Columns that are whole blocks of `kind`: `blocks` of them (legacy types
/// also get an odd count, which leaves a half-empty last pair).
fn cols_for(kind: QuantType, blocks: usize) -> usize {
    kind.layout().block * blocks
}

fn all_rows(m: &Matrix) -> Vec<f32> {
    let mut out = vec![0.0; m.rows * m.cols];
    for (r, row) in out.chunks_exact_mut(m.cols).enumerate() {
        m.dequantize_row(r, row);
    }
    out
}

/// The f32 product of the matrix's own values with `x`.
fn exact(m: &Matrix, x: &[f32]) -> Vec<f32> {
    let tokens = x.len() / m.cols;
    let values = all_rows(m);
    let mut out = vec![0.0; tokens * m.rows];
    for (r, row) in values.chunks_exact(m.cols).enumerate() {
        for t in 0..tokens {
            out[t * m.rows + r] = row
                .iter()
                .zip(&x[t * m.cols..][..m.cols])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Products must match the exact ones to within the activations' rounding:
/// each value moves by at most half a step (`max|x| / 254` per block) plus
/// what rounding the block's scale to f16 adds (2^-11 of 127 steps).
fn assert_close(m: &Matrix, x: &[f32]) -> Result<(), TestCaseError> {
    let mut out = vec![0.0; x.len() / m.cols * m.rows];
    m.matmul(x, &mut out, &mut Activations::new());
    let want = exact(m, x);
    let values = all_rows(m);
    for (i, (got, want)) in out.iter().zip(&want).enumerate() {
        let (t, r) = (i / m.rows, i % m.rows);
        let row = &values[r * m.cols..][..m.cols];
        let x = &x[t * m.cols..][..m.cols];
        let bound: f32 = x
            .chunks(BLOCK)
            .zip(row.chunks(BLOCK))
            .map(|(x, w)| {
                let step = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0 * 0.57;
                step * w.iter().map(|v| v.abs()).sum::<f32>()
            })
            .sum();
        prop_assert!(
            (got - want).abs() <= bound * 1.01 + 1e-4 * (1.0 + want.abs()),
            "{:?} on {:?}, token {t} row {r}: {got} vs {want} (bound {bound})",
            m.segments.iter().map(|s| s.rows).collect::<Vec<_>>(),
            m.tier
        );
    }
    Ok(())
}

#[test]
fn every_type_keeps_the_files_values() {
    let seed: Vec<u8> = (0..=255).collect();
    for kind in QUANT_TYPES {
        // 16 rows: one lane block, on the AVX-512 tier.
        for (blocks, rows) in [(1, 3), (3, 3), (2, 16)] {
            let cols = cols_for(kind, blocks);
            let bytes = file_bytes(kind, rows, cols, &seed);
            let m = Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols).expect("matrix");
            let want = candle_values(kind, &bytes, rows, cols);
            let got = all_rows(&m);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // `a q + b` against candle's `a (q - z)` or `d sc q - m`: one
                // rounding of f32 apart at most.
                let tolerance = 4.0 * f32::EPSILON * (w.abs() + 1.0);
                assert!(
                    (g - w).abs() <= tolerance,
                    "{kind:?} value {i}: {g} vs candle's {w}"
                );
            }
        }
    }
}

#[test]
fn lane_blocks_move_bytes_and_change_no_value() {
    let seed: Vec<u8> = (0..=255).rev().collect();
    let quant_bytes = |m: &Matrix| match &m.segments[0].data {
        Data::Quant { bytes, .. } => bytes.to_vec(),
        _ => unreachable!("a quantized matrix"),
    };
    for kind in QUANT_TYPES {
        let (rows, cols) = (32, cols_for(kind, 2));
        let bytes = file_bytes(kind, rows, cols, &seed);
        let m = Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols)
            .expect("matrix")
            .with_tier(Tier::Portable)
            .expect("portable");
        assert!(
            !m.segments[0].lanes(),
            "rows stay rows off the AVX-512 tier"
        );
        let in_rows = quant_bytes(&m);
        let row_bytes = in_rows.len() / rows;
        let mut lanes = in_rows.clone();
        layout::interleave(&mut lanes, rows, row_bytes);
        assert_ne!(lanes, in_rows);
        let mut back = lanes.clone();
        layout::deinterleave(&mut back, rows, row_bytes);
        assert_eq!(back, in_rows);
        for row in [0, 5, 16, 31] {
            assert_eq!(
                layout::interleaved_row(&lanes, row, row_bytes),
                in_rows[row * row_bytes..][..row_bytes]
            );
        }
        if Tier::Avx512Vnni.supported() {
            let l = m.clone().with_tier(Tier::Avx512Vnni).expect("avx512");
            assert!(l.segments[0].lanes(), "{kind:?}: whole blocks of 16 rows");
            assert_eq!(quant_bytes(&l), lanes);
            assert_eq!(all_rows(&l), all_rows(&m), "{kind:?}: the same values");
            let back = l.with_tier(Tier::Portable).expect("portable");
            assert_eq!(quant_bytes(&back), in_rows);
        }
    }
}

#[test]
fn stored_bytes_stay_near_the_files() {
    for kind in QUANT_TYPES {
        let layout = kind.layout();
        let cols = 4 * layout.block.max(PAIR);
        let file = cols / layout.block * layout.file_block_bytes;
        let m = Matrix::from_gguf(GgufType::Quant(kind), &vec![0; file], 1, cols).expect("matrix");
        // At most 6 % more (Q3_K: 116 bytes per 110), never widened.
        assert!(
            m.bytes() * 100 <= file * 106,
            "{kind:?}: {} bytes for {file} in the file",
            m.bytes()
        );
    }
}

#[test]
fn float_types_are_read_as_they_are() {
    let values = [1.5f32, -2.25, 0.0, 3.0e-3];
    let mut x = vec![0.0f32; 32];
    x[..4].copy_from_slice(&values);
    let f32_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = x
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16_bytes: Vec<u8> = x
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    for (kind, bytes) in [
        (GgufType::F32, f32_bytes),
        (GgufType::F16, f16_bytes),
        (GgufType::BF16, bf16_bytes),
    ] {
        let m = Matrix::from_gguf(kind, &bytes, 1, 32).expect("matrix");
        let mut row = vec![0.0; 32];
        m.dequantize_row(0, &mut row);
        let want: Vec<f32> = match kind {
            GgufType::F16 => x.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
            GgufType::BF16 => x.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
            _ => x.clone(),
        };
        assert_eq!(row, want, "{kind:?}");
        let mut out = [0.0];
        m.matmul(&x, &mut out, &mut Activations::new());
        assert_eq!(
            out[0],
            want.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>(),
            "{kind:?}"
        );
    }
}

#[test]
fn wrong_sizes_are_errors() {
    let q8 = GgufType::Quant(QuantType::Q8_0);
    assert!(matches!(
        Matrix::from_gguf(q8, &[0; 33], 1, 32),
        Err(QuantError::Size { .. })
    ));
    assert_eq!(
        Matrix::from_gguf(GgufType::Quant(QuantType::Q4_K), &[0; 144], 1, 128).unwrap_err(),
        QuantError::PartialBlock {
            cols: 128,
            block: 256
        }
    );
    assert!(matches!(
        Matrix::from_f32(vec![0.0; 20], 2, 20),
        Err(QuantError::Size { .. })
    ));
}

#[test]
fn kernel_requests_name_what_this_cpu_runs() {
    assert_eq!(Tier::from_request(None), Ok(Tier::detected()));
    assert_eq!(Tier::from_request(Some("PORTABLE")), Ok(Tier::Portable));
    let Err(QuantError::Kernel(message)) = Tier::from_request(Some("sse9")) else {
        panic!("an unknown kernel is refused");
    };
    assert!(
        message.contains("avx2") && message.contains("portable"),
        "{message}"
    );
    for tier in TIERS {
        match tier.supported() {
            true => assert_eq!(Tier::from_request(Some(tier.name())), Ok(tier)),
            false => assert!(matches!(
                Tier::from_request(Some(tier.name())),
                Err(QuantError::Kernel(_))
            )),
        }
    }
    let m = Matrix::from_f32(vec![0.0; 32], 1, 32).expect("matrix");
    for tier in TIERS.into_iter().filter(|t| !t.supported()) {
        assert!(
            m.clone().with_tier(tier).is_err(),
            "{tier:?} is refused where the CPU lacks it"
        );
    }
}

#[test]
fn stacked_parts_of_different_types_are_one_matrix() {
    let seed: Vec<u8> = (7..200).collect();
    let cols = 256;
    let parts = [
        (QuantType::Q5_0, 5),
        (QuantType::Q8_0, 3),
        (QuantType::Q5_0, 2),
        (QuantType::Q6_K, 4),
    ];
    let mut stacked: Option<Matrix> = None;
    let mut singles = Vec::new();
    for (kind, rows) in parts {
        let bytes = file_bytes(kind, rows, cols, &seed);
        let m = Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols).expect("part");
        singles.push(m.clone());
        match &mut stacked {
            Some(s) => s.append_rows(m).expect("append"),
            None => stacked = Some(m),
        }
    }
    let stacked = stacked.expect("parts");
    assert_eq!(stacked.rows(), 14);
    assert_eq!(stacked.segments.len(), 4, "a type change starts a segment");
    for tokens in [1, 5] {
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 20.0)
            .collect();
        let mut whole = vec![0.0; tokens * 14];
        stacked.matmul(&x, &mut whole, &mut Activations::new());
        let mut row = 0;
        for m in &singles {
            let mut part = vec![0.0; tokens * m.rows()];
            m.matmul(&x, &mut part, &mut Activations::new());
            for t in 0..tokens {
                assert_eq!(
                    part[t * m.rows()..][..m.rows()],
                    whole[t * 14 + row..][..m.rows()]
                );
            }
            row += m.rows();
        }
    }
    let narrow = Matrix::from_f32(vec![0.0; 32], 1, 32).expect("narrow");
    assert_eq!(
        stacked.clone().append_rows(narrow),
        Err(QuantError::Mismatch)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every type, on every tier this CPU runs, for 1 to 9 tokens (the decode
    /// path, the prompt path and its remainders) and 16 to 40 (the lane
    /// kernel's 16 and 32 tokens at once), against exact products; whole
    /// blocks of 16 rows as often (the AVX-512 tier's lane blocks).
    #[test]
    fn products_match_the_exact_ones(
        type_index in 0usize..QUANT_TYPES.len(),
        rows in prop_oneof![1usize..12, (1usize..5).prop_map(|k| 16 * k)],
        blocks in 1usize..4,
        tokens in prop_oneof![3 => 1usize..10, 1 => 16usize..41],
        seed in proptest::collection::vec(any::<u8>(), 8..64),
        x in proptest::collection::vec(-4.0f32..4.0, 40 * 3 * 256),
    ) {
        let kind = QUANT_TYPES[type_index];
        let cols = cols_for(kind, blocks);
        let bytes = file_bytes(kind, rows, cols, &seed);
        let m = Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols).expect("matrix");
        for tier in Tier::available() {
            assert_close(&m.clone().with_tier(tier).expect("tier"), &x[..tokens * cols])?;
        }
    }

    /// The SIMD tiers compute the portable kernel's sums (up to the order of
    /// f32 additions), for each type.
    #[test]
    fn tiers_agree_with_the_portable_kernel(
        type_index in 0usize..QUANT_TYPES.len(),
        blocks in 1usize..5,
        tokens in 1usize..6,
        rows in prop_oneof![Just(7usize), Just(16), Just(48)],
        seed in proptest::collection::vec(any::<u8>(), 8..64),
        x in proptest::collection::vec(-4.0f32..4.0, 5 * 4 * 256),
    ) {
        let kind = QUANT_TYPES[type_index];
        let cols = cols_for(kind, blocks);
        let bytes = file_bytes(kind, rows, cols, &seed);
        let m = Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols).expect("matrix");
        let x = &x[..tokens * cols];
        let run = |tier: Tier| {
            let mut out = vec![0.0; tokens * rows];
            m.clone().with_tier(tier).expect("tier").matmul(x, &mut out, &mut Activations::new());
            out
        };
        let reference = run(Tier::Portable);
        let scale = reference.iter().fold(1.0f32, |a, v| a.max(v.abs()));
        for tier in Tier::available() {
            for (i, (a, b)) in run(tier).iter().zip(&reference).enumerate() {
                prop_assert!((a - b).abs() <= 1e-5 * scale, "{:?} {:?} output {}: {} vs portable {}", kind, tier, i, a, b);
            }
        }
    }

    /// A token's outputs do not depend on the tokens beside it: alone, in a
    /// batch, or in a long prompt (past a block of tokens and a tile of
    /// rows), on every tier, bit for bit. Batched sequences and chunked
    /// prompts get exactly what they would get alone.
    #[test]
    fn a_token_gets_the_same_bits_in_any_batch(
        type_index in 0usize..QUANT_TYPES.len(),
        float in any::<bool>(),
        rows in prop_oneof![1usize..90, (1usize..6).prop_map(|k| 16 * k)],
        tokens in 2usize..(TOKEN_BLOCK + 7),
        seed in proptest::collection::vec(any::<u8>(), 8..64),
    ) {
        let kind = QUANT_TYPES[type_index];
        let cols = cols_for(kind, 1);
        let mut m = Matrix::from_gguf(GgufType::Quant(kind), &file_bytes(kind, rows, cols, &seed), rows, cols).expect("matrix");
        if float {
            // A float segment below the quantized one.
            let values = (0..rows * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
            m.append_rows(Matrix::from_f32(values, rows, cols).expect("f32")).expect("append");
        }
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 31 + seed[0] as usize) % 97) as f32 / 20.0 - 2.4)
            .collect();
        for tier in Tier::available() {
            let m = m.clone().with_tier(tier).expect("tier");
            let mut together = vec![0.0; tokens * m.rows()];
            m.matmul(&x, &mut together, &mut Activations::new());
            for t in 0..tokens {
                let mut alone = vec![0.0; m.rows()];
                m.matmul(&x[t * cols..][..cols], &mut alone, &mut Activations::new());
                let got = &together[t * m.rows()..][..m.rows()];
                prop_assert!(
                    alone.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{:?} {:?} token {} of {}: alone {:?}, together {:?}", kind, tier, t, tokens, alone, got
                );
            }
        }
    }
}

/// Activation rounding as first written (scalar): `f32::max`, `round() as i8`.
fn quantize_block_scalar(block: &[f32], lanes: &mut [u8]) -> RoundedBlock {
    // NaN never counts (it is not greater than anything). Not `f32::max`,
    // which should mean the same, but cross-built for aarch64 and run under
    // qemu it kept a trailing NaN (31 zeros and a NaN: scale NaN).
    let max = block
        .iter()
        .fold(0.0f32, |m, x| if x.abs() > m { x.abs() } else { m });
    let scale = max / ACTIVATION_MAX;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut sums = [0i32; 2];
    for (k, (lane, &x)) in lanes.iter_mut().zip(block).enumerate() {
        let q = (x * inverse).round() as i8;
        sums[k / 16] += q as i32;
        *lane = q as u8;
    }
    let scale = f16::from_f32(scale).to_f32();
    RoundedBlock {
        scale,
        exact_sums: sums.map(|s| scale * s as f32),
        counts: sums,
        rounded_sum: (f16::from_f32((sums[0] + sums[1]) as f32) * f16::from_f32(scale)).to_f32(),
    }
}

/// Any f32 at all, the awkward ones often: NaN, infinities, zeros of both
/// signs, denormals (a denormal maximum has an infinite inverse scale) and
/// values exactly halfway between two lanes.
fn any_activation() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(-0.0f32),
        1 => (1u32..0x0080_0000).prop_map(f32::from_bits),
        1 => (-127i32..=127).prop_map(|k| k as f32 + 0.5),
        1 => any::<u32>().prop_map(f32::from_bits),
    ]
}

proptest! {
    /// The vectorized rounding of a block of activations gives exactly the
    /// lanes and sums of the scalar one, whatever the values.
    #[test]
    fn block_rounding_is_the_scalar_rounding(
        block in prop_oneof![
            proptest::collection::vec(any_activation(), BLOCK),
            // Only denormals and zeros: the maximum itself is denormal.
            proptest::collection::vec(
                prop_oneof![(0u32..0x0080_0000).prop_map(f32::from_bits), Just(-0.0f32)],
                BLOCK,
            ),
        ],
    ) {
        let (mut fast, mut slow) = ([0u8; BLOCK], [0u8; BLOCK]);
        let got = quantize_block(&block, &mut fast);
        let want = quantize_block_scalar(&block, &mut slow);
        prop_assert_eq!(fast, slow);
        prop_assert_eq!(got.scale.to_bits(), want.scale.to_bits());
        prop_assert_eq!(got.exact_sums.map(f32::to_bits), want.exact_sums.map(f32::to_bits));
        prop_assert_eq!(got.rounded_sum.to_bits(), want.rounded_sum.to_bits());
        prop_assert_eq!(got.counts, want.counts);
    }
}

/// A pair's record as bits, to compare two roundings exactly.
#[cfg(target_arch = "x86_64")]
fn pair_bits(pair: &XPair) -> (Vec<u8>, Vec<u32>, [i32; 4]) {
    let floats = pair
        .scales
        .iter()
        .chain(&pair.exact)
        .chain(&pair.rounded)
        .chain(&pair.exact_blocks)
        .chain(&pair.rounded_blocks)
        .map(|f| f.to_bits())
        .collect();
    (pair.q.to_vec(), floats, pair.counts)
}

#[cfg(target_arch = "x86_64")]
proptest! {
    /// The AVX-512 rounding of a token's activations writes exactly the
    /// records the generic one does, whole pairs and a last partial one
    /// alike, whatever the values.
    #[test]
    fn avx512_token_rounding_is_the_generic_rounding(
        blocks in proptest::collection::vec(
            prop_oneof![
                // Any values at all.
                proptest::collection::vec(any_activation(), BLOCK),
                // Only denormals and zeros: the maximum itself is denormal.
                proptest::collection::vec(
                    prop_oneof![(0u32..0x0080_0000).prop_map(f32::from_bits), Just(-0.0f32)],
                    BLOCK,
                ),
                // A maximum of 127 * 2^e, the rest exactly halfway between
                // two lanes (ties round away from zero).
                (-4i32..4, proptest::collection::vec(-127i32..127, BLOCK - 1)).prop_map(|(e, ks)| {
                    let s = 2f32.powi(e);
                    std::iter::once(127.0 * s).chain(ks.into_iter().map(|k| (k as f32 + 0.5) * s)).collect()
                }),
            ],
            0..10,
        ),
        tail in proptest::collection::vec(any_activation(), 0..BLOCK),
    ) {
        if !Tier::Avx512Vnni.supported() {
            return Ok(());
        }
        // Whole blocks, then a partial one (rounded as zeros).
        let x: Vec<f32> = blocks.into_iter().flatten().chain(tail).collect();
        let pairs = x.len().div_ceil(PAIR);
        let (mut fast, mut slow) = (vec![EMPTY_PAIR; pairs], vec![EMPTY_PAIR; pairs]);
        #[allow(unsafe_code)]
        // SAFETY: the CPU has the tier's features (checked above).
        unsafe { x86::quantize_token(&x, &mut fast) };
        quantize_token(&x, &mut slow);
        for (p, (f, s)) in fast.iter().zip(&slow).enumerate() {
            prop_assert_eq!(pair_bits(f), pair_bits(s), "pair {} of {}", p, pairs);
        }
    }
}

/// The bits a float has, with every NaN as one (conversions may differ in
/// a NaN's payload, never in whether it is one).
fn float_bits(v: f32) -> u32 {
    if v.is_nan() {
        f32::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

#[test]
fn every_f16_widens_exactly_and_narrows_back() {
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    // Lengths that leave every tail after whole vectors of 8 and 16.
    for len in [all.len(), all.len() - 1, all.len() - 7, 5, 0] {
        let mut wide = vec![0.0f32; len];
        widen_f16(&all[..len], &mut wide);
        for (h, &w) in all.iter().zip(&wide) {
            assert_eq!(
                float_bits(w),
                float_bits(h.to_f32()),
                "{:#06x}",
                h.to_bits()
            );
        }
        let mut back = vec![f16::ZERO; len];
        narrow_f16(&wide, &mut back);
        for (h, b) in all.iter().zip(&back) {
            if h.is_nan() {
                assert!(b.is_nan(), "{:#06x}", h.to_bits());
            } else if h.is_infinite() {
                // Infinities saturate to the largest finite f16.
                assert_eq!(b.to_f32(), h.to_f32().signum() * F16_MAX);
            } else {
                assert_eq!(b.to_bits(), h.to_bits());
            }
        }
    }
}

proptest! {
    /// Narrowing rounds any float as `f16::from_f32` does (to nearest, ties
    /// to even, underflow through the denormals), except that it saturates
    /// at the largest finite f16 where that would give an infinity.
    #[test]
    fn narrowing_rounds_as_from_f32(
        values in proptest::collection::vec(
            prop_oneof![
                4 => -70_000.0f32..70_000.0,
                2 => -1e-4f32..1e-4,
                1 => any_activation(),
                // Exactly halfway between two f16s: ties go to the even one.
                1 => (0u16..0x7bff).prop_map(|h| {
                    let (a, b) = (f16::from_bits(h).to_f32(), f16::from_bits(h + 1).to_f32());
                    (a + b) / 2.0
                }),
            ],
            0..40,
        ),
    ) {
        let mut narrow = vec![f16::ZERO; values.len()];
        narrow_f16(&values, &mut narrow);
        for (&v, n) in values.iter().zip(&narrow) {
            let want = f16::from_f32(v);
            let want = if want.is_infinite() { want.to_f32().signum() * F16_MAX } else { want.to_f32() };
            prop_assert_eq!(float_bits(n.to_f32()), float_bits(want), "{}", v);
        }
    }
}
