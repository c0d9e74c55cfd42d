//! Vectorizable f32 math that the forward pass and sampling share: `e^x`
//! over whole slices, which libm's `expf` (one call per value) is not.

/// Softmax numerators in place, `v = e^((v - max) * scale)`, and their sum,
/// in one pass: the sum runs in 16 lanes, then the lanes and the tail in
/// order. (Added one value at a time, the sum was a chain of dependent
/// additions: as long as the exponentials themselves, a fifth of a long
/// prompt's attention.)
#[inline(always)]
pub(crate) fn shifted_exp_sum(values: &mut [f32], max: f32, scale: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let (chunks, rest) = values.as_chunks_mut::<LANES>();
    for chunk in chunks {
        // The numerators into a local, then out and into the sums: written
        // and summed in one loop, the sums went through memory (with a
        // check that they did not overlap the values).
        let mut e = *chunk;
        e.iter_mut().for_each(|v| *v = fast_exp((*v - max) * scale));
        *chunk = e;
        for (lane, e) in lanes.iter_mut().zip(e) {
            *lane += e;
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for v in rest {
        *v = fast_exp((*v - max) * scale);
        total += *v;
    }
    total
}

/// `e^x`, written so that loops over slices vectorize (libm's `expf` is a
/// call per value and was a tenth of a long prompt's time). Cephes' single
/// precision method: `2^k * e^r` with `|r| <= ln 2 / 2` and a degree-6
/// polynomial for `e^r`, within 2 ulp of `expf` over the range softmax uses.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    // Beyond these e^x leaves f32's normal range (0 and infinity are not needed).
    let x = x.clamp(-87.3, 88.7);
    let k = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so that k * ln 2 is exact enough.
    let r = x - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((integer_bits(k) + 127) << 23) as u32)
}

