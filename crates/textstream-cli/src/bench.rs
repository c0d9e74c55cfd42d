//! `textstream bench`: the engine's speed figures, and llama.cpp's beside
//! them when asked (run as a separate process so each side's peak memory is
//! its own).

use std::process::Command;

use anyhow::Context;
use serde_json::Value;
use textstream_engine::bench::run_bench_with;
use textstream_engine::model::LoadOptions;

use crate::args::BenchArgs;
use crate::load;

/// Threads both engines use unless `--threads` says otherwise: the cores of
/// the machine the figures are for.
const DEFAULT_THREADS: usize = 2;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let path = load::model_path(&args.model)?;
    let threads = args.model.threads.map_or(DEFAULT_THREADS, usize::from);
    let options = LoadOptions::default()
        .backend(args.backend)
        .context_length(args.model.ctx_size)
        .tokenizer_json(args.model.tokenizer.clone())
        .threads(Some(threads));
    let ours = run_bench_with(
        &path,
        options,
        &args.prompt_lengths,
        args.new_tokens,
        args.repeats,
    )?
    .to_json();
    let theirs = if args.llamacpp {
        let output = Command::new("python3")
            .arg(&args.llamacpp_script)
            .arg(&path)
            .arg(args.new_tokens.to_string())
            .arg(threads.to_string())
            .arg(args.repeats.to_string())
            .output()
            .with_context(|| format!("running {}", args.llamacpp_script.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "{} failed (is llama-cpp-python installed? see the script's header):\n{}",
            args.llamacpp_script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(
            serde_json::from_slice::<Value>(&output.stdout)
                .context("reading llama.cpp's report")?,
        )
    } else {
        None
    };
    if args.json {
        println!("{ours}");
        if let Some(theirs) = &theirs {
            println!("{theirs}");
        }
        return Ok(());
    }
    print_table(&ours, theirs.as_ref());
    print_limits(&ours);
    Ok(())
}

/// The kernel tier, the weight bytes a decode step reads, the measured read
/// bandwidth, and how close decode came to the bound they set.
fn print_limits(ours: &Value) {
    let kernel = ours["kernel"].as_str().unwrap_or("-");
    let read = number(ours, "read_gib_s");
    println!("kernels {kernel}; memory read {} GiB/s", cell(read, 1));
    let (Some(mib), Some(limit)) = (
        number(ours, "weight_mib_per_token"),
        number(ours, "decode_limit_tok_s"),
    ) else {
        return;
    };
    let runs = ours["runs"].as_array().cloned().unwrap_or_default();
    let shares: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{:.0} % at {}",
                100.0 * number(r, "decode_tok_s")? / limit,
                r["prompt_tokens"]
            ))
        })
        .collect();
    println!(
        "weights read per token {mib:.1} MiB: decode bound {limit:.1} tok/s; reached {}",
        shares.join(", ")
    );
    print_compute_limits(ours, &runs);
}

/// The compute peak of the kernels' instructions, and how close prefill
/// (compute-bound) came to the bound it sets: the products at the int8
/// peak, attention at the f32 peak.
fn print_compute_limits(ours: &Value, runs: &[Value]) {
    let (Some(int8), Some(f32)) = (
        number(ours, "int8_peak_g_s"),
        number(ours, "f32_fma_peak_g_s"),
    ) else {
        return;
    };
    println!("compute peak: int8 {int8:.0} G multiply-adds/s, f32 {f32:.0} G multiply-adds/s");
    let Some(macs) = number(ours, "prompt_macs_per_token") else {
        return;
    };
    let shares: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let bound = number(r, "prefill_bound_tok_s")?;
            Some(format!(
                "{bound:.0} tok/s at {} (reached {:.0} %)",
                r["prompt_tokens"],
                100.0 * number(r, "prefill_tok_s")? / bound
            ))
        })
        .collect();
    println!(
        "products {:.1} M multiply-adds a prompt token; prefill bound (products at the \
         int8 peak, attention at the f32 peak): {}",
        macs / 1e6,
        shares.join(", ")
    );
}

fn number(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn print_table(ours: &Value, theirs: Option<&Value>) {
    let engines: Vec<(&str, &Value)> = std::iter::once(("textstream", ours))
        .chain(theirs.map(|t| ("llama.cpp", t)))
        .collect();
    println!(
        "{:<8} {:<11} {:>9} {:>9} {:>13} {:>12} {:>10} {:>13} {:>13}",
        "prompt",
        "engine",
        "load ms",
        "TTFT ms",
        "prefill tok/s",
        "decode tok/s",
        "peak MiB",
        "prefill ratio",
        "decode ratio"
    );
    let runs = ours["runs"].as_array().cloned().unwrap_or_default();
    for run in &runs {
        let prompt = run["prompt_tokens"].as_u64().unwrap_or(0);
        let theirs_run = theirs.and_then(|t| {
            t["runs"]
                .as_array()?
                .iter()
                .find(|r| r["prompt_tokens"].as_u64() == Some(prompt))
                .cloned()
        });
        for (name, report) in &engines {
            let this_run = if *name == "textstream" {
                Some(run.clone())
            } else {
                theirs_run.clone()
            };
            let Some(this_run) = this_run else { continue };
            // Ours over theirs, on our row.
            let ratio = |key: &str| match (*name, &theirs_run) {
                ("textstream", Some(other)) => number(&this_run, key)
                    .zip(number(other, key))
                    .map(|(a, b)| format!("{:.2}x", a / b)),
                _ => None,
            };
            println!(
                "{:<8} {:<11} {:>9} {:>9} {:>13} {:>12} {:>10} {:>13} {:>13}",
                prompt,
                name,
                cell(number(report, "load_ms"), 0),
                cell(number(&this_run, "ttft_ms"), 0),
                cell(number(&this_run, "prefill_tok_s"), 1),
                cell(number(&this_run, "decode_tok_s"), 1),
                cell(number(report, "peak_rss_mib"), 0),
                ratio("prefill_tok_s").unwrap_or_default(),
                ratio("decode_tok_s").unwrap_or_default(),
            );
        }
    }
}
