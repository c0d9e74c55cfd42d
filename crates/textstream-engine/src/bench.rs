//! Throughput figures for one model file: load time, time to first token,
//! prefill and decode speed, peak memory; and the machine's bounds on them:
//! the memory read bandwidth (decode reads every weight per token) and the
//! kernel tier's compute peak (prefill is compute-bound).
//!
//! [`run_bench`] loads the model, then for each prompt length runs a prompt
//! of exactly that many tokens (a fixed English text's tokens, repeated) and
//! greedily generates a fixed number of tokens, ignoring stop tokens so that
//! every run decodes the same count. The loop is [`generate`] itself
//! ([`GenerateConfig::ignore_stop_ids`]), with a streamer that keeps nothing
//! (streaming costs well under 1 % of a step; see `benches/overhead.rs`).
//!
//! `scripts/bench_llamacpp.py` measures llama.cpp the same way, so that the
//! two reports can be printed side by side.

use std::path::Path;
use std::time::{Duration, Instant};

use textstream::{Closed, Streamer};

use crate::generate::{generate, GenerateConfig};
use crate::model::{LoadOptions, Model, Session};
use crate::quant::peak::Peak;
use crate::EngineError;

/// The prompt lengths of the standard comparison, in tokens.
pub const DEFAULT_PROMPT_LENGTHS: &[usize] = &[8, 128, 1024];

/// Tokens generated per run in the standard comparison.
pub const DEFAULT_NEW_TOKENS: usize = 256;

/// The text whose tokens, repeated, make every prompt (the same in
/// `scripts/bench_llamacpp.py`).
pub const PROMPT_TEXT: &str = "The sky is blue because molecules in the air scatter \
    short wavelengths of sunlight more strongly than long ones. ";

/// Runs per prompt length in the standard comparison, whose median
/// figures are reported (one run of a 128-token prompt lasts well under a
/// second, and a busy neighbour on a shared machine can halve it).
pub const DEFAULT_REPEATS: usize = 3;

/// Tokens in the warm-up run before the measured ones (thread pool start,
/// first-touch page faults), prompt and generated alike.
const WARMUP_TOKENS: usize = 8;

/// Figures for one prompt length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchRun {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (all decode steps plus the token sampled after prefill).
    pub new_tokens: usize,
    /// From the start of prefill to the first sampled token.
    pub ttft: Duration,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_second: f64,
    /// Tokens per second of decode steps (forward pass and sampling).
    pub decode_tokens_per_second: f64,
    /// Multiply-adds of attention over the prompt (native backend only).
    pub prompt_attention_macs: Option<u64>,
}

impl BenchRun {
    /// Prefill's compute bound, in tokens per second: the prompt's
    /// products at the int8 peak and its attention at the f32 peak, each
    /// alone on every thread (norms, rounding and the rest left out).
    pub fn prefill_bound(&self, report: &BenchReport) -> Option<f64> {
        let products = report.prompt_macs_per_token? as f64 * self.prompt_tokens as f64;
        let seconds = products / report.int8_macs_per_second?
            + self.prompt_attention_macs? as f64 / report.f32_fmas_per_second?;
        Some(self.prompt_tokens as f64 / seconds)
    }
}

/// What [`run_bench`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// From opening the file to a usable model.
    pub load: Duration,
    /// The kernel tier the products ran on (`avx512vnni`, `avx2`, ...).
    pub kernel: &'static str,
    /// Bytes of weights one decode step reads (native backend only).
    pub weight_bytes_per_token: Option<usize>,
    /// Bytes per second the model's threads read from memory (see
    /// [`read_bandwidth`]): with the bytes per token, decode's upper bound.
    pub read_bytes_per_second: f64,
    /// Multiply-adds of one prompt token's products (native backend only).
    pub prompt_macs_per_token: Option<usize>,
    /// Byte multiply-adds per second the threads' integer dot instruction
    /// does at its peak (see [`compute_peak`]): with the multiply-adds per
    /// token, prefill's upper bound. `None` on the portable tier.
    pub int8_macs_per_second: Option<f64>,
    /// f32 multiply-adds per second at the threads' peak (attention's
    /// instruction). `None` on the portable tier.
    pub f32_fmas_per_second: Option<f64>,
    /// One entry per prompt length, in the order asked.
    pub runs: Vec<BenchRun>,
    /// The process's peak resident memory (`VmHWM`), in bytes, after all
    /// runs; `None` where `/proc/self/status` is unavailable.
    pub peak_rss_bytes: Option<u64>,
}