/// A whole number `r` with `|r| < 2^22` as an `i32`: `r + 1.5 * 2^23` is
/// exact (its unit in the last place is 1) and its bits are `0x4B40_0000 + r`.
/// Vectorizes, where `r as i32` (saturating, NaN to 0) went lane by lane.
#[inline(always)]
pub(crate) fn integer_bits(r: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((r + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32)
}

/// `x` rounded to the nearest f16 (ties to even), as f32: what
/// `f16::from_f32(x).to_f32()` gives, inlined (through `half` it was a call
/// and a CPU check per value, 2 % of a batch of decode steps).
#[inline(always)]
pub(crate) fn round_to_f16(x: f32) -> f32 {
    /// The smallest normal f16, 2^-14.
    const MIN_NORMAL: f32 = half::f16::MIN_POSITIVE.to_f32_const();
    const MAX: f32 = half::f16::MAX.to_f32_const();
    let magnitude = x.abs();
    if x.is_nan() {
        return x;
    }
    let rounded = if magnitude < MIN_NORMAL {
        // Multiples of 2^-24: in [0.5, 0.5 + 2^-14) an f32's last place is
        // 2^-24, so the addition rounds (ties to even) and the subtraction is exact.
        (magnitude + 0.5) - 0.5
    } else {
        // Keep 10 of the 23 mantissa bits, ties to even (a carry moves into
        // the exponent, as it should).
        let bits = magnitude.to_bits();
        let kept = (bits + 0x0FFF + ((bits >> 13) & 1)) & !0x1FFF;
        let r = f32::from_bits(kept);
        if r > MAX {
            f32::INFINITY
        } else {
            r
        }
    };
    rounded.copysign(x)
}

/// The largest value (NaNs passed over, as `f32::max` does; -∞ for none),
/// in 16 lanes: the same value as a fold, which runs one compare at a time.
#[inline(always)]
pub(crate) fn max_f32(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    rest.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `Σ e^(v - shift)` over `values`, in f64 (sums of 16 lanes in f32 first).
#[inline(always)]
pub(crate) fn sum_exp_shifted(values: &[f32], shift: f32) -> f64 {
    const LANES: usize = 16;
    let mut chunks = values.chunks_exact(LANES);
    let mut total = 0.0f64;
    for chunk in &mut chunks {
        let mut lanes = [0.0f32; LANES];
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = fast_exp(v - shift);
        }
        total += f64::from(lanes.iter().sum::<f32>());
    }
    total
        + chunks
            .remainder()
            .iter()
            .map(|&v| f64::from(fast_exp(v - shift)))
            .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The 16-lane maximum is the fold's, NaNs and infinities included.
        #[test]
        fn lanes_maximum_is_the_folds(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => -1e6f32..1e6,
                    1 => proptest::strategy::Just(f32::NAN),
                    1 => proptest::strategy::Just(f32::INFINITY),
                    1 => proptest::strategy::Just(f32::NEG_INFINITY),
                ],
                0..100,
            ),
        ) {
            let fold = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            proptest::prop_assert_eq!(max_f32(&values).to_bits(), fold.to_bits());
        }
    }

    /// `round_to_f16` against `half` at every f16, the f32s on either side
    /// of it and of each halfway point between neighbours (where ties to
    /// even decide), and around the overflow threshold.
    #[test]
    fn rounding_to_f16_matches_half_at_every_edge() {
        let check = |x: f32| {
            let want = half::f16::from_f32(x).to_f32();
            let got = round_to_f16(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e} ({:#x}): {got:e} vs {want:e}",
                x.to_bits()
            );
        };
        let near = |x: f32| {
            [
                x,
                f32::from_bits(x.to_bits().wrapping_sub(1)),
                f32::from_bits(x.to_bits() + 1),
            ]
        };
        for bits in 0..=u16::MAX {
            let v = half::f16::from_bits(bits).to_f32();
            let next = half::f16::from_bits(bits.wrapping_add(1)).to_f32();
            for x in near(v) {
                check(x);
            }
            if v.is_finite() && next.is_finite() && v.signum() == next.signum() {
                // The halfway point is exact in f32 (f16 has 13 bits fewer).
                for x in near(((f64::from(v) + f64::from(next)) / 2.0) as f32) {
                    check(x);
                }
            }
        }
        for x in [
            65_519.0,
            65_520.0,
            65_521.0,
            1e6,
            f32::MAX,
            f32::INFINITY,
            f32::MIN_POSITIVE,
            1e-30,
            0.0,
            -0.0,
            f32::NAN,
        ] {
            for x in near(x).into_iter().chain(near(-x)) {
                check(x);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn rounding_to_f16_matches_half(bits in proptest::num::u32::ANY) {
            let x = f32::from_bits(bits);
            let (got, want) = (round_to_f16(x), half::f16::from_f32(x).to_f32());
            proptest::prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
        }
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (want, got) = (x.exp(), fast_exp(x));
            assert!(
                (got - want).abs() <= want * 4.0 * f32::EPSILON,
                "e^{x}: {got} vs {want}"
            );
            x += 0.013;
        }
        // Out of range: tiny or huge, never NaN or negative.
        assert!((0.0..1e-37).contains(&fast_exp(-1000.0)));
        assert!(fast_exp(1000.0) > 1e38);
        assert!(fast_exp(f32::NAN).is_nan());
    }

    #[test]
    fn sums_match_libm() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let want: f64 = values.iter().map(|&v| f64::from(v - 3.0).exp()).sum();
        let got = sum_exp_shifted(&values, 3.0);
        assert!((got - want).abs() <= want * 1e-6, "{got} vs {want}");
    }

    #[test]
    fn softmax_numerators_and_their_sum_match_libm() {
        // Every length up to past two chunks of 16, so every tail runs.
        for len in 0..40 {
            let mut values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.71).cos() * 9.0).collect();
            let max = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let want: Vec<f64> = values
                .iter()
                .map(|&v| (f64::from(v - max) * 0.125).exp())
                .collect();
            let total = shifted_exp_sum(&mut values, max, 0.125);
            for (got, want) in values.iter().zip(&want) {
                assert!(
                    (f64::from(*got) - want).abs() <= want * 1e-6,
                    "len {len}: {got} vs {want}"
                );
            }
            let want_total: f64 = want.iter().sum();
            assert!(
                (f64::from(total) - want_total).abs() <= want_total.max(1.0) * 1e-6,
                "len {len}: {total} vs {want_total}"
            );
        }
    }
}
