//! The kernels in plain Rust: any CPU (aarch64 included), and the reference
//! the SIMD tiers are tested against. Written as fixed-size loops over
//! 16-value groups so the compiler vectorizes them.

use super::layout::{self, QuantType, PAIR};
use super::Pairs;

/// `R` consecutive rows (`row_bytes` each, from `w`) of type `F` against `T`
/// tokens' activations: `out[r][t]`.
pub(super) fn dot<const F: u8, const R: usize, const T: usize>(
    w: &[u8],
    row_bytes: usize,
    xs: &[Pairs; T],
) -> [[f32; T]; R] {
    let layout = const { QuantType::at(F).layout() };
    let rounded = layout.rounded_sums();
    let (super_bytes, pair_bytes) = (layout.super_bytes(), layout.pair_bytes());
    let supers = row_bytes / super_bytes;
    std::array::from_fn(|r| {
        let mut totals = [0.0f32; T];
        let row = &w[r * row_bytes..][..supers * super_bytes];
        for (s, block) in row.chunks_exact(super_bytes).enumerate() {
            let header = match layout.header {
                0 => [0.0; 2],
                _ => layout::header_values(block),
            };
            for (p, pair) in block[layout.header..].chunks_exact(pair_bytes).enumerate() {
                let v = layout::pair_values(&layout, pair);
                let (a, b) = layout::pair_scales(&layout, &pair[layout.planes_bytes()..], header);
                for (t, x) in xs.iter().enumerate() {
                    let x = &x[s * layout.pairs + p];
                    totals[t] += pair_dot(&v, a, b, &x.q, &x.scales, x.sums(rounded));
                }
            }
        }
        totals
    })
}

/// One pair's share: `Σ_g a_g sx_g Σ q·qx + b_g s_g`.
fn pair_dot(
    v: &[u8; PAIR],
    a: [f32; 4],
    b: [f32; 4],
    q: &[u8; PAIR],
    x_scales: &[f32; 16],
    x_sums: &[f32; 4],
) -> f32 {
    let mut total = 0.0;
    for g in 0..4 {
        let mut dot = 0i32;
        for k in 16 * g..16 * (g + 1) {
            dot += v[k] as i32 * q[k] as i8 as i32;
        }
        total += a[g] * x_scales[4 * g] * dot as f32 + b[g] * x_sums[g];
    }
    total
}
