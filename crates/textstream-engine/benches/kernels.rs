//! The native backend's matrix products alone, at SmolLM2-135M's shapes: one
//! decode step's worth of matrices (30 blocks of Q4_1 Q/K/V, output, gate/up
//! and down, and the Q8_0 output projection), one token through all of them.
//! Reports bytes of weights read per second, the figure that bounds decode.
//!
//! ```sh
//! cargo bench -p textstream-engine --bench kernels
//! ```

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use textstream_engine::quant::{Activations, GgufBlocks, Matrix};

const HIDDEN: usize = 576;
const FEED_FORWARD: usize = 1536;
const QKV_ROWS: usize = 960;
const BLOCKS: usize = 30;
const VOCAB: usize = 49152;

/// Deterministic bytes that make valid GGUF blocks (small f16 scales).
fn gguf_bytes(kind: GgufBlocks, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let (block_bytes, scales) = match kind {
        GgufBlocks::Q4_1 => (20, 2),
        GgufBlocks::Q4_0 => (18, 1),
        GgufBlocks::Q8_0 => (34, 1),
    };
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut out = Vec::with_capacity(rows * cols / 32 * block_bytes);
    for _ in 0..rows * cols / 32 {
        for _ in 0..scales {
            out.extend_from_slice(&[0x00, 0x20]); // f16 0.0078
        }
        for _ in 0..block_bytes - 2 * scales {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            out.push(state as u8);
        }
    }
    out
}

fn model_matrices() -> Vec<Matrix> {
    let mut all = Vec::new();
    for b in 0..BLOCKS as u32 {
        for (rows, cols) in [
            (QKV_ROWS, HIDDEN),
            (HIDDEN, HIDDEN),
            (2 * FEED_FORWARD, HIDDEN),
            (HIDDEN, FEED_FORWARD),
        ] {
            let bytes = gguf_bytes(GgufBlocks::Q4_1, rows, cols, b * 4 + rows as u32);
            all.push(Matrix::from_gguf(GgufBlocks::Q4_1, &bytes, rows, cols).expect("matrix"));
        }
    }
    let bytes = gguf_bytes(GgufBlocks::Q8_0, VOCAB, HIDDEN, 7);
    all.push(Matrix::from_gguf(GgufBlocks::Q8_0, &bytes, VOCAB, HIDDEN).expect("matrix"));
    all
}

fn decode_step(c: &mut Criterion) {
    let matrices = model_matrices();
    let bytes: usize = matrices.iter().map(Matrix::bytes).sum();
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let x: Vec<f32> = (0..FEED_FORWARD)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let mut outs: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0.0; m.rows()]).collect();
    let mut scratch = Activations::new();
    let mut group = c.benchmark_group("kernels");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(30);
    group.bench_function(
        format!(
            "decode step, {} MB of weights, {threads} threads",
            bytes / 1_000_000
        ),
        |b| {
            b.iter(|| {
                pool.install(|| {
                    for (m, out) in matrices.iter().zip(&mut outs) {
                        m.matmul(&x[..m.cols()], out, &mut scratch);
                    }
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
