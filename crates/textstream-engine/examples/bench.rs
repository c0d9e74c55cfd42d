//! Prints the engine's benchmark as JSON: load time, and for prompts of 8,
//! 128 and 1024 tokens the time to first token, prefill and decode speed
//! over 256 greedy tokens (medians of 3 runs), and peak memory.
//!
//! ```sh
//! cargo run --release -p textstream-engine --example bench -- [BACKEND] [NEW_TOKENS]
//! ```
//!
//! `BACKEND` is `native` (the engine's own forward pass and kernels, the
//! default) or `candle` (candle's llama), both on the file's own values.

use std::process::ExitCode;

use textstream_engine::bench::{
    run_bench_with, DEFAULT_NEW_TOKENS, DEFAULT_PROMPT_LENGTHS, DEFAULT_REPEATS,
};
use textstream_engine::model::{Backend, LoadOptions};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let backend: Backend = match args.next().map(|a| a.parse()).transpose() {
        Ok(w) => w.unwrap_or_default(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let new_tokens = match args.next().map(|a| a.parse::<usize>()).transpose() {
        Ok(n) => n.unwrap_or(DEFAULT_NEW_TOKENS),
        Err(e) => {
            eprintln!("NEW_TOKENS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = match textstream_engine::model_file::resolve(None, &mut |_| {}) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let options = LoadOptions::default().backend(backend);
    match run_bench_with(
        &path,
        options,
        DEFAULT_PROMPT_LENGTHS,
        new_tokens,
        DEFAULT_REPEATS,
    ) {
        Ok(report) => {
            let mut json = report.to_json();
            json["backend"] = format!("{backend:?}").into();
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
