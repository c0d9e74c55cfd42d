//! The native backend's matrix products alone, at about SmolLM2-135M's shapes
//! (hidden width 768, not 576, so K-quant rows are whole blocks): one
//! decode step's worth of matrices (30 blocks of Q/K/V, output, gate/up and
//! down, and the output projection), one token through all of them, for each
//! common weight type on each kernel tier this CPU runs; and a 128-token
//! prompt through one block's matrices, and batches of 2 to 16 tokens
//! through the step. Reports bytes of weights read per second (the figure
//! that bounds decode), multiply-adds per second for prompts and tokens per
//! second for batches.
//!
//! ```sh
//! cargo bench -p textstream-engine --bench kernels
//! THREADS=1 TYPES=Q4_K,Q6_K cargo bench -p textstream-engine --bench kernels
//! BLOCKS=1 cargo bench -p textstream-engine --bench kernels -- "decode step"
//! ```
//!
//! `SHAPE=262144x640` benches one matrix of that shape (Gemma 3's output
//! projection) instead of a step. `BLOCKS=1` (one block's matrices, no output projection: about 5 MB, in
//! cache) measures the kernels' compute limit rather than memory's.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use textstream_engine::quant::{
    sample_bytes, Activations, GgufType, Matrix, QuantType, Tier, QUANT_TYPES,
};

const HIDDEN: usize = 768;
const FEED_FORWARD: usize = 1536;
const QKV_ROWS: usize = 960;
const BLOCKS: usize = 30;
const VOCAB: usize = 49152;
const PROMPT: usize = 128;
const BATCHES: [usize; 4] = [2, 4, 8, 16];

fn matrices(kind: QuantType, tier: Tier, blocks: usize, vocab: bool) -> Vec<Matrix> {
    let mut shapes = Vec::new();
    for _ in 0..blocks {
        shapes.extend([
            (QKV_ROWS, HIDDEN),
            (HIDDEN, HIDDEN),
            (2 * FEED_FORWARD, HIDDEN),
            (HIDDEN, FEED_FORWARD),
        ]);
    }
    if vocab {
        shapes.push((VOCAB, HIDDEN));
    }
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (rows, cols))| {
            let bytes = sample_bytes(kind, rows, cols, i as u32 + 1);
            Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols)
                .and_then(|m| m.with_tier(tier))
                .expect("matrix")
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let blocks: usize = std::env::var("BLOCKS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(BLOCKS);
    let shape: Option<(usize, usize)> = std::env::var("SHAPE").ok().map(|s| {
        let (rows, cols) = s.split_once('x').expect("SHAPE is ROWSxCOLS");
        (
            rows.parse().expect("SHAPE rows"),
            cols.parse().expect("SHAPE cols"),
        )
    });
    let types: Vec<QuantType> = match std::env::var("TYPES") {
        Ok(names) => QUANT_TYPES
            .into_iter()
            .filter(|t| {
                names
                    .split(',')
                    .any(|n| n.eq_ignore_ascii_case(&format!("{t:?}")))
            })
            .collect(),
        Err(_) => vec![
            QuantType::Q4_1,
            QuantType::Q8_0,
            QuantType::Q5_0,
            QuantType::Q4_K,
            QuantType::Q6_K,
        ],
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let widest = shape.map_or(FEED_FORWARD, |(_, cols)| cols.max(FEED_FORWARD));
    let x: Vec<f32> = (0..PROMPT * widest)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let mut scratch = Activations::new();
    let mut group = c.benchmark_group("kernels");
    group.sample_size(20);
    for kind in types {
        for tier in Tier::available() {
            let step = match shape {
                Some((rows, cols)) => {
                    let bytes = sample_bytes(kind, rows, cols, 1);
                    vec![Matrix::from_gguf(GgufType::Quant(kind), &bytes, rows, cols)
                        .and_then(|m| m.with_tier(tier))
                        .expect("matrix")]
                }
                None => matrices(kind, tier, blocks, blocks == BLOCKS),
            };
            let bytes: usize = step.iter().map(Matrix::bytes).sum();
            let mut outs: Vec<Vec<f32>> = step.iter().map(|m| vec![0.0; m.rows()]).collect();
            group.throughput(Throughput::Bytes(bytes as u64));
            group.bench_function(
                format!("decode step {kind:?} {}, {threads} threads", tier.name()),
                |b| {
                    b.iter(|| {
                        pool.install(|| {
                            for (m, out) in step.iter().zip(&mut outs) {
                                m.matmul(&x[..m.cols()], out, &mut scratch);
                            }
                        })
                    })
                },
            );
            // A batch: one token of each of `n` sequences through the step,
            // in tokens per second (a batch is as good as its weights are
            // read once for all of its tokens).
            for n in BATCHES {
                let mut outs: Vec<Vec<f32>> =
                    step.iter().map(|m| vec![0.0; n * m.rows()]).collect();
                group.throughput(Throughput::Elements(n as u64));
                group.bench_function(
                    format!("batch {n} {kind:?} {}, {threads} threads", tier.name()),
                    |b| {
                        b.iter(|| {
                            pool.install(|| {
                                for (m, out) in step.iter().zip(&mut outs) {
                                    m.matmul(&x[..n * m.cols()], out, &mut scratch);
                                }
                            })
                        })
                    },
                );
            }
            let block = match shape {
                Some(_) => step.clone(),
                None => matrices(kind, tier, 1, false),
            };
            let mut outs: Vec<Vec<f32>> =
                block.iter().map(|m| vec![0.0; PROMPT * m.rows()]).collect();
            let macs: usize = block.iter().map(|m| m.rows() * m.cols() * PROMPT).sum();
            group.throughput(Throughput::Elements(macs as u64));
            group.bench_function(
                format!(
                    "prompt {PROMPT} {kind:?} {}, {threads} threads",
                    tier.name()
                ),
                |b| {
                    b.iter(|| {
                        pool.install(|| {
                            for (m, out) in block.iter().zip(&mut outs) {
                                m.matmul(&x[..PROMPT * m.cols()], out, &mut scratch);
                            }
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