impl BenchReport {
    /// The report as one JSON object, the shape `scripts/bench_llamacpp.py` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "prompt_tokens": r.prompt_tokens,
                    "new_tokens": r.new_tokens,
                    "ttft_ms": r.ttft.as_secs_f64() * MS_PER_S,
                    "prefill_tok_s": r.prefill_tokens_per_second,
                    "decode_tok_s": r.decode_tokens_per_second,
                    "prefill_bound_tok_s": r.prefill_bound(self),
                })
            })
            .collect();
        serde_json::json!({
            "engine": "textstream",
            "load_ms": self.load.as_secs_f64() * MS_PER_S,
            "kernel": self.kernel,
            "weight_mib_per_token": self.weight_bytes_per_token.map(|b| b as f64 / BYTES_PER_MIB),
            "read_gib_s": self.read_bytes_per_second / BYTES_PER_MIB / 1024.0,
            "decode_limit_tok_s": self.weight_bytes_per_token.map(|b| self.read_bytes_per_second / b as f64),
            "peak_rss_mib": self.peak_rss_bytes.map(|b| b as f64 / BYTES_PER_MIB),
            "prompt_macs_per_token": self.prompt_macs_per_token,
            "int8_peak_g_s": self.int8_macs_per_second.map(|r| r / 1e9),
            "f32_fma_peak_g_s": self.f32_fmas_per_second.map(|r| r / 1e9),
            "runs": runs,
        })
    }
}

const MS_PER_S: f64 = 1e3;
const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Benchmarks the model at `model_path` with the default [`LoadOptions`].
pub fn run_bench(
    model_path: &Path,
    prompt_lengths: &[usize],
    new_tokens: usize,
) -> Result<BenchReport, EngineError> {
    run_bench_with(
        model_path,
        LoadOptions::default(),
        prompt_lengths,
        new_tokens,
        DEFAULT_REPEATS,
    )
}

