//! The compute ceiling of a kernel tier: its products' integer dot
//! instruction and its f32 multiply-add, run back to back on registers
//! with nothing to wait for. `textstream bench` times these loops to say
//! how close prefill (compute-bound) comes to what the CPU can do, as its
//! bandwidth probe does for decode.

use super::Tier;

/// Which instruction a peak loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peak {
    /// The tier's dot product of bytes, the products' inner loop: 512-bit
    /// `vpdpbusd` (AVX-512 VNNI), 256-bit `vpdpbusd` (AVX-VNNI), or
    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd` (AVX2).
    Int8,
    /// f32 multiply-adds on the tier's widest vectors (attention's and the
    /// other float work's instruction).
    F32,
}

/// Runs `rounds` rounds of `tier`'s `peak` loop on this thread; returns the
/// multiply-adds done and the loop's result (for [`Peak::Int8`] the sum of
/// all its products, equal to that count; for [`Peak::F32`] the sum of
/// its lanes, each 1). `None` for the portable tier, which has no one
/// instruction to time, and for a tier this CPU cannot run.
pub fn work(tier: Tier, peak: Peak, rounds: usize) -> Option<(u64, f64)> {
    if !tier.supported() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    {
        use super::x86;
        // Inputs the compiler cannot see, so that no round is folded away:
        // bytes of 1, and a multiplier of 1.
        let (ones, one) = (std::hint::black_box(0x0101_0101), std::hint::black_box(1.0));
        let (zero, xs) = std::hint::black_box((0, [[0x0101_0101; 8]; x86::PEAK_CHAINS]));
        // SAFETY: `tier.supported()` (checked above) detected every feature
        // of `tier` on this CPU; each loop enables a subset of its tier's
        // features (AVX-512 VNNI: avx512f, avx512bw, avx512vnni; AVX-VNNI:
        // avx2, avxvnni; AVX2: avx2, fma), and the AVX-VNNI tier's f32 loop
        // is the AVX2 one.
        let (result, per_instruction) = unsafe {
            match (tier, peak) {
                (Tier::Portable, _) => return None,
                (Tier::Avx512Vnni, Peak::Int8) => (x86::int8_peak_avx512(rounds, ones) as f64, 64),
                (Tier::AvxVnni, Peak::Int8) => (x86::int8_peak_avxvnni(rounds, ones) as f64, 32),
                (Tier::Avx2, Peak::Int8) => {
                    (x86::int8_peak_avx2(rounds, ones, zero, &xs) as f64, 32)
                }
                (Tier::Avx512Vnni, Peak::F32) => (x86::f32_peak_avx512(rounds, one) as f64, 16),
                (Tier::Avx2 | Tier::AvxVnni, Peak::F32) => {
                    (x86::f32_peak_avx2(rounds, one) as f64, 8)
                }
            }
        };
        let done = (rounds * x86::PEAK_CHAINS * per_instruction) as u64;
        Some((done, result))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (peak, rounds);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_runs_on_every_tier() {
        for tier in Tier::available() {
            for rounds in [0, 1, 7, 1000] {
                let int8 = work(tier, Peak::Int8, rounds);
                let float = work(tier, Peak::F32, rounds);
                if tier == Tier::Portable {
                    assert_eq!((int8, float), (None, None));
                    continue;
                }
                // Every byte product is 1 x 1: their sum is their count.
                let (done, sum) = int8.expect("a SIMD tier has an int8 loop");
                assert_eq!(sum, done as f64, "{tier:?} int8, {rounds} rounds");
                assert!(rounds == 0 || done >= 32 * rounds as u64);
                // Each lane stays 1 (x * 1 + 0): the sum counts the lanes.
                let (done, sum) = float.expect("a SIMD tier has an f32 loop");
                let lanes = if tier == Tier::Avx512Vnni { 16 } else { 8 };
                assert_eq!(done, (rounds * 12 * lanes) as u64, "{tier:?} f32");
                assert_eq!(sum, (12 * lanes) as f64, "{tier:?} f32 lanes");
            }
        }
    }

    #[test]
    fn a_tier_this_cpu_lacks_runs_nothing() {
        for tier in [Tier::Avx2, Tier::AvxVnni, Tier::Avx512Vnni] {
            if !tier.supported() {
                assert_eq!(work(tier, Peak::Int8, 10), None);
            }
        }
    }
}