/// Benchmarks the model at `model_path` loaded with `options`: `repeats`
/// runs per prompt length, each generating `new_tokens` tokens greedily;
/// each figure is the median of its runs (of an even count, the higher of
/// the middle two).
pub fn run_bench_with(
    model_path: &Path,
    options: LoadOptions,
    prompt_lengths: &[usize],
    new_tokens: usize,
    repeats: usize,
) -> Result<BenchReport, EngineError> {
    for (field, value) in [("new_tokens", new_tokens), ("repeats", repeats)] {
        if value == 0 {
            return Err(EngineError::InvalidConfig {
                field,
                reason: "must be at least 1".to_owned(),
            });
        }
    }
    let threads = options.threads;
    let started = Instant::now();
    let model = Model::load_with(model_path, options)?;
    let load = started.elapsed();

    let text_ids = model.tokenizer().encode(PROMPT_TEXT, false)?;
    if text_ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let prompt = |len: usize| {
        text_ids
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect::<Vec<_>>()
    };

    let mut session = model.session();
    measure(&mut session, &prompt(WARMUP_TOKENS), WARMUP_TOKENS)?;
    let runs = prompt_lengths
        .iter()
        .map(|&len| {
            let runs = (0..repeats)
                .map(|_| measure(&mut session, &prompt(len), new_tokens))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(BenchRun {
                prompt_attention_macs: model.prompt_attention_macs(len),
                ..median(&runs)
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Before the probe, whose buffer would count.
    let peak_rss_bytes = peak_rss_bytes();
    Ok(BenchReport {
        load,
        kernel: crate::quant::Tier::selected().map_or("portable", |t| t.name()),
        weight_bytes_per_token: model.weight_bytes_per_token(),
        read_bytes_per_second: read_bandwidth(threads, BANDWIDTH_PROBE_BYTES),
        prompt_macs_per_token: model.prompt_macs_per_token(),
        int8_macs_per_second: compute_peak(threads, Peak::Int8),
        f32_fmas_per_second: compute_peak(threads, Peak::F32),
        runs,
        peak_rss_bytes,
    })
}

/// Bytes the bandwidth probe reads: far beyond any cache.
const BANDWIDTH_PROBE_BYTES: usize = 512 << 20;

/// Bytes per second `threads` threads read from memory: the best of a few
/// passes summing a `bytes`-long buffer (written first, so its pages exist),
/// split in 1 MiB pieces as a decode step splits its rows.
pub fn read_bandwidth(threads: usize, bytes: usize) -> f64 {
    use rayon::prelude::*;
    const PASSES: usize = 4;
    const PIECE: usize = 1 << 17;
    let Ok(pool) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
    else {
        return f64::NAN;
    };
    let buffer: Vec<u64> = vec![1; bytes / 8];
    let mut best = f64::NAN;
    let mut total = 0u64;
    for _ in 0..PASSES {
        let started = Instant::now();
        total = total.wrapping_add(pool.install(|| {
            buffer
                .par_chunks(PIECE)
                .map(|piece| {
                    crate::quant::vectorized(
                        #[inline(always)]
                        || piece.iter().fold(0u64, |a, &v| a.wrapping_add(v)),
                    )
                })
                .reduce(|| 0, u64::wrapping_add)
        }));
        let rate = (buffer.len() * 8) as f64 / started.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    // Every word is 1: a sum that is not the count means the reads were skipped.
    assert_eq!(
        total,
        (PASSES * buffer.len()) as u64,
        "the probe read every word"
    );
    best
}

/// How long one pass of the compute probe runs at least.
const PEAK_PASS: Duration = Duration::from_millis(30);

/// Multiply-adds per second `threads` threads do at once with the selected
/// tier's `peak` instruction ([`crate::quant::peak`]): the best of a few
/// passes, each long enough to time well. `None` on the portable tier.
pub fn compute_peak(threads: usize, peak: Peak) -> Option<f64> {
    const PASSES: usize = 3;
    let tier = crate::quant::Tier::selected().ok()?;
    // No rounds: only whether the tier has a loop to time (not the portable one).
    crate::quant::peak::work(tier, peak, 0)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .ok()?;
    let pass = |rounds: usize| {
        let started = Instant::now();
        let done: u64 = pool
            .broadcast(|_| crate::quant::peak::work(tier, peak, rounds).map_or(0, |(n, _)| n))
            .into_iter()
            .sum();
        (done, started.elapsed())
    };
    // Rounds doubled until a pass takes long enough.
    let mut rounds = 1 << 12;
    while pass(rounds).1 < PEAK_PASS && rounds < 1 << 30 {
        rounds *= 2;
    }
    (0..PASSES)
        .map(|_| pass(rounds))
        .map(|(done, took)| done as f64 / took.as_secs_f64())
        .reduce(f64::max)
}

/// A streamer that keeps nothing: the benchmark times the model alone.
struct Discard;

impl Streamer for Discard {
    fn put(&mut self, _ids: &[u32]) -> Result<(), Closed> {
        Ok(())
    }

    fn finish(&mut self, _reason: textstream::FinishReason) {}

    fn fail(&mut self, _error: Box<dyn std::error::Error + Send + Sync>) {}
}

/// Prefill `prompt`, then `new_tokens - 1` decode steps, greedily, through
/// [`generate`].
fn measure(
    session: &mut Session,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<BenchRun, EngineError> {
    let config = GenerateConfig {
        max_new_tokens: new_tokens,
        ignore_stop_ids: true,
        ..GenerateConfig::default()
    };
    let timings = generate(session, prompt, &config, &mut Discard)?.timings;
    let per_second = |n: usize, d: Duration| match d.as_secs_f64() {
        s if s > 0.0 => n as f64 / s,
        _ => f64::INFINITY,
    };
    Ok(BenchRun {
        prompt_tokens: prompt.len(),
        new_tokens,
        ttft: timings.ttft,
        prefill_tokens_per_second: per_second(prompt.len(), timings.prefill),
        decode_tokens_per_second: per_second(timings.decode_steps, timings.decode),
        prompt_attention_macs: None,
    })
}

/// Each figure's median over `runs` (of an even count, the higher of the
/// middle two); the counts are the first run's (every run has the same).
fn median(runs: &[BenchRun]) -> BenchRun {
    fn middle<T: PartialOrd + Copy>(runs: &[BenchRun], figure: impl Fn(&BenchRun) -> T) -> T {
        let mut values: Vec<T> = runs.iter().map(figure).collect();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    BenchRun {
        ttft: middle(runs, |r| r.ttft),
        prefill_tokens_per_second: middle(runs, |r| r.prefill_tokens_per_second),
        decode_tokens_per_second: middle(runs, |r| r.decode_tokens_per_second),
        ..runs[0]
    }
}

/// `VmHWM` from `/proc/self/status`, in bytes.
fn peak_rss_bytes() -> Option<u64> {
    crate::model::proc_kib_as_bytes("/proc/self/status", "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ttft_ms: u64, prefill: f64, decode: f64) -> BenchRun {
        BenchRun {
            prompt_tokens: 128,
            new_tokens: 16,
            ttft: Duration::from_millis(ttft_ms),
            prefill_tokens_per_second: prefill,
            decode_tokens_per_second: decode,
            prompt_attention_macs: Some(7),
        }
    }

    #[test]
    fn each_figure_is_its_own_median() {
        // The slowest prefill, the fastest decode and the middle first token
        // come from different runs.
        let runs = [
            run(30, 900.0, 200.0),
            run(10, 1000.0, 100.0),
            run(20, 1100.0, 150.0),
        ];
        assert_eq!(median(&runs), run(20, 1000.0, 150.0));
        // Of four, the higher of the middle two.
        let runs = [
            run(1, 1.0, 4.0),
            run(2, 2.0, 3.0),
            run(3, 3.0, 2.0),
            run(4, 4.0, 1.0),
        ];
        assert_eq!(median(&runs), run(3, 3.0, 3.0));
        assert_eq!(median(&runs[..1]), runs[0]);
    }
}
